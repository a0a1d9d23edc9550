//! Runs never mix models, settings or outputs (issue: "runs must never mix models, settings
//! or outputs"): each case a probe of the README's by-hand pipeline found, as a CLI test on
//! the transformers/PEFT fixture `tiny_llava` and small phantom data.
//!
//! - reference log-probs and checkpoints of one model are never reused by another;
//! - an output never overwrites an input;
//! - an output being written is locked;
//! - resuming with other settings is refused, naming what differs;
//! - `merge` checks adapters as training does; a config with fewer layers than its checkpoint
//!   is refused;
//! - `phantom --out` over an earlier dataset leaves none of its files;
//! - numbers out of range, NaN losses and weights, duplicate ids, over-long prompts, truncated
//!   images and absurd token budgets are refused with a named error.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hdpo::data::phantom::PhantomConfig;

mod common;
use common::{hdpo_cmd, hdpo_err, hdpo_ok, tiny_llava, write_fixture_pairs};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the fixture model folder (config, weights, tokenizer), without the adapter.
fn copy_model(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "generation_config.json",
    ] {
        let src = tiny_llava().join(f);
        if src.exists() {
            std::fs::copy(&src, to.join(f)).unwrap();
        }
    }
    to.to_path_buf()
}

fn copy_adapter(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(tiny_llava().join("lora_adapter").join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn train_args<'a>(model: &'a str, pairs: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "hdpo",
        "--model",
        model,
        "--pairs",
        pairs,
        "--template",
        "llava_plain",
        "--out",
        out,
        "--preset",
        "phantom",
        "--batch-size",
        "1",
        "--checkpoint-every",
        "1",
        "--lora-r",
        "4",
    ]
}

fn with<'a>(mut base: Vec<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    base.extend_from_slice(extra);
    base
}

fn phantom(dir: &Path, seed: u64) {
    let cfg = PhantomConfig {
        seed,
        train: 3,
        val: 0,
        test: 3,
        size: 32,
        ..PhantomConfig::default()
    };
    hdpo::data::phantom::generate(&cfg, dir).unwrap();
}

/// Case 1: a run folder holding another model's reference log-probs (a run killed before its
/// first checkpoint, then started again on another model) is refused, and so is `--resume`
/// with another model; the same model may continue.
#[test]
fn reference_logprobs_and_checkpoints_are_never_reused_by_another_model() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = write_fixture_pairs(&tmp.path().join("pairs"));
    let m1 = copy_model(&tmp.path().join("M1"));
    let m2 = copy_model(&tmp.path().join("M2"));
    // M2: another model (the fixture with its adapter merged).
    let a = copy_adapter(&tmp.path().join("A"));
    let merged = tmp.path().join("M2m");
    hdpo_ok(&[
        "merge",
        "--model",
        s(&m2),
        "--adapter",
        s(&a),
        "--out",
        s(&merged),
    ]);
    let out = tmp.path().join("kn");
    hdpo_ok(&with(
        train_args(s(&m1), s(&pairs), s(&out)),
        &["--max-steps", "1"],
    ));
    assert!(out.join("ref_logps.jsonl").is_file());
    // As if killed before its first checkpoint: only the reference cache is left.
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    let e = hdpo_err(&train_args(s(&merged), s(&pairs), s(&out)));
    assert!(e.contains("model: was") && e.contains("--overwrite"), "{e}");
    let e = hdpo_err(&with(
        train_args(s(&merged), s(&pairs), s(&out)),
        &["--resume"],
    ));
    assert!(e.contains("model: was"), "{e}");
    // Other settings are named too.
    let e = hdpo_err(&with(
        train_args(s(&m1), s(&pairs), s(&out)),
        &["--lr", "0.5"],
    ));
    assert!(
        e.contains("config: was") && !e.contains("model: was"),
        "{e}"
    );
    // The same run continues; --overwrite starts the other model afresh, with rewards 0 at
    // the first step (its own reference).
    hdpo_ok(&train_args(s(&m1), s(&pairs), s(&out)));
    hdpo_ok(&with(
        train_args(s(&merged), s(&pairs), s(&out)),
        &["--overwrite"],
    ));
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    assert!(
        first["rewards/chosen"].as_f64().unwrap().abs() < 1e-9,
        "{first}"
    );
}

