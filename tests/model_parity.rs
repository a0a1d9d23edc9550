//! Parity of the LLaVA model with transformers / PEFT on `fixtures/models/tiny_llava`
//! (tolerances from fixtures/README.md section 1), loading variants, and the CLI.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use hdpo::model::checkpoint::Checkpoint;
use hdpo::model::template::ImageTokens;
use hdpo::model::{
    sequence_logprobs, Batch, ChatTemplate, EncodedSequence, Fwd, GenerateOptions, LlavaModel,
    LoadOptions, TextTokenizer,
};

mod common;
use common::{
    tiny_llava as fixture, tiny_llava_reference as reference,
    tiny_llava_reference_json as reference_json, vec_f64,
};

fn load(dir: &Path) -> LlavaModel {
    LlavaModel::load(dir, &LoadOptions::default()).unwrap()
}

/// `|a - b| <= atol + rtol |b|` elementwise, with the worst case in the message.
fn assert_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (vec_f64(a), vec_f64(b));
    let mut worst = (f64::NEG_INFINITY, 0usize);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let excess = if x.is_finite() {
            (x - y).abs() - (atol + rtol * y.abs())
        } else {
            f64::INFINITY
        };
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    assert!(
        worst.0 <= 0.0,
        "{what}: element {} is {} vs reference {} (excess {})",
        worst.1,
        a[worst.1],
        b[worst.1],
        worst.0
    );
}

