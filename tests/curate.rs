//! Heatmap-guided curation on a generated phantom set (paper 3.1-3.2): the
//! k* rate with mask versus uniform heatmaps, the invariants of every pair
//! kind, Eq. 11 weights, bad inputs, shards, resume and determinism.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hdpo::curate::perturb::fn_delete::deletion_span;
use hdpo::curate::perturb::tidy;
use hdpo::curate::run::run;
use hdpo::curate::vocab::{flip_yes_no, swap_laterality};
use hdpo::curate::{CurateConfig, PairKind, SkipReason, Vocabulary};
use hdpo::data::pairs::{read_pairs, PairRecord};
use hdpo::data::phantom::{self, PhantomConfig};
use hdpo::data::{DatasetFormat, LoadOptions, Sample, Split};
use hdpo::encode::align::{align, AlignConfig, AlignPair, PairImage};
use hdpo::encode::DualEncoder;
use hdpo::heatmap::mask::MaskSource;
use hdpo::heatmap::region::salient_region;
use hdpo::heatmap::uniform::UniformSource;
use hdpo::heatmap::HeatmapSource;
use std::sync::Arc;

mod common;

// ---------------------------------------------------------------------------
// The heatmap matters (Eq. 3-6): k* follows the heatmap.
//
// On the phantom (issue 4): a phantom set, a small encoder aligned on its
// training split (reports + the local alignment of the lesion masks), and
// the test split curated with mask versus uniform heatmaps; k* must name the
// lesion's finding or location for at least 90% of the abnormal studies with
// masks, and clearly fewer with a uniform heatmap. The full-size measurement
// is `examples/curate_keyword_rate.rs` (BENCHMARKS.md).

#[test]
fn keyword_names_the_phantom_lesion_with_mask_heatmaps_not_uniform() {
    use hdpo::curate::bench::{keyword_rate, KeywordRateConfig};
    let cfg = KeywordRateConfig {
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keyword_rate"),
        train: 200,
        test: 100,
        epochs: 15,
        ..KeywordRateConfig::default()
    };
    let r = keyword_rate(&cfg).unwrap();
    for s in &r.sources {
        println!(
            "k* rate on the phantom, {} heatmaps: {}/{} = {:.3} ({:?})",
            s.heatmaps, s.hits, s.studies, s.rate, s.keyword_categories
        );
    }
    println!("alignment: {:?}", r.align_regions);
    let (mask, uniform) = (&r.sources[0], &r.sources[1]);
    assert_eq!(
        (mask.heatmaps.as_str(), uniform.heatmaps.as_str()),
        ("mask", "uniform")
    );
    assert!(mask.studies >= 60, "{mask:?}");
    assert_eq!(mask.studies, uniform.studies);
    assert!(mask.rate >= 0.9, "{mask:?}");
    assert!(uniform.rate <= mask.rate - 0.15, "{uniform:?} vs {mask:?}");
}

// The same on a synthetic task in seconds, with a global alignment only:
// images with one bright spot and the text naming its quadrant for training,
// then images with TWO spots whose answer names both quadrants: with the mask
// of one spot as heatmap, k* must name that spot's quadrant; with a uniform
// heatmap it cannot know which.

const QUADRANTS: [&str; 4] = ["upper left", "upper right", "lower left", "lower right"];

fn spot_image(
    spots: &[usize],
    rng: &mut impl rand::Rng,
) -> (image::GrayImage, Vec<image::GrayImage>) {
    let mut px = vec![0f32; 32 * 32];
    let mut masks = Vec::new();
    for &q in spots {
        let (cy, cx) = (
            8 + 16 * (q / 2) as i32 + rng.random_range(-3..=3),
            8 + 16 * (q % 2) as i32 + rng.random_range(-3..=3),
        );
        let mut m = image::GrayImage::new(32, 32);
        for y in 0..32i32 {
            for x in 0..32i32 {
                let r2 = ((y - cy).pow(2) + (x - cx).pow(2)) as f32;
                px[(y * 32 + x) as usize] += (-r2 / 24.0).exp();
                if r2 <= 25.0 {
                    m.put_pixel(x as u32, y as u32, image::Luma([255]));
                }
            }
        }
        masks.push(m);
    }
    let img = image::GrayImage::from_fn(32, 32, |x, y| {
        let v = px[(y * 32 + x) as usize].min(1.0) + rng.random_range(-0.05f32..0.05);
        image::Luma([(v.clamp(0.0, 1.0) * 255.0) as u8])
    });
    (img, masks)
}

