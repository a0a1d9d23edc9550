//! The medical vocabulary 𝒦 of paper Eq. 7 (`docs/design.md`, "Vocabulary"):
//! terms with a category (finding, anatomy, location, laterality, size,
//! device, ...) and a concept (the observation a term names, so that a
//! synonym is never drawn as a misdiagnosis), longest-match search in a text,
//! and the seeded same-category draw of k̃.
//!
//! The default vocabulary is the CheXpert labeler's mention phrases
//! (`assets/vocab/`, compiled into the binary) plus the phantom benchmark's
//! terms and its location phrases. Users pass their own file
//! ([`Vocabulary::from_file`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::data::phantom::{self, FindingKind, Lobe, Side};

/// One vocabulary term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    /// The term as matched (lowercase).
    pub text: String,
    /// `finding`, `anatomy`, `location`, `laterality`, `size`, `device`, ...
    pub category: String,
    /// What the term names; a misdiagnosis draws a term of another concept.
    pub concept: String,
    /// A word stem (`consolidat`): the match extends to the end of the word,
    /// and the term is never drawn as a replacement.
    #[serde(default)]
    pub stem: bool,
}

/// A match of a term in a text: byte span `[start, end)` and the term's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub start: usize,
    pub end: usize,
    pub term: usize,
}

/// A vocabulary: terms plus phrases that cancel a match inside them
/// (CheXpert's "unmention" lists, e.g. `massive` for `mass`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    pub terms: Vec<Term>,
    #[serde(default)]
    pub exclusions: Vec<String>,
}

macro_rules! chexpert {
    ($($dir:literal / $name:literal),* $(,)?) => {
        &[$(($dir, $name, include_str!(concat!("../../assets/vocab/chexpert_phrases/", $dir, "/", $name, ".txt")))),*]
    };
}

/// The CheXpert labeler's phrase files: (mention|unmention, observation, text).
const CHEXPERT: &[(&str, &str, &str)] = chexpert![
    "mention" / "atelectasis",
    "mention" / "cardiomegaly",
    "mention" / "consolidation",
    "mention" / "edema",
    "mention" / "enlarged_cardiomediastinum",
    "mention" / "fracture",
    "mention" / "lung_lesion",
    "mention" / "lung_opacity",
    "mention" / "no_finding",
    "mention" / "pleural_effusion",
    "mention" / "pleural_other",
    "mention" / "pneumonia",
    "mention" / "pneumothorax",
    "mention" / "support_devices",
    "unmention" / "lung_lesion",
    "unmention" / "lung_opacity",
    "unmention" / "pleural_effusion",
];

/// CheXpert mention phrases that name anatomy rather than a finding (they
/// mark where CheXpert looks for "enlarged"/"normal"); categorised `anatomy`
/// so that a misdiagnosis never turns "the heart size is normal" into a disease.
const CHEXPERT_ANATOMY: &[&str] = &[
    "the heart",
    "heart size",
    "cardiac size",
    "cardiac shadow",
    "cardiac contour",
    "cardiac silhouette",
    "cardiac silhouette and vascularity",
    "mediastinum",
    "cardiomediastinum",
    "contour",
    "mediastinal configuration",
    "mediastinal silhouette",
    "pericardial silhouette",
    "fissure",
];

