//! Dataset loaders, images, heatmap / mask I/O and `hdpo data inspect`,
//! tested on the real files in `../shared/data` and the model fixtures.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::shared_dir;
use hdpo::data::image::{decode_rgb, load_rgb, Preprocess, Resample, ResizeMode};
use hdpo::data::inspect::{inspect, lesion_share, InspectOptions};
use hdpo::data::pairs::{read_pairs, read_pairs_with, write_pairs, write_rule_pairs, PairRecord};
use hdpo::data::{detect_format, load, AnswerType, DatasetFormat, LoadOptions, Split};
use hdpo::heatmap::io::{
    is_subtle, read_daug, read_heatmap, read_mask, read_npy, write_npy, MaskLabels,
};
use hdpo::heatmap::Heatmap;
use serde_json::{json, Value};

fn data(p: &str) -> PathBuf {
    shared_dir().join("data").join(p)
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

fn count(s: &[hdpo::data::Sample], split: Split, t: AnswerType) -> usize {
    s.iter()
        .filter(|x| x.split == split && x.answer_type == t)
        .count()
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------- real data

#[test]
fn vqa_rad_full_release_counts_and_quirks() {
    let root = data("vqa_rad");
    assert_eq!(detect_format(&root).unwrap(), DatasetFormat::VqaRad);
    let out = load(DatasetFormat::VqaRad, &root, &opts()).unwrap();
    let s = &out.samples;
    assert_eq!(s.len(), 2248);
    assert!(out.skipped.is_empty());
    assert_eq!(count(s, Split::Test, AnswerType::Closed), 272);
    assert_eq!(count(s, Split::Test, AnswerType::Open), 179);
    assert_eq!(s.iter().filter(|x| x.split == Split::Train).count(), 1797);
    // qid "0" (a string) and 1 (an int) both become ids.
    assert_eq!(s[0].id, "0");
    assert_eq!(s[1].id, "1");
    assert_eq!(
        s[0].question.as_deref(),
        Some("Are regions of the brain infarcted?")
    );
    assert_eq!(s[0].meta["image_organ"], "HEAD");
    assert!(s[0].images[0].ends_with("images/synpic54610.jpg"));
    // Integer answers (record 1511 answers 4) and "CLOSED " with a trailing space.
    assert_eq!(s[1511].answer, "4");
    assert_eq!(s[2156].answer_type, AnswerType::Closed);
    // "NULL" strings are dropped, compound question types split.
    assert!(!s[0].meta.contains_key("question_rephrase"));
    assert_eq!(s[20].meta["question_types"], json!(["SIZE", "PRES"]));
    // Only the split asked for.
    let test = load(
        DatasetFormat::VqaRad,
        &root,
        &LoadOptions {
            split: Some(Split::Test),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(test.samples.len(), 451);
    let distinct: std::collections::BTreeSet<_> =
        test.samples.iter().map(|x| x.images[0].clone()).collect();
    assert_eq!(distinct.len(), 203);
}

#[test]
fn vqa_rad_require_images_names_the_record_and_skip_bad_counts() {
    let root = data("vqa_rad");
    let strict = LoadOptions {
        require_images: true,
        ..opts()
    };
    let e = err_text(load(DatasetFormat::VqaRad, &root, &strict));
    // The first record whose image is not among the 30 shared images.
    let recs = vqa_rad_records(2248);
    let first_missing = recs
        .iter()
        .position(|r| {
            !root
                .join("images")
                .join(r["image_name"].as_str().unwrap())
                .is_file()
        })
        .unwrap();
    let id = recs[first_missing]["qid"].to_string().replace('"', "");
    assert!(e.contains("VQA_RAD Dataset Public.json"), "{e}");
    assert!(
        e.contains(&format!("record {first_missing} (id '{id}')")) && e.contains("image_name"),
        "{e}"
    );
    assert!(e.contains("does not exist"), "{e}");
    let lenient = LoadOptions {
        require_images: true,
        skip_bad: true,
        ..opts()
    };
    let out = load(DatasetFormat::VqaRad, &root, &lenient).unwrap();
    assert_eq!(out.samples.len() + out.skipped.len(), 2248);
    assert!(!out.samples.is_empty());
    assert!(out.samples.iter().all(|s| s.images[0].is_file()));
    assert!(out
        .skipped
        .iter()
        .all(|e| e.field.as_deref() == Some("image_name")));
}

#[test]
fn slake_test_english_counts_and_meta() {
    let root = data("slake");
    assert_eq!(detect_format(&root).unwrap(), DatasetFormat::Slake);
    let out = load(DatasetFormat::Slake, &root, &opts()).unwrap();
    let s = &out.samples;
    assert_eq!(s.len(), 1061);
    assert_eq!(count(s, Split::Test, AnswerType::Open), 645);
    assert_eq!(count(s, Split::Test, AnswerType::Closed), 416);
    assert!(s.iter().all(|x| x.dataset == "slake" && x.mask.is_none()));
    let m = &s[0].meta;
    for k in [
        "modality",
        "location",
        "content_type",
        "base_type",
        "triple",
        "qid",
        "img_id",
    ] {
        assert!(m.contains_key(k), "meta lacks {k}: {m:?}");
    }
    assert!(s[0].images[0].ends_with("imgs/xmlab102/source.jpg"));
    let all = load(
        DatasetFormat::Slake,
        &root,
        &LoadOptions {
            lang: "all".into(),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(all.samples.len(), 2094);
    let zh = load(
        DatasetFormat::Slake,
        &root,
        &LoadOptions {
            lang: "zh".into(),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(zh.samples.len(), 1033);
    // The train split file is not there: asking for it is an error naming the file.
    let e = err_text(load(
        DatasetFormat::Slake,
        &root,
        &LoadOptions {
            split: Some(Split::Train),
            ..opts()
        },
    ));
    assert!(e.contains("train.json"), "{e}");
}

#[test]
fn iu_xray_annotation_counts() {
    let root = data("iu_xray");
    assert_eq!(detect_format(&root).unwrap(), DatasetFormat::R2gen);
    let out = load(DatasetFormat::R2gen, &root, &opts()).unwrap();
    let s = &out.samples;
    assert_eq!(count(s, Split::Train, AnswerType::Report), 2069);
    assert_eq!(count(s, Split::Val, AnswerType::Report), 296);
    assert_eq!(count(s, Split::Test, AnswerType::Report), 590);
    assert!(s
        .iter()
        .all(|x| x.images.len() == 2 && x.dataset == "iu-xray"));
    let first_test = s.iter().find(|x| x.split == Split::Test).unwrap();
    assert_eq!(first_test.id, "CXR3030_IM-1405");
    assert!(first_test.images[1].ends_with("images/CXR3030_IM-1405/1.png"));
    assert!(first_test
        .answer
        .starts_with("Normal cardiomediastinal silhouette."));
    assert!(first_test.question.is_none());
    // The file itself is accepted as the dataset path.
    let val = load(
        DatasetFormat::R2gen,
        &root.join("annotation.json"),
        &LoadOptions {
            split: Some(Split::Val),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(val.samples.len(), 296);
}

#[test]
fn mimic_style_annotation_is_named_mimic() {
    let dir = tempfile::tempdir().unwrap();
    let ann = json!({"train": [{"id": "d1", "study_id": 50874322, "subject_id": 12171843,
        "report": "impression: no acute process.", "image_path": ["p12/p12171843/s50874322/d1.jpg"],
        "split": "train"}], "val": [], "test": []});
    std::fs::write(dir.path().join("annotation.json"), ann.to_string()).unwrap();
    let out = load(DatasetFormat::R2gen, dir.path(), &opts()).unwrap();
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].dataset, "mimic-cxr");
    assert_eq!(out.samples[0].meta["study_id"], 50874322);
}

#[test]
fn rule_jsonl_answers_are_normalised() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    let lines = [
        json!({"question_id": 1, "question": "Is there a pleural effusion?", "answer": "Yes.", "image": "CXR1/0.png", "text": "t", "report": "r"}),
        json!({"question_id": 2, "question": "Is the heart enlarged?", "answer": "- No.", "image": "CXR1/0.png"}),
        json!({"question_id": "q3", "question": "Which lung?", "answer": "Left lung.", "image": "CXR2/0.png"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("iuxray_test.jsonl"), text).unwrap();
    assert_eq!(detect_format(dir.path()).unwrap(), DatasetFormat::Rule);
    let out = load(DatasetFormat::Rule, dir.path(), &opts()).unwrap();
    let s = &out.samples;
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|x| x.split == Split::Test));
    assert_eq!(
        (s[0].answer.as_str(), s[0].answer_type),
        ("yes", AnswerType::Closed)
    );
    assert_eq!(
        (s[1].answer.as_str(), s[1].answer_type),
        ("no", AnswerType::Closed)
    );
    assert_eq!(
        (s[2].answer.as_str(), s[2].answer_type),
        ("Left lung", AnswerType::Open)
    );
    assert_eq!(s[1].meta["answer_raw"], "- No.");
    assert_eq!(s[0].meta["report"], "r");
    assert!(s[0].images[0].ends_with("images/CXR1/0.png"));
}

// ---------------------------------------------------------------- phantom-like layout

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

/// A two-study phantom-like dataset: one subtle lesion (4 of 100 px), one
/// normal study (empty mask), one large lesion in the test split.
fn phantom_like(dir: &Path) {
    let rec = |id: &str, q: &str, a: &str, t: &str, subtle: bool| {
        json!({"qid": format!("{id}_q"), "img_name": format!("{id}/source.png"), "question": q,
            "answer": a, "q_lang": "en", "answer_type": t, "finding": "nodule", "side": "left",
            "lobe": "upper", "lesion_area": 0.04, "subtle": subtle, "study_id": id})
    };
    std::fs::write(
        dir.join("train.json"),
        json!([
            rec(
                "phantom_000000",
                "Is there a nodule?",
                "Yes",
                "CLOSED",
                true
            ),
            rec(
                "phantom_000001",
                "Is there a nodule?",
                "No",
                "CLOSED",
                false
            )
        ])
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("test.json"),
        json!([rec(
            "phantom_000002",
            "Where is the lesion?",
            "left upper lobe",
            "OPEN",
            false
        )])
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("phantom.json"), "{}").unwrap();
    for (id, area) in [
        ("phantom_000000", 2u32),
        ("phantom_000001", 0),
        ("phantom_000002", 5),
    ] {
        gray_png(
            &dir.join(format!("imgs/{id}/source.png")),
            10,
            10,
            |x, y| (x * 20 + y) as u8,
        );
        gray_png(&dir.join(format!("imgs/{id}/mask.png")), 10, 10, |x, y| {
            if x < area && y < area {
                255
            } else {
                0
            }
        });
        gray_png(&dir.join(format!("images/{id}/0.png")), 10, 10, |_, _| 7);
    }
    let ann = json!({
        "train": [{"id": "phantom_000000", "report": "Small nodule in the left upper lobe.", "image_path": ["phantom_000000/0.png"], "split": "train"},
                  {"id": "phantom_000001", "report": "No acute findings.", "image_path": ["phantom_000001/0.png"], "split": "train"}],
        "val": [],
        "test": [{"id": "phantom_000002", "report": "Nodule.", "image_path": ["phantom_000002/0.png"], "split": "test"}]
    });
    std::fs::write(dir.join("annotation.json"), ann.to_string()).unwrap();
    std::fs::create_dir_all(dir.join("heatmaps")).unwrap();
}

#[test]
fn phantom_layout_loads_with_masks_extra_fields_and_inspects() {
    let dir = tempfile::tempdir().unwrap();
    phantom_like(dir.path());
    assert_eq!(detect_format(dir.path()).unwrap(), DatasetFormat::Phantom);
    let strict = LoadOptions {
        require_images: true,
        ..opts()
    };
    let qa = load(DatasetFormat::Phantom, dir.path(), &strict).unwrap();
    assert_eq!(qa.samples.len(), 3);
    let s0 = &qa.samples[0];
    assert_eq!(s0.dataset, "phantom");
    assert_eq!(s0.id, "phantom_000000_q");
    assert!(s0
        .mask
        .as_ref()
        .unwrap()
        .ends_with("imgs/phantom_000000/mask.png"));
    for k in [
        "finding",
        "side",
        "lobe",
        "lesion_area",
        "subtle",
        "study_id",
    ] {
        assert!(s0.meta.contains_key(k), "{k}");
    }
    let mask = read_mask(
        s0.mask.as_ref().unwrap(),
        &MaskLabels::AnyNonZero,
        Some((10, 10)),
    )
    .unwrap();
    assert!((mask.area_share() - 0.04).abs() < 1e-12);
    assert!(is_subtle(mask.area_share(), 0.05));
    assert_eq!(lesion_share(s0).unwrap(), Some(mask.area_share()));
    assert_eq!(lesion_share(&qa.samples[1]).unwrap(), Some(0.0));
    // Reports, with the masks attached.
    let rep = load(DatasetFormat::PhantomReport, dir.path(), &strict).unwrap();
    assert_eq!(rep.samples.len(), 3);
    assert!(rep
        .samples
        .iter()
        .all(|s| s.mask.is_some() && s.dataset == "phantom"));

    let r = inspect(dir.path(), &InspectOptions::default()).unwrap();
    assert_eq!(r.format, DatasetFormat::Phantom);
    assert_eq!(r.samples, 3);
    assert_eq!(
        (r.images.referenced, r.images.found, r.images.missing),
        (3, 3, 0)
    );
    assert_eq!(r.masks.lesion_masks, 3);
    assert_eq!((r.masks.normal, r.masks.subtle, r.masks.large), (1, 1, 1));
    let train = r.splits.iter().find(|c| c.split == Split::Train).unwrap();
    assert_eq!((train.total, train.closed, train.subtle), (2, 2, 1));
    let table = r.to_table();
    assert!(table.contains("1 subtle"), "{table}");
    // A larger threshold makes the 25% lesion subtle too.
    let r2 = inspect(
        dir.path(),
        &InspectOptions {
            subtle_threshold: 0.3,
            ..InspectOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r2.masks.subtle, 2);
}

#[test]
fn inspect_vqa_rad_reports_found_and_missing_images() {
    let r = inspect(&data("vqa_rad"), &InspectOptions::default()).unwrap();
    assert_eq!(r.samples, 2248);
    assert_eq!(r.images.referenced, 314);
    assert_eq!(r.images.found, 30);
    assert_eq!(r.images.missing, 284);
    assert_eq!(r.masks.samples_with_mask, 0);
    let test = r.splits.iter().find(|c| c.split == Split::Test).unwrap();
    assert_eq!((test.total, test.closed, test.open), (451, 272, 179));
}

#[test]
fn cli_data_inspect_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["data", "inspect", "--json"])
        .arg(data("slake"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "slake");
    assert_eq!(v["samples"], 1061);
    assert_eq!(v["splits"][0]["open"], 645);
    // The English questions are about 96 of the 180 test images; none is shared.
    assert_eq!(v["images"]["referenced"], 96);
    assert_eq!(v["images"]["missing"], 96);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(["data", "inspect", "--format", "r2gen"])
        .arg(data("iu_xray"))
        .output()
        .unwrap();
    assert!(table.status.success());
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("2069") && t.contains("296") && t.contains("590"),
        "{t}"
    );
}

// ---------------------------------------------------------------- bad input

/// The first `n` VQA-RAD records as JSON values.
fn vqa_rad_records(n: usize) -> Vec<Value> {
    let v: Value = serde_json::from_slice(
        &std::fs::read(data("vqa_rad/VQA_RAD Dataset Public.json")).unwrap(),
    )
    .unwrap();
    v.as_array().unwrap()[..n].to_vec()
}

fn write_vqa_rad(dir: &Path, recs: &[Value]) -> PathBuf {
    let p = dir.join("VQA_RAD Dataset Public.json");
    std::fs::write(&p, serde_json::to_string(recs).unwrap()).unwrap();
    p
}

#[test]
fn truncated_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("vqa_rad/VQA_RAD Dataset Public.json")).unwrap();
    std::fs::write(
        dir.path().join("VQA_RAD Dataset Public.json"),
        &full[..full.len() / 2],
    )
    .unwrap();
    let e = err_text(load(DatasetFormat::VqaRad, dir.path(), &opts()));
    assert!(
        e.contains("VQA_RAD Dataset Public.json") && e.contains("not valid JSON"),
        "{e}"
    );
    assert!(e.contains("(line ") && e.contains("column"), "{e}");
    let full = std::fs::read(data("iu_xray/annotation.json")).unwrap();
    std::fs::write(dir.path().join("annotation.json"), &full[..1000]).unwrap();
    let e = err_text(load(DatasetFormat::R2gen, dir.path(), &opts()));
    assert!(
        e.contains("annotation.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn missing_field_and_wrong_type_name_record_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut recs = vqa_rad_records(8);
    recs[5].as_object_mut().unwrap().remove("question");
    write_vqa_rad(dir.path(), &recs);
    let e = err_text(load(DatasetFormat::VqaRad, dir.path(), &opts()));
    assert!(
        e.contains(
            "VQA_RAD Dataset Public.json: record 5 (id '5'), field 'question': missing field"
        ),
        "{e}"
    );

    let mut recs = vqa_rad_records(8);
    recs[3]["answer_type"] = json!(3);
    recs[6]["qid"] = json!([1]);
    write_vqa_rad(dir.path(), &recs);
    let e = err_text(load(DatasetFormat::VqaRad, dir.path(), &opts()));
    assert!(
        e.contains("record 3 (id '3'), field 'answer_type': expected a string, found a number"),
        "{e}"
    );
    let out = load(
        DatasetFormat::VqaRad,
        dir.path(),
        &LoadOptions {
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(out.samples.len(), 6);
    assert_eq!(out.skipped.len(), 2);
    assert_eq!(out.skipped[1].index, Some(6));
    assert_eq!(out.skipped[1].field.as_deref(), Some("qid"));

    // R2Gen: image_path as a string, and a record that is not an object.
    let ann = json!({"train": [{"id": "a", "report": "r", "image_path": "a/0.png"}, 7], "val": [], "test": []});
    std::fs::write(dir.path().join("annotation.json"), ann.to_string()).unwrap();
    let out = load(
        DatasetFormat::R2gen,
        dir.path(),
        &LoadOptions {
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(out.skipped.len(), 2);
    let e0 = out.skipped[0].to_string();
    assert!(
        e0.contains("record 0 (id 'a'), field 'image_path': expected an array"),
        "{e0}"
    );
    assert!(out.skipped[1]
        .to_string()
        .contains("record 1: expected a JSON object"));

    // SLAKE: answer_type unknown.
    let s = json!([{"qid": 9, "img_name": "x/source.jpg", "question": "q", "answer": "a", "q_lang": "en", "answer_type": "MAYBE"}]);
    std::fs::write(dir.path().join("test.json"), s.to_string()).unwrap();
    let e = err_text(load(DatasetFormat::Slake, dir.path(), &opts()));
    assert!(
        e.contains(
            "test.json: record 0 (id '9'), field 'answer_type': unknown answer_type 'MAYBE'"
        ),
        "{e}"
    );

    // RULE: a broken line names the line.
    std::fs::write(dir.path().join("x_test.jsonl"), "{\"question_id\": 1,\n").unwrap();
    let e = err_text(load(
        DatasetFormat::Rule,
        &dir.path().join("x_test.jsonl"),
        &opts(),
    ));
    assert!(
        e.contains("x_test.jsonl: record 0") && e.contains("line 1 is not valid JSON"),
        "{e}"
    );
}

#[test]
fn path_traversal_is_rejected_with_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("images")).unwrap();
    for (bad, what) in [("../../etc/passwd", ".."), ("/etc/passwd", "absolute")] {
        let mut recs = vqa_rad_records(3);
        recs[2]["image_name"] = json!(bad);
        write_vqa_rad(&root, &recs);
        let e = err_text(load(DatasetFormat::VqaRad, &root, &opts()));
        assert!(
            e.contains("record 2 (id '2')") && e.contains("image_name"),
            "{e}"
        );
        assert!(e.contains(what), "{e}");
    }
    #[cfg(unix)]
    {
        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.png"), root.join("images/link.png"))
            .unwrap();
        let mut recs = vqa_rad_records(3);
        recs[1]["image_name"] = json!("link.png");
        write_vqa_rad(&root, &recs);
        let e = err_text(load(DatasetFormat::VqaRad, &root, &opts()));
        assert!(
            e.contains("record 1 (id '1')") && e.contains("outside the dataset root"),
            "{e}"
        );
    }
    // R2Gen and SLAKE paths go through the same check.
    let ann =
        json!({"test": [{"id": "s1", "report": "r", "image_path": ["ok/0.png", "../x.png"]}]});
    std::fs::write(root.join("annotation.json"), ann.to_string()).unwrap();
    let e = err_text(load(DatasetFormat::R2gen, &root, &opts()));
    assert!(
        e.contains("record 0 (id 's1')") && e.contains("image_path[1]"),
        "{e}"
    );
    let s = json!([{"qid": 4, "img_name": "../../x/source.jpg", "question": "q", "answer": "a", "q_lang": "en", "answer_type": "OPEN"}]);
    std::fs::write(root.join("test.json"), s.to_string()).unwrap();
    let e = err_text(load(DatasetFormat::Slake, &root, &opts()));
    assert!(
        e.contains("record 0 (id '4')") && e.contains("img_name"),
        "{e}"
    );
}

#[test]
fn corrupt_images_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A real JPEG cut short and a PNG with a broken body.
    let jpg = std::fs::read(data("vqa_rad/images/synpic16174.jpg")).unwrap();
    let bad_jpg = dir.path().join("cut.jpg");
    std::fs::write(&bad_jpg, &jpg[..jpg.len() / 3]).unwrap();
    let e = err_text(load_rgb(&bad_jpg));
    assert!(e.contains("cut.jpg"), "{e}");
    let png =
        std::fs::read(shared_dir().join("fixtures/models/tiny_llava/images/img0.png")).unwrap();
    let mut broken = png.clone();
    for b in broken.iter_mut().skip(60).take(200) {
        *b ^= 0x5a;
    }
    let bad_png = dir.path().join("broken.png");
    std::fs::write(&bad_png, &broken).unwrap();
    let e = err_text(load_rgb(&bad_png));
    assert!(e.contains("broken.png"), "{e}");
    let e = err_text(read_mask(&bad_png, &MaskLabels::AnyNonZero, None));
    assert!(e.contains("broken.png"), "{e}");
    let e = err_text(read_heatmap(&bad_png, None));
    assert!(e.contains("broken.png"), "{e}");
    assert!(decode_rgb(b"GIF89a....").is_err());
    // Every shared VQA-RAD JPEG decodes (the truncation check passes real files).
    let mut n = 0;
    for e in std::fs::read_dir(data("vqa_rad/images")).unwrap() {
        let img = load_rgb(&e.unwrap().path()).unwrap();
        assert!(img.width() > 100 && img.height() > 100);
        n += 1;
    }
    assert_eq!(n, 30);
}

// ---------------------------------------------------------------- images

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn clip_preprocessing_matches_tiny_llava_reference() {
    let fx = shared_dir().join("fixtures/models/tiny_llava");
    let pp = Preprocess::from_hf_config(&fx.join("processor_config.json")).unwrap();
    assert_eq!(pp.mode, ResizeMode::CenterCrop);
    assert_eq!((pp.size, pp.shortest_edge), (32, 32));
    assert_eq!(pp.resample, Resample::Bicubic);
    let refs =
        candle_core::safetensors::load(fx.join("reference.safetensors"), &Device::Cpu).unwrap();
    let prompt = refs["prompt_pixel_values"].get(0).unwrap();
    let ours = pp.load(&fx.join("images/img0.png"), &Device::Cpu).unwrap();
    assert_eq!(ours.dims(), &[3, 32, 32]);
    let d = max_abs_diff(&ours, &prompt);
    assert!(d <= 1e-6, "max diff {d}");
    let dpo = &refs["dpo_pixel_values"];
    for i in 0..5 {
        let ours = pp
            .load(&fx.join(format!("images/img{i}.png")), &Device::Cpu)
            .unwrap();
        let d = max_abs_diff(&ours, &dpo.get(i).unwrap());
        assert!(d <= 1e-6, "image {i}: max diff {d}");
    }
}

#[test]
fn vit_preprocessing_matches_tiny_vit_reference() {
    let fx = shared_dir().join("fixtures/models/tiny_vit");
    let pp = Preprocess::from_hf_config(&fx.join("preprocessor_config.json")).unwrap();
    assert_eq!(pp.mode, ResizeMode::Resize);
    assert_eq!(pp.mean, [0.5; 3]);
    assert_eq!(pp.resample, Resample::Bilinear);
    let refs =
        candle_core::safetensors::load(fx.join("reference.safetensors"), &Device::Cpu).unwrap();
    let pv = &refs["pixel_values"];
    for i in 0..2 {
        let ours = pp
            .load(&fx.join(format!("images/img{i}.png")), &Device::Cpu)
            .unwrap();
        let d = max_abs_diff(&ours, &pv.get(i).unwrap());
        assert!(d <= 1e-6, "image {i}: max diff {d}");
    }
}

#[test]
fn grayscale_jpeg_and_pad_square_preprocessing() {
    let img = load_rgb(&data("vqa_rad/images/synpic16174.jpg")).unwrap();
    // Grayscale radiographs become three equal channels.
    let p = img.get_pixel(img.width() / 2, img.height() / 2);
    assert_eq!(p.0[0], p.0[1]);
    let clip = Preprocess::clip(64).tensor(&img, &Device::Cpu).unwrap();
    assert_eq!(clip.dims(), &[3, 64, 64]);
    // PadSquare on a wide image: the top rows are the mean colour, which
    // normalises to (int(mean*255)/255 - mean)/std, slightly below 0.
    let wide = image::RgbImage::from_pixel(20, 10, image::Rgb([255, 255, 255]));
    let pad = Preprocess::llava_pad(20);
    let t = pad.tensor(&wide, &Device::Cpu).unwrap();
    let v = t
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let expect = ((122.0 / 255.0) - 0.481_454_66f64) / 0.268_629_54;
    assert!((f64::from(v) - expect).abs() < 1e-6, "{v} vs {expect}");
    let mid = t
        .get(0)
        .unwrap()
        .get(10)
        .unwrap()
        .get(10)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let white = (1.0 - 0.481_454_66f64) / 0.268_629_54;
    assert!((f64::from(mid) - white).abs() < 1e-5, "{mid} vs {white}");
}

// ---------------------------------------------------------------- heatmaps and masks

fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_heatmaps_f32_f64_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img7_effusion.npy");
    std::fs::write(
        &p,
        npy_bytes(
            "<f8",
            "(2, 3)",
            &f64_bytes(&[0.0, 0.5, 1.0, 2.0, 0.25, 0.125]),
        ),
    )
    .unwrap();
    let h = read_npy(&p).unwrap();
    assert_eq!((h.height, h.width), (2, 3));
    assert_eq!(h.at(1, 0), 2.0);
    assert_eq!(h.at(0, 2), 1.0);

    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "nan.npy",
            npy_bytes("<f8", "(1, 2)", &f64_bytes(&[0.5, f64::NAN])),
            "NaN",
        ),
        (
            "rank3.npy",
            npy_bytes("<f4", "(1, 2, 2)", &[0u8; 16]),
            "2-D",
        ),
        ("rank1.npy", npy_bytes("<f4", "(4,)", &[0u8; 16]), "2-D"),
        (
            "short.npy",
            npy_bytes("<f4", "(3, 3)", &[0u8; 20]),
            "truncated",
        ),
        ("int.npy", npy_bytes("<i4", "(2, 2)", &[0u8; 16]), "dtype"),
        ("junk.npy", b"not a numpy file at all".to_vec(), "magic"),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = err_text(read_heatmap(&p, None));
        assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
    }
    // Wrong size against the image.
    let h = Heatmap::new(4, 5, vec![0.1; 20]).unwrap();
    let p = dir.path().join("img7_nodule.npy");
    write_npy(&p, &h).unwrap();
    assert_eq!(read_heatmap(&p, Some((4, 5))).unwrap(), h);
    let e = err_text(read_heatmap(&p, Some((5, 4))));
    assert!(
        e.contains("img7_nodule.npy") && e.contains("does not match"),
        "{e}"
    );
}

#[test]
fn daug_lookup_by_class_and_max_over_classes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Heatmap::new(1, 3, vec![0.9, 0.0, 0.1]).unwrap();
    let b = Heatmap::new(1, 3, vec![0.2, 0.5, 0.3]).unwrap();
    write_npy(&dir.path().join("CXR1_nodule.npy"), &a).unwrap();
    write_npy(&dir.path().join("CXR1_effusion.npy"), &b).unwrap();
    write_npy(&dir.path().join("CXR10_nodule.npy"), &b).unwrap();
    assert_eq!(
        read_daug(dir.path(), "CXR1", Some("nodule"), None).unwrap(),
        a
    );
    let m = read_daug(dir.path(), "CXR1", None, None).unwrap();
    assert_eq!(m.data, vec![0.9, 0.5, 0.3]);
    let e = err_text(read_daug(dir.path(), "CXR2", None, None));
    assert!(e.contains("CXR2"), "{e}");
    let e = err_text(read_daug(dir.path(), "CXR1", Some("mass"), None));
    assert!(e.contains("CXR1_mass.npy"), "{e}");
    assert!(read_daug(dir.path(), "../x", Some("a"), None).is_err());
}

#[test]
fn png_heatmaps_8_and_16_bit_scale_to_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let p8 = dir.path().join("h8.png");
    image::GrayImage::from_raw(2, 1, vec![0, 255])
        .unwrap()
        .save(&p8)
        .unwrap();
    let h = read_heatmap(&p8, Some((1, 2))).unwrap();
    assert_eq!(h.data, vec![0.0, 1.0]);
    let p16 = dir.path().join("h16.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(2, 1, vec![65535, 13107])
        .unwrap()
        .save(&p16)
        .unwrap();
    let h = read_heatmap(&p16, None).unwrap();
    assert_eq!(h.data, vec![1.0, 0.2]);
}

#[test]
fn masks_binary_indexed_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    // Binary 0/255 mask: 3 of 12 pixels.
    let p = dir.path().join("mask.png");
    gray_png(&p, 4, 3, |x, y| if y == 1 && x < 3 { 255 } else { 0 });
    let m = read_mask(&p, &MaskLabels::AnyNonZero, Some((3, 4))).unwrap();
    assert!((m.area_share() - 0.25).abs() < 1e-12);
    assert!(m.data[4] && !m.data[3]);
    let e = err_text(read_mask(&p, &MaskLabels::AnyNonZero, Some((4, 4))));
    assert!(
        e.contains("mask.png") && e.contains("does not match"),
        "{e}"
    );
    // An indexed (palette) mask like SLAKE's: labels 0 background, 1 liver, 2 lesion.
    let ip = dir.path().join("indexed.png");
    {
        let f = std::fs::File::create(&ip).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 3, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![0, 0, 0, 200, 10, 10, 10, 200, 10]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1, 1, 2, 0, 1]).unwrap();
    }
    let lesion = read_mask(&ip, &MaskLabels::Values(vec![2]), None).unwrap();
    assert_eq!(lesion.data, vec![false, false, false, true, false, false]);
    let organs = read_mask(&ip, &MaskLabels::Values(vec![1, 2]), None).unwrap();
    assert_eq!(organs.data.iter().filter(|b| **b).count(), 4);
    let any = read_mask(&ip, &MaskLabels::AnyNonZero, None).unwrap();
    assert_eq!(any.data, organs.data);
}

