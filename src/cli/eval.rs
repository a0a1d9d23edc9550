//! `hdpo eval`: report metrics, Med-VQA metrics, METEOR resources.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use hdpo::eval::metrics::{self, meteor, Cleaner, Meteor, MeteorMode, ReportScores, VqaReport};
use hdpo::util::fsio::atomic_write_with;

/// Evaluation commands.
#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Report metrics (BLEU-1..4, BLEU_avg, METEOR, ROUGE-L) as R2Gen + pycocoevalcap compute them.
    Report(ReportArgs),
    /// Med-VQA metrics (LLaVA-Med, strict and CARES variants).
    Vqa(VqaArgs),
    /// Hallucination metrics against the phantom's ground truth, with 95% intervals and paired tests.
    Findings(super::eval_findings::FindingsArgs),
    /// Extract and index METEOR's tables from pycocoevalcap (its meteor/ folder or its wheel).
    MeteorData(MeteorDataArgs),
}

/// `hdpo eval report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// JSONL rows {id, reference, prediction}.
    #[arg(long)]
    pub predictions: PathBuf,
    /// R2Gen cleaner applied to reference and prediction: iu_xray, mimic_cxr or none.
    #[arg(long, default_value = "iu_xray")]
    pub clean: String,
    /// METEOR tables folder (from `hdpo eval meteor-data`); defaults to $HDPO_METEOR_DATA.
    /// Without it METEOR runs exact + stem only.
    #[arg(long)]
    pub meteor_data: Option<PathBuf>,
    /// Score references as R2Gen's trainer sees them: vocabulary from this annotation.json's train split.
    #[arg(long)]
    pub r2gen_gt: Option<PathBuf>,
    /// Vocabulary threshold of the R2Gen ground-truth view.
    #[arg(long, default_value_t = 3)]
    pub threshold: usize,
    /// max_seq_length of the R2Gen ground-truth view.
    #[arg(long, default_value_t = 60)]
    pub max_seq_length: usize,
    /// Write per-sample scores here (JSONL).
    #[arg(long)]
    pub per_sample: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hdpo eval vqa`.
#[derive(Args, Debug)]
pub struct VqaArgs {
    /// JSONL rows {id, reference, prediction, answer_type?}.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Write per-sample scores here (JSONL; CLOSED rows first, then OPEN).
    #[arg(long)]
    pub per_sample: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hdpo eval meteor-data`.
#[derive(Args, Debug)]
pub struct MeteorDataArgs {
    /// pycocoevalcap's meteor/ folder (meteor-1.5.jar + data/paraphrase-en.gz) or the pycocoevalcap wheel.
    #[arg(long)]
    pub from: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: EvalCmd) -> Result<()> {
    match cmd {
        EvalCmd::Report(a) => report(a),
        EvalCmd::Vqa(a) => vqa(a),
        EvalCmd::Findings(a) => super::eval_findings::run(a),
        EvalCmd::MeteorData(a) => meteor_data(a),
    }
}

/// `--per-sample` must not name the `--predictions` file it is computed from.
fn per_sample_is_not_input(per_sample: &Path, predictions: &Path) -> Result<()> {
    hdpo::util::guard::check_output_against_inputs(
        "--per-sample",
        per_sample,
        &[hdpo::util::guard::Input::File("--predictions", predictions)],
    )
}

