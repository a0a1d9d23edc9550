//! Gradient accumulation over micro-steps, global-norm clipping and norms.
//!
//! Each micro-step runs its own forward and backward; its `GradStore` is
//! added here and dropped, together with the micro-step's graph, before the
//! next micro-step starts (`docs/design.md`, "Gradient accumulation").

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// The running sum of the gradients of one optimiser step.
pub struct GradAccumulator {
    params: Vec<(String, Var)>,
    acc: Vec<Option<Tensor>>,
    micro_steps: usize,
}

impl GradAccumulator {
    pub fn new(params: &[(String, Var)]) -> Self {
        Self {
            params: params.to_vec(),
            acc: vec![None; params.len()],
            micro_steps: 0,
        }
    }

    /// Add the gradients of one micro-step (the store is consumed and dropped).
    pub fn add(&mut self, mut store: GradStore) -> Result<()> {
        for ((_, v), slot) in self.params.iter().zip(self.acc.iter_mut()) {
            if let Some(g) = store.remove(v.as_tensor()) {
                let g = g.detach();
                *slot = Some(match slot.take() {
                    None => g,
                    Some(a) => (a + g)?.detach(),
                });
            }
        }
        self.micro_steps += 1;
        Ok(())
    }

    pub fn micro_steps(&self) -> usize {
        self.micro_steps
    }

    /// The summed gradients times `scale`, one per parameter. A parameter that
    /// no micro-step reached is an error: it is not on the loss's graph (for
    /// example because a fused candle op dropped its gradient).
    pub fn finish(self, scale: f64) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.acc.len());
        for ((name, _), g) in self.params.iter().zip(self.acc) {
            let Some(g) = g else {
                bail!(
                    "trainable tensor '{name}' received no gradient: it is not on the loss's \
                     graph (a fused candle op such as softmax_last_dim or rms_norm drops \
                     gradients, see docs/design.md, \"Differentiable training path\")"
                );
            };
            out.push(if scale == 1.0 { g } else { (g * scale)? });
        }
        Ok(out)
    }
}

/// The L2 norm of one tensor, accumulated in f64.
pub fn l2_norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt())
}

/// The global L2 norm over all gradients.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0.0f64;
    for g in grads {
        let n = l2_norm(g)?;
        s += n * n;
    }
    Ok(s.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: scale every gradient by
/// min(1, max_norm / (‖g‖ + 1e-6)). Returns the norm before clipping.
/// A non-finite norm is an error (the step would corrupt the parameters).
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if !norm.is_finite() {
        bail!("the gradient norm is {norm}: a log-prob or the loss is not finite");
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients() {
        let d = Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3.0f64, 0.0], &d).unwrap(),
            Tensor::new(&[[0.0f64], [4.0]], &d).unwrap(),
        ];
        let n = clip_global_norm(&mut g, 1.0).unwrap();
        assert_eq!(n, 5.0);
        let coef = 1.0 / (5.0 + 1e-6);
        assert_eq!(g[0].to_vec1::<f64>().unwrap(), vec![3.0 * coef, 0.0]);
        assert!((global_norm(&g).unwrap() - 5.0 * coef).abs() < 1e-15);
        let before = g[1].to_vec2::<f64>().unwrap();
        let n2 = clip_global_norm(&mut g, 10.0).unwrap();
        assert!((n2 - 5.0 * coef).abs() < 1e-15);
        assert_eq!(g[1].to_vec2::<f64>().unwrap(), before);
        let mut bad = vec![Tensor::new(&[f64::NAN], &d).unwrap()];
        assert!(clip_global_norm(&mut bad, 1.0).is_err());
    }

    #[test]
    fn accumulation_sums_micro_steps_and_names_missing_gradients() {
        let d = Device::Cpu;
        let a = Var::new(&[1.0f64, 2.0], &d).unwrap();
        let b = Var::new(&[5.0f64], &d).unwrap();
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut acc = GradAccumulator::new(&params);
        for k in [1.0, 3.0] {
            let loss = ((a.as_tensor() * k).unwrap().sum_all().unwrap()
                + b.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            acc.add(loss.backward().unwrap()).unwrap();
        }
        assert_eq!(acc.micro_steps(), 2);
        let g = acc.finish(0.5).unwrap();
        assert_eq!(g[0].to_vec1::<f64>().unwrap(), vec![2.0, 2.0]);
        assert_eq!(g[1].to_vec1::<f64>().unwrap(), vec![10.0]);
        let mut acc = GradAccumulator::new(&params);
        acc.add(a.as_tensor().sum_all().unwrap().backward().unwrap())
            .unwrap();
        let e = acc.finish(1.0).unwrap_err().to_string();
        assert!(e.contains("'b' received no gradient"), "{e}");
    }
}
