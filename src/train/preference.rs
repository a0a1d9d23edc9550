//! Preference optimisation: DPO (paper Eq. 1) and HDPO (Eq. 13), with the
//! chosen and rejected sides free to carry different images.
//!
//! Each optimiser step takes `batch_size` pairs in the epoch's order and runs
//! them `micro_batch_size` at a time (policy log-probs with the adapters on,
//! loss, backward); the gradients of the micro-steps are summed and divided by
//! the number of pairs, i.e. they are the gradients of the mean loss over the
//! step's pairs. The reference log-probs are computed once per pair with the
//! adapters off and cached in the run folder (see [`super::refcache`]).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::PreferenceConfig;
use super::engine::{self, LoopSummary, Task};
use super::grads::{l2_norm, GradAccumulator};
use super::losses::{PairLogps, PreferenceLoss};
use super::metrics::{batch_metrics, PairStat};
use super::refcache::{self, RefLogps};
use super::{PreferencePair, PreferencePolicy, SeqItem};
use crate::util::fsio::write_json_atomic;

/// The summary of a preference run (also written to `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreferenceSummary {
    pub loss: String,
    pub alpha: f64,
    pub n_pairs: usize,
    #[serde(flatten)]
    pub run: LoopSummary,
}

/// Check the pairs before any work: non-empty, unique ids, finite weights ≥ 0.
pub fn validate_pairs(pairs: &[PreferencePair]) -> Result<()> {
    ensure!(
        !pairs.is_empty(),
        "there are no preference pairs to train on"
    );
    let mut seen = HashSet::new();
    for (i, p) in pairs.iter().enumerate() {
        ensure!(!p.id.is_empty(), "pair {i}: field id is empty");
        ensure!(
            seen.insert(p.id.as_str()),
            "pair {i} (id '{}'): field id repeats an earlier pair's id",
            p.id
        );
        ensure!(
            p.weight.is_finite() && p.weight >= 0.0,
            "pair {i} (id '{}'): field weight must be a finite number >= 0, got {}",
            p.id,
            p.weight
        );
    }
    let same = pairs
        .iter()
        .filter(|p| p.chosen == p.rejected && p.chosen_image == p.rejected_image)
        .count();
    if same > 0 {
        tracing::warn!("{same} pairs have identical chosen and rejected sides; they teach nothing");
    }
    Ok(())
}

/// The summed response log-probs of `pairs` (chosen then rejected, [2m]) with
/// the adapters on; a non-finite value is an error naming the pair and side.
fn policy_logps<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[(usize, &PreferencePair)],
) -> Result<Tensor> {
    let m = pairs.len();
    let mut items: Vec<SeqItem> = pairs.iter().map(|(_, p)| p.chosen_item()).collect();
    items.extend(pairs.iter().map(|(_, p)| p.rejected_item()));
    let ids: Vec<String> = pairs
        .iter()
        .map(|(i, p)| format!("{i} (id '{}')", p.id))
        .collect();
    let t = policy
        .logps(&items, true)
        .with_context(|| format!("policy log-probs of pairs {}", ids.join(", ")))?;
    ensure!(
        t.dims() == [2 * m],
        "the policy returned log-probs of shape {:?} for {} sequences",
        t.dims(),
        2 * m
    );
    let v: Vec<f64> = t.detach().to_dtype(DType::F64)?.to_vec1()?;
    for (k, x) in v.iter().enumerate() {
        if !x.is_finite() {
            let side = if k < m { "chosen" } else { "rejected" };
            bail!(
                "pair {}: the policy's log-prob of the {side} response is {x} (not finite)",
                ids[k % m]
            );
        }
    }
    Ok(t)
}

