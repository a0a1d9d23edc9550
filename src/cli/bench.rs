//! `hdpo bench`: throughput measurements (targets `model`, `train`; other
//! stages may add their own targets here).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use hdpo::model::bench::{
    dpo_step_flops, dpo_train_throughput_with, h256_config, lora_step_throughput,
};
use hdpo::model::{
    parse_device, parse_dtype, Batch, EncodedSequence, LlavaConfig, LlavaModel, LoadOptions,
    LoraConfig, TargetModules,
};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Forward + backward of summed response log-probs (LoRA) on one batch.
    Model(BenchArgs),
    /// DPO optimiser steps (forward, backward, loss, AdamW): pairs/s and tokens/s.
    Train(BenchArgs),
}

/// The model shape to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// The config of --model as it is (random weights).
    Model,
    /// Hidden 256, 4 layers, vocab 32k (on --model's vision config).
    H256,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model directory whose config.json is used (weights are random, seed 0); default: the
    /// tiny LLaVA shape embedded from `configs/shapes/tiny-llava` (hidden 64, 2 layers).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "model")]
    pub shape: Shape,
    /// Tokens per sequence (text-only, random ids; the second half is the response).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Pairs per step (`train`) or sequences per batch (`model`).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// LoRA rank on the --lora-targets of the language model.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// Comma-separated decoder linears that carry LoRA.
    #[arg(long, default_value = "q_proj,v_proj")]
    pub lora_targets: String,
    /// Weights and activations: f32, bf16, f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// `train` only: one random image per sequence (BOS, then the image tokens).
    #[arg(long)]
    pub images: bool,
    /// The device's peak dense TFLOP/s in the benchmark's dtype, to print MFU.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

/// The PEFT target regex for comma-separated decoder linear names.
fn targets_regex(list: &str) -> Result<String> {
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty()
        || names
            .iter()
            .any(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        anyhow::bail!(
            "--lora-targets `{list}`: expected comma-separated module names such as q_proj,v_proj"
        );
    }
    Ok(format!(".*language_model.*\\.({})", names.join("|")))
}

/// The default benchmark shape, compiled in so that the binary needs no file at run time.
const TINY_LLAVA_CONFIG: &str = include_str!("../../configs/shapes/tiny-llava/config.json");

fn build(a: &BenchArgs) -> Result<LlavaModel> {
    let base = match &a.model {
        Some(m) => LlavaConfig::from_dir(m)
            .with_context(|| format!("cannot read the config of {}", m.display()))?,
        None => LlavaConfig::from_json(
            &serde_json::from_str(TINY_LLAVA_CONFIG)?,
            "configs/shapes/tiny-llava/config.json",
        )?,
    };
    let cfg = match a.shape {
        Shape::Model => base,
        Shape::H256 => h256_config(&base),
    };
    let opts = LoadOptions {
        device: parse_device(&a.device)?,
        dtype: a.dtype.as_deref().map(parse_dtype).transpose()?,
    };
    // On a GPU the weights are drawn there (seeded): drawing a 7B model on
    // the host takes minutes.
    let seed = if opts.device.is_cpu() {
        Some(0)
    } else {
        opts.device.set_seed(0)?;
        None
    };
    let mut m = LlavaModel::random(cfg, seed, &opts)?;
    m.add_lora(
        LoraConfig::new(
            a.lora_r,
            2.0 * a.lora_r as f64,
            TargetModules::Regex(targets_regex(&a.lora_targets)?),
        ),
        0,
    )?;
    Ok(m)
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    let (target, a) = match &cmd {
        BenchCmd::Model(a) => ("model", a),
        BenchCmd::Train(a) => ("train", a),
    };
    if a.images && matches!(cmd, BenchCmd::Model(_)) {
        anyhow::bail!("--images is for `hdpo bench train`");
    }
    let m = build(a)?;
    let t = &m.config.text;
    let shape = json!({
        "hidden": t.hidden_size, "layers": t.num_hidden_layers, "vocab": t.vocab_size,
        "heads": t.num_attention_heads, "intermediate": t.intermediate_size,
        "seq_len": a.seq_len, "batch": a.batch, "lora_r": a.lora_r,
        "lora_targets": a.lora_targets, "dtype": format!("{:?}", m.dtype).to_lowercase(),
        "image_tokens": if a.images { m.image_token_count() } else { 0 },
        "device": a.device, "threads": rayon::current_num_threads(),
    });
    let result = match cmd {
        BenchCmd::Model(_) => {
            let seqs: Vec<EncodedSequence> = (0..a.batch)
                .map(|i| EncodedSequence {
                    input_ids: (0..a.seq_len)
                        .map(|k| (5 + (k * 7 + i * 13) % (t.vocab_size - 5)) as u32)
                        .collect(),
                    response_mask: (0..a.seq_len).map(|k| k >= a.seq_len / 2).collect(),
                    image_positions: Vec::new(),
                    prompt_len: a.seq_len / 2,
                })
                .collect();
            let b = Batch::new(&seqs, &vec![None; a.batch], 0, &m.device)?;
            serde_json::to_value(lora_step_throughput(&m, &b, a.iters)?)?
        }
        BenchCmd::Train(_) => {
            let r = dpo_train_throughput_with(&m, a.seq_len, a.batch, a.iters, 0, a.images)?;
            let flops = dpo_step_flops(&m.config, a.seq_len, 2 * a.batch, a.images);
            let mut v = serde_json::to_value(&r)?;
            v["model_flops_per_step"] = json!(flops);
            v["achieved_tflops"] = json!(flops / r.seconds_per_step / 1e12);
            if let Some(peak) = a.peak_tflops {
                v["peak_tflops"] = json!(peak);
                v["mfu"] = json!(flops / r.seconds_per_step / (peak * 1e12));
            }
            v
        }
    };
    let out = json!({"target": target, "shape": shape, "result": result});
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let r = &out["result"];
        println!(
            "bench {target}: hidden {} x {} layers, vocab {}, seq {}, batch {}: {:.4} s/step, {:.1} tokens/s{}",
            t.hidden_size,
            t.num_hidden_layers,
            t.vocab_size,
            a.seq_len,
            a.batch,
            r["seconds_per_step"].as_f64().unwrap_or(f64::NAN),
            r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r.get("pairs_per_s")
                .and_then(|x| x.as_f64())
                .map(|p| format!(", {p:.2} pairs/s"))
                .unwrap_or_default()
        );
        if let Some(tf) = r.get("achieved_tflops").and_then(|x| x.as_f64()) {
            let mfu = r
                .get("mfu")
                .and_then(|x| x.as_f64())
                .map(|x| format!("MFU {:.1}% of {} TFLOP/s", 100.0 * x, r["peak_tflops"]))
                .unwrap_or_else(|| "MFU not computed (no --peak-tflops)".into());
            let rss = r
                .get("peak_rss_bytes")
                .and_then(|x| x.as_u64())
                .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(|| "unknown".into());
            println!("  model FLOPs {tf:.3} TFLOP/s, {mfu}; peak RSS {rss}");
        }
    }
    Ok(())
}
