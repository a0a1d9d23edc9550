//! SLAKE (Liu et al. 2021) and the phantom benchmark's SLAKE-style QA.
//!
//! Layout: `train.json`, `validate.json` (or `validation.json`), `test.json`,
//! each a JSON array of QA records (`qid`, `img_name`, `question`, `answer`,
//! `answer_type`, `q_lang`, ...), images under `imgs/<img_name>` (any image
//! extension) and, when present, the image's mask at `imgs/<dir>/mask.png`.
//! SLAKE's masks are indexed organ masks; the phantom's are binary lesion
//! masks (`meta.mask_kind` says which). Only questions in
//! [`LoadOptions::lang`] are kept (English by default; `"all"` keeps all).
//! Every field other than question, answer, answer type and image name,
//! including fields unknown to hdpo, is kept in `Sample::meta`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::reader::{kind_of, read_json, Collector, LoadOptions, LoadOutcome, Rec};
use super::{AnswerType, RecordError, Sample, Split};

/// The file names of each split, tried in order.
pub const SPLIT_FILES: [(Split, &[&str]); 3] = [
    (Split::Train, &["train.json"]),
    (Split::Val, &["validate.json", "validation.json"]),
    (Split::Test, &["test.json"]),
];

/// Fields that become `Sample` fields rather than `meta`.
const CORE: [&str; 4] = ["question", "answer", "answer_type", "img_name"];

/// Load SLAKE-style QA; `dataset` is the name given to the samples
/// (`slake` or `phantom`).
pub fn load(root: &Path, opts: &LoadOptions, dataset: &str) -> Result<LoadOutcome> {
    let (dir, files) = split_files(root, opts)?;
    let image_dir = dir.join("imgs");
    let mask_kind = if dataset == "phantom" {
        "lesion"
    } else {
        "organ"
    };
    let mut c = Collector::new(opts);
    for (split, file) in files {
        let json = read_json(&file)?;
        let Value::Array(records) = json else {
            return Err(RecordError::new(
                &file,
                format!(
                    "expected a JSON array of QA records, found {}",
                    kind_of(&json)
                ),
            )
            .into());
        };
        for (i, v) in records.iter().enumerate() {
            let r = record(&file, &image_dir, i, v, split, opts, dataset, mask_kind);
            c.take(r)?;
        }
    }
    Ok(c.out)
}

/// The (split, file) pairs to read.
fn split_files(root: &Path, opts: &LoadOptions) -> Result<(PathBuf, Vec<(Split, PathBuf)>)> {
    if root.is_file() {
        let dir = root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let split = SPLIT_FILES
            .iter()
            .find(|(_, names)| names.contains(&name.as_str()))
            .map(|(s, _)| *s)
            .or(opts.split)
            .unwrap_or(Split::Test);
        return Ok((dir, vec![(split, root.to_path_buf())]));
    }
    let mut files = Vec::new();
    for (split, names) in SPLIT_FILES {
        if opts.split.is_some_and(|s| s != split) {
            continue;
        }
        match names.iter().map(|n| root.join(n)).find(|p| p.is_file()) {
            Some(p) => files.push((split, p)),
            None if opts.split.is_some() => bail!(
                "{}: the {split} split file ({}) is missing",
                root.display(),
                names.join(" or ")
            ),
            None => {}
        }
    }
    if files.is_empty() {
        bail!(
            "{}: no SLAKE-style split file (train.json, validate.json, validation.json, test.json)",
            root.display()
        );
    }
    Ok((root.to_path_buf(), files))
}

#[allow(clippy::too_many_arguments)]
fn record(
    file: &Path,
    image_dir: &Path,
    index: usize,
    v: &Value,
    split: Split,
    opts: &LoadOptions,
    dataset: &str,
    mask_kind: &str,
) -> std::result::Result<Option<Sample>, RecordError> {
    let mut r = Rec::new(file, index, v)?;
    r.id = match r.opt_str_or_int("qid")? {
        Some(id) => Some(id),
        None => Some(r.str_or_int("id").map_err(|e| e.field("qid"))?),
    };
    if let Some(lang) = r.opt_str("q_lang")? {
        if opts.lang != "all" && lang != opts.lang {
            return Ok(None);
        }
    }
    let question = r.str("question")?;
    let answer = r.str_or_int("answer")?;
    let answer_type = match r.str("answer_type")?.trim().to_ascii_uppercase().as_str() {
        "CLOSED" => AnswerType::Closed,
        "OPEN" => AnswerType::Open,
        other => {
            return Err(r.err(
                "answer_type",
                format!("unknown answer_type '{other}' (expected OPEN or CLOSED)"),
            ))
        }
    };
    let img_name = r.str("img_name")?;
    let image = r.path(image_dir, &img_name, "img_name", opts.require_images)?;
    // The mask lives beside the image: imgs/<dir>/mask.png.
    let mask = match Path::new(&img_name).parent() {
        Some(d) if !d.as_os_str().is_empty() => {
            let rel = d.join("mask.png");
            let p = r.path(image_dir, &rel.to_string_lossy(), "img_name", false)?;
            p.is_file().then_some(p)
        }
        _ => None,
    };
    let mut meta: Map<String, Value> = r
        .obj
        .iter()
        .filter(|(k, _)| !CORE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if mask.is_some() {
        meta.insert("mask_kind".into(), Value::String(mask_kind.into()));
    }
    Ok(Some(Sample {
        id: r.id.clone().unwrap_or_default(),
        dataset: dataset.into(),
        split,
        images: vec![image],
        question: Some(question),
        answer: answer.trim().to_string(),
        answer_type,
        mask,
        meta,
    }))
}