/// The CheXpert observation a phantom finding kind is labelled with.
pub fn chexpert_observation(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::Nodule => "lung_lesion",
        FindingKind::Consolidation => "consolidation",
        FindingKind::PleuralEffusion => "pleural_effusion",
        FindingKind::Pneumothorax => "pneumothorax",
        FindingKind::Cardiomegaly => "cardiomegaly",
        FindingKind::Atelectasis => "atelectasis",
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

impl Vocabulary {
    /// The default vocabulary: the phantom's terms (exact words) and location
    /// phrases, then the CheXpert mention phrases (stems), deduplicated by text.
    pub fn default_vocab() -> Vocabulary {
        let mut v = Vocabulary::default();
        v.extend_phantom();
        v.extend_chexpert();
        v
    }

    /// The CheXpert labeler's phrases only.
    pub fn chexpert() -> Vocabulary {
        let mut v = Vocabulary::default();
        v.extend_chexpert();
        v
    }

    fn extend_chexpert(&mut self) {
        for (dir, obs, text) in CHEXPERT {
            for line in text.lines() {
                let t = line.replace('_', " ").trim().to_ascii_lowercase();
                if t.is_empty() {
                    continue;
                }
                if *dir == "unmention" {
                    if !self.exclusions.contains(&t) {
                        self.exclusions.push(t);
                    }
                    continue;
                }
                let (category, concept) = if CHEXPERT_ANATOMY.contains(&t.as_str()) {
                    ("anatomy", t.clone())
                } else if *obs == "support_devices" {
                    ("device", t.clone())
                } else if *obs == "no_finding" {
                    // CheXpert's "other findings": each its own concept.
                    ("finding", t.clone())
                } else {
                    ("finding", obs.to_string())
                };
                self.push(Term {
                    text: t,
                    category: category.into(),
                    concept,
                    stem: true,
                });
            }
        }
    }

    fn extend_phantom(&mut self) {
        let chex = Vocabulary::chexpert();
        for (text, category) in phantom::text::vocabulary() {
            let t = text.to_ascii_lowercase();
            let concept = if category == "finding" {
                FindingKind::ALL
                    .iter()
                    .find(|k| t.contains(k.name()))
                    .map(|k| chexpert_observation(*k).to_string())
                    .or_else(|| {
                        chex.find(&t)
                            .first()
                            .map(|m| chex.terms[m.term].concept.clone())
                    })
                    .unwrap_or_else(|| t.clone())
            } else {
                t.clone()
            };
            self.push(Term {
                text: t,
                category,
                concept,
                stem: false,
            });
        }
        // Location phrases, as the phantom's reports and answers write them.
        for side in [Side::Right, Side::Left] {
            let s = side.name();
            let mut phrases = vec![
                format!("{s} lung base"),
                format!("{s} hemithorax"),
                format!("{s} lung"),
                format!("{s} costophrenic angle"),
            ];
            for lobe in [Lobe::Upper, Lobe::Middle, Lobe::Lower] {
                if side == Side::Left && lobe == Lobe::Middle {
                    continue;
                }
                phrases.push(format!("{s} {} lobe", lobe.name()));
            }
            for p in phrases {
                self.push(Term {
                    concept: p.clone(),
                    text: p,
                    category: "location".into(),
                    stem: false,
                });
            }
        }
    }

    /// Add a term unless one with the same text is present.
    pub fn push(&mut self, term: Term) {
        if !self.terms.iter().any(|t| t.text == term.text) {
            self.terms.push(term);
        }
    }

    /// Add every term of `other` (and its exclusions) not present yet.
    pub fn extend(&mut self, other: Vocabulary) {
        for t in other.terms {
            self.push(t);
        }
        for e in other.exclusions {
            if !self.exclusions.contains(&e) {
                self.exclusions.push(e);
            }
        }
    }

    /// Read a vocabulary file: one term a line, `term<TAB>category[<TAB>concept]`
    /// (a concept defaults to the term), `#` comments and blank lines ignored;
    /// a term ending in `*` is a stem; a line `!phrase` is an exclusion.
    /// Errors name the file and line.
    pub fn from_file(path: &Path) -> Result<Vocabulary> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read vocabulary file {}", path.display()))?;
        let mut v = Vocabulary::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            if let Some(ex) = line.trim().strip_prefix('!') {
                v.exclusions.push(ex.trim().to_ascii_lowercase());
                continue;
            }
            let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
            if cols.len() < 2 || cols[0].is_empty() || cols[1].is_empty() {
                bail!(
                    "{} line {}: expected `term<TAB>category[<TAB>concept]`, found {line:?}",
                    path.display(),
                    i + 1
                );
            }
            let (text, stem) = match cols[0].strip_suffix('*') {
                Some(s) => (s.trim().to_ascii_lowercase(), true),
                None => (cols[0].to_ascii_lowercase(), false),
            };
            if text.is_empty() {
                bail!("{} line {}: empty term", path.display(), i + 1);
            }
            let concept = cols
                .get(2)
                .filter(|c| !c.is_empty())
                .map(|c| c.to_string())
                .unwrap_or_else(|| text.clone());
            v.push(Term {
                text,
                category: cols[1].to_ascii_lowercase(),
                concept,
                stem,
            });
        }
        if v.terms.is_empty() {
            bail!("{}: the vocabulary file has no terms", path.display());
        }
        Ok(v)
    }

    /// A fingerprint of the terms (for the config hash).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for t in &self.terms {
            h.update(format!(
                "{}\t{}\t{}\t{}\n",
                t.text, t.category, t.concept, t.stem
            ));
        }
        for e in &self.exclusions {
            h.update(format!("!{e}\n"));
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }

    /// The index of the (non-stem or stem) term whose text equals `text`, ignoring case.
    pub fn lookup(&self, text: &str) -> Option<usize> {
        let t = text.trim().to_ascii_lowercase();
        self.terms.iter().position(|x| x.text == t)
    }

    /// Longest, leftmost, non-overlapping, case-insensitive matches of the
    /// terms in `text`, at word boundaries (a stem extends to the end of its
    /// word). A match lying inside an exclusion phrase is dropped.
    pub fn find(&self, text: &str) -> Vec<Match> {
        let lower = text.to_ascii_lowercase();
        let b = lower.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let word_start = is_word_byte(b[i]) && (i == 0 || !is_word_byte(b[i - 1]));
            if !word_start {
                i += 1;
                continue;
            }
            let mut best: Option<Match> = None;
            for (k, t) in self.terms.iter().enumerate() {
                if !lower[i..].starts_with(&t.text) {
                    continue;
                }
                let mut end = i + t.text.len();
                if t.stem {
                    while end < b.len() && is_word_byte(b[end]) {
                        end += 1;
                    }
                } else if end < b.len() && is_word_byte(b[end]) {
                    continue;
                }
                if end - i != t.text.len() && self.excluded(&lower, i, end) {
                    continue;
                }
                let better = match best {
                    None => true,
                    // Longer wins; on equal length an exact term beats a stem.
                    Some(m) => end > m.end || (end == m.end && self.terms[m.term].stem && !t.stem),
                };
                if better {
                    best = Some(Match {
                        start: i,
                        end,
                        term: k,
                    });
                }
            }
            match best {
                Some(m) => {
                    out.push(m);
                    i = m.end;
                }
                None => i += 1,
            }
        }
        out
    }

    /// Whether `[start, end)` lies inside an occurrence of an exclusion phrase
    /// (checked for stem matches that extended past the term).
    fn excluded(&self, lower: &str, start: usize, end: usize) -> bool {
        self.exclusions.iter().any(|ex| {
            lower
                .match_indices(ex.as_str())
                .any(|(p, _)| p <= start && end <= p + ex.len())
        })
    }

    /// Draw k̃ for term `term` (Eq. 7): a non-stem term of the same category
    /// and another concept, uniformly with `rng`; `None` when there is none.
    pub fn draw_replacement<R: rand::Rng + ?Sized>(
        &self,
        term: usize,
        rng: &mut R,
    ) -> Option<usize> {
        let t = &self.terms[term];
        let cands: Vec<usize> = self
            .terms
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                !c.stem && c.category == t.category && c.concept != t.concept && c.text != t.text
            })
            .map(|(i, _)| i)
            .collect();
        cands.choose(rng).copied()
    }
}

