//! Building blocks shared by the towers: linear layers, LayerNorm, attention
//! and activations, each with a differentiable path.
//!
//! candle's fused `layer_norm` and `softmax_last_dim` drop gradients silently
//! (`docs/design.md`, "Differentiable training path"), so every block takes `diff: bool`: `true` composes
//! the op from basic differentiable ops (`layer_norm_slow`,
//! `softmax(x, D::Minus1)`), `false` uses the fused kernels for inference.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

/// `y = x W^T + b` with HF's `[out, in]` weight layout.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Load `{prefix}.weight` and, when `bias`, `{prefix}.bias`.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb
            .get_with_hints((out_dim, in_dim), "weight", init)
            .with_context(|| format!("tensor {}.weight", vb.prefix()))?;
        let bias = if bias {
            Some(
                vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))
                    .with_context(|| format!("tensor {}.bias", vb.prefix()))?,
            )
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Load with a bias when the checkpoint has one.
    pub fn load_auto_bias(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let bias = vb.contains_tensor("bias");
        Self::load(vb, in_dim, out_dim, bias)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.t()?;
        let y = match x.rank() {
            2 => x.matmul(&w)?,
            _ => x.broadcast_matmul(&w)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// LayerNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb
            .get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))
            .with_context(|| format!("tensor {}.weight", vb.prefix()))?;
        let bias = vb
            .get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))
            .with_context(|| format!("tensor {}.bias", vb.prefix()))?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor, diff: bool) -> Result<Tensor> {
        if diff || x.dtype() == DType::F64 {
            // Composed from basic ops; exact in f64 (eps added before sqrt as HF does).
            let n = x.dim(D::Minus1)? as f64;
            let mean = (x.sum_keepdim(D::Minus1)? / n)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / n)?;
            let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
        } else {
            let x = x.contiguous()?;
            Ok(candle_nn::ops::layer_norm(
                &x,
                &self.weight,
                &self.bias,
                self.eps as f32,
            )?)
        }
    }
}

/// Activation functions named by HF configs' `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x Φ(x)` (HF `gelu`).
    GeluErf,
    /// The tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// CLIP's `x σ(1.702 x)`.
    QuickGelu,
    Relu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            other => bail!(
                "unsupported hidden_act {other:?} (expected gelu, gelu_new, quick_gelu or relu)"
            ),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::GeluErf => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Activation::Relu => x.relu()?,
        })
    }
}

/// Softmax over the last dimension, differentiable when `diff`.
pub fn softmax_last(x: &Tensor, diff: bool) -> Result<Tensor> {
    if diff || x.dtype() == DType::F64 {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// Multi-head scaled dot-product attention with separate q/k/v/out projections.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub heads: usize,
}

impl Attention {
    /// `x`: [B, L, H]; `bias`: optional additive mask broadcastable to [B, heads, L, L].
    /// Returns the output [B, L, H] and, when asked, the attention probabilities [B, heads, L, L].
    pub fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        diff: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, l, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let scores = match bias {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last(&scores, diff)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
        let out = self.out.forward(&ctx)?;
        Ok((out, if want_probs { Some(probs) } else { None }))
    }
}

/// The additive attention bias [B, 1, 1, L] from a 0/1 padding mask [B, L].
pub fn padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    let bias = ((1.0 - m)? * -1e9)?;
    Ok(bias.reshape((b, 1, 1, l))?)
}

/// The causal bias [1, 1, L, L]: 0 on and below the diagonal, -1e9 above.
pub fn causal_bias(l: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { -1e9 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (1, 1, l, l), dev)?.to_dtype(dtype)?)
}
