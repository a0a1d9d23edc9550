//! `hdpo model info`: architecture, parameter count and a training memory
//! estimate computed from `config.json` alone (no weights are read).

use serde::Serialize;

use super::checkpoint::expected_tensors;
use super::config::{LlavaConfig, ProjectorKind};

/// What to estimate training memory for.
#[derive(Clone, Debug)]
pub struct InfoOptions {
    pub seq_len: usize,
    pub batch: usize,
    pub lora_r: usize,
    /// Decoder linear layers that carry LoRA (PEFT suffixes).
    pub lora_targets: Vec<String>,
    /// Bytes per weight / activation element (2 for bf16, 4 for f32).
    pub dtype_bytes: usize,
}

impl Default for InfoOptions {
    fn default() -> Self {
        InfoOptions {
            seq_len: 1024,
            batch: 1,
            lora_r: 128,
            lora_targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            dtype_bytes: 2,
        }
    }
}

/// Training memory estimate in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    /// Frozen base weights at `dtype_bytes` each.
    pub weights: u64,
    /// LoRA A and B in f32.
    pub lora: u64,
    /// LoRA gradients in f32.
    pub gradients: u64,
    /// AdamW first and second moments in f32.
    pub optimizer: u64,
    /// Saved decoder activations for the backward pass (no checkpointing),
    /// including the attention scores and the f32 log-softmax over the vocabulary.
    pub activations: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub decoder: String,
    pub vision: String,
    pub projector: String,
    pub image_tokens: usize,
    pub params_total: u64,
    pub params_decoder: u64,
    pub params_vision: u64,
    pub params_projector: u64,
    pub lora_params: u64,
    pub seq_len: usize,
    pub batch: usize,
    pub lora_r: usize,
    pub memory: MemoryEstimate,
}

/// Compute the model's description and estimates from its config.
pub fn model_info(cfg: &LlavaConfig, opts: &InfoOptions) -> anyhow::Result<ModelInfo> {
    let specs = expected_tensors(cfg)?;
    let (mut dec, mut vis, mut proj) = (0u64, 0u64, 0u64);
    for s in &specs {
        let n = s.numel() as u64;
        if s.name.starts_with("model.vision_tower.") {
            vis += n;
        } else if s.name.starts_with("model.multi_modal_projector.") {
            proj += n;
        } else {
            dec += n;
        }
    }
    let t = &cfg.text;
    let v = cfg.vision()?;
    let (h, i) = (t.hidden_size as u64, t.intermediate_size as u64);
    let qd = (t.num_attention_heads * t.head_dim) as u64;
    let kvd = (t.num_key_value_heads * t.head_dim) as u64;
    let r = opts.lora_r as u64;
    let mut lora_per_layer = 0u64;
    for (name, in_f, out_f) in [
        ("q_proj", h, qd),
        ("k_proj", h, kvd),
        ("v_proj", h, kvd),
        ("o_proj", qd, h),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    ] {
        if opts.lora_targets.iter().any(|x| x == name) {
            lora_per_layer += r * (in_f + out_f);
        }
    }
    let lora_params = lora_per_layer * t.num_hidden_layers as u64;
    let total = dec + vis + proj;
    let b = opts.dtype_bytes as u64;
    let n_tok = (opts.batch * opts.seq_len) as u64;
    let s = opts.seq_len as u64;
    let heads = t.num_attention_heads as u64;
    let per_layer =
        n_tok * (10 * h + 4 * i + 3 * kvd) * b + 2 * (opts.batch as u64) * heads * s * s * b.max(4);
    let logits = n_tok * t.vocab_size as u64 * (b + 2 * 4);
    let activations = per_layer * t.num_hidden_layers as u64 + logits;
    let mem = MemoryEstimate {
        weights: total * b,
        lora: lora_params * 4,
        gradients: lora_params * 4,
        optimizer: lora_params * 8,
        activations,
        total: total * b + lora_params * 16 + activations,
    };
    Ok(ModelInfo {
        architecture: format!("{:?}", cfg.architecture),
        decoder: format!(
            "Llama/Mistral: vocab {}, hidden {}, intermediate {}, {} layers, {} heads ({} KV, head_dim {}), RoPE theta {}, sliding window {:?}",
            t.vocab_size,
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
            t.rope_theta,
            t.sliding_window
        ),
        vision: format!(
            "CLIP: hidden {}, intermediate {}, {} layers, {} heads, patch {}, image {} ({} patches), feature layer {}",
            v.hidden_size,
            v.intermediate_size,
            v.num_hidden_layers,
            v.num_attention_heads,
            v.patch_size,
            v.image_size,
            v.num_patches(),
            cfg.vision_feature_layer
        ),
        projector: match cfg.projector {
            ProjectorKind::Linear => format!("linear {} -> {}", v.hidden_size, t.hidden_size),
            ProjectorKind::Mlp2xGelu => format!(
                "mlp2x_gelu {} -> {} -> {}",
                v.hidden_size, t.hidden_size, t.hidden_size
            ),
        },
        image_tokens: cfg.image_tokens()?,
        params_total: total,
        params_decoder: dec,
        params_vision: vis,
        params_projector: proj,
        lora_params,
        seq_len: opts.seq_len,
        batch: opts.batch,
        lora_r: opts.lora_r,
        memory: mem,
    })
}

/// Human-readable size.
pub fn human_bytes(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.2} GiB")
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Human-readable count (`7.57B`).
pub fn human_count(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}K", f / 1e3)
    } else {
        n.to_string()
    }
}
