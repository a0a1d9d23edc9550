//! VQA-RAD (Lau et al. 2018), the official `VQA_RAD Dataset Public.json`.
//!
//! Quirks handled: `qid` is a string or an
//! integer, `answer_type` may carry a trailing space (`"CLOSED "`), `answer`
//! may be an integer, `"NULL"` is a string, and `question_type` may be
//! compound (`"POS, PRES"`) or misspelled (`ATRIB`, `PRSE`). The split comes
//! from `phrase_type`: `test_freeform` / `test_para` are the test split (451
//! questions), `freeform` / `para` the training split. VQA-RAD has no
//! validation split.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Map, Value};

use super::reader::{kind_of, read_json, root_and_file, Collector, LoadOptions, LoadOutcome, Rec};
use super::{AnswerType, RecordError, Sample, Split};

/// The name of the official QA file.
pub const JSON_NAME: &str = "VQA_RAD Dataset Public.json";
/// Image folders tried in order: hdpo's own layout, then the official release's.
pub const IMAGE_DIRS: [&str; 2] = ["images", "VQA_RAD Image Folder"];

/// Fields that become `Sample` fields rather than `meta`.
const CORE: [&str; 4] = ["qid", "question", "answer", "image_name"];

pub fn load(root: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    let (dir, file) = root_and_file(root, JSON_NAME);
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
    let image_dir = IMAGE_DIRS
        .iter()
        .map(|d| dir.join(d))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| dir.join(IMAGE_DIRS[0]));
    let mut c = Collector::new(opts);
    for (i, v) in records.iter().enumerate() {
        let r = record(&file, &image_dir, i, v, opts);
        c.take(r)?;
    }
    Ok(c.out)
}

fn record(
    file: &Path,
    image_dir: &Path,
    index: usize,
    v: &Value,
    opts: &LoadOptions,
) -> std::result::Result<Option<Sample>, RecordError> {
    let mut r = Rec::new(file, index, v)?;
    r.id = Some(r.str_or_int("qid")?);
    let phrase = r.str("phrase_type")?;
    let split = match phrase.trim() {
        "test_freeform" | "test_para" => Split::Test,
        "freeform" | "para" => Split::Train,
        other => {
            return Err(r.err(
                "phrase_type",
                format!("unknown phrase_type '{other}' (expected freeform, para, test_freeform or test_para)"),
            ))
        }
    };
    if opts.split.is_some_and(|s| s != split) {
        return Ok(None);
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
    let image_name = r.str("image_name")?;
    let image: PathBuf = r.path(image_dir, &image_name, "image_name", opts.require_images)?;
    let mut meta = Map::new();
    for (k, v) in r.obj {
        if CORE.contains(&k.as_str()) || v.as_str() == Some("NULL") {
            continue;
        }
        let v = match v {
            Value::String(s) => Value::String(s.trim().to_string()),
            other => other.clone(),
        };
        meta.insert(k.clone(), v);
    }
    if let Some(qt) = r.opt_str("question_type")? {
        let types: Vec<Value> = question_types(&qt).into_iter().map(Value::String).collect();
        meta.insert("question_types".into(), Value::Array(types));
    }
    Ok(Some(Sample {
        id: r.id.clone().unwrap_or_default(),
        dataset: "vqa-rad".into(),
        split,
        images: vec![image],
        question: Some(question),
        answer: answer.trim().to_string(),
        answer_type,
        mask: None,
        meta,
    }))
}

/// Normalise a (possibly compound or misspelled) VQA-RAD `question_type`
/// into its canonical codes: `"POS, PRES"` gives `["POS", "PRES"]`,
/// `ATRIB` gives `ATTRIB`, `PRSE` gives `PRES`, `Other` gives `OTHER`.
pub fn question_types(raw: &str) -> Vec<String> {
    raw.split([',', '/'])
        .map(|t| t.trim().to_ascii_uppercase())
        .filter(|t| !t.is_empty() && t != "NULL")
        .map(|t| match t.as_str() {
            "ATRIB" => "ATTRIB".to_string(),
            "PRSE" => "PRES".to_string(),
            _ => t,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_and_misspelled_types() {
        assert_eq!(question_types("POS, PRES"), vec!["POS", "PRES"]);
        assert_eq!(question_types("ATRIB"), vec!["ATTRIB"]);
        assert_eq!(question_types("PRSE"), vec!["PRES"]);
        assert_eq!(question_types("Other"), vec!["OTHER"]);
    }
}