fn write_jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    atomic_write_with(path, |w| {
        use std::io::Write;
        for r in rows {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn report(a: ReportArgs) -> Result<()> {
    let cleaner = Cleaner::parse(&a.clean).with_context(|| {
        format!(
            "--clean must be iu_xray, mimic_cxr or none (got '{}')",
            a.clean
        )
    })?;
    let start = Instant::now();
    let rows = metrics::read_report_rows(&a.predictions)?;
    if rows.is_empty() {
        bail!("{}: no rows to score", a.predictions.display());
    }
    let data_dir = a
        .meteor_data
        .clone()
        .or_else(|| std::env::var_os("HDPO_METEOR_DATA").map(PathBuf::from));
    let meteor = match &data_dir {
        Some(d) => Meteor::from_dir(d)?,
        None => Meteor::exact_stem(),
    };
    let gt = match &a.r2gen_gt {
        Some(p) => Some(metrics::r2gen_gt_from_annotation(
            p,
            cleaner,
            a.threshold,
            a.max_seq_length,
        )?),
        None => None,
    };
    let scores = metrics::score_reports(&rows, cleaner, gt.as_ref(), &meteor);
    if let Some(p) = &a.per_sample {
        per_sample_is_not_input(p, &a.predictions)?;
        write_jsonl(p, &scores.per_sample)?;
    }
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "metrics": scores.metrics,
            "n": scores.n,
            "settings": scores.settings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&scores, &meteor, secs);
    }
    Ok(())
}

fn print_report(s: &ReportScores, m: &Meteor, secs: f64) {
    let r = &s.metrics;
    println!(
        "report metrics: {} rows, clean={}",
        s.n,
        s.settings["clean"].as_str().unwrap_or("?")
    );
    for (k, v) in [
        ("BLEU_1", r.BLEU_1),
        ("BLEU_2", r.BLEU_2),
        ("BLEU_3", r.BLEU_3),
        ("BLEU_4", r.BLEU_4),
        ("BLEU_avg", r.BLEU_avg),
        ("METEOR", r.METEOR),
        ("ROUGE_L", r.ROUGE_L),
    ] {
        println!("  {k:<9} {v:.6}");
    }
    if m.mode() == MeteorMode::ExactStem {
        println!("  note: {}", m.mode().describe());
    }
    println!("  ({secs:.2} s)");
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_else(|| "n/a".into())
}

fn vqa(a: VqaArgs) -> Result<()> {
    let rows = metrics::read_vqa_rows(&a.predictions)?;
    if rows.is_empty() {
        bail!("{}: no rows to score", a.predictions.display());
    }
    let r: VqaReport = metrics::score_vqa(&rows);
    if let Some(p) = &a.per_sample {
        per_sample_is_not_input(p, &a.predictions)?;
        write_jsonl(p, &r.per_sample)?;
    }
    if a.json {
        let v = serde_json::json!({
            "n": r.n, "n_closed": r.n_closed, "n_open": r.n_open,
            "closed": r.closed, "open": r.open,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let c = &r.closed;
    let o = &r.open;
    println!(
        "VQA metrics: {} rows ({} closed, {} open)",
        r.n, r.n_closed, r.n_open
    );
    println!(
        "  closed  llava_med_closed_acc (substring)  {}",
        opt(c.llava_med_closed_acc)
    );
    println!(
        "  closed  closed_exact_match (strict)       {}",
        opt(c.closed_exact_match)
    );
    let y = &c.cares_yesno;
    println!(
        "  closed  CARES yes/no  acc {}  P {}  R {}  F1 {}  (TP {} FP {} TN {} FN {})",
        opt(y.accuracy),
        opt(y.precision),
        opt(y.recall),
        opt(y.f1),
        y.tp,
        y.fp,
        y.tn,
        y.fn_
    );
    println!(
        "  open    llava_med_open_recall             {}",
        opt(o.llava_med_open_recall)
    );
    println!(
        "  open    llava_med_open_precision          {}",
        opt(o.llava_med_open_precision)
    );
    println!(
        "  open    llava_med_open_f1                 {}",
        opt(o.llava_med_open_f1)
    );
    println!(
        "  open    llava_med_exact_match_score       {}",
        opt(o.llava_med_exact_match_score)
    );
    println!(
        "  open    open_token_recall_simple (strict) {}",
        opt(o.open_token_recall_simple)
    );
    Ok(())
}

fn meteor_data(a: MeteorDataArgs) -> Result<()> {
    let start = Instant::now();
    let s = meteor::build_data_dir(&a.from, &a.out)?;
    println!(
        "METEOR data written to {} ({} phrases, {} paraphrase entries; from {} and {}) in {:.1} s",
        a.out.display(),
        s.phrases,
        s.entries,
        s.jar.display(),
        s.paraphrase.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
