//! Parity of one model on two devices / dtypes: the per-token response
//! log-probs of paper Eq. 1 (the quantities DPO and HDPO, Eq. 13, are built
//! from) and their gradients with respect to the LoRA tensors, computed on a
//! reference (the CPU in f32) and on a device under test (a GPU in f32 or
//! bf16). `hdpo model device-check` prints the report; `scripts/gpu_check.sh`
//! runs it on a GPU machine.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::Serialize;

use super::llava::{sequence_logprobs, Batch, LlavaModel, LoadOptions};
use super::nn::Fwd;
use super::template::EncodedSequence;

/// Largest differences between the device under test and the reference.
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    pub device: String,
    pub dtype: String,
    pub sequences: usize,
    pub response_tokens: usize,
    pub lora_tensors: usize,
    /// max |a - b| over the per-token response log-probs.
    pub max_abs_logprob_diff: f64,
    /// max |a - b| over all LoRA gradient elements, divided by max |b|
    /// (the gradients' own scale).
    pub max_rel_grad_diff: f64,
    /// ||a - b|| / ||b|| over all LoRA gradient elements.
    pub rel_l2_grad_diff: f64,
    pub logprob_tolerance: f64,
    pub grad_tolerance: f64,
    pub pass: bool,
}

/// Tolerances: (token log-prob, max relative gradient difference).
/// f32: 1e-4 for both (the fixture tolerance of the transformers parity tests).
/// bf16 (8 significant bits, relative rounding 2^-9 per operation): 0.25 nats
/// per token and 10% of the gradient scale; CPU bf16 against CPU f32 on the
/// tiny fixture measures 0.030 and 1.3% (relative L2 2.2%), checked in
/// `tests/device_check.rs`.
pub fn tolerances(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 | DType::F64 => (1e-4, 1e-4),
        _ => (0.25, 0.1),
    }
}

/// Four sequences of different lengths (right padding in the batch), each
/// with one random image, seeded: BOS, the image tokens, 6 to 9 prompt
/// tokens, 4 to 11 response tokens, ids drawn from `5..vocab`.
pub fn probe_inputs(model: &LlavaModel, seed: u64) -> Result<(Vec<EncodedSequence>, Vec<Tensor>)> {
    let vision = model
        .config
        .vision
        .as_ref()
        .context("the model has no vision tower config")?;
    let vocab = model.config.text.vocab_size as u32;
    if vocab <= 5 {
        bail!("vocabulary of {vocab} tokens is too small for probe sequences");
    }
    let n_img = model.image_token_count();
    let image_id = model.config.image_token_id.unwrap_or(0);
    let mut rng = crate::util::seed::rng_for(seed, "model/device_check");
    let mut seqs = Vec::new();
    let mut images = Vec::new();
    for i in 0..4 {
        let n_prompt = 1 + n_img + 6 + i;
        let n_resp = 4 + 2 * i + rng.random_range(0..2);
        let mut ids = vec![1u32];
        ids.extend(std::iter::repeat_n(image_id, n_img));
        ids.extend((0..n_prompt + n_resp - ids.len()).map(|_| rng.random_range(5..vocab)));
        seqs.push(EncodedSequence {
            response_mask: (0..ids.len()).map(|t| t >= n_prompt).collect(),
            image_positions: (1..1 + n_img).collect(),
            input_ids: ids,
            prompt_len: n_prompt,
        });
        let s = vision.image_size;
        let pix: Vec<f32> = (0..vision.num_channels * s * s)
            .map(|_| rng.random_range(-1.5f32..1.5))
            .collect();
        images.push(Tensor::from_vec(
            pix,
            (vision.num_channels, s, s),
            &Device::Cpu,
        )?);
    }
    Ok((seqs, images))
}

