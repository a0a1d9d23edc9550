//! Preference-pair records (`docs/design.md`, "Pair records"; paper Eq. 7-12 produce
//! them, Eq. 13 consumes them).
//!
//! hdpo's own layout is JSON Lines, one [`PairRecord`] per line. Fields
//! unknown to hdpo are kept in [`PairRecord::extra`] and written back, so a
//! read/write round trip loses nothing. The RULE / MMed-RAG layout
//! (`{"id", "image", "conversations": [human, gpt], "rejected_conversations":
//! [human, gpt]}`) is read and written too, so pairs move to and from the
//! Python tools. That layout has one `image`; a rejected image that differs
//! is written as an extra `rejected_image` field, and hdpo's `kind`, `weight`
//! and audit fields ride along as extra fields.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::reader::{kind_of, Rec};
use super::RecordError;
use crate::util::fsio::{atomic_write_with, resolve_in_root};

/// The image placeholder of LLaVA-style prompts.
pub const IMAGE_TOKEN: &str = "<image>";

/// One preference pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub id: String,
    /// `mis`, `fp`, `fn_neutral`, `fn_delete`, or a baseline's name.
    pub kind: String,
    /// The question only; the chat template is applied at training time.
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Relative to the pair file's folder.
    pub chosen_image: String,
    /// Relative to the pair file's folder.
    pub rejected_image: String,
    /// The pair weight w (Eq. 12); 1.0 for plain DPO.
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// k*, the keyword (Eq. 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// k̃, its replacement (Eq. 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Δ, the differential keywords (Eq. 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Vec<String>>,
    /// Every chunk's cosine similarity (Eq. 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarities: Option<Vec<f64>>,
    /// The masked region's share of the image (Eq. 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heatmap_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Fields unknown to hdpo, kept for round trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PairRecord {
    /// The chosen and rejected image paths, resolved under the pair file's folder.
    pub fn resolve_images(&self, pair_file: &Path) -> Result<(PathBuf, PathBuf)> {
        let dir = folder_of(pair_file);
        let what = |f: &str| format!("{}: pair '{}', field '{f}'", pair_file.display(), self.id);
        Ok((
            resolve_in_root(&dir, &self.chosen_image, &what("chosen_image"))?,
            resolve_in_root(&dir, &self.rejected_image, &what("rejected_image"))?,
        ))
    }
}

fn folder_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

const REQUIRED_STR: [&str; 7] = [
    "id",
    "kind",
    "prompt",
    "chosen",
    "rejected",
    "chosen_image",
    "rejected_image",
];

/// Read a pair file, hdpo's JSONL or the RULE / MMed-RAG layout (a JSON
/// array or JSON Lines; told apart per record by `conversations`). Stops at
/// the first bad record.
pub fn read_pairs(path: &Path) -> Result<Vec<PairRecord>> {
    let (pairs, _) = read_pairs_with(path, false)?;
    Ok(pairs)
}

/// Like [`read_pairs`]; with `skip_bad` the bad records are returned instead of stopping.
pub fn read_pairs_with(path: &Path, skip_bad: bool) -> Result<(Vec<PairRecord>, Vec<RecordError>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut values: Vec<(usize, std::result::Result<Value, RecordError>)> = Vec::new();
    if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(a)) => values.extend(a.into_iter().map(Ok).enumerate()),
            Ok(other) => {
                return Err(RecordError::new(
                    path,
                    format!("expected an array of pairs, found {}", kind_of(&other)),
                )
                .into())
            }
            Err(e) => {
                return Err(RecordError::new(
                    path,
                    format!(
                        "not valid JSON (line {}, column {}): {e}",
                        e.line(),
                        e.column()
                    ),
                )
                .into())
            }
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str::<Value>(line).map_err(|e| {
                RecordError::new(path, format!("line {} is not valid JSON: {e}", i + 1))
                    .record(i, None)
            });
            values.push((i, v));
        }
    }
    let mut pairs = Vec::with_capacity(values.len());
    let mut skipped = Vec::new();
    for (i, v) in values {
        match v.and_then(|v| parse_record(path, i, &v)) {
            Ok(p) => pairs.push(p),
            Err(e) if skip_bad => skipped.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((pairs, skipped))
}

fn parse_record(
    path: &Path,
    index: usize,
    v: &Value,
) -> std::result::Result<PairRecord, RecordError> {
    let mut r = Rec::new(path, index, v)?;
    r.id = r.opt_str_or_int("id")?;
    if r.get("conversations").is_some() {
        from_rule(&r)
    } else {
        from_native(&r, r.obj.clone())
    }
}

fn from_native(r: &Rec, obj: Map<String, Value>) -> std::result::Result<PairRecord, RecordError> {
    for f in REQUIRED_STR {
        match obj.get(f) {
            None => return Err(r.err(f, "missing field")),
            Some(Value::String(_)) => {}
            Some(v) => {
                return Err(r.err(f, format!("expected a string, found {}", kind_of(v))));
            }
        }
    }
    match obj.get("weight") {
        None => return Err(r.err("weight", "missing field")),
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
        Some(v) => {
            return Err(r.err(
                "weight",
                format!("expected a finite number, found {}", kind_of(v)),
            ))
        }
    }
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| RecordError::new(r.file, e.to_string()).record(r.index, r.id.clone()))
}

