//! Hallucination metrics against the phantom's ground truth, per subset,
//! with percentile bootstrap intervals over studies, and the paired test of
//! two methods on the same items. `docs/metrics.md` defines every rate.
//!
//! Every item adds integer counts ([`Counts`]); a study's counts are the sum
//! over its items, and every metric is a ratio of two sums over the studies
//! of a subset. A bootstrap resample draws studies, so the questions of one
//! study stay together (they are not independent).

use std::collections::{BTreeMap, HashMap};

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::extract::{extract, parse_answer};
use super::truth::{GroundTruth, Item, ItemKind, StudyFacts, Subset};
use crate::eval::stats::{self, Interval, McNemar, PairedBootstrap};
use crate::util::seed::rng_for;

/// Integer outcomes of one item, or their sum over a study or a subset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Reports scored.
    pub reports: u64,
    /// Findings the reports state (after merging repeats).
    pub stated: u64,
    /// Stated findings with the lesion's kind, side and lobe.
    pub true_positive: u64,
    /// Lesions present (one per abnormal study's report).
    pub present: u64,
    /// Reports stating at least one finding kind the study does not have.
    pub hallucinating: u64,
    /// Reports of abnormal studies.
    pub abnormal_reports: u64,
    /// Reports of abnormal studies that state no finding.
    pub omitted: u64,
    /// Reports of abnormal studies that state findings, none of them with
    /// the lesion's kind, side and lobe.
    pub misdiagnosed: u64,
    /// Closed questions scored.
    pub closed: u64,
    /// Closed questions answered correctly.
    pub closed_correct: u64,
    /// Closed questions about an abnormality on normal studies whose answer
    /// is "no".
    pub normal_no: u64,
    /// Of those, the ones answered "yes".
    pub normal_yes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.reports += o.reports;
        self.stated += o.stated;
        self.true_positive += o.true_positive;
        self.present += o.present;
        self.hallucinating += o.hallucinating;
        self.abnormal_reports += o.abnormal_reports;
        self.omitted += o.omitted;
        self.misdiagnosed += o.misdiagnosed;
        self.closed += o.closed;
        self.closed_correct += o.closed_correct;
        self.normal_no += o.normal_no;
        self.normal_yes += o.normal_yes;
    }

    fn sum<'a>(it: impl IntoIterator<Item = &'a Counts>) -> Counts {
        let mut c = Counts::default();
        for x in it {
            c.add(x);
        }
        c
    }
}

/// The hallucination metrics, each a ratio of [`Counts`] sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// true_positive / stated.
    FindingPrecision,
    /// true_positive / present.
    FindingRecall,
    /// 2 · true_positive / (stated + present), the harmonic mean of the two.
    FindingF1,
    /// hallucinating / reports.
    HallucinationRate,
    /// omitted / abnormal_reports.
    OmissionRate,
    /// misdiagnosed / abnormal_reports.
    MisdiagnosisRate,
    /// closed_correct / closed.
    ClosedAccuracy,
    /// normal_yes / normal_no.
    NormalYesRate,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::FindingPrecision,
        Metric::FindingRecall,
        Metric::FindingF1,
        Metric::HallucinationRate,
        Metric::OmissionRate,
        Metric::MisdiagnosisRate,
        Metric::ClosedAccuracy,
        Metric::NormalYesRate,
    ];

    /// The key in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Metric::FindingPrecision => "finding_precision",
            Metric::FindingRecall => "finding_recall",
            Metric::FindingF1 => "finding_f1",
            Metric::HallucinationRate => "hallucination_rate",
            Metric::OmissionRate => "omission_rate",
            Metric::MisdiagnosisRate => "misdiagnosis_rate",
            Metric::ClosedAccuracy => "closed_accuracy",
            Metric::NormalYesRate => "normal_yes_rate",
        }
    }

    /// The row label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Metric::FindingPrecision => "finding precision",
            Metric::FindingRecall => "finding recall",
            Metric::FindingF1 => "finding F1",
            Metric::HallucinationRate => "hallucination rate ↓",
            Metric::OmissionRate => "omission rate ↓",
            Metric::MisdiagnosisRate => "misdiagnosis rate ↓",
            Metric::ClosedAccuracy => "closed-VQA accuracy",
            Metric::NormalYesRate => "\"yes\" rate, normal ↓",
        }
    }

    /// (numerator, denominator) of the metric on `c`.
    pub fn ratio(self, c: &Counts) -> (u64, u64) {
        match self {
            Metric::FindingPrecision => (c.true_positive, c.stated),
            Metric::FindingRecall => (c.true_positive, c.present),
            Metric::FindingF1 => (2 * c.true_positive, c.stated + c.present),
            Metric::HallucinationRate => (c.hallucinating, c.reports),
            Metric::OmissionRate => (c.omitted, c.abnormal_reports),
            Metric::MisdiagnosisRate => (c.misdiagnosed, c.abnormal_reports),
            Metric::ClosedAccuracy => (c.closed_correct, c.closed),
            Metric::NormalYesRate => (c.normal_yes, c.normal_no),
        }
    }

    /// The metric's value on `c`; `None` for a zero denominator.
    pub fn value(self, c: &Counts) -> Option<f64> {
        let (n, d) = self.ratio(c);
        (d > 0).then(|| n as f64 / d as f64)
    }
}

