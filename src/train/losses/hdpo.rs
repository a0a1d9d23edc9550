//! HDPO (paper Eq. 13): the DPO sigmoid loss with the per-pair weight w of the
//! curated pair (Eq. 11): L = −mean_i [ w_i · log σ(α h_i) ].
//!
//! The mean is over the pairs (the expectation of Eq. 13), **not** divided by
//! Σ w; with every w = 1 it is exactly DPO (Eq. 1).

use anyhow::Result;

use super::{output_from_terms, sigmoid_terms, LossOutput, PairLogps, PreferenceLoss};

/// Heatmap-weighted DPO (Eq. 13).
#[derive(Clone, Debug)]
pub struct Hdpo {
    alpha: f64,
}

impl Hdpo {
    pub fn new(alpha: f64) -> Self {
        Self { alpha }
    }
}

impl PreferenceLoss for Hdpo {
    fn name(&self) -> &'static str {
        "hdpo"
    }

    fn alpha(&self) -> f64 {
        self.alpha
    }

    fn uses_weights(&self) -> bool {
        true
    }

    fn loss(&self, x: &PairLogps) -> Result<LossOutput> {
        x.check()?;
        output_from_terms(x, self.alpha, sigmoid_terms(x, self.alpha, true)?)
    }
}
