//! Helpers shared by the integration tests: the model fixtures of
//! `../shared/fixtures/models` (made with transformers / PEFT / TRL, see the
//! fixtures' README) and their reference outputs. Each test crate uses a
//! part of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use hdpo::encode::align::AlignConfig;

/// `fixtures/models/<name>`.
pub fn model_fixture(name: &str) -> PathBuf {
    hdpo::util::shared_dir().join("fixtures/models").join(name)
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

/// Run this build's `hdpo` with `args`; panics with its stderr unless it succeeds; returns stdout.
pub fn hdpo_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hdpo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
