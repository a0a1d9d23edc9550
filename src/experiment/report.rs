//! `results.json`, the Markdown tables shaped like the paper's Tables 1-5 (and
//! the lesion-masking probe), and the PNG plots of a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::grid::{CellResult, Variant};
use crate::curate::audit::KeywordAudit;
use crate::eval::plot::{bar_chart, line_chart, Bar, Series};
use crate::eval::tables::{markdown_table, ColumnGroup, ResultRow};
use crate::util::fsio::{atomic_write, write_json_atomic};

/// The task of a dataset, which decides the metrics of its column group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Medical VQA: open-ended recall and closed-ended accuracy (LLaVA-Med's).
    Vqa,
    /// Report generation: METEOR, BLEU (mean of BLEU-1..4), ROUGE-L.
    Report,
}

impl Task {
    /// The metrics of the dataset's column group in Tables 1, 2 and 4.
    pub fn table_metrics(self) -> &'static [&'static str] {
        match self {
            Task::Vqa => &["open", "closed"],
            Task::Report => &["meteor", "bleu", "rouge_l"],
        }
    }
}

/// One dataset of the run, as the tables show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub label: String,
    pub task: Task,
}

/// The metric Table 3 and Table 5 show per dataset: the mean of the
/// dataset's table metrics (the paper's Table 3 "all three types" row equals
/// the mean of its Table 1 HDPO row: SLAKE (54.68 + 74.59) / 2 = 64.64).
pub const PRIMARY: &str = "primary";

/// The lesion-masking probe's metric name (`eval::probe`).
pub const PROBE: &str = "lesion_probe";

/// Add [`PRIMARY`] to a row: the mean of the table metrics it has.
pub fn add_primary(row: &mut ResultRow, task: Task) {
    let vals: Vec<f64> = task
        .table_metrics()
        .iter()
        .filter_map(|m| row.metrics.get(*m).copied())
        .filter(|v| v.is_finite())
        .collect();
    if !vals.is_empty() {
        row.metrics
            .insert(PRIMARY.into(), vals.iter().sum::<f64>() / vals.len() as f64);
    }
}

/// The display name of a method (paper Table 1 spelling).
pub fn method_label(method: &str) -> String {
    match method {
        "base" => "Base model".into(),
        "sft" => "SFT".into(),
        "self_reward" => "Self-Rewarding".into(),
        "dpo" => "DPO".into(),
        "povid" => "POVID".into(),
        "sima" => "SIMA".into(),
        "fisao" => "FiSAO".into(),
        "stllava" => "STLLaVA-Med".into(),
        "mmedpo" => "MMedPO".into(),
        "mdpo" => "mDPO".into(),
        "hdpo" => "HDPO (ours)".into(),
        other => other.into(),
    }
}

/// The Table 1 row label of a result: `Base model`, `+ DPO`, `+ SFT`, `+ SFT + DPO`.
pub fn row_label(method: &str, sft: bool) -> String {
    match (method, sft) {
        ("base", _) => method_label("base"),
        ("sft", _) => "+ SFT".into(),
        (m, false) => format!("+ {}", method_label(m)),
        (m, true) => format!("+ SFT + {}", method_label(m)),
    }
}

/// Row order of Tables 1 and 2 for `methods` (the grid's order).
pub fn table1_order(methods: &[String]) -> Vec<String> {
    let mut v = vec![row_label("base", false)];
    v.extend(methods.iter().map(|m| row_label(m, false)));
    v.push(row_label("sft", true));
    v.extend(methods.iter().map(|m| row_label(m, true)));
    v
}

fn groups(datasets: &[DatasetSpec], metric: Option<&str>) -> Vec<ColumnGroup> {
    datasets
        .iter()
        .map(|d| ColumnGroup {
            label: d.label.clone(),
            metrics: match metric {
                Some(m) => vec![m.to_string()],
                None => d
                    .task
                    .table_metrics()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            },
        })
        .collect()
}

