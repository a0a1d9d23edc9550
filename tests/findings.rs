//! The hallucination metrics: the finding extractor read back on the
//! generator's own text (10,000+ reports and their questions), on rendered
//! studies, and `hdpo eval findings` on prediction files whose outcome is
//! known from the ground truth.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use hdpo::data::phantom::text::{self, Facts, NEGATIVES};
use hdpo::data::phantom::{self, FindingKind, Lobe, PhantomConfig, Side};
use hdpo::eval::findings::{extract, parse_answer, Finding, SizeWord, StudyFacts};
use hdpo::util::seed::rng_for;
use rand::Rng;
use serde_json::Value;

/// Facts over the generator's whole domain: every kind (and normal), both
/// sides, the lobes each lung has, lesion areas spanning every size class
/// (log-uniform on 0.1%..40%) and cardiomegaly's heart scales.
fn random_facts<R: Rng>(rng: &mut R) -> Facts {
    if rng.random::<f64>() < 0.2 {
        return Facts {
            kind: None,
            side: None,
            lobe: None,
            area: 0.0,
            heart_scale: None,
        };
    }
    let kind = FindingKind::ALL[rng.random_range(0..FindingKind::ALL.len())];
    let side = kind.has_side().then(|| {
        if rng.random::<bool>() {
            Side::Right
        } else {
            Side::Left
        }
    });
    let lobe = match side {
        Some(s) if kind.has_lobe() => {
            let lobes: &[Lobe] = match s {
                Side::Right => &[Lobe::Upper, Lobe::Middle, Lobe::Lower],
                Side::Left => &[Lobe::Upper, Lobe::Lower],
            };
            Some(lobes[rng.random_range(0..lobes.len())])
        }
        _ => None,
    };
    let area = (0.001f64.ln() + rng.random::<f64>() * (0.4f64.ln() - 0.001f64.ln())).exp();
    let heart_scale =
        (kind == FindingKind::Cardiomegaly).then(|| 1.35 + 0.25 * rng.random::<f32>());
    Facts {
        kind: Some(kind),
        side,
        lobe,
        area,
        heart_scale,
    }
}

/// (kind, side, lobe, size) of a generated report's finding.
type Seen = (
    Option<FindingKind>,
    Option<Side>,
    Option<Lobe>,
    Option<SizeWord>,
);

fn expected_finding(f: &Facts) -> Option<Finding> {
    f.kind.map(|k| {
        let w = text::size_word(k, f.area, f.heart_scale);
        Finding::new(k, f.side, f.lobe, SizeWord::parse(w))
    })
}

