//! The perturbations of paper 3.1.2 (Eq. 7-10), one file per kind behind
//! [`Perturbation`]: misdiagnosis (`mis.rs`, Eq. 7), false positive
//! (`fp.rs`, Eq. 8), false negative by neutralisation (`fn_neutral.rs`,
//! Eq. 9) and by deletion (`fn_delete.rs`, Eq. 10). Each turns (x+, y+) and
//! k* into (x−, y−) and its differential keywords Δ (Eq. 11), or says why it
//! cannot (a [`Skip`], counted per kind in the run's summary).

pub mod fn_delete;
pub mod fn_neutral;
pub mod fp;
pub mod mis;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::chunk::Chunk;
use super::vocab::Vocabulary;
use crate::data::AnswerType;
use crate::heatmap::region::RegionOptions;
use crate::heatmap::{Heatmap, LesionMask};

/// A preference-pair kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    Mis,
    Fp,
    FnNeutral,
    FnDelete,
}

impl PairKind {
    pub const ALL: [PairKind; 4] = [
        PairKind::Mis,
        PairKind::Fp,
        PairKind::FnNeutral,
        PairKind::FnDelete,
    ];

    /// The name in pair records (`mis`, `fp`, `fn_neutral`, `fn_delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            PairKind::Mis => "mis",
            PairKind::Fp => "fp",
            PairKind::FnNeutral => "fn_neutral",
            PairKind::FnDelete => "fn_delete",
        }
    }

    /// Parse a comma-separated list (`mis,fp,fn_neutral,fn_delete`), keeping order, no repeats.
    pub fn parse_list(s: &str) -> Result<Vec<PairKind>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k: PairKind = part.parse()?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
        if out.is_empty() {
            bail!("no pair kind given (expected some of mis, fp, fn_neutral, fn_delete)");
        }
        Ok(out)
    }
}

impl fmt::Display for PairKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PairKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mis" => PairKind::Mis,
            "fp" => PairKind::Fp,
            "fn_neutral" => PairKind::FnNeutral,
            "fn_delete" => PairKind::FnDelete,
            other => {
                bail!("unknown pair kind {other:?} (expected mis, fp, fn_neutral or fn_delete)")
            }
        })
    }
}

/// How the false-positive image fills Ω* (Eq. 8 uses 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "fill")]
pub enum Fill {
    /// x ⊙ (1 − M): black.
    #[default]
    Zero,
    /// The image's mean colour.
    Mean,
    /// The image blurred by a Gaussian of `sigma` pixels.
    Blur { sigma: f32 },
}

impl FromStr for Fill {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "zero" | "0" => Fill::Zero,
            "mean" => Fill::Mean,
            "blur" => Fill::Blur { sigma: 4.0 },
            other => match other.strip_prefix("blur:").map(str::parse::<f32>) {
                Some(Ok(s)) if s > 0.0 && s.is_finite() => Fill::Blur { sigma: s },
                _ => bail!("unknown fill {other:?} (expected zero, mean, blur or blur:SIGMA)"),
            },
        })
    }
}

/// What a perturbation sees of one sample.
pub struct PerturbInput<'a> {
    pub id: &'a str,
    pub answer: &'a str,
    pub answer_type: AnswerType,
    pub chunks: &'a [Chunk],
    /// Index of k* in `chunks`.
    pub k: usize,
    pub vocab: &'a Vocabulary,
    pub seed: u64,
    pub heatmap: &'a Heatmap,
    /// The chosen image x+, decoded (only `fp` reads it).
    pub image: Option<&'a image::RgbImage>,
    pub region: &'a RegionOptions,
    pub fill: Fill,
}

impl PerturbInput<'_> {
    pub fn keyword(&self) -> &Chunk {
        &self.chunks[self.k]
    }
}

