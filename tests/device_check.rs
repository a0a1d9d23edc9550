//! The GPU check's parts that run without a GPU: the device parity report
//! (CPU f32 against itself and against CPU bf16), the `hdpo model
//! device-check` CLI, the LLaVA-Med 7B shape through `hdpo model info`, the
//! bench flags of `scripts/gpu_check.sh` on the tiny fixture, and the script
//! itself in its `--cpu` mode.

use std::path::PathBuf;
use std::process::Command;

use candle_core::{DType, Device};
use hdpo::model::bench::dpo_step_flops;
use hdpo::model::device_check::{device_parity, tolerances};
use hdpo::model::LlavaConfig;

mod common;
use common::{hdpo_ok as hdpo, tiny_llava as fixture};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shape_7b() -> PathBuf {
    repo().join("configs/shapes/llava-med-7b")
}

#[test]
fn cpu_f32_against_itself_agrees_and_bf16_differs_within_its_tolerance() {
    let adapter = fixture().join("lora_adapter");
    let same = device_parity(&fixture(), &adapter, &Device::Cpu, "cpu", DType::F32).unwrap();
    assert_eq!(same.sequences, 4);
    assert_eq!(same.lora_tensors, 8, "r 4 on q/v of 2 layers: A and B each");
    assert!(same.response_tokens >= 4 * 4);
    assert!(
        same.max_abs_logprob_diff <= 1e-6 && same.max_rel_grad_diff <= 1e-6,
        "{same:?}"
    );
    assert!(same.pass);

    let bf16 = device_parity(&fixture(), &adapter, &Device::Cpu, "cpu", DType::BF16).unwrap();
    eprintln!("CPU bf16 vs CPU f32: {bf16:?}");
    assert!(bf16.pass, "{bf16:?}");
    assert_eq!(
        (bf16.logprob_tolerance, bf16.grad_tolerance),
        tolerances(DType::BF16)
    );
    // bf16 rounding is visible: the f32 tolerance would catch a bf16-sized error.
    let (f32_lp, f32_grad) = tolerances(DType::F32);
    assert!(bf16.max_abs_logprob_diff > f32_lp, "{bf16:?}");
    assert!(bf16.max_rel_grad_diff > f32_grad, "{bf16:?}");
    assert!(bf16.rel_l2_grad_diff > 0.0 && bf16.rel_l2_grad_diff < bf16.grad_tolerance);
}

#[test]
fn device_check_cli_on_cpu_and_without_a_gpu() {
    let model = fixture();
    let model = model.to_str().unwrap();
    let out = hdpo(&[
        "model",
        "device-check",
        "--model",
        model,
        "--device",
        "cpu",
        "--dtypes",
        "f32",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j[0]["dtype"], "f32");
    assert_eq!(j[0]["pass"], true);
    assert!(j[0]["max_abs_logprob_diff"].as_f64().unwrap() <= 1e-6);
    let bad = Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["model", "device-check", "--model", model, "--device", "tpu"])
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "an unknown device is an error, not a skip"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device `tpu`"));
    if !cfg!(feature = "cuda") {
        let out = hdpo(&[
            "model",
            "device-check",
            "--model",
            model,
            "--device",
            "cuda",
        ]);
        assert!(out.starts_with("skipped: no GPU"), "{out}");
    }
}

