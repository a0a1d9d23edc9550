//! Dual encoder (paper Eq. 3-5): a ViT image tower and a text tower (BERT or
//! CLIP's), each with a linear projection into one embedding space
//! (`docs/design.md`, "One embedding space").
//!
//! * f_v(p_i) = projection of the final-normed last-layer token of patch i
//!   ([`DualEncoder::embed_patches`]);
//! * f_t(t) = projection of the pooled text embedding ([`DualEncoder::embed_texts`]),
//!   pooled as the checkpoint says ([`TextPooling`]).
//!
//! Checkpoint folders ([`DualEncoder::load`]):
//! * Hugging Face `CLIPModel` (`config.json` with `model_type: "clip"`);
//! * an hdpo dual encoder (`model_type: "hdpo_dual_encoder"`, written by
//!   `hdpo align`): projections (and, unless it names separate `ViTModel` /
//!   `BertModel` checkpoints in `vision_checkpoint` / `text_checkpoint`,
//!   both towers) in `model.safetensors`.
//!
//! A bare `ViTModel` or `BertModel` folder is refused: its outputs live in
//! no shared space until `hdpo align` learns the projections.

pub mod align;
pub mod align_pairs;
pub mod bert;
pub mod clip_text;
pub mod contrastive;
pub mod gradcam;
pub mod nn;
pub mod preprocess;
pub mod region_align;
pub mod rollout;
pub mod tokenizer;
pub mod vit;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use bert::{BertConfig, BertTower};
pub use clip_text::{ClipTextConfig, ClipTextTower};
pub use nn::Linear;
pub use preprocess::Normalize;
pub use vit::{VisionConfig, VisionLayout, VisionOutput, VisionTower};

/// The `model_type` of an hdpo dual-encoder folder.
pub const HDPO_MODEL_TYPE: &str = "hdpo_dual_encoder";

/// How a text tower's tokens become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// The last-layer `[CLS]` token.
    Cls,
    /// BERT's pooler, `tanh(W cls + b)`.
    Pooler,
    /// Masked mean over every real token, `[CLS]` and `[SEP]` included.
    Mean,
    /// CLIP: the final-normed end-of-text token.
    Eos,
}

impl std::str::FromStr for TextPooling {
    type Err = anyhow::Error;

    /// `mean`, `cls`, `pooler` or `eos` (the names of the encoder config).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mean" => TextPooling::Mean,
            "cls" => TextPooling::Cls,
            "pooler" => TextPooling::Pooler,
            "eos" => TextPooling::Eos,
            other => bail!("text pooling {other:?}: expected mean, cls, pooler or eos"),
        })
    }
}

/// How the image tower's tokens become one global image vector (used for
/// contrastive alignment and GradCAM's similarity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImagePooling {
    /// The final-normed CLS token, projected (CLIP).
    Cls,
    /// The mean of the projected patch embeddings f_v(p_i), i.e. Eq. 3 with a
    /// uniform heatmap (hdpo's aligned encoders).
    MeanPatches,
}

/// The text tower.
#[derive(Clone, Debug)]
pub enum TextTower {
    Bert(BertTower),
    Clip(ClipTextTower),
}

impl TextTower {
    pub fn hidden_size(&self) -> usize {
        match self {
            TextTower::Bert(b) => b.config.hidden_size,
            TextTower::Clip(c) => c.config.hidden_size,
        }
    }
    fn max_len(&self) -> usize {
        match self {
            TextTower::Bert(b) => b.config.max_position_embeddings,
            TextTower::Clip(c) => c.config.max_position_embeddings,
        }
    }
    fn pad_id(&self) -> u32 {
        match self {
            TextTower::Bert(b) => b.config.pad_token_id,
            TextTower::Clip(c) => c.config.pad_token_id,
        }
    }
}

/// `config.json` of an hdpo dual-encoder folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HdpoEncoderConfig {
    pub model_type: String,
    pub projection_dim: usize,
    pub image_pooling: ImagePooling,
    pub text_pooling: TextPooling,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// The ViT config when the tower's weights are in this folder (`vision_model.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_config: Option<VisionConfig>,
    /// The BERT config when the tower's weights are in this folder (`text_model.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_config: Option<BertConfig>,
    /// A separate `ViTModel` folder (relative to this one, or absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_checkpoint: Option<String>,
    /// A separate `BertModel` folder (relative to this one, or absolute); its
    /// `tokenizer.json` / `vocab.txt` is used unless this folder has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_checkpoint: Option<String>,
}