#[test]
fn extractor_reads_back_10000_generated_reports_and_their_answers() {
    let n = 12_000;
    let mut seen: HashSet<Seen> = HashSet::new();
    let mut negations = BTreeMap::new();
    let mut answers = 0usize;
    for i in 0..n {
        let mut rng = rng_for(2024, &format!("findings/roundtrip/facts/{i}"));
        let facts = random_facts(&mut rng);
        let written = text::write(
            &mut rng_for(2024, &format!("findings/roundtrip/text/{i}")),
            &facts,
        );
        let report = &written.report;
        let e = extract(report);
        let want = expected_finding(&facts);
        assert_eq!(
            e.findings,
            want.into_iter().collect::<Vec<_>>(),
            "report {i}: {report}"
        );
        let want_neg: BTreeSet<FindingKind> = NEGATIVES
            .iter()
            .filter(|(t, _)| report.contains(t))
            .flat_map(|(_, ks)| ks.iter().copied())
            .collect();
        assert_eq!(e.negated, want_neg, "report {i}: {report}");
        for k in &want_neg {
            *negations.entry(*k).or_insert(0usize) += 1;
        }
        let clear = matches!(facts.kind, None | Some(FindingKind::Cardiomegaly));
        assert_eq!(e.lungs_clear, clear, "report {i}: {report}");
        assert_eq!(
            e.normal_statement,
            report.contains("No acute cardiopulmonary"),
            "report {i}: {report}"
        );
        assert!(!(e.normal_statement && facts.kind.is_some()), "{report}");
        if let Some(f) = want {
            seen.insert((Some(f.kind), f.side, f.lobe, f.size));
        } else {
            seen.insert((None, None, None, None));
        }
        for q in &written.questions {
            let a = parse_answer(&q.answer);
            let ctx = format!("report {i}: {:?}", q);
            answers += 1;
            if q.answer_type == "CLOSED" {
                assert_eq!(a.yes, Some(q.answer == "Yes"), "{ctx}");
                continue;
            }
            assert_eq!(a.yes, None, "{ctx}");
            match q.content_type {
                "Abnormality" => {
                    assert_eq!(a.kind, facts.kind, "{ctx}");
                    assert_eq!(a.normal, facts.kind.is_none(), "{ctx}");
                }
                "Position" => {
                    let k = facts.kind.expect("position questions are about a lesion");
                    assert_eq!(a.side, facts.side.filter(|_| k.has_side()), "{ctx}");
                    let lobe_named = q.answer.ends_with("lobe");
                    assert_eq!(a.lobe, facts.lobe.filter(|_| lobe_named), "{ctx}");
                }
                "Size" => assert_eq!(a.size, want.and_then(|f| f.size), "{ctx}"),
                _ => assert_eq!((a.kind, a.side, a.size), (None, None, None), "{ctx}"),
            }
        }
    }
    // Every kind with every side and lobe it can have, and each kind's size
    // words, occurred.
    for kind in FindingKind::ALL {
        let sizes: BTreeSet<SizeWord> = seen
            .iter()
            .filter(|s| s.0 == Some(kind))
            .filter_map(|s| s.3)
            .collect();
        let min = if kind == FindingKind::Nodule { 4 } else { 3 };
        assert!(sizes.len() >= min, "{kind:?}: sizes {sizes:?}");
    }
    let places = seen
        .iter()
        .filter(|s| s.0 == Some(FindingKind::Nodule))
        .map(|s| (s.1, s.2));
    assert_eq!(places.collect::<HashSet<_>>().len(), 5);
    assert_eq!(negations.len(), 3, "{negations:?}");
    assert!(answers > 5 * n);
}

#[test]
fn extractor_reads_back_rendered_studies() {
    let cfg = PhantomConfig {
        seed: 5,
        train: 0,
        val: 0,
        test: 48,
        size: 32,
        ..PhantomConfig::default()
    };
    for p in phantom::plan(&cfg) {
        let s = phantom::writer::render_study(&cfg, &p);
        let facts = StudyFacts::from_truth(&s.truth).unwrap();
        let e = extract(&s.truth.report);
        assert_eq!(
            e.findings,
            facts.finding.into_iter().collect::<Vec<_>>(),
            "{}: {}",
            s.truth.id,
            s.truth.report
        );
    }
}

// ---- hdpo eval findings ----------------------------------------------------

