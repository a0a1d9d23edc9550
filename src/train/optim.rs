//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, single-tensor path):
//! decoupled weight decay, bias correction, ε added outside the square root.
//!
//! `candle_nn::AdamW` keeps its moments private, so a run could not be
//! checkpointed and resumed exactly; this one exposes (m, v, step) so that
//! [`super::checkpoint`] can save and restore them bit for bit.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Tensor, Var};

use super::config::OptimConfig;

/// AdamW over named variables, with its state in the open.
pub struct AdamW {
    params: Vec<(String, Var)>,
    /// First moments, one per parameter, same shape and dtype.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Optimiser steps taken so far.
    pub step: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// A fresh optimiser (zero moments) for `params`, whose names must be unique.
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Self> {
        ensure!(
            !params.is_empty(),
            "there are no trainable tensors to optimise"
        );
        let mut seen = std::collections::HashSet::new();
        for (n, v) in &params {
            ensure!(
                seen.insert(n.clone()),
                "trainable tensor name '{n}' appears twice"
            );
            ensure!(
                v.dtype().is_float(),
                "trainable tensor '{n}' has non-float dtype {:?}",
                v.dtype()
            );
        }
        let m = params
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            m,
            v,
            step: 0,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        })
    }

    /// The parameters, in the order of the moments.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `params[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        ensure!(
            grads.len() == self.params.len(),
            "got {} gradients for {} parameters",
            grads.len(),
            self.params.len()
        );
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2_sqrt = (1.0 - self.beta2.powf(t)).sqrt();
        let step_size = lr / bc1;
        for (i, ((name, p), g)) in self.params.iter().zip(grads).enumerate() {
            ensure!(
                g.dims() == p.dims(),
                "gradient of '{name}' has shape {:?}, the tensor {:?}",
                g.dims(),
                p.dims()
            );
            let g = g.to_dtype(p.dtype())?;
            // param.mul_(1 - lr·wd)
            let decayed = if self.weight_decay != 0.0 {
                (p.as_tensor() * (1.0 - lr * self.weight_decay))?
            } else {
                p.as_tensor().clone()
            };
            // exp_avg.lerp_(grad, 1 - β1)
            let m = (&self.m[i] + ((&g - &self.m[i])? * (1.0 - self.beta1))?)?;
            // exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1 - β2)
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            // denom = sqrt(v) / sqrt(bc2) + ε; param.addcdiv_(m, denom, -lr/bc1)
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let upd = ((&m / &denom)? * step_size)?;
            let new_p = (decayed - upd)?;
            p.set(&new_p)
                .with_context(|| format!("while updating '{name}'"))?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The state as named tensors: `m.<name>` and `v.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].clone()));
            out.push((format!("v.{n}"), self.v[i].clone()));
        }
        out
    }

    /// Restore the state saved by [`Self::state_tensors`] (and its step).
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            for (which, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{which}.{n}");
                let Some(t) = tensors.remove(&key) else {
                    bail!("optimiser state has no tensor '{key}'");
                };
                ensure!(
                    t.dims() == p.dims() && t.dtype() == p.dtype(),
                    "optimiser state '{key}' is {:?} {:?}, the parameter {:?} {:?}",
                    t.dtype(),
                    t.dims(),
                    p.dtype(),
                    p.dims()
                );
                *slot = t.to_device(p.device())?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("optimiser state has tensor '{extra}' for no trainable parameter");
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps checked against numbers worked out by hand from the
    /// PyTorch AdamW update (lr 0.1, β = (0.9, 0.999), ε = 1e-8, wd 0.01).
    #[test]
    fn two_steps_match_the_pytorch_formula() {
        let p = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let cfg = OptimConfig {
            weight_decay: 0.01,
            ..OptimConfig::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), p.clone())], &cfg).unwrap();
        let g1 = Tensor::new(&[0.5f64, -0.25], &Device::Cpu).unwrap();
        opt.step(&[g1], 0.1).unwrap();
        // Step 1: m = 0.1 g, v = 0.001 g², m̂ = g, v̂ = g², so the update is
        // lr · g / (|g| + ε) and p = p (1 − 0.001) − 0.1 sign(g) |g|/(|g| + ε).
        let got: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        let want1 = [
            1.0 * 0.999 - 0.1 * 0.5 / (0.5 + 1e-8),
            -2.0 * 0.999 + 0.1 * 0.25 / (0.25 + 1e-8),
        ];
        for (g, w) in got.iter().zip(want1) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        assert!((got[0] - 0.899_000_002).abs() < 1e-15);
        // Step 2 with g = (−1, 0): m = 0.9·0.05 + 0.1·(−1) = −0.055,
        // v = 0.999·0.00025 + 0.001·1 = 0.00124975, bc1 = 0.19, bc2 = 0.001999.
        let g2 = Tensor::new(&[-1.0f64, 0.0], &Device::Cpu).unwrap();
        opt.step(&[g2], 0.1).unwrap();
        let got: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        let denom0 = (0.001_249_75f64).sqrt() / (0.001_999f64).sqrt() + 1e-8;
        let w0 = want1[0] * 0.999 - (0.1 / 0.19) * (-0.055 / denom0);
        let m1: f64 = 0.9 * (0.1 * -0.25);
        let v1: f64 = 0.999 * (0.001 * 0.0625);
        let denom1 = v1.sqrt() / (0.001_999f64).sqrt() + 1e-8;
        let w1 = want1[1] * 0.999 - (0.1 / 0.19) * (m1 / denom1);
        assert!((got[0] - w0).abs() < 1e-14, "{} vs {w0}", got[0]);
        assert!((got[1] - w1).abs() < 1e-14, "{} vs {w1}", got[1]);
        // Written out: p = (0.934711354..., −1.829096182...).
        assert!((got[0] - 0.934_711_354_238_565).abs() < 1e-12, "{}", got[0]);
        assert!((got[1] + 1.829_096_182_373_716).abs() < 1e-12, "{}", got[1]);
        assert_eq!(opt.step, 2);
        let m: Vec<f64> = opt.m[0].to_vec1().unwrap();
        assert!((m[0] + 0.055).abs() < 1e-15 && (m[1] - m1).abs() < 1e-15);
    }

    #[test]
    fn state_round_trips_and_mismatches_are_named() {
        let p = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut a = AdamW::new(vec![("w".into(), p.clone())], &OptimConfig::default()).unwrap();
        a.step(&[Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap()], 0.01)
            .unwrap();
        let st: HashMap<_, _> = a.state_tensors().into_iter().collect();
        let mut b = AdamW::new(vec![("w".into(), p.clone())], &OptimConfig::default()).unwrap();
        b.load_state(st.clone(), a.step).unwrap();
        assert_eq!(b.step, 1);
        assert_eq!(
            b.m[0].to_vec1::<f32>().unwrap(),
            a.m[0].to_vec1::<f32>().unwrap()
        );
        let mut missing = st.clone();
        missing.remove("v.w");
        let e = b.load_state(missing, 1).unwrap_err().to_string();
        assert!(e.contains("'v.w'"), "{e}");
        let dup = AdamW::new(
            vec![("w".into(), p.clone()), ("w".into(), p)],
            &OptimConfig::default(),
        );
        assert!(dup.is_err());
    }
}
