//! Hallucination measured against ground truth (the phantom knows every
//! study's lesion): a finding extractor for the phantom's report and answer
//! language ([`extract`]), the truth and subsets of each study ([`truth`]),
//! and per-subset finding precision / recall / F1, hallucination, omission
//! and misdiagnosis rates and closed-VQA accuracy with bootstrap intervals
//! and paired tests ([`score`]). Complements the paper's n-gram and VQA
//! metrics (section 4.2), which cannot tell a hallucinated lesion from a
//! paraphrase; `docs/metrics.md` defines every rate and its denominator.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use hdpo::eval::findings::{self, FindingsOptions, FindingsReport, Scored};
//! # let (dir, samples): (std::path::PathBuf, Vec<hdpo::data::Sample>) = todo!();
//! let (truth, threshold) = findings::load_phantom_truth(&dir)?;
//! let rows_a = findings::read_prediction_rows(&dir.join("hdpo.jsonl"))?;
//! let rows_b = findings::read_prediction_rows(&dir.join("dpo.jsonl"))?;
//! let opts = FindingsOptions { subtle_threshold: threshold, ..Default::default() };
//! let a = Scored::new(&truth, &findings::items_from_rows(&samples, &rows_a, "A")?)?;
//! let b = Scored::new(&truth, &findings::items_from_rows(&samples, &rows_b, "B")?)?;
//! println!("{}", FindingsReport::compute(&a, &opts).to_markdown());
//! println!("{}", findings::paired_test(&a, &b, &opts)?.to_markdown("HDPO", "DPO"));
//! # Ok(()) }
//! ```

pub mod extract;
pub mod score;
pub mod truth;

pub use extract::{extract, parse_answer, AnswerFacts, Extraction, Finding, SizeWord};
pub use score::{
    format_estimate, format_p, item_counts, paired_test, Counts, Estimate, FindingsOptions,
    FindingsReport, Metric, PairedComparison, PairedReport, Scored, StudyScore, SubsetFindings,
};
pub use truth::{
    item_of, items_from_rows, load_phantom_truth, read_prediction_rows, GroundTruth, Item,
    ItemKind, PredictionRef, StudyFacts, Subset,
};