// ---------------------------------------------------------------- pairs

fn pair(id: &str) -> PairRecord {
    PairRecord {
        id: id.into(),
        kind: "mis".into(),
        prompt: "Is there a pleural effusion?".into(),
        chosen: "Small left pleural effusion.".into(),
        rejected: "Small right pleural effusion.".into(),
        chosen_image: "images/a.png".into(),
        rejected_image: "images/a.png".into(),
        weight: 1.25,
        source_id: Some("s1".into()),
        keyword: Some("left".into()),
        replacement: Some("right".into()),
        delta: Some(vec!["left".into(), "right".into()]),
        similarities: Some(vec![0.5, 0.25]),
        mask_share: None,
        heatmap_source: Some("mask".into()),
        config_hash: None,
        extra: serde_json::Map::new(),
    }
}

#[test]
fn pair_records_round_trip_with_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pairs.jsonl");
    let mut a = pair("p1");
    a.extra
        .insert("reviewer".into(), json!({"name": "x", "score": 3}));
    let mut b = pair("p2");
    b.kind = "fp".into();
    b.rejected_image = "masked/p2.png".into();
    b.mask_share = Some(0.031);
    write_pairs(&p, &[a.clone(), b.clone()]).unwrap();
    let back = read_pairs(&p).unwrap();
    assert_eq!(back, vec![a.clone(), b.clone()]);
    let line0: Value =
        serde_json::from_str(std::fs::read_to_string(&p).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line0["reviewer"]["score"], 3);
    assert!(line0.get("mask_share").is_none());
    // Images resolve under the pair file's folder; escaping paths are refused.
    let (c, r) = back[1].resolve_images(&p).unwrap();
    assert_eq!(c, dir.path().join("images/a.png"));
    assert_eq!(r, dir.path().join("masked/p2.png"));
    let mut evil = pair("p3");
    evil.rejected_image = "../../etc/passwd".into();
    let e = err_text(evil.resolve_images(&p));
    assert!(
        e.contains("pair 'p3'") && e.contains("rejected_image"),
        "{e}"
    );

    // The RULE / MMed-RAG layout, as a JSON array and as JSONL.
    for name in ["rule.json", "rule.jsonl"] {
        let rp = dir.path().join(name);
        write_rule_pairs(&rp, &[a.clone(), b.clone()]).unwrap();
        let text = std::fs::read_to_string(&rp).unwrap();
        let first: Value = if name.ends_with(".json") {
            serde_json::from_str::<Value>(&text).unwrap()[0].clone()
        } else {
            serde_json::from_str(text.lines().next().unwrap()).unwrap()
        };
        assert_eq!(first["image"], "images/a.png");
        assert_eq!(
            first["conversations"][0]["value"],
            "<image>\nIs there a pleural effusion?"
        );
        assert_eq!(
            first["conversations"][1]["value"],
            "Small left pleural effusion."
        );
        assert_eq!(
            first["rejected_conversations"][1]["value"],
            "Small right pleural effusion."
        );
        assert!(first.get("rejected_image").is_none());
        assert_eq!(read_pairs(&rp).unwrap(), vec![a.clone(), b.clone()]);
    }
}