#[test]
fn keyword_follows_the_heatmap_mask_versus_uniform() {
    use rand::Rng;
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = hdpo::util::seed::rng_for(4, "spots");
    let pairs: Vec<AlignPair> = (0..160)
        .map(|k| {
            let (img, _) = spot_image(&[k % 4], &mut rng);
            AlignPair::global(
                PairImage::Image(image::DynamicImage::ImageLuma8(img)),
                format!("bright spot in the {}", QUADRANTS[k % 4]),
            )
        })
        .collect();
    let acfg = common::small_align_config();
    let enc_dir = tmp.path().join("encoder");
    let report = align(pairs, &acfg, &enc_dir).unwrap();
    let enc = DualEncoder::load(&enc_dir, &hdpo::encode::LoadOptions::default()).unwrap();
    // Two-spot studies: the mask is one spot, chosen at random. No
    // vocabulary term occurs in the answers, so the chunks are its clauses
    // ("Bright spot in the upper left", ...).
    let vocab_file = tmp.path().join("vocab.tsv");
    std::fs::write(&vocab_file, "nodule\tfinding\n").unwrap();
    let vocab = Vocabulary::from_file(&vocab_file).unwrap();
    let mut samples = Vec::new();
    let mut truth = HashMap::new();
    for k in 0..100 {
        let a = rng.random_range(0..4usize);
        let b = (a + rng.random_range(1..4usize)) % 4;
        let (img, masks) = spot_image(&[a, b], &mut rng);
        let which = rng.random_range(0..2usize);
        let id = format!("s{k:03}");
        let ip = tmp.path().join(format!("{id}.png"));
        let mp = tmp.path().join(format!("{id}_mask.png"));
        img.save(&ip).unwrap();
        masks[which].save(&mp).unwrap();
        truth.insert(
            id.clone(),
            format!("Bright spot in the {}", QUADRANTS[[a, b][which]]),
        );
        samples.push(Sample {
            id,
            dataset: "spots".into(),
            split: Split::Train,
            images: vec![ip],
            question: None,
            answer: format!(
                "Bright spot in the {}. Bright spot in the {}.",
                QUADRANTS[a], QUADRANTS[b]
            ),
            answer_type: hdpo::data::AnswerType::Report,
            mask: Some(mp),
            meta: Default::default(),
        });
    }
    let cfg = CurateConfig {
        kinds: vec![PairKind::FnNeutral],
        vocab,
        data_root: Some(tmp.path().to_path_buf()),
        ..CurateConfig::default()
    };
    let mut rates = Vec::new();
    let sources: [&dyn HeatmapSource; 2] = [&MaskSource { sigma: None }, &UniformSource::default()];
    for src in sources {
        let out = tmp.path().join(format!("{}.jsonl", src.name()));
        run(&cfg, &samples, &enc, src, &out).unwrap();
        let pairs = read_pairs(&out).unwrap();
        assert_eq!(pairs.len(), samples.len());
        let hits = pairs
            .iter()
            .filter(|p| {
                p.keyword.as_deref() == Some(truth[p.source_id.as_deref().unwrap()].as_str())
            })
            .count();
        rates.push(hits as f64 / pairs.len() as f64);
    }
    println!(
        "k* names the heatmap's spot: mask {:.3}, uniform {:.3} (100 two-spot studies; align R@1 {:.2}, {:.1} s)",
        rates[0],
        rates[1],
        report.recall.image_to_text_r1,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        rates[0] >= 0.9,
        "mask heatmaps: k* rate {:.3} < 0.9",
        rates[0]
    );
    assert!(
        rates[0] - rates[1] >= 0.25,
        "uniform heatmaps should follow the spot clearly less often: mask {:.3}, uniform {:.3}",
        rates[0],
        rates[1]
    );
}

fn reports(dir: &Path, split: Option<Split>) -> Vec<Sample> {
    hdpo::data::load(
        DatasetFormat::PhantomReport,
        dir,
        &LoadOptions {
            split,
            ..LoadOptions::default()
        },
    )
    .expect("load reports")
    .samples
}

