//! RULE / MMed-RAG VQA JSON Lines (`iuxray_test.jsonl`, `mimic_test.jsonl`):
//! one `{"question", "answer", "image", "question_id", "text"?, "report"?}`
//! object per line.
//!
//! Answers come as `Yes.`, `No.`, `Yes`, `No` or `- No.`; they are
//! normalised to `yes` / `no` (the raw answer stays in `meta.answer_raw`),
//! and a yes/no answer makes the sample closed, anything else open. The
//! dataset path is one `.jsonl` file or a folder of them; images are resolved
//! under `<folder>/images/` when that folder exists, else under `<folder>`.
//! The split is read from the file name (`test`, `val`, else train).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::reader::{is_yes_no, Collector, LoadOptions, LoadOutcome, Rec};
use super::{AnswerType, RecordError, Sample, Split};

const CORE: [&str; 4] = ["question", "answer", "image", "question_id"];

/// The `.jsonl` files of a RULE dataset path, sorted by name.
pub fn jsonl_files(root: &Path) -> Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let p = e?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "jsonl") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The split a RULE file holds, from its name.
pub fn split_of(file: &Path) -> Split {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.contains("test") {
        Split::Test
    } else if name.contains("val") {
        Split::Val
    } else {
        Split::Train
    }
}

/// Normalise a RULE answer: trim, drop a leading `-` bullet and a trailing
/// full stop; yes/no become lowercase `yes` / `no`.
pub fn normalize_answer(raw: &str) -> String {
    let mut a = raw.trim();
    a = a.strip_prefix('-').unwrap_or(a).trim_start();
    a = a.strip_suffix('.').unwrap_or(a).trim_end();
    if is_yes_no(a) {
        a.to_ascii_lowercase()
    } else {
        a.to_string()
    }
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    let files = jsonl_files(root)?;
    if files.is_empty() {
        anyhow::bail!("{}: no .jsonl files", root.display());
    }
    let mut c = Collector::new(opts);
    for file in files {
        let split = split_of(&file);
        if opts.split.is_some_and(|s| s != split) {
            continue;
        }
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let image_dir = if dir.join("images").is_dir() {
            dir.join("images")
        } else {
            dir.clone()
        };
        let text =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let text = String::from_utf8_lossy(&text);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r = match serde_json::from_str::<Value>(line) {
                Ok(v) => record(&file, &image_dir, i, &v, split, opts),
                Err(e) => Err(RecordError::new(
                    &file,
                    format!("line {} is not valid JSON: {e}", i + 1),
                )
                .record(i, None)),
            };
            c.take(r)?;
        }
    }
    Ok(c.out)
}

fn record(
    file: &Path,
    image_dir: &Path,
    index: usize,
    v: &Value,
    split: Split,
    opts: &LoadOptions,
) -> std::result::Result<Option<Sample>, RecordError> {
    let mut r = Rec::new(file, index, v)?;
    r.id = Some(r.str_or_int("question_id")?);
    let question = r.str("question")?;
    let raw = r.str_or_int("answer")?;
    let answer = normalize_answer(&raw);
    let answer_type = if is_yes_no(&answer) {
        AnswerType::Closed
    } else {
        AnswerType::Open
    };
    let image = r.str("image")?;
    let image = r.path(image_dir, &image, "image", opts.require_images)?;
    r.opt_str("text")?;
    r.opt_str("report")?;
    let mut meta: Map<String, Value> = r
        .obj
        .iter()
        .filter(|(k, _)| !CORE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("answer_raw".into(), Value::String(raw));
    Ok(Some(Sample {
        id: r.id.clone().unwrap_or_default(),
        dataset: "rule".into(),
        split,
        images: vec![image],
        question: Some(question),
        answer,
        answer_type,
        mask: None,
        meta,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_normalised() {
        assert_eq!(normalize_answer("Yes."), "yes");
        assert_eq!(normalize_answer("- No."), "no");
        assert_eq!(normalize_answer(" No "), "no");
        assert_eq!(normalize_answer("Left lung."), "Left lung");
    }
}
