//! Image decoding and CLIP / LLaVA preprocessing into `[3, H, W]` f32 tensors.
//!
//! Decoding accepts PNG and JPEG, grayscale (8 or 16 bit), RGB or RGBA, and
//! always yields RGB (alpha dropped, gray replicated), like PIL's
//! `convert("RGB")`. Preprocessing follows Hugging Face's image processors:
//!
//! * [`ResizeMode::CenterCrop`] (`CLIPImageProcessor`): resize the shortest
//!   side to `shortest_edge` (the long side `int(edge * long / short)`),
//!   bicubic, then centre-crop `size × size` (top = (h − size) // 2).
//! * [`ResizeMode::PadSquare`] (LLaVA's `expand2square`): paste the image
//!   centred on a square canvas filled with the mean colour
//!   (`int(mean * 255)` per channel, as LLaVA computes it), then resize to
//!   `size × size`.
//! * [`ResizeMode::Resize`] (`ViTImageProcessor`): resize straight to `size × size`.
//!
//! then `pixel = (x / 255 − mean) / std` per channel, channels first.
//!
//! Resampling uses `image`'s Catmull-Rom filter (Keys cubic, a = −0.5, with
//! the support widened when downsampling), the same kernel as PIL's BICUBIC;
//! pixel values may differ from PIL's by a rounding step after a real
//! resize. When the image already has the target size no resampling happens
//! and the values match Hugging Face exactly.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::{imageops::FilterType, RgbImage};
use serde_json::Value;

/// OpenAI CLIP's normalisation mean (also LLaVA's).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation.
/// (The published digits are kept, though f32 cannot hold them all.)
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The largest aspect ratio (long side / short side) preprocessing accepts.
pub const MAX_ASPECT: u32 = 32;

/// How an image is brought to the model's square input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Shortest-side resize, then centre crop (CLIP).
    CenterCrop,
    /// Pad to a square with the mean colour, then resize (LLaVA `expand2square`).
    PadSquare,
    /// Resize straight to `size × size` (ViT).
    Resize,
}

/// Preprocessing settings of an image tower.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Output side length (crop size).
    pub size: u32,
    /// Shortest side after the first resize ([`ResizeMode::CenterCrop`] only).
    pub shortest_edge: u32,
    pub mode: ResizeMode,
    /// Resampling filter of every resize.
    #[serde(default)]
    pub resample: Resample,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Resampling filters, numbered as PIL numbers them in Hugging Face configs
/// (`resample`: 0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    Nearest,
    Bilinear,
    #[default]
    Bicubic,
    Lanczos,
}

impl Resample {
    /// From a Hugging Face `resample` code (PIL's numbering); unknown codes give bicubic.
    pub fn from_pil(code: u64) -> Self {
        match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            _ => Resample::Bicubic,
        }
    }

    fn filter(self) -> FilterType {
        match self {
            Resample::Nearest => FilterType::Nearest,
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
            Resample::Lanczos => FilterType::Lanczos3,
        }
    }
}

impl Default for Preprocess {
    /// OpenAI CLIP ViT-B/16 at 224 px.
    fn default() -> Self {
        Preprocess::clip(224)
    }
}