/// Case 2: an output equal to an input, or inside an input model folder, is refused before
/// anything is written; the input is left as it was.
#[test]
fn outputs_never_overwrite_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("p.jsonl");
    let rows =
        "{\"id\":\"a\",\"reference\":\"yes\",\"prediction\":\"yes\",\"answer_type\":\"CLOSED\"}\n";
    std::fs::write(&preds, rows).unwrap();
    for kind in ["vqa", "report"] {
        let e = hdpo_err(&[
            "eval",
            kind,
            "--predictions",
            s(&preds),
            "--per-sample",
            s(&preds),
        ]);
        assert!(e.contains("same file"), "{e}");
        assert_eq!(std::fs::read_to_string(&preds).unwrap(), rows);
    }
    let data = tmp.path().join("d");
    phantom(&data, 0);
    let test_file = data.join("test.json");
    let before = std::fs::read(&test_file).unwrap();
    let m = copy_model(&tmp.path().join("M"));
    let e = hdpo_err(&[
        "predict",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--format",
        "phantom",
        "--template",
        "llava_plain",
        "--out",
        s(&test_file),
        "--max-new-tokens",
        "2",
    ]);
    assert!(e.contains("would overwrite part of --data"), "{e}");
    assert_eq!(std::fs::read(&test_file).unwrap(), before);
    let a = copy_adapter(&tmp.path().join("A"));
    let weights = std::fs::read(m.join("model.safetensors")).unwrap();
    let e = hdpo_err(&[
        "merge",
        "--model",
        s(&m),
        "--adapter",
        s(&a),
        "--out",
        s(&m),
    ]);
    assert!(e.contains("overlaps --model"), "{e}");
    let e = hdpo_err(&[
        "train",
        "sft",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--format",
        "phantom",
        "--template",
        "llava_plain",
        "--out",
        s(&m),
        "--preset",
        "phantom",
    ]);
    assert!(e.contains("overlaps --model"), "{e}");
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), weights);
    assert!(!m.join("config.json.bak").exists() && m.join("config.json").is_file());
}

/// Case 3: a second run on an output another live process is writing is refused; a lock
/// left by a process that has ended is taken over.
#[test]
fn an_output_being_written_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = write_fixture_pairs(&tmp.path().join("pairs"));
    let out = tmp.path().join("ct");
    std::fs::create_dir_all(&out).unwrap();
    // This test's own process is alive: its pid in the lock stands for a running writer.
    std::fs::write(out.join(".hdpo.lock"), format!("{}\n", std::process::id())).unwrap();
    let fx = tiny_llava();
    let e = hdpo_err(&with(
        train_args(s(&fx), s(&pairs), s(&out)),
        &["--max-steps", "1"],
    ));
    assert!(e.contains("being written by another hdpo run"), "{e}");
    assert!(!out.join("train_log.jsonl").exists());
    std::fs::write(out.join(".hdpo.lock"), "4294967295\n").unwrap();
    hdpo_ok(&with(
        train_args(s(&fx), s(&pairs), s(&out)),
        &["--max-steps", "1"],
    ));
    assert!(
        !out.join(".hdpo.lock").exists(),
        "the lock is released at the end"
    );
}

/// Case 4: `predict` never resumes from another model's partial rows.
#[test]
fn predict_resumes_only_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    phantom(&data, 0);
    let m = copy_model(&tmp.path().join("M"));
    let a = copy_adapter(&tmp.path().join("A"));
    let out = tmp.path().join("preds.jsonl");
    let args = |adapter: bool| {
        let mut v = vec![
            "predict",
            "--model",
            s(&m),
            "--data",
            s(&data),
            "--format",
            "phantom",
            "--template",
            "llava_plain",
            "--out",
            s(&out),
            "--max-new-tokens",
            "2",
        ];
        if adapter {
            v.extend(["--adapter", s(&a)]);
        }
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |v: Vec<String>| hdpo_cmd(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(args(false)).status.success());
    // As if the adapter run had been killed: its partial rows are there.
    let rows = std::fs::read_to_string(&out).unwrap();
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    std::fs::write(&partial, rows.lines().next().unwrap().to_string() + "\n").unwrap();
    let o = run(args(true));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("adapter: was (none)"),
        "{e}"
    );
    // The same model resumes its own partial file.
    let o = run(args(false));
    assert!(o.status.success());
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(summary.contains("\"resumed\":1"), "{summary}");
}

