//! Random bytes and random mutations of real records fed to every loader and
//! to the image, `.npy` and mask readers: each returns Ok or an error, never panics.

mod common;

use std::path::Path;

use common::shared_dir;
use hdpo::data::image::decode_rgb;
use hdpo::data::pairs::read_pairs_with;
use hdpo::data::{load, DatasetFormat, LoadOptions};
use hdpo::heatmap::io::{parse_npy, read_heatmap, read_mask, MaskLabels};
use proptest::prelude::*;
use serde_json::{json, Value};

const CASES: u32 = 200;

/// The file each format reads, relative to the dataset root.
const FILES: [(DatasetFormat, &str); 6] = [
    (DatasetFormat::VqaRad, "VQA_RAD Dataset Public.json"),
    (DatasetFormat::Slake, "test.json"),
    (DatasetFormat::Phantom, "train.json"),
    (DatasetFormat::R2gen, "annotation.json"),
    (DatasetFormat::PhantomReport, "annotation.json"),
    (DatasetFormat::Rule, "x_test.jsonl"),
];

fn load_all(dir: &Path, format: DatasetFormat) {
    for skip_bad in [false, true] {
        for require_images in [false, true] {
            let o = LoadOptions {
                skip_bad,
                require_images,
                ..LoadOptions::default()
            };
            let _ = load(format, dir, &o);
        }
    }
}

fn first_records(path: &str, n: usize) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(shared_dir().join("data").join(path)).unwrap())
            .unwrap();
    match v {
        Value::Array(a) => a.into_iter().take(n).collect(),
        Value::Object(o) => o["train"].as_array().unwrap()[..n].to_vec(),
        _ => unreachable!(),
    }
}

