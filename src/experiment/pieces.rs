//! The seams between the experiment and the stages it drives: the model as a
//! trainable policy (SFT and preference, paper Eq. 1 / 13), generation and
//! log-probs, the metrics, and curation. Each function is a few lines over
//! the crate's stage modules, so that swapping a stage touches only this file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Var;

use super::config::ExperimentConfig;
use super::report::{DatasetSpec, Task};
use crate::data::Sample;
use crate::encode::DualEncoder;
use crate::model::policy::LlavaPolicy;
use crate::model::{ChatTemplate, GenerateOptions, LlavaModel, TextTokenizer};
use crate::train::{Nll, PreferencePair, PreferencePolicy, SeqItem, SftExample, SftPolicy};

/// One dataset with its splits.
#[derive(Clone, Debug)]
pub struct DatasetData {
    pub spec: DatasetSpec,
    pub train: Vec<Sample>,
    pub test: Vec<Sample>,
    /// The dataset's folder (image paths in pair files are relative to it).
    pub root: PathBuf,
    /// DAug-style heatmap folder (`{id}_{class}.npy`), when there is one.
    pub heatmaps: Option<PathBuf>,
}

pub use crate::model::predict::PredictionRow;

/// A [`LlavaPolicy`] whose trainable tensors are every base weight (see
/// `tiny::make_trainable`), for the full-weight training that turns the
/// random tiny model into the base model.
pub struct FullWeights<'a> {
    pub inner: LlavaPolicy<'a>,
    pub vars: Vec<(String, Var)>,
}

impl SftPolicy for FullWeights<'_> {
    fn nll(&self, items: &[SeqItem]) -> Result<Nll> {
        self.inner.nll(items)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }
}

/// SFT examples ([`crate::model::policy::sft_examples`]) with ids qualified
/// by the dataset (`{dataset}:{id}`), since the experiment mixes datasets.
pub fn sft_examples(samples: &[Sample]) -> Result<Vec<SftExample>> {
    let mut examples = crate::model::policy::sft_examples(samples)?;
    for (e, s) in examples.iter_mut().zip(samples) {
        e.id = format!("{}:{}", s.dataset, s.id);
    }
    Ok(examples)
}

/// The last logged loss of the run in `dir`, `n/a` when there is none.
fn last_loss(dir: &Path) -> String {
    crate::train::metrics::read_log_rows(dir)
        .last()
        .and_then(|r| r.loss)
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
    let p = FullWeights {
        inner: LlavaPolicy::new(model, tok, template)?,
        vars,
    };
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
    let p = LlavaPolicy::new(model, tok, template)?;
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
    let p = LlavaPolicy::new(model, tok, template)?;
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
    let p = LlavaPolicy::new(model, tok, template)?;
    let prompt = p.encode_prompt(question, image.is_some())?;
    let px = image.map(|i| p.pixels(i)).transpose()?;
    let room = p.max_len().saturating_sub(prompt.input_ids.len());
    let max_new_tokens = max_new_tokens.min(room);
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
    let p = LlavaPolicy::new(model, tok, template)?;
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
            let q = s.prompt();
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

/// The METEOR scorer: METEOR 1.5 with the data folder of `hdpo eval
/// meteor-data` when given, else its exact + stem modules (no resource files).
pub fn meteor(data: Option<&Path>) -> Result<crate::eval::metrics::Meteor> {
    match data {
        Some(d) => crate::eval::metrics::Meteor::from_dir(d)
            .with_context(|| format!("eval.meteor_data {}", d.display())),
        None => Ok(crate::eval::metrics::Meteor::exact_stem()),
    }
}

/// The metrics of a dataset's predictions (`eval::metrics`). VQA: LLaVA-Med
/// open recall (`open`) and closed accuracy (`closed`), plus the strict
/// variants; reports (R2Gen IU-Xray cleaning): `meteor`, `bleu` (mean of
/// BLEU-1..4), `rouge_l`, `bleu_1`..`bleu_4`. A metric without rows (no open
/// question in a subset) is left out.
pub fn score(
    task: Task,
    rows: &[PredictionRow],
    meteor: &crate::eval::metrics::Meteor,
) -> Result<BTreeMap<String, f64>> {
    use crate::eval::metrics as m;
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.insert(k.to_string(), v);
        }
    };
    match task {
        Task::Vqa => {
            let vr: Vec<m::VqaRow> = rows
                .iter()
                .map(|r| m::VqaRow {
                    id: r.id.clone().into(),
                    reference: r.reference.clone(),
                    prediction: r.prediction.clone(),
                    answer_type: Some(r.answer_type.clone()),
                })
                .collect();
            let rep = m::score_vqa(&vr);
            put("open", rep.open.llava_med_open_recall);
            put("closed", rep.closed.llava_med_closed_acc);
            put("open_f1", rep.open.llava_med_open_f1);
            put("closed_exact", rep.closed.closed_exact_match);
        }
        Task::Report => {
            let rr: Vec<m::ReportRow> = rows
                .iter()
                .map(|r| m::ReportRow {
                    id: r.id.clone().into(),
                    reference: r.reference.clone(),
                    prediction: r.prediction.clone(),
                })
                .collect();
            let s = m::score_reports(&rr, m::Cleaner::IuXray, None, meteor);
            let x = &s.metrics;
            put("meteor", Some(x.METEOR));
            put("bleu", Some(x.BLEU_avg));
            put("rouge_l", Some(x.ROUGE_L));
            put("bleu_1", Some(x.BLEU_1));
            put("bleu_2", Some(x.BLEU_2));
            put("bleu_3", Some(x.BLEU_3));
            put("bleu_4", Some(x.BLEU_4));
        }
    }
    Ok(out)
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
        // On the phantom, how often k* names the lesion (its ground truth:
        // the abnormal studies of the report dataset).
        if d.root.join("phantom.json").is_file() {
            let truth = crate::curate::audit::phantom_keyword_truth(&d.root)?;
            let audit = crate::curate::audit::audit_keywords(
                &crate::data::pairs::read_pairs(&out)?,
                &truth,
                &ccfg.vocab,
                source,
                &d.spec.label,
            );
            // VQA samples are questions, not studies: nothing to audit there.
            if audit.studies > 0 {
                crate::util::fsio::write_json_atomic(
                    &dir.join(format!("{}.{AUDIT_SUFFIX}", slug(&d.spec.label))),
                    &audit,
                )?;
            }
        }
    }
    Ok(())
}

/// File-name suffix of the k* audits next to the curated pairs.
const AUDIT_SUFFIX: &str = "keyword_audit.json";

/// The k* audits of every heatmap source curated under `pairs_dir`
/// (`pairs/hdpo-<source>/<dataset>.keyword_audit.json`), sorted by source
/// and dataset.
pub fn read_keyword_audits(pairs_dir: &Path) -> Result<Vec<crate::curate::audit::KeywordAudit>> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(pairs_dir) else {
        return Ok(out);
    };
    for d in dirs.filter_map(|e| e.ok().map(|e| e.path())) {
        let Ok(files) = std::fs::read_dir(&d) else {
            continue;
        };
        for f in files.filter_map(|e| e.ok().map(|e| e.path())) {
            if f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(AUDIT_SUFFIX))
            {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                out.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("{}: not a k* audit", f.display()))?,
                );
            }
        }
    }
    out.sort_by(|a: &crate::curate::audit::KeywordAudit, b| {
        (&a.heatmaps, &a.dataset).cmp(&(&b.heatmaps, &b.dataset))
    });
    Ok(out)
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
