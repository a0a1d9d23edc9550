//! Heatmaps standing in for DAug's output (paper 3.1.1): the lesion mask
//! smoothed with a Gaussian, scaled to a peak of 1, plus optional noise and
//! spurious blobs elsewhere in the lungs. Normal studies get a low-level
//! noise heatmap (never all zero, which curation treats as an error).

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::anatomy::Anatomy;
use super::raster::{gauss, Raster};

/// How the phantom's heatmaps deviate from the smoothed mask. Lengths are
/// shares of the image side, so they scale with `--size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeatmapNoise {
    /// Gaussian blur of the mask, standard deviation as a share of the side.
    pub blur: f32,
    /// Standard deviation of the additive (absolute) pixel noise, relative to the peak.
    pub noise: f32,
    /// Probability of each of up to `spurious_max` spurious blobs.
    pub spurious_prob: f32,
    pub spurious_max: usize,
    /// The largest amplitude of a spurious blob, relative to the lesion's peak (< 1).
    pub spurious_amp: f32,
}

impl Default for HeatmapNoise {
    /// Mild defaults: a 2.5% blur, 2% noise, a 30% chance of each of up to
    /// two spurious blobs of at most 35% of the peak.
    fn default() -> Self {
        HeatmapNoise {
            blur: 0.025,
            noise: 0.02,
            spurious_prob: 0.3,
            spurious_max: 2,
            spurious_amp: 0.35,
        }
    }
}

impl HeatmapNoise {
    /// No noise and no spurious blobs: the smoothed mask only.
    pub fn clean() -> Self {
        HeatmapNoise {
            noise: 0.0,
            spurious_prob: 0.0,
            ..HeatmapNoise::default()
        }
    }
}

/// A point inside the lungs (for spurious blobs), or the image centre.
fn lung_point<R: Rng + ?Sized>(rng: &mut R, anatomy: &Anatomy) -> (f32, f32) {
    for _ in 0..100 {
        let (x, y) = (rng.random::<f32>(), rng.random::<f32>());
        if anatomy.in_lungs(x, y) {
            return (x, y);
        }
    }
    (0.5, 0.5)
}

fn add_blob(data: &mut [f32], size: usize, cx: f32, cy: f32, sigma: f32, amp: f32) {
    let s = size as f32;
    for i in 0..size {
        let y = (i as f32 + 0.5) / s;
        for j in 0..size {
            let x = (j as f32 + 0.5) / s;
            let d2 = (x - cx).powi(2) + (y - cy).powi(2);
            data[i * size + j] += amp * (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }
}

/// The heatmap of a study with lesion `mask` (`None` or all false: normal),
/// `size × size`, row-major, non-negative, finite, not all zero.
pub fn make<R: Rng + ?Sized>(
    rng: &mut R,
    anatomy: &Anatomy,
    mask: Option<&[bool]>,
    size: usize,
    cfg: &HeatmapNoise,
) -> Vec<f32> {
    let s = size as f32;
    let lesion = mask.filter(|m| m.iter().any(|b| *b));
    let mut data = match lesion {
        Some(m) => {
            let r = Raster {
                width: size,
                height: size,
                data: m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
            };
            let mut d = r.gaussian_blur(cfg.blur.max(0.0) * s).data;
            let peak = d.iter().copied().fold(0.0f32, f32::max);
            if peak > 0.0 {
                for v in d.iter_mut() {
                    *v /= peak;
                }
            }
            d
        }
        None => {
            // A faint, diffuse response over the lungs.
            let mut d = vec![0.0f32; size * size];
            for _ in 0..3 {
                let (cx, cy) = lung_point(rng, anatomy);
                let sigma = 0.05 + 0.05 * rng.random::<f32>();
                add_blob(
                    &mut d,
                    size,
                    cx,
                    cy,
                    sigma,
                    0.03 + 0.07 * rng.random::<f32>(),
                );
            }
            d
        }
    };
    for _ in 0..cfg.spurious_max {
        if rng.random::<f32>() < cfg.spurious_prob {
            let (cx, cy) = lung_point(rng, anatomy);
            let sigma = 0.025 + 0.035 * rng.random::<f32>();
            let amp = cfg.spurious_amp * (0.4 + 0.6 * rng.random::<f32>());
            let amp = if lesion.is_some() { amp } else { amp * 0.3 };
            add_blob(&mut data, size, cx, cy, sigma, amp);
        }
    }
    let noise = if lesion.is_some() {
        cfg.noise
    } else {
        cfg.noise.max(0.01)
    };
    for v in data.iter_mut() {
        let n = if noise > 0.0 {
            (noise * gauss(rng)).abs()
        } else {
            0.0
        };
        // A tiny floor keeps every heatmap strictly positive somewhere.
        *v = (*v + n + 1e-4).max(0.0);
        if !v.is_finite() {
            *v = 1e-4;
        }
    }
    data
}
