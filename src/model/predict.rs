//! `hdpo predict`: answer a dataset with greedy generation (KV cache, stop at
//! EOS) and write the rows `hdpo eval` reads:
//! `{"id", "question", "reference", "prediction", "answer_type"}`.
//!
//! [`predict_samples`] is the library entry point; [`predict_to_file`] adds
//! the atomic output and cheap resume: finished rows are appended to
//! `<out>.partial` as they are produced, a rerun skips the ids found there,
//! and the final file is written in sample order under a temporary name and
//! renamed into place.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::generate::GenerateOptions;
use super::llava::LlavaModel;
use super::policy::{answer_type_name, LlavaPolicy};
use super::template::{ChatTemplate, TextTokenizer};
use crate::data::image::Preprocess;
use crate::data::Sample;
use crate::util::fsio::atomic_write_with;

/// One answered sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    pub id: String,
    pub question: String,
    pub reference: String,
    pub prediction: String,
    /// `closed`, `open` or `report`.
    pub answer_type: String,
}

/// Prediction settings.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub max_new_tokens: usize,
    /// Apply the LoRA adapters (when the model has them).
    pub adapters: bool,
    /// Image preprocessing; `None`: the model's own ([`super::policy::model_preprocess`]).
    pub preprocess: Option<Preprocess>,
    /// Show a progress bar (stderr, when it is a terminal or `HDPO_PROGRESS=1`).
    pub progress: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            max_new_tokens: 64,
            adapters: true,
            preprocess: None,
            progress: false,
        }
    }
}

fn make_policy<'a>(
    model: &'a LlavaModel,
    tok: &'a TextTokenizer,
    template: ChatTemplate,
    opts: &PredictOptions,
) -> Result<LlavaPolicy<'a>> {
    let p = LlavaPolicy::new(model, tok, template)?;
    match &opts.preprocess {
        Some(pre) => p.with_preprocess(pre.clone()),
        None => Ok(p),
    }
}

fn predict_one(
    policy: &LlavaPolicy<'_>,
    s: &Sample,
    gen: &GenerateOptions,
) -> Result<PredictionRow> {
    let question = s.prompt();
    let image = s.images.first();
    let prompt = policy.encode_prompt(&question, image.is_some())?;
    let px = image.map(|p| policy.pixels(p)).transpose()?;
    let room = policy.max_len().saturating_sub(prompt.input_ids.len());
    let gen = GenerateOptions {
        max_new_tokens: gen.max_new_tokens.min(room),
        ..gen.clone()
    };
    let mut ids = if gen.max_new_tokens == 0 {
        Vec::new()
    } else {
        policy.model().generate(&prompt, px.as_ref(), &gen)?
    };
    if ids.last() == Some(&policy.tokenizer().eos_id) {
        ids.pop();
    }
    Ok(PredictionRow {
        id: s.id.clone(),
        question,
        reference: s.answer.clone(),
        prediction: policy.tokenizer().decode(&ids)?.trim().to_string(),
        answer_type: answer_type_name(s.answer_type).to_string(),
    })
}

fn gen_options(model: &LlavaModel, tok: &TextTokenizer, opts: &PredictOptions) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        temperature: 0.0,
        seed: 0,
        eos_token_id: Some(tok.eos_id),
        adapters: opts.adapters && !model.lora_vars().is_empty(),
    }
}

/// Answer `samples` with greedy generation under `template`, in order. The
/// prompt is the sample's question (reports: [`super::policy::REPORT_PROMPT`])
/// with its primary image; the EOS token is not part of the prediction.
pub fn predict_samples(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    samples: &[Sample],
    opts: &PredictOptions,
) -> Result<Vec<PredictionRow>> {
    let policy = make_policy(model, tok, template, opts)?;
    let gen = gen_options(model, tok, opts);
    let pb = bar(samples.len() as u64, opts.progress);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        out.push(predict_one(&policy, s, &gen).with_context(|| format!("sample '{}'", s.id))?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// What [`predict_to_file`] did.
#[derive(Clone, Debug, Serialize)]
pub struct PredictSummary {
    pub out: PathBuf,
    pub n: usize,
    /// Rows taken from an earlier, interrupted run.
    pub resumed: usize,
    pub seconds: f64,
}

/// The partial-results file of `out`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Rows of an interrupted run (a torn last line is dropped).
fn read_partial(path: &Path) -> Result<Vec<PredictionRow>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<PredictionRow>(l).ok())
        .collect())
}

/// [`predict_samples`] into the JSONL file `out`, atomically and resumably
/// (see the module docs). Sample ids must be unique.
pub fn predict_to_file(
    model: &LlavaModel,
    tok: &TextTokenizer,
    template: ChatTemplate,
    samples: &[Sample],
    opts: &PredictOptions,
    out: &Path,
) -> Result<PredictSummary> {
    let started = std::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    for s in samples {
        anyhow::ensure!(
            seen.insert(s.id.as_str()),
            "sample id '{}' occurs twice; predictions are keyed by id",
            s.id
        );
    }
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let part = partial_path(out);
    let mut done: HashMap<String, PredictionRow> = read_partial(&part)?
        .into_iter()
        .filter(|r| seen.contains(r.id.as_str()))
        .map(|r| (r.id.clone(), r))
        .collect();
    let resumed = done.len();
    // Rewrite the partial file with its whole rows only, then append.
    {
        let mut f = std::fs::File::create(&part)
            .with_context(|| format!("cannot write {}", part.display()))?;
        for r in done.values() {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot append to {}", part.display()))?;
    let policy = make_policy(model, tok, template, opts)?;
    let gen = gen_options(model, tok, opts);
    let todo: Vec<&Sample> = samples
        .iter()
        .filter(|s| !done.contains_key(&s.id))
        .collect();
    let pb = bar(samples.len() as u64, opts.progress);
    pb.set_position(resumed as u64);
    for s in todo {
        let row = predict_one(&policy, s, &gen).with_context(|| format!("sample '{}'", s.id))?;
        serde_json::to_writer(&mut f, &row)?;
        f.write_all(b"\n")?;
        f.flush()?;
        done.insert(row.id.clone(), row);
        pb.inc(1);
    }
    pb.finish_and_clear();
    drop(f);
    atomic_write_with(out, |w| {
        for s in samples {
            serde_json::to_writer(&mut *w, &done[&s.id])?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    let _ = std::fs::remove_file(&part);
    Ok(PredictSummary {
        out: out.to_path_buf(),
        n: samples.len(),
        resumed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn bar(len: u64, show: bool) -> indicatif::ProgressBar {
    if show {
        crate::util::progress::bar(len, "predict")
    } else {
        indicatif::ProgressBar::hidden()
    }
}
