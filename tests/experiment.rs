//! The experiment layer: grid cell caching, table shapes, the lesion-masking
//! probe, the baselines' pair invariants, and a tiny end-to-end run.

use std::cell::Cell as StdCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use hdpo::data::{AnswerType, Sample, Split};
use hdpo::eval::probe::{lesion_probe, Answerer};
use hdpo::eval::tables::ResultRow;
use hdpo::experiment::baselines::{self, BuildContext, ImageTextScore, Responder};
use hdpo::experiment::grid::{self, Cell, CellCache, CellResult};
use hdpo::experiment::report::{self, DatasetSpec, Task};
use hdpo::experiment::ExperimentConfig;

fn fake_result(cell: &Cell, datasets: &[DatasetSpec], value: f64) -> CellResult {
    let mut rows = Vec::new();
    for d in datasets {
        for subset in ["all", "subtle"] {
            let mut m: BTreeMap<String, f64> = d
                .task
                .table_metrics()
                .iter()
                .map(|k| (k.to_string(), value))
                .collect();
            m.insert(report::PROBE.into(), value / 2.0);
            let mut row = ResultRow {
                method: cell.method.clone(),
                dataset: d.label.clone(),
                sft: cell.sft,
                subset: subset.into(),
                variant: cell.variant.as_ref().map(|v| v.label()),
                n: 3,
                metrics: m,
            };
            report::add_primary(&mut row, d.task);
            rows.push(row);
        }
    }
    CellResult {
        cell: cell.clone(),
        fingerprint: String::new(),
        rows,
        curve: vec![],
        n_train: 1,
        seconds: 0.0,
    }
}

fn specs() -> Vec<DatasetSpec> {
    vec![
        DatasetSpec {
            label: "VQA".into(),
            task: Task::Vqa,
        },
        DatasetSpec {
            label: "Reports".into(),
            task: Task::Report,
        },
    ]
}

#[test]
fn grid_cells_are_cached_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ExperimentConfig::phantom();
    let cells = grid::cells(&cfg);
    let cache = CellCache::new(dir.path(), &cfg.fingerprint());
    let calls = StdCell::new(0usize);
    let compute = |c: &Cell| -> Result<CellResult> {
        calls.set(calls.get() + 1);
        Ok(fake_result(c, &specs(), 0.5))
    };
    let first = grid::run_cells(&cells, &cache, compute).unwrap();
    assert_eq!(calls.get(), cells.len());
    assert_eq!(first.computed.len(), cells.len());
    assert!(first.skipped.is_empty());

    let second = grid::run_cells(&cells, &cache, compute).unwrap();
    assert_eq!(calls.get(), cells.len(), "a rerun computed a finished cell");
    assert_eq!(second.skipped.len(), cells.len());
    assert_eq!(second.results, first.results);

    // A corrupted result file and another fingerprint are recomputed.
    let victim = &cells[3];
    std::fs::write(cache.cell_dir(victim).join("result.json"), "{ not json").unwrap();
    let third = grid::run_cells(&cells, &cache, compute).unwrap();
    assert_eq!(third.computed, vec![victim.key()]);
    let other = CellCache::new(dir.path(), "another-fingerprint");
    let fourth = grid::run_cells(&cells[..2], &other, compute).unwrap();
    assert_eq!(fourth.computed.len(), 2);

    // An error in one cell keeps the cells finished before it.
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = CellCache::new(dir2.path(), "f");
    let failing = |c: &Cell| -> Result<CellResult> {
        if c.key() == cells[2].key() {
            anyhow::bail!("boom")
        }
        Ok(fake_result(c, &specs(), 0.1))
    };
    let e = grid::run_cells(&cells, &cache2, failing).unwrap_err();
    assert!(format!("{e:#}").contains(&cells[2].key()), "{e:#}");
    assert!(cache2.get(&cells[0]).is_some() && cache2.get(&cells[1]).is_some());
    assert!(cache2.get(&cells[2]).is_none());
}

