//! Model configuration read from a checkpoint's `config.json`.
//!
//! Accepts the Hugging Face `LlavaForConditionalGeneration` config as written by
//! transformers 4.x or 5.x (`text_config` / `vision_config` nesting, `rope_theta`
//! or `rope_parameters.rope_theta`, `torch_dtype` or `dtype`) and the original
//! LLaVA-Med v1.5 `LlavaMistralForCausalLM` config (a flat Mistral config with
//! `mm_*` fields and no vision config: the CLIP shape comes from the name in
//! `mm_vision_tower`, or from the checkpoint's tensors when it is loaded).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The decoder (Llama / Mistral) hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base (theta).
    pub rope_theta: f64,
    /// Mistral's sliding attention window, `None` for full causal attention.
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

/// The CLIP vision tower hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: VisionAct,
}

impl VisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patch tokens per image (CLS excluded).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// OpenAI CLIP ViT-L/14 at 336 px (LLaVA-1.5 / LLaVA-Med v1.5).
    pub fn clip_vit_l14_336() -> Self {
        VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            hidden_act: VisionAct::QuickGelu,
        }
    }
}

/// The CLIP MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionAct {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

/// The multimodal projector between the vision tower and the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// One linear layer.
    Linear,
    /// `linear_2(gelu(linear_1(x)))` with exact-erf GELU (LLaVA-1.5 `mlp2x_gelu`).
    Mlp2xGelu,
}

/// Which vision tokens are fed to the projector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSelect {
    /// Patch tokens only (CLS dropped): HF `default`, LLaVA `patch`.
    Default,
    /// CLS and patch tokens: HF `full`, LLaVA `cls_patch`.
    Full,
}

/// Where the checkpoint came from; decides the tensor key layout and the chat
/// template conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Hugging Face `LlavaForConditionalGeneration`.
    HfLlava,
    /// Original LLaVA / LLaVA-Med `LlavaMistralForCausalLM` / `LlavaLlamaForCausalLM`.
    OriginalLlava,
}

