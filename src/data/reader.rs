//! The record-level helpers the format loaders share: load options and
//! outcome, field access with errors that name file, record and field,
//! root-confined image paths and `--skip-bad` bookkeeping.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::{RecordError, Sample, Split};
use crate::util::fsio::resolve_in_root;

/// How to load a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Only this split; `None` loads every split the dataset has.
    pub split: Option<Split>,
    /// Question language for multilingual sets (SLAKE's `q_lang`); `"all"` keeps every language.
    pub lang: String,
    /// Collect malformed records in [`LoadOutcome::skipped`] instead of stopping at the first.
    pub skip_bad: bool,
    /// Treat a referenced image file that does not exist as a bad record.
    pub require_images: bool,
    /// Skip (and count, per split) the records whose image files are absent, as partial
    /// downloads of real datasets need (`--skip-missing`); other bad records still follow
    /// `skip_bad`.
    pub skip_missing: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            split: None,
            lang: "en".to_string(),
            skip_bad: false,
            require_images: false,
            skip_missing: false,
        }
    }
}

/// The samples of a load and the records that were skipped (only with `skip_bad`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOutcome {
    pub samples: Vec<Sample>,
    pub skipped: Vec<RecordError>,
    /// Records left out for absent images (only with `skip_missing`).
    pub missing: MissingImages,
}

/// Records skipped because an image file is absent (`--skip-missing`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MissingImages {
    /// Skipped records per split (`train`, `val`, `test`).
    pub per_split: std::collections::BTreeMap<String, usize>,
    /// The first absent paths (at most [`MissingImages::EXAMPLES`]).
    pub first: Vec<PathBuf>,
}

impl MissingImages {
    pub const EXAMPLES: usize = 5;

    /// Records skipped in all splits.
    pub fn total(&self) -> usize {
        self.per_split.values().sum()
    }

    /// One line for a command's output (`None` when nothing was skipped).
    pub fn describe(&self) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let splits: Vec<String> = self
            .per_split
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        Some(format!(
            "skipped {} records whose image is missing ({}); first: {}",
            self.total(),
            splits.join(", "),
            self.first
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Split a dataset path into (folder, file): a file path is taken as the
/// dataset's main file and its folder as the root.
pub(crate) fn root_and_file(root: &Path, default_name: &str) -> (PathBuf, PathBuf) {
    if root.is_file() {
        let dir = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, root.to_path_buf())
    } else {
        (root.to_path_buf(), root.join(default_name))
    }
}

/// Read and parse a JSON file; the error names the file and the position.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::Error::new(RecordError::new(
            path,
            format!(
                "not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
        ))
    })
}

/// Accumulates samples and, with `skip_bad`, bad records.
pub(crate) struct Collector<'a> {
    pub opts: &'a LoadOptions,
    pub out: LoadOutcome,
}

impl<'a> Collector<'a> {
    pub fn new(opts: &'a LoadOptions) -> Self {
        Collector {
            opts,
            out: LoadOutcome::default(),
        }
    }

    /// Take the result of parsing one record: keep the sample, or skip or
    /// raise the error.
    pub fn take(&mut self, r: std::result::Result<Option<Sample>, RecordError>) -> Result<()> {
        match r {
            Ok(Some(s)) => self.out.samples.push(s),
            Ok(None) => {}
            Err(e) if self.opts.skip_bad => {
                tracing::warn!("skipping bad record: {e}");
                self.out.skipped.push(e)
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// Context for the fields of one record: file, index and id.
pub(crate) struct Rec<'a> {
    pub file: &'a Path,
    pub index: usize,
    pub id: Option<String>,
    pub obj: &'a Map<String, Value>,
}

impl<'a> Rec<'a> {
    /// View record `index` of `file`; errors unless it is a JSON object.
    pub fn new(
        file: &'a Path,
        index: usize,
        v: &'a Value,
    ) -> std::result::Result<Self, RecordError> {
        match v {
            Value::Object(obj) => Ok(Rec {
                file,
                index,
                id: None,
                obj,
            }),
            other => Err(RecordError::new(
                file,
                format!("expected a JSON object, found {}", kind_of(other)),
            )
            .record(index, None)),
        }
    }

    pub fn err(&self, field: &str, msg: impl Into<String>) -> RecordError {
        RecordError::new(self.file, msg)
            .record(self.index, self.id.clone())
            .field(field)
    }

    /// "record 3 (id 'x'), field f" for messages of helpers outside this module.
    pub fn what(&self, field: &str) -> String {
        match &self.id {
            Some(id) => format!(
                "{}: record {} (id '{id}'), field '{field}'",
                self.file.display(),
                self.index
            ),
            None => format!(
                "{}: record {}, field '{field}'",
                self.file.display(),
                self.index
            ),
        }
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field)
    }

    /// A required string field.
    pub fn str(&self, field: &str) -> std::result::Result<String, RecordError> {
        match self.obj.get(field) {
            None => Err(self.err(field, "missing field")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.err(field, format!("expected a string, found {}", kind_of(v)))),
        }
    }

    /// An optional string field (absent or null gives `None`).
    pub fn opt_str(&self, field: &str) -> std::result::Result<Option<String>, RecordError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(field, format!("expected a string, found {}", kind_of(v)))),
        }
    }

    /// A required field that may be a string or an integer (ids, answers).
    pub fn str_or_int(&self, field: &str) -> std::result::Result<String, RecordError> {
        match self.obj.get(field) {
            None => Err(self.err(field, "missing field")),
            Some(v) => scalar_text(v).ok_or_else(|| {
                self.err(
                    field,
                    format!("expected a string or a number, found {}", kind_of(v)),
                )
            }),
        }
    }

    /// An optional string-or-integer field.
    pub fn opt_str_or_int(&self, field: &str) -> std::result::Result<Option<String>, RecordError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_text(v).map(Some).ok_or_else(|| {
                self.err(
                    field,
                    format!("expected a string or a number, found {}", kind_of(v)),
                )
            }),
        }
    }

    /// Resolve `rel` (read from `field`) under `root`; with `require` the file must exist.
    pub fn path(
        &self,
        root: &Path,
        rel: &str,
        field: &str,
        require: bool,
    ) -> std::result::Result<PathBuf, RecordError> {
        let p = resolve_in_root(root, rel, &self.what(field))
            .map_err(|e| self.err(field, format!("{e:#}")))?;
        if require && !p.is_file() {
            return Err(self.err(field, format!("image file {} does not exist", p.display())));
        }
        Ok(p)
    }
}

/// The text of a string, integer or float JSON value.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A short name for a JSON value's type, for error messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The parts of a closed yes/no answer.
pub(crate) fn is_yes_no(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "yes" | "no")
}
