//! Checkpoints: a folder `checkpoints/step-NNNNNNNN/` per saved optimiser step
//! with the trainable tensors (`trainable.safetensors`), the AdamW state
//! (`optimizer.safetensors`: `m.<name>`, `v.<name>`, step in the metadata) and
//! the loop's position (`trainer_state.json`). The folder is filled under a
//! temporary name and renamed into place, so a crash never leaves a
//! half-written checkpoint that `--resume` would pick up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::util::fsio::{atomic_write, write_json_atomic};

/// File names inside a checkpoint folder.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

/// Where the loop stands at a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version of this file.
    pub version: u32,
    /// Optimiser steps taken.
    pub step: u64,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Examples of this epoch's order already consumed.
    pub position: usize,
    /// Seed of the data order (epoch e is shuffled with `rng_for(seed, "epoch{e}")`;
    /// nothing else in the loop draws random numbers).
    pub seed: u64,
    /// Byte length of `train_log.jsonl` at this step; rows after it are dropped on resume.
    pub log_offset: u64,
    /// Number of examples and a hash of their ids, to refuse resuming on other data.
    pub n_items: usize,
    pub data_fingerprint: String,
    /// The settings that shape the run (batch, seed, schedule, loss, ...): resuming
    /// with different ones would not reproduce the uninterrupted run.
    pub run_key: serde_json::Value,
}

/// Serialise named tensors to safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let owned: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(owned, metadata)?)
}

/// Write the trainable tensors to `path` atomically.
pub fn save_trainable(path: &Path, params: &[(String, Var)]) -> Result<()> {
    let t: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    atomic_write(path, &safetensors_bytes(&t, None)?)
}

/// Set `params` from a safetensors file; every parameter must be present with
/// its shape and dtype, and the file may hold nothing else.
pub fn load_trainable(path: &Path, params: &[(String, Var)]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let dev = params
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let mut map = candle_core::safetensors::load_buffer(&bytes, &dev)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    for (n, v) in params {
        let Some(t) = map.remove(n) else {
            bail!("{}: no tensor '{n}'", path.display());
        };
        ensure!(
            t.dims() == v.dims() && t.dtype() == v.dtype(),
            "{}: tensor '{n}' is {:?} {:?}, expected {:?} {:?}",
            path.display(),
            t.dtype(),
            t.dims(),
            v.dtype(),
            v.dims()
        );
        v.set(&t)?;
    }
    if let Some(extra) = map.keys().next() {
        bail!(
            "{}: tensor '{extra}' matches no trainable tensor",
            path.display()
        );
    }
    Ok(())
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint for `state.step` under `root` and keep the newest `keep`.
pub fn save(root: &Path, opt: &AdamW, state: &TrainerState, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    save_trainable(&tmp.join(TRAINABLE_FILE), opt.params())?;
    let meta = HashMap::from([("step".to_string(), opt.step.to_string())]);
    atomic_write(
        &tmp.join(OPTIMIZER_FILE),
        &safetensors_bytes(&opt.state_tensors(), Some(meta))?,
    )?;
    write_json_atomic(&tmp.join(STATE_FILE), state)?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot move checkpoint into place at {}", dst.display()))?;
    // Prune: keep the `keep` newest step folders.
    let mut all = list(root)?;
    all.sort();
    let n = all.len();
    for (_, p) in all.into_iter().take(n.saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(&p)
            .with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
    }
    Ok(dst)
}

/// Complete checkpoint folders under `root` as (step, path).
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let Some(num) = name.to_str().and_then(|s| s.strip_prefix("step-")) else {
            continue;
        };
        let Ok(step) = num.parse::<u64>() else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            out.push((step, entry.path()));
        }
    }
    Ok(out)
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.into_iter().max().map(|(_, p)| p))
}

/// Restore the trainable tensors and the optimiser from `dir`; returns the loop state.
pub fn load(dir: &Path, opt: &mut AdamW) -> Result<TrainerState> {
    let sp = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&sp).with_context(|| format!("cannot read {}", sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid trainer state", sp.display()))?;
    ensure!(
        state.version == 1,
        "{}: unsupported version {}",
        sp.display(),
        state.version
    );
    load_trainable(&dir.join(TRAINABLE_FILE), opt.params())?;
    let op = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&op).with_context(|| format!("cannot read {}", op.display()))?;
    let dev = opt
        .params()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let map = candle_core::safetensors::load_buffer(&bytes, &dev)
        .with_context(|| format!("{} is not a valid safetensors file", op.display()))?;
    opt.load_state(map, state.step)
        .with_context(|| format!("while loading {}", op.display()))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::OptimConfig;
    use candle_core::Device;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            version: 1,
            step,
            epoch: 0,
            position: 4,
            seed: 1,
            log_offset: 0,
            n_items: 8,
            data_fingerprint: "x".into(),
            run_key: serde_json::json!({}),
        }
    }

    #[test]
    fn incomplete_folders_are_ignored_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let opt = AdamW::new(vec![("w".into(), p.clone())], &OptimConfig::default()).unwrap();
        for s in [2, 4, 6] {
            save(root, &opt, &state(s), 2).unwrap();
        }
        let steps: Vec<u64> = list(root).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps.len(), 2);
        // A crash mid-save leaves a temporary folder or one without its state file.
        std::fs::create_dir_all(root.join(".tmp-step-00000010")).unwrap();
        std::fs::create_dir_all(root.join("step-00000012")).unwrap();
        assert!(latest(root).unwrap().unwrap().ends_with("step-00000006"));
        // Loading restores the tensors; a corrupt state file is a clear error.
        p.set(&Tensor::new(&[9.0f32, 9.0], &Device::Cpu).unwrap())
            .unwrap();
        let mut opt2 = AdamW::new(vec![("w".into(), p.clone())], &OptimConfig::default()).unwrap();
        let st = load(&root.join("step-00000006"), &mut opt2).unwrap();
        assert_eq!(st, state(6));
        assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        std::fs::write(root.join("step-00000006").join(STATE_FILE), "{").unwrap();
        let e = load(&root.join("step-00000006"), &mut opt2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trainer_state.json"), "{e}");
        // A trainable file with the wrong shape names the tensor.
        let q = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let e = load_trainable(
            &root.join("step-00000004").join(TRAINABLE_FILE),
            &[("w".into(), q)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'w'"), "{e}");
    }
}
