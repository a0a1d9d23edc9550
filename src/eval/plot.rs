//! PNG plots of experiment results: training curves (one line per run) and
//! bar charts (one per metric, bars per method). Drawn with `plotters` into an
//! RGB buffer, encoded with `image`, written atomically.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::util::render::{register_font, FONT_NAME};

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One bar of a bar chart, grouped by `group` (e.g. the dataset).
#[derive(Clone, Debug)]
pub struct Bar {
    pub group: String,
    pub label: String,
    pub value: f64,
    /// A 95% interval drawn as an error bar (low, high), when the value has one.
    pub interval: Option<(f64, f64)>,
}

/// The grid of every chart: light lines that guide the eye without competing with the data.
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(240, 240, 240);
/// Error bars: dark grey, with caps.
const WHISKER: RGBColor = RGBColor(40, 40, 40);

/// A value as the label on top of a bar: one decimal for percentages and other values
/// above 10, three significant digits below.
fn value_label(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

fn save_rgb(path: &Path, buf: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    crate::util::fsio::atomic_write(path, &bytes)
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if (hi - lo).abs() < 1e-12 {
        let pad = if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            1.0
        };
        return Some((lo - pad, hi + pad));
    }
    let pad = (hi - lo) * 0.05;
    Some((lo - pad, hi + pad))
}

/// A line chart of `series` (e.g. the training loss per step of each method).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let (x0, x1) = finite_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
        .ok_or_else(|| anyhow!("line chart '{title}' has no finite points"))?;
    let (y0, y1) = finite_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))
        .ok_or_else(|| anyhow!("line chart '{title}' has no finite points"))?;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_NAME, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT_NAME, 14))
            .bold_line_style(GRID_BOLD)
            .light_line_style(GRID_LIGHT)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|p| p.0.is_finite() && p.1.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_NAME, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    save_rgb(path, buf)
}