/// The counts one item adds, given its study's truth.
pub fn item_counts(item: &Item, truth: &StudyFacts) -> Counts {
    let mut c = Counts::default();
    let lesion = truth.finding;
    match &item.kind {
        ItemKind::Report => {
            let e = extract(&item.prediction);
            c.reports = 1;
            c.stated = e.findings.len() as u64;
            c.true_positive = e
                .findings
                .iter()
                .filter(|f| lesion.is_some_and(|l| l.key() == f.key()))
                .count() as u64;
            c.present = lesion.is_some() as u64;
            c.hallucinating =
                e.findings
                    .iter()
                    .any(|f| Some(f.kind) != lesion.map(|l| l.kind)) as u64;
            if lesion.is_some() {
                c.abnormal_reports = 1;
                c.omitted = (c.stated == 0) as u64;
                c.misdiagnosed = (c.stated > 0 && c.true_positive == 0) as u64;
            }
        }
        ItemKind::Closed {
            reference,
            about_abnormality,
        } => {
            let said = parse_answer(&item.prediction).yes;
            c.closed = 1;
            c.closed_correct = (said == Some(*reference)) as u64;
            if lesion.is_none() && !*reference && *about_abnormality {
                c.normal_no = 1;
                c.normal_yes = (said == Some(true)) as u64;
            }
        }
        ItemKind::Open => {}
    }
    c
}

/// One study's scored items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyScore {
    pub facts: StudyFacts,
    /// (item id, counts) per item.
    pub items: Vec<(String, Counts)>,
    /// Sum over the items.
    pub counts: Counts,
}

/// A method's items scored against the truth, by study.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Studies in id order.
    pub studies: Vec<StudyScore>,
}

impl Scored {
    /// Score `items` against `truth`; an item whose study is not in the
    /// truth is an error naming item and study. Open questions are skipped.
    pub fn new(truth: &GroundTruth, items: &[Item]) -> Result<Scored> {
        let mut by_study: BTreeMap<&str, StudyScore> = BTreeMap::new();
        for item in items {
            if item.kind == ItemKind::Open {
                continue;
            }
            let Some(facts) = truth.get(&item.study) else {
                anyhow::bail!(
                    "item '{}': field study: '{}' is not a study of the ground truth",
                    item.id,
                    item.study
                );
            };
            let c = item_counts(item, facts);
            let s = by_study.entry(&item.study).or_insert_with(|| StudyScore {
                facts: facts.clone(),
                items: Vec::new(),
                counts: Counts::default(),
            });
            s.counts.add(&c);
            s.items.push((item.id.clone(), c));
        }
        Ok(Scored {
            studies: by_study.into_values().collect(),
        })
    }

    /// The studies in `subset`.
    pub fn subset(&self, subset: Subset, threshold: f64) -> Vec<&StudyScore> {
        self.studies
            .iter()
            .filter(|s| s.facts.in_subset(subset, threshold))
            .collect()
    }
}

/// Settings of the metrics and their intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingsOptions {
    /// Subtle-lesion threshold, share of the image area.
    pub subtle_threshold: f64,
    /// Bootstrap resamples (of studies).
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// Seed of the resampling ([`rng_for`] with one label per subset).
    pub seed: u64,
}

impl Default for FindingsOptions {
    fn default() -> Self {
        FindingsOptions {
            subtle_threshold: crate::data::phantom::SUBTLE_THRESHOLD,
            bootstrap: 2000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// A metric's value with its interval and denominator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub metric: Metric,
    /// `None` when the denominator is 0.
    pub value: Option<f64>,
    /// Percentile bootstrap interval over studies.
    pub interval: Option<Interval>,
    /// The denominator (reports, findings, questions; see [`Metric`]).
    pub n: u64,
}

/// The metrics of one subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubsetFindings {
    pub subset: Subset,
    /// Studies of the subset with at least one scored item.
    pub studies: usize,
    pub metrics: Vec<Estimate>,
}

/// The hallucination metrics of one method on every subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingsReport {
    pub options: FindingsOptions,
    pub subsets: Vec<SubsetFindings>,
}

