//! Dual encoder parity with the tiny_vit / tiny_bert fixtures, GradCAM
//! gradients, rollout, Eq. 2 pooling, Ω*, and contrastive alignment.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use hdpo::encode::gradcam::gradcam;
use hdpo::encode::rollout::{attention_rollout, rollout};
use hdpo::encode::{
    self, bert, load_bert_dir, load_vit_dir, preprocess, tokenizer, DualEncoder, LoadOptions,
    Normalize, VisionTower,
};
use hdpo::heatmap::pool::{patch_weights, weighted_embedding};
use hdpo::heatmap::region::{salient_region, Connectivity, RegionOptions, Threshold};
use hdpo::heatmap::{Heatmap, HeatmapSource, SampleView};

mod common;
use common::{
    model_fixture as fixture, reference, reference_json, small_align_config as small_config,
};

/// `|a-b| <= 1e-4 + 1e-4|b|` elementwise (fixtures README section 1).
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a: Vec<f32> = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f32;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        assert!(d <= 1e-4 + 1e-4 * y.abs(), "{what}[{i}]: {x} vs {y}");
        worst = worst.max(d);
    }
    assert!(worst.is_finite());
}

fn vit_pixels() -> Tensor {
    let dir = fixture("tiny_vit");
    let norm = Normalize::from_preprocessor_config(&dir, Normalize::CLIP).unwrap();
    assert_eq!(norm, Normalize::HALF);
    let imgs: Vec<Tensor> = (0..2)
        .map(|i| {
            preprocess::load_image_tensor(
                &dir.join(format!("images/img{i}.png")),
                32,
                norm,
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    Tensor::stack(&imgs, 0).unwrap()
}

#[test]
fn vit_reproduces_tiny_vit_reference() {
    let r = reference("tiny_vit");
    let px = vit_pixels();
    let want_px = &r["pixel_values"];
    let diff: f32 = (&px - want_px)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff <= 1e-6, "pixel values differ by {diff}");
    let vit = load_vit_dir(&fixture("tiny_vit"), &LoadOptions::default()).unwrap();
    for diff_path in [false, true] {
        let out = vit.forward(&px, diff_path, false).unwrap();
        let tag = if diff_path { "differentiable" } else { "fused" };
        assert_close(
            &out.patch_embeddings,
            &r["patch_embeddings_conv"],
            &format!("{tag} patch_embeddings_conv"),
        );
        assert_close(
            &out.hidden_states[0],
            &r["embeddings_output"],
            &format!("{tag} embeddings_output"),
        );
        let all = Tensor::stack(&out.hidden_states, 0).unwrap();
        assert_close(
            &all,
            &r["hidden_states_all"],
            &format!("{tag} hidden_states_all"),
        );
        assert_close(
            &out.normed,
            &r["last_hidden_state"],
            &format!("{tag} last_hidden_state"),
        );
        assert_close(
            &vit.pool(&out.normed).unwrap(),
            &r["pooler_output"],
            &format!("{tag} pooler_output"),
        );
        assert_close(
            &out.normed.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(),
            &r["cls_embedding"],
            &format!("{tag} cls_embedding"),
        );
        assert_close(
            &VisionTower::mean_patches(&out.normed).unwrap(),
            &r["mean_pooled_patches"],
            &format!("{tag} mean_pooled_patches"),
        );
        assert_close(
            &out.normed.mean(1).unwrap(),
            &r["mean_pooled_all"],
            &format!("{tag} mean_pooled_all"),
        );
    }
}

#[test]
fn clip_vision_tower_reproduces_tiny_llava_vision_states() {
    let dir = fixture("tiny_llava");
    let r = reference("tiny_llava");
    let norm = Normalize::from_preprocessor_config(&dir, Normalize::HALF).unwrap();
    assert_eq!(norm, Normalize::CLIP);
    let px = preprocess::load_image_tensor(&dir.join("images/img0.png"), 32, norm, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let diff: f32 = (&px - &r["prompt_pixel_values"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff <= 1e-6, "CLIP pixel values differ by {diff}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vcfg: encode::VisionConfig = serde_json::from_value(cfg["vision_config"].clone()).unwrap();
    let vb = encode::load_weights(&dir.join("model.safetensors"), &LoadOptions::default()).unwrap();
    let tower =
        VisionTower::load(&vb.pp("vision_tower"), &vcfg, encode::VisionLayout::Clip).unwrap();
    for diff_path in [false, true] {
        let out = tower.forward(&px, diff_path, false).unwrap();
        let all = Tensor::stack(&out.hidden_states, 0).unwrap();
        assert_close(
            &all,
            &r["vision_hidden_states_all"],
            "CLIP vision hidden states",
        );
    }
}

/// A CLIPModel folder: tiny_llava's CLIP vision tower under `vision_model.`,
/// a seeded 1-layer CLIP text tower (end-of-text = ".", id 5), projections to D = 8.
fn clip_folder() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny_llava");
    let w = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut map: HashMap<String, Tensor> = w
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("vision_tower.")
                .map(|r| (format!("vision_model.{r}"), v))
        })
        .collect();
    let mut k = 0.0f32;
    let mut put = |name: &str, shape: &[usize], base: f32| {
        k += 1.0;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| base + 0.2 * ((i as f32 * 0.61 + k * 1.3).sin()))
            .collect();
        map.insert(
            name.to_string(),
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
        );
    };
    put(
        "text_model.embeddings.token_embedding.weight",
        &[1000, 32],
        0.0,
    );
    put(
        "text_model.embeddings.position_embedding.weight",
        &[16, 32],
        0.0,
    );
    let l = "text_model.encoder.layers.0";
    for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        put(&format!("{l}.self_attn.{p}.weight"), &[32, 32], 0.0);
        put(&format!("{l}.self_attn.{p}.bias"), &[32], 0.0);
    }
    for n in ["layer_norm1", "layer_norm2"] {
        put(&format!("{l}.{n}.weight"), &[32], 1.0);
        put(&format!("{l}.{n}.bias"), &[32], 0.0);
    }
    put(&format!("{l}.mlp.fc1.weight"), &[64, 32], 0.0);
    put(&format!("{l}.mlp.fc1.bias"), &[64], 0.0);
    put(&format!("{l}.mlp.fc2.weight"), &[32, 64], 0.0);
    put(&format!("{l}.mlp.fc2.bias"), &[32], 0.0);
    put("text_model.final_layer_norm.weight", &[32], 1.0);
    put("text_model.final_layer_norm.bias", &[32], 0.0);
    put("visual_projection.weight", &[8, 32], 0.0);
    put("text_projection.weight", &[8, 32], 0.0);
    candle_core::safetensors::save(&map, tmp.path().join("model.safetensors")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let clip = serde_json::json!({
        "model_type": "clip",
        "projection_dim": 8,
        "vision_config": cfg["vision_config"],
        "text_config": {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "max_position_embeddings": 16, "eos_token_id": 5, "pad_token_id": 3},
    });
    std::fs::write(tmp.path().join("config.json"), clip.to_string()).unwrap();
    std::fs::copy(
        src.join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        src.join("processor_config.json"),
        tmp.path().join("processor_config.json"),
    )
    .unwrap();
    tmp
}

#[test]
fn clip_dual_encoder_folder_loads_with_patch_and_eos_pooling() {
    let tmp = clip_folder();
    let enc = DualEncoder::load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(enc.normalize, Normalize::CLIP);
    assert_eq!(enc.text_pooling, encode::TextPooling::Eos);
    let r = reference("tiny_llava");
    // f_v(p_i) = visual_projection(post_layernorm(last hidden state))[patches].
    let w =
        candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let last = r["vision_hidden_states_all"].get(2).unwrap();
    let mean = last.mean_keepdim(2).unwrap();
    let xc = last.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(2).unwrap();
    let normed = xc
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w["vision_model.post_layernorm.weight"])
        .unwrap()
        .broadcast_add(&w["vision_model.post_layernorm.bias"])
        .unwrap();
    let want = normed
        .narrow(1, 1, 16)
        .unwrap()
        .broadcast_matmul(&w["visual_projection.weight"].t().unwrap())
        .unwrap();
    let (patches, grid) = enc.embed_patches(&r["prompt_pixel_values"]).unwrap();
    assert_eq!(grid, (4, 4));
    assert_close(&patches, &want, "CLIP f_v(p_i)");
    // EOS pooling under a causal mask: text after the first "." does not matter,
    // padding does not matter, text before it does.
    let t = enc
        .embed_texts(&[
            "lungs are clear .",
            "lungs are clear . heart is big",
            "heart is big .",
        ])
        .unwrap();
    let rows: Vec<Vec<f32>> = t.to_vec2().unwrap();
    let d = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(d(&rows[0], &rows[1]) < 1e-5, "{}", d(&rows[0], &rows[1]));
    assert!(d(&rows[0], &rows[2]) > 1e-3);
    let alone = enc
        .embed_texts(&["lungs are clear ."])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(d(&rows[0], &alone[0]) < 1e-5);
    let e = enc.embed_texts(&["no end of text"]).unwrap_err();
    assert!(format!("{e:#}").contains("end-of-text"), "{e:#}");
}

