//! The whole LLaVA model: loading, batches, the training forward pass and
//! the response log-probabilities of the DPO / HDPO loss (paper Eq. 1, 13).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;

use super::checkpoint::{expected_tensors, Checkpoint};
use super::config::{FeatureSelect, LlavaConfig};
use super::decoder::{Attention, Decoder, DecoderLayer, Mlp};
use super::lora::{self, LoraConfig};
use super::nn::{Fwd, LoraLinear};
use super::template::EncodedSequence;
use super::vision::{ClipLayer, ClipVision, Projector};

/// Where and in which precision to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: f32 on the CPU, bf16 on a GPU.
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

impl LoadOptions {
    /// The dtype weights are loaded in: `dtype`, else f32 on the CPU and bf16 on a GPU.
    pub fn resolved_dtype(&self) -> DType {
        self.dtype.unwrap_or(if self.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        })
    }
}

/// Parse `cpu`, `cuda` or `cuda:N`. A CUDA device needs the `cuda` feature.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Device::new_cuda(0)
            .context("cannot open CUDA device 0 (was hdpo built with --features cuda?)"),
        _ => {
            if let Some(n) = s.strip_prefix("cuda:") {
                let n: usize = n
                    .parse()
                    .with_context(|| format!("device `{s}`: `{n}` is not a GPU index"))?;
                Device::new_cuda(n).with_context(|| {
                    format!("cannot open CUDA device {n} (was hdpo built with --features cuda?)")
                })
            } else {
                bail!("unknown device `{s}` (cpu, cuda, cuda:N)")
            }
        }
    }
}

/// Parse a dtype name (`f32`, `f64`, `bf16`, `f16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f64" | "float64" => DType::F64,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        _ => bail!("unknown dtype `{s}` (f32, f64, bf16, f16)"),
    })
}

/// A right-padded batch of sequences, each with zero or one image.
///
/// Chosen and rejected sequences of one pair may carry different images:
/// every sequence has its own entry in `pixel_values`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, L]` u32, padded with the pad id.
    pub input_ids: Tensor,
    /// `[B, L]` u8: 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// `[B, L]` f32: 1 where the token is a response token (incl. the final
    /// EOS) whose log-probability counts; 0 on prompt, image and padding.
    pub response_mask: Tensor,
    /// `[N_img, C, S, S]`: the images of the sequences that have one, in order.
    pub pixel_values: Option<Tensor>,
    /// Unpadded lengths.
    pub lengths: Vec<usize>,
    key_valid: Vec<Vec<bool>>,
    /// (sequence, image row in `pixel_values`, positions of its image tokens).
    image_slots: Vec<(usize, usize, Vec<usize>)>,
}

impl Batch {
    /// Build a batch from encoded sequences and one optional image per
    /// sequence (`[C, S, S]` pixel values; `images.len() == seqs.len()`).
    pub fn new(
        seqs: &[EncodedSequence],
        images: &[Option<Tensor>],
        pad_id: u32,
        device: &Device,
    ) -> Result<Batch> {
        if seqs.is_empty() {
            bail!("a batch needs at least one sequence");
        }
        if images.len() != seqs.len() {
            bail!(
                "batch has {} sequences but {} image entries",
                seqs.len(),
                images.len()
            );
        }
        let l = seqs.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        if l == 0 {
            bail!("a batch of empty sequences");
        }
        let b = seqs.len();
        let mut ids = vec![pad_id; b * l];
        let mut att = vec![0u8; b * l];
        let mut resp = vec![0f32; b * l];
        let mut key_valid = Vec::with_capacity(b);
        let mut pix = Vec::new();
        let mut image_slots = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let n = s.input_ids.len();
            if s.response_mask.len() != n {
                bail!(
                    "sequence {i}: response mask has {} entries for {n} tokens",
                    s.response_mask.len()
                );
            }
            ids[i * l..i * l + n].copy_from_slice(&s.input_ids);
            let mut kv = vec![false; l];
            for j in 0..n {
                att[i * l + j] = 1;
                kv[j] = true;
                if s.response_mask[j] {
                    resp[i * l + j] = 1.0;
                }
            }
            key_valid.push(kv);
            match (&images[i], s.image_positions.is_empty()) {
                (Some(img), false) => {
                    image_slots.push((i, pix.len(), s.image_positions.clone()));
                    pix.push(img.to_device(device)?.unsqueeze(0)?);
                }
                (None, true) => {}
                (Some(_), true) => {
                    bail!("sequence {i} has an image but no image token positions")
                }
                (None, false) => bail!(
                    "sequence {i} has {} image token positions but no image",
                    s.image_positions.len()
                ),
            }
            if s.image_positions.iter().any(|&p| p >= n) {
                bail!("sequence {i}: an image position lies beyond its {n} tokens");
            }
        }
        let pixel_values = if pix.is_empty() {
            None
        } else {
            Some(Tensor::cat(&pix, 0)?)
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, l), device)?,
            attention_mask: Tensor::from_vec(att, (b, l), device)?,
            response_mask: Tensor::from_vec(resp, (b, l), device)?,
            pixel_values,
            lengths: seqs.iter().map(|s| s.input_ids.len()).collect(),
            key_valid,
            image_slots,
        })
    }

    /// Total number of real (non-padding) tokens.
    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// The LLaVA model: CLIP tower, projector, decoder, and optional LoRA adapters.
