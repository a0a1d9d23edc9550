//! The heatmap-source trait (paper 3.1.1): every way hdpo obtains H for a
//! sample (a file, a lesion mask, GradCAM, attention rollout) is one file
//! behind [`HeatmapSource`].

use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use super::Heatmap;

/// What a heatmap source may look at for one sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleView<'a> {
    /// The sample's id (named in every error).
    pub id: &'a str,
    /// The image, preprocessed for the encoder: `[3, S, S]` or `[1, 3, S, S]`.
    pub image: Option<&'a Tensor>,
    /// The image file, for sources that decode it themselves.
    pub image_path: Option<&'a Path>,
    /// The lesion mask file, when the dataset has one.
    pub mask_path: Option<&'a Path>,
    /// A finding's text (GradCAM explains the similarity to it).
    pub text: Option<&'a str>,
}

/// A source of lesion heatmaps.
pub trait HeatmapSource: Send + Sync {
    /// The name recorded in pair records' `heatmap_source`.
    fn name(&self) -> &str;
    /// The heatmap of one sample; errors name `sample.id`.
    fn heatmap(&self, sample: &SampleView) -> Result<Heatmap>;
}