/// The whole LLaVA configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LlavaConfig {
    pub architecture: Architecture,
    pub text: TextConfig,
    /// `None` when an original-layout config does not name a known tower; the
    /// loader then infers it from the checkpoint's tensors.
    pub vision: Option<VisionConfig>,
    pub projector: ProjectorKind,
    pub projector_bias: bool,
    /// Index into the vision tower's hidden states (`-2` = output of the
    /// second-to-last layer; 0 = embeddings after `pre_layrnorm`).
    pub vision_feature_layer: i64,
    pub feature_select: FeatureSelect,
    /// The `<image>` token id (HF layout); `None` for the original layout, which
    /// splices features at a placeholder instead.
    pub image_token_id: Option<u32>,
    /// The storage dtype the config names (`torch_dtype` / `dtype`).
    pub stored_dtype: Option<String>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn req_usize(v: &Value, key: &str, what: &str) -> Result<usize> {
    get(v, key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .with_context(|| format!("{what}: missing or non-integer field `{key}`"))
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    get(v, key).and_then(Value::as_u64).map(|x| x as usize)
}

fn opt_f64(v: &Value, key: &str) -> Option<f64> {
    get(v, key).and_then(Value::as_f64)
}

fn opt_u32(v: &Value, key: &str) -> Option<u32> {
    match get(v, key) {
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        Some(x) => x.as_u64().map(|x| x as u32),
        None => None,
    }
}

impl TextConfig {
    fn from_json(t: &Value, what: &str) -> Result<Self> {
        let hidden_size = req_usize(t, "hidden_size", what)?;
        let num_attention_heads = req_usize(t, "num_attention_heads", what)?;
        let num_key_value_heads =
            opt_usize(t, "num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = opt_usize(t, "head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        let rope_theta = opt_f64(t, "rope_theta")
            .or_else(|| get(t, "rope_parameters").and_then(|r| opt_f64(r, "rope_theta")))
            .unwrap_or(10000.0);
        if let Some(rt) = get(t, "rope_parameters")
            .or_else(|| get(t, "rope_scaling"))
            .and_then(|r| get(r, "rope_type").or_else(|| get(r, "type")))
            .and_then(Value::as_str)
        {
            if rt != "default" {
                bail!("{what}: rope type `{rt}` is not supported (only the default RoPE)");
            }
        }
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            bail!("{what}: num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})");
        }
        if !head_dim.is_multiple_of(2) {
            bail!("{what}: head_dim {head_dim} must be even for RoPE");
        }
        if let Some(act) = get(t, "hidden_act").and_then(Value::as_str) {
            if act != "silu" && act != "swish" {
                bail!("{what}: hidden_act `{act}` is not supported (SwiGLU with silu)");
            }
        }
        Ok(TextConfig {
            vocab_size: req_usize(t, "vocab_size", what)?,
            hidden_size,
            intermediate_size: req_usize(t, "intermediate_size", what)?,
            num_hidden_layers: req_usize(t, "num_hidden_layers", what)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64(t, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            sliding_window: opt_usize(t, "sliding_window"),
            max_position_embeddings: opt_usize(t, "max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: get(t, "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: opt_u32(t, "bos_token_id"),
            eos_token_id: opt_u32(t, "eos_token_id"),
            pad_token_id: opt_u32(t, "pad_token_id"),
        })
    }
}

impl VisionConfig {
    fn from_json(v: &Value, what: &str) -> Result<Self> {
        let act = get(v, "hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("quick_gelu");
        let hidden_act = match act {
            "quick_gelu" => VisionAct::QuickGelu,
            "gelu" => VisionAct::Gelu,
            other => bail!("{what}: vision hidden_act `{other}` is not supported"),
        };
        let c = VisionConfig {
            hidden_size: req_usize(v, "hidden_size", what)?,
            intermediate_size: req_usize(v, "intermediate_size", what)?,
            num_hidden_layers: req_usize(v, "num_hidden_layers", what)?,
            num_attention_heads: req_usize(v, "num_attention_heads", what)?,
            image_size: req_usize(v, "image_size", what)?,
            patch_size: req_usize(v, "patch_size", what)?,
            num_channels: opt_usize(v, "num_channels").unwrap_or(3),
            layer_norm_eps: opt_f64(v, "layer_norm_eps").unwrap_or(1e-5),
            hidden_act,
        };
        if c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
            bail!(
                "{what}: image_size {} is not a multiple of patch_size {}",
                c.image_size,
                c.patch_size
            );
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            bail!("{what}: vision hidden_size must be a multiple of num_attention_heads");
        }
        Ok(c)
    }
}

fn parse_projector(s: &str, what: &str) -> Result<ProjectorKind> {
    Ok(match s {
        "linear" => ProjectorKind::Linear,
        "mlp2x_gelu" | "gelu" => ProjectorKind::Mlp2xGelu,
        other => bail!("{what}: projector type `{other}` is not supported (linear, mlp2x_gelu)"),
    })
}

impl LlavaConfig {
    /// Read `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&v, &path.display().to_string())
    }

    /// Parse a config JSON value; `what` names the file in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        let stored_dtype = get(v, "torch_dtype")
            .or_else(|| get(v, "dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let model_type = get(v, "model_type").and_then(Value::as_str).unwrap_or("");
        if let Some(t) = get(v, "text_config") {
            // Hugging Face LlavaForConditionalGeneration.
            let mut text = TextConfig::from_json(t, &format!("{what} text_config"))?;
            // The top-level flag, when present, is the one transformers applies.
            if let Some(tie) = get(v, "tie_word_embeddings").and_then(Value::as_bool) {
                text.tie_word_embeddings = tie;
            }
            let vision = get(v, "vision_config")
                .map(|vc| VisionConfig::from_json(vc, &format!("{what} vision_config")))
                .transpose()?
                .context(format!("{what}: missing vision_config"))?;
            let projector = parse_projector(
                get(v, "projector_hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu"),
                what,
            )?;
            let strategy = get(v, "vision_feature_select_strategy")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let feature_select = match strategy {
                "default" => FeatureSelect::Default,
                "full" => FeatureSelect::Full,
                o => bail!("{what}: vision_feature_select_strategy `{o}` is not supported"),
            };
            let vision_feature_layer = match get(v, "vision_feature_layer") {
                None => -2,
                Some(Value::Number(n)) => n.as_i64().context("vision_feature_layer")?,
                Some(_) => bail!("{what}: only a single vision_feature_layer is supported"),
            };
            let image_token_id = opt_u32(v, "image_token_index")
                .or_else(|| opt_u32(v, "image_token_id"))
                .or(Some(32000));
            Ok(LlavaConfig {
                architecture: Architecture::HfLlava,
                text,
                vision: Some(vision),
                projector,
                projector_bias: get(v, "multimodal_projector_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
                vision_feature_layer,
                feature_select,
                image_token_id,
                stored_dtype,
            })
        } else if get(v, "mm_projector_type").is_some()
            || get(v, "mm_vision_tower").is_some()
            || model_type.starts_with("llava")
        {
            // Original LLaVA / LLaVA-Med (flat decoder config plus mm_* fields).
            let text = TextConfig::from_json(v, what)?;
            let projector = parse_projector(
                get(v, "mm_projector_type")
                    .and_then(Value::as_str)
                    .unwrap_or("linear"),
                what,
            )?;
            let feature_select = match get(v, "mm_vision_select_feature")
                .and_then(Value::as_str)
                .unwrap_or("patch")
            {
                "patch" => FeatureSelect::Default,
                "cls_patch" => FeatureSelect::Full,
                o => bail!("{what}: mm_vision_select_feature `{o}` is not supported"),
            };
            let vision = match get(v, "vision_config") {
                Some(vc) => Some(VisionConfig::from_json(
                    vc,
                    &format!("{what} vision_config"),
                )?),
                None => {
                    let name = get(v, "mm_vision_tower")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if name.contains("clip-vit-large-patch14-336") {
                        Some(VisionConfig::clip_vit_l14_336())
                    } else {
                        None
                    }
                }
            };
            Ok(LlavaConfig {
                architecture: Architecture::OriginalLlava,
                text,
                vision,
                projector,
                projector_bias: true,
                vision_feature_layer: get(v, "mm_vision_select_layer")
                    .and_then(Value::as_i64)
                    .unwrap_or(-2),
                feature_select,
                image_token_id: None,
                stored_dtype,
            })
        } else {
            bail!("{what}: neither a LLaVA config with text_config/vision_config nor an original LLaVA config with mm_* fields (model_type `{model_type}`)")
        }
    }

    /// The vision config, or an error when it is still unknown.
    pub fn vision(&self) -> Result<&VisionConfig> {
        self.vision.as_ref().context(
            "the vision tower's shape is unknown: the config has no vision_config and names no known CLIP tower",
        )
    }

    /// Image tokens one image occupies in the decoder's sequence.
    pub fn image_tokens(&self) -> Result<usize> {
        let v = self.vision()?;
        Ok(match self.feature_select {
            FeatureSelect::Default => v.num_patches(),
            FeatureSelect::Full => v.num_patches() + 1,
        })
    }

    /// The index into `[embeddings, layer 1, ..., layer N]` that
    /// `vision_feature_layer` selects.
    pub fn feature_layer_index(&self) -> Result<usize> {
        let n = self.vision()?.num_hidden_layers as i64;
        let idx = if self.vision_feature_layer < 0 {
            n + 1 + self.vision_feature_layer
        } else {
            self.vision_feature_layer
        };
        if idx < 0 || idx > n {
            bail!(
                "vision_feature_layer {} is out of range for {} layers",
                self.vision_feature_layer,
                n
            );
        }
        Ok(idx as usize)
    }
}

impl LlavaConfig {
    /// The config as a transformers-5 `LlavaForConditionalGeneration`
    /// `config.json` (the layout [`crate::model::LlavaModel::save_pretrained`] writes).
    pub fn to_hf_json(&self) -> Result<Value> {
        let t = &self.text;
        let v = self.vision()?;
        let dtype = self
            .stored_dtype
            .clone()
            .unwrap_or_else(|| "float32".into());
        Ok(serde_json::json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "dtype": dtype,
            "image_seq_length": self.image_tokens()?,
            "image_token_index": self.image_token_id,
            "model_type": "llava",
            "multimodal_projector_bias": self.projector_bias,
            "pad_token_id": t.pad_token_id,
            "projector_hidden_act": match self.projector {
                ProjectorKind::Linear => "linear",
                ProjectorKind::Mlp2xGelu => "gelu",
            },
            "text_config": {
                "bos_token_id": t.bos_token_id,
                "eos_token_id": t.eos_token_id,
                "head_dim": t.head_dim,
                "hidden_act": "silu",
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "max_position_embeddings": t.max_position_embeddings,
                "model_type": "mistral",
                "num_attention_heads": t.num_attention_heads,
                "num_hidden_layers": t.num_hidden_layers,
                "num_key_value_heads": t.num_key_value_heads,
                "pad_token_id": t.pad_token_id,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
                "sliding_window": t.sliding_window,
                "tie_word_embeddings": t.tie_word_embeddings,
                "vocab_size": t.vocab_size
            },
            "tie_word_embeddings": t.tie_word_embeddings,
            "vision_config": {
                "hidden_act": match v.hidden_act {
                    VisionAct::QuickGelu => "quick_gelu",
                    VisionAct::Gelu => "gelu",
                },
                "hidden_size": v.hidden_size,
                "image_size": v.image_size,
                "intermediate_size": v.intermediate_size,
                "layer_norm_eps": v.layer_norm_eps,
                "model_type": "clip_vision_model",
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "num_hidden_layers": v.num_hidden_layers,
                "patch_size": v.patch_size
            },
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": match self.feature_select {
                FeatureSelect::Default => "default",
                FeatureSelect::Full => "full",
            }
        }))
    }
}
