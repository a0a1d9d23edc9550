//! `hdpo bench`: throughput measurements (targets `model`, `train`; other
//! stages may add their own targets here).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use hdpo::model::bench::{dpo_train_throughput, h256_config, lora_step_throughput};
use hdpo::model::{
    parse_device, Batch, EncodedSequence, LlavaConfig, LlavaModel, LoadOptions, LoraConfig,
    TargetModules,
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
    /// Model directory whose config.json is used (weights are random, seed 0).
    #[arg(long, default_value_os_t = hdpo::util::shared_dir().join("fixtures/models/tiny_llava"))]
    pub model: PathBuf,
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
    /// LoRA rank on q_proj and v_proj of the language model.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

fn build(a: &BenchArgs) -> Result<LlavaModel> {
    let base = LlavaConfig::from_dir(&a.model)
        .with_context(|| format!("cannot read the config of {}", a.model.display()))?;
    let cfg = match a.shape {
        Shape::Model => base,
        Shape::H256 => h256_config(&base),
    };
    let opts = LoadOptions {
        device: parse_device(&a.device)?,
        dtype: None,
    };
    let mut m = LlavaModel::random(cfg, Some(0), &opts)?;
    m.add_lora(
        LoraConfig::new(
            a.lora_r,
            2.0 * a.lora_r as f64,
            TargetModules::Regex(".*language_model.*\\.(q_proj|v_proj)".into()),
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
    let m = build(a)?;
    let t = &m.config.text;
    let shape = json!({
        "hidden": t.hidden_size, "layers": t.num_hidden_layers, "vocab": t.vocab_size,
        "heads": t.num_attention_heads, "intermediate": t.intermediate_size,
        "seq_len": a.seq_len, "batch": a.batch, "lora_r": a.lora_r,
        "threads": rayon::current_num_threads(),
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
            serde_json::to_value(dpo_train_throughput(&m, a.seq_len, a.batch, a.iters, 0)?)?
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
    }
    Ok(())
}
