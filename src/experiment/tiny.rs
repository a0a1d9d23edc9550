//! The tiny LLaVA of the phantom experiment and the demo: a word-level
//! tokenizer built from the training texts (so a fresh clone needs no
//! tokenizer file), a small random-init LLaVA config, and the switch that
//! makes every base weight trainable for the "pretraining" that turns the
//! random model into the base model.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{anyhow, Result};
use candle_core::Var;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::config::ModelConfig;
use crate::model::template::{ImageTokens, TextTokenizer};
use crate::model::{LlavaConfig, LlavaModel};

/// The special tokens, in id order: `<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3, `<image>` 4
/// (the ids of the `tiny_llava` fixture).
pub const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<pad>", "<image>"];
pub const IMAGE_TOKEN_ID: u32 = 4;

/// A lower-casing word-level tokenizer (BERT pre-tokenisation: words and
/// punctuation) whose vocabulary is the specials and every word of `texts`
/// (sorted, so the ids do not depend on the texts' order); `<s>` is prepended
/// when special tokens are added. Unknown words map to `<unk>`.
pub fn word_tokenizer(texts: &[String]) -> Result<Tokenizer> {
    let mut words: BTreeSet<String> = BTreeSet::new();
    for t in texts {
        for w in crate::encode::tokenizer::bert_words(&t.to_lowercase())? {
            words.insert(w);
        }
    }
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), i as u32);
    }
    for w in words {
        if !vocab.contains_key(&w) {
            let id = vocab.len() as u32;
            vocab.insert(w, id);
        }
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| anyhow!("building the word-level tokenizer: {e}"))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(Lowercase))
        .map_err(|e| anyhow!("{e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(vec![("<s>", 1)])
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens(
        SPECIALS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    Ok(tok)
}

/// The [`TextTokenizer`] of a [`word_tokenizer`].
pub fn text_tokenizer(tok: Tokenizer) -> TextTokenizer {
    TextTokenizer {
        tokenizer: tok,
        bos_id: Some(1),
        eos_id: 2,
        pad_id: 3,
        image_tokens: ImageTokens::Repeat(IMAGE_TOKEN_ID),
    }
}

/// Tidy a decoded word-level answer: no space before punctuation.
pub fn tidy(decoded: &str) -> String {
    let mut s = decoded.trim().to_string();
    for p in [" .", " ,", " ;", " :", " ?", " !"] {
        s = s.replace(p, &p[1..]);
    }
    s
}

/// The Hugging Face `LlavaForConditionalGeneration` config of the tiny model.
pub fn tiny_config(m: &ModelConfig, vocab_size: usize) -> Result<LlavaConfig> {
    let head_dim = m.text_hidden / m.heads;
    let v = serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "dtype": "float32",
        "image_token_index": IMAGE_TOKEN_ID,
        "multimodal_projector_bias": true,
        "projector_hidden_act": "gelu",
        "pad_token_id": 3,
        "text_config": {
            "model_type": "mistral",
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": m.text_hidden,
            "intermediate_size": m.intermediate,
            "max_position_embeddings": 512,
            "num_attention_heads": m.heads,
            "num_hidden_layers": m.text_layers,
            "num_key_value_heads": m.heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "vocab_size": vocab_size
        },
        "tie_word_embeddings": false,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_act": "quick_gelu",
            "hidden_size": m.vision_hidden,
            "image_size": m.image_size,
            "intermediate_size": m.vision_hidden * 2,
            "layer_norm_eps": 1e-5,
            "num_attention_heads": m.heads.min(m.vision_hidden),
            "num_channels": 3,
            "num_hidden_layers": m.vision_layers,
            "patch_size": m.patch_size
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default"
    });
    LlavaConfig::from_json(&v, "the tiny LLaVA config")
}

/// A tiny LLaVA with random weights (seeded) and its word-level tokenizer,
/// whose vocabulary is every training answer and prompt of `train`, the chat
/// template's fixed text, the curation's replacement phrases and the
/// phantom's medical terms (so every perturbed answer stays in vocabulary).
/// This is `hdpo init-model` and the first step of the demo's base model.
pub fn init_tiny_model(
    m: &ModelConfig,
    train: &[crate::data::Sample],
    template: crate::model::ChatTemplate,
    seed: u64,
) -> Result<(LlavaModel, Tokenizer)> {
    let mut texts: Vec<String> = train
        .iter()
        .flat_map(|s| [s.answer.clone(), s.prompt()])
        .collect();
    texts.push(template.prompt_text("", false));
    texts.push(crate::data::REPORT_PROMPT.into());
    texts.push("no abnormalities yes no".into());
    texts.extend(
        crate::data::phantom::text::vocabulary()
            .into_iter()
            .map(|(t, _)| t),
    );
    let tok = word_tokenizer(&texts)?;
    let cfg = tiny_config(m, tok.get_vocab_size(true))?;
    let opts = crate::model::LoadOptions {
        device: crate::model::parse_device(&m.device)?,
        dtype: None,
    };
    let model = LlavaModel::random(cfg, Some(seed), &opts)?;
    Ok((model, tok))
}

