//! The experiment configuration (TOML): data, encoder, model, training,
//! evaluation and the grid of the paper's Tables 1-5.
//!
//! The phantom default is embedded ([`ExperimentConfig::phantom`]) and also
//! shipped as `configs/phantom.toml`; every field has a default, so a config
//! file only names what it changes. Unknown fields are errors naming the field.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The embedded phantom default (`configs/phantom.toml`).
pub const PHANTOM_TOML: &str = include_str!("../../configs/phantom.toml");

/// Every method the grid knows, in the row order of the paper's Table 1.
pub const ALL_METHODS: [&str; 11] = [
    "base",
    "self_reward",
    "dpo",
    "povid",
    "sima",
    "fisao",
    "stllava",
    "mmedpo",
    "mdpo",
    "hdpo",
    "sft",
];

/// The heatmap sources of Table 5.
pub const HEATMAP_SOURCES: [&str; 4] = ["file", "mask", "gradcam", "attention"];

/// The whole experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub name: String,
    /// The seed of every random choice of the run.
    pub seed: u64,
    pub data: DataConfig,
    pub encoder: EncoderConfig,
    pub model: ModelConfig,
    pub sft: StageConfig,
    pub preference: PreferenceStage,
    pub curation: CurationConfig,
    pub eval: EvalConfig,
    pub grid: GridConfig,
}

/// Where the samples come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `phantom` (generated into the run folder) or `paths` (the `datasets` below).
    pub source: String,
    /// Phantom studies per split.
    pub train: usize,
    pub test: usize,
    /// Phantom image side in pixels.
    pub size: usize,
    /// Caps on the samples of each dataset (0 = no cap); the first N in file order.
    pub max_train_per_dataset: usize,
    pub max_test_per_dataset: usize,
    /// Lesion share of the image below which a sample is subtle (paper 4.2: 5%).
    pub subtle_threshold: f64,
    /// For `source = "paths"`: the datasets (format as `hdpo data inspect` names them).
    pub datasets: Vec<DatasetEntry>,
}

/// One dataset on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    /// The column group label (`SLAKE`, `VQA-RAD`, `IU-Xray`, `MIMIC-CXR`).
    pub name: String,
    /// `vqa-rad`, `slake`, `r2gen`, `rule`, `phantom`, `phantom-report`.
    pub format: String,
    pub path: PathBuf,
    /// DAug-style heatmap folder (`{id}_{class}.npy`), for the `file` heatmap source.
    #[serde(default)]
    pub heatmaps: Option<PathBuf>,
}

/// The dual encoder of curation: trained from scratch (phantom) or loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// A dual encoder folder (`hdpo align` output or a CLIP model); when set, nothing is trained.
    pub path: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub projection_dim: usize,
    pub learning_rate: f64,
    /// Also align each training mask region with the phrases that name its
    /// lesion (`hdpo align`'s local alignment; samples without a mask keep
    /// the global pair only).
    pub regions: bool,
}

/// The vision-language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A LLaVA checkpoint folder (e.g. LLaVA-Med v1.5) with its `tokenizer.json`;
    /// when unset, a tiny LLaVA is built and pretrained on the training split.
    pub path: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub text_hidden: usize,
    pub text_layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Chat template name (`llava_plain`, `mistral_instruct`, `vicuna_v1`).
    pub template: String,
    /// Full-weight epochs that turn the random tiny model into the "base" model.
    pub pretrain_epochs: usize,
    /// Phantom studies generated for pretraining only, with their own seed
    /// (`experiment::pretrain`); 0 = pretrain on the training split.
    pub pretrain_studies: usize,
    /// Epochs on the pretraining VQA examples alone before `pretrain_epochs`
    /// on all of them, reports included (0 = none).
    pub pretrain_vqa_epochs: usize,
    pub pretrain_learning_rate: f64,
    pub lora_r: usize,
    pub lora_alpha: f64,
}

/// SFT settings (LoRA on the base model, then merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
}

/// Preference training settings shared by every method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreferenceStage {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// α of Eq. 1 / Eq. 13.
    pub alpha: f64,
    /// At most this many pairs per cell (a seeded subset; 0 = all).
    pub max_pairs: usize,
    /// The self-generating baselines (Self-Rewarding, SIMA, STLLaVA-Med,
    /// FiSAO, POVID's image pairs) sample the model on at most this many
    /// training samples (a seeded subset; 0 = all).
    pub max_generate_samples: usize,
}

