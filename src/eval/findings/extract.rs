//! The finding extractor: which findings a report or an answer in the
//! phantom's language states (kind, side, lobe, size word) and which it
//! negates. Rule-based in the manner of the CheXpert labeler's mention and
//! negation stages, on the phantom's closed vocabulary
//! ([`crate::data::phantom::vocabulary`]); exact on every phrasing the
//! generator writes (the round-trip test in `tests/findings.rs`).
//!
//! Rules, applied per sentence (split at `.`, `;`, `!`, `?` and line breaks),
//! on lower-cased word tokens:
//! - a *mention* is a finding term: nodule / nodular / mass → nodule;
//!   consolidation / airspace / pneumonia → consolidation; effusion /
//!   "pleural fluid" → pleural effusion; pneumothorax; cardiomegaly /
//!   "cardiac enlargement" / "enlarged heart" / "heart (is) enlarged" →
//!   cardiomegaly; atelectasis / collapse → atelectasis;
//! - a mention after a negation cue (no, not, without, negative) in the same
//!   sentence is *negated*, unless a scope terminator (but, however,
//!   although, though) lies between them;
//! - a stated mention takes the sentence's first side word (right, left),
//!   its first lobe (upper / middle / lower followed by "lobe") and its first
//!   size word (tiny, small, mild, moderate, large, extensive, marked); side
//!   and lobe are kept only for kinds that have them
//!   ([`FindingKind::has_side`], [`FindingKind::has_lobe`]);
//! - the same (kind, side, lobe) stated twice is one finding.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::data::phantom::{FindingKind, Lobe, Side};

/// A size word of the phantom's reports and answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeWord {
    Tiny,
    Small,
    Mild,
    Moderate,
    Large,
    Extensive,
    Marked,
}

impl SizeWord {
    pub const ALL: [SizeWord; 7] = [
        SizeWord::Tiny,
        SizeWord::Small,
        SizeWord::Mild,
        SizeWord::Moderate,
        SizeWord::Large,
        SizeWord::Extensive,
        SizeWord::Marked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SizeWord::Tiny => "tiny",
            SizeWord::Small => "small",
            SizeWord::Mild => "mild",
            SizeWord::Moderate => "moderate",
            SizeWord::Large => "large",
            SizeWord::Extensive => "extensive",
            SizeWord::Marked => "marked",
        }
    }

    /// The size word `word` names (lower case), if any.
    pub fn parse(word: &str) -> Option<SizeWord> {
        SizeWord::ALL.into_iter().find(|s| s.name() == word)
    }
}

/// A finding as stated (or as present in a study): kind, side and lobe where
/// the kind has them, and the size word when one is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    pub size: Option<SizeWord>,
}

impl Finding {
    /// A finding with side and lobe dropped where `kind` has none.
    pub fn new(
        kind: FindingKind,
        side: Option<Side>,
        lobe: Option<Lobe>,
        size: Option<SizeWord>,
    ) -> Finding {
        Finding {
            kind,
            side: side.filter(|_| kind.has_side()),
            lobe: lobe.filter(|_| kind.has_lobe()),
            size,
        }
    }

    /// Kind, side and lobe: what a finding must get right to name the lesion.
    pub fn key(&self) -> (FindingKind, Option<Side>, Option<Lobe>) {
        (self.kind, self.side, self.lobe)
    }
}

/// What a text states.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extraction {
    /// Stated (not negated) findings, in order of first mention.
    pub findings: Vec<Finding>,
    /// Kinds mentioned under a negation ("no pleural effusion").
    pub negated: BTreeSet<FindingKind>,
    /// A sentence says both lungs are clear ("The lungs are clear.").
    pub lungs_clear: bool,
    /// The text says the study is normal as a whole ("No acute
    /// cardiopulmonary abnormality.", the answer "no abnormality", "normal").
    pub normal_statement: bool,
}

