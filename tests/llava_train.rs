//! The LLaVA policy in the trainer: DPO / HDPO dry runs against the PEFT/TRL
//! fixture (`fixtures/models/tiny_llava`), λ = 0 equivalence, SFT on the
//! phantom set, exact resume, `hdpo train` / `hdpo predict`, and bad input.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hdpo::data::phantom::PhantomConfig;
use hdpo::data::{self, AnswerType, Sample, Split};
use hdpo::model::policy::{read_preference_pairs, sft_examples, LlavaPolicy};
use hdpo::model::{
    predict_samples, ChatTemplate, LlavaConfig, LlavaModel, LoadOptions, LoraConfig,
    PredictOptions, PredictionRow, TargetModules, TextTokenizer,
};
use hdpo::train::config::{OptimConfig, PreferenceConfig, RunConfig, ScheduleKind, SftConfig};
use hdpo::train::{loss_by_name, preference, sft, PreferencePair, PreferencePolicy, SeqItem};
use serde_json::Value;

mod common;
use common::{
    hdpo_cmd, hdpo_err, hdpo_ok, tiny_llava as fixture, tiny_llava_reference as reference,
    tiny_llava_reference_json as reference_json, vec_f64, write_fixture_pairs,
};

fn load_model(adapter: bool) -> (LlavaModel, TextTokenizer) {
    let mut m = LlavaModel::load(&fixture(), &LoadOptions::default()).unwrap();
    if adapter {
        m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    }
    let tok = TextTokenizer::from_dir(&fixture(), &m.config).unwrap();
    (m, tok)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Compare a dry run with the fixture: the loss, the four log-probs per
/// pair, h, and the 8 LoRA gradients (tensors and norms).
fn check_dry_run(d: &preference::DryRun, loss_key: &str, grad_prefix: &str) {
    let j = reference_json();
    let r = reference();
    let dpo = &j["dpo"];
    let want_loss = dpo[loss_key].as_f64().unwrap();
    assert!(
        rel(d.loss, want_loss) <= 1e-5,
        "{loss_key}: {} vs {want_loss}",
        d.loss
    );
    let pol: Vec<f64> = vec_f64(&r["dpo_policy_logps"]);
    let refl: Vec<f64> = vec_f64(&r["dpo_ref_logps"]);
    let h: Vec<f64> = dpo["h"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for (i, p) in d.pairs.iter().enumerate() {
        for (got, want) in [
            (p.policy_chosen, pol[2 * i]),
            (p.policy_rejected, pol[2 * i + 1]),
            (p.ref_chosen, refl[2 * i]),
            (p.ref_rejected, refl[2 * i + 1]),
            (p.h, h[i]),
        ] {
            assert!((got - want).abs() <= 1e-3, "pair {i}: {got} vs {want}");
        }
    }
    let norms = dpo[format!("grad_norms_{}", grad_prefix.trim_start_matches("grad_"))]
        .as_object()
        .unwrap();
    assert_eq!(d.grads.len(), 8);
    assert_eq!(d.grad_norms.len(), 8);
    for (name, g) in &d.grads {
        let want = &r[&format!("{grad_prefix}.{name}")];
        let b = vec_f64(want);
        let a = vec_f64(g);
        let maxb = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let maxd = a
            .iter()
            .zip(&b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            maxd <= 1e-3 * maxb,
            "{name}: max diff {maxd}, max |b| {maxb}"
        );
        let n = d.grad_norms[name];
        assert!(n > 0.0, "{name} received no gradient");
        let wn = norms[name.as_str()].as_f64().unwrap();
        assert!(rel(n, wn) <= 1e-4, "{name}: norm {n} vs {wn}");
    }
}

#[test]
fn dry_run_through_llava_policy_matches_peft_and_trl() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = read_preference_pairs(&write_fixture_pairs(tmp.path())).unwrap();
    // Both pairs have different chosen and rejected images.
    assert!(pairs.iter().all(|p| p.chosen_image != p.rejected_image));
    let (m, tok) = load_model(true);
    let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
    let beta = reference_json()["beta"].as_f64().unwrap();
    assert_eq!(beta, 0.5);
    let hdpo = loss_by_name("hdpo", beta).unwrap();
    let d = preference::dry_run(&policy, &pairs, hdpo.as_ref()).unwrap();
    check_dry_run(&d, "loss_weighted", "grad_weighted");
    let dpo = loss_by_name("dpo", beta).unwrap();
    let d = preference::dry_run(&policy, &pairs, dpo.as_ref()).unwrap();
    check_dry_run(&d, "loss_dpo", "grad_dpo");
    // The batched path (both pairs padded into one batch) gives the same log-probs.
    let items: Vec<SeqItem> = pairs
        .iter()
        .flat_map(|p| [p.chosen_item(), p.rejected_item()])
        .collect();
    let batched = vec_f64(&policy.logps(&items, true).unwrap());
    let want = vec_f64(&reference()["dpo_policy_logps"]);
    for (a, b) in batched.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-3, "batched {a} vs {b}");
    }
}