/// Loss inputs for `pairs` from the policy's log-probs `t` ([2m]) and their
/// reference values (`refs[k]` belongs to `pairs[k]`).
fn pair_logps(
    t: &Tensor,
    pairs: &[(usize, &PreferencePair)],
    refs: &[RefLogps],
) -> Result<PairLogps> {
    let m = pairs.len();
    ensure!(
        refs.len() == m,
        "{} reference values for {m} pairs",
        refs.len()
    );
    let (dt, dev) = (t.dtype(), t.device());
    let mk = |v: Vec<f64>| -> Result<Tensor> { Ok(Tensor::from_vec(v, m, dev)?.to_dtype(dt)?) };
    Ok(PairLogps {
        policy_chosen: t.narrow(0, 0, m)?,
        policy_rejected: t.narrow(0, m, m)?,
        ref_chosen: mk(refs.iter().map(|r| r.chosen).collect())?,
        ref_rejected: mk(refs.iter().map(|r| r.rejected).collect())?,
        weights: mk(pairs.iter().map(|(_, p)| p.weight).collect())?,
    })
}

fn pair_stats(
    out: &super::LossOutput,
    x: &PairLogps,
    pairs: &[(usize, &PreferencePair)],
) -> Result<Vec<PairStat>> {
    let f = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.detach().to_dtype(DType::F64)?.to_vec1()?) };
    let (rc, rr, pc, pr, l) = (
        f(&out.chosen_rewards)?,
        f(&out.rejected_rewards)?,
        f(&x.policy_chosen)?,
        f(&x.policy_rejected)?,
        f(&out.per_pair)?,
    );
    Ok(pairs
        .iter()
        .enumerate()
        .map(|(k, (_, p))| PairStat {
            kind: p.kind.clone(),
            chosen_reward: rc[k],
            rejected_reward: rr[k],
            policy_chosen: pc[k],
            policy_rejected: pr[k],
            loss: l[k],
        })
        .collect())
}

/// Forward and backward of some pairs; the gradients of the **sum** of their loss terms.
fn forward_backward<P: PreferencePolicy + ?Sized>(
    policy: &P,
    loss: &dyn PreferenceLoss,
    pairs: &[(usize, &PreferencePair)],
    refs: &[RefLogps],
) -> Result<(GradStore, Vec<PairStat>, Tensor)> {
    let t = policy_logps(policy, pairs)?;
    let aligned: Vec<RefLogps> = pairs.iter().map(|(i, _)| refs[*i]).collect();
    let x = pair_logps(&t, pairs, &aligned)?;
    let out = loss.loss(&x)?;
    let stats = pair_stats(&out, &x, pairs)?;
    let total = (&out.loss * pairs.len() as f64)?;
    let grads = total.backward()?;
    Ok((grads, stats, t.detach()))
}

struct PrefTask<'a, P: ?Sized> {
    policy: &'a P,
    pairs: &'a [PreferencePair],
    refs: Vec<RefLogps>,
    loss: &'a dyn PreferenceLoss,
}

#[derive(Default)]
struct PrefAcc {
    stats: Vec<PairStat>,
}

impl<P: PreferencePolicy + ?Sized> Task for PrefTask<'_, P> {
    type Acc = PrefAcc;

    fn n_items(&self) -> usize {
        self.pairs.len()
    }

    fn ids(&self) -> Vec<&str> {
        self.pairs.iter().map(|p| p.id.as_str()).collect()
    }

    fn micro_step(&self, idx: &[usize], acc: &mut PrefAcc) -> Result<GradStore> {
        let sel: Vec<(usize, &PreferencePair)> = idx.iter().map(|&i| (i, &self.pairs[i])).collect();
        let (grads, stats, _) = forward_backward(self.policy, self.loss, &sel, &self.refs)?;
        acc.stats.extend(stats);
        Ok(grads)
    }

    fn divisor(&self, acc: &PrefAcc) -> f64 {
        acc.stats.len() as f64
    }

    fn log_fields(&self, acc: &PrefAcc, elapsed_s: f64) -> Map<String, Value> {
        let mut m = batch_metrics(&acc.stats);
        if elapsed_s > 0.0 {
            m.insert(
                "pairs_per_s".into(),
                (acc.stats.len() as f64 / elapsed_s).into(),
            );
        }
        m
    }

    fn run_key(&self) -> Value {
        serde_json::json!({"loss": self.loss.name(), "alpha": self.loss.alpha()})
    }
}

