//! `hdpo phantom`: generate the phantom benchmark.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use hdpo::data::phantom::{self, HeatmapNoise, PhantomConfig};

use hdpo::util::progress;

/// Generate the phantom benchmark: schematic chest radiographs with known
/// lesions, masks, DAug-like heatmaps, reports and VQA questions, written in
/// the SLAKE and R2Gen layouts.
#[derive(Args, Debug)]
pub struct PhantomArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training studies.
    #[arg(long, default_value_t = 800)]
    pub train: usize,
    /// Test studies.
    #[arg(long, default_value_t = 200)]
    pub test: usize,
    /// Validation studies.
    #[arg(long, default_value_t = 0)]
    pub val: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Share of normal studies.
    #[arg(long, default_value_t = 0.27)]
    pub normal_share: f64,
    /// Share of abnormal studies drawn with a subtle (< 5% area) lesion.
    #[arg(long, default_value_t = 0.45)]
    pub subtle_share: f64,
    /// Heatmap blur (Gaussian sigma as a share of the image side).
    #[arg(long, default_value_t = HeatmapNoise::default().blur)]
    pub heatmap_blur: f32,
    /// Heatmap pixel noise (standard deviation relative to the peak).
    #[arg(long, default_value_t = HeatmapNoise::default().noise)]
    pub heatmap_noise: f32,
    /// Probability of each spurious heatmap blob (up to two).
    #[arg(long, default_value_t = HeatmapNoise::default().spurious_prob)]
    pub spurious_prob: f32,
    /// Also write DIR/preview.png, a contact sheet of a few studies.
    #[arg(long)]
    pub preview: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PhantomArgs) -> Result<()> {
    let cfg = PhantomConfig {
        seed: args.seed,
        train: args.train,
        val: args.val,
        test: args.test,
        size: args.size,
        normal_share: args.normal_share,
        subtle_share: args.subtle_share,
        heatmap: HeatmapNoise {
            blur: args.heatmap_blur,
            noise: args.heatmap_noise,
            spurious_prob: args.spurious_prob,
            ..HeatmapNoise::default()
        },
        preview: args.preview,
        ..PhantomConfig::default()
    };
    let total = (cfg.train + cfg.val + cfg.test) as u64;
    let bar = progress::bar(total, "phantom");
    let start = Instant::now();
    let tick = || bar.inc(1);
    let summary = phantom::writer::generate_with_progress(&cfg, &args.out, &tick)?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
        println!("  {total} studies in {secs:.1} s");
    }
    Ok(())
}
