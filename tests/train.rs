//! Trainer tests: losses against the PyTorch/TRL fixture, gradient
//! accumulation, λ-equivalence, exact resume, gradients, held-out gains and
//! bad input, on the toy policy (`hdpo::train::toy`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use hdpo::train::config::{OptimConfig, PreferenceConfig, RunConfig, ScheduleKind, SftConfig};
use hdpo::train::losses::{self, log_sigmoid, PairLogps};
use hdpo::train::toy::ToyPolicy;
use hdpo::train::{
    preference, sft, PreferencePair, PreferencePolicy, SeqItem, SftExample, SftPolicy,
};
use serde_json::Value;

mod common;
use common::{
    tiny_llava_reference as reference_tensors, tiny_llava_reference_json as reference_json,
};

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Sequences are pair0.chosen, pair0.rejected, pair1.chosen, pair1.rejected.
fn split(t: &Tensor) -> (Tensor, Tensor) {
    let idx_c = Tensor::new(&[0u32, 2], t.device()).unwrap();
    let idx_r = Tensor::new(&[1u32, 3], t.device()).unwrap();
    (
        t.index_select(&idx_c, 0).unwrap(),
        t.index_select(&idx_r, 0).unwrap(),
    )
}

fn fixture_logps(policy: &Tensor, reference: &Tensor, weights: &Tensor) -> PairLogps {
    let (pc, pr) = split(policy);
    let (rc, rr) = split(reference);
    PairLogps {
        policy_chosen: pc,
        policy_rejected: pr,
        ref_chosen: rc,
        ref_rejected: rr,
        weights: weights.clone(),
    }
}

#[test]
fn losses_match_the_trl_fixture_in_f32() {
    let j = reference_json();
    let t = reference_tensors();
    let beta = j["beta"].as_f64().unwrap();
    assert_eq!(beta, 0.5);
    let x = fixture_logps(
        &t["dpo_policy_logps"],
        &t["dpo_ref_logps"],
        &t["dpo_weights"],
    );
    let dpo = losses::by_name("dpo", beta).unwrap();
    let hdpo = losses::by_name("hdpo", beta).unwrap();
    let ld: f32 = dpo.loss(&x).unwrap().loss.to_scalar().unwrap();
    let lw: f32 = hdpo.loss(&x).unwrap().loss.to_scalar().unwrap();
    let want_d = j["dpo"]["loss_dpo"].as_f64().unwrap();
    let want_w = j["dpo"]["loss_weighted"].as_f64().unwrap();
    assert!(rel(ld as f64, want_d) <= 1e-5, "{ld} vs {want_d}");
    assert!(rel(lw as f64, want_w) <= 1e-5, "{lw} vs {want_w}");
    let h: Vec<f32> = hdpo.loss(&x).unwrap().h.to_vec1().unwrap();
    let want_h: Vec<f32> = t["dpo_h"].to_vec1().unwrap();
    for (a, b) in h.iter().zip(&want_h) {
        assert!((a - b).abs() <= 1e-3, "h {a} vs {b}");
    }
    // Rewards as TRL logs them: beta * (policy - reference).
    let out = dpo.loss(&x).unwrap();
    let rc: Vec<f32> = out.chosen_rewards.to_vec1().unwrap();
    let pol = f64s(&j["dpo"]["policy_logps"]);
    let refl = f64s(&j["dpo"]["ref_logps"]);
    assert!((rc[1] as f64 - beta * (pol[2] - refl[2])).abs() < 1e-5);
}

