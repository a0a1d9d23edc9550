//! Image preprocessing for the image tower: RGB, resize to the tower's input
//! size (bilinear; identity when the size already matches), `(x/255 - mean)/std`, CHW.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::DynamicImage;

/// Per-channel normalisation constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// ViTImageProcessor's default, `(x/255 - 0.5)/0.5`.
    pub const HALF: Normalize = Normalize {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    /// CLIPImageProcessor's constants.
    pub const CLIP: Normalize = Normalize {
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
    };

    /// Read `image_mean` / `image_std` from `preprocessor_config.json`, else
    /// `processor_config.json` (also nested under `image_processor`), falling
    /// back to `default`.
    pub fn from_preprocessor_config(dir: &Path, default: Normalize) -> Result<Normalize> {
        let Some(path) = ["preprocessor_config.json", "processor_config.json"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
        else {
            return Ok(default);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let v = v.get("image_processor").cloned().unwrap_or(v);
        let three = |key: &str, d: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(d),
                Some(x) => {
                    let xs: Vec<f32> = serde_json::from_value(x.clone())
                        .with_context(|| format!("{}: field {key}", path.display()))?;
                    match xs.as_slice() {
                        [a] => Ok([*a; 3]),
                        [a, b, c] => Ok([*a, *b, *c]),
                        _ => anyhow::bail!(
                            "{}: field {key} has {} values, expected 1 or 3",
                            path.display(),
                            xs.len()
                        ),
                    }
                }
            }
        };
        Ok(Normalize {
            mean: three("image_mean", default.mean)?,
            std: three("image_std", default.std)?,
        })
    }
}

/// `[3, size, size]` f32 pixel values of `img`.
pub fn image_to_tensor(
    img: &DynamicImage,
    size: usize,
    norm: Normalize,
    dev: &Device,
) -> Result<Tensor> {
    let rgb = img.to_rgb8();
    let s = size as u32;
    let rgb = if rgb.width() == s && rgb.height() == s {
        rgb
    } else {
        image::imageops::resize(&rgb, s, s, image::imageops::FilterType::Triangle)
    };
    let mut data = vec![0f32; 3 * size * size];
    for (x, y, px) in rgb.enumerate_pixels() {
        for c in 0..3 {
            let v = f32::from(px.0[c]) / 255.0;
            data[c * size * size + y as usize * size + x as usize] =
                (v - norm.mean[c]) / norm.std[c];
        }
    }
    Ok(Tensor::from_vec(data, (3, size, size), dev)?)
}

/// Decode `path` and preprocess it, naming the file on error.
pub fn load_image_tensor(
    path: &Path,
    size: usize,
    norm: Normalize,
    dev: &Device,
) -> Result<Tensor> {
    let img = image::open(path).with_context(|| format!("decoding image {}", path.display()))?;
    image_to_tensor(&img, size, norm, dev)
}