fn ids_u32(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// A sequence from reference ids: image positions = the `<image>` ids,
/// response = positions `n_prompt..`.
fn seq_from_ids(ids: Vec<u32>, n_prompt: usize) -> EncodedSequence {
    let image_positions = ids
        .iter()
        .enumerate()
        .filter(|(_, &x)| x == 4)
        .map(|(i, _)| i)
        .collect();
    EncodedSequence {
        response_mask: (0..ids.len()).map(|i| i >= n_prompt).collect(),
        input_ids: ids,
        image_positions,
        prompt_len: n_prompt,
    }
}

const F32_TOL: (f64, f64) = (1e-4, 1e-4);

#[test]
fn vision_tower_and_projector_match_transformers() {
    let m = load(&fixture());
    let r = reference();
    let px = &r["prompt_pixel_values"];
    let fwd = Fwd::default();
    let hs = m.vision_hidden_states(px, &fwd).unwrap();
    assert_eq!(hs.len(), 3);
    let all = &r["vision_hidden_states_all"];
    for (i, h) in hs.iter().enumerate() {
        assert_close(
            &format!("vision hidden state {i}"),
            h,
            &all.i(i).unwrap(),
            F32_TOL.0,
            F32_TOL.1,
        );
    }
    let sel = m.vision_features(px, &fwd).unwrap();
    assert_close(
        "vision_selected_features",
        &sel,
        &r["vision_selected_features"],
        1e-4,
        1e-4,
    );
    let f = m.image_features(px, &fwd).unwrap();
    assert_close("image_features", &f, &r["image_features"], 1e-4, 1e-4);
}

#[test]
fn image_preprocessing_matches_clip_processor() {
    // TEMPORARY preprocessing (model::image), to be replaced by data::image.
    let r = reference();
    let (mean, std) = hdpo::model::image::normalisation(&fixture());
    let px = hdpo::model::image::load_clip_pixels(
        &fixture().join("images/img0.png"),
        32,
        mean,
        std,
        &Device::Cpu,
    )
    .unwrap();
    assert_close(
        "pixels",
        &px.unsqueeze(0).unwrap(),
        &r["prompt_pixel_values"],
        1e-6,
        0.0,
    );
}

#[test]
fn templates_and_tokenizer_reproduce_reference_ids() {
    let m = load(&fixture());
    let tok = TextTokenizer::from_dir(&fixture(), &m.config).unwrap();
    let r = reference();
    let j = reference_json();
    let t = ChatTemplate::from_name("llava_plain").unwrap();
    let q = "what abnormality is seen in the chest x-ray ?";
    assert_eq!(
        t.prompt_text(q, true),
        j["prompt_text"].as_str().unwrap(),
        "llava_plain prompt text"
    );
    let p = tok.encode_prompt(t, q, 16).unwrap();
    assert_eq!(p.input_ids, ids_u32(&r["prompt_input_ids"]));
    assert_eq!(p.image_positions, (3..19).collect::<Vec<_>>());
    let full = tok
        .encode_pair(t, q, "there is a small left pleural effusion .", 16)
        .unwrap();
    assert_eq!(full.input_ids, ids_u32(&r["full_input_ids"]));
    assert_eq!(full.prompt_len, 32);
    assert_eq!(full.response_len(), 9);
    // The DPO sequences (chosen/rejected of both pairs).
    for (i, s) in j["dpo"]["sequences"].as_array().unwrap().iter().enumerate() {
        let pair = &j["dpo"]["pairs"][i / 2];
        let prompt = pair["prompt"].as_str().unwrap();
        let q = prompt
            .strip_prefix("USER: <image>\n")
            .unwrap()
            .strip_suffix(" ASSISTANT:")
            .unwrap();
        let ans = pair[if i % 2 == 0 { "chosen" } else { "rejected" }]
            .as_str()
            .unwrap()
            .trim_start();
        let e = tok.encode_pair(t, q, ans, 16).unwrap();
        let want: Vec<u32> = s["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(e.input_ids, want, "dpo sequence {i}");
        assert_eq!(e.prompt_len, s["n_prompt"].as_u64().unwrap() as usize);
    }
    // Original-LLaVA splicing gives the same ids outside the image positions.
    let mut tok2 = TextTokenizer::from_dir(&fixture(), &m.config).unwrap();
    tok2.image_tokens = ImageTokens::Splice;
    let s = tok2
        .encode_pair(t, q, "there is a small left pleural effusion .", 16)
        .unwrap();
    assert_eq!(s.image_positions, full.image_positions);
    for (i, (a, b)) in s.input_ids.iter().zip(&full.input_ids).enumerate() {
        if !full.image_positions.contains(&i) {
            assert_eq!(a, b, "position {i}");
        }
    }
    // Other templates.
    let mi = ChatTemplate::from_name("mistral_instruct").unwrap();
    assert_eq!(mi.prompt_text("q ?", true), "[INST] <image>\nq ? [/INST]");
    let v = ChatTemplate::from_name("vicuna_v1").unwrap();
    assert!(v
        .prompt_text("q ?", true)
        .ends_with(" USER: <image>\nq ? ASSISTANT:"));
    assert!(v.prompt_text("q ?", true).starts_with("A chat between"));
    assert!(ChatTemplate::from_name("nope").is_err());
}

#[test]
fn prompt_and_full_forward_match_transformers() {
    let m = load(&fixture());
    let r = reference();
    let px = r["prompt_pixel_values"].i(0).unwrap();
    let j = reference_json();
    // Prompt only.
    let seq = seq_from_ids(ids_u32(&r["prompt_input_ids"]), 32);
    let b = Batch::new(&[seq], &[Some(px.clone())], 3, &Device::Cpu).unwrap();
    let fwd = Fwd::default();
    let h = m.hidden_states(&b, &fwd).unwrap();
    assert_close(
        "prompt_last_hidden_state",
        &h,
        &r["prompt_last_hidden_state"],
        1e-4,
        1e-4,
    );
    let logits = m.forward(&b, false).unwrap();
    assert_close("prompt_logits", &logits, &r["prompt_logits"], 1e-4, 1e-4);
    // Prompt + response + EOS.
    let seq = seq_from_ids(ids_u32(&r["full_input_ids"]), 32);
    let b = Batch::new(
        std::slice::from_ref(&seq),
        &[Some(px.clone())],
        3,
        &Device::Cpu,
    )
    .unwrap();
    let logits = m.forward(&b, false).unwrap();
    assert_close("full_logits", &logits, &r["full_logits"], 1e-4, 1e-4);
    let (tok, sum) = sequence_logprobs(&logits, &b.input_ids, &b.response_mask).unwrap();
    let tok = tok.i(0).unwrap().narrow(0, 32, 9).unwrap();
    assert_close(
        "response_token_logprobs",
        &tok,
        &r["response_token_logprobs"],
        1e-4,
        0.0,
    );
    let s = vec_f64(&sum)[0];
    let want = j["response_logprob_sum"].as_f64().unwrap();
    assert!((s - want).abs() <= 1e-3, "{s} vs {want}");
    // Original-LLaVA splicing: pad ids at the image positions, same logits.
    let mut spliced = seq.clone();
    for &p in &spliced.image_positions.clone() {
        spliced.input_ids[p] = 3;
    }
    let b2 = Batch::new(&[spliced], &[Some(px)], 3, &Device::Cpu).unwrap();
    let l2 = m.forward(&b2, false).unwrap();
    assert_close("spliced logits", &l2, &r["full_logits"], 1e-4, 1e-4);
}

#[test]
fn greedy_generation_matches_transformers_and_cache_equals_recompute() {
    let m = load(&fixture());
    let r = reference();
    let px = r["prompt_pixel_values"].i(0).unwrap();
    let seq = seq_from_ids(ids_u32(&r["prompt_input_ids"]), 32);
    let opts = GenerateOptions {
        max_new_tokens: 8,
        temperature: 0.0,
        seed: 0,
        eos_token_id: None,
        adapters: false,
    };
    let ids = m.generate(&seq, Some(&px), &opts).unwrap();
    assert_eq!(ids, ids_u32(&r["greedy_new_ids"]));
    let ids2 = m.generate_no_cache(&seq, Some(&px), &opts).unwrap();
    assert_eq!(ids2, ids);
    // Sampling is seeded: same seed, same tokens; and cache == recompute.
    let s = GenerateOptions {
        temperature: 1.0,
        seed: 7,
        ..opts.clone()
    };
    let a = m.generate(&seq, Some(&px), &s).unwrap();
    assert_eq!(a, m.generate(&seq, Some(&px), &s).unwrap());
    assert_eq!(a, m.generate_no_cache(&seq, Some(&px), &s).unwrap());
    // EOS stop: with EOS = the first greedy id, generation stops after it.
    let e = GenerateOptions {
        eos_token_id: Some(ids[0]),
        ..opts
    };
    assert_eq!(m.generate(&seq, Some(&px), &e).unwrap(), vec![ids[0]]);
}

fn dpo_sequences(r: &HashMap<String, Tensor>) -> (Vec<EncodedSequence>, Vec<Option<Tensor>>) {
    let j = reference_json();
    let mut seqs = Vec::new();
    let mut imgs = Vec::new();
    for (i, s) in j["dpo"]["sequences"].as_array().unwrap().iter().enumerate() {
        let ids = ids_u32(&r[&format!("dpo_seq{i}_input_ids")]);
        let n_prompt = s["n_prompt"].as_u64().unwrap() as usize;
        assert_eq!(
            ids.len() - n_prompt,
            s["n_response_incl_eos"].as_u64().unwrap() as usize
        );
        seqs.push(seq_from_ids(ids, n_prompt));
        let img = s["image"].as_u64().unwrap() as usize;
        imgs.push(Some(r["dpo_pixel_values"].i(img).unwrap()));
    }
    (seqs, imgs)
}

#[test]
fn dpo_policy_and_reference_logprobs_match_peft_one_by_one_and_batched() {
    let mut m = load(&fixture());
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let r = reference();
    let (seqs, imgs) = dpo_sequences(&r);
    let pol_ref = vec_f64(&r["dpo_policy_logps"]);
    let ref_ref = vec_f64(&r["dpo_ref_logps"]);
    for (i, (s, img)) in seqs.iter().zip(&imgs).enumerate() {
        let b = Batch::new(
            std::slice::from_ref(s),
            std::slice::from_ref(img),
            3,
            &Device::Cpu,
        )
        .unwrap();
        for (adapters, name, want) in [(true, "policy", &pol_ref), (false, "ref", &ref_ref)] {
            let logits = m.forward(&b, adapters).unwrap();
            let (tok, sum) = sequence_logprobs(&logits, &b.input_ids, &b.response_mask).unwrap();
            let got = vec_f64(&sum)[0];
            assert!(
                (got - want[i]).abs() <= 1e-3,
                "seq {i} {name}: {got} vs {}",
                want[i]
            );
            let n = s.response_len();
            let tok = tok.i(0).unwrap().narrow(0, s.prompt_len, n).unwrap();
            assert_close(
                &format!("seq {i} {name} token logprobs"),
                &tok,
                &r[&format!("dpo_seq{i}_{name}_token_logprobs")],
                1e-4,
                0.0,
            );
        }
    }
    // One right-padded batch of the 4 sequences with 4 different images.
    let b = Batch::new(&seqs, &imgs, 3, &Device::Cpu).unwrap();
    for (adapters, want) in [(true, &pol_ref), (false, &ref_ref)] {
        let logits = m.forward(&b, adapters).unwrap();
        let (_, sum) = sequence_logprobs(&logits, &b.input_ids, &b.response_mask).unwrap();
        for (i, (g, w)) in vec_f64(&sum).iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-3,
                "batched seq {i} ({adapters}): {g} vs {w}"
            );
        }
    }
}

