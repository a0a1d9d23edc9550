//! Med-VQA metrics: LLaVA-Med v1.0.0 (`eval_metrics/glossary.py`,
//! `run_eval.py`, `evaluate_metrics.py`) with its substring behaviour, strict
//! variants (closed exact match, answer-token recall) and CARES' yes/no scorer
//! (`src/eval/eval_yesno.py`). See `docs/metrics.md` for every convention.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

use super::clean::py_strip;

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const MANUAL_MAP: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The VQA evaluation contraction map (keys as the VQA code lists them,
/// including the capitalised ones that never match lowercased words).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

fn contractions() -> &'static std::collections::HashMap<&'static str, &'static str> {
    static M: OnceLock<std::collections::HashMap<&'static str, &'static str>> = OnceLock::new();
    M.get_or_init(|| CONTRACTIONS.iter().copied().collect())
}

/// Python `\d` (Unicode decimal digit).
fn is_py_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && is_unicode_nd(c))
}

fn is_unicode_nd(c: char) -> bool {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"^\d$").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// Python `str.split()` on whitespace.
fn py_words(s: &str) -> impl Iterator<Item = &str> {
    super::clean::py_split(s)
}

/// LLaVA-Med's `normalize_word` (VQA answer normalisation): punctuation
/// removal/spacing decided on the *original* string, deletion of at most 32
/// `.` not followed by a digit, lowercase, number words to digits, articles
/// dropped, contractions mapped, single spaces, commas deleted.
pub fn normalize_word(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    let comma_digit = chars
        .windows(3)
        .any(|w| is_py_digit(w[0]) && w[1] == ',' && is_py_digit(w[2]));
    let mut out = token.to_string();
    for p in PUNCT {
        let with_space = {
            let a = format!("{p} ");
            let b = format!(" {p}");
            token.contains(&a) || token.contains(&b)
        };
        if with_space || comma_digit {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    // periodStrip.sub("", s, 32): '.' not followed by a digit, at most 32 times.
    let cs: Vec<char> = out.chars().collect();
    let mut stripped = String::with_capacity(out.len());
    let mut removed = 0usize;
    for (i, &c) in cs.iter().enumerate() {
        if c == '.' && removed < 32 && !cs.get(i + 1).is_some_and(|&n| is_py_digit(n)) {
            removed += 1;
            continue;
        }
        stripped.push(c);
    }
    let lower = stripped.to_lowercase();
    let mut words: Vec<&str> = Vec::new();
    for w in py_words(&lower) {
        let w = MANUAL_MAP
            .iter()
            .find(|(k, _)| *k == w)
            .map(|(_, v)| *v)
            .unwrap_or(w);
        if !ARTICLES.contains(&w) {
            words.push(w);
        }
    }
    let c = contractions();
    let words: Vec<&str> = words
        .into_iter()
        .map(|w| c.get(w).copied().unwrap_or(w))
        .collect();
    words.join(" ").replace(',', "")
}

/// `normalize_word(x.lower()).strip().rstrip('.').strip()`: the strict form
/// used by `closed_exact_match` and by type inference.
pub fn strict_form(x: &str) -> String {
    let n = normalize_word(&x.to_lowercase());
    py_strip(py_strip(&n).trim_end_matches('.')).to_string()
}

/// Question type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AnswerType {
    /// Closed (yes/no) question.
    #[serde(rename = "CLOSED")]
    Closed,
    /// Open question.
    #[serde(rename = "OPEN")]
    Open,
}

/// CLOSED if `answer_type.strip().upper() == "CLOSED"`, OPEN otherwise; without
/// `answer_type`, CLOSED iff the strict form of the reference is `yes` or `no`.
pub fn answer_type(answer_type: Option<&str>, reference: &str) -> AnswerType {
    match answer_type {
        Some(t) => {
            if py_strip(t).to_uppercase() == "CLOSED" {
                AnswerType::Closed
            } else {
                AnswerType::Open
            }
        }
        None => {
            let s = strict_form(reference);
            if s == "yes" || s == "no" {
                AnswerType::Closed
            } else {
                AnswerType::Open
            }
        }
    }
}

/// LLaVA-Med closed hit: with `g`, `p` the normalised lowercased reference and
/// prediction, 1 if (`"yes"` or `"no"` is a substring of `p`) and `g` is a
/// substring of `p`. Substring semantics kept on purpose (`normal` contains `no`).
pub fn llava_med_closed_hit(reference: &str, prediction: &str) -> u8 {
    let g = normalize_word(&reference.to_lowercase());
    let p = normalize_word(&prediction.to_lowercase());
    u8::from((p.contains("yes") || p.contains("no")) && p.contains(g.as_str()))
}

/// Strict closed exact match of the strict forms.
pub fn closed_exact_match(reference: &str, prediction: &str) -> u8 {
    u8::from(strict_form(reference) == strict_form(prediction))
}

/// CARES yes/no label of raw text (case-sensitive): text before the first `.`,
/// commas deleted, split on `' '`; 0 (no) if a word is `No`, `not` or `no`, else 1.
pub fn cares_label(text: &str) -> u8 {
    let first = text.split('.').next().unwrap_or("");
    let first = first.replace(',', "");
    let no = first
        .split(' ')
        .any(|w| w == "No" || w == "not" || w == "no");
    u8::from(!no)
}

fn unigram_counts(s: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in py_words(&s.to_lowercase()) {
        *m.entry(w.to_string()).or_insert(0) += 1;
    }
    m
}

/// Per-row OPEN scores (LLaVA-Med `calculate_f1score`, `calculate_exactmatch`
/// and the simple token recall).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct OpenScores {
    /// tp / (tp + fn).
    pub recall: f64,
    /// tp / (tp + fp).
    pub precision: f64,
    /// 2PR / (P + R).
    pub f1: f64,
    /// Distinct reference words found in the prediction / prediction tokens.
    pub exact_match_score: f64,
    /// |set(g) & set(p)| / |set(g)|.
    pub token_recall_simple: f64,
}

