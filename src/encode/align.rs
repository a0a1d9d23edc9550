//! `hdpo align`: contrastive alignment of a small dual encoder (a ViT and a
//! BERT tower, each with a linear projection) on image-text pairs, so that
//! Eq. 5's cosine between image and text embeddings is meaningful
//! (`docs/design.md`, "One embedding space").
//!
//! Loss: symmetric InfoNCE (CLIP), `L = (CE(s·I·Tᵀ, diag) + CE(s·T·Iᵀ, diag)) / 2`
//! on L2-normalised embeddings, with `s = exp(logit_scale)` learnable (capped
//! at 100) or fixed. The image embedding is the mean of the projected patch
//! embeddings (Eq. 3 with a uniform heatmap), so training shapes exactly the
//! f_v(p_i) that curation weights. Recall@K is measured on held-out pairs;
//! a retrieved text counts as correct when it equals the query's own text
//! (case and surrounding space ignored), since many pairs share a text.
//!
//! Local alignment (optional, per pair): a pair may carry a [`RegionText`],
//! a heatmap of a region of its image (a lesion mask) with the phrases that
//! name what is inside it and phrases of the same text that do not. Its
//! region embedding is Eq. 2-3 with that heatmap, the exact v that curation
//! computes, and a multi-positive InfoNCE pulls it towards its positive
//! phrases and away from the batch's other phrases (GLoRIA-style
//! region-phrase alignment, here supervised by the mask). Without it, a
//! small encoder trained on whole reports leaves single phrases and patch
//! regions unaligned, and Eq. 6's argmax over chunks is close to chance.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use super::align_pairs::{
    pairs_from_samples, sourced_pairs_from_samples, AlignPair, PairImage, RegionText,
};
use super::bert::{BertConfig, BertTower};
pub use super::contrastive::{info_nce, LogitScale, Temperature};
use super::preprocess::{image_to_tensor, load_image_tensor, Normalize};
use super::region_align::{heldout_top1, region_nce, RegionBatch, RegionRow, RegionTable};
use super::tokenizer::{build_word_tokenizer, encode_batch};
use super::vit::{VisionConfig, VisionLayout, VisionTower};
use super::{
    l2_normalize, DualEncoder, HdpoEncoderConfig, ImagePooling, Linear, TextPooling, TextTower,
    HDPO_MODEL_TYPE,
};
use crate::util::seed::rng_for;

/// Sizes and training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub text_hidden: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub max_text_len: usize,
    pub projection_dim: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clipping (0 = off).
    pub max_grad_norm: f64,
    pub temperature: Temperature,
    /// Share of pairs held out for recall@K (at least one pair when there are 2 or more).
    pub holdout_fraction: f64,
    /// Words seen fewer times in the training texts map to `[UNK]`.
    pub min_word_count: usize,
    pub text_pooling: TextPooling,
    /// Initial scale of position embeddings and the CLS token. Larger than
    /// the usual 0.02 so that a small encoder trained on few pairs sees
    /// where a patch is from the start (with 0.02 the mean-pooled image
    /// embeddings of different images start nearly identical and InfoNCE
    /// collapses to log(batch)).
    pub position_init_std: f64,
    /// Learn only the projections on top of these frozen checkpoints
    /// (the tower sizes above are then ignored).
    #[serde(default)]
    pub pretrained: Option<PretrainedTowers>,
    /// Weight of the local (region-phrase) loss added to the global one, for
    /// pairs that carry a [`RegionText`] (0 = global loss only).
    #[serde(default = "default_region_weight")]
    pub region_weight: f64,
    pub seed: u64,
}

fn default_region_weight() -> f64 {
    1.0
}

/// Separate Hugging Face `ViTModel` and `BertModel` folders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainedTowers {
    pub vision: PathBuf,
    pub text: PathBuf,
}

