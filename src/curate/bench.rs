//! Curation throughput on a ViT-B/16-sized tower with random weights (for
//! `hdpo bench` and BENCHMARKS.md): per sample, the image tower's patch
//! embeddings f_v(p_i), Eq. 2 patch weights from a heatmap, the weighted
//! embedding v (Eq. 3), the text embeddings of the answer's chunks and their
//! cosines (Eq. 4-5). Also [`keyword_rate`]: the k* rate on the phantom
//! benchmark with mask versus uniform heatmaps.

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

/// Settings of [`keyword_rate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeywordRateConfig {
    /// Where the phantom set, the encoder and the pair files are written (replaced).
    pub dir: std::path::PathBuf,
    /// Phantom training studies (the encoder is aligned on them).
    pub train: usize,
    /// Phantom test studies (their abnormal ones are scored).
    pub test: usize,
    /// Alignment epochs.
    pub epochs: usize,
    /// Align on whole reports (`report`) or on the finding sentence (`findings`).
    pub texts: String,
    /// Add the local (region-phrase) alignment on the training masks.
    pub regions: bool,
    pub seed: u64,
}

impl Default for KeywordRateConfig {
    fn default() -> Self {
        KeywordRateConfig {
            dir: std::path::PathBuf::from("target/curate_keyword_rate"),
            train: 400,
            test: 100,
            epochs: 30,
            texts: "report".into(),
            regions: true,
            seed: 5,
        }
    }
}

/// What [`keyword_rate`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeywordRateReport {
    pub config: KeywordRateConfig,
    pub align_loss_first: f64,
    pub align_loss_last: f64,
    /// Held-out region top-1 of the alignment (when regions were used).
    pub align_regions: Option<crate::encode::align::RegionReport>,
    /// Which training pairs got a region.
    pub region_pairs: Option<crate::curate::regions::RegionSummary>,
    pub seconds: f64,
    /// `mask` and `uniform`.
    pub sources: Vec<crate::curate::audit::KeywordAudit>,
}

/// The k* rate on the phantom benchmark (issue 4): generate a phantom set,
/// align a small dual encoder on its training split (`hdpo align`'s
/// trainer), curate the test split with mask heatmaps and with uniform
/// heatmaps, and count the abnormal studies whose k* names the lesion's
/// finding or its location phrase (the phantom's ground truth keywords).
pub fn keyword_rate(cfg: &KeywordRateConfig) -> Result<KeywordRateReport> {
    use std::collections::HashMap;

    use crate::curate::audit::audit_keywords;

    use crate::curate::{run, CurateConfig, PairKind, Vocabulary};
    use crate::data::pairs::read_pairs;
    use crate::data::phantom::{self, PhantomConfig};
    use crate::data::{DatasetFormat, LoadOptions, Sample, Split};
    use crate::encode::align::align;
    use crate::encode::DualEncoder;
    use crate::heatmap::mask::MaskSource;
    use crate::heatmap::uniform::UniformSource;
    use crate::heatmap::HeatmapSource;

    let t0 = Instant::now();
    let dir = &cfg.dir;
    let reports = |split: Split| -> Result<Vec<Sample>> {
        Ok(crate::data::load(
            DatasetFormat::PhantomReport,
            dir,
            &LoadOptions {
                split: Some(split),
                ..LoadOptions::default()
            },
        )?
        .samples)
    };
    let _ = std::fs::remove_dir_all(dir);
    let pcfg = PhantomConfig {
        seed: cfg.seed,
        train: cfg.train,
        val: 0,
        test: cfg.test,
        size: 64,
        ..PhantomConfig::default()
    };
    phantom::generate(&pcfg, dir)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("phantom.json"))?)?;
    let truth = crate::curate::audit::phantom_keyword_truth(dir)?;
    // The finding sentence of each study (for `texts = "findings"`).
    let mut finding_sentence: HashMap<String, String> = HashMap::new();
    for s in manifest["studies"].as_array().into_iter().flatten() {
        let id = s["id"].as_str().unwrap_or_default().to_string();
        let report = s["report"].as_str().unwrap_or_default();
        let first_kw = s["keywords"][0].as_str().map(str::to_ascii_lowercase);
        let sentence = crate::curate::chunk::sentences(report)
            .into_iter()
            .map(|(a, b)| &report[a..b])
            .find(|x| {
                first_kw
                    .as_ref()
                    .is_some_and(|k| x.to_ascii_lowercase().contains(k))
            })
            .unwrap_or("No acute cardiopulmonary abnormality")
            .to_string();
        finding_sentence.insert(id, sentence);
    }
    let train = reports(Split::Train)?;
    let (mut pairs, regions) = if cfg.regions {
        let (p, r) = crate::curate::regions::pairs_with_regions(
            &train,
            &Vocabulary::default_vocab(),
            crate::curate::regions::RegionHeatmaps::Masks,
        );
        (p, Some(r))
    } else {
        (crate::encode::align::pairs_from_samples(&train), None)
    };
    if cfg.texts == "findings" {
        for (p, s) in pairs.iter_mut().zip(&train) {
            p.text = finding_sentence.get(&s.id).cloned().unwrap_or_default();
        }
    }
    let acfg = AlignConfig {
        image_size: 64,
        patch_size: 8,
        vision_hidden: 64,
        vision_layers: 2,
        vision_heads: 4,
        text_hidden: 64,
        text_layers: 1,
        text_heads: 4,
        max_text_len: 64,
        projection_dim: 32,
        epochs: cfg.epochs,
        batch_size: 32,
        learning_rate: 2e-3,
        seed: 1,
        ..AlignConfig::default()
    };
    let areport = align(pairs, &acfg, &dir.join("encoder"))?;
    let enc = DualEncoder::load(&dir.join("encoder"), &crate::encode::LoadOptions::default())?;
    let test = reports(Split::Test)?;
    let vocab = Vocabulary::default_vocab();
    let sources: [&dyn HeatmapSource; 2] = [&MaskSource { sigma: None }, &UniformSource::default()];
    let mut rates = Vec::new();
    for src in sources {
        let out = dir.join(format!("{}.jsonl", src.name()));
        let cc = CurateConfig {
            kinds: vec![PairKind::FnNeutral],
            data_root: Some(dir.clone()),
            ..CurateConfig::default()
        };
        run(&cc, &test, &enc, src, &out)?;
        let pairs = read_pairs(&out)?;
        rates.push(audit_keywords(
            &pairs,
            &truth,
            &vocab,
            src.name(),
            "phantom reports",
        ));
    }
    Ok(KeywordRateReport {
        config: cfg.clone(),
        align_loss_first: areport.epoch_loss.first().copied().unwrap_or(f64::NAN),
        align_loss_last: areport.epoch_loss.last().copied().unwrap_or(f64::NAN),
        align_regions: areport.regions.clone(),
        region_pairs: regions,
        seconds: t0.elapsed().as_secs_f64(),
        sources: rates,
    })
}