// ---------------------------------------------------------------- loading variants

/// Write the fixture's tensors under renamed keys into `dir` (optionally in 2
/// shards with an index), with `config` as config.json.
fn write_variant(
    dir: &Path,
    rename: &dyn Fn(&str) -> String,
    dtype: DType,
    shards: bool,
    config: &serde_json::Value,
) {
    let src =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = src.keys().collect();
    names.sort();
    let renamed: Vec<(String, Tensor)> = names
        .iter()
        .map(|k| (rename(k), src[*k].to_dtype(dtype).unwrap()))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    if shards {
        let half = renamed.len() / 2;
        let mut weight_map = serde_json::Map::new();
        for (si, part) in [&renamed[..half], &renamed[half..]].iter().enumerate() {
            let file = format!("model-{:05}-of-00002.safetensors", si + 1);
            let map: HashMap<String, Tensor> = part.iter().cloned().collect();
            for k in map.keys() {
                weight_map.insert(k.clone(), serde_json::json!(file));
            }
            candle_core::safetensors::save(&map, dir.join(&file)).unwrap();
        }
        let idx = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string(&idx).unwrap(),
        )
        .unwrap();
    } else {
        let map: HashMap<String, Tensor> = renamed.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    ] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
}

fn fixture_config() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap()
}

