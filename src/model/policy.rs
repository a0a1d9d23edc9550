//! The bridge between the LLaVA model and the model-independent trainer:
//! [`LlavaPolicy`] implements [`PreferencePolicy`] (DPO, paper Eq. 1; HDPO,
//! Eq. 13) and [`SftPolicy`] for a [`LlavaModel`] with its tokenizer, chat
//! template and image preprocessing.
//!
//! A sequence is `template(prompt with <image>) + " " + response + EOS`; its
//! log-probability is
//!
//! ```text
//! log π(y|x) = Σ_{t ∈ response ∪ {EOS}} log softmax(logits[t−1])[y_t]
//! ```
//!
//! with the prompt and image tokens masked out (`docs/design.md`, "Loss"). Each
//! sequence carries its own image, so the chosen and rejected sides of a pair
//! may show different images (the masked image of HDPO's false-positive and
//! false-negative pairs). Several sequences go through the model as one
//! right-padded [`Batch`] with a padding mask. A sequence longer than the
//! model's context is an error naming its lengths, never truncated (cutting
//! image tokens would silently desynchronise features and positions).
//!
//! The trainable tensors are the LoRA A and B matrices, named as PEFT names
//! them in memory (`<module>.lora_A.default.weight`), so dry-run gradient
//! norms can be compared with PEFT's key for key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};

use super::config::Architecture;
use super::llava::{sequence_logprobs, Batch, LlavaModel};
use super::nn::Fwd;
use super::template::{ChatTemplate, EncodedSequence, TextTokenizer};
use crate::data::image::Preprocess;
use crate::data::pairs::PairRecord;
use crate::data::{AnswerType, Sample};
use crate::train::{Nll, PreferencePair, PreferencePolicy, SeqItem, SftExample, SftPolicy};

pub use crate::data::REPORT_PROMPT;

/// How many preprocessed images the policy keeps (pixel tensors by path).
pub const IMAGE_CACHE_ENTRIES: usize = 512;

/// The image preprocessing of `model`: the checkpoint's
/// `preprocessor_config.json` / `processor_config.json` when present, else
/// LLaVA-Med's pad-to-square (original layout) or CLIP's resize and centre
/// crop (Hugging Face layout) at the vision tower's input size. The result
/// must produce images of the tower's size.
pub fn model_preprocess(model: &LlavaModel) -> Result<Preprocess> {
    let size = model.vision.cfg.image_size as u32;
    let mut found = None;
    for f in ["preprocessor_config.json", "processor_config.json"] {
        let p = model.dir.join(f);
        if !model.dir.as_os_str().is_empty() && p.is_file() {
            found = Some(Preprocess::from_hf_config(&p)?);
            break;
        }
    }
    let pre = match found {
        Some(p) => p,
        None => match model.config.architecture {
            Architecture::HfLlava => Preprocess::clip(size),
            _ => Preprocess::llava_pad(size),
        },
    };
    ensure!(
        pre.size == size,
        "{}: the image processor gives {} px images but the vision tower expects {size} px",
        model.dir.display(),
        pre.size
    );
    Ok(pre)
}

/// A [`LlavaModel`] as the trainer sees it. Borrows the model and tokenizer,
/// so after training the caller still owns them (to save the adapter, or to
/// predict with [`super::predict::predict_samples`]); the optimiser updates
/// the LoRA [`Var`]s in place.
pub struct LlavaPolicy<'a> {
    model: &'a LlavaModel,
    tokenizer: &'a TextTokenizer,
    template: ChatTemplate,
    preprocess: Preprocess,
    max_len: usize,
    dropout_seed: Option<u64>,
    cache: Mutex<HashMap<PathBuf, Tensor>>,
}

