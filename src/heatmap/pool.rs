//! Heatmap to patches (paper Eq. 2) and the heatmap-weighted image embedding
//! (Eq. 3), as `docs/design.md`, "Heatmap to patches" fixes them: resize the heatmap to the
//! image tower's input size (bilinear), H(p_i) = mean of the heatmap over
//! patch i, H̃ = H / Σ H.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::resize::resize_bilinear;
use super::{Heatmap, HeatmapError, HeatmapFault};

/// Reject heatmaps that are empty, wrongly sized, negative, non-finite or all
/// zero, naming the sample `id`.
pub fn check_heatmap(h: &Heatmap, id: &str) -> Result<()> {
    if h.height == 0 || h.width == 0 || h.data.len() != h.height * h.width {
        return Err(HeatmapError::err(
            HeatmapFault::ShapeMismatch,
            format!(
                "sample {id}: heatmap has shape {}x{} but {} values",
                h.height,
                h.width,
                h.data.len()
            ),
        ));
    }
    if let Some((i, v)) = h.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!(
            "sample {id}: heatmap value at row {}, column {} is not finite ({v})",
            i / h.width,
            i % h.width
        );
    }
    if let Some((i, v)) = h.data.iter().enumerate().find(|(_, v)| **v < 0.0) {
        bail!(
            "sample {id}: heatmap value at row {}, column {} is negative ({v})",
            i / h.width,
            i % h.width
        );
    }
    if h.data.iter().all(|v| *v == 0.0) {
        return Err(HeatmapError::err(
            HeatmapFault::AllZero,
            format!("sample {id}: heatmap is all zero (no salient region to weight patches by)"),
        ));
    }
    Ok(())
}

/// Eq. 2: the normalised patch weights H̃(p_i), row-major over a
/// `grid.0 × grid.1` patch grid of an image of `image.0 × image.1` pixels
/// (each a multiple of the grid). They sum to 1.
pub fn patch_weights(
    h: &Heatmap,
    id: &str,
    image: (usize, usize),
    grid: (usize, usize),
) -> Result<Vec<f32>> {
    check_heatmap(h, id)?;
    let (ih, iw) = image;
    let (gh, gw) = grid;
    if gh == 0 || gw == 0 || !ih.is_multiple_of(gh) || !iw.is_multiple_of(gw) {
        bail!("sample {id}: image {ih}x{iw} does not split into a {gh}x{gw} patch grid");
    }
    let r = resize_bilinear(h, ih, iw);
    let (ph, pw) = (ih / gh, iw / gw);
    let mut w = vec![0f64; gh * gw];
    for y in 0..ih {
        for x in 0..iw {
            w[(y / ph) * gw + x / pw] += f64::from(r.data[y * iw + x]);
        }
    }
    let area = (ph * pw) as f64;
    for v in &mut w {
        *v /= area;
    }
    let total: f64 = w.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(HeatmapError::err(
            HeatmapFault::AllZero,
            format!("sample {id}: heatmap pools to zero over the patch grid"),
        ));
    }
    Ok(w.into_iter().map(|v| (v / total) as f32).collect())
}

/// Eq. 3: v = Σ_i H̃(p_i) f_v(p_i) for weights `[N]` and patch embeddings `[N, D]`.
pub fn weighted_embedding(weights: &[f32], patches: &Tensor) -> Result<Tensor> {
    let (n, _) = patches.dims2()?;
    if weights.len() != n {
        bail!("{} patch weights for {n} patch embeddings", weights.len());
    }
    let w = Tensor::from_slice(weights, (1, n), patches.device())?.to_dtype(patches.dtype())?;
    Ok(w.matmul(patches)?.squeeze(0)?)
}
