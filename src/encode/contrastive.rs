//! The contrastive loss of `hdpo align` (see [`super::align`]): symmetric
//! InfoNCE (CLIP) with a learnable or fixed temperature.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::l2_normalize;

/// The softmax temperature of InfoNCE.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temperature {
    /// Learned, starting at this temperature (CLIP: 0.07), scale capped at 100.
    Learnable(f64),
    Fixed(f64),
}

/// The logit scale: a learnable variable, or a constant.
pub struct LogitScale {
    pub var: Option<Var>,
    pub fixed: f64,
}

impl LogitScale {
    pub fn new(t: Temperature, varmap: &VarMap, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(match t {
            Temperature::Learnable(t0) => {
                let vb = VarBuilder::from_varmap(varmap, dtype, dev);
                vb.get_with_hints((), "logit_scale", candle_nn::Init::Const((1.0 / t0).ln()))?;
                let var = varmap
                    .data()
                    .lock()
                    .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?
                    .get("logit_scale")
                    .cloned()
                    .context("logit_scale variable")?;
                LogitScale {
                    var: Some(var),
                    fixed: 0.0,
                }
            }
            Temperature::Fixed(t) => LogitScale {
                var: None,
                fixed: 1.0 / t,
            },
        })
    }

    /// `s = exp(logit_scale)` (capped at 100) as a scalar tensor, or the fixed value.
    pub fn scale(&self) -> Result<Option<Tensor>> {
        Ok(match &self.var {
            Some(v) => Some(v.as_tensor().clamp(0.0, 100f64.ln())?.exp()?),
            None => None,
        })
    }

    pub fn value(&self) -> Result<f64> {
        Ok(match &self.var {
            Some(v) => v
                .as_tensor()
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                .clamp(0.0, 100f64.ln())
                .exp(),
            None => self.fixed,
        })
    }
}

/// Symmetric InfoNCE on image embeddings `[B, D]` and text embeddings `[B, D]`
/// (matching rows are positives).
pub fn info_nce(img: &Tensor, txt: &Tensor, scale: &LogitScale) -> Result<Tensor> {
    let i = l2_normalize(img)?;
    let t = l2_normalize(txt)?;
    let sim = i.matmul(&t.t()?)?;
    let logits = match scale.scale()? {
        Some(s) => sim.broadcast_mul(&s)?,
        None => (sim * scale.fixed)?,
    };
    let b = logits.dim(0)?;
    let labels = Tensor::arange(0u32, b as u32, logits.device())?;
    let a = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let c = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &labels)?;
    Ok(((a + c)? * 0.5)?)
}
