//! Partial datasets (`--skip-missing`): the shared VQA-RAD sample ships 30 of its 314 images,
//! as a partial download would. Without the flag the commands stop at the first absent
//! image; with it they skip those records, count them per split and say so in their output
//! and summaries.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::shared_dir;
use hdpo::data::{load, DatasetFormat, LoadOptions, Split};

fn vqa_rad() -> PathBuf {
    shared_dir().join("data/vqa_rad")
}

/// Records per split whose image is absent, counted independently of the loader's filter.
fn absent_per_split(split: Option<Split>) -> BTreeMap<String, usize> {
    let all = load(
        DatasetFormat::VqaRad,
        &vqa_rad(),
        &LoadOptions {
            split,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for s in &all.samples {
        if !s.images[0].is_file() {
            *out.entry(s.split.to_string()).or_default() += 1;
        }
    }
    out
}

fn hdpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_loader_skips_and_counts_records_without_their_image() {
    let strict = load(
        DatasetFormat::VqaRad,
        &vqa_rad(),
        &LoadOptions {
            require_images: true,
            ..LoadOptions::default()
        },
    );
    assert!(format!("{:#}", strict.unwrap_err()).contains("does not exist"));
    let partial = load(
        DatasetFormat::VqaRad,
        &vqa_rad(),
        &LoadOptions {
            require_images: true,
            skip_missing: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let absent = absent_per_split(None);
    assert_eq!(partial.missing.per_split, absent);
    assert!(partial.missing.total() > 1000, "{:?}", partial.missing);
    assert!(partial.samples.iter().all(|s| s.images[0].is_file()));
    assert!(!partial.samples.is_empty());
    assert_eq!(partial.missing.first.len(), 5);
    assert!(partial.missing.first.iter().all(|p| !p.exists()));
}

#[test]
fn align_and_curate_run_on_the_partial_vqa_rad_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tmp.path().join("enc");
    let data = vqa_rad();
    let base = [
        "align",
        "--data",
        s(&data),
        "--format",
        "vqa-rad",
        "--out",
        s(&enc),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--no-regions",
    ];
    let o = hdpo(&base);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    let mut args = base.to_vec();
    args.push("--skip-missing");
    let o = hdpo(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let train_absent = absent_per_split(Some(Split::Train))["train"];
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&format!(
            "skipped {train_absent} records whose image is missing"
        )),
        "{said}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(enc.join("data_summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["missing_images"]["per_split"]["train"],
        train_absent
    );

    let out = tmp.path().join("pairs/pairs.jsonl");
    let o = hdpo(&[
        "curate",
        "--data",
        s(&data),
        "--format",
        "vqa-rad",
        "--heatmaps",
        "uniform",
        "--encoder",
        s(&enc),
        "--out",
        s(&out),
        "--kinds",
        "mis,fn_neutral",
        "--skip-missing",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("pairs/pairs.jsonl.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["missing_images"]["per_split"]["train"],
        train_absent
    );
    assert!(summary["samples"].as_u64().unwrap() > 0);
}
