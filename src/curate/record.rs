//! Building `data::pairs::PairRecord`s (`docs/design.md`, "Pair records") from a
//! sample, its keyword and a perturbation, with the audit fields.

use serde_json::{json, Map, Value};

use super::chunk::Chunk;
use super::perturb::{PairKind, Perturbed};
use crate::data::pairs::PairRecord;
use crate::data::Sample;

/// The id of the pair of `kind` made from sample `source_id`: `{source_id}:{kind}`.
pub fn pair_id(source_id: &str, kind: PairKind) -> String {
    format!("{source_id}:{}", kind.as_str())
}

/// A file-name-safe form of an id (anything outside `[A-Za-z0-9._-]` becomes `_`).
pub fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Everything a record is made of.
pub struct RecordParts<'a> {
    pub sample: &'a Sample,
    pub kind: PairKind,
    pub prompt: &'a str,
    pub chunks: &'a [Chunk],
    pub k: usize,
    pub similarities: &'a [f64],
    pub perturbed: &'a Perturbed,
    pub weight: f64,
    pub delta_cosines: &'a [f64],
    pub chosen_image: String,
    pub rejected_image: String,
    pub heatmap_source: &'a str,
    pub config_hash: &'a str,
}

/// Round to 6 decimals so that records stay short and stable.
fn r6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The pair record. Audit fields: `source_id`, `keyword` (k*), `replacement`
/// (k̃ or the neutral phrase), `delta` (Δ), `similarities` (s_j of every
/// chunk), `mask_share` (Ω*'s share, fp only), `heatmap_source`,
/// `config_hash`; extra: `chunks` (t_j), `keyword_span` (k*'s character span
/// in `chosen`), `delta_cosines` (cos(v, f_t(k_j)) for Δ), `answer_type`.
pub fn build(p: &RecordParts) -> PairRecord {
    let k = &p.chunks[p.k];
    let answer = &p.sample.answer;
    let (cs, ce) = k.char_span(answer);
    let mut extra = Map::new();
    extra.insert(
        "chunks".into(),
        Value::Array(p.chunks.iter().map(|c| json!(c.text)).collect()),
    );
    extra.insert("keyword_span".into(), json!([cs, ce]));
    extra.insert(
        "delta_cosines".into(),
        json!(p.delta_cosines.iter().map(|c| r6(*c)).collect::<Vec<_>>()),
    );
    extra.insert(
        "answer_type".into(),
        json!(p.sample.answer_type.to_string()),
    );
    PairRecord {
        id: pair_id(&p.sample.id, p.kind),
        kind: p.kind.as_str().into(),
        prompt: p.prompt.to_string(),
        chosen: answer.clone(),
        rejected: p.perturbed.rejected.clone(),
        chosen_image: p.chosen_image.clone(),
        rejected_image: p.rejected_image.clone(),
        weight: p.weight,
        source_id: Some(p.sample.id.clone()),
        keyword: Some(k.text.clone()),
        replacement: p.perturbed.replacement.clone(),
        delta: Some(p.perturbed.delta.clone()),
        similarities: Some(p.similarities.iter().map(|s| r6(*s)).collect()),
        mask_share: p.perturbed.image.as_ref().map(|m| r6(m.share)),
        heatmap_source: Some(p.heatmap_source.to_string()),
        config_hash: Some(p.config_hash.to_string()),
        extra,
    }
}