/// A JSON value of a random kind, including hostile paths.
fn random_value(k: u8, s: &str) -> Value {
    match k % 9 {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-3.5e300),
        3 => json!(s),
        4 => json!("../../../etc/passwd"),
        5 => json!("/abs/path.png"),
        6 => json!([s, 1, null]),
        7 => json!({"k": s}),
        _ => json!(u64::MAX),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_any_loader(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        for (format, file) in FILES {
            std::fs::write(dir.path().join(file), &bytes).unwrap();
            load_all(dir.path(), format);
        }
        let p = dir.path().join("pairs.jsonl");
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_pairs_with(&p, false);
        let _ = read_pairs_with(&p, true);
    }

    #[test]
    fn random_bytes_never_panic_binary_readers(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let _ = decode_rgb(&bytes);
        let _ = parse_npy(&bytes);
        // The same bytes behind valid magic numbers reach the parsers' inner code.
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&bytes);
        let _ = parse_npy(&npy);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&bytes);
        let _ = decode_rgb(&png);
        for (name, b) in [("a.png", &png), ("b.png", &bytes)] {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            let _ = read_mask(&p, &MaskLabels::AnyNonZero, None);
            let _ = read_mask(&p, &MaskLabels::Values(vec![1]), Some((4, 4)));
            let _ = read_heatmap(&p, None);
        }
        let p = dir.path().join("h.npy");
        std::fs::write(&p, &npy).unwrap();
        let _ = read_heatmap(&p, Some((2, 2)));
    }

    #[test]
    fn mutated_real_records_never_panic(
        which in 0usize..3,
        rec in 0usize..6,
        field in 0usize..20,
        kind in any::<u8>(),
        text in "\\PC{0,12}",
        delete in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (format, file, mut records) = match which {
            0 => (DatasetFormat::VqaRad, "VQA_RAD Dataset Public.json", first_records("vqa_rad/VQA_RAD Dataset Public.json", 6)),
            1 => (DatasetFormat::Slake, "test.json", first_records("slake/test.json", 6)),
            _ => (DatasetFormat::R2gen, "annotation.json", first_records("iu_xray/annotation.json", 6)),
        };
        if let Some(Value::Object(o)) = records.get_mut(rec) {
            let keys: Vec<String> = o.keys().cloned().collect();
            let key = keys[field % keys.len()].clone();
            if delete {
                o.remove(&key);
            } else {
                o.insert(key, random_value(kind, &text));
            }
        }
        let body = if format == DatasetFormat::R2gen {
            json!({"train": records, "val": [], "test": []})
        } else {
            Value::Array(records)
        };
        std::fs::write(dir.path().join(file), body.to_string()).unwrap();
        load_all(dir.path(), format);
        let skipped = load(format, dir.path(), &LoadOptions { skip_bad: true, ..LoadOptions::default() }).unwrap();
        prop_assert!(skipped.samples.len() + skipped.skipped.len() <= 6);
        for e in &skipped.skipped {
            prop_assert!(e.to_string().contains(file));
        }
    }

    #[test]
    fn mutated_pair_records_never_panic(
        layout in 0usize..2,
        field in 0usize..20,
        kind in any::<u8>(),
        text in "\\PC{0,12}",
        delete in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = if layout == 0 {
            json!({"id": "p1", "kind": "mis", "prompt": "Is there an effusion?", "chosen": "Left.",
                "rejected": "Right.", "chosen_image": "a.png", "rejected_image": "b.png", "weight": 1.0,
                "delta": ["left", "right"], "similarities": [0.1, 0.2], "extra": {"x": 1}})
        } else {
            json!({"id": "r1", "image": "CXR1/0.png",
                "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
                "rejected_conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "B"}]})
        };
        let o = rec.as_object_mut().unwrap();
        let keys: Vec<String> = o.keys().cloned().collect();
        let key = keys[field % keys.len()].clone();
        if delete {
            o.remove(&key);
        } else {
            o.insert(key, random_value(kind, &text));
        }
        let p = dir.path().join("pairs.jsonl");
        std::fs::write(&p, format!("{rec}\n")).unwrap();
        let (pairs, skipped) = read_pairs_with(&p, true).unwrap();
        prop_assert_eq!(pairs.len() + skipped.len(), 1);
        for pr in &pairs {
            let _ = pr.resolve_images(&p);
        }
    }

    /// Real PNG and JPEG files cut at any point: an error (naming nothing half-decoded), never
    /// a panic, and never a picture when a JPEG lost its end (the decoder alone would fill the
    /// missing scan with grey).
    #[test]
    fn truncated_real_images_are_errors_not_panics(which in 0usize..2, cut in 0.0f64..1.0) {
        let file = if which == 0 {
            shared_dir().join("fixtures/models/tiny_llava/images/img0.png")
        } else {
            first_jpeg()
        };
        let bytes = std::fs::read(&file).unwrap();
        let n = ((bytes.len() as f64) * cut) as usize;
        let r = decode_rgb(&bytes[..n]);
        // Cut before the end-of-image marker completes: no picture may come out.
        let eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap();
        if which == 1 && n < eoi + 2 {
            prop_assert!(r.is_err(), "{} cut at {n} of {} decoded", file.display(), bytes.len());
        }
    }

    /// Garbled safetensors headers and prediction rows: errors, never panics.
    #[test]
    fn garbled_safetensors_and_prediction_rows_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        header_len in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut st = header_len.to_le_bytes().to_vec();
        st.extend_from_slice(&bytes);
        std::fs::write(dir.path().join("model.safetensors"), &st).unwrap();
        let _ = hdpo::model::checkpoint::Checkpoint::open(dir.path());
        let mut json_header = (bytes.len() as u64).to_le_bytes().to_vec();
        json_header.extend_from_slice(&bytes);
        std::fs::write(dir.path().join("model.safetensors"), &json_header).unwrap();
        let _ = hdpo::model::checkpoint::Checkpoint::open(dir.path());
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, &bytes).unwrap();
        let _ = hdpo::eval::metrics::read_vqa_rows(&p);
        let _ = hdpo::eval::metrics::read_report_rows(&p);
    }
}

/// A real VQA-RAD JPEG of the shared data.
fn first_jpeg() -> std::path::PathBuf {
    let dir = shared_dir().join("data/vqa_rad/images");
    let mut jpgs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    jpgs.sort();
    jpgs.into_iter().next().unwrap()
}