/// Case 4: curation killed and rerun with another λ (or encoder) is refused, naming the
/// setting, instead of mixing rows of both.
#[test]
fn curation_rerun_with_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    phantom(&data, 0);
    let enc = tmp.path().join("enc");
    hdpo_ok(&[
        "align",
        "--data",
        s(&data),
        "--format",
        "phantom-report",
        "--out",
        s(&enc),
        "--epochs",
        "1",
        "--image-size",
        "32",
    ]);
    let out = tmp.path().join("cc/pairs.jsonl");
    let curate = |lambda: &str, extra: &[&str]| {
        let lambda = format!("--lambda={lambda}");
        let mut v = vec![
            "curate",
            "--data",
            s(&data),
            "--format",
            "phantom",
            "--heatmaps",
            "mask",
            "--encoder",
            s(&enc),
            "--out",
            s(&out),
            &lambda,
        ];
        v.extend_from_slice(extra);
        hdpo_cmd(&v)
    };
    assert!(curate("1", &[]).status.success());
    let o = curate("0", &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("config: was"), "{e}");
    assert!(curate("1", &[]).status.success(), "the same run is a no-op");
    assert!(curate("0", &["--overwrite"]).status.success());
    for p in hdpo::data::pairs::read_pairs(&out).unwrap() {
        assert_eq!(p.weight, 1.0, "λ = 0 gives w = 1 for every pair");
    }
    // Negative λ never reaches curation.
    let o = curate("-10", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(">= 0"));
}

/// Case 5: `merge` refuses an adapter whose config disagrees with its tensors (rank,
/// target modules), as loading it for training does.
#[test]
fn merge_checks_the_adapter_against_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = tiny_llava();
    let bad_r = copy_adapter(&tmp.path().join("r2"));
    edit_json(&bad_r.join("adapter_config.json"), |v| v["r"] = 2.into());
    let e = hdpo_err(&[
        "merge",
        "--model",
        s(&fx),
        "--adapter",
        s(&bad_r),
        "--out",
        s(&tmp.path().join("o1")),
    ]);
    assert!(e.contains("says r = 2"), "{e}");
    let bad_t = copy_adapter(&tmp.path().join("t"));
    edit_json(&bad_t.join("adapter_config.json"), |v| {
        v["target_modules"] = ".*language_model.*\\.(k_proj)".into()
    });
    let e = hdpo_err(&[
        "merge",
        "--model",
        s(&fx),
        "--adapter",
        s(&bad_t),
        "--out",
        s(&tmp.path().join("o2")),
    ]);
    assert!(e.contains("is not matched by target_modules"), "{e}");
    assert!(!tmp.path().join("o1").join("model.safetensors").exists());
}

/// Case 6: a config with fewer layers than its checkpoint is refused (no layer is dropped
/// silently) by every command that loads it.
#[test]
fn a_config_with_fewer_layers_than_its_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = copy_model(&tmp.path().join("M"));
    edit_json(&m.join("config.json"), |v| {
        v["text_config"]["num_hidden_layers"] = 1.into()
    });
    let img = tiny_llava().join("images/img0.png");
    let e = hdpo_err(&[
        "generate",
        "--model",
        s(&m),
        "--image",
        s(&img),
        "--template",
        "llava_plain",
        "--prompt",
        "what",
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        e.contains("has 2 layers under") && e.contains("declares 1"),
        "{e}"
    );
}

