//! False negative by neutralisation (paper Eq. 9): x− = x+, y− = y+ with the
//! k* span replaced by "no abnormalities" (capitalised when k* was).
//! Not applied to closed yes/no answers (denying "yes" is a misdiagnosis).

use anyhow::Result;

use super::{splice, PairKind, PerturbInput, Perturbation, Perturbed, Skip};
use crate::curate::vocab::match_case;

/// The generic negation phrase of Eq. 9.
pub const NEUTRAL_PHRASE: &str = "no abnormalities";

/// Eq. 9.
#[derive(Clone, Copy, Debug, Default)]
pub struct Neutralise;

impl Perturbation for Neutralise {
    fn kind(&self) -> PairKind {
        PairKind::FnNeutral
    }

    fn apply(&self, input: &PerturbInput) -> Result<std::result::Result<Perturbed, Skip>> {
        let k = input.keyword();
        if let Some(skip) = Skip::if_closed_answer(&k.text) {
            return Ok(Err(skip));
        }
        let phrase = match_case(&k.text, NEUTRAL_PHRASE);
        Ok(Ok(Perturbed {
            rejected: splice(input.answer, k.start, k.end, &phrase),
            delta: vec![k.text.clone(), NEUTRAL_PHRASE.to_string()],
            replacement: Some(phrase),
            image: None,
        }))
    }
}