/// Bootstrap sums of the counts of `studies`: `reps` resamples of studies.
fn resampled_sums(counts: &[Counts], reps: usize, label: &str, seed: u64) -> Vec<Counts> {
    let mut rng = rng_for(seed, label);
    (0..reps)
        .map(|_| {
            Counts::sum(
                stats::resample(&mut rng, counts.len())
                    .iter()
                    .map(|&i| &counts[i]),
            )
        })
        .collect()
}

impl FindingsReport {
    /// Every metric on every subset of `scored`, with intervals.
    pub fn compute(scored: &Scored, opts: &FindingsOptions) -> FindingsReport {
        let subsets = Subset::ALL
            .iter()
            .map(|&subset| {
                let studies = scored.subset(subset, opts.subtle_threshold);
                let counts: Vec<Counts> = studies.iter().map(|s| s.counts).collect();
                let total = Counts::sum(&counts);
                let boot = if counts.is_empty() {
                    Vec::new()
                } else {
                    let label = format!("findings/bootstrap/{}", subset.name());
                    resampled_sums(&counts, opts.bootstrap, &label, opts.seed)
                };
                let metrics = Metric::ALL
                    .iter()
                    .map(|&m| {
                        let reps: Vec<Option<f64>> = boot.iter().map(|c| m.value(c)).collect();
                        let value = m.value(&total);
                        Estimate {
                            metric: m,
                            value,
                            interval: value
                                .and_then(|_| stats::percentile_interval(&reps, opts.confidence)),
                            n: m.ratio(&total).1,
                        }
                    })
                    .collect();
                SubsetFindings {
                    subset,
                    studies: studies.len(),
                    metrics,
                }
            })
            .collect();
        FindingsReport {
            options: opts.clone(),
            subsets,
        }
    }

    /// The estimate of `metric` on `subset`.
    pub fn get(&self, subset: Subset, metric: Metric) -> Option<&Estimate> {
        self.subsets
            .iter()
            .find(|s| s.subset == subset)?
            .metrics
            .iter()
            .find(|e| e.metric == metric)
    }

    /// A Markdown table: one row per metric, one column per subset; cells
    /// are percentages with the interval and the denominator n.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| metric |");
        for sub in &self.subsets {
            s.push_str(&format!(
                " {} ({} studies) |",
                sub.subset.name(),
                sub.studies
            ));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(self.subsets.len()));
        s.push('\n');
        for m in Metric::ALL {
            s.push_str(&format!("| {} |", m.label()));
            for sub in &self.subsets {
                let cell = sub
                    .metrics
                    .iter()
                    .find(|e| e.metric == m)
                    .map(format_estimate)
                    .unwrap_or_else(|| "–".into());
                s.push_str(&format!(" {cell} |"));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "\nPercentages; [{:.0}% percentile bootstrap interval over studies, {} resamples, seed {}]; \
             n = the rate's denominator. Subtle: lesion < {}% of the image.\n",
            self.options.confidence * 100.0,
            self.options.bootstrap,
            self.options.seed,
            self.options.subtle_threshold * 100.0
        ));
        s
    }
}

/// "72.3 [65.1, 79.0] n=120", or "– (n=0)".
pub fn format_estimate(e: &Estimate) -> String {
    match (e.value, e.interval) {
        (Some(v), Some(iv)) => format!(
            "{:.1} [{:.1}, {:.1}] n={}",
            v * 100.0,
            iv.lo * 100.0,
            iv.hi * 100.0,
            e.n
        ),
        (Some(v), None) => format!("{:.1} n={}", v * 100.0, e.n),
        (None, _) => format!("– (n={})", e.n),
    }
}

/// The paired comparison of two methods on one metric and subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    pub subset: Subset,
    pub metric: Metric,
    /// Studies both methods have items for.
    pub studies: usize,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// Paired bootstrap of A − B over studies (interval and p-value).
    pub bootstrap: Option<PairedBootstrap>,
    /// Two-sided p-value of the paired sign-flip test over studies (each
    /// study's A and B counts swapped at random; exact for up to 10 studies).
    /// Valid with few studies, where the bootstrap p-value is too small.
    pub sign_flip_p: Option<f64>,
    /// Exact McNemar on the items both methods answered, where the metric
    /// is a per-item yes/no outcome (denominator 1 on every item).
    pub mcnemar: Option<McNemar>,
}

