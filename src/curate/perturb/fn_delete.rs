//! False negative by deletion (paper Eq. 10): x− = x+, y− = y+ without the
//! chunk that holds k*. For reports that chunk is the sentence (split on
//! sentence ends and `;`) containing k*, so the rest stays grammatical; for a
//! one-sentence answer it is the comma clause holding k*. Spaces and
//! punctuation are tidied afterwards ([`super::tidy`]). A deletion that
//! would leave no text (a one-chunk VQA answer) is skipped.

use anyhow::Result;

use super::{tidy, PairKind, PerturbInput, Perturbation, Perturbed, Skip};
use crate::curate::chunk::{clauses, sentences};

/// Eq. 10.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delete;

/// The byte span deleted for k* at `[start, end)` in `answer`: its sentence,
/// or its clause when the answer is one sentence; `None` if neither contains it.
pub fn deletion_span(answer: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let sents = sentences(answer);
    let units = if sents.len() > 1 {
        sents
    } else {
        clauses(answer)
    };
    let (s, e) = units.into_iter().find(|(s, e)| *s <= start && end <= *e)?;
    // Take the unit's closing punctuation with it.
    let mut e = e;
    if let Some(c) = answer[e..].chars().next() {
        if ".!?;,".contains(c) {
            e += c.len_utf8();
        }
    }
    Some((s, e))
}

impl Perturbation for Delete {
    fn kind(&self) -> PairKind {
        PairKind::FnDelete
    }

    fn apply(&self, input: &PerturbInput) -> Result<std::result::Result<Perturbed, Skip>> {
        let k = input.keyword();
        if let Some(skip) = Skip::if_closed_answer(&k.text) {
            return Ok(Err(skip));
        }
        let Some((s, e)) = deletion_span(input.answer, k.start, k.end) else {
            return Ok(Err(Skip::new(
                "no_chunk_span",
                format!("no sentence or clause holds k* {:?}", k.text),
            )));
        };
        let capital = input
            .answer
            .trim_start()
            .starts_with(|c: char| c.is_uppercase());
        let rejected = tidy(
            &format!("{}{}", &input.answer[..s], &input.answer[e..]),
            capital,
        );
        if !rejected.chars().any(char::is_alphanumeric) {
            return Ok(Err(Skip::new(
                "empty_after_delete",
                "deleting k*'s chunk leaves no answer",
            )));
        }
        Ok(Ok(Perturbed {
            rejected,
            delta: vec![k.text.clone()],
            replacement: None,
            image: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_the_sentence_or_clause() {
        let r = "The heart is normal. A small nodule is seen in the right upper lobe. No effusion.";
        let k = r.find("nodule").unwrap();
        let (s, e) = deletion_span(r, k, k + 6).unwrap();
        assert_eq!(&r[s..e], "A small nodule is seen in the right upper lobe.");
        assert_eq!(
            tidy(&format!("{}{}", &r[..s], &r[e..]), true),
            "The heart is normal. No effusion."
        );
        let r = "Small right upper lobe nodule, concerning for pneumonia";
        let k = r.find("nodule").unwrap();
        let (s, e) = deletion_span(r, k, k + 6).unwrap();
        assert_eq!(
            tidy(&format!("{}{}", &r[..s], &r[e..]), true),
            "Concerning for pneumonia"
        );
    }
}