impl Default for AlignConfig {
    fn default() -> Self {
        AlignConfig {
            image_size: 64,
            patch_size: 8,
            vision_hidden: 64,
            vision_layers: 2,
            vision_heads: 4,
            text_hidden: 64,
            text_layers: 2,
            text_heads: 4,
            max_text_len: 128,
            projection_dim: 64,
            epochs: 20,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            max_grad_norm: 1.0,
            temperature: Temperature::Learnable(0.07),
            holdout_fraction: 0.2,
            min_word_count: 1,
            text_pooling: TextPooling::Mean,
            position_init_std: 1.0,
            pretrained: None,
            region_weight: default_region_weight(),
            seed: 0,
        }
    }
}

/// Retrieval recall on held-out pairs, in `0..=1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    pub image_to_text_r1: f64,
    pub image_to_text_r5: f64,
    pub text_to_image_r1: f64,
    pub text_to_image_r5: f64,
    /// Expected image-to-text recall@1 of random ranking (share of held-out
    /// texts equal to the query's, averaged).
    pub chance_r1: f64,
}

/// What one alignment run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignReport {
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    pub vocab_size: usize,
    pub epochs: usize,
    pub steps: usize,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f64>,
    pub temperature: f64,
    pub recall: Recall,
    /// The local alignment, when pairs carried regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<RegionReport>,
    pub config: AlignConfig,
}

/// How well regions and phrases align: on held-out pairs with a region, the
/// share whose region embedding (Eq. 3) is closest to a positive phrase among
/// the pair's own phrases, which is Eq. 6's choice of k* with the region as
/// heatmap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    pub train_regions: usize,
    pub heldout_regions: usize,
    /// Held-out regions whose closest own phrase is a positive (`None`
    /// when no held-out pair has a region).
    pub heldout_top1: Option<f64>,
    /// The same share for a random choice among the pair's own phrases.
    pub chance_top1: Option<f64>,
}

impl RegionReport {
    /// One line for logs and summaries.
    pub fn describe(&self) -> String {
        match (self.heldout_top1, self.chance_top1) {
            (Some(t), Some(c)) => format!(
                "held-out region -> lesion phrase top-1 {t:.3} of {} (chance {c:.3}; {} training regions)",
                self.heldout_regions, self.train_regions
            ),
            _ => format!(
                "no held-out region ({} training regions)",
                self.train_regions
            ),
        }
    }
}

/// Build a randomly initialised hdpo dual encoder whose parameters live in
/// `varmap` (so an optimiser can train them), with `tokenizer` as its tokenizer.
pub fn init_dual_encoder(
    cfg: &AlignConfig,
    tokenizer: tokenizers::Tokenizer,
    varmap: &VarMap,
    dtype: DType,
    dev: &Device,
) -> Result<DualEncoder> {
    let vb = VarBuilder::from_varmap(varmap, dtype, dev);
    let (vcfg, tcfg) = tower_configs(cfg, tokenizer.get_vocab_size(true));
    let vision = VisionTower::load(&vb.pp("vision_model"), &vcfg, VisionLayout::Vit)?;
    let text = BertTower::load(&vb.pp("text_model"), &tcfg)?;
    let init = candle_nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    let proj = |name: &str, inp: usize| -> Result<Linear> {
        Ok(Linear {
            weight: vb.get_with_hints(
                (cfg.projection_dim, inp),
                &format!("{name}.weight"),
                init,
            )?,
            bias: None,
        })
    };
    let visual_projection = proj("visual_projection", vcfg.hidden_size)?;
    let text_projection = proj("text_projection", tcfg.hidden_size)?;
    seeded_init(varmap, cfg.seed, cfg.position_init_std)?;
    Ok(DualEncoder {
        vision,
        text: TextTower::Bert(text),
        visual_projection,
        text_projection,
        tokenizer,
        text_pooling: cfg.text_pooling,
        image_pooling: ImagePooling::MeanPatches,
        normalize: Normalize::HALF,
        logit_scale: None,
        device: dev.clone(),
        dtype,
    })
}