/// The paired test of methods A and B on every metric and subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedReport {
    pub options: FindingsOptions,
    pub comparisons: Vec<PairedComparison>,
}

/// The item-level yes/no outcomes of `metric` on items both methods scored:
/// `None` when some item's denominator exceeds 1 (precision, F1).
fn binary_outcomes(
    metric: Metric,
    a: &[&StudyScore],
    b: &HashMap<&str, &StudyScore>,
) -> Option<(Vec<bool>, Vec<bool>)> {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for sa in a {
        let Some(sb) = b.get(sa.facts.id.as_str()) else {
            continue;
        };
        let items_b: HashMap<&str, &Counts> =
            sb.items.iter().map(|(i, c)| (i.as_str(), c)).collect();
        for (id, ca) in &sa.items {
            let Some(cb) = items_b.get(id.as_str()) else {
                continue;
            };
            let (na, da) = metric.ratio(ca);
            let (nb, db) = metric.ratio(cb);
            if da > 1 || db > 1 {
                return None;
            }
            if da == 1 && db == 1 {
                xa.push(na == 1);
                xb.push(nb == 1);
            }
        }
    }
    (!xa.is_empty()).then_some((xa, xb))
}

/// Paired test of method A against method B, scored on the same items: for
/// every subset and metric, the paired bootstrap of A − B over the studies
/// both have (the same resampled studies for both), the paired sign-flip
/// test over those studies, and the exact McNemar
/// test where the metric is a yes/no outcome per item (closed-VQA accuracy,
/// hallucination, omission, misdiagnosis, recall, "yes" rate). For rates
/// where lower is better, "correct" in McNemar's counts means the event
/// happened (A hallucinated, B did not, counts for `a_only`).
pub fn paired_test(a: &Scored, b: &Scored, opts: &FindingsOptions) -> Result<PairedReport> {
    let b_by: HashMap<&str, &StudyScore> =
        b.studies.iter().map(|s| (s.facts.id.as_str(), s)).collect();
    let shared = a
        .studies
        .iter()
        .filter(|s| b_by.contains_key(s.facts.id.as_str()))
        .count();
    ensure!(
        shared > 0,
        "paired test: the two prediction sets share no study"
    );
    let mut comparisons = Vec::new();
    for subset in Subset::ALL {
        let sa: Vec<&StudyScore> = a
            .subset(subset, opts.subtle_threshold)
            .into_iter()
            .filter(|s| b_by.contains_key(s.facts.id.as_str()))
            .collect();
        let pairs: Vec<(Counts, Counts)> = sa
            .iter()
            .map(|s| (s.counts, b_by[s.facts.id.as_str()].counts))
            .collect();
        let ta = Counts::sum(pairs.iter().map(|p| &p.0));
        let tb = Counts::sum(pairs.iter().map(|p| &p.1));
        let mut rng = rng_for(opts.seed, &format!("findings/paired/{}", subset.name()));
        let boot: Vec<(Counts, Counts)> = if pairs.is_empty() {
            Vec::new()
        } else {
            (0..opts.bootstrap)
                .map(|_| {
                    let idx = stats::resample(&mut rng, pairs.len());
                    (
                        Counts::sum(idx.iter().map(|&i| &pairs[i].0)),
                        Counts::sum(idx.iter().map(|&i| &pairs[i].1)),
                    )
                })
                .collect()
        };
        let mut rng = rng_for(opts.seed, &format!("findings/sign-flip/{}", subset.name()));
        let (patterns, exact) = stats::sign_flip_patterns(&mut rng, pairs.len(), opts.bootstrap);
        let flipped: Vec<(Counts, Counts)> = patterns
            .iter()
            .map(|flip| {
                let (mut x, mut y) = (Counts::default(), Counts::default());
                for ((a, b), f) in pairs.iter().zip(flip) {
                    let (a, b) = if *f { (b, a) } else { (a, b) };
                    x.add(a);
                    y.add(b);
                }
                (x, y)
            })
            .collect();
        for metric in Metric::ALL {
            let (va, vb) = (metric.value(&ta), metric.value(&tb));
            let diff = |x: &Counts, y: &Counts| Some(metric.value(x)? - metric.value(y)?);
            let bootstrap = diff(&ta, &tb).map(|d| {
                let reps: Vec<Option<f64>> = boot.iter().map(|(x, y)| diff(x, y)).collect();
                PairedBootstrap::from_replicates(d, &reps, opts.confidence)
            });
            let sign_flip_p = diff(&ta, &tb).map(|d| {
                let reps: Vec<Option<f64>> = flipped.iter().map(|(x, y)| diff(x, y)).collect();
                stats::sign_flip_p(d, &reps, exact)
            });
            let mcnemar =
                binary_outcomes(metric, &sa, &b_by).map(|(xa, xb)| stats::mcnemar_paired(&xa, &xb));
            comparisons.push(PairedComparison {
                subset,
                metric,
                studies: sa.len(),
                a: va,
                b: vb,
                bootstrap,
                sign_flip_p,
                mcnemar,
            });
        }
    }
    Ok(PairedReport {
        options: opts.clone(),
        comparisons,
    })
}

