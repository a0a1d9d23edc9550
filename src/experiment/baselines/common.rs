//! Helpers shared by the baselines: prompts, vocabulary matches and swaps,
//! image corruptions written as PNG, the token-F1 judge, record assembly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::Map;

use super::BuildContext;
use crate::data::pairs::PairRecord;
use crate::data::Sample;

/// The sample's primary image, or an error naming the sample.
pub fn image_of(s: &Sample) -> Result<&Path> {
    s.images
        .first()
        .map(PathBuf::as_path)
        .with_context(|| format!("sample '{}' ({}): field images is empty", s.id, s.dataset))
}

/// A vocabulary term found in a text: byte span, the term, its category.
#[derive(Clone, Debug, PartialEq)]
pub struct TermMatch {
    pub start: usize,
    pub end: usize,
    pub term: String,
    pub category: String,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every non-overlapping vocabulary term in `text` (case-insensitive, whole
/// words, longest match first at each position), in text order.
pub fn find_terms(text: &str, vocab: &[(String, String)]) -> Vec<TermMatch> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut sorted: Vec<&(String, String)> = vocab.iter().filter(|(t, _)| !t.is_empty()).collect();
    sorted.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if i > 0 && is_word_byte(bytes[i - 1]) {
            i += 1;
            continue;
        }
        let hit = sorted.iter().find(|(t, _)| {
            let t = t.to_ascii_lowercase();
            let end = i + t.len();
            lower[i..].starts_with(&t) && (end == bytes.len() || !is_word_byte(bytes[end]))
        });
        match hit {
            Some((t, c)) => {
                out.push(TermMatch {
                    start: i,
                    end: i + t.len(),
                    term: text[i..i + t.len()].to_string(),
                    category: c.clone(),
                });
                i += t.len();
            }
            None => i += 1,
        }
    }
    out
}

/// A text with one term replaced (the hallucination of POVID / MMedPO / mDPO).
#[derive(Clone, Debug, PartialEq)]
pub struct Swap {
    pub text: String,
    pub old: String,
    pub new: String,
    pub category: String,
}

/// Replace one term of `text` by another term of the same category (findings
/// preferred, then laterality, anatomy, size), or flip a yes/no answer. The
/// term and its replacement are drawn from `rng`. `None` when the text holds
/// no term with an alternative.
pub fn swap_term(text: &str, vocab: &[(String, String)], rng: &mut impl Rng) -> Option<Swap> {
    let t = text.trim();
    let lower = t.trim_end_matches('.').to_ascii_lowercase();
    if lower == "yes" || lower == "no" {
        let new = if lower == "yes" { "No" } else { "Yes" };
        return Some(Swap {
            text: new.into(),
            old: t.into(),
            new: new.into(),
            category: "closed".into(),
        });
    }
    let found = find_terms(text, vocab);
    for cat in ["finding", "laterality", "anatomy", "size"] {
        let cands: Vec<&TermMatch> = found.iter().filter(|m| m.category == cat).collect();
        let Some(m) = cands.choose(rng) else {
            continue;
        };
        let alts: Vec<&String> = vocab
            .iter()
            .filter(|(v, c)| c == cat && !v.eq_ignore_ascii_case(&m.term))
            .map(|(v, _)| v)
            .collect();
        let Some(new) = alts.choose(rng) else {
            continue;
        };
        let mut out = String::with_capacity(text.len() + new.len());
        out.push_str(&text[..m.start]);
        out.push_str(new);
        out.push_str(&text[m.end..]);
        return Some(Swap {
            text: out,
            old: m.term.clone(),
            new: (*new).clone(),
            category: cat.into(),
        });
    }
    None
}

