//! The LLaVA model (paper 4.1): CLIP vision tower, projector, Llama/Mistral
//! decoder, LoRA, chat templates, checkpoint loading and generation.
//!
//! Layout (one file per part):
//! - [`config`]: `config.json` of HF LLaVA (transformers 4.x / 5.x) and original LLaVA-Med
//! - [`checkpoint`]: memory-mapped (sharded) safetensors, key layouts, expected tensors
//! - [`nn`]: LoRA-aware linear layer, differentiable norms and softmax
//! - [`vision`]: CLIP tower and projector; [`decoder`]: the trainable decoder
//! - [`llava`]: [`LlavaModel`], [`Batch`], [`sequence_logprobs`]
//! - [`lora`]: PEFT-compatible adapters; [`merge`]: `hdpo merge`
//! - [`template`]: tokenizer and chat templates; [`generate`]: KV-cache generation
//! - [`info`]: `hdpo model info`; [`bench`]: throughput; [`image`]: temporary preprocessing
//! - [`policy`]: [`LlavaPolicy`], the trainer's view of the model (DPO/HDPO/SFT)
//! - [`predict`]: greedy answers for a dataset (`hdpo predict`)
//!
//! Trainer use (DPO reference = same model with adapters off):
//! ```no_run
//! # use hdpo::model::*;
//! # fn f(m: &LlavaModel, b: &Batch) -> anyhow::Result<()> {
//! let logits = m.forward(b, true)?;                 // [B, L, V], graph through LoRA
//! let (_tok, pol) = sequence_logprobs(&logits, &b.input_ids, &b.response_mask)?;
//! let ref_logits = m.forward(b, false)?.detach();   // reference policy
//! let (_t, reference) = sequence_logprobs(&ref_logits, &b.input_ids, &b.response_mask)?;
//! let grads = (pol - reference)?.sum_all()?.backward()?;
//! for (name, var) in m.lora_vars() { let _g = grads.get(&var); }
//! # Ok(()) }
//! ```

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device_check;
pub mod fused;
pub mod generate;
pub mod image;
pub mod info;
pub mod llava;
pub mod lora;
pub mod merge;
pub mod nn;
pub mod ops;
pub mod policy;
pub mod predict;
pub mod template;
pub mod vision;

pub use config::LlavaConfig;
pub use generate::GenerateOptions;
pub use llava::{parse_device, parse_dtype, sequence_logprobs, Batch, LlavaModel, LoadOptions};
pub use lora::{LoraConfig, TargetModules};
pub use nn::Fwd;
pub use policy::LlavaPolicy;
pub use predict::{predict_samples, predict_to_file, PredictOptions, PredictionRow};
pub use template::{ChatTemplate, EncodedSequence, TextTokenizer};
