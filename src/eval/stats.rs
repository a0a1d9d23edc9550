//! Statistics for comparing methods on the same test items: percentile
//! bootstrap confidence intervals (resampling studies), the paired bootstrap
//! of a difference, the paired sign-flip (randomization) test, the exact
//! McNemar test, mean ± sd across seeds, and the
//! sample sizes needed to detect a given difference in accuracy.
//! `docs/metrics.md` states every definition; `docs/experiments.md` the power
//! calculation and its assumptions.
//!
//! Every resampling draws from a [`rand::Rng`] the caller seeds from the
//! configuration ([`crate::util::seed::rng_for`]), so intervals and p-values
//! are reproducible.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A two-sided confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// The `q`-quantile (`0 <= q <= 1`) of ascending `sorted` values, linearly
/// interpolated between order statistics (Hyndman and Fan type 7, the
/// default of R and numpy). `None` for no values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// One bootstrap resample of `n` items: `n` indices drawn uniformly with
/// replacement.
pub fn resample<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.random_range(0..n)).collect()
}

/// The percentile interval at `confidence` (e.g. 0.95) of bootstrap
/// replicates: the (1 − c)/2 and (1 + c)/2 quantiles. Replicates that are
/// `None` (the statistic undefined on that resample, e.g. a zero
/// denominator) are left out; `None` when none is defined.
pub fn percentile_interval(replicates: &[Option<f64>], confidence: f64) -> Option<Interval> {
    let mut v: Vec<f64> = replicates.iter().flatten().copied().collect();
    v.sort_by(f64::total_cmp);
    let a = (1.0 - confidence) / 2.0;
    Some(Interval {
        lo: quantile(&v, a)?,
        hi: quantile(&v, 1.0 - a)?,
    })
}

/// Percentile bootstrap interval of a statistic of `n` items (studies):
/// `reps` resamples of the item indices, `stat` evaluated on each (it gets
/// the resampled indices and may return `None` where it is undefined).
pub fn bootstrap_ci<R, F>(
    rng: &mut R,
    n: usize,
    reps: usize,
    confidence: f64,
    mut stat: F,
) -> Option<Interval>
where
    R: Rng + ?Sized,
    F: FnMut(&[usize]) -> Option<f64>,
{
    if n == 0 {
        return None;
    }
    let reps: Vec<Option<f64>> = (0..reps).map(|_| stat(&resample(rng, n))).collect();
    percentile_interval(&reps, confidence)
}

/// The paired bootstrap of a difference between two methods on the same items.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedBootstrap {
    /// The difference on the full sample (A − B).
    pub diff: f64,
    /// Percentile interval of the difference.
    pub interval: Option<Interval>,
    /// Two-sided p-value for "no difference": `min(1, (2 · min(k₋, k₊) + 1) /
    /// (B + 1))` where `k₋` (`k₊`) counts the defined replicates with a
    /// difference ≤ 0 (≥ 0), i.e. twice the smaller tail of the bootstrap
    /// distribution at zero (the interval-inversion p-value), with the +1
    /// correction so that it is never 0.
    pub p_value: f64,
    /// Resamples on which the difference was defined.
    pub reps: usize,
}

/// Paired bootstrap of `diff` over `n` items both methods answered: every
/// resample draws the same item indices for A and B, so item difficulty
/// cancels. `diff` returns A − B on a resample (`None` where undefined).
pub fn paired_bootstrap<R, F>(
    rng: &mut R,
    n: usize,
    reps: usize,
    confidence: f64,
    mut diff: F,
) -> Option<PairedBootstrap>
where
    R: Rng + ?Sized,
    F: FnMut(&[usize]) -> Option<f64>,
{
    if n == 0 {
        return None;
    }
    let all: Vec<usize> = (0..n).collect();
    let full = diff(&all)?;
    let reps: Vec<Option<f64>> = (0..reps).map(|_| diff(&resample(rng, n))).collect();
    Some(PairedBootstrap::from_replicates(full, &reps, confidence))
}