/// The dispreferred side of a pair.
#[derive(Clone, Debug)]
pub struct Perturbed {
    /// y−.
    pub rejected: String,
    /// k̃ (Eq. 7) or the neutral phrase (Eq. 9).
    pub replacement: Option<String>,
    /// Δ(y+, y−) (Eq. 11).
    pub delta: Vec<String>,
    /// x− when it differs from x+ (Eq. 8).
    pub image: Option<MaskedImage>,
}

/// The false-positive image and the region it hides.
#[derive(Clone, Debug)]
pub struct MaskedImage {
    pub rgb: image::RgbImage,
    /// Ω* at image size.
    pub region: LesionMask,
    /// Ω*'s share of the image.
    pub share: f64,
}

/// Why a kind produced no pair for a sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// A stable code (`no_replacement`, `closed_answer`, `empty_after_delete`, ...).
    pub code: String,
    pub message: String,
}

impl Skip {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Skip {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl Skip {
    /// The false-negative kinds (Eq. 9-10) apply to a finding: a yes/no
    /// k* is skipped with code `closed_answer`.
    pub fn if_closed_answer(keyword: &str) -> Option<Skip> {
        crate::curate::chunk::is_yes_no(keyword).then(|| {
            Skip::new(
                "closed_answer",
                "k* is a yes/no answer; a false negative applies to a finding",
            )
        })
    }
}

/// A way of turning (x+, y+) and k* into (x−, y−).
pub trait Perturbation: Send + Sync {
    fn kind(&self) -> PairKind;
    /// Ok(Err(skip)) when the kind does not apply to this sample; Err for failures.
    fn apply(&self, input: &PerturbInput) -> Result<std::result::Result<Perturbed, Skip>>;
}

/// The registry: the perturbation of each kind.
pub fn perturbation(kind: PairKind) -> Box<dyn Perturbation> {
    match kind {
        PairKind::Mis => Box::new(mis::Misdiagnosis),
        PairKind::Fp => Box::new(fp::FalsePositive),
        PairKind::FnNeutral => Box::new(fn_neutral::Neutralise),
        PairKind::FnDelete => Box::new(fn_delete::Delete),
    }
}

/// `text[..start] + with + text[end..]`.
pub fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut s = String::with_capacity(text.len() + with.len());
    s.push_str(&text[..start]);
    s.push_str(with);
    s.push_str(&text[end..]);
    s
}

/// Tidy a text after a deletion: runs of spaces collapse to one, no space
/// before `.,;:!?`, no punctuation left at the start, repeated sentence
/// punctuation (`. .`, `,.`) collapses, and the first letter is capitalised
/// when the original's was.
pub fn tidy(text: &str, capitalise: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if ".,;:!?".contains(c) {
            while out.ends_with(' ') {
                out.pop();
            }
            if out.is_empty() {
                continue;
            }
            if let Some(last) = out.chars().last() {
                if ".,;:!?".contains(last) {
                    // Keep the stronger mark: a sentence end wins over , ; :
                    if ".!?".contains(c) && ",;:".contains(last) {
                        out.pop();
                        out.push(c);
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    let t = out.trim().to_string();
    if capitalise {
        let mut cs = t.chars();
        if let Some(f) = cs.next() {
            return f.to_uppercase().collect::<String>() + cs.as_str();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_fill_and_tidy() {
        assert_eq!(
            PairKind::parse_list("mis, fp,mis,fn_delete").unwrap(),
            [PairKind::Mis, PairKind::Fp, PairKind::FnDelete]
        );
        assert!(PairKind::parse_list("mis,typo").is_err());
        assert_eq!(
            "blur:2.5".parse::<Fill>().unwrap(),
            Fill::Blur { sigma: 2.5 }
        );
        assert!("blur:-1".parse::<Fill>().is_err());
        assert_eq!(tidy("A  b , c .  . D", false), "A b, c. D");
        assert_eq!(
            tidy(" , the lungs are clear.", true),
            "The lungs are clear."
        );
        assert_eq!(splice("abcdef", 1, 3, "XY"), "aXYdef");
    }
}
