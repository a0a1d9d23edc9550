//! Helpers shared by the integration tests: the model fixtures of
//! `../shared/fixtures/models` (made with transformers / PEFT / TRL, see the
//! fixtures' README) and their reference outputs. Each test crate uses a
//! part of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

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
