//! Rendering helpers shared by every picture hdpo draws (plots, curation
//! previews, phantom contact sheets): the bundled font, the jet colour map and
//! PNG encoding.

use std::sync::Once;

use anyhow::Result;
use plotters::style::FontStyle;

/// The bundled font (DejaVu Sans, a proportional face whose decimal points read as points;
/// Bitstream Vera licence: `assets/fonts/DejaVu-LICENSE.txt`).
/// `plotters` draws text only with a registered font; embedding one keeps the
/// plots identical on every machine and needs no system font library.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// Text sizes must be even: `plotters`' ab_glyph backend places each glyph at
/// `size / 2 + top of its box`, truncated to whole pixels, so an odd size puts small
/// glyphs such as the decimal point a pixel off the baseline of the digits.
///
/// The family name the bundled font is registered under.
pub const FONT_NAME: &str = "sans-serif";

/// Register the bundled font with `plotters` (once per process).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; if it failed to parse, text would be missing
        // but the plot would still be drawn, so the error is only logged.
        if plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("could not register the bundled plot font");
        }
    });
}

/// The jet colour map: an RGB colour in `0..=1` for `t` in `0..=1` (blue, cyan,
/// yellow, red; values outside are clamped).
pub fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let f = |c: f32| (1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0);
    [f(3.0), f(2.0), f(1.0)]
}

/// [`jet`] as 8-bit RGB (truncated, not rounded).
pub fn jet_u8(t: f32) -> [u8; 3] {
    jet(t).map(|c| (c * 255.0) as u8)
}

/// Encode an RGB image as PNG bytes.
pub fn png_bytes(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}