/// Every row of every cell, flattened (what `results.json` lists).
pub fn all_rows(cells: &[CellResult]) -> Vec<ResultRow> {
    cells.iter().flat_map(|c| c.rows.iter().cloned()).collect()
}

fn refs(order: &[String]) -> Vec<&str> {
    order.iter().map(String::as_str).collect()
}

/// Table 1 (`subset = "all"`) or Table 2 (`subset = "subtle"`): methods by
/// datasets, without and with SFT.
pub fn table_methods(
    title: &str,
    rows: &[ResultRow],
    datasets: &[DatasetSpec],
    methods: &[String],
    subset: &str,
) -> String {
    let order = table1_order(methods);
    markdown_table(
        title,
        rows,
        &groups(datasets, None),
        &refs(&order),
        |r| (r.subset == subset && r.variant.is_none()).then(|| row_label(&r.method, r.sft)),
        |r| Some(r.dataset.clone()),
    )
}

/// Table 3: HDPO trained on one error type at a time, and on all three.
pub fn table_error_types(rows: &[ResultRow], datasets: &[DatasetSpec], sft: bool) -> String {
    let start = if sft { "sft" } else { "base" };
    let label = |r: &ResultRow| -> Option<String> {
        if r.subset != "all" {
            return None;
        }
        match (r.method.as_str(), r.variant.as_deref()) {
            (m, None) if m == start && r.sft == sft => Some("none (starting model)".into()),
            ("hdpo", Some("only-mis")) if r.sft == sft => Some("misdiagnosis only".into()),
            ("hdpo", Some("only-fp")) if r.sft == sft => Some("false positive only".into()),
            ("hdpo", Some("only-fn")) if r.sft == sft => Some("false negative only".into()),
            ("hdpo", None) if r.sft == sft => Some("all three (HDPO)".into()),
            _ => None,
        }
    };
    markdown_table(
        "Table 3: preference data curation (error types), mean of each dataset's metrics",
        rows,
        &groups(datasets, Some(PRIMARY)),
        &[
            "none (starting model)",
            "misdiagnosis only",
            "false positive only",
            "false negative only",
            "all three (HDPO)",
        ],
        label,
        |r| Some(r.dataset.clone()),
    )
}

/// Table 4: λ = 0 (w = 1, the `dpo` cell on the same curated pairs) against HDPO.
pub fn table_lambda(rows: &[ResultRow], datasets: &[DatasetSpec], sft: bool) -> String {
    let label = |r: &ResultRow| -> Option<String> {
        if r.subset != "all" || r.variant.is_some() || r.sft != sft {
            return None;
        }
        match r.method.as_str() {
            "dpo" => Some("HDPO, λ = 0 (w = 1)".into()),
            "hdpo" => Some("HDPO".into()),
            _ => None,
        }
    };
    markdown_table(
        "Table 4: lesion-aware loss weighting",
        rows,
        &groups(datasets, None),
        &["HDPO, λ = 0 (w = 1)", "HDPO"],
        label,
        |r| Some(r.dataset.clone()),
    )
}

/// A heatmap source's name in the tables.
pub fn heatmap_label(source: &str) -> String {
    match source {
        "file" => "file (DAug-style heatmaps)".into(),
        "mask" => "lesion mask".into(),
        "gradcam" => "GradCAM".into(),
        "attention" => "attention rollout".into(),
        o => o.into(),
    }
}

/// The k* audit of curation against the phantom's ground truth, one row per
/// heatmap source and dataset (Table 5's sources: does the heatmap make k*
/// name the lesion?).
pub fn table_keyword_audit(audits: &[KeywordAudit]) -> String {
    let mut md = String::from(
        "### Curation: does k* name the lesion? (phantom ground truth, training studies)\n\n\
         | Heatmap source | Dataset | Abnormal studies | k* names the finding or location | Share |\n\
         |---|---|---:|---:|---:|\n",
    );
    for a in audits {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} |\n",
            heatmap_label(&a.heatmaps),
            a.dataset,
            a.studies,
            a.hits,
            100.0 * a.rate
        ));
    }
    md
}

