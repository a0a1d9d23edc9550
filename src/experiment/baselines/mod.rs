//! The baselines of the paper's Table 1, one file each behind [`PairBuilder`]:
//! a builder turns training samples (plus, for some, the model being tuned or
//! the dual encoder) into [`PairRecord`]s with a weight, and names the loss
//! its pairs are trained with (`dpo`, Eq. 1, or the weighted form of Eq. 13).
//!
//! DPO and HDPO themselves train on the curated pairs of `curate` (paper
//! 3.1-3.2; DPO = λ = 0 on the same pairs) and are not builders here.
//!
//! | builder | pairs | what is approximated offline |
//! | --- | --- | --- |
//! | `povid` | hallucinated text (a finding swapped); the model's answer to a noised image | GPT-4V hallucination injection → vocabulary swap; diffusion noise → Gaussian pixel noise |
//! | `mmedpo` | finding swap weighted by clinical relevance; noised lesion region | Med-LLM relevance score → a score per vocabulary category; localiser → the lesion mask |
//! | `mdpo` | standard text pair + conditional image pair (same answer, corrupted image) | anchor term left out |
//! | `self_reward` | the model's sampled answers ranked by a judge | LLM-as-judge → token F1 against the ground truth |
//! | `sima` | sampled answers ranked by a visual critic | in-context critic → log-prob gain of the answer from the real image over a blank one |
//! | `stllava` | ground truth preferred over the model's own wrong answer | GPT-4o judge → token F1 < 1 |
//! | `fisao` | sampled answers ranked by the vision encoder as verifier | token-level rewards → one sequence-level image-text cosine |

pub mod common;
pub mod fisao;
pub mod mdpo;
pub mod mmedpo;
pub mod povid;
pub mod self_reward;
pub mod sima;
pub mod stllava;

use std::path::Path;

use anyhow::{bail, Result};

use crate::data::pairs::PairRecord;
use crate::data::Sample;
use crate::train::LossType;

/// The model being tuned, as the self-generating baselines use it.
pub trait Responder {
    /// The answer to `question` about `image`: greedy when `temperature` is 0,
    /// otherwise sampled from the stream `seed`.
    fn respond(&self, question: &str, image: &Path, temperature: f64, seed: u64) -> Result<String>;
    /// log π(answer | question, image), summed over the answer's tokens;
    /// `image = None` scores the answer with a blank (all-zero) image.
    fn logp(&self, question: &str, answer: &str, image: Option<&Path>) -> Result<f64>;
}

/// An image-text similarity (the dual encoder's cosine, FiSAO's verifier).
pub trait ImageTextScore {
    fn score(&self, image: &Path, text: &str) -> Result<f64>;
}

/// What a builder may use.
pub struct BuildContext<'a> {
    /// The run's seed; builders derive their streams with `rng_for(seed, "<name>/<id>")`.
    pub seed: u64,
    /// The pair file's folder: generated images go under `<root>/<name>_images/`
    /// and image paths in the records are relative to it when they lie inside it.
    pub root: &'a Path,
    /// Medical terms and their categories (`finding`, `anatomy`, `laterality`, `size`, ...).
    pub vocabulary: &'a [(String, String)],
    /// Self-generated answers (Self-Rewarding, SIMA, STLLaVA-Med, FiSAO, POVID).
    pub responder: Option<&'a dyn Responder>,
    /// The dual encoder (FiSAO).
    pub scorer: Option<&'a dyn ImageTextScore>,
    /// Answers sampled per sample by the self-generating builders.
    pub samples_per_prompt: usize,
    /// The sampling temperature of those answers.
    pub temperature: f64,
}

/// A baseline's pair construction.
pub trait PairBuilder: Send + Sync {
    /// The method name (`povid`, ...), also the prefix of its pairs' `kind`.
    fn name(&self) -> &'static str;
    /// The preference loss its pairs are trained with (`dpo`, `hdpo` or `mdpo`).
    fn loss(&self) -> LossType {
        LossType::Dpo
    }
    /// Whether it needs [`BuildContext::responder`].
    fn needs_model(&self) -> bool {
        false
    }
    /// Pairs from the training samples. Samples that give no pair are skipped.
    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>>;
}

/// Every builder's name.
pub const NAMES: [&str; 7] = [
    "povid",
    "mmedpo",
    "mdpo",
    "self_reward",
    "sima",
    "stllava",
    "fisao",
];

/// The registry: a builder by method name.
pub fn by_name(name: &str) -> Result<Box<dyn PairBuilder>> {
    Ok(match name {
        "povid" => Box::new(povid::Povid::default()),
        "mmedpo" => Box::new(mmedpo::MMedPo::default()),
        "mdpo" => Box::new(mdpo::MDpo::default()),
        "self_reward" => Box::new(self_reward::SelfReward),
        "sima" => Box::new(sima::Sima),
        "stllava" => Box::new(stllava::StLlavaMed),
        "fisao" => Box::new(fisao::FiSao),
        other => bail!("unknown baseline '{other}' (known: {})", NAMES.join(", ")),
    })
}
