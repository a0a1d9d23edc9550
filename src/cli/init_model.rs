//! `hdpo init-model`: a tiny LLaVA with random weights and a word-level
//! tokenizer trained on a dataset's text (the phantom default's base model).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use hdpo::data::{DatasetFormat, LoadOptions, Split};
use hdpo::experiment::config::ModelConfig;
use hdpo::experiment::tiny;
use hdpo::model::ChatTemplate;

/// Arguments of `hdpo init-model`.
#[derive(Args, Debug)]
pub struct InitModelArgs {
    /// TOML with the model sizes (the `[model]` keys of an experiment config:
    /// image_size, patch_size, vision_hidden, vision_layers, text_hidden,
    /// text_layers, heads, intermediate, template, device); omitted keys take
    /// the phantom defaults, and no file means all defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The dataset whose training texts make the tokenizer's vocabulary.
    #[arg(long)]
    pub tokenizer_from: PathBuf,
    /// Its format.
    #[arg(long, value_enum, default_value = "phantom")]
    pub format: DatasetFormat,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: InitModelArgs) -> Result<()> {
    let m: ModelConfig = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: toml::Value =
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            // Accept a whole experiment config (its [model] table) or the table itself.
            let table = v.get("model").cloned().unwrap_or(v);
            table
                .try_into()
                .with_context(|| format!("{}: the model keys", p.display()))?
        }
        None => ModelConfig::default(),
    };
    if a.out.join("config.json").exists() {
        bail!(
            "{} already holds a model; choose another --out",
            a.out.display()
        );
    }
    let opts = LoadOptions {
        split: Some(Split::Train),
        ..LoadOptions::default()
    };
    let train = hdpo::data::load(a.format, &a.tokenizer_from, &opts)?.samples;
    if train.is_empty() {
        bail!("{}: no training samples", a.tokenizer_from.display());
    }
    let template = ChatTemplate::from_name(&m.template)?;
    let (model, tok) = tiny::init_tiny_model(&m, &train, template, a.seed)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    model.save_pretrained(&a.out)?;
    tiny::save_tokenizer(&tok, &a.out)?;
    println!(
        "tiny LLaVA (text {}x{}, vision {}x{} at {} px, vocabulary {} from {} training samples, seed {}) written to {}",
        m.text_layers,
        m.text_hidden,
        m.vision_layers,
        m.vision_hidden,
        m.image_size,
        tok.get_vocab_size(true),
        train.len(),
        a.seed,
        a.out.display()
    );
    Ok(())
}