#[test]
fn tables_have_the_papers_shapes() {
    let cfg = ExperimentConfig::phantom();
    let cells = grid::cells(&cfg);
    let results: Vec<CellResult> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| fake_result(c, &specs(), 0.01 * i as f64))
        .collect();
    let audit = |src: &str, hits: usize| hdpo::curate::audit::KeywordAudit {
        heatmaps: src.into(),
        dataset: "Reports".into(),
        studies: 40,
        hits,
        rate: hits as f64 / 40.0,
        keyword_categories: Default::default(),
    };
    let md = report::tables_markdown(
        &report::ReportSpec {
            header: "# T\n",
            datasets: &specs(),
            methods: &cfg.grid.methods,
            ablation_sft: false,
            main_source: "file",
            audits: &[audit("file", 36), audit("mask", 38)],
        },
        &results,
    );
    let section = |title: &str| -> Vec<String> {
        let start = md
            .find(title)
            .unwrap_or_else(|| panic!("no {title} in\n{md}"));
        md[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(str::to_string)
            .collect()
    };
    // Table 1: header + rule + base + 9 methods + SFT + 9 SFT methods; 5 metric columns.
    let t1 = section("Table 1");
    assert_eq!(t1.len(), 2 + 1 + 9 + 1 + 9, "{t1:#?}");
    assert_eq!(
        t1[0],
        "| Method | VQA open | VQA closed | Reports meteor | Reports bleu | Reports rouge_l |"
    );
    assert_eq!(t1[2].split('|').count(), 8);
    assert!(t1[2].starts_with("| Base model |"));
    assert!(t1.iter().any(|l| l.starts_with("| + SFT + HDPO (ours) |")));
    assert!(
        t1.iter().all(|l| !l.contains(" - |")),
        "a Table 1 cell is missing"
    );
    // Table 2 has the same rows on the subtle subset.
    assert_eq!(section("Table 2").len(), t1.len());
    // Table 3: none, mis, fp, fn, all; one column per dataset.
    let t3 = section("Table 3");
    assert_eq!(t3.len(), 2 + 5);
    assert_eq!(t3[0], "| Method | VQA primary | Reports primary |");
    assert!(t3[2].starts_with("| none (starting model) |"));
    assert!(t3[6].starts_with("| all three (HDPO) |"));
    // Table 4: lambda = 0 and HDPO.
    let t4 = section("Table 4");
    assert_eq!(t4.len(), 2 + 2);
    assert!(t4[2].starts_with("| HDPO, λ = 0 (w = 1) |"));
    // Table 5: the four heatmap sources.
    let t5 = section("Table 5");
    assert_eq!(t5.len(), 2 + 4, "{t5:#?}");
    assert!(t5[5].starts_with("| file (DAug-style heatmaps) |"));
    // The probe table exists with one row per Table 1 method.
    assert_eq!(section("Lesion-masking probe").len(), t1.len());
    // The HDPO (no SFT) value is what the fake result put there.
    let hdpo_i = cells.iter().position(|c| c.key() == "hdpo").unwrap();
    let want = format!("{:.2}", 0.01 * hdpo_i as f64 * 100.0);
    let row = t1
        .iter()
        .find(|l| l.starts_with("| + HDPO (ours) |"))
        .unwrap();
    assert!(row.contains(&want), "{row} lacks {want}");
    // The k* audit: one row per heatmap source, the share in percent.
    let ka = section("Curation: does k* name the lesion?");
    assert_eq!(ka.len(), 2 + 2, "{ka:#?}");
    assert_eq!(
        ka[2],
        "| file (DAug-style heatmaps) | Reports | 40 | 36 | 90.00 |"
    );
    assert_eq!(ka[3], "| lesion mask | Reports | 40 | 38 | 95.00 |");
}

