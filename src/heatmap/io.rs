//! Heatmap and lesion-mask files (paper 3.1.1 and 4.3).
//!
//! * `.npy` heatmaps: f32 or f64, little-endian, C order, exactly 2-D
//!   (NumPy format 1.0-3.0, header parsed here). DAug writes one per image
//!   and class, named `{id}_{class}.npy` ([`read_daug`]).
//! * 8- or 16-bit grayscale PNG heatmaps, scaled to `0..=1`.
//! * Lesion masks from PNG: binary (any non-zero pixel is lesion) or indexed
//!   like SLAKE's `mask.png` (the chosen label values are lesion), see [`MaskLabels`].
//! * The subtle-lesion predicate (`docs/design.md`, "Subtle lesions"): a lesion covering less than
//!   5% of the image ([`SUBTLE_THRESHOLD`], configurable) is subtle.
//!
//! Every error names the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Heatmap, HeatmapError, HeatmapFault, LesionMask};
use crate::util::fsio::{atomic_write_with, resolve_in_root};

/// The default subtle-lesion threshold: a lesion under 5% of the image area.
pub const SUBTLE_THRESHOLD: f64 = 0.05;

/// Whether a lesion of area share `share` (in `0..=1`) is subtle: present
/// (`share > 0`) and below `threshold`. A study without a lesion is not subtle.
pub fn is_subtle(share: f64, threshold: f64) -> bool {
    share > 0.0 && share < threshold
}

/// Read a heatmap from `.npy` or `.png` (by extension); when `expected`
/// (height, width) is given the heatmap must have that size.
pub fn read_heatmap(path: &Path, expected: Option<(usize, usize)>) -> Result<Heatmap> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let h = match ext.as_str() {
        "npy" => read_npy(path)?,
        "png" => read_png_heatmap(path)?,
        _ => bail!(
            "{}: unsupported heatmap file type (expected .npy or .png)",
            path.display()
        ),
    };
    check_size(path, h.height, h.width, expected)?;
    Ok(h)
}

