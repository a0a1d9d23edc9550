//! The schematic chest: body outline, two lungs with vascular markings,
//! mediastinum, heart shadow, clavicles, posterior ribs, spine, and quantum
//! noise. Coordinates are normalised to `0..=1` (x to the right of the image,
//! y down). Radiological convention: the patient's right lung is on the
//! image's left.

use rand::Rng;

use super::raster::{gauss, segment_distance, Raster, ValueNoise};
use super::{Lobe, Side};

/// Densities (display brightness in `0..=1`, brighter is denser).
const AIR: f32 = 0.03;
const SOFT_TISSUE: f32 = 0.50;
const LUNG: f32 = 0.16;
const MEDIASTINUM: f32 = 0.64;
const HEART: f32 = 0.70;
const ABDOMEN: f32 = 0.66;

/// An axis-aligned ellipse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ellipse {
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
}

impl Ellipse {
    /// `((x-cx)/rx)² + ((y-cy)/ry)²`: below 1 inside.
    pub fn level(&self, x: f32, y: f32) -> f32 {
        ((x - self.cx) / self.rx).powi(2) + ((y - self.cy) / self.ry).powi(2)
    }
    pub fn contains(&self, x: f32, y: f32) -> bool {
        self.level(x, y) <= 1.0
    }
}

/// One lung: an egg-shaped ellipse (narrow apex) cut below by the
/// diaphragm's dome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lung {
    pub side: Side,
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
    /// y of the costophrenic angle (the lateral, lowest point of the base).
    pub base: f32,
    /// How far the dome rises above `base` at its peak.
    pub dome: f32,
}

impl Lung {
    pub fn top(&self) -> f32 {
        self.cy - self.ry
    }

    /// The diaphragm's height below this lung at `x`.
    pub fn diaphragm_at(&self, x: f32) -> f32 {
        // The dome peaks a little medial of the lung's centre.
        let medial = match self.side {
            Side::Right => 1.0,
            Side::Left => -1.0,
        };
        let peak = self.cx + medial * 0.25 * self.rx;
        let u = ((x - peak) / (1.2 * self.rx)).clamp(-1.0, 1.0);
        self.base - self.dome * (1.0 - u * u)
    }

    /// The lung's half-width factor at height `y` (narrow apex).
    fn width_factor(&self, y: f32) -> f32 {
        let t = ((y - self.top()) / (2.0 * self.ry)).clamp(0.0, 1.0);
        0.55 + 0.45 * t.sqrt()
    }

    /// The level function of the lung's outline (below 1 inside, ignoring the
    /// diaphragm).
    pub fn level(&self, x: f32, y: f32) -> f32 {
        let rx = self.rx * self.width_factor(y);
        let dy = ((y - self.cy) / self.ry).abs();
        // Round apex, boxy base: the lateral wall runs down to a sharp
        // costophrenic angle.
        let vy = if y < self.cy { dy * dy } else { dy.powi(6) };
        ((x - self.cx) / rx).powi(2) + vy
    }

    pub fn contains(&self, x: f32, y: f32) -> bool {
        y <= self.diaphragm_at(x) && self.level(x, y) <= 1.0
    }

    /// Relative height `0` (apex) to `1` (costophrenic angle).
    pub fn rel_height(&self, y: f32) -> f32 {
        (y - self.top()) / (self.base - self.top())
    }

    /// The bands of relative height that make up each lobe in this
    /// schematic (the real fissures are oblique; here they are horizontal).
    /// The left lung has no middle lobe.
    pub fn lobe_band(&self, lobe: Lobe) -> Option<(f32, f32)> {
        match (self.side, lobe) {
            (Side::Right, Lobe::Upper) => Some((0.0, 0.40)),
            (Side::Right, Lobe::Middle) => Some((0.40, 0.64)),
            (Side::Right, Lobe::Lower) => Some((0.64, 1.0)),
            (Side::Left, Lobe::Upper) => Some((0.0, 0.52)),
            (Side::Left, Lobe::Middle) => None,
            (Side::Left, Lobe::Lower) => Some((0.52, 1.0)),
        }
    }