/// Per-token response log-probs `[B, L]` (f32, on the CPU) and the gradients
/// of their sum with respect to the LoRA tensors (in `lora_vars` order, f32).
pub fn logprobs_and_grads(
    model: &LlavaModel,
    seqs: &[EncodedSequence],
    images: &[Tensor],
) -> Result<(Tensor, Vec<(String, Tensor)>)> {
    let imgs: Vec<Option<Tensor>> = images
        .iter()
        .map(|t| t.to_dtype(model.dtype).map(Some))
        .collect::<candle_core::Result<_>>()?;
    let batch = Batch::new(seqs, &imgs, 0, &model.device)?;
    let fwd = Fwd {
        adapters: true,
        dropout_seed: None,
    };
    let logits = model.forward_with(&batch, &fwd)?;
    let (per_token, summed) = sequence_logprobs(&logits, &batch.input_ids, &batch.response_mask)?;
    let store = summed.sum_all()?.backward()?;
    let mut grads = Vec::new();
    for (name, v) in model.lora_vars() {
        let g = store
            .get(v.as_tensor())
            .with_context(|| format!("no gradient for LoRA tensor {name}"))?;
        grads.push((name, g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
    }
    Ok((per_token.to_device(&Device::Cpu)?, grads))
}

fn load(dir: &Path, adapter: &Path, device: &Device, dtype: DType) -> Result<LlavaModel> {
    let mut m = LlavaModel::load(
        dir,
        &LoadOptions {
            device: device.clone(),
            dtype: Some(dtype),
        },
    )?;
    m.load_adapter(adapter)?;
    Ok(m)
}

/// Load `model_dir` with the adapter `adapter` on the CPU in f32 (the
/// reference) and on `device` in `dtype`, and compare log-probs and LoRA
/// gradients on [`probe_inputs`].
pub fn device_parity(
    model_dir: &Path,
    adapter: &Path,
    device: &Device,
    device_name: &str,
    dtype: DType,
) -> Result<ParityReport> {
    let reference = load(model_dir, adapter, &Device::Cpu, DType::F32)?;
    let under_test = load(model_dir, adapter, device, dtype)?;
    let (seqs, images) = probe_inputs(&reference, 0)?;
    let (lp_ref, g_ref) = logprobs_and_grads(&reference, &seqs, &images)?;
    let (lp, g) = logprobs_and_grads(&under_test, &seqs, &images)?;
    let max_abs_logprob_diff = (lp - &lp_ref)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    if g.len() != g_ref.len() {
        bail!(
            "{} LoRA gradients on {device_name} but {} on the CPU",
            g.len(),
            g_ref.len()
        );
    }
    let (mut max_diff, mut max_ref, mut sq_diff, mut sq_ref) = (0f64, 0f64, 0f64, 0f64);
    for ((name, a), (name_ref, b)) in g.iter().zip(&g_ref) {
        if name != name_ref {
            bail!("LoRA tensor order differs: {name} vs {name_ref}");
        }
        let d = (a - b)?;
        max_diff = max_diff.max(d.abs()?.max_all()?.to_scalar::<f32>()? as f64);
        max_ref = max_ref.max(b.abs()?.max_all()?.to_scalar::<f32>()? as f64);
        sq_diff += d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        sq_ref += b.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let max_rel_grad_diff = max_diff / max_ref.max(f64::MIN_POSITIVE);
    let rel_l2_grad_diff = (sq_diff / sq_ref.max(f64::MIN_POSITIVE)).sqrt();
    let (logprob_tolerance, grad_tolerance) = tolerances(dtype);
    let response_tokens = seqs.iter().map(|s| s.response_len()).sum();
    Ok(ParityReport {
        device: device_name.to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        sequences: seqs.len(),
        response_tokens,
        lora_tensors: g.len(),
        max_abs_logprob_diff,
        max_rel_grad_diff,
        rel_l2_grad_diff,
        logprob_tolerance,
        grad_tolerance,
        pass: max_abs_logprob_diff <= logprob_tolerance && max_rel_grad_diff <= grad_tolerance,
    })
}