#[test]
fn losses_match_the_fixture_in_f64() {
    let j = reference_json();
    let d = &j["dpo"];
    let beta = j["beta"].as_f64().unwrap();
    let dev = Device::Cpu;
    let pol = Tensor::new(f64s(&d["policy_logps_f64"]).as_slice(), &dev).unwrap();
    let rf = Tensor::new(f64s(&d["ref_logps_f64"]).as_slice(), &dev).unwrap();
    let w = Tensor::new(f64s(&j["weights"]).as_slice(), &dev).unwrap();
    let x = fixture_logps(&pol, &rf, &w);
    let ld: f64 = losses::by_name("dpo", beta)
        .unwrap()
        .loss(&x)
        .unwrap()
        .loss
        .to_scalar()
        .unwrap();
    let out = losses::by_name("hdpo", beta).unwrap().loss(&x).unwrap();
    let lw: f64 = out.loss.to_scalar().unwrap();
    assert!(rel(ld, d["loss_dpo_f64"].as_f64().unwrap()) <= 1e-9, "{ld}");
    assert!(
        rel(lw, d["loss_weighted_f64"].as_f64().unwrap()) <= 1e-9,
        "{lw}"
    );
    let h: Vec<f64> = out.h.to_vec1().unwrap();
    for (a, b) in h.iter().zip(f64s(&d["h_f64"])) {
        assert!(rel(*a, b) <= 1e-9, "h {a} vs {b}");
    }
}

#[test]
fn loss_gradient_wrt_policy_logps_is_the_analytic_form() {
    // dL/dπ_c,i = −w_i α σ(−α h_i) / n, dL/dπ_r,i = −dL/dπ_c,i.
    let j = reference_json();
    let d = &j["dpo"];
    let beta = j["beta"].as_f64().unwrap();
    let dev = Device::Cpu;
    let pol = f64s(&d["policy_logps_f64"]);
    let rf = f64s(&d["ref_logps_f64"]);
    let w = f64s(&j["weights"]);
    for (name, weighted) in [("hdpo", true), ("dpo", false)] {
        let pc = Var::new(&[pol[0], pol[2]], &dev).unwrap();
        let pr = Var::new(&[pol[1], pol[3]], &dev).unwrap();
        let x = PairLogps {
            policy_chosen: pc.as_tensor().clone(),
            policy_rejected: pr.as_tensor().clone(),
            ref_chosen: Tensor::new(&[rf[0], rf[2]], &dev).unwrap(),
            ref_rejected: Tensor::new(&[rf[1], rf[3]], &dev).unwrap(),
            weights: Tensor::new(w.as_slice(), &dev).unwrap(),
        };
        let out = losses::by_name(name, beta).unwrap().loss(&x).unwrap();
        let g = out.loss.backward().unwrap();
        let gc: Vec<f64> = g.get(pc.as_tensor()).unwrap().to_vec1().unwrap();
        let gr: Vec<f64> = g.get(pr.as_tensor()).unwrap().to_vec1().unwrap();
        let h = f64s(&d["h_f64"]);
        for i in 0..2 {
            let wi = if weighted { w[i] } else { 1.0 };
            let want = -wi * beta / (1.0 + (beta * h[i]).exp()) / 2.0;
            assert!(
                (gc[i] - want).abs() < 1e-9 * want.abs(),
                "{name} {i}: {} vs {want}",
                gc[i]
            );
            assert!((gr[i] + want).abs() < 1e-9 * want.abs());
        }
    }
}

#[test]
fn log_sigmoid_is_stable_in_f32() {
    let t = Tensor::new(&[-200f32, -20.0, 0.0, 20.0, 200.0], &Device::Cpu).unwrap();
    let v: Vec<f32> = log_sigmoid(&t).unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    assert_eq!(v[0], -200.0);
}

// ---------------------------------------------------------------- toy runs

const FINDINGS: [&str; 4] = ["effusion", "nodule", "opacity", "mass"];
const KINDS: [&str; 4] = ["mis", "fp", "fn_neutral", "fn_delete"];

