//! Evaluation subsets (paper 4.2, Table 2): the subtle-lesion subset, the
//! samples whose lesion covers less than a threshold (5%) of the image.

use anyhow::{Context, Result};

use crate::data::Sample;
use crate::heatmap::io::{is_subtle, mask_share};

/// The lesion's share of the image of `s`: the loader's `meta.lesion_area`
/// when present (the phantom records it), else measured on the lesion mask;
/// `None` when the sample has neither (or its mask is an organ mask).
pub fn lesion_share(s: &Sample) -> Result<Option<f64>> {
    if let Some(v) = s.meta.get("lesion_area").and_then(|v| v.as_f64()) {
        return Ok(Some(v));
    }
    let organ = s.meta.get("mask_kind").and_then(|v| v.as_str()) == Some("organ");
    match (&s.mask, organ) {
        (Some(m), false) => {
            Ok(Some(mask_share(m).with_context(|| {
                format!("sample '{}' ({}): field mask", s.id, s.dataset)
            })?))
        }
        _ => Ok(None),
    }
}

/// Whether `s` has a subtle lesion (`0 < share < threshold`).
pub fn is_subtle_sample(s: &Sample, threshold: f64) -> Result<bool> {
    Ok(lesion_share(s)?.is_some_and(|a| is_subtle(a, threshold)))
}

/// The subtle-lesion subset of `samples`, in order.
pub fn subtle_subset(samples: &[Sample], threshold: f64) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for s in samples {
        if is_subtle_sample(s, threshold)? {
            out.push(s.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{AnswerType, Split};

    fn sample(id: &str, area: Option<f64>) -> Sample {
        let mut meta = serde_json::Map::new();
        if let Some(a) = area {
            meta.insert("lesion_area".into(), a.into());
        }
        Sample {
            id: id.into(),
            dataset: "t".into(),
            split: Split::Test,
            images: vec![],
            question: None,
            answer: "x".into(),
            answer_type: AnswerType::Report,
            mask: None,
            meta,
        }
    }

    #[test]
    fn subtle_means_a_small_nonzero_lesion() {
        let s = vec![
            sample("a", Some(0.01)),
            sample("b", Some(0.2)),
            sample("c", Some(0.0)),
            sample("d", None),
            sample("e", Some(0.0499)),
        ];
        let ids: Vec<String> = subtle_subset(&s, 0.05)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec!["a", "e"]);
    }
}