impl PairedReport {
    /// The comparison of `metric` on `subset`.
    pub fn get(&self, subset: Subset, metric: Metric) -> Option<&PairedComparison> {
        self.comparisons
            .iter()
            .find(|c| c.subset == subset && c.metric == metric)
    }

    /// A Markdown table (one row per subset and metric with both values
    /// defined), naming the methods `a` and `b`.
    pub fn to_markdown(&self, a: &str, b: &str) -> String {
        let mut s = format!(
            "| subset | metric | {a} | {b} | {a} − {b} [{:.0}% CI] | p (sign-flip) | p (paired bootstrap) | McNemar ({a} only / {b} only, p) |\n|---|---|---|---|---|---|---|---|\n",
            self.options.confidence * 100.0
        );
        let pct = |v: Option<f64>| v.map(|x| format!("{:.1}", x * 100.0)).unwrap_or("–".into());
        for c in &self.comparisons {
            let Some(bs) = &c.bootstrap else { continue };
            let ci = bs
                .interval
                .map(|iv| format!(" [{:+.1}, {:+.1}]", iv.lo * 100.0, iv.hi * 100.0))
                .unwrap_or_default();
            let mc = c
                .mcnemar
                .map(|m| format!("{} / {}, p={}", m.a_only, m.b_only, format_p(m.p_value)))
                .unwrap_or_else(|| "–".into());
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:+.1}{ci} | {} | {} | {mc} |\n",
                c.subset.name(),
                c.metric.label(),
                pct(c.a),
                pct(c.b),
                bs.diff * 100.0,
                c.sign_flip_p.map(format_p).unwrap_or_else(|| "–".into()),
                format_p(bs.p_value),
            ));
        }
        s.push_str(&format!(
            "\nTwo-sided p-values. Sign-flip: A's and B's outcomes swapped per study at random (exact \
             for up to 10 studies); the bootstrap resamples studies ({} resamples, seed {}), and its \
             p-value is too small when there are few studies; McNemar counts items.\n",
            self.options.bootstrap, self.options.seed
        ));
        s
    }
}

/// A p-value to 3 significant digits, "< 0.001" below.
pub fn format_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom::FindingKind;
    use crate::eval::findings::Finding;

    fn one_study(correct: bool) -> Scored {
        let facts = StudyFacts {
            id: "s".into(),
            finding: Some(Finding::new(FindingKind::Cardiomegaly, None, None, None)),
            lesion_area: 0.01,
        };
        let item = Item {
            id: "q".into(),
            study: "s".into(),
            kind: ItemKind::Closed {
                reference: true,
                about_abnormality: true,
            },
            prediction: if correct { "Yes" } else { "No" }.into(),
        };
        let truth: GroundTruth = [("s".to_string(), facts)].into();
        Scored::new(&truth, &[item]).unwrap()
    }

    #[test]
    fn with_one_study_only_the_bootstrap_p_claims_a_difference() {
        let opts = FindingsOptions::default();
        let r = paired_test(&one_study(true), &one_study(false), &opts).unwrap();
        let c = r.get(Subset::Subtle, Metric::ClosedAccuracy).unwrap();
        assert_eq!((c.a, c.b, c.studies), (Some(1.0), Some(0.0), 1));
        // Every resample of one study repeats it: the bootstrap sees +100 points always.
        assert!(c.bootstrap.unwrap().p_value < 0.001);
        // Swapping A and B on the only study gives -100: |d| reached in 2 of 2 patterns.
        assert_eq!(c.sign_flip_p, Some(1.0));
        let m = c.mcnemar.unwrap();
        assert_eq!((m.a_only, m.b_only, m.p_value), (1, 0, 1.0));
        assert!(r
            .get(Subset::Normal, Metric::ClosedAccuracy)
            .unwrap()
            .bootstrap
            .is_none());
    }
}
