//! Argument parsing and progress display only; no logic a library user would need.

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod align;
pub mod bench;
pub mod curate;
pub mod data;
pub mod demo;
pub mod eval;
pub mod eval_findings;
pub mod experiment;
pub mod init_model;
pub mod model;
pub mod phantom;
pub mod train;

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
    /// Train a small dual encoder contrastively on image-text pairs (recall@1/@5 on held-out pairs).
    Align(align::AlignArgs),
    /// Heatmap-guided preference curation: k*, misdiagnosis / false positive / false negative pairs, weight w.
    Curate(curate::CurateArgs),
    /// Per-token and summed log-probs of a response under the model.
    Logprobs(model::LogprobsArgs),
    /// Generate an answer (greedy by default, KV cache, stops at EOS).
    Generate(model::GenerateArgs),
    /// Model inspection (`hdpo model info`).
    Model {
        #[command(subcommand)]
        cmd: model::ModelCmd,
    },
    /// Merge a LoRA adapter into full weights.
    Merge(model::MergeArgs),
    /// A tiny LLaVA with random weights and a word-level tokenizer from a dataset's texts.
    InitModel(init_model::InitModelArgs),
    /// Train LoRA adapters: HDPO (Eq. 13), DPO (Eq. 1) on pair files, or SFT on a dataset.
    Train(Box<train::TrainArgs>),
    /// Answer a dataset with greedy generation; writes the rows `hdpo eval` reads.
    Predict(train::PredictArgs),
    /// Throughput benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// Evaluation metrics: reports (BLEU, METEOR, ROUGE-L), Med-VQA, METEOR tables.
    Eval {
        #[command(subcommand)]
        cmd: eval::EvalCmd,
    },
    /// Run an experiment grid (paper Tables 1-5): results.json, tables.md, plots.
    Experiment(experiment::ExperimentArgs),
    /// The whole pipeline on the phantom benchmark in one command (phantom numbers).
    Demo(demo::DemoArgs),
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match cli.command {
        Command::Data(a) => data::run(a),
        Command::Phantom(a) => phantom::run(a),
        Command::Align(a) => align::run(a),
        Command::Curate(a) => curate::run(a),
        Command::Logprobs(a) => model::logprobs(a),
        Command::Generate(a) => model::generate(a),
        Command::Model { cmd } => model::model_cmd(cmd),
        Command::Merge(a) => model::merge(a),
        Command::InitModel(a) => init_model::run(a),
        Command::Train(a) => train::train(*a),
        Command::Predict(a) => train::predict(a),
        Command::Bench { cmd } => bench::run(cmd),
        Command::Eval { cmd } => eval::run(cmd),
        Command::Experiment(a) => experiment::run(a),
        Command::Demo(a) => demo::run(a),
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