/// Train `policy` on `pairs` with `loss` (DPO, HDPO, ...) and the loop and
/// optimiser settings of `config` (its `loss` and `alpha` fields are used by
/// [`train_from_config`]; here `loss` decides). Writes into `out_dir`:
/// `ref_logps.jsonl`, `train_log.jsonl`, `checkpoints/`, `trainable.safetensors`
/// and `summary.json`. With `config.run.resume` it continues from the latest
/// checkpoint and ends with exactly the parameters of an uninterrupted run.
pub fn train<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[PreferencePair],
    loss: &dyn PreferenceLoss,
    config: &PreferenceConfig,
    out_dir: &Path,
) -> Result<PreferenceSummary> {
    validate_pairs(pairs)?;
    config.run.validate()?;
    config.optim.validate()?;
    if !loss.uses_weights() && pairs.iter().any(|p| p.weight != 1.0) {
        tracing::info!("loss '{}' ignores the pairs' weights", loss.name());
    }
    // Refuse to overwrite a run before the (long) reference pass, not after it.
    if !config.run.resume {
        if let Some(dir) = super::checkpoint::latest(&out_dir.join(engine::CHECKPOINT_DIR))? {
            bail!(
                "{} already holds a checkpoint ({}); pass --resume to continue it or choose \
                 another output folder",
                out_dir.display(),
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the run folder {}", out_dir.display()))?;
    let refs = refcache::load_or_compute(policy, pairs, out_dir)?;
    let task = PrefTask {
        policy,
        pairs,
        refs,
        loss,
    };
    let run = engine::run(
        &task,
        policy.trainable(),
        &config.run,
        &config.optim,
        out_dir,
        loss.name(),
    )?;
    let summary = PreferenceSummary {
        loss: loss.name().into(),
        alpha: loss.alpha(),
        n_pairs: pairs.len(),
        run,
    };
    write_json_atomic(&out_dir.join("summary.json"), &summary)?;
    Ok(summary)
}

/// [`train`] with the loss named by `config.loss` and `config.alpha`.
pub fn train_from_config<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[PreferencePair],
    config: &PreferenceConfig,
    out_dir: &Path,
) -> Result<PreferenceSummary> {
    let loss = super::losses::Loss::new(config.loss, config.alpha)?;
    train(policy, pairs, &loss, config, out_dir)
}

/// One pair's numbers in a dry run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DryRunPair {
    pub id: String,
    pub kind: String,
    pub weight: f64,
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    pub h: f64,
}

/// The loss and the gradients of one batch made of all the given pairs.
#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    pub loss_name: String,
    pub alpha: f64,
    /// The loss of the batch (mean over the pairs).
    pub loss: f64,
    pub pairs: Vec<DryRunPair>,
    /// L2 norm of each trainable tensor's gradient, by the policy's names.
    pub grad_norms: BTreeMap<String, f64>,
    pub grad_norm_total: f64,
    /// The gradients themselves, by name (not serialised).
    #[serde(skip)]
    pub grads: Vec<(String, Tensor)>,
}