pub struct LlavaModel {
    pub config: LlavaConfig,
    /// The checkpoint directory it was loaded from.
    pub dir: PathBuf,
    pub vision: ClipVision,
    pub projector: Projector,
    pub decoder: Decoder,
    pub device: Device,
    pub dtype: DType,
    lora: Option<(LoraConfig, VarMap)>,
}

/// Something tensors can be loaded from by canonical name.
pub trait TensorSource {
    fn tensor(&self, canonical: &str, dtype: DType, device: &Device) -> Result<Tensor>;
}

impl TensorSource for Checkpoint {
    fn tensor(&self, canonical: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.load(canonical, dtype, device)
    }
}

impl TensorSource for HashMap<String, Tensor> {
    fn tensor(&self, canonical: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .get(canonical)
            .with_context(|| format!("missing tensor `{canonical}`"))?;
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }
}

fn linear(
    ck: &dyn TensorSource,
    name: &str,
    bias: bool,
    dt: DType,
    dev: &Device,
) -> Result<LoraLinear> {
    let w = ck.tensor(&format!("{name}.weight"), dt, dev)?;
    let b = if bias {
        Some(ck.tensor(&format!("{name}.bias"), dt, dev)?)
    } else {
        None
    };
    Ok(LoraLinear::new(name.to_string(), w, b))
}

