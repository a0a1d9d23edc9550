//! Tokenizer (`tokenizer.json`) and chat templates by name (`docs/design.md`,
//! "Chat templates"), and the encoding of (template, prompt, response) into the
//! token ids, response mask and image positions a trainer needs.
//!
//! Image tokens are laid out in one of two ways that give the same decoder
//! input: Hugging Face's (the `<image>` token repeated once per image
//! feature) or the original LLaVA's (features spliced in at a single
//! placeholder, `IMAGE_TOKEN_INDEX = -200`; here the spliced positions carry
//! the pad id and are listed in `image_positions`).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::{Architecture, LlavaConfig};

/// The placeholder text for the image in a prompt.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// LLaVA v1's system prompt (`conv_vicuna_v1`).
pub const VICUNA_V1_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// A chat template by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `USER: <image>\n{prompt} ASSISTANT:` then ` {answer}` + EOS (the fixtures' template).
    LlavaPlain,
    /// LLaVA-Med v1.5: `[INST] <image>\n{question} [/INST]` then ` {answer}</s>`.
    MistralInstruct,
    /// LLaVA v1: `{system} USER: <image>\n{question} ASSISTANT:` then ` {answer}</s>`.
    VicunaV1,
}

impl ChatTemplate {
    pub const NAMES: [&'static str; 3] = ["llava_plain", "mistral_instruct", "vicuna_v1"];

    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "llava_plain" => ChatTemplate::LlavaPlain,
            "mistral_instruct" => ChatTemplate::MistralInstruct,
            "vicuna_v1" => ChatTemplate::VicunaV1,
            _ => bail!(
                "unknown chat template `{name}` (known: {})",
                Self::NAMES.join(", ")
            ),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::LlavaPlain => "llava_plain",
            ChatTemplate::MistralInstruct => "mistral_instruct",
            ChatTemplate::VicunaV1 => "vicuna_v1",
        }
    }

    /// The prompt text for a question; `with_image` puts `<image>\n` before it.
    pub fn prompt_text(&self, question: &str, with_image: bool) -> String {
        let q = if with_image {
            format!("{IMAGE_PLACEHOLDER}\n{question}")
        } else {
            question.to_string()
        };
        match self {
            ChatTemplate::LlavaPlain => format!("USER: {q} ASSISTANT:"),
            ChatTemplate::MistralInstruct => format!("[INST] {q} [/INST]"),
            ChatTemplate::VicunaV1 => format!("{VICUNA_V1_SYSTEM} USER: {q} ASSISTANT:"),
        }
    }

    /// The response text before EOS: ` {answer}` (EOS is appended as a token).
    pub fn response_text(&self, answer: &str) -> String {
        format!(" {answer}")
    }
}

/// How image tokens appear in the id sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageTokens {
    /// Hugging Face: the `<image>` token (this id) repeated once per feature.
    Repeat(u32),
    /// Original LLaVA: the prompt is tokenized in chunks around `<image>` and
    /// the features are spliced in between.
    Splice,
}

/// One tokenized sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedSequence {
    pub input_ids: Vec<u32>,
    /// True on response tokens (incl. the final EOS) whose log-probs count.
    pub response_mask: Vec<bool>,
    /// Positions whose embedding rows are replaced by image features.
    pub image_positions: Vec<usize>,
    /// Tokens before the response (BOS, template, image tokens, question).
    pub prompt_len: usize,
}

impl EncodedSequence {
    /// Number of response tokens (incl. EOS).
    pub fn response_len(&self) -> usize {
        self.input_ids.len() - self.prompt_len
    }
}

/// The tokenizer with the ids the templates need.
pub struct TextTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: u32,
    pub pad_id: u32,
    pub image_tokens: ImageTokens,
}

