//! Training: SFT and preference losses (paper Eq. 1, Eq. 13), optimiser, checkpoints.
//!
//! The trainer is model-independent: a model takes part through the small
//! traits [`PreferencePolicy`] (summed response log-probs, with the adapters on
//! for π_θ and off for π_ref) and [`SftPolicy`] (token-level NLL of the
//! response), and reports its trainable tensors by name (PEFT names for LoRA).
//!
//! ```text
//! pairs ──> ref log-probs (adapters off, cached) ──┐
//!       └─> micro-steps: policy log-probs ──> loss (losses/) ──> backward ──> Σ grads
//!                                         optimiser step (AdamW, clip, schedule) <─┘
//!                                         log row (metrics), checkpoint (resume)
//! ```

pub mod checkpoint;
pub mod config;
mod engine;
pub mod grads;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod preference;
pub mod refcache;
pub mod schedule;
pub mod sft;
pub mod toy;

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

pub use config::{OptimConfig, PreferenceConfig, RunConfig, ScheduleKind, SftConfig};
pub use engine::LoopSummary;
pub use losses::{by_name as loss_by_name, Loss, LossOutput, LossType, PairLogps, PreferenceLoss};

/// One (prompt, response, image) sequence whose response the model scores.
/// `prompt` is the question only; the model applies its chat template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqItem {
    pub prompt: String,
    pub response: String,
    /// The image, already resolved (None for text-only sequences).
    pub image: Option<PathBuf>,
}

/// One preference pair as the trainer needs it (a subset of the pair record
/// schema in `docs/design.md`, "Pair records"; chosen and rejected may carry
/// different images).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub id: String,
    /// `mis`, `fp`, `fn_neutral`, `fn_delete`, or a baseline's name.
    pub kind: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub chosen_image: Option<PathBuf>,
    pub rejected_image: Option<PathBuf>,
    /// w of Eq. 13 (1.0 for plain DPO).
    pub weight: f64,
}

impl PreferencePair {
    /// The chosen sequence (x⁺, y⁺).
    pub fn chosen_item(&self) -> SeqItem {
        SeqItem {
            prompt: self.prompt.clone(),
            response: self.chosen.clone(),
            image: self.chosen_image.clone(),
        }
    }

    /// The rejected sequence (x⁻, y⁻).
    pub fn rejected_item(&self) -> SeqItem {
        SeqItem {
            prompt: self.prompt.clone(),
            response: self.rejected.clone(),
            image: self.rejected_image.clone(),
        }
    }
}

/// One supervised example (question, answer, image) for SFT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub id: String,
    pub item: SeqItem,
}

/// A model that the preference trainer can optimise.
pub trait PreferencePolicy {
    /// log π(y|x) for each item, summed over the response tokens (prompt and
    /// image tokens masked out, the end-of-sequence token counted): shape `[n]`.
    /// `adapters = true` gives π_θ (with gradients to [`Self::trainable`]);
    /// `adapters = false` gives π_ref, the same model with the adapters off.
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor>;

    /// The trainable tensors with stable, unique names (PEFT names for LoRA).
    fn trainable(&self) -> Vec<(String, Var)>;
}

/// The NLL of a batch of responses.
#[derive(Clone, Debug)]
pub struct Nll {
    /// Σ over the batch's response tokens of −log p(token) (a scalar, with gradients).
    pub sum: Tensor,
    /// The number of response tokens in that sum.
    pub tokens: usize,
}

/// A model that SFT can optimise: token-level NLL over the response tokens.
pub trait SftPolicy {
    /// The summed NLL of the response tokens (end-of-sequence counted) of `items`.
    fn nll(&self, items: &[SeqItem]) -> Result<Nll>;

    /// The trainable tensors with stable, unique names.
    fn trainable(&self) -> Vec<(String, Var)>;
}

/// Peak resident memory of this process in bytes (`VmHWM` of
/// `/proc/self/status`), where the platform has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