/// Re-draw every weight matrix and embedding of `varmap` from N(0, 0.02)
/// (position embeddings and the CLS token from N(0, `position_std`))
/// with a generator seeded by `seed` and the tensor's name (candle's CPU
/// initialisers cannot be seeded); biases, norms and `logit_scale` keep their
/// constant initial values.
pub fn seeded_init(varmap: &VarMap, seed: u64, position_std: f64) -> Result<()> {
    use rand::Rng;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        if name.ends_with(".bias") || name.to_lowercase().contains("norm") || name == "logit_scale"
        {
            continue;
        }
        let var = &data[name];
        let mut rng = rng_for(seed, &format!("init:{name}"));
        let std = if name.contains("position") || name.contains("cls_token") {
            position_std
        } else {
            0.02
        };
        let n = var.elem_count();
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                // Box-Muller.
                let u1: f64 = rng.random::<f64>().max(1e-12);
                let u2: f64 = rng.random::<f64>();
                (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let t = Tensor::from_vec(vals, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// The ViT and BERT configs of an [`AlignConfig`].
pub fn tower_configs(cfg: &AlignConfig, vocab_size: usize) -> (VisionConfig, BertConfig) {
    (
        VisionConfig {
            hidden_size: cfg.vision_hidden,
            num_hidden_layers: cfg.vision_layers,
            num_attention_heads: cfg.vision_heads,
            intermediate_size: 4 * cfg.vision_hidden,
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            num_channels: 3,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            qkv_bias: true,
        },
        BertConfig {
            vocab_size,
            hidden_size: cfg.text_hidden,
            num_hidden_layers: cfg.text_layers,
            num_attention_heads: cfg.text_heads,
            intermediate_size: 4 * cfg.text_hidden,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: cfg.max_text_len,
            type_vocab_size: 2,
            pad_token_id: 0,
        },
    )
}

/// The contrastive loss of one batch through the differentiable forward.
pub fn batch_loss(
    enc: &DualEncoder,
    images: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    scale: &LogitScale,
) -> Result<Tensor> {
    let out = enc.vision.forward(images, true, false)?;
    let img = enc.image_embedding_from_normed(&out.normed)?;
    let txt = enc.text_features(ids, mask, true)?;
    info_nce(&img, &txt, scale)
}

/// The phrases of a region table, tokenized for the text tower.
struct PhraseTokens {
    ids: Tensor,
    mask: Tensor,
}

/// [`batch_loss`] plus, when `local` is given, its weight × the local loss
/// of the batch's regions (an encoder with mean-patch pooling, as `hdpo
/// align` trains).
fn batch_loss_with_regions(
    enc: &DualEncoder,
    images: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    scale: &LogitScale,
    local: Option<(&RegionBatch, &PhraseTokens, f64)>,
) -> Result<Tensor> {
    let out = enc.vision.forward(images, true, false)?;
    let patches = enc.project_patches(&out.normed)?;
    let txt = enc.text_features(ids, mask, true)?;
    let global = info_nce(&patches.mean(1)?, &txt, scale)?;
    let Some((rb, phrases, weight)) = local else {
        return Ok(global);
    };
    let v = rb
        .weights
        .matmul(&patches.index_select(&rb.rows, 0)?)?
        .squeeze(1)?;
    let t = enc.text_features(
        &phrases.ids.index_select(&rb.phrases, 0)?,
        &phrases.mask.index_select(&rb.phrases, 0)?,
        true,
    )?;
    let local = region_nce(&v, &t, &rb.positive, scale)?;
    Ok((global + (local * weight)?)?)
}

fn pair_tensor(
    p: &PairImage,
    size: usize,
    norm: Normalize,
    i: usize,
    dev: &Device,
) -> Result<Tensor> {
    let t = match p {
        PairImage::Path(path) => {
            load_image_tensor(path, size, norm, dev).with_context(|| format!("pair {i}"))?
        }
        PairImage::Image(img) => image_to_tensor(img, size, norm, dev)?,
        PairImage::Tensor(t) => {
            let d = t.dims();
            if d != [3, size, size] {
                bail!("pair {i}: image tensor has shape {d:?}, expected [3, {size}, {size}]");
            }
            t.to_dtype(DType::F32)?.to_device(dev)?
        }
    };
    Ok(t)
}

fn norm_text(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Recall@1/@5 in both directions for embeddings `[M, D]` of `texts`.
pub fn retrieval_recall(img: &Tensor, txt: &Tensor, texts: &[String]) -> Result<Recall> {
    let sim: Vec<Vec<f32>> = l2_normalize(img)?
        .matmul(&l2_normalize(txt)?.t()?)?
        .to_dtype(DType::F32)?
        .to_vec2()?;
    let m = texts.len();
    if m == 0 || sim.len() != m {
        bail!(
            "recall needs one text per image ({} images, {m} texts)",
            sim.len()
        );
    }
    let keys: Vec<String> = texts.iter().map(|t| norm_text(t)).collect();
    let hits = |scores: &dyn Fn(usize) -> Vec<f32>, q: usize, k: usize| -> bool {
        let s = scores(q);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|a, b| s[*b].total_cmp(&s[*a]).then(a.cmp(b)));
        order.iter().take(k).any(|j| keys[*j] == keys[q])
    };
    let row = |q: usize| sim[q].clone();
    let col = |q: usize| sim.iter().map(|r| r[q]).collect::<Vec<f32>>();
    let rate = |f: &dyn Fn(usize) -> Vec<f32>, k: usize| -> f64 {
        (0..m).filter(|q| hits(f, *q, k)).count() as f64 / m as f64
    };
    let chance_r1 = (0..m)
        .map(|q| keys.iter().filter(|k| **k == keys[q]).count() as f64 / m as f64)
        .sum::<f64>()
        / m as f64;
    Ok(Recall {
        image_to_text_r1: rate(&row, 1),
        image_to_text_r5: rate(&row, 5),
        text_to_image_r1: rate(&col, 1),
        text_to_image_r5: rate(&col, 5),
        chance_r1,
    })
}

/// Train a dual encoder on `pairs` and write it to the folder `out`
/// (`config.json`, `model.safetensors`, `tokenizer.json`, `vocab.txt`,
/// `align_report.json`); it loads back with [`DualEncoder::load`].
pub fn align(pairs: Vec<AlignPair>, cfg: &AlignConfig, out: &Path) -> Result<AlignReport> {
    align_with_progress(pairs, cfg, out, &mut |_, _| {})
}

/// [`align`] with a callback after each epoch `(epoch, mean loss)`.
pub fn align_with_progress(
    pairs: Vec<AlignPair>,
    cfg: &AlignConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<AlignReport> {
    if pairs.len() < 2 {
        bail!(
            "alignment needs at least 2 image-text pairs, got {}",
            pairs.len()
        );
    }
    if cfg.batch_size < 2 {
        bail!("batch_size must be at least 2 for a contrastive loss");
    }
    if cfg.text_pooling == TextPooling::Eos {
        bail!("text_pooling \"eos\" is for CLIP text towers; hdpo align trains a BERT tower");
    }
    if !(cfg.region_weight.is_finite() && cfg.region_weight >= 0.0) {
        bail!(
            "region_weight must be a finite number >= 0, got {}",
            cfg.region_weight
        );
    }
    for (i, p) in pairs.iter().enumerate() {
        if p.text.trim().is_empty() {
            bail!("pair {i}: empty text");
        }
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut rng_for(cfg.seed, "align-split"));
    let n_hold =
        ((pairs.len() as f64 * cfg.holdout_fraction).round() as usize).clamp(1, pairs.len() - 1);
    let (hold_idx, train_idx) = order.split_at(n_hold);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let split = Split {
        pairs: &pairs,
        train: train_idx,
        hold: hold_idx,
    };
    let report = match &cfg.pretrained {
        None => align_scratch(&split, cfg, out, progress)?,
        Some(towers) => align_projections(&split, towers, cfg, out, progress)?,
    };
    crate::util::fsio::write_json_atomic(&out.join("align_report.json"), &report)?;
    Ok(report)
}

struct Split<'a> {
    pairs: &'a [AlignPair],
    train: &'a [usize],
    hold: &'a [usize],
}

impl Split<'_> {
    fn texts(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|i| self.pairs[*i].text.clone()).collect()
    }

    fn images(&self, idx: &[usize], size: usize, norm: Normalize, dev: &Device) -> Result<Tensor> {
        let ts = idx
            .iter()
            .map(|i| pair_tensor(&self.pairs[*i].image, size, norm, *i, dev))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&ts, 0)?)
    }
}