impl<'a> LlavaPolicy<'a> {
    /// A policy with the model's own preprocessing ([`model_preprocess`]) and
    /// its `max_position_embeddings` as the context length.
    pub fn new(
        model: &'a LlavaModel,
        tokenizer: &'a TextTokenizer,
        template: ChatTemplate,
    ) -> Result<Self> {
        Ok(LlavaPolicy {
            preprocess: model_preprocess(model)?,
            max_len: model.config.text.max_position_embeddings,
            model,
            tokenizer,
            template,
            dropout_seed: None,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Use other image preprocessing (its size must be the tower's).
    pub fn with_preprocess(mut self, p: Preprocess) -> Result<Self> {
        ensure!(
            p.size as usize == self.model.vision.cfg.image_size,
            "preprocessing gives {} px images but the vision tower expects {} px",
            p.size,
            self.model.vision.cfg.image_size
        );
        self.preprocess = p;
        Ok(self)
    }

    /// Refuse sequences longer than `n` tokens (at most the model's context).
    pub fn with_max_len(mut self, n: usize) -> Self {
        self.max_len = n.min(self.model.config.text.max_position_embeddings);
        self
    }

    /// Apply LoRA dropout with the policy's adapters on. The mask of a
    /// sequence is drawn from `rng_for(seed ^ hash(sequence), module)`: a
    /// function of the example, so runs and resumed runs are reproducible
    /// (the same example sees the same mask in every epoch).
    pub fn with_dropout_seed(mut self, seed: Option<u64>) -> Self {
        self.dropout_seed = seed;
        self
    }

    pub fn model(&self) -> &LlavaModel {
        self.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        self.tokenizer
    }

    pub fn template(&self) -> ChatTemplate {
        self.template
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The preprocessed pixels `[3, S, S]` of the image at `path` (cached).
    pub fn pixels(&self, path: &Path) -> Result<Tensor> {
        if let Ok(c) = self.cache.lock() {
            if let Some(t) = c.get(path) {
                return Ok(t.clone());
            }
        }
        let t = self
            .preprocess
            .load(path, &self.model.device)?
            .to_dtype(self.model.dtype)?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= IMAGE_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(path.to_path_buf(), t.clone());
        }
        Ok(t)
    }

    /// Tokenize one (prompt, response, image) sequence; an error when it
    /// exceeds the context length (never truncated).
    pub fn encode(&self, item: &SeqItem) -> Result<EncodedSequence> {
        let n_img = if item.image.is_some() {
            self.model.image_token_count()
        } else {
            0
        };
        let s = self
            .tokenizer
            .encode_pair(self.template, &item.prompt, &item.response, n_img)?;
        self.check_len(&s)?;
        Ok(s)
    }

    /// Tokenize a prompt for generation (question only, image tokens laid out).
    pub fn encode_prompt(&self, question: &str, with_image: bool) -> Result<EncodedSequence> {
        let n_img = if with_image {
            self.model.image_token_count()
        } else {
            0
        };
        let s = self
            .tokenizer
            .encode_prompt(self.template, question, n_img)?;
        self.check_len(&s)?;
        Ok(s)
    }

    fn check_len(&self, s: &EncodedSequence) -> Result<()> {
        let n = s.input_ids.len();
        if n > self.max_len {
            bail!(
                "the sequence has {n} tokens (prompt {} incl. {} image tokens, response {}) but \
                 the model's context length is {}; it is not truncated, shorten the prompt or \
                 the response",
                s.prompt_len,
                s.image_positions.len(),
                n - s.prompt_len,
                self.max_len
            );
        }
        Ok(())
    }

    /// The right-padded batch of `items` (one image per sequence, each its own).
    pub fn batch(&self, items: &[SeqItem]) -> Result<Batch> {
        ensure!(!items.is_empty(), "no sequences to score");
        let mut seqs = Vec::with_capacity(items.len());
        let mut imgs = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let what = || match &it.image {
                Some(p) => format!("sequence {i} (image {})", p.display()),
                None => format!("sequence {i}"),
            };
            seqs.push(self.encode(it).with_context(what)?);
            imgs.push(match &it.image {
                Some(p) => Some(self.pixels(p).with_context(what)?),
                None => None,
            });
        }
        Batch::new(&seqs, &imgs, self.tokenizer.pad_id, &self.model.device)
    }

    fn fwd(&self, adapters: bool, items: &[SeqItem]) -> Fwd {
        let dropout_seed = match (adapters, self.dropout_seed) {
            (true, Some(seed)) => {
                let mut h: u64 = seed;
                for it in items {
                    for b in it
                        .prompt
                        .bytes()
                        .chain([0])
                        .chain(it.response.bytes())
                        .chain([0])
                        .chain(
                            it.image
                                .as_ref()
                                .map(|p| p.to_string_lossy().into_owned())
                                .unwrap_or_default()
                                .into_bytes(),
                        )
                    {
                        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                    }
                }
                Some(h)
            }
            _ => None,
        };
        Fwd {
            adapters,
            dropout_seed,
        }
    }

    /// Per-sequence summed response log-probs `[n]` and the response token count.
    fn summed(&self, items: &[SeqItem], adapters: bool) -> Result<(Tensor, usize)> {
        let batch = self.batch(items)?;
        let fwd = self.fwd(adapters, items);
        let (s, n) = response_logprobs(self.model, &batch, &fwd)?;
        Ok((if adapters { s } else { s.detach() }, n))
    }

    /// The LoRA tensors with PEFT's in-memory names
    /// (`<module>.lora_A.default.weight`), sorted.
    pub fn lora_params(&self) -> Vec<(String, Var)> {
        self.model
            .lora_vars()
            .into_iter()
            .map(|(n, v)| (peft_memory_name(&n), v))
            .collect()
    }
}

/// Summed response log-probs `[B]` of a batch and the number of response
/// tokens, computing the LM head only where it is needed:
///
/// ```text
/// log π(y|x)_b = Σ_{t: mask[b,t]=1, t≥1} log softmax(lm_head(h[b, t−1]))[ids[b, t]]
/// ```
///
/// The same value as [`sequence_logprobs`] over the full logits, but the
/// `[rows, vocab]` head and its log-softmax (the largest tensors of a step
/// for a 32k vocabulary) run only on the response rows.
pub fn response_logprobs(model: &LlavaModel, batch: &Batch, fwd: &Fwd) -> Result<(Tensor, usize)> {
    let h = model.hidden_states(batch, fwd)?;
    let (b, l, hd) = h.dims3()?;
    let mask: Vec<Vec<f32>> = batch.response_mask.to_dtype(DType::F32)?.to_vec2()?;
    let ids: Vec<Vec<u32>> = batch.input_ids.to_dtype(DType::U32)?.to_vec2()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut seg = Vec::new();
    for i in 0..b {
        for t in 1..l {
            if mask[i][t] > 0.0 {
                rows.push((i * l + t - 1) as u32);
                targets.push(ids[i][t]);
                seg.push(i);
            }
        }
    }
    let n = rows.len();
    if n == 0 {
        // No response tokens anywhere: fall back to the full form (all zeros).
        let logits = model.decoder.logits(&h, fwd)?;
        let (_, s) = sequence_logprobs(&logits, &batch.input_ids, &batch.response_mask)?;
        return Ok((s, 0));
    }
    let dev = h.device();
    let hs = h
        .reshape((b * l, hd))?
        .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let logits = model.decoder.logits(&hs, fwd)?;
    let dt = match logits.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let lp =
        super::ops::log_softmax_gather(&logits.to_dtype(dt)?, &Tensor::from_vec(targets, n, dev)?)?;
    // Segment sum: [B, n] indicator times [n].
    let mut ind = vec![0f32; b * n];
    for (k, &i) in seg.iter().enumerate() {
        ind[i * n + k] = 1.0;
    }
    let ind = Tensor::from_vec(ind, (b, n), dev)?.to_dtype(dt)?;
    let s = ind.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?;
    Ok((s, n))
}

/// `<module>.lora_A.weight` → `<module>.lora_A.default.weight` (PEFT's name of
/// the parameter in memory, as in `reference.json`'s gradient norms).
pub fn peft_memory_name(name: &str) -> String {
    name.replace(".lora_A.weight", ".lora_A.default.weight")
        .replace(".lora_B.weight", ".lora_B.default.weight")
}

impl PreferencePolicy for LlavaPolicy<'_> {
    /// `log π(y|x) = Σ_t log p(y_t | x, y_<t)` over the response tokens and
    /// EOS (paper Eq. 1 / 13); adapters on = π_θ, off = π_ref (no graph).
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor> {
        let (s, _) = self.summed(items, adapters)?;
        Ok(s)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.lora_params()
    }
}

impl SftPolicy for LlavaPolicy<'_> {
    /// `Σ_i Σ_t −log p(y_t | x_i, y_<t)` over the response tokens and EOS.
    fn nll(&self, items: &[SeqItem]) -> Result<Nll> {
        let (s, tokens) = self.summed(items, true)?;
        Ok(Nll {
            sum: s.sum_all()?.neg()?,
            tokens,
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.lora_params()
    }
}

/// Convert pair records (read from `pair_file`) into trainer pairs, with the
/// images resolved under the pair file's folder. A missing image is an error
/// naming the file, the record (index and id) and the field.
pub fn preference_pairs(pair_file: &Path, records: &[PairRecord]) -> Result<Vec<PreferencePair>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let (ci, ri) = r
            .resolve_images(pair_file)
            .with_context(|| format!("{}: record {i} (id '{}')", pair_file.display(), r.id))?;
        for (field, p) in [("chosen_image", &ci), ("rejected_image", &ri)] {
            ensure!(
                p.is_file(),
                "{}: record {i} (id '{}'), field '{field}': image {} does not exist",
                pair_file.display(),
                r.id,
                p.display()
            );
        }
        out.push(PreferencePair {
            id: r.id.clone(),
            kind: r.kind.clone(),
            prompt: r.prompt.clone(),
            chosen: r.chosen.clone(),
            rejected: r.rejected.clone(),
            chosen_image: Some(ci),
            rejected_image: Some(ri),
            weight: r.weight,
        });
    }
    Ok(out)
}

/// Read a pair file (hdpo JSONL or the RULE layout) into trainer pairs.
pub fn read_preference_pairs(pair_file: &Path) -> Result<Vec<PreferencePair>> {
    let records = crate::data::pairs::read_pairs(pair_file)?;
    preference_pairs(pair_file, &records)
}

/// SFT examples from dataset samples: (question, answer, primary image).
/// Samples without an image are an error naming them.
pub fn sft_examples(samples: &[Sample]) -> Result<Vec<SftExample>> {
    samples
        .iter()
        .map(|s| {
            let image = s.images.first().with_context(|| {
                format!("sample '{}' ({}): field images is empty", s.id, s.dataset)
            })?;
            Ok(SftExample {
                id: s.id.clone(),
                item: SeqItem {
                    prompt: s.prompt(),
                    response: s.answer.clone(),
                    image: Some(image.clone()),
                },
            })
        })
        .collect()
}

/// What [`LlavaPolicy::check_pairs`] found.
#[derive(Clone, Debug, Default)]
pub struct PairCheck {
    /// Indices of the pairs that fit.
    pub kept: Vec<usize>,
    /// One message per pair that does not (record, id, side, lengths).
    pub too_long: Vec<String>,
}

impl LlavaPolicy<'_> {
    /// Tokenize both sides of every pair and report those that exceed the
    /// context length (for an up-front error or a counted skip).
    pub fn check_pairs(&self, what: &str, pairs: &[PreferencePair]) -> Result<PairCheck> {
        let mut c = PairCheck::default();
        for (i, p) in pairs.iter().enumerate() {
            let mut bad = None;
            for (field, item) in [("chosen", p.chosen_item()), ("rejected", p.rejected_item())] {
                if let Err(e) = self.encode(&item) {
                    bad = Some(format!(
                        "{what}: record {i} (id '{}'), field '{field}': {e:#}",
                        p.id
                    ));
                    break;
                }
            }
            match bad {
                Some(m) => c.too_long.push(m),
                None => c.kept.push(i),
            }
        }
        Ok(c)
    }
}

/// The answer type of a sample as `hdpo eval` reads it.
pub fn answer_type_name(t: AnswerType) -> &'static str {
    match t {
        AnswerType::Closed => "closed",
        AnswerType::Open => "open",
        AnswerType::Report => "report",
    }
}
