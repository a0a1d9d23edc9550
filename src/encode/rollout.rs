//! Attention rollout (Abnar & Zuidema 2020), the attention-map baseline of
//! paper Table 5: per layer, the attention averaged over heads plus the
//! residual identity, `Â = (A + I) / 2` (rows renormalised), multiplied
//! through the layers, `R = Â_L ··· Â_1`; the heatmap is CLS's row of R over
//! the patch tokens, upsampled (bilinear) to the image size.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

use super::DualEncoder;
use crate::heatmap::resize::resize_grid;
use crate::heatmap::{Heatmap, HeatmapSource, SampleView};

/// Rollout of per-layer head-averaged attention matrices (`t × t`, row-major,
/// rows = queries), first layer first. Returns the `t × t` product.
pub fn rollout(layers: &[Vec<f32>], t: usize) -> Result<Vec<f64>> {
    let mut r: Vec<f64> = (0..t * t)
        .map(|i| if i / t == i % t { 1.0 } else { 0.0 })
        .collect();
    for (l, a) in layers.iter().enumerate() {
        if a.len() != t * t {
            bail!(
                "attention of layer {l} has {} values, expected {t}x{t}",
                a.len()
            );
        }
        let mut ahat: Vec<f64> = a.iter().map(|v| 0.5 * f64::from(*v)).collect();
        for i in 0..t {
            ahat[i * t + i] += 0.5;
            let s: f64 = ahat[i * t..(i + 1) * t].iter().sum();
            if s > 0.0 {
                for v in &mut ahat[i * t..(i + 1) * t] {
                    *v /= s;
                }
            }
        }
        // r = ahat · r
        let mut next = vec![0f64; t * t];
        for i in 0..t {
            for k in 0..t {
                let aik = ahat[i * t + k];
                if aik == 0.0 {
                    continue;
                }
                for j in 0..t {
                    next[i * t + j] += aik * r[k * t + j];
                }
            }
        }
        r = next;
    }
    Ok(r)
}

/// The CLS-to-patch rollout of `image` (`[3, S, S]` or `[1, 3, S, S]`) on
/// the patch grid, row-major, and the grid size.
pub fn attention_rollout(enc: &DualEncoder, image: &Tensor) -> Result<(Vec<f32>, (usize, usize))> {
    let image = if image.rank() == 3 {
        image.unsqueeze(0)?
    } else {
        image.clone()
    };
    let out = enc.vision.forward(&image, false, true)?;
    let attns = out
        .attentions
        .context("the image tower returned no attentions")?;
    let mut layers = Vec::with_capacity(attns.len());
    let mut t = 0;
    for a in &attns {
        // [1, heads, t, t] -> mean over heads.
        let m = a.to_dtype(DType::F32)?.squeeze(0)?.mean(0)?;
        t = m.dim(0)?;
        layers.push(m.flatten_all()?.to_vec1::<f32>()?);
    }
    let r = rollout(&layers, t)?;
    let cam: Vec<f32> = r[1..t].iter().map(|v| *v as f32).collect();
    let g = enc.grid();
    Ok((cam, (g, g)))
}

/// Attention rollout as a heatmap source.
#[derive(Clone, Debug)]
pub struct RolloutSource {
    pub encoder: Arc<DualEncoder>,
}

impl HeatmapSource for RolloutSource {
    fn name(&self) -> &str {
        "attention"
    }

    fn heatmap(&self, sample: &SampleView) -> Result<Heatmap> {
        let id = sample.id;
        let enc = &self.encoder;
        let image = match (sample.image, sample.image_path) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => enc.load_image(p).with_context(|| format!("sample {id}"))?,
            (None, None) => bail!("sample {id}: attention rollout needs the image"),
        };
        let (cam, (gh, gw)) =
            attention_rollout(enc, &image).with_context(|| format!("sample {id}"))?;
        let s = enc.image_size();
        Heatmap::new(s, s, resize_grid(&cam, gh, gw, s, s))
            .with_context(|| format!("sample {id}: rollout heatmap"))
    }
}
