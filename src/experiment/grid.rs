//! The grid of cells (paper Tables 1-5) and the on-disk cell cache.
//!
//! A cell is one trained-and-evaluated model: a method, a starting point
//! (base or SFT model) and an optional ablation variant. Its result is written
//! atomically to `cells/<key>/result.json` together with the config
//! fingerprint; a rerun with the same fingerprint skips it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::ExperimentConfig;
use crate::eval::tables::ResultRow;
use crate::util::fsio::write_json_atomic;

/// The error types of Table 3: misdiagnosis, false positive, false negative
/// (neutralised or deleted). Declared in the order of their names, so that
/// cells sort as they did when the type was a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    Fn,
    Fp,
    Mis,
}

impl ErrorType {
    /// Table 3's rows, in the order the grid lists them.
    pub const TABLE_ORDER: [ErrorType; 3] = [ErrorType::Mis, ErrorType::Fp, ErrorType::Fn];

    /// The name used in cell keys (`only-mis`) and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Fn => "fn",
            ErrorType::Fp => "fp",
            ErrorType::Mis => "mis",
        }
    }

    /// Whether a pair of kind `kind` (`mis`, `fp`, `fn_neutral`, `fn_delete`)
    /// has this error type.
    pub fn includes(self, kind: &str) -> bool {
        match self {
            ErrorType::Fn => kind.starts_with("fn"),
            other => kind == other.as_str(),
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ablation of the HDPO cell.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Variant {
    /// Table 3: only pairs of one error type (`mis`, `fp`, `fn`).
    ErrorType(ErrorType),
    /// Table 5: another heatmap source (`mask`, `gradcam`, `attention`).
    Heatmap(String),
}

impl Variant {
    /// The short label used in keys and tables.
    pub fn label(&self) -> String {
        match self {
            Variant::ErrorType(e) => format!("only-{e}"),
            Variant::Heatmap(h) => format!("heatmap-{h}"),
        }
    }
}

/// One cell of the grid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    /// `base`, `sft`, or a preference method (`dpo`, `hdpo`, a baseline).
    pub method: String,
    /// Whether the method starts from the SFT model (always true for `sft`).
    pub sft: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Variant>,
}

impl Cell {
    pub fn new(method: &str, sft: bool) -> Self {
        Cell {
            method: method.into(),
            sft: sft || method == "sft",
            variant: None,
        }
    }

    /// A stable folder-safe key: `base`, `sft`, `hdpo`, `sft+hdpo`, `hdpo@only-fp`.
    pub fn key(&self) -> String {
        let mut k = match (self.method.as_str(), self.sft) {
            ("sft", _) | ("base", _) => self.method.clone(),
            (m, true) => format!("sft+{m}"),
            (m, false) => m.to_string(),
        };
        if let Some(v) = &self.variant {
            k.push('@');
            k.push_str(&v.label());
        }
        k
    }

    /// Whether the cell trains with preference pairs.
    pub fn is_preference(&self) -> bool {
        self.method != "base" && self.method != "sft"
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// The cells a config asks for, in a stable order: `base`, `sft` (when any
/// method starts from it), then every method for every starting point, then
/// the ablations (Tables 3 and 5) from the first starting point of
/// `grid.sft` that is the base model when there is one (the paper's Table 3
/// numbers are its no-SFT HDPO row). Table 4 (λ = 0) needs the `dpo` cell:
/// with λ = 0 every w of Eq. 11 is 1 and Eq. 13 is Eq. 1 on the same pairs,
/// so it is added when missing.
pub fn cells(cfg: &ExperimentConfig) -> Vec<Cell> {
    let g = &cfg.grid;
    let mut out = vec![Cell::new("base", false)];
    if g.sft.contains(&true) {
        out.push(Cell::new("sft", true));
    }
    let mut methods = g.methods.clone();
    let ablations = g.error_types || g.lambda_zero || !g.heatmap_sources.is_empty();
    if ablations && !methods.iter().any(|m| m == "hdpo") {
        methods.push("hdpo".into());
    }
    if g.lambda_zero && !methods.iter().any(|m| m == "dpo") {
        methods.push("dpo".into());
    }
    for &sft in &g.sft {
        for m in &methods {
            out.push(Cell::new(m, sft));
        }
    }
    let ablation_sft = !g.sft.contains(&false);
    if g.error_types {
        for e in ErrorType::TABLE_ORDER {
            out.push(Cell {
                variant: Some(Variant::ErrorType(e)),
                ..Cell::new("hdpo", ablation_sft)
            });
        }
    }
    for h in &g.heatmap_sources {
        if *h == cfg.curation.heatmap_source {
            continue;
        }
        out.push(Cell {
            variant: Some(Variant::Heatmap(h.clone())),
            ..Cell::new("hdpo", ablation_sft)
        });
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.key()));
    out
}

/// A point of a training curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
}

/// What one cell measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    /// The config fingerprint the cell was computed under.
    pub fingerprint: String,
    /// One row per dataset and subset (`all`, `subtle`).
    pub rows: Vec<ResultRow>,
    /// The cell's own training curve (empty for `base`).
    #[serde(default)]
    pub curve: Vec<CurvePoint>,
    /// Preference pairs (or SFT examples) it trained on.
    #[serde(default)]
    pub n_train: usize,
    /// Wall-clock seconds the cell took.
    pub seconds: f64,
}

