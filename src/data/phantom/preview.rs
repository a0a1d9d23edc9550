//! The `--preview` contact sheet: for a few studies, the image, the image
//! with the mask overlaid in red, and the image with the heatmap overlaid in
//! a jet-like colour map, each labelled with a tiny built-in bitmap font.

use anyhow::Result;

use super::raster::encode_rgb_png;
use super::study::RenderedStudy;
use crate::util::render::jet;

/// 3×5 glyphs, rows top to bottom, `#` for ink.
fn glyph(c: char) -> Option<[&'static str; 5]> {
    Some(match c.to_ascii_uppercase() {
        'A' => [".#.", "#.#", "###", "#.#", "#.#"],
        'B' => ["##.", "#.#", "##.", "#.#", "##."],
        'C' => [".##", "#..", "#..", "#..", ".##"],
        'D' => ["##.", "#.#", "#.#", "#.#", "##."],
        'E' => ["###", "#..", "##.", "#..", "###"],
        'F' => ["###", "#..", "##.", "#..", "#.."],
        'G' => [".##", "#..", "#.#", "#.#", ".##"],
        'H' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'I' => ["###", ".#.", ".#.", ".#.", "###"],
        'J' => ["..#", "..#", "..#", "#.#", ".#."],
        'K' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'L' => ["#..", "#..", "#..", "#..", "###"],
        'M' => ["#.#", "###", "###", "#.#", "#.#"],
        'N' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'O' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'P' => ["##.", "#.#", "##.", "#..", "#.."],
        'Q' => [".#.", "#.#", "#.#", "##.", ".##"],
        'R' => ["##.", "#.#", "##.", "#.#", "#.#"],
        'S' => [".##", "#..", ".#.", "..#", "##."],
        'T' => ["###", ".#.", ".#.", ".#.", ".#."],
        'U' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'V' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'W' => ["#.#", "#.#", "###", "###", "#.#"],
        'X' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'Y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'Z' => ["###", "..#", ".#.", "#..", "###"],
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["##.", "..#", ".#.", "#..", "###"],
        '3' => ["##.", "..#", ".#.", "..#", "##."],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "##.", "..#", "##."],
        '6' => [".##", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "##."],
        '.' => ["...", "...", "...", "...", ".#."],
        '%' => ["#.#", "..#", ".#.", "#..", "#.#"],
        '-' => ["...", "...", "###", "...", "..."],
        '_' => ["...", "...", "...", "...", "###"],
        '/' => ["..#", "..#", ".#.", "#..", "#.."],
        ':' => ["...", ".#.", "...", ".#.", "..."],
        ' ' => ["...", "...", "...", "...", "..."],
        _ => return None,
    })
}

/// An RGB canvas.
struct Canvas {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize, bg: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            data.extend_from_slice(&bg);
        }
        Canvas {
            width,
            height,
            data,
        }
    }

    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Draw `text` with its top-left corner at `(x, y)`, each font pixel
    /// `scale × scale`.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: [u8; 3]) {
        let mut cx = x;
        for ch in text.chars() {
            if let Some(g) = glyph(ch) {
                for (r, row) in g.iter().enumerate() {
                    for (k, b) in row.bytes().enumerate() {
                        if b == b'#' {
                            for dy in 0..scale {
                                for dx in 0..scale {
                                    self.put(cx + k * scale + dx, y + r * scale + dy, c);
                                }
                            }
                        }
                    }
                }
            }
            cx += 4 * scale;
        }
    }
}

fn label_of(s: &RenderedStudy) -> String {
    let t = &s.truth;
    let mut parts = vec![t.id.trim_start_matches("phantom_").to_string()];
    match t.finding {
        Some(k) => {
            parts.push(k.class().replace('_', " "));
            if let Some(side) = t.side {
                parts.push(side.name().into());
            }
            if let Some(lobe) = t.lobe {
                parts.push(lobe.name().into());
            }
            parts.push(format!("{:.1}%", t.lesion_area * 100.0));
            if t.subtle {
                parts.push("subtle".into());
            }
        }
        None => parts.push("normal".into()),
    }
    parts.join(" ")
}

/// PNG bytes of the contact sheet of `studies` (images of side `size`):
/// two studies per row, each as image | mask overlay | heatmap overlay.
pub fn contact_sheet(studies: &[&RenderedStudy], size: usize) -> Result<Vec<u8>> {
    let zoom = (256 / size.max(1)).max(1);
    let panel = size * zoom;
    let gap = 6;
    let font = 2;
    let label_h = 5 * font + 8;
    let tile_w = 3 * panel + 2 * gap;
    let tile_h = panel + label_h;
    let per_row = 2;
    let rows = studies.len().div_ceil(per_row).max(1);
    let width = per_row * tile_w + (per_row + 1) * 3 * gap;
    let height = rows * (tile_h + 3 * gap) + 3 * gap;
    let mut c = Canvas::new(width, height, [24, 24, 28]);
    for (n, s) in studies.iter().enumerate() {
        let x0 = 3 * gap + (n % per_row) * (tile_w + 3 * gap);
        let y0 = 3 * gap + (n / per_row) * (tile_h + 3 * gap);
        c.text(x0, y0, &label_of(s), font, [235, 235, 150]);
        let top = y0 + label_h;
        let hmax = s.heatmap.iter().copied().fold(0.0f32, f32::max).max(1e-6);
        for py in 0..panel {
            for px in 0..panel {
                let (i, j) = (py / zoom, px / zoom);
                let idx = i * size + j;
                let g = f32::from(s.pixels.get(idx).copied().unwrap_or(0)) / 255.0;
                let gray = [g, g, g];
                let m = s.mask.get(idx).copied().unwrap_or(false);
                let masked = if m {
                    [0.45 * g + 0.55, 0.45 * g + 0.05, 0.45 * g + 0.05]
                } else {
                    gray
                };
                let h = s.heatmap.get(idx).copied().unwrap_or(0.0) / hmax;
                let col = jet(h);
                let a = 0.65 * h.sqrt();
                let heat = [
                    g * (1.0 - a) + col[0] * a,
                    g * (1.0 - a) + col[1] * a,
                    g * (1.0 - a) + col[2] * a,
                ];
                for (k, rgb) in [gray, masked, heat].iter().enumerate() {
                    let px8 = rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
                    c.put(x0 + k * (panel + gap) + px, top + py, px8);
                }
            }
        }
    }
    encode_rgb_png(c.width, c.height, &c.data)
}
