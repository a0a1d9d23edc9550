//! The training pairs of `hdpo align` (see [`super::align`]): an image with
//! its text and, for local alignment, a region of the image with the phrases
//! that name it.

use std::path::PathBuf;

use candle_core::Tensor;

use crate::data::{AnswerType, Sample};
use crate::heatmap::Heatmap;

/// The image side of a training pair.
#[derive(Clone, Debug)]
pub enum PairImage {
    /// An image file, decoded and preprocessed to the tower's size.
    Path(PathBuf),
    /// A decoded image.
    Image(image::DynamicImage),
    /// Pixels already preprocessed to `[3, S, S]` for the tower's size and normalisation.
    Tensor(Tensor),
}

/// One image-text training pair.
#[derive(Clone, Debug)]
pub struct AlignPair {
    pub image: PairImage,
    pub text: String,
    /// A region of the image and the phrases that name it (local alignment).
    pub region: Option<RegionText>,
}

impl AlignPair {
    /// A pair for the global (image-report) loss only.
    pub fn global(image: PairImage, text: impl Into<String>) -> Self {
        AlignPair {
            image,
            text: text.into(),
            region: None,
        }
    }
}

/// A local alignment target: the region of the pair's image that `heatmap`
/// weights (Eq. 2-3, as in curation) should be closer to one of `positives`
/// than to `negatives` and to the other phrases of its batch.
#[derive(Clone, Debug)]
pub struct RegionText {
    /// Any size; resized to the tower's input (Eq. 2).
    pub heatmap: Heatmap,
    /// Phrases that name what is in the region (at least one).
    pub positives: Vec<String>,
    /// Phrases of the same text that do not (hard negatives).
    pub negatives: Vec<String>,
}

/// Image-text alignment pairs from dataset samples: each report sample's
/// primary image with its findings report (one pair per image); when the
/// samples hold no reports (VQA-only data), each question-answer pair's image
/// with `"{question} {answer}"`. Samples without an image are left out.
pub fn pairs_from_samples(samples: &[Sample]) -> Vec<AlignPair> {
    sourced_pairs_from_samples(samples)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// [`pairs_from_samples`] with the index of the sample each pair came from
/// (so that callers can attach a [`RegionText`] from the sample's mask).
pub fn sourced_pairs_from_samples(samples: &[Sample]) -> Vec<(usize, AlignPair)> {
    let mut seen = std::collections::HashSet::new();
    let reports: Vec<(usize, AlignPair)> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.answer_type == AnswerType::Report)
        .filter_map(|(i, s)| {
            let img = s.images.first()?;
            seen.insert(img.clone()).then(|| {
                let p = AlignPair::global(PairImage::Path(img.clone()), s.answer.clone());
                (i, p)
            })
        })
        .collect();
    if !reports.is_empty() {
        return reports;
    }
    samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let text = format!("{} {}", s.question.as_deref().unwrap_or(""), s.answer);
            let image = PairImage::Path(s.images.first()?.clone());
            Some((i, AlignPair::global(image, text.trim())))
        })
        .collect()
}