/// Curation (paper 3.1-3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurationConfig {
    /// λ of Eq. 11.
    pub lambda: f64,
    /// The heatmap source of the main HDPO cell (`file`, `mask`, `gradcam`, `attention`).
    pub heatmap_source: String,
}

/// Evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub max_new_tokens: usize,
    /// Run the lesion-masking probe (`eval::probe`).
    pub probe: bool,
    /// At most this many abnormal test samples per dataset in the probe (0 = all).
    pub probe_max_samples: usize,
    /// METEOR 1.5 resources (`hdpo eval meteor-data`); unset: exact + stem modules only.
    pub meteor_data: Option<PathBuf>,
}

/// The grid of cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridConfig {
    /// Preference methods (Table 1 rows besides `base` and `sft`, which always run).
    pub methods: Vec<String>,
    /// Starting points: `false` = the base model, `true` = the SFT model.
    pub sft: Vec<bool>,
    /// Table 3: HDPO on each single error type.
    pub error_types: bool,
    /// Table 4: HDPO with λ = 0.
    pub lambda_zero: bool,
    /// Table 5: extra heatmap sources for HDPO.
    pub heatmap_sources: Vec<String>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: "experiment".into(),
            seed: 0,
            data: DataConfig::default(),
            encoder: EncoderConfig::default(),
            model: ModelConfig::default(),
            sft: StageConfig::default(),
            preference: PreferenceStage::default(),
            curation: CurationConfig::default(),
            eval: EvalConfig::default(),
            grid: GridConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "phantom".into(),
            train: 160,
            test: 40,
            size: 64,
            max_train_per_dataset: 0,
            max_test_per_dataset: 0,
            subtle_threshold: crate::heatmap::io::SUBTLE_THRESHOLD,
            datasets: Vec::new(),
        }
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            path: None,
            epochs: 6,
            batch_size: 32,
            image_size: 64,
            patch_size: 8,
            hidden: 48,
            layers: 2,
            heads: 4,
            projection_dim: 48,
            learning_rate: 1e-3,
            regions: true,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            device: "cpu".into(),
            image_size: 32,
            patch_size: 8,
            vision_hidden: 32,
            vision_layers: 2,
            text_hidden: 64,
            text_layers: 2,
            heads: 4,
            intermediate: 128,
            template: "llava_plain".into(),
            pretrain_epochs: 3,
            pretrain_studies: 0,
            pretrain_vqa_epochs: 0,
            pretrain_learning_rate: 3e-3,
            lora_r: 8,
            lora_alpha: 16.0,
        }
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            epochs: 3,
            batch_size: 8,
            learning_rate: 2e-3,
        }
    }
}

impl Default for PreferenceStage {
    fn default() -> Self {
        PreferenceStage {
            epochs: 2,
            batch_size: 4,
            learning_rate: 5e-4,
            alpha: crate::train::losses::DEFAULT_ALPHA,
            max_pairs: 0,
            max_generate_samples: 0,
        }
    }
}

impl Default for CurationConfig {
    fn default() -> Self {
        CurationConfig {
            lambda: 1.0,
            heatmap_source: "file".into(),
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_new_tokens: 48,
            probe: true,
            probe_max_samples: 0,
            meteor_data: None,
        }
    }
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            methods: vec!["dpo".into(), "hdpo".into()],
            sft: vec![false, true],
            error_types: false,
            lambda_zero: false,
            heatmap_sources: Vec::new(),
        }
    }
}

impl ExperimentConfig {
    /// The embedded phantom default (`configs/phantom.toml`).
    pub fn phantom() -> Self {
        Self::from_toml(PHANTOM_TOML, "configs/phantom.toml (embedded)")
            .expect("the embedded phantom config parses")
    }

    /// Parse and validate a TOML text; `what` names it in errors.
    pub fn from_toml(text: &str, what: &str) -> Result<Self> {
        let c: ExperimentConfig =
            toml::from_str(text).with_context(|| format!("{what}: invalid experiment config"))?;
        c.validate()
            .with_context(|| format!("{what}: invalid value"))?;
        Ok(c)
    }

