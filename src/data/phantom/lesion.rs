//! Findings: where each kind goes, its exact mask, and how it changes the
//! image. Every lesion is drawn on exactly its mask's pixels (the detector
//! blur of [`Anatomy::finish`] then softens its edge), so the mask is the
//! ground truth of what is visible.

use rand::Rng;

use super::anatomy::{Anatomy, Ellipse, Lung};
use super::raster::{Raster, ValueNoise};
use super::{FindingKind, Lobe, Side};

/// The geometry of one finding, parameterised by a scale that the area fit
/// adjusts.
#[derive(Clone, Debug)]
enum Shape {
    /// A round nodule or mass of radius `r`.
    Disc {
        side: Side,
        cx: f32,
        cy: f32,
        r: f32,
    },
    /// An irregular cluster of discs (consolidation), scaled by `scale`.
    Blobs {
        side: Side,
        cx: f32,
        cy: f32,
        parts: Vec<(f32, f32, f32)>,
        scale: f32,
    },
    /// Fluid filling the lung base up to `height` above the costophrenic
    /// angle, with a meniscus rising laterally.
    Effusion { side: Side, height: f32 },
    /// The lung collapsed by `shrink` towards `(ax, ay)`; the rim of free
    /// air between it and the chest wall is the lesion.
    Pneumothorax {
        side: Side,
        shrink: f32,
        ax: f32,
        ay: f32,
    },
    /// The enlarged heart.
    Heart { heart: Ellipse },
    /// Lobar collapse: a dense triangle from the hilum `(hx, hy)` widening
    /// down to the diaphragm, reaching `reach` laterally at the base.
    Wedge {
        side: Side,
        hx: f32,
        hy: f32,
        reach: f32,
    },
    /// A plate-like band (rotated ellipse of half-length `a`, half-width
    /// `a * aspect`), atelectasis.
    Plate {
        side: Side,
        cx: f32,
        cy: f32,
        a: f32,
        aspect: f32,
        angle: f32,
    },
}

impl Shape {
    fn contains(
        &self,
        anatomy: &Anatomy,
        noise: &ValueNoise,
        fine: &ValueNoise,
        x: f32,
        y: f32,
    ) -> bool {
        match self {
            Shape::Disc { side, cx, cy, r } => {
                (x - cx).powi(2) + (y - cy).powi(2) <= r * r && anatomy.lung(*side).contains(x, y)
            }
            Shape::Blobs {
                side,
                cx,
                cy,
                parts,
                scale,
            } => {
                let wobble = 1.0 + 0.3 * noise.at(x, y) + 0.3 * fine.at(x, y);
                parts.iter().any(|(dx, dy, r)| {
                    let (px, py) = (cx + dx * scale, cy + dy * scale);
                    let rr = r * scale * wobble;
                    (x - px).powi(2) + (y - py).powi(2) <= rr * rr
                }) && anatomy.lung(*side).contains(x, y)
            }
            Shape::Effusion { side, height } => {
                let lung = anatomy.lung(*side);
                lung.contains(x, y) && y >= effusion_level(lung, *height, x)
            }
            Shape::Pneumothorax {
                side,
                shrink,
                ax,
                ay,
            } => {
                let lung = anatomy.lung(*side);
                let k = (1.0 - shrink).max(1e-3);
                lung.contains(x, y) && !lung.contains(ax + (x - ax) / k, ay + (y - ay) / k)
            }
            Shape::Heart { heart } => heart.contains(x, y),
            Shape::Wedge {
                side,
                hx,
                hy,
                reach,
            } => {
                let lung = anatomy.lung(*side);
                let outward = match side {
                    Side::Right => -1.0,
                    Side::Left => 1.0,
                };
                let down = ((y - hy) / (lung.base - hy).max(1e-3)).max(0.0);
                let off = (x - hx) * outward;
                y > *hy && off < reach * down && off > -0.8 * reach * down && lung.contains(x, y)
            }
            Shape::Plate {
                side,
                cx,
                cy,
                a,
                aspect,
                angle,
            } => {
                let (c, s) = (angle.cos(), angle.sin());
                let (dx, dy) = (x - cx, y - cy);
                let u = dx * c + dy * s;
                let v = -dx * s + dy * c;
                let b = a * aspect;
                (u / a).powi(2) + (v / b).powi(2) <= 1.0 && anatomy.lung(*side).contains(x, y)
            }
        }
    }

