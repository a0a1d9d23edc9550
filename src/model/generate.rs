//! Generation: greedy (default) or temperature sampling, with a KV cache,
//! stopping at EOS. [`LlavaModel::generate_no_cache`] recomputes the whole
//! sequence at every step (the reference the cache is tested against).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::Rng;

use super::decoder::KvCache;
use super::llava::{Batch, LlavaModel};
use super::nn::Fwd;
use super::template::EncodedSequence;

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise sample from `softmax(logits / T)`.
    pub temperature: f64,
    /// Seed of the sampling stream (`util::seed::rng_for(seed, "generate")`).
    pub seed: u64,
    /// Stop after emitting this token (it is included in the output).
    pub eos_token_id: Option<u32>,
    /// Apply the LoRA adapters.
    pub adapters: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            seed: 0,
            eos_token_id: None,
            adapters: true,
        }
    }
}

fn pick(logits: &Tensor, opts: &GenerateOptions, rng: &mut impl Rng) -> Result<u32> {
    let v: Vec<f64> = logits.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    if v.is_empty() {
        bail!("empty logits");
    }
    if !v.iter().all(|x| x.is_finite()) {
        bail!(
            "the model's next-token logits hold NaN or infinite values; its weights (or an \
             adapter's) are probably not finite"
        );
    }
    if !opts.temperature.is_finite() {
        bail!("temperature {} is not finite", opts.temperature);
    }
    if opts.temperature <= 0.0 {
        // First maximum, as torch.argmax.
        let mut best = 0usize;
        for (i, x) in v.iter().enumerate() {
            if *x > v[best] {
                best = i;
            }
        }
        return Ok(best as u32);
    }
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = v
        .iter()
        .map(|x| ((x - m) / opts.temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u <= 0.0 {
            return Ok(i as u32);
        }
    }
    Ok((w.len() - 1) as u32)
}

impl LlavaModel {
    /// Generate up to `max_new_tokens` after `prompt` with a KV cache.
    /// Returns the new token ids (including EOS when it stopped there).
    pub fn generate(
        &self,
        prompt: &EncodedSequence,
        image: Option<&Tensor>,
        opts: &GenerateOptions,
    ) -> Result<Vec<u32>> {
        let fwd = Fwd {
            adapters: opts.adapters,
            dropout_seed: None,
        };
        let batch = Batch::new(
            std::slice::from_ref(prompt),
            &[image.cloned()],
            0,
            &self.device,
        )?;
        let mut rng = crate::util::seed::rng_for(opts.seed, "generate");
        let embeds = self.input_embeds(&batch, &fwd)?;
        let context = self.config.text.max_position_embeddings;
        let prompt_len = embeds.dim(1)?;
        if prompt_len >= context {
            bail!(
                "the prompt is {prompt_len} positions long (text and image tokens), but the \
                 model's context (max_position_embeddings) is {context}: nothing can be \
                 generated; shorten the prompt"
            );
        }
        let mut cache = KvCache::new(self.decoder.layers.len());
        let mut h = self.decoder.forward_cached(&embeds, &mut cache, &fwd)?;
        let mut out = Vec::new();
        // Generation stops at the context's end as well as after max_new_tokens.
        let budget = opts.max_new_tokens.min(context - prompt_len);
        for _ in 0..budget {
            let t = h.dim(1)?;
            let logits = self.decoder.logits(&h.narrow(1, t - 1, 1)?, &fwd)?;
            let next = pick(&logits, opts, &mut rng)?;
            out.push(next);
            if Some(next) == opts.eos_token_id || out.len() == budget {
                break;
            }
            let id = Tensor::from_vec(vec![next], (1, 1), &self.device)?;
            let e = self.decoder.embed(&id)?;
            h = self.decoder.forward_cached(&e, &mut cache, &fwd)?;
        }
        Ok(out)
    }

    /// Like [`LlavaModel::generate`] but recomputing the full sequence at each step.
    pub fn generate_no_cache(
        &self,
        prompt: &EncodedSequence,
        image: Option<&Tensor>,
        opts: &GenerateOptions,
    ) -> Result<Vec<u32>> {
        let fwd = Fwd {
            adapters: opts.adapters,
            dropout_seed: None,
        };
        let mut rng = crate::util::seed::rng_for(opts.seed, "generate");
        let mut seq = prompt.clone();
        let mut out = Vec::new();
        for _ in 0..opts.max_new_tokens {
            let batch = Batch::new(
                std::slice::from_ref(&seq),
                &[image.cloned()],
                0,
                &self.device,
            )?;
            let logits = self.forward_with(&batch, &fwd)?;
            let t = logits.dim(1)?;
            let next = pick(&logits.narrow(1, t - 1, 1)?, opts, &mut rng)?;
            out.push(next);
            if Some(next) == opts.eos_token_id {
                break;
            }
            seq.input_ids.push(next);
            seq.response_mask.push(false);
        }
        Ok(out)
    }
}
