//! The semantic chunks t_1..t_M of y_gt (paper Eq. 4; `docs/design.md`,
//! "Chunks and k*"): the spans that match the vocabulary (longest match,
//! case-insensitive); if none matches, the clauses (split on sentence ends,
//! `;` and `,`); a VQA answer shorter than a clause is one chunk. Every chunk
//! keeps its byte span in the answer, so perturbations edit by span and the
//! rest of the text stays byte-identical.

use serde::{Deserialize, Serialize};

use super::vocab::{flip_yes_no, Vocabulary};
use crate::data::AnswerType;

/// Where a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkOrigin {
    /// A vocabulary match.
    Vocabulary,
    /// A clause (no vocabulary match in the text).
    Clause,
    /// A whole short VQA answer.
    Answer,
}

/// One chunk t_j of the answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Byte span `[start, end)` in the answer.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// The vocabulary term the whole chunk is, if any.
    pub term: Option<usize>,
    pub origin: ChunkOrigin,
}

impl Chunk {
    /// The span in characters (what pair records store).
    pub fn char_span(&self, answer: &str) -> (usize, usize) {
        char_span(answer, self.start, self.end)
    }
}

/// Byte span → character span.
pub fn char_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    (text[..start].chars().count(), text[..end].chars().count())
}

fn trimmed(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let t = s.trim();
    // A span of punctuation only is no chunk.
    if !t.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some((start + lead, start + lead + t.len()))
}

fn split_on(text: &str, delims: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end_here = delims.contains(&c)
            // Keep decimals ("1.5 cm") and abbreviations glued to a digit.
            && !(c == '.'
                && text[..i].ends_with(|p: char| p.is_ascii_digit())
                && text[i + 1..].starts_with(|n: char| n.is_ascii_digit()));
        if end_here {
            if let Some(s) = trimmed(text, start, i) {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
    }
    if let Some(s) = trimmed(text, start, text.len()) {
        out.push(s);
    }
    out
}

/// Clauses: split on sentence ends, `;` and `,`.
pub fn clauses(text: &str) -> Vec<(usize, usize)> {
    split_on(text, &['.', '!', '?', ';', ','])
}

/// Sentences: split on sentence ends and `;` (the unit deletion removes).
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    split_on(text, &['.', '!', '?', ';'])
}

/// Whether `answer` is a closed yes/no answer.
pub fn is_yes_no(answer: &str) -> bool {
    flip_yes_no(answer).is_some()
}

/// The chunks of `answer` (see the module docs). Empty when the answer has
/// no alphanumeric content.
pub fn chunk_answer(answer: &str, answer_type: AnswerType, vocab: &Vocabulary) -> Vec<Chunk> {
    let is_vqa = matches!(answer_type, AnswerType::Closed | AnswerType::Open);
    let cl = clauses(answer);
    if is_vqa && cl.len() == 1 {
        let (s, e) = match trimmed(answer, 0, answer.len()) {
            Some(se) => se,
            None => return Vec::new(),
        };
        let text = &answer[s..e];
        let text = text.trim_end_matches('.');
        let e = s + text.len();
        let m = vocab.find(text);
        let term = match m.as_slice() {
            [one] if one.start == 0 && one.end == text.len() => Some(one.term),
            _ => None,
        };
        return vec![Chunk {
            start: s,
            end: e,
            text: answer[s..e].to_string(),
            term,
            origin: ChunkOrigin::Answer,
        }];
    }
    let m = vocab.find(answer);
    if !m.is_empty() {
        return m
            .into_iter()
            .map(|m| Chunk {
                start: m.start,
                end: m.end,
                text: answer[m.start..m.end].to_string(),
                term: Some(m.term),
                origin: ChunkOrigin::Vocabulary,
            })
            .collect();
    }
    cl.into_iter()
        .map(|(s, e)| Chunk {
            start: s,
            end: e,
            text: answer[s..e].to_string(),
            term: None,
            origin: ChunkOrigin::Clause,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_by_vocabulary_clause_or_answer() {
        let v = Vocabulary::default_vocab();
        let r = "A small left pleural effusion. The heart size is normal.";
        let c = chunk_answer(r, AnswerType::Report, &v);
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["small", "left", "pleural effusion", "The heart"]);
        for ch in &c {
            assert_eq!(&r[ch.start..ch.end], ch.text);
            assert_eq!(ch.origin, ChunkOrigin::Vocabulary);
        }
        // No vocabulary term: clauses.
        let r = "Stable postoperative appearance, unchanged; follow up advised.";
        let c = chunk_answer(r, AnswerType::Report, &v);
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Stable postoperative appearance",
                "unchanged",
                "follow up advised"
            ]
        );
        // A short VQA answer is one chunk, with its term when it is one.
        let c = chunk_answer("Right upper lobe", AnswerType::Open, &v);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].origin, ChunkOrigin::Answer);
        assert_eq!(v.terms[c[0].term.unwrap()].category, "location");
        let c = chunk_answer(" Yes. ", AnswerType::Closed, &v);
        assert_eq!((c[0].start, c[0].end, c[0].text.as_str()), (1, 4, "Yes"));
        assert!(chunk_answer("", AnswerType::Open, &v).is_empty());
        assert!(chunk_answer(" ... ", AnswerType::Open, &v).is_empty());
        assert!(chunk_answer("?!", AnswerType::Report, &v).is_empty());
        assert_eq!(char_span("é nodule", 3, 9), (2, 8));
    }
}
