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
