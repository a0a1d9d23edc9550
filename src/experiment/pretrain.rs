//! The pretraining data of the phantom base model: a phantom of its own,
//! separate from the training split that curation, SFT and preference
//! training use, so the base model can learn to see lesions from many studies
//! while the later stages keep their sizes (docs/experiments.md, "Choosing the
//! phantom base model").
//!
//! With `model.pretrain_studies = N > 0` and phantom data, N studies are
//! generated into `<run>/data/pretrain` with their own seed (drawn from the
//! run's seed, so they never repeat a training or test study) and both of
//! their datasets (VQA and reports) become the pretraining examples. With
//! `N = 0`, or with datasets on disk, the base model pretrains on the
//! training split.

use std::path::Path;

use anyhow::{Context, Result};
use rand::Rng;

use super::config::ExperimentConfig;
use crate::data::phantom::PhantomConfig;
use crate::data::{DatasetFormat, Sample, Split};
use crate::util::fsio::atomic_write;
use crate::util::seed::rng_for;

/// The generator config of the pretraining phantom of `cfg` (`None` when the
/// base model pretrains on the training split).
pub fn phantom_config(cfg: &ExperimentConfig) -> Option<PhantomConfig> {
    if cfg.data.source != "phantom" || cfg.model.pretrain_studies == 0 || cfg.model.path.is_some() {
        return None;
    }
    Some(PhantomConfig {
        seed: rng_for(cfg.seed, "phantom/pretrain-seed").random(),
        train: cfg.model.pretrain_studies,
        val: 0,
        test: 0,
        size: cfg.data.size,
        subtle_threshold: cfg.data.subtle_threshold,
        ..Default::default()
    })
}

/// The samples the base model pretrains on: the pretraining phantom's (made
/// under `run_dir/data/pretrain` when missing or made with another config),
/// or `train` when the config has none.
pub fn samples(cfg: &ExperimentConfig, run_dir: &Path, train: &[Sample]) -> Result<Vec<Sample>> {
    let Some(pcfg) = phantom_config(cfg) else {
        return Ok(train.to_vec());
    };
    let dir = run_dir.join("data").join("pretrain");
    let marker = dir.join(".hdpo-experiment-phantom");
    let wanted = serde_json::to_string(&pcfg)?;
    let same = std::fs::read_to_string(&marker).is_ok_and(|s| s == wanted);
    if !(same && dir.join("phantom.json").is_file()) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        crate::data::phantom::generate(&pcfg, &dir)
            .with_context(|| format!("generating the pretraining phantom in {}", dir.display()))?;
        atomic_write(&marker, wanted.as_bytes())?;
    }
    let opts = crate::data::load::LoadOptions::default();
    let mut out = Vec::new();
    for format in [DatasetFormat::Phantom, DatasetFormat::PhantomReport] {
        let loaded = crate::data::load::load(format, &dir, &opts)
            .with_context(|| format!("the pretraining phantom {}", dir.display()))?;
        out.extend(
            loaded
                .samples
                .into_iter()
                .filter(|s| s.split == Split::Train),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretraining_phantom_is_separate_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ExperimentConfig::phantom();
        cfg.model.pretrain_studies = 0;
        assert!(phantom_config(&cfg).is_none());
        let train: Vec<Sample> = Vec::new();
        assert!(samples(&cfg, dir.path(), &train).unwrap().is_empty());

        cfg.model.pretrain_studies = 4;
        let p = phantom_config(&cfg).unwrap();
        assert_ne!(
            p.seed, cfg.seed,
            "the pretraining studies have their own seed"
        );
        assert_eq!((p.train, p.val, p.test), (4, 0, 0));
        let s = samples(&cfg, dir.path(), &train).unwrap();
        let reports = s.iter().filter(|s| s.question.is_none()).count();
        assert_eq!(reports, 4, "one report per study");
        assert!(s.len() > 4 * 4, "VQA questions too: {}", s.len());
        // Reused as is, then remade when the config changes.
        let stamp = |d: &Path| {
            std::fs::metadata(d.join("phantom.json"))
                .unwrap()
                .modified()
                .unwrap()
        };
        let t0 = stamp(&dir.path().join("data/pretrain"));
        assert_eq!(samples(&cfg, dir.path(), &train).unwrap().len(), s.len());
        assert_eq!(stamp(&dir.path().join("data/pretrain")), t0);
        cfg.model.pretrain_studies = 5;
        let reports = samples(&cfg, dir.path(), &train)
            .unwrap()
            .iter()
            .filter(|s| s.question.is_none())
            .count();
        assert_eq!(reports, 5);
    }
}