#[test]
fn cli_dry_run_prints_the_fixture_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = write_fixture_pairs(tmp.path());
    let fx = fixture();
    // `hdpo train LOSS --dry-run` on the fixture's adapter and pairs (α = 0.5).
    let dry_run = |loss: &str| -> Value {
        let out = hdpo_ok(&[
            "train",
            loss,
            "--model",
            fx.to_str().unwrap(),
            "--adapter",
            fx.join("lora_adapter").to_str().unwrap(),
            "--pairs",
            pairs.to_str().unwrap(),
            "--template",
            "llava_plain",
            "--alpha",
            "0.5",
            "--dry-run",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let v = dry_run("hdpo");
    let j = reference_json();
    let want = j["dpo"]["loss_weighted"].as_f64().unwrap();
    assert!(
        rel(v["loss"].as_f64().unwrap(), want) <= 1e-5,
        "{}",
        v["loss"]
    );
    let norms = j["dpo"]["grad_norms_weighted"].as_object().unwrap();
    let got = v["grad_norms"].as_object().unwrap();
    assert_eq!(got.len(), 8);
    for (k, w) in norms {
        let g = got[k].as_f64().unwrap();
        assert!(rel(g, w.as_f64().unwrap()) <= 1e-4, "{k}: {g} vs {w}");
    }
    let pol = j["dpo"]["policy_logps"].as_array().unwrap();
    assert!(
        (v["pairs"][1]["policy_rejected"].as_f64().unwrap() - pol[3].as_f64().unwrap()).abs()
            <= 1e-3
    );
    // DPO ignores the weights.
    let v = dry_run("dpo");
    let want = j["dpo"]["loss_dpo"].as_f64().unwrap();
    assert!(
        rel(v["loss"].as_f64().unwrap(), want) <= 1e-5,
        "{}",
        v["loss"]
    );
}

/// Six pairs on the fixture images (chosen and rejected images differ in some).
fn more_pairs(dir: &Path, weight: f64) -> PathBuf {
    write_fixture_pairs(dir);
    let texts = [
        ("is there an effusion ?", "yes , on the left .", "no ."),
        (
            "is the heart enlarged ?",
            "no , heart size is normal .",
            "yes .",
        ),
        (
            "what is seen in the chest x-ray ?",
            "the lungs are clear .",
            "a small nodule .",
        ),
        (
            "is this chest x-ray normal ?",
            "yes .",
            "no , there is an effusion .",
        ),
        (
            "where is the abnormality ?",
            "in the left lung .",
            "in the right lung .",
        ),
        (
            "does this patient have cardiomegaly ?",
            "no .",
            "yes , the heart is enlarged .",
        ),
    ];
    let mut s = String::new();
    for (i, (q, c, r)) in texts.iter().enumerate() {
        let kind = ["mis", "fp", "fn_neutral"][i % 3];
        let rec = serde_json::json!({
            "id": format!("q{i}"), "kind": kind, "prompt": q,
            "chosen": c, "rejected": r,
            "chosen_image": format!("images/img{}.png", i % 5),
            "rejected_image": format!("images/img{}.png", (i + i % 2) % 5),
            "weight": weight,
        });
        s.push_str(&rec.to_string());
        s.push('\n');
    }
    let p = dir.join(format!("more_{weight}.jsonl"));
    std::fs::write(&p, s).unwrap();
    p
}

fn pref_config(loss: &str) -> PreferenceConfig {
    PreferenceConfig {
        loss: loss.parse().unwrap(),
        alpha: 0.5,
        run: RunConfig {
            batch_size: 2,
            micro_batch_size: 1,
            epochs: 2,
            seed: 11,
            checkpoint_every: 2,
            ..RunConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 5e-3,
            warmup_ratio: 0.0,
            schedule: ScheduleKind::Constant,
            ..OptimConfig::default()
        },
    }
}

fn read_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn hdpo_with_unit_weights_equals_dpo_step_for_step_on_llava() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = read_preference_pairs(&more_pairs(tmp.path(), 1.0)).unwrap();
    let mut finals = Vec::new();
    let mut logs = Vec::new();
    for loss in ["hdpo", "dpo"] {
        let (m, tok) = load_model(true);
        let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
        let cfg = pref_config(loss);
        let out = tmp.path().join(loss);
        let s = preference::train_from_config(&policy, &pairs, &cfg, &out).unwrap();
        assert_eq!(s.run.steps, 6);
        finals.push(std::fs::read(out.join("trainable.safetensors")).unwrap());
        logs.push(read_log(&out));
    }
    assert_eq!(finals[0], finals[1], "final LoRA tensors differ");
    assert_eq!(logs[0].len(), 6);
    for (a, b) in logs[0].iter().zip(&logs[1]) {
        for k in [
            "loss",
            "rewards/margins",
            "rewards/accuracies",
            "grad_norm",
            "logps/chosen",
        ] {
            assert_eq!(a[k], b[k], "step {}: {k}", a["step"]);
        }
    }
    // And the run learned: the last steps' margins exceed the first's.
    let first = logs[0][0]["rewards/margins"].as_f64().unwrap();
    let last = logs[0][5]["rewards/margins"].as_f64().unwrap();
    assert!(last > first, "margins {first} -> {last}");
}

fn preference_cli_args<'a>(fx: &'a str, pairs: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "hdpo",
        "--model",
        fx,
        "--pairs",
        pairs,
        "--template",
        "llava_plain",
        "--out",
        out,
        "--preset",
        "phantom",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--seed",
        "5",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lora-targets",
        ".*language_model.*\\.(q_proj|v_proj|o_proj|down_proj)",
        "--lr",
        "1e-2",
    ]
}