fn full_logits(m: &LlavaModel) -> Tensor {
    let r = reference();
    let px = r["prompt_pixel_values"].i(0).unwrap();
    let seq = seq_from_ids(ids_u32(&r["full_input_ids"]), 32);
    let b = Batch::new(&[seq], &[Some(px)], 3, &Device::Cpu).unwrap();
    m.forward(&b, false).unwrap()
}

/// transformers 4.52+ names, sharded, with a transformers-4.x config
/// (`rope_theta`, `torch_dtype`) and a `vision_model.` level.
fn new_layout_name(k: &str) -> String {
    if let Some(r) = k.strip_prefix("language_model.model.") {
        format!("model.language_model.{r}")
    } else if k == "language_model.lm_head.weight" {
        "lm_head.weight".into()
    } else if let Some(r) = k.strip_prefix("vision_tower.") {
        format!("model.vision_tower.vision_model.{r}")
    } else {
        format!("model.{k}")
    }
}

#[test]
fn loads_new_hf_layout_sharded_with_transformers4_config() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = fixture_config();
    let tc = cfg["text_config"].as_object_mut().unwrap();
    tc.remove("rope_parameters");
    tc.insert("rope_theta".into(), serde_json::json!(10000.0));
    let top = cfg.as_object_mut().unwrap();
    top.remove("dtype");
    top.insert("torch_dtype".into(), serde_json::json!("float32"));
    write_variant(tmp.path(), &new_layout_name, DType::F32, true, &cfg);
    let ck = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(ck.files.len(), 2);
    let m = load(tmp.path());
    assert_close(
        "new layout full_logits",
        &full_logits(&m),
        &reference()["full_logits"],
        1e-4,
        1e-4,
    );
}

