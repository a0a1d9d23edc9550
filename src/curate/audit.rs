//! How often k* (Eq. 6) names the lesion, against ground-truth keywords:
//! for the phantom benchmark, each abnormal study's finding keywords and
//! location phrase from its manifest (`phantom.json`). A curated pair counts
//! for its `source_id` (all kinds of one sample share k*); pairs whose
//! sample has no ground truth (normal studies, VQA questions) are left out.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::vocab::Vocabulary;
use crate::data::pairs::PairRecord;

/// Ground truth of the phantom at `root` (the folder holding
/// `phantom.json`): abnormal study id -> lowercased finding keywords and
/// location phrase.
pub fn phantom_keyword_truth(root: &Path) -> Result<HashMap<String, Vec<String>>> {
    let path = root.join("phantom.json");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let mut truth = HashMap::new();
    for s in manifest["studies"].as_array().into_iter().flatten() {
        if s["finding"].is_null() {
            continue;
        }
        let Some(id) = s["id"].as_str() else {
            continue;
        };
        let mut names: Vec<String> = s["keywords"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_lowercase))
            .collect();
        if let Some(l) = s["location"].as_str() {
            names.push(l.to_lowercase());
        }
        truth.insert(id.to_string(), names);
    }
    Ok(truth)
}

/// The k* audit of one curation run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeywordAudit {
    /// The heatmap source (`mask`, `file`, ...).
    pub heatmaps: String,
    /// The dataset label, when known.
    #[serde(default)]
    pub dataset: String,
    /// Samples with ground truth and a curated pair.
    pub studies: usize,
    /// Of them, those whose k* is a ground-truth keyword or location phrase.
    pub hits: usize,
    pub rate: f64,
    /// How often k* fell in each vocabulary category (`other`: not a term).
    pub keyword_categories: BTreeMap<String, usize>,
}

/// Audit the k* of `pairs` against `truth` (see the module docs).
pub fn audit_keywords(
    pairs: &[PairRecord],
    truth: &HashMap<String, Vec<String>>,
    vocab: &Vocabulary,
    heatmaps: &str,
    dataset: &str,
) -> KeywordAudit {
    let mut seen = std::collections::HashSet::new();
    let (mut hits, mut studies) = (0usize, 0usize);
    let mut cats: BTreeMap<String, usize> = BTreeMap::new();
    for p in pairs {
        let (Some(id), Some(k)) = (p.source_id.as_deref(), p.keyword.as_deref()) else {
            continue;
        };
        let Some(names) = truth.get(id) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        studies += 1;
        let k = k.to_lowercase();
        hits += usize::from(names.contains(&k));
        let cat = vocab
            .lookup(&k)
            .map(|t| vocab.terms[t].category.clone())
            .unwrap_or_else(|| "other".into());
        *cats.entry(cat).or_default() += 1;
    }
    KeywordAudit {
        heatmaps: heatmaps.to_string(),
        dataset: dataset.to_string(),
        studies,
        hits,
        rate: hits as f64 / studies.max(1) as f64,
        keyword_categories: cats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_sample_once_and_only_with_ground_truth() {
        let pair = |id: &str, kw: &str| -> PairRecord {
            serde_json::from_value(serde_json::json!({
                "id": format!("{id}:mis"), "kind": "mis", "prompt": "q", "chosen": "a",
                "rejected": "b", "chosen_image": "i.png", "rejected_image": "i.png",
                "weight": 1.0, "source_id": id, "keyword": kw
            }))
            .unwrap()
        };
        let truth: HashMap<String, Vec<String>> = [
            (
                "s1".to_string(),
                vec!["pleural effusion".into(), "left".into()],
            ),
            (
                "s2".to_string(),
                vec!["nodule".into(), "right upper lobe".into()],
            ),
        ]
        .into();
        let pairs = [
            pair("s1", "Pleural effusion"),
            pair("s1", "heart"), // a second kind of s1: not counted again
            pair("s2", "small"),
            pair("normal", "heart"),
        ];
        let a = audit_keywords(&pairs, &truth, &Vocabulary::default_vocab(), "mask", "d");
        assert_eq!((a.studies, a.hits), (2, 1));
        assert_eq!(a.rate, 0.5);
        assert_eq!(a.keyword_categories["finding"], 1);
        assert_eq!(a.keyword_categories["size"], 1);
    }
}