#[test]
fn cli_preference_run_killed_and_resumed_ends_with_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = more_pairs(tmp.path(), 0.8);
    let fx = fixture();
    let (fx, pairs) = (fx.to_str().unwrap(), pairs.to_str().unwrap());
    let full = tmp.path().join("full");
    let part = tmp.path().join("part");
    hdpo_ok(&preference_cli_args(fx, pairs, full.to_str().unwrap()));
    let mut a = preference_cli_args(fx, pairs, part.to_str().unwrap());
    a.extend(["--max-steps", "4"]);
    hdpo_ok(&a);
    assert!(
        !part.join("adapter").exists(),
        "a halted run has no final adapter"
    );
    // A fresh run into a folder with a checkpoint is refused.
    let e = hdpo_err(&preference_cli_args(fx, pairs, part.to_str().unwrap()));
    assert!(e.contains("--resume"), "{e}");
    let mut a = preference_cli_args(fx, pairs, part.to_str().unwrap());
    a.push("--resume");
    hdpo_ok(&a);
    let fa = std::fs::read(full.join("adapter/adapter_model.safetensors")).unwrap();
    let pa = std::fs::read(part.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(fa, pa, "resumed adapter differs from the uninterrupted one");
    let lf: Vec<Value> = read_log(&full);
    let lp: Vec<Value> = read_log(&part);
    assert_eq!(lf.len(), 6);
    assert_eq!(lp.len(), 6);
    for (x, y) in lf.iter().zip(&lp) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["step"], y["step"]);
    }
    // The adapter is PEFT's layout with PEFT's key names, and loads back.
    let t = candle_core::safetensors::load(
        full.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(t.len(), 16);
    assert!(t.contains_key(
        "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight"
    ));
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(full.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let mut m = LlavaModel::load(&fixture(), &LoadOptions::default()).unwrap();
    m.load_adapter(&full.join("adapter")).unwrap();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("summary.json")).unwrap()).unwrap();
    assert!(summary["peak_rss_bytes"].as_u64().unwrap() > 0);
}

fn phantom(dir: &Path, train: usize, test: usize, size: usize) {
    let cfg = PhantomConfig {
        seed: 3,
        train,
        test,
        size,
        ..PhantomConfig::default()
    };
    hdpo::data::phantom::generate(&cfg, dir).unwrap();
}

