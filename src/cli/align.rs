//! `hdpo align`: contrastive alignment of a small dual encoder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use hdpo::curate::regions::{pairs_with_regions, RegionHeatmapSpec, RegionHeatmaps};
use hdpo::curate::Vocabulary;
use hdpo::data::{DatasetFormat, LoadOptions, Split};
use hdpo::encode::align::{
    align_with_progress, pairs_from_samples, AlignConfig, AlignPair, PairImage, PretrainedTowers,
};
use hdpo::encode::TextPooling;

/// Arguments of `hdpo align`.
#[derive(Args, Debug)]
pub struct AlignArgs {
    /// A JSON Lines file of `{"image": PATH, "text": TEXT}` pairs (image
    /// paths relative to the file's folder), or a folder holding `pairs.jsonl`.
    #[arg(long)]
    pub data: PathBuf,
    /// Input format: `jsonl` (the file above), or a dataset format
    /// (vqa-rad, slake, r2gen, rule, phantom, phantom-report) whose train
    /// split is read through the data loaders: reports pair with their
    /// image; VQA-only data pairs each image with "question answer".
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Output encoder folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20, value_parser = hdpo::util::validate::at_least_one)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image tower input size in pixels.
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    #[arg(long, default_value_t = 32, value_parser = hdpo::util::validate::at_least_one)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3, value_parser = hdpo::util::validate::positive_finite)]
    pub lr: f64,
    /// Learn only the projections on top of this frozen `ViTModel` folder
    /// (needs --text-checkpoint too).
    #[arg(long, requires = "text_checkpoint")]
    pub vision_checkpoint: Option<PathBuf>,
    /// The frozen `BertModel` folder (with tokenizer.json or vocab.txt).
    #[arg(long, requires = "vision_checkpoint")]
    pub text_checkpoint: Option<PathBuf>,
    /// Skip (and count) training records whose image file is absent (a partial download).
    #[arg(long)]
    pub skip_missing: bool,
    /// Text pooling: mean, cls or pooler.
    #[arg(long, default_value = "mean")]
    pub text_pooling: TextPooling,
    /// Leave out the local alignment. By default, with a dataset format,
    /// every training sample with a lesion mask also aligns its mask region
    /// (Eq. 2-3) with the phrases of its text that name the lesion, against
    /// its other phrases (see docs/encode.md).
    #[arg(long)]
    pub no_regions: bool,
    /// Weight of the local loss next to the global one.
    #[arg(long, default_value_t = 1.0, value_parser = hdpo::util::validate::non_negative_finite)]
    pub region_weight: f64,
    /// A vocabulary file (`term<TAB>category[<TAB>concept]`) for the region
    /// phrases, replacing the default (as `hdpo curate --vocab`).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Where each sample's region comes from: `mask` (its lesion mask) or
    /// `file[:DIR]` (DAug-style heatmap files, `{id}_{class}.npy` / PNG,
    /// default DIR = DATA/heatmaps), for data without masks.
    #[arg(long, default_value = "mask")]
    pub region_heatmaps: RegionHeatmapSpec,
}

fn read_pairs(data: &Path) -> Result<Vec<AlignPair>> {
    let file = if data.is_dir() {
        data.join("pairs.jsonl")
    } else {
        data.to_path_buf()
    };
    let root = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", file.display(), i + 1))?;
        let field = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "{} line {}: missing string field {k}",
                        file.display(),
                        i + 1
                    )
                })
        };
        let image = field("image")?;
        let path = hdpo::util::fsio::resolve_in_root(
            &root,
            &image,
            &format!("{} line {}, field image", file.display(), i + 1),
        )?;
        pairs.push(AlignPair::global(PairImage::Path(path), field("text")?));
    }
    Ok(pairs)
}

pub fn run(args: AlignArgs) -> Result<()> {
    let mut missing = hdpo::data::MissingImages::default();
    let pairs = if args.format == "jsonl" {
        read_pairs(&args.data)?
    } else {
        let format = <DatasetFormat as clap::ValueEnum>::from_str(&args.format, true)
            .map_err(|_| {
                anyhow::anyhow!(
                    "--format {:?}: expected jsonl, vqa-rad, slake, r2gen, rule, phantom or phantom-report",
                    args.format
                )
            })?;
        let opts = LoadOptions {
            split: Some(Split::Train),
            require_images: true,
            skip_missing: args.skip_missing,
            ..LoadOptions::default()
        };
        let loaded = hdpo::data::load(format, &args.data, &opts)?;
        if let Some(m) = loaded.missing.describe() {
            eprintln!("{m}");
        }
        missing = loaded.missing.clone();
        let pairs = if args.no_regions {
            pairs_from_samples(&loaded.samples)
        } else {
            let vocab = match &args.vocab {
                Some(v) => Vocabulary::from_file(v)?,
                None => Vocabulary::default_vocab(),
            };
            let file_source = args.region_heatmaps.file_source(&args.data);
            let heatmaps = match &file_source {
                Some(f) => RegionHeatmaps::Source(f),
                None => RegionHeatmaps::Masks,
            };
            let (pairs, sum) = pairs_with_regions(&loaded.samples, &vocab, heatmaps);
            println!(
                "local alignment: {} of {} pairs with a lesion region ({} without a finding phrase, {} without a mask, {} with an empty mask, {} unusable heatmaps)",
                sum.with_region,
                sum.pairs,
                sum.no_positive_phrase,
                sum.no_mask,
                sum.empty_mask,
                sum.bad_heatmaps.len()
            );
            for b in sum.bad_heatmaps.iter().take(10) {
                eprintln!("warning: region skipped: {b}");
            }
            pairs
        };
        if pairs.is_empty() {
            bail!(
                "{}: no training samples with an image to align on",
                args.data.display()
            );
        }
        pairs
    };
    let pretrained = match (args.vision_checkpoint, args.text_checkpoint) {
        (Some(vision), Some(text)) => Some(PretrainedTowers { vision, text }),
        _ => None,
    };
    let cfg = AlignConfig {
        epochs: args.epochs,
        seed: args.seed,
        image_size: args.image_size,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        text_pooling: args.text_pooling,
        pretrained,
        region_weight: args.region_weight,
        ..AlignConfig::default()
    };
    let bar = hdpo::util::progress::bar(cfg.epochs as u64, "align");
    let report = align_with_progress(pairs, &cfg, &args.out, &mut |e, loss| {
        bar.set_message(format!("epoch {} loss {loss:.4}", e + 1));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let r = &report.recall;
    println!(
        "aligned on {} pairs ({} held out), final loss {:.4}, temperature {:.4}",
        report.train_pairs,
        report.heldout_pairs,
        report.epoch_loss.last().copied().unwrap_or(f64::NAN),
        report.temperature
    );
    println!(
        "held-out recall: image->text R@1 {:.3} R@5 {:.3}; text->image R@1 {:.3} R@5 {:.3} (chance R@1 {:.3})",
        r.image_to_text_r1, r.image_to_text_r5, r.text_to_image_r1, r.text_to_image_r5, r.chance_r1
    );
    if let Some(g) = &report.regions {
        println!("local alignment: {}", g.describe());
    }
    // What the data lacked, beside the encoder's own report.
    hdpo::util::fsio::write_json_atomic(
        &args.out.join("data_summary.json"),
        &serde_json::json!({
            "data": args.data,
            "format": args.format,
            "missing_images": missing,
        }),
    )?;
    println!("encoder written to {}", args.out.display());
    Ok(())
}