/// Make every weight matrix, embedding and norm of `model` a [`Var`] (in
/// place) and return them by name, for full-weight training. Linear layers
/// then take candle's differentiable `matmul` path (`model::ops::frozen_linear`
/// falls back to it for variables).
pub fn make_trainable(model: &mut LlavaModel) -> Result<Vec<(String, Var)>> {
    let mut vars = Vec::new();
    let mut var = |name: String, t: &mut candle_core::Tensor| -> Result<()> {
        let v = Var::from_tensor(t)?;
        *t = v.as_tensor().clone();
        vars.push((name, v));
        Ok(())
    };
    // Vision layers after the feature layer (`vision_feature_layer = -2`
    // skips the last one) never reach the loss: they stay frozen.
    let used_layers = model.config.feature_layer_index()?;
    let vision_used = |name: &str| -> bool {
        name.split("layers.")
            .nth(1)
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_none_or(|i| i < used_layers)
    };
    for lin in model
        .vision
        .linears_mut()
        .into_iter()
        .filter(|l| vision_used(&l.name))
        .chain(model.projector.linears_mut())
        .chain(model.decoder.linears_mut())
    {
        var(format!("{}.weight", lin.name), &mut lin.weight)?;
        if let Some(b) = lin.bias.as_mut() {
            var(format!("{}.bias", lin.name), b)?;
        }
    }
    var("embed_tokens".into(), &mut model.decoder.embed_tokens)?;
    var("final_norm".into(), &mut model.decoder.norm)?;
    for (i, l) in model.decoder.layers.iter_mut().enumerate() {
        var(
            format!("layers.{i}.input_layernorm"),
            &mut l.input_layernorm,
        )?;
        var(
            format!("layers.{i}.post_attention_layernorm"),
            &mut l.post_attention_layernorm,
        )?;
    }
    // The patch embedding is the tower's only pixel-level feature: left at
    // its random init, `pre_layrnorm` normalises each patch's projection and
    // with it most of the brightness difference between a lesion and the
    // lung around it (docs/experiments.md, "Choosing the phantom base model").
    var(
        "vision.patch_embedding".into(),
        &mut model.vision.patch_embedding,
    )?;
    let (w, b) = &mut model.vision.pre_layrnorm;
    var("vision.pre_layrnorm.weight".into(), w)?;
    var("vision.pre_layrnorm.bias".into(), b)?;
    for (i, l) in model.vision.layers.iter_mut().take(used_layers).enumerate() {
        for (n, (w, b)) in [
            ("layer_norm1", &mut l.layer_norm1),
            ("layer_norm2", &mut l.layer_norm2),
        ] {
            var(format!("vision.layers.{i}.{n}.weight"), w)?;
            var(format!("vision.layers.{i}.{n}.bias"), b)?;
        }
    }
    var(
        "vision.position_embedding".into(),
        &mut model.vision.position_embedding,
    )?;
    var(
        "vision.class_embedding".into(),
        &mut model.vision.class_embedding,
    )?;
    Ok(vars)
}

/// Write the tokenizer next to a saved model (`tokenizer.json`).
pub fn save_tokenizer(tok: &Tokenizer, dir: &Path) -> Result<()> {
    let json = tok
        .to_string(true)
        .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    crate::util::fsio::atomic_write(&dir.join("tokenizer.json"), json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tokenizer_round_trips_and_finds_the_image_token() {
        let tok =
            word_tokenizer(&["There is a nodule.".into(), "USER: ASSISTANT:".into()]).unwrap();
        let enc = tok
            .encode("USER: <image>\nthere is a Nodule.", true)
            .unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids[0], 1);
        assert!(ids.contains(&IMAGE_TOKEN_ID));
        assert!(!ids.contains(&0), "no unknown words: {ids:?}");
        let unk = tok.encode("zebra", false).unwrap();
        assert_eq!(unk.get_ids(), &[0]);
        let back = tok
            .decode(
                tok.encode("there is a nodule.", false).unwrap().get_ids(),
                true,
            )
            .unwrap();
        assert_eq!(tidy(&back), "there is a nodule.");
    }
}