#[test]
fn loads_original_llava_med_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let rename = |k: &str| -> String {
        if let Some(r) = k.strip_prefix("language_model.model.") {
            format!("model.{r}")
        } else if k == "language_model.lm_head.weight" {
            "lm_head.weight".into()
        } else if let Some(r) = k.strip_prefix("vision_tower.") {
            format!("model.vision_tower.vision_tower.vision_model.{r}")
        } else if let Some(r) = k.strip_prefix("multi_modal_projector.linear_1.") {
            format!("model.mm_projector.0.{r}")
        } else if let Some(r) = k.strip_prefix("multi_modal_projector.linear_2.") {
            format!("model.mm_projector.2.{r}")
        } else {
            panic!("unexpected key {k}")
        }
    };
    let fc = fixture_config();
    let mut cfg = fc["text_config"].clone();
    let o = cfg.as_object_mut().unwrap();
    o.remove("rope_parameters");
    o.insert("rope_theta".into(), serde_json::json!(10000.0));
    o.insert(
        "architectures".into(),
        serde_json::json!(["LlavaMistralForCausalLM"]),
    );
    o.insert("model_type".into(), serde_json::json!("llava_mistral"));
    o.insert("mm_projector_type".into(), serde_json::json!("mlp2x_gelu"));
    o.insert("mm_vision_select_layer".into(), serde_json::json!(-2));
    o.insert(
        "mm_vision_select_feature".into(),
        serde_json::json!("patch"),
    );
    o.insert("mm_hidden_size".into(), serde_json::json!(32));
    o.insert("mm_vision_tower".into(), serde_json::json!("tiny-clip"));
    o.insert("torch_dtype".into(), serde_json::json!("float32"));
    // The tiny tower's 4 heads cannot be inferred from shapes (CLIP's head_dim
    // is 64); give its config explicitly as the parser allows.
    o.insert("vision_config".into(), fc["vision_config"].clone());
    write_variant(tmp.path(), &rename, DType::F32, false, &cfg);
    let m = load(tmp.path());
    assert_eq!(
        m.config.architecture,
        hdpo::model::config::Architecture::OriginalLlava
    );
    assert_close(
        "llava-med layout full_logits",
        &full_logits(&m),
        &reference()["full_logits"],
        1e-4,
        1e-4,
    );
    // Without a vision config, the tower's shape is inferred from the tensors.
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let v = ck.infer_vision_config().unwrap();
    assert_eq!(
        (
            v.hidden_size,
            v.intermediate_size,
            v.num_hidden_layers,
            v.patch_size,
            v.image_size
        ),
        (32, 64, 2, 8, 32)
    );
    // Original LLaVA splices image features: the tokenizer follows.
    let tok = TextTokenizer::from_dir(tmp.path(), &m.config).unwrap();
    assert_eq!(tok.image_tokens, ImageTokens::Splice);
    let r = reference();
    let e = tok
        .encode_pair(
            ChatTemplate::LlavaPlain,
            "what abnormality is seen in the chest x-ray ?",
            "there is a small left pleural effusion .",
            16,
        )
        .unwrap();
    let px = r["prompt_pixel_values"].i(0).unwrap();
    let b = Batch::new(&[e], &[Some(px)], tok.pad_id, &Device::Cpu).unwrap();
    assert_close(
        "llava-med spliced logits",
        &m.forward(&b, false).unwrap(),
        &r["full_logits"],
        1e-4,
        1e-4,
    );
}

#[test]
fn loads_bf16_and_f16_storage() {
    for dt in [DType::BF16, DType::F16] {
        let tmp = tempfile::tempdir().unwrap();
        write_variant(tmp.path(), &|k| k.to_string(), dt, false, &fixture_config());
        let m = load(tmp.path());
        assert_eq!(m.dtype, DType::F32);
        let src = candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        let want = src["language_model.model.embed_tokens.weight"]
            .to_dtype(dt)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_close("embed", &m.decoder.embed_tokens, &want, 0.0, 0.0);
        // Rounded weights move the logits only a little (bf16 keeps 8 bits).
        let tol = if dt == DType::BF16 { 0.2 } else { 0.02 };
        assert_close(
            &format!("{dt:?} logits"),
            &full_logits(&m),
            &reference()["full_logits"],
            tol,
            0.0,
        );
    }
}

