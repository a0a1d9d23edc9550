//! Heatmap-guided keyword extraction (paper 3.1.1, Eq. 3-6): the
//! heatmap-weighted image embedding v (Eq. 3, from `encode::heatmap_embedding`), the
//! chunk embeddings u_j = f_t(t_j) (Eq. 4), their cosines s_j (Eq. 5) and
//! k* = argmax_j s_j (Eq. 6).

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::chunk::Chunk;
use crate::encode::heatmap_embedding;
use crate::encode::DualEncoder;
use crate::heatmap::Heatmap;

/// k* and what it was chosen from.
#[derive(Clone, Debug)]
pub struct Keyword {
    /// Index of k* in the chunks.
    pub best: usize,
    /// s_j for every chunk (Eq. 5), in chunk order.
    pub similarities: Vec<f64>,
    /// The heatmap-weighted image embedding v `[D]` (Eq. 3).
    pub v: Tensor,
}

/// Eq. 5: cos(v, f_t(t)) for each text, with `v` of shape `[D]`.
pub fn text_cosines(enc: &DualEncoder, v: &Tensor, texts: &[&str]) -> Result<Vec<f64>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let u = enc.embed_texts(texts)?;
    let vb = v.unsqueeze(0)?.broadcast_as(u.shape())?;
    let s = crate::encode::cosine(&u, &vb)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    Ok(s)
}

/// Eq. 6: the first index of the largest finite value.
pub fn argmax(s: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, v) in s.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|b| *v > s[b]) {
            best = Some(i);
        }
    }
    best
}

/// Eq. 3-6 for one sample: v from the image `[3, S, S]` (or `[1, 3, S, S]`)
/// and heatmap `h`, then k* among `chunks`. Errors name `id`.
pub fn select_keyword(
    enc: &DualEncoder,
    image: &Tensor,
    h: &Heatmap,
    id: &str,
    chunks: &[Chunk],
) -> Result<Keyword> {
    if chunks.is_empty() {
        bail!("sample {id}: the answer has no chunk to choose k* from");
    }
    let v = heatmap_embedding(enc, image, h, id)?;
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    let similarities = text_cosines(enc, &v, &texts)?;
    let Some(best) = argmax(&similarities) else {
        bail!("sample {id}: no chunk has a finite similarity to the image");
    };
    Ok(Keyword {
        best,
        similarities,
        v,
    })
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_largest_finite() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, -1.0]), Some(1));
        assert_eq!(argmax(&[f64::NAN, -0.2]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
