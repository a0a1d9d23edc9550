//! `hdpo demo [--out DIR] [--quick]`: the whole pipeline on the phantom
//! benchmark in one command (see `hdpo::experiment::demo_config`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use hdpo::experiment::pipeline;

use super::experiment::StageLines;

/// Phantom data -> aligned encoder -> tiny LLaVA -> SFT -> curation -> DPO,
/// HDPO (and the baselines) -> evaluation -> tables and plots. The numbers are
/// phantom numbers, not the paper's.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The run folder; finished stages and cells in it are reused.
    #[arg(long, default_value = "hdpo-demo")]
    pub out: PathBuf,
    /// A smaller run (DPO and HDPO only, fewer samples and epochs): under 3 minutes.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let cfg = hdpo::experiment::demo_config(args.quick);
    eprintln!(
        "hdpo demo ({}): PHANTOM benchmark, tiny randomly initialised LLaVA; these are phantom numbers, not the paper's.",
        if args.quick { "quick" } else { "full" }
    );
    let start = Instant::now();
    let progress = StageLines { start };
    let o = pipeline::run(&cfg, &args.out, &progress)?;
    println!("{}", o.tables_markdown);
    if args.quick {
        println!(
            "Quick demo: the base model pretrains on the {} training studies only; `hdpo demo` pretrains it on {} phantom studies generated for it (see \"Does the base model see lesions?\" above).",
            cfg.data.train,
            hdpo::experiment::ExperimentConfig::phantom().model.pretrain_studies
        );
    }
    println!(
        "PHANTOM NUMBERS: measured by this run on synthetic data with a tiny model; not the paper's results."
    );
    println!(
        "demo finished in {:.1} s ({} cells computed, {} reused)",
        start.elapsed().as_secs_f64(),
        o.record.cells_computed.len(),
        o.record.cells_skipped.len()
    );
    println!("results: {}", o.files.results_json.display());
    println!("tables:  {}", o.files.tables_md.display());
    for p in &o.files.plots {
        println!("plot:    {}", p.display());
    }
    Ok(())
}
