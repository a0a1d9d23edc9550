//! `hdpo eval findings`: hallucination metrics of a prediction file against
//! the phantom's ground truth, with bootstrap intervals and, with
//! `--against`, the paired test of two prediction files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use hdpo::data::load::{load, LoadOptions};
use hdpo::data::{DatasetFormat, Sample};
use hdpo::eval::findings::{self, FindingsOptions, FindingsReport, Scored};

/// `hdpo eval findings`.
#[derive(Args, Debug)]
pub struct FindingsArgs {
    /// JSONL rows {id, prediction, answer_type?} as `hdpo predict` writes them
    /// (reports and/or VQA questions of the phantom; open questions are not scored).
    #[arg(long)]
    pub predictions: PathBuf,
    /// The phantom benchmark folder the predictions answer (with phantom.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset format; only the phantom has the ground truth these metrics need.
    #[arg(long, default_value = "phantom")]
    pub format: String,
    /// A second prediction file on the same items: paired test of PREDICTIONS against it.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bootstrap resamples (of studies).
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Subtle-lesion threshold (share of the image); default: the phantom's own.
    #[arg(long)]
    pub subtle_threshold: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn rows_of(path: &Path) -> Result<Vec<findings::PredictionRef>> {
    let rows = findings::read_prediction_rows(path)?;
    if rows.is_empty() {
        bail!("{}: no rows to score", path.display());
    }
    Ok(rows)
}

fn phantom_samples(dir: &Path) -> Result<Vec<Sample>> {
    let opts = LoadOptions::default();
    let mut samples = load(DatasetFormat::Phantom, dir, &opts)?.samples;
    samples.extend(load(DatasetFormat::PhantomReport, dir, &opts)?.samples);
    Ok(samples)
}

fn scored(
    path: &Path,
    samples: &[Sample],
    truth: &findings::GroundTruth,
) -> Result<(Scored, usize)> {
    let rows = rows_of(path)?;
    let source = path.display().to_string();
    let items = findings::items_from_rows(samples, &rows, &source)?;
    let s = Scored::new(truth, &items).with_context(|| source.clone())?;
    let n = items
        .iter()
        .filter(|i| i.kind != findings::ItemKind::Open)
        .count();
    Ok((s, n))
}

pub fn run(a: FindingsArgs) -> Result<()> {
    if a.format != "phantom" {
        bail!(
            "--format {}: the hallucination metrics need the phantom's ground truth (--format phantom)",
            a.format
        );
    }
    if !(a.confidence > 0.0 && a.confidence < 1.0) {
        bail!("--confidence must lie in (0, 1), got {}", a.confidence);
    }
    if a.bootstrap == 0 {
        bail!("--bootstrap must be at least 1");
    }
    let (truth, threshold) = findings::load_phantom_truth(&a.data)?;
    let samples = phantom_samples(&a.data)?;
    let opts = FindingsOptions {
        subtle_threshold: a.subtle_threshold.unwrap_or(threshold),
        bootstrap: a.bootstrap,
        confidence: a.confidence,
        seed: a.seed,
    };
    let (main, n_items) = scored(&a.predictions, &samples, &truth)?;
    let report = FindingsReport::compute(&main, &opts);
    let paired = match &a.against {
        Some(other) => {
            let (b, _) = scored(other, &samples, &truth)?;
            Some(findings::paired_test(&main, &b, &opts)?)
        }
        None => None,
    };
    if a.json {
        let v = serde_json::json!({
            "predictions": a.predictions,
            "against": a.against,
            "scored_items": n_items,
            "report": report,
            "paired": paired,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "hallucination metrics of {} ({} scored items) against {}\n",
        a.predictions.display(),
        n_items,
        a.data.join("phantom.json").display()
    );
    println!("{}", report.to_markdown());
    if let (Some(p), Some(other)) = (&paired, &a.against) {
        println!(
            "paired test: A = {}, B = {}\n",
            a.predictions.display(),
            other.display()
        );
        println!("{}", p.to_markdown("A", "B"));
    }
    Ok(())
}
