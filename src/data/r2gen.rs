//! R2Gen-style report datasets (Chen et al. 2020): IU-Xray and MIMIC-CXR.
//!
//! `annotation.json` is `{"train"|"val"|"test": [{"id", "report",
//! "image_path": [...], "split", "study_id"?, "subject_id"?}]}` with images
//! under `<root>/images/`. A record with `study_id` is MIMIC-CXR, otherwise
//! IU-Xray. Every field other than id, report and image paths is kept in
//! `Sample::meta`. The phantom benchmark writes the same layout; its lesion
//! masks sit at `<root>/imgs/<study>/mask.png`.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::reader::{kind_of, read_json, root_and_file, Collector, LoadOptions, LoadOutcome, Rec};
use super::{AnswerType, RecordError, Sample, Split};

/// Split keys of `annotation.json`, tried in order per split.
const SPLIT_KEYS: [(Split, &[&str]); 3] = [
    (Split::Train, &["train"]),
    (Split::Val, &["val", "validate", "validation"]),
    (Split::Test, &["test"]),
];

const CORE: [&str; 3] = ["id", "report", "image_path"];

/// Load `annotation.json`; `dataset` overrides the dataset name (`phantom`),
/// which also attaches the phantom's lesion masks.
pub fn load(root: &Path, opts: &LoadOptions, dataset: Option<&str>) -> Result<LoadOutcome> {
    let (dir, file) = root_and_file(root, "annotation.json");
    let json = read_json(&file)?;
    let Value::Object(top) = json else {
        return Err(RecordError::new(
            &file,
            format!(
                "expected an object with train/val/test arrays, found {}",
                kind_of(&json)
            ),
        )
        .into());
    };
    let image_dir = dir.join("images");
    let mask_dir = dir.join("imgs");
    let mut c = Collector::new(opts);
    let mut any = false;
    for (split, keys) in SPLIT_KEYS {
        if opts.split.is_some_and(|s| s != split) {
            continue;
        }
        let Some((key, v)) = keys.iter().find_map(|k| top.get(*k).map(|v| (*k, v))) else {
            if opts.split.is_some() {
                bail!(
                    "{}: no '{}' split in the annotation",
                    file.display(),
                    keys[0]
                );
            }
            continue;
        };
        any = true;
        let Value::Array(records) = v else {
            return Err(RecordError::new(
                &file,
                format!("expected an array of studies, found {}", kind_of(v)),
            )
            .field(key)
            .into());
        };
        for (i, v) in records.iter().enumerate() {
            let r = record(&file, &image_dir, &mask_dir, i, v, split, opts, dataset);
            c.take(r)?;
        }
    }
    if !any {
        bail!(
            "{}: none of the splits train, val, test is in the annotation",
            file.display()
        );
    }
    Ok(c.out)
}

#[allow(clippy::too_many_arguments)]
fn record(
    file: &Path,
    image_dir: &Path,
    mask_dir: &Path,
    index: usize,
    v: &Value,
    split: Split,
    opts: &LoadOptions,
    dataset: Option<&str>,
) -> std::result::Result<Option<Sample>, RecordError> {
    let mut r = Rec::new(file, index, v)?;
    r.id = Some(r.str_or_int("id")?);
    let report = r.str("report")?;
    let paths = match r.get("image_path") {
        None => return Err(r.err("image_path", "missing field")),
        Some(Value::Array(a)) => a,
        Some(Value::String(_)) => {
            return Err(r.err("image_path", "expected an array of paths, found a string"))
        }
        Some(v) => {
            return Err(r.err(
                "image_path",
                format!("expected an array of paths, found {}", kind_of(v)),
            ))
        }
    };
    if paths.is_empty() {
        return Err(r.err("image_path", "no image paths"));
    }
    let mut images = Vec::with_capacity(paths.len());
    for (j, p) in paths.iter().enumerate() {
        let field = format!("image_path[{j}]");
        let Value::String(rel) = p else {
            return Err(r.err(&field, format!("expected a string, found {}", kind_of(p))));
        };
        images.push(r.path(image_dir, rel, &field, opts.require_images)?);
    }
    r.opt_str_or_int("study_id")?;
    r.opt_str_or_int("subject_id")?;
    let name = match dataset {
        Some(d) => d,
        None if r.get("study_id").is_some() => "mimic-cxr",
        None => "iu-xray",
    };
    let mut meta: Map<String, Value> = r
        .obj
        .iter()
        .filter(|(k, _)| !CORE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut mask = None;
    if dataset == Some("phantom") {
        if let Some(Value::String(first)) = paths.first() {
            if let Some(d) = Path::new(first)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                let rel = d.join("mask.png");
                let p = r.path(mask_dir, &rel.to_string_lossy(), "image_path[0]", false)?;
                if p.is_file() {
                    mask = Some(p);
                    meta.insert("mask_kind".into(), Value::String("lesion".into()));
                }
            }
        }
    }
    Ok(Some(Sample {
        id: r.id.clone().unwrap_or_default(),
        dataset: name.into(),
        split,
        images,
        question: None,
        answer: report,
        answer_type: AnswerType::Report,
        mask,
        meta,
    }))
}