/// Where and in what precision to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// An image tower and a text tower projected into one space.
#[derive(Clone, Debug)]
pub struct DualEncoder {
    pub vision: VisionTower,
    pub text: TextTower,
    pub visual_projection: Linear,
    pub text_projection: Linear,
    pub tokenizer: Tokenizer,
    pub text_pooling: TextPooling,
    pub image_pooling: ImagePooling,
    pub normalize: Normalize,
    /// The learned log temperature, when the checkpoint has one.
    pub logit_scale: Option<f32>,
    pub device: Device,
    pub dtype: DType,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A `VarBuilder` over one safetensors file, converted to `opts.dtype`.
pub fn load_weights(path: &Path, opts: &LoadOptions) -> Result<VarBuilder<'static>> {
    let map = candle_core::safetensors::load(path, &opts.device)
        .with_context(|| format!("reading weights {}", path.display()))?;
    Ok(VarBuilder::from_tensors(map, opts.dtype, &opts.device))
}

fn weights_file(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("model.safetensors");
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} has no model.safetensors (only single-file safetensors checkpoints are read)",
            dir.display()
        )
    }
}

fn parse_field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
    path: &Path,
) -> Result<T> {
    let x = v
        .get(key)
        .with_context(|| format!("{}: missing field {key}", path.display()))?;
    serde_json::from_value(x.clone()).with_context(|| format!("{}: field {key}", path.display()))
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

impl DualEncoder {
    /// Load a dual encoder folder (CLIP or hdpo layout, see the module docs).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = read_json(&cfg_path)?;
        let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        match model_type {
            "clip" => Self::load_clip(dir, &cfg, opts),
            HDPO_MODEL_TYPE => {
                let c: HdpoEncoderConfig = serde_json::from_value(cfg.clone())
                    .with_context(|| format!("parsing {}", cfg_path.display()))?;
                Self::load_hdpo(dir, &c, opts)
            }
            "vit" | "bert" => bail!(
                "{} is a separate {model_type} checkpoint without an hdpo projection: \
                 run `hdpo align` to learn one (it writes a dual-encoder folder that names \
                 this checkpoint), or pass a CLIPModel folder",
                dir.display()
            ),
            other => bail!(
                "{}: model_type {other:?} is not a dual encoder (expected \"clip\" or \"{HDPO_MODEL_TYPE}\")",
                cfg_path.display()
            ),
        }
    }

    fn load_clip(dir: &Path, cfg: &serde_json::Value, opts: &LoadOptions) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let vcfg: VisionConfig = {
            let mut v: serde_json::Value = parse_field(cfg, "vision_config", &cfg_path)?;
            if let Some(o) = v.as_object_mut() {
                o.entry("hidden_act").or_insert("quick_gelu".into());
                o.entry("layer_norm_eps").or_insert(1e-5.into());
            }
            serde_json::from_value(v)
                .with_context(|| format!("{}: vision_config", cfg_path.display()))?
        };
        let tcfg: ClipTextConfig = parse_field(cfg, "text_config", &cfg_path)?;
        let dim: usize = cfg
            .get("projection_dim")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(512);
        let vb = load_weights(&weights_file(dir)?, opts)?;
        let vision = VisionTower::load(&vb.pp("vision_model"), &vcfg, VisionLayout::Clip)?;
        let text = ClipTextTower::load(&vb.pp("text_model"), &tcfg)?;
        let visual_projection =
            Linear::load_auto_bias(&vb.pp("visual_projection"), vcfg.hidden_size, dim)?;
        let text_projection =
            Linear::load_auto_bias(&vb.pp("text_projection"), tcfg.hidden_size, dim)?;
        let logit_scale = scalar_if_present(&vb, "logit_scale")?;
        Ok(DualEncoder {
            vision,
            text: TextTower::Clip(text),
            visual_projection,
            text_projection,
            tokenizer: tokenizer::load_tokenizer(dir)?,
            text_pooling: TextPooling::Eos,
            image_pooling: ImagePooling::Cls,
            normalize: Normalize::from_preprocessor_config(dir, Normalize::CLIP)?,
            logit_scale,
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    fn load_hdpo(dir: &Path, c: &HdpoEncoderConfig, opts: &LoadOptions) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let own = load_weights(&weights_file(dir)?, opts)?;
        let vision = match (&c.vision_checkpoint, &c.vision_config) {
            (Some(p), _) => load_vit_dir(&resolve(dir, p), opts)?,
            (None, Some(vcfg)) => {
                VisionTower::load(&own.pp("vision_model"), vcfg, VisionLayout::Vit)?
            }
            (None, None) => bail!(
                "{}: needs vision_config or vision_checkpoint",
                cfg_path.display()
            ),
        };
        let mut tok_dir = dir.to_path_buf();
        let text = match (&c.text_checkpoint, &c.text_config) {
            (Some(p), _) => {
                let tdir = resolve(dir, p);
                if !dir.join("tokenizer.json").is_file() && !dir.join("vocab.txt").is_file() {
                    tok_dir = tdir.clone();
                }
                load_bert_dir(&tdir, opts)?
            }
            (None, Some(tcfg)) => BertTower::load(&own.pp("text_model"), tcfg)?,
            (None, None) => bail!(
                "{}: needs text_config or text_checkpoint",
                cfg_path.display()
            ),
        };
        if c.text_pooling == TextPooling::Eos {
            bail!(
                "{}: text_pooling \"eos\" is for CLIP text towers only",
                cfg_path.display()
            );
        }
        let visual_projection = Linear::load_auto_bias(
            &own.pp("visual_projection"),
            vision.config.hidden_size,
            c.projection_dim,
        )
        .with_context(|| {
            format!(
                "projection file {}",
                dir.join("model.safetensors").display()
            )
        })?;
        let text_projection = Linear::load_auto_bias(
            &own.pp("text_projection"),
            text.config.hidden_size,
            c.projection_dim,
        )
        .with_context(|| {
            format!(
                "projection file {}",
                dir.join("model.safetensors").display()
            )
        })?;
        let logit_scale = scalar_if_present(&own, "logit_scale")?;
        Ok(DualEncoder {
            vision,
            text: TextTower::Bert(text),
            visual_projection,
            text_projection,
            tokenizer: tokenizer::load_tokenizer(&tok_dir)?,
            text_pooling: c.text_pooling,
            image_pooling: c.image_pooling,
            normalize: Normalize {
                mean: c.image_mean,
                std: c.image_std,
            },
            logit_scale,
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    /// The image tower's input side length in pixels.
    pub fn image_size(&self) -> usize {
        self.vision.config.image_size
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.vision.config.grid()
    }

    pub fn patch_size(&self) -> usize {
        self.vision.config.patch_size
    }

    /// The shared embedding dimension D.
    pub fn dim(&self) -> usize {
        self.visual_projection.weight.dims()[0]
    }

    /// Decode and preprocess an image file to `[3, S, S]`.
    pub fn load_image(&self, path: &Path) -> Result<Tensor> {
        preprocess::load_image_tensor(path, self.image_size(), self.normalize, &self.device)?
            .to_dtype(self.dtype)
            .map_err(Into::into)
    }

    /// Preprocess a decoded image to `[3, S, S]`.
    pub fn image_tensor(&self, img: &image::DynamicImage) -> Result<Tensor> {
        preprocess::image_to_tensor(img, self.image_size(), self.normalize, &self.device)?
            .to_dtype(self.dtype)
            .map_err(Into::into)
    }

    /// f_v for every patch from the tower's normed tokens `[B, 1+N, H]` -> `[B, N, D]`.
    pub fn project_patches(&self, normed: &Tensor) -> Result<Tensor> {
        let n = normed.dim(1)? - 1;
        self.visual_projection.forward(&normed.narrow(1, 1, n)?)
    }

    /// Projected patch embeddings f_v(p_i) `[B, N, D]` (row-major over the
    /// grid) and the grid size (rows, columns), for images `[B, 3, S, S]`.
    pub fn embed_patches(&self, images: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let out = self.vision.forward(images, false, false)?;
        let g = self.grid();
        Ok((self.project_patches(&out.normed)?, (g, g)))
    }

    /// The global image embedding `[B, D]` from normed tokens, as [`ImagePooling`] says.
    pub fn image_embedding_from_normed(&self, normed: &Tensor) -> Result<Tensor> {
        match self.image_pooling {
            ImagePooling::Cls => self
                .visual_projection
                .forward(&normed.narrow(1, 0, 1)?.squeeze(1)?),
            ImagePooling::MeanPatches => Ok(self.project_patches(normed)?.mean(1)?),
        }
    }

    /// The global image embedding from `hidden_states[layer]` `[B, 1+N, H]`
    /// (0 = embeddings, `num_hidden_layers` = the last block's output): runs
    /// the remaining blocks and the final norm. Differentiable when `diff`.
    pub fn image_embedding_from_layer(
        &self,
        hidden: &Tensor,
        layer: usize,
        diff: bool,
    ) -> Result<Tensor> {
        let layers = self.vision.blocks.len();
        if layer > layers {
            bail!("layer {layer} is past the image tower's {layers} blocks");
        }
        let (states, _) = self.vision.run_blocks(hidden, layer, diff, false)?;
        let last = states.last().unwrap_or(hidden);
        let normed = self.vision.final_norm.forward(last, diff)?;
        self.image_embedding_from_normed(&normed)
    }

    /// Global image embeddings `[B, D]` for images `[B, 3, S, S]`.
    pub fn embed_images(&self, images: &Tensor) -> Result<Tensor> {
        let out = self.vision.forward(images, false, false)?;
        self.image_embedding_from_normed(&out.normed)
    }

    /// Token ids and mask `[T, L]` for `texts`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        tokenizer::encode_batch(
            &self.tokenizer,
            texts,
            self.text.pad_id(),
            self.text.max_len(),
            &self.device,
        )
    }

    /// f_t for tokenized texts: pooled, then projected, `[T, D]`.
    pub fn text_features(&self, ids: &Tensor, mask: &Tensor, diff: bool) -> Result<Tensor> {
        let pooled = match &self.text {
            TextTower::Bert(b) => {
                let out = b.forward(ids, mask, diff)?;
                match self.text_pooling {
                    TextPooling::Cls => bert::cls_token(&out.last_hidden_state)?,
                    TextPooling::Pooler => b.pool(&out.last_hidden_state)?,
                    TextPooling::Mean => bert::masked_mean(&out.last_hidden_state, mask)?,
                    TextPooling::Eos => bail!("eos pooling needs a CLIP text tower"),
                }
            }
            TextTower::Clip(c) => c.forward_pooled(ids, mask, diff)?,
        };
        self.text_projection.forward(&pooled)
    }

    /// f_t(t) `[T, D]` for each text.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.tokenize(texts)?;
        self.text_features(&ids, &mask, false)
    }
}

fn scalar_if_present(vb: &VarBuilder, name: &str) -> Result<Option<f32>> {
    if !vb.contains_tensor(name) {
        return Ok(None);
    }
    let t = vb.get((), name).or_else(|_| vb.get(1, name))?;
    Ok(Some(
        t.flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .unwrap_or(0.0),
    ))
}

/// Row-wise L2 normalisation of `[N, D]`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&n)?)
}