/// `left` ↔ `right` in `text`, by whole word, keeping the case of the first
/// letter; `None` when `text` names no side.
pub fn swap_laterality(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut out = String::with_capacity(text.len() + 1);
    let mut i = 0;
    let mut swapped = false;
    'outer: while i < text.len() {
        if is_word_byte(b[i]) && (i == 0 || !is_word_byte(b[i - 1])) {
            for (from, to) in [("left", "right"), ("right", "left")] {
                let end = i + from.len();
                if lower[i..].starts_with(from) && (end >= b.len() || !is_word_byte(b[end])) {
                    out.push_str(&match_case(&text[i..end], to));
                    i = end;
                    swapped = true;
                    continue 'outer;
                }
            }
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    swapped.then_some(out)
}

/// `yes` ↔ `no` for a closed answer (ignoring case, surrounding space and a
/// trailing full stop), keeping the original's capitalisation and
/// punctuation; `None` when `text` is not a yes/no answer.
pub fn flip_yes_no(text: &str) -> Option<String> {
    let core = text.trim().trim_end_matches('.').trim();
    let to = match core.to_ascii_lowercase().as_str() {
        "yes" => "no",
        "no" => "yes",
        _ => return None,
    };
    Some(text.replacen(core, &match_case(core, to), 1))
}

/// `to`, capitalised like `like` (all upper, first upper, or as is).
pub fn match_case(like: &str, to: &str) -> String {
    let letters: Vec<char> = like.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() > 1 && letters.iter().all(|c| c.is_uppercase()) {
        return to.to_uppercase();
    }
    match like.chars().next() {
        Some(c) if c.is_uppercase() => {
            let mut cs = to.chars();
            match cs.next() {
                Some(f) => f.to_uppercase().collect::<String>() + cs.as_str(),
                None => String::new(),
            }
        }
        _ => to.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_vocab_matches_longest_with_stems_and_exclusions() {
        let v = Vocabulary::default_vocab();
        let text = "Small right upper lobe nodule. Patchy consolidation; a massive opacities.";
        let got: Vec<(&str, &str)> = v
            .find(text)
            .iter()
            .map(|m| (&text[m.start..m.end], v.terms[m.term].category.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Small", "size"),
                ("right upper lobe", "location"),
                ("nodule", "finding"),
                ("consolidation", "finding"),
                ("opacities", "finding"),
            ]
        );
        let n = v.lookup("nodule").unwrap();
        assert_eq!(v.terms[n].concept, "lung_lesion");
        assert_eq!(
            v.terms[v.lookup("nodular opacity").unwrap()].concept,
            "lung_lesion"
        );
        // Replacements are same-category, other concept, never stems.
        let mut rng = crate::util::seed::rng_for(1, "t");
        for _ in 0..50 {
            let r = v.draw_replacement(n, &mut rng).unwrap();
            let t = &v.terms[r];
            assert_eq!(t.category, "finding");
            assert_ne!(t.concept, "lung_lesion");
            assert!(!t.stem);
        }
    }

    #[test]
    fn laterality_and_yes_no() {
        assert_eq!(
            swap_laterality("Right upper lobe").as_deref(),
            Some("Left upper lobe")
        );
        assert_eq!(
            swap_laterality("left lung, not the right").as_deref(),
            Some("right lung, not the left")
        );
        assert_eq!(swap_laterality("leftover heart"), None);
        assert_eq!(flip_yes_no("Yes").as_deref(), Some("No"));
        assert_eq!(flip_yes_no("no.").as_deref(), Some("yes."));
        assert_eq!(flip_yes_no("nodule"), None);
    }

    #[test]
    fn vocabulary_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.tsv");
        std::fs::write(
            &p,
            "# mine\nglioma\tfinding\nmening*\tfinding\tmeningioma\n!meninges\n",
        )
        .unwrap();
        let v = Vocabulary::from_file(&p).unwrap();
        assert_eq!(v.terms.len(), 2);
        assert!(v.terms[1].stem);
        let text = "Meningioma abuts the meninges.";
        let m = v.find(text);
        assert_eq!(m.len(), 1);
        assert_eq!(&text[m[0].start..m[0].end], "Meningioma");
        std::fs::write(&p, "ok\tfinding\nbroken line\n").unwrap();
        let e = format!("{:#}", Vocabulary::from_file(&p).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