    /// The lobes of this lung, top to bottom.
    pub fn lobes(&self) -> &'static [Lobe] {
        match self.side {
            Side::Right => &[Lobe::Upper, Lobe::Middle, Lobe::Lower],
            Side::Left => &[Lobe::Upper, Lobe::Lower],
        }
    }

    /// The hilum: where the vessels fan out from, medial and mid-height.
    pub fn hilum(&self) -> (f32, f32) {
        let medial = match self.side {
            Side::Right => 1.0,
            Side::Left => -1.0,
        };
        (self.cx + medial * 0.62 * self.rx, self.cy + 0.05)
    }
}

/// One vessel branch: a tapering segment from the hilum outwards.
#[derive(Clone, Copy, Debug)]
struct Vessel {
    ax: f32,
    ay: f32,
    bx: f32,
    by: f32,
    width: f32,
}

/// A sampled chest: every anatomical parameter jittered per study.
#[derive(Clone, Debug)]
pub struct Anatomy {
    pub body: Ellipse,
    /// Index 0: the patient's right lung (image left); 1: the left lung.
    pub lungs: [Lung; 2],
    pub heart: Ellipse,
    pub mediastinum_half_width: f32,
    rib_top: f32,
    rib_spacing: f32,
    rib_count: usize,
    rib_width: f32,
    vessels: Vec<Vessel>,
    texture: ValueNoise,
    exposure: f32,
    quantum_noise: f32,
}

fn jitter<R: Rng + ?Sized>(rng: &mut R, centre: f32, spread: f32) -> f32 {
    centre + (rng.random::<f32>() * 2.0 - 1.0) * spread
}

