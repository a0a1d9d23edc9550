//! The phantom benchmark: determinism, masks versus flags and areas, the
//! subtle share, file layouts, heatmaps, reports and the consistency of
//! answers with the ground truth, parsed back independently of the writer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hdpo::data::phantom::{self, PhantomConfig};
use serde_json::Value;

const SIZE: usize = 96;

fn small_config(seed: u64) -> PhantomConfig {
    PhantomConfig {
        seed,
        train: 14,
        val: 4,
        test: 24,
        size: SIZE,
        preview: true,
        ..PhantomConfig::default()
    }
}

/// One generated set shared by the read-only tests.
fn shared_set() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("phantom_shared_set");
        let _ = std::fs::remove_dir_all(&dir);
        phantom::generate(&small_config(11), &dir).expect("generate");
        dir
    })
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn studies(dir: &Path) -> Vec<Value> {
    read_json(&dir.join("phantom.json"))["studies"]
        .as_array()
        .expect("studies array")
        .clone()
}

fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A mask PNG as (width, height, pixels), via the image crate.
fn read_gray(path: &Path) -> (usize, usize, Vec<u8>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    (img.width() as usize, img.height() as usize, img.into_raw())
}

/// A minimal independent `.npy` reader for `<f4` 2-D C-order arrays.
fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    assert_eq!(b[6], 1);
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape = shape.split(')').next().unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(dims.len(), 2, "{header}");
    let data: Vec<f32> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    (dims[0], dims[1], data)
}

