//! `hdpo train hdpo|dpo|sft` and `hdpo predict`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use hdpo::data::{self, DatasetFormat, Split};
use hdpo::model::info::human_bytes;
use hdpo::model::policy::{read_preference_pairs, sft_examples, LlavaPolicy};
use hdpo::model::{
    parse_device, parse_dtype, predict_to_file, ChatTemplate, LlavaModel, LoadOptions, LoraConfig,
    PredictOptions, TargetModules, TextTokenizer,
};
use hdpo::train::config::{PreferenceConfig, SftConfig};
use hdpo::train::{preference, sft, LoopSummary, Loss, LossType};
use hdpo::util::guard::{
    claim_output_file, claim_output_folder, Input, OutputLock, RunFingerprint,
};
use hdpo::util::validate;

/// What to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainKind {
    /// HDPO (paper Eq. 13): DPO weighted per pair by w.
    Hdpo,
    /// DPO (paper Eq. 1): every pair weighs 1.
    Dpo,
    /// Supervised fine-tuning on (question, answer, image) samples.
    Sft,
}

/// `hdpo train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// hdpo, dpo or sft.
    #[arg(value_enum)]
    pub kind: TrainKind,
    /// Model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Start from this PEFT adapter (else fresh LoRA from --lora-*).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Pair file (hdpo JSONL or RULE layout; hdpo/dpo).
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Dataset folder (sft).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset format (sft; detected when omitted).
    #[arg(long, value_enum)]
    pub format: Option<DatasetFormat>,
    /// Dataset split (sft).
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Chat template: llava_plain, mistral_instruct, vicuna_v1.
    #[arg(long)]
    pub template: String,
    /// Run folder (logs, checkpoints, reference log-probs, adapter/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Preset: paper or phantom (hdpo/dpo); lora or phantom (sft).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML or JSON config file (PreferenceConfig / SftConfig) instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// α of Eq. 1 / 13 (TRL's beta).
    #[arg(long, value_parser = validate::positive_finite)]
    pub alpha: Option<f64>,
    #[arg(long, value_parser = validate::positive_finite)]
    pub lr: Option<f64>,
    #[arg(long, value_parser = validate::at_least_one)]
    pub epochs: Option<usize>,
    #[arg(long, value_parser = validate::at_least_one)]
    pub batch_size: Option<usize>,
    #[arg(long, value_parser = validate::at_least_one)]
    pub micro_batch_size: Option<usize>,
    #[arg(long, value_parser = validate::at_least_one)]
    pub checkpoint_every: Option<usize>,
    /// Seed of the data order, LoRA init and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many optimiser steps in total (as if killed; resume later).
    #[arg(long, value_parser = validate::at_least_one)]
    pub max_steps: Option<usize>,
    /// Continue the run in --out from its latest checkpoint (same model, data and settings).
    #[arg(long)]
    pub resume: bool,
    /// Discard what --out holds (an hdpo run folder) and start fresh.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Compute the loss and LoRA gradients of one batch of all pairs; print JSON; update nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// LoRA rank of a fresh adapter.
    #[arg(long, default_value_t = 8, value_parser = validate::at_least_one)]
    pub lora_r: usize,
    /// LoRA alpha of a fresh adapter.
    #[arg(long, default_value_t = 16.0, value_parser = validate::positive_finite)]
    pub lora_alpha: f64,
    /// LoRA dropout of a fresh adapter, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = validate::dropout)]
    pub lora_dropout: f32,
    /// Target modules of a fresh adapter: a regex (PEFT full match).
    #[arg(long, default_value = DEFAULT_TARGETS)]
    pub lora_targets: String,
    /// Skip (and count) pairs or samples longer than the context instead of failing.
    #[arg(long)]
    pub skip_long: bool,
    /// Refuse sequences longer than this (default: the model's context).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// At most this many SFT samples (the first N).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip (and count) SFT records whose image file is absent (a partial download).
    #[arg(long)]
    pub skip_missing: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16 or f64.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// LoRA on every linear layer of the language model (LLaVA's SFT recipe).
