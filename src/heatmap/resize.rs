//! Bilinear resizing of heatmaps (half-pixel centres, edges clamped: the
//! convention of `torch.nn.functional.interpolate(mode="bilinear",
//! align_corners=False)` without antialiasing).

use super::Heatmap;

/// Resize `h` to `out_h × out_w`; returns a copy when the size already matches.
pub fn resize_bilinear(h: &Heatmap, out_h: usize, out_w: usize) -> Heatmap {
    if h.height == out_h && h.width == out_w {
        return h.clone();
    }
    let data = resize_grid(&h.data, h.height, h.width, out_h, out_w);
    Heatmap {
        height: out_h,
        width: out_w,
        data,
    }
}

/// Bilinear resize of a row-major `in_h × in_w` grid (all zeros when the
/// input is empty or its length does not match its shape).
pub fn resize_grid(src: &[f32], in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    if in_h == 0 || in_w == 0 || src.len() != in_h * in_w {
        return vec![0.0; out_h * out_w];
    }
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|o| {
                let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                let f = (s - i0 as f64).clamp(0.0, 1.0) as f32;
                (i0, i1, f)
            })
            .collect()
    };
    let ys = axis(out_h, in_h);
    let xs = axis(out_w, in_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let a = src[y0 * in_w + x0];
            let b = src[y0 * in_w + x1];
            let c = src[y1 * in_w + x0];
            let d = src[y1 * in_w + x1];
            let top = a + (b - a) * fx;
            let bot = c + (d - c) * fx;
            out.push(top + (bot - top) * fy);
        }
    }
    out
}
