//! The hallucination section of a phantom experiment's report: every cell's
//! predictions (the files `cells/<key>/predictions_<dataset>.jsonl`) scored
//! against the phantom's ground truth with [`crate::eval::findings`] (finding
//! precision / recall / F1, hallucination, omission and misdiagnosis rates,
//! closed-VQA accuracy, the "yes" rate on normal studies; five subsets; 95%
//! bootstrap intervals), and HDPO tested against every other method from the
//! same starting point on the same test items (paired bootstrap and exact
//! McNemar). Added to `tables.md` and, as `hallucination`, to `results.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::grid::Cell;
use super::pieces::slug;
use super::pieces::DatasetData;
use super::report::{row_label, ReportFiles};
use crate::eval::findings::{
    self, format_p, FindingsOptions, FindingsReport, GroundTruth, Item, Metric, PairedReport,
    Scored, Subset,
};
use crate::eval::plot::{bar_chart, Bar};
use crate::util::fsio::{atomic_write, write_json_atomic};

/// One cell's metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellFindings {
    /// The cell key (`hdpo`, `sft+dpo`, `hdpo@only-fp`).
    pub cell: String,
    /// The row label of the tables (`+ HDPO (ours)`).
    pub label: String,
    pub report: FindingsReport,
}

/// HDPO against one other cell from the same starting point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellComparison {
    pub a: String,
    pub b: String,
    pub paired: PairedReport,
}

/// The hallucination section (`results.json` key `hallucination`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HallucinationDoc {
    pub options: FindingsOptions,
    pub cells: Vec<CellFindings>,
    pub comparisons: Vec<CellComparison>,
}

fn label_of(cell: &Cell) -> String {
    let mut l = row_label(&cell.method, cell.sft);
    if let Some(v) = &cell.variant {
        l.push_str(&format!(" ({})", v.label()));
    }
    l
}

/// The scored items of one cell: its predictions on every phantom dataset.
fn cell_items(dir: &Path, datasets: &[&DatasetData]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for d in datasets {
        let path = dir.join(format!("predictions_{}.jsonl", slug(&d.spec.label)));
        let rows = findings::read_prediction_rows(&path)?;
        items.extend(findings::items_from_rows(
            &d.test,
            &rows,
            &path.display().to_string(),
        )?);
    }
    Ok(items)
}

/// Score every cell on the phantom datasets of `datasets` (those whose folder
/// holds `phantom.json`); `None` when there is none. `cell_dir` gives a
/// cell's folder.
pub fn compute(
    cells: &[Cell],
    cell_dir: impl Fn(&Cell) -> PathBuf,
    datasets: &[DatasetData],
    opts: &FindingsOptions,
) -> Result<Option<HallucinationDoc>> {
    let phantom: Vec<&DatasetData> = datasets
        .iter()
        .filter(|d| d.root.join("phantom.json").is_file())
        .collect();
    if phantom.is_empty() {
        return Ok(None);
    }
    let mut truth = GroundTruth::new();
    for d in &phantom {
        truth.extend(findings::load_phantom_truth(&d.root)?.0);
    }
    let mut scored: BTreeMap<String, Scored> = BTreeMap::new();
    let mut out = Vec::new();
    for cell in cells {
        let items = cell_items(&cell_dir(cell), &phantom)
            .with_context(|| format!("hallucination metrics of cell {}", cell.key()))?;
        let s = Scored::new(&truth, &items)?;
        out.push(CellFindings {
            cell: cell.key(),
            label: label_of(cell),
            report: FindingsReport::compute(&s, opts),
        });
        scored.insert(cell.key(), s);
    }
    let mut comparisons = Vec::new();
    for a in cells
        .iter()
        .filter(|c| c.method == "hdpo" && c.variant.is_none())
    {
        for b in cells
            .iter()
            .filter(|c| c.variant.is_none() && c.sft == a.sft && c.method != "hdpo")
        {
            let paired = findings::paired_test(&scored[&a.key()], &scored[&b.key()], opts)?;
            comparisons.push(CellComparison {
                a: a.key(),
                b: b.key(),
                paired,
            });
        }
    }
    Ok(Some(HallucinationDoc {
        options: opts.clone(),
        cells: out,
        comparisons,
    }))
}

/// The metrics the paired table shows, and the subsets.
const PAIRED_METRICS: [Metric; 3] = [
    Metric::HallucinationRate,
    Metric::FindingF1,
    Metric::ClosedAccuracy,
];
const PAIRED_SUBSETS: [Subset; 3] = [Subset::All, Subset::Subtle, Subset::Conspicuous];

