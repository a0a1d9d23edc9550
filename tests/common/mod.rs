//! Helpers shared by the integration tests: the model fixtures of
//! `../shared/fixtures/models` (made with transformers / PEFT / TRL, see the
//! fixtures' README) and their reference outputs. Each test crate uses a
//! part of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use hdpo::encode::align::AlignConfig;

/// The shared folder with the reference fixtures and real data samples:
/// `$HDPO_SHARED` if set, else `../shared` beside this crate's manifest. Only the tests
/// read it; the library and the binary never do.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("HDPO_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// `fixtures/models/<name>`.
pub fn model_fixture(name: &str) -> PathBuf {
    shared_dir().join("fixtures/models").join(name)
}

/// The fixture's `reference.safetensors`.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let p = model_fixture(name).join("reference.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixture's `reference.json`.
pub fn reference_json(name: &str) -> serde_json::Value {
    let p = model_fixture(name).join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `fixtures/models/tiny_llava` (LLaVA: CLIP tower, projector, Mistral decoder, PEFT adapter).
pub fn tiny_llava() -> PathBuf {
    model_fixture("tiny_llava")
}

pub fn tiny_llava_reference() -> HashMap<String, Tensor> {
    reference("tiny_llava")
}

pub fn tiny_llava_reference_json() -> serde_json::Value {
    reference_json("tiny_llava")
}

/// All elements as f64, flattened.
pub fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A dual encoder small enough to align in seconds (32 px, 4 x 4 patches,
/// one layer per tower, 16-d space, 20 epochs).
pub fn small_align_config() -> AlignConfig {
    AlignConfig {
        image_size: 32,
        patch_size: 8,
        vision_hidden: 32,
        vision_layers: 1,
        vision_heads: 2,
        text_hidden: 32,
        text_layers: 1,
        text_heads: 2,
        max_text_len: 16,
        projection_dim: 16,
        epochs: 20,
        batch_size: 16,
        learning_rate: 1e-3,
        seed: 3,
        ..AlignConfig::default()
    }
}

/// The fixture's two DPO pairs as a pair file (images copied beside it),
/// with the fixture's weights w = [0.7, 1.3].
pub fn write_fixture_pairs(dir: &Path) -> PathBuf {
    let j = tiny_llava_reference_json();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    for i in 0..5 {
        std::fs::copy(
            tiny_llava().join(format!("images/img{i}.png")),
            dir.join(format!("images/img{i}.png")),
        )
        .unwrap();
    }
    let w: Vec<f64> = j["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let mut lines = String::new();
    for (i, p) in j["dpo"]["pairs"].as_array().unwrap().iter().enumerate() {
        // The fixture's prompt is the full llava_plain text; the pair record holds the question.
        let full = p["prompt"].as_str().unwrap();
        let q = full
            .strip_prefix("USER: <image>\n")
            .unwrap()
            .strip_suffix(" ASSISTANT:")
            .unwrap();
        let rec = serde_json::json!({
            "id": format!("pair{i}"),
            "kind": if i == 0 { "mis" } else { "fp" },
            "prompt": q,
            // The template puts the space before the answer.
            "chosen": p["chosen"].as_str().unwrap().trim_start(),
            "rejected": p["rejected"].as_str().unwrap().trim_start(),
            "chosen_image": format!("images/img{}.png", p["chosen_image"]),
            "rejected_image": format!("images/img{}.png", p["rejected_image"]),
            "weight": w[i],
        });
        lines.push_str(&rec.to_string());
        lines.push('\n');
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

pub fn hdpo_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(args)
        .output()
        .unwrap()
}

pub fn hdpo_ok(args: &[&str]) -> String {
    let out = hdpo_cmd(args);
    assert!(
        out.status.success(),
        "hdpo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn hdpo_err(args: &[&str]) -> String {
    let out = hdpo_cmd(args);
    assert!(!out.status.success(), "hdpo {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
