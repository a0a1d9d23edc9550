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
//! The region is the sample's lesion mask, or a heatmap from a heatmap source
//! (DAug-style files for data without masks). Samples without a positive
//! phrase (normal studies), without a mask, with an empty mask or with an
//! unusable heatmap keep the global pair only; they are counted.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::chunk::{chunk_answer, sentences, Chunk};
use super::vocab::Vocabulary;
use crate::data::Sample;
use crate::encode::align::{sourced_pairs_from_samples, AlignPair, RegionText};
use crate::heatmap::file::FileSource;
use crate::heatmap::mask::{mask_heatmap, read_mask};
use crate::heatmap::pool::check_heatmap;
use crate::heatmap::{HeatmapSource, SampleView};

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
    /// Answers without a positive phrase (normal studies, anatomy-only answers).
    pub no_positive_phrase: usize,
    /// With mask regions: samples without a lesion mask.
    pub no_mask: usize,
    /// With mask regions: masks without lesion pixels.
    pub empty_mask: usize,
    /// Heatmaps or masks that could not be read or are unusable (all zero,
    /// negative, non-finite): `"id: reason"`.
    pub bad_heatmaps: Vec<String>,
}

/// Where `hdpo align`'s regions come from, as the command line names it:
/// `mask` (each sample's lesion mask) or `file[:DIR]` (DAug-style heatmap
/// files, `{id}_{class}.npy` / PNG; without DIR, `heatmaps/` in the dataset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionHeatmapSpec {
    Masks,
    Files(Option<PathBuf>),
}

impl RegionHeatmapSpec {
    /// The heatmap-file source for a dataset at `data`, `None` for masks.
    pub fn file_source(&self, data: &std::path::Path) -> Option<FileSource> {
        match self {
            RegionHeatmapSpec::Masks => None,
            RegionHeatmapSpec::Files(dir) => Some(FileSource {
                dir: dir.clone().unwrap_or_else(|| data.join("heatmaps")),
                class: None,
            }),
        }
    }
}

impl std::str::FromStr for RegionHeatmapSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "mask" {
            Ok(RegionHeatmapSpec::Masks)
        } else if s == "file" {
            Ok(RegionHeatmapSpec::Files(None))
        } else if let Some(dir) = s.strip_prefix("file:") {
            Ok(RegionHeatmapSpec::Files(Some(PathBuf::from(dir))))
        } else {
            anyhow::bail!("region heatmaps {s:?}: expected mask or file[:DIR]")
        }
    }
}

/// Where the region of a sample comes from.
#[derive(Clone, Copy)]
pub enum RegionHeatmaps<'a> {
    /// Its lesion mask (the phantom, SLAKE-style data).
    Masks,
    /// A heatmap source, e.g. DAug-style heatmap files (`file:DIR`) for data
    /// without masks (MIMIC-CXR).
    Source(&'a dyn HeatmapSource),
}

/// [`sourced_pairs_from_samples`] with a [`RegionText`] on every pair whose
/// sample's answer has a positive phrase and whose region heatmap is usable.
pub fn pairs_with_regions(
    samples: &[Sample],
    vocab: &Vocabulary,
    heatmaps: RegionHeatmaps,
) -> (Vec<AlignPair>, RegionSummary) {
    let mut sum = RegionSummary::default();
    let pairs = sourced_pairs_from_samples(samples)
        .into_iter()
        .map(|(i, mut pair)| {
            let s = &samples[i];
            sum.pairs += 1;
            let Some((positives, negatives)) = region_phrases(&s.answer, s.answer_type, vocab)
            else {
                sum.no_positive_phrase += 1;
                return pair;
            };
            let heatmap = match heatmaps {
                RegionHeatmaps::Masks => {
                    let Some(mask_path) = &s.mask else {
                        sum.no_mask += 1;
                        return pair;
                    };
                    match read_mask(mask_path) {
                        Ok(m) if !m.data.iter().any(|b| *b) => {
                            sum.empty_mask += 1;
                            return pair;
                        }
                        Ok(m) => mask_heatmap(&m, None, &s.id),
                        Err(e) => Err(e),
                    }
                }
                RegionHeatmaps::Source(src) => {
                    let view = SampleView {
                        id: &s.id,
                        image: None,
                        image_path: s.images.first().map(PathBuf::as_path),
                        mask_path: s.mask.as_deref(),
                        text: None,
                    };
                    src.heatmap(&view)
                        .and_then(|h| check_heatmap(&h, &s.id).map(|_| h))
                }
            };
            match heatmap {
                Ok(heatmap) => {
                    sum.with_region += 1;
                    pair.region = Some(RegionText {
                        heatmap,
                        positives,
                        negatives,
                    });
                }
                Err(e) => sum.bad_heatmaps.push(format!("{}: {e:#}", s.id)),
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

    /// Heatmaps by sample id: `z*` all zero, `e*` an error, else a blob.
    struct StubSource;

    impl HeatmapSource for StubSource {
        fn name(&self) -> &str {
            "stub"
        }
        fn heatmap(&self, s: &SampleView) -> anyhow::Result<crate::heatmap::Heatmap> {
            let v = match s.id.chars().next() {
                Some('z') => 0.0,
                Some('e') => anyhow::bail!("no heatmap file for {}", s.id),
                _ => 1.0,
            };
            crate::heatmap::Heatmap::new(2, 2, vec![v, 0.0, 0.0, 0.0])
        }
    }

    #[test]
    fn regions_from_a_heatmap_source_count_what_they_skip() {
        let sample = |id: &str, answer: &str| Sample {
            id: id.into(),
            dataset: "t".into(),
            split: crate::data::Split::Train,
            images: vec![PathBuf::from(format!("{id}.png"))],
            question: None,
            answer: answer.into(),
            answer_type: AnswerType::Report,
            mask: None,
            meta: Default::default(),
        };
        let finding = "A small nodule in the right upper lobe. The heart is normal.";
        let samples = [
            sample("a1", finding),
            sample("n1", "The lungs are clear. No pneumothorax."),
            sample("z1", finding),
            sample("e1", finding),
        ];
        let v = Vocabulary::default_vocab();
        let (pairs, sum) = pairs_with_regions(&samples, &v, RegionHeatmaps::Source(&StubSource));
        assert_eq!(
            (sum.pairs, sum.with_region, sum.no_positive_phrase),
            (4, 1, 1)
        );
        assert_eq!(sum.bad_heatmaps.len(), 2, "{sum:?}");
        assert!(sum.bad_heatmaps[0].starts_with("z1: "), "{sum:?}");
        assert!(
            sum.bad_heatmaps[1].contains("no heatmap file for e1"),
            "{sum:?}"
        );
        let r = pairs[0].region.as_ref().unwrap();
        assert_eq!(r.positives, ["nodule", "right upper lobe"]);
        assert!(pairs[1..].iter().all(|p| p.region.is_none()));
        // With masks, samples without one are counted as such.
        let (_, sum) = pairs_with_regions(&samples, &v, RegionHeatmaps::Masks);
        assert_eq!((sum.no_mask, sum.with_region), (3, 0));
    }

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