impl LlavaModel {
    /// Load a checkpoint directory (config.json + safetensors, any supported layout).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let mut cfg = LlavaConfig::from_dir(dir)?;
        let ck = Checkpoint::open(dir)?;
        if cfg.vision.is_none() {
            cfg.vision = Some(ck.infer_vision_config()?);
        }
        Self::from_checkpoint(&ck, cfg, opts)
    }

    /// Build the model from an opened checkpoint and its config.
    pub fn from_checkpoint(ck: &Checkpoint, cfg: LlavaConfig, opts: &LoadOptions) -> Result<Self> {
        ck.check(&expected_tensors(&cfg)?)?;
        Self::build(ck, cfg, ck.dir.clone(), opts)
    }

    /// A model with random weights (`N(0, 0.02)` matrices, unit norm weights,
    /// zero biases), for tests, benchmarks and `init-model`. With a seed the
    /// values come from `util::seed::rng_for(seed, "init/<name>")` on the host;
    /// without one they are drawn on the device (fast for 7B-sized benchmarks).
    pub fn random(cfg: LlavaConfig, seed: Option<u64>, opts: &LoadOptions) -> Result<Self> {
        let dev = opts.device.clone();
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for s in expected_tensors(&cfg)? {
            if !s.required {
                continue;
            }
            let n = &s.name;
            let is_norm_w = n.ends_with("norm.weight")
                || n.ends_with("layernorm.weight")
                || n.ends_with("layer_norm1.weight")
                || n.ends_with("layer_norm2.weight")
                || n.ends_with("pre_layrnorm.weight");
            let t = if is_norm_w {
                Tensor::ones(s.shape.as_slice(), DType::F32, &dev)?
            } else if n.ends_with(".bias") {
                Tensor::zeros(s.shape.as_slice(), DType::F32, &dev)?
            } else if let Some(seed) = seed {
                let mut rng = crate::util::seed::rng_for(seed, &format!("init/{n}"));
                let v: Vec<f32> = (0..s.numel())
                    .map(|_| {
                        // Box-Muller.
                        let u1: f64 = rng.random::<f64>().max(1e-300);
                        let u2: f64 = rng.random::<f64>();
                        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.02) as f32
                    })
                    .collect();
                Tensor::from_vec(v, s.shape.as_slice(), &dev)?
            } else {
                Tensor::randn(0f32, 0.02, s.shape.as_slice(), &dev)?
            };
            // In the model's dtype at once, so that a bf16 7B model on a GPU
            // never holds all its weights in f32 as well.
            map.insert(s.name.clone(), t.to_dtype(opts.resolved_dtype())?);
        }
        Self::build(&map, cfg, PathBuf::new(), opts)
    }

    /// Write `config.json` (transformers-5 layout) and `model.safetensors`
    /// (base weights, adapters not merged) into `dir`. Tokenizer files are not
    /// written here.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let mut cfg = self.config.clone();
        cfg.architecture = super::config::Architecture::HfLlava;
        if cfg.image_token_id.is_none() {
            bail!("the model has no image token id; set config.image_token_id before saving it in the HF layout");
        }
        cfg.stored_dtype = Some(
            match self.dtype {
                DType::F64 => "float64",
                DType::BF16 => "bfloat16",
                DType::F16 => "float16",
                _ => "float32",
            }
            .into(),
        );
        self.save_weights(dir)?;
        crate::util::fsio::write_json_atomic(&dir.join("config.json"), &cfg.to_hf_json()?)
    }

    /// Write the base weights (canonical = transformers 5 key names, adapters
    /// not merged) as `model.safetensors` into `dir`, atomically.
    pub fn save_weights(&self, dir: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        let mut put = |name: &str, t: &Tensor| -> Result<()> {
            map.insert(name.to_string(), t.to_device(&Device::Cpu)?.contiguous()?);
            Ok(())
        };
        for lin in self.linears() {
            put(&format!("{}.weight", lin.name), &lin.weight)?;
            if let Some(b) = &lin.bias {
                put(&format!("{}.bias", lin.name), b)?;
            }
        }
        let lm = "model.language_model";
        put(
            &format!("{lm}.embed_tokens.weight"),
            &self.decoder.embed_tokens,
        )?;
        put(&format!("{lm}.norm.weight"), &self.decoder.norm)?;
        for (i, l) in self.decoder.layers.iter().enumerate() {
            put(
                &format!("{lm}.layers.{i}.input_layernorm.weight"),
                &l.input_layernorm,
            )?;
            put(
                &format!("{lm}.layers.{i}.post_attention_layernorm.weight"),
                &l.post_attention_layernorm,
            )?;
        }
        let vt = "model.vision_tower.vision_model";
        let v = &self.vision;
        put(
            &format!("{vt}.embeddings.class_embedding"),
            &v.class_embedding,
        )?;
        put(
            &format!("{vt}.embeddings.patch_embedding.weight"),
            &v.patch_embedding,
        )?;
        put(
            &format!("{vt}.embeddings.position_embedding.weight"),
            &v.position_embedding,
        )?;
        put(&format!("{vt}.pre_layrnorm.weight"), &v.pre_layrnorm.0)?;
        put(&format!("{vt}.pre_layrnorm.bias"), &v.pre_layrnorm.1)?;
        for (i, l) in v.layers.iter().enumerate() {
            let p = format!("{vt}.encoder.layers.{i}");
            put(&format!("{p}.layer_norm1.weight"), &l.layer_norm1.0)?;
            put(&format!("{p}.layer_norm1.bias"), &l.layer_norm1.1)?;
            put(&format!("{p}.layer_norm2.weight"), &l.layer_norm2.0)?;
            put(&format!("{p}.layer_norm2.bias"), &l.layer_norm2.1)?;
        }
        if self.config.text.tie_word_embeddings {
            map.remove("lm_head.weight");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let bytes = safetensors::serialize(&map, None).context("cannot serialise the weights")?;
        crate::util::fsio::atomic_write(&dir.join("model.safetensors"), &bytes)
    }

    fn build(
        ck: &dyn TensorSource,
        cfg: LlavaConfig,
        dir: PathBuf,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let dev = opts.device.clone();
        let dt = opts.resolved_dtype();
        let t = cfg.text.clone();
        let lm = "model.language_model";
        let embed_tokens = ck.tensor(&format!("{lm}.embed_tokens.weight"), dt, &dev)?;
        let mut layers = Vec::with_capacity(t.num_hidden_layers);
        for l in 0..t.num_hidden_layers {
            let p = format!("{lm}.layers.{l}");
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(ck, &format!("{p}.self_attn.q_proj"), false, dt, &dev)?,
                    k_proj: linear(ck, &format!("{p}.self_attn.k_proj"), false, dt, &dev)?,
                    v_proj: linear(ck, &format!("{p}.self_attn.v_proj"), false, dt, &dev)?,
                    o_proj: linear(ck, &format!("{p}.self_attn.o_proj"), false, dt, &dev)?,
                    n_heads: t.num_attention_heads,
                    n_kv_heads: t.num_key_value_heads,
                    head_dim: t.head_dim,
                },
                mlp: Mlp {
                    gate_proj: linear(ck, &format!("{p}.mlp.gate_proj"), false, dt, &dev)?,
                    up_proj: linear(ck, &format!("{p}.mlp.up_proj"), false, dt, &dev)?,
                    down_proj: linear(ck, &format!("{p}.mlp.down_proj"), false, dt, &dev)?,
                },
                input_layernorm: ck.tensor(&format!("{p}.input_layernorm.weight"), dt, &dev)?,
                post_attention_layernorm: ck.tensor(
                    &format!("{p}.post_attention_layernorm.weight"),
                    dt,
                    &dev,
                )?,
            });
        }
        let norm = ck.tensor(&format!("{lm}.norm.weight"), dt, &dev)?;
        let lm_head = if t.tie_word_embeddings {
            LoraLinear::new("lm_head".into(), embed_tokens.clone(), None)
        } else {
            linear(ck, "lm_head", false, dt, &dev)?
        };
        let decoder = Decoder {
            cfg: t.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
        };
        let v = cfg.vision()?.clone();
        let vt = "model.vision_tower.vision_model";
        let ln = |n: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                ck.tensor(&format!("{n}.weight"), dt, &dev)?,
                ck.tensor(&format!("{n}.bias"), dt, &dev)?,
            ))
        };
        let mut vlayers = Vec::new();
        for l in 0..v.num_hidden_layers {
            let p = format!("{vt}.encoder.layers.{l}");
            vlayers.push(ClipLayer {
                q_proj: linear(ck, &format!("{p}.self_attn.q_proj"), true, dt, &dev)?,
                k_proj: linear(ck, &format!("{p}.self_attn.k_proj"), true, dt, &dev)?,
                v_proj: linear(ck, &format!("{p}.self_attn.v_proj"), true, dt, &dev)?,
                out_proj: linear(ck, &format!("{p}.self_attn.out_proj"), true, dt, &dev)?,
                layer_norm1: ln(&format!("{p}.layer_norm1"))?,
                layer_norm2: ln(&format!("{p}.layer_norm2"))?,
                fc1: linear(ck, &format!("{p}.mlp.fc1"), true, dt, &dev)?,
                fc2: linear(ck, &format!("{p}.mlp.fc2"), true, dt, &dev)?,
            });
        }
        let vision = ClipVision {
            class_embedding: ck.tensor(&format!("{vt}.embeddings.class_embedding"), dt, &dev)?,
            patch_embedding: ck.tensor(
                &format!("{vt}.embeddings.patch_embedding.weight"),
                dt,
                &dev,
            )?,
            position_embedding: ck.tensor(
                &format!("{vt}.embeddings.position_embedding.weight"),
                dt,
                &dev,
            )?,
            pre_layrnorm: ln(&format!("{vt}.pre_layrnorm"))?,
            layers: vlayers,
            cfg: v,
        };
        let pj = "model.multi_modal_projector";
        let projector = Projector {
            kind: cfg.projector,
            linear_1: linear(ck, &format!("{pj}.linear_1"), cfg.projector_bias, dt, &dev)?,
            linear_2: match cfg.projector {
                super::config::ProjectorKind::Mlp2xGelu => Some(linear(
                    ck,
                    &format!("{pj}.linear_2"),
                    cfg.projector_bias,
                    dt,
                    &dev,
                )?),
                super::config::ProjectorKind::Linear => None,
            },
        };
        Ok(LlavaModel {
            config: cfg,
            dir,
            vision,
            projector,
            decoder,
            device: dev,
            dtype: dt,
            lora: None,
        })
    }

    /// Image tokens one image occupies in the decoder sequence.
    pub fn image_token_count(&self) -> usize {
        let n = self.vision.cfg.num_patches();
        match self.config.feature_select {
            FeatureSelect::Default => n,
            FeatureSelect::Full => n + 1,
        }
    }

    /// The CLIP hidden states `[embeddings, layer 1, ..., layer N]`, each `[N_img, 1 + P, D]`.
    pub fn vision_hidden_states(&self, pixels: &Tensor, fwd: &Fwd) -> Result<Vec<Tensor>> {
        let px = pixels.to_dtype(self.dtype)?;
        Ok(self
            .vision
            .hidden_states(&px, self.vision.layers.len(), fwd)?)
    }

    /// The selected vision features (`vision_feature_layer`, CLS dropped for
    /// the `default` strategy), `[N_img, T, D]`.
    pub fn vision_features(&self, pixels: &Tensor, fwd: &Fwd) -> Result<Tensor> {
        let idx = self.config.feature_layer_index()?;
        let px = pixels.to_dtype(self.dtype)?;
        let hs = self.vision.hidden_states(&px, idx, fwd)?;
        let h = hs.get(idx).context("vision feature layer out of range")?;
        Ok(match self.config.feature_select {
            FeatureSelect::Default => {
                let t = h.dim(1)?;
                h.narrow(1, 1, t - 1)?
            }
            FeatureSelect::Full => h.clone(),
        })
    }

    /// Projected image features `[N_img, T, H_text]`.
    pub fn image_features(&self, pixels: &Tensor, fwd: &Fwd) -> Result<Tensor> {
        let f = self.vision_features(pixels, fwd)?;
        Ok(self.projector.forward(&f, fwd)?)
    }

    /// Decoder input embeddings `[B, L, H]`: token embeddings with the image
    /// token rows replaced, in order, by the image features (LLaVA's merge).
    pub fn input_embeds(&self, batch: &Batch, fwd: &Fwd) -> Result<Tensor> {
        let (b, l) = batch.input_ids.dims2()?;
        let h = self.config.text.hidden_size;
        let emb = self.decoder.embed(&batch.input_ids)?;
        let Some(px) = &batch.pixel_values else {
            return Ok(emb);
        };
        let feats = self.image_features(px, fwd)?;
        let (n_img, t, _) = feats.dims3()?;
        let mut index: Vec<u32> = (0..(b * l) as u32).collect();
        for (seq, img, positions) in &batch.image_slots {
            if positions.len() != t {
                bail!(
                    "sequence {seq} has {} image token positions but an image gives {t} features",
                    positions.len()
                );
            }
            if *img >= n_img {
                bail!("sequence {seq}: image {img} is not in the batch");
            }
            for (j, &p) in positions.iter().enumerate() {
                index[seq * l + p] = (b * l + img * t + j) as u32;
            }
        }
        let all = Tensor::cat(
            &[
                &emb.reshape((b * l, h))?,
                &feats.reshape((n_img * t, h))?.to_dtype(emb.dtype())?,
            ],
            0,
        )?;
        let idx = Tensor::from_vec(index, b * l, &self.device)?;
        Ok(all.index_select(&idx, 0)?.reshape((b, l, h))?)
    }

    /// Final-norm decoder hidden states `[B, L, H]`.
    pub fn hidden_states(&self, batch: &Batch, fwd: &Fwd) -> Result<Tensor> {
        let x = self.input_embeds(batch, fwd)?;
        let all_valid = batch.lengths.iter().all(|&n| n == x.dim(1).unwrap_or(0));
        let kv = if all_valid {
            None
        } else {
            Some(batch.key_valid.as_slice())
        };
        Ok(self.decoder.forward_hidden(&x, kv, fwd)?)
    }

    /// Logits `[B, L, V]` at every position; `adapters` switches LoRA on
    /// (policy) or off (reference policy), without dropout.
    pub fn forward(&self, batch: &Batch, adapters: bool) -> Result<Tensor> {
        self.forward_with(
            batch,
            &Fwd {
                adapters,
                dropout_seed: None,
            },
        )
    }

    /// Logits with explicit forward options (LoRA dropout seed for training).
    pub fn forward_with(&self, batch: &Batch, fwd: &Fwd) -> Result<Tensor> {
        let h = self.hidden_states(batch, fwd)?;
        Ok(self.decoder.logits(&h, fwd)?)
    }

    fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut v = self.vision.linears_mut();
        v.extend(self.projector.linears_mut());
        v.extend(self.decoder.linears_mut());
        v
    }

    /// Every linear layer, with its PEFT module name.
    pub fn linears(&self) -> Vec<&LoraLinear> {
        let mut v = self.vision.linears();
        v.extend(self.projector.linears());
        v.extend(self.decoder.linears());
        v
    }

    /// The dtype LoRA tensors are kept in: f32 under half-precision models.
    pub fn lora_dtype(&self) -> DType {
        match self.dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        }
    }

    /// Attach fresh LoRA adapters (A kaiming-uniform from `seed`, B zero).
    /// Returns the number of adapted modules.
    pub fn add_lora(&mut self, cfg: LoraConfig, seed: u64) -> Result<usize> {
        if self.lora.is_some() {
            bail!("the model already has LoRA adapters");
        }
        let vm = VarMap::new();
        let (dt, dev) = (self.lora_dtype(), self.device.clone());
        let n = lora::attach(self.linears_mut(), &cfg, seed, &vm, dt, &dev)?;
        self.lora = Some((cfg, vm));
        Ok(n)
    }

    /// Load a PEFT adapter directory onto the model.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let (cfg, tensors) = lora::read_adapter(dir)?;
        self.add_lora(cfg, 0)?;
        lora::set_weights(self.linears_mut(), &tensors, &dir.display().to_string())
    }

    /// Save the adapters in PEFT's layout.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let (cfg, _) = self
            .lora
            .as_ref()
            .context("the model has no LoRA adapters")?;
        let mut cfg = cfg.clone();
        if cfg.base_model_name_or_path.is_none() {
            cfg.base_model_name_or_path = Some(self.dir.display().to_string());
        }
        lora::save(self.linears(), &cfg, dir)
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|(c, _)| c)
    }

    /// The LoRA var map (all A and B tensors), for the optimiser.
    pub fn lora_varmap(&self) -> Option<&VarMap> {
        self.lora.as_ref().map(|(_, v)| v)
    }

    /// `(name, var)` of every LoRA tensor, sorted by name. Names are
    /// `<module>.lora_A.weight` / `.lora_B.weight`; the PEFT file key is
    /// [`lora::peft_file_key`] of it, PEFT's in-memory name has `.default`
    /// before `.weight`.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for lin in self.linears() {
            if let Some(l) = &lin.lora {
                v.push((format!("{}.lora_A.weight", lin.name), l.a.clone()));
                v.push((format!("{}.lora_B.weight", lin.name), l.b.clone()));
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Per-token and summed response log-probabilities (paper Eq. 1 / 13:
/// `log pi(y|x) = sum_t log p(y_t | x, y_<t)` over response tokens incl. EOS).
///
/// `logits` `[B, L, V]`, `input_ids` `[B, L]`, `response_mask` `[B, L]` (1 on
/// the tokens that count). Returns `per_token` `[B, L]` (entry `t` is
/// `log_softmax(logits[t-1])[ids[t]]` where the mask is 1, else 0; entry 0 is
/// always 0) and `summed` `[B]`, both f32 (f64 for f64 logits). Uses
/// `log_softmax` + `gather`, so gradients flow to the logits.
pub fn sequence_logprobs(
    logits: &Tensor,
    input_ids: &Tensor,
    response_mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (b, l, _v) = logits.dims3()?;
    if l < 2 {
        bail!("sequences of length {l} have no next-token predictions");
    }
    let dt = match logits.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let v = logits.dim(2)?;
    let lg = logits
        .narrow(1, 0, l - 1)?
        .to_dtype(dt)?
        .contiguous()?
        .reshape((b * (l - 1), v))?;
    let targets = input_ids
        .narrow(1, 1, l - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?
        .reshape(b * (l - 1))?;
    let tok = super::ops::log_softmax_gather(&lg, &targets)?.reshape((b, l - 1))?;
    let zero = Tensor::zeros((b, 1), dt, logits.device())?;
    let tok = Tensor::cat(&[&zero, &tok], 1)?;
    let per_token = (tok * response_mask.to_dtype(dt)?)?;
    let summed = per_token.sum(1)?;
    Ok((per_token, summed))
}