#[test]
fn report_writes_json_tables_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ExperimentConfig::phantom();
    let mut results: Vec<CellResult> = grid::cells(&cfg)
        .iter()
        .enumerate()
        .map(|(i, c)| fake_result(c, &specs(), 0.02 * i as f64))
        .collect();
    for r in results.iter_mut().filter(|r| r.cell.is_preference()) {
        r.curve = (1..=5)
            .map(|s| hdpo::experiment::grid::CurvePoint {
                step: s,
                loss: 0.7 / s as f64,
                margin: Some(0.01 * s as f64),
            })
            .collect();
    }
    let spec = report::ReportSpec {
        header: "# t\n",
        datasets: &specs(),
        methods: &cfg.grid.methods,
        ablation_sft: false,
        main_source: "file",
        audits: &[],
    };
    let files = report::write_report(dir.path(), "t", true, &spec, &results).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.results_json).unwrap()).unwrap();
    assert_eq!(doc["cells"].as_array().unwrap().len(), results.len());
    assert_eq!(doc["rows"].as_array().unwrap().len(), results.len() * 4);
    let names: HashSet<String> = files
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for n in [
        "training_curves.png",
        "training_curves_sft.png",
        "reward_margins_sft.png",
        "metric_open_sft.png",
        "metric_open.png",
        "metric_closed.png",
        "metric_meteor.png",
        "metric_bleu.png",
        "metric_rouge_l.png",
        "metric_lesion_probe.png",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
        let img = image::open(dir.path().join("plots").join(n)).unwrap();
        assert!(img.width() > 100 && img.height() > 100);
    }
}

// ---------------------------------------------------------------- probe

/// A 32x32 dark image with a bright 6x6 lesion, and its mask.
fn lesion_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let mut img = image::GrayImage::from_pixel(32, 32, image::Luma([40]));
    let mut mask = image::GrayImage::new(32, 32);
    for y in 10..16 {
        for x in 12..18 {
            img.put_pixel(x, y, image::Luma([230]));
            mask.put_pixel(x, y, image::Luma([255]));
        }
    }
    let ip = dir.join("img.png");
    let mp = dir.join("mask.png");
    img.save(&ip).unwrap();
    mask.save(&mp).unwrap();
    (ip, mp)
}

fn probe_sample(id: &str, img: &Path, mask: Option<&Path>) -> Sample {
    Sample {
        id: id.into(),
        dataset: "t".into(),
        split: Split::Test,
        images: vec![img.to_path_buf()],
        question: Some("Is there a lesion?".into()),
        answer: "yes".into(),
        answer_type: AnswerType::Closed,
        mask: mask.map(Path::to_path_buf),
        meta: Default::default(),
    }
}

/// Looks at the image: "yes" when a bright pixel exists.
struct Looks;
impl Answerer for Looks {
    fn answer(&self, _q: &str, image: &Path) -> Result<String> {
        let img = image::open(image)?.to_luma8();
        Ok(if img.pixels().any(|p| p.0[0] > 200) {
            "Yes".into()
        } else {
            "No".into()
        })
    }
}

/// Ignores the image.
struct Blind;
impl Answerer for Blind {
    fn answer(&self, _q: &str, _image: &Path) -> Result<String> {
        Ok("yes.".into())
    }
}

