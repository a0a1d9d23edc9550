//! Report and Med-VQA metrics with reference parity.
//!
//! * Reports ([`score_reports`]): R2Gen cleaning ([`clean`]), pycocoevalcap
//!   corpus BLEU-1..4 and their mean ([`bleu`]), ROUGE-L ([`rouge`]) and METEOR
//!   1.5 ([`meteor`]), corpus and per sample, with the key names of
//!   `fixtures/metrics/*.expected.json`.
//! * VQA ([`vqa::score_vqa`]): LLaVA-Med open recall / closed accuracy (with
//!   their substring behaviour), strict variants and CARES yes/no.
//!
//! Inputs are JSONL rows `{id, reference, prediction, answer_type?}` read by
//! [`read_report_rows`] / [`read_vqa_rows`]. Conventions: `docs/metrics.md`.

pub mod bleu;
pub mod clean;
pub mod meteor;
pub mod rouge;
pub mod vqa;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

pub use clean::{Cleaner, R2GenGroundTruth};
pub use meteor::{Meteor, MeteorMode};
pub use vqa::{score_vqa, VqaReport, VqaRow};

/// One report metric over `(hypothesis, reference)` pairs: named columns,
/// their corpus values and per-sample values.
pub trait ReportMetric: Sync {
    /// Column names (`BLEU_1`, ..., `ROUGE_L`, `METEOR`).
    fn names(&self) -> Vec<&'static str>;
    /// Corpus values (one per name) and per-pair values (one row per pair).
    fn score(&self, pairs: &[(&str, &str)]) -> (Vec<f64>, Vec<Vec<f64>>);
}

/// pycocoevalcap `Bleu(4)`.
pub struct Bleu;

impl ReportMetric for Bleu {
    fn names(&self) -> Vec<&'static str> {
        vec!["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4"]
    }
    fn score(&self, pairs: &[(&str, &str)]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (c, per) = bleu::bleu(pairs);
        (c.to_vec(), per.into_iter().map(|p| p.to_vec()).collect())
    }
}

/// pycocoevalcap `Rouge`.
pub struct RougeL;

impl ReportMetric for RougeL {
    fn names(&self) -> Vec<&'static str> {
        vec!["ROUGE_L"]
    }
    fn score(&self, pairs: &[(&str, &str)]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (c, per) = rouge::rouge(pairs);
        (vec![c], per.into_iter().map(|p| vec![p]).collect())
    }
}

impl ReportMetric for Meteor {
    fn names(&self) -> Vec<&'static str> {
        vec!["METEOR"]
    }
    fn score(&self, pairs: &[(&str, &str)]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (c, per) = self.corpus(pairs);
        (vec![c], per.into_iter().map(|p| vec![p]).collect())
    }
}

/// One generated report and its reference.
#[derive(Clone, Debug)]
pub struct ReportRow {
    /// Row id (echoed in per-sample output).
    pub id: Value,
    /// Ground-truth report.
    pub reference: String,
    /// Generated report.
    pub prediction: String,
}

/// Corpus report metrics (fixture key names).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[allow(non_snake_case)]
pub struct ReportMetrics {
    /// Corpus BLEU-1.
    pub BLEU_1: f64,
    /// Corpus BLEU-2.
    pub BLEU_2: f64,
    /// Corpus BLEU-3.
    pub BLEU_3: f64,
    /// Corpus BLEU-4.
    pub BLEU_4: f64,
    /// Mean of BLEU-1..4.
    pub BLEU_avg: f64,
    /// Aggregate METEOR.
    pub METEOR: f64,
    /// Mean ROUGE-L.
    pub ROUGE_L: f64,
}

/// Per-sample report scores (fixture key names).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[allow(non_snake_case)]
pub struct ReportSample {
    /// Row id.
    pub id: Value,
    /// The reference string that was scored (after cleaning / GT view).
    pub reference_used: String,
    /// The prediction string that was scored (after cleaning).
    pub prediction_used: String,
    /// Sentence BLEU-1.
    pub BLEU_1: f64,
    /// Sentence BLEU-2.
    pub BLEU_2: f64,
    /// Sentence BLEU-3.
    pub BLEU_3: f64,
    /// Sentence BLEU-4.
    pub BLEU_4: f64,
    /// Segment METEOR.
    pub METEOR: f64,
    /// ROUGE-L.
    pub ROUGE_L: f64,
}

/// All report metrics of a set of rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportScores {
    /// Corpus values.
    pub metrics: ReportMetrics,
    /// Rows scored.
    pub n: usize,
    /// Scoring settings (cleaner, GT view, METEOR mode).
    pub settings: Value,
    /// Per-row values, in input order.
    pub per_sample: Vec<ReportSample>,
}

