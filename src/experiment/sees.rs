//! Does the base model see lesions? The regime HDPO is for (paper 1, 4.2):
//! a model that answers closed questions about conspicuous lesions well,
//! whose answers follow the lesion (the lesion-masking probe, `eval::probe`),
//! and for which subtle lesions (< 5% of the image) stay hard. Computed from
//! the base cell's VQA predictions, the test samples' lesion shares
//! (`eval::subsets`) and its probe file, and printed with the tables.
//! docs/experiments.md ("Choosing the phantom base model") records how the
//! phantom base model was chosen to meet these targets.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::report::Task;
use crate::data::{AnswerType, Sample};
use crate::eval::probe::ProbeResult;
use crate::eval::subsets::lesion_share;
use crate::model::PredictionRow;

/// Closed-VQA accuracy on conspicuous lesions the base model must reach.
pub const TARGET_CONSPICUOUS: f64 = 0.85;
/// Share of conspicuous-lesion answers that must change when the lesion is masked.
pub const TARGET_PROBE: f64 = 0.5;
/// Points by which subtle-lesion accuracy must stay below conspicuous.
pub const TARGET_SUBTLE_GAP: f64 = 0.05;

/// An accuracy and the number of questions it is over.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub value: f64,
    pub n: usize,
}

/// The base model's "sees lesions" figures on one VQA dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeesLesions {
    pub dataset: String,
    /// Closed-VQA accuracy (the tables' `closed`) by study subset.
    pub conspicuous: Option<Accuracy>,
    pub subtle: Option<Accuracy>,
    pub normal: Option<Accuracy>,
    /// The probe's change rate on samples with a conspicuous lesion.
    pub probe_conspicuous: Option<Accuracy>,
}

fn subset_of(s: &Sample, threshold: f64) -> Result<&'static str> {
    Ok(match lesion_share(s)? {
        Some(a) if a > 0.0 && a < threshold => "subtle",
        Some(a) if a > 0.0 => "conspicuous",
        _ => "normal",
    })
}

/// Measure on the predictions (`preds`, in `test` order) and the probe result.
pub fn measure(
    dataset: &str,
    test: &[Sample],
    preds: &[PredictionRow],
    probe: Option<&ProbeResult>,
    threshold: f64,
) -> Result<SeesLesions> {
    let meteor = crate::eval::metrics::Meteor::exact_stem();
    let mut by: std::collections::BTreeMap<&str, Vec<PredictionRow>> = Default::default();
    for (s, p) in test.iter().zip(preds) {
        anyhow::ensure!(
            s.id == p.id,
            "prediction '{}' does not match test sample '{}'",
            p.id,
            s.id
        );
        if s.answer_type == AnswerType::Closed {
            by.entry(subset_of(s, threshold)?)
                .or_default()
                .push(p.clone());
        }
    }
    let mut acc = |name: &str| -> Result<Option<Accuracy>> {
        let Some(rows) = by.remove(name) else {
            return Ok(None);
        };
        let m = super::pieces::score(Task::Vqa, &rows, &meteor)?;
        Ok(m.get("closed").map(|&value| Accuracy {
            value,
            n: rows.len(),
        }))
    };
    let (conspicuous, subtle, normal) = (acc("conspicuous")?, acc("subtle")?, acc("normal")?);
    let probe_conspicuous = match probe {
        Some(p) => {
            let mut n = 0usize;
            let mut changed = 0usize;
            for item in &p.items {
                let Some(s) = test.iter().find(|s| s.id == item.id) else {
                    continue;
                };
                if subset_of(s, threshold)? == "conspicuous" {
                    n += 1;
                    changed += usize::from(item.changed);
                }
            }
            (n > 0).then(|| Accuracy {
                value: changed as f64 / n as f64,
                n,
            })
        }
        None => None,
    };
    Ok(SeesLesions {
        dataset: dataset.into(),
        conspicuous,
        subtle,
        normal,
        probe_conspicuous,
    })
}

