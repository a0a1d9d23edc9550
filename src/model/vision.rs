//! The CLIP vision tower (pre-LN encoder with `pre_layrnorm`) and the
//! multimodal projector of LLaVA.
//!
//! The patch embedding (a stride-p, kernel-p convolution without bias) is
//! computed as one matmul over unfolded patches, row-major over the grid.

use candle_core::{Result as CResult, Tensor};

use super::config::{ProjectorKind, VisionAct, VisionConfig};
use super::nn::{layer_norm, softmax_last, Fwd, LoraLinear};

#[derive(Clone, Debug)]
pub struct ClipLayer {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub out_proj: LoraLinear,
    pub layer_norm1: (Tensor, Tensor),
    pub layer_norm2: (Tensor, Tensor),
    pub fc1: LoraLinear,
    pub fc2: LoraLinear,
}

#[derive(Clone, Debug)]
pub struct ClipVision {
    pub cfg: VisionConfig,
    pub class_embedding: Tensor,
    /// `[D, C, p, p]`.
    pub patch_embedding: Tensor,
    pub position_embedding: Tensor,
    pub pre_layrnorm: (Tensor, Tensor),
    pub layers: Vec<ClipLayer>,
}

fn quick_gelu(x: &Tensor) -> CResult<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

impl ClipLayer {
    fn forward(&self, x: &Tensor, cfg: &VisionConfig, fwd: &Fwd) -> CResult<Tensor> {
        let eps = cfg.layer_norm_eps;
        let (b, t, d) = x.dims3()?;
        let nh = cfg.num_attention_heads;
        let hd = d / nh;
        let h = layer_norm(x, &self.layer_norm1.0, &self.layer_norm1.1, eps)?;
        let split = |t_: Tensor| -> CResult<Tensor> {
            t_.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.q_proj.forward(&h, fwd)?)?;
        let k = split(self.k_proj.forward(&h, fwd)?)?;
        let v = split(self.v_proj.forward(&h, fwd)?)?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = softmax_last(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.out_proj.forward(&y, fwd)?)?;
        let h = layer_norm(&x, &self.layer_norm2.0, &self.layer_norm2.1, eps)?;
        let h = self.fc1.forward(&h, fwd)?;
        let h = match cfg.hidden_act {
            VisionAct::QuickGelu => quick_gelu(&h)?,
            VisionAct::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h, fwd)?
    }
}

impl ClipVision {
    /// Embeddings after `pre_layrnorm`, `[B, 1 + N, D]`, of pixels `[B, C, S, S]`.
    pub fn embeddings(&self, pixels: &Tensor) -> CResult<Tensor> {
        let (b, c, hh, ww) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let d = self.cfg.hidden_size;
        if hh != self.cfg.image_size || ww != self.cfg.image_size || c != self.cfg.num_channels {
            candle_core::bail!(
                "pixel values have shape {:?}, the vision tower expects [_, {}, {}, {}]",
                pixels.dims(),
                self.cfg.num_channels,
                self.cfg.image_size,
                self.cfg.image_size
            );
        }
        let g = hh / p;
        // [B, C, g, p, g, p] -> [B, g, g, C, p, p] -> [B*g*g, C*p*p]
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let w = self.patch_embedding.reshape((d, c * p * p))?;
        let pe = patches.matmul(&w.t()?)?.reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?
            .contiguous()?;
        let emb = Tensor::cat(&[&cls, &pe], 1)?;
        let emb = emb.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        layer_norm(
            &emb,
            &self.pre_layrnorm.0,
            &self.pre_layrnorm.1,
            self.cfg.layer_norm_eps,
        )
    }

    /// Hidden states `[embeddings, layer 1, ..., layer n]` for the first
    /// `n` layers (`n` is capped at the number of layers).
    pub fn hidden_states(&self, pixels: &Tensor, n: usize, fwd: &Fwd) -> CResult<Vec<Tensor>> {
        let mut cur = self.embeddings(pixels)?;
        let mut hs = vec![cur.clone()];
        for l in self.layers.iter().take(n) {
            cur = l.forward(&cur, &self.cfg, fwd)?;
            hs.push(cur.clone());
        }
        Ok(hs)
    }

    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            v.push(&mut l.q_proj);
            v.push(&mut l.k_proj);
            v.push(&mut l.v_proj);
            v.push(&mut l.out_proj);
            v.push(&mut l.fc1);
            v.push(&mut l.fc2);
        }
        v
    }

    pub fn linears(&self) -> Vec<&LoraLinear> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push(&l.q_proj);
            v.push(&l.k_proj);
            v.push(&l.v_proj);
            v.push(&l.out_proj);
            v.push(&l.fc1);
            v.push(&l.fc2);
        }
        v
    }
}

/// The multimodal projector.
#[derive(Clone, Debug)]
pub struct Projector {
    pub kind: ProjectorKind,
    pub linear_1: LoraLinear,
    pub linear_2: Option<LoraLinear>,
}

impl Projector {
    pub fn forward(&self, x: &Tensor, fwd: &Fwd) -> CResult<Tensor> {
        let h = self.linear_1.forward(x, fwd)?;
        match (&self.kind, &self.linear_2) {
            (ProjectorKind::Mlp2xGelu, Some(l2)) => l2.forward(&h.gelu_erf()?, fwd),
            _ => Ok(h),
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut v = vec![&mut self.linear_1];
        if let Some(l) = &mut self.linear_2 {
            v.push(l);
        }
        v
    }

    pub fn linears(&self) -> Vec<&LoraLinear> {
        let mut v = vec![&self.linear_1];
        if let Some(l) = &self.linear_2 {
            v.push(l);
        }
        v
    }
}