/// The optimisation loop shared by both modes: seeded shuffles, AdamW with
/// warm-up + cosine schedule and gradient clipping. `loss_of` maps a batch
/// of training-row indices to its loss. Returns the mean loss per epoch and
/// the number of steps.
fn train_loop(
    cfg: &AlignConfig,
    n: usize,
    varmap: &VarMap,
    progress: &mut dyn FnMut(usize, f64),
    loss_of: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<(Vec<f64>, usize)> {
    let dev = Device::Cpu;
    let vars = varmap.all_vars();
    let mut opt = candle_nn::AdamW::new(
        vars.clone(),
        candle_nn::ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let per_epoch = n.div_ceil(cfg.batch_size);
    let total_steps = (per_epoch * cfg.epochs).max(1);
    let mut rng = rng_for(cfg.seed, "align-epochs");
    let mut epoch_loss = Vec::with_capacity(cfg.epochs);
    let mut steps = 0;
    for epoch in 0..cfg.epochs {
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut rng);
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in perm.chunks(cfg.batch_size) {
            if chunk.len() < 2 {
                continue;
            }
            let loss = loss_of(&Tensor::new(chunk, &dev)?)?;
            opt.set_learning_rate(lr_at(cfg, steps, total_steps));
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm)?;
            opt.step(&grads)?;
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            batches += 1;
            steps += 1;
        }
        let mean = if batches > 0 {
            total / batches as f64
        } else {
            f64::NAN
        };
        progress(epoch, mean);
        epoch_loss.push(mean);
    }
    Ok((epoch_loss, steps))
}