fn ids_tensor(rows: &[Vec<u32>]) -> (Tensor, Tensor) {
    let l = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![];
    let mut mask = vec![];
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, l - r.len())));
        mask.extend(std::iter::repeat_n(1u32, r.len()).chain(std::iter::repeat_n(0, l - r.len())));
    }
    (
        Tensor::from_vec(ids, (rows.len(), l), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (rows.len(), l), &Device::Cpu).unwrap(),
    )
}

#[test]
fn bert_tokenizers_and_forward_reproduce_tiny_bert_reference() {
    let dir = fixture("tiny_bert");
    let js = reference_json("tiny_bert");
    let texts: Vec<String> = serde_json::from_value(js["texts"].clone()).unwrap();
    let want_ids: Vec<Vec<u32>> = serde_json::from_value(js["input_ids"].clone()).unwrap();
    let want_tokens: Vec<Vec<String>> = serde_json::from_value(js["tokens"].clone()).unwrap();
    let from_json = tokenizer::load_tokenizer(&dir).unwrap();
    let from_vocab = tokenizer::wordpiece_from_vocab(&dir.join("vocab.txt")).unwrap();
    for (tok, name) in [(&from_json, "tokenizer.json"), (&from_vocab, "vocab.txt")] {
        for (i, t) in texts.iter().enumerate() {
            let enc = tok.encode(t.as_str(), true).unwrap();
            assert_eq!(
                enc.get_ids(),
                want_ids[i].as_slice(),
                "{name} ids of text {i}"
            );
            assert_eq!(
                enc.get_tokens(),
                want_tokens[i].as_slice(),
                "{name} tokens of text {i}"
            );
        }
    }
    let r = reference("tiny_bert");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (ids, mask) = tokenizer::encode_batch(&from_vocab, &refs, 0, 64, &Device::Cpu).unwrap();
    let (want_t, want_m) = ids_tensor(&want_ids);
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        want_t.to_vec2::<u32>().unwrap()
    );
    assert_eq!(
        mask.to_vec2::<u32>().unwrap(),
        want_m.to_vec2::<u32>().unwrap()
    );
    let bert = load_bert_dir(&dir, &LoadOptions::default()).unwrap();
    for diff in [false, true] {
        let out = bert.forward(&ids, &mask, diff).unwrap();
        let all = Tensor::stack(&out.hidden_states, 0).unwrap();
        assert_close(&all, &r["hidden_states_all"], "hidden_states_all");
        assert_close(
            &out.last_hidden_state,
            &r["last_hidden_state"],
            "last_hidden_state",
        );
        assert_close(
            &bert::cls_token(&out.last_hidden_state).unwrap(),
            &r["cls_embedding"],
            "cls",
        );
        assert_close(
            &bert.pool(&out.last_hidden_state).unwrap(),
            &r["pooler_output"],
            "pooler",
        );
        let mean = bert::masked_mean(&out.last_hidden_state, &mask).unwrap();
        assert_close(&mean, &r["mean_pooled"], "mean_pooled");
        assert_close(
            &encode::l2_normalize(&mean).unwrap(),
            &r["mean_pooled_l2norm"],
            "l2norm",
        );
    }
    // The same weights under a `bert.` prefix load and agree.
    let tmp = tempfile::tempdir().unwrap();
    let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let prefixed: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
    candle_core::safetensors::save(&prefixed, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let b2 = load_bert_dir(tmp.path(), &LoadOptions::default()).unwrap();
    let out = b2.forward(&ids, &mask, false).unwrap();
    assert_close(
        &out.last_hidden_state,
        &r["last_hidden_state"],
        "prefixed last_hidden_state",
    );
}