/// A phantom set with half normal studies and no subtle lesions: at the
/// fixture tower's 32 px a subtle lesion is a few pixels, and a 73% abnormal
/// prior leaves little room above the majority class.
fn balanced_phantom(dir: &Path, seed: u64, train: usize, test: usize, size: usize) {
    let cfg = PhantomConfig {
        seed,
        train,
        test,
        size,
        normal_share: 0.5,
        subtle_share: 0.0,
        ..PhantomConfig::default()
    };
    hdpo::data::phantom::generate(&cfg, dir).unwrap();
}

fn closed(dir: &Path, split: Split) -> Vec<Sample> {
    data::load(
        data::DatasetFormat::Phantom,
        dir,
        &data::LoadOptions {
            split: Some(split),
            ..Default::default()
        },
    )
    .unwrap()
    .samples
    .into_iter()
    .filter(|s| s.answer_type == AnswerType::Closed)
    .collect()
}

fn sft_config(epochs: usize) -> SftConfig {
    SftConfig {
        run: RunConfig {
            batch_size: 8,
            micro_batch_size: 8,
            epochs,
            seed: 1,
            checkpoint_every: 0,
            ..RunConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 3e-3,
            warmup_ratio: 0.05,
            ..OptimConfig::default()
        },
    }
}

fn all_linear_lora() -> LoraConfig {
    LoraConfig::new(
        8,
        16.0,
        TargetModules::Regex(
            ".*(language_model.*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|multi_modal_projector\\.linear_2|lm_head)"
                .into(),
        ),
    )
}

fn yes_no_accuracy(rows: &[PredictionRow]) -> f64 {
    let hits = rows
        .iter()
        .filter(|r| r.prediction.trim().to_lowercase() == r.reference.trim().to_lowercase())
        .count();
    hits as f64 / rows.len() as f64
}

#[test]
fn sft_of_a_random_tiny_llava_learns_phantom_closed_vqa_above_chance() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 px phantom images go through the same CLIP preprocessing (resize to 32).
    balanced_phantom(tmp.path(), 3, 150, 50, 64);
    let train = closed(tmp.path(), Split::Train);
    let test = closed(tmp.path(), Split::Test);
    assert!(
        train.len() > 300 && test.len() > 100,
        "{} {}",
        train.len(),
        test.len()
    );
    let cfg = LlavaConfig::from_dir(&fixture()).unwrap();
    let mut m = LlavaModel::random(cfg, Some(7), &LoadOptions::default()).unwrap();
    // LoRA on the decoder, the projector, the LM head and the CLIP layer
    // whose output is the image feature (layer -2 of 2); the last CLIP layer
    // is not on the graph, so adapting it would leave tensors without gradients.
    let mut lc = all_linear_lora();
    lc.target_modules = TargetModules::Regex(
        ".*(vision_model\\.encoder\\.layers\\.0\\..*|multi_modal_projector\\..*|language_model\\..*|lm_head)"
            .into(),
    );
    m.add_lora(lc, 7).unwrap();
    let tok = TextTokenizer::from_dir(&fixture(), &m.config).unwrap();
    let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
    let tr = sft_examples(&train).unwrap();
    let te = sft_examples(&test).unwrap();
    let before = sft::evaluate(&policy, &te).unwrap();
    let s = sft::train(&policy, &tr, &sft_config(6), &tmp.path().join("run")).unwrap();
    assert!(!s.run.halted);
    let after = sft::evaluate(&policy, &te).unwrap();
    assert!(
        after < 0.5 * before,
        "held-out NLL/token {before} -> {after}"
    );
    let rows = predict_samples(
        &m,
        &tok,
        ChatTemplate::LlavaPlain,
        &test,
        &PredictOptions {
            max_new_tokens: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let acc = yes_no_accuracy(&rows);
    let yes = test.iter().filter(|s| s.answer == "Yes").count() as f64 / test.len() as f64;
    let majority = yes.max(1.0 - yes);
    eprintln!("phantom closed VQA: accuracy {acc:.3}, majority rate {majority:.3}; NLL {before:.3} -> {after:.3}");
    // Measured: accuracy 0.795 vs majority 0.708 (167 questions); NLL 6.90 -> 0.23.
    assert!(
        acc > majority + 0.05,
        "accuracy {acc} vs majority {majority}"
    );
    assert!(rows.iter().all(|r| r.answer_type == "closed"));

    // Then HDPO on misdiagnosis pairs (true vs flipped answer, same image)
    // from the training questions: held-out reward margin and accuracy
    // (π_ref = the random base, adapters off) go up.
    let tr_pairs = mis_pairs(&train);
    let te_pairs = mis_pairs(&test);
    let loss = loss_by_name("hdpo", 0.1).unwrap();
    let before = preference::evaluate(&policy, &te_pairs, loss.as_ref(), None).unwrap();
    let mut c = PreferenceConfig::phantom();
    c.run.epochs = 1;
    c.run.batch_size = 8;
    c.run.micro_batch_size = 4;
    c.optim.learning_rate = 2e-4;
    preference::train(
        &policy,
        &tr_pairs,
        loss.as_ref(),
        &c,
        &tmp.path().join("hdpo"),
    )
    .unwrap();
    let after = preference::evaluate(&policy, &te_pairs, loss.as_ref(), None).unwrap();
    eprintln!(
        "after SFT, HDPO on {} pairs: held-out margin {:.4} -> {:.4}, accuracy {:.3} -> {:.3}",
        tr_pairs.len(),
        before.margin(),
        after.margin(),
        before.accuracy(),
        after.accuracy()
    );
    // Measured: margin 0.144 -> 0.275; reward accuracy 0.825 -> 0.813 (not
    // raised; it stays well above the majority rate).
    assert!(after.margin() > before.margin() + 0.05);
    assert!(after.accuracy() > majority + 0.05, "{}", after.accuracy());
}

#[test]
fn sft_run_killed_and_resumed_ends_with_the_same_adapter_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ph");
    phantom(&data, 12, 4, 32);
    let fx = fixture();
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "sft",
            "--model",
            fx.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--format",
            "phantom",
            "--template",
            "llava_plain",
            "--out",
            out.to_str().unwrap(),
            "--preset",
            "phantom",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
            "--checkpoint-every",
            "2",
            "--limit",
            "20",
            "--seed",
            "9",
            "--lora-r",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = tmp.path().join("full");
    let part = tmp.path().join("part");
    let a: Vec<String> = args(&full);
    hdpo_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let mut b = args(&part);
    b.extend(["--max-steps".into(), "3".into()]);
    hdpo_ok(&b.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = args(&part);
    c.push("--resume".into());
    hdpo_ok(&c.iter().map(String::as_str).collect::<Vec<_>>());
    let fa = std::fs::read(full.join("adapter/adapter_model.safetensors")).unwrap();
    let pa = std::fs::read(part.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(fa, pa);
    let log = read_log(&full);
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|r| r["tokens"].as_u64().unwrap() > 0));
}

