//! Ground truth for the hallucination metrics: each study's lesion (kind,
//! side, lobe, size word, area) from the phantom's `phantom.json`, the
//! evaluation subsets it belongs to, and the scored items (a report, a
//! closed question) that point at it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::extract::{parse_answer, Finding, SizeWord};
use crate::data::phantom::writer::PhantomManifest;
use crate::data::phantom::StudyTruth;
use crate::data::{AnswerType, Sample};
use crate::heatmap::io::is_subtle;

/// The truth of one study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyFacts {
    pub id: String,
    /// The lesion; `None` for a normal study.
    pub finding: Option<Finding>,
    /// Lesion area, share of the image (0 for normal studies).
    pub lesion_area: f64,
}

impl StudyFacts {
    /// From the generator's record of a study (`phantom.json`).
    pub fn from_truth(t: &StudyTruth) -> Result<StudyFacts> {
        let size = match &t.size {
            Some(w) => Some(SizeWord::parse(w).with_context(|| {
                format!("study '{}': field size: unknown size word '{w}'", t.id)
            })?),
            None => None,
        };
        Ok(StudyFacts {
            id: t.id.clone(),
            finding: t.finding.map(|k| Finding::new(k, t.side, t.lobe, size)),
            lesion_area: t.lesion_area,
        })
    }

    /// Whether the study belongs to `subset` at the subtle threshold
    /// `threshold` (share of the image).
    pub fn in_subset(&self, subset: Subset, threshold: f64) -> bool {
        let subtle = self.finding.is_some() && is_subtle(self.lesion_area, threshold);
        match subset {
            Subset::All => true,
            Subset::Normal => self.finding.is_none(),
            Subset::Abnormal => self.finding.is_some(),
            Subset::Subtle => subtle,
            Subset::Conspicuous => self.finding.is_some() && !subtle,
        }
    }
}

/// The evaluation subsets of studies (paper 4.2 defines the subtle one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// Every study.
    All,
    /// Studies without a lesion.
    Normal,
    /// Studies with a lesion.
    Abnormal,
    /// Abnormal studies whose lesion covers less than the subtle threshold
    /// (5% by default) of the image.
    Subtle,
    /// Abnormal studies that are not subtle.
    Conspicuous,
}

impl Subset {
    pub const ALL: [Subset; 5] = [
        Subset::All,
        Subset::Normal,
        Subset::Abnormal,
        Subset::Subtle,
        Subset::Conspicuous,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Subset::All => "all",
            Subset::Normal => "normal",
            Subset::Abnormal => "abnormal",
            Subset::Subtle => "subtle",
            Subset::Conspicuous => "conspicuous",
        }
    }
}

/// Every study's truth by study id.
pub type GroundTruth = BTreeMap<String, StudyFacts>;

/// The phantom manifest `DIR/phantom.json`: the truth of every study and the
/// generator's subtle threshold.
pub fn load_phantom_truth(dir: &Path) -> Result<(GroundTruth, f64)> {
    let path = dir.join("phantom.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (the hallucination metrics need the phantom's ground truth)",
            path.display()
        )
    })?;
    let m: PhantomManifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a phantom manifest", path.display()))?;
    let mut out = GroundTruth::new();
    for (i, t) in m.studies.iter().enumerate() {
        let f = StudyFacts::from_truth(t)
            .with_context(|| format!("{}: studies[{i}]", path.display()))?;
        out.insert(f.id.clone(), f);
    }
    Ok((out, m.config.subtle_threshold))
}

/// What an item asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A findings report.
    Report,
    /// A closed (yes/no) question.
    Closed {
        /// The correct answer: `true` for "yes".
        reference: bool,
        /// Whether a "yes" asserts that something is abnormal (every closed
        /// question but the modality ones, "Is this a CT scan?").
        about_abnormality: bool,
    },
    /// An open question (not scored by these metrics).
    Open,
}

/// One answered item of a study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id (question id, or study id for a report).
    pub id: String,
    /// The study it is about.
    pub study: String,
    pub kind: ItemKind,
    pub prediction: String,
}

/// The item a phantom sample stands for, answered with `prediction`: a
/// report's study is its id, a question's is `meta.study_id`.
pub fn item_of(s: &Sample, prediction: &str) -> Result<Item> {
    let what = |field: &str| format!("sample '{}' ({}): field {field}", s.id, s.dataset);
    let (study, kind) = match s.answer_type {
        AnswerType::Report => (s.id.clone(), ItemKind::Report),
        AnswerType::Closed | AnswerType::Open => {
            let study = s
                .meta
                .get("study_id")
                .and_then(|v| v.as_str())
                .with_context(|| format!("{}: missing (not phantom data?)", what("study_id")))?
                .to_string();
            if s.answer_type == AnswerType::Open {
                (study, ItemKind::Open)
            } else {
                let reference = parse_answer(&s.answer).yes.with_context(|| {
                    format!("{}: '{}' is not yes or no", what("answer"), s.answer)
                })?;
                let modality =
                    s.meta.get("content_type").and_then(|v| v.as_str()) == Some("Modality");
                (
                    study,
                    ItemKind::Closed {
                        reference,
                        about_abnormality: !modality,
                    },
                )
            }
        }
    };
    Ok(Item {
        id: s.id.clone(),
        study,
        kind,
        prediction: prediction.to_string(),
    })
}

/// A prediction row as [`items_from_rows`] takes it: (id, answer type if the
/// row gives one, prediction).
pub type PredictionRef = (String, Option<String>, String);

/// The rows of a prediction file (JSONL, the rows `hdpo predict` writes);
/// numeric ids become their decimal text. Bad rows fail naming file, line
/// and field.
pub fn read_prediction_rows(path: &Path) -> Result<Vec<PredictionRef>> {
    Ok(crate::eval::metrics::read_vqa_rows(path)?
        .into_iter()
        .map(|r| {
            let id = match r.id {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (id, r.answer_type, r.prediction)
        })
        .collect())
}

/// Items from prediction rows `(id, answer_type, prediction)` (the rows
/// `hdpo predict` writes), matched to `samples` by id (and by answer type
/// where the row gives one). `source` names the rows in errors.
pub fn items_from_rows(
    samples: &[Sample],
    rows: &[PredictionRef],
    source: &str,
) -> Result<Vec<Item>> {
    let mut by_id: HashMap<&str, Vec<&Sample>> = HashMap::new();
    for s in samples {
        by_id.entry(s.id.as_str()).or_default().push(s);
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, (id, answer_type, prediction)) in rows.iter().enumerate() {
        let found: Vec<&&Sample> = by_id
            .get(id.as_str())
            .map(|v| {
                v.iter()
                    .filter(|s| {
                        answer_type.as_deref().is_none_or(|t| {
                            crate::model::policy::answer_type_name(s.answer_type) == t
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let s = match found.as_slice() {
            [s] => *s,
            [] => bail!(
                "{source}: row {}: field id: no phantom sample '{id}'",
                i + 1
            ),
            _ => bail!(
                "{source}: row {}: field id: '{id}' names {} samples; give answer_type",
                i + 1,
                found.len()
            ),
        };
        out.push(item_of(s, prediction).with_context(|| format!("{source}: row {}", i + 1))?);
    }
    Ok(out)
}