/// Train both towers and projections from scratch.
fn align_scratch(
    split: &Split,
    cfg: &AlignConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<AlignReport> {
    let dev = Device::Cpu;
    let train_texts = split.texts(split.train);
    let hold_texts = split.texts(split.hold);
    let tokenizer = build_word_tokenizer(&train_texts, cfg.min_word_count, &out.join("vocab.txt"))?;
    let vocab_size = tokenizer.get_vocab_size(true);
    let train_images = split.images(split.train, cfg.image_size, Normalize::HALF, &dev)?;
    let hold_images = split.images(split.hold, cfg.image_size, Normalize::HALF, &dev)?;

    let varmap = VarMap::new();
    let enc = init_dual_encoder(cfg, tokenizer, &varmap, DType::F32, &dev)?;
    let scale = LogitScale::new(cfg.temperature, &varmap, DType::F32, &dev)?;
    let train_refs: Vec<&str> = train_texts.iter().map(String::as_str).collect();
    let (train_ids, train_mask) =
        encode_batch(&enc.tokenizer, &train_refs, 0, cfg.max_text_len, &dev)?;
    let regions = RegionTable::build(
        split.pairs,
        split.train,
        split.hold,
        cfg.image_size,
        enc.grid(),
    )?;
    // Every region has a positive phrase, so there are phrases iff there are regions.
    let phrase_refs: Vec<&str> = regions.phrases.iter().map(String::as_str).collect();
    let phrases = if phrase_refs.is_empty() {
        None
    } else {
        let (ids, mask) = encode_batch(&enc.tokenizer, &phrase_refs, 0, cfg.max_text_len, &dev)?;
        Some(PhraseTokens { ids, mask })
    };
    let (epoch_loss, steps) = train_loop(cfg, split.train.len(), &varmap, progress, &mut |sel| {
        let rb = regions.batch(&sel.to_vec1::<u32>()?, &dev)?;
        let local = match (&rb, &phrases) {
            (Some(rb), Some(p)) if cfg.region_weight > 0.0 => Some((rb, p, cfg.region_weight)),
            _ => None,
        };
        batch_loss_with_regions(
            &enc,
            &train_images.index_select(sel, 0)?,
            &train_ids.index_select(sel, 0)?,
            &train_mask.index_select(sel, 0)?,
            &scale,
            local,
        )
    })?;
    let hold_refs: Vec<&str> = hold_texts.iter().map(String::as_str).collect();
    let recall = retrieval_recall(
        &enc.embed_images(&hold_images)?,
        &enc.embed_texts(&hold_refs)?,
        &hold_texts,
    )?;
    let region_report = if regions.is_empty() {
        None
    } else {
        let (patches, _) = enc.embed_patches(&hold_images)?;
        let phrase_emb = phrases
            .as_ref()
            .map(|p| enc.text_features(&p.ids, &p.mask, false))
            .transpose()?;
        Some(region_summary(
            &regions,
            regions.heldout_regions(&patches)?,
            phrase_emb.as_ref(),
        )?)
    };
    save_encoder(&enc, &varmap, cfg, out)?;
    Ok(AlignReport {
        train_pairs: split.train.len(),
        heldout_pairs: split.hold.len(),
        vocab_size,
        epochs: cfg.epochs,
        steps,
        epoch_loss,
        temperature: 1.0 / scale.value()?,
        recall,
        regions: region_report,
        config: cfg.clone(),
    })
}

/// The [`RegionReport`] from the held-out region embeddings (if any held-out
/// pair has a region) and the embeddings of all phrases.
fn region_summary(
    regions: &RegionTable,
    heldout: Option<(Tensor, Vec<&RegionRow>)>,
    phrase_emb: Option<&Tensor>,
) -> Result<RegionReport> {
    let train_regions = regions.train.iter().flatten().count();
    let (heldout_top1, chance_top1, heldout_regions) = match (heldout, phrase_emb) {
        (Some((v, rows)), Some(p)) => {
            let (top1, chance) = heldout_top1(&v, &rows, p)?;
            (Some(top1), Some(chance), rows.len())
        }
        _ => (None, None, 0),
    };
    Ok(RegionReport {
        train_regions,
        heldout_regions,
        heldout_top1,
        chance_top1,
    })
}

/// Frozen features of pretrained towers, in batches of 32.
struct Frozen {
    /// Mean of the final-normed patch tokens `[N, Hv]`.
    images: Tensor,
    /// Pooled texts `[N, Ht]`.
    texts: Tensor,
    /// Σ_i H̃(p_i) · normed patch token i `[N, Hv]` for rows with a region
    /// (zeros elsewhere): projected, it is Eq. 3's v, as the projection is linear.
    regions: Tensor,
}

fn frozen_features(
    vision: &VisionTower,
    text: &BertTower,
    tok: &tokenizers::Tokenizer,
    pooling: TextPooling,
    images: &Tensor,
    texts: &[String],
    regions: &[Option<RegionRow>],
) -> Result<Frozen> {
    let n = texts.len();
    let mut fi = Vec::new();
    let mut fr = Vec::new();
    for start in (0..n).step_by(32) {
        let len = 32.min(n - start);
        let out = vision.forward(&images.narrow(0, start, len)?, false, false)?;
        fi.push(VisionTower::mean_patches(&out.normed)?);
        let patches = out.normed.narrow(1, 1, out.normed.dim(1)? - 1)?;
        let np = patches.dim(1)?;
        let w: Vec<f32> = (start..start + len)
            .flat_map(|i| match regions.get(i) {
                Some(Some(r)) => r.weights.clone(),
                _ => vec![0.0; np],
            })
            .collect();
        let w = Tensor::from_vec(w, (len, 1, np), images.device())?;
        fr.push(w.matmul(&patches)?.squeeze(1)?);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(Frozen {
        images: Tensor::cat(&fi, 0)?,
        texts: frozen_text(text, tok, pooling, &refs, images.device())?,
        regions: Tensor::cat(&fr, 0)?,
    })
}

/// Pooled frozen text features `[T, Ht]`, in batches of 32.
fn frozen_text(
    text: &BertTower,
    tok: &tokenizers::Tokenizer,
    pooling: TextPooling,
    texts: &[&str],
    dev: &Device,
) -> Result<Tensor> {
    let mut ft = Vec::new();
    for refs in texts.chunks(32) {
        let (ids, mask) = encode_batch(
            tok,
            refs,
            text.config.pad_token_id,
            text.config.max_position_embeddings,
            dev,
        )?;
        let last = text.forward(&ids, &mask, false)?.last_hidden_state;
        ft.push(match pooling {
            TextPooling::Cls => super::bert::cls_token(&last)?,
            TextPooling::Pooler => text.pool(&last)?,
            TextPooling::Mean => super::bert::masked_mean(&last, &mask)?,
            TextPooling::Eos => bail!("eos pooling needs a CLIP text tower"),
        });
    }
    Ok(Tensor::cat(&ft, 0)?)
}

/// Learn only the projections (and temperature) on top of frozen `ViTModel`
/// and `BertModel` checkpoints; writes the projection file and a config
/// that names the checkpoints.
fn align_projections(
    split: &Split,
    towers: &PretrainedTowers,
    cfg: &AlignConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<AlignReport> {
    let dev = Device::Cpu;
    let opts = super::LoadOptions::default();
    let vision = super::load_vit_dir(&towers.vision, &opts)?;
    let text = super::load_bert_dir(&towers.text, &opts)?;
    let tok = super::tokenizer::load_tokenizer(&towers.text)?;
    let norm = Normalize::from_preprocessor_config(&towers.vision, Normalize::HALF)?;
    let size = vision.config.image_size;
    let train_texts = split.texts(split.train);
    let hold_texts = split.texts(split.hold);
    let grid = size / vision.config.patch_size;
    let regions = RegionTable::build(split.pairs, split.train, split.hold, size, grid)?;
    let train = frozen_features(
        &vision,
        &text,
        &tok,
        cfg.text_pooling,
        &split.images(split.train, size, norm, &dev)?,
        &train_texts,
        &regions.train,
    )?;
    let hold = frozen_features(
        &vision,
        &text,
        &tok,
        cfg.text_pooling,
        &split.images(split.hold, size, norm, &dev)?,
        &hold_texts,
        &regions.hold,
    )?;
    let phrase_refs: Vec<&str> = regions.phrases.iter().map(String::as_str).collect();
    let phrases = if phrase_refs.is_empty() {
        None
    } else {
        Some(frozen_text(
            &text,
            &tok,
            cfg.text_pooling,
            &phrase_refs,
            &dev,
        )?)
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let init = candle_nn::Init::Const(0.0);
    let wv = vb.get_with_hints(
        (cfg.projection_dim, vision.config.hidden_size),
        "visual_projection.weight",
        init,
    )?;
    let wt = vb.get_with_hints(
        (cfg.projection_dim, text.config.hidden_size),
        "text_projection.weight",
        init,
    )?;
    seeded_init(&varmap, cfg.seed, cfg.position_init_std)?;
    let scale = LogitScale::new(cfg.temperature, &varmap, DType::F32, &dev)?;
    let (epoch_loss, steps) = train_loop(cfg, split.train.len(), &varmap, progress, &mut |sel| {
        let i = train.images.index_select(sel, 0)?.matmul(&wv.t()?)?;
        let t = train.texts.index_select(sel, 0)?.matmul(&wt.t()?)?;
        let global = info_nce(&i, &t, &scale)?;
        let rb = regions.batch(&sel.to_vec1::<u32>()?, &dev)?;
        match (rb, &phrases) {
            (Some(rb), Some(p)) if cfg.region_weight > 0.0 => {
                let rows = sel.index_select(&rb.rows, 0)?;
                let v = train.regions.index_select(&rows, 0)?.matmul(&wv.t()?)?;
                let t = p.index_select(&rb.phrases, 0)?.matmul(&wt.t()?)?;
                let local = region_nce(&v, &t, &rb.positive, &scale)?;
                Ok((global + (local * cfg.region_weight)?)?)
            }
            _ => Ok(global),
        }
    })?;
    let recall = retrieval_recall(
        &hold.images.matmul(&wv.t()?)?,
        &hold.texts.matmul(&wt.t()?)?,
        &hold_texts,
    )?;
    let region_report = if regions.is_empty() {
        None
    } else {
        let (idx, rows) = regions.heldout_rows();
        let heldout = if rows.is_empty() {
            None
        } else {
            let v = hold
                .regions
                .index_select(&Tensor::new(idx, &dev)?, 0)?
                .matmul(&wv.t()?)?;
            Some((v, rows))
        };
        let p = phrases.as_ref().map(|p| p.matmul(&wt.t()?)).transpose()?;
        Some(region_summary(&regions, heldout, p.as_ref())?)
    };
    let abs = |p: &Path| -> Result<String> {
        let c = p
            .canonicalize()
            .with_context(|| format!("resolving {}", p.display()))?;
        c.to_str()
            .map(str::to_string)
            .with_context(|| format!("path {} is not UTF-8", c.display()))
    };
    let config = HdpoEncoderConfig {
        model_type: HDPO_MODEL_TYPE.into(),
        projection_dim: cfg.projection_dim,
        image_pooling: ImagePooling::MeanPatches,
        text_pooling: cfg.text_pooling,
        image_mean: norm.mean,
        image_std: norm.std,
        vision_config: None,
        text_config: None,
        vision_checkpoint: Some(abs(&towers.vision)?),
        text_checkpoint: Some(abs(&towers.text)?),
    };
    save_weights(&varmap, out)?;
    crate::util::fsio::write_json_atomic(&out.join("config.json"), &config)?;
    Ok(AlignReport {
        train_pairs: split.train.len(),
        heldout_pairs: split.hold.len(),
        vocab_size: tok.get_vocab_size(true),
        epochs: cfg.epochs,
        steps,
        epoch_loss,
        temperature: 1.0 / scale.value()?,
        recall,
        regions: region_report,
        config: cfg.clone(),
    })
}

fn save_weights(varmap: &VarMap, out: &Path) -> Result<()> {
    let tmp = out.join(".model.safetensors.partial");
    varmap
        .save(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out.join("model.safetensors"))
        .with_context(|| format!("moving weights into place in {}", out.display()))?;
    Ok(())
}

/// Learning rate at `step`: linear warm-up over the first 10% of the steps,
/// then cosine decay to 0 (CLIP's schedule).
pub fn lr_at(cfg: &AlignConfig, step: usize, total: usize) -> f64 {
    let warm = (total / 10).max(1);
    if step < warm {
        cfg.learning_rate * (step + 1) as f64 / warm as f64
    } else {
        let p = (step - warm) as f64 / (total - warm).max(1) as f64;
        cfg.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
    }
}

/// Scale all gradients so that their global L2 norm is at most `max_norm`
/// (no-op when `max_norm <= 0`). Returns the norm before clipping.
pub fn clip_grad_norm(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max_norm: f64,
) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * k)?);
            }
        }
    }
    Ok(norm)
}

/// Write a trained hdpo dual encoder folder.
pub fn save_encoder(
    enc: &DualEncoder,
    varmap: &VarMap,
    cfg: &AlignConfig,
    out: &Path,
) -> Result<()> {
    let (vcfg, tcfg) = tower_configs(cfg, enc.tokenizer.get_vocab_size(true));
    let config = HdpoEncoderConfig {
        model_type: HDPO_MODEL_TYPE.into(),
        projection_dim: cfg.projection_dim,
        image_pooling: ImagePooling::MeanPatches,
        text_pooling: cfg.text_pooling,
        image_mean: Normalize::HALF.mean,
        image_std: Normalize::HALF.std,
        vision_config: Some(vcfg),
        text_config: Some(tcfg),
        vision_checkpoint: None,
        text_checkpoint: None,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    save_weights(varmap, out)?;
    let tok = enc
        .tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising tokenizer: {e}"))?;
    crate::util::fsio::atomic_write(&out.join("tokenizer.json"), tok.as_bytes())?;
    crate::util::fsio::write_json_atomic(&out.join("config.json"), &config)?;
    Ok(())
}
