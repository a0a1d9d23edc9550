//! The loop shared by SFT and preference training: epochs, a deterministic
//! data order, micro-steps with gradient accumulation, clipping, AdamW with
//! the schedule, the JSONL log, checkpoints and exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::Var;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, TrainerState};
use super::config::{OptimConfig, RunConfig};
use super::grads::{clip_global_norm, global_norm, GradAccumulator};
use super::metrics::{progress_message, TrainLog};
use super::optim::AdamW;
use super::schedule::Schedule;
use crate::util::seed::rng_for;

pub use super::metrics::LOG_FILE;

/// The checkpoints' folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The final trainable tensors inside a run folder.
pub const FINAL_FILE: &str = "trainable.safetensors";

/// One task (SFT or preference) as the loop sees it.
pub(crate) trait Task {
    /// Per-optimiser-step statistics collected over its micro-steps.
    type Acc: Default;
    fn n_items(&self) -> usize;
    /// The ids of the examples (for the data fingerprint).
    fn ids(&self) -> Vec<&str>;
    /// Forward and backward of the examples `idx`: the returned gradients are
    /// those of the **sum** of the examples' loss terms.
    fn micro_step(&self, idx: &[usize], acc: &mut Self::Acc) -> Result<GradStore>;
    /// The divisor that turns the summed gradients into those of the step's loss.
    fn divisor(&self, acc: &Self::Acc) -> f64;
    /// The task's log fields of one step.
    fn log_fields(&self, acc: &Self::Acc, elapsed_s: f64) -> Map<String, Value>;
    /// Settings of the task that shape the run (compared on resume).
    fn run_key(&self) -> Value;
}

/// The order of the examples in epoch `epoch`: a function of (seed, epoch) only.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = rng_for(seed, &format!("epoch{epoch}"));
        order.shuffle(&mut rng);
    }
    order
}

/// What a finished (or halted) run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopSummary {
    /// Optimiser steps taken in total (including those before a resume).
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: usize,
    /// The step the run resumed from, if it did.
    pub resumed_from_step: Option<u64>,
    /// True when `halt_after_steps` stopped the run early.
    pub halted: bool,
    /// The last logged row.
    pub last: Option<Map<String, Value>>,
    /// Seconds spent in this process.
    pub elapsed_s: f64,
    /// Peak resident memory (`VmHWM`) in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The final trainable tensors (absent when halted).
    pub trainable_path: Option<PathBuf>,
}

