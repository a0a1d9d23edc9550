//! Heatmaps (paper 3.1.1, Eq. 2): the [`Heatmap`] and [`LesionMask`] types,
//! their file formats, heatmap sources, patch pooling and normalisation, and
//! the salient region Ω*.

pub mod file;
pub mod io;
pub mod mask;
pub mod pool;
pub mod region;
pub mod resize;
pub mod source;
pub mod uniform;

pub use source::{HeatmapSource, SampleView};

use anyhow::{bail, Result};

/// Why a sample's heatmap is unusable, in the terms curation counts skips by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeatmapFault {
    /// The heatmap (or lesion mask) has no positive value, at its own size or
    /// after pooling.
    AllZero,
    /// Its size does not fit (the image, the other class files, its values).
    ShapeMismatch,
    /// There is no heatmap or mask to read for the sample.
    Missing,
}

/// A heatmap error with its [`HeatmapFault`], so that callers can tell the
/// faults apart by type (`anyhow::Error::downcast_ref`), not by message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HeatmapError {
    pub fault: HeatmapFault,
    pub message: String,
}

impl HeatmapError {
    /// An `anyhow::Error` of `fault` with `message`.
    pub fn err(fault: HeatmapFault, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(HeatmapError {
            fault,
            message: message.into(),
        })
    }
}

/// A lesion heatmap: `height × width` non-negative finite f32 values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Heatmap {
    /// Build a heatmap, checking the shape and that every value is finite and
    /// non-negative (the paper's H(p_i) is a non-negative response).
    pub fn new(height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(HeatmapError::err(
                HeatmapFault::ShapeMismatch,
                format!("heatmap has an empty shape {height}x{width}"),
            ));
        }
        if data.len() != height * width {
            return Err(HeatmapError::err(
                HeatmapFault::ShapeMismatch,
                format!(
                    "heatmap data has {} values but the shape {height}x{width} needs {}",
                    data.len(),
                    height * width
                ),
            ));
        }
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!(
                "heatmap value at row {}, column {} is not finite ({v})",
                i / width,
                i % width
            );
        }
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| **v < 0.0) {
            bail!(
                "heatmap value at row {}, column {} is negative ({v})",
                i / width,
                i % width
            );
        }
        Ok(Heatmap {
            height,
            width,
            data,
        })
    }

    /// The value at row `y`, column `x`.
    pub fn at(&self, y: usize, x: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// The largest value.
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(0.0, f32::max)
    }
}

/// A binary lesion mask: `true` where the lesion is, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LesionMask {
    pub height: usize,
    pub width: usize,
    pub data: Vec<bool>,
}

impl LesionMask {
    /// The lesion's share of the image area, in `0..=1`.
    pub fn area_share(&self) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().filter(|b| **b).count() as f64 / self.data.len() as f64
    }
}