/// Cosine similarity of two `[D]` (or `[N, D]` row-wise) embeddings.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok(dot.div(&(na * nb)?)?)
}

/// Load a bare Hugging Face `ViTModel` folder (`config.json` +
/// `model.safetensors`; a `vit.` prefix is detected) as an image tower.
pub fn load_vit_dir(dir: &Path, opts: &LoadOptions) -> Result<VisionTower> {
    let cfg_path = dir.join("config.json");
    let vcfg: VisionConfig = serde_json::from_value(read_json(&cfg_path)?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let vb = load_weights(&weights_file(dir)?, opts)?;
    let vb = if vb.contains_tensor("vit.embeddings.cls_token") {
        vb.pp("vit")
    } else {
        vb
    };
    VisionTower::load(&vb, &vcfg, VisionLayout::Vit)
        .with_context(|| format!("loading ViT checkpoint {}", dir.display()))
}

/// Load a bare Hugging Face `BertModel` folder as a text tower.
pub fn load_bert_dir(dir: &Path, opts: &LoadOptions) -> Result<BertTower> {
    let cfg_path = dir.join("config.json");
    let tcfg: BertConfig = serde_json::from_value(read_json(&cfg_path)?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let vb = load_weights(&weights_file(dir)?, opts)?;
    BertTower::load(&vb, &tcfg)
        .with_context(|| format!("loading BERT checkpoint {}", dir.display()))
}

/// Eq. 2-3 end to end: the heatmap-weighted image embedding v `[D]` of one
/// preprocessed image (`[3, S, S]` or `[1, 3, S, S]`) under `enc`.
pub fn heatmap_embedding(
    enc: &DualEncoder,
    image: &Tensor,
    h: &crate::heatmap::Heatmap,
    id: &str,
) -> Result<Tensor> {
    let image = if image.rank() == 3 {
        image.unsqueeze(0)?
    } else {
        image.clone()
    };
    let (patches, grid) = enc.embed_patches(&image)?;
    let s = enc.image_size();
    let w = crate::heatmap::pool::patch_weights(h, id, (s, s), grid)?;
    crate::heatmap::pool::weighted_embedding(&w, &patches.squeeze(0)?)
}