/// Table 5: heatmap sources of HDPO; `main_source` is the source of the main HDPO cell.
pub fn table_heatmaps(
    rows: &[ResultRow],
    datasets: &[DatasetSpec],
    sft: bool,
    main_source: &str,
) -> String {
    let name = heatmap_label;
    let label = |r: &ResultRow| -> Option<String> {
        if r.subset != "all" || r.method != "hdpo" || r.sft != sft {
            return None;
        }
        match r.variant.as_deref() {
            None => Some(name(main_source)),
            Some(v) => v.strip_prefix("heatmap-").map(name),
        }
    };
    let order: Vec<String> = ["gradcam", "attention", "mask", "file"]
        .iter()
        .map(|s| name(s))
        .collect();
    markdown_table(
        "Table 5: heatmap source, mean of each dataset's metrics",
        rows,
        &groups(datasets, Some(PRIMARY)),
        &refs(&order),
        label,
        |r| Some(r.dataset.clone()),
    )
}

/// The lesion-masking probe: share of abnormal test answers that change
/// when the lesion is masked, per method (paper Figure 1-I made a metric).
pub fn table_probe(rows: &[ResultRow], datasets: &[DatasetSpec], methods: &[String]) -> String {
    let order = table1_order(methods);
    markdown_table(
        "Lesion-masking probe: share of answers that change when the lesion is masked",
        rows,
        &groups(datasets, Some(PROBE)),
        &refs(&order),
        |r| (r.subset == "all" && r.variant.is_none()).then(|| row_label(&r.method, r.sft)),
        |r| Some(r.dataset.clone()),
    )
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReportFiles {
    pub results_json: PathBuf,
    pub tables_md: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// The `results.json` document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultsDoc {
    pub name: String,
    pub phantom: bool,
    pub datasets: Vec<DatasetSpec>,
    pub cells: Vec<CellResult>,
    pub rows: Vec<ResultRow>,
    /// How often curation's k* named the lesion, per heatmap source (phantom only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyword_audit: Vec<KeywordAudit>,
}

/// What the tables are about, besides the cells' results.
#[derive(Clone, Copy, Debug)]
pub struct ReportSpec<'a> {
    /// Markdown put above the tables.
    pub header: &'a str,
    pub datasets: &'a [DatasetSpec],
    /// Table 1 methods, in the config's order.
    pub methods: &'a [String],
    /// Whether the ablations (Tables 3-5) start from the SFT model.
    pub ablation_sft: bool,
    /// The heatmap source of the main HDPO cell.
    pub main_source: &'a str,
    /// The k* audits (phantom runs; may be empty).
    pub audits: &'a [KeywordAudit],
}

/// All tables as one Markdown document.
pub fn tables_markdown(spec: &ReportSpec, cells: &[CellResult]) -> String {
    let ReportSpec {
        header,
        datasets,
        methods,
        ablation_sft,
        main_source,
        audits,
    } = *spec;
    let rows = all_rows(cells);
    let mut md = String::from(header);
    md.push_str("\nValues are percentages. `-` marks a cell that was not run or a metric the subset lacks.\n\n");
    md.push_str(&table_methods(
        "Table 1: methods by dataset (all test samples)",
        &rows,
        datasets,
        methods,
        "all",
    ));
    md.push('\n');
    md.push_str(&table_methods(
        "Table 2: subtle-lesion subset (lesion < 5% of the image)",
        &rows,
        datasets,
        methods,
        "subtle",
    ));
    let ablated =
        |f: &dyn Fn(&Variant) -> bool| cells.iter().any(|c| c.cell.variant.as_ref().is_some_and(f));
    if ablated(&|v| matches!(v, Variant::ErrorType(_))) {
        md.push('\n');
        md.push_str(&table_error_types(&rows, datasets, ablation_sft));
    }
    let has = |m: &str| {
        cells
            .iter()
            .any(|c| c.cell.method == m && c.cell.variant.is_none() && c.cell.sft == ablation_sft)
    };
    if has("dpo") && has("hdpo") {
        md.push('\n');
        md.push_str(&table_lambda(&rows, datasets, ablation_sft));
    }
    if ablated(&|v| matches!(v, Variant::Heatmap(_))) {
        md.push('\n');
        md.push_str(&table_heatmaps(&rows, datasets, ablation_sft, main_source));
    }
    if rows.iter().any(|r| r.metrics.contains_key(PROBE)) {
        md.push('\n');
        md.push_str(&table_probe(&rows, datasets, methods));
    }
    if !audits.is_empty() {
        md.push('\n');
        md.push_str(&table_keyword_audit(audits));
    }
    md
}

