//! Fused CPU kernels with their own backward for the decoder's training path.
//!
//! candle's own fused ops (`rms_norm`, `softmax_last_dim`, `rope`) drop
//! gradients (`docs/design.md`, "Differentiable training path"), so the decoder composes them from
//! differentiable element-wise ops: several passes and allocations over each
//! tensor forward, and as many again backward. The ops here do each in one
//! pass forward and one backward, as candle `CustomOp`s with `bwd`:
//!
//! - [`rms_norm`]: `x * rsqrt(mean(x^2) + eps) * w` over the last dim
//!   (gradient for `x`, and for `w` when `w` is tracked);
//! - [`attention_softmax`] / [`softmax_last`]: softmax over the last dim of
//!   `scale * scores + mask` (mask and scale folded in), backward
//!   `scale y (g - sum(g y))`;
//! - [`rope`]: the `rotate_half` rotary embedding of `[B, H, T, D]` with
//!   `cos`/`sin` tables `[T, D/2]` (backward: the inverse rotation);
//! - [`silu_mul`]: the SwiGLU product `silu(g) * u`.
//!
//! Each runs on the CPU for f32 and f64 (sums kept in f64); every other dtype
//! or device uses the composed form (the `*_composed` functions), so CUDA and
//! half-precision builds behave as before. Non-contiguous inputs are made
//! contiguous first. Tests compare values and gradients with the composed forms.

use std::ops::{Add, Div, Mul, Neg, Sub};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Rows handed to one rayon task at least (keeps small rows from paying
/// per-row scheduling).
const MIN_ROWS: usize = 16;

trait Fl:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ONE: Self;
    const NEG_INF: Self;
    fn to64(self) -> f64;
    fn from64(v: f64) -> Self;
    fn exp_(self) -> Self;
}

impl Fl for f32 {
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn to64(self) -> f64 {
        self as f64
    }
    fn from64(v: f64) -> Self {
        v as f32
    }
    fn exp_(self) -> Self {
        self.exp()
    }
}

impl Fl for f64 {
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn to64(self) -> f64 {
        self
    }
    fn from64(v: f64) -> Self {
        v
    }
    fn exp_(self) -> Self {
        self.exp()
    }
}

fn slice<'a, T>(s: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{op}: needs contiguous inputs"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.shape().dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("fused op: empty last dimension"),
    }
}

/// Whether the fused CPU kernels apply to these tensors.
fn fusable(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    let dt = first.dtype();
    matches!(dt, DType::F32 | DType::F64)
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == dt)
}

/// Dispatch on f32/f64 storages of the same dtype.
macro_rules! dispatch {
    ($op:expr, ($($s:ident : $l:ident),+), |$($v:ident),+| $body:expr) => {{
        #[allow(unused_parens)]
        match ($($s),+) {
            ($(CpuStorage::F32($v)),+) => {
                $(let $v: &[f32] = slice($v, $l, $op)?;)+
                CpuStorage::F32($body)
            }
            ($(CpuStorage::F64($v)),+) => {
                $(let $v: &[f64] = slice($v, $l, $op)?;)+
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 inputs of one dtype", $op),
        }
    }};
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm {
    eps: f64,
}

fn inv_rms<T: Fl>(row: &[T], eps: f64) -> f64 {
    let ss: f64 = row.iter().map(|&a| a.to64() * a.to64()).sum();
    1.0 / (ss / row.len() as f64 + eps).sqrt()
}

fn rms_fwd<T: Fl>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut out = x.to_vec();
    out.par_chunks_mut(h)
        .with_min_len(MIN_ROWS)
        .for_each(|row| {
            let r = T::from64(inv_rms(row, eps));
            for (o, &wj) in row.iter_mut().zip(w) {
                *o = *o * r * wj;
            }
        });
    out
}

/// `dx = r (g w) - x r^3 sum(g w x) / H`.
fn rms_bwd<T: Fl>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut out = g.to_vec();
    out.par_chunks_mut(h)
        .with_min_len(MIN_ROWS)
        .zip(x.par_chunks(h).with_min_len(MIN_ROWS))
        .for_each(|(o, xr)| {
            let r = inv_rms(xr, eps);
            let a: f64 = o
                .iter()
                .zip(w)
                .zip(xr)
                .map(|((&gj, &wj), &xj)| (gj * wj).to64() * xj.to64())
                .sum();
            let c = T::from64(r * r * r * a / h as f64);
            let r = T::from64(r);
            for ((oj, &wj), &xj) in o.iter_mut().zip(w).zip(xr) {
                *oj = r * (*oj * wj) - xj * c;
            }
        });
    out
}