    /// Read and validate a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The config as TOML (what the run folder records).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Check every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        match self.data.source.as_str() {
            "phantom" => {
                ensure!(self.data.train > 0, "data.train must be at least 1");
                ensure!(self.data.test > 0, "data.test must be at least 1");
            }
            "paths" => ensure!(
                !self.data.datasets.is_empty(),
                "data.datasets is empty but data.source is \"paths\""
            ),
            other => bail!("data.source must be \"phantom\" or \"paths\", got {other:?}"),
        }
        ensure!(
            self.data.subtle_threshold > 0.0 && self.data.subtle_threshold < 1.0,
            "data.subtle_threshold must lie in (0, 1), got {}",
            self.data.subtle_threshold
        );
        for m in &self.grid.methods {
            ensure!(
                ALL_METHODS.contains(&m.as_str()) && m != "base" && m != "sft",
                "grid.methods: unknown method {m:?} (known: {})",
                ALL_METHODS[1..ALL_METHODS.len() - 1].join(", ")
            );
        }
        for s in self
            .grid
            .heatmap_sources
            .iter()
            .chain(std::iter::once(&self.curation.heatmap_source))
        {
            ensure!(
                HEATMAP_SOURCES.contains(&s.as_str()),
                "heatmap source {s:?} is unknown (known: {})",
                HEATMAP_SOURCES.join(", ")
            );
        }
        ensure!(
            !self.grid.sft.is_empty(),
            "grid.sft must name at least one starting point"
        );
        ensure!(
            self.curation.lambda.is_finite() && self.curation.lambda >= 0.0,
            "curation.lambda must be a finite number >= 0"
        );
        ensure!(
            self.preference.alpha.is_finite() && self.preference.alpha > 0.0,
            "preference.alpha must be > 0"
        );
        for (n, v) in [
            ("sft.epochs", self.sft.epochs),
            ("sft.batch_size", self.sft.batch_size),
            ("preference.epochs", self.preference.epochs),
            ("preference.batch_size", self.preference.batch_size),
            ("eval.max_new_tokens", self.eval.max_new_tokens),
            ("model.lora_r", self.model.lora_r),
        ] {
            ensure!(v > 0, "{n} must be at least 1");
        }
        ensure!(
            self.model.image_size > 0
                && self.model.patch_size > 0
                && self.model.image_size.is_multiple_of(self.model.patch_size),
            "model.image_size must be a positive multiple of model.patch_size"
        );
        ensure!(
            self.model.heads > 0 && self.model.text_hidden.is_multiple_of(self.model.heads),
            "model.text_hidden must be a multiple of model.heads"
        );
        crate::model::template::ChatTemplate::from_name(&self.model.template)
            .context("model.template")?;
        Ok(())
    }

    /// A fingerprint of everything that shapes a cell's numbers (the whole
    /// config but the grid lists, which only choose which cells run): cells
    /// cached under another fingerprint are recomputed.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut c = self.clone();
        c.grid = GridConfig::default();
        c.name = String::new();
        let text = serde_json::to_string(&c).unwrap_or_default();
        let d = Sha256::digest(text.as_bytes());
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_phantom_config_parses_and_round_trips() {
        let c = ExperimentConfig::phantom();
        assert_eq!(c.name, "phantom");
        assert!(c.grid.methods.contains(&"hdpo".to_string()));
        assert_eq!(c.grid.sft, vec![false, true]);
        let back = ExperimentConfig::from_toml(&c.to_toml().unwrap(), "round trip").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.fingerprint(), c.fingerprint());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let e = ExperimentConfig::from_toml("[grid]\nmethodz = []\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            format!("{e:#}").contains("invalid experiment config"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            ExperimentConfig::from_toml("[grid]\nmethods = [\"nope\"]\n", "t").unwrap_err()
        );
        assert!(e.contains("grid.methods") && e.contains("nope"), "{e}");
        let e = format!(
            "{:#}",
            ExperimentConfig::from_toml("[curation]\nheatmap_source = \"x\"\n", "t").unwrap_err()
        );
        assert!(e.contains("heatmap source"), "{e}");
    }

    #[test]
    fn fingerprint_ignores_the_grid_but_not_the_seed() {
        let a = ExperimentConfig::phantom();
        let mut b = a.clone();
        b.grid.methods = vec!["dpo".into()];
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.seed += 1;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
