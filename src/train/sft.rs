//! Supervised fine-tuning: token-level NLL of the response tokens (the
//! end-of-sequence token counted), averaged over all response tokens of an
//! optimiser step (the micro-steps' summed NLL gradients are divided by the
//! step's token count), with the same loop as preference training.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::DType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::SftConfig;
use super::engine::{self, LoopSummary, Task};
use super::{SeqItem, SftExample, SftPolicy};
use crate::util::fsio::write_json_atomic;

/// The summary of an SFT run (also written to `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftSummary {
    pub n_examples: usize,
    #[serde(flatten)]
    pub run: LoopSummary,
}

fn validate(examples: &[SftExample]) -> Result<()> {
    ensure!(
        !examples.is_empty(),
        "there are no SFT examples to train on"
    );
    let mut seen = HashSet::new();
    for (i, e) in examples.iter().enumerate() {
        ensure!(
            seen.insert(e.id.as_str()),
            "example {i} (id '{}'): field id repeats an earlier example's id",
            e.id
        );
    }
    Ok(())
}

/// The NLL sum (f64) and the token count of some examples, with the graph kept.
fn nll_of<P: SftPolicy + ?Sized>(
    policy: &P,
    examples: &[&SftExample],
) -> Result<(super::Nll, f64)> {
    let items: Vec<SeqItem> = examples.iter().map(|e| e.item.clone()).collect();
    let ids: Vec<String> = examples.iter().map(|e| format!("'{}'", e.id)).collect();
    let nll = policy
        .nll(&items)
        .with_context(|| format!("NLL of examples {}", ids.join(", ")))?;
    ensure!(
        nll.sum.rank() == 0 || nll.sum.elem_count() == 1,
        "the policy's NLL must be a scalar, got shape {:?}",
        nll.sum.dims()
    );
    let v: f64 = nll
        .sum
        .detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?[0];
    ensure!(
        v.is_finite(),
        "examples {}: the NLL is {v} (not finite)",
        ids.join(", ")
    );
    ensure!(
        nll.tokens > 0,
        "examples {}: no response tokens to learn from",
        ids.join(", ")
    );
    Ok((nll, v))
}

struct SftTask<'a, P: ?Sized> {
    policy: &'a P,
    examples: &'a [SftExample],
}

#[derive(Default)]
struct SftAcc {
    nll: f64,
    tokens: usize,
    examples: usize,
}

impl<P: SftPolicy + ?Sized> Task for SftTask<'_, P> {
    type Acc = SftAcc;

    fn n_items(&self) -> usize {
        self.examples.len()
    }

    fn ids(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.id.as_str()).collect()
    }

    fn micro_step(&self, idx: &[usize], acc: &mut SftAcc) -> Result<GradStore> {
        let ex: Vec<&SftExample> = idx.iter().map(|&i| &self.examples[i]).collect();
        let (nll, v) = nll_of(self.policy, &ex)?;
        acc.nll += v;
        acc.tokens += nll.tokens;
        acc.examples += ex.len();
        Ok(nll.sum.sum_all()?.backward()?)
    }

    fn divisor(&self, acc: &SftAcc) -> f64 {
        acc.tokens as f64
    }

    fn log_fields(&self, acc: &SftAcc, elapsed_s: f64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("loss".into(), (acc.nll / acc.tokens.max(1) as f64).into());
        m.insert("tokens".into(), acc.tokens.into());
        m.insert("n_examples".into(), acc.examples.into());
        if elapsed_s > 0.0 {
            m.insert(
                "tokens_per_s".into(),
                (acc.tokens as f64 / elapsed_s).into(),
            );
        }
        m
    }

    fn run_key(&self) -> Value {
        serde_json::json!({"task": "sft"})
    }
}

/// Train `policy` on `examples`; outputs as in [`super::preference::train`]
/// (without the reference cache).
pub fn train<P: SftPolicy + ?Sized>(
    policy: &P,
    examples: &[SftExample],
    config: &SftConfig,
    out_dir: &Path,
) -> Result<SftSummary> {
    validate(examples)?;
    config.validate()?;
    let task = SftTask { policy, examples };
    let run = engine::run(
        &task,
        policy.trainable(),
        &config.run,
        &config.optim,
        out_dir,
        "sft",
    )?;
    let summary = SftSummary {
        n_examples: examples.len(),
        run,
    };
    write_json_atomic(&out_dir.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Mean NLL per response token of `policy` on (held-out) `examples`.
pub fn evaluate<P: SftPolicy + ?Sized>(policy: &P, examples: &[SftExample]) -> Result<f64> {
    validate(examples)?;
    let (mut s, mut n) = (0.0, 0usize);
    for e in examples {
        let (nll, v) = nll_of(policy, &[e])?;
        s += v;
        n += nll.tokens;
    }
    Ok(s / n as f64)
}
