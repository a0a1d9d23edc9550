//! LoRA (PEFT semantics and layout), gradients, merging, `model info` and the
//! throughput function, on `fixtures/models/tiny_llava`.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use hdpo::model::bench::lora_step_throughput;
use hdpo::model::info::{human_count, model_info, InfoOptions};
use hdpo::model::{
    sequence_logprobs, Batch, EncodedSequence, Fwd, LlavaConfig, LlavaModel, LoadOptions,
    LoraConfig, TargetModules,
};

mod common;
use common::{
    tiny_llava as fixture, tiny_llava_reference as reference,
    tiny_llava_reference_json as reference_json, vec_f64,
};

fn load(dtype: DType) -> LlavaModel {
    LlavaModel::load(
        &fixture(),
        &LoadOptions {
            device: Device::Cpu,
            dtype: Some(dtype),
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    vec_f64(a)
        .iter()
        .zip(vec_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The 4 DPO sequences of the fixture with their (different) images.
fn dpo_batch(dtype: DType) -> (Vec<EncodedSequence>, Vec<Option<Tensor>>) {
    let r = reference();
    let j = reference_json();
    let mut seqs = Vec::new();
    let mut imgs = Vec::new();
    for (i, s) in j["dpo"]["sequences"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = r[&format!("dpo_seq{i}_input_ids")]
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let n_prompt = s["n_prompt"].as_u64().unwrap() as usize;
        seqs.push(EncodedSequence {
            response_mask: (0..ids.len()).map(|k| k >= n_prompt).collect(),
            image_positions: (3..19).collect(),
            input_ids: ids,
            prompt_len: n_prompt,
        });
        let img = s["image"].as_u64().unwrap() as usize;
        imgs.push(Some(
            r["dpo_pixel_values"]
                .i(img)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        ));
    }
    (seqs, imgs)
}

fn summed_logps(m: &LlavaModel, b: &Batch, adapters: bool) -> Tensor {
    let logits = m.forward(b, adapters).unwrap();
    sequence_logprobs(&logits, &b.input_ids, &b.response_mask)
        .unwrap()
        .1
}

#[test]
fn adapter_loads_like_peft_saves_in_peft_layout_and_round_trips() {
    let mut m = load(DType::F32);
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let r = reference();
    // Loaded tensors are PEFT's in-memory parameters.
    let vars = m.lora_vars();
    assert_eq!(vars.len(), 8);
    for (name, var) in &vars {
        let key = format!(
            "lora_param.{}",
            name.replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.default.weight")
        );
        assert_eq!(max_abs_diff(var.as_tensor(), &r[&key]), 0.0, "{key}");
    }
    // Save and compare with PEFT's own file: same keys, shapes and values.
    let tmp = tempfile::tempdir().unwrap();
    m.save_adapter(tmp.path()).unwrap();
    let ours =
        candle_core::safetensors::load(tmp.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let peft = candle_core::safetensors::load(
        fixture().join("lora_adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut ok: Vec<&String> = ours.keys().collect();
    let mut pk: Vec<&String> = peft.keys().collect();
    ok.sort();
    pk.sort();
    assert_eq!(ok, pk);
    let j = reference_json();
    let want_keys: Vec<&str> = j["lora"]["adapter_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(ok.iter().map(|s| s.as_str()).collect::<Vec<_>>(), want_keys);
    for k in pk {
        assert_eq!(ours[k].dims(), peft[k].dims(), "{k}");
        assert_eq!(ours[k].dtype(), peft[k].dtype(), "{k}");
        assert_eq!(max_abs_diff(&ours[k], &peft[k]), 0.0, "{k}");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"].as_f64(), Some(8.0));
    assert_eq!(cfg["lora_dropout"].as_f64(), Some(0.0));
    assert_eq!(
        cfg["target_modules"],
        ".*language_model.*\\.(q_proj|v_proj)"
    );
    assert!(cfg["base_model_name_or_path"].is_string());
    assert!(cfg.get("task_type").is_some());
    // Reload the saved adapter: identical log-probs.
    let mut m2 = load(DType::F32);
    m2.load_adapter(tmp.path()).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F32);
    let b = Batch::new(&seqs[..1], &imgs[..1], 3, &Device::Cpu).unwrap();
    assert_eq!(
        vec_f64(&summed_logps(&m, &b, true)),
        vec_f64(&summed_logps(&m2, &b, true))
    );
    // A broken adapter names every problem.
    let bad = tempfile::tempdir().unwrap();
    std::fs::copy(
        tmp.path().join("adapter_config.json"),
        bad.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut t = ours.clone();
    t.remove("base_model.model.model.language_model.layers.1.self_attn.v_proj.lora_B.weight");
    t.insert(
        "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight".into(),
        Tensor::zeros((4, 63), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, bad.path().join("adapter_model.safetensors")).unwrap();
    let mut m3 = load(DType::F32);
    let e = format!("{:#}", m3.load_adapter(bad.path()).unwrap_err());
    assert!(e.contains("2 problem(s)"), "{e}");
    assert!(e.contains("layers.1.self_attn.v_proj.lora_B"), "{e}");
    assert!(
        e.contains("layers.0.self_attn.q_proj.lora_A") && e.contains("[4, 63]"),
        "{e}"
    );
}

#[test]
fn fresh_lora_follows_peft_init_and_target_matching() {
    // A list matches by suffix, so CLIP's q/v projections are adapted too (as in PEFT).
    let mut m = load(DType::F32);
    let n = m
        .add_lora(
            LoraConfig::new(
                4,
                8.0,
                TargetModules::List(vec!["q_proj".into(), "v_proj".into()]),
            ),
            11,
        )
        .unwrap();
    assert_eq!(n, 8);
    // The fixture's regex adapts only the language model.
    let mut m2 = load(DType::F32);
    let cfg = LoraConfig::new(
        4,
        8.0,
        TargetModules::Regex(".*language_model.*\\.(q_proj|v_proj)".into()),
    );
    assert_eq!(m2.add_lora(cfg.clone(), 11).unwrap(), 4);
    let vars = m2.lora_vars();
    for (name, v) in &vars {
        let vals = vec_f64(v.as_tensor());
        if name.ends_with("lora_B.weight") {
            assert!(vals.iter().all(|&x| x == 0.0), "{name} not zero");
        } else {
            let bound = 1.0 / (64f64).sqrt();
            assert!(vals.iter().all(|x| x.abs() <= bound), "{name} out of bound");
            assert!(vals.iter().any(|&x| x != 0.0));
        }
    }
    // Seeded: same seed, same A; different seed, different A.
    let mut m3 = load(DType::F32);
    m3.add_lora(cfg.clone(), 11).unwrap();
    let mut m4 = load(DType::F32);
    m4.add_lora(cfg, 12).unwrap();
    assert_eq!(
        max_abs_diff(vars[0].1.as_tensor(), m3.lora_vars()[0].1.as_tensor()),
        0.0
    );
    assert!(max_abs_diff(vars[0].1.as_tensor(), m4.lora_vars()[0].1.as_tensor()) > 0.0);
    // B = 0: the adapted model equals the base model.
    let (seqs, imgs) = dpo_batch(DType::F32);
    let b = Batch::new(&seqs[..1], &imgs[..1], 3, &Device::Cpu).unwrap();
    assert_eq!(
        vec_f64(&summed_logps(&m2, &b, true)),
        vec_f64(&summed_logps(&m2, &b, false))
    );
    // No matching module is an error.
    let mut m5 = load(DType::F32);
    assert!(m5
        .add_lora(
            LoraConfig::new(4, 8.0, TargetModules::List(vec!["nope".into()])),
            0
        )
        .is_err());
}

#[test]
fn lora_dropout_is_seeded_and_only_on_the_adapter_path() {
    let mut m = load(DType::F32);
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F32);
    let b = Batch::new(&seqs[..1], &imgs[..1], 3, &Device::Cpu).unwrap();
    // Set dropout on every adapter.
    let with = |seed| {
        let fwd = Fwd {
            adapters: true,
            dropout_seed: Some(seed),
        };
        vec_f64(&m.forward_with(&b, &fwd).unwrap())
    };
    // Dropout 0 (the fixture's adapter): a seed changes nothing.
    assert_eq!(with(1), vec_f64(&m.forward(&b, true).unwrap()));
    let mut md = load(DType::F32);
    md.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let cfgd = {
        let tmp = tempfile::tempdir().unwrap();
        md.save_adapter(tmp.path()).unwrap();
        let p = tmp.path().join("adapter_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["lora_dropout"] = serde_json::json!(0.5);
        std::fs::write(&p, v.to_string()).unwrap();
        let mut m2 = load(DType::F32);
        m2.load_adapter(tmp.path()).unwrap();
        m2
    };
    let fwd = |seed: Option<u64>, adapters| Fwd {
        adapters,
        dropout_seed: seed,
    };
    let a = vec_f64(&cfgd.forward_with(&b, &fwd(Some(1), true)).unwrap());
    let a2 = vec_f64(&cfgd.forward_with(&b, &fwd(Some(1), true)).unwrap());
    let c = vec_f64(&cfgd.forward_with(&b, &fwd(Some(2), true)).unwrap());
    let none = vec_f64(&cfgd.forward_with(&b, &fwd(None, true)).unwrap());
    assert_eq!(a, a2);
    assert_ne!(a, c);
    assert_ne!(a, none);
    assert_eq!(
        vec_f64(&cfgd.forward_with(&b, &fwd(Some(1), false)).unwrap()),
        vec_f64(&cfgd.forward(&b, false).unwrap())
    );
}

fn log_sigmoid(x: &Tensor) -> Tensor {
    // log sigmoid(x) = -log(1 + exp(-x))
    (x.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .log()
        .unwrap()
        .neg()
        .unwrap()
}

/// DPO loss of the fixture (beta 0.5) from policy and reference summed log-probs.
fn dpo_loss(pol: &Tensor, reference: &Tensor) -> Tensor {
    let d = (pol - reference).unwrap(); // [4]
    let pick = |k: usize| d.narrow(0, k, 1).unwrap();
    let chosen = Tensor::cat(&[pick(0), pick(2)], 0).unwrap();
    let rejected = Tensor::cat(&[pick(1), pick(3)], 0).unwrap();
    let h = (chosen - rejected).unwrap();
    log_sigmoid(&(h * 0.5).unwrap())
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

#[test]
fn every_lora_tensor_gets_a_gradient_matching_peft_and_finite_differences() {
    // f32: gradients of the fixture's DPO loss against PEFT's (README tolerance).
    let mut m = load(DType::F32);
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F32);
    let b = Batch::new(&seqs, &imgs, 3, &Device::Cpu).unwrap();
    let reference_lp = summed_logps(&m, &b, false).detach();
    let pol = summed_logps(&m, &b, true);
    let loss = dpo_loss(&pol, &reference_lp);
    let j = reference_json();
    let l = loss.to_scalar::<f32>().unwrap() as f64;
    let want = j["dpo"]["loss_dpo"].as_f64().unwrap();
    assert!(((l - want) / want).abs() <= 1e-5, "loss {l} vs {want}");
    let grads = loss.backward().unwrap();
    let r = reference();
    for (name, var) in m.lora_vars() {
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            vec_f64(g).iter().any(|&x| x != 0.0),
            "zero gradient for {name}"
        );
        let key = format!(
            "grad_dpo.{}",
            name.replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.default.weight")
        );
        let want = &r[&key];
        let scale = vec_f64(want).iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let d = max_abs_diff(g, want);
        assert!(d <= 1e-3 * scale, "{name}: max diff {d} vs max {scale}");
    }

    // f64: one gradient element against a central finite difference of the
    // summed policy log-probs.
    let mut m = load(DType::F64);
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F64);
    let b = Batch::new(&seqs[..2], &imgs[..2], 3, &Device::Cpu).unwrap();
    let loss_of = |m: &LlavaModel| summed_logps(m, &b, true).sum_all().unwrap();
    let loss = loss_of(&m);
    let grads = loss.backward().unwrap();
    let vars = m.lora_vars();
    for (name, var) in &vars {
        let g = grads.get(var).unwrap();
        assert!(
            vec_f64(g).iter().any(|&x| x != 0.0),
            "zero f64 gradient for {name}"
        );
    }
    let (name, var): &(String, Var) = vars
        .iter()
        .find(|(n, _)| n.contains("layers.0.self_attn.v_proj.lora_A"))
        .unwrap();
    let analytic = vec_f64(grads.get(var).unwrap())[5];
    let orig = var.as_tensor().copy().unwrap();
    let eps = 1e-5;
    let bump = |delta: f64| {
        let mut v = vec_f64(&orig);
        v[5] += delta;
        var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let l = loss_of(&m).to_scalar::<f64>().unwrap();
        var.set(&orig).unwrap();
        l
    };
    let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
    let rel = (numeric - analytic).abs() / analytic.abs().max(1e-12);
    assert!(
        rel < 1e-6,
        "{name}[5]: analytic {analytic} vs finite difference {numeric} (rel {rel})"
    );
}

#[test]
fn merge_writes_full_weights_in_the_input_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let n = hdpo::model::merge::merge(&fixture(), &fixture().join("lora_adapter"), &out).unwrap();
    assert_eq!(n, 4);
    let a =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut ka: Vec<&String> = a.keys().collect();
    let mut kb: Vec<&String> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    // Untargeted weights are copied unchanged; targeted ones changed.
    let k = "language_model.model.layers.0.mlp.up_proj.weight";
    assert_eq!(max_abs_diff(&a[k], &b[k]), 0.0);
    let q = "language_model.model.layers.0.self_attn.q_proj.weight";
    assert!(max_abs_diff(&a[q], &b[q]) > 1e-4);
    // The merged model without adapters is the policy.
    let m = LlavaModel::load(&out, &LoadOptions::default()).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F32);
    let batch = Batch::new(&seqs, &imgs, 3, &Device::Cpu).unwrap();
    let got = vec_f64(&summed_logps(&m, &batch, false));
    let want = vec_f64(&reference()["dpo_policy_logps"]);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-3, "{g} vs {w}");
    }
}

#[test]
fn model_info_counts_parameters_from_config_only() {
    // The tiny fixture: the count equals the tensors in its file.
    let cfg = LlavaConfig::from_dir(&fixture()).unwrap();
    let i = model_info(&cfg, &InfoOptions::default()).unwrap();
    let st =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let n: usize = st.values().map(|t| t.elem_count()).sum();
    assert_eq!(i.params_total, n as u64);
    assert_eq!(i.image_tokens, 16);
    // LLaVA-Med v1.5 shapes (Mistral-7B + CLIP ViT-L/14-336 + mlp2x_gelu), both config styles.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for dir in ["llava_med_7b", "llava_med_7b_hf"] {
        let cfg = LlavaConfig::from_dir(&data.join(dir)).unwrap();
        let i = model_info(&cfg, &InfoOptions::default()).unwrap();
        assert!(
            (7.56e9..7.58e9).contains(&(i.params_total as f64)),
            "{dir}: {}",
            i.params_total
        );
        assert_eq!(human_count(i.params_total), "7.57B", "{dir}");
        assert_eq!(i.image_tokens, 576);
        assert_eq!(i.params_projector, 1024 * 4096 + 4096 + 4096 * 4096 + 4096);
        assert!(i.memory.total > i.memory.weights);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["model", "info", "--model"])
        .arg(data.join("llava_med_7b"))
        .args(["--seq-len", "512", "--batch", "2", "--lora-r", "64"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("7.57B"), "{text}");
    assert!(text.contains("activations"), "{text}");
}

#[test]
fn throughput_measurement_runs_forward_and_backward() {
    let mut m = load(DType::F32);
    m.load_adapter(&fixture().join("lora_adapter")).unwrap();
    let (seqs, imgs) = dpo_batch(DType::F32);
    let b = Batch::new(&seqs, &imgs, 3, &Device::Cpu).unwrap();
    let t = lora_step_throughput(&m, &b, 2).unwrap();
    assert_eq!(t.sequences_per_step, 4);
    assert_eq!(t.tokens_per_step, 41 + 38 + 35 + 41);
    assert!(t.tokens_per_s > 0.0 && t.seconds_per_step > 0.0);
}