/// Write `results.json`, `tables.md` and the plots into `out`:
/// `plots/training_curves.png` (preference loss per step of each cell
/// without a variant; `_sft` for the cells that start from the SFT model),
/// `plots/reward_margins[_sft].png`, `plots/sft_curve.png`, and one bar chart per metric
/// and starting point
/// (`plots/metric_<name>.png`, bars per method, grouped by dataset).
pub fn write_report(
    out: &Path,
    name: &str,
    phantom: bool,
    spec: &ReportSpec,
    cells: &[CellResult],
) -> Result<ReportFiles> {
    let rows = all_rows(cells);
    let doc = ResultsDoc {
        name: name.into(),
        phantom,
        datasets: spec.datasets.to_vec(),
        cells: cells.to_vec(),
        rows: rows.clone(),
        keyword_audit: spec.audits.to_vec(),
    };
    let results_json = out.join("results.json");
    write_json_atomic(&results_json, &doc)?;
    let md = tables_markdown(spec, cells);
    let tables_md = out.join("tables.md");
    atomic_write(&tables_md, md.as_bytes())?;
    let plots = write_plots(&out.join("plots"), cells, spec.datasets, spec.methods)?;
    Ok(ReportFiles {
        results_json,
        tables_md,
        plots,
    })
}

/// The plots (see [`write_report`]); returns the files written.
pub fn write_plots(
    dir: &Path,
    cells: &[CellResult],
    datasets: &[DatasetSpec],
    methods: &[String],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let curve = |c: &CellResult| Series {
        label: row_label(&c.cell.method, c.cell.sft)
            .trim_start_matches("+ ")
            .to_string(),
        points: c.curve.iter().map(|p| (p.step as f64, p.loss)).collect(),
    };
    // One chart per starting point, so that every line has its own colour.
    for (sft, suffix, from) in [
        (false, "", "from the base model"),
        (true, "_sft", "from the SFT model"),
    ] {
        let pref: Vec<Series> = cells
            .iter()
            .filter(|c| {
                c.cell.is_preference()
                    && c.cell.variant.is_none()
                    && c.cell.sft == sft
                    && !c.curve.is_empty()
            })
            .map(curve)
            .collect();
        if !pref.is_empty() {
            let p = dir.join(format!("training_curves{suffix}.png"));
            line_chart(
                &p,
                &format!("Preference training loss per step, {from}"),
                "optimiser step",
                "loss",
                &pref,
            )?;
            written.push(p);
        }
        // The reward margin (α h of Eq. 1 / 13) is comparable across losses,
        // whereas HDPO's loss is scaled by the weights w.
        let margins: Vec<Series> = cells
            .iter()
            .filter(|c| c.cell.is_preference() && c.cell.variant.is_none() && c.cell.sft == sft)
            .map(|c| Series {
                points: c
                    .curve
                    .iter()
                    .filter_map(|p| p.margin.map(|m| (p.step as f64, m)))
                    .collect(),
                ..curve(c)
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !margins.is_empty() {
            let p = dir.join(format!("reward_margins{suffix}.png"));
            line_chart(
                &p,
                &format!("Reward margin (chosen - rejected) per step, {from}"),
                "optimiser step",
                "margin",
                &margins,
            )?;
            written.push(p);
        }
    }
    let sft: Vec<Series> = cells
        .iter()
        .filter(|c| c.cell.method == "sft" && !c.curve.is_empty())
        .map(curve)
        .collect();
    if !sft.is_empty() {
        let p = dir.join("sft_curve.png");
        line_chart(
            &p,
            "SFT loss per step",
            "optimiser step",
            "NLL per token",
            &sft,
        )?;
        written.push(p);
    }
    // One bar chart per metric, bars per method (Table 1 order), grouped by dataset.
    let order = table1_order(methods);
    let mut metrics: Vec<&str> = Vec::new();
    for d in datasets {
        for m in d.task.table_metrics() {
            if !metrics.contains(m) {
                metrics.push(m);
            }
        }
    }
    metrics.push(PROBE);
    let rows = all_rows(cells);
    for m in metrics {
        for (sft, suffix, from) in [
            (false, "", "from the base model"),
            (true, "_sft", "from the SFT model"),
        ] {
            let mut bars: BTreeMap<(usize, usize), Bar> = BTreeMap::new();
            for r in rows
                .iter()
                .filter(|r| r.subset == "all" && r.variant.is_none() && r.sft == sft)
            {
                let (Some(v), Some(di)) = (
                    r.metrics.get(m).copied().filter(|v| v.is_finite()),
                    datasets.iter().position(|d| d.label == r.dataset),
                ) else {
                    continue;
                };
                let label = row_label(&r.method, r.sft);
                let oi = order.iter().position(|o| *o == label).unwrap_or(usize::MAX);
                bars.insert(
                    (di, oi),
                    Bar {
                        group: r.dataset.clone(),
                        label: label.trim_start_matches("+ ").to_string(),
                        value: v * 100.0,
                        interval: None,
                    },
                );
            }
            if bars.is_empty() {
                continue;
            }
            let p = dir.join(format!("metric_{m}{suffix}.png"));
            let title = match m {
                PROBE => format!("Lesion-masking probe: answers changed (%), {from}"),
                other => format!("{other} (%), {from}"),
            };
            bar_chart(&p, &title, "%", &bars.into_values().collect::<Vec<_>>())?;
            written.push(p);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::grid::Cell;

    fn row(method: &str, sft: bool, dataset: &str, subset: &str, m: &[(&str, f64)]) -> ResultRow {
        ResultRow {
            method: method.into(),
            dataset: dataset.into(),
            sft,
            subset: subset.into(),
            variant: None,
            n: 4,
            metrics: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn primary_is_the_mean_of_the_table_metrics() {
        let mut r = row(
            "hdpo",
            false,
            "SLAKE",
            "all",
            &[("open", 0.5468), ("closed", 0.7459)],
        );
        add_primary(&mut r, Task::Vqa);
        assert!((r.metrics[PRIMARY] - 0.64635).abs() < 1e-9);
    }

    #[test]
    fn table1_rows_follow_the_paper_order() {
        let ds = vec![DatasetSpec {
            label: "VQA".into(),
            task: Task::Vqa,
        }];
        let rows = vec![
            row(
                "hdpo",
                true,
                "VQA",
                "all",
                &[("open", 0.5), ("closed", 0.75)],
            ),
            row(
                "base",
                false,
                "VQA",
                "all",
                &[("open", 0.25), ("closed", 0.5)],
            ),
            row("sft", true, "VQA", "all", &[("open", 0.3), ("closed", 0.6)]),
            row("hdpo", false, "VQA", "subtle", &[("open", 0.1)]),
        ];
        let cells = vec![CellResult {
            cell: Cell::new("base", false),
            fingerprint: "x".into(),
            rows,
            curve: vec![],
            n_train: 0,
            seconds: 0.0,
        }];
        let md = table_methods("T", &all_rows(&cells), &ds, &["hdpo".to_string()], "all");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[2], "| Method | VQA open | VQA closed |");
        assert_eq!(lines[4], "| Base model | 25.00 | 50.00 |");
        assert_eq!(lines[5], "| + SFT | 30.00 | 60.00 |");
        assert_eq!(lines[6], "| + SFT + HDPO (ours) | 50.00 | 75.00 |");
        assert_eq!(lines.len(), 7);
    }
}
