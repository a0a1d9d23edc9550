//! R2Gen report cleaning (`modules/tokenizers.py` of R2Gen) and the R2Gen
//! ground-truth view (vocabulary threshold + `max_seq_length` cut).
//!
//! Every function reproduces the Python string operations exactly:
//! `str.replace` (left to right, non-overlapping), `str.strip()` (Python's
//! whitespace set), `str.lower()` and the regex class
//! `[.,?;*!%^&_+():-\[\]{}]`, whose `:-\[` is a *range* (0x3A..=0x5B).

use std::collections::HashMap;

/// Which R2Gen cleaner to apply before scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleaner {
    /// `clean_report_iu_xray`.
    IuXray,
    /// `clean_report_mimic_cxr`.
    MimicCxr,
    /// Raw strings, untouched.
    None,
}

impl Cleaner {
    /// Parse `iu_xray`, `mimic_cxr` or `none`.
    pub fn parse(s: &str) -> Option<Cleaner> {
        match s {
            "iu_xray" => Some(Cleaner::IuXray),
            "mimic_cxr" => Some(Cleaner::MimicCxr),
            "none" => Some(Cleaner::None),
            _ => None,
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Cleaner::IuXray => "iu_xray",
            Cleaner::MimicCxr => "mimic_cxr",
            Cleaner::None => "none",
        }
    }

    /// Apply this cleaner to one report.
    pub fn apply(self, report: &str) -> String {
        match self {
            Cleaner::IuXray => clean_report_iu_xray(report),
            Cleaner::MimicCxr => clean_report_mimic_cxr(report),
            Cleaner::None => report.to_string(),
        }
    }
}

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus the
/// information separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python `str.split()` (no argument): runs of whitespace, no empty pieces.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python `str.lower()`.
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

fn numbering(t: String) -> String {
    let mut t = t.replace("1. ", "");
    for n in ["2", "3", "4", "5"] {
        t = t.replace(&format!(". {n}. "), ". ");
    }
    for n in ["2", "3", "4", "5"] {
        t = t.replace(&format!(" {n}. "), ". ");
    }
    t
}

/// Characters R2Gen's sentence cleaner deletes: `[.,?;*!%^&_+():-\[\]{}]`.
fn r2gen_deleted(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | '?'
            | ';'
            | '*'
            | '!'
            | '%'
            | '^'
            | '&'
            | '_'
            | '+'
            | '('
            | ')'
            | ']'
            | '{'
            | '}'
    ) || ('\u{3a}'..='\u{5b}').contains(&c)
}

fn sentence_clean(t: &str) -> String {
    let t: String = t
        .chars()
        .filter(|c| !matches!(c, '"' | '/' | '\\' | '\''))
        .collect();
    let t = py_lower(py_strip(&t));
    t.chars().filter(|&c| !r2gen_deleted(c)).collect()
}

fn split_and_join(t: &str) -> String {
    let t = py_lower(py_strip(t));
    let pieces: Vec<String> = t.split(". ").map(sentence_clean).collect();
    let mut out = pieces.join(" . ");
    out.push_str(" .");
    out
}

/// R2Gen `clean_report_iu_xray`: `..`->`.` three times, numbering removal,
/// `strip().lower().split('. ')`, per-piece cleaning, `' . '.join(...) + ' .'`.
/// An empty report becomes `" ."`.
pub fn clean_report_iu_xray(report: &str) -> String {
    let mut t = report.to_string();
    for _ in 0..3 {
        t = t.replace("..", ".");
    }
    split_and_join(&numbering(t))
}

/// R2Gen `clean_report_mimic_cxr`: `\n`->space, `__`->`_` (7 times), two
/// spaces -> one (6 times), `..`->`.` (8 times), then as the IU cleaner.
pub fn clean_report_mimic_cxr(report: &str) -> String {
    let mut t = report.replace('\n', " ");
    for _ in 0..7 {
        t = t.replace("__", "_");
    }
    for _ in 0..6 {
        t = t.replace("  ", " ");
    }
    for _ in 0..8 {
        t = t.replace("..", ".");
    }
    split_and_join(&numbering(t))
}

/// R2Gen's ground-truth view of a reference: tokens outside the training
/// vocabulary become `<unk>`, and only the first `max_seq_length - 1` tokens
/// are kept (R2Gen prepends BOS, cuts to `max_seq_length`, and decodes after
/// BOS). The result is joined with single spaces.
#[derive(Clone, Debug)]
pub struct R2GenGroundTruth {
    vocab: std::collections::HashSet<String>,
    max_seq_length: usize,
}

impl R2GenGroundTruth {
    /// Build the vocabulary from already *cleaned* training reports: tokens
    /// (`str.split()`) occurring at least `threshold` times.
    pub fn from_cleaned_train<'a, I>(
        cleaned_train: I,
        threshold: usize,
        max_seq_length: usize,
    ) -> Self
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for r in cleaned_train {
            for t in py_split(r) {
                *counts.entry(t).or_default() += 1;
            }
        }
        let vocab = counts
            .into_iter()
            .filter(|(_, c)| *c >= threshold)
            .map(|(t, _)| t.to_string())
            .collect();
        R2GenGroundTruth {
            vocab,
            max_seq_length,
        }
    }

    /// Number of vocabulary words (without `<unk>`).
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// The reference as R2Gen's trainer scores it (input already cleaned).
    pub fn view(&self, cleaned_reference: &str) -> String {
        let keep = self.max_seq_length.saturating_sub(1);
        py_split(cleaned_reference)
            .take(keep)
            .map(|t| if self.vocab.contains(t) { t } else { "<unk>" })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iu_cleaner_basics() {
        assert_eq!(clean_report_iu_xray(""), " .");
        assert_eq!(
            clean_report_iu_xray("1. Heart size normal. 2. No effusion.."),
            "heart size normal . no effusion ."
        );
        // The range :-[ removes '<', '=', '@' but keeps '-' and digits.
        assert_eq!(clean_report_iu_xray("T-11 <x>=@y"), "t-11 xy .");
    }

    #[test]
    fn py_whitespace() {
        assert_eq!(py_strip("\u{1f} a \u{a0}"), "a");
        assert_eq!(py_split(" a  b\tc ").collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