/// Sentences of `text`, each as lower-case word tokens (letters, digits and
/// hyphens).
fn sentences(text: &str) -> Vec<Vec<String>> {
    text.split(['.', ';', '!', '?', '\n'])
        .map(|s| {
            s.split(|c: char| !(c.is_alphanumeric() || c == '-'))
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<String>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The finding kind mentioned at token `i`, if a mention starts there.
fn mention_at(t: &[String], i: usize) -> Option<FindingKind> {
    use FindingKind::*;
    let w = t[i].as_str();
    let next = t.get(i + 1).map(String::as_str);
    let after = t.get(i + 2).map(String::as_str);
    match w {
        "nodule" | "nodules" | "nodular" | "mass" | "masses" => Some(Nodule),
        "consolidation" | "consolidations" | "airspace" | "pneumonia" => Some(Consolidation),
        "effusion" | "effusions" => Some(PleuralEffusion),
        "pleural" if next == Some("fluid") => Some(PleuralEffusion),
        "pneumothorax" | "pneumothoraces" => Some(Pneumothorax),
        "cardiomegaly" => Some(Cardiomegaly),
        "cardiac" if next == Some("enlargement") => Some(Cardiomegaly),
        "enlarged" if matches!(next, Some("heart" | "cardiac")) => Some(Cardiomegaly),
        "heart" | "silhouette"
            if next == Some("enlarged") || (next == Some("is") && after == Some("enlarged")) =>
        {
            Some(Cardiomegaly)
        }
        "atelectasis" | "atelectatic" | "collapse" | "collapsed" => Some(Atelectasis),
        _ => None,
    }
}

fn is_negation(w: &str) -> bool {
    matches!(w, "no" | "not" | "without" | "negative")
}

fn ends_negation(w: &str) -> bool {
    matches!(w, "but" | "however" | "although" | "though")
}

fn side_of(w: &str) -> Option<Side> {
    match w {
        "right" => Some(Side::Right),
        "left" => Some(Side::Left),
        _ => None,
    }
}

fn lobe_of(w: &str) -> Option<Lobe> {
    match w {
        "upper" => Some(Lobe::Upper),
        "middle" => Some(Lobe::Middle),
        "lower" => Some(Lobe::Lower),
        _ => None,
    }
}

/// The first side, lobe and size words of a sentence.
fn attributes(t: &[String]) -> (Option<Side>, Option<Lobe>, Option<SizeWord>) {
    let side = t.iter().find_map(|w| side_of(w));
    let lobe = t
        .windows(2)
        .find_map(|p| lobe_of(&p[0]).filter(|_| p[1] == "lobe" || p[1] == "lobes"));
    let size = t.iter().find_map(|w| SizeWord::parse(w));
    (side, lobe, size)
}

fn has_seq(t: &[String], seq: &[&str]) -> bool {
    t.windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

/// Extract the findings a report (or any text in the phantom's language)
/// states and negates; see the module docs for the rules.
pub fn extract(text: &str) -> Extraction {
    let mut out = Extraction::default();
    for t in sentences(text) {
        let (side, lobe, size) = attributes(&t);
        let mut negated = false;
        let mut stated: Vec<FindingKind> = Vec::new();
        for i in 0..t.len() {
            if is_negation(&t[i]) {
                negated = true;
            } else if ends_negation(&t[i]) {
                negated = false;
            }
            if let Some(kind) = mention_at(&t, i) {
                if negated {
                    out.negated.insert(kind);
                } else if !stated.contains(&kind) {
                    stated.push(kind);
                }
            }
        }
        for kind in stated {
            let f = Finding::new(kind, side, lobe, size);
            match out.findings.iter_mut().find(|g| g.key() == f.key()) {
                Some(g) => g.size = g.size.or(f.size),
                None => out.findings.push(f),
            }
        }
        let lungs = t.iter().any(|w| w == "lungs");
        if lungs && t.iter().any(|w| w == "clear") && !t.iter().any(|w| is_negation(w)) {
            out.lungs_clear = true;
        }
        let acute = has_seq(&t, &["no", "acute", "cardiopulmonary"]);
        let no_abnormality =
            t.len() <= 3 && (has_seq(&t, &["no", "abnormality"]) || t == ["normal"]);
        if acute || no_abnormality {
            out.normal_statement = true;
        }
    }
    out
}

/// What a short VQA answer says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerFacts {
    /// "yes" / "no" as the answer's first word.
    pub yes: Option<bool>,
    /// The finding kind named ("nodule", "pleural effusion").
    pub kind: Option<FindingKind>,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    pub size: Option<SizeWord>,
    /// "no abnormality" / "normal".
    pub normal: bool,
}

/// Parse a short answer: a yes/no, a finding name, a location ("right upper
/// lobe", "left lung base"), a size word or "no abnormality".
pub fn parse_answer(answer: &str) -> AnswerFacts {
    let t: Vec<String> = sentences(answer).into_iter().flatten().collect();
    let yes = match t.first().map(String::as_str) {
        Some("yes") => Some(true),
        Some("no") if t.len() == 1 => Some(false),
        _ => None,
    };
    let (side, lobe, size) = attributes(&t);
    let kind = (0..t.len()).find_map(|i| mention_at(&t, i));
    let normal = kind.is_none() && (has_seq(&t, &["no", "abnormality"]) || t == ["normal"]);
    AnswerFacts {
        yes,
        kind,
        side,
        lobe,
        size,
        normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FindingKind::*;

    #[test]
    fn a_finding_sentence_gives_kind_side_lobe_and_size() {
        let e = extract(
            "The heart size is normal. A small nodular opacity is seen in the left upper lobe. \
             The right lung is clear. No pleural effusion or pneumothorax.",
        );
        assert_eq!(
            e.findings,
            vec![Finding {
                kind: Nodule,
                side: Some(Side::Left),
                lobe: Some(Lobe::Upper),
                size: Some(SizeWord::Small),
            }]
        );
        assert_eq!(e.negated, [PleuralEffusion, Pneumothorax].into());
        assert!(!e.lungs_clear && !e.normal_statement);
    }

    #[test]
    fn negation_scope_ends_at_but() {
        let e = extract("There is no pneumothorax but a large right effusion.");
        assert_eq!(e.negated, [Pneumothorax].into());
        assert_eq!(
            e.findings,
            vec![Finding::new(
                PleuralEffusion,
                Some(Side::Right),
                None,
                Some(SizeWord::Large)
            )]
        );
    }

    #[test]
    fn attributes_a_kind_lacks_are_dropped_and_repeats_merge() {
        let e = extract("Moderate cardiomegaly on the left. The heart is enlarged.");
        assert_eq!(
            e.findings,
            vec![Finding::new(
                Cardiomegaly,
                None,
                None,
                Some(SizeWord::Moderate)
            )]
        );
    }

    #[test]
    fn normal_reports_state_nothing() {
        let e = extract(
            "The lungs are clear bilaterally. Normal heart size. No focal consolidation. \
             No acute cardiopulmonary process.",
        );
        assert!(e.findings.is_empty());
        assert_eq!(e.negated, [Consolidation].into());
        assert!(e.lungs_clear && e.normal_statement);
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer("Yes").yes, Some(true));
        assert_eq!(parse_answer("no").yes, Some(false));
        assert_eq!(parse_answer("no abnormality").yes, None);
        assert!(parse_answer("no abnormality").normal);
        let a = parse_answer("right middle lobe");
        assert_eq!(
            (a.side, a.lobe, a.kind),
            (Some(Side::Right), Some(Lobe::Middle), None)
        );
        assert_eq!(parse_answer("pleural effusion").kind, Some(PleuralEffusion));
        assert_eq!(parse_answer("extensive").size, Some(SizeWord::Extensive));
    }
}
