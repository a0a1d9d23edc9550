//! The k* rate on the phantom benchmark (issue 4): generate a phantom set,
//! align a small dual encoder on its training split, curate the abnormal test
//! studies with mask heatmaps and with uniform heatmaps, and print how often
//! k* names the lesion's finding or its location phrase.
//!
//! ```text
//! cargo run --release --example curate_keyword_rate -- [OUT_DIR] [TRAIN] [EPOCHS] [TEXTS]
//! ```
//! TEXTS is `report` (align on the findings reports, the default) or
//! `findings` (align on the finding sentence only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use hdpo::curate::{run, CurateConfig, PairKind};
use hdpo::data::pairs::read_pairs;
use hdpo::data::phantom::{self, PhantomConfig};
use hdpo::data::{DatasetFormat, LoadOptions, Sample, Split};
use hdpo::encode::align::{align, AlignConfig, AlignPair, PairImage};
use hdpo::encode::DualEncoder;
use hdpo::heatmap::mask::MaskSource;
use hdpo::heatmap::uniform::UniformSource;
use hdpo::heatmap::HeatmapSource;

fn reports(dir: &Path, split: Split) -> Result<Vec<Sample>> {
    Ok(hdpo::data::load(
        DatasetFormat::PhantomReport,
        dir,
        &LoadOptions {
            split: Some(split),
            ..LoadOptions::default()
        },
    )?
    .samples)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/curate_keyword_rate".into()),
    );
    let train: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(400);
    let epochs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let texts = args.next().unwrap_or_else(|| "report".into());
    let t0 = std::time::Instant::now();
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = PhantomConfig {
        seed: 5,
        train,
        val: 0,
        test: 100,
        size: 64,
        ..PhantomConfig::default()
    };
    phantom::generate(&cfg, &dir)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("phantom.json"))?)?;
    let mut truth: HashMap<String, Vec<String>> = HashMap::new();
    let mut finding_sentence: HashMap<String, String> = HashMap::new();
    for s in manifest["studies"].as_array().into_iter().flatten() {
        let id = s["id"].as_str().unwrap_or_default().to_string();
        let report = s["report"].as_str().unwrap_or_default();
        let kws: Vec<String> = s["keywords"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_ascii_lowercase))
            .collect();
        let sentence = hdpo::curate::chunk::sentences(report)
            .into_iter()
            .map(|(a, b)| &report[a..b])
            .find(|x| {
                kws.first()
                    .is_some_and(|k| x.to_ascii_lowercase().contains(k))
            })
            .unwrap_or("No acute cardiopulmonary abnormality")
            .to_string();
        finding_sentence.insert(id.clone(), sentence);
        if s["finding"].is_null() {
            continue;
        }
        let mut names = kws;
        if let Some(l) = s["location"].as_str() {
            names.push(l.to_ascii_lowercase());
        }
        truth.insert(id, names);
    }
    let pairs: Vec<AlignPair> = reports(&dir, Split::Train)?
        .into_iter()
        .map(|s| AlignPair {
            image: PairImage::Path(s.images[0].clone()),
            text: if texts == "findings" {
                finding_sentence[&s.id].clone()
            } else {
                s.answer.clone()
            },
        })
        .collect();
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
        epochs,
        batch_size: 32,
        learning_rate: 2e-3,
        seed: 1,
        ..AlignConfig::default()
    };
    let report = align(pairs, &acfg, &dir.join("encoder"))?;
    eprintln!(
        "phantom + align ({texts}) in {:.1} s, loss {:.3} -> {:.3}",
        t0.elapsed().as_secs_f64(),
        report.epoch_loss.first().copied().unwrap_or(f64::NAN),
        report.epoch_loss.last().copied().unwrap_or(f64::NAN)
    );
    let enc = DualEncoder::load(&dir.join("encoder"), &hdpo::encode::LoadOptions::default())?;
    let test = reports(&dir, Split::Test)?;
    let sources: [&dyn HeatmapSource; 2] = [&MaskSource { sigma: None }, &UniformSource::default()];
    for src in sources {
        let out = dir.join(format!("{}.jsonl", src.name()));
        let cc = CurateConfig {
            kinds: vec![PairKind::FnNeutral],
            data_root: Some(dir.clone()),
            ..CurateConfig::default()
        };
        run(&cc, &test, &enc, src, &out)?;
        let (mut hit, mut n) = (0usize, 0usize);
        let mut by_cat: HashMap<String, usize> = HashMap::new();
        let vocab = hdpo::curate::Vocabulary::default_vocab();
        for p in read_pairs(&out)? {
            let Some(names) = truth.get(p.source_id.as_deref().unwrap_or_default()) else {
                continue;
            };
            n += 1;
            let k = p.keyword.unwrap_or_default().to_ascii_lowercase();
            hit += usize::from(names.contains(&k));
            let cat = vocab
                .lookup(&k)
                .map(|t| vocab.terms[t].category.clone())
                .unwrap_or_else(|| "other".into());
            *by_cat.entry(cat).or_default() += 1;
        }
        println!(
            "heatmaps {:<8} k* names the finding or location for {hit}/{n} abnormal test studies ({:.3}); k* categories {by_cat:?}",
            src.name(),
            hit as f64 / n.max(1) as f64
        );
    }
    Ok(())
}
