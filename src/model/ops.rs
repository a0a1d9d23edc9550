//! Custom candle ops with their own backward, for training speed on the CPU.
//!
//! - [`frozen_linear`]: `x W^T` for a frozen `W`. candle's `matmul` backward
//!   always computes the gradient of both operands, so every frozen weight
//!   would cost a wasted `dW` matmul (a third of the backward FLOPs, and the
//!   whole `[V, H]` LM-head gradient). This op returns only `dx = g W`.
//! - [`log_softmax_gather`]: `log_softmax(logits)[target]` per row in one pass,
//!   backward `g (onehot - softmax)` in one pass, instead of the ~10 passes
//!   over `[rows, V]` of the composed form.
//!
//! Both run on the CPU for f32/f64 (and any CPU dtype for the linear); other
//! devices use the composed forms (see the callers). Tests compare them with
//! the composed forms, values and gradients.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct FrozenLinear;

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-linear: x has {k} features, W expects {k2}");
        }
        let wt = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, n, m, k), l1, &wt)?;
        Ok((out, Shape::from((n, m))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// `x W^T` (`x`: `[N, in]`, `W`: `[out, in]`) with a gradient for `x` only.
/// Falls back to `matmul` when `W` is trainable or not on the CPU.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.is_variable() || w.track_op() || !x.device().is_cpu() || x.dtype() != w.dtype() {
        return x.matmul(&w.t()?);
    }
    x.apply_op2(w, FrozenLinear)
}

struct LogSoftmaxGather;

/// `exp` in the precision of the logits: f32 logits take `expf` (the
/// differences `a - max` are exact in f32, and the sum is kept in f64), which
/// is several times cheaper than the f64 `exp` over a 32k-entry row.
fn exp_f32(d: f64) -> f64 {
    f64::from((d as f32).exp())
}

fn rows_fwd<T: Copy + Send + Sync>(
    x: &[T],
    t: &[u32],
    v: usize,
    to: impl Fn(T) -> f64 + Sync,
    ex: impl Fn(f64) -> f64 + Sync,
) -> Result<Vec<f64>> {
    x.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &tid)| {
            let tid = tid as usize;
            if tid >= v {
                candle_core::bail!("log-softmax-gather: target {tid} >= vocabulary {v}");
            }
            let m = row.iter().map(|&a| to(a)).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|&a| ex(to(a) - m)).sum();
            Ok(to(row[tid]) - m - s.ln())
        })
        .collect()
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("log-softmax-gather needs contiguous inputs"),
    }
}

impl CustomOp2 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "log-softmax-gather"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (r, v) = l1.shape().dims2()?;
        let CpuStorage::U32(t) = s2 else {
            candle_core::bail!("log-softmax-gather: targets must be u32");
        };
        let t = contiguous(t, l2)?;
        if t.len() != r {
            candle_core::bail!("log-softmax-gather: {r} rows but {} targets", t.len());
        }
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(
                rows_fwd(contiguous(x, l1)?, t, v, |a| a as f64, exp_f32)?
                    .into_iter()
                    .map(|a| a as f32)
                    .collect(),
            ),
            CpuStorage::F64(x) => {
                CpuStorage::F64(rows_fwd(contiguous(x, l1)?, t, v, |a| a, f64::exp)?)
            }
            _ => candle_core::bail!("log-softmax-gather: f32 or f64 logits"),
        };
        Ok((out, Shape::from(r)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &LogSoftmaxGatherBwd)?;
        Ok((Some(g), None))
    }
}

struct LogSoftmaxGatherBwd;

fn rows_bwd<T: Copy + Send + Sync>(
    x: &[T],
    t: &[u32],
    g: &[T],
    v: usize,
    to: impl Fn(T) -> f64 + Sync,
    from: impl Fn(f64) -> T + Sync,
    ex: impl Fn(f64) -> f64 + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = x.to_vec();
    out.par_chunks_mut(v)
        .zip(x.par_chunks(v))
        .zip(t.par_iter().zip(g.par_iter()))
        .for_each(|((o, row), (&tid, &gr))| {
            let gr = to(gr);
            let m = row.iter().map(|&a| to(a)).fold(f64::NEG_INFINITY, f64::max);
            // One exp per entry: keep exp(a - m) in a row buffer, then scale.
            let e: Vec<f64> = row.iter().map(|&a| ex(to(a) - m)).collect();
            let s: f64 = e.iter().sum();
            let k = -gr / s;
            for (oj, &ej) in o.iter_mut().zip(&e) {
                *oj = from(k * ej);
            }
            if let Some(oj) = o.get_mut(tid as usize) {
                *oj = from(to(*oj) + gr);
            }
        });
    out
}

impl CustomOp3 for LogSoftmaxGatherBwd {
    fn name(&self) -> &'static str {
        "log-softmax-gather-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l1.shape().dims2()?;
        let CpuStorage::U32(t) = s2 else {
            candle_core::bail!("log-softmax-gather: targets must be u32");
        };
        let t = contiguous(t, l2)?;
        let out = match (s1, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(rows_bwd(
                contiguous(x, l1)?,
                t,
                contiguous(g, l3)?,
                v,
                |a| a as f64,
                |a| a as f32,
                exp_f32,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(rows_bwd(
                contiguous(x, l1)?,
                t,
                contiguous(g, l3)?,
                v,
                |a| a,
                |a| a,
                f64::exp,
            )),
            _ => candle_core::bail!("log-softmax-gather: f32 or f64 logits and gradient"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `log_softmax(logits, -1)` gathered at `targets`: `logits` `[R, V]` (f32 or
/// f64), `targets` `[R]` u32, result `[R]`. Differentiable w.r.t. `logits`.
/// On non-CPU devices the composed `log_softmax` + `gather` is used.
pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if !logits.device().is_cpu() || !matches!(logits.dtype(), DType::F32 | DType::F64) {
        return log_softmax_gather_composed(logits, &targets);
    }
    logits.contiguous()?.apply_op2(&targets, LogSoftmaxGather)
}

/// The composed reference form of [`log_softmax_gather`].
pub fn log_softmax_gather_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    logp.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// max |a - b| over all elements, as f64 (shared by the fused-op tests).
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn log_softmax_gather_matches_composed_values_and_gradients() {
        let dev = Device::Cpu;
        for dt in [DType::F32, DType::F64] {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 3.0, (7, 50), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap();
            let t = Tensor::new(&[0u32, 49, 3, 3, 17, 25, 1], &dev).unwrap();
            let w = Tensor::new(&[1.0f64, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0], &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let a = log_softmax_gather(x.as_tensor(), &t).unwrap();
            let b = log_softmax_gather_composed(x.as_tensor(), &t).unwrap();
            let tol = if dt == DType::F32 { 1e-5 } else { 1e-12 };
            assert!(max_diff(&a, &b) < tol);
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap());
            assert!(d < tol, "{dt:?}: gradient differs by {d}");
        }
    }

    #[test]
    fn frozen_linear_matches_matmul_and_skips_the_weight_gradient() {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1.0, (5, 8), &dev).unwrap();
        let w = Tensor::randn(0f64, 1.0, (3, 8), &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, (5, 3), &dev).unwrap();
        let a = frozen_linear(x.as_tensor(), &w).unwrap();
        let b = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&a, &b) < 1e-12);
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-12);
        assert!(ga.get(&w).is_none());
        // A trainable weight takes the ordinary path and gets its gradient.
        let wv = Var::from_tensor(&w).unwrap();
        let c = frozen_linear(x.as_tensor(), wv.as_tensor()).unwrap();
        let gc = (c * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(gc.get(&wv).is_some());
    }
}
