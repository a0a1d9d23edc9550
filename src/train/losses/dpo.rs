//! The preference losses of hdpo as one function, [`dpo_loss`], with one
//! branch per [`LossType`] (as TRL's `DPOTrainer.dpo_loss` has one branch
//! per `loss_type`). With h_i = (log π_θ(y⁺) − log π_ref(y⁺)) − (log π_θ(y⁻) −
//! log π_ref(y⁻)) (see [`PairLogps::h`]):
//!
//! - DPO (paper Eq. 1), TRL's `loss_type="sigmoid"`:
//!   L = −mean_i log σ(α h_i); the pairs' weights are ignored.
//! - HDPO (paper Eq. 13): L = −mean_i [ w_i · log σ(α h_i) ] with the curated
//!   pair's weight w (Eq. 11). The mean is over the pairs (the expectation of
//!   Eq. 13), **not** divided by Σ w; with every w = 1 it is exactly DPO.
//! - mDPO (Wang et al., 2024, "mDPO: Conditional Preference Optimization for
//!   Multimodal Large Language Models", Eq. 3-5): the DPO term plus the
//!   anchored preference term that keeps the chosen response's reward above
//!   δ = [`MDPO_DELTA`]:
//!   L = −mean_i [ log σ(α h_i) + log σ(α (log π_θ(y⁺) − log π_ref(y⁺)) − δ) ].
//!   mDPO adds the anchor once per example, whose standard and conditional
//!   pairs share the chosen answer and image; here it is added for every
//!   pair's chosen side, so an example with both pairs anchors its chosen
//!   answer twice. The pairs' weights are ignored.

use anyhow::{ensure, Result};

use super::{log_sigmoid, output_from_terms, LossOutput, LossType, PairLogps, PreferenceLoss};

/// mDPO's anchor δ on the chosen reward.
pub const MDPO_DELTA: f64 = 0.0;

/// The loss of one batch of pairs under `kind` with α = `alpha`.
///
/// Shapes: every tensor of `x` is `[n]`; the returned loss is a scalar (the
/// mean of the `[n]` per-pair terms), the other outputs are `[n]`.
pub fn dpo_loss(kind: LossType, alpha: f64, x: &PairLogps) -> Result<LossOutput> {
    x.check()?;
    // log σ(α h), [n].
    let log_sigma = || -> Result<_> { log_sigmoid(&(x.h()? * alpha)?) };
    let terms = match kind {
        LossType::Dpo => log_sigma()?.neg()?,
        LossType::Hdpo => (log_sigma()? * &x.weights)?.neg()?,
        LossType::Mdpo => {
            let chosen_reward = ((&x.policy_chosen - &x.ref_chosen)? * alpha)?;
            let anchor = log_sigmoid(&(chosen_reward - MDPO_DELTA)?)?.neg()?;
            (log_sigma()?.neg()? + anchor)?
        }
    };
    output_from_terms(x, alpha, terms)
}

/// A [`LossType`] with its α, as the trainers take it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loss {
    pub kind: LossType,
    alpha: f64,
}

impl Loss {
    /// The loss `kind` with α = `alpha` (positive and finite).
    pub fn new(kind: LossType, alpha: f64) -> Result<Self> {
        ensure!(
            alpha.is_finite() && alpha > 0.0,
            "alpha must be a positive finite number, got {alpha}"
        );
        Ok(Loss { kind, alpha })
    }
}

impl PreferenceLoss for Loss {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn alpha(&self) -> f64 {
        self.alpha
    }

    fn uses_weights(&self) -> bool {
        self.kind.uses_weights()
    }

    fn loss(&self, x: &PairLogps) -> Result<LossOutput> {
        dpo_loss(self.kind, self.alpha, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    fn ls(x: f64) -> f64 {
        -(-x).exp().ln_1p()
    }

    #[test]
    fn anchored_loss_values_and_gradients() {
        let dev = Device::Cpu;
        let pc = Var::new(&[-3.0f64, -10.0], &dev).unwrap();
        let pr = Var::new(&[-4.0f64, -9.0], &dev).unwrap();
        let t = |v: &[f64]| Tensor::new(v, &dev).unwrap();
        let (rc, rr) = ([-3.5, -9.0], [-3.0, -9.5]);
        let x = PairLogps {
            policy_chosen: pc.as_tensor().clone(),
            policy_rejected: pr.as_tensor().clone(),
            ref_chosen: t(&rc),
            ref_rejected: t(&rr),
            weights: t(&[5.0, 5.0]),
        };
        let a = 0.5;
        let out = dpo_loss(LossType::Mdpo, a, &x).unwrap();
        // Pair 0: h = (−3 + 3.5) − (−4 + 3) = 1.5, chosen reward a·0.5;
        // pair 1: h = (−10 + 9) − (−9 + 9.5) = −1.5, chosen reward a·(−1).
        let term = |h: f64, c: f64| -ls(a * h) - ls(a * c);
        let want = (term(1.5, 0.5) + term(-1.5, -1.0)) / 2.0;
        let got = out.loss.to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // d/d policy_chosen_i = −(a σ(−a h_i) + a σ(−a c_i)) / n; weights ignored.
        let g = out.loss.backward().unwrap();
        let gc: Vec<f64> = g.get(pc.as_tensor()).unwrap().to_vec1().unwrap();
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want0 = -(a * sig(-a * 1.5) + a * sig(-a * 0.5)) / 2.0;
        let want1 = -(a * sig(a * 1.5) + a * sig(a * 1.0)) / 2.0;
        assert!(
            (gc[0] - want0).abs() < 1e-12 && (gc[1] - want1).abs() < 1e-12,
            "{gc:?}"
        );
        // The rejected side sees only the DPO term.
        let gr: Vec<f64> = g.get(pr.as_tensor()).unwrap().to_vec1().unwrap();
        assert!((gr[0] - a * sig(-a * 1.5) / 2.0).abs() < 1e-12, "{gr:?}");
    }
}