/// OPEN scores of one row (raw strings; normalisation is applied here as
/// LLaVA-Med does: once in `run_eval.py` and again inside the scorers).
pub fn open_scores(reference: &str, prediction: &str) -> OpenScores {
    let g = normalize_word(&reference.to_lowercase());
    let p = normalize_word(&prediction.to_lowercase());
    let cand = unigram_counts(&normalize_word(&p));
    let refw = unigram_counts(&normalize_word(&g));
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for (w, c) in &cand {
        if refw.contains_key(w) {
            tp += c;
        } else {
            fp += c;
        }
    }
    for (w, c) in &refw {
        if !cand.contains_key(w) {
            fneg += c;
        }
    }
    let (f1, precision, recall) = if cand.is_empty() || refw.is_empty() || tp == 0 {
        (0.0, 0.0, 0.0)
    } else {
        let pr = tp as f64 / (tp + fp) as f64;
        let rc = tp as f64 / (tp + fneg) as f64;
        (2.0 * pr * rc / (pr + rc), pr, rc)
    };
    let total: usize = cand.values().sum();
    let count = refw.keys().filter(|w| cand.contains_key(*w)).count();
    let exact_match_score = if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    };
    let gs: HashSet<&str> = py_words(&g).collect();
    let ps: HashSet<&str> = py_words(&p).collect();
    let token_recall_simple = if gs.is_empty() {
        0.0
    } else {
        gs.intersection(&ps).count() as f64 / gs.len() as f64
    };
    OpenScores {
        recall,
        precision,
        f1,
        exact_match_score,
        token_recall_simple,
    }
}

/// One VQA row to score.
#[derive(Clone, Debug)]
pub struct VqaRow {
    /// Row id (any JSON value; echoed in per-sample output).
    pub id: Value,
    /// Ground-truth answer.
    pub reference: String,
    /// Model answer.
    pub prediction: String,
    /// `answer_type` field, if present.
    pub answer_type: Option<String>,
}

/// CARES yes/no confusion counts and rates (`None` = JSON null when a
/// denominator is 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CaresYesNo {
    /// (TP + TN) / n.
    pub accuracy: Option<f64>,
    /// TP / (TP + FP).
    pub precision: Option<f64>,
    /// TP / (TP + FN).
    pub recall: Option<f64>,
    /// 2PR / (P + R); null when P or R is 0 or null.
    pub f1: Option<f64>,
    /// Predicted yes, label yes.
    #[serde(rename = "TP")]
    pub tp: usize,
    /// Predicted yes, label no.
    #[serde(rename = "FP")]
    pub fp: usize,
    /// Predicted no, label no.
    #[serde(rename = "TN")]
    pub tn: usize,
    /// Predicted no, label yes.
    #[serde(rename = "FN")]
    pub fn_: usize,
}

/// Corpus CLOSED metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClosedMetrics {
    /// Mean LLaVA-Med closed hit (null without CLOSED rows).
    pub llava_med_closed_acc: Option<f64>,
    /// CARES yes/no scores.
    pub cares_yesno: CaresYesNo,
    /// Mean strict exact match.
    pub closed_exact_match: Option<f64>,
}

/// Corpus OPEN metrics (means over OPEN rows; null without OPEN rows).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpenMetrics {
    /// Mean recall.
    pub llava_med_open_recall: Option<f64>,
    /// Mean precision.
    pub llava_med_open_precision: Option<f64>,
    /// Mean F1.
    pub llava_med_open_f1: Option<f64>,
    /// Mean `calculate_exactmatch` score.
    pub llava_med_exact_match_score: Option<f64>,
    /// Mean simple token recall.
    pub open_token_recall_simple: Option<f64>,
}

