//! `hdpo curate --preview N`: one PNG sheet per pair with four panels (the
//! image x+, the heatmap overlaid in a jet colour map, Ω* outlined in red,
//! and x− when it differs) and the pair's text below: kind and w, the
//! chosen text with k* marked `[[...]]`, the rejected text, Δ.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::data::pairs::PairRecord;
use crate::heatmap::resize::resize_bilinear;
use crate::heatmap::{Heatmap, LesionMask};
use crate::util::render::{jet_u8, png_bytes, register_font, FONT_NAME};

/// What one sheet shows.
pub struct PreviewInput<'a> {
    pub image: &'a image::RgbImage,
    pub heatmap: &'a Heatmap,
    /// Ω* at image size.
    pub region: &'a LesionMask,
    /// x− when it differs from x+.
    pub masked: Option<&'a image::RgbImage>,
    pub record: &'a PairRecord,
    /// k*'s byte span in `record.chosen`.
    pub keyword_span: (usize, usize),
}

const PANEL: usize = 224;
const GAP: usize = 8;
const TEXT_H: usize = 200;
const COLS: usize = 4;
const WIDTH: usize = COLS * PANEL + (COLS + 1) * GAP;
const HEIGHT: usize = PANEL + 2 * GAP + 20 + TEXT_H;

/// Sample an image-sized layer at panel pixel (x, y) by nearest neighbour.
fn nn(x: usize, y: usize, w: usize, h: usize) -> usize {
    let sx = (x * w / PANEL).min(w - 1);
    let sy = (y * h / PANEL).min(h - 1);
    sy * w + sx
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The PNG bytes of one pair's sheet.
pub fn pair_sheet(p: &PreviewInput) -> Result<Vec<u8>> {
    register_font();
    let (w, h) = (p.image.width() as usize, p.image.height() as usize);
    if w == 0 || h == 0 {
        return Err(anyhow!("preview of {}: empty image", p.record.id));
    }
    let heat = resize_bilinear(p.heatmap, h, w);
    let hmax = heat.max().max(f32::MIN_POSITIVE);
    let mut buf = vec![255u8; WIDTH * HEIGHT * 3];
    let put = |buf: &mut Vec<u8>, x: usize, y: usize, c: [u8; 3]| {
        let i = (y * WIDTH + x) * 3;
        buf[i..i + 3].copy_from_slice(&c);
    };
    let top = GAP + 20;
    for col in 0..COLS {
        let x0 = GAP + col * (PANEL + GAP);
        for y in 0..PANEL {
            for x in 0..PANEL {
                let i = nn(x, y, w, h);
                let px = p.image.get_pixel((i % w) as u32, (i / w) as u32).0;
                let c = match col {
                    0 => px,
                    1 => {
                        let j = jet_u8(heat.data[i] / hmax);
                        [0, 1, 2].map(|k| (0.55 * f32::from(px[k]) + 0.45 * f32::from(j[k])) as u8)
                    }
                    2 => {
                        let inside = p.region.data[i];
                        let edge = inside && {
                            let (ix, iy) = (i % w, i / w);
                            ix == 0
                                || iy == 0
                                || ix + 1 == w
                                || iy + 1 == h
                                || !p.region.data[i - 1]
                                || !p.region.data[i + 1]
                                || !p.region.data[i - w]
                                || !p.region.data[i + w]
                        };
                        if edge {
                            [255, 0, 0]
                        } else if inside {
                            [px[0].saturating_add(60), px[1] / 2, px[2] / 2]
                        } else {
                            px
                        }
                    }
                    _ => match p.masked {
                        Some(m) => m.get_pixel((i % w) as u32, (i / w) as u32).0,
                        None => [235, 235, 235],
                    },
                };
                put(&mut buf, x0 + x, top + y, c);
            }
        }
    }
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (WIDTH as u32, HEIGHT as u32)).into_drawing_area();
        let style = (FONT_NAME, 14).into_font().color(&BLACK);
        let titles = [
            "x+ (image)",
            "heatmap",
            "salient region (Eq. 8)",
            if p.masked.is_some() {
                "x- (masked)"
            } else {
                "x- = x+"
            },
        ];
        for (col, t) in titles.iter().enumerate() {
            root.draw(&Text::new(
                t.to_string(),
                ((GAP + col * (PANEL + GAP)) as i32, GAP as i32),
                style.clone(),
            ))
            .map_err(|e| anyhow!("preview text: {e}"))?;
        }
        let r = p.record;
        let (s, e) = p.keyword_span;
        let marked = format!(
            "{}[[{}]]{}",
            &r.chosen[..s],
            &r.chosen[s..e],
            &r.chosen[e..]
        );
        let mut lines = vec![format!(
            "{}  kind {}  w {:.4}  k* {:?}  share {}",
            r.id,
            r.kind,
            r.weight,
            r.keyword.as_deref().unwrap_or(""),
            r.mask_share
                .map(|m| format!("{:.1}%", 100.0 * m))
                .unwrap_or_else(|| "-".into())
        )];
        let width = (WIDTH - 2 * GAP) / 8;
        for (label, text) in [
            ("chosen:   ", marked.as_str()),
            ("rejected: ", r.rejected.as_str()),
        ] {
            for (i, l) in wrap(text, width - 10).into_iter().enumerate() {
                lines.push(format!("{}{l}", if i == 0 { label } else { "          " }));
            }
        }
        lines.push(format!(
            "delta: {}",
            r.delta.as_ref().map(|d| d.join(" | ")).unwrap_or_default()
        ));
        let y0 = top + PANEL + GAP;
        for (i, l) in lines.iter().take(TEXT_H / 16).enumerate() {
            root.draw(&Text::new(
                l.clone(),
                (GAP as i32, (y0 + 16 * i) as i32),
                style.clone(),
            ))
            .map_err(|e| anyhow!("preview text: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("preview: {e}"))?;
    }
    let img = image::RgbImage::from_raw(WIDTH as u32, HEIGHT as u32, buf)
        .ok_or_else(|| anyhow!("preview buffer has the wrong size"))?;
    png_bytes(&img)
}
