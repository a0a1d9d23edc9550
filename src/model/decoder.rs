//! The Llama / Mistral decoder, built for training: grouped-query attention
//! with RoPE (HF `rotate_half` form, configured theta), RMSNorm, SwiGLU MLP,
//! optional sliding window, logits at every position and a padding mask.
//! Every op on the training path is differentiable (`docs/design.md`,
//! "Differentiable training path"); on
//! the CPU the norms, RoPE, softmax and SwiGLU product are the fused kernels
//! of [`super::fused`], elsewhere their composed forms.
//! Generation uses the same layers with a [`KvCache`].

use candle_core::{DType, Device, Result as CResult, Tensor};

use super::config::TextConfig;
use super::fused::{attention_softmax, rms_norm, rope, silu_mul};
use super::nn::{mask_value, Fwd, LoraLinear};

/// Self-attention of one decoder layer.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
}

/// The decoder: embeddings, layers, final norm and LM head.
#[derive(Clone, Debug)]
pub struct Decoder {
    pub cfg: TextConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    pub lm_head: LoraLinear,
}

/// Cached keys and values per layer (`[B, n_kv, T, D]`, before `repeat_kv`).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            len: 0,
        }
    }
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// RoPE tables `cos`, `sin` of shape `[len, head_dim / 2]` for positions
/// `offset..offset+len`, `inv_freq_i = theta^(-2i/d)`.
pub fn rope_tables(
    theta: f64,
    head_dim: usize,
    offset: usize,
    len: usize,
    dtype: DType,
    dev: &Device,
) -> CResult<(Tensor, Tensor)> {
    let half = head_dim / 2;
    // inv_freq in f32 as transformers computes it, the angles in f64.
    let inv: Vec<f64> = (0..half)
        .map(|i| {
            if dtype == DType::F64 {
                1.0 / theta.powf((2 * i) as f64 / head_dim as f64)
            } else {
                (1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)) as f64
            }
        })
        .collect();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in offset..offset + len {
        for f in &inv {
            let a = if dtype == DType::F64 {
                p as f64 * f
            } else {
                (p as f32 * *f as f32) as f64
            };
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (len, half), dev)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, half), dev)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// `[B, n_kv, T, D] -> [B, n_kv * n_rep, T, D]`, each KV head serving `n_rep`
/// consecutive query heads.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> CResult<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))
}