#[test]
fn probe_counts_answers_that_follow_the_lesion() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mask) = lesion_fixture(dir.path());
    let samples = vec![
        probe_sample("a", &img, Some(&mask)),
        probe_sample("b", &img, Some(&mask)),
        // No mask: not abnormal, not probed.
        probe_sample("c", &img, None),
    ];
    let q = |s: &Sample| s.question.clone().unwrap();
    let looks = lesion_probe(&Looks, &samples, &q, &dir.path().join("w1"), 0).unwrap();
    assert_eq!((looks.n, looks.changed), (2, 2));
    assert_eq!(looks.rate, 1.0);
    assert_eq!(looks.items[0].original, "Yes");
    assert_eq!(looks.items[0].masked, "No");
    assert!((looks.items[0].mask_share - 64.0 / 1024.0).abs() < 0.03);
    // The painted image has no lesion left and keeps the background.
    let painted = image::open(dir.path().join("w1").join("a_masked.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(painted.get_pixel(14, 12).0[0], 40);
    assert_eq!(painted.get_pixel(0, 0).0[0], 40);

    let blind = lesion_probe(&Blind, &samples, &q, &dir.path().join("w2"), 1).unwrap();
    assert_eq!((blind.n, blind.changed), (1, 0));
    assert_eq!(blind.rate, 0.0);
}

// ---------------------------------------------------------------- baselines

struct FakeModel;
impl Responder for FakeModel {
    fn respond(&self, _q: &str, image: &Path, temperature: f64, seed: u64) -> Result<String> {
        if temperature == 0.0 {
            // Greedy: a wrong finding on noised images, else a fixed answer.
            let name = image.file_name().unwrap().to_string_lossy().into_owned();
            return Ok(if name.contains("noised") {
                "There is a nodule.".into()
            } else {
                "There is an effusion.".into()
            });
        }
        Ok(["There is a nodule.", "There is an effusion.", "Normal."][(seed % 3) as usize].into())
    }
    fn logp(&self, _q: &str, answer: &str, image: Option<&Path>) -> Result<f64> {
        Ok(-(answer.len() as f64) + if image.is_some() { 1.0 } else { 0.0 })
    }
}

struct LengthScore;
impl ImageTextScore for LengthScore {
    fn score(&self, _image: &Path, text: &str) -> Result<f64> {
        Ok(text.len() as f64)
    }
}

#[test]
fn every_baseline_builds_valid_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mask) = lesion_fixture(dir.path());
    let mut samples = Vec::new();
    for i in 0..6 {
        let mut s = probe_sample(&format!("s{i}"), &img, Some(&mask));
        if i % 2 == 0 {
            s.question = None;
            s.answer = "There is a small pleural effusion in the left lung.".into();
            s.answer_type = AnswerType::Report;
        }
        samples.push(s);
    }
    let vocab = hdpo::data::phantom::text::vocabulary();
    for name in baselines::NAMES {
        let b = baselines::by_name(name).unwrap();
        assert_eq!(b.name(), name);
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let ctx = BuildContext {
            seed: 3,
            root: &root,
            vocabulary: &vocab,
            responder: Some(&FakeModel),
            scorer: Some(&LengthScore),
            samples_per_prompt: 4,
            temperature: 1.0,
        };
        let pairs = b.build(&ctx, &samples).unwrap();
        assert!(!pairs.is_empty(), "{name} built no pairs");
        let ids: HashSet<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), pairs.len(), "{name}: duplicate ids");
        for p in &pairs {
            assert!(p.kind.starts_with(name), "{name}: kind {}", p.kind);
            assert!(
                p.weight.is_finite() && p.weight > 0.0,
                "{name}: weight {}",
                p.weight
            );
            assert!(
                p.chosen != p.rejected || p.chosen_image != p.rejected_image,
                "{name}: pair {} has identical sides",
                p.id
            );
            for im in [&p.chosen_image, &p.rejected_image] {
                assert!(root.join(im).is_file(), "{name}: image {im} missing");
            }
            let src = samples
                .iter()
                .find(|s| Some(&s.id) == p.source_id.as_ref())
                .unwrap();
            assert_eq!(p.prompt, src.prompt());
        }
        // Again with the same seed: the same pairs.
        let again = b.build(&ctx, &samples).unwrap();
        assert_eq!(again, pairs, "{name} is not deterministic");
        match name {
            "povid" => {
                let text = pairs.iter().find(|p| p.kind == "povid_text").unwrap();
                assert_eq!(text.chosen_image, text.rejected_image);
                let img_pair = pairs.iter().find(|p| p.kind == "povid_image").unwrap();
                assert_eq!(img_pair.rejected, "There is a nodule.");
            }
            "mmedpo" => {
                let mean = pairs.iter().map(|p| p.weight).sum::<f64>() / pairs.len() as f64;
                assert!((mean - 1.0).abs() < 1e-9, "mmedpo weights mean {mean}");
                let ip = pairs.iter().find(|p| p.kind == "mmedpo_image").unwrap();
                assert_eq!(ip.chosen, ip.rejected);
                assert_ne!(ip.chosen_image, ip.rejected_image);
                // Only the lesion was noised.
                let a = image::open(root.join(&ip.chosen_image)).unwrap().to_luma8();
                let b = image::open(root.join(&ip.rejected_image))
                    .unwrap()
                    .to_luma8();
                assert_eq!(a.get_pixel(0, 0), b.get_pixel(0, 0));
                assert!((10..16).any(|y| (12..18).any(|x| a.get_pixel(x, y) != b.get_pixel(x, y))));
            }
            "mdpo" => {
                let n_img = pairs.iter().filter(|p| p.kind == "mdpo_image").count();
                assert_eq!(n_img, samples.len());
                assert!(pairs.iter().any(|p| p.kind == "mdpo_text"));
            }
            "stllava" => {
                for p in &pairs {
                    let src = samples
                        .iter()
                        .find(|s| Some(&s.id) == p.source_id.as_ref())
                        .unwrap();
                    assert_eq!(p.chosen, src.answer);
                    assert_eq!(p.rejected, "There is an effusion.");
                }
            }
            "fisao" => {
                // The verifier prefers the longer answer.
                for p in &pairs {
                    assert!(p.chosen.len() > p.rejected.len(), "{p:?}");
                }
            }
            _ => {}
        }
    }
    assert!(baselines::by_name("nope").is_err());
}

