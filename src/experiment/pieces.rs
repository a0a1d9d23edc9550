//! The seams between the experiment and the stages it drives: the model as a
//! trainable policy (SFT and preference, paper Eq. 1 / 13), generation and
//! log-probs, the metrics, and curation. Each function is a few lines over
//! the crate's stage modules, so that swapping a stage touches only this file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};

use super::config::ExperimentConfig;
use super::pipeline::DatasetData;
use super::report::Task;
use crate::data::Sample;
use crate::encode::DualEncoder;
use crate::model::{Batch, ChatTemplate, GenerateOptions, LlavaModel, TextTokenizer};
use crate::train::{Nll, PreferencePair, PreferencePolicy, SeqItem, SftExample, SftPolicy};

/// One answered test sample.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictionRow {
    pub id: String,
    pub question: String,
    pub reference: String,
    pub prediction: String,
    /// `closed`, `open` or `report`.
    pub answer_type: String,
}

/// The model with its tokenizer and template as a trainable policy. The
/// trainable tensors are the LoRA adapters, or `full` (every base weight,
/// see `tiny::make_trainable`) for the base model's pretraining.
pub struct Policy<'a> {
    pub model: &'a LlavaModel,
    pub tok: &'a TextTokenizer,
    pub template: ChatTemplate,
    pub full: Option<Vec<(String, Var)>>,
    cache: Mutex<HashMap<PathBuf, Tensor>>,
}

impl<'a> Policy<'a> {
    pub fn new(model: &'a LlavaModel, tok: &'a TextTokenizer, template: ChatTemplate) -> Self {
        Policy {
            model,
            tok,
            template,
            full: None,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// CLIP pixel values of an image (cached by path).
    pub fn pixels(&self, path: &Path) -> Result<Tensor> {
        if let Some(t) = self.cache.lock().ok().and_then(|c| c.get(path).cloned()) {
            return Ok(t);
        }
        let (mean, std) = crate::model::image::normalisation(&self.model.dir);
        let t = crate::model::image::load_clip_pixels(
            path,
            self.model.vision.cfg.image_size,
            mean,
            std,
            &self.model.device,
        )?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() < 4096 {
                c.insert(path.to_path_buf(), t.clone());
            }
        }
        Ok(t)
    }

    /// The batch of `items` (prompt + response + EOS, response mask).
    pub fn batch(&self, items: &[SeqItem]) -> Result<Batch> {
        let n_img = self.model.image_token_count();
        let mut seqs = Vec::with_capacity(items.len());
        let mut imgs = Vec::with_capacity(items.len());
        for it in items {
            let k = if it.image.is_some() { n_img } else { 0 };
            seqs.push(
                self.tok
                    .encode_pair(self.template, &it.prompt, &it.response, k)?,
            );
            imgs.push(it.image.as_deref().map(|p| self.pixels(p)).transpose()?);
        }
        Batch::new(&seqs, &imgs, self.tok.pad_id, &self.model.device)
    }

    fn summed(&self, items: &[SeqItem], adapters: bool) -> Result<(Tensor, Tensor)> {
        let b = self.batch(items)?;
        let logits = self.model.forward(&b, adapters)?;
        crate::model::sequence_logprobs(&logits, &b.input_ids, &b.response_mask)
    }
}

impl PreferencePolicy for Policy<'_> {
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor> {
        Ok(self.summed(items, adapters)?.1)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.full.clone().unwrap_or_else(|| self.model.lora_vars())
    }
}

impl SftPolicy for Policy<'_> {
    fn nll(&self, items: &[SeqItem]) -> Result<Nll> {
        let b = self.batch(items)?;
        let logits = self.model.forward(&b, true)?;
        let (_, summed) = crate::model::sequence_logprobs(&logits, &b.input_ids, &b.response_mask)?;
        let tokens = b.response_mask.sum_all()?.to_scalar::<f32>()? as usize;
        Ok(Nll {
            sum: summed.sum_all()?.neg()?,
            tokens,
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        PreferencePolicy::trainable(self)
    }
}

/// SFT examples (question or report prompt, answer, primary image).
pub fn sft_examples(samples: &[Sample]) -> Result<Vec<SftExample>> {
    samples
        .iter()
        .map(|s| {
            Ok(SftExample {
                id: format!("{}:{}", s.dataset, s.id),
                item: SeqItem {
                    prompt: super::baselines::common::prompt_of(s),
                    response: s.answer.clone(),
                    image: Some(super::baselines::common::image_of(s)?.to_path_buf()),
                },
            })
        })
        .collect()
}

fn last_loss(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .and_then(|v| v.get("loss").and_then(|x| x.as_f64()))
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "n/a".into())
}

/// Full-weight training of the base model (`vars` from `tiny::make_trainable`).
pub fn train_full(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    vars: Vec<(String, Var)>,
    examples: &[SftExample],
    cfg: &crate::train::SftConfig,
    out: &Path,
) -> Result<String> {
    let mut p = Policy::new(model, tok, template);
    p.full = Some(vars);
    crate::train::sft::train(&p, examples, cfg, out)?;
    Ok(last_loss(out))
}

