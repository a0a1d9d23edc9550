//! The text half of a Hugging Face `CLIPModel` (`text_model.*`): token and
//! position embeddings, pre-LN causal blocks, `final_layer_norm`, pooled at
//! the end-of-text token.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::nn::{causal_bias, padding_bias, Activation, LayerNorm};
use super::vit::{BlockSpec, PreLnBlock, VisionLayout};

/// The subset of a CLIP text config that the forward pass needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> u32 {
    2
}
fn default_pad() -> u32 {
    1
}

/// CLIP's text transformer.
#[derive(Clone, Debug)]
pub struct ClipTextTower {
    pub config: ClipTextConfig,
    token: Tensor,
    position: Tensor,
    blocks: Vec<PreLnBlock>,
    final_norm: LayerNorm,
}

impl ClipTextTower {
    /// Load from `vb` at `text_model`.
    pub fn load(vb: &VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let h = config.hidden_size;
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            bail!("CLIP text config: hidden_size {h} is not a multiple of num_attention_heads");
        }
        let emb = vb.pp("embeddings");
        let token = emb
            .get((config.vocab_size, h), "token_embedding.weight")
            .context("tensor text_model.embeddings.token_embedding.weight")?;
        let position = emb
            .get(
                (config.max_position_embeddings, h),
                "position_embedding.weight",
            )
            .context("tensor text_model.embeddings.position_embedding.weight")?;
        let spec = BlockSpec {
            hidden: h,
            inter: config.intermediate_size,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            act: Activation::from_name(&config.hidden_act)?,
            qkv_bias: true,
        };
        let blocks = (0..config.num_hidden_layers)
            .map(|i| {
                PreLnBlock::load(
                    &vb.pp(format!("encoder.layers.{i}")),
                    VisionLayout::Clip,
                    &spec,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = LayerNorm::load(&vb.pp("final_layer_norm"), h, config.layer_norm_eps)?;
        Ok(ClipTextTower {
            config: config.clone(),
            token,
            position,
            blocks,
            final_norm,
        })
    }

    /// The pooled (end-of-text) output `[B, H]` for `ids`/`mask` `[B, L]`.
    /// The pooled position is the first `eos_token_id`, or the largest id when
    /// the config keeps the legacy `eos_token_id == 2` (as transformers does).
    pub fn forward_pooled(&self, ids: &Tensor, mask: &Tensor, diff: bool) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l > self.config.max_position_embeddings {
            bail!(
                "text of {l} tokens is longer than the CLIP text tower's {} positions",
                self.config.max_position_embeddings
            );
        }
        let h = self.config.hidden_size;
        let x = self
            .token
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, h))?
            .broadcast_add(&self.position.narrow(0, 0, l)?)?;
        let bias = padding_bias(mask, x.dtype())?.broadcast_add(&causal_bias(
            l,
            x.dtype(),
            x.device(),
        )?)?;
        let mut cur = x;
        for block in &self.blocks {
            cur = block.forward(&cur, Some(&bias), diff, false)?.0;
        }
        let last = self.final_norm.forward(&cur, diff)?;
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        let mut picks = Vec::with_capacity(b);
        for (i, row) in rows.iter().enumerate() {
            let pos = if self.config.eos_token_id == 2 {
                row.iter()
                    .enumerate()
                    .max_by_key(|(j, v)| (**v, std::cmp::Reverse(*j)))
                    .map(|(j, _)| j)
            } else {
                row.iter().position(|v| *v == self.config.eos_token_id)
            };
            let pos = pos.with_context(|| format!("text {i} has no end-of-text token"))?;
            picks.push(last.get(i)?.get(pos)?);
        }
        Ok(Tensor::stack(&picks, 0)?)
    }
}
