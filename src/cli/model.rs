//! `hdpo logprobs`, `hdpo generate`, `hdpo model info`, `hdpo merge`.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand};
use serde_json::json;

use hdpo::model::device_check::device_parity;
use hdpo::model::info::{human_bytes, human_count, model_info, InfoOptions};
use hdpo::model::{
    parse_device, parse_dtype, sequence_logprobs, Batch, ChatTemplate, GenerateOptions,
    LlavaConfig, LlavaModel, LoadOptions, TextTokenizer,
};

/// Where to load a model and which adapter to put on it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16 or f64 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogprobsArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Image file.
    #[arg(long)]
    pub image: PathBuf,
    /// Chat template: llava_plain, mistral_instruct, vicuna_v1.
    #[arg(long)]
    pub template: String,
    /// The question.
    #[arg(long)]
    pub prompt: String,
    /// The answer whose log-probability is computed.
    #[arg(long)]
    pub response: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long)]
    pub template: String,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64, value_parser = hdpo::util::validate::max_new_tokens)]
    pub max_new_tokens: usize,
    /// 0 = greedy; finite and >= 0.
    #[arg(long, default_value_t = 0.0, value_parser = hdpo::util::validate::non_negative_finite)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not stop at EOS.
    #[arg(long)]
    pub no_eos_stop: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Architecture, parameter count and training memory estimate (reads config.json only).
    Info(InfoArgs),
    /// Log-prob and LoRA-gradient parity of a device (e.g. cuda) against the CPU in f32;
    /// prints "skipped: no GPU" where the device cannot be opened.
    DeviceCheck(DeviceCheckArgs),
}

#[derive(Args, Debug)]
pub struct DeviceCheckArgs {
    /// Model directory with weights (the tiny LLaVA test fixture is a good first check).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter put on both copies (default: MODEL/lora_adapter).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The device under test: cuda, cuda:N or cpu.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Comma-separated dtypes to test on the device.
    #[arg(long, default_value = "f32,bf16")]
    pub dtypes: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 1024, value_parser = hdpo::util::validate::seq_len)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 1, value_parser = hdpo::util::validate::batch)]
    pub batch: usize,
    #[arg(long, default_value_t = 128, value_parser = hdpo::util::validate::at_least_one)]
    pub lora_r: usize,
    /// Bytes per weight/activation element (2 = bf16, 4 = f32).
    #[arg(long, default_value_t = 2)]
    pub dtype_bytes: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub adapter: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

fn load(m: &ModelArgs) -> Result<(LlavaModel, TextTokenizer)> {
    let opts = LoadOptions {
        device: parse_device(&m.device)?,
        dtype: m.dtype.as_deref().map(parse_dtype).transpose()?,
    };
    let mut model = LlavaModel::load(&m.model, &opts)?;
    if let Some(a) = &m.adapter {
        model.load_adapter(a)?;
    }
    let tok = TextTokenizer::from_dir(&m.model, &model.config)?;
    Ok((model, tok))
}

fn pixels(model: &LlavaModel, dir: &Path, image: &Path) -> Result<Tensor> {
    let (mean, std) = hdpo::model::image::normalisation(dir);
    hdpo::model::image::load_clip_pixels(
        image,
        model.vision.cfg.image_size,
        mean,
        std,
        &model.device,
    )
}

pub fn logprobs(a: LogprobsArgs) -> Result<()> {
    let (model, tok) = load(&a.m)?;
    let template = ChatTemplate::from_name(&a.template)?;
    let px = pixels(&model, &a.m.model, &a.image)?;
    let seq = tok.encode_pair(template, &a.prompt, &a.response, model.image_token_count())?;
    let context = model.config.text.max_position_embeddings;
    ensure!(
        seq.input_ids.len() <= context,
        "prompt and response are {} positions long (text and image tokens), more than the \
         model's context (max_position_embeddings = {context})",
        seq.input_ids.len()
    );
    let batch = Batch::new(
        std::slice::from_ref(&seq),
        &[Some(px)],
        tok.pad_id,
        &model.device,
    )?;
    let logits = model.forward(&batch, a.m.adapter.is_some())?;
    let (per_tok, sum) = sequence_logprobs(&logits, &batch.input_ids, &batch.response_mask)?;
    let per_tok: Vec<f64> = per_tok.to_dtype(DType::F64)?.squeeze(0)?.to_vec1()?;
    let sum: Vec<f64> = sum.to_dtype(DType::F64)?.to_vec1()?;
    let resp_lp: Vec<f64> = per_tok[seq.prompt_len..].to_vec();
    let resp_ids: Vec<u32> = seq.input_ids[seq.prompt_len..].to_vec();
    let total = sum.first().copied().context("no sum")?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "template": template.name(),
                "input_ids": seq.input_ids,
                "prompt_len": seq.prompt_len,
                "response_ids": resp_ids,
                "token_logprobs": resp_lp,
                "sum_logprob": total,
                "adapter": a.m.adapter,
            }))?
        );
    } else {
        for (id, lp) in resp_ids.iter().zip(&resp_lp) {
            let t = tok.tokenizer.id_to_token(*id).unwrap_or_default();
            println!("{id:>8} {t:<20} {lp:.6}");
        }
        println!("sum log p(response) = {total:.6}");
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let (model, tok) = load(&a.m)?;
    let template = ChatTemplate::from_name(&a.template)?;
    let px = pixels(&model, &a.m.model, &a.image)?;
    let prompt = tok.encode_prompt(template, &a.prompt, model.image_token_count())?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        seed: a.seed,
        eos_token_id: if a.no_eos_stop {
            None
        } else {
            Some(tok.eos_id)
        },
        adapters: a.m.adapter.is_some(),
    };
    let ids = model.generate(&prompt, Some(&px), &opts)?;
    let text = tok.decode(&ids)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "template": template.name(),
                "prompt_ids": prompt.input_ids,
                "new_ids": ids,
                "text": text,
            }))?
        );
    } else {
        println!("{}", text.trim());
    }
    Ok(())
}