#[test]
fn rule_pairs_from_python_tools_and_bad_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dpo.json");
    let recs = json!([
        {"id": "17", "image": "CXR17/0.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe the findings."}, {"from": "gpt", "value": "No acute disease."}],
         "rejected_conversations": [{"from": "human", "value": "<image>\nDescribe the findings."}, {"from": "gpt", "value": "Large effusion."}]}
    ]);
    std::fs::write(&p, recs.to_string()).unwrap();
    let got = read_pairs(&p).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].prompt, "Describe the findings.");
    assert_eq!(got[0].chosen, "No acute disease.");
    assert_eq!(got[0].rejected, "Large effusion.");
    assert_eq!((got[0].kind.as_str(), got[0].weight), ("rule", 1.0));
    assert_eq!(got[0].rejected_image, "CXR17/0.png");

    let bad = dir.path().join("bad.jsonl");
    let mut missing = serde_json::to_value(pair("b1")).unwrap();
    missing.as_object_mut().unwrap().remove("chosen");
    let mut wrong = serde_json::to_value(pair("b2")).unwrap();
    wrong["weight"] = json!("heavy");
    let good = serde_json::to_value(pair("b3")).unwrap();
    std::fs::write(&bad, format!("{missing}\n{wrong}\n{good}\n{{\"id\": \n")).unwrap();
    let e = err_text(read_pairs(&bad));
    assert!(
        e.contains("bad.jsonl: record 0 (id 'b1'), field 'chosen': missing field"),
        "{e}"
    );
    let (ok, skipped) = read_pairs_with(&bad, true).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(skipped.len(), 3);
    assert_eq!(skipped[1].field.as_deref(), Some("weight"));
    assert_eq!(skipped[2].index, Some(3));
}