/// The on-disk cache of finished cells under `<run>/cells/`.
#[derive(Clone, Debug)]
pub struct CellCache {
    pub dir: PathBuf,
    pub fingerprint: String,
}

impl CellCache {
    pub fn new(run_dir: &Path, fingerprint: &str) -> Self {
        CellCache {
            dir: run_dir.join("cells"),
            fingerprint: fingerprint.into(),
        }
    }

    /// The cell's folder (work files and `result.json`).
    pub fn cell_dir(&self, cell: &Cell) -> PathBuf {
        self.dir.join(cell.key())
    }

    fn result_path(&self, cell: &Cell) -> PathBuf {
        self.cell_dir(cell).join("result.json")
    }

    /// The finished result of `cell` under this fingerprint, if any. A result
    /// file that does not parse, or holds another cell or fingerprint, counts
    /// as not finished (it is recomputed and overwritten).
    pub fn get(&self, cell: &Cell) -> Option<CellResult> {
        let text = std::fs::read_to_string(self.result_path(cell)).ok()?;
        let r: CellResult = serde_json::from_str(&text).ok()?;
        (r.fingerprint == self.fingerprint && r.cell == *cell).then_some(r)
    }

    /// Store a finished result atomically.
    pub fn put(&self, result: &CellResult) -> Result<()> {
        write_json_atomic(&self.result_path(&result.cell), result)
    }
}

/// How a grid run went.
#[derive(Clone, Debug, Default)]
pub struct GridOutcome {
    /// Every cell's result, in grid order.
    pub results: Vec<CellResult>,
    /// Keys of cells computed now.
    pub computed: Vec<String>,
    /// Keys of cells taken from the cache.
    pub skipped: Vec<String>,
}

/// Run `cells`, skipping those the cache holds, calling `compute` for the
/// others (in order) and storing each result as soon as it is finished, so an
/// interrupted run resumes at the first unfinished cell.
pub fn run_cells<F>(cells: &[Cell], cache: &CellCache, mut compute: F) -> Result<GridOutcome>
where
    F: FnMut(&Cell) -> Result<CellResult>,
{
    let mut out = GridOutcome::default();
    for cell in cells {
        if let Some(r) = cache.get(cell) {
            tracing::info!("cell {cell}: finished earlier, skipped");
            out.skipped.push(cell.key());
            out.results.push(r);
            continue;
        }
        let mut r = compute(cell).with_context(|| format!("cell {cell}"))?;
        r.cell = cell.clone();
        r.fingerprint = cache.fingerprint.clone();
        cache.put(&r)?;
        out.computed.push(cell.key());
        out.results.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantom_grid_has_every_table_cell_once() {
        let cfg = ExperimentConfig::phantom();
        let cells = cells(&cfg);
        let keys: Vec<String> = cells.iter().map(Cell::key).collect();
        assert_eq!(keys[0], "base");
        assert_eq!(keys[1], "sft");
        for m in &cfg.grid.methods {
            assert!(keys.contains(m), "{m}");
            assert!(keys.contains(&format!("sft+{m}")), "sft+{m}");
        }
        for k in [
            "hdpo@only-mis",
            "hdpo@only-fp",
            "hdpo@only-fn",
            "hdpo@heatmap-mask",
            "hdpo@heatmap-gradcam",
            "hdpo@heatmap-attention",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}");
        }
        // 2 + 9 methods x 2 starting points + 3 error types + 3 heatmap sources.
        assert_eq!(keys.len(), 2 + 18 + 3 + 3);
        let set: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
    }

    #[test]
    fn lambda_zero_adds_the_dpo_cell() {
        let mut cfg = ExperimentConfig::phantom();
        cfg.grid.methods = vec!["hdpo".into()];
        cfg.grid.sft = vec![true];
        cfg.grid.error_types = false;
        cfg.grid.heatmap_sources.clear();
        let keys: Vec<String> = cells(&cfg).iter().map(Cell::key).collect();
        assert_eq!(keys, vec!["base", "sft", "sft+hdpo", "sft+dpo"]);
    }
}
