//! The salient region Ω* (paper Eq. 8; `docs/design.md`, "Salient region
//! and false negatives"): the connected
//! region around the heatmap's peak above a threshold (default 0.5 × max; or
//! a top quantile), dilated by a few pixels, as a mask at image size.

use std::collections::VecDeque;

use anyhow::{bail, Result};

use super::pool::check_heatmap;
use super::resize::resize_bilinear;
use super::{Heatmap, HeatmapError, HeatmapFault, LesionMask};

/// Which pixels count as salient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Pixels `>= f × max` (f in `(0, 1]`).
    FractionOfMax(f32),
    /// The top share `q` (in `(0, 1]`) of the pixels: `>=` the value of the
    /// `ceil(q·n)`-th largest pixel.
    TopQuantile(f32),
}

/// Pixel neighbourhood for connected components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connectivity {
    Four,
    Eight,
}

/// Options for Ω*.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionOptions {
    pub threshold: Threshold,
    pub connectivity: Connectivity,
    /// Dilation radius in image pixels (a Euclidean disk).
    pub dilate_px: usize,
}

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            threshold: Threshold::FractionOfMax(0.5),
            connectivity: Connectivity::Eight,
            dilate_px: 2,
        }
    }
}

/// Ω* of heatmap `h` at image size `image` (height, width); errors name `id`.
pub fn salient_region(
    h: &Heatmap,
    id: &str,
    image: (usize, usize),
    opts: &RegionOptions,
) -> Result<LesionMask> {
    check_heatmap(h, id)?;
    let (ih, iw) = image;
    if ih == 0 || iw == 0 {
        bail!("sample {id}: empty image size {ih}x{iw}");
    }
    let r = resize_bilinear(h, ih, iw);
    let (peak, max) =
        r.data
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0usize, f32::MIN),
                |(bi, bv), (i, v)| if v > bv { (i, v) } else { (bi, bv) },
            );
    if max <= 0.0 {
        return Err(HeatmapError::err(
            HeatmapFault::AllZero,
            format!("sample {id}: heatmap is all zero at image size"),
        ));
    }
    let t = match opts.threshold {
        Threshold::FractionOfMax(f) => {
            if !(f > 0.0 && f <= 1.0) {
                bail!("salient-region threshold fraction {f} is not in (0, 1]");
            }
            f * max
        }
        Threshold::TopQuantile(q) => {
            if !(q > 0.0 && q <= 1.0) {
                bail!("salient-region top quantile {q} is not in (0, 1]");
            }
            let mut v = r.data.clone();
            v.sort_by(|a, b| b.total_cmp(a));
            let k = ((q as f64 * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[k - 1]
        }
    };
    // Connected component of the peak among pixels >= t.
    let mut comp = vec![false; ih * iw];
    let mut queue = VecDeque::from([peak]);
    comp[peak] = true;
    let nbrs: &[(isize, isize)] = match opts.connectivity {
        Connectivity::Four => &[(-1, 0), (1, 0), (0, -1), (0, 1)],
        Connectivity::Eight => &[
            (-1, -1),
            (-1, 0),
            (-1, 1),
            (0, -1),
            (0, 1),
            (1, -1),
            (1, 0),
            (1, 1),
        ],
    };
    while let Some(p) = queue.pop_front() {
        let (y, x) = ((p / iw) as isize, (p % iw) as isize);
        for (dy, dx) in nbrs {
            let (ny, nx) = (y + dy, x + dx);
            if ny < 0 || nx < 0 || ny >= ih as isize || nx >= iw as isize {
                continue;
            }
            let q = ny as usize * iw + nx as usize;
            if !comp[q] && r.data[q] >= t {
                comp[q] = true;
                queue.push_back(q);
            }
        }
    }
    Ok(LesionMask {
        height: ih,
        width: iw,
        data: dilate(&comp, ih, iw, opts.dilate_px),
    })
}

/// Binary dilation by a Euclidean disk of radius `r` pixels.
pub fn dilate(mask: &[bool], h: usize, w: usize, r: usize) -> Vec<bool> {
    if r == 0 {
        return mask.to_vec();
    }
    let ri = r as isize;
    let offsets: Vec<(isize, isize)> = (-ri..=ri)
        .flat_map(|dy| (-ri..=ri).map(move |dx| (dy, dx)))
        .filter(|(dy, dx)| dy * dy + dx * dx <= ri * ri)
        .collect();
    let mut out = vec![false; h * w];
    for (p, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (y, x) = ((p / w) as isize, (p % w) as isize);
        for (dy, dx) in &offsets {
            let (ny, nx) = (y + dy, x + dx);
            if ny >= 0 && nx >= 0 && ny < h as isize && nx < w as isize {
                out[ny as usize * w + nx as usize] = true;
            }
        }
    }
    out
}
