//! mDPO's objective (Wang et al., 2024, "mDPO: Conditional Preference
//! Optimization for Multimodal Large Language Models", Eq. 3-5) on a batch
//! of pairs: the DPO term of Eq. 1 for each pair (standard pairs, and the
//! conditional pairs whose rejected side is the corrupted image) plus the
//! anchored preference term that keeps the chosen response's reward above
//! δ (mDPO uses δ = 0):
//!
//! L = −mean_i [ log σ(α h_i) + log σ(α (log π_θ(y⁺) − log π_ref(y⁺)) − δ) ]
//!
//! mDPO adds the anchor once per example, whose standard and conditional
//! pairs share the chosen answer and image; here it is added for every pair's
//! chosen side, so an example with both pairs anchors its chosen answer
//! twice. The pairs' weights are ignored.

use anyhow::Result;

use super::{log_sigmoid, output_from_terms, sigmoid_terms, LossOutput, PairLogps, PreferenceLoss};

/// DPO plus mDPO's anchor on the chosen reward.
#[derive(Clone, Debug)]
pub struct MDpoAnchored {
    alpha: f64,
    /// The anchor δ (mDPO: 0).
    pub delta: f64,
}

impl MDpoAnchored {
    pub fn new(alpha: f64) -> Self {
        Self { alpha, delta: 0.0 }
    }
}

impl PreferenceLoss for MDpoAnchored {
    fn name(&self) -> &'static str {
        "mdpo"
    }

    fn alpha(&self) -> f64 {
        self.alpha
    }

    fn uses_weights(&self) -> bool {
        false
    }

    fn loss(&self, x: &PairLogps) -> Result<LossOutput> {
        x.check()?;
        let chosen_reward = ((&x.policy_chosen - &x.ref_chosen)? * self.alpha)?;
        let anchor = log_sigmoid(&(chosen_reward - self.delta)?)?.neg()?;
        let terms = (sigmoid_terms(x, self.alpha, false)? + anchor)?;
        output_from_terms(x, self.alpha, terms)
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
        let out = MDpoAnchored::new(a).loss(&x).unwrap();
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
