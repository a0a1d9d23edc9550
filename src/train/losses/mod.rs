//! Preference losses: the [`LossType`]s (DPO, HDPO, mDPO's anchored DPO) and
//! [`dpo::dpo_loss`], one function with one branch per loss type in the
//! manner of TRL's `DPOTrainer.dpo_loss`; a new loss is a new [`LossType`]
//! variant and its branch there.
//!
//! Every loss sees the summed response log-probs of the policy and the
//! reference for the chosen and the rejected side of each pair (paper Eq. 1
//! and Eq. 13) and returns the mean loss over the pairs it was given plus the
//! per-pair quantities TRL logs.

pub mod dpo;

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use dpo::{dpo_loss, Loss};

/// The default α (TRL's `beta`) of Eq. 1 and Eq. 13.
pub const DEFAULT_ALPHA: f64 = 0.1;

/// Log-probs of one batch of pairs; every tensor has shape `[n]` and one dtype.
#[derive(Clone, Debug)]
pub struct PairLogps {
    /// log π_θ(y⁺|x⁺), summed over response tokens (carries gradients).
    pub policy_chosen: Tensor,
    /// log π_θ(y⁻|x⁻).
    pub policy_rejected: Tensor,
    /// log π_ref(y⁺|x⁺) (constants).
    pub ref_chosen: Tensor,
    /// log π_ref(y⁻|x⁻).
    pub ref_rejected: Tensor,
    /// The per-pair weight w of Eq. 13 (1.0 for plain DPO pairs).
    pub weights: Tensor,
}

impl PairLogps {
    /// Number of pairs, after checking that all five tensors are `[n]` with one dtype.
    pub fn check(&self) -> Result<usize> {
        let n = match self.policy_chosen.dims() {
            [n] => *n,
            d => bail!("policy_chosen log-probs must have shape [n], got {d:?}"),
        };
        ensure!(n > 0, "a loss needs at least one pair");
        let dt = self.policy_chosen.dtype();
        for (name, t) in [
            ("policy_rejected", &self.policy_rejected),
            ("ref_chosen", &self.ref_chosen),
            ("ref_rejected", &self.ref_rejected),
            ("weights", &self.weights),
        ] {
            ensure!(
                t.dims() == [n],
                "{name} must have shape [{n}] like policy_chosen, got {:?}",
                t.dims()
            );
            ensure!(
                t.dtype() == dt,
                "{name} has dtype {:?} but policy_chosen has {dt:?}",
                t.dtype()
            );
        }
        ensure!(
            matches!(dt, DType::F32 | DType::F64 | DType::BF16 | DType::F16),
            "log-probs must be floating point, got {dt:?}"
        );
        Ok(n)
    }

    /// The implicit reward difference h_i = (π_c − ref_c) − (π_r − ref_r) (the
    /// argument of σ in Eq. 1 / Eq. 13 before the factor α), shape `[n]`.
    pub fn h(&self) -> Result<Tensor> {
        let c = (&self.policy_chosen - &self.ref_chosen)?;
        let r = (&self.policy_rejected - &self.ref_rejected)?;
        Ok((c - r)?)
    }
}

/// What a loss returns for one batch.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The scalar loss: the mean over the batch's pairs (differentiable).
    pub loss: Tensor,
    /// Each pair's term of that mean, `[n]` (detached).
    pub per_pair: Tensor,
    /// h_i (see [`PairLogps::h`]), `[n]` (detached).
    pub h: Tensor,
    /// TRL's `rewards/chosen`: α (π_c − ref_c), `[n]` (detached).
    pub chosen_rewards: Tensor,
    /// TRL's `rewards/rejected`: α (π_r − ref_r), `[n]` (detached).
    pub rejected_rewards: Tensor,
}

/// A preference loss (DPO, HDPO, baselines).
pub trait PreferenceLoss: Send + Sync {
    /// The name used on the command line and in logs (`dpo`, `hdpo`).
    fn name(&self) -> &'static str;
    /// α (TRL's beta).
    fn alpha(&self) -> f64;
    /// Whether the pairs' weights enter the loss.
    fn uses_weights(&self) -> bool;
    /// The loss of one batch of pairs (mean over the pairs).
    fn loss(&self, x: &PairLogps) -> Result<LossOutput>;
}

/// The preference losses hdpo trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// HDPO (Eq. 13): the DPO sigmoid loss weighted by each pair's w (Eq. 11).
    Hdpo,
    /// Plain DPO (Eq. 1), TRL's `loss_type="sigmoid"`; weights ignored.
    Dpo,
    /// mDPO's objective: DPO plus an anchor on the chosen reward.
    Mdpo,
}

impl LossType {
    /// Every loss type, in the order of [`NAMES`].
    pub const ALL: [LossType; 3] = [LossType::Dpo, LossType::Hdpo, LossType::Mdpo];

    /// The name used on the command line, in configs and in logs.
    pub fn name(self) -> &'static str {
        match self {
            LossType::Hdpo => "hdpo",
            LossType::Dpo => "dpo",
            LossType::Mdpo => "mdpo",
        }
    }

    /// Whether the pairs' weights enter the loss.
    pub fn uses_weights(self) -> bool {
        self == LossType::Hdpo
    }
}

impl std::fmt::Display for LossType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LossType {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match LossType::ALL.into_iter().find(|t| t.name() == s) {
            Some(t) => Ok(t),
            None => bail!(
                "unknown preference loss '{s}' (known: {})",
                NAMES.join(", ")
            ),
        }
    }
}

