//! The BERT text tower (Hugging Face `BertModel` layout, with or without a
//! `bert.` prefix): word + position + token-type embeddings and LayerNorm,
//! post-LN encoder layers, optional pooler.

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::nn::{padding_bias, Activation, Attention, LayerNorm, Linear};

/// The subset of a BERT config that the forward pass needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
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
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_types() -> usize {
    2
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "text config: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Activation::from_name(&self.hidden_act)?;
        Ok(())
    }
}

/// One post-LN BERT layer.
#[derive(Clone, Debug)]
struct BertLayer {
    attn: Attention,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
    act: Activation,
}

impl BertLayer {
    fn forward(&self, h: &Tensor, bias: &Tensor, diff: bool) -> Result<Tensor> {
        let (a, _) = self.attn.forward(h, Some(bias), diff, false)?;
        let h = self.attn_norm.forward(&(a + h)?, diff)?;
        let m = self
            .out
            .forward(&self.act.forward(&self.inter.forward(&h)?)?)?;
        self.out_norm.forward(&(m + h)?, diff)
    }
}

/// Outputs of one BERT forward pass.
#[derive(Clone, Debug)]
pub struct BertOutput {
    /// `num_hidden_layers + 1` tensors `[B, L, H]` (embeddings output first).
    pub hidden_states: Vec<Tensor>,
    /// `[B, L, H]`, the last of `hidden_states`.
    pub last_hidden_state: Tensor,
}

/// A BERT text tower.
#[derive(Clone, Debug)]
pub struct BertTower {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
}

impl BertTower {
    /// Load from `vb` at the model root; a `bert.` prefix is detected.
    pub fn load(vb: &VarBuilder, config: &BertConfig) -> Result<Self> {
        config.validate()?;
        let vb = if !vb.contains_tensor("embeddings.word_embeddings.weight")
            && vb.contains_tensor("bert.embeddings.word_embeddings.weight")
        {
            vb.pp("bert")
        } else {
            vb.clone()
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let act = Activation::from_name(&config.hidden_act)?;
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let emb = vb.pp("embeddings");
        let get = |name: &str, shape: (usize, usize)| -> Result<Tensor> {
            emb.get_with_hints(shape, name, init)
                .with_context(|| format!("tensor {}.{name}", emb.prefix()))
        };
        let word = get("word_embeddings.weight", (config.vocab_size, h))?;
        let position = get(
            "position_embeddings.weight",
            (config.max_position_embeddings, h),
        )?;
        let token_type = get("token_type_embeddings.weight", (config.type_vocab_size, h))?;
        let emb_norm = LayerNorm::load(&emb.pp("LayerNorm"), h, eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(BertLayer {
                    attn: Attention {
                        q: Linear::load(&a.pp("self.query"), h, h, true)?,
                        k: Linear::load(&a.pp("self.key"), h, h, true)?,
                        v: Linear::load(&a.pp("self.value"), h, h, true)?,
                        out: Linear::load(&a.pp("output.dense"), h, h, true)?,
                        heads: config.num_attention_heads,
                    },
                    attn_norm: LayerNorm::load(&a.pp("output.LayerNorm"), h, eps)?,
                    inter: Linear::load(
                        &l.pp("intermediate.dense"),
                        h,
                        config.intermediate_size,
                        true,
                    )?,
                    out: Linear::load(&l.pp("output.dense"), config.intermediate_size, h, true)?,
                    out_norm: LayerNorm::load(&l.pp("output.LayerNorm"), h, eps)?,
                    act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pooler = if vb.contains_tensor("pooler.dense.weight") {
            Some(Linear::load(&vb.pp("pooler.dense"), h, h, true)?)
        } else {
            None
        };
        Ok(BertTower {
            config: config.clone(),
            word,
            position,
            token_type,
            emb_norm,
            layers,
            pooler,
        })
    }

    /// `ids` and `mask`: `[B, L]` u32 (mask 1 on real tokens); token types 0,
    /// positions `0..L`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, diff: bool) -> Result<BertOutput> {
        let (b, l) = ids.dims2()?;
        if l > self.config.max_position_embeddings {
            bail!(
                "text of {l} tokens is longer than the text tower's {} positions",
                self.config.max_position_embeddings
            );
        }
        let h = self.config.hidden_size;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, h))?;
        let pos = self.position.narrow(0, 0, l)?;
        let typ = self.token_type.narrow(0, 0, 1)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let mut cur = self.emb_norm.forward(&x, diff)?;
        let bias = padding_bias(mask, cur.dtype())?;
        let mut hidden_states = vec![cur.clone()];
        for layer in &self.layers {
            cur = layer.forward(&cur, &bias, diff)?;
            hidden_states.push(cur.clone());
        }
        Ok(BertOutput {
            hidden_states,
            last_hidden_state: cur,
        })
    }

    /// `tanh(W cls + b)`.
    pub fn pool(&self, last: &Tensor) -> Result<Tensor> {
        let pooler = self
            .pooler
            .as_ref()
            .context("this BERT checkpoint has no pooler.dense")?;
        Ok(pooler.forward(&cls_token(last)?)?.tanh()?)
    }
}

/// `last[:, 0]`, made contiguous: the strided slice would otherwise fail in
/// later `index_select` calls (batch selection during alignment).
pub fn cls_token(last: &Tensor) -> Result<Tensor> {
    Ok(last.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)
}

/// Masked mean over the sequence: every token with mask 1 (so [CLS] and
/// [SEP] count), padding excluded.
pub fn masked_mean(last: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(last.dtype())?.unsqueeze(D::Minus1)?;
    let sum = last.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1.0, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}
