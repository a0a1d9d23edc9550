//! The CLIP image preprocessing of `hdpo model logprobs` / `generate` and the
//! model's tests: resize so the shortest edge is `size` (bicubic), centre
//! crop to `size`, then `(x / 255 - mean) / std` per channel, CHW. (`hdpo
//! predict` and training read images through `data::image::Preprocess`; the
//! two are not yet one module, see the project's issue #15.)

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};

/// CLIP's normalisation constants (OpenAI).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Mean and std from `processor_config.json` / `preprocessor_config.json` in
/// `dir`, or CLIP's defaults.
pub fn normalisation(dir: &Path) -> ([f32; 3], [f32; 3]) {
    for f in ["preprocessor_config.json", "processor_config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(f)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let v = v.get("image_processor").unwrap_or(&v);
        let arr = |k: &str| -> Option<[f32; 3]> {
            let a = v.get(k)?.as_array()?;
            Some([
                a.first()?.as_f64()? as f32,
                a.get(1)?.as_f64()? as f32,
                a.get(2)?.as_f64()? as f32,
            ])
        };
        if let (Some(m), Some(s)) = (arr("image_mean"), arr("image_std")) {
            return (m, s);
        }
    }
    (CLIP_MEAN, CLIP_STD)
}

/// Load `path` as CLIP pixel values `[3, size, size]` (f32).
pub fn load_clip_pixels(
    path: &Path,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    // The dataset loader's decoder: refuses truncated JPEGs instead of filling them with grey.
    let img = crate::data::image::load_rgb(path)?;
    let (w, h) = img.dimensions();
    let s = size as u32;
    let img = if w == s && h == s {
        img
    } else {
        let scale = s as f64 / w.min(h) as f64;
        let nw = ((w as f64 * scale).round() as u32).max(s);
        let nh = ((h as f64 * scale).round() as u32).max(s);
        let r = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::CatmullRom);
        image::imageops::crop_imm(&r, (nw - s) / 2, (nh - s) / 2, s, s).to_image()
    };
    let mut data = vec![0f32; 3 * size * size];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let v = p.0[c] as f32 / 255.0;
            data[c * size * size + y as usize * size + x as usize] = (v - mean[c]) / std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, size, size), device)?)
}