/// Lower-case words of a text (letters and digits).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Token F1 of `candidate` against `reference` (bag of words): the judge that
/// stands in for an LLM judge on the phantom.
pub fn token_f1(candidate: &str, reference: &str) -> f64 {
    let c = words(candidate);
    let r = words(reference);
    if c.is_empty() || r.is_empty() {
        return if c.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut left = r.clone();
    let mut hit = 0usize;
    for w in &c {
        if let Some(i) = left.iter().position(|x| x == w) {
            left.swap_remove(i);
            hit += 1;
        }
    }
    if hit == 0 {
        return 0.0;
    }
    let p = hit as f64 / c.len() as f64;
    let q = hit as f64 / r.len() as f64;
    2.0 * p * q / (p + q)
}

/// Whether two answers say the same (case, spaces and punctuation ignored).
pub fn same_answer(a: &str, b: &str) -> bool {
    words(a) == words(b)
}

/// How an image is corrupted.
#[derive(Clone, Debug)]
pub enum Corruption<'a> {
    /// Gaussian noise on every pixel (σ in 0..255 grey levels).
    Noise { sigma: f32 },
    /// Gaussian noise inside the lesion mask only.
    NoiseInMask { mask: &'a Path, sigma: f32 },
    /// A random rectangle covering about `share` of the image set to 0.
    Block { share: f32 },
    /// Every pixel set to 0 (a blank image).
    Blank,
}

/// Corrupt `src` and write the PNG to `dest` (atomically). Returns the share
/// of pixels changed.
pub fn corrupt_image(src: &Path, dest: &Path, how: &Corruption, rng: &mut impl Rng) -> Result<f64> {
    let img = image::open(src)
        .with_context(|| format!("cannot read image {}", src.display()))?
        .to_luma8();
    let (w, h) = img.dimensions();
    let mut px = img.into_raw();
    let n = px.len();
    let gauss = |rng: &mut dyn rand::RngCore| -> f32 {
        let u1: f32 = rng.random::<f32>().max(1e-7);
        let u2: f32 = rng.random::<f32>();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    };
    let mut changed = 0usize;
    match how {
        Corruption::Noise { sigma } => {
            for p in px.iter_mut() {
                *p = (*p as f32 + sigma * gauss(rng)).round().clamp(0.0, 255.0) as u8;
            }
            changed = n;
        }
        Corruption::NoiseInMask { mask, sigma } => {
            let m = crate::heatmap::mask::read_mask(mask)
                .with_context(|| format!("lesion mask {}", mask.display()))?;
            let m = resize_mask(&m.data, m.width, m.height, w as usize, h as usize);
            for (p, inside) in px.iter_mut().zip(&m) {
                if *inside {
                    *p = (*p as f32 + sigma * gauss(rng)).round().clamp(0.0, 255.0) as u8;
                    changed += 1;
                }
            }
        }
        Corruption::Block { share } => {
            let side = share.clamp(0.0, 1.0).sqrt();
            let bw = ((w as f32 * side).round() as u32).clamp(1, w);
            let bh = ((h as f32 * side).round() as u32).clamp(1, h);
            let x0 = rng.random_range(0..=w - bw);
            let y0 = rng.random_range(0..=h - bh);
            for y in y0..y0 + bh {
                for x in x0..x0 + bw {
                    px[(y * w + x) as usize] = 0;
                    changed += 1;
                }
            }
        }
        Corruption::Blank => {
            px.iter_mut().for_each(|p| *p = 0);
            changed = n;
        }
    }
    let out = image::GrayImage::from_raw(w, h, px).context("image buffer size")?;
    let mut bytes = Vec::new();
    out.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    crate::util::fsio::atomic_write(dest, &bytes)?;
    Ok(changed as f64 / n.max(1) as f64)
}

/// Nearest-neighbour resize of a boolean mask.
pub fn resize_mask(m: &[bool], w: usize, h: usize, nw: usize, nh: usize) -> Vec<bool> {
    if w == nw && h == nh {
        return m.to_vec();
    }
    let mut out = vec![false; nw * nh];
    for y in 0..nh {
        let sy = (y * h / nh.max(1)).min(h.saturating_sub(1));
        for x in 0..nw {
            let sx = (x * w / nw.max(1)).min(w.saturating_sub(1));
            out[y * nw + x] = m[sy * w + sx];
        }
    }
    out
}

/// `path` relative to `root` when it lies inside it, else `path` as it is
/// (consumers join it onto `root`; an absolute path stays absolute).
pub fn rel_to(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The path a pair file in `root` stores for `image`: relative to `root` when the image
/// lies inside it (generated images), else the image is placed under `root` first
/// (`curate::run::store_source_image`), so that a pair file never refers outside its
/// own folder, whatever the working directory (relative or absolute `--out`).
pub fn pair_image_path(root: &Path, image: &Path) -> Result<String> {
    match image.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel.to_string_lossy().into_owned()),
        _ => crate::curate::run::store_source_image(root, image, None),
    }
}

