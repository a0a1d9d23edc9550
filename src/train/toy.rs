//! A toy policy for tests and examples of the trainer: a log-linear bigram
//! language model over hashed words, conditioned on a bag of the prompt's
//! words and the image's file name. Its frozen base weights play the
//! reference model; two trainable "adapter" matrices are added to them when
//! `adapters` is on, as LoRA is added to a frozen model. Not a VLM.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;

use super::{Nll, PreferencePolicy, SeqItem, SftPolicy};
use crate::util::seed::rng_for;

/// Token id of the start of the response.
pub const BOS: u32 = 0;
/// Token id of the end of the response (scored, as EOS is in the real model).
pub const EOS: u32 = 1;

/// A standard normal draw (Box-Muller; `rand_distr` is not a dependency).
fn normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The toy model.
pub struct ToyPolicy {
    vocab: usize,
    base_bigram: Tensor,
    base_prompt: Tensor,
    bigram: Var,
    prompt: Var,
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl ToyPolicy {
    /// A toy with `vocab` ids (≥ 3), base weights N(0, 0.5²) from `seed`, and
    /// adapters drawn N(0, adapter_scale²) (0: start at the reference).
    pub fn new(vocab: usize, seed: u64, adapter_scale: f64, dtype: DType) -> Result<Self> {
        ensure!(vocab >= 3, "the toy vocabulary needs at least 3 ids");
        let dev = Device::Cpu;
        let mut rng = rng_for(seed, "toy-policy");
        let mut draw = |scale: f64| -> Result<Tensor> {
            let v: Vec<f64> = (0..vocab * vocab)
                .map(|_| scale * normal(&mut rng))
                .collect();
            Ok(Tensor::from_vec(v, (vocab, vocab), &dev)?.to_dtype(dtype)?)
        };
        let base_bigram = draw(0.5)?;
        let base_prompt = draw(0.5)?;
        let bigram = Var::from_tensor(&draw(adapter_scale)?)?;
        let prompt = Var::from_tensor(&draw(adapter_scale)?)?;
        Ok(Self {
            vocab,
            base_bigram,
            base_prompt,
            bigram,
            prompt,
        })
    }

    /// The id of a word.
    pub fn token(&self, word: &str) -> u32 {
        2 + (fnv(&word.to_lowercase()) % (self.vocab as u64 - 2)) as u32
    }

    /// The response's token ids followed by EOS.
    pub fn response_ids(&self, response: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = response.split_whitespace().map(|w| self.token(w)).collect();
        ids.push(EOS);
        ids
    }

    fn context(&self, item: &SeqItem) -> Result<Tensor> {
        let mut bag = vec![0f64; self.vocab];
        let mut words: Vec<String> = item.prompt.split_whitespace().map(str::to_string).collect();
        if let Some(img) = &item.image {
            let name = img.file_name().map(|s| s.to_string_lossy().to_string());
            words.push(format!("img:{}", name.unwrap_or_default()));
        }
        let n = words.len().max(1) as f64;
        for w in &words {
            bag[self.token(w) as usize] += 1.0 / n;
        }
        Ok(Tensor::from_vec(bag, (1, self.vocab), &Device::Cpu)?
            .to_dtype(self.base_bigram.dtype())?)
    }

    /// Per-token log-probs of one item's response (EOS included), `[T]`.
    pub fn token_logps(&self, item: &SeqItem, adapters: bool) -> Result<Tensor> {
        let targets = self.response_ids(&item.response);
        let mut prev = vec![BOS];
        prev.extend_from_slice(&targets[..targets.len() - 1]);
        let t = targets.len();
        let dev = Device::Cpu;
        let (w, p) = if adapters {
            (
                (&self.base_bigram + self.bigram.as_tensor())?,
                (&self.base_prompt + self.prompt.as_tensor())?,
            )
        } else {
            (self.base_bigram.clone(), self.base_prompt.clone())
        };
        let prev = Tensor::from_vec(prev, t, &dev)?;
        let tgt = Tensor::from_vec(targets, (t, 1), &dev)?;
        let ctx = self.context(item)?.matmul(&p)?; // [1, V]
        let logits = w.index_select(&prev, 0)?.broadcast_add(&ctx)?; // [T, V]
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        Ok(lsm.gather(&tgt, 1)?.squeeze(1)?)
    }
}

impl PreferencePolicy for ToyPolicy {
    fn logps(&self, items: &[SeqItem], adapters: bool) -> Result<Tensor> {
        let per: Vec<Tensor> = items
            .iter()
            .map(|it| self.token_logps(it, adapters)?.sum(0).map_err(Into::into))
            .collect::<Result<_>>()?;
        Ok(Tensor::stack(&per, 0)?)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            ("adapter.bigram".into(), self.bigram.clone()),
            ("adapter.prompt".into(), self.prompt.clone()),
        ]
    }
}

impl SftPolicy for ToyPolicy {
    fn nll(&self, items: &[SeqItem]) -> Result<Nll> {
        let mut sum: Option<Tensor> = None;
        let mut tokens = 0;
        for it in items {
            let lp = self.token_logps(it, true)?;
            tokens += lp.dims1()?;
            let s = lp.sum_all()?.neg()?;
            sum = Some(match sum {
                None => s,
                Some(a) => (a + s)?,
            });
        }
        let sum = match sum {
            Some(s) => s,
            None => Tensor::zeros((), self.base_bigram.dtype(), &Device::Cpu)?,
        };
        Ok(Nll { sum, tokens })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        <Self as PreferencePolicy>::trainable(self)
    }
}