impl HallucinationDoc {
    /// Markdown: one table per metric (rows: cells; columns: subsets) and the
    /// paired table of HDPO against the others.
    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let mut s = format!(
            "## Hallucination against the phantom's ground truth\n\n\
             Findings read from each report and closed answer and compared with the study's lesion \
             (docs/metrics.md defines every rate). Percentages with the {:.0}% percentile bootstrap \
             interval over studies ({} resamples, seed {}) and n, the rate's denominator; subtle: lesion \
             < {}% of the image; ↓: lower is better.\n",
            o.confidence * 100.0,
            o.bootstrap,
            o.seed,
            o.subtle_threshold * 100.0
        );
        for m in Metric::ALL {
            s.push_str(&format!("\n### {}\n\n| method |", m.label()));
            for sub in Subset::ALL {
                s.push_str(&format!(" {} |", sub.name()));
            }
            s.push_str("\n|---|");
            s.push_str(&"---|".repeat(Subset::ALL.len()));
            s.push('\n');
            for c in &self.cells {
                s.push_str(&format!("| {} |", c.label));
                for sub in Subset::ALL {
                    let cell = c
                        .report
                        .get(sub, m)
                        .map(findings::format_estimate)
                        .unwrap_or_else(|| "–".into());
                    s.push_str(&format!(" {cell} |"));
                }
                s.push('\n');
            }
        }
        if !self.comparisons.is_empty() {
            s.push_str(
                "\n### HDPO against each method from the same start (paired, same test items)\n\n\
                 A − B in points [95% paired-bootstrap interval over studies], two-sided p of the \
                 paired sign-flip test over studies; closed-VQA accuracy also exact McNemar p over \
                 questions. The paired-bootstrap p-values are in results.json.\n\n| A vs B | subset |",
            );
            for m in PAIRED_METRICS {
                s.push_str(&format!(" Δ {} |", m.label()));
            }
            s.push_str("\n|---|---|");
            s.push_str(&"---|".repeat(PAIRED_METRICS.len()));
            s.push('\n');
            let label = |key: &str| {
                self.cells
                    .iter()
                    .find(|c| c.cell == key)
                    .map(|c| c.label.trim_start_matches("+ ").to_string())
                    .unwrap_or_else(|| key.to_string())
            };
            for c in &self.comparisons {
                for sub in PAIRED_SUBSETS {
                    s.push_str(&format!(
                        "| {} vs {} | {} |",
                        label(&c.a),
                        label(&c.b),
                        sub.name()
                    ));
                    for m in PAIRED_METRICS {
                        let cell = c
                            .paired
                            .get(sub, m)
                            .and_then(|p| {
                                let b = p.bootstrap.as_ref()?;
                                let ci = b
                                    .interval
                                    .map(|iv| {
                                        format!(" [{:+.1}, {:+.1}]", iv.lo * 100.0, iv.hi * 100.0)
                                    })
                                    .unwrap_or_default();
                                let mc = match (m, p.mcnemar) {
                                    (Metric::ClosedAccuracy, Some(mc)) => {
                                        format!("; McNemar p={}", format_p(mc.p_value))
                                    }
                                    _ => String::new(),
                                };
                                Some(format!(
                                    "{:+.1}{ci} p={}{mc}",
                                    b.diff * 100.0,
                                    p.sign_flip_p.map(format_p).unwrap_or_else(|| "–".into())
                                ))
                            })
                            .unwrap_or_else(|| "–".into());
                        s.push_str(&format!(" {cell} |"));
                    }
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Add the section to a written report: appended to `tables.md` and
    /// stored under `hallucination` in `results.json` (both rewritten
    /// atomically).
    /// The section's figures in `plots_dir`: for the hallucination, omission and
    /// misdiagnosis rates and closed-VQA accuracy, one bar chart per starting point
    /// (`findings_<metric>.png` from the base model, `findings_<metric>_sft.png` from the
    /// SFT model): bars per method, grouped by subset (normal, subtle, conspicuous, all),
    /// in percent with the 95% bootstrap interval as an error bar. Ablation cells
    /// (Tables 3-5) are left out. Returns the files written.
    pub fn write_figures(&self, plots_dir: &Path) -> Result<Vec<PathBuf>> {
        const METRICS: [Metric; 4] = [
            Metric::HallucinationRate,
            Metric::OmissionRate,
            Metric::MisdiagnosisRate,
            Metric::ClosedAccuracy,
        ];
        const SUBSETS: [Subset; 4] = [
            Subset::Normal,
            Subset::Subtle,
            Subset::Conspicuous,
            Subset::All,
        ];
        let mut written = Vec::new();
        for (sft, suffix, from) in [
            (false, "", "from the base model"),
            (true, "_sft", "from the SFT model"),
        ] {
            let cells: Vec<&CellFindings> = self
                .cells
                .iter()
                .filter(|c| !c.cell.contains('@'))
                .filter(|c| (c.cell == "sft" || c.cell.starts_with("sft+")) == sft)
                .collect();
            for metric in METRICS {
                let mut bars = Vec::new();
                for subset in SUBSETS {
                    for c in &cells {
                        let Some(e) = c.report.get(subset, metric) else {
                            continue;
                        };
                        let Some(v) = e.value.filter(|v| v.is_finite()) else {
                            continue;
                        };
                        bars.push(Bar {
                            group: format!("{} (n={})", subset.name(), e.n),
                            label: c.label.trim_start_matches("+ ").to_string(),
                            value: 100.0 * v,
                            interval: e.interval.map(|i| (100.0 * i.lo, 100.0 * i.hi)),
                        });
                    }
                }
                if bars.is_empty() {
                    continue;
                }
                let path = plots_dir.join(format!("findings_{}{suffix}.png", metric.name()));
                let title = format!(
                    "{} (%), {from}; 95% intervals",
                    metric.label().trim_end_matches(" ↓")
                );
                bar_chart(&path, &title, "%", &bars)?;
                written.push(path);
            }
        }
        Ok(written)
    }

    pub fn append_to(&self, files: &ReportFiles) -> Result<()> {
        let text = std::fs::read_to_string(&files.results_json)
            .with_context(|| format!("cannot read {}", files.results_json.display()))?;
        let mut doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", files.results_json.display()))?;
        if let Value::Object(m) = &mut doc {
            m.insert("hallucination".into(), serde_json::to_value(self)?);
        }
        write_json_atomic(&files.results_json, &doc)?;
        let mut md = std::fs::read_to_string(&files.tables_md)
            .with_context(|| format!("cannot read {}", files.tables_md.display()))?;
        if !md.ends_with('\n') {
            md.push('\n');
        }
        md.push('\n');
        md.push_str(&self.to_markdown());
        atomic_write(&files.tables_md, md.as_bytes())
    }
}