impl Anatomy {
    /// Sample a normal chest.
    pub fn sample<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let shift = jitter(rng, 0.0, 0.015);
        let lung_rx = jitter(rng, 0.175, 0.01);
        let lung_ry = jitter(rng, 0.36, 0.015);
        let lung_cy = jitter(rng, 0.46, 0.012);
        let base = lung_cy + lung_ry * jitter(rng, 0.88, 0.02);
        let gap = jitter(rng, 0.215, 0.008);
        let right = Lung {
            side: Side::Right,
            cx: 0.5 + shift - gap,
            cy: lung_cy,
            rx: lung_rx,
            ry: lung_ry,
            // The right hemidiaphragm sits a little higher.
            base: base - 0.02,
            dome: jitter(rng, 0.07, 0.015),
        };
        let left = Lung {
            side: Side::Left,
            cx: 0.5 + shift + gap,
            cy: lung_cy,
            rx: lung_rx * jitter(rng, 0.97, 0.02),
            ry: lung_ry,
            base,
            dome: jitter(rng, 0.06, 0.015),
        };
        // The heart sits on the diaphragm, mostly to the patient's left.
        let heart = Ellipse {
            cx: 0.5 + shift + jitter(rng, 0.05, 0.01),
            cy: base - jitter(rng, 0.09, 0.01),
            rx: jitter(rng, 0.155, 0.01),
            ry: jitter(rng, 0.12, 0.008),
        };
        let mut vessels = Vec::new();
        for lung in [&right, &left] {
            let (hx, hy) = lung.hilum();
            let outward = match lung.side {
                Side::Right => -1.0,
                Side::Left => 1.0,
            };
            let n = 7 + rng.random_range(0..3);
            for k in 0..n {
                // Fan from up-and-out to down-and-out.
                let frac = (k as f32 + rng.random::<f32>()) / n as f32;
                let angle = -1.25 + 2.3 * frac;
                let len = jitter(rng, 0.16, 0.05);
                let (dx, dy) = (outward * angle.cos(), angle.sin());
                let (mx, my) = (hx + dx * len * 0.5, hy + dy * len * 0.5);
                vessels.push(Vessel {
                    ax: hx,
                    ay: hy,
                    bx: mx,
                    by: my,
                    width: 0.010,
                });
                // A forked, thinner continuation.
                for fork in [-0.35f32, 0.35] {
                    let a2 = angle + fork + jitter(rng, 0.0, 0.15);
                    let l2 = len * jitter(rng, 0.55, 0.15);
                    vessels.push(Vessel {
                        ax: mx,
                        ay: my,
                        bx: mx + outward * a2.cos() * l2,
                        by: my + a2.sin() * l2,
                        width: 0.006,
                    });
                }
            }
        }
        Anatomy {
            body: Ellipse {
                cx: 0.5 + shift,
                cy: 0.60,
                rx: jitter(rng, 0.455, 0.01),
                ry: 0.56,
            },
            lungs: [right, left],
            heart,
            mediastinum_half_width: jitter(rng, 0.055, 0.006),
            rib_top: jitter(rng, 0.135, 0.01),
            rib_spacing: jitter(rng, 0.066, 0.004),
            rib_count: 10,
            rib_width: jitter(rng, 0.02, 0.002),
            vessels,
            texture: ValueNoise::new(rng, 10),
            exposure: jitter(rng, 1.0, 0.06),
            quantum_noise: jitter(rng, 0.018, 0.004),
        }
    }

    /// The lung on `side`.
    pub fn lung(&self, side: Side) -> &Lung {
        match side {
            Side::Right => &self.lungs[0],
            Side::Left => &self.lungs[1],
        }
    }

    /// Whether `(x, y)` lies in the body: thorax, shoulders and neck.
    pub fn in_body(&self, x: f32, y: f32) -> bool {
        let mid = self.body.cx;
        let shoulders = Ellipse {
            cx: mid,
            cy: 0.2,
            rx: self.body.rx + 0.04,
            ry: 0.1,
        };
        self.body.contains(x, y) || shoulders.contains(x, y) || ((x - mid).abs() < 0.1 && y < 0.2)
    }

    /// Whether `(x, y)` lies in either lung.
    pub fn in_lungs(&self, x: f32, y: f32) -> bool {
        self.lungs.iter().any(|l| l.contains(x, y))
    }

    /// The soft tissue, lungs (with vascular markings and texture),
    /// before lesions, heart and bones are added.
    pub fn render_lungs(&self, size: usize) -> Raster {
        let mut r = Raster::filled(size, size, AIR);
        let s = size as f32;
        for i in 0..size {
            let y = (i as f32 + 0.5) / s;
            for j in 0..size {
                let x = (j as f32 + 0.5) / s;
                let mut v = AIR;
                // Neck and shoulders, then the thorax.
                if self.in_body(x, y) {
                    v = SOFT_TISSUE + 0.04 * self.texture.at(x * 0.7, y * 0.7);
                    // Abdomen below the diaphragm is a little denser.
                    // Below the diaphragm: liver and abdomen, as dense as
                    // the heart, so the heart's lower border merges with it.
                    let lung = if x < self.body.cx {
                        &self.lungs[0]
                    } else {
                        &self.lungs[1]
                    };
                    let dia = lung.diaphragm_at(x);
                    if y > dia {
                        v = ABDOMEN - 0.05 * (-(y - dia) / 0.02).exp()
                            + 0.03 * self.texture.at(x, y);
                    }
                    // The gastric air bubble under the left hemidiaphragm.
                    let left = &self.lungs[1];
                    let bubble = Ellipse {
                        cx: left.cx + 0.04,
                        cy: left.base + 0.035,
                        rx: 0.055,
                        ry: 0.03,
                    };
                    if bubble.contains(x, y) && y > left.diaphragm_at(x) + 0.012 {
                        v = 0.24;
                    }
                }
                for lung in &self.lungs {
                    if lung.contains(x, y) {
                        // Darker laterally and at the bases (more air), a soft
                        // rim at the pleura.
                        let edge = lung.level(x, y).clamp(0.0, 1.0);
                        let below = (lung.diaphragm_at(x) - y).max(0.0);
                        let rim = (1.0 - below / 0.02).max(0.0);
                        v = LUNG + 0.06 * edge.powi(4) + 0.05 * rim + 0.025 * self.texture.at(x, y);
                        let (hx, hy) = lung.hilum();
                        let dh = ((x - hx).powi(2) + (y - hy).powi(2)).sqrt();
                        v += 0.10 * (-dh * dh / 0.004).exp();
                    }
                }
                r.data[i * size + j] = v;
            }
        }
        self.add_vessels(&mut r);
        r
    }

    fn add_vessels(&self, r: &mut Raster) {
        let size = r.width;
        let s = size as f32;
        for vessel in &self.vessels {
            let (x0, x1) = (vessel.ax.min(vessel.bx), vessel.ax.max(vessel.bx));
            let (y0, y1) = (vessel.ay.min(vessel.by), vessel.ay.max(vessel.by));
            let pad = vessel.width * 2.0;
            let j0 = ((x0 - pad) * s).floor().max(0.0) as usize;
            let j1 = (((x1 + pad) * s).ceil() as usize).min(size);
            let i0 = ((y0 - pad) * s).floor().max(0.0) as usize;
            let i1 = (((y1 + pad) * s).ceil() as usize).min(size);
            for i in i0..i1 {
                let y = (i as f32 + 0.5) / s;
                for j in j0..j1 {
                    let x = (j as f32 + 0.5) / s;
                    if !self.in_lungs(x, y) {
                        continue;
                    }
                    let (d, t) = segment_distance(x, y, vessel.ax, vessel.ay, vessel.bx, vessel.by);
                    let w = vessel.width * (1.0 - 0.5 * t);
                    if d < w {
                        r.data[i * size + j] += 0.07 * (1.0 - d / w);
                    }
                }
            }
        }
    }

    /// The mediastinum, the heart shadow over the medial lungs, clavicles,
    /// posterior ribs and the spine; then a slight blur (the detector's
    /// spread), exposure and quantum noise. Returns the final image in
    /// `0..=1`.
    pub fn finish<R: Rng + ?Sized>(&self, mut r: Raster, rng: &mut R) -> Raster {
        let size = r.width;
        let s = size as f32;
        let mid = self.body.cx;
        let top_of_heart = self.heart.cy - self.heart.ry;
        for i in 0..size {
            let y = (i as f32 + 0.5) / s;
            for j in 0..size {
                let x = (j as f32 + 0.5) / s;
                let idx = i * size + j;
                if !self.in_body(x, y) {
                    continue;
                }
                let mut v = r.data[idx];
                // Mediastinum: a vertical band widening towards the heart,
                // with the aortic knob on the patient's left.
                let widen = ((y - 0.2) / (top_of_heart - 0.2)).clamp(0.0, 1.0);
                let half = self.mediastinum_half_width * (0.8 + 0.35 * widen);
                let knob = Ellipse {
                    cx: mid + half * 0.9,
                    cy: 0.3,
                    rx: 0.04,
                    ry: 0.035,
                };
                if ((x - mid).abs() < half && y < top_of_heart + 0.05) || knob.contains(x, y) {
                    v = v.max(MEDIASTINUM);
                }
                // The trachea: an air column down to the carina.
                let carina = self.lungs[0].top() + 0.17;
                let tw = 0.018 * (1.0 - 0.2 * (y / carina).clamp(0.0, 1.0));
                if (x - mid).abs() < tw && y < carina {
                    v = v * 0.55 + 0.04;
                }
                // The heart: a dense shadow mostly over the left lung.
                let hl = self.heart.level(x, y);
                if hl <= 1.0 {
                    let a = ((1.0 - hl) / 0.08).clamp(0.0, 1.0);
                    v = v * (1.0 - 0.92 * a) + HEART * 0.92 * a;
                }
                v += self.bone_at(x, y);
                r.data[idx] = v;
            }
        }
        let blurred = r.gaussian_blur(0.55 * s / 128.0);
        let mut out = blurred;
        for v in out.data.iter_mut() {
            *v = (*v * self.exposure + self.quantum_noise * gauss(rng)).clamp(0.0, 1.0);
        }
        out
    }

    /// Bone density added at `(x, y)`: clavicles, posterior ribs, spine.
    fn bone_at(&self, x: f32, y: f32) -> f32 {
        let mid = self.body.cx;
        let mut b = 0.0f32;
        // Spine: a vertical band with vertebral bodies, behind the mediastinum.
        let dx = (x - mid).abs();
        if dx < 0.035 {
            let seg = ((y * 24.0).fract() - 0.5).abs();
            b += if seg < 0.38 { 0.07 } else { 0.03 };
        }
        // Clavicles.
        for sign in [-1.0f32, 1.0] {
            let (d, _) = segment_distance(
                x,
                y,
                mid + sign * 0.045,
                self.rib_top + 0.025,
                mid + sign * 0.31,
                self.rib_top - 0.03,
            );
            if d < 0.016 {
                b += 0.13 * (1.0 - (d / 0.016).powi(2));
            }
        }
        // Posterior ribs: from the spine outwards, rising a little and then
        // curving down at the lateral chest wall.
        let u = (dx - 0.035) / (self.body.rx - 0.04);
        if (0.0..=1.0).contains(&u) {
            // An arch over the lung, dropping at the lateral chest wall.
            let curve =
                -0.05 * (std::f32::consts::PI * u.min(0.8) / 0.8).sin() * (1.0 - u) + 0.10 * u * u;
            for k in 0..self.rib_count {
                let yc = self.rib_top + 0.01 + k as f32 * self.rib_spacing + curve;
                let d = (y - yc).abs();
                let w = self.rib_width * (1.0 - 0.25 * u);
                if d < w {
                    // Brighter cortical edges, a lighter medulla.
                    let t = d / w;
                    let cortex = if t > 0.55 { 0.12 } else { 0.08 };
                    b += cortex * (1.0 - 0.4 * u);
                }
            }
        }
        b
    }

    /// Relative pixel coordinates of the point `(x, y)` at image size `size`.
    pub fn to_pixel(size: usize, x: f32, y: f32) -> (usize, usize) {
        let s = size as f32;
        let j = ((x * s).floor().max(0.0) as usize).min(size.saturating_sub(1));
        let i = ((y * s).floor().max(0.0) as usize).min(size.saturating_sub(1));
        (i, j)
    }

    /// The lobe of the lung on `side` at height `y`.
    pub fn lobe_at(&self, side: Side, y: f32) -> Lobe {
        let lung = self.lung(side);
        let t = lung.rel_height(y);
        for &lobe in lung.lobes() {
            if let Some((_, t1)) = lung.lobe_band(lobe) {
                if t < t1 {
                    return lobe;
                }
            }
        }
        Lobe::Lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::seed::rng_for;

    #[test]
    fn lungs_are_dark_and_heart_bright() {
        let mut rng = rng_for(1, "t");
        let a = Anatomy::sample(&mut rng);
        let base = a.render_lungs(128);
        let img = a.finish(base, &mut rng);
        let at = |x: f32, y: f32| {
            let (i, j) = Anatomy::to_pixel(128, x, y);
            img.data[i * 128 + j]
        };
        let lung = a.lung(Side::Right);
        // Mean over a lateral lung patch versus the heart centre.
        let mut lung_mean = 0.0;
        for k in 0..5 {
            lung_mean += at(lung.cx - 0.05, lung.cy + 0.02 * k as f32) / 5.0;
        }
        assert!(lung_mean < 0.4, "lung {lung_mean}");
        assert!(at(a.heart.cx + 0.03, a.heart.cy) > 0.55);
        assert!(at(0.01, 0.01) < 0.12, "outside the body is air");
    }

    #[test]
    fn lobes_go_top_to_bottom() {
        let a = Anatomy::sample(&mut rng_for(3, "t"));
        let l = a.lung(Side::Right);
        assert_eq!(a.lobe_at(Side::Right, l.top() + 0.02), Lobe::Upper);
        assert_eq!(a.lobe_at(Side::Right, l.cy + 0.02), Lobe::Middle);
        assert_eq!(a.lobe_at(Side::Right, l.base - 0.02), Lobe::Lower);
        assert_eq!(a.lobe_at(Side::Left, l.cy + 0.1), Lobe::Lower);
    }
}