#[test]
fn official_folder_names_and_slake_organ_masks() {
    let dir = tempfile::tempdir().unwrap();
    // VQA-RAD's official image folder name.
    let recs = vqa_rad_records(2);
    write_vqa_rad(dir.path(), &recs);
    let img = recs[0]["image_name"].as_str().unwrap();
    std::fs::create_dir_all(dir.path().join("VQA_RAD Image Folder")).unwrap();
    std::fs::copy(
        data("vqa_rad/images/synpic16174.jpg"),
        dir.path().join("VQA_RAD Image Folder").join(img),
    )
    .unwrap();
    let out = load(
        DatasetFormat::VqaRad,
        dir.path(),
        &LoadOptions {
            require_images: true,
            skip_bad: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(out.samples.len(), 1);
    assert!(out.samples[0].images[0].is_file());

    // SLAKE with validation.json, an indexed organ mask beside the image.
    let s = tempfile::tempdir().unwrap();
    let rec = |qid: u32, lang: &str| {
        json!({"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Liver",
            "q_lang": lang, "location": "Abdomen", "modality": "CT", "answer_type": "OPEN",
            "base_type": "vqa", "triple": ["vhead", "_", "_"], "qid": qid, "content_type": "Organ"})
    };
    std::fs::write(
        s.path().join("validation.json"),
        json!([rec(1, "en"), rec(2, "zh")]).to_string(),
    )
    .unwrap();
    std::fs::write(
        s.path().join("train.json"),
        json!([rec(3, "en")]).to_string(),
    )
    .unwrap();
    gray_png(&s.path().join("imgs/xmlab1/mask.png"), 4, 4, |x, _| x as u8);
    let val = load(
        DatasetFormat::Slake,
        s.path(),
        &LoadOptions {
            split: Some(Split::Val),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(val.samples.len(), 1);
    assert_eq!(val.samples[0].split, Split::Val);
    assert_eq!(val.samples[0].meta["mask_kind"], "organ");
    assert_eq!(lesion_share(&val.samples[0]).unwrap(), None);
    let r = inspect(s.path(), &InspectOptions::default()).unwrap();
    assert_eq!(r.samples, 2);
    assert_eq!(
        (
            r.masks.samples_with_mask,
            r.masks.lesion_masks,
            r.masks.subtle
        ),
        (2, 0, 0)
    );
    assert!(r.to_table().contains("organ masks"));
}

#[test]
fn generated_phantom_round_trips_through_the_loaders() {
    use hdpo::data::phantom::{self, PhantomConfig};
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        seed: 5,
        train: 12,
        val: 3,
        test: 15,
        size: 64,
        ..PhantomConfig::default()
    };
    phantom::generate(&cfg, dir.path()).unwrap();
    assert_eq!(detect_format(dir.path()).unwrap(), DatasetFormat::Phantom);
    let strict = LoadOptions {
        require_images: true,
        ..opts()
    };
    // QA: every record of every split file, each with its mask.
    let qa = load(DatasetFormat::Phantom, dir.path(), &strict).unwrap();
    let mut n_records = 0;
    for f in ["train.json", "validate.json", "test.json"] {
        let v: Value = serde_json::from_slice(&std::fs::read(dir.path().join(f)).unwrap()).unwrap();
        n_records += v.as_array().unwrap().len();
    }
    assert_eq!(qa.samples.len(), n_records);
    assert!(qa.samples.iter().all(|s| s.mask.is_some()));
    // Mask areas read back agree with the written area and subtle flag.
    for s in &qa.samples {
        let share = lesion_share(s).unwrap().unwrap();
        let area = s.meta["lesion_area"].as_f64().unwrap();
        assert!((share - area).abs() < 1e-9, "{}: {share} vs {area}", s.id);
        assert_eq!(
            is_subtle(share, 0.05),
            s.meta["subtle"] == json!(true),
            "{}",
            s.id
        );
    }
    // Reports: one per study with a 64x64 image and the study's mask.
    let rep = load(DatasetFormat::PhantomReport, dir.path(), &strict).unwrap();
    assert_eq!(rep.samples.len(), 30);
    assert_eq!(
        rep.samples.iter().filter(|s| s.split == Split::Val).count(),
        3
    );
    let truth: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("phantom.json")).unwrap()).unwrap();
    let studies = truth["studies"].as_array().unwrap();
    for s in &rep.samples {
        assert_eq!(load_rgb(&s.images[0]).unwrap().dimensions(), (64, 64));
        let st = studies.iter().find(|t| t["id"] == json!(s.id)).unwrap();
        let share = lesion_share(s).unwrap().unwrap();
        assert!((share - st["lesion_area"].as_f64().unwrap()).abs() < 1e-9);
        // DAug heatmaps: by class, and the max over classes, at the image size.
        let h = read_daug(&dir.path().join("heatmaps"), &s.id, None, Some((64, 64))).unwrap();
        if let Some(class) = st["heatmap_class"].as_str() {
            let c = read_daug(
                &dir.path().join("heatmaps"),
                &s.id,
                Some(class),
                Some((64, 64)),
            )
            .unwrap();
            assert!(c.max() <= h.max());
        }
    }
    let r = inspect(dir.path(), &InspectOptions::default()).unwrap();
    let subtle_qa = qa
        .samples
        .iter()
        .filter(|s| s.meta["subtle"] == json!(true))
        .count();
    assert_eq!(r.masks.subtle, subtle_qa);
    assert_eq!(r.images.missing, 0);
}