/// An hdpo dual-encoder folder over the separate tiny_vit / tiny_bert
/// checkpoints with a seeded projection file (D = 8).
fn hdpo_folder(pooling: &str) -> (tempfile::TempDir, Tensor, Tensor) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "model_type": "hdpo_dual_encoder",
        "projection_dim": 8,
        "image_pooling": "mean_patches",
        "text_pooling": pooling,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "vision_checkpoint": fixture("tiny_vit").to_str().unwrap(),
        "text_checkpoint": fixture("tiny_bert").to_str().unwrap(),
    });
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let vals =
        |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 0.3).collect() };
    let vp = Tensor::from_vec(vals(8 * 32, 0.37), (8, 32), &Device::Cpu).unwrap();
    let tp = Tensor::from_vec(vals(8 * 32, 0.53), (8, 32), &Device::Cpu).unwrap();
    let map: HashMap<String, Tensor> = [
        ("visual_projection.weight".to_string(), vp.clone()),
        ("text_projection.weight".to_string(), tp.clone()),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&map, tmp.path().join("model.safetensors")).unwrap();
    (tmp, vp, tp)
}

#[test]
fn separate_checkpoints_need_a_projection_and_load_with_one() {
    for name in ["tiny_vit", "tiny_bert"] {
        let err = DualEncoder::load(&fixture(name), &LoadOptions::default()).unwrap_err();
        assert!(format!("{err:#}").contains("hdpo align"), "{name}: {err:#}");
    }
    let (tmp, vp, tp) = hdpo_folder("mean");
    let enc = DualEncoder::load(tmp.path(), &LoadOptions::default()).unwrap();
    let r = reference("tiny_vit");
    let (patches, grid) = enc.embed_patches(&vit_pixels()).unwrap();
    assert_eq!(grid, (4, 4));
    assert_eq!(patches.dims(), &[2, 16, 8]);
    let want = r["last_hidden_state"]
        .narrow(1, 1, 16)
        .unwrap()
        .broadcast_matmul(&vp.t().unwrap())
        .unwrap();
    assert_close(&patches, &want, "f_v(p_i)");
    let rb = reference("tiny_bert");
    let texts: Vec<String> =
        serde_json::from_value(reference_json("tiny_bert")["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = enc.embed_texts(&refs).unwrap();
    assert_close(
        &t,
        &rb["mean_pooled"].matmul(&tp.t().unwrap()).unwrap(),
        "f_t mean",
    );
    let (tmp2, _, tp2) = hdpo_folder("cls");
    let enc2 = DualEncoder::load(tmp2.path(), &LoadOptions::default()).unwrap();
    let t2 = enc2.embed_texts(&refs).unwrap();
    assert_close(
        &t2,
        &rb["cls_embedding"].matmul(&tp2.t().unwrap()).unwrap(),
        "f_t cls",
    );
}

#[test]
fn gradcam_gradient_matches_finite_difference_f64() {
    let (tmp, _, _) = hdpo_folder("mean");
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F64,
    };
    let enc = DualEncoder::load(tmp.path(), &opts).unwrap();
    let img = vit_pixels().get(0).unwrap().to_dtype(DType::F64).unwrap();
    let text = Tensor::from_vec(
        (0..8)
            .map(|i| ((i as f64) * 0.7).cos())
            .collect::<Vec<f64>>(),
        8,
        &Device::Cpu,
    )
    .unwrap();
    for layer in [2usize, 1] {
        let out = gradcam(&enc, &img, &text, Some(layer)).unwrap();
        assert_eq!(out.cam.len(), 16);
        assert!(out.cam.iter().all(|v| *v >= 0.0));
        let act = out.act.unsqueeze(0).unwrap();
        let grad: Vec<Vec<f64>> = out.grad.to_vec2().unwrap();
        let base: Vec<Vec<f64>> = out.act.to_vec2().unwrap();
        let cos_of = |a: &Vec<Vec<f64>>| -> f64 {
            let flat: Vec<f64> = a.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, act.shape(), &Device::Cpu).unwrap();
            let e = enc
                .image_embedding_from_layer(&t, layer, false)
                .unwrap()
                .squeeze(0)
                .unwrap();
            encode::cosine(&e, &text)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!((cos_of(&base) - out.similarity).abs() < 1e-12);
        let mut max_g = 0f64;
        for &(i, d) in &[(1usize, 0usize), (5, 7), (16, 31), (9, 13)] {
            let eps = 1e-5;
            let mut p = base.clone();
            p[i][d] += eps;
            let mut m = base.clone();
            m[i][d] -= eps;
            let fd = (cos_of(&p) - cos_of(&m)) / (2.0 * eps);
            let g = grad[i][d];
            max_g = max_g.max(g.abs());
            assert!(
                (fd - g).abs() <= 1e-7 + 1e-5 * g.abs(),
                "layer {layer} ({i},{d}): fd {fd} vs grad {g}"
            );
        }
        assert!(max_g > 1e-6, "layer {layer}: gradients vanish");
        // cam_i = ReLU(sum_d grad * act) on the patch tokens.
        for (k, c) in out.cam.iter().enumerate() {
            let s: f64 = (0..32).map(|d| grad[k + 1][d] * base[k + 1][d]).sum();
            assert!((f64::from(*c) - s.max(0.0)).abs() < 1e-6);
        }
    }
}

#[test]
fn gradcam_source_upsamples_the_patch_cam() {
    let (tmp, _, _) = hdpo_folder("mean");
    let enc = std::sync::Arc::new(DualEncoder::load(tmp.path(), &LoadOptions::default()).unwrap());
    let img = vit_pixels().get(1).unwrap();
    let text = "small left pleural effusion";
    let t = enc.embed_texts(&[text]).unwrap().squeeze(0).unwrap();
    let out = gradcam(&enc, &img, &t, None).unwrap();
    assert_eq!(out.layer, 2);
    let src = hdpo::encode::gradcam::GradCamSource {
        encoder: enc.clone(),
        layer: None,
    };
    assert_eq!(src.name(), "gradcam");
    let h = src
        .heatmap(&SampleView {
            id: "g1",
            image: Some(&img),
            text: Some(text),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((h.height, h.width), (32, 32));
    let want = hdpo::heatmap::resize::resize_grid(&out.cam, 4, 4, 32, 32);
    assert_eq!(h.data, want);
    let e = src
        .heatmap(&SampleView {
            id: "g2",
            image: Some(&img),
            ..Default::default()
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("g2"));
}

#[test]
fn rollout_of_constructed_attention_and_on_tiny_vit() {
    // Layer 1 and 2 head-averaged attentions over 3 tokens (CLS, p1, p2).
    let a1 = vec![1.0, 0.0, 0.0, 0.0, 0.2, 0.8, 0.0, 1.0, 0.0];
    let a2 = vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let r = rollout(&[a1, a2], 3).unwrap();
    // Â1 row1 = [0, .6, .4]; Â2 row0 = [.5, .5, 0] -> R row0 = .5*[1,0,0] + .5*[0,.6,.4].
    let want = [0.5, 0.3, 0.2];
    for (j, w) in want.iter().enumerate() {
        assert!((r[j] - w).abs() < 1e-7, "R[0,{j}] = {}", r[j]);
    }
    for i in 0..3 {
        let s: f64 = r[i * 3..i * 3 + 3].iter().sum();
        assert!((s - 1.0).abs() < 1e-7);
    }
    let (tmp, _, _) = hdpo_folder("mean");
    let enc = DualEncoder::load(tmp.path(), &LoadOptions::default()).unwrap();
    let px = vit_pixels();
    let (cam, grid) = attention_rollout(&enc, &px.get(0).unwrap()).unwrap();
    assert_eq!((cam.len(), grid), (16, (4, 4)));
    let total: f32 = cam.iter().sum();
    assert!(cam.iter().all(|v| *v > 0.0));
    // CLS keeps at least half of its own mass through each of 2 layers (>= 1/4), so patches get < 3/4.
    assert!(total > 0.0 && total < 0.75 + 1e-5, "patch mass {total}");
    let src = hdpo::encode::rollout::RolloutSource {
        encoder: std::sync::Arc::new(enc),
    };
    let h = src
        .heatmap(&SampleView {
            id: "s1",
            image: Some(&px.get(1).unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((h.height, h.width), (32, 32));
}

#[test]
fn eq2_pooling_on_constructed_heatmaps() {
    // Image-sized heatmap, 2x2 grid of 2x2 patches: patch means 1, 0, 0, 2.
    #[rustfmt::skip]
    let h = Heatmap::new(4, 4, vec![
        1.0, 1.0, 0.0, 0.0,
        1.0, 1.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 2.0,
        0.0, 0.0, 2.0, 4.0,
    ]).unwrap();
    let w = patch_weights(&h, "a", (4, 4), (2, 2)).unwrap();
    let want = [1.0 / 3.0, 0.0, 0.0, 2.0 / 3.0];
    for (x, y) in w.iter().zip(want) {
        assert!((x - y).abs() < 1e-6, "{w:?}");
    }
    // A 2x2 heatmap upsampled bilinearly (half-pixel centres) to 4x4: the
    // separable profile is [1, .75, .25, 0], so the patch means are
    // 3.0625/4, .4375/4, .4375/4, .0625/4 (sum 1).
    let h = Heatmap::new(2, 2, vec![1.0, 0.0, 0.0, 0.0]).unwrap();
    let w = patch_weights(&h, "b", (4, 4), (2, 2)).unwrap();
    let want = [0.765625, 0.109375, 0.109375, 0.015625];
    for (x, y) in w.iter().zip(want) {
        assert!((x - y).abs() < 1e-6, "{w:?}");
    }
    let patches =
        Tensor::from_vec(vec![1f32, 0., 0., 1., 1., 1., 2., 0.], (4, 2), &Device::Cpu).unwrap();
    let v = weighted_embedding(&[0.5, 0.25, 0.25, 0.0], &patches).unwrap();
    assert_eq!(v.to_vec1::<f32>().unwrap(), vec![0.75, 0.5]);
}

#[test]
fn bad_heatmaps_are_errors_naming_the_sample() {
    let zero = Heatmap::new(4, 4, vec![0.0; 16]).unwrap();
    let e = patch_weights(&zero, "study-17", (4, 4), (2, 2)).unwrap_err();
    assert!(
        format!("{e}").contains("study-17") && format!("{e}").contains("zero"),
        "{e}"
    );
    let mut nan = Heatmap::new(4, 4, vec![1.0; 16]).unwrap();
    nan.data[5] = f32::NAN;
    let e = patch_weights(&nan, "q-9", (4, 4), (2, 2)).unwrap_err();
    assert!(
        format!("{e}").contains("q-9") && format!("{e}").contains("finite"),
        "{e}"
    );
    let mut neg = Heatmap::new(4, 4, vec![1.0; 16]).unwrap();
    neg.data[3] = -0.5;
    let e = patch_weights(&neg, "q-10", (4, 4), (2, 2)).unwrap_err();
    assert!(
        format!("{e}").contains("q-10") && format!("{e}").contains("negative"),
        "{e}"
    );
    let e = salient_region(&zero, "study-18", (8, 8), &RegionOptions::default()).unwrap_err();
    assert!(format!("{e}").contains("study-18"), "{e}");
}

fn two_blobs() -> Heatmap {
    // Peak blob around (5,5) up to 1.0, second blob around (14,14) up to 0.8.
    let mut d = vec![0f32; 20 * 20];
    for y in 0..20 {
        for x in 0..20 {
            let a = (-(((y as f32 - 5.0).powi(2) + (x as f32 - 5.0).powi(2)) / 4.0)).exp();
            let b = 0.8 * (-(((y as f32 - 14.0).powi(2) + (x as f32 - 14.0).powi(2)) / 4.0)).exp();
            d[y * 20 + x] = a + b;
        }
    }
    Heatmap::new(20, 20, d).unwrap()
}

#[test]
fn salient_region_picks_the_peak_blob_only() {
    let h = two_blobs();
    let at = |m: &hdpo::heatmap::LesionMask, y: usize, x: usize| m.data[y * m.width + x];
    let no_dilate = RegionOptions {
        dilate_px: 0,
        ..RegionOptions::default()
    };
    let m0 = salient_region(&h, "s", (20, 20), &no_dilate).unwrap();
    // exp(-r²/4) >= 0.5  <=>  r² <= 4 ln 2 = 2.77: the 9 pixels with r² <= 2.
    let want: Vec<bool> = (0..400usize)
        .map(|i| {
            let (y, x) = ((i / 20) as i32 - 5, (i % 20) as i32 - 5);
            y * y + x * x <= 2
        })
        .collect();
    assert_eq!(m0.data, want);
    let m = salient_region(&h, "s", (20, 20), &RegionOptions::default()).unwrap();
    assert!(at(&m, 5, 5) && at(&m, 5, 8) && !at(&m, 5, 9) && at(&m, 7, 7));
    assert!(!at(&m, 14, 14) && !at(&m, 13, 13));
    assert!(m.data.iter().filter(|b| **b).count() > 9);
    // Both blobs exceed the threshold, but they are not connected.
    let low = RegionOptions {
        threshold: Threshold::FractionOfMax(0.3),
        connectivity: Connectivity::Four,
        dilate_px: 0,
    };
    let m = salient_region(&h, "s", (20, 20), &low).unwrap();
    assert!(at(&m, 5, 5) && !at(&m, 14, 14));
    assert!(h.at(14, 14) >= 0.3 * h.max());
    // Top quantile: the 5 largest pixels are the peak and its 4 neighbours.
    let q = RegionOptions {
        threshold: Threshold::TopQuantile(5.0 / 400.0),
        connectivity: Connectivity::Four,
        dilate_px: 0,
    };
    let m = salient_region(&h, "s", (20, 20), &q).unwrap();
    assert_eq!(m.data.iter().filter(|b| **b).count(), 5);
    assert!(at(&m, 4, 5) && at(&m, 6, 5) && at(&m, 5, 4) && at(&m, 5, 6));
    // At a larger image size the region scales with the upsampled heatmap.
    let m = salient_region(&h, "s", (40, 40), &no_dilate).unwrap();
    assert_eq!((m.height, m.width), (40, 40));
    assert!(m.data[11 * 40 + 11] && !m.data[29 * 40 + 29]);
}

#[test]
fn mask_source_reads_and_smooths_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut img = image::GrayImage::new(16, 16);
    for y in 4..8 {
        for x in 6..10 {
            img.put_pixel(x, y, image::Luma([255]));
        }
    }
    let p = tmp.path().join("m.png");
    img.save(&p).unwrap();
    let src = hdpo::heatmap::mask::MaskSource { sigma: None };
    assert_eq!(src.name(), "mask");
    let h = src
        .heatmap(&SampleView {
            id: "m1",
            mask_path: Some(&p),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(h.data.iter().sum::<f32>(), 16.0);
    assert_eq!(h.at(4, 6), 1.0);
    assert_eq!(h.at(3, 6), 0.0);
    let s = hdpo::heatmap::mask::MaskSource { sigma: Some(1.0) }
        .heatmap(&SampleView {
            id: "m1",
            mask_path: Some(&p),
            ..Default::default()
        })
        .unwrap();
    // Blur keeps the mass (the lesion is away from the border) and spreads it.
    assert!((s.data.iter().sum::<f32>() - 16.0).abs() < 1e-3);
    assert!(s.at(3, 6) > 0.0 && s.at(5, 7) < 1.0 && s.at(5, 7) > s.at(3, 6));
    let empty = tmp.path().join("e.png");
    image::GrayImage::new(8, 8).save(&empty).unwrap();
    let e = src
        .heatmap(&SampleView {
            id: "m2",
            mask_path: Some(&empty),
            ..Default::default()
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("m2"));
    let e = src
        .heatmap(&SampleView {
            id: "m3",
            ..Default::default()
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("m3"));
}

// ---------------------------------------------------------------------------
// Contrastive alignment.

use hdpo::encode::align::{
    align, batch_loss, init_dual_encoder, AlignConfig, AlignPair, LogitScale, PairImage,
    Temperature,
};

const QUADRANTS: [&str; 4] = [
    "bright spot in the upper left",
    "bright spot in the upper right",
    "bright spot in the lower left",
    "bright spot in the lower right",
];

/// 32x32 images with a bright blob in quadrant `q` at a jittered position, noise elsewhere.
fn quadrant_pairs(n: usize, seed: u64) -> Vec<AlignPair> {
    use rand::Rng;
    let mut rng = hdpo::util::seed::rng_for(seed, "quadrants");
    (0..n)
        .map(|k| {
            let q = k % 4;
            let (cy, cx) = (
                8 + 16 * (q / 2) as i32 + rng.random_range(-3..=3),
                8 + 16 * (q % 2) as i32 + rng.random_range(-3..=3),
            );
            let mut d = vec![0f32; 3 * 32 * 32];
            for y in 0..32i32 {
                for x in 0..32i32 {
                    let r2 = ((y - cy).pow(2) + (x - cx).pow(2)) as f32;
                    let v = (-r2 / 24.0).exp() * 2.0 - 1.0 + rng.random_range(-0.1f32..0.1);
                    for c in 0..3 {
                        d[c * 1024 + (y * 32 + x) as usize] = v;
                    }
                }
            }
            AlignPair::global(
                PairImage::Tensor(Tensor::from_vec(d, (3, 32, 32), &Device::Cpu).unwrap()),
                QUADRANTS[q],
            )
        })
        .collect()
}

#[test]
fn align_learns_quadrants_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("enc");
    let cfg = small_config();
    let report = align(quadrant_pairs(160, 1), &cfg, &out).unwrap();
    let r = &report.recall;
    eprintln!("align report: {report:?}");
    assert_eq!(report.heldout_pairs, 32);
    assert!((r.chance_r1 - 0.25).abs() < 0.1, "chance {}", r.chance_r1);
    assert!(
        r.image_to_text_r1 >= 0.75,
        "image->text R@1 {}",
        r.image_to_text_r1
    );
    assert!(
        r.text_to_image_r1 >= 0.75,
        "text->image R@1 {}",
        r.text_to_image_r1
    );
    assert!(report.epoch_loss.last().unwrap() < report.epoch_loss.first().unwrap());
    // Loads back through the same loader and ranks the right quadrant first.
    let enc = DualEncoder::load(&out, &LoadOptions::default()).unwrap();
    let test = quadrant_pairs(8, 99);
    let imgs: Vec<Tensor> = test
        .iter()
        .map(|p| match &p.image {
            PairImage::Tensor(t) => t.clone(),
            _ => unreachable!(),
        })
        .collect();
    let img = enc.embed_images(&Tensor::stack(&imgs, 0).unwrap()).unwrap();
    let txt = enc.embed_texts(&QUADRANTS).unwrap();
    let sim: Vec<Vec<f32>> = encode::l2_normalize(&img)
        .unwrap()
        .matmul(&encode::l2_normalize(&txt).unwrap().t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let correct = sim
        .iter()
        .enumerate()
        .filter(|(k, row)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            best == k % 4
        })
        .count();
    assert!(
        correct >= 6,
        "{correct}/8 fresh images matched their quadrant"
    );
    // Determinism: the same seed gives the same weights.
    let out2 = tmp.path().join("enc2");
    let mut cfg2 = cfg.clone();
    cfg2.epochs = 1;
    let a = align(quadrant_pairs(40, 1), &cfg2, &out2).unwrap();
    let b = align(quadrant_pairs(40, 1), &cfg2, &tmp.path().join("enc3")).unwrap();
    assert_eq!(a.epoch_loss, b.epoch_loss);
}

#[test]
fn align_loss_gradients_reach_every_tensor_and_match_finite_differences() {
    let cfg = small_config();
    let texts: Vec<String> = QUADRANTS.iter().map(|s| s.to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer::build_word_tokenizer(&texts, 1, &tmp.path().join("vocab.txt")).unwrap();
    let varmap = candle_nn::VarMap::new();
    let enc = init_dual_encoder(&cfg, tok, &varmap, DType::F64, &Device::Cpu).unwrap();
    let scale = LogitScale::new(
        Temperature::Learnable(0.07),
        &varmap,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let pairs = quadrant_pairs(4, 5);
    let imgs: Vec<Tensor> = pairs
        .iter()
        .map(|p| match &p.image {
            PairImage::Tensor(t) => t.to_dtype(DType::F64).unwrap(),
            _ => unreachable!(),
        })
        .collect();
    let images = Tensor::stack(&imgs, 0).unwrap();
    let refs: Vec<&str> = pairs.iter().map(|p| p.text.as_str()).collect();
    let (ids, mask) = enc.tokenize(&refs).unwrap();
    let loss = batch_loss(&enc, &images, &ids, &mask, &scale).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in &names {
        let g = grads.get(data[*name].as_tensor());
        // The key bias adds the same score to every key of a query, which
        // softmax cancels: its gradient is exactly zero in any attention.
        if name.ends_with("key.bias") {
            continue;
        }
        let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
        let n: f64 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
    // Finite differences on a few entries of different tensors.
    for (name, idx) in [
        ("visual_projection.weight", 3usize),
        (
            "vision_model.encoder.layer.0.attention.attention.query.weight",
            17,
        ),
        ("text_model.embeddings.word_embeddings.weight", 5 * 32 + 2),
        ("logit_scale", 0),
    ] {
        let var = data.get(name).unwrap_or_else(|| panic!("{name}"));
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig = var.as_tensor().copy().unwrap();
        let flat: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        let eval = |delta: f64| -> f64 {
            let mut v = flat.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
                .unwrap();
            batch_loss(&enc, &images, &ids, &mask, &scale)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let eps = 1e-6;
        let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
        var.set(&orig).unwrap();
        assert!(
            (fd - g[idx]).abs() <= 1e-7 + 1e-5 * g[idx].abs(),
            "{name}[{idx}]: fd {fd} vs grad {}",
            g[idx]
        );
    }
}

/// Writes `n` quadrant pairs as PNG images and a `pairs.jsonl` into `dir`.
fn write_quadrant_jsonl(dir: &std::path::Path, n: usize, seed: u64) {
    let mut lines = String::new();
    for (k, p) in quadrant_pairs(n, seed).into_iter().enumerate() {
        let PairImage::Tensor(t) = p.image else {
            unreachable!()
        };
        // Back to 8-bit RGB: pixel = (v + 1) / 2 * 255.
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            let i = (y * 32 + x) as usize;
            let c = |ch: usize| (((v[ch * 1024 + i] + 1.0) * 127.5).clamp(0.0, 255.0)) as u8;
            image::Rgb([c(0), c(1), c(2)])
        });
        img.save(dir.join(format!("img{k}.png"))).unwrap();
        lines.push_str(
            &serde_json::json!({"image": format!("img{k}.png"), "text": p.text}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(dir.join("pairs.jsonl"), lines).unwrap();
}

#[test]
fn align_cli_trains_from_jsonl_and_writes_a_loadable_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    write_quadrant_jsonl(tmp.path(), 24, 7);
    let out = tmp.path().join("enc");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["align", "--data"])
        .arg(tmp.path())
        .args([
            "--format",
            "jsonl",
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(stdout.contains("R@1") && stdout.contains("R@5"), "{stdout}");
    let enc = DualEncoder::load(&out, &LoadOptions::default()).unwrap();
    assert_eq!(enc.image_size(), 32);
    let img = enc.load_image(&tmp.path().join("img0.png")).unwrap();
    let (p, grid) = enc.embed_patches(&img.unsqueeze(0).unwrap()).unwrap();
    assert_eq!((p.dims(), grid), (&[1usize, 16, 64][..], (4, 4)));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("align_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["heldout_pairs"], 5);
    // A bad image path is an error naming the line.
    std::fs::write(
        tmp.path().join("bad.jsonl"),
        "{\"image\": \"../x.png\", \"text\": \"t\"}\n",
    )
    .unwrap();
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["align", "--data"])
        .arg(tmp.path().join("bad.jsonl"))
        .arg("--out")
        .arg(tmp.path().join("enc2"))
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("line 1"));
}

/// Projection-only alignment on the frozen `tiny_vit` / `tiny_bert` fixtures.
fn frozen_tiny_towers_config() -> AlignConfig {
    AlignConfig {
        pretrained: Some(hdpo::encode::align::PretrainedTowers {
            vision: fixture("tiny_vit"),
            text: fixture("tiny_bert"),
        }),
        projection_dim: 16,
        epochs: 30,
        batch_size: 16,
        learning_rate: 1e-2,
        seed: 2,
        ..AlignConfig::default()
    }
}

#[test]
fn align_learns_projections_on_frozen_vit_and_bert_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("proj");
    let words = ["upper left", "upper right", "lower left", "lower right"];
    let pairs: Vec<AlignPair> = quadrant_pairs(64, 11)
        .into_iter()
        .enumerate()
        .map(|(k, mut p)| {
            p.text = format!("focal opacity in the {} lung", words[k % 4]);
            p
        })
        .collect();
    let cfg = frozen_tiny_towers_config();
    let report = align(pairs, &cfg, &out).unwrap();
    eprintln!(
        "projection-only align: {:?} {:?}",
        report.epoch_loss, report.recall
    );
    assert!(report.epoch_loss.last().unwrap() < &(report.epoch_loss[0] - 0.05));
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg_json["vision_checkpoint"]
        .as_str()
        .unwrap()
        .ends_with("tiny_vit"));
    assert!(
        !out.join("tokenizer.json").exists(),
        "uses the BERT checkpoint's tokenizer"
    );
    // Loads back: image embedding = mean-pooled tiny_vit patches through the learned projection.
    let enc = DualEncoder::load(&out, &LoadOptions::default()).unwrap();
    let w = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let wv = &w["visual_projection.weight"];
    let want = reference("tiny_vit")["mean_pooled_patches"]
        .matmul(&wv.t().unwrap())
        .unwrap();
    assert_close(
        &enc.embed_images(&vit_pixels()).unwrap(),
        &want,
        "projected image embedding",
    );
    let wt = &w["text_projection.weight"];
    let texts: Vec<String> =
        serde_json::from_value(reference_json("tiny_bert")["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = reference("tiny_bert")["mean_pooled"]
        .matmul(&wt.t().unwrap())
        .unwrap();
    assert_close(
        &enc.embed_texts(&refs).unwrap(),
        &want,
        "projected text embedding",
    );
}

/// `--text-pooling cls` (once failed: the strided [CLS] slice reached
/// `index_select`): on the frozen `tiny_bert` fixture the learned encoder's
/// text embedding is the reference [CLS] vector through the learned projection.
#[test]
fn align_cli_with_cls_text_pooling_on_frozen_tiny_towers() {
    let tmp = tempfile::tempdir().unwrap();
    write_quadrant_jsonl(tmp.path(), 16, 3);
    let out = tmp.path().join("enc");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["align", "--data"])
        .arg(tmp.path())
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--text-pooling",
            "cls",
        ])
        .arg("--vision-checkpoint")
        .arg(fixture("tiny_vit"))
        .arg("--text-checkpoint")
        .arg(fixture("tiny_bert"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let enc = DualEncoder::load(&out, &LoadOptions::default()).unwrap();
    assert_eq!(enc.text_pooling, encode::TextPooling::Cls);
    let w = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let texts: Vec<String> =
        serde_json::from_value(reference_json("tiny_bert")["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = reference("tiny_bert")["cls_embedding"]
        .matmul(&w["text_projection.weight"].t().unwrap())
        .unwrap();
    assert_close(
        &enc.embed_texts(&refs).unwrap(),
        &want,
        "projected [CLS] text embedding",
    );
}

/// [CLS] pooling also trains a from-scratch text tower.
#[test]
fn align_with_cls_text_pooling_trains_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = AlignConfig {
        image_size: 32,
        epochs: 2,
        batch_size: 8,
        text_pooling: encode::TextPooling::Cls,
        ..AlignConfig::default()
    };
    let report = align(quadrant_pairs(24, 4), &cfg, &tmp.path().join("enc")).unwrap();
    assert_eq!(report.epoch_loss.len(), 2);
    assert!(
        report.epoch_loss.iter().all(|l| l.is_finite()),
        "{report:?}"
    );
}

/// Curation throughput on a ViT-B/16-sized dual encoder (random weights).
/// Run with `cargo test --release --test encode -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_curation_throughput_vit_b16() {
    let r = hdpo::curate::bench::curation_throughput(&hdpo::curate::bench::BenchConfig::default())
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.samples_per_second > 0.0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn heatmap() -> impl Strategy<Value = Heatmap> {
        (1usize..12, 1usize..12).prop_flat_map(|(h, w)| {
            proptest::collection::vec(0f32..10.0, h * w)
                .prop_filter("not all zero", |v| v.iter().any(|x| *x > 0.0))
                .prop_map(move |d| Heatmap::new(h, w, d).unwrap())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn patch_weights_are_a_distribution(h in heatmap(), g in 1usize..5, p in 1usize..5) {
            let w = patch_weights(&h, "p", (g * p, g * p), (g, g)).unwrap();
            prop_assert_eq!(w.len(), g * g);
            prop_assert!(w.iter().all(|v| *v >= 0.0 && v.is_finite()));
            prop_assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }

        #[test]
        fn salient_region_holds_the_peak_and_only_pixels_above_threshold(
            h in heatmap(), f in 0.1f32..1.0, s in 4usize..24
        ) {
            let opts = RegionOptions { threshold: Threshold::FractionOfMax(f), connectivity: Connectivity::Eight, dilate_px: 0 };
            let m = salient_region(&h, "p", (s, s), &opts).unwrap();
            let r = hdpo::heatmap::resize::resize_bilinear(&h, s, s);
            let max = r.data.iter().copied().fold(f32::MIN, f32::max);
            let peak = r.data.iter().position(|v| *v == max).unwrap();
            prop_assert!(m.data[peak]);
            for (i, on) in m.data.iter().enumerate() {
                if *on {
                    prop_assert!(r.data[i] >= f * max);
                }
            }
            let d = salient_region(&h, "p", (s, s), &RegionOptions { dilate_px: 2, ..opts }).unwrap();
            prop_assert!(m.data.iter().zip(&d.data).all(|(a, b)| !*a || *b));
        }
    }
}

/// Images with spots in two quadrants `a`, `b` (text names both); the
/// region is spot `a` (its Gaussian as heatmap), whose quadrant is the
/// positive phrase and `b`'s the negative.
fn two_spot_region_pairs(n: usize, seed: u64) -> Vec<AlignPair> {
    use rand::Rng;
    let mut rng = hdpo::util::seed::rng_for(seed, "two-spots");
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..4usize);
            let b = (a + rng.random_range(1..4usize)) % 4;
            let centre = |q: usize| (8.0 + 16.0 * (q / 2) as f32, 8.0 + 16.0 * (q % 2) as f32);
            let spot = |q: usize, y: usize, x: usize| {
                let (cy, cx) = centre(q);
                (-((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)) / 24.0).exp()
            };
            let mut d = vec![0f32; 3 * 32 * 32];
            let mut heat = vec![0f32; 32 * 32];
            for y in 0..32 {
                for x in 0..32 {
                    let v = (spot(a, y, x) + spot(b, y, x)).min(1.0) * 2.0 - 1.0
                        + rng.random_range(-0.1f32..0.1);
                    for c in 0..3 {
                        d[c * 1024 + y * 32 + x] = v;
                    }
                    heat[y * 32 + x] = spot(a, y, x);
                }
            }
            let mut p = AlignPair::global(
                PairImage::Tensor(Tensor::from_vec(d, (3, 32, 32), &Device::Cpu).unwrap()),
                format!("{} and {}", QUADRANTS[a], QUADRANTS[b]),
            );
            p.region = Some(hdpo::encode::align::RegionText {
                heatmap: Heatmap::new(32, 32, heat).unwrap(),
                positives: vec![QUADRANTS[a].to_string()],
                negatives: vec![QUADRANTS[b].to_string()],
            });
            p
        })
        .collect()
}

#[test]
fn local_alignment_teaches_regions_their_phrase_in_both_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = two_spot_region_pairs(120, 5);
    // From scratch: the held-out spot region is closest to its own quadrant
    // (chance 0.5); the region report is there with or without the local loss.
    let mut cfg = small_config();
    cfg.epochs = 15;
    let local = align(pairs.clone(), &cfg, &tmp.path().join("local")).unwrap();
    cfg.region_weight = 0.0;
    let global = align(pairs.clone(), &cfg, &tmp.path().join("global")).unwrap();
    let (l, g) = (local.regions.unwrap(), global.regions.unwrap());
    eprintln!("local alignment: {l:?}; global only: {g:?}");
    assert_eq!((l.train_regions, l.heldout_regions), (96, 24));
    assert!((l.chance_top1.unwrap() - 0.5).abs() < 1e-9);
    assert!(l.heldout_top1.unwrap() >= 0.9, "{l:?}");
    assert_ne!(
        local.epoch_loss, global.epoch_loss,
        "the local loss is part of the objective"
    );
    // Projections only, on the frozen tiny ViT / BERT checkpoints.
    let cfg = frozen_tiny_towers_config();
    let frozen = align(pairs.clone(), &cfg, &tmp.path().join("frozen")).unwrap();
    let f = frozen.regions.unwrap();
    eprintln!("frozen towers: {f:?}");
    assert!(f.heldout_top1.unwrap() >= 0.75, "{f:?}");
    // A negative weight would push regions away from their phrases: refused.
    let bad = AlignConfig {
        region_weight: -1.0,
        ..small_config()
    };
    let e = align(pairs, &bad, &tmp.path().join("bad")).unwrap_err();
    assert!(e.to_string().contains("region_weight"), "{e}");
}

#[test]
fn align_cli_adds_the_local_alignment_from_dataset_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("phantom");
    let pcfg = hdpo::data::phantom::PhantomConfig {
        seed: 3,
        train: 30,
        val: 0,
        test: 0,
        size: 48,
        ..Default::default()
    };
    hdpo::data::phantom::generate(&pcfg, &data).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let res = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
            .args(["align", "--format", "phantom-report", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join(out))
            .args(["--epochs", "2", "--image-size", "32", "--log", "warn"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&res.stdout).to_string();
        assert!(
            res.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(out).join("align_report.json")).unwrap(),
        )
        .unwrap();
        (stdout, report)
    };
    let (stdout, report) = run("local", &[]);
    // Every abnormal study has a lesion mask and a finding phrase; normal ones have an empty mask.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("phantom.json")).unwrap()).unwrap();
    let abnormal = manifest["studies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["finding"].is_null())
        .count();
    assert!(abnormal > 10 && abnormal < 30);
    let counts = format!(
        "local alignment: {abnormal} of 30 pairs with a lesion region ({} without a finding phrase, 0 without a mask, 0 with an empty mask, 0 unusable heatmaps)",
        30 - abnormal
    );
    assert!(stdout.contains(&counts), "{stdout}");
    assert!(
        stdout.contains("local alignment: held-out region -> lesion phrase top-1"),
        "{stdout}"
    );
    let regions = &report["regions"];
    assert_eq!(
        regions["train_regions"].as_u64().unwrap() + regions["heldout_regions"].as_u64().unwrap(),
        abnormal as u64
    );
    let (stdout, report) = run("global", &["--no-regions"]);
    assert!(!stdout.contains("local alignment"), "{stdout}");
    assert!(report.get("regions").is_none());
    // Regions from the DAug-style heatmap files instead of the masks.
    let (stdout, report) = run("file", &["--region-heatmaps", "file"]);
    assert!(stdout.contains(&counts), "{stdout}");
    assert!(report["regions"]["train_regions"].as_u64().unwrap() > 0);
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["align", "--format", "phantom-report", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .args(["--region-heatmaps", "gradcam"])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("expected mask or file[:DIR]"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// The option types `hdpo align` / `hdpo curate` parse with live in the
/// library: their names and their errors.
#[test]
fn option_parsers_accept_their_names_and_reject_others() {
    use hdpo::curate::regions::RegionHeatmapSpec;
    use hdpo::data::{Split, SplitSelection};
    let pooling: Vec<encode::TextPooling> = ["mean", "cls", "pooler", "eos"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        pooling,
        [
            encode::TextPooling::Mean,
            encode::TextPooling::Cls,
            encode::TextPooling::Pooler,
            encode::TextPooling::Eos
        ]
    );
    let e = "CLS"
        .parse::<encode::TextPooling>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected mean, cls, pooler or eos"), "{e}");
    assert_eq!("all".parse::<SplitSelection>().unwrap().split(), None);
    assert_eq!(
        "val".parse::<SplitSelection>().unwrap().split(),
        Some(Split::Val)
    );
    assert!("dev".parse::<SplitSelection>().is_err());
    let data = std::path::Path::new("/data/set");
    assert_eq!(
        "mask".parse::<RegionHeatmapSpec>().unwrap(),
        RegionHeatmapSpec::Masks
    );
    assert!(RegionHeatmapSpec::Masks.file_source(data).is_none());
    let f = "file".parse::<RegionHeatmapSpec>().unwrap();
    assert_eq!(f.file_source(data).unwrap().dir, data.join("heatmaps"));
    let f = "file:/h".parse::<RegionHeatmapSpec>().unwrap();
    assert_eq!(
        f.file_source(data).unwrap().dir,
        std::path::PathBuf::from("/h")
    );
    let e = "gradcam"
        .parse::<RegionHeatmapSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected mask or file[:DIR]"), "{e}");
}
