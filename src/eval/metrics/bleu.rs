//! Corpus and sentence BLEU-1..4 exactly as pycocoevalcap 1.2's `Bleu(4)`
//! (`bleu_scorer.py`, `option="closest"`, one reference per row, tokens =
//! `str.split()`).

// Index loops mirror the reference implementations line by line.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

use super::clean::py_split;

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// BLEU sufficient statistics of one hypothesis/reference pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub testlen: usize,
    /// Reference length in tokens.
    pub reflen: usize,
    /// Hypothesis n-gram counts `max(0, len - k + 1)`, k = 1..4.
    pub guess: [usize; 4],
    /// Clipped n-gram matches, k = 1..4.
    pub correct: [usize; 4],
}

impl BleuStats {
    /// Statistics of `hyp` against `reference` (both split on whitespace).
    pub fn new(hyp: &str, reference: &str) -> BleuStats {
        let h: Vec<&str> = py_split(hyp).collect();
        let r: Vec<&str> = py_split(reference).collect();
        let mut s = BleuStats {
            testlen: h.len(),
            reflen: r.len(),
            ..Default::default()
        };
        for k in 1..=4 {
            s.guess[k - 1] = (h.len() + 1).saturating_sub(k);
            if h.len() < k {
                continue;
            }
            let mut rc: HashMap<&[&str], usize> = HashMap::new();
            if r.len() >= k {
                for g in r.windows(k) {
                    *rc.entry(g).or_default() += 1;
                }
            }
            let mut hc: HashMap<&[&str], usize> = HashMap::new();
            for g in h.windows(k) {
                *hc.entry(g).or_default() += 1;
            }
            s.correct[k - 1] = hc
                .iter()
                .map(|(g, c)| (*c).min(rc.get(g).copied().unwrap_or(0)))
                .sum();
        }
        s
    }

    /// Add another pair's statistics (corpus totals).
    pub fn add(&mut self, o: &BleuStats) {
        self.testlen += o.testlen;
        self.reflen += o.reflen;
        for k in 0..4 {
            self.guess[k] += o.guess[k];
            self.correct[k] += o.correct[k];
        }
    }

    /// BLEU-1..4 from these statistics: pycocoevalcap's running product of
    /// `(correct + 1e-15) / (guess + 1e-9)`, the n-th root, and the brevity
    /// penalty `exp(1 - 1/ratio)` when `ratio = (testlen + 1e-15) / (reflen + 1e-9) < 1`.
    pub fn scores(&self) -> [f64; 4] {
        let mut out = [0.0; 4];
        let mut bleu = 1.0f64;
        for k in 0..4 {
            bleu *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            out[k] = bleu.powf(1.0 / (k as f64 + 1.0));
        }
        let ratio = (self.testlen as f64 + TINY) / (self.reflen as f64 + SMALL);
        if ratio < 1.0 {
            let bp = (1.0 - 1.0 / ratio).exp();
            for v in out.iter_mut() {
                *v *= bp;
            }
        }
        out
    }
}

/// Corpus BLEU-1..4 and per-pair sentence BLEU-1..4 over `(hypothesis, reference)` pairs.
pub fn bleu(pairs: &[(&str, &str)]) -> ([f64; 4], Vec<[f64; 4]>) {
    let stats: Vec<BleuStats> = pairs.iter().map(|(h, r)| BleuStats::new(h, r)).collect();
    let mut total = BleuStats::default();
    for s in &stats {
        total.add(s);
    }
    (total.scores(), stats.iter().map(|s| s.scores()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_near_one() {
        let s = BleuStats::new("a b c d e", "a b c d e").scores();
        for v in s {
            assert!((v - 1.0).abs() < 1e-8);
        }
    }

    #[test]
    fn empty_hypothesis_is_zero() {
        let s = BleuStats::new("", "a b").scores();
        assert_eq!(s, [0.0; 4]);
    }
}
