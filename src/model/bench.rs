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
    dpo_train_throughput_with(model, seq_len, pairs_per_step, iters, seed, false)
}

/// [`dpo_train_throughput`], optionally with one random image per sequence:
/// with `images`, each sequence is BOS, the image's tokens
/// ([`LlavaModel::image_token_count`], 576 for CLIP ViT-L/14-336), then random
/// text up to `seq_len`, so the step also runs the (frozen) vision tower and
/// projector as LLaVA training does (paper Sec. 4.1).
pub fn dpo_train_throughput_with(
    model: &LlavaModel,
    seq_len: usize,
    pairs_per_step: usize,
    iters: usize,
    seed: u64,
    images: bool,
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
    let n_img = if images { model.image_token_count() } else { 0 };
    let vision = match (images, model.config.vision.as_ref()) {
        (true, None) => bail!("--images needs a model with a vision tower"),
        (true, Some(v)) => Some(v.clone()),
        (false, _) => None,
    };
    if images && seq_len < 2 * (1 + n_img) {
        bail!("seq_len {seq_len} is too short for BOS and {n_img} image tokens in the prompt half");
    }
    let image_id = model.config.image_token_id.unwrap_or(0);
    let mut seqs = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ids: Vec<u32> = (0..seq_len).map(|_| rng.random_range(5..vocab)).collect();
        let mut image_positions = Vec::new();
        if let Some(v) = &vision {
            ids[0] = 1;
            ids[1..1 + n_img].fill(image_id);
            image_positions.extend(1..1 + n_img);
            let s = v.image_size;
            let pix: Vec<f32> = (0..v.num_channels * s * s)
                .map(|_| rng.random_range(-1.5f32..1.5))
                .collect();
            let img = Tensor::from_vec(pix, (v.num_channels, s, s), &candle_core::Device::Cpu)?;
            pixels.push(Some(img.to_dtype(model.dtype)?));
        } else {
            pixels.push(None);
        }
        seqs.push(super::template::EncodedSequence {
            input_ids: ids,
            response_mask: (0..seq_len).map(|t| t >= seq_len / 2).collect(),
            image_positions,
            prompt_len: seq_len / 2,
        });
    }
    let batch = Batch::new(&seqs, &pixels, 0, &model.device)?;
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

/// Model FLOPs of one [`dpo_train_throughput_with`] step, for MFU: the
/// policy's forward and backward on `sequences` sequences of `seq_len` tokens.
///
/// Counted (multiply-add = 2 FLOPs): decoder linears `2 T P_lin` and attention
/// scores and values `4 T^2 H d_head` per layer (the full square, as PaLM's MFU
/// counts it), the LM head on the response half `T/2 d V`; with `images`, the
/// vision tower up to its last layer and the projector on one image per
/// sequence. Backward: the base weights are frozen, so only the input
/// gradients of the decoder and LM head (once more their forward FLOPs) are
/// computed; the frozen vision tower gets no backward; LoRA's own FLOPs
/// (rank r against hidden d) are left out. Total: `2 F_decoder + F_vision`.
pub fn dpo_step_flops(
    cfg: &super::config::LlavaConfig,
    seq_len: usize,
    sequences: usize,
    images: bool,
) -> f64 {
    let t = &cfg.text;
    let (tl, d) = (seq_len as f64, t.hidden_size as f64);
    let q = (t.num_attention_heads * t.head_dim) as f64;
    let kv = (t.num_key_value_heads * t.head_dim) as f64;
    let lin = d * q + 2.0 * d * kv + q * d + 3.0 * d * t.intermediate_size as f64;
    let per_layer = 2.0 * tl * lin + 4.0 * tl * tl * q;
    let head = 2.0 * (tl / 2.0) * d * t.vocab_size as f64;
    let decoder = t.num_hidden_layers as f64 * per_layer + head;
    let vision = match (images, cfg.vision.as_ref()) {
        (true, Some(v)) => {
            let p = (v.num_patches() + 1) as f64;
            let dv = v.hidden_size as f64;
            let layer = 2.0 * p * (4.0 * dv * dv + 2.0 * dv * v.intermediate_size as f64)
                + 4.0 * p * p * dv;
            let proj = match cfg.projector {
                super::config::ProjectorKind::Linear => dv * d,
                super::config::ProjectorKind::Mlp2xGelu => dv * d + d * d,
            };
            v.num_hidden_layers as f64 * layer + 2.0 * (p - 1.0) * proj
        }
        _ => 0.0,
    };
    sequences as f64 * (2.0 * decoder + vision)
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