#[test]
fn every_lora_tensor_gets_a_gradient_in_sft_and_preference() {
    // All-linear LoRA with non-zero B (after loading the fixture adapter for
    // q/v and setting the rest from a seeded draw) on both objectives.
    let (mut m, tok) = load_model(false);
    m.add_lora(all_linear_lora(), 3).unwrap();
    for (i, (_, v)) in m.lora_vars().iter().enumerate() {
        let t = (Tensor::randn(0f32, 0.05, v.shape(), &Device::Cpu).unwrap() + (i as f64) * 1e-3)
            .unwrap();
        v.set(&t).unwrap();
    }
    let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pairs = read_preference_pairs(&write_fixture_pairs(tmp.path())).unwrap();
    let d =
        preference::dry_run(&policy, &pairs, loss_by_name("hdpo", 0.1).unwrap().as_ref()).unwrap();
    assert_eq!(d.grads.len(), policy.lora_params().len());
    for (name, n) in &d.grad_norms {
        assert!(*n > 0.0 && n.is_finite(), "{name}: {n}");
    }
    let nll = hdpo::train::SftPolicy::nll(&policy, &[pairs[0].chosen_item()]).unwrap();
    assert_eq!(nll.tokens, 9);
    let g = nll.sum.backward().unwrap();
    for (name, v) in hdpo::train::SftPolicy::trainable(&policy) {
        let gn = g
            .get(v.as_tensor())
            .map(|t| vec_f64(t).iter().map(|x| x * x).sum::<f64>());
        assert!(gn.is_some_and(|x| x > 0.0), "{name}: no SFT gradient");
    }
}