/// The additive attention mask `[B, 1, T, offset + T]`: causal (query at
/// absolute position `offset + i` sees keys `j <= offset + i`), sliding window
/// (`offset + i - j < window`), and key padding (`key_valid[b][j]`).
/// Returns `None` when nothing is masked.
pub fn attention_mask(
    key_valid: Option<&[Vec<bool>]>,
    batch: usize,
    t: usize,
    offset: usize,
    window: Option<usize>,
    dtype: DType,
    dev: &Device,
) -> CResult<Option<Tensor>> {
    let lk = offset + t;
    let neg = mask_value(dtype);
    let mut any = false;
    let per_batch = key_valid.is_some();
    let nb = if per_batch { batch } else { 1 };
    let mut m = vec![0f64; nb * t * lk];
    for b in 0..nb {
        for i in 0..t {
            let qi = offset + i;
            for j in 0..lk {
                let mut ok = j <= qi;
                if let Some(w) = window {
                    ok &= qi - j.min(qi) < w;
                }
                if let Some(kv) = key_valid {
                    ok &= kv.get(b).and_then(|r| r.get(j)).copied().unwrap_or(false);
                }
                if !ok {
                    m[(b * t + i) * lk + j] = neg;
                    any = true;
                }
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(
        Tensor::from_vec(m, (nb, 1, t, lk), dev)?.to_dtype(dtype)?,
    ))
}

impl Attention {
    /// `x`: `[B, T, H]`; `cos`/`sin`: `[T, D/2]`; `mask`: `[B|1, 1, T, Tk]`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        fwd: &Fwd,
    ) -> CResult<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x, fwd)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k_proj
            .forward(x, fwd)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .v_proj
            .forward(x, fwd)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope(&q, cos, sin)?;
        let mut k = rope(&k, cos, sin)?;
        let mut v = v;
        if let Some(c) = cache {
            if let Some((pk, pv)) = c.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *c = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(&k, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = attention_softmax(&q.matmul(&k.t()?)?, mask, scale)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.o_proj.forward(&y, fwd)
    }
}

impl Mlp {
    pub fn forward(&self, x: &Tensor, fwd: &Fwd) -> CResult<Tensor> {
        let g = self.gate_proj.forward(x, fwd)?;
        let u = self.up_proj.forward(x, fwd)?;
        self.down_proj.forward(&silu_mul(&g, &u)?, fwd)
    }
}

impl Decoder {
    /// Token embeddings `[B, L, H]` of `ids` (`[B, L]`, u32).
    pub fn embed(&self, ids: &Tensor) -> CResult<Tensor> {
        let (b, l) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        self.embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, l, self.cfg.hidden_size))
    }

    fn run_layers(
        &self,
        x: &Tensor,
        offset: usize,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        fwd: &Fwd,
    ) -> CResult<Tensor> {
        let (_, t, _) = x.dims3()?;
        let (cos, sin) = rope_tables(
            self.cfg.rope_theta,
            self.cfg.head_dim,
            offset,
            t,
            x.dtype(),
            x.device(),
        )?;
        let eps = self.cfg.rms_norm_eps;
        let mut h = x.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let c = match cache.as_deref_mut() {
                Some(kc) => kc.layers.get_mut(li),
                None => None,
            };
            let a = layer.self_attn.forward(
                &rms_norm(&h, &layer.input_layernorm, eps)?,
                &cos,
                &sin,
                mask,
                c,
                fwd,
            )?;
            h = (h + a)?;
            let m = layer
                .mlp
                .forward(&rms_norm(&h, &layer.post_attention_layernorm, eps)?, fwd)?;
            h = (h + m)?;
        }
        if let Some(kc) = cache {
            kc.len += t;
        }
        rms_norm(&h, &self.norm, eps)
    }

    /// Training / scoring forward over whole right-padded sequences: `x` is
    /// `[B, L, H]` input embeddings, `key_valid[b][j]` is false on padding.
    /// Returns the final-norm hidden states `[B, L, H]` (no cache).
    pub fn forward_hidden(
        &self,
        x: &Tensor,
        key_valid: Option<&[Vec<bool>]>,
        fwd: &Fwd,
    ) -> CResult<Tensor> {
        let (b, t, _) = x.dims3()?;
        let mask = attention_mask(
            key_valid,
            b,
            t,
            0,
            self.cfg.sliding_window,
            x.dtype(),
            x.device(),
        )?;
        self.run_layers(x, 0, mask.as_ref(), None, fwd)
    }

    /// LM-head logits `[B, L, V]` of final hidden states.
    pub fn logits(&self, hidden: &Tensor, fwd: &Fwd) -> CResult<Tensor> {
        self.lm_head.forward(hidden, fwd)
    }

    /// Incremental forward for generation (batch 1, no padding): appends
    /// `x` (`[1, T, H]`) after the cached positions and returns the hidden
    /// states of the new positions.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache, fwd: &Fwd) -> CResult<Tensor> {
        let (b, t, _) = x.dims3()?;
        let offset = cache.len;
        let mask = attention_mask(
            None,
            b,
            t,
            offset,
            self.cfg.sliding_window,
            x.dtype(),
            x.device(),
        )?;
        self.run_layers(x, offset, mask.as_ref(), Some(cache), fwd)
    }

    /// Every linear layer (for attaching LoRA adapters).
    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            v.push(&mut l.self_attn.q_proj);
            v.push(&mut l.self_attn.k_proj);
            v.push(&mut l.self_attn.v_proj);
            v.push(&mut l.self_attn.o_proj);
            v.push(&mut l.mlp.gate_proj);
            v.push(&mut l.mlp.up_proj);
            v.push(&mut l.mlp.down_proj);
        }
        v.push(&mut self.lm_head);
        v
    }

    pub fn linears(&self) -> Vec<&LoraLinear> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push(&l.self_attn.q_proj);
            v.push(&l.self_attn.k_proj);
            v.push(&l.self_attn.v_proj);
            v.push(&l.self_attn.o_proj);
            v.push(&l.mlp.gate_proj);
            v.push(&l.mlp.up_proj);
            v.push(&l.mlp.down_proj);
        }
        v.push(&self.lm_head);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_rows(m: &Tensor) -> Vec<Vec<bool>> {
        let v: Vec<Vec<f64>> = m
            .to_dtype(DType::F64)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        v.into_iter()
            .map(|r| r.into_iter().map(|x| x == 0.0).collect())
            .collect()
    }

    #[test]
    fn masks_are_causal_windowed_and_padded() {
        let dev = Device::Cpu;
        let m = attention_mask(None, 1, 4, 0, None, DType::F32, &dev)
            .unwrap()
            .unwrap();
        let rows = mask_rows(&m);
        for (i, r) in rows.iter().enumerate() {
            for (j, &ok) in r.iter().enumerate() {
                assert_eq!(ok, j <= i, "causal ({i},{j})");
            }
        }
        // Sliding window 2: query i sees keys i-1 and i.
        let m = attention_mask(None, 1, 4, 0, Some(2), DType::F32, &dev)
            .unwrap()
            .unwrap();
        for (i, r) in mask_rows(&m).iter().enumerate() {
            for (j, &ok) in r.iter().enumerate() {
                assert_eq!(ok, j <= i && i - j < 2, "window ({i},{j})");
            }
        }
        // Incremental step: one query at position 3 over 4 keys, nothing masked.
        assert!(attention_mask(None, 1, 1, 3, None, DType::F32, &dev)
            .unwrap()
            .is_none());
        // Key padding: the second sequence has 2 real tokens.
        let kv = vec![vec![true; 3], vec![true, true, false]];
        let m = attention_mask(Some(&kv), 2, 3, 0, None, DType::F32, &dev)
            .unwrap()
            .unwrap();
        let second = mask_rows(&m.narrow(0, 1, 1).unwrap());
        assert_eq!(second[2], vec![true, true, false]);
    }

    #[test]
    fn rope_tables_follow_theta() {
        let (c, s) = rope_tables(10000.0, 4, 2, 1, DType::F64, &Device::Cpu).unwrap();
        let c: Vec<f64> = c.flatten_all().unwrap().to_vec1().unwrap();
        let s: Vec<f64> = s.flatten_all().unwrap().to_vec1().unwrap();
        // position 2, inv_freq = [1, 10000^(-1/2)]
        assert!((c[0] - 2f64.cos()).abs() < 1e-12);
        assert!((s[1] - (2.0 / 100.0f64).sin()).abs() < 1e-12);
    }
}
