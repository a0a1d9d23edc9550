//! The image tower: a pre-LayerNorm ViT in either Hugging Face layout,
//! `ViTModel` (`embeddings.{cls_token,position_embeddings,patch_embeddings.projection}`,
//! `encoder.layer.N.*`, `layernorm`, `pooler.dense`) or the vision half of
//! `CLIPModel` (`embeddings.{class_embedding,patch_embedding,position_embedding}`,
//! `pre_layrnorm`, `encoder.layers.N.*`, `post_layernorm`).
//!
//! f_v(p_i) of paper Eq. 3 is the projected, final-normed last-layer token of
//! patch i ([`VisionTower::forward`] returns the normed tokens; the dual
//! encoder applies the projection).

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::nn::{Activation, Attention, LayerNorm, Linear};

/// Which Hugging Face naming the weights follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionLayout {
    /// `ViTModel`.
    Vit,
    /// `CLIPVisionModel` / `CLIPModel.vision_model`.
    Clip,
}

/// The subset of a ViT / CLIP vision config that the forward pass needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
}

fn default_channels() -> usize {
    3
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            bail!(
                "vision config: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "vision config: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Activation::from_name(&self.hidden_act)?;
        Ok(())
    }
}

/// Sizes of one encoder block.
#[derive(Clone, Copy, Debug)]
pub struct BlockSpec {
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
    pub qkv_bias: bool,
}

/// One pre-LN encoder block: `h += attn(ln1(h)); h += mlp(ln2(h))`.
#[derive(Clone, Debug)]
pub struct PreLnBlock {
    pub ln1: LayerNorm,
    pub attn: Attention,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Activation,
}

impl PreLnBlock {
    pub fn forward(
        &self,
        h: &Tensor,
        bias: Option<&Tensor>,
        diff: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, probs) = self
            .attn
            .forward(&self.ln1.forward(h, diff)?, bias, diff, want_probs)?;
        let h = (h + a)?;
        let m = self.fc2.forward(
            &self
                .act
                .forward(&self.fc1.forward(&self.ln2.forward(&h, diff)?)?)?,
        )?;
        Ok(((h + m)?, probs))
    }

    /// Load a block in ViT or CLIP naming.
    pub fn load(vb: &VarBuilder, layout: VisionLayout, spec: &BlockSpec) -> Result<Self> {
        let BlockSpec {
            hidden,
            inter,
            heads,
            eps,
            act,
            qkv_bias,
        } = *spec;
        Ok(match layout {
            VisionLayout::Vit => {
                let a = vb.pp("attention");
                PreLnBlock {
                    ln1: LayerNorm::load(&vb.pp("layernorm_before"), hidden, eps)?,
                    attn: Attention {
                        q: Linear::load(&a.pp("attention.query"), hidden, hidden, qkv_bias)?,
                        k: Linear::load(&a.pp("attention.key"), hidden, hidden, qkv_bias)?,
                        v: Linear::load(&a.pp("attention.value"), hidden, hidden, qkv_bias)?,
                        out: Linear::load(&a.pp("output.dense"), hidden, hidden, true)?,
                        heads,
                    },
                    ln2: LayerNorm::load(&vb.pp("layernorm_after"), hidden, eps)?,
                    fc1: Linear::load(&vb.pp("intermediate.dense"), hidden, inter, true)?,
                    fc2: Linear::load(&vb.pp("output.dense"), inter, hidden, true)?,
                    act,
                }
            }
            VisionLayout::Clip => {
                let a = vb.pp("self_attn");
                PreLnBlock {
                    ln1: LayerNorm::load(&vb.pp("layer_norm1"), hidden, eps)?,
                    attn: Attention {
                        q: Linear::load(&a.pp("q_proj"), hidden, hidden, true)?,
                        k: Linear::load(&a.pp("k_proj"), hidden, hidden, true)?,
                        v: Linear::load(&a.pp("v_proj"), hidden, hidden, true)?,
                        out: Linear::load(&a.pp("out_proj"), hidden, hidden, true)?,
                        heads,
                    },
                    ln2: LayerNorm::load(&vb.pp("layer_norm2"), hidden, eps)?,
                    fc1: Linear::load(&vb.pp("mlp.fc1"), hidden, inter, true)?,
                    fc2: Linear::load(&vb.pp("mlp.fc2"), inter, hidden, true)?,
                    act,
                }
            }
        })
    }
}