/// Per-sample VQA output (CLOSED or OPEN fields).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VqaSample {
    /// A CLOSED row.
    Closed {
        /// Row id.
        id: Value,
        /// Always CLOSED.
        #[serde(rename = "type")]
        kind: AnswerType,
        /// LLaVA-Med substring hit.
        llava_med_hit: u8,
        /// Strict exact match.
        exact_match: u8,
        /// CARES label of the prediction.
        cares_pred: u8,
        /// CARES label of the reference.
        cares_label: u8,
    },
    /// An OPEN row.
    Open {
        /// Row id.
        id: Value,
        /// Always OPEN.
        #[serde(rename = "type")]
        kind: AnswerType,
        /// Scores.
        #[serde(flatten)]
        scores: OpenScores,
    },
}

/// All VQA metrics, with the fixture's key names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VqaReport {
    /// Rows scored.
    pub n: usize,
    /// CLOSED rows.
    pub n_closed: usize,
    /// OPEN rows.
    pub n_open: usize,
    /// CLOSED metrics.
    pub closed: ClosedMetrics,
    /// OPEN metrics.
    pub open: OpenMetrics,
    /// CLOSED rows first (input order), then OPEN rows (input order).
    pub per_sample: Vec<VqaSample>,
}

fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Score VQA rows: every metric overall and per answer type.
pub fn score_vqa(rows: &[VqaRow]) -> VqaReport {
    let mut closed = Vec::new();
    let mut open = Vec::new();
    for r in rows {
        match answer_type(r.answer_type.as_deref(), &r.reference) {
            AnswerType::Closed => closed.push(r),
            AnswerType::Open => open.push(r),
        }
    }
    let mut per_sample = Vec::with_capacity(rows.len());
    let (mut hits, mut exact) = (Vec::new(), Vec::new());
    let mut c = CaresYesNo::default();
    for r in &closed {
        let hit = llava_med_closed_hit(&r.reference, &r.prediction);
        let em = closed_exact_match(&r.reference, &r.prediction);
        let pred = cares_label(&r.prediction);
        let label = cares_label(&r.reference);
        match (pred, label) {
            (1, 1) => c.tp += 1,
            (1, _) => c.fp += 1,
            (_, 0) => c.tn += 1,
            _ => c.fn_ += 1,
        }
        hits.push(hit as f64);
        exact.push(em as f64);
        per_sample.push(VqaSample::Closed {
            id: r.id.clone(),
            kind: AnswerType::Closed,
            llava_med_hit: hit,
            exact_match: em,
            cares_pred: pred,
            cares_label: label,
        });
    }
    c.accuracy = ratio(c.tp + c.tn, closed.len());
    c.precision = ratio(c.tp, c.tp + c.fp);
    c.recall = ratio(c.tp, c.tp + c.fn_);
    c.f1 = match (c.precision, c.recall) {
        (Some(p), Some(r)) if p != 0.0 && r != 0.0 => Some(2.0 * p * r / (p + r)),
        _ => None,
    };
    let mut os: Vec<OpenScores> = Vec::new();
    for r in &open {
        let s = open_scores(&r.reference, &r.prediction);
        os.push(s);
        per_sample.push(VqaSample::Open {
            id: r.id.clone(),
            kind: AnswerType::Open,
            scores: s,
        });
    }
    let col = |f: fn(&OpenScores) -> f64| mean(&os.iter().map(f).collect::<Vec<_>>());
    VqaReport {
        n: rows.len(),
        n_closed: closed.len(),
        n_open: open.len(),
        closed: ClosedMetrics {
            llava_med_closed_acc: mean(&hits),
            cares_yesno: c,
            closed_exact_match: mean(&exact),
        },
        open: OpenMetrics {
            llava_med_open_recall: col(|s| s.recall),
            llava_med_open_precision: col(|s| s.precision),
            llava_med_open_f1: col(|s| s.f1),
            llava_med_exact_match_score: col(|s| s.exact_match_score),
            open_token_recall_simple: col(|s| s.token_recall_simple),
        },
        per_sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_examples() {
        assert_eq!(normalize_word("the left lung."), "left lung");
        assert_eq!(normalize_word("x-ray"), "x ray");
        assert_eq!(normalize_word("1,000 cells"), "1000 cells");
        assert_eq!(normalize_word("two"), "2");
        assert_eq!(normalize_word("3.5 cm"), "3.5 cm");
    }

    #[test]
    fn substring_behaviour() {
        assert_eq!(llava_med_closed_hit("no", "normal"), 1);
        assert_eq!(closed_exact_match("no", "normal"), 0);
        assert_eq!(cares_label("NO"), 1);
        assert_eq!(cares_label("No, it is not."), 0);
        assert_eq!(cares_label(""), 1);
    }
}
