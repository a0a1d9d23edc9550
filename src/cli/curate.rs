//! `hdpo curate`: heatmap-guided preference curation (argument parsing and
//! progress display only; the work is `hdpo::curate::run`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use hdpo::curate::run::{heatmap_source_from_spec, parse_shard, run_with_progress};
use hdpo::curate::{export_rule, CurateConfig, Fill, PairKind, Vocabulary};
use hdpo::data::{DatasetFormat, LoadOptions, SplitSelection};
use hdpo::encode::DualEncoder;
use hdpo::heatmap::region::Threshold;
use hdpo::util::guard::{claim_output_file, Input, RunFingerprint};

/// Arguments of `hdpo curate`.
#[derive(Args, Debug)]
pub struct CurateArgs {
    /// The dataset folder (or its main file).
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset format.
    #[arg(long, value_enum)]
    pub format: DatasetFormat,
    /// Heatmap source: file[:DIR] (DAug {id}_{class}.npy; default DATA/heatmaps),
    /// mask[:SIGMA], gradcam, attention, uniform (ablation baseline).
    #[arg(long)]
    pub heatmaps: String,
    /// The dual encoder folder (CLIPModel or `hdpo align` output).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Output pair file (JSON Lines); images go to `images/` beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Pair kinds, comma-separated.
    #[arg(long, default_value = "mis,fp,fn_neutral,fn_delete")]
    pub kinds: String,
    /// λ of Eq. 11 (0 = plain DPO weights), finite and >= 0.
    #[arg(long, default_value_t = 1.0, value_parser = hdpo::util::validate::non_negative_finite)]
    pub lambda: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Curate the i-th (0-based) of n contiguous blocks, e.g. 0/4 .. 3/4.
    #[arg(long)]
    pub shard: Option<String>,
    /// Write a preview sheet for the first N pairs (to `preview/` beside the output).
    #[arg(long, default_value_t = 0)]
    pub preview: usize,
    /// Also write the pairs in the RULE / MMedPO layout to this file (beside --out).
    #[arg(long)]
    pub rule_out: Option<PathBuf>,
    /// Split to curate: train, val, test or all.
    #[arg(long, default_value = "train")]
    pub split: SplitSelection,
    /// A vocabulary file (`term<TAB>category[<TAB>concept]`) replacing the default.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// How the false-positive image fills the salient region: zero, mean, blur[:SIGMA].
    #[arg(long, default_value = "zero")]
    pub fill: String,
    /// Salient-region threshold as a fraction of the heatmap's maximum.
    #[arg(long, default_value_t = 0.5, conflicts_with = "top_quantile")]
    pub threshold: f32,
    /// Salient region: the top share q of the pixels instead of a fraction of the maximum.
    #[arg(long)]
    pub top_quantile: Option<f32>,
    /// Dilation of the salient region in pixels.
    #[arg(long, default_value_t = 2)]
    pub dilate: usize,
    /// Skip (and count) records whose image file is absent, as in a partial download.
    #[arg(long)]
    pub skip_missing: bool,
    /// Discard what --out holds (pairs, partial file, summary) and curate afresh.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: CurateArgs) -> Result<()> {
    let loaded = hdpo::data::load(
        a.format,
        &a.data,
        &LoadOptions {
            split: a.split.split(),
            skip_bad: true,
            skip_missing: a.skip_missing,
            ..LoadOptions::default()
        },
    )?;
    if !loaded.skipped.is_empty() {
        eprintln!(
            "{} bad dataset records skipped (first: {})",
            loaded.skipped.len(),
            loaded.skipped[0]
        );
    }
    let encoder = Arc::new(
        DualEncoder::load(&a.encoder, &hdpo::encode::LoadOptions::default())
            .with_context(|| format!("loading the encoder {}", a.encoder.display()))?,
    );
    let source = heatmap_source_from_spec(&a.heatmaps, &a.data, &encoder)?;
    let mut cfg = CurateConfig {
        kinds: PairKind::parse_list(&a.kinds)?,
        lambda: a.lambda,
        seed: a.seed,
        shard: a.shard.as_deref().map(parse_shard).transpose()?,
        fill: a.fill.parse::<Fill>()?,
        preview: a.preview,
        data_root: Some(if a.data.is_dir() {
            a.data.clone()
        } else {
            a.data.parent().map(PathBuf::from).unwrap_or_default()
        }),
        ..CurateConfig::default()
    };
    if let Some(v) = &a.vocab {
        cfg.vocab = Vocabulary::from_file(v)?;
    }
    cfg.region.threshold = match a.top_quantile {
        Some(q) => Threshold::TopQuantile(q),
        None => Threshold::FractionOfMax(a.threshold),
    };
    cfg.region.dilate_px = a.dilate;
    let samples = loaded.samples;
    let loaded_missing = loaded.missing;
    // Pairs already in --out are kept (resume) only when they come from the same encoder,
    // data, heatmaps and settings.
    let data = hdpo::util::guard::settings_id(
        &samples
            .iter()
            .map(|s| (&s.id, &s.question, &s.answer, &s.images))
            .collect::<Vec<_>>(),
    )?;
    let fp = RunFingerprint::new("curate")
        .with_content("encoder", &a.encoder)?
        .with("data", data)
        .with("heatmaps", a.heatmaps.clone())
        .with("config", cfg.hash(source.name()))
        .with("shard", a.shard.clone().unwrap_or_else(|| "all".into()));
    let partial = PathBuf::from(format!("{}.partial", a.out.display()));
    let summary_file = PathBuf::from(format!("{}.summary.json", a.out.display()));
    let _lock = claim_output_file(
        "--out",
        &a.out,
        &[
            Input::Data("--data", &a.data),
            Input::Sealed("--encoder", &a.encoder),
        ],
        &fp,
        a.overwrite,
        &[a.out.clone(), partial, summary_file],
    )?;
    let n = hdpo::curate::run::shard_range(samples.len(), cfg.shard).len();
    let bar = hdpo::util::progress::bar(n as u64, "curate");
    let summary = run_with_progress(
        &cfg,
        &samples,
        &encoder,
        source.as_ref(),
        &a.out,
        &mut |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let mut summary = summary;
    summary.missing_images = loaded_missing.clone();
    if let Some(m) = loaded_missing.describe() {
        eprintln!("{m}");
    }
    let summary_path = PathBuf::from(format!("{}.summary.json", a.out.display()));
    hdpo::util::fsio::write_json_atomic(&summary_path, &summary)?;
    print!("{summary}");
    // On the phantom, its ground truth says how often k* named the lesion.
    if let Some(root) = cfg
        .data_root
        .as_ref()
        .filter(|r| r.join("phantom.json").is_file())
    {
        let truth = hdpo::curate::audit::phantom_keyword_truth(root)?;
        let pairs = hdpo::data::pairs::read_pairs(&a.out)?;
        let au = hdpo::curate::audit::audit_keywords(&pairs, &truth, &cfg.vocab, &a.heatmaps, "");
        if au.studies > 0 {
            println!(
                "  k* names the lesion's finding or location for {} of {} abnormal phantom studies ({:.1}%)",
                au.hits,
                au.studies,
                100.0 * au.rate
            );
        }
    }
    println!("  summary: {}", summary_path.display());
    if let Some(r) = &a.rule_out {
        let n = export_rule(&a.out, r)?;
        println!("  {n} pairs in the RULE / MMedPO layout: {}", r.display());
    }
    Ok(())
}