/// Case 7: `phantom --out` over an earlier dataset leaves none of its files.
#[test]
fn phantom_over_an_earlier_dataset_leaves_no_stale_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ph");
    phantom(&d, 0);
    let stale = d.join("heatmaps").join("stale_study_lesion.npy");
    std::fs::write(&stale, b"old").unwrap();
    phantom(&d, 1);
    assert!(!stale.exists());
    assert!(d.join("phantom.json").is_file());
    // A folder that is not a phantom dataset is never cleared.
    let other = tmp.path().join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let e = hdpo_err(&["phantom", "--out", s(&other), "--train", "2", "--test", "1"]);
    assert!(e.contains("holds no phantom dataset"), "{e}");
    assert!(other.join("keep.txt").is_file());
}

/// Case 8: values that must not pass are refused at parse time, naming the option.
#[test]
fn numbers_out_of_range_are_refused_where_they_are_parsed() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = tiny_llava();
    let pairs = write_fixture_pairs(&tmp.path().join("pairs"));
    let out = tmp.path().join("run");
    for (opt, val) in [
        ("--lora-dropout", "1.5"),
        ("--max-steps", "0"),
        ("--lora-r", "0"),
        ("--lr", "NaN"),
        ("--epochs", "0"),
        ("--alpha", "-1"),
    ] {
        let arg = format!("{opt}={val}");
        let e = hdpo_err(&with(train_args(s(&fx), s(&pairs), s(&out)), &[&arg]));
        assert!(e.contains(opt), "{opt} {val}: {e}");
    }
    assert!(!out.exists(), "nothing was written");
    let img = fx.join("images/img0.png");
    for (opt, val) in [("--temperature", "NaN"), ("--max-new-tokens", "100000")] {
        let e = hdpo_err(&[
            "generate",
            "--model",
            s(&fx),
            "--image",
            s(&img),
            "--template",
            "llava_plain",
            "--prompt",
            "what",
            opt,
            val,
        ]);
        assert!(e.contains(opt), "{opt}: {e}");
    }
    let e = hdpo_err(&[
        "model",
        "info",
        "--model",
        s(&fx),
        "--seq-len",
        "4294967296",
    ]);
    assert!(e.contains("--seq-len"), "{e}");
    for (opt, val) in [("--lr", "NaN"), ("--epochs", "0")] {
        let e = hdpo_err(&[
            "align",
            "--data",
            s(&tmp.path().join("x")),
            "--out",
            s(&tmp.path().join("enc")),
            opt,
            val,
        ]);
        assert!(e.contains(opt), "{opt}: {e}");
    }
}

/// Case 8: a pair weight that overflows the loss stops the dry run with a named error.
#[test]
fn a_non_finite_loss_stops_the_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = write_fixture_pairs(&tmp.path().join("pairs"));
    let text = std::fs::read_to_string(&pairs).unwrap();
    let huge: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["weight"] = 1e308.into();
            v.to_string()
        })
        .collect();
    std::fs::write(&pairs, huge.join("\n") + "\n").unwrap();
    let fx = tiny_llava();
    let out = tmp.path().join("run");
    let e = hdpo_err(&with(
        train_args(s(&fx), s(&pairs), s(&out)),
        &["--dry-run"],
    ));
    assert!(e.contains("not finite"), "{e}");
}

/// Case 8: NaN weights make generation fail by name instead of writing empty answers.
#[test]
fn nan_weights_stop_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let m = copy_model(&tmp.path().join("M"));
    let file = m.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = tensors
        .keys()
        .find(|k| k.contains("lm_head"))
        .unwrap()
        .clone();
    let t = &tensors[&name];
    let nan = Tensor::full(f32::NAN, t.shape(), &Device::Cpu).unwrap();
    tensors.insert(name, nan);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let data = tmp.path().join("d");
    phantom(&data, 0);
    let e = hdpo_err(&[
        "predict",
        "--model",
        s(&m),
        "--data",
        s(&data),
        "--format",
        "phantom",
        "--template",
        "llava_plain",
        "--out",
        s(&tmp.path().join("p.jsonl")),
        "--max-new-tokens",
        "2",
    ]);
    assert!(e.contains("NaN or infinite"), "{e}");
}