pub fn model_cmd(c: ModelCmd) -> Result<()> {
    match c {
        ModelCmd::Info(a) => info(a),
        ModelCmd::DeviceCheck(a) => device_check(a),
    }
}

fn device_check(a: DeviceCheckArgs) -> Result<()> {
    let device = match parse_device(&a.device) {
        Ok(d) => d,
        Err(e) if a.device.starts_with("cuda") || a.device == "gpu" => {
            // The first line: candle appends a backtrace to device errors.
            let why = format!("{e:#}");
            println!("skipped: no GPU ({})", why.lines().next().unwrap_or(""));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let adapter = a.adapter.unwrap_or_else(|| a.model.join("lora_adapter"));
    let mut reports = Vec::new();
    for name in a.dtypes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let dtype = parse_dtype(name)?;
        let r =
            device_parity(&a.model, &adapter, &device, &a.device, dtype).with_context(|| {
                format!("parity of {} on {} in {name}", a.model.display(), a.device)
            })?;
        if !a.json {
            println!(
                "{} {}: token log-probs max |diff| {:.3e} (tolerance {}), LoRA gradients max |diff| / max |grad| {:.3e} (tolerance {}), relative L2 {:.3e}: {}",
                r.device,
                r.dtype,
                r.max_abs_logprob_diff,
                r.logprob_tolerance,
                r.max_rel_grad_diff,
                r.grad_tolerance,
                r.rel_l2_grad_diff,
                if r.pass { "ok" } else { "FAILED" }
            );
        }
        reports.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.dtype.clone())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} differs from the CPU beyond tolerance in {}",
            a.device,
            failed.join(", ")
        );
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let cfg = LlavaConfig::from_dir(&a.model)?;
    let opts = InfoOptions {
        seq_len: a.seq_len,
        batch: a.batch,
        lora_r: a.lora_r,
        dtype_bytes: a.dtype_bytes,
        ..InfoOptions::default()
    };
    let i = model_info(&cfg, &opts)
        .with_context(|| format!("cannot describe {}", a.model.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("architecture: {}", i.architecture);
    println!("decoder:      {}", i.decoder);
    println!("vision:       {}", i.vision);
    println!("projector:    {}", i.projector);
    println!("image tokens: {}", i.image_tokens);
    println!(
        "parameters:   {} ({}; decoder {}, vision {}, projector {})",
        human_count(i.params_total),
        i.params_total,
        human_count(i.params_decoder),
        human_count(i.params_vision),
        human_count(i.params_projector)
    );
    println!(
        "LoRA r={} on all decoder linears: {} parameters",
        i.lora_r,
        human_count(i.lora_params)
    );
    let m = &i.memory;
    println!(
        "training memory estimate (batch {}, seq {}, {} bytes/element):",
        i.batch, i.seq_len, a.dtype_bytes
    );
    println!("  weights     {}", human_bytes(m.weights));
    println!("  LoRA        {}", human_bytes(m.lora));
    println!("  gradients   {}", human_bytes(m.gradients));
    println!("  optimiser   {}", human_bytes(m.optimizer));
    println!("  activations {}", human_bytes(m.activations));
    println!("  total       {}", human_bytes(m.total));
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<()> {
    use hdpo::util::guard::{check_output_against_inputs, Input, OutputLock};
    check_output_against_inputs(
        "--out",
        &a.out,
        &[
            Input::Sealed("--model", &a.model),
            Input::Sealed("--adapter", &a.adapter),
        ],
    )?;
    let _lock = OutputLock::folder(&a.out)?;
    let n = hdpo::model::merge::merge(&a.model, &a.adapter, &a.out)?;
    eprintln!("merged {n} weight matrices into {}", a.out.display());
    Ok(())
}