pub const DEFAULT_TARGETS: &str =
    ".*language_model.*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)";

fn load_model(
    model: &Path,
    adapter: Option<&Path>,
    device: &str,
    dtype: Option<&str>,
) -> Result<(LlavaModel, TextTokenizer)> {
    let opts = LoadOptions {
        device: parse_device(device)?,
        dtype: dtype.map(parse_dtype).transpose()?,
    };
    let mut m = LlavaModel::load(model, &opts)?;
    if let Some(a) = adapter {
        m.load_adapter(a)
            .with_context(|| format!("cannot load the adapter {}", a.display()))?;
    }
    let tok = TextTokenizer::from_dir(model, &m.config)?;
    Ok((m, tok))
}

/// The samples of `split` in the dataset at `dir` (format detected when
/// `None`), images required (or, with `skip_missing`, records without their image
/// skipped and counted), the first `limit`; none is an error.
fn load_samples(
    dir: &Path,
    format: Option<DatasetFormat>,
    split: Split,
    limit: Option<usize>,
    skip_missing: bool,
) -> Result<(Vec<data::Sample>, data::MissingImages)> {
    let format = match format {
        Some(f) => f,
        None => data::detect_format(dir)?,
    };
    let opts = data::LoadOptions {
        split: Some(split),
        require_images: true,
        skip_missing,
        ..Default::default()
    };
    let loaded = data::load(format, dir, &opts)?;
    if let Some(m) = loaded.missing.describe() {
        eprintln!("{m}");
    }
    let mut samples = loaded.samples;
    if let Some(n) = limit {
        samples.truncate(n);
    }
    ensure!(
        !samples.is_empty(),
        "{}: no {format} samples in split {split}",
        dir.display()
    );
    Ok((samples, loaded.missing))
}

fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid config", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
    }
}

fn apply_run(
    a: &TrainArgs,
    run: &mut hdpo::train::RunConfig,
    optim: &mut hdpo::train::OptimConfig,
) {
    if let Some(x) = a.lr {
        optim.learning_rate = x;
    }
    if let Some(x) = a.epochs {
        run.epochs = x;
    }
    if let Some(x) = a.batch_size {
        run.batch_size = x;
        run.micro_batch_size = run.micro_batch_size.min(x);
    }
    if let Some(x) = a.micro_batch_size {
        run.micro_batch_size = x;
    }
    if let Some(x) = a.checkpoint_every {
        run.checkpoint_every = x;
    }
    if let Some(x) = a.seed {
        run.seed = x;
    }
    run.resume = a.resume;
    run.halt_after_steps = a.max_steps;
}

/// The model to train: `--model` with `--adapter` (trained further), or
/// with a fresh LoRA of `--lora-r`, `--lora-alpha`, `--lora-targets`,
/// `--lora-dropout` initialised with `seed`.
fn load_trainable(a: &TrainArgs, seed: u64) -> Result<(LlavaModel, TextTokenizer)> {
    let (mut m, tok) = load_model(
        &a.model,
        a.adapter.as_deref(),
        &a.device,
        a.dtype.as_deref(),
    )?;
    if a.adapter.is_none() {
        add_fresh_lora(&mut m, a, seed)?;
    }
    Ok((m, tok))
}

/// The training policy over `model`: LoRA dropout seeded by `seed` (when
/// `--lora-dropout` > 0) and the `--max-len` context.
fn training_policy<'a>(
    a: &TrainArgs,
    model: &'a LlavaModel,
    tok: &'a TextTokenizer,
    template: ChatTemplate,
    seed: u64,
) -> Result<LlavaPolicy<'a>> {
    let policy = LlavaPolicy::new(model, tok, template)?
        .with_dropout_seed((a.lora_dropout > 0.0).then_some(seed));
    Ok(match a.max_len {
        Some(n) => policy.with_max_len(n),
        None => policy,
    })
}