#[test]
fn llava_med_7b_shape_is_described_by_model_info() {
    let out = hdpo(&[
        "model",
        "info",
        "--model",
        shape_7b().to_str().unwrap(),
        "--seq-len",
        "1024",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["image_tokens"], 576);
    // Mistral-7B has 7 241 732 096 parameters with its 32 000-token vocabulary;
    // the 64 extra rows of embedding and LM head add 2 * 64 * 4096.
    assert_eq!(
        j["params_decoder"].as_u64().unwrap(),
        7_241_732_096 + 2 * 64 * 4096
    );
    // CLIP ViT-L/14 at 336 px: 303 179 776 parameters at 224 px (with the
    // unused post-layernorm of 2 * 1024) plus 320 more position embeddings.
    let vision = j["params_vision"].as_u64().unwrap();
    assert!(
        (303_000_000..305_000_000).contains(&vision),
        "vision tower has {vision} parameters"
    );
    // mlp2x_gelu projector: 1024 -> 4096 -> 4096 with biases.
    assert_eq!(
        j["params_projector"].as_u64().unwrap(),
        1024 * 4096 + 4096 + 4096 * 4096 + 4096
    );
}

#[test]
fn dpo_step_flops_of_the_7b_shape() {
    let cfg = LlavaConfig::from_dir(&shape_7b()).unwrap();
    // Decoder linear parameters per layer: q, o 4096^2 each, k, v 4096 * 1024
    // each, gate/up/down 3 * 4096 * 14336.
    let per_layer = 2.0 * 4096.0 * 4096.0 + 2.0 * 4096.0 * 1024.0 + 3.0 * 4096.0 * 14336.0;
    let t = 1024.0;
    let attention = 4.0 * t * t * 4096.0;
    let head = 2.0 * (t / 2.0) * 4096.0 * 32064.0;
    let decoder_fwd = 32.0 * (2.0 * t * per_layer + attention) + head;
    let text_only = dpo_step_flops(&cfg, 1024, 8, false);
    assert!((text_only / (8.0 * 2.0 * decoder_fwd) - 1.0).abs() < 1e-12);
    // About 2 * 2 * 7e9 FLOPs per token (forward + input gradients), plus attention.
    let per_token = text_only / (8.0 * t);
    assert!((2.9e10..3.2e10).contains(&per_token), "{per_token:e}");
    // The frozen ViT-L/14-336 forward on 8 images: about 2 * 0.3e9 * 577 FLOPs each.
    let vision = dpo_step_flops(&cfg, 1024, 8, true) - text_only;
    assert!((8.0 * 3.0e11..8.0 * 4.5e11).contains(&vision), "{vision:e}");
}

#[test]
fn bench_train_with_the_gpu_check_flags_on_the_tiny_shape() {
    let out = hdpo(&[
        "bench",
        "train",
        "--model",
        fixture().to_str().unwrap(),
        "--shape",
        "model",
        "--dtype",
        "bf16",
        "--lora-r",
        "8",
        "--lora-targets",
        "q_proj,k_proj,v_proj,o_proj",
        "--images",
        "--batch",
        "1",
        "--seq-len",
        "48",
        "--iters",
        "1",
        "--peak-tflops",
        "1",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["shape"]["image_tokens"], 16);
    assert_eq!(j["shape"]["dtype"], "bf16");
    // r 8 on q (64 -> 64), k (64 -> 32), v (64 -> 32), o (64 -> 64) of 2 layers.
    let per_layer = 8 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64));
    assert_eq!(j["result"]["trainable_params"], 2 * per_layer);
    let r = &j["result"];
    let mfu = r["mfu"].as_f64().unwrap();
    let achieved = r["achieved_tflops"].as_f64().unwrap();
    assert!(mfu > 0.0 && (mfu - achieved).abs() < 1e-12, "{r}");
    assert_eq!(r["tokens_per_step"], 2 * 48);
    let err = Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args([
            "bench",
            "train",
            "--lora-targets",
            "q_proj;rm",
            "--iters",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--lora-targets"));
}

/// `scripts/gpu_check.sh --cpu` with this test build's binary: every step
/// that needs no GPU, as the GPU machine will run it.
#[test]
fn gpu_check_script_runs_its_cpu_mode() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/gpu_check.sh"))
        .args(["--cpu", "--out"])
        .arg(out_dir.path())
        .env("HDPO_BIN", env!("CARGO_BIN_EXE_hdpo"))
        .env("HDPO_SHARED", common::shared_dir())
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(out_dir.path().join("summary.txt")).unwrap_or_default();
    assert!(
        out.status.success(),
        "gpu_check.sh --cpu failed:\n{summary}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "parity: ok",
        "parity_cpu: ok",
        "model_info: ok",
        "bench: ok",
        "train: ok",
    ] {
        assert!(summary.contains(step), "no `{step}` in\n{summary}");
    }
    assert!(summary.contains("576 image tokens") || summary.contains("16 image tokens"));
    assert!(summary.contains("all steps passed (cpu)"), "{summary}");
}