fn special_from_config(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Load `dir/tokenizer.json` for the model `cfg`.
    pub fn from_dir(dir: &Path, cfg: &LlavaConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
        let id_of = |key: &str| -> Option<u32> {
            special_from_config(dir, key).and_then(|s| tokenizer.token_to_id(&s))
        };
        let eos_id = id_of("eos_token")
            .or(cfg.text.eos_token_id)
            .or_else(|| tokenizer.token_to_id("</s>"))
            .with_context(|| format!("{}: no EOS token", dir.display()))?;
        let bos_id = id_of("bos_token")
            .or(cfg.text.bos_token_id)
            .or_else(|| tokenizer.token_to_id("<s>"));
        let pad_id = id_of("pad_token")
            .or(cfg.text.pad_token_id)
            .unwrap_or(eos_id);
        let image_tokens = match (cfg.architecture, cfg.image_token_id) {
            (Architecture::HfLlava, Some(id)) => ImageTokens::Repeat(id),
            _ => ImageTokens::Splice,
        };
        Ok(TextTokenizer {
            tokenizer,
            bos_id,
            eos_id,
            pad_id,
            image_tokens,
        })
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Decode ids to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }

    /// Tokenize a prompt text holding zero or one `<image>` placeholder and
    /// lay out `n_image_tokens` image positions for it.
    pub fn encode_prompt_text(
        &self,
        text: &str,
        n_image_tokens: usize,
    ) -> Result<(Vec<u32>, Vec<usize>)> {
        let n_ph = text.matches(IMAGE_PLACEHOLDER).count();
        if n_ph > 1 {
            bail!(
                "prompt holds {n_ph} `<image>` placeholders; one image per sequence is supported"
            );
        }
        match self.image_tokens {
            ImageTokens::Repeat(img) => {
                let ids = self.encode(text, true)?;
                let mut out = Vec::with_capacity(ids.len() + n_image_tokens);
                let mut pos = Vec::new();
                for id in ids {
                    if id == img {
                        for _ in 0..n_image_tokens {
                            pos.push(out.len());
                            out.push(img);
                        }
                    } else {
                        out.push(id);
                    }
                }
                if n_ph == 1 && pos.is_empty() {
                    bail!("the tokenizer does not produce the image token {img} for `<image>`");
                }
                Ok((out, pos))
            }
            ImageTokens::Splice => {
                let mut out = Vec::new();
                let mut pos = Vec::new();
                for (i, chunk) in text.split(IMAGE_PLACEHOLDER).enumerate() {
                    if i > 0 {
                        for _ in 0..n_image_tokens {
                            pos.push(out.len());
                            out.push(self.pad_id);
                        }
                    }
                    let mut ids = self.encode(chunk, true)?;
                    // Original LLaVA: every chunk is tokenized with BOS and the
                    // BOS of all but the first is dropped.
                    if i > 0 && self.bos_id.is_some() && ids.first().copied() == self.bos_id {
                        ids.remove(0);
                    }
                    out.extend(ids);
                }
                Ok((out, pos))
            }
        }
    }

    /// The prompt of `question` under `template` (for generation).
    pub fn encode_prompt(
        &self,
        template: ChatTemplate,
        question: &str,
        n_image_tokens: usize,
    ) -> Result<EncodedSequence> {
        let text = template.prompt_text(question, n_image_tokens > 0);
        let (ids, pos) = self.encode_prompt_text(&text, n_image_tokens)?;
        Ok(EncodedSequence {
            response_mask: vec![false; ids.len()],
            prompt_len: ids.len(),
            input_ids: ids,
            image_positions: pos,
        })
    }

    /// Prompt plus response plus EOS, with the response mask (response tokens
    /// and EOS count; prompt and image tokens are masked out).
    pub fn encode_pair(
        &self,
        template: ChatTemplate,
        question: &str,
        answer: &str,
        n_image_tokens: usize,
    ) -> Result<EncodedSequence> {
        let mut s = self.encode_prompt(template, question, n_image_tokens)?;
        let mut r = self.encode(&template.response_text(answer), false)?;
        r.push(self.eos_id);
        s.response_mask.extend(std::iter::repeat_n(true, r.len()));
        s.input_ids.extend(r);
        Ok(s)
    }
}