/// Case 8: prompts longer than the context and truncated JPEGs are refused.
#[test]
fn over_long_prompts_and_truncated_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = tiny_llava();
    let img = fx.join("images/img0.png");
    let long = vec!["the"; 400].join(" ");
    for cmd in ["logprobs", "generate"] {
        let mut args = vec![
            cmd,
            "--model",
            s(&fx),
            "--image",
            s(&img),
            "--template",
            "llava_plain",
            "--prompt",
            &long,
        ];
        if cmd == "logprobs" {
            args.extend(["--response", "yes"]);
        }
        let e = hdpo_err(&args);
        assert!(e.contains("max_position_embeddings"), "{cmd}: {e}");
    }
    // A real VQA-RAD JPEG cut in half.
    let jpg = std::fs::read_dir(common::shared_dir().join("data/vqa_rad/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jpg"))
        .unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = hdpo_err(&[
        "generate",
        "--model",
        s(&fx),
        "--image",
        s(&cut),
        "--template",
        "llava_plain",
        "--prompt",
        "what",
        "--max-new-tokens",
        "2",
    ]);
    assert!(e.contains("cut.jpg"), "{e}");
}

/// Case 8: duplicate ids are refused when a dataset or a prediction file is read.
#[test]
fn duplicate_ids_are_refused_at_load_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ph");
    phantom(&d, 0);
    // Give the second test question the first one's qid.
    let test = d.join("test.json");
    edit_json(&test, |v| {
        let q = v[0]["qid"].clone();
        v[1]["qid"] = q;
    });
    let e = format!(
        "{:#}",
        hdpo::data::load(
            hdpo::data::DatasetFormat::Phantom,
            &d,
            &hdpo::data::LoadOptions::default()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("occurs twice") && e.contains("field 'id'"),
        "{e}"
    );
    let preds = tmp.path().join("p.jsonl");
    let row =
        "{\"id\":\"a\",\"reference\":\"yes\",\"prediction\":\"yes\",\"answer_type\":\"CLOSED\"}\n";
    std::fs::write(&preds, row.repeat(2)).unwrap();
    let e = hdpo_err(&["eval", "vqa", "--predictions", s(&preds)]);
    assert!(e.contains("repeats line 1"), "{e}");
}

/// The README's by-hand pipeline with relative paths, run from a fresh working directory:
/// every command that writes takes a relative output, and every stored path resolves
/// whatever the working directory (the rule: relative to the file that stores it).
#[test]
fn the_by_hand_pipeline_runs_with_relative_paths_from_another_directory() {
    let cwd = tempfile::tempdir().unwrap();
    // One command line of the README's "by hand" section (paths hold no spaces).
    let run = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().collect();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
            .current_dir(cwd.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "hdpo {line} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let sft = "train sft --model M --data phantom --format phantom --template llava_plain \
               --out runs/sft --preset phantom --epochs 1";
    for line in [
        "phantom --out phantom --seed 0 --train 6 --test 3 --size 32",
        "align --data phantom --format phantom-report --out encoder --epochs 1 --image-size 32",
        "curate --data phantom --format phantom --heatmaps mask --encoder encoder \
         --out pairs/pairs.jsonl",
        "init-model --tokenizer-from phantom --format phantom --out M",
        // Halted after 2 steps, then finished: the same run, resumed.
        &format!("{sft} --max-steps 2"),
        &format!("{sft} --resume"),
        "merge --model M --adapter runs/sft/adapter --out M_sft",
        "train hdpo --model M_sft --pairs pairs/pairs.jsonl --template llava_plain \
         --out runs/hdpo --preset phantom --epochs 1",
        "predict --model M_sft --adapter runs/hdpo/adapter --data phantom --format phantom \
         --template llava_plain --out preds.jsonl --max-new-tokens 3",
    ] {
        run(line);
    }
    let scores = run("eval vqa --predictions preds.jsonl --json");
    let v: serde_json::Value = serde_json::from_str(&scores).unwrap();
    assert!(v.is_object(), "{scores}");
    // Pair files hold paths inside their own folder, never the working directory's prefix.
    for p in hdpo::data::pairs::read_pairs(&cwd.path().join("pairs/pairs.jsonl")).unwrap() {
        assert!(
            !p.chosen_image.starts_with("phantom/"),
            "{}",
            p.chosen_image
        );
    }
}