/// Where a builder writes a generated image for sample `id`.
pub fn generated_image(ctx: &BuildContext, builder: &str, id: &str, tag: &str) -> PathBuf {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    ctx.root
        .join(format!("{builder}_images"))
        .join(format!("{safe}_{tag}.png"))
}

/// A pair record with the audit fields the baselines fill.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &BuildContext,
    kind: &str,
    s: &Sample,
    chosen: &str,
    rejected: &str,
    chosen_image: &Path,
    rejected_image: &Path,
    weight: f64,
) -> Result<PairRecord> {
    Ok(PairRecord {
        id: format!("{}:{}", s.id, kind),
        kind: kind.into(),
        prompt: s.prompt(),
        chosen: chosen.into(),
        rejected: rejected.into(),
        chosen_image: pair_image_path(ctx.root, chosen_image)?,
        rejected_image: pair_image_path(ctx.root, rejected_image)?,
        weight,
        source_id: Some(s.id.clone()),
        keyword: None,
        replacement: None,
        delta: None,
        similarities: None,
        mask_share: None,
        heatmap_source: None,
        config_hash: None,
        extra: Map::new(),
    })
}

/// The sample's lesion mask when it has lesion pixels.
pub fn lesion_mask(s: &Sample) -> Option<&Path> {
    let m = s.mask.as_deref()?;
    let share = crate::heatmap::io::mask_share(m).ok()?;
    (share > 0.0).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::seed::rng_for;

    fn vocab() -> Vec<(String, String)> {
        [
            ("nodule", "finding"),
            ("pleural effusion", "finding"),
            ("effusion", "finding"),
            ("left", "laterality"),
            ("right", "laterality"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn terms_match_longest_whole_words() {
        let m = find_terms("A left Pleural effusion; no nodules.", &vocab());
        let t: Vec<&str> = m.iter().map(|m| m.term.as_str()).collect();
        assert_eq!(t, vec!["left", "Pleural effusion"]);
        assert_eq!(m[1].start, 7);
    }

    #[test]
    fn swap_replaces_one_finding_and_keeps_the_rest() {
        let mut rng = rng_for(1, "t");
        let s = swap_term("There is a nodule in the left lung.", &vocab(), &mut rng).unwrap();
        assert_eq!(s.old, "nodule");
        assert_ne!(s.new, "nodule");
        assert_eq!(s.text, format!("There is a {} in the left lung.", s.new));
        let y = swap_term("Yes", &vocab(), &mut rng).unwrap();
        assert_eq!(y.text, "No");
        assert!(swap_term("Heart size is normal.", &vocab(), &mut rng).is_none());
    }

    #[test]
    fn token_f1_values() {
        assert_eq!(token_f1("a b", "a b"), 1.0);
        assert_eq!(token_f1("c", "a b"), 0.0);
        assert!((token_f1("a c", "a b") - 0.5).abs() < 1e-12);
        assert!(same_answer("Yes.", "yes"));
    }
}
