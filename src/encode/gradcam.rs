//! GradCAM on the image tower (paper 3.1.1; the "GradCAM" heatmaps of
//! Table 5): the gradient of cos(image embedding, text embedding of a
//! finding) with respect to the patch tokens of a ViT layer,
//! `cam_i = ReLU(Σ_d ∂cos/∂a_{i,d} · a_{i,d})` per patch i, upsampled
//! (bilinear) to the image size.
//!
//! The default layer is the last block's output when the image embedding
//! pools the patch tokens, and the last block's input when it is the CLS
//! token (after the last block the patch tokens no longer reach CLS, so
//! their gradient would be zero).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};

use super::{cosine, DualEncoder, ImagePooling};
use crate::heatmap::resize::resize_grid;
use crate::heatmap::{Heatmap, HeatmapSource, SampleView};

/// GradCAM's result for one image.
#[derive(Clone, Debug)]
pub struct GradCamOutput {
    /// `cam_i` on the patch grid, row-major.
    pub cam: Vec<f32>,
    pub grid: (usize, usize),
    /// The layer index into the tower's hidden states that was explained.
    pub layer: usize,
    /// `∂cos/∂a` for every token `[1+N, H]` (CLS first).
    pub grad: Tensor,
    /// The activations `a` `[1+N, H]`.
    pub act: Tensor,
    /// cos(image embedding, text embedding).
    pub similarity: f64,
}

/// The default layer explained for `enc` (see the module docs).
pub fn default_layer(enc: &DualEncoder) -> usize {
    let l = enc.vision.blocks.len();
    match enc.image_pooling {
        ImagePooling::MeanPatches => l,
        ImagePooling::Cls => l.saturating_sub(1),
    }
}

/// GradCAM of `image` (`[3, S, S]` or `[1, 3, S, S]`) for the text embedding
/// `text_emb` (`[D]`) at hidden-state index `layer` (default: [`default_layer`]).
pub fn gradcam(
    enc: &DualEncoder,
    image: &Tensor,
    text_emb: &Tensor,
    layer: Option<usize>,
) -> Result<GradCamOutput> {
    let image = if image.rank() == 3 {
        image.unsqueeze(0)?
    } else {
        image.clone()
    };
    if image.dim(0)? != 1 {
        bail!(
            "GradCAM takes one image at a time, got a batch of {}",
            image.dim(0)?
        );
    }
    let layers = enc.vision.blocks.len();
    let layer = layer.unwrap_or_else(|| default_layer(enc));
    if layer > layers {
        bail!("GradCAM layer {layer} is past the image tower's {layers} blocks");
    }
    // Forward up to `layer` without gradients, then from a leaf variable.
    let emb = enc.vision.embed(&enc.vision.patch_embed(&image)?, false)?;
    let h = if layer == 0 {
        emb
    } else {
        let mut cur = emb;
        for block in enc.vision.blocks.iter().take(layer) {
            cur = block.forward(&cur, None, false, false)?.0;
        }
        cur
    };
    let act = Var::from_tensor(&h.detach())?;
    let img_emb = enc
        .image_embedding_from_layer(act.as_tensor(), layer, true)?
        .squeeze(0)?;
    let text_emb = text_emb.flatten_all()?.to_dtype(img_emb.dtype())?;
    let cos = cosine(&img_emb, &text_emb)?;
    let grads = cos.backward()?;
    let grad = grads
        .get(act.as_tensor())
        .context("GradCAM: no gradient reached the chosen layer")?
        .squeeze(0)?;
    let a = act.as_tensor().squeeze(0)?;
    let n = a.dim(0)? - 1;
    let cam_t = (grad.narrow(0, 1, n)? * a.narrow(0, 1, n)?)?
        .sum(1)?
        .relu()?;
    let cam: Vec<f32> = cam_t.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let g = enc.grid();
    Ok(GradCamOutput {
        cam,
        grid: (g, g),
        layer,
        grad,
        act: a,
        similarity: cos.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
    })
}

/// GradCAM as a heatmap source: needs the sample's image (tensor or path)
/// and a finding text.
#[derive(Clone, Debug)]
pub struct GradCamSource {
    pub encoder: Arc<DualEncoder>,
    pub layer: Option<usize>,
}

impl HeatmapSource for GradCamSource {
    fn name(&self) -> &str {
        "gradcam"
    }

    fn heatmap(&self, sample: &SampleView) -> Result<Heatmap> {
        let id = sample.id;
        let enc = &self.encoder;
        let text = sample
            .text
            .with_context(|| format!("sample {id}: GradCAM needs a finding text"))?;
        let image = match (sample.image, sample.image_path) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => enc.load_image(p).with_context(|| format!("sample {id}"))?,
            (None, None) => bail!("sample {id}: GradCAM needs the image"),
        };
        let t = enc.embed_texts(&[text])?.squeeze(0)?;
        let out = gradcam(enc, &image, &t, self.layer).with_context(|| format!("sample {id}"))?;
        let s = enc.image_size();
        let (gh, gw) = out.grid;
        let up = resize_grid(&out.cam, gh, gw, s, s);
        Heatmap::new(s, s, up.into_iter().map(|v| v.max(0.0)).collect())
            .with_context(|| format!("sample {id}: GradCAM heatmap"))
    }
}