    fn with_scale(&self, s: f32) -> Shape {
        let mut out = self.clone();
        match &mut out {
            Shape::Disc { r, .. } => *r = s,
            Shape::Blobs { scale, .. } => *scale = s,
            Shape::Effusion { height, .. } => *height = s,
            Shape::Pneumothorax { shrink, .. } => *shrink = s,
            Shape::Heart { .. } => {}
            Shape::Wedge { reach, .. } => *reach = s,
            Shape::Plate { a, .. } => *a = s,
        }
        out
    }
}

/// The y above which the lung is fluid-filled at column `x`: the fluid's
/// height above the costophrenic angle, rising towards the chest wall.
fn effusion_level(lung: &Lung, height: f32, x: f32) -> f32 {
    let outward = match lung.side {
        Side::Right => -1.0,
        Side::Left => 1.0,
    };
    let lat = (((x - lung.cx) * outward / lung.rx + 1.0) / 2.0).clamp(0.0, 1.0);
    let meniscus = 0.7 * height + 0.02;
    lung.base - height - meniscus * lat * lat
}

/// One placed finding with its exact mask.
#[derive(Clone, Debug)]
pub struct Lesion {
    pub kind: FindingKind,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    /// Row-major `size × size`, `true` inside the lesion.
    pub mask: Vec<bool>,
    pub size: usize,
    /// For cardiomegaly: the heart's width relative to the study's normal heart.
    pub heart_scale: Option<f32>,
    shape: Shape,
    amplitude: f32,
    /// Coarse noise: the outline of consolidations.
    texture: ValueNoise,
    /// Fine noise: texture inside lesions.
    fine: ValueNoise,
}

/// The range of lesion area (share of the image) targeted for a finding
/// kind; `subtle` targets lie below the 5% subtle threshold.
fn target_range(kind: FindingKind, subtle: bool) -> (f64, f64) {
    use FindingKind::*;
    match (kind, subtle) {
        (Nodule, true) => (0.0025, 0.02),
        (Nodule, false) => (0.052, 0.07),
        (Consolidation, true) => (0.012, 0.042),
        (Consolidation, false) => (0.06, 0.10),
        (PleuralEffusion, true) => (0.01, 0.04),
        (PleuralEffusion, false) => (0.055, 0.09),
        (Pneumothorax, true) => (0.012, 0.04),
        (Pneumothorax, false) => (0.055, 0.09),
        (Atelectasis, true) => (0.005, 0.03),
        (Atelectasis, false) => (0.052, 0.065),
        (Cardiomegaly, _) => (0.0, 1.0),
    }
}

/// Rasterise `shape` at `size × size`.
fn rasterise(
    shape: &Shape,
    anatomy: &Anatomy,
    (noise, fine): (&ValueNoise, &ValueNoise),
    size: usize,
) -> Vec<bool> {
    let s = size as f32;
    let mut m = vec![false; size * size];
    for i in 0..size {
        let y = (i as f32 + 0.5) / s;
        for j in 0..size {
            let x = (j as f32 + 0.5) / s;
            m[i * size + j] = shape.contains(anatomy, noise, fine, x, y);
        }
    }
    m
}

fn share(mask: &[bool]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    mask.iter().filter(|b| **b).count() as f64 / mask.len() as f64
}