// ---------------------------------------------------------------- end to end

/// A micro config: every stage, every table, in seconds.
fn micro_config() -> ExperimentConfig {
    let mut c = ExperimentConfig::phantom();
    c.name = "micro".into();
    c.data.train = 10;
    c.data.test = 4;
    c.data.size = 32;
    c.data.max_train_per_dataset = 16;
    c.data.max_test_per_dataset = 6;
    c.encoder.epochs = 1;
    c.encoder.batch_size = 8;
    c.model.pretrain_epochs = 1;
    c.model.pretrain_studies = 6;
    c.model.pretrain_vqa_epochs = 1;
    c.sft.epochs = 1;
    c.preference.max_pairs = 6;
    c.preference.max_generate_samples = 3;
    c.eval.max_new_tokens = 6;
    c.eval.probe_max_samples = 2;
    c.grid.methods = vec!["hdpo".into(), "mdpo".into()];
    c.grid.heatmap_sources = vec!["mask".into()];
    c
}

#[test]
fn micro_experiment_runs_end_to_end_and_a_rerun_skips_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = micro_config();
    let quiet = hdpo::experiment::pipeline::LogProgress;
    let first = hdpo::experiment::pipeline::run(&cfg, dir.path(), &quiet).unwrap();
    let n_cells = grid::cells(&cfg).len();
    assert_eq!(first.record.cells_computed.len(), n_cells);
    assert_eq!(first.results.len(), n_cells);
    // Every cell measured every table metric of both datasets on the full test split.
    for r in &first.results {
        for d in &first.datasets {
            let row = r
                .rows
                .iter()
                .find(|x| x.dataset == d.label && x.subset == "all")
                .unwrap_or_else(|| panic!("{}: no row for {}", r.cell.key(), d.label));
            for m in d.task.table_metrics() {
                let v = row.metrics[*m];
                assert!(
                    (0.0..=1.0).contains(&v),
                    "{} {} {m} = {v}",
                    r.cell.key(),
                    d.label
                );
            }
            assert!(row.metrics.contains_key(report::PROBE));
        }
        if r.cell.is_preference() {
            assert!(r.n_train > 0 && !r.curve.is_empty(), "{}", r.cell.key());
        }
    }
    let md = std::fs::read_to_string(dir.path().join("tables.md")).unwrap();
    for t in [
        "Table 1",
        "Table 2",
        "Table 3",
        "Table 4",
        "Table 5",
        "Curation: does k* name the lesion?",
        "PHANTOM NUMBERS",
        "Does the base model see lesions? (Phantom VQA",
        "closed-VQA accuracy on conspicuous lesions",
    ] {
        assert!(md.contains(t), "tables.md lacks {t}");
    }
    // The base model pretrained on its own phantom (6 studies, another seed), and its
    // "sees lesions" figures on the VQA test split.
    let pretrain =
        std::fs::read_to_string(dir.path().join("data/pretrain/annotation.json")).unwrap();
    let train = std::fs::read_to_string(dir.path().join("data/phantom/annotation.json")).unwrap();
    assert_ne!(pretrain, train);
    let sees: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sees_lesions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sees[0]["dataset"], "Phantom VQA", "{sees}");
    let closed_n: u64 = ["conspicuous", "subtle", "normal"]
        .iter()
        .filter_map(|k| sees[0][*k]["n"].as_u64())
        .sum();
    assert!(closed_n > 0, "{sees}");
    // The k* audit of both curated heatmap sources (file: the main cell; mask: Table 5)
    // on the phantom reports, counted against the manifest's abnormal training studies.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    let audits = doc["keyword_audit"].as_array().unwrap();
    let sources: Vec<&str> = audits
        .iter()
        .map(|a| a["heatmaps"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["file", "mask"], "{audits:?}");
    for a in audits {
        let (n, h) = (a["studies"].as_u64().unwrap(), a["hits"].as_u64().unwrap());
        assert!(n > 0 && h <= n, "{a}");
        assert_eq!(a["dataset"], "Phantom reports");
    }
    // The hallucination section: every cell scored against the ground truth
    // (one report per test report row), HDPO paired with the other methods.
    assert!(md.contains("Hallucination against the phantom's ground truth"));
    assert!(md.contains("HDPO against each method from the same start"));
    let h = &doc["hallucination"];
    assert_eq!(h["cells"].as_array().unwrap().len(), n_cells);
    for c in h["cells"].as_array().unwrap() {
        let key = c["cell"].as_str().unwrap();
        let preds = dir
            .path()
            .join("cells")
            .join(key)
            .join("predictions_phantom_reports.jsonl");
        let reports = std::fs::read_to_string(&preds).unwrap().lines().count();
        let all = &c["report"]["subsets"][0];
        assert_eq!(all["subset"], "all");
        let halluc = all["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == "hallucination_rate")
            .unwrap();
        assert_eq!(halluc["n"].as_u64().unwrap() as usize, reports, "{key}");
    }
    let pairs = h["comparisons"].as_array().unwrap();
    assert!(!pairs.is_empty());
    for p in pairs {
        assert!(p["a"] == "hdpo" || p["a"] == "sft+hdpo", "{p}");
    }
    assert!(pairs.iter().any(|p| p["a"] == "hdpo" && p["b"] == "mdpo"));
    assert!(dir.path().join("plots/training_curves.png").is_file());
    assert!(dir.path().join("plots/metric_closed.png").is_file());
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["seed"], 0);
    assert_eq!(run["crate_version"], env!("CARGO_PKG_VERSION"));
    assert!(dir.path().join("config.toml").is_file());

    // The rerun reuses every stage and cell and reports the same numbers.
    let second = hdpo::experiment::pipeline::run(&cfg, dir.path(), &quiet).unwrap();
    assert!(second.record.cells_computed.is_empty());
    assert_eq!(second.record.cells_skipped.len(), n_cells);
    // JSON keeps f64 to about 1e-15 relative (serde_json without float_roundtrip).
    assert_eq!(second.results.len(), first.results.len());
    for (a, b) in second.results.iter().zip(&first.results) {
        assert_eq!(a.cell, b.cell);
        assert_eq!(a.rows.len(), b.rows.len());
        for (x, y) in a.rows.iter().zip(&b.rows) {
            assert_eq!((&x.dataset, &x.subset, x.n), (&y.dataset, &y.subset, y.n));
            assert_eq!(
                x.metrics.keys().collect::<Vec<_>>(),
                y.metrics.keys().collect::<Vec<_>>()
            );
            for (k, v) in &x.metrics {
                let w = y.metrics[k];
                assert!(
                    (v - w).abs() <= 1e-12 * w.abs().max(1e-300),
                    "{k}: {v} vs {w}"
                );
            }
        }
    }
}

