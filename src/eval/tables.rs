//! Result tables shaped like the paper's Tables 1-5: rows are methods (or
//! variants), column groups are datasets (or subsets), each group holds the
//! metrics of that dataset. Rendered as GitHub-flavoured Markdown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measured cell of an experiment: a method evaluated on one dataset
/// (and subset), with or without SFT first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub method: String,
    pub dataset: String,
    /// Whether the method started from the SFT model (paper Table 1, lower half).
    pub sft: bool,
    /// `all`, `subtle` (lesion < 5% of the image), or an error-type subset.
    pub subset: String,
    /// A variant of the method (error type, λ = 0, heatmap source), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Number of evaluated samples.
    pub n: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// A column group: the label shown above it and the metrics it shows.
#[derive(Clone, Debug)]
pub struct ColumnGroup {
    pub label: String,
    pub metrics: Vec<String>,
}

/// Render a table. `row_of` names the row of a result (e.g. the method) and
/// `group_of` its column group (e.g. the dataset); results for which either
/// returns `None` are left out. Rows keep the order of `row_order` and then
/// first appearance. Missing cells print `-`; values print as percentages
/// with two decimals, as in the paper.
pub fn markdown_table<R, G>(
    title: &str,
    results: &[ResultRow],
    groups: &[ColumnGroup],
    row_order: &[&str],
    row_of: R,
    group_of: G,
) -> String
where
    R: Fn(&ResultRow) -> Option<String>,
    G: Fn(&ResultRow) -> Option<String>,
{
    let mut rows: Vec<String> = row_order.iter().map(|s| s.to_string()).collect();
    let mut cells: BTreeMap<(String, String), &ResultRow> = BTreeMap::new();
    for r in results {
        let (Some(row), Some(group)) = (row_of(r), group_of(r)) else {
            continue;
        };
        if !rows.contains(&row) {
            rows.push(row.clone());
        }
        cells.insert((row, group), r);
    }
    rows.retain(|row| cells.keys().any(|(r, _)| r == row));

    let mut out = format!("### {title}\n\n| Method |");
    for g in groups {
        for m in &g.metrics {
            out.push_str(&format!(" {} {} |", g.label, m));
        }
    }
    out.push_str("\n|---|");
    for g in groups {
        for _ in &g.metrics {
            out.push_str("---:|");
        }
    }
    out.push('\n');
    for row in &rows {
        out.push_str(&format!("| {row} |"));
        for g in groups {
            for m in &g.metrics {
                let v = cells
                    .get(&(row.clone(), g.label.clone()))
                    .and_then(|r| r.metrics.get(m));
                match v {
                    Some(v) if v.is_finite() => out.push_str(&format!(" {:.2} |", v * 100.0)),
                    _ => out.push_str(" - |"),
                }
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, dataset: &str, metric: &str, v: f64) -> ResultRow {
        ResultRow {
            method: method.into(),
            dataset: dataset.into(),
            sft: false,
            subset: "all".into(),
            variant: None,
            n: 10,
            metrics: [(metric.to_string(), v)].into_iter().collect(),
        }
    }

    #[test]
    fn pivots_methods_by_dataset() {
        let results = vec![
            row("hdpo", "vqa", "closed", 0.5),
            row("base", "vqa", "closed", 0.25),
            row("base", "report", "bleu", 0.125),
        ];
        let groups = vec![
            ColumnGroup {
                label: "vqa".into(),
                metrics: vec!["closed".into()],
            },
            ColumnGroup {
                label: "report".into(),
                metrics: vec!["bleu".into()],
            },
        ];
        let t = markdown_table(
            "T1",
            &results,
            &groups,
            &["base", "dpo", "hdpo"],
            |r| Some(r.method.clone()),
            |r| Some(r.dataset.clone()),
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], "| Method | vqa closed | report bleu |");
        assert_eq!(lines[4], "| base | 25.00 | 12.50 |");
        // `dpo` has no results and is left out; `hdpo` has no report cell.
        assert_eq!(lines[5], "| hdpo | 50.00 | - |");
        assert_eq!(lines.len(), 6);
    }
}