/// `--dry-run`: the loss and the gradients of one batch of all `pairs`
/// (computed one pair per micro-step and accumulated, so memory stays that of
/// one pair), without updating anything. Reference log-probs are computed
/// fresh with the adapters off.
pub fn dry_run<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[PreferencePair],
    loss: &dyn PreferenceLoss,
) -> Result<DryRun> {
    validate_pairs(pairs)?;
    let params = policy.trainable();
    ensure!(
        !params.is_empty(),
        "the policy reports no trainable tensors"
    );
    let refs = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| refcache::compute_one(policy, p, i))
        .collect::<Result<Vec<_>>>()?;
    let mut acc = GradAccumulator::new(&params);
    let mut out_pairs = Vec::with_capacity(pairs.len());
    let mut loss_sum = 0.0;
    for (i, p) in pairs.iter().enumerate() {
        let (grads, stats, t) = forward_backward(policy, loss, &[(i, p)], &refs)?;
        acc.add(grads)?;
        let v: Vec<f64> = t.to_dtype(DType::F64)?.to_vec1()?;
        let st = &stats[0];
        loss_sum += st.loss;
        out_pairs.push(DryRunPair {
            id: p.id.clone(),
            kind: p.kind.clone(),
            weight: p.weight,
            policy_chosen: v[0],
            policy_rejected: v[1],
            ref_chosen: refs[i].chosen,
            ref_rejected: refs[i].rejected,
            h: (v[0] - refs[i].chosen) - (v[1] - refs[i].rejected),
        });
    }
    let mean_loss = loss_sum / pairs.len() as f64;
    ensure!(
        mean_loss.is_finite(),
        "dry run: the loss is {mean_loss} (not finite); pair weights range over {:?}",
        pairs
            .iter()
            .map(|p| p.weight)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), w| (
                lo.min(w),
                hi.max(w)
            ))
    );
    let grads = acc.finish(1.0 / pairs.len() as f64)?;
    let mut grad_norms = BTreeMap::new();
    let mut sq = 0.0;
    let mut named = Vec::with_capacity(grads.len());
    for ((name, _), g) in params.iter().zip(grads) {
        let n = l2_norm(&g)?;
        sq += n * n;
        grad_norms.insert(name.clone(), n);
        named.push((name.clone(), g));
    }
    Ok(DryRun {
        loss_name: loss.name().into(),
        alpha: loss.alpha(),
        loss: mean_loss,
        pairs: out_pairs,
        grad_norms,
        grad_norm_total: sq.sqrt(),
        grads: named,
    })
}

/// Reward margin and accuracy of the policy on (held-out) pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub n_pairs: usize,
    /// TRL's metrics over all pairs (`rewards/margins`, `rewards/accuracies`, ...)
    /// and `by_kind`.
    pub metrics: Map<String, Value>,
}

impl EvalReport {
    /// Mean α·h over the pairs.
    pub fn margin(&self) -> f64 {
        self.metrics
            .get("rewards/margins")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }

    /// Share of pairs whose chosen reward beats the rejected one.
    pub fn accuracy(&self) -> f64 {
        self.metrics["rewards/accuracies"]
            .as_f64()
            .unwrap_or(f64::NAN)
    }
}

/// Evaluate `policy` on `pairs`: rewards (with `loss`'s α), margins, accuracy
/// and the loss, per kind too. Reference log-probs come from `refs` when given
/// (in pair order), else are computed with the adapters off.
pub fn evaluate<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[PreferencePair],
    loss: &dyn PreferenceLoss,
    refs: Option<&[RefLogps]>,
) -> Result<EvalReport> {
    validate_pairs(pairs)?;
    if let Some(r) = refs {
        ensure!(
            r.len() == pairs.len(),
            "{} reference log-probs for {} pairs",
            r.len(),
            pairs.len()
        );
    }
    let pb = crate::util::progress::bar(pairs.len() as u64, "evaluate");
    let mut stats = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let r = match refs {
            Some(r) => r[i],
            None => refcache::compute_one(policy, p, i)?,
        };
        let sel = [(i, p)];
        let t = policy_logps(policy, &sel)?.detach();
        let x = pair_logps(&t, &sel, &[r])?;
        let out = loss.loss(&x)?;
        stats.extend(pair_stats(&out, &x, &sel)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(EvalReport {
        n_pairs: pairs.len(),
        metrics: batch_metrics(&stats),
    })
}