/// LoRA SFT.
pub fn train_sft(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    examples: &[SftExample],
    cfg: &crate::train::SftConfig,
    out: &Path,
) -> Result<String> {
    let p = Policy::new(model, tok, template);
    crate::train::sft::train(&p, examples, cfg, out)?;
    Ok(last_loss(out))
}

/// LoRA preference training with the loss `cfg.loss` (DPO, Eq. 1; HDPO, Eq. 13).
pub fn train_preference(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    pairs: &[PreferencePair],
    cfg: &crate::train::PreferenceConfig,
    out: &Path,
) -> Result<()> {
    let p = Policy::new(model, tok, template);
    crate::train::preference::train_from_config(&p, pairs, cfg, out)?;
    Ok(())
}

/// Generate an answer (greedy at temperature 0), EOS dropped, word-level output tidied.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    question: &str,
    image: Option<&Path>,
    temperature: f64,
    seed: u64,
    max_new_tokens: usize,
) -> Result<String> {
    let p = Policy::new(model, tok, template);
    let n_img = if image.is_some() {
        model.image_token_count()
    } else {
        0
    };
    let prompt = tok.encode_prompt(template, question, n_img)?;
    let px = image.map(|i| p.pixels(i)).transpose()?;
    let opts = GenerateOptions {
        max_new_tokens,
        temperature,
        seed,
        eos_token_id: Some(tok.eos_id),
        adapters: !model.lora_vars().is_empty(),
    };
    let mut ids = model.generate(&prompt, px.as_ref(), &opts)?;
    if ids.last() == Some(&tok.eos_id) {
        ids.pop();
    }
    Ok(super::tiny::tidy(&tok.decode(&ids)?))
}

/// log π(response | prompt, image) under the policy (adapters on when present).
pub fn logp(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    item: &SeqItem,
) -> Result<f64> {
    let p = Policy::new(model, tok, template);
    let adapters = !model.lora_vars().is_empty();
    let t = p.logps(std::slice::from_ref(item), adapters)?;
    Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?[0])
}

/// Greedy answers to `samples` in order.
pub fn predict(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    samples: &[Sample],
    max_new_tokens: usize,
) -> Result<Vec<PredictionRow>> {
    samples
        .iter()
        .map(|s| {
            let q = super::baselines::common::prompt_of(s);
            let prediction = generate(
                model,
                tok,
                template,
                &q,
                s.images.first().map(PathBuf::as_path),
                0.0,
                0,
                max_new_tokens,
            )
            .with_context(|| format!("predicting sample '{}' ({})", s.id, s.dataset))?;
            Ok(PredictionRow {
                id: s.id.clone(),
                question: q,
                reference: s.answer.clone(),
                prediction,
                answer_type: match s.answer_type {
                    crate::data::AnswerType::Closed => "closed",
                    crate::data::AnswerType::Open => "open",
                    crate::data::AnswerType::Report => "report",
                }
                .into(),
            })
        })
        .collect()
}

/// The metrics of a dataset's predictions (Table 1's columns and more).
pub fn score(
    task: Task,
    rows: &[PredictionRow],
    _test: &[Sample],
) -> Result<BTreeMap<String, f64>> {
    let _ = (task, rows);
    anyhow::bail!("metrics are not wired yet (waiting for eval::metrics)")
}

/// Curate HDPO pairs (paper 3.1-3.2, Eq. 3-12) with `curate::run` into
/// `dir`: one pair file per dataset (`<dataset>.jsonl`), each with the
/// dataset's own root and heatmap folder; `source` is `file`, `mask`,
/// `gradcam` or `attention`.
pub fn curate(
    cfg: &ExperimentConfig,
    datasets: &[DatasetData],
    encoder: &Arc<DualEncoder>,
    source: &str,
    dir: &Path,
) -> Result<()> {
    for d in datasets {
        let spec = match (source, &d.heatmaps) {
            ("file", Some(h)) => format!("file:{}", h.display()),
            ("file", None) => anyhow::bail!(
                "dataset '{}' has no heatmap folder for the `file` heatmap source (set data.datasets.heatmaps)",
                d.spec.label
            ),
            (other, _) => other.to_string(),
        };
        let heatmaps = crate::curate::run::heatmap_source_from_spec(&spec, &d.root, encoder)?;
        let ccfg = crate::curate::CurateConfig {
            lambda: cfg.curation.lambda,
            seed: cfg.seed,
            data_root: Some(d.root.clone()),
            ..Default::default()
        };
        let out = dir.join(format!("{}.jsonl", slug(&d.spec.label)));
        let summary = crate::curate::run(&ccfg, &d.train, encoder, heatmaps.as_ref(), &out)
            .with_context(|| {
                format!(
                    "curating dataset '{}' with heatmap source {source}",
                    d.spec.label
                )
            })?;
        crate::util::fsio::write_json_atomic(
            &dir.join(format!("{}.summary.json", slug(&d.spec.label))),
            &summary,
        )?;
    }
    Ok(())
}

/// A file-name-safe form of a label.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The pairs [`curate`] wrote into `dir` (every `*.jsonl`, sorted), images
/// resolved under the pair file's folder.
pub fn read_curated(dir: &Path) -> Result<Vec<PreferencePair>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(crate::model::policy::read_preference_pairs(&f)?);
    }
    Ok(out)
}