/// Everything one forward pass can return.
#[derive(Clone, Debug)]
pub struct VisionOutput {
    /// `[B, N, H]`: the patch embedding before CLS and positions (the conv output).
    pub patch_embeddings: Tensor,
    /// `num_hidden_layers + 1` tensors `[B, 1+N, H]`: the embeddings (after
    /// CLIP's `pre_layrnorm`), then each block's output, before the final norm.
    pub hidden_states: Vec<Tensor>,
    /// `[B, 1+N, H]`: the final LayerNorm (`layernorm` / `post_layernorm`) of
    /// the last block's output, every token.
    pub normed: Tensor,
    /// Per block `[B, heads, 1+N, 1+N]` attention probabilities, when asked.
    pub attentions: Option<Vec<Tensor>>,
}

/// A ViT image tower.
#[derive(Clone, Debug)]
pub struct VisionTower {
    pub config: VisionConfig,
    pub layout: VisionLayout,
    /// `[H, C·p·p]`: the patch conv kernel flattened as (c, ky, kx).
    pub patch_weight: Tensor,
    pub patch_bias: Option<Tensor>,
    /// `[H]`.
    pub cls: Tensor,
    /// `[1+N, H]`.
    pub positions: Tensor,
    pub pre_norm: Option<LayerNorm>,
    pub blocks: Vec<PreLnBlock>,
    pub final_norm: LayerNorm,
    /// `pooler.dense` (ViT only, optional).
    pub pooler: Option<Linear>,
}

impl VisionTower {
    /// Load from `vb` positioned at the tower's root (`""` for a `ViTModel`
    /// file, `vision_model` inside a `CLIPModel`).
    pub fn load(vb: &VarBuilder, config: &VisionConfig, layout: VisionLayout) -> Result<Self> {
        config.validate()?;
        let h = config.hidden_size;
        let c = config.num_channels;
        let p = config.patch_size;
        let n = config.grid() * config.grid();
        let eps = config.layer_norm_eps;
        let act = Activation::from_name(&config.hidden_act)?;
        let emb = vb.pp("embeddings");
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let (patch_weight, patch_bias, cls, positions, pre_norm, enc_name, final_name) =
            match layout {
                VisionLayout::Vit => {
                    let pe = emb.pp("patch_embeddings.projection");
                    let w = pe
                        .get_with_hints((h, c, p, p), "weight", init)
                        .context("tensor embeddings.patch_embeddings.projection.weight")?;
                    let b = pe
                        .get_with_hints(h, "bias", candle_nn::Init::Const(0.0))
                        .context("tensor embeddings.patch_embeddings.projection.bias")?;
                    let cls = emb
                        .get_with_hints((1, 1, h), "cls_token", init)
                        .context("tensor embeddings.cls_token")?
                        .reshape(h)?;
                    let pos = emb
                        .get_with_hints((1, n + 1, h), "position_embeddings", init)
                        .context("tensor embeddings.position_embeddings")?
                        .reshape((n + 1, h))?;
                    (w, Some(b), cls, pos, None, "encoder.layer", "layernorm")
                }
                VisionLayout::Clip => {
                    let w = emb
                        .get_with_hints((h, c, p, p), "patch_embedding.weight", init)
                        .context("tensor embeddings.patch_embedding.weight")?;
                    let cls = emb
                        .get_with_hints(h, "class_embedding", init)
                        .context("tensor embeddings.class_embedding")?;
                    let pos = emb
                        .get_with_hints((n + 1, h), "position_embedding.weight", init)
                        .context("tensor embeddings.position_embedding.weight")?;
                    let pre = LayerNorm::load(&vb.pp("pre_layrnorm"), h, eps)?;
                    (
                        w,
                        None,
                        cls,
                        pos,
                        Some(pre),
                        "encoder.layers",
                        "post_layernorm",
                    )
                }
            };
        let patch_weight = patch_weight.reshape((h, c * p * p))?;
        let spec = BlockSpec {
            hidden: h,
            inter: config.intermediate_size,
            heads: config.num_attention_heads,
            eps,
            act,
            qkv_bias: config.qkv_bias,
        };
        let blocks = (0..config.num_hidden_layers)
            .map(|i| PreLnBlock::load(&vb.pp(format!("{enc_name}.{i}")), layout, &spec))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = LayerNorm::load(&vb.pp(final_name), h, eps)?;
        let pooler = if layout == VisionLayout::Vit && vb.contains_tensor("pooler.dense.weight") {
            Some(Linear::load(&vb.pp("pooler.dense"), h, h, true)?)
        } else {
            None
        };
        Ok(VisionTower {
            config: config.clone(),
            layout,
            patch_weight,
            patch_bias,
            cls,
            positions,
            pre_norm,
            blocks,
            final_norm,
            pooler,
        })
    }