impl Preprocess {
    /// CLIP preprocessing at `size` px (shortest side `size`, centre crop `size`).
    pub fn clip(size: u32) -> Self {
        Preprocess {
            size,
            shortest_edge: size,
            mode: ResizeMode::CenterCrop,
            resample: Resample::Bicubic,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// LLaVA(-Med) v1.5 preprocessing: `expand2square` with CLIP's mean colour at `size` px.
    pub fn llava_pad(size: u32) -> Self {
        Preprocess {
            mode: ResizeMode::PadSquare,
            ..Preprocess::clip(size)
        }
    }

    /// Read a Hugging Face `preprocessor_config.json`, or a
    /// `processor_config.json` with the settings nested under `image_processor`.
    /// `do_pad` (LLaVA) or `image_aspect_ratio: "pad"` selects
    /// [`ResizeMode::PadSquare`]; `do_center_crop` selects
    /// [`ResizeMode::CenterCrop`]; a `{height, width}` size without a crop
    /// selects [`ResizeMode::Resize`].
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_hf_value(&v).with_context(|| format!("in {}", path.display()))
    }

    /// See [`Preprocess::from_hf_config`].
    pub fn from_hf_value(v: &Value) -> Result<Self> {
        let ip = match v.get("image_processor") {
            Some(inner @ Value::Object(_)) => inner,
            _ => v,
        };
        let triple = |field: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match ip.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN) as f32;
                    Ok([x; 3])
                }
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .with_context(|| format!("field '{field}': not a number"))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => bail!("field '{field}': expected 3 numbers"),
            }
        };
        let mean = triple("image_mean", CLIP_MEAN)?;
        let std = triple("image_std", CLIP_STD)?;
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
            bail!("image_mean / image_std must be finite and image_std positive");
        }
        // `size` is an int, {shortest_edge}, or {height, width}.
        let side = |field: &str| -> Result<Option<(u32, bool)>> {
            let as_u32 = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
            match ip.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x @ Value::Number(_)) => Ok(as_u32(x).map(|n| (n, true))),
                Some(Value::Object(o)) => {
                    if let Some(n) = o.get("shortest_edge").and_then(as_u32) {
                        return Ok(Some((n, true)));
                    }
                    let h = o.get("height").and_then(as_u32);
                    let w = o.get("width").and_then(as_u32);
                    match (h, w) {
                        (Some(h), Some(w)) if h == w => Ok(Some((h, false))),
                        (Some(h), Some(w)) => {
                            bail!("field '{field}': non-square {h}x{w} is not supported")
                        }
                        _ => bail!("field '{field}': expected shortest_edge or height and width"),
                    }
                }
                Some(_) => bail!("field '{field}': expected a number or an object"),
            }
        };
        let size = side("size")?;
        let crop = side("crop_size")?;
        let do_crop = ip
            .get("do_center_crop")
            .and_then(Value::as_bool)
            .unwrap_or(crop.is_some());
        let pad = ip.get("do_pad").and_then(Value::as_bool).unwrap_or(false)
            || ip.get("image_aspect_ratio").and_then(Value::as_str) == Some("pad");
        let (edge, shortest) = size.unwrap_or((224, true));
        let resample = ip
            .get("resample")
            .and_then(Value::as_u64)
            .map(Resample::from_pil)
            .unwrap_or_default();
        let out = match (pad, do_crop, crop) {
            (true, _, Some((c, _))) => Preprocess {
                size: c,
                shortest_edge: edge,
                mode: ResizeMode::PadSquare,
                resample,
                mean,
                std,
            },
            (true, _, None) => Preprocess {
                size: edge,
                shortest_edge: edge,
                mode: ResizeMode::PadSquare,
                resample,
                mean,
                std,
            },
            (false, true, Some((c, _))) => Preprocess {
                size: c,
                shortest_edge: edge,
                mode: ResizeMode::CenterCrop,
                resample,
                mean,
                std,
            },
            (false, _, _) if !shortest => Preprocess {
                size: edge,
                shortest_edge: edge,
                mode: ResizeMode::Resize,
                resample,
                mean,
                std,
            },
            (false, _, _) => Preprocess {
                size: edge,
                shortest_edge: edge,
                mode: ResizeMode::CenterCrop,
                resample,
                mean,
                std,
            },
        };
        if out.size == 0 || out.shortest_edge == 0 || out.size > 8192 || out.shortest_edge > 8192 {
            bail!("image size {} is out of range", out.size);
        }
        Ok(out)
    }

    /// The padding colour of [`ResizeMode::PadSquare`]: `int(mean * 255)`.
    pub fn pad_colour(&self) -> [u8; 3] {
        self.mean.map(|m| (m.clamp(0.0, 1.0) * 255.0) as u8)
    }

    /// Resize / pad / crop to `size × size` RGB. Images with an aspect
    /// ratio beyond [`MAX_ASPECT`] are refused (a 1 × 20000 strip would make a
    /// gigantic intermediate image).
    pub fn geometry(&self, img: &RgbImage) -> Result<RgbImage> {
        let s = self.size;
        let (w, h) = img.dimensions();
        let (short, long) = (w.min(h), w.max(h));
        if short == 0 || u64::from(long) > u64::from(short) * u64::from(MAX_ASPECT) {
            bail!("image of {w}x{h} pixels has an unsupported aspect ratio (more than {MAX_ASPECT}:1)");
        }
        Ok(match self.mode {
            ResizeMode::CenterCrop => {
                let r = resize_shortest_with(img, self.shortest_edge, self.resample);
                center_crop(&r, s, s)
            }
            ResizeMode::PadSquare => {
                resize_with(&expand2square(img, self.pad_colour()), s, s, self.resample)
            }
            ResizeMode::Resize => resize_with(img, s, s, self.resample),
        })
    }

    /// Normalise an RGB image (no geometry) into a `[3, H, W]` f32 tensor:
    /// `(x / 255 − mean) / std` per channel.
    pub fn normalize(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = img.dimensions();
        let (w, h) = (w as usize, h as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (x, y, p) in img.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for c in 0..3 {
                let v =
                    (f64::from(p.0[c]) / 255.0 - f64::from(self.mean[c])) / f64::from(self.std[c]);
                data[c * h * w + y * w + x] = v as f32;
            }
        }
        Ok(Tensor::from_vec(data, (3, h, w), device)?)
    }

    /// Geometry then normalisation: the model's input for one image, `[3, size, size]`.
    pub fn tensor(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        self.normalize(&self.geometry(img)?, device)
    }

    /// Decode the file at `path` and preprocess it.
    pub fn load(&self, path: &Path, device: &Device) -> Result<Tensor> {
        let img = load_rgb(path)?;
        self.tensor(&img, device)
            .with_context(|| format!("cannot preprocess image {}", path.display()))
    }
}