fn check_rows(l1: &Layout, h: usize, op: &str) -> Result<()> {
    if last_dim(l1)? != h {
        candle_core::bail!("{op}: last dimension {} but weight {h}", last_dim(l1)?);
    }
    Ok(())
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_rows(l1, l2.shape().elem_count(), self.name())?;
        let out = dispatch!(self.name(), (s1: l1, s2: l2), |x, w| rms_fwd(x, w, self.eps));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormBwd { eps: self.eps })?;
        let dw = if w.track_op() {
            // Rare (norm weights are frozen under LoRA): sum over rows of g * x * r.
            let ones = w.ones_like()?;
            let normed = x.apply_op2_no_bwd(&ones, &RmsNorm { eps: self.eps })?;
            let h = w.elem_count();
            let rows = g.elem_count() / h;
            Some(
                (g * normed)?
                    .reshape((rows, h))?
                    .sum(0)?
                    .reshape(w.shape())?,
            )
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

struct RmsNormBwd {
    eps: f64,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-bwd"
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
        check_rows(l1, l2.shape().elem_count(), self.name())?;
        let out = dispatch!(self.name(), (s1: l1, s2: l2, s3: l3), |x, w, g| rms_bwd(
            x, w, g, self.eps
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// RMSNorm over the last dimension with weight `w` (`[H]`); fused on the CPU
/// for f32/f64, [`super::nn::rms_norm`] otherwise.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !fusable(&[x, w]) {
        return super::nn::rms_norm(x, w, eps);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------- softmax

/// Softmax over the last dimension of `scale * x + mask`; the additive mask
/// (`[B|1, 1, T, N]`, for scores `[B, H, T, N]`) is optional.
struct Softmax {
    scale: f64,
}

/// Mask geometry: scores `[B, H, T, N]`, mask row of score row `r` is
/// `(r / (H T)) % MB * T + r % T`.
#[derive(Clone, Copy)]
struct MaskRows {
    heads: usize,
    t: usize,
    mb: usize,
}

fn softmax_rows<T: Fl>(x: &[T], n: usize, scale: f64, mask: Option<(&[T], MaskRows)>) -> Vec<T> {
    let mut out = x.to_vec();
    let k = T::from64(scale);
    out.par_chunks_mut(n)
        .with_min_len(MIN_ROWS)
        .enumerate()
        .for_each(|(r, row)| {
            match mask {
                Some((m, g)) => {
                    let mr = (r / (g.heads * g.t)) % g.mb * g.t + r % g.t;
                    for (a, &mj) in row.iter_mut().zip(&m[mr * n..(mr + 1) * n]) {
                        *a = *a * k + mj;
                    }
                }
                None => {
                    if scale != 1.0 {
                        for a in row.iter_mut() {
                            *a = *a * k;
                        }
                    }
                }
            }
            let m = row
                .iter()
                .fold(T::NEG_INF, |m, &a| if a > m { a } else { m });
            let mut s = 0f64;
            for a in row.iter_mut() {
                *a = (*a - m).exp_();
                s += a.to64();
            }
            let inv = T::from64(1.0 / s);
            for a in row.iter_mut() {
                *a = *a * inv;
            }
        });
    out
}

/// `dx = scale y (g - sum(g y))`.
fn softmax_bwd_rows<T: Fl>(y: &[T], g: &[T], n: usize, scale: f64) -> Vec<T> {
    let mut out = g.to_vec();
    let k = T::from64(scale);
    out.par_chunks_mut(n)
        .with_min_len(MIN_ROWS)
        .zip(y.par_chunks(n).with_min_len(MIN_ROWS))
        .for_each(|(o, yr)| {
            let d: f64 = o.iter().zip(yr).map(|(&gj, &yj)| (gj * yj).to64()).sum();
            let d = T::from64(d);
            for (oj, &yj) in o.iter_mut().zip(yr) {
                *oj = k * yj * (*oj - d);
            }
        });
    out
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l)?;
        let out = dispatch!("fused-softmax", (s: l), |x| softmax_rows(x, n, self.scale, None));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxBwd { scale: self.scale },
        )?))
    }
}