#[test]
fn the_phantom_experiment_reuses_the_demo_cells() {
    let demo = hdpo::experiment::demo_config(false);
    let phantom = ExperimentConfig::phantom();
    assert_eq!(demo.fingerprint(), phantom.fingerprint());
    let d: HashSet<String> = grid::cells(&demo).iter().map(Cell::key).collect();
    let p: Vec<String> = grid::cells(&phantom).iter().map(Cell::key).collect();
    assert!(d.iter().all(|k| p.contains(k)));
    // The ablations: three error types and three heatmap sources.
    assert_eq!(p.len() - d.len(), 6);
    assert_eq!(d.len(), 2 + 2 * phantom.grid.methods.len());
    let quick: Vec<String> = grid::cells(&hdpo::experiment::demo_config(true))
        .iter()
        .map(Cell::key)
        .collect();
    assert_eq!(
        quick,
        vec!["base", "sft", "dpo", "hdpo", "sft+dpo", "sft+hdpo"]
    );
}

/// The README's commands take relative output folders (`hdpo demo` writes `hdpo-demo`): the
/// micro experiment through the CLI, from another working directory, with a relative `--out`
/// and a baseline (mDPO) whose pairs refer to dataset images outside the pair folder. Pair
/// files store image paths relative to themselves, so none may hold the output prefix.
#[test]
fn experiment_cli_with_a_relative_out_from_another_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let cfg = micro_config();
    std::fs::write(cwd.path().join("micro.toml"), cfg.to_toml().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .current_dir(cwd.path())
        .args(["experiment", "--config", "micro.toml", "--out", "rel/run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hdpo experiment --out rel/run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = cwd.path().join("rel/run");
    assert!(run.join("tables.md").is_file());
    let pairs = run.join("cells");
    let mut checked = 0;
    for cell in std::fs::read_dir(&pairs).unwrap() {
        let file = cell.unwrap().path().join("pairs/pairs.jsonl");
        if !file.is_file() {
            continue;
        }
        for rec in hdpo::data::pairs::read_pairs(&file).unwrap() {
            for p in [&rec.chosen_image, &rec.rejected_image] {
                assert!(!p.starts_with("rel/") && !Path::new(p).is_absolute(), "{p}");
            }
            let (c, r) = rec.resolve_images(&file).unwrap();
            assert!(
                c.is_file() && r.is_file(),
                "{} / {}",
                c.display(),
                r.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no baseline pair file under {}",
        pairs.display()
    );
}

/// The base model's full-weight pretraining: every tensor `tiny::make_trainable` hands the
/// optimiser (the patch embedding and the vision layer norms included) gets a non-zero
/// gradient from the SFT loss, so none is silently frozen by an op without a backward pass.
#[test]
fn every_tensor_of_the_base_model_pretraining_gets_a_gradient() {
    use hdpo::train::SftPolicy;
    let dir = tempfile::tempdir().unwrap();
    let ph = hdpo::data::phantom::PhantomConfig {
        seed: 4,
        train: 4,
        val: 0,
        test: 0,
        size: 32,
        ..Default::default()
    };
    hdpo::data::phantom::generate(&ph, dir.path()).unwrap();
    let samples = hdpo::data::load(
        hdpo::data::DatasetFormat::Phantom,
        dir.path(),
        &hdpo::data::LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let cfg = ExperimentConfig::phantom();
    let template = hdpo::model::ChatTemplate::from_name(&cfg.model.template).unwrap();
    let (mut model, tok) =
        hdpo::experiment::tiny::init_tiny_model(&cfg.model, &samples, template, 0).unwrap();
    let vars = hdpo::experiment::tiny::make_trainable(&mut model).unwrap();
    assert!(vars.iter().any(|(n, _)| n == "vision.patch_embedding"));
    let ttok = hdpo::experiment::tiny::text_tokenizer(tok);
    let policy = hdpo::experiment::pieces::FullWeights {
        inner: hdpo::model::LlavaPolicy::new(&model, &ttok, template).unwrap(),
        vars,
    };
    let items: Vec<_> = hdpo::experiment::pieces::sft_examples(&samples[..6])
        .unwrap()
        .into_iter()
        .map(|e| e.item)
        .collect();
    let nll = policy.nll(&items).unwrap();
    let grads = nll.sum.backward().unwrap();
    for (name, var) in policy.trainable() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm² {norm}"
        );
    }
}
