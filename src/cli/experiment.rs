//! `hdpo experiment --config CONFIG.toml [--out DIR]`: run the grid of the
//! paper's Tables 1-5 (see `hdpo::experiment`), skipping finished cells.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use hdpo::experiment::pipeline::{self, Progress};
use hdpo::experiment::ExperimentConfig;

/// Run an experiment grid: methods x starting points (base / SFT) x
/// ablations; writes results.json, tables.md and plots/ into the run folder.
#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The experiment config (TOML); `phantom` names the embedded phantom default
    /// (`configs/phantom.toml`).
    #[arg(long)]
    pub config: String,
    /// The run folder (default: `runs/<config name>`). Finished cells in it are skipped.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Stage lines on stderr: `[  12.3 s] stage ... summary`.
pub struct StageLines {
    pub start: Instant,
}

impl Progress for StageLines {
    fn stage(&self, name: &str, detail: &str) {
        eprintln!(
            "[{:>7.1} s] {name}: {detail} ...",
            self.start.elapsed().as_secs_f64()
        );
    }
    fn done(&self, name: &str, summary: &str, seconds: f64) {
        eprintln!(
            "[{:>7.1} s] {name}: done in {seconds:.1} s; {summary}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let cfg = if args.config == "phantom" {
        ExperimentConfig::phantom()
    } else {
        ExperimentConfig::load(std::path::Path::new(&args.config))?
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let progress = StageLines {
        start: Instant::now(),
    };
    let o = pipeline::run(&cfg, &out, &progress)?;
    println!("{}", o.tables_markdown);
    println!(
        "cells: {} computed, {} skipped (finished earlier); total {:.1} s",
        o.record.cells_computed.len(),
        o.record.cells_skipped.len(),
        o.record.total_seconds
    );
    println!("results: {}", o.files.results_json.display());
    println!("tables:  {}", o.files.tables_md.display());
    for p in &o.files.plots {
        println!("plot:    {}", p.display());
    }
    Ok(())
}