    /// The patch embedding `[B, N, H]`: the stride-p conv written as unfold +
    /// matmul (exact, differentiable, row-major over the grid).
    pub fn patch_embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = pixels.dims4()?;
        let cfg = &self.config;
        if c != cfg.num_channels || hh != cfg.image_size || ww != cfg.image_size {
            bail!(
                "image tensor is {b}x{c}x{hh}x{ww} but the image tower expects Bx{}x{}x{}",
                cfg.num_channels,
                cfg.image_size,
                cfg.image_size
            );
        }
        let p = cfg.patch_size;
        let g = cfg.grid();
        let x = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let y = x.broadcast_matmul(&self.patch_weight.t()?)?;
        Ok(match &self.patch_bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// `[CLS ; patches] + positions` (then CLIP's `pre_layrnorm`).
    pub fn embed(&self, patches: &Tensor, diff: bool) -> Result<Tensor> {
        let (b, _, h) = patches.dims3()?;
        let cls = self.cls.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&cls, patches], 1)?.broadcast_add(&self.positions)?;
        match &self.pre_norm {
            Some(ln) => ln.forward(&x, diff),
            None => Ok(x),
        }
    }

    /// Run blocks `start..` on `h` (the input of block `start`, i.e.
    /// `hidden_states[start]`); returns the later hidden states and attentions.
    pub fn run_blocks(
        &self,
        h: &Tensor,
        start: usize,
        diff: bool,
        want_attn: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut states = Vec::new();
        let mut attns = Vec::new();
        let mut cur = h.clone();
        for block in self.blocks.iter().skip(start) {
            let (next, probs) = block.forward(&cur, None, diff, want_attn)?;
            if let Some(p) = probs {
                attns.push(p);
            }
            states.push(next.clone());
            cur = next;
        }
        Ok((states, attns))
    }

    /// The full forward pass on `pixels` `[B, C, S, S]`.
    pub fn forward(&self, pixels: &Tensor, diff: bool, want_attn: bool) -> Result<VisionOutput> {
        let patch_embeddings = self.patch_embed(pixels)?;
        let emb = self.embed(&patch_embeddings, diff)?;
        let (rest, attns) = self.run_blocks(&emb, 0, diff, want_attn)?;
        let mut hidden_states = vec![emb];
        hidden_states.extend(rest);
        let last = hidden_states
            .last()
            .context("vision tower has no hidden state")?;
        let normed = self.final_norm.forward(last, diff)?;
        Ok(VisionOutput {
            patch_embeddings,
            hidden_states,
            normed,
            attentions: if want_attn { Some(attns) } else { None },
        })
    }

    /// ViT's pooler: `tanh(W cls + b)` on the normed CLS token.
    pub fn pool(&self, normed: &Tensor) -> Result<Tensor> {
        let pooler = self
            .pooler
            .as_ref()
            .context("this vision checkpoint has no pooler.dense")?;
        let cls = normed.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(pooler.forward(&cls)?.tanh()?)
    }

    /// Mean over the patch tokens (CLS excluded) of a `[B, 1+N, H]` tensor.
    pub fn mean_patches(tokens: &Tensor) -> Result<Tensor> {
        let n = tokens.dim(1)? - 1;
        Ok(tokens.narrow(1, 1, n)?.mean(D::Minus2)?)
    }
}