fn check_size(path: &Path, h: usize, w: usize, expected: Option<(usize, usize)>) -> Result<()> {
    if let Some((eh, ew)) = expected {
        if (h, w) != (eh, ew) {
            return Err(HeatmapError::err(
                HeatmapFault::ShapeMismatch,
                format!(
                    "{}: size {h}x{w} (height x width) does not match the image size {eh}x{ew}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Read a 2-D f32/f64 little-endian C-order `.npy` heatmap.
pub fn read_npy(path: &Path) -> Result<Heatmap> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("bad .npy heatmap {}", path.display()))
}

/// Parse `.npy` bytes into a heatmap (see [`read_npy`]).
pub fn parse_npy(bytes: &[u8]) -> Result<Heatmap> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a NumPy .npy file (bad magic)");
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let b = bytes.get(8..12).context("truncated header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let end = start.checked_add(header_len).context("header too long")?;
    let header = bytes.get(start..end).context("truncated header")?;
    let header = String::from_utf8_lossy(header);
    let descr = dict_str(&header, "descr").context("header has no 'descr'")?;
    let itemsize = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => bail!(
            "unsupported dtype '{other}' (expected little-endian float32 '<f4' or float64 '<f8')"
        ),
    };
    match dict_raw(&header, "fortran_order") {
        Some(v) if v.starts_with("False") => {}
        Some(v) if v.starts_with("True") => {
            bail!("Fortran-order arrays are not supported (write with C order)")
        }
        _ => bail!("header has no valid 'fortran_order'"),
    }
    let shape = dict_shape(&header).context("header has no valid 'shape'")?;
    let [h, w] = shape[..] else {
        bail!(
            "expected a 2-D array (height, width), got shape {:?} of rank {}",
            shape,
            shape.len()
        );
    };
    let n = h.checked_mul(w).context("shape too large")?;
    let nbytes = n.checked_mul(itemsize).context("shape too large")?;
    let data = &bytes[end..];
    if data.len() != nbytes {
        bail!(
            "data has {} bytes but shape ({h}, {w}) of {descr} needs {nbytes} (truncated or corrupt file)",
            data.len()
        );
    }
    let values: Vec<f32> = if itemsize == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        bail!(
            "value at row {}, column {} is NaN",
            i / w.max(1),
            i % w.max(1)
        );
    }
    Heatmap::new(h, w, values)
}

/// The raw text after `'key':` in a NumPy header dict.
fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let pos = header
        .find(&pat1)
        .map(|p| p + pat1.len())
        .or_else(|| header.find(&pat2).map(|p| p + pat2.len()))?;
    let rest = header.get(pos..)?.trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let raw = dict_raw(header, key)?;
    let q = raw.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &raw[1..];
    let end = rest.find(q)?;
    Some(rest[..end].to_string())
}

fn dict_shape(header: &str) -> Option<Vec<usize>> {
    let raw = dict_raw(header, "shape")?;
    let inner = raw.strip_prefix('(')?;
    let end = inner.find(')')?;
    inner[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

/// Write a heatmap as a float32 2-D `.npy` file (format 1.0), atomically.
pub fn write_npy(path: &Path, h: &Heatmap) -> Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        h.height, h.width
    );
    // Pad so that the data starts on a 64-byte boundary, ending with '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let header_len = u16::try_from(header.len()).context("npy header too long")?;
    atomic_write_with(path, |w| {
        w.write_all(b"\x93NUMPY\x01\x00")?;
        w.write_all(&header_len.to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for v in &h.data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Read an 8- or 16-bit grayscale PNG heatmap, scaled to `0..=1` (colour
/// PNGs are converted to luma first).
pub fn read_png_heatmap(path: &Path) -> Result<Heatmap> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .with_context(|| format!("corrupt or unreadable PNG heatmap {}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let sixteen = matches!(
        img.color(),
        image::ColorType::L16
            | image::ColorType::La16
            | image::ColorType::Rgb16
            | image::ColorType::Rgba16
    );
    let data: Vec<f32> = if sixteen {
        img.to_luma16()
            .into_raw()
            .into_iter()
            .map(|v| f32::from(v) / 65535.0)
            .collect()
    } else {
        img.to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| f32::from(v) / 255.0)
            .collect()
    };
    Heatmap::new(h, w, data).with_context(|| format!("bad PNG heatmap {}", path.display()))
}

/// The DAug file name of image `id` and class `class`: `{id}_{class}.npy`.
pub fn daug_name(id: &str, class: &str) -> String {
    format!("{id}_{class}.npy")
}

/// Read the DAug heatmap of image `id` from `dir`: `{id}_{class}.npy` when a
/// class is given, else the elementwise maximum over every `{id}_*.npy`.
pub fn read_daug(
    dir: &Path,
    id: &str,
    class: Option<&str>,
    expected: Option<(usize, usize)>,
) -> Result<Heatmap> {
    let what = format!("heatmap of '{id}'");
    if let Some(c) = class {
        let p = resolve_in_root(dir, &daug_name(id, c), &what)?;
        if !p.is_file() {
            return Err(HeatmapError::err(
                HeatmapFault::Missing,
                format!("{what}: {} does not exist", p.display()),
            ));
        }
        return read_heatmap(&p, expected);
    }
    let files = daug_files(dir, id)?;
    if files.is_empty() {
        return Err(HeatmapError::err(
            HeatmapFault::Missing,
            format!("{what}: no file {id}_<class>.npy in {}", dir.display()),
        ));
    }
    let mut acc: Option<Heatmap> = None;
    for (_, p) in files {
        let h = read_heatmap(&p, expected)?;
        acc = Some(match acc {
            None => h,
            Some(mut a) => {
                if (a.height, a.width) != (h.height, h.width) {
                    return Err(HeatmapError::err(
                        HeatmapFault::ShapeMismatch,
                        format!(
                            "{}: size {}x{} differs from the other classes' {}x{}",
                            p.display(),
                            h.height,
                            h.width,
                            a.height,
                            a.width
                        ),
                    ));
                }
                for (x, y) in a.data.iter_mut().zip(&h.data) {
                    *x = x.max(*y);
                }
                a
            }
        });
    }
    acc.context("no heatmap")
}

/// The DAug files `{id}_{class}.npy` of image `id` in `dir`, as (class, path), sorted.
pub fn daug_files(dir: &Path, id: &str) -> Result<Vec<(String, PathBuf)>> {
    let prefix = format!("{id}_");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(class) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".npy"))
        {
            if !class.is_empty() {
                out.push((class.to_string(), e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Which pixel values of a mask PNG are lesion.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum MaskLabels {
    /// Binary masks: every non-zero pixel (any channel) is lesion.
    #[default]
    AnyNonZero,
    /// Indexed or label masks (SLAKE's `mask.png`): pixels whose palette index
    /// or gray value is one of these are lesion.
    Values(Vec<u16>),
}

/// Read a lesion mask PNG; with `expected` (height, width) it must have that size.
pub fn read_mask(
    path: &Path,
    labels: &MaskLabels,
    expected: Option<(usize, usize)>,
) -> Result<LesionMask> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (w, h, values) = mask_values(&bytes)
        .with_context(|| format!("corrupt or unreadable mask PNG {}", path.display()))?;
    check_size(path, h, w, expected)?;
    let (values, keep) = values;
    let data: Vec<bool> = match labels {
        MaskLabels::AnyNonZero => values
            .chunks_exact(keep)
            .map(|v| v.iter().any(|x| *x != 0))
            .collect(),
        MaskLabels::Values(set) => {
            if keep > 1 {
                bail!(
                    "{}: label values need a grayscale or indexed mask, this one is colour",
                    path.display()
                );
            }
            values.iter().map(|x| set.contains(x)).collect()
        }
    };
    Ok(LesionMask {
        height: h,
        width: w,
        data,
    })
}

/// The raw per-pixel samples of a PNG without palette expansion, flat, with
/// the number of samples kept per pixel: one (gray or palette index) or three
/// (RGB; alpha dropped).
type MaskSamples = (usize, usize, (Vec<u16>, usize));

fn mask_values(bytes: &[u8]) -> Result<MaskSamples> {
    use png::{BitDepth, ColorType};
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info()?;
    let size = reader.output_buffer_size().context("image too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    if w == 0 || h == 0 {
        bail!("empty image");
    }
    let bits: usize = match info.bit_depth {
        BitDepth::One => 1,
        BitDepth::Two => 2,
        BitDepth::Four => 4,
        BitDepth::Eight => 8,
        BitDepth::Sixteen => 16,
    };
    let (channels, keep) = match info.color_type {
        ColorType::Grayscale | ColorType::Indexed => (1, 1),
        ColorType::GrayscaleAlpha => (2, 1),
        ColorType::Rgb => (3, 3),
        ColorType::Rgba => (4, 3),
    };
    let mut out = Vec::with_capacity(w * h * keep);
    for y in 0..h {
        let row = buf
            .get(y * info.line_size..(y + 1) * info.line_size)
            .context("truncated image data")?;
        for x in 0..w {
            for c in 0..keep {
                let s = x * channels + c;
                let v = match bits {
                    16 => {
                        let b = row.get(2 * s..2 * s + 2).context("truncated row")?;
                        u16::from_be_bytes([b[0], b[1]])
                    }
                    8 => u16::from(*row.get(s).context("truncated row")?),
                    b => {
                        let bit = s * b;
                        let byte = *row.get(bit / 8).context("truncated row")?;
                        let shift = 8 - b - (bit % 8);
                        u16::from((byte >> shift) & ((1u8 << b) - 1))
                    }
                };
                out.push(v);
            }
        }
    }
    Ok((w, h, (out, keep)))
}

/// The lesion area share of the mask at `path` (binary interpretation).
pub fn mask_share(path: &Path) -> Result<f64> {
    Ok(read_mask(path, &MaskLabels::AnyNonZero, None)?.area_share())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtle_predicate() {
        assert!(is_subtle(0.01, SUBTLE_THRESHOLD));
        assert!(!is_subtle(0.05, SUBTLE_THRESHOLD));
        assert!(!is_subtle(0.0, SUBTLE_THRESHOLD));
        assert!(is_subtle(0.08, 0.1));
    }

    #[test]
    fn npy_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a_x.npy");
        let h = Heatmap::new(2, 3, vec![0.0, 1.0, 2.0, 3.0, 4.5, 5.0]).unwrap();
        write_npy(&p, &h).unwrap();
        assert_eq!((std::fs::metadata(&p).unwrap().len() - 24) % 64, 0);
        assert_eq!(read_npy(&p).unwrap(), h);
    }
}
