//! ROUGE-L exactly as pycocoevalcap 1.2's `Rouge` (`rouge.py`): tokens are
//! `str.split(" ")` (so doubled spaces give empty tokens that count), LCS-based
//! precision and recall, F-measure with beta = 1.2; the corpus value is the
//! mean of the per-sample scores.

/// pycocoevalcap's beta.
pub const BETA: f64 = 1.2;

/// Length of the longest common subsequence of two token slices.
pub fn lcs(a: &[&str], b: &[&str]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of one hypothesis against one reference.
pub fn rouge_l(hyp: &str, reference: &str) -> f64 {
    let c: Vec<&str> = hyp.split(' ').collect();
    let r: Vec<&str> = reference.split(' ').collect();
    let l = lcs(&r, &c) as f64;
    let prec = l / c.len() as f64;
    let rec = l / r.len() as f64;
    if prec != 0.0 && rec != 0.0 {
        let b2 = BETA.powi(2);
        ((1.0 + b2) * prec * rec) / (rec + b2 * prec)
    } else {
        0.0
    }
}

/// Mean ROUGE-L over `(hypothesis, reference)` pairs and the per-pair scores
/// (0 for an empty corpus).
pub fn rouge(pairs: &[(&str, &str)]) -> (f64, Vec<f64>) {
    let per: Vec<f64> = pairs.iter().map(|(h, r)| rouge_l(h, r)).collect();
    let mean = if per.is_empty() {
        0.0
    } else {
        per.iter().sum::<f64>() / per.len() as f64
    };
    (mean, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_basic() {
        assert_eq!(lcs(&["a", "b", "c"], &["a", "c"]), 2);
        assert_eq!(rouge_l("", "a"), 0.0);
        assert!((rouge_l("a b", "a b") - 1.0).abs() < 1e-12);
    }
}