impl PairedBootstrap {
    /// Interval and p-value from the full-sample difference `diff` and its
    /// bootstrap replicates (`None`: undefined on that resample).
    pub fn from_replicates(diff: f64, replicates: &[Option<f64>], confidence: f64) -> Self {
        let defined: Vec<f64> = replicates.iter().flatten().copied().collect();
        let below = defined.iter().filter(|d| **d <= 0.0).count();
        let above = defined.iter().filter(|d| **d >= 0.0).count();
        let p = ((2 * below.min(above) + 1) as f64 / (defined.len() + 1) as f64).min(1.0);
        PairedBootstrap {
            diff,
            interval: percentile_interval(replicates, confidence),
            p_value: p,
            reps: defined.len(),
        }
    }
}

/// Sign-flip patterns for a paired randomization test on `n` items: every
/// one of the 2ⁿ patterns when 2ⁿ ≤ `reps` (exact test), else `reps` random
/// patterns (each item swapped with probability 1/2). `true` swaps the two
/// methods' outcomes on that item. Returns the patterns and whether they are
/// the exhaustive set.
pub fn sign_flip_patterns<R: Rng + ?Sized>(
    rng: &mut R,
    n: usize,
    reps: usize,
) -> (Vec<Vec<bool>>, bool) {
    if n < usize::BITS as usize - 1 && (1usize << n) <= reps {
        let all = (0..1usize << n)
            .map(|m| (0..n).map(|i| m >> i & 1 == 1).collect())
            .collect();
        (all, true)
    } else {
        let pats = (0..reps)
            .map(|_| (0..n).map(|_| rng.random::<bool>()).collect())
            .collect();
        (pats, false)
    }
}

/// Two-sided p-value of a paired randomization (sign-flip) test: the share
/// of flip patterns whose |difference| reaches the observed one. Exact
/// patterns (which include the identity): count / patterns; random ones:
/// (count + 1) / (patterns + 1). Replicates that are `None` are left out.
/// Under the null hypothesis that the two methods' outcomes on a study are
/// exchangeable this is valid for any number of studies, unlike the
/// bootstrap p-value, which is too small when there are few.
pub fn sign_flip_p(observed: f64, replicates: &[Option<f64>], exact: bool) -> f64 {
    let defined: Vec<f64> = replicates.iter().flatten().copied().collect();
    let tol = 1e-12 * observed.abs().max(1.0);
    let k = defined
        .iter()
        .filter(|d| d.abs() >= observed.abs() - tol)
        .count();
    let p = if exact {
        k as f64 / defined.len().max(1) as f64
    } else {
        (k + 1) as f64 / (defined.len() + 1) as f64
    };
    p.min(1.0)
}

/// Paired randomization test of `n` items: `diff` gets a flip pattern and
/// returns A − B with the flagged items' outcomes swapped (`None` where
/// undefined); see [`sign_flip_patterns`] and [`sign_flip_p`].
pub fn sign_flip_test<R, F>(rng: &mut R, n: usize, reps: usize, mut diff: F) -> Option<f64>
where
    R: Rng + ?Sized,
    F: FnMut(&[bool]) -> Option<f64>,
{
    let observed = diff(&vec![false; n])?;
    let (pats, exact) = sign_flip_patterns(rng, n, reps);
    let reps: Vec<Option<f64>> = pats.iter().map(|p| diff(p)).collect();
    Some(sign_flip_p(observed, &reps, exact))
}

/// The exact McNemar test of two methods' binary outcomes on the same items.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Items A got right and B wrong.
    pub a_only: u64,
    /// Items B got right and A wrong.
    pub b_only: u64,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

/// Exact McNemar test from the discordant counts: under the null each of the
/// `n = a_only + b_only` discordant items favours A with probability 1/2, so
/// p = min(1, 2 · P[Binomial(n, 1/2) ≤ min(a_only, b_only)]); p = 1 when
/// there is no discordant item.
pub fn mcnemar_exact(a_only: u64, b_only: u64) -> McNemar {
    let n = a_only + b_only;
    let k = a_only.min(b_only);
    let p = if n == 0 {
        1.0
    } else {
        (2.0 * binomial_half_cdf(k, n)).min(1.0)
    };
    McNemar {
        a_only,
        b_only,
        p_value: p,
    }
}

