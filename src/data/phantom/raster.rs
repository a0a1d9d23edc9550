//! A tiny grayscale raster in `0..=1` with the few operations the phantom
//! needs: Gaussian blur, quantisation and PNG / NPY encoding.

use anyhow::{Context, Result};
use image::ImageEncoder;
use rand::Rng;

/// A row-major `height × width` field of f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Raster {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Raster {
    /// A raster filled with `value`.
    pub fn filled(width: usize, height: usize, value: f32) -> Self {
        Raster {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// Gaussian blur with standard deviation `sigma` pixels
    /// ([`crate::util::blur::gaussian_blur`]); `sigma <= 0` returns a copy.
    pub fn gaussian_blur(&self, sigma: f32) -> Raster {
        Raster {
            width: self.width,
            height: self.height,
            data: crate::util::blur::gaussian_blur(&self.data, self.height, self.width, sigma),
        }
    }

    /// 8-bit quantisation of the values clamped to `0..=1`.
    pub fn to_u8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }
}

/// PNG bytes of an 8-bit grayscale image.
pub fn encode_gray_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            pixels,
            width as u32,
            height as u32,
            image::ExtendedColorType::L8,
        )
        .context("cannot encode a grayscale PNG")?;
    Ok(buf)
}

/// PNG bytes of an 8-bit RGB image (`pixels` holds 3 bytes per pixel).
pub fn encode_rgb_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            pixels,
            width as u32,
            height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .context("cannot encode an RGB PNG")?;
    Ok(buf)
}

/// PNG bytes of a binary mask: 255 inside the lesion, 0 elsewhere.
pub fn encode_mask_png(width: usize, height: usize, mask: &[bool]) -> Result<Vec<u8>> {
    let px: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    encode_gray_png(width, height, &px)
}

/// `.npy` (format version 1.0) bytes of a little-endian f32 2-D array,
/// C order, the layout `numpy.load` and DAug's heatmaps use.
pub fn encode_npy_f32(height: usize, width: usize, data: &[f32]) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(10 + header_len + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A standard normal draw (Box-Muller).
pub fn gauss<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Smooth value noise in `-1..=1`: a `cells × cells` grid of random values,
/// bilinearly interpolated with a smoothstep, sampled at normalised `(x, y)`.
#[derive(Clone, Debug)]
pub struct ValueNoise {
    cells: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    pub fn new<R: Rng + ?Sized>(rng: &mut R, cells: usize) -> Self {
        let cells = cells.max(1);
        let n = (cells + 1) * (cells + 1);
        ValueNoise {
            cells,
            grid: (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect(),
        }
    }

    /// The noise at normalised coordinates `(x, y)` (clamped to `0..=1`).
    pub fn at(&self, x: f32, y: f32) -> f32 {
        let c = self.cells as f32;
        let fx = x.clamp(0.0, 1.0) * c;
        let fy = y.clamp(0.0, 1.0) * c;
        let ix = (fx.floor() as usize).min(self.cells - 1);
        let iy = (fy.floor() as usize).min(self.cells - 1);
        let tx = smooth(fx - ix as f32);
        let ty = smooth(fy - iy as f32);
        let s = self.cells + 1;
        let g = |i: usize, j: usize| self.grid.get(j * s + i).copied().unwrap_or(0.0);
        let a = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
        let b = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
        a * (1.0 - ty) + b * ty
    }
}

fn smooth(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Distance from `(px, py)` to the segment `(ax, ay)-(bx, by)` and the
/// position `0..=1` of the nearest point along it.
pub fn segment_distance(px: f32, py: f32, ax: f32, ay: f32, bx: f32, by: f32) -> (f32, f32) {
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (ax + t * dx, ay + t * dy);
    (((px - cx).powi(2) + (py - cy).powi(2)).sqrt(), t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_mass_and_spreads() {
        let mut r = Raster::filled(21, 21, 0.0);
        r.data[10 * 21 + 10] = 1.0;
        let b = r.gaussian_blur(2.0);
        let sum: f32 = b.data.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!(b.data[10 * 21 + 10] < 0.1);
        assert!(b.data[10 * 21 + 12] > 0.0);
        // Symmetric.
        assert!((b.data[10 * 21 + 8] - b.data[10 * 21 + 12]).abs() < 1e-6);
    }

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let bytes = encode_npy_f32(2, 3, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]);
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hl]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let last = &bytes[bytes.len() - 4..];
        assert_eq!(
            f32::from_le_bytes([last[0], last[1], last[2], last[3]]),
            5.5
        );
        assert_eq!(bytes.len(), 10 + hl + 24);
    }
}
