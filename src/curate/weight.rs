//! The heatmap alignment score (paper 3.2, Eq. 11):
//! w = 1 + λ · max_{k_j ∈ Δ(y+, y−)} cos(v, f_t(k_j)), with v the
//! heatmap-weighted embedding of x+ (Eq. 3) and Δ the differential keywords
//! of the pair (`docs/design.md`, "Differential keywords": mis {k*, k̃}; fn_neutral {k*, "no
//! abnormalities"}; fn_delete {k*}; fp {k*}).

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::keyword::text_cosines;
use crate::encode::DualEncoder;

/// The default λ of Eq. 11 (λ = 0 gives plain DPO weights of 1).
pub const DEFAULT_LAMBDA: f64 = 1.0;

/// Eq. 11 from the cosines of Δ's keywords: `1 + λ · max(cos)`.
/// Errors when Δ is empty or a cosine is not finite.
pub fn weight_from_cosines(lambda: f64, cosines: &[f64]) -> Result<f64> {
    if !lambda.is_finite() || lambda < 0.0 {
        bail!("λ = {lambda}: Eq. 11 needs a finite λ >= 0");
    }
    let Some(max) = cosines.iter().copied().reduce(f64::max) else {
        bail!("the differential keyword set Δ is empty");
    };
    if !cosines.iter().all(|c| c.is_finite()) {
        bail!("a cosine of Δ is not finite: {cosines:?}");
    }
    if lambda == 0.0 {
        return Ok(1.0);
    }
    let w = 1.0 + lambda * max;
    // DPO weights are never negative: a negative w would reward the rejected answer. With
    // cosines in [-1, 1], any λ <= 1 is safe; a larger λ fails here on the pair it breaks.
    if w < 0.0 {
        bail!(
            "w = 1 + λ·max cos = 1 + {lambda}·{max:.4} = {w:.4} < 0: λ = {lambda} is too large \
             for this pair (Eq. 11 weights must be >= 0; λ <= {:.4} keeps it)",
            1.0 / -max
        );
    }
    Ok(w)
}

/// Eq. 11 end to end: the cosines of v with each keyword of Δ, and w.
pub fn pair_weight(
    enc: &DualEncoder,
    v: &Tensor,
    delta: &[String],
    lambda: f64,
) -> Result<(f64, Vec<f64>)> {
    let texts: Vec<&str> = delta.iter().map(String::as_str).collect();
    let cos = text_cosines(enc, v, &texts)?;
    Ok((weight_from_cosines(lambda, &cos)?, cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq11_weights() {
        assert_eq!(weight_from_cosines(1.0, &[0.2, 0.5]).unwrap(), 1.5);
        assert_eq!(weight_from_cosines(2.0, &[-0.25]).unwrap(), 0.5);
        assert_eq!(weight_from_cosines(0.0, &[0.9, -0.3]).unwrap(), 1.0);
        assert!(weight_from_cosines(1.0, &[]).is_err());
        assert!(weight_from_cosines(1.0, &[f64::NAN]).is_err());
        assert!(weight_from_cosines(f64::INFINITY, &[0.1]).is_err());
        assert!(weight_from_cosines(-1.0, &[0.1]).is_err());
        let e = weight_from_cosines(5.0, &[-0.5]).unwrap_err().to_string();
        assert!(e.contains("< 0") && e.contains("λ <= 2.0000"), "{e}");
    }
}