/// End-to-end curation throughput (the real [`crate::curate::run`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// Samples curated (phantom reports with a lesion; normal studies are skipped as empty masks).
    pub samples: usize,
    pub pairs: usize,
    pub seconds: f64,
    pub pairs_per_second: f64,
    pub samples_per_second: f64,
    pub threads: usize,
}

/// End-to-end throughput of [`crate::curate::run`] with all four kinds and
/// mask heatmaps on `studies` phantom report studies (64 px images, resized
/// to the tower's input), with the towers of `cfg` (random seeded weights):
/// chunks, k*, perturbations, Δ embeddings, w, the fp PNG and the records.
pub fn pipeline_throughput(cfg: &BenchConfig, studies: usize) -> Result<PipelineReport> {
    use crate::curate::{run, CurateConfig};
    use crate::data::phantom::{self, PhantomConfig};
    use crate::data::{DatasetFormat, LoadOptions};
    let dir = tempfile::tempdir()?;
    let pcfg = PhantomConfig {
        seed: 1,
        train: studies.max(1),
        val: 0,
        test: 0,
        size: 64,
        normal_share: 0.0,
        ..PhantomConfig::default()
    };
    phantom::generate(&pcfg, dir.path())?;
    let samples = crate::data::load(
        DatasetFormat::PhantomReport,
        dir.path(),
        &LoadOptions::default(),
    )?
    .samples;
    let texts: Vec<String> = samples.iter().map(|s| s.answer.clone()).collect();
    let tok = build_word_tokenizer(&texts, 1, &dir.path().join("vocab.txt"))?;
    let varmap = VarMap::new();
    let enc = init_dual_encoder(&cfg.towers, tok, &varmap, DType::F32, &Device::Cpu)?;
    let ccfg = CurateConfig {
        data_root: Some(dir.path().to_path_buf()),
        ..CurateConfig::default()
    };
    let out = dir.path().join("out").join("pairs.jsonl");
    let start = Instant::now();
    let summary = run(
        &ccfg,
        &samples,
        &enc,
        &crate::heatmap::mask::MaskSource { sigma: None },
        &out,
    )?;
    let secs = start.elapsed().as_secs_f64();
    let n = summary.samples - summary.skipped_samples.len();
    Ok(PipelineReport {
        samples: n,
        pairs: summary.pairs_written(),
        seconds: secs,
        pairs_per_second: summary.pairs_written() as f64 / secs,
        samples_per_second: n as f64 / secs,
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_throughput_runs_the_real_curation() {
        let cfg = BenchConfig {
            towers: AlignConfig {
                image_size: 32,
                patch_size: 8,
                vision_hidden: 16,
                vision_layers: 1,
                vision_heads: 2,
                text_hidden: 16,
                text_layers: 1,
                text_heads: 2,
                projection_dim: 8,
                ..AlignConfig::default()
            },
            samples: 1,
            chunks: 2,
        };
        let r = pipeline_throughput(&cfg, 3).unwrap();
        assert_eq!(r.samples, 3);
        // fp and mis always apply to a report with a finding; fn_* usually do.
        assert!(r.pairs >= 6 && r.pairs <= 12, "{r:?}");
        assert!(r.pairs_per_second > 0.0);
    }
}