fn data_fingerprint(ids: &[&str]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run_key<T: Task>(task: &T, run: &RunConfig, optim: &OptimConfig) -> Value {
    serde_json::json!({
        "batch_size": run.batch_size,
        "micro_batch_size": run.micro_batch_size,
        "epochs": run.epochs,
        "seed": run.seed,
        "shuffle": run.shuffle,
        "optim": optim,
        "task": task.run_key(),
    })
}

/// Run the loop. `params` are the policy's trainable tensors.
pub(crate) fn run<T: Task>(
    task: &T,
    params: Vec<(String, Var)>,
    run: &RunConfig,
    optim: &OptimConfig,
    out_dir: &Path,
    label: &str,
) -> Result<LoopSummary> {
    run.validate()?;
    optim.validate()?;
    let started = Instant::now();
    let n = task.n_items();
    ensure!(n > 0, "there are no examples to train on");
    ensure!(
        !params.is_empty(),
        "the policy reports no trainable tensors"
    );
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the run folder {}", out_dir.display()))?;
    let steps_per_epoch = n.div_ceil(run.batch_size);
    let total_steps = steps_per_epoch * run.epochs;
    let schedule = Schedule::new(optim, total_steps);
    let mut opt = AdamW::new(params.clone(), optim)?;
    let fingerprint = data_fingerprint(&task.ids());
    let key = run_key(task, run, optim);
    let ck_root = out_dir.join(CHECKPOINT_DIR);
    let log_path = out_dir.join(LOG_FILE);

    let (mut epoch, mut pos, mut step, mut log, resumed_from_step) = if run.resume {
        match checkpoint::latest(&ck_root)? {
            Some(dir) => {
                let st = checkpoint::load(&dir, &mut opt)
                    .with_context(|| format!("cannot resume from {}", dir.display()))?;
                ensure!(
                    st.n_items == n && st.data_fingerprint == fingerprint,
                    "{}: the checkpoint was written for other data ({} examples, fingerprint {}); \
                     this run has {n} examples (fingerprint {fingerprint})",
                    dir.display(),
                    st.n_items,
                    st.data_fingerprint
                );
                if st.run_key != key {
                    bail!(
                        "{}: the checkpoint was written with other settings, so resuming would \
                         not reproduce the run.\n checkpoint: {}\n now:        {}",
                        dir.display(),
                        st.run_key,
                        key
                    );
                }
                let log = TrainLog::open(&log_path, st.log_offset)?;
                tracing::info!("resuming {label} from {} (step {})", dir.display(), st.step);
                (st.epoch, st.position, st.step, log, Some(st.step))
            }
            None => {
                tracing::info!("no checkpoint in {}; starting afresh", ck_root.display());
                (0, 0, 0, TrainLog::open(&log_path, 0)?, None)
            }
        }
    } else {
        if let Some(dir) = checkpoint::latest(&ck_root)? {
            bail!(
                "{} already holds a checkpoint ({}); pass --resume to continue it or choose \
                 another output folder",
                out_dir.display(),
                dir.display()
            );
        }
        (0, 0, 0, TrainLog::open(&log_path, 0)?, None)
    };

    let pb = crate::util::progress::bar(total_steps as u64, label);
    pb.set_position(step);
    let mut last: Option<Map<String, Value>> = None;
    let mut halted = false;
    let save = |opt: &AdamW, step: u64, epoch: usize, pos: usize, log: &TrainLog| {
        let st = TrainerState {
            version: 1,
            step,
            epoch,
            position: pos,
            seed: run.seed,
            log_offset: log.len(),
            n_items: n,
            data_fingerprint: fingerprint.clone(),
            run_key: key.clone(),
        };
        checkpoint::save(&ck_root, opt, &st, run.keep_checkpoints)
    };

    'outer: while epoch < run.epochs {
        let order = epoch_order(n, run.seed, epoch, run.shuffle);
        while pos < n {
            let step_started = Instant::now();
            let end = (pos + run.batch_size).min(n);
            let batch = &order[pos..end];
            let mut acc = GradAccumulator::new(&params);
            let mut stats = T::Acc::default();
            for micro in batch.chunks(run.micro_batch_size) {
                let store = task
                    .micro_step(micro, &mut stats)
                    .with_context(|| format!("optimiser step {} (epoch {epoch})", step + 1))?;
                acc.add(store)?;
            }
            let div = task.divisor(&stats);
            ensure!(div > 0.0, "step {}: nothing to average over", step + 1);
            let mut grads = acc.finish(1.0 / div)?;
            let norm = match optim.max_grad_norm {
                Some(m) => clip_global_norm(&mut grads, m),
                None => global_norm(&grads),
            }
            .with_context(|| format!("optimiser step {}", step + 1))?;
            ensure!(
                norm.is_finite(),
                "step {}: gradient norm is {norm}",
                step + 1
            );
            let lr = schedule.lr(step as usize);
            opt.step(&grads, lr)?;
            drop(grads);
            step += 1;
            pos = end;

            let mut row = Map::new();
            row.insert("step".into(), step.into());
            row.insert(
                "epoch".into(),
                (epoch as f64 + pos as f64 / n as f64).into(),
            );
            row.insert("learning_rate".into(), lr.into());
            row.insert("grad_norm".into(), norm.into());
            row.extend(task.log_fields(&stats, step_started.elapsed().as_secs_f64()));
            // JSON has no NaN: a non-finite loss arrives here as null. Stop before it is
            // logged or checkpointed, naming the step.
            if let Some(l) = row.get("loss") {
                ensure!(
                    l.as_f64().is_some_and(f64::is_finite),
                    "optimiser step {step} (epoch {epoch}): the loss is not finite (NaN or \
                     infinite); check the pair weights and the model's weights for NaN, and \
                     lower the learning rate"
                );
            }
            log.append(&row)?;
            pb.set_message(progress_message(&row));
            pb.inc(1);
            last = Some(row);

            if run.checkpoint_every > 0 && step % run.checkpoint_every as u64 == 0 {
                save(&opt, step, epoch, pos, &log)?;
            }
            if run.halt_after_steps.is_some_and(|h| step >= h as u64) {
                halted = true;
                break 'outer;
            }
        }
        epoch += 1;
        pos = 0;
    }
    pb.finish_and_clear();

    let trainable_path = if halted {
        None
    } else {
        // The final state as a checkpoint too, so that resuming a finished run is a no-op.
        if checkpoint::latest(&ck_root)?.map(|p| p.ends_with(format!("step-{step:08}")))
            != Some(true)
        {
            save(&opt, step, run.epochs, 0, &log)?;
        }
        let p = out_dir.join(FINAL_FILE);
        checkpoint::save_trainable(&p, &params)?;
        Some(p)
    };
    Ok(LoopSummary {
        steps: step,
        total_steps: total_steps as u64,
        epochs: run.epochs,
        resumed_from_step,
        halted,
        last,
        elapsed_s: started.elapsed().as_secs_f64(),
        peak_rss_bytes: super::peak_rss_bytes(),
        trainable_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_order_is_a_function_of_seed_and_epoch() {
        let a = epoch_order(20, 5, 1, true);
        assert_eq!(a, epoch_order(20, 5, 1, true));
        assert_ne!(a, epoch_order(20, 5, 2, true));
        assert_ne!(a, epoch_order(20, 6, 1, true));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..20).collect::<Vec<_>>());
        assert_eq!(epoch_order(4, 5, 1, false), vec![0, 1, 2, 3]);
        assert_ne!(
            data_fingerprint(&["a", "bc"]),
            data_fingerprint(&["ab", "c"])
        );
    }
}
