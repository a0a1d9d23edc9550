//! DPO (paper Eq. 1), TRL's `loss_type="sigmoid"`:
//! L = −mean_i log σ(α h_i), with h_i = (log π_θ(y⁺) − log π_ref(y⁺)) − (log π_θ(y⁻) − log π_ref(y⁻)).
//! The pairs' weights are ignored.

use anyhow::Result;

use super::{output_from_terms, sigmoid_terms, LossOutput, PairLogps, PreferenceLoss};

/// Plain DPO (Eq. 1).
#[derive(Clone, Debug)]
pub struct Dpo {
    alpha: f64,
}

impl Dpo {
    pub fn new(alpha: f64) -> Self {
        Self { alpha }
    }
}

impl PreferenceLoss for Dpo {
    fn name(&self) -> &'static str {
        "dpo"
    }

    fn alpha(&self) -> f64 {
        self.alpha
    }

    fn uses_weights(&self) -> bool {
        false
    }

    fn loss(&self, x: &PairLogps) -> Result<LossOutput> {
        x.check()?;
        output_from_terms(x, self.alpha, sigmoid_terms(x, self.alpha, false)?)
    }
}
