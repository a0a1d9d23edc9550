//! Training configurations (serde: JSON or TOML) and their presets.
//!
//! The paper (section 4.1) states LoRA, batch size 4, learning rate 1e-7 and
//! 3 epochs for preference optimisation and nothing else; the remaining
//! values follow the Hugging Face `Trainer` / TRL defaults that LLaVA-Med and
//! its DPO forks run with (AdamW β = (0.9, 0.999), ε = 1e-8, no weight decay,
//! gradient clipping at norm 1.0) and LLaVA's scripts (cosine schedule with a
//! 3% linear warm-up).

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::losses::{LossType, DEFAULT_ALPHA};

/// The learning-rate schedule after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Half a cosine from the peak to 0 (HF `get_cosine_schedule_with_warmup`).
    Cosine,
    /// Linear decay to 0 (HF `get_linear_schedule_with_warmup`).
    Linear,
    /// Constant after the warm-up.
    Constant,
}

/// AdamW and the learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: ScheduleKind,
    /// Warm-up as a fraction of the optimiser steps (rounded up, as HF does).
    pub warmup_ratio: f64,
    /// Global-norm gradient clipping (torch `clip_grad_norm_`); `None` disables it.
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-7,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.03,
            max_grad_norm: Some(1.0),
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.learning_rate.is_finite() && self.learning_rate >= 0.0,
            "learning_rate must be a finite number >= 0, got {}",
            self.learning_rate
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay must be >= 0, got {}",
            self.weight_decay
        );
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            ensure!((0.0..1.0).contains(&b), "{n} must be in [0, 1), got {b}");
        }
        ensure!(
            self.eps.is_finite() && self.eps > 0.0,
            "eps must be > 0, got {}",
            self.eps
        );
        ensure!(
            (0.0..=1.0).contains(&self.warmup_ratio),
            "warmup_ratio must be in [0, 1], got {}",
            self.warmup_ratio
        );
        if let Some(m) = self.max_grad_norm {
            ensure!(
                m.is_finite() && m > 0.0,
                "max_grad_norm must be > 0, got {m}"
            );
        }
        Ok(())
    }
}

/// The loop: batches, epochs, data order, checkpoints, resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Examples (pairs for preference training) per optimiser step.
    pub batch_size: usize,
    /// Examples per forward/backward; `batch_size / micro_batch_size` micro-steps
    /// are accumulated into one optimiser step (1 keeps memory lowest).
    pub micro_batch_size: usize,
    pub epochs: usize,
    /// Seed of the data order: epoch e is shuffled with `rng_for(seed, "epoch{e}")`.
    pub seed: u64,
    pub shuffle: bool,
    /// Write a checkpoint every N optimiser steps (0: only the final state).
    pub checkpoint_every: usize,
    /// How many step checkpoints to keep (older ones are removed; at least 1).
    pub keep_checkpoints: usize,
    /// Continue from the latest checkpoint in the output folder.
    pub resume: bool,
    /// Stop (as if killed) after this many optimiser steps in total, without
    /// the final save; for tests and time-boxed runs.
    pub halt_after_steps: Option<usize>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            batch_size: 4,
            micro_batch_size: 1,
            epochs: 3,
            seed: 42,
            shuffle: true,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            resume: false,
            halt_after_steps: None,
        }
    }
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.batch_size > 0, "batch_size must be at least 1");
        ensure!(
            self.micro_batch_size > 0,
            "micro_batch_size must be at least 1"
        );
        ensure!(self.epochs > 0, "epochs must be at least 1");
        ensure!(
            self.keep_checkpoints > 0,
            "keep_checkpoints must be at least 1"
        );
        Ok(())
    }
}