/// Decode a PNG or JPEG file into RGB; errors name the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Decode PNG or JPEG bytes into RGB (gray replicated, alpha dropped, 16-bit scaled to 8).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the image header")?;
    match reader.format() {
        Some(image::ImageFormat::Png) => {}
        Some(image::ImageFormat::Jpeg) => check_jpeg_complete(bytes)?,
        Some(f) => bail!("unsupported image format {f:?} (PNG and JPEG are supported)"),
        None => bail!("not a PNG or JPEG image"),
    }
    let img = reader.decode().context("corrupt or truncated image data")?;
    if img.width() == 0 || img.height() == 0 {
        bail!("image has an empty size");
    }
    Ok(img.to_rgb8())
}

/// The JPEG decoder fills a truncated scan with grey instead of failing (PIL
/// refuses such files unless told otherwise): require the end-of-image marker
/// after the start of the scan.
fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]);
    let eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    match (sos, eoi) {
        (Some(s), Some(e)) if e > s => Ok(()),
        _ => bail!("truncated JPEG (no end-of-image marker after the scan data)"),
    }
}

/// Resize so the shortest side is `edge` and the long side `int(edge * long / short)`
/// (Hugging Face's `get_resize_output_image_size`), bicubic.
pub fn resize_shortest(img: &RgbImage, edge: u32) -> RgbImage {
    resize_shortest_with(img, edge, Resample::Bicubic)
}

/// [`resize_shortest`] with a chosen filter.
pub fn resize_shortest_with(img: &RgbImage, edge: u32, resample: Resample) -> RgbImage {
    let (w, h) = img.dimensions();
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    if short == 0 {
        return img.clone();
    }
    let new_long = ((u64::from(edge) * u64::from(long)) / u64::from(short)).max(1) as u32;
    let (nw, nh) = if w <= h {
        (edge, new_long)
    } else {
        (new_long, edge)
    };
    resize_with(img, nw, nh, resample)
}

/// Resize to exactly `w × h`, bicubic; a no-op copy when the size already matches.
pub fn resize_to(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_with(img, w, h, Resample::Bicubic)
}

/// Resize to exactly `w × h` with a chosen filter; a no-op copy when the size already matches.
pub fn resize_with(img: &RgbImage, w: u32, h: u32, resample: Resample) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    image::imageops::resize(img, w, h, resample.filter())
}

/// Centre-crop to `w × h` (top = (H − h) // 2, left = (W − w) // 2, floor
/// division); an image smaller than the crop is padded with black, as
/// Hugging Face's `center_crop` does.
pub fn center_crop(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let top = (i64::from(ih) - i64::from(h)).div_euclid(2);
    let left = (i64::from(iw) - i64::from(w)).div_euclid(2);
    RgbImage::from_fn(w, h, |x, y| {
        let sx = i64::from(x) + left;
        let sy = i64::from(y) + top;
        if sx >= 0 && sy >= 0 && sx < i64::from(iw) && sy < i64::from(ih) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// LLaVA's `expand2square`: the image pasted centred ((side − w) // 2,
/// (side − h) // 2) on a square canvas of the background colour.
pub fn expand2square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(background));
    let (ox, oy) = ((side - w) / 2, (side - h) / 2);
    image::imageops::replace(&mut out, img, i64::from(ox), i64::from(oy));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand2square_pads_with_mean_colour() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30]));
        let p = Preprocess::llava_pad(4);
        assert_eq!(p.pad_colour(), [122, 116, 104]);
        let sq = expand2square(&img, p.pad_colour());
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0).0, [122, 116, 104]);
        assert_eq!(sq.get_pixel(0, 1).0, [10, 20, 30]);
        assert_eq!(sq.get_pixel(3, 2).0, [10, 20, 30]);
        assert_eq!(sq.get_pixel(3, 3).0, [122, 116, 104]);
    }

    #[test]
    fn hf_configs_select_the_mode() {
        let llava_med = serde_json::json!({"crop_size": 336, "do_center_crop": true,
            "size": {"shortest_edge": 336}, "image_aspect_ratio": "pad",
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD});
        let p = Preprocess::from_hf_value(&llava_med).unwrap();
        assert_eq!(
            (p.mode, p.size, p.shortest_edge),
            (ResizeMode::PadSquare, 336, 336)
        );
        let clip = serde_json::json!({"crop_size": {"height": 224, "width": 224},
            "size": {"shortest_edge": 256}, "do_center_crop": true});
        let p = Preprocess::from_hf_value(&clip).unwrap();
        assert_eq!(
            (p.mode, p.size, p.shortest_edge),
            (ResizeMode::CenterCrop, 224, 256)
        );
        assert_eq!(p.mean, CLIP_MEAN);
        let bad = serde_json::json!({"image_std": [0.0, 1.0, 1.0]});
        assert!(Preprocess::from_hf_value(&bad).is_err());
        let wide = RgbImage::new(400, 10);
        assert!(Preprocess::clip(8).geometry(&wide).is_err());
    }

    #[test]
    fn shortest_side_resize_and_crop_sizes() {
        let img = RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]));
        let r = resize_shortest(&img, 20);
        assert_eq!(r.dimensions(), (26, 20));
        let c = center_crop(&r, 20, 20);
        assert_eq!(c.dimensions(), (20, 20));
        let t = Preprocess::clip(20).tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 20, 20]);
    }
}
