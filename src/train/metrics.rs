//! What TRL's `DPOTrainer` logs, per optimiser step and per pair kind, and
//! the JSONL training log.
//!
//! The log is append-only (one row per optimiser step, each written with a
//! single `write` of a whole line); a checkpoint records its byte length, and
//! `--resume` truncates it there, so rows of a killed run's lost steps are
//! written again rather than duplicated.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The kinds logged separately; every other kind (a baseline's name) is `others`.
pub const KINDS: &[&str] = &["mis", "fp", "fn_neutral", "fn_delete", "others"];

/// The bucket of a pair kind in the per-kind metrics.
pub fn kind_bucket(kind: &str) -> &'static str {
    match kind {
        "mis" => "mis",
        "fp" => "fp",
        "fn_neutral" => "fn_neutral",
        "fn_delete" => "fn_delete",
        _ => "others",
    }
}

/// One pair's numbers in one step.
#[derive(Clone, Debug, PartialEq)]
pub struct PairStat {
    pub kind: String,
    /// α (log π_θ(y⁺) − log π_ref(y⁺)).
    pub chosen_reward: f64,
    /// α (log π_θ(y⁻) − log π_ref(y⁻)).
    pub rejected_reward: f64,
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    /// This pair's term of the loss (w · −log σ(α h) for HDPO).
    pub loss: f64,
}

/// Mean of the TRL metrics over `pairs` (empty input gives an empty map).
pub fn summarize(pairs: &[&PairStat]) -> Map<String, Value> {
    let mut m = Map::new();
    if pairs.is_empty() {
        return m;
    }
    let n = pairs.len() as f64;
    let mean = |f: &dyn Fn(&PairStat) -> f64| pairs.iter().map(|p| f(p)).sum::<f64>() / n;
    m.insert("loss".into(), Value::from(mean(&|p| p.loss)));
    m.insert("rewards/chosen".into(), mean(&|p| p.chosen_reward).into());
    m.insert(
        "rewards/rejected".into(),
        mean(&|p| p.rejected_reward).into(),
    );
    m.insert(
        "rewards/margins".into(),
        mean(&|p| p.chosen_reward - p.rejected_reward).into(),
    );
    m.insert(
        "rewards/accuracies".into(),
        mean(&|p| f64::from(u8::from(p.chosen_reward > p.rejected_reward))).into(),
    );
    m.insert("logps/chosen".into(), mean(&|p| p.policy_chosen).into());
    m.insert("logps/rejected".into(), mean(&|p| p.policy_rejected).into());
    m.insert("n_pairs".into(), Value::from(pairs.len()));
    m
}

/// The batch metrics plus `by_kind`: the same metrics for each kind present.
pub fn batch_metrics(pairs: &[PairStat]) -> Map<String, Value> {
    let all: Vec<&PairStat> = pairs.iter().collect();
    let mut m = summarize(&all);
    let mut by: BTreeMap<&str, Vec<&PairStat>> = BTreeMap::new();
    for p in pairs {
        by.entry(kind_bucket(&p.kind)).or_default().push(p);
    }
    let mut kinds = Map::new();
    for k in KINDS {
        if let Some(v) = by.get(k) {
            kinds.insert((*k).into(), Value::Object(summarize(v)));
        }
    }
    m.insert("by_kind".into(), Value::Object(kinds));
    m
}

/// A short progress-bar message from a metrics row.
pub fn progress_message(row: &Map<String, Value>) -> String {
    let g = |k: &str| row.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    if row.contains_key("rewards/margins") {
        format!(
            "loss {:.4} margin {:+.4} acc {:.2} lr {:.2e}",
            g("loss"),
            g("rewards/margins"),
            g("rewards/accuracies"),
            g("learning_rate")
        )
    } else {
        format!(
            "loss {:.4} tok/s {:.0} lr {:.2e}",
            g("loss"),
            g("tokens_per_s"),
            g("learning_rate")
        )
    }
}

/// The append-only JSONL training log.
pub struct TrainLog {
    path: PathBuf,
    len: u64,
}

