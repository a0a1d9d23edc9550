//! Lesion masks as heatmaps (the "mask" source): 1 inside the lesion, 0
//! outside, optionally smoothed by a Gaussian of `sigma` pixels.

use anyhow::{bail, Context, Result};

use super::source::{HeatmapSource, SampleView};
use super::{Heatmap, HeatmapError, HeatmapFault, LesionMask};
use crate::util::blur::gaussian_blur;

/// Heatmaps from the samples' lesion-mask files (any non-zero pixel is lesion).
#[derive(Clone, Debug, Default)]
pub struct MaskSource {
    /// Gaussian smoothing in mask pixels; `None` or 0 keeps the binary mask.
    pub sigma: Option<f32>,
}

impl HeatmapSource for MaskSource {
    fn name(&self) -> &str {
        "mask"
    }

    fn heatmap(&self, sample: &SampleView) -> Result<Heatmap> {
        let id = sample.id;
        let path = sample.mask_path.ok_or_else(|| {
            HeatmapError::err(
                HeatmapFault::Missing,
                format!("sample {id}: no lesion mask for the mask heatmap source"),
            )
        })?;
        let mask = read_mask(path).with_context(|| format!("sample {id}"))?;
        mask_heatmap(&mask, self.sigma, id)
    }
}

/// Read a mask image (PNG or JPEG): non-zero luma is lesion.
pub fn read_mask(path: &std::path::Path) -> Result<LesionMask> {
    let img = image::open(path)
        .with_context(|| format!("decoding mask {}", path.display()))?
        .to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(LesionMask {
        height: h,
        width: w,
        data: img.pixels().map(|p| p.0[0] > 0).collect(),
    })
}

/// The heatmap of a mask, smoothed when `sigma > 0`; an empty mask is an error naming `id`.
pub fn mask_heatmap(mask: &LesionMask, sigma: Option<f32>, id: &str) -> Result<Heatmap> {
    if mask.data.len() != mask.height * mask.width || mask.data.is_empty() {
        bail!(
            "sample {id}: lesion mask has a bad shape {}x{}",
            mask.height,
            mask.width
        );
    }
    if !mask.data.iter().any(|b| *b) {
        return Err(HeatmapError::err(
            HeatmapFault::AllZero,
            format!("sample {id}: lesion mask has no lesion pixels"),
        ));
    }
    let mut data: Vec<f32> = mask
        .data
        .iter()
        .map(|b| if *b { 1.0 } else { 0.0 })
        .collect();
    if let Some(s) = sigma.filter(|s| *s > 0.0) {
        if !s.is_finite() {
            bail!("mask smoothing sigma {s} is not finite");
        }
        data = gaussian_blur(&data, mask.height, mask.width, s);
    }
    Heatmap::new(mask.height, mask.width, data).with_context(|| format!("sample {id}"))
}
