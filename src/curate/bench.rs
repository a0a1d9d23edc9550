//! Curation throughput on a ViT-B/16-sized tower with random weights (for
//! `hdpo bench` and BENCHMARKS.md): per sample, the image tower's patch
//! embeddings f_v(p_i), Eq. 2 patch weights from a heatmap, the weighted
//! embedding v (Eq. 3), the text embeddings of the answer's chunks and their
//! cosines (Eq. 4-5).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::encode::align::{init_dual_encoder, AlignConfig};
use crate::encode::tokenizer::build_word_tokenizer;
use crate::encode::TextPooling;
use crate::heatmap::pool::{patch_weights, weighted_embedding};
use crate::heatmap::Heatmap;

/// What to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Tower sizes (default: ViT-B/16 at 224 px and a BERT-base text tower).
    pub towers: AlignConfig,
    /// Samples to time (after one warm-up sample).
    pub samples: usize,
    /// Candidate chunks per answer.
    pub chunks: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            towers: AlignConfig {
                image_size: 224,
                patch_size: 16,
                vision_hidden: 768,
                vision_layers: 12,
                vision_heads: 12,
                text_hidden: 768,
                text_layers: 12,
                text_heads: 12,
                max_text_len: 512,
                projection_dim: 512,
                text_pooling: TextPooling::Cls,
                ..AlignConfig::default()
            },
            samples: 8,
            chunks: 4,
        }
    }
}

/// Measured throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub samples: usize,
    pub chunks_per_sample: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub image_ms_per_sample: f64,
    pub text_ms_per_sample: f64,
    pub threads: usize,
}

/// Time the encoder part of curation on random weights.
pub fn curation_throughput(cfg: &BenchConfig) -> Result<BenchReport> {
    let dev = Device::Cpu;
    let chunk_texts: Vec<String> = [
        "small left pleural effusion",
        "no pneumothorax",
        "heart size is normal",
        "right lower lobe opacity",
        "the lungs are clear",
        "mild cardiomegaly",
    ]
    .iter()
    .cycle()
    .take(cfg.chunks.max(1))
    .map(|s| s.to_string())
    .collect();
    let dir = tempfile::tempdir()?;
    let tok = build_word_tokenizer(&chunk_texts, 1, &dir.path().join("vocab.txt"))?;
    let varmap = VarMap::new();
    let enc = init_dual_encoder(&cfg.towers, tok, &varmap, DType::F32, &dev)?;
    let s = enc.image_size();
    let heat = Heatmap::new(
        s,
        s,
        (0..s * s)
            .map(|i| {
                let (y, x) = ((i / s) as f32, (i % s) as f32);
                (-((y - s as f32 / 3.0).powi(2) + (x - s as f32 / 2.0).powi(2)) / 400.0).exp()
            })
            .collect(),
    )?;
    let refs: Vec<&str> = chunk_texts.iter().map(String::as_str).collect();
    let one = |seed: u64| -> Result<(f64, f64)> {
        let mut rng = crate::util::seed::rng_for(seed, "bench-image");
        let px: Vec<f32> = (0..3 * s * s)
            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
            .collect();
        let img = Tensor::from_vec(px, (1, 3, s, s), &dev)?;
        let t0 = Instant::now();
        let (patches, (gh, gw)) = enc.embed_patches(&img)?;
        let w = patch_weights(&heat, "bench", (s, s), (gh, gw))?;
        let v = weighted_embedding(&w, &patches.squeeze(0)?)?;
        let t1 = Instant::now();
        let t = enc.embed_texts(&refs)?;
        let cos = crate::encode::cosine(&t, &v.unsqueeze(0)?.broadcast_as(t.shape())?)?;
        let _ = cos.to_vec1::<f32>()?;
        let t2 = Instant::now();
        Ok(((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64()))
    };
    one(0)?;
    let start = Instant::now();
    let (mut ti, mut tt) = (0.0, 0.0);
    for k in 0..cfg.samples.max(1) {
        let (a, b) = one(k as u64 + 1)?;
        ti += a;
        tt += b;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = cfg.samples.max(1);
    Ok(BenchReport {
        samples: n,
        chunks_per_sample: chunk_texts.len(),
        seconds: secs,
        samples_per_second: n as f64 / secs,
        image_ms_per_sample: 1e3 * ti / n as f64,
        text_ms_per_sample: 1e3 * tt / n as f64,
        threads: rayon::current_num_threads(),
    })
}
