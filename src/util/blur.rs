//! The one Gaussian blur of hdpo (lesion-mask smoothing, phantom rendering,
//! false-positive perturbations).

/// Separable Gaussian blur of a row-major `h × w` grid with standard deviation
/// `sigma` pixels: kernel radius ceil(3σ) (at least 1, at most the longer
/// side), normalised; edges clamped (replicated). `sigma <= 0` (or an empty
/// grid) returns a copy.
pub fn gaussian_blur(src: &[f32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 || src.is_empty() {
        return src.to_vec();
    }
    let r = ((3.0 * sigma).ceil() as isize).clamp(1, h.max(w) as isize);
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut tmp = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kv)| kv * src[y * w + clamp(x as isize + j as isize - r, w)])
                .sum();
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kv)| kv * tmp[clamp(y as isize + j as isize - r, h) * w + x])
                .sum();
        }
    }
    out
}