/// Synthetic pairs: the image (left.png / right.png) says where the finding
/// is; the chosen answer names that side, the rejected one the other side.
fn toy_pairs(n: usize, held_out: bool, unit_weights: bool) -> Vec<PreferencePair> {
    (0..n)
        .map(|i| {
            let f = FINDINGS[i % 4];
            let (side, other) = if (i / 4) % 2 == 0 {
                ("left", "right")
            } else {
                ("right", "left")
            };
            let prompt = if held_out {
                format!("which side shows the {f} ?")
            } else {
                format!("where is the {f} ?")
            };
            PreferencePair {
                id: format!("{}{i}", if held_out { "h" } else { "p" }),
                kind: if i % 5 == 4 {
                    "rule".into()
                } else {
                    KINDS[i % 4].into()
                },
                prompt,
                chosen: format!("the {f} is in the {side} lung"),
                rejected: format!("the {f} is in the {other} lung"),
                chosen_image: Some(PathBuf::from(format!("{side}.png"))),
                rejected_image: Some(PathBuf::from(format!("{side}.png"))),
                weight: if unit_weights {
                    1.0
                } else {
                    0.5 + (i % 3) as f64 * 0.5
                },
            }
        })
        .collect()
}

fn toy(dtype: DType) -> ToyPolicy {
    ToyPolicy::new(48, 7, 0.0, dtype).unwrap()
}

fn cfg(loss: &str, batch: usize, micro: usize, epochs: usize) -> PreferenceConfig {
    PreferenceConfig {
        loss: loss.parse().unwrap(),
        alpha: 0.5,
        run: RunConfig {
            batch_size: batch,
            micro_batch_size: micro,
            epochs,
            seed: 11,
            shuffle: true,
            checkpoint_every: 2,
            keep_checkpoints: 2,
            resume: false,
            halt_after_steps: None,
        },
        optim: OptimConfig {
            learning_rate: 0.05,
            weight_decay: 0.01,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            ..OptimConfig::default()
        },
    }
}

fn params_of<P: PreferencePolicy>(p: &P) -> Vec<(String, Vec<f64>)> {
    p.trainable()
        .into_iter()
        .map(|(n, v)| {
            let t = v
                .as_tensor()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap();
            (n, t.to_vec1::<f64>().unwrap())
        })
        .collect()
}