fn phantom_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = PhantomConfig {
        seed: 3,
        train: 0,
        val: 0,
        test: 60,
        size: 32,
        ..PhantomConfig::default()
    };
    phantom::generate(&cfg, &dir).expect("generate");
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Prediction rows for the phantom's test split: reports and closed answers
/// made by `report` and `closed` from the truth.
fn write_predictions(
    dir: &Path,
    out: &Path,
    report: impl Fn(&Value) -> String,
    closed: impl Fn(&Value, bool) -> String,
) {
    let truth = read_json(&dir.join("phantom.json"));
    let studies: BTreeMap<String, Value> = truth["studies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    let mut lines = Vec::new();
    for s in studies.values() {
        lines.push(serde_json::json!({
            "id": s["id"], "question": "Describe the findings.", "reference": s["report"],
            "prediction": report(s), "answer_type": "report",
        }));
    }
    for q in read_json(&dir.join("test.json")).as_array().unwrap() {
        if q["answer_type"] != "CLOSED" {
            continue;
        }
        let study = &studies[q["study_id"].as_str().unwrap()];
        let normal = study["finding"].is_null();
        lines.push(serde_json::json!({
            "id": q["qid"].to_string(), "question": q["question"], "reference": q["answer"],
            "prediction": closed(q, normal), "answer_type": "closed",
        }));
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(out, text).unwrap();
}

fn hdpo(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hdpo"))
        .args(args)
        .output()
        .expect("run hdpo")
}

/// `hdpo eval findings --predictions PRED --data DATA EXTRA...`.
fn eval_findings(pred: &Path, data: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "eval",
        "findings",
        "--predictions",
        pred.to_str().unwrap(),
        "--data",
        data,
    ];
    args.extend_from_slice(extra);
    hdpo(&args)
}

fn metric(j: &Value, subset: &str, metric: &str) -> (Option<f64>, u64) {
    let s = j["report"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subset"] == subset)
        .unwrap_or_else(|| panic!("no subset {subset}"));
    let e = s["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["metric"] == metric)
        .unwrap();
    (e["value"].as_f64(), e["n"].as_u64().unwrap())
}

fn swap_sides(s: &str) -> String {
    s.replace("right", "\u{0}")
        .replace("left", "right")
        .replace('\u{0}', "left")
}

#[test]
fn eval_findings_cli_scores_known_outcomes_and_tests_pairs() {
    let dir = phantom_dir("findings_cli");
    let truth = read_json(&dir.join("phantom.json"));
    let studies = truth["studies"].as_array().unwrap();
    let abnormal: Vec<&Value> = studies.iter().filter(|s| !s["finding"].is_null()).collect();
    let cardio = abnormal
        .iter()
        .filter(|s| s["finding"] == "cardiomegaly")
        .count();
    let normal = studies.len() - abnormal.len();
    let qs = read_json(&dir.join("test.json"));
    let normal_ids: BTreeSet<&str> = studies
        .iter()
        .filter(|s| s["finding"].is_null())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let normal_closed: Vec<&Value> = qs
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| {
            q["answer_type"] == "CLOSED" && normal_ids.contains(q["study_id"].as_str().unwrap())
        })
        .collect();
    let normal_no = normal_closed
        .iter()
        .filter(|q| q["answer"] == "No" && q["content_type"] != "Modality")
        .count();
    let normal_yes_refs = normal_closed
        .iter()
        .filter(|q| q["answer"] == "Yes")
        .count();
    assert!(normal > 5 && cardio > 0 && normal_no > 5);

    // A: the truth itself.
    let a = dir.join("a.jsonl");
    write_predictions(
        &dir,
        &a,
        |s| s["report"].as_str().unwrap().to_string(),
        |q, _| q["answer"].as_str().unwrap().to_string(),
    );
    // B: sides swapped in every report (a misdiagnosis for every lesion
    // with a side), a nodule added to normal reports (a hallucination), and
    // "yes" to every closed question on normal studies.
    let b = dir.join("b.jsonl");
    write_predictions(
        &dir,
        &b,
        |s| {
            let r = swap_sides(s["report"].as_str().unwrap());
            if s["finding"].is_null() {
                format!("There is a small nodule in the right upper lobe. {r}")
            } else {
                r
            }
        },
        |q, normal| {
            if normal {
                "Yes"
            } else {
                q["answer"].as_str().unwrap()
            }
            .to_string()
        },
    );
    let data = dir.to_str().unwrap();
    let o = eval_findings(&a, data, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ja: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        metric(&ja, "all", "finding_precision"),
        (Some(1.0), abnormal.len() as u64)
    );
    assert_eq!(
        metric(&ja, "abnormal", "finding_recall"),
        (Some(1.0), abnormal.len() as u64)
    );
    assert_eq!(
        metric(&ja, "all", "hallucination_rate"),
        (Some(0.0), studies.len() as u64)
    );
    assert_eq!(
        metric(&ja, "normal", "normal_yes_rate"),
        (Some(0.0), normal_no as u64)
    );
    assert_eq!(metric(&ja, "normal", "finding_recall"), (None, 0));

    let paired_json = ["--json", "--against", a.to_str().unwrap(), "--seed", "9"];
    let o = eval_findings(&b, data, &paired_json);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out_b = o.stdout.clone();
    let jb: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ab = abnormal.len() as f64;
    let (v, n) = metric(&jb, "abnormal", "misdiagnosis_rate");
    assert_eq!(n, abnormal.len() as u64);
    assert!((v.unwrap() - (ab - cardio as f64) / ab).abs() < 1e-12);
    let (v, _) = metric(&jb, "abnormal", "finding_recall");
    assert!((v.unwrap() - cardio as f64 / ab).abs() < 1e-12);
    let (v, n) = metric(&jb, "all", "hallucination_rate");
    assert_eq!(n, studies.len() as u64);
    assert!((v.unwrap() - normal as f64 / studies.len() as f64).abs() < 1e-12);
    assert_eq!(metric(&jb, "abnormal", "omission_rate").0, Some(0.0));
    assert_eq!(
        metric(&jb, "normal", "normal_yes_rate"),
        (Some(1.0), normal_no as u64)
    );
    let (v, n) = metric(&jb, "normal", "closed_accuracy");
    assert_eq!(n, normal_closed.len() as u64);
    assert!((v.unwrap() - normal_yes_refs as f64 / normal_closed.len() as f64).abs() < 1e-12);
    // The interval brackets the value and n counts questions.
    let sub = &jb["report"]["subsets"][0];
    assert_eq!(sub["subset"], "all");
    for e in sub["metrics"].as_array().unwrap() {
        if let (Some(v), Some(iv)) = (e["value"].as_f64(), e["interval"].as_object()) {
            let (lo, hi) = (iv["lo"].as_f64().unwrap(), iv["hi"].as_f64().unwrap());
            assert!(lo <= v + 1e-12 && v <= hi + 1e-12, "{e}");
        }
    }
    // Paired: B against A on normal studies' closed questions. Every
    // discordant question is one B got wrong, so McNemar's p is 2 / 2^k.
    let cmp = jb["paired"]["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["subset"] == "normal" && c["metric"] == "closed_accuracy")
        .unwrap();
    let k = (normal_closed.len() - normal_yes_refs) as i32;
    assert_eq!(cmp["mcnemar"]["a_only"], 0);
    assert_eq!(cmp["mcnemar"]["b_only"], k);
    let p = cmp["mcnemar"]["p_value"].as_f64().unwrap();
    assert!(
        (p - (2.0f64 * 0.5f64.powi(k)).min(1.0)).abs() < 1e-15,
        "{p}"
    );
    assert!(cmp["bootstrap"]["p_value"].as_f64().unwrap() < 0.05);
    // Every normal study has a question B got wrong, so only swapping A and B
    // on no study or on all of them reaches |A − B|; none of the 2000 random
    // patterns does (16 studies): p = (0 + 1) / (2000 + 1).
    let flip = cmp["sign_flip_p"].as_f64().unwrap();
    assert!((flip - 1.0 / 2001.0).abs() < 1e-12, "{flip}");
    assert!(cmp["bootstrap"]["diff"].as_f64().unwrap() < 0.0);

    // The table: five subsets, intervals, n per cell, and the paired table.
    let o = eval_findings(&b, data, &["--against", a.to_str().unwrap()]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    for s in [
        "all (",
        "normal (",
        "abnormal (",
        "subtle (",
        "conspicuous (",
        "hallucination rate",
        "McNemar",
        "sign-flip",
    ] {
        assert!(table.contains(s), "missing {s}:\n{table}");
    }
    assert!(
        table.contains(&format!("100.0 [100.0, 100.0] n={normal_no}")),
        "{table}"
    );

    // Seeded: the same seed gives the same output.
    let again = eval_findings(&b, data, &paired_json);
    assert_eq!(again.stdout, out_b);
}

#[test]
fn eval_findings_names_the_bad_row() {
    let dir = phantom_dir("findings_cli_bad");
    let p = dir.join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"id\":\"phantom_000000\",\"reference\":\"x\",\"prediction\":\"x\",\"answer_type\":\"report\"}\n\
         {\"id\":\"nope\",\"reference\":\"x\",\"prediction\":\"x\",\"answer_type\":\"report\"}\n",
    )
    .unwrap();
    let o = eval_findings(&p, dir.to_str().unwrap(), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("row 2") && err.contains("nope"),
        "{err}"
    );
}