#[test]
fn missing_and_misshaped_tensors_are_all_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut map: HashMap<String, Tensor> = src.clone();
    map.remove("language_model.model.layers.1.mlp.up_proj.weight");
    map.remove("vision_tower.encoder.layers.0.mlp.fc1.bias");
    map.insert(
        "multi_modal_projector.linear_2.weight".into(),
        Tensor::zeros((64, 63), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&map, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = match LlavaModel::load(tmp.path(), &LoadOptions::default()) {
        Ok(_) => panic!("a broken checkpoint loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("3 problem(s)"), "{e}");
    assert!(
        e.contains("model.language_model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    assert!(e.contains("encoder.layers.0.mlp.fc1.bias"), "{e}");
    assert!(
        e.contains("linear_2.weight") && e.contains("[64, 63]"),
        "{e}"
    );
}

// ---------------------------------------------------------------- CLI

fn hdpo(args: &[&str]) -> String {
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

#[test]
fn cli_logprobs_and_generate() {
    let fx = fixture();
    let model = fx.to_str().unwrap();
    let img = fx.join("images/img0.png");
    let out = hdpo(&[
        "logprobs",
        "--model",
        model,
        "--image",
        img.to_str().unwrap(),
        "--template",
        "llava_plain",
        "--prompt",
        "what abnormality is seen in the chest x-ray ?",
        "--response",
        "there is a small left pleural effusion .",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let j = reference_json();
    let want = j["response_logprob_sum"].as_f64().unwrap();
    assert!(
        (v["sum_logprob"].as_f64().unwrap() - want).abs() <= 1e-3,
        "{v}"
    );
    assert_eq!(v["response_ids"], j["response_ids_incl_eos"]);
    let out = hdpo(&[
        "generate",
        "--model",
        model,
        "--image",
        img.to_str().unwrap(),
        "--template",
        "llava_plain",
        "--prompt",
        "what abnormality is seen in the chest x-ray ?",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["new_ids"], j["greedy_new_ids"]);
    // With the adapter the policy log-prob changes.
    let out = hdpo(&[
        "logprobs",
        "--model",
        model,
        "--adapter",
        fx.join("lora_adapter").to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--template",
        "llava_plain",
        "--prompt",
        "what abnormality is seen in the chest x-ray ?",
        "--response",
        "there is a small left pleural effusion .",
        "--json",
    ]);
    let v2: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((v2["sum_logprob"].as_f64().unwrap() - want).abs() > 1e-2);
}

#[test]
fn save_pretrained_round_trips_and_random_models_are_seeded() {
    let m = load(&fixture());
    let tmp = tempfile::tempdir().unwrap();
    m.save_pretrained(tmp.path()).unwrap();
    let m2 = load(tmp.path());
    assert_eq!(m2.config.text, m.config.text);
    assert_eq!(m2.config.vision, m.config.vision);
    assert_close(
        "re-saved full_logits",
        &full_logits(&m2),
        &full_logits(&m),
        0.0,
        0.0,
    );
    // Random models: same seed, same weights; they save and reload too.
    let a = LlavaModel::random(m.config.clone(), Some(5), &LoadOptions::default()).unwrap();
    let b = LlavaModel::random(m.config.clone(), Some(5), &LoadOptions::default()).unwrap();
    let c = LlavaModel::random(m.config.clone(), Some(6), &LoadOptions::default()).unwrap();
    let la = full_logits(&a);
    assert_close("seeded random", &la, &full_logits(&b), 0.0, 0.0);
    assert!(vec_f64(&(la.clone() - full_logits(&c)).unwrap())
        .iter()
        .any(|x| x.abs() > 1e-6));
    let tmp2 = tempfile::tempdir().unwrap();
    a.save_pretrained(tmp2.path()).unwrap();
    assert_close(
        "random reloaded",
        &full_logits(&load(tmp2.path())),
        &la,
        0.0,
        0.0,
    );
}