/// Bisection on the shape's scale in `lo..=hi` for a mask of area share
/// `target` (the area grows with the scale); returns the closest.
fn fit_area(
    shape: &Shape,
    anatomy: &Anatomy,
    noise: (&ValueNoise, &ValueNoise),
    size: usize,
    target: f64,
    (mut lo, mut hi): (f32, f32),
) -> (Shape, Vec<bool>) {
    let mut best: Option<(f64, Shape, Vec<bool>)> = None;
    for _ in 0..16 {
        let mid = 0.5 * (lo + hi);
        let cand = shape.with_scale(mid);
        let mask = rasterise(&cand, anatomy, noise, size);
        let a = share(&mask);
        let err = (a - target).abs();
        if best.as_ref().is_none_or(|(e, _, _)| err < *e) {
            best = Some((err, cand, mask));
        }
        if a < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    match best {
        Some((_, s, m)) => (s, m),
        None => {
            let m = rasterise(shape, anatomy, noise, size);
            (shape.clone(), m)
        }
    }
}

/// A point inside the `lobe` band of the lung on `side`, away from the
/// pleura and the heart.
fn point_in_lobe<R: Rng + ?Sized>(
    rng: &mut R,
    anatomy: &Anatomy,
    side: Side,
    lobe: Lobe,
    edge: f32,
) -> (f32, f32) {
    let lung = anatomy.lung(side);
    let (t0, t1) = lung.lobe_band(lobe).unwrap_or((0.0, 1.0));
    let heart = Ellipse {
        rx: anatomy.heart.rx * 1.12,
        ry: anatomy.heart.ry * 1.12,
        ..anatomy.heart
    };
    let y_of = |t: f32| lung.top() + t * (lung.base - lung.top());
    for _ in 0..400 {
        let t = t0 + (t1 - t0) * (0.1 + 0.8 * rng.random::<f32>());
        let y = y_of(t);
        let x = lung.cx + lung.rx * (rng.random::<f32>() * 2.0 - 1.0);
        if lung.contains(x, y) && lung.level(x, y) < edge && !heart.contains(x, y) {
            return (x, y);
        }
    }
    // Fallback: the lung's centre line in the middle of the band, moved
    // laterally, away from the heart.
    let outward = match side {
        Side::Right => -1.0,
        Side::Left => 1.0,
    };
    (lung.cx + outward * 0.3 * lung.rx, y_of(0.5 * (t0 + t1)))
}

impl Lesion {
    /// Place a finding of `kind` in `anatomy` (cardiomegaly enlarges its
    /// heart) with an area drawn from the kind's subtle or large range.
    pub fn place<R: Rng + ?Sized>(
        rng: &mut R,
        anatomy: &mut Anatomy,
        kind: FindingKind,
        subtle: bool,
        size: usize,
    ) -> Lesion {
        let texture = ValueNoise::new(rng, 8);
        let fine = ValueNoise::new(rng, 24);
        let (lo, hi) = target_range(kind, subtle);
        let target = lo + (hi - lo) * rng.random::<f64>();
        let side = if rng.random::<bool>() {
            Side::Right
        } else {
            Side::Left
        };
        let pick_lobe = |rng: &mut R, side: Side| -> Lobe {
            let lobes = anatomy.lung(side).lobes();
            lobes[rng.random_range(0..lobes.len())]
        };
        let amplitude = 0.30 + 0.10 * rng.random::<f32>();
        let mut heart_scale = None;
        let (shape, range) = match kind {
            FindingKind::Nodule => {
                let lobe = pick_lobe(rng, side);
                let edge = if subtle { 0.7 } else { 0.35 };
                let (cx, cy) = point_in_lobe(rng, anatomy, side, lobe, edge);
                (
                    Shape::Disc {
                        side,
                        cx,
                        cy,
                        r: 0.02,
                    },
                    (0.003, 0.3),
                )
            }
            FindingKind::Consolidation => {
                let lobe = pick_lobe(rng, side);
                let edge = if subtle { 0.6 } else { 0.3 };
                let (cx, cy) = point_in_lobe(rng, anatomy, side, lobe, edge);
                let n = 3 + rng.random_range(0..4);
                let parts = (0..n)
                    .map(|k| {
                        if k == 0 {
                            (0.0, 0.0, 1.0)
                        } else {
                            let a = rng.random::<f32>() * std::f32::consts::TAU;
                            let d = 0.6 + 0.6 * rng.random::<f32>();
                            (
                                a.cos() * d,
                                a.sin() * d * 0.7,
                                0.5 + 0.4 * rng.random::<f32>(),
                            )
                        }
                    })
                    .collect();
                (
                    Shape::Blobs {
                        side,
                        cx,
                        cy,
                        parts,
                        scale: 0.05,
                    },
                    (0.005, 0.35),
                )
            }
            FindingKind::PleuralEffusion => (Shape::Effusion { side, height: 0.05 }, (0.0, 0.7)),
            FindingKind::Pneumothorax => {
                let lung = anatomy.lung(side);
                let medial = match side {
                    Side::Right => 1.0,
                    Side::Left => -1.0,
                };
                // The lung collapses towards the hilum and the mediastinum:
                // the free air lies apically and laterally.
                let ax = lung.cx + medial * lung.rx * (0.75 + 0.15 * rng.random::<f32>());
                let ay = lung.base - 0.01 * rng.random::<f32>();
                (
                    Shape::Pneumothorax {
                        side,
                        shrink: 0.1,
                        ax,
                        ay,
                    },
                    (0.0, 0.85),
                )
            }
            FindingKind::Cardiomegaly => {
                let sx = 1.35 + 0.25 * rng.random::<f32>();
                let sy = 1.1 + 0.12 * rng.random::<f32>();
                let h = anatomy.heart;
                anatomy.heart = Ellipse {
                    cx: h.cx + 0.25 * (sx - 1.0) * h.rx,
                    cy: h.cy - 0.3 * (sy - 1.0) * h.ry,
                    rx: h.rx * sx,
                    ry: h.ry * sy,
                };
                heart_scale = Some(sx);
                (
                    Shape::Heart {
                        heart: anatomy.heart,
                    },
                    (1.0, 1.0),
                )
            }
            FindingKind::Atelectasis if !subtle => {
                // Lobar (lower lobe) collapse.
                let (hx, hy) = anatomy.lung(side).hilum();
                (
                    Shape::Wedge {
                        side,
                        hx,
                        hy: hy - 0.1,
                        reach: 0.1,
                    },
                    (0.0, 1.2),
                )
            }
            FindingKind::Atelectasis => {
                // Plate-like atelectasis favours the lower zones.
                let lobe = if rng.random::<f32>() < 0.8 {
                    Lobe::Lower
                } else {
                    pick_lobe(rng, side)
                };
                let (cx, cy) = point_in_lobe(rng, anatomy, side, lobe, 0.6);
                let aspect = 0.18 + 0.12 * rng.random::<f32>();
                let angle = (rng.random::<f32>() * 2.0 - 1.0) * 0.35;
                (
                    Shape::Plate {
                        side,
                        cx,
                        cy,
                        a: 0.1,
                        aspect,
                        angle,
                    },
                    (0.005, 0.45),
                )
            }
        };
        let (mut shape, mut mask) = if kind == FindingKind::Cardiomegaly {
            let m = rasterise(&shape, anatomy, (&texture, &fine), size);
            (shape, m)
        } else {
            fit_area(&shape, anatomy, (&texture, &fine), size, target, range)
        };
        // A subtle target must stay subtle, a lesion never empty.
        if subtle && kind != FindingKind::Cardiomegaly {
            let mut tries = 0;
            while share(&mask) >= 0.045 && tries < 20 {
                let s = scale_of(&shape) * 0.85;
                shape = shape.with_scale(s);
                mask = rasterise(&shape, anatomy, (&texture, &fine), size);
                tries += 1;
            }
        }
        if !mask.iter().any(|b| *b) {
            if let Some((x, y)) = anchor_point(&shape, anatomy) {
                let (i, j) = Anatomy::to_pixel(size, x, y);
                if let Some(m) = mask.get_mut(i * size + j) {
                    *m = true;
                }
            }
        }
        let (side, lobe) = match &shape {
            Shape::Disc { side, cy, .. }
            | Shape::Blobs { side, cy, .. }
            | Shape::Plate { side, cy, .. } => (Some(*side), Some(anatomy.lobe_at(*side, *cy))),
            Shape::Wedge { side, .. } => (Some(*side), Some(Lobe::Lower)),
            Shape::Effusion { side, .. } | Shape::Pneumothorax { side, .. } => (Some(*side), None),
            Shape::Heart { .. } => (None, None),
        };
        Lesion {
            kind,
            side,
            lobe,
            mask,
            size,
            heart_scale,
            shape,
            amplitude,
            texture,
            fine,
        }
    }

    /// The lesion's share of the image area.
    pub fn area_share(&self) -> f64 {
        share(&self.mask)
    }

    /// Draw the finding on the lung raster (before the heart, bones and
    /// noise are added). Cardiomegaly is drawn by the enlarged heart itself.
    pub fn draw(&self, r: &mut Raster, anatomy: &Anatomy) {
        let size = self.size;
        if r.width != size || r.height != size {
            return;
        }
        let s = size as f32;
        let at = |i: usize, j: usize| ((j as f32 + 0.5) / s, (i as f32 + 0.5) / s);
        for i in 0..size {
            for j in 0..size {
                let idx = i * size + j;
                let (x, y) = at(i, j);
                let inside = self.mask[idx];
                match &self.shape {
                    Shape::Disc { cx, cy, r: rad, .. } if inside => {
                        let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / rad.max(1e-6);
                        let ball = (1.0 - d.min(1.0).powi(2)).sqrt();
                        r.data[idx] += self.amplitude * (0.6 + 0.4 * ball);
                    }
                    Shape::Blobs { .. } if inside => {
                        // Patchy airspace opacity, unlike a nodule's solid ball.
                        let n = self.fine.at(1.0 - y, x);
                        r.data[idx] += self.amplitude * (0.7 + 0.35 * n);
                    }
                    Shape::Effusion { side, height } if inside => {
                        // Dense fluid, fading at its upper edge.
                        let lung = anatomy.lung(*side);
                        let depth = y - effusion_level(lung, *height, x);
                        let a = 0.55 + 0.4 * (depth / 0.03).clamp(0.0, 1.0);
                        let v = r.data[idx];
                        r.data[idx] = v * (1.0 - a) + a * (0.58 + 0.02 * self.fine.at(x, y));
                    }
                    Shape::Pneumothorax { .. } => {
                        if inside {
                            r.data[idx] = 0.05 + 0.01 * self.fine.at(x, y);
                        } else if anatomy.in_lungs(x, y) && self.touches_mask(i, j) {
                            // The visceral pleural line of the collapsed lung.
                            r.data[idx] += 0.16;
                        }
                    }
                    Shape::Wedge { .. } if inside => {
                        r.data[idx] += (self.amplitude + 0.08) * (0.9 + 0.1 * self.fine.at(x, y));
                    }
                    Shape::Plate { .. } if inside => {
                        r.data[idx] += self.amplitude * (0.85 + 0.15 * self.texture.at(x, y));
                    }
                    _ => {}
                }
            }
        }
    }

    fn touches_mask(&self, i: usize, j: usize) -> bool {
        let size = self.size;
        let get = |ii: usize, jj: usize| self.mask.get(ii * size + jj).copied().unwrap_or(false);
        (i > 0 && get(i - 1, j))
            || (i + 1 < size && get(i + 1, j))
            || (j > 0 && get(i, j - 1))
            || (j + 1 < size && get(i, j + 1))
    }

    /// `[x_min, y_min, x_max, y_max]` of the mask in pixels (inclusive).
    pub fn bbox(&self) -> Option<[usize; 4]> {
        let mut b: Option<[usize; 4]> = None;
        for (idx, _) in self.mask.iter().enumerate().filter(|(_, m)| **m) {
            let (y, x) = (idx / self.size, idx % self.size);
            b = Some(match b {
                None => [x, y, x, y],
                Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
            });
        }
        b
    }
}

fn scale_of(shape: &Shape) -> f32 {
    match shape {
        Shape::Disc { r, .. } => *r,
        Shape::Blobs { scale, .. } => *scale,
        Shape::Effusion { height, .. } => *height,
        Shape::Pneumothorax { shrink, .. } => *shrink,
        Shape::Heart { .. } => 1.0,
        Shape::Wedge { reach, .. } => *reach,
        Shape::Plate { a, .. } => *a,
    }
}

/// A point that belongs to the lesion at any scale, for the never-empty guard.
fn anchor_point(shape: &Shape, anatomy: &Anatomy) -> Option<(f32, f32)> {
    match shape {
        Shape::Disc { cx, cy, .. } | Shape::Blobs { cx, cy, .. } | Shape::Plate { cx, cy, .. } => {
            Some((*cx, *cy))
        }
        Shape::Effusion { side, .. } => {
            let l = anatomy.lung(*side);
            let outward = match side {
                Side::Right => -1.0,
                Side::Left => 1.0,
            };
            Some((l.cx + outward * 0.6 * l.rx, l.base - 0.01))
        }
        Shape::Pneumothorax { side, .. } => {
            let l = anatomy.lung(*side);
            Some((l.cx, l.top() + 0.01))
        }
        Shape::Heart { heart } => Some((heart.cx, heart.cy)),
        Shape::Wedge { side, hx, .. } => {
            let l = anatomy.lung(*side);
            Some((*hx, l.base - 0.02))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::seed::rng_for;

    #[test]
    fn every_kind_hits_its_target_range() {
        for (k, kind) in FindingKind::ALL.iter().enumerate() {
            for subtle in [true, false] {
                if *kind == FindingKind::Cardiomegaly && subtle {
                    continue;
                }
                for rep in 0..6 {
                    let mut rng = rng_for(k as u64 * 100 + rep, "lesion-test");
                    let mut a = Anatomy::sample(&mut rng);
                    let l = Lesion::place(&mut rng, &mut a, *kind, subtle, 128);
                    let area = l.area_share();
                    assert!(area > 0.0, "{kind:?} empty");
                    if subtle {
                        assert!(area < 0.05, "{kind:?} subtle target gave {area}");
                    } else {
                        assert!(area >= 0.045, "{kind:?} large target gave {area}");
                    }
                    assert_eq!(l.side.is_some(), kind.has_side());
                    assert_eq!(l.lobe.is_some(), kind.has_lobe());
                    let b = l.bbox().unwrap();
                    assert!(b[0] <= b[2] && b[1] <= b[3]);
                }
            }
        }
    }
}