impl TrainLog {
    /// Open `path`, keeping its first `keep_bytes` bytes (0: start afresh).
    pub fn open(path: &Path, keep_bytes: u64) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open the training log {}", path.display()))?;
        let cur = f.metadata()?.len();
        anyhow::ensure!(
            cur >= keep_bytes,
            "the training log {} has {cur} bytes but the checkpoint expects at least {keep_bytes}",
            path.display()
        );
        f.set_len(keep_bytes)
            .with_context(|| format!("cannot truncate {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            len: keep_bytes,
        })
    }

    /// Append one row.
    pub fn append(&mut self, row: &Map<String, Value>) -> Result<()> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        f.write_all(&line)
            .with_context(|| format!("cannot write to {}", self.path.display()))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Bytes written so far (the offset a checkpoint records).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Read a JSONL log; a partial last line (a crash mid-write) is ignored.
pub fn read_log(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break;
        }
        let row: Map<String, Value> = serde_json::from_str(line.trim_end())
            .with_context(|| format!("{}: line {} is not a JSON object", path.display(), i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

/// The training log's file name inside a run folder.
pub const LOG_FILE: &str = "train_log.jsonl";

/// The fields of a `train_log.jsonl` row that readers of a finished run use
/// (the other logged fields are ignored).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct LogRow {
    #[serde(default)]
    pub step: Option<usize>,
    #[serde(default)]
    pub loss: Option<f64>,
    /// TRL's `rewards/margins` (preference runs only).
    #[serde(default, rename = "rewards/margins")]
    pub margin: Option<f64>,
}

/// The rows of `run_dir`'s `train_log.jsonl` that parse as [`LogRow`], in
/// order; none when the file is missing.
pub fn read_log_rows(run_dir: &Path) -> Vec<LogRow> {
    let Ok(text) = std::fs::read_to_string(run_dir.join(LOG_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<LogRow>(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rows_read_step_loss_and_margin_by_type() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("train_log.jsonl"),
            "{\"step\": 1, \"loss\": 0.5, \"rewards/margins\": 0.25, \"lr\": 1e-3}\n\
             {\"step\": 2, \"loss\": 0.25}\n\
             not json\n",
        )
        .unwrap();
        let rows = read_log_rows(dir.path());
        assert_eq!(
            rows,
            vec![
                LogRow {
                    step: Some(1),
                    loss: Some(0.5),
                    margin: Some(0.25)
                },
                LogRow {
                    step: Some(2),
                    loss: Some(0.25),
                    margin: None
                },
            ]
        );
        assert!(read_log_rows(&dir.path().join("none")).is_empty());
    }

    fn st(kind: &str, rc: f64, rr: f64) -> PairStat {
        PairStat {
            kind: kind.into(),
            chosen_reward: rc,
            rejected_reward: rr,
            policy_chosen: -10.0 * rc,
            policy_rejected: -20.0,
            loss: 0.5,
        }
    }

    #[test]
    fn metrics_follow_trl_and_split_by_kind() {
        let pairs = vec![
            st("mis", 0.2, 0.1),
            st("fp", -0.1, 0.3),
            st("rule", 0.0, -0.2),
        ];
        let m = batch_metrics(&pairs);
        let f = |k: &str| m[k].as_f64().unwrap();
        assert!((f("rewards/chosen") - 0.1 / 3.0).abs() < 1e-15);
        assert!((f("rewards/margins") - (0.1 - 0.4 + 0.2) / 3.0).abs() < 1e-15);
        assert!((f("rewards/accuracies") - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(f("logps/rejected"), -20.0);
        let bk = m["by_kind"].as_object().unwrap();
        assert_eq!(bk.keys().collect::<Vec<_>>(), vec!["mis", "fp", "others"]);
        assert_eq!(bk["fp"]["rewards/accuracies"].as_f64().unwrap(), 0.0);
        assert_eq!(bk["others"]["n_pairs"].as_u64().unwrap(), 1);
        assert!(progress_message(&m).starts_with("loss 0.5000 margin"));
    }

    #[test]
    fn log_truncates_to_the_checkpoint_offset_and_skips_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.jsonl");
        let mut log = TrainLog::open(&p, 0).unwrap();
        let mut row = Map::new();
        row.insert("step".into(), 1.into());
        log.append(&row).unwrap();
        let off = log.len();
        row.insert("step".into(), 2.into());
        log.append(&row).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\": 3")
            .unwrap();
        assert_eq!(read_log(&p).unwrap().len(), 2);
        let log = TrainLog::open(&p, off).unwrap();
        assert_eq!(log.len(), off);
        let rows = read_log(&p).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["step"], 1);
        assert!(TrainLog::open(&p, off + 100).is_err());
    }
}