fn vqa(dir: &Path) -> Vec<Sample> {
    hdpo::data::load(
        DatasetFormat::Phantom,
        dir,
        &LoadOptions {
            split: Some(Split::Test),
            ..LoadOptions::default()
        },
    )
    .expect("load vqa")
    .samples
}

// ---------------------------------------------------------------------------
// Invariants, bad inputs, shards, resume, determinism: a small phantom set and
// a briefly aligned tiny encoder (k* need not be right for these).

struct Small {
    dir: PathBuf,
    encoder_dir: PathBuf,
    encoder: Arc<DualEncoder>,
}

fn small() -> &'static Small {
    static S: OnceLock<Small> = OnceLock::new();
    S.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("curate_small");
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = PhantomConfig {
            seed: 9,
            train: 16,
            val: 0,
            test: 20,
            size: 48,
            ..PhantomConfig::default()
        };
        phantom::generate(&cfg, &dir).expect("phantom");
        let pairs: Vec<AlignPair> = reports(&dir, None)
            .iter()
            .map(|s| AlignPair::global(PairImage::Path(s.images[0].clone()), s.answer.clone()))
            .collect();
        let acfg = AlignConfig {
            max_text_len: 64,
            epochs: 1,
            seed: 2,
            ..common::small_align_config()
        };
        let encoder_dir = dir.join("encoder");
        align(pairs, &acfg, &encoder_dir).expect("align");
        let encoder = Arc::new(
            DualEncoder::load(&encoder_dir, &hdpo::encode::LoadOptions::default()).unwrap(),
        );
        Small {
            dir,
            encoder_dir,
            encoder,
        }
    })
}

fn small_config(kinds: &[PairKind]) -> CurateConfig {
    CurateConfig {
        kinds: kinds.to_vec(),
        data_root: Some(small().dir.clone()),
        ..CurateConfig::default()
    }
}

/// Reports (test split) and the first VQA questions of the small set.
fn small_samples() -> Vec<Sample> {
    let s = small();
    let mut v = reports(&s.dir, Some(Split::Test));
    v.extend(vqa(&s.dir).into_iter().take(60));
    v
}

fn byte_span(text: &str, chars: (usize, usize)) -> (usize, usize) {
    let idx: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    (idx[chars.0], idx[chars.1])
}

fn keyword_span(p: &PairRecord) -> (usize, usize) {
    let a = p.extra["keyword_span"].as_array().unwrap();
    let span = (
        a[0].as_u64().unwrap() as usize,
        a[1].as_u64().unwrap() as usize,
    );
    let (s, e) = byte_span(&p.chosen, span);
    assert_eq!(&p.chosen[s..e], p.keyword.as_deref().unwrap(), "{}", p.id);
    (s, e)
}