/// A grouped bar chart: one cluster per group, one coloured bar per label
/// (the same label has the same colour in every group), value printed on top.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[Bar]) -> Result<()> {
    register_font();
    if bars.is_empty() {
        bail!("bar chart '{title}' has no bars");
    }
    let mut groups: Vec<&str> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
        if !labels.contains(&b.label.as_str()) {
            labels.push(&b.label);
        }
    }
    let finite: Vec<f64> = bars
        .iter()
        .flat_map(|b| {
            let (lo, hi) = b.interval.unwrap_or((b.value, b.value));
            [b.value, lo, hi]
        })
        .filter(|v| v.is_finite())
        .collect();
    let top = finite.iter().copied().fold(0.0f64, f64::max);
    let bottom = finite.iter().copied().fold(0.0f64, f64::min);
    // Headroom above the tallest bar for the upper-right legend (about 4.5% of
    // the plot height per entry), so the legend never covers a bar.
    let legend_share = (0.05 + 0.045 * labels.len() as f64).min(0.6);
    let y1 = if top > 0.0 {
        top * 1.08 / (1.0 - legend_share)
    } else {
        1.0
    };
    let y0 = if bottom < 0.0 { bottom * 1.15 } else { 0.0 };
    let slots = labels.len() + 1; // one empty slot between groups
    let n_x = groups.len() * slots;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_NAME, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n_x as f64, y0..y1)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .label_style((FONT_NAME, 14))
            .bold_line_style(GRID_BOLD)
            .light_line_style(GRID_LIGHT)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (li, label) in labels.iter().enumerate() {
            let color = palette(li);
            let rects: Vec<_> = bars
                .iter()
                .filter(|b| b.label == *label && b.value.is_finite())
                .filter_map(|b| {
                    let g = groups.iter().position(|g| *g == b.group)?;
                    let x = (g * slots + li) as f64;
                    Some(Rectangle::new(
                        [(x + 0.1, 0.0), (x + 0.9, b.value)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(|e| anyhow!("{e}"))?
                .label(label.to_string())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            let texts: Vec<_> = bars
                .iter()
                .filter(|b| b.label == *label && b.value.is_finite())
                .filter_map(|b| {
                    let g = groups.iter().position(|g| *g == b.group)?;
                    let x = (g * slots + li) as f64;
                    let above = b.interval.map_or(b.value, |(_, hi)| hi.max(b.value));
                    Some(Text::new(
                        value_label(b.value),
                        (x + 0.1, above + (y1 - y0) * 0.012),
                        (FONT_NAME, 12).into_font(),
                    ))
                })
                .collect();
            chart.draw_series(texts).map_err(|e| anyhow!("{e}"))?;
            // 95% intervals: a whisker from low to high with caps.
            let whiskers: Vec<_> = bars
                .iter()
                .filter(|b| b.label == *label)
                .filter_map(|b| {
                    let (lo, hi) = b.interval.filter(|(l, h)| l.is_finite() && h.is_finite())?;
                    let g = groups.iter().position(|g| *g == b.group)?;
                    let x = (g * slots + li) as f64 + 0.5;
                    Some([
                        PathElement::new(vec![(x, lo), (x, hi)], WHISKER.stroke_width(2)),
                        PathElement::new(
                            vec![(x - 0.15, lo), (x + 0.15, lo)],
                            WHISKER.stroke_width(2),
                        ),
                        PathElement::new(
                            vec![(x - 0.15, hi), (x + 0.15, hi)],
                            WHISKER.stroke_width(2),
                        ),
                    ])
                })
                .flatten()
                .collect();
            chart.draw_series(whiskers).map_err(|e| anyhow!("{e}"))?;
        }
        let label_style =
            TextStyle::from((FONT_NAME, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (g, name) in groups.iter().enumerate() {
            let centre = (g * slots) as f64 + labels.len() as f64 / 2.0;
            let (px, py) = chart.backend_coord(&(centre, y0));
            root.draw(&Text::new(
                name.to_string(),
                (px, py + 8),
                label_style.clone(),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_NAME, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    save_rgb(path, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> image::RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    #[test]
    fn line_chart_draws_each_series_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curve.png");
        let series = vec![
            Series {
                label: "dpo".into(),
                points: (0..20)
                    .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                    .collect(),
            },
            Series {
                label: "hdpo".into(),
                points: (0..20)
                    .map(|i| (i as f64, 0.5 / (1.0 + i as f64)))
                    .collect(),
            },
        ];
        line_chart(&p, "loss", "step", "loss", &series).unwrap();
        let img = read(&p);
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let count = |c: RGBColor| img.pixels().filter(|px| px.0 == [c.0, c.1, c.2]).count();
        assert!(count(palette(0)) > 50, "first series not drawn");
        assert!(count(palette(1)) > 50, "second series not drawn");
    }

    #[test]
    fn bar_heights_follow_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bars.png");
        let bars = vec![
            Bar {
                group: "vqa".into(),
                label: "base".into(),
                value: 0.2,
                interval: None,
            },
            Bar {
                group: "vqa".into(),
                label: "hdpo".into(),
                value: 0.8,
                interval: Some((0.7, 0.9)),
            },
        ];
        bar_chart(&p, "closed accuracy", "accuracy", &bars).unwrap();
        if let Ok(d) = std::env::var("HDPO_KEEP_PLOTS") {
            std::fs::copy(&p, Path::new(&d).join("bars.png")).unwrap();
        }
        let img = read(&p);
        // Height of the bar: the longest vertical run of the colour in any column
        // (the legend swatch is short, the bar is tall).
        let height_of = |c: RGBColor| {
            let mut best = 0u32;
            for x in 0..WIDTH {
                let mut run = 0u32;
                for y in 0..HEIGHT {
                    if img.get_pixel(x, y).0 == [c.0, c.1, c.2] {
                        run += 1;
                        best = best.max(run);
                    } else {
                        run = 0;
                    }
                }
            }
            best
        };
        let (h0, h1) = (height_of(palette(0)), height_of(palette(1)));
        // 0.8 / 0.2 = 4: allow for the legend swatch and anti-aliasing.
        assert!(h1 as f64 > 3.0 * h0 as f64, "bar heights {h0} vs {h1}");
        assert!(bar_chart(&p, "empty", "y", &[]).is_err());
    }
}