/// Preference optimisation (DPO, Eq. 1; HDPO, Eq. 13).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreferenceConfig {
    /// `hdpo`, `dpo` or `mdpo`.
    pub loss: LossType,
    /// α of Eq. 1 / Eq. 13 (TRL's beta).
    pub alpha: f64,
    pub run: RunConfig,
    pub optim: OptimConfig,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl PreferenceConfig {
    /// The paper's setting (section 4.1): LoRA, batch 4, lr 1e-7, 3 epochs, α = 0.1.
    pub fn paper() -> Self {
        Self {
            loss: LossType::Hdpo,
            alpha: DEFAULT_ALPHA,
            run: RunConfig::default(),
            optim: OptimConfig::default(),
        }
    }

    /// Tuned for the tiny phantom model: lr 1e-7 barely moves a randomly
    /// initialised tiny LoRA in a few hundred steps, so the phantom preset uses
    /// a much larger step with a short warm-up.
    pub fn phantom() -> Self {
        Self {
            loss: LossType::Hdpo,
            alpha: DEFAULT_ALPHA,
            run: RunConfig {
                epochs: 4,
                checkpoint_every: 20,
                ..RunConfig::default()
            },
            optim: OptimConfig {
                learning_rate: 5e-4,
                warmup_ratio: 0.05,
                ..OptimConfig::default()
            },
        }
    }

    /// A preset by name (`paper`, `phantom`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper()),
            "phantom" => Ok(Self::phantom()),
            other => bail!("unknown preset '{other}' (known: paper, phantom)"),
        }
    }

    pub fn validate(&self) -> Result<()> {
        super::losses::Loss::new(self.loss, self.alpha)?;
        self.run.validate()?;
        self.optim.validate()
    }
}

/// Supervised fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    pub run: RunConfig,
    pub optim: OptimConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self::phantom()
    }
}

impl SftConfig {
    /// LLaVA-style LoRA SFT: lr 2e-4, batch 16, 3 epochs, cosine with 3% warm-up.
    pub fn lora() -> Self {
        Self {
            run: RunConfig {
                batch_size: 16,
                micro_batch_size: 1,
                ..RunConfig::default()
            },
            optim: OptimConfig {
                learning_rate: 2e-4,
                ..OptimConfig::default()
            },
        }
    }

    /// Teaching the tiny phantom model from random weights.
    pub fn phantom() -> Self {
        Self {
            run: RunConfig {
                batch_size: 8,
                micro_batch_size: 8,
                epochs: 5,
                checkpoint_every: 100,
                ..RunConfig::default()
            },
            optim: OptimConfig {
                learning_rate: 1e-3,
                warmup_ratio: 0.05,
                weight_decay: 0.01,
                ..OptimConfig::default()
            },
        }
    }

    /// A preset by name (`lora`, `phantom`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "lora" => Ok(Self::lora()),
            "phantom" => Ok(Self::phantom()),
            other => bail!("unknown SFT preset '{other}' (known: lora, phantom)"),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        self.optim.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_preset_has_the_papers_numbers() {
        let c = PreferenceConfig::preset("paper").unwrap();
        assert_eq!(c.run.batch_size, 4);
        assert_eq!(c.optim.learning_rate, 1e-7);
        assert_eq!(c.run.epochs, 3);
        assert_eq!(c.alpha, 0.1);
        assert_eq!(c.loss, LossType::Hdpo);
        c.validate().unwrap();
        PreferenceConfig::preset("phantom")
            .unwrap()
            .validate()
            .unwrap();
        assert!(PreferenceConfig::preset("fast").is_err());
    }

    #[test]
    fn configs_deserialise_with_defaults_and_reject_unknown_fields() {
        let c: PreferenceConfig =
            toml::from_str("loss = \"dpo\"\nalpha = 0.5\n[run]\nbatch_size = 2\n").unwrap();
        assert_eq!(c.loss, LossType::Dpo);
        assert_eq!(c.alpha, 0.5);
        assert_eq!(c.run.batch_size, 2);
        assert_eq!(c.run.epochs, 3);
        assert_eq!(c.optim.learning_rate, 1e-7);
        let e = toml::from_str::<PreferenceConfig>("[run]\nbatch = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch"), "{e}");
        let j = serde_json::to_string(&SftConfig::phantom()).unwrap();
        let back: SftConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(back, SftConfig::phantom());
        let mut bad = PreferenceConfig::paper();
        bad.run.batch_size = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
        bad = PreferenceConfig::paper();
        bad.alpha = 0.0;
        assert!(bad.validate().unwrap_err().to_string().contains("alpha"));
        let e = toml::from_str::<PreferenceConfig>("loss = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("hdpo"), "{e}");
    }
}
