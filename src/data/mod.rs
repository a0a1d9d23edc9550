//! Datasets (paper 4.1): one [`Sample`] type through which VQA-RAD, SLAKE,
//! R2Gen-style IU-Xray / MIMIC-CXR, RULE / MMed-RAG files and the phantom
//! benchmark all enter hdpo; image decoding and preprocessing.
//!
//! Errors name the file, the record (index and id) and the field
//! ([`RecordError`]); with [`LoadOptions::skip_bad`] bad records are counted
//! and reported instead of stopping the load.

pub mod image;
pub mod inspect;
pub mod load;
pub mod pairs;
pub mod phantom;
pub mod r2gen;
pub mod reader;
pub mod rule;
pub mod slake;
pub mod vqa_rad;

pub use load::{detect_format, load, LoadOptions, LoadOutcome, MissingImages};

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The on-disk dataset formats hdpo reads (one file per format in this module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// VQA-RAD: `VQA_RAD Dataset Public.json` + `images/` (or `VQA_RAD Image Folder/`).
    VqaRad,
    /// SLAKE: `train.json`, `validate.json` / `validation.json`, `test.json` + `imgs/`.
    Slake,
    /// R2Gen-style `annotation.json` + `images/` (IU-Xray; MIMIC-CXR when `study_id` is present).
    R2gen,
    /// RULE / MMed-RAG VQA JSON Lines (`question`, `answer`, `image`, `question_id`).
    Rule,
    /// The phantom benchmark's SLAKE-style QA (`train.json`, `test.json`, `imgs/*/mask.png`).
    Phantom,
    /// The phantom benchmark's R2Gen-style reports (`annotation.json`), with the
    /// lesion masks of `imgs/<id>/mask.png`.
    PhantomReport,
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetFormat::VqaRad => "vqa-rad",
            DatasetFormat::Slake => "slake",
            DatasetFormat::R2gen => "r2gen",
            DatasetFormat::Rule => "rule",
            DatasetFormat::Phantom => "phantom",
            DatasetFormat::PhantomReport => "phantom-report",
        })
    }
}

/// The kind of answer a sample expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum AnswerType {
    /// Closed-ended VQA (yes/no or a choice).
    Closed,
    /// Open-ended VQA.
    Open,
    /// Free-text report generation (IU-Xray, MIMIC-CXR).
    Report,
}

impl fmt::Display for AnswerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnswerType::Closed => "closed",
            AnswerType::Open => "open",
            AnswerType::Report => "report",
        })
    }
}

/// A dataset split.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// Which split(s) to use: one, or all of them (`train`, `val`, `test`, `all`
/// on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitSelection {
    All,
    Only(Split),
}

impl SplitSelection {
    /// The split to load, `None` for all ([`LoadOptions::split`]).
    pub fn split(self) -> Option<Split> {
        match self {
            SplitSelection::All => None,
            SplitSelection::Only(s) => Some(s),
        }
    }
}

impl std::str::FromStr for SplitSelection {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "all" => SplitSelection::All,
            "train" => SplitSelection::Only(Split::Train),
            "val" => SplitSelection::Only(Split::Val),
            "test" => SplitSelection::Only(Split::Test),
            other => anyhow::bail!("split {other:?}: expected train, val, test or all"),
        })
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

/// One example of any dataset: an image (or several, for report studies),
/// an optional question, and the ground-truth answer or report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable identifier, unique within a dataset (question id or study id).
    pub id: String,
    /// The dataset's name (`vqa-rad`, `slake`, `iu-xray`, `mimic-cxr`, `rule`, `phantom`).
    pub dataset: String,
    pub split: Split,
    /// Image paths, already resolved under the dataset root. The first is the
    /// primary image (the one VQA questions are about).
    pub images: Vec<PathBuf>,
    /// The question; `None` for report generation.
    pub question: Option<String>,
    /// The ground-truth answer (VQA) or findings report.
    pub answer: String,
    pub answer_type: AnswerType,
    /// The lesion mask of the primary image, when the dataset has one.
    pub mask: Option<PathBuf>,
    /// Dataset-specific fields kept for subsets and audits (organ, modality,
    /// question type, study and subject ids, phantom ground truth, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// The prompt of report-generation samples, which have no question (the
/// policy's SFT examples, predictions, curated pairs and baselines all ask
/// with it).
pub const REPORT_PROMPT: &str = "Describe the findings of this chest X-ray.";

impl Sample {
    /// The question this sample is asked with: its own, or [`REPORT_PROMPT`]
    /// for a report.
    pub fn prompt(&self) -> String {
        self.question
            .clone()
            .unwrap_or_else(|| REPORT_PROMPT.to_string())
    }
}

/// An error in one record of a dataset file: names the file, the record
/// (index and id) and the field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordError {
    pub file: PathBuf,
    /// 0-based index of the record in the file (line number - 1 for JSONL).
    pub index: Option<usize>,
    pub id: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl RecordError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        RecordError {
            file: file.into(),
            index: None,
            id: None,
            field: None,
            message: message.into(),
        }
    }
    pub fn record(mut self, index: usize, id: Option<String>) -> Self {
        self.index = Some(index);
        self.id = id;
        self
    }
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(i) = self.index {
            write!(f, ": record {i}")?;
            if let Some(id) = &self.id {
                write!(f, " (id '{id}')")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ", field '{field}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RecordError {}
