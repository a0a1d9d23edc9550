//! Building blocks shared by the vision tower, the projector and the decoder:
//! a linear layer that can carry a LoRA adapter, and the normalisations.
//!
//! Only differentiable candle ops are used here (`docs/design.md`, "Differentiable training path": the fused
//! `rms_norm` / `layer_norm` / `softmax_last_dim` drop gradients silently).

use candle_core::{DType, Result, Tensor, Var};
use rand::Rng;

/// Per-call forward options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fwd {
    /// Apply the LoRA adapters (`false` = the base model, the DPO reference policy).
    pub adapters: bool,
    /// Seed for LoRA dropout; `None` disables dropout (evaluation, reference
    /// log-probs). Each module derives its own stream from this seed and its name.
    pub dropout_seed: Option<u64>,
}

/// A LoRA adapter on one linear layer: `(alpha / r) * B (A dropout(x))` (PEFT).
#[derive(Clone, Debug)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability on the adapter's input.
    pub dropout: f32,
}

/// `y = x W^T + b`, plus an optional LoRA term. Weights are `[out, in]` as stored.
#[derive(Clone, Debug)]
pub struct LoraLinear {
    /// The PEFT module name (e.g. `model.language_model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl LoraLinear {
    pub fn new(name: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        LoraLinear {
            name,
            weight,
            bias,
            lora: None,
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    /// `W x + b + (alpha/r) B A dropout(x)`; `x` is `[..., in]`.
    pub fn forward(&self, x: &Tensor, fwd: &Fwd) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let n = x.elem_count() / in_f.max(1);
        let x2 = x.reshape((n, in_f))?;
        let mut y = super::ops::frozen_linear(&x2, &self.weight)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let (Some(l), true) = (&self.lora, fwd.adapters) {
            let ldt = l.a.dtype();
            let mut h = x2.to_dtype(ldt)?;
            if let (Some(seed), true) = (fwd.dropout_seed, l.dropout > 0.0) {
                h = seeded_dropout(&h, l.dropout, seed, &self.name)?;
            }
            let h = h.matmul(&l.a.as_tensor().t()?)?;
            let h = (h.matmul(&l.b.as_tensor().t()?)? * l.scale)?;
            let ydt = y.dtype();
            y = (y + h.to_dtype(ydt)?)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
        }
        y.reshape(out_dims)
    }

    /// The effective weight `W + (alpha/r) B A` (for merging).
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => {
                let ba = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
                let w = self.weight.to_dtype(ba.dtype())?;
                (w + ba)?.to_dtype(self.weight.dtype())
            }
        }
    }
}

/// Inverted dropout with a mask drawn from `util::seed::rng_for(seed, name)`.
fn seeded_dropout(x: &Tensor, p: f32, seed: u64, name: &str) -> Result<Tensor> {
    let mut rng = crate::util::seed::rng_for(seed, &format!("lora-dropout/{name}"));
    let keep = 1.0 / (1.0 - p as f64);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < p {
                0.0
            } else {
                keep as f32
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// RMSNorm `x * rsqrt(mean(x^2) + eps) * w`, differentiable (computed in f32 for half types).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let internal = match dt {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let h = x.dim(candle_core::D::Minus1)?;
    let xf = x.to_dtype(internal)?;
    let ms = (xf.sqr()?.sum_keepdim(candle_core::D::Minus1)? / h as f64)?;
    let normed = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    normed.to_dtype(dt)?.broadcast_mul(w)
}

/// LayerNorm with affine weight and bias, differentiable.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let internal = match dt {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let h = x.dim(candle_core::D::Minus1)?;
    let xf = x.to_dtype(internal)?;
    let mean = (xf.sum_keepdim(candle_core::D::Minus1)? / h as f64)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(candle_core::D::Minus1)? / h as f64)?;
    let normed = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dt)?.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension, composed from differentiable ops.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, candle_core::D::Minus1)
}

/// The additive value that masks out an attention score in `dtype`.
pub fn mask_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        _ => -1e30,
    }
}
