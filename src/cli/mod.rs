//! Argument parsing and progress display only; no logic a library user would need.

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod data;
pub mod phantom;
pub mod progress;

/// hdpo: Heatmap-informed Direct Preference Optimization for medical VLMs.
#[derive(Parser, Debug)]
#[command(name = "hdpo", version, about, long_about = None)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Dataset tools: inspect a dataset's contents.
    Data(data::DataArgs),
    /// Generate the phantom benchmark (schematic chest radiographs with known lesions).
    Phantom(phantom::PhantomArgs),
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match cli.command {
        Command::Data(a) => data::run(a),
        Command::Phantom(a) => phantom::run(a),
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