fn add_fresh_lora(m: &mut LlavaModel, a: &TrainArgs, seed: u64) -> Result<()> {
    let mut cfg = LoraConfig::new(
        a.lora_r,
        a.lora_alpha,
        TargetModules::Regex(a.lora_targets.clone()),
    );
    cfg.lora_dropout = a.lora_dropout;
    let n = m.add_lora(cfg, seed)?;
    tracing::info!(
        "fresh LoRA r={} alpha={} on {n} modules",
        a.lora_r,
        a.lora_alpha
    );
    Ok(())
}

pub fn train(a: TrainArgs) -> Result<()> {
    match a.kind {
        TrainKind::Sft => train_sft(a),
        TrainKind::Hdpo | TrainKind::Dpo => train_pref(a),
    }
}

/// The run folder of a training command: never an input, locked while this run writes it,
/// its fingerprint (model, adapter, data, settings) compared with the one of the run that
/// wrote it (reference log-probs and checkpoints are reused only by the same run), then a
/// fresh run is refused over an earlier checkpoint, and the config is recorded (atomically).
fn start_run(
    a: &TrainArgs,
    cfg: &impl serde::Serialize,
    data: &str,
) -> Result<(PathBuf, OutputLock)> {
    let out = a.out.clone().context("training needs --out RUN_DIR")?;
    let mut inputs = vec![Input::Sealed("--model", &a.model)];
    if let Some(p) = &a.adapter {
        inputs.push(Input::Sealed("--adapter", p));
    }
    if let Some(p) = &a.pairs {
        inputs.push(Input::File("--pairs", p));
    }
    if let Some(p) = &a.data {
        inputs.push(Input::Data("--data", p));
    }
    let fp = run_fingerprint(a, cfg, data)?;
    let lock = claim_output_folder("--out", &out, &inputs, &fp, a.overwrite, |d| {
        [
            "ref_logps.jsonl",
            "checkpoints",
            "train_log.jsonl",
            "adapter",
        ]
        .iter()
        .any(|f| d.join(f).exists())
    })?;
    check_run_dir(&out, a.resume)?;
    hdpo::util::fsio::write_json_atomic(&out.join("config.json"), cfg)?;
    Ok((out, lock))
}

/// What a training run is: the command, the model and adapter contents, the data, and the
/// settings that shape its numbers (not `--resume`, `--max-steps` or the device, which a
/// continued run may change).
fn run_fingerprint(
    a: &TrainArgs,
    cfg: &impl serde::Serialize,
    data: &str,
) -> Result<RunFingerprint> {
    let mut settings = serde_json::to_value(cfg)?;
    if let Some(run) = settings.get_mut("run").and_then(|r| r.as_object_mut()) {
        run.remove("resume");
        run.remove("halt_after_steps");
    }
    let adapter = match &a.adapter {
        Some(p) => format!("file {}", hdpo::util::guard::content_id(p)?),
        None => format!(
            "fresh r={} alpha={} dropout={} targets={}",
            a.lora_r, a.lora_alpha, a.lora_dropout, a.lora_targets
        ),
    };
    let fp = RunFingerprint::new(&format!("train {:?}", a.kind).to_lowercase())
        .with_content("model", &a.model)?
        .with("adapter", adapter)
        .with("data", data)
        .with_settings("config", &settings)?
        .with("template", a.template.clone())
        .with("dtype", a.dtype.clone().unwrap_or_else(|| "model".into()))
        .with(
            "max_len",
            a.max_len.map(|n| n.to_string()).unwrap_or("model".into()),
        )
        .with("skip_long", a.skip_long.to_string());
    Ok(fp)
}