/// The text of the turn `from` (`human` or `gpt`), the last one of that speaker.
fn turn(r: &Rec, field: &str, from: &str) -> std::result::Result<String, RecordError> {
    let Some(Value::Array(turns)) = r.get(field) else {
        return Err(match r.get(field) {
            None => r.err(field, "missing field"),
            Some(v) => r.err(
                field,
                format!("expected an array of turns, found {}", kind_of(v)),
            ),
        });
    };
    let mut found = None;
    for (j, t) in turns.iter().enumerate() {
        let speaker = t.get("from").and_then(Value::as_str);
        let value = t.get("value");
        match (speaker, value) {
            (Some(s), Some(Value::String(v))) if s == from => found = Some(v.clone()),
            (Some(_), Some(Value::String(_))) => {}
            _ => {
                return Err(r.err(
                    &format!("{field}[{j}]"),
                    "expected {\"from\": string, \"value\": string}",
                ))
            }
        }
    }
    found.ok_or_else(|| r.err(field, format!("no '{from}' turn")))
}

/// The question of a human turn: the `<image>` placeholder and the newline
/// after it removed.
pub fn strip_image_token(value: &str) -> String {
    let v = value.trim();
    let v = match v.strip_prefix(IMAGE_TOKEN) {
        Some(rest) => rest,
        None => match v.strip_suffix(IMAGE_TOKEN) {
            Some(rest) => rest,
            None => v,
        },
    };
    v.trim().to_string()
}

fn from_rule(r: &Rec) -> std::result::Result<PairRecord, RecordError> {
    let id = r.str_or_int("id")?;
    let image = r.str("image")?;
    let prompt = strip_image_token(&turn(r, "conversations", "human")?);
    let chosen = turn(r, "conversations", "gpt")?;
    let rejected = turn(r, "rejected_conversations", "gpt")?;
    let rejected_image = r
        .opt_str("rejected_image")?
        .unwrap_or_else(|| image.clone());
    let mut obj = r.obj.clone();
    for k in [
        "id",
        "image",
        "conversations",
        "rejected_conversations",
        "rejected_image",
    ] {
        obj.remove(k);
    }
    obj.insert("id".into(), Value::String(id));
    obj.entry("kind")
        .or_insert_with(|| Value::String("rule".into()));
    obj.entry("weight").or_insert_with(|| Value::from(1.0));
    obj.insert("prompt".into(), Value::String(prompt));
    obj.insert("chosen".into(), Value::String(chosen));
    obj.insert("rejected".into(), Value::String(rejected));
    obj.insert("chosen_image".into(), Value::String(image));
    obj.insert("rejected_image".into(), Value::String(rejected_image));
    from_native(r, obj)
}

/// Write pairs as hdpo JSONL, atomically.
pub fn write_pairs(path: &Path, pairs: &[PairRecord]) -> Result<()> {
    atomic_write_with(path, |w| {
        for p in pairs {
            serde_json::to_writer(&mut *w, p)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// One pair in the RULE / MMed-RAG layout.
pub fn to_rule(p: &PairRecord) -> Result<Value> {
    let Value::Object(mut obj) = serde_json::to_value(p)? else {
        anyhow::bail!("pair '{}' did not serialise to an object", p.id);
    };
    for k in [
        "id",
        "prompt",
        "chosen",
        "rejected",
        "chosen_image",
        "rejected_image",
    ] {
        obj.remove(k);
    }
    let human =
        serde_json::json!({"from": "human", "value": format!("{IMAGE_TOKEN}\n{}", p.prompt)});
    let mut out = Map::new();
    out.insert("id".into(), Value::String(p.id.clone()));
    out.insert("image".into(), Value::String(p.chosen_image.clone()));
    out.insert(
        "conversations".into(),
        serde_json::json!([human, {"from": "gpt", "value": p.chosen}]),
    );
    out.insert(
        "rejected_conversations".into(),
        serde_json::json!([human, {"from": "gpt", "value": p.rejected}]),
    );
    if p.rejected_image != p.chosen_image {
        out.insert(
            "rejected_image".into(),
            Value::String(p.rejected_image.clone()),
        );
    }
    out.extend(obj);
    Ok(Value::Object(out))
}

/// Write pairs in the RULE / MMed-RAG layout, atomically: a JSON array when
/// `path` ends in `.json` (what LLaVA-style training scripts load), else JSON Lines.
pub fn write_rule_pairs(path: &Path, pairs: &[PairRecord]) -> Result<()> {
    let values = pairs.iter().map(to_rule).collect::<Result<Vec<_>>>()?;
    let as_array = path.extension().is_some_and(|e| e == "json");
    atomic_write_with(path, |w| {
        if as_array {
            serde_json::to_writer_pretty(&mut *w, &values)?;
            w.write_all(b"\n")?;
        } else {
            for v in &values {
                serde_json::to_writer(&mut *w, v)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    })
}