/// Read the base cell's prediction and probe files of `slug` in `cell_dir`.
pub fn from_files(
    dataset: &str,
    slug: &str,
    test: &[Sample],
    cell_dir: &Path,
    threshold: f64,
) -> Result<SeesLesions> {
    let pred_path = cell_dir.join(format!("predictions_{slug}.jsonl"));
    let text = std::fs::read_to_string(&pred_path)
        .with_context(|| format!("cannot read {}", pred_path.display()))?;
    let preds = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<PredictionRow>(l)
                .with_context(|| format!("{}: record {i}", pred_path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let probe_path = cell_dir.join(format!("probe_{slug}.json"));
    let probe: Option<ProbeResult> = match std::fs::read_to_string(&probe_path) {
        Ok(t) => {
            Some(serde_json::from_str(&t).with_context(|| format!("{}", probe_path.display()))?)
        }
        Err(_) => None,
    };
    measure(dataset, test, &preds, probe.as_ref(), threshold)
}

impl SeesLesions {
    /// Whether every target is met (each figure present).
    pub fn meets_targets(&self) -> bool {
        matches!(
            (self.conspicuous, self.subtle, self.probe_conspicuous),
            (Some(c), Some(s), Some(p))
                if c.value >= TARGET_CONSPICUOUS
                    && p.value >= TARGET_PROBE
                    && c.value - s.value >= TARGET_SUBTLE_GAP
        )
    }

    /// A few Markdown lines for `tables.md` and the demo's output.
    pub fn markdown(&self) -> String {
        let pct = |a: Option<Accuracy>| match a {
            Some(a) => format!("{:.1}% (n = {})", a.value * 100.0, a.n),
            None => "n/a (no such questions)".into(),
        };
        let mark = |ok: bool| if ok { "met" } else { "NOT met" };
        let c_ok = self
            .conspicuous
            .is_some_and(|c| c.value >= TARGET_CONSPICUOUS);
        let p_ok = self
            .probe_conspicuous
            .is_some_and(|p| p.value >= TARGET_PROBE);
        let gap = match (self.conspicuous, self.subtle) {
            (Some(c), Some(s)) => Some(c.value - s.value),
            _ => None,
        };
        let s_ok = gap.is_some_and(|g| g >= TARGET_SUBTLE_GAP);
        format!(
            "## Does the base model see lesions? ({}: {})\n\n\
             - closed-VQA accuracy on conspicuous lesions: {} (target >= {:.0}%: {})\n\
             - answers that change when a conspicuous lesion is masked (probe): {} (target >= {:.0}%: {})\n\
             - closed-VQA accuracy on subtle lesions: {}, {} below conspicuous (target >= {:.0} points: {})\n\
             - closed-VQA accuracy on normal studies: {}\n",
            self.dataset,
            if self.meets_targets() {
                "yes, every target met"
            } else {
                "no, see below"
            },
            pct(self.conspicuous),
            TARGET_CONSPICUOUS * 100.0,
            mark(c_ok),
            pct(self.probe_conspicuous),
            TARGET_PROBE * 100.0,
            mark(p_ok),
            pct(self.subtle),
            gap.map_or("n/a".into(), |g| format!("{:.1} points", g * 100.0)),
            TARGET_SUBTLE_GAP * 100.0,
            mark(s_ok),
            pct(self.normal),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::eval::probe::ProbeItem;

    fn sample(id: &str, area: f64, closed: bool, answer: &str) -> Sample {
        let mut meta = serde_json::Map::new();
        meta.insert("lesion_area".into(), area.into());
        Sample {
            id: id.into(),
            dataset: "phantom".into(),
            split: Split::Test,
            images: vec![],
            question: Some("q".into()),
            answer: answer.into(),
            answer_type: if closed {
                AnswerType::Closed
            } else {
                AnswerType::Open
            },
            mask: None,
            meta,
        }
    }

    fn pred(s: &Sample, p: &str) -> PredictionRow {
        PredictionRow {
            id: s.id.clone(),
            question: "q".into(),
            reference: s.answer.clone(),
            prediction: p.into(),
            answer_type: if s.answer_type == AnswerType::Closed {
                "closed".into()
            } else {
                "open".into()
            },
        }
    }

    #[test]
    fn subsets_probe_and_targets() {
        let test = vec![
            sample("c1", 0.2, true, "Yes"),
            sample("c2", 0.1, true, "No"),
            sample("c3", 0.1, false, "nodule"),
            sample("s1", 0.01, true, "Yes"),
            sample("s2", 0.02, true, "No"),
            sample("n1", 0.0, true, "No"),
        ];
        let answers = ["Yes", "No", "cardiomegaly", "No", "No", "Yes"];
        let preds: Vec<_> = test.iter().zip(answers).map(|(s, a)| pred(s, a)).collect();
        let item = |id: &str, changed: bool| ProbeItem {
            id: id.into(),
            original: "a".into(),
            masked: if changed { "b".into() } else { "a".into() },
            changed,
            mask_share: 0.1,
        };
        let probe = ProbeResult {
            n: 3,
            changed: 2,
            rate: 2.0 / 3.0,
            items: vec![item("c1", true), item("c3", false), item("s1", true)],
        };
        let r = measure("Phantom VQA", &test, &preds, Some(&probe), 0.05).unwrap();
        assert_eq!(r.conspicuous, Some(Accuracy { value: 1.0, n: 2 }));
        assert_eq!(r.subtle, Some(Accuracy { value: 0.5, n: 2 }));
        assert_eq!(r.normal, Some(Accuracy { value: 0.0, n: 1 }));
        assert_eq!(r.probe_conspicuous, Some(Accuracy { value: 0.5, n: 2 }));
        assert!(r.meets_targets(), "{r:?}");
        let md = r.markdown();
        assert!(
            md.contains("100.0% (n = 2)") && md.contains("50.0 points"),
            "{md}"
        );
        // The probe below target: not met, and said so.
        let probe = ProbeResult {
            items: vec![item("c1", false), item("c3", false)],
            ..probe
        };
        let r = measure("Phantom VQA", &test, &preds, Some(&probe), 0.05).unwrap();
        assert!(!r.meets_targets());
        assert!(r.markdown().contains("NOT met"), "{}", r.markdown());
        // Predictions out of order are an error naming both ids.
        let mut swapped = preds.clone();
        swapped.swap(0, 1);
        let e = measure("d", &test, &swapped, None, 0.05)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c2") && e.contains("c1"), "{e}");
    }
}
