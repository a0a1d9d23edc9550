//! A first throughput measurement: forward + backward of a LoRA batch
//! (summed response log-probs as the loss), for `hdpo bench` to call.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use super::llava::{sequence_logprobs, Batch, LlavaModel};
use super::nn::Fwd;

/// Timings of `iters` forward+backward steps on one batch.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub iters: usize,
    pub sequences_per_step: usize,
    pub tokens_per_step: usize,
    pub seconds_per_step: f64,
    pub sequences_per_s: f64,
    pub tokens_per_s: f64,
}

/// Run one warm-up step and then `iters` timed steps of
/// `backward(sum(sequence_logprobs(forward(batch, adapters on))))`.
pub fn lora_step_throughput(model: &LlavaModel, batch: &Batch, iters: usize) -> Result<Throughput> {
    if model.lora_vars().is_empty() {
        bail!("the model has no LoRA adapters to train");
    }
    if iters == 0 {
        bail!("iters must be positive");
    }
    let step = || -> Result<()> {
        let fwd = Fwd {
            adapters: true,
            dropout_seed: None,
        };
        let logits = model.forward_with(batch, &fwd)?;
        let (_, summed) = sequence_logprobs(&logits, &batch.input_ids, &batch.response_mask)?;
        let grads = summed.sum_all()?.backward()?;
        drop(grads);
        Ok(())
    };
    step()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64() / iters as f64;
    let seqs = batch.lengths.len();
    let toks = batch.num_tokens();
    Ok(Throughput {
        iters,
        sequences_per_step: seqs,
        tokens_per_step: toks,
        seconds_per_step: secs,
        sequences_per_s: seqs as f64 / secs,
        tokens_per_s: toks as f64 / secs,
    })
}

/// Timings of DPO optimiser steps (one step = `pairs_per_step` pairs).
#[derive(Clone, Debug, Serialize)]
pub struct TrainThroughput {
    pub iters: usize,
    pub pairs_per_step: usize,
    pub seq_len: usize,
    /// Tokens the policy processes per step (2 sequences per pair).
    pub tokens_per_step: usize,
    pub seconds_per_step: f64,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    pub trainable_params: usize,
    /// Process CPU time (user + system, all threads) per step: steadier than
    /// wall time on a shared machine.
    pub cpu_seconds_per_step: Option<f64>,
    /// Peak resident memory (`VmHWM`) after the run, in bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// Throughput of DPO training steps (paper Eq. 1) on random text-only
/// sequences of `seq_len` tokens (the second half counted as the response):
/// per step, the policy's forward and backward on `pairs_per_step` chosen and
/// rejected sequences in one padded batch (the LM head on the response rows
/// only, as [`super::policy::LlavaPolicy`] computes it), the sigmoid DPO loss against
/// reference log-probs computed once beforehand (as the trainer caches them),
/// and an AdamW update of the LoRA tensors. One warm-up step is not timed.
pub fn dpo_train_throughput(
    model: &LlavaModel,
    seq_len: usize,
    pairs_per_step: usize,
    iters: usize,
    seed: u64,
) -> Result<TrainThroughput> {
    use crate::train::losses::{by_name, PairLogps};
    use crate::train::optim::AdamW;
    use crate::train::OptimConfig;
    use candle_core::Tensor;
    use rand::Rng;

    let params = model.lora_vars();
    if params.is_empty() {
        bail!("the model has no LoRA adapters to train");
    }
    if iters == 0 || pairs_per_step == 0 || seq_len < 4 {
        bail!("iters and pairs_per_step must be positive and seq_len at least 4");
    }
    let vocab = model.config.text.vocab_size as u32;
    let mut rng = crate::util::seed::rng_for(seed, "bench/train");
    let n = 2 * pairs_per_step;
    let seqs: Vec<super::template::EncodedSequence> = (0..n)
        .map(|_| super::template::EncodedSequence {
            input_ids: (0..seq_len).map(|_| rng.random_range(5..vocab)).collect(),
            response_mask: (0..seq_len).map(|t| t >= seq_len / 2).collect(),
            image_positions: Vec::new(),
            prompt_len: seq_len / 2,
        })
        .collect();
    let images = vec![None; n];
    let batch = Batch::new(&seqs, &images, 0, &model.device)?;
    let summed = |adapters: bool| -> Result<candle_core::Tensor> {
        let fwd = Fwd {
            adapters,
            dropout_seed: None,
        };
        Ok(super::policy::response_logprobs(model, &batch, &fwd)?.0)
    };
    let reference = summed(false)?.detach();
    let m = pairs_per_step;
    let loss = by_name("dpo", 0.1)?;
    let mut opt = AdamW::new(
        params.clone(),
        &OptimConfig {
            learning_rate: 1e-4,
            ..OptimConfig::default()
        },
    )?;
    let weights = Tensor::ones(m, reference.dtype(), reference.device())?;
    let mut step = || -> Result<()> {
        let pol = summed(true)?;
        let x = PairLogps {
            policy_chosen: pol.narrow(0, 0, m)?,
            policy_rejected: pol.narrow(0, m, m)?,
            ref_chosen: reference.narrow(0, 0, m)?,
            ref_rejected: reference.narrow(0, m, m)?,
            weights: weights.clone(),
        };
        let out = loss.loss(&x)?;
        let store = out.loss.backward()?;
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(name, v)| {
                store
                    .get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))
            })
            .collect::<Result<_>>()?;
        opt.step(&grads, 1e-4)?;
        Ok(())
    };
    step()?;
    let c0 = process_cpu_seconds();
    let t0 = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64() / iters as f64;
    let cpu = match (c0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / iters as f64),
        _ => None,
    };
    let tokens = n * seq_len;
    Ok(TrainThroughput {
        iters,
        pairs_per_step,
        seq_len,
        tokens_per_step: tokens,
        seconds_per_step: secs,
        pairs_per_s: pairs_per_step as f64 / secs,
        tokens_per_s: tokens as f64 / secs,
        trainable_params: params.iter().map(|(_, v)| v.elem_count()).sum(),
        cpu_seconds_per_step: cpu,
        peak_rss_bytes: crate::train::peak_rss_bytes(),
    })
}

/// The benchmark decoder of issue 6: hidden 256, 4 layers, 4 heads of 64,
/// intermediate 1024, vocab 32000, on the fixture's tiny CLIP tower
/// (unused by text-only sequences); context 512.
pub fn h256_config(base: &super::config::LlavaConfig) -> super::config::LlavaConfig {
    let mut c = base.clone();
    let t = &mut c.text;
    t.vocab_size = 32000;
    t.hidden_size = 256;
    t.intermediate_size = 1024;
    t.num_hidden_layers = 4;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 4;
    t.head_dim = 64;
    t.max_position_embeddings = 512;
    t.tie_word_embeddings = false;
    c
}

/// User + system CPU seconds of this process (`/proc/self/stat`, clock ticks
/// of 1/100 s), where the platform has it.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}