/// Whether `new` is `old` with one vocabulary term replaced by a term of the
/// same category and another concept, or its side swapped, or yes/no flipped.
fn same_category_replacement(v: &Vocabulary, old: &str, new: &str) -> bool {
    if flip_yes_no(old).as_deref() == Some(new) {
        return true;
    }
    for m in v.find(old) {
        let (pre, suf) = (&old[..m.start], &old[m.end..]);
        if new.len() < pre.len() + suf.len() || !new.starts_with(pre) || !new.ends_with(suf) {
            continue;
        }
        let mid = &new[pre.len()..new.len() - suf.len()];
        let t = &v.terms[m.term];
        if t.category == "laterality"
            && swap_laterality(&old[m.start..m.end]).as_deref() == Some(mid)
        {
            return true;
        }
        if let Some(r) = v.lookup(mid) {
            let r = &v.terms[r];
            if r.category == t.category && r.concept != t.concept {
                return true;
            }
        }
    }
    false
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

#[test]
fn every_pair_respects_its_invariants() {
    let s = small();
    let tmp = tempfile::tempdir_in(&s.dir).unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let samples = small_samples();
    let cfg = small_config(&PairKind::ALL);
    let summary = run(
        &cfg,
        &samples,
        &s.encoder,
        &MaskSource { sigma: None },
        &out,
    )
    .unwrap();
    eprintln!("{summary}");
    let pairs = read_pairs(&out).unwrap();
    assert_eq!(pairs.len(), summary.pairs_written());
    let by_id: HashMap<&str, &Sample> = samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let vocab = Vocabulary::default_vocab();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in &pairs {
        *counts.entry(p.kind.clone()).or_default() += 1;
        let sample = by_id[p.source_id.as_deref().unwrap()];
        assert_eq!(p.chosen, sample.answer);
        assert_eq!(p.id, format!("{}:{}", sample.id, p.kind));
        assert_eq!(p.heatmap_source.as_deref(), Some("mask"));
        let (cimg, rimg) = p.resolve_images(&out).unwrap();
        assert!(cimg.is_file() && rimg.is_file(), "{}", p.id);
        let (ks, ke) = keyword_span(p);
        let kw = p.keyword.clone().unwrap();
        let sims = p.similarities.as_ref().unwrap();
        assert_eq!(sims.len(), p.extra["chunks"].as_array().unwrap().len());
        // k* is the chunk of largest similarity (Eq. 6).
        let best = sims.iter().cloned().fold(f64::MIN, f64::max);
        let k_index = p.extra["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c.as_str() == Some(&kw))
            .unwrap();
        assert!(
            sims[k_index] >= best - 1e-9,
            "{}: k* is not the argmax",
            p.id
        );
        let delta = p.delta.clone().unwrap();
        match p.kind.as_str() {
            "mis" => {
                let rep = p.replacement.clone().unwrap();
                assert_ne!(rep, kw);
                assert_eq!(
                    p.rejected,
                    format!("{}{rep}{}", &p.chosen[..ks], &p.chosen[ke..]),
                    "{}: mis changes more than k*'s span",
                    p.id
                );
                assert!(
                    same_category_replacement(&vocab, &kw, &rep),
                    "{}: {kw:?} -> {rep:?} is not a same-category replacement",
                    p.id
                );
                assert_eq!(delta, vec![kw.clone(), rep.clone()]);
                assert_eq!(p.chosen_image, p.rejected_image);
            }
            "fp" => {
                assert_eq!(p.rejected, p.chosen, "fp keeps the text");
                assert_ne!(p.chosen_image, p.rejected_image);
                assert_eq!(delta, vec![kw.clone()]);
                let (a, b) = (rgb(&cimg), rgb(&rimg));
                assert_eq!(a.dimensions(), b.dimensions());
                let heat = MaskSource { sigma: None }
                    .heatmap(&hdpo::heatmap::SampleView {
                        id: &sample.id,
                        mask_path: sample.mask.as_deref(),
                        ..Default::default()
                    })
                    .unwrap();
                let region = salient_region(
                    &heat,
                    &sample.id,
                    (a.height() as usize, a.width() as usize),
                    &Default::default(),
                )
                .unwrap();
                let mut changed_inside = 0;
                for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
                    if region.data[i] {
                        changed_inside += usize::from(pa != pb);
                        assert_eq!(pb.0, [0, 0, 0]);
                    } else {
                        assert_eq!(pa, pb, "{}: pixel {i} outside Ω* changed", p.id);
                    }
                }
                assert!(changed_inside > 0, "{}: nothing masked", p.id);
                let share = p.mask_share.unwrap();
                assert!((share - region.area_share()).abs() < 1e-5);
            }
            "fn_neutral" => {
                let rep = p.replacement.clone().unwrap();
                assert_eq!(rep.to_ascii_lowercase(), "no abnormalities");
                assert_eq!(
                    p.rejected,
                    format!("{}{rep}{}", &p.chosen[..ks], &p.chosen[ke..])
                );
                assert_eq!(delta, vec![kw.clone(), "no abnormalities".to_string()]);
            }
            "fn_delete" => {
                let (ds, de) = deletion_span(&p.chosen, ks, ke).unwrap();
                assert!(ds <= ks && ke <= de);
                let capital = p.chosen.starts_with(|c: char| c.is_uppercase());
                assert_eq!(
                    p.rejected,
                    tidy(&format!("{}{}", &p.chosen[..ds], &p.chosen[de..]), capital),
                    "{}: deletion changes more than k*'s chunk",
                    p.id
                );
                assert!(!p.rejected.contains("  "));
                assert!(p.rejected.len() < p.chosen.len());
                assert_eq!(delta, vec![kw.clone()]);
            }
            k => panic!("unexpected kind {k}"),
        }
        // Eq. 11 with λ = 1: w = 1 + max cos(v, f_t(k_j)).
        let cos: Vec<f64> = p.extra["delta_cosines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_f64().unwrap())
            .collect();
        assert_eq!(cos.len(), delta.len());
        let max = cos.iter().cloned().fold(f64::MIN, f64::max);
        assert!(
            (p.weight - (1.0 + max)).abs() < 1e-5,
            "{}: w {}",
            p.id,
            p.weight
        );
        if cos.iter().all(|c| *c >= 0.0) {
            assert!(p.weight >= 1.0);
        }
    }
    for k in ["mis", "fp", "fn_neutral", "fn_delete"] {
        assert!(
            counts.get(k).copied().unwrap_or(0) >= 10,
            "too few {k} pairs: {counts:?}"
        );
    }
    // Normal studies have empty masks: reported, not paired.
    assert!(
        summary
            .skipped_by_reason
            .get("all_zero_heatmap")
            .copied()
            .unwrap_or(0)
            > 0
    );
    // λ = 0 gives w = 1 for every pair.
    let out0 = tmp.path().join("lambda0.jsonl");
    let cfg0 = CurateConfig {
        lambda: 0.0,
        ..cfg.clone()
    };
    run(
        &cfg0,
        &samples,
        &s.encoder,
        &MaskSource { sigma: None },
        &out0,
    )
    .unwrap();
    let p0 = read_pairs(&out0).unwrap();
    assert_eq!(p0.len(), pairs.len());
    assert!(p0.iter().all(|p| p.weight == 1.0));
    let p2: Vec<f64> = {
        let out2 = tmp.path().join("lambda2.jsonl");
        let cfg2 = CurateConfig { lambda: 2.0, ..cfg };
        run(
            &cfg2,
            &samples,
            &s.encoder,
            &MaskSource { sigma: None },
            &out2,
        )
        .unwrap();
        read_pairs(&out2)
            .unwrap()
            .iter()
            .map(|p| p.weight)
            .collect()
    };
    for (a, b) in pairs.iter().zip(&p2) {
        assert!(((a.weight - 1.0) * 2.0 - (b - 1.0)).abs() < 1e-5);
    }
}

#[test]
fn bad_inputs_are_reported_and_counted() {
    let s = small();
    let tmp = tempfile::tempdir_in(&s.dir).unwrap();
    let heat_dir = tmp.path().join("heatmaps");
    std::fs::create_dir_all(&heat_dir).unwrap();
    let base = reports(&s.dir, Some(Split::Test))
        .into_iter()
        .find(|x| x.mask.is_some() && x.answer.len() > 20)
        .unwrap();
    let img = rgb(&base.images[0]);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mk = |id: &str, answer: &str| Sample {
        id: id.into(),
        answer: answer.into(),
        ..base.clone()
    };
    let write = |name: &str, hh: usize, ww: usize, v: f32| {
        let mut data = vec![0.0f32; hh * ww];
        if v > 0.0 {
            for y in hh / 4..hh / 2 {
                for x in ww / 4..ww / 2 {
                    data[y * ww + x] = v;
                }
            }
        }
        hdpo::heatmap::io::write_npy(
            &heat_dir.join(format!("{name}_x.npy")),
            &hdpo::heatmap::Heatmap::new(hh, ww, data).unwrap(),
        )
        .unwrap();
    };
    write("ok", h, w, 1.0);
    write("shape", h + 3, w, 1.0);
    write("zero", h, w, 0.0);
    write("empty", h, w, 1.0);
    write("nochunk", h, w, 1.0);
    write("noimage", h, w, 1.0);
    let mut noimage = mk("noimage", "A small nodule.");
    noimage.images = vec![tmp.path().join("missing.png")];
    let samples = vec![
        mk("ok", &base.answer),
        mk("missing", &base.answer),
        mk("shape", &base.answer),
        mk("zero", &base.answer),
        mk("empty", "   "),
        mk("nochunk", " ?! "),
        noimage,
    ];
    let src = hdpo::heatmap::file::FileSource {
        dir: heat_dir.clone(),
        class: None,
    };
    let out = tmp.path().join("pairs.jsonl");
    let summary = run(
        &small_config(&PairKind::ALL),
        &samples,
        &s.encoder,
        &src,
        &out,
    )
    .unwrap();
    eprintln!("{summary}");
    let reasons: Vec<(String, String)> = summary
        .skipped_samples
        .iter()
        .map(|k| (k.id.clone(), k.reason.to_string()))
        .collect();
    let expect: Vec<(String, String)> = [
        ("missing", "missing_heatmap"),
        ("shape", "shape_mismatch"),
        ("zero", "all_zero_heatmap"),
        ("empty", "empty_answer"),
        ("nochunk", "no_chunk"),
        ("noimage", "missing_image"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(reasons, expect);
    for k in &summary.skipped_samples {
        assert!(
            k.message.contains(&k.id)
                || k.reason.as_str().ends_with("answer")
                || k.reason == SkipReason::NoChunk
                || k.reason == SkipReason::MissingImage,
            "{k:?}"
        );
    }
    assert_eq!(summary.skipped_samples[0].index, 1);
    assert_eq!(summary.skipped_by_reason.values().sum::<usize>(), 6);
    let pairs = read_pairs(&out).unwrap();
    assert!(!pairs.is_empty());
    assert!(pairs.iter().all(|p| p.source_id.as_deref() == Some("ok")));
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn shards_resume_and_seeds_are_deterministic() {
    let s = small();
    let tmp = tempfile::tempdir_in(&s.dir).unwrap();
    let samples = small_samples();
    let src = MaskSource { sigma: None };
    let cfg = small_config(&PairKind::ALL);
    let single = tmp.path().join("single.jsonl");
    let full = run(&cfg, &samples, &s.encoder, &src, &single).unwrap();
    let a = read(&single);
    assert!(full.pairs_written() > 20);
    // Shards 0..3 concatenated equal the single run.
    let mut cat = Vec::new();
    for i in 0..3 {
        let o = tmp.path().join(format!("shard{i}.jsonl"));
        let c = CurateConfig {
            shard: Some((i, 3)),
            ..cfg.clone()
        };
        let sm = run(&c, &samples, &s.encoder, &src, &o).unwrap();
        assert_eq!(sm.shard, Some((i, 3)));
        cat.extend(read(&o));
    }
    assert_eq!(cat, a, "concatenated shards differ from the single run");
    // Same seed in another folder: identical records and images.
    let other = tempfile::tempdir_in(&s.dir).unwrap();
    let again = other.path().join("single.jsonl");
    run(&cfg, &samples, &s.encoder, &src, &again).unwrap();
    assert_eq!(read(&again), a);
    for p in read_pairs(&single)
        .unwrap()
        .iter()
        .filter(|p| p.kind == "fp")
    {
        assert_eq!(
            read(&tmp.path().join(&p.rejected_image)),
            read(&other.path().join(&p.rejected_image))
        );
    }
    // Another seed draws other misdiagnoses.
    let seeded = other.path().join("seed7.jsonl");
    let c7 = CurateConfig {
        seed: 7,
        kinds: vec![PairKind::Mis],
        ..cfg.clone()
    };
    run(&c7, &samples, &s.encoder, &src, &seeded).unwrap();
    let mis_a: Vec<String> = read_pairs(&single)
        .unwrap()
        .into_iter()
        .filter(|p| p.kind == "mis")
        .map(|p| p.rejected)
        .collect();
    let mis_7: Vec<String> = read_pairs(&seeded)
        .unwrap()
        .into_iter()
        .map(|p| p.rejected)
        .collect();
    assert_eq!(mis_a.len(), mis_7.len());
    assert_ne!(mis_a, mis_7);
    // Resume: a partial file with 5 records and a torn line is completed.
    let resume_dir = tempfile::tempdir_in(&s.dir).unwrap();
    let out = resume_dir.path().join("single.jsonl");
    let text = String::from_utf8(a.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut partial = lines[..5].join("\n");
    partial.push('\n');
    partial.push_str(&lines[5][..lines[5].len() / 2]);
    std::fs::write(resume_dir.path().join("single.jsonl.partial"), partial).unwrap();
    let r = run(&cfg, &samples, &s.encoder, &src, &out).unwrap();
    assert_eq!(read(&out), a, "resumed run differs from the single run");
    assert_eq!(r.pairs_written(), lines.len() - 5);
    assert!(!resume_dir.path().join("single.jsonl.partial").exists());
    // A finished output is a no-op to rerun.
    let r2 = run(&cfg, &samples, &s.encoder, &src, &out).unwrap();
    assert_eq!(r2.pairs_written(), 0);
    assert_eq!(r2.pairs_in_file, lines.len());
    assert!(r2.resumed_samples > 0);
    assert_eq!(read(&out), a);
}

#[test]
fn preview_sheets_and_rule_export() {
    let s = small();
    let tmp = tempfile::tempdir_in(&s.dir).unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let cfg = CurateConfig {
        preview: 3,
        ..small_config(&[PairKind::Fp, PairKind::Mis])
    };
    let samples = reports(&s.dir, Some(Split::Test));
    let summary = run(
        &cfg,
        &samples,
        &s.encoder,
        &MaskSource { sigma: None },
        &out,
    )
    .unwrap();
    assert_eq!(summary.previews.len(), 3);
    for p in &summary.previews {
        let img = rgb(p);
        assert!(img.width() > 900 && img.height() > 300);
        // Some red Ω* outline and dark text are drawn.
        assert!(img.pixels().any(|p| p.0 == [255, 0, 0]));
        assert!(img
            .pixels()
            .any(|p| p.0[0] < 60 && p.0[1] < 60 && p.0[2] < 60));
    }
    let rule = tmp.path().join("pairs_rule.json");
    let n = hdpo::curate::export_rule(&out, &rule).unwrap();
    assert_eq!(n, summary.pairs_written());
    assert_eq!(read_pairs(&rule).unwrap(), read_pairs(&out).unwrap());
}

#[test]
fn cli_curates_with_each_heatmap_source() {
    let s = small();
    let tmp = tempfile::tempdir_in(&s.dir).unwrap();
    for (spec, expect_pairs) in [
        ("mask", true),
        ("file", true),
        ("uniform", true),
        ("attention", true),
        ("gradcam", true),
        ("bogus", false),
    ] {
        let out = tmp.path().join(format!("{spec}.jsonl"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
            .args(["curate", "--data"])
            .arg(&s.dir)
            .args([
                "--format",
                "phantom-report",
                "--split",
                "test",
                "--heatmaps",
                spec,
                "--encoder",
            ])
            .arg(&s.encoder_dir)
            .arg("--out")
            .arg(&out)
            .args([
                "--kinds", "mis,fp", "--lambda", "0.5", "--seed", "3", "--shard", "1/2",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !expect_pairs {
            assert!(!o.status.success());
            assert!(stderr.contains("unknown heatmap source"), "{stderr}");
            continue;
        }
        assert!(o.status.success(), "{spec}: {stdout}\n{stderr}");
        assert!(stdout.contains("mean w"), "{spec}: {stdout}");
        let pairs = read_pairs(&out).unwrap();
        assert!(!pairs.is_empty(), "{spec}: {stdout}");
        assert!(pairs
            .iter()
            .all(|p| p.heatmap_source.as_deref() == Some(spec)));
        assert!(tmp
            .path()
            .join(format!("{spec}.jsonl.summary.json"))
            .is_file());
        // The phantom's k* audit counts each abnormal study with a pair once.
        let abnormal: std::collections::HashSet<&str> = pairs
            .iter()
            .filter_map(|p| p.source_id.as_deref())
            .filter(|id| manifest_finding(&s.dir, id).is_some())
            .collect();
        let line = stdout
            .lines()
            .find(|l| l.contains("k* names the lesion's finding or location for"))
            .unwrap_or_else(|| panic!("{spec}: no k* audit in {stdout}"));
        assert!(
            line.contains(&format!(" of {} abnormal phantom studies", abnormal.len())),
            "{spec}: {line}"
        );
    }
}

/// The finding of phantom study `id` (None for a normal study).
fn manifest_finding(dir: &Path, id: &str) -> Option<String> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("phantom.json")).unwrap()).unwrap();
    m["studies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .and_then(|s| s["finding"].as_str().map(str::to_string))
}