/// After a training loop: save the adapter (PEFT layout) unless the run was
/// halted early, print the summary as JSON with `--json`, and the summary line.
fn finish_run(
    a: &TrainArgs,
    model: &LlavaModel,
    out: &Path,
    run: &LoopSummary,
    summary: &impl serde::Serialize,
) -> Result<()> {
    let adapter = if run.halted {
        None
    } else {
        let dir = out.join("adapter");
        model.save_adapter(&dir)?;
        Some(dir)
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    }
    eprintln!(
        "{} {}/{} steps in {:.1} s; peak memory {}; run folder {}{}",
        if run.halted {
            "halted after"
        } else {
            "finished"
        },
        run.steps,
        run.total_steps,
        run.elapsed_s,
        run.peak_rss_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into()),
        out.display(),
        adapter
            .map(|p| format!("; adapter {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// Refuse to start a fresh run over an earlier one before anything is written.
fn check_run_dir(out: &Path, resume: bool) -> Result<()> {
    if !resume {
        if let Some(dir) = hdpo::train::checkpoint::latest(&out.join("checkpoints"))? {
            bail!(
                "{} already holds a checkpoint ({}); pass --resume to continue it or choose \
                 another output folder",
                out.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn train_pref(a: TrainArgs) -> Result<()> {
    let pairs_path = a
        .pairs
        .clone()
        .context("hdpo/dpo training needs --pairs PAIRS.jsonl")?;
    let mut cfg = match (&a.config, &a.preset) {
        (Some(_), Some(_)) => bail!("pass --config or --preset, not both"),
        (Some(p), None) => read_config::<PreferenceConfig>(p)?,
        (None, Some(p)) => PreferenceConfig::preset(p)?,
        (None, None) => PreferenceConfig::paper(),
    };
    cfg.loss = match a.kind {
        TrainKind::Dpo => LossType::Dpo,
        _ => LossType::Hdpo,
    };
    if let Some(x) = a.alpha {
        cfg.alpha = x;
    }
    apply_run(&a, &mut cfg.run, &mut cfg.optim);
    cfg.validate()?;
    let template = ChatTemplate::from_name(&a.template)?;
    let mut pairs = read_preference_pairs(&pairs_path)?;
    let (model, tok) = load_trainable(&a, cfg.run.seed)?;
    let policy = training_policy(&a, &model, &tok, template, cfg.run.seed)?;
    let check = policy.check_pairs(&pairs_path.display().to_string(), &pairs)?;
    if !check.too_long.is_empty() {
        if a.skip_long {
            for m in &check.too_long {
                tracing::warn!("skipped: {m}");
            }
            eprintln!(
                "skipped {} of {} pairs longer than the context ({} tokens)",
                check.too_long.len(),
                pairs.len(),
                policy.max_len()
            );
            pairs = check.kept.iter().map(|&i| pairs[i].clone()).collect();
        } else {
            bail!(
                "{} of {} pairs exceed the context length ({} tokens); pass --skip-long to skip \
                 them. First: {}",
                check.too_long.len(),
                pairs.len(),
                policy.max_len(),
                check.too_long[0]
            );
        }
    }
    let loss = Loss::new(cfg.loss, cfg.alpha)?;
    if a.dry_run {
        let d = preference::dry_run(&policy, &pairs, &loss)?;
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let data = format!(
        "pairs {}",
        hdpo::util::guard::content_id(&pairs_path).context("fingerprint of --pairs")?
    );
    let (out, _lock) = start_run(&a, &cfg, &data)?;
    let s = preference::train(&policy, &pairs, &loss, &cfg, &out)?;
    finish_run(&a, &model, &out, &s.run, &s)
}

fn train_sft(a: TrainArgs) -> Result<()> {
    let data_dir = a
        .data
        .clone()
        .context("sft needs --data DIR [--format F]")?;
    ensure!(!a.dry_run, "--dry-run is for hdpo/dpo");
    let mut cfg = match (&a.config, &a.preset) {
        (Some(_), Some(_)) => bail!("pass --config or --preset, not both"),
        (Some(p), None) => read_config::<SftConfig>(p)?,
        (None, Some(p)) => SftConfig::preset(p)?,
        (None, None) => SftConfig::lora(),
    };
    apply_run(&a, &mut cfg.run, &mut cfg.optim);
    cfg.validate()?;
    let template = ChatTemplate::from_name(&a.template)?;
    let (samples, missing) = load_samples(&data_dir, a.format, a.split, a.limit, a.skip_missing)?;
    let mut examples = sft_examples(&samples)?;
    let (model, tok) = load_trainable(&a, cfg.run.seed)?;
    let policy = training_policy(&a, &model, &tok, template, cfg.run.seed)?;
    let mut long = Vec::new();
    examples.retain(|e| match policy.encode(&e.item) {
        Ok(_) => true,
        Err(err) => {
            long.push(format!("sample '{}': {err:#}", e.id));
            false
        }
    });
    if !long.is_empty() {
        ensure!(
            a.skip_long,
            "{} samples exceed the context length; pass --skip-long to skip them. First: {}",
            long.len(),
            long[0]
        );
        eprintln!("skipped {} samples longer than the context", long.len());
    }
    let data = hdpo::util::guard::settings_id(&json!({
        "examples": examples.iter().map(|e| &e.id).collect::<Vec<_>>(),
        "texts": examples.iter().map(|e| format!("{:?}", e.item)).collect::<Vec<_>>(),
    }))?;
    let (out, _lock) = start_run(&a, &cfg, &format!("samples {data}"))?;
    hdpo::util::fsio::write_json_atomic(
        &out.join("data_summary.json"),
        &json!({"data": data_dir, "split": a.split.to_string(), "samples": samples.len(),
                "missing_images": missing}),
    )?;
    let s = sft::train(&policy, &examples, &cfg, &out)?;
    finish_run(&a, &model, &out, &s.run, &s)
}

/// `hdpo predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Dataset folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset format (detected when omitted).
    #[arg(long, value_enum)]
    pub format: Option<DatasetFormat>,
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    #[arg(long)]
    pub template: String,
    /// Output JSON Lines file (rows: id, question, reference, prediction, answer_type).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64, value_parser = validate::max_new_tokens)]
    pub max_new_tokens: usize,
    /// Discard an interrupted run's partial results in --out and start fresh.
    #[arg(long)]
    pub overwrite: bool,
    /// At most this many samples (the first N).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip (and count) records whose image file is absent (a partial download).
    #[arg(long)]
    pub skip_missing: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let template = ChatTemplate::from_name(&a.template)?;
    let (samples, missing) = load_samples(&a.data, a.format, a.split, a.limit, a.skip_missing)?;
    let (model, tok) = load_model(
        &a.model,
        a.adapter.as_deref(),
        &a.device,
        a.dtype.as_deref(),
    )?;
    let opts = PredictOptions {
        max_new_tokens: a.max_new_tokens,
        adapters: a.adapter.is_some(),
        preprocess: None,
        progress: true,
    };
    // Partial rows are resumed only by the same model, adapter, data and settings.
    let mut inputs = vec![
        Input::Sealed("--model", &a.model),
        Input::Data("--data", &a.data),
    ];
    if let Some(p) = &a.adapter {
        inputs.push(Input::Sealed("--adapter", p));
    }
    let data = hdpo::util::guard::settings_id(&json!({
        "samples": samples.iter().map(|s| (&s.id, &s.question, &s.images)).collect::<Vec<_>>(),
    }))?;
    let mut fp = RunFingerprint::new("predict")
        .with_content("model", &a.model)?
        .with("data", data)
        .with("template", a.template.clone())
        .with("max_new_tokens", a.max_new_tokens.to_string())
        .with("dtype", a.dtype.clone().unwrap_or_else(|| "model".into()));
    if let Some(p) = &a.adapter {
        fp = fp.with_content("adapter", p)?;
    }
    let partial = hdpo::model::predict::partial_path(&a.out);
    let _lock = claim_output_file("--out", &a.out, &inputs, &fp, a.overwrite, &[partial])?;
    let s = predict_to_file(&model, &tok, template, &samples, &opts, &a.out)?;
    eprintln!(
        "{}",
        json!({"out": s.out, "n": s.n, "resumed": s.resumed, "seconds": s.seconds,
               "missing_images": missing})
    );
    Ok(())
}