#[test]
fn predict_writes_eval_rows_atomically_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ph");
    phantom(&data, 2, 3, 32);
    let fx = fixture();
    let out = tmp.path().join("preds.jsonl");
    let adapter = fx.join("lora_adapter");
    let args = [
        "predict",
        "--model",
        fx.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        "phantom",
        "--split",
        "test",
        "--template",
        "llava_plain",
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ];
    hdpo_ok(&args);
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<PredictionRow> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples = data::load(
        data::DatasetFormat::Phantom,
        &data,
        &data::LoadOptions {
            split: Some(Split::Test),
            ..Default::default()
        },
    )
    .unwrap()
    .samples;
    assert_eq!(rows.len(), samples.len());
    for (r, s) in rows.iter().zip(&samples) {
        assert_eq!(r.id, s.id);
        assert_eq!(r.reference, s.answer);
        assert_eq!(r.question, s.question.clone().unwrap());
        let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for k in ["id", "question", "reference", "prediction", "answer_type"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
    // The library gives the same rows.
    let (m, tok) = load_model(true);
    let lib = predict_samples(
        &m,
        &tok,
        ChatTemplate::LlavaPlain,
        &samples,
        &PredictOptions {
            max_new_tokens: 5,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(lib, rows);
    assert!(rows.iter().any(|r| !r.prediction.is_empty()));
    // Resume: an interrupted run left two rows and a torn line.
    let part = hdpo::model::predict::partial_path(&out);
    let mut partial: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    partial.push_str("{\"id\": \"torn");
    std::fs::write(&part, partial).unwrap();
    std::fs::remove_file(&out).unwrap();
    let s = hdpo::model::predict_to_file(
        &m,
        &tok,
        ChatTemplate::LlavaPlain,
        &samples,
        &PredictOptions {
            max_new_tokens: 5,
            ..Default::default()
        },
        &out,
    )
    .unwrap();
    assert_eq!(s.resumed, 2);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    assert!(!part.exists());
}

#[test]
fn bad_pairs_missing_images_and_long_prompts_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_fixture_pairs(tmp.path());
    let fx = fixture();
    let base = |pairs: &Path| -> Vec<String> {
        [
            "train",
            "hdpo",
            "--model",
            fx.to_str().unwrap(),
            "--pairs",
            pairs.to_str().unwrap(),
            "--template",
            "llava_plain",
            "--dry-run",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_err = |pairs: &Path, extra: &[&str]| -> String {
        let mut a = base(pairs);
        a.extend(extra.iter().map(|s| s.to_string()));
        hdpo_err(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let lines: Vec<String> = std::fs::read_to_string(&good)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Corrupt JSON on the second line.
    let bad = tmp.path().join("corrupt.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"id\": \"pair1\", \"kind\n", lines[0])).unwrap();
    let e = run_err(&bad, &[]);
    assert!(e.contains("corrupt.jsonl") && e.contains("line 2"), "{e}");
    // A missing field names the record and the field.
    let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
    v.as_object_mut().unwrap().remove("rejected");
    let bad = tmp.path().join("nofield.jsonl");
    std::fs::write(&bad, format!("{}\n{}\n", lines[0], v)).unwrap();
    let e = run_err(&bad, &[]);
    assert!(
        e.contains("nofield.jsonl") && e.contains("record 1") && e.contains("'rejected'"),
        "{e}"
    );
    // A missing image names the file, record, id and field.
    let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
    v["rejected_image"] = "images/none.png".into();
    let bad = tmp.path().join("noimage.jsonl");
    std::fs::write(&bad, format!("{}\n{}\n", lines[0], v)).unwrap();
    let e = run_err(&bad, &[]);
    assert!(
        e.contains("noimage.jsonl")
            && e.contains("record 1 (id 'pair1')")
            && e.contains("'rejected_image'")
            && e.contains("none.png"),
        "{e}"
    );
    // An over-long prompt: an error naming the record and lengths, or a counted skip.
    let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
    v["prompt"] = vec!["chest"; 300].join(" ").into();
    let bad = tmp.path().join("long.jsonl");
    std::fs::write(&bad, format!("{}\n{}\n", lines[0], v)).unwrap();
    let e = run_err(&bad, &[]);
    assert!(
        e.contains("long.jsonl")
            && e.contains("record 1 (id 'pair1')")
            && e.contains("context length is 256")
            && e.contains("--skip-long"),
        "{e}"
    );
    let out = hdpo_cmd(
        &base(&bad)
            .iter()
            .map(String::as_str)
            .chain(["--skip-long"])
            .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped 1 of 2 pairs"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pairs"].as_array().unwrap().len(), 1);
    // The library refuses an over-long sequence too (no truncation, no panic).
    let (m, tok) = load_model(true);
    let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
    let item = SeqItem {
        prompt: vec!["chest"; 300].join(" "),
        response: "yes".into(),
        image: Some(tmp.path().join("images/img0.png")),
    };
    let e = format!("{:#}", policy.logps(&[item], true).unwrap_err());
    assert!(e.contains("16 image tokens") && e.contains("256"), "{e}");
    let p = PreferencePair {
        id: "x".into(),
        kind: "mis".into(),
        prompt: "q".into(),
        chosen: "a".into(),
        rejected: "b".into(),
        chosen_image: Some(tmp.path().join("images/missing.png")),
        rejected_image: Some(tmp.path().join("images/img0.png")),
        weight: 1.0,
    };
    let e = format!(
        "{:#}",
        preference::dry_run(&policy, &[p], loss_by_name("dpo", 0.1).unwrap().as_ref()).unwrap_err()
    );
    assert!(e.contains("missing.png"), "{e}");
}

fn mis_pairs(samples: &[Sample]) -> Vec<PreferencePair> {
    samples
        .iter()
        .map(|s| {
            let flipped = if s.answer == "Yes" { "No" } else { "Yes" };
            PreferencePair {
                id: s.id.clone(),
                kind: "mis".into(),
                prompt: s.question.clone().unwrap(),
                chosen: s.answer.clone(),
                rejected: flipped.into(),
                chosen_image: Some(s.images[0].clone()),
                rejected_image: Some(s.images[0].clone()),
                weight: if s.answer == "Yes" { 1.2 } else { 0.8 },
            }
        })
        .collect()
}

#[test]
fn hdpo_on_phantom_pairs_raises_held_out_margin_and_accuracy() {
    // Misdiagnosis pairs from phantom closed questions: chosen = the true
    // yes/no answer, rejected = the flipped one, same image. A random tiny
    // LLaVA with a fresh LoRA (B = 0, so π_θ = π_ref and every held-out
    // margin starts at 0) is trained with HDPO and measured on held-out pairs.
    let tmp = tempfile::tempdir().unwrap();
    balanced_phantom(tmp.path(), 5, 60, 30, 32);
    let train = mis_pairs(&closed(tmp.path(), Split::Train));
    let test = mis_pairs(&closed(tmp.path(), Split::Test));
    let mcfg = LlavaConfig::from_dir(&fixture()).unwrap();
    let mut m = LlavaModel::random(mcfg, Some(11), &LoadOptions::default()).unwrap();
    m.add_lora(all_linear_lora(), 11).unwrap();
    let tok = TextTokenizer::from_dir(&fixture(), &m.config).unwrap();
    let policy = LlavaPolicy::new(&m, &tok, ChatTemplate::LlavaPlain).unwrap();
    let loss = loss_by_name("hdpo", 0.1).unwrap();
    let before = preference::evaluate(&policy, &test, loss.as_ref(), None).unwrap();
    assert_eq!(before.margin(), 0.0);
    let mut c = PreferenceConfig::phantom();
    c.run.epochs = 2;
    c.run.batch_size = 8;
    c.run.micro_batch_size = 4;
    c.optim.learning_rate = 3e-3;
    let s = preference::train(&policy, &train, loss.as_ref(), &c, &tmp.path().join("run")).unwrap();
    assert!(!s.run.halted);
    let after = preference::evaluate(&policy, &test, loss.as_ref(), None).unwrap();
    eprintln!(
        "phantom held-out pairs ({}): margin {:.4} -> {:.4}, accuracy {:.3} -> {:.3}",
        test.len(),
        before.margin(),
        after.margin(),
        before.accuracy(),
        after.accuracy()
    );
    // Measured: margin 0 -> 0.127, accuracy 0 -> 0.653, which is exactly the
    // held-out share of "no" answers: from random weights in 2 epochs the
    // policy learns the answer prior, not the images (the SFT test above
    // runs HDPO after SFT, where the images matter).
    assert!(after.margin() > 0.05, "margin {}", after.margin());
    assert!(after.accuracy() > 0.6, "accuracy {}", after.accuracy());
    // The log has TRL's metrics, per kind too.
    let log = read_log(&tmp.path().join("run"));
    assert!(log[0]["by_kind"]["mis"]["rewards/margins"].is_number());
}