fn bits_of<P: PreferencePolicy>(p: &P) -> Vec<(String, Vec<u32>)> {
    p.trainable()
        .into_iter()
        .map(|(n, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (
                n,
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

fn log_rows(dir: &Path) -> Vec<serde_json::Map<String, Value>> {
    hdpo::train::metrics::read_log(&dir.join("train_log.jsonl"))
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.remove("pairs_per_s");
            r.remove("tokens_per_s");
            r
        })
        .collect()
}

#[test]
fn killed_and_resumed_run_ends_with_identical_parameters() {
    let pairs = toy_pairs(14, false, false);
    let c = cfg("hdpo", 3, 1, 3); // 5 steps per epoch (last one partial), 15 in all
    let a_dir = tempfile::tempdir().unwrap();
    let a = toy(DType::F32);
    let sa = preference::train_from_config(&a, &pairs, &c, a_dir.path()).unwrap();
    assert_eq!(sa.run.steps, 15);
    assert!(!sa.run.halted);
    assert!(sa.run.peak_rss_bytes.unwrap_or(1) > 0);

    let b_dir = tempfile::tempdir().unwrap();
    let b = toy(DType::F32);
    let mut halt = c.clone();
    halt.run.halt_after_steps = Some(7); // mid-epoch 2; the last checkpoint is step 6
    let sh = preference::train_from_config(&b, &pairs, &halt, b_dir.path()).unwrap();
    assert!(sh.run.halted && sh.run.steps == 7 && sh.run.trainable_path.is_none());
    assert_ne!(bits_of(&a), bits_of(&b));
    assert_eq!(log_rows(b_dir.path()).len(), 7);
    // A fresh process: a new policy (as loaded from disk), resume.
    let b2 = toy(DType::F32);
    let mut res = c.clone();
    res.run.resume = true;
    let sr = preference::train_from_config(&b2, &pairs, &res, b_dir.path()).unwrap();
    assert_eq!(sr.run.resumed_from_step, Some(6));
    assert_eq!(sr.run.steps, 15);
    assert_eq!(bits_of(&a), bits_of(&b2), "resumed parameters differ");
    assert_eq!(log_rows(a_dir.path()), log_rows(b_dir.path()));
    // The final tensors on disk are those parameters.
    let saved =
        candle_core::safetensors::load(a_dir.path().join("trainable.safetensors"), &Device::Cpu)
            .unwrap();
    let (n0, v0) = &bits_of(&a)[0];
    let s0: Vec<u32> = saved[n0]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(&s0, v0);
    // Only the newest checkpoints are kept.
    let cks = hdpo::train::checkpoint::list(&a_dir.path().join("checkpoints")).unwrap();
    assert_eq!(cks.len(), 2);
    // Resuming a finished run changes nothing.
    let sr2 = preference::train_from_config(&b2, &pairs, &res, b_dir.path()).unwrap();
    assert_eq!(sr2.run.steps, 15);
    assert_eq!(bits_of(&a), bits_of(&b2));
    // A fresh (non-resume) run into a folder with checkpoints is refused.
    let e = preference::train_from_config(&b2, &pairs, &c, b_dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    // Resuming with other settings is refused.
    let mut other = res.clone();
    other.run.batch_size = 2;
    let e = format!(
        "{:#}",
        preference::train_from_config(&b2, &pairs, &other, b_dir.path()).unwrap_err()
    );
    assert!(e.contains("other settings"), "{e}");
}

#[test]
fn accumulated_micro_steps_equal_one_big_step() {
    let pairs = toy_pairs(8, false, false);
    let mut one = cfg("hdpo", 4, 4, 1);
    one.run.checkpoint_every = 0;
    let mut four = one.clone();
    four.run.micro_batch_size = 1;
    let (d1, d4) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (p1, p4) = (toy(DType::F64), toy(DType::F64));
    preference::train_from_config(&p1, &pairs, &one, d1.path()).unwrap();
    preference::train_from_config(&p4, &pairs, &four, d4.path()).unwrap();
    let (a, b) = (params_of(&p1), params_of(&p4));
    let mut moved = 0.0f64;
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() < 1e-9, "{u} vs {v}");
            moved = moved.max(u.abs());
        }
    }
    assert!(moved > 1e-3, "training did not move the parameters");
    // The dry-run gradients of 4 pairs accumulated one by one equal those of
    // the 4-pair mean loss computed directly.
    let q = ToyPolicy::new(48, 7, 0.1, DType::F64).unwrap();
    let loss = losses::by_name("hdpo", 0.5).unwrap();
    let dr = preference::dry_run(&q, &pairs[..4], loss.as_ref()).unwrap();
    let items: Vec<SeqItem> = pairs[..4]
        .iter()
        .map(|p| p.chosen_item())
        .chain(pairs[..4].iter().map(|p| p.rejected_item()))
        .collect();
    let lp = q.logps(&items, true).unwrap();
    let rf = q.logps(&items, false).unwrap().detach();
    let x = PairLogps {
        policy_chosen: lp.narrow(0, 0, 4).unwrap(),
        policy_rejected: lp.narrow(0, 4, 4).unwrap(),
        ref_chosen: rf.narrow(0, 0, 4).unwrap(),
        ref_rejected: rf.narrow(0, 4, 4).unwrap(),
        weights: Tensor::new(
            pairs[..4]
                .iter()
                .map(|p| p.weight)
                .collect::<Vec<_>>()
                .as_slice(),
            &Device::Cpu,
        )
        .unwrap(),
    };
    let out = loss.loss(&x).unwrap();
    assert!((out.loss.to_scalar::<f64>().unwrap() - dr.loss).abs() < 1e-12);
    let g = out.loss.backward().unwrap();
    for ((name, v), (dn, dg)) in PreferencePolicy::trainable(&q).iter().zip(&dr.grads) {
        assert_eq!(name, dn);
        let direct = g.get(v.as_tensor()).unwrap();
        let diff = (direct - dg).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    }
}