/// Score reports as R2Gen does with pycocoevalcap: clean reference and
/// prediction with `cleaner`, optionally replace the reference by R2Gen's
/// ground-truth view `gt`, then BLEU-1..4 (+ mean), METEOR and ROUGE-L.
pub fn score_reports(
    rows: &[ReportRow],
    cleaner: Cleaner,
    gt: Option<&R2GenGroundTruth>,
    meteor: &Meteor,
) -> ReportScores {
    let refs: Vec<String> = rows
        .iter()
        .map(|r| {
            let c = cleaner.apply(&r.reference);
            match gt {
                Some(g) => g.view(&c),
                None => c,
            }
        })
        .collect();
    let preds: Vec<String> = rows.iter().map(|r| cleaner.apply(&r.prediction)).collect();
    let pairs: Vec<(&str, &str)> = preds
        .iter()
        .zip(refs.iter())
        .map(|(p, r)| (p.as_str(), r.as_str()))
        .collect();
    let (bc, bp) = Bleu.score(&pairs);
    let (rc, rp) = RougeL.score(&pairs);
    let (mc, mp) = if pairs.is_empty() {
        (vec![0.0], Vec::new())
    } else {
        ReportMetric::score(meteor, &pairs)
    };
    let metrics = ReportMetrics {
        BLEU_1: bc[0],
        BLEU_2: bc[1],
        BLEU_3: bc[2],
        BLEU_4: bc[3],
        BLEU_avg: (bc[0] + bc[1] + bc[2] + bc[3]) / 4.0,
        METEOR: mc[0],
        ROUGE_L: rc[0],
    };
    let per_sample = rows
        .iter()
        .enumerate()
        .map(|(i, r)| ReportSample {
            id: r.id.clone(),
            reference_used: refs[i].clone(),
            prediction_used: preds[i].clone(),
            BLEU_1: bp[i][0],
            BLEU_2: bp[i][1],
            BLEU_3: bp[i][2],
            BLEU_4: bp[i][3],
            METEOR: mp[i][0],
            ROUGE_L: rp[i][0],
        })
        .collect();
    ReportScores {
        metrics,
        n: rows.len(),
        settings: serde_json::json!({
            "clean": cleaner.name(),
            "r2gen_gt": gt.is_some(),
            "meteor_mode": match meteor.mode() { MeteorMode::Full => "full", MeteorMode::ExactStem => "exact_stem" },
            "meteor": meteor.mode().describe(),
        }),
        per_sample,
    }
}

/// Read a JSONL file into `(line number, object)` pairs, with errors naming
/// the file and line (invalid UTF-8, invalid JSON, non-object rows).
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let ln = i + 1;
        let line = match std::str::from_utf8(line) {
            Ok(s) => s,
            Err(e) => bail!(
                "{}: line {ln}: invalid UTF-8 at byte {} of the line",
                path.display(),
                e.valid_up_to()
            ),
        };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(t)
            .with_context(|| format!("{}: line {ln}: invalid JSON", path.display()))?;
        match v {
            Value::Object(m) => out.push((ln, m)),
            _ => bail!("{}: line {ln}: expected a JSON object", path.display()),
        }
    }
    Ok(out)
}

fn string_field(
    path: &Path,
    ln: usize,
    m: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<String> {
    match m.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!(
            "{}: line {ln}: field '{field}' must be a string, found {other}",
            path.display()
        ),
        None => bail!("{}: line {ln}: missing field '{field}'", path.display()),
    }
}

fn id_field(path: &Path, ln: usize, m: &serde_json::Map<String, Value>) -> Result<Value> {
    match m.get("id") {
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(v.clone()),
        Some(other) => bail!(
            "{}: line {ln}: field 'id' must be a string or a number, found {other}",
            path.display()
        ),
        None => bail!("{}: line {ln}: missing field 'id'", path.display()),
    }
}

/// The rows of a prediction file with their ids, refused when an id repeats (a repeated
/// row would be scored twice).
fn read_rows_unique_ids(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let rows = read_jsonl(path)?;
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (ln, m) in &rows {
        let id = id_field(path, *ln, m)?.to_string();
        if let Some(first) = seen.insert(id.clone(), *ln) {
            bail!(
                "{}: line {ln}: field 'id' {id} repeats line {first}; every prediction row \
                 needs its own id",
                path.display()
            );
        }
    }
    Ok(rows)
}

/// Read report rows `{id, reference, prediction}` (other fields ignored).
pub fn read_report_rows(path: &Path) -> Result<Vec<ReportRow>> {
    read_rows_unique_ids(path)?
        .into_iter()
        .map(|(ln, m)| {
            Ok(ReportRow {
                id: id_field(path, ln, &m)?,
                reference: string_field(path, ln, &m, "reference")?,
                prediction: string_field(path, ln, &m, "prediction")?,
            })
        })
        .collect()
}

/// Read VQA rows `{id, reference, prediction, answer_type?}`.
pub fn read_vqa_rows(path: &Path) -> Result<Vec<VqaRow>> {
    read_rows_unique_ids(path)?
        .into_iter()
        .map(|(ln, m)| {
            let answer_type = match m.get("answer_type") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => bail!(
                    "{}: line {ln}: field 'answer_type' must be a string, found {other}",
                    path.display()
                ),
            };
            Ok(VqaRow {
                id: id_field(path, ln, &m)?,
                reference: string_field(path, ln, &m, "reference")?,
                prediction: string_field(path, ln, &m, "prediction")?,
                answer_type,
            })
        })
        .collect()
}

/// R2Gen's ground-truth view built from an R2Gen `annotation.json`: the
/// vocabulary of the `train` split's reports, cleaned with `cleaner`
/// (tokens occurring at least `threshold` times), cut to `max_seq_length - 1`.
pub fn r2gen_gt_from_annotation(
    path: &Path,
    cleaner: Cleaner,
    threshold: usize,
    max_seq_length: usize,
) -> Result<R2GenGroundTruth> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: invalid JSON", path.display()))?;
    let train = v
        .get("train")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: no 'train' list", path.display()))?;
    let mut cleaned = Vec::with_capacity(train.len());
    for (i, e) in train.iter().enumerate() {
        let r = e.get("report").and_then(Value::as_str).with_context(|| {
            format!(
                "{}: train[{i}]: field 'report' missing or not a string",
                path.display()
            )
        })?;
        cleaned.push(cleaner.apply(r));
    }
    Ok(R2GenGroundTruth::from_cleaned_train(
        cleaned.iter().map(String::as_str),
        threshold,
        max_seq_length,
    ))
}
