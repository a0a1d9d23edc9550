//! The lesion-masking probe (the paper's Figure 1-I made a metric): for each
//! abnormal test sample, the lesion region is painted over with the mean grey
//! level of a ring of tissue around it, the model answers again, and the
//! probe reports the share of answers that change. A model that ignores the
//! lesion scores 0; one whose answers follow the lesion scores high.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::heatmap::region::dilate;
use crate::util::fsio::atomic_write;

/// Something that answers a question about an image (a model, or a test double).
pub trait Answerer {
    fn answer(&self, question: &str, image: &Path) -> Result<String>;
}

/// One probed sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeItem {
    pub id: String,
    pub original: String,
    pub masked: String,
    pub changed: bool,
    /// The masked region's share of the image.
    pub mask_share: f64,
}

/// The probe's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Abnormal samples probed.
    pub n: usize,
    pub changed: usize,
    /// `changed / n` (NaN when nothing was probed).
    pub rate: f64,
    pub items: Vec<ProbeItem>,
}

/// Whether two answers differ once case, spaces and punctuation are ignored.
pub fn answers_differ(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    norm(a) != norm(b)
}

/// Paint the lesion of `image` (mask pixels, dilated by 1 px) with the mean
/// grey level of the ring 2-5 px around it; write the PNG to `dest`. Returns
/// the painted share of the image.
pub fn mask_lesion(image: &Path, mask: &Path, dest: &Path) -> Result<f64> {
    let img = image::open(image)
        .with_context(|| format!("cannot read image {}", image.display()))?
        .to_luma8();
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let m = crate::heatmap::mask::read_mask(mask)
        .with_context(|| format!("lesion mask {}", mask.display()))?;
    let m = resize_nearest(&m.data, m.width, m.height, w, h);
    let inner = dilate(&m, h, w, 1);
    let mid = dilate(&m, h, w, 2);
    let outer = dilate(&m, h, w, 5);
    let px = img.into_raw();
    let ring: Vec<f64> = (0..w * h)
        .filter(|&i| outer[i] && !mid[i])
        .map(|i| px[i] as f64)
        .collect();
    let fill = if ring.is_empty() {
        px.iter().map(|&p| p as f64).sum::<f64>() / px.len().max(1) as f64
    } else {
        ring.iter().sum::<f64>() / ring.len() as f64
    };
    let fill = fill.round().clamp(0.0, 255.0) as u8;
    let mut out = px;
    let mut n = 0usize;
    for (i, p) in out.iter_mut().enumerate() {
        if inner[i] {
            *p = fill;
            n += 1;
        }
    }
    let img = image::GrayImage::from_raw(w as u32, h as u32, out).context("image buffer size")?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    atomic_write(dest, &bytes)?;
    Ok(n as f64 / (w * h).max(1) as f64)
}

fn resize_nearest(m: &[bool], w: usize, h: usize, nw: usize, nh: usize) -> Vec<bool> {
    if w == nw && h == nh {
        return m.to_vec();
    }
    let mut out = vec![false; nw * nh];
    for y in 0..nh {
        let sy = (y * h / nh).min(h - 1);
        for x in 0..nw {
            out[y * nw + x] = m[sy * w + (x * w / nw).min(w - 1)];
        }
    }
    out
}

/// The abnormal samples of `samples`: those with a lesion mask holding lesion pixels.
pub fn abnormal(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| {
            !s.images.is_empty()
                && s.meta.get("mask_kind").and_then(|v| v.as_str()) != Some("organ")
                && s.mask
                    .as_deref()
                    .and_then(|m| crate::heatmap::io::mask_share(m).ok())
                    .is_some_and(|a| a > 0.0)
        })
        .collect()
}

/// Run the probe on the abnormal samples of `samples` (at most `max`, 0 = all),
/// writing the masked images under `work_dir` (reused when present).
pub fn lesion_probe(
    answerer: &dyn Answerer,
    samples: &[Sample],
    question_of: &dyn Fn(&Sample) -> String,
    work_dir: &Path,
    max: usize,
) -> Result<ProbeResult> {
    let mut items = Vec::new();
    for s in abnormal(samples)
        .into_iter()
        .take(if max == 0 { usize::MAX } else { max })
    {
        let (Some(img), Some(mask)) = (s.images.first(), s.mask.as_deref()) else {
            continue;
        };
        let dest: PathBuf = work_dir.join(format!("{}_masked.png", safe(&s.id)));
        let share = mask_lesion(img, mask, &dest)
            .with_context(|| format!("probe: sample '{}' ({})", s.id, s.dataset))?;
        let q = question_of(s);
        let original = answerer.answer(&q, img)?;
        let masked = answerer.answer(&q, &dest)?;
        items.push(ProbeItem {
            id: s.id.clone(),
            changed: answers_differ(&original, &masked),
            original,
            masked,
            mask_share: share,
        });
    }
    let changed = items.iter().filter(|i| i.changed).count();
    Ok(ProbeResult {
        n: items.len(),
        changed,
        rate: if items.is_empty() {
            f64::NAN
        } else {
            changed as f64 / items.len() as f64
        },
        items,
    })
}

fn safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