#[test]
fn hdpo_with_unit_weights_equals_dpo_step_for_step() {
    let pairs = toy_pairs(10, false, true);
    let (dh, dd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ph, pd) = (toy(DType::F32), toy(DType::F32));
    preference::train_from_config(&ph, &pairs, &cfg("hdpo", 4, 2, 2), dh.path()).unwrap();
    preference::train_from_config(&pd, &pairs, &cfg("dpo", 4, 2, 2), dd.path()).unwrap();
    assert_eq!(bits_of(&ph), bits_of(&pd));
    let (rh, rd) = (log_rows(dh.path()), log_rows(dd.path()));
    assert_eq!(rh.len(), 6);
    for (a, b) in rh.iter().zip(&rd) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
        assert_eq!(a["rewards/margins"], b["rewards/margins"]);
    }
    // With weights ≠ 1 the two differ.
    let weighted = toy_pairs(10, false, false);
    let (dh2, dd2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ph2, pd2) = (toy(DType::F32), toy(DType::F32));
    preference::train_from_config(&ph2, &weighted, &cfg("hdpo", 4, 2, 2), dh2.path()).unwrap();
    preference::train_from_config(&pd2, &weighted, &cfg("dpo", 4, 2, 2), dd2.path()).unwrap();
    assert_ne!(bits_of(&ph2), bits_of(&pd2));
}

fn loss_at(policy: &ToyPolicy, pairs: &[PreferencePair]) -> f64 {
    let loss = losses::by_name("hdpo", 0.5).unwrap();
    let items: Vec<SeqItem> = pairs
        .iter()
        .map(|p| p.chosen_item())
        .chain(pairs.iter().map(|p| p.rejected_item()))
        .collect();
    let n = pairs.len();
    let lp = policy.logps(&items, true).unwrap();
    let rf = policy.logps(&items, false).unwrap();
    let x = PairLogps {
        policy_chosen: lp.narrow(0, 0, n).unwrap(),
        policy_rejected: lp.narrow(0, n, n).unwrap(),
        ref_chosen: rf.narrow(0, 0, n).unwrap(),
        ref_rejected: rf.narrow(0, n, n).unwrap(),
        weights: Tensor::new(
            pairs
                .iter()
                .map(|p| p.weight)
                .collect::<Vec<_>>()
                .as_slice(),
            &Device::Cpu,
        )
        .unwrap(),
    };
    loss.loss(&x).unwrap().loss.to_scalar::<f64>().unwrap()
}

#[test]
fn dry_run_gives_nonzero_gradients_that_match_finite_differences() {
    let pairs = toy_pairs(3, false, false);
    let q = ToyPolicy::new(48, 7, 0.1, DType::F64).unwrap();
    let loss = losses::by_name("hdpo", 0.5).unwrap();
    let before = params_of(&q);
    let dr = preference::dry_run(&q, &pairs, loss.as_ref()).unwrap();
    assert_eq!(params_of(&q), before, "a dry run must not update");
    assert_eq!(dr.pairs.len(), 3);
    assert_eq!(
        dr.grad_norms.keys().collect::<Vec<_>>(),
        vec!["adapter.bigram", "adapter.prompt"]
    );
    for (n, g) in &dr.grad_norms {
        assert!(*g > 0.0 && g.is_finite(), "{n}: gradient norm {g}");
    }
    let total: f64 = dr.grad_norms.values().map(|x| x * x).sum::<f64>().sqrt();
    assert!((total - dr.grad_norm_total).abs() < 1e-12);
    assert!((loss_at(&q, &pairs) - dr.loss).abs() < 1e-12);
    for p in &dr.pairs {
        assert!(
            (p.h - ((p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected))).abs()
                < 1e-12
        );
    }
    // Central finite differences on the largest entries of each tensor.
    for ((name, var), (_, g)) in PreferencePolicy::trainable(&q).iter().zip(&dr.grads) {
        let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let (k, gk) = gv
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eps = 1e-5;
        let eval = |delta: f64| {
            let mut v = orig.clone();
            v[k] += delta;
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            loss_at(&q, &pairs)
        };
        let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
        eval(0.0);
        assert!(
            (fd - gk).abs() < 1e-6 * gk.abs().max(1e-3),
            "{name}[{k}]: analytic {gk} vs finite difference {fd}"
        );
    }
    // JSON shape for `--dry-run`.
    let j = serde_json::to_value(&dr).unwrap();
    assert!(j["loss"].is_number() && j["grad_norms"]["adapter.prompt"].is_number());
    assert!(j["pairs"][0]["policy_chosen"].is_number());
}

