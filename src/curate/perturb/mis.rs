//! Misdiagnosis (paper Eq. 7): x− = x+, y− = y+ with k* replaced by k̃ ≠ k*.
//!
//! k̃ is, in this order: the flipped answer for a closed yes/no answer; the
//! other side for a laterality term (`left` ↔ `right`); else a term of the
//! same category and another concept drawn from the vocabulary with the
//! stream `rng_for(seed, "mis/{id}")`. When k*'s chunk is a whole VQA answer
//! that is not itself a term, the longest term inside it is replaced. Only
//! k*'s span changes; the replacement takes k*'s capitalisation.

use anyhow::Result;

use super::{splice, PairKind, PerturbInput, Perturbation, Perturbed, Skip};
use crate::curate::vocab::{flip_yes_no, match_case, swap_laterality};
use crate::data::AnswerType;
use crate::util::seed::rng_for;

/// Eq. 7.
#[derive(Clone, Copy, Debug, Default)]
pub struct Misdiagnosis;

impl Perturbation for Misdiagnosis {
    fn kind(&self) -> PairKind {
        PairKind::Mis
    }

    fn apply(&self, input: &PerturbInput) -> Result<std::result::Result<Perturbed, Skip>> {
        let k = input.keyword();
        let vocab = input.vocab;
        // The term to replace: (byte span in the answer, term index).
        let new_chunk: String =
            if input.answer_type == AnswerType::Closed && flip_yes_no(&k.text).is_some() {
                flip_yes_no(&k.text).unwrap_or_default()
            } else {
                let inner = match k.term {
                    Some(t) => Some((k.start, k.end, t)),
                    None => vocab
                        .find(&k.text)
                        .into_iter()
                        .max_by_key(|m| (m.end - m.start, std::cmp::Reverse(m.start)))
                        .map(|m| (k.start + m.start, k.start + m.end, m.term)),
                };
                let Some((s, e, t)) = inner else {
                    return Ok(Err(Skip::new(
                        "no_term",
                        format!("k* {:?} holds no vocabulary term to replace", k.text),
                    )));
                };
                let term = &vocab.terms[t];
                let original = &input.answer[s..e];
                let replaced = if term.category == "laterality" {
                    swap_laterality(original)
                } else {
                    let mut rng = rng_for(input.seed, &format!("mis/{}", input.id));
                    vocab
                        .draw_replacement(t, &mut rng)
                        .map(|r| match_case(original, &vocab.terms[r].text))
                };
                let Some(replaced) = replaced else {
                    return Ok(Err(Skip::new(
                        "no_replacement",
                        format!(
                            "no other-concept term of category {:?} to replace {original:?}",
                            term.category
                        ),
                    )));
                };
                splice(
                    &input.answer[k.start..k.end],
                    s - k.start,
                    e - k.start,
                    &replaced,
                )
            };
        let rejected = splice(input.answer, k.start, k.end, &new_chunk);
        Ok(Ok(Perturbed {
            rejected,
            delta: vec![k.text.clone(), new_chunk.clone()],
            replacement: Some(new_chunk),
            image: None,
        }))
    }
}