impl CustomOp2 for Softmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, heads, t, n) = l1.shape().dims4()?;
        let (mb, one, mt, mn) = l2.shape().dims4()?;
        if one != 1 || mt != t || mn != n || mb == 0 {
            candle_core::bail!(
                "fused-masked-softmax: mask {:?} for scores {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let g = MaskRows { heads, t, mb };
        let out = dispatch!("fused-masked-softmax", (s1: l1, s2: l2), |x, m| softmax_rows(
            x,
            n,
            self.scale,
            Some((m, g))
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

struct SoftmaxBwd {
    scale: f64,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1)?;
        let out = dispatch!(self.name(), (s1: l1, s2: l2), |y, g| softmax_bwd_rows(
            y, g, n, self.scale
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// Softmax over the last dimension; fused on the CPU for f32/f64,
/// [`super::nn::softmax_last`] otherwise.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !fusable(&[x]) {
        return super::nn::softmax_last(x);
    }
    x.contiguous()?.apply_op1(Softmax { scale: 1.0 })
}

/// Attention probabilities `softmax(scale * scores + mask)` over the last
/// dimension, `scores` `[B, H, T, N]`, `mask` `[B|1, 1, T, N]` (additive).
/// Fused on the CPU for f32/f64; otherwise the composed form (half types
/// take the softmax in f32).
pub fn attention_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let fused = match mask {
        Some(m) => fusable(&[scores, m]),
        None => fusable(&[scores]),
    };
    if fused {
        let s = scores.contiguous()?;
        return match mask {
            Some(m) => s.apply_op2(&m.contiguous()?, Softmax { scale }),
            None => s.apply_op1(Softmax { scale }),
        };
    }
    let mut att = (scores * scale)?;
    if let Some(m) = mask {
        att = att.broadcast_add(m)?;
    }
    let dt = att.dtype();
    match dt {
        DType::F16 | DType::BF16 => {
            super::nn::softmax_last(&att.to_dtype(DType::F32)?)?.to_dtype(dt)
        }
        _ => super::nn::softmax_last(&att),
    }
}

// ---------------------------------------------------------------- RoPE

struct Rope;

/// `y1 = x1 c - x2 s`, `y2 = x2 c + x1 s` per row of `D` (halves `x1`, `x2`),
/// row `i` at position `i % T`.
fn rope_rows<T: Fl>(x: &[T], c: &[T], s: &[T], t: usize, d: usize) -> Vec<T> {
    let h = d / 2;
    let mut out = x.to_vec();
    out.par_chunks_mut(d)
        .with_min_len(MIN_ROWS)
        .enumerate()
        .for_each(|(i, row)| {
            let p = i % t;
            let (c, s) = (&c[p * h..(p + 1) * h], &s[p * h..(p + 1) * h]);
            let (x1, x2) = row.split_at_mut(h);
            for j in 0..h {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = a * c[j] - b * s[j];
                x2[j] = b * c[j] + a * s[j];
            }
        });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
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
        let (_, _, t, d) = l1.shape().dims4()?;
        if d % 2 != 0 || l2.shape().dims() != [t, d / 2] || l3.shape().dims() != [t, d / 2] {
            candle_core::bail!(
                "fused-rope: x {:?} needs cos/sin [{t}, {}], got {:?} / {:?}",
                l1.shape(),
                d / 2,
                l2.shape(),
                l3.shape()
            );
        }
        let out = dispatch!(self.name(), (s1: l1, s2: l2, s3: l3), |x, c, s| rope_rows(
            x, c, s, t, d
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The transpose of a rotation is the rotation by the opposite angle.
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}

/// The `rotate_half` rotary embedding of `x` (`[B, H, T, D]`) with tables
/// `cos`, `sin` (`[T, D/2]`), as `candle_nn::rotary_emb::rope_slow`; fused on
/// the CPU for f32/f64. Differentiable w.r.t. `x` (the tables are constants).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fusable(&[x, cos, sin]) {
        return candle_nn::rotary_emb::rope_slow(x, cos, sin);
    }
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

// ---------------------------------------------------------------- SwiGLU

struct SiluMul;

fn sigmoid<T: Fl>(a: T) -> T {
    T::ONE / (T::ONE + (-a).exp_())
}

fn silu_mul_fwd<T: Fl>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = u.to_vec();
    out.par_chunks_mut(4096)
        .zip(g.par_chunks(4096))
        .for_each(|(o, gc)| {
            for (oj, &gj) in o.iter_mut().zip(gc) {
                *oj = gj * sigmoid(gj) * *oj;
            }
        });
    out
}

/// `[dg ; du]` with `dg = d u s (1 + g (1 - s))`, `du = d g s`, `s = sigmoid(g)`.
fn silu_mul_bwd<T: Fl>(g: &[T], u: &[T], d: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = d.to_vec();
    out.extend_from_slice(d);
    let (dg, du) = out.split_at_mut(n);
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
        .for_each(|((dgc, duc), (gc, uc))| {
            for (((a, b), &gj), &uj) in dgc.iter_mut().zip(duc.iter_mut()).zip(gc).zip(uc) {
                let s = sigmoid(gj);
                let dj = *a;
                *a = dj * uj * s * (T::ONE + gj * (T::ONE - s));
                *b = dj * gj * s;
            }
        });
    out
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "fused-silu-mul: shapes {:?} and {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let out = dispatch!(self.name(), (s1: l1, s2: l2), |g, u| silu_mul_fwd(g, u));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SiluMulBwd)?;
        let dg = both.get(0)?.reshape(g.shape())?;
        let du = both.get(1)?.reshape(u.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

struct SiluMulBwd;

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "fused-silu-mul-bwd"
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
        let n = l1.shape().elem_count();
        if l2.shape().elem_count() != n || l3.shape().elem_count() != n {
            candle_core::bail!("fused-silu-mul-bwd: shapes differ");
        }
        let out = dispatch!(self.name(), (s1: l1, s2: l2, s3: l3), |g, u, d| silu_mul_bwd(
            g, u, d
        ));
        Ok((out, Shape::from((2, n))))
    }
}

/// `silu(g) * u` (the SwiGLU product); fused on the CPU for f32/f64.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if !fusable(&[g, u]) || g.shape() != u.shape() {
        return g.silu()? * u;
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::tests::max_diff;
    use candle_core::{Device, Var};

    fn tol(dt: DType) -> f64 {
        if dt == DType::F32 {
            1e-5
        } else {
            1e-10
        }
    }

    /// A non-contiguous `[a, b, c, d]` tensor (a transposed view).
    fn noncontig(dims: (usize, usize, usize, usize), dt: DType, scale: f64) -> Var {
        let (a, b, c, d) = dims;
        let t = Tensor::randn(0f64, scale, (a, c, b, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        Var::from_tensor(&t).unwrap()
    }

    /// Forward values and the gradient of `sum(f(x) * r)` w.r.t. `x`, for the
    /// fused and the composed form, on a transposed (non-contiguous) view.
    fn check1(
        name: &str,
        dims: (usize, usize, usize, usize),
        fused: impl Fn(&Tensor) -> Tensor,
        composed: impl Fn(&Tensor) -> Tensor,
    ) {
        for dt in [DType::F32, DType::F64] {
            let v = noncontig(dims, dt, 2.0);
            let x = v.as_tensor().transpose(1, 2).unwrap();
            assert!(!x.is_contiguous());
            let a = fused(&x);
            let b = composed(&x);
            let d = max_diff(&a, &b);
            assert!(d < tol(dt), "{name} {dt:?}: values differ by {d}");
            let r = a.randn_like(0.0, 1.0).unwrap();
            let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(ga.get(&v).unwrap(), gb.get(&v).unwrap());
            assert!(d < tol(dt), "{name} {dt:?}: gradients differ by {d}");
        }
    }

    #[test]
    fn rms_norm_matches_composed() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f64, 0.3, 24, &dev).unwrap();
        let wf = w.clone();
        check1(
            "rms_norm",
            (2, 5, 3, 24),
            move |x| rms_norm(x, &wf.to_dtype(x.dtype()).unwrap(), 1e-6).unwrap(),
            move |x| crate::model::nn::rms_norm(x, &w.to_dtype(x.dtype()).unwrap(), 1e-6).unwrap(),
        );
        // A trainable weight gets its gradient too.
        let x = Var::randn(0f64, 1.0, (4, 6, 8), &dev).unwrap();
        let w = Var::randn(1f64, 0.3, 8, &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, (4, 6, 8), &dev).unwrap();
        let a = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let b = crate::model::nn::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&w).unwrap(), gb.get(&w).unwrap()) < 1e-10);
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-10);
    }

    #[test]
    fn softmax_matches_composed_with_mask() {
        // Scores with a causal mask of -1e30 added, as in attention.
        let mask =
            crate::model::decoder::attention_mask(None, 1, 7, 0, None, DType::F64, &Device::Cpu)
                .unwrap()
                .unwrap();
        let m2 = mask.clone();
        check1(
            "softmax",
            (2, 3, 7, 7),
            move |x| {
                softmax_last(&x.broadcast_add(&mask.to_dtype(x.dtype()).unwrap()).unwrap()).unwrap()
            },
            move |x| {
                crate::model::nn::softmax_last(
                    &x.broadcast_add(&m2.to_dtype(x.dtype()).unwrap()).unwrap(),
                )
                .unwrap()
            },
        );
    }

    #[test]
    fn attention_softmax_folds_scale_and_mask() {
        // Per-batch padding mask [2, 1, 6, 6] and a shared causal one [1, 1, 6, 6].
        let kv = vec![vec![true; 6], vec![true, true, true, true, false, false]];
        for key_valid in [Some(kv), None] {
            let mask = crate::model::decoder::attention_mask(
                key_valid.as_deref(),
                2,
                6,
                0,
                None,
                DType::F64,
                &Device::Cpu,
            )
            .unwrap()
            .unwrap();
            let m2 = mask.clone();
            check1(
                "attention_softmax",
                (2, 3, 6, 6),
                move |x| {
                    attention_softmax(x, Some(&mask.to_dtype(x.dtype()).unwrap()), 0.125).unwrap()
                },
                move |x| {
                    crate::model::nn::softmax_last(
                        &(x * 0.125)
                            .unwrap()
                            .broadcast_add(&m2.to_dtype(x.dtype()).unwrap())
                            .unwrap(),
                    )
                    .unwrap()
                },
            );
        }
        check1(
            "attention_softmax (no mask)",
            (1, 2, 3, 5),
            |x| attention_softmax(x, None, 0.5).unwrap(),
            |x| crate::model::nn::softmax_last(&(x * 0.5).unwrap()).unwrap(),
        );
    }

    #[test]
    fn rope_matches_rope_slow() {
        for dt in [DType::F32, DType::F64] {
            let (c, s) =
                crate::model::decoder::rope_tables(10000.0, 8, 3, 5, dt, &Device::Cpu).unwrap();
            let (c2, s2) = (c.clone(), s.clone());
            check1(
                "rope",
                (2, 3, 5, 8),
                move |x| {
                    rope(
                        x,
                        &c.to_dtype(x.dtype()).unwrap(),
                        &s.to_dtype(x.dtype()).unwrap(),
                    )
                    .unwrap()
                },
                move |x| {
                    candle_nn::rotary_emb::rope_slow(
                        x,
                        &c2.to_dtype(x.dtype()).unwrap(),
                        &s2.to_dtype(x.dtype()).unwrap(),
                    )
                    .unwrap()
                },
            );
        }
    }

    #[test]
    fn silu_mul_matches_composed() {
        let dev = Device::Cpu;
        for dt in [DType::F32, DType::F64] {
            let gv = noncontig((2, 4, 3, 10), dt, 3.0);
            let uv = Var::randn(0f64, 1.0, (2, 4, 3, 10), &dev).unwrap();
            let uv = Var::from_tensor(&uv.as_tensor().to_dtype(dt).unwrap()).unwrap();
            let g = gv.as_tensor().transpose(1, 2).unwrap();
            let u = uv.as_tensor();
            let a = silu_mul(&g, u).unwrap();
            let b = (g.silu().unwrap() * u).unwrap();
            assert!(max_diff(&a, &b) < tol(dt));
            let r = a.randn_like(0.0, 1.0).unwrap();
            let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&gv, &uv] {
                let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
                assert!(d < tol(dt), "silu_mul {dt:?}: gradients differ by {d}");
            }
        }
    }

    #[test]
    fn other_dtypes_fall_back_to_the_composed_forms() {
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 4), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(rms_norm(&x, &w, 1e-6).unwrap().dtype(), DType::BF16);
        assert_eq!(silu_mul(&x, &x).unwrap().dtype(), DType::BF16);
    }
}