#[test]
fn hdpo_training_raises_held_out_margin_and_accuracy() {
    let train_pairs = toy_pairs(32, false, false);
    let held = toy_pairs(16, true, false);
    let q = toy(DType::F32);
    let loss = losses::by_name("hdpo", 0.5).unwrap();
    let before = preference::evaluate(&q, &held, loss.as_ref(), None).unwrap();
    assert_eq!(before.margin(), 0.0); // adapters start at zero: π_θ = π_ref
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg("hdpo", 4, 1, 6);
    c.run.checkpoint_every = 0;
    let s = preference::train(&q, &train_pairs, loss.as_ref(), &c, dir.path()).unwrap();
    let after = preference::evaluate(&q, &held, loss.as_ref(), None).unwrap();
    eprintln!(
        "held-out margin {:.4} -> {:.4}, accuracy {:.3} -> {:.3}, peak RSS {:?}",
        before.margin(),
        after.margin(),
        before.accuracy(),
        after.accuracy(),
        s.run.peak_rss_bytes
    );
    assert!(after.margin() > 0.05, "margin {}", after.margin());
    assert!(after.accuracy() >= 0.9, "accuracy {}", after.accuracy());
    let loss_after = after.metrics["loss"].as_f64().unwrap();
    assert!(loss_after < before.metrics["loss"].as_f64().unwrap());
    // Per-kind metrics are logged, `others` for non-paper kinds.
    let rows = log_rows(dir.path());
    assert_eq!(rows.len(), 48);
    let kinds: std::collections::BTreeSet<String> = rows
        .iter()
        .flat_map(|r| {
            r["by_kind"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec!["fn_delete", "fn_neutral", "fp", "mis", "others"]
    );
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "loss",
        "learning_rate",
        "grad_norm",
        "epoch",
    ] {
        assert!(rows[3][key].is_number(), "log row lacks {key}");
    }
    // The reference cache holds one row per training pair and is reused.
    let cache = hdpo::train::refcache::read(&dir.path().join("ref_logps.jsonl")).unwrap();
    assert_eq!(cache.len(), 32);
}

/// A policy that returns NaN for one response.
struct NanPolicy(ToyPolicy);

impl PreferencePolicy for NanPolicy {
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor> {
        let t = self.0.logps(items, adapters)?;
        if adapters && items.iter().any(|i| i.response.contains("right")) {
            let mask: Vec<f32> = items
                .iter()
                .map(|i| {
                    if i.response.contains("right") {
                        f32::NAN
                    } else {
                        0.0
                    }
                })
                .collect();
            return Ok((t + Tensor::new(mask.as_slice(), &Device::Cpu)?)?);
        }
        Ok(t)
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        PreferencePolicy::trainable(&self.0)
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let pairs = toy_pairs(4, false, false);
    let mut c = cfg("hdpo", 2, 1, 1);
    c.run.shuffle = false;
    let q = toy(DType::F32);
    let dir = tempfile::tempdir().unwrap();
    // Empty pair list.
    let e = preference::train_from_config(&q, &[], &c, dir.path()).unwrap_err();
    assert!(e.to_string().contains("no preference pairs"), "{e}");
    // NaN log-probs name the pair and side.
    let nan = NanPolicy(toy(DType::F32));
    let e = format!(
        "{:#}",
        preference::train_from_config(&nan, &pairs, &c, dir.path()).unwrap_err()
    );
    assert!(
        e.contains("(id 'p0')") && e.contains("rejected") && e.contains("NaN"),
        "{e}"
    );
    // Bad weights and duplicate ids.
    let mut bad = pairs.clone();
    bad[2].weight = f64::NAN;
    let e = preference::validate_pairs(&bad).unwrap_err().to_string();
    assert!(e.contains("pair 2 (id 'p2'): field weight"), "{e}");
    bad[2].weight = -1.0;
    assert!(preference::validate_pairs(&bad).is_err());
    let mut dup = pairs.clone();
    dup[3].id = "p1".into();
    let e = preference::validate_pairs(&dup).unwrap_err().to_string();
    assert!(e.contains("pair 3 (id 'p1')"), "{e}");
    // A reference cache made for other pair content is refused.
    let d2 = tempfile::tempdir().unwrap();
    hdpo::train::refcache::load_or_compute(&q, &pairs, d2.path()).unwrap();
    let mut changed = pairs.clone();
    changed[1].chosen = "something else".into();
    let e = hdpo::train::refcache::load_or_compute(&q, &changed, d2.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pair 1 (id 'p1')") && e.contains("different"),
        "{e}"
    );
    // A corrupt cache row names the line.
    std::fs::write(d2.path().join("ref_logps.jsonl"), "{\"id\": 3}\n").unwrap();
    let e = format!(
        "{:#}",
        hdpo::train::refcache::load_or_compute(&q, &pairs, d2.path()).unwrap_err()
    );
    assert!(e.contains("line 1"), "{e}");
    // Bad configuration.
    let mut zero = c.clone();
    zero.run.micro_batch_size = 0;
    let e = preference::train_from_config(&q, &pairs, &zero, tempfile::tempdir().unwrap().path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("micro_batch_size"), "{e}");
}

#[test]
fn cached_reference_logps_are_reused_exactly() {
    let pairs = toy_pairs(5, false, false);
    let q = ToyPolicy::new(48, 7, 0.0, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = hdpo::train::refcache::load_or_compute(&q, &pairs, dir.path()).unwrap();
    // A different model would give other numbers: the cache is what is used.
    let other = ToyPolicy::new(48, 8, 0.0, DType::F32).unwrap();
    let b = hdpo::train::refcache::load_or_compute(&other, &pairs, dir.path()).unwrap();
    assert_eq!(a, b);
    let fresh = hdpo::train::refcache::compute_one(&q, &pairs[2], 2).unwrap();
    assert_eq!(fresh, a[2]);
}

// ---------------------------------------------------------------- SFT

fn sft_examples(n: usize, offset: usize) -> Vec<SftExample> {
    toy_pairs(n + offset, offset > 0, true)
        .into_iter()
        .skip(offset)
        .map(|p| SftExample {
            id: p.id.clone(),
            item: p.chosen_item(),
        })
        .collect()
}

#[test]
fn sft_lowers_held_out_nll_and_resumes_exactly() {
    let train = sft_examples(16, 0);
    let held = sft_examples(8, 8);
    let mut c = SftConfig::phantom();
    c.run.batch_size = 4;
    c.run.micro_batch_size = 2;
    c.run.epochs = 3;
    c.run.checkpoint_every = 3;
    c.optim.learning_rate = 0.05;
    let a = toy(DType::F32);
    let before = sft::evaluate(&a, &held).unwrap();
    let da = tempfile::tempdir().unwrap();
    let s = sft::train(&a, &train, &c, da.path()).unwrap();
    assert_eq!(s.run.steps, 12);
    let after = sft::evaluate(&a, &held).unwrap();
    assert!(after < 0.9 * before, "held-out NLL {before} -> {after}");
    // Killed at step 5 (checkpoint at 3), resumed.
    let b = toy(DType::F32);
    let db = tempfile::tempdir().unwrap();
    let mut h = c.clone();
    h.run.halt_after_steps = Some(5);
    sft::train(&b, &train, &h, db.path()).unwrap();
    let b2 = toy(DType::F32);
    let mut r = c.clone();
    r.run.resume = true;
    let sr = sft::train(&b2, &train, &r, db.path()).unwrap();
    assert_eq!(sr.run.resumed_from_step, Some(3));
    assert_eq!(bits_of(&a), bits_of(&b2));
    assert_eq!(log_rows(da.path()), log_rows(db.path()));
    let rows = log_rows(da.path());
    assert!(rows[0]["tokens"].as_u64().unwrap() > 0);
    // Every trainable tensor moved.
    let untouched = toy(DType::F32);
    for ((n, x), (_, y)) in bits_of(&a).iter().zip(bits_of(&untouched)) {
        assert_ne!(x, &y, "{n} did not change");
    }
    let _ = SftPolicy::trainable(&a);
}

/// A policy whose four sequence log-probs are themselves the trainable
/// tensors, set to the fixture's values: the dry run must then give the
/// fixture's losses, and gradients of the analytic form, through the whole
/// pipeline (pair order, reference side, weights, accumulation).
struct FixturePolicy {
    keys: Vec<(String, Option<PathBuf>)>,
    policy: Vec<Var>,
    reference: Vec<f64>,
}

impl PreferencePolicy for FixturePolicy {
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor> {
        let mut out = Vec::new();
        for it in items {
            let k = self
                .keys
                .iter()
                .position(|(r, img)| *r == it.response && *img == it.image)
                .ok_or_else(|| anyhow::anyhow!("unknown sequence"))?;
            out.push(if adapters {
                self.policy[k].as_tensor().clone()
            } else {
                Tensor::new(&[self.reference[k]], &Device::Cpu)?
            });
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.policy
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("seq{i}"), v.clone()))
            .collect()
    }
}

#[test]
fn dry_run_reproduces_the_fixture_losses_through_the_pipeline() {
    let j = reference_json();
    let d = &j["dpo"];
    let beta = j["beta"].as_f64().unwrap();
    let w = f64s(&j["weights"]);
    let pol = f64s(&d["policy_logps_f64"]);
    let mut keys = Vec::new();
    let mut pairs = Vec::new();
    for (i, p) in d["pairs"].as_array().unwrap().iter().enumerate() {
        let img = |k: &str| Some(PathBuf::from(format!("img{}.png", p[k].as_u64().unwrap())));
        keys.push((
            p["chosen"].as_str().unwrap().to_string(),
            img("chosen_image"),
        ));
        keys.push((
            p["rejected"].as_str().unwrap().to_string(),
            img("rejected_image"),
        ));
        pairs.push(PreferencePair {
            id: format!("pair{i}"),
            kind: "mis".into(),
            prompt: p["prompt"].as_str().unwrap().into(),
            chosen: p["chosen"].as_str().unwrap().into(),
            rejected: p["rejected"].as_str().unwrap().into(),
            chosen_image: img("chosen_image"),
            rejected_image: img("rejected_image"),
            weight: w[i],
        });
    }
    let policy = FixturePolicy {
        keys,
        policy: pol
            .iter()
            .map(|x| Var::new(&[*x], &Device::Cpu).unwrap())
            .collect(),
        reference: f64s(&d["ref_logps_f64"]),
    };
    let h = f64s(&d["h_f64"]);
    for (name, key, weighted) in [
        ("hdpo", "loss_weighted_f64", true),
        ("dpo", "loss_dpo_f64", false),
    ] {
        let loss = losses::by_name(name, beta).unwrap();
        let dr = preference::dry_run(&policy, &pairs, loss.as_ref()).unwrap();
        let want = d[key].as_f64().unwrap();
        assert!(rel(dr.loss, want) <= 1e-9, "{name}: {} vs {want}", dr.loss);
        for (i, p) in dr.pairs.iter().enumerate() {
            assert!(rel(p.h, h[i]) <= 1e-9);
            assert_eq!(p.policy_chosen, pol[2 * i]);
        }
        for i in 0..2 {
            let wi = if weighted { w[i] } else { 1.0 };
            let g = wi * beta / (1.0 + (beta * h[i]).exp()) / 2.0;
            assert!(rel(dr.grad_norms[&format!("seq{}", 2 * i)], g) <= 1e-9);
            assert!(rel(dr.grad_norms[&format!("seq{}", 2 * i + 1)], g) <= 1e-9);
        }
    }
}
