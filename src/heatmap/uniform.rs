//! The uniform heatmap (the ablation baseline): every patch weighs the same,
//! so Eq. 3 gives the mean patch embedding and k* no longer depends on where
//! the lesion is. Ω* of a uniform heatmap is the whole image.

use anyhow::Result;

use super::source::{HeatmapSource, SampleView};
use super::Heatmap;

/// A constant heatmap of `size × size` ones (any size gives the same Eq. 2 weights).
#[derive(Clone, Copy, Debug)]
pub struct UniformSource {
    pub size: usize,
}

impl Default for UniformSource {
    fn default() -> Self {
        UniformSource { size: 16 }
    }
}

impl HeatmapSource for UniformSource {
    fn name(&self) -> &str {
        "uniform"
    }

    fn heatmap(&self, _sample: &SampleView) -> Result<Heatmap> {
        let s = self.size.max(1);
        Heatmap::new(s, s, vec![1.0; s * s])
    }
}