/// The registry: a loss by name with the given α.
pub fn by_name(name: &str, alpha: f64) -> Result<Box<dyn PreferenceLoss>> {
    Ok(Box::new(Loss::new(name.parse()?, alpha)?))
}

/// Names accepted by [`by_name`].
pub const NAMES: &[&str] = &["dpo", "hdpo", "mdpo"];

/// A loss's output from its per-pair terms `[n]` (graph kept): their mean,
/// and the detached terms, h and TRL's rewards.
pub(crate) fn output_from_terms(x: &PairLogps, alpha: f64, terms: Tensor) -> Result<LossOutput> {
    let loss = terms.mean_all()?;
    let (h, chosen_rewards, rejected_rewards) = rewards(x, alpha)?;
    Ok(LossOutput {
        loss,
        per_pair: terms.detach(),
        h,
        chosen_rewards,
        rejected_rewards,
    })
}

/// The shared parts of the sigmoid losses: rewards and h, detached.
pub(crate) fn rewards(x: &PairLogps, alpha: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let h = x.h()?.detach();
    let rc = ((&x.policy_chosen - &x.ref_chosen)? * alpha)?.detach();
    let rr = ((&x.policy_rejected - &x.ref_rejected)? * alpha)?.detach();
    Ok((h, rc, rr))
}

/// log σ(x), elementwise, numerically stable for large |x| and built from
/// differentiable candle ops only (candle has no log-sigmoid with a backward):
///
/// ```text
/// log σ(x) = −log(1 + e^(−x))        for x ≥ 0
///          = x − log(1 + e^(x))      for x < 0
/// ```
///
/// Each branch is evaluated on the input clamped to its own half-line (via
/// `where_cond`, whose backward routes the gradient to the chosen side), so no
/// `exp` overflows and no NaN reaches the gradient of the unused branch. The
/// derivative is σ(−x), which is 1/2 at x = 0 (the first step of a run whose
/// adapter starts at the reference, where h = 0 for every pair).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let zeros = x.zeros_like()?;
    let pos = x.ge(0.0)?;
    let xp = pos.where_cond(x, &zeros)?; // x on x ≥ 0, else 0
    let xn = pos.where_cond(&zeros, x)?; // x on x < 0, else 0
    let branch_pos = ((xp.neg()?.exp()? + 1.0)?.log()?).neg()?;
    let branch_neg = (&xn - (xn.exp()? + 1.0)?.log()?)?;
    Ok(pos.where_cond(&branch_pos, &branch_neg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ls64(x: f64) -> f64 {
        if x >= 0.0 {
            -(-x).exp().ln_1p()
        } else {
            x - x.exp().ln_1p()
        }
    }

    #[test]
    fn log_sigmoid_values_and_gradient_match_finite_differences() {
        let xs = [-800.0, -30.0, -2.5, -1e-3, 0.0, 1e-3, 0.7, 4.0, 40.0, 800.0];
        let v = Var::new(&xs[..], &Device::Cpu).unwrap();
        let y = log_sigmoid(v.as_tensor()).unwrap();
        let vals: Vec<f64> = y.to_vec1().unwrap();
        for (x, got) in xs.iter().zip(&vals) {
            let want = ls64(*x);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "x={x}: {got} vs {want}"
            );
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let grad: Vec<f64> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        for (x, gx) in xs.iter().zip(&grad) {
            assert!(gx.is_finite(), "gradient at {x} is {gx}");
            let eps = 1e-6;
            let fd = (ls64(x + eps) - ls64(x - eps)) / (2.0 * eps);
            let analytic = 1.0 / (1.0 + x.exp()); // σ(−x)
            assert!(
                (gx - analytic).abs() < 1e-12,
                "x={x}: {gx} vs σ(−x)={analytic}"
            );
            assert!(
                (gx - fd).abs() < 1e-7,
                "x={x}: {gx} vs finite difference {fd}"
            );
        }
        // The derivative at 0 is exactly 1/2.
        assert_eq!(grad[4], 0.5);
    }

    #[test]
    fn log_sigmoid_f32_is_finite_at_extremes() {
        let t = Tensor::new(&[-1e4f32, -100.0, 0.0, 100.0, 1e4], &Device::Cpu).unwrap();
        let v: Vec<f32> = log_sigmoid(&t).unwrap().to_vec1().unwrap();
        assert_eq!(v[0], -1e4);
        assert_eq!(v[1], -100.0);
        assert!((v[2] + std::f32::consts::LN_2).abs() < 1e-7);
        assert!(v[3] <= 0.0 && v[3] > -1e-30);
        assert_eq!(v[4], 0.0);
    }

    #[test]
    fn registry_knows_the_losses_and_rejects_bad_alpha() {
        assert_eq!(by_name("dpo", 0.1).unwrap().name(), "dpo");
        assert_eq!(by_name("hdpo", 0.1).unwrap().name(), "hdpo");
        assert_eq!(by_name("mdpo", 0.1).unwrap().name(), "mdpo");
        let e = by_name("ipo", 0.1).err().unwrap().to_string();
        assert!(e.contains("unknown preference loss 'ipo'"), "{e}");
        assert!(by_name("dpo", 0.0).is_err());
        assert!(by_name("dpo", f64::NAN).is_err());
    }
}