#[test]
fn same_seed_same_bytes_any_threads_other_seed_differs() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("phantom_determinism");
    let _ = std::fs::remove_dir_all(&base);
    let cfg = PhantomConfig {
        train: 6,
        val: 2,
        test: 6,
        ..small_config(5)
    };
    phantom::generate(&cfg, &base.join("a")).unwrap();
    // One thread versus the default pool: the same bytes.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| phantom::generate(&cfg, &base.join("b")))
        .unwrap();
    let a = all_files(&base.join("a"));
    let b = all_files(&base.join("b"));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same file names"
    );
    for (k, v) in &a {
        assert!(v == &b[k], "{} differs between runs", k.display());
    }
    // 14 studies x 4 files + 3 QA files + annotation + manifest + preview.
    assert_eq!(a.len(), 14 * 4 + 6);

    let other = PhantomConfig { seed: 6, ..cfg };
    phantom::generate(&other, &base.join("c")).unwrap();
    let c = all_files(&base.join("c"));
    let img = Path::new("imgs/phantom_000000/source.png");
    assert_ne!(a[img], c[img], "another seed draws another image");
    assert_ne!(
        a[Path::new("annotation.json")],
        c[Path::new("annotation.json")]
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn masks_agree_with_areas_flags_and_bboxes() {
    let dir = shared_set();
    let st = studies(dir);
    assert_eq!(st.len(), 42);
    for s in &st {
        let id = s["id"].as_str().unwrap();
        let (w, h, px) = read_gray(&dir.join("imgs").join(id).join("mask.png"));
        assert_eq!((w, h), (SIZE, SIZE));
        assert!(
            px.iter().all(|&v| v == 0 || v == 255),
            "{id}: mask not 0/255"
        );
        let n = px.iter().filter(|&&v| v == 255).count();
        let area = n as f64 / (w * h) as f64;
        assert_eq!(s["lesion_pixels"].as_u64().unwrap() as usize, n, "{id}");
        assert!(
            (s["lesion_area"].as_f64().unwrap() - area).abs() < 1e-12,
            "{id}"
        );
        let subtle = s["subtle"].as_bool().unwrap();
        if s["finding"].is_null() {
            assert_eq!(n, 0, "{id}: normal study with a lesion");
            assert!(!subtle);
            assert!(s["bbox"].is_null());
            assert_eq!(s["heatmap_class"], "normal");
        } else {
            assert!(n > 0, "{id}: abnormal study with an empty mask");
            assert_eq!(subtle, area < 0.05, "{id}: subtle flag vs area {area}");
            let b: Vec<usize> = s["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
            for (i, _) in px.iter().enumerate().filter(|(_, v)| **v == 255) {
                let (y, x) = (i / w, i % w);
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
            assert_eq!(b, vec![x0, y0, x1, y1], "{id}");
        }
    }
}

#[test]
fn a_third_of_abnormal_test_studies_are_subtle_and_sizes_vary() {
    let st = studies(shared_set());
    let test: Vec<&Value> = st
        .iter()
        .filter(|s| s["split"] == "test" && !s["finding"].is_null())
        .collect();
    let subtle = test.iter().filter(|s| s["subtle"] == true).count();
    assert!(
        3 * subtle >= test.len(),
        "{subtle} of {} abnormal test studies subtle",
        test.len()
    );
    // Sizes range from subtle to large, and normal studies are ~27%.
    let areas: Vec<f64> = st
        .iter()
        .filter(|s| !s["finding"].is_null())
        .map(|s| s["lesion_area"].as_f64().unwrap())
        .collect();
    assert!(areas.iter().any(|a| *a < 0.01));
    assert!(areas.iter().any(|a| *a > 0.06));
    let normal = st.iter().filter(|s| s["finding"].is_null()).count();
    assert!((9..=13).contains(&normal), "{normal} normal of 42");
    let kinds: BTreeSet<&str> = st.iter().filter_map(|s| s["finding"].as_str()).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

const QA_FIELDS: [&str; 17] = [
    "img_id",
    "img_name",
    "question",
    "answer",
    "q_lang",
    "location",
    "modality",
    "answer_type",
    "base_type",
    "content_type",
    "qid",
    "study_id",
    "finding",
    "side",
    "lobe",
    "lesion_area",
    "subtle",
];

#[test]
fn json_files_parse_with_their_fields_and_paths() {
    let dir = shared_set();
    let truth: BTreeMap<String, Value> = studies(dir)
        .into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();
    let mut qids = BTreeSet::new();
    for (file, split, n) in [
        ("train.json", "train", 14),
        ("validate.json", "val", 4),
        ("test.json", "test", 24),
    ] {
        let recs = read_json(&dir.join(file));
        let recs = recs.as_array().unwrap();
        let ids: BTreeSet<&str> = recs
            .iter()
            .map(|r| r["study_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), n, "{file}");
        assert!(recs.len() >= 5 * n, "{file}: {} questions", recs.len());
        for r in recs {
            let obj = r.as_object().unwrap();
            for f in QA_FIELDS {
                assert!(obj.contains_key(f), "{file}: missing {f} in {r}");
            }
            assert_eq!(r["q_lang"], "en");
            assert_eq!(r["modality"], "X-Ray");
            assert_eq!(r["base_type"], "vqa");
            assert!(r["answer_type"] == "OPEN" || r["answer_type"] == "CLOSED");
            assert!(qids.insert(r["qid"].as_u64().unwrap()), "duplicate qid");
            let sid = r["study_id"].as_str().unwrap();
            let t = &truth[sid];
            assert_eq!(t["split"], split);
            assert_eq!(r["finding"], t["finding"]);
            assert_eq!(r["side"], t["side"]);
            assert_eq!(r["lobe"], t["lobe"]);
            assert_eq!(r["subtle"], t["subtle"]);
            assert_eq!(r["img_name"], format!("{sid}/source.png"));
            assert!(dir
                .join("imgs")
                .join(r["img_name"].as_str().unwrap())
                .is_file());
        }
    }
    let ann = read_json(&dir.join("annotation.json"));
    for (split, n) in [("train", 14), ("val", 4), ("test", 24)] {
        let recs = ann[split].as_array().unwrap();
        assert_eq!(recs.len(), n);
        for r in recs {
            assert_eq!(r["split"], split);
            let id = r["id"].as_str().unwrap();
            assert_eq!(r["report"], truth[id]["report"]);
            let paths = r["image_path"].as_array().unwrap();
            assert_eq!(paths.len(), 1);
            let p = dir.join("images").join(paths[0].as_str().unwrap());
            let (_, _, a) = read_gray(&p);
            let (w, h, b) = read_gray(&dir.join("imgs").join(id).join("source.png"));
            assert_eq!((w, h), (SIZE, SIZE));
            assert_eq!(a, b, "{id}: R2Gen and SLAKE images differ");
            let class = truth[id]["heatmap_class"].as_str().unwrap();
            assert!(dir
                .join("heatmaps")
                .join(format!("{id}_{class}.npy"))
                .is_file());
        }
    }
    let manifest = read_json(&dir.join("phantom.json"));
    assert_eq!(manifest["config"]["seed"], 11);
    assert_eq!(manifest["version"], phantom::GENERATOR_VERSION);
}

#[test]
fn images_look_like_chest_radiographs() {
    let dir = shared_set();
    for s in studies(dir) {
        let id = s["id"].as_str().unwrap();
        let (w, _, px) = read_gray(&dir.join("imgs").join(id).join("source.png"));
        let at = |x: f32, y: f32| px[(y * w as f32) as usize * w + (x * w as f32) as usize];
        // Air in the corners, dense mediastinum, dark lateral lung fields.
        assert!(at(0.02, 0.02) < 40, "{id}");
        assert!(at(0.5, 0.45) > 130, "{id}: mediastinum {}", at(0.5, 0.45));
        if s["finding"].is_null() {
            assert!(at(0.25, 0.42) < 110, "{id}: right lung {}", at(0.25, 0.42));
            assert!(at(0.75, 0.42) < 110, "{id}: left lung {}", at(0.75, 0.42));
        }
        // The lesion is visible: the mean brightness inside the mask differs
        // from the normal lung around it (denser, or darker for pneumothorax).
        if let Some(k) = s["finding"].as_str() {
            if k == "cardiomegaly" {
                continue;
            }
            let (_, _, mask) = read_gray(&dir.join("imgs").join(id).join("mask.png"));
            let inside: Vec<f64> = px
                .iter()
                .zip(&mask)
                .filter(|(_, m)| **m == 255)
                .map(|(p, _)| f64::from(*p))
                .collect();
            let mean_in = inside.iter().sum::<f64>() / inside.len() as f64;
            if k == "pneumothorax" {
                assert!(mean_in < 70.0, "{id}: pneumothorax mean {mean_in}");
            } else {
                assert!(mean_in > 95.0, "{id}: {k} mean {mean_in}");
            }
        }
    }
}

#[test]
fn heatmaps_peak_on_the_lesion() {
    let dir = shared_set();
    for s in studies(dir) {
        let id = s["id"].as_str().unwrap();
        let class = s["heatmap_class"].as_str().unwrap();
        let (h, w, data) = read_npy(&dir.join("heatmaps").join(format!("{id}_{class}.npy")));
        assert_eq!((h, w), (SIZE, SIZE));
        assert!(data.iter().all(|v| v.is_finite() && *v >= 0.0), "{id}");
        let (argmax, max) =
            data.iter().enumerate().fold(
                (0, f32::MIN),
                |a, (i, v)| if *v > a.1 { (i, *v) } else { a },
            );
        assert!(max > 0.0, "{id}: all-zero heatmap");
        let (_, _, mask) = read_gray(&dir.join("imgs").join(id).join("mask.png"));
        if s["finding"].is_null() {
            assert!(max < 0.5, "{id}: normal heatmap peak {max}");
            continue;
        }
        let (py, px) = (argmax / w, argmax % w);
        let near = mask.iter().enumerate().any(|(i, m)| {
            *m == 255 && {
                let (y, x) = (i / w, i % w);
                y.abs_diff(py) <= 2 && x.abs_diff(px) <= 2
            }
        });
        assert!(
            near,
            "{id}: heatmap peak at ({px},{py}) is not on the lesion"
        );
        // Mean inside the mask well above the mean outside.
        let (mut si, mut ni, mut so, mut no) = (0.0, 0, 0.0, 0);
        for (v, m) in data.iter().zip(&mask) {
            if *m == 255 {
                si += v;
                ni += 1;
            } else {
                so += v;
                no += 1;
            }
        }
        assert!(si / ni as f32 > 3.0 * so / no as f32, "{id}");
    }
}

/// The finding kinds a text mentions, by independent stems.
fn kinds_mentioned(text: &str) -> BTreeSet<&'static str> {
    let t = text.to_lowercase();
    let table: [(&str, &[&str]); 6] = [
        ("nodule", &["nodul", "mass"]),
        ("consolidation", &["consolidation", "airspace"]),
        ("pleural_effusion", &["effusion", "pleural fluid"]),
        ("pneumothorax", &["pneumothorax"]),
        (
            "cardiomegaly",
            &[
                "cardiomegaly",
                "enlarged heart",
                "cardiac enlargement",
                "heart enlarged",
                "heart is enlarged",
                "silhouette enlarged",
                "heart size abnormal",
            ],
        ),
        ("atelectasis", &["atelectasis", "collapse"]),
    ];
    table
        .iter()
        .filter(|(_, stems)| stems.iter().any(|s| t.contains(s)))
        .map(|(k, _)| *k)
        .collect()
}

#[test]
fn reports_name_the_finding_and_its_side() {
    let st = studies(shared_set());
    let vocab = phantom::vocabulary();
    for s in &st {
        let report = s["report"].as_str().unwrap();
        let id = s["id"].as_str().unwrap();
        let sentences = report.matches('.').count();
        assert!(sentences >= 3, "{id}: short report {report}");
        match s["finding"].as_str() {
            None => {
                assert!(report.contains("clear"), "{id}: {report}");
                assert!(!report.to_lowercase().contains("there is a"), "{id}");
            }
            Some(kind) => {
                // The first sentence naming a finding without "no" names this one.
                let positive: Vec<&str> = report
                    .split(". ")
                    .filter(|x| !x.starts_with("No ") && !x.starts_with("There is no"))
                    .collect();
                let named: BTreeSet<&str> =
                    positive.iter().flat_map(|x| kinds_mentioned(x)).collect();
                assert!(named.contains(kind), "{id}: {kind} not in {report}");
                for k in s["keywords"].as_array().unwrap() {
                    assert!(
                        report.contains(k.as_str().unwrap()),
                        "{id}: {k} not in report"
                    );
                }
                let term = s["keywords"][0].as_str().unwrap();
                assert!(
                    vocab.iter().any(|(t, c)| t == term && c == "finding"),
                    "{id}: {term} is not a vocabulary finding"
                );
                if let Some(side) = s["side"].as_str() {
                    assert!(report.contains(side), "{id}: side {side} missing: {report}");
                }
                if let Some(lobe) = s["lobe"].as_str() {
                    assert!(report.contains(&format!("{lobe} lobe")), "{id}: {report}");
                }
            }
        }
    }
    // Varied templates: many distinct first sentences.
    let firsts: BTreeSet<&str> = st
        .iter()
        .map(|s| s["report"].as_str().unwrap().split(". ").next().unwrap())
        .collect();
    assert!(
        firsts.len() >= 20,
        "{} distinct first sentences",
        firsts.len()
    );
}

#[test]
fn answers_agree_with_the_ground_truth() {
    let dir = shared_set();
    let truth: BTreeMap<String, Value> = studies(dir)
        .into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();
    let (mut closed_yes, mut closed_no, mut open_n) = (0, 0, 0);
    let mut phrasings = BTreeSet::new();
    for file in ["train.json", "validate.json", "test.json"] {
        for r in read_json(&dir.join(file)).as_array().unwrap() {
            let t = &truth[r["study_id"].as_str().unwrap()];
            let q = r["question"].as_str().unwrap().to_lowercase();
            let a = r["answer"].as_str().unwrap();
            phrasings.insert(q.clone());
            let finding = t["finding"].as_str();
            let side = t["side"].as_str();
            if r["answer_type"] == "CLOSED" {
                assert!(a == "Yes" || a == "No", "{q}: {a}");
                let yes = a == "Yes";
                if yes {
                    closed_yes += 1;
                } else {
                    closed_no += 1;
                }
                let mentioned = kinds_mentioned(&q);
                let asked_side = ["left", "right"].into_iter().find(|s| q.contains(s));
                if let Some(k) = mentioned.iter().next().filter(|_| asked_side.is_none()) {
                    assert_eq!(yes, finding == Some(*k), "{q} -> {a} ({finding:?})");
                } else if let Some(s) = asked_side {
                    assert_eq!(yes, side == Some(s), "{q} -> {a} ({side:?})");
                } else if q.contains("normal") && !q.contains("abnormal") {
                    assert_eq!(yes, finding.is_none(), "{q} -> {a}");
                } else if q.contains("abnormal") {
                    assert_eq!(yes, finding.is_some(), "{q} -> {a}");
                } else if q.contains("clear") {
                    assert_eq!(yes, finding.is_none(), "{q} -> {a}");
                } else if q.contains("ct scan") || q.contains("mri") {
                    assert!(!yes);
                } else {
                    panic!("unrecognised closed question: {q}");
                }
            } else {
                open_n += 1;
                match r["content_type"].as_str().unwrap() {
                    "Abnormality" => {
                        let want = finding.map(|f| f.replace('_', " "));
                        assert_eq!(a, want.as_deref().unwrap_or("no abnormality"), "{q}");
                    }
                    "Position" => {
                        if q.contains("which lung") {
                            assert_eq!(Some(a.to_string()), side.map(|s| format!("{s} lung")));
                        } else if q.contains("which side") || q.contains("on which side") {
                            assert_eq!(Some(a), side);
                        } else {
                            assert_eq!(Some(a), t["location"].as_str(), "{q}");
                            if let (Some(s), Some(l)) = (side, t["lobe"].as_str()) {
                                assert_eq!(a, format!("{s} {l} lobe"));
                            }
                        }
                    }
                    "Size" => assert_eq!(Some(a), t["size"].as_str(), "{q}"),
                    "Modality" => assert_eq!(a, "X-Ray"),
                    other => panic!("unexpected open content type {other}: {q}"),
                }
            }
        }
    }
    assert!(closed_yes > 20 && closed_no > 20 && open_n > 40);
    // Yes and No roughly balanced.
    let share = closed_yes as f64 / (closed_yes + closed_no) as f64;
    assert!((0.3..=0.7).contains(&share), "yes share {share}");
    assert!(
        phrasings.len() >= 40,
        "{} distinct questions",
        phrasings.len()
    );
}

#[test]
fn vocabulary_finding_terms_come_from_chexpert_phrases() {
    let dir = common::shared_dir().join("data/vocab/chexpert_phrases/mention");
    let mut phrases = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        phrases.extend(
            text.lines()
                .map(|l| l.trim().replace('_', " ").trim().to_lowercase())
                .filter(|l| l.len() >= 3),
        );
    }
    assert!(phrases.len() > 100, "{} phrases", phrases.len());
    let vocab = phantom::vocabulary();
    let cats: BTreeSet<&str> = vocab.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        cats,
        BTreeSet::from(["anatomy", "finding", "laterality", "size"])
    );
    let findings: Vec<&str> = vocab
        .iter()
        .filter(|(_, c)| c == "finding")
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(findings.len() >= 15);
    for term in findings {
        assert!(
            phrases.iter().any(|p| term.contains(p.as_str())),
            "finding term '{term}' matches no CheXpert mention phrase"
        );
    }
    let terms: BTreeSet<&str> = vocab.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(terms.len(), vocab.len(), "duplicate vocabulary terms");
    for t in [
        "left",
        "right",
        "upper lobe",
        "lower lobe",
        "small",
        "large",
    ] {
        assert!(terms.contains(t), "{t}");
    }
}

#[test]
fn preview_sheet_is_written() {
    let dir = shared_set();
    let img = image::open(dir.join("preview.png")).unwrap().to_rgb8();
    // 8 studies (6 kinds, a normal and a subtle one), 2 per row, 3 panels each.
    assert!(img.width() as usize > 6 * SIZE && img.height() as usize > 4 * SIZE);
    // Red mask overlays and coloured heatmaps: some strongly red pixels.
    let red = img
        .pixels()
        .filter(|p| p[0] > 150 && p[1] < 90 && p[2] < 90)
        .count();
    assert!(red > 500, "{red} red pixels");
}

#[test]
fn cli_generates_and_rejects_bad_sizes() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("phantom_cli");
    let _ = std::fs::remove_dir_all(&out);
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
            .args(["phantom", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--seed", "3", "--train", "3", "--test", "4", "--size", "64"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("test"), "{stdout}");
    let ann = read_json(&out.join("annotation.json"));
    assert_eq!(ann["train"].as_array().unwrap().len(), 3);
    assert_eq!(ann["test"].as_array().unwrap().len(), 4);
    let (w, h, _) = read_gray(&out.join("images/phantom_000000/0.png"));
    assert_eq!((w, h), (64, 64));
    let bad = run(&["--size", "8"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("size 8"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
