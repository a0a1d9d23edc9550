//! Region-phrase targets for the local alignment of `hdpo align` (see
//! [`crate::encode::region_align`]): for a sample with a lesion mask, the
//! mask is the region (as the `mask` heatmap source gives it), and the
//! chunks of its answer (Eq. 4, the candidates of k*) are sorted into
//! phrases that name the lesion and phrases that do not.
//!
//! * Positives: vocabulary chunks of category `finding` that are not
//!   negated, and the `location` and `laterality` chunks of the sentences
//!   that hold such a finding.
//! * Negatives: every other chunk of the answer.
//! * Negation, NegEx-style: a cue ([`NEGATION_CUES`]) before the chunk in
//!   its sentence ("No pleural effusion", "There is no pneumothorax").
//!
//! Samples without a mask, with an empty mask (normal studies) or without a
//! positive phrase keep the global pair only; they are counted.

use serde::{Deserialize, Serialize};

use super::chunk::{chunk_answer, sentences, Chunk};
use super::vocab::Vocabulary;
use crate::data::Sample;
use crate::encode::align::{sourced_pairs_from_samples, AlignPair, RegionText};
use crate::heatmap::mask::{mask_heatmap, read_mask};

/// Words and word pairs that negate a finding later in the same sentence.
pub const NEGATION_CUES: &[&str] = &[
    "no",
    "not",
    "without",
    "negative for",
    "free of",
    "absence of",
    "absent",
    "resolved",
    "removed",
    "rule out",
];

/// Whether a cue of [`NEGATION_CUES`] occurs in `answer[sentence_start..start]`.
pub fn is_negated(answer: &str, sentence_start: usize, start: usize) -> bool {
    let before = answer[sentence_start..start].to_lowercase();
    let words: Vec<&str> = before
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    NEGATION_CUES.iter().any(|cue| {
        let cw: Vec<&str> = cue.split(' ').collect();
        words.windows(cw.len()).any(|w| w == cw.as_slice())
    })
}

/// The positive and negative phrases of an answer (module docs); `None`
/// when no chunk is a positive.
pub fn region_phrases(
    answer: &str,
    answer_type: crate::data::AnswerType,
    vocab: &Vocabulary,
) -> Option<(Vec<String>, Vec<String>)> {
    let chunks = chunk_answer(answer, answer_type, vocab);
    let sents = sentences(answer);
    let sentence_of = |c: &Chunk| {
        sents
            .iter()
            .position(|(s, e)| c.start >= *s && c.end <= *e)
            .map(|k| sents[k].0)
            .unwrap_or(0)
    };
    let category = |c: &Chunk| c.term.map(|t| vocab.terms[t].category.as_str());
    let finding_sentences: Vec<usize> = chunks
        .iter()
        .filter(|c| category(c) == Some("finding") && !is_negated(answer, sentence_of(c), c.start))
        .map(sentence_of)
        .collect();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for c in &chunks {
        let s = sentence_of(c);
        let positive = match category(c) {
            Some("finding") => !is_negated(answer, s, c.start),
            Some("location" | "laterality") => finding_sentences.contains(&s),
            _ => false,
        };
        if positive { &mut pos } else { &mut neg }.push(c.text.clone());
    }
    (!pos.is_empty()).then_some((pos, neg))
}

/// How many alignment pairs got a region, and why the others did not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub pairs: usize,
    pub with_region: usize,
    pub no_mask: usize,
    /// Masks without lesion pixels (normal studies).
    pub empty_mask: usize,
    pub no_positive_phrase: usize,
    /// Masks that could not be read: `"id: reason"`.
    pub bad_masks: Vec<String>,
}

/// [`sourced_pairs_from_samples`] with a [`RegionText`] on every pair whose
/// sample has a non-empty lesion mask and a positive phrase.
pub fn pairs_with_regions(
    samples: &[Sample],
    vocab: &Vocabulary,
) -> (Vec<AlignPair>, RegionSummary) {
    let mut sum = RegionSummary::default();
    let pairs = sourced_pairs_from_samples(samples)
        .into_iter()
        .map(|(i, mut pair)| {
            let s = &samples[i];
            sum.pairs += 1;
            let Some(mask_path) = &s.mask else {
                sum.no_mask += 1;
                return pair;
            };
            let mask = match read_mask(mask_path) {
                Ok(m) => m,
                Err(e) => {
                    sum.bad_masks.push(format!("{}: {e:#}", s.id));
                    return pair;
                }
            };
            if !mask.data.iter().any(|b| *b) {
                sum.empty_mask += 1;
                return pair;
            }
            let Some((positives, negatives)) = region_phrases(&s.answer, s.answer_type, vocab)
            else {
                sum.no_positive_phrase += 1;
                return pair;
            };
            match mask_heatmap(&mask, None, &s.id) {
                Ok(heatmap) => {
                    sum.with_region += 1;
                    pair.region = Some(RegionText {
                        heatmap,
                        positives,
                        negatives,
                    });
                }
                Err(e) => sum.bad_masks.push(format!("{}: {e:#}", s.id)),
            }
            pair
        })
        .collect();
    (pairs, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::AnswerType;

    #[test]
    fn negation_needs_a_cue_before_the_term_in_its_sentence() {
        let a = "No pleural effusion. There is no pneumothorax. Small nodule, not calcified.";
        let at = |t: &str| a.find(t).unwrap();
        assert!(is_negated(a, 0, at("pleural")));
        assert!(is_negated(a, at("There"), at("pneumothorax")));
        assert!(!is_negated(a, at("Small"), at("nodule")));
        assert!(!is_negated("Nodule in the left lobe", 0, 0));
        assert!(is_negated("Negative for edema", 0, 13));
        // "note" is not "not".
        assert!(!is_negated("Note the nodule", 0, 9));
    }

    #[test]
    fn positives_are_the_unnegated_finding_and_its_location() {
        let v = Vocabulary::default_vocab();
        let r = "There is moderate airspace opacity in the left lower lobe. No pleural \
                 effusion or pneumothorax. The right lung is clear.";
        let (pos, neg) = region_phrases(r, AnswerType::Report, &v).unwrap();
        assert_eq!(pos, ["airspace opacity", "left lower lobe"]);
        assert!(neg.contains(&"pleural effusion".to_string()), "{neg:?}");
        assert!(neg.contains(&"pneumothorax".to_string()), "{neg:?}");
        assert!(neg.contains(&"right lung".to_string()), "{neg:?}");
        assert!(neg.contains(&"moderate".to_string()), "{neg:?}");
        assert_eq!(
            region_phrases(
                "No acute cardiopulmonary process. The lungs are clear.",
                AnswerType::Report,
                &v
            ),
            None
        );
    }
}