/// McNemar on paired binary outcomes (`true` = correct), item by item.
pub fn mcnemar_paired(a: &[bool], b: &[bool]) -> McNemar {
    let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count() as u64;
    let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count() as u64;
    mcnemar_exact(a_only, b_only)
}

/// P[Binomial(n, 1/2) ≤ k], summed in log space so that large `n` neither
/// underflows nor overflows.
pub fn binomial_half_cdf(k: u64, n: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    // ln C(n, i), built up term by term.
    let mut ln_c = 0.0f64;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_c - ln_half_n);
    }
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    (m + s.ln()).exp().min(1.0)
}

/// Mean and sample standard deviation (n − 1 denominator) of values across
/// seeds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    pub mean: f64,
    /// `None` for fewer than two values.
    pub sd: Option<f64>,
    pub n: usize,
}

impl std::fmt::Display for MeanSd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        match self.sd {
            Some(sd) => write!(f, "{:.p$} ± {:.p$}", self.mean, sd),
            None => write!(f, "{:.p$}", self.mean),
        }
    }
}

/// Mean ± sd of `values`; `None` when empty.
pub fn mean_sd(values: &[f64]) -> Option<MeanSd> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = (n > 1).then(|| {
        let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(MeanSd { mean, sd, n })
}

/// The standard normal quantile Φ⁻¹(p) for 0 < p < 1 (Acklam's rational
/// approximation, relative error below 1.2e-9). Hand-written: no crate in the lock file
/// provides the normal quantile, and a sample-size formula needs only this.
pub fn normal_quantile(p: f64) -> f64 {
    assert!(
        p > 0.0 && p < 1.0,
        "normal_quantile: p = {p} outside (0, 1)"
    );
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// Paired design (McNemar): the number of paired items needed to detect a
/// difference `delta` in accuracy between two methods answering the same
/// items, when a share `discordance` of items is answered correctly by
/// exactly one of them (Connor 1987):
///
/// n = (z₁₋α/₂ · √ψ + z₁₋β · √(ψ − δ²))² / δ², rounded up,
///
/// with ψ the discordance rate and δ the difference. `None` when the inputs
/// are impossible (δ² ≥ ψ, or ψ or δ outside (0, 1)).
pub fn mcnemar_sample_size(delta: f64, discordance: f64, alpha: f64, power: f64) -> Option<usize> {
    let d = delta.abs();
    if !(d > 0.0 && d < 1.0 && discordance > 0.0 && discordance <= 1.0) {
        return None;
    }
    if d * d >= discordance || d > discordance {
        return None;
    }
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    let n = (za * discordance.sqrt() + zb * (discordance - d * d).sqrt()).powi(2) / (d * d);
    Some(n.ceil() as usize)
}

/// Unpaired design: items per group to detect accuracies `p1` vs `p2` with a
/// two-sided two-proportion z-test (Fleiss, pooled variance under the null):
///
/// n = (z₁₋α/₂ · √(2 p̄ q̄) + z₁₋β · √(p₁q₁ + p₂q₂))² / (p₁ − p₂)², rounded up,
///
/// with p̄ = (p₁ + p₂)/2 and q = 1 − p.
pub fn two_proportion_sample_size(p1: f64, p2: f64, alpha: f64, power: f64) -> Option<usize> {
    let ok = |p: f64| p > 0.0 && p < 1.0;
    if !(ok(p1) && ok(p2)) || p1 == p2 {
        return None;
    }
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    let pb = (p1 + p2) / 2.0;
    let num = za * (2.0 * pb * (1.0 - pb)).sqrt() + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    Some((num.powi(2) / (p1 - p2).powi(2)).ceil() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::seed::rng_for;

    // Reference values from scipy 1.17.1:
    //   scipy.stats.binomtest(k, n, 0.5).pvalue       (exact McNemar = binomial test)
    //   scipy.stats.binom.cdf(k, n, 0.5)
    //   scipy.stats.norm.ppf(p)
    //   numpy.quantile(x, q)                           (type 7)
    #[test]
    fn mcnemar_matches_scipy_binomtest() {
        let cases: [(u64, u64, f64); 6] = [
            (0, 0, 1.0),
            (1, 5, 0.21875),
            (2, 10, 0.03857421875),
            (7, 7, 1.0),
            (3, 12, 0.03515625),
            (30, 50, 0.03299261842647619),
        ];
        for (b, c, want) in cases {
            let got = mcnemar_exact(b, c).p_value;
            assert!((got - want).abs() < 1e-12, "({b},{c}): {got} vs {want}");
            assert_eq!(mcnemar_exact(c, b).p_value, got, "symmetric");
        }
        let m = mcnemar_paired(
            &[true, true, false, true, false, true],
            &[false, true, true, false, false, false],
        );
        assert_eq!((m.a_only, m.b_only), (3, 1));
        assert!((m.p_value - 0.625).abs() < 1e-12);
    }

    #[test]
    fn binomial_cdf_matches_scipy_for_large_n() {
        // scipy.stats.binom.cdf(450, 1000, 0.5), binom.cdf(900, 2000, 0.5)
        // and binomtest(900, 2000).pvalue: 0.5**2000 underflows f64.
        let got = binomial_half_cdf(450, 1000);
        assert!((got / 0.0008652680424881513 - 1.0).abs() < 1e-10, "{got}");
        let got = binomial_half_cdf(900, 2000);
        assert!((got / 4.228544767751905e-06 - 1.0).abs() < 1e-10, "{got}");
        let p = mcnemar_exact(900, 1100).p_value;
        assert!((p / 8.45708953550381e-06 - 1.0).abs() < 1e-10, "{p}");
        assert_eq!(binomial_half_cdf(10, 10), 1.0);
    }

    #[test]
    fn normal_quantile_matches_scipy() {
        for (p, want) in [
            (0.975, 1.959963984540054),
            (0.8, 0.8416212335729143),
            (0.5, 0.0),
            (0.01, -2.3263478740408408),
            (0.999, 3.090232306167813),
        ] {
            let got = normal_quantile(p);
            assert!((got - want).abs() < 1e-8, "{p}: {got} vs {want}");
        }
    }

    #[test]
    fn quantile_is_numpy_type_7() {
        let x = [1.0, 2.0, 4.0, 8.0, 16.0];
        assert_eq!(quantile(&x, 0.0), Some(1.0));
        assert_eq!(quantile(&x, 1.0), Some(16.0));
        // numpy.quantile([1,2,4,8,16], 0.3) = 2.4; 0.975 = 15.2
        assert!((quantile(&x, 0.3).unwrap() - 2.4).abs() < 1e-12);
        assert!((quantile(&x, 0.975).unwrap() - 15.2).abs() < 1e-12);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn sign_flip_test_is_exact_for_few_items() {
        let mut rng = rng_for(3, "flip");
        // Differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach
        // |sum| = 6, so p = 2/8 (worked by hand).
        let d = [1.0, 2.0, 3.0];
        let sum = |f: &[bool]| Some(d.iter().zip(f).map(|(x, s)| if *s { -x } else { *x }).sum());
        assert_eq!(sign_flip_test(&mut rng, 3, 2000, sum), Some(0.25));
        // One item: a difference can never be told from a swap.
        assert_eq!(
            sign_flip_test(&mut rng, 1, 2000, |f| Some(if f[0] { -1.0 } else { 1.0 })),
            Some(1.0)
        );
        // Many items: Monte Carlo; 40 positive differences of 1 give p = 1/2001.
        let p = sign_flip_test(&mut rng, 40, 2000, |f| {
            Some(f.iter().map(|s| if *s { -1.0 } else { 1.0 }).sum())
        })
        .unwrap();
        assert!((p - 1.0 / 2001.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn mean_sd_uses_the_sample_sd() {
        let m = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m.mean, 5.0);
        // numpy.std(x, ddof=1) = 2.138089935299395
        assert!((m.sd.unwrap() - 2.138089935299395).abs() < 1e-12);
        assert_eq!(format!("{m:.1}"), "5.0 ± 2.1");
        assert_eq!(mean_sd(&[3.0]).unwrap().sd, None);
        assert!(mean_sd(&[]).is_none());
    }

    #[test]
    fn sample_sizes_follow_the_formulas() {
        // The formulas evaluated with scipy's norm.ppf (Python, by hand):
        // (1.959964·√0.1 + 0.841621·√(0.1 − 0.0009))² / 0.0009 = 869.74
        assert_eq!(mcnemar_sample_size(0.03, 0.10, 0.05, 0.8), Some(870));
        // ψ = 0.2: (1.959964·√0.2 + 0.841621·√0.1991)² / 0.0009 = 1741.8
        assert_eq!(mcnemar_sample_size(0.03, 0.20, 0.05, 0.8), Some(1742));
        // docs/experiments.md's table: ψ = 0.05 → 433.68, ψ = 0.15 → 1305.79.
        assert_eq!(mcnemar_sample_size(0.03, 0.05, 0.05, 0.8), Some(434));
        assert_eq!(mcnemar_sample_size(0.03, 0.15, 0.05, 0.8), Some(1306));
        assert_eq!(mcnemar_sample_size(0.3, 0.05, 0.05, 0.8), None);
        // p 0.70 vs 0.73: the formula with scipy's norm.ppf gives 3553.06.
        let n = two_proportion_sample_size(0.70, 0.73, 0.05, 0.8).unwrap();
        assert_eq!(n, 3554);
        assert!(two_proportion_sample_size(0.5, 0.5, 0.05, 0.8).is_none());
    }

    #[test]
    fn bootstrap_interval_covers_the_mean_and_shrinks_with_n() {
        let ci = |n: usize| {
            let x: Vec<f64> = (0..n).map(|i| (i % 10) as f64).collect();
            let mut rng = rng_for(7, "stats-test");
            bootstrap_ci(&mut rng, n, 2000, 0.95, |idx| {
                Some(idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64)
            })
            .unwrap()
        };
        let small = ci(50);
        let large = ci(1000);
        assert!(small.lo < 4.5 && small.hi > 4.5, "{small:?}");
        assert!(large.lo < 4.5 && large.hi > 4.5, "{large:?}");
        // The standard error falls as 1/√n: width ratio about √20 ≈ 4.5.
        let ratio = (small.hi - small.lo) / (large.hi - large.lo);
        assert!((3.5..5.5).contains(&ratio), "{ratio}");
        // Seeded: the same seed gives the same interval.
        assert_eq!(ci(50), small);
    }

    #[test]
    fn paired_bootstrap_finds_a_real_difference_and_not_a_null_one() {
        let n = 400;
        let a: Vec<f64> = (0..n).map(|i| ((i % 5) < 4) as u8 as f64).collect(); // 80%
        let b: Vec<f64> = (0..n).map(|i| ((i % 10) < 6) as u8 as f64).collect(); // 60%
        let mean =
            |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let mut rng = rng_for(1, "paired");
        let r = paired_bootstrap(&mut rng, n, 2000, 0.95, |idx| {
            Some(mean(&a, idx) - mean(&b, idx))
        })
        .unwrap();
        assert!((r.diff - 0.2).abs() < 1e-12);
        assert!(r.p_value < 0.01, "{r:?}");
        let iv = r.interval.unwrap();
        assert!(iv.lo > 0.1 && iv.hi < 0.3, "{iv:?}");
        let mut rng = rng_for(1, "paired");
        let same = paired_bootstrap(&mut rng, n, 2000, 0.95, |idx| {
            Some(mean(&a, idx) - mean(&a, idx))
        })
        .unwrap();
        assert_eq!(same.p_value, 1.0);
    }
}
