//! METEOR 1.5 as `meteor-1.5.jar -l en -norm` computes it (the configuration
//! pycocoevalcap runs): English `-norm` tokenisation then lowercasing, the
//! exact / stem / synonym / paraphrase modules, the jar's beam-search
//! alignment, the English "default" (ranking) task parameters
//! α = 0.85, β = 0.20, γ = 0.60, δ = 0.75 with module weights 1.0 / 0.6 / 0.8 / 0.6,
//! content/function word weighting, fragmentation penalty, segment scores
//! and the aggregate score computed from summed statistics.
//!
//! The resources (function words, non-breaking prefixes, WordNet synonyms,
//! paraphrase table) come from the user, see [`data`]. Without them only the
//! exact and stem modules run, with no function words and no non-breaking
//! prefixes: [`Meteor::mode`] says which mode is in use.

pub mod align;
pub mod data;
pub mod normalize;

use std::path::Path;

use anyhow::Result;

pub use align::Module;
pub use data::{build_data_dir, MeteorData};

/// The jar's English "default" task parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeteorParams {
    /// Precision/recall balance.
    pub alpha: f64,
    /// Fragmentation penalty exponent.
    pub beta: f64,
    /// Maximum fragmentation penalty.
    pub gamma: f64,
    /// Content vs function word weight.
    pub delta: f64,
}

/// `-l en` default task: 0.85 0.20 0.60 0.75.
pub const EN_PARAMS: MeteorParams = MeteorParams {
    alpha: 0.85,
    beta: 0.20,
    gamma: 0.60,
    delta: 0.75,
};

/// Module weight of `m` for English (exact 1.0, stem 0.6, synonym 0.8, paraphrase 0.6).
pub fn en_weight(m: Module) -> f64 {
    match m {
        Module::Exact => 1.0,
        Module::Stem => 0.6,
        Module::Synonym => 0.8,
        Module::Paraphrase => 0.6,
    }
}

/// METEOR sufficient statistics of one segment (or summed over a corpus).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeteorStats {
    /// Hypothesis words.
    pub test_len: f64,
    /// Reference words.
    pub ref_len: f64,
    /// Hypothesis function words.
    pub test_fn: f64,
    /// Reference function words.
    pub ref_fn: f64,
    /// Matched hypothesis words (all modules).
    pub test_total: f64,
    /// Matched reference words (all modules).
    pub ref_total: f64,
    /// Per module: matched hypothesis content words.
    pub test_content: Vec<f64>,
    /// Per module: matched reference content words.
    pub ref_content: Vec<f64>,
    /// Per module: matched hypothesis function words.
    pub test_function: Vec<f64>,
    /// Per module: matched reference function words.
    pub ref_function: Vec<f64>,
    /// Chunks.
    pub chunks: f64,
    /// Matched hypothesis words (for fragmentation).
    pub test_word_matches: f64,
    /// Matched reference words (for fragmentation).
    pub ref_word_matches: f64,
}

impl MeteorStats {
    /// Add `o` (the jar's `addStats`, used for the aggregate score; the chunk
    /// of a segment that matches perfectly in one chunk is not added).
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_len += o.test_len;
        self.ref_len += o.ref_len;
        self.test_fn += o.test_fn;
        self.ref_fn += o.ref_fn;
        self.test_total += o.test_total;
        self.ref_total += o.ref_total;
        let grow = |v: &mut Vec<f64>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        let n = o.test_content.len();
        grow(&mut self.test_content, n);
        grow(&mut self.ref_content, n);
        grow(&mut self.test_function, n);
        grow(&mut self.ref_function, n);
        for i in 0..n {
            self.test_content[i] += o.test_content[i];
            self.ref_content[i] += o.ref_content[i];
            self.test_function[i] += o.test_function[i];
            self.ref_function[i] += o.ref_function[i];
        }
        // The jar leaves out the chunk of a perfect single-chunk segment.
        if !(o.test_total == o.test_len && o.ref_total == o.ref_len && o.chunks == 1.0) {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.ref_word_matches += o.ref_word_matches;
    }

    /// The score from these statistics (`MeteorScorer.computeMetrics`):
    /// weighted precision and recall, `Fmean = 1 / ((1-α)/P + α/R)`,
    /// `frag = chunks / mean matched words` (0 for a perfect single-chunk
    /// match), `score = Fmean (1 - γ frag^β)`, NaN -> 0, clamped at 0.
    pub fn score(&self, params: &MeteorParams, weights: &[f64]) -> f64 {
        let d = params.delta;
        let test_wlen = d * (self.test_len - self.test_fn) + (1.0 - d) * self.test_fn;
        let ref_wlen = d * (self.ref_len - self.ref_fn) + (1.0 - d) * self.ref_fn;
        let at = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0);
        let mut tw = 0.0;
        let mut rw = 0.0;
        for (i, w) in weights.iter().enumerate() {
            tw += at(&self.test_content, i) * w * d;
        }
        for (i, w) in weights.iter().enumerate() {
            rw += at(&self.ref_content, i) * w * d;
        }
        for (i, w) in weights.iter().enumerate() {
            tw += at(&self.test_function, i) * w * (1.0 - d);
        }
        for (i, w) in weights.iter().enumerate() {
            rw += at(&self.ref_function, i) * w * (1.0 - d);
        }
        let p = tw / test_wlen;
        let r = rw / ref_wlen;
        let fmean = 1.0 / (((1.0 - params.alpha) / p) + (params.alpha / r));
        let frag = if self.test_total == self.test_len
            && self.ref_total == self.ref_len
            && self.chunks == 1.0
        {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.ref_word_matches) / 2.0)
        };
        let pen = params.gamma * frag.powf(params.beta);
        let s = fmean * (1.0 - pen);
        if s.is_nan() {
            0.0
        } else {
            s.max(0.0)
        }
    }
}

/// Which modules a [`Meteor`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeteorMode {
    /// Exact, stem, synonym and paraphrase (tables supplied): the jar's numbers.
    Full,
    /// Exact and stem only, no function words or prefix list (no tables).
    ExactStem,
}

impl MeteorMode {
    /// Short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            MeteorMode::Full => "METEOR 1.5 (exact, stem, synonym, paraphrase; -l en -norm)",
            MeteorMode::ExactStem => {
                "METEOR 1.5 exact+stem only (no --meteor-data: synonym/paraphrase tables, function words and prefix list missing; not comparable with the jar's full METEOR)"
            }
        }
    }
}

/// A METEOR scorer holding its resources.
pub struct Meteor {
    data: MeteorData,
    modules: Vec<Module>,
    weights: Vec<f64>,
    params: MeteorParams,
    stemmer: rust_stemmers::Stemmer,
    mode: MeteorMode,
}

impl Meteor {
    /// Scorer with the given resources and modules (module weights are the
    /// English ones).
    pub fn with_data(data: MeteorData, modules: Vec<Module>) -> Meteor {
        let weights = modules.iter().map(|m| en_weight(*m)).collect();
        let mode = if modules.contains(&Module::Synonym) || modules.contains(&Module::Paraphrase) {
            MeteorMode::Full
        } else {
            MeteorMode::ExactStem
        };
        Meteor {
            data,
            modules,
            weights,
            params: EN_PARAMS,
            stemmer: rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English),
            mode,
        }
    }

    /// Full METEOR from a folder written by `hdpo eval meteor-data`.
    pub fn from_dir(dir: &Path) -> Result<Meteor> {
        let data = MeteorData::load(dir)?;
        Ok(Meteor::with_data(
            data,
            vec![
                Module::Exact,
                Module::Stem,
                Module::Synonym,
                Module::Paraphrase,
            ],
        ))
    }

    /// Exact + stem METEOR without any resource.
    pub fn exact_stem() -> Meteor {
        Meteor::with_data(MeteorData::default(), vec![Module::Exact, Module::Stem])
    }

    /// Which mode this scorer runs.
    pub fn mode(&self) -> MeteorMode {
        self.mode
    }

    /// The modules in use.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Tokens the jar scores for `text`: Java `trim`, `-norm` normalisation,
    /// lowercasing, whitespace tokenisation.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let n = normalize::normalize_line(normalize::java_trim(text), &self.data.nbp);
        normalize::java_tokens(&n.to_lowercase())
            .map(str::to_string)
            .collect()
    }

    /// Statistics of one hypothesis against one reference, as the jar's
    /// `SCORE ||| reference ||| hypothesis` line computes them.
    pub fn stats(&self, hypothesis: &str, reference: &str) -> MeteorStats {
        self.stats_with(&mut align::WordCache::default(), hypothesis, reference)
    }

    fn stats_with(
        &self,
        cache: &mut align::WordCache,
        hypothesis: &str,
        reference: &str,
    ) -> MeteorStats {
        let w1 = self.tokens(hypothesis);
        let w2 = self.tokens(reference);
        let res = align::Resources {
            stemmer: &self.stemmer,
            synonyms: self.data.synonyms.as_ref(),
            paraphrase: self.data.paraphrase.as_ref(),
        };
        let a = align::align(&w1, &w2, &self.modules, &res, cache);
        let nm = self.modules.len();
        let is_fn1: Vec<bool> = w1
            .iter()
            .map(|w| self.data.function_words.contains(&w.to_lowercase()))
            .collect();
        let is_fn2: Vec<bool> = w2
            .iter()
            .map(|w| self.data.function_words.contains(&w.to_lowercase()))
            .collect();
        let mut s = MeteorStats {
            test_len: w1.len() as f64,
            ref_len: w2.len() as f64,
            test_fn: is_fn1.iter().filter(|&&f| f).count() as f64,
            ref_fn: is_fn2.iter().filter(|&&f| f).count() as f64,
            test_content: vec![0.0; nm],
            ref_content: vec![0.0; nm],
            test_function: vec![0.0; nm],
            ref_function: vec![0.0; nm],
            chunks: a.chunks as f64,
            ..Default::default()
        };
        for m in a.matches.iter().flatten() {
            for k in 0..m.match_len {
                if is_fn1[m.match_start + k] {
                    s.test_function[m.module] += 1.0;
                } else {
                    s.test_content[m.module] += 1.0;
                }
            }
            for k in 0..m.len {
                if is_fn2[m.start + k] {
                    s.ref_function[m.module] += 1.0;
                } else {
                    s.ref_content[m.module] += 1.0;
                }
            }
        }
        for i in 0..nm {
            s.test_total += s.test_content[i] + s.test_function[i];
            s.ref_total += s.ref_content[i] + s.ref_function[i];
        }
        s.test_word_matches = s.test_total;
        s.ref_word_matches = s.ref_total;
        s
    }

    /// Score of statistics with this scorer's parameters and weights.
    pub fn score_stats(&self, s: &MeteorStats) -> f64 {
        s.score(&self.params, &self.weights)
    }

    /// pycocoevalcap's preprocessing of the hypothesis: `|||` removed, then
    /// each pair of spaces replaced by one (a single pass).
    pub fn pycoco_hypothesis(h: &str) -> String {
        h.replace("|||", "").replace("  ", " ")
    }

    /// Corpus METEOR as pycocoevalcap reports it: the aggregate score of the
    /// summed statistics, and the segment scores. Pairs are `(hypothesis, reference)`.
    pub fn corpus(&self, pairs: &[(&str, &str)]) -> (f64, Vec<f64>) {
        use rayon::prelude::*;
        let stats: Vec<MeteorStats> = pairs
            .par_iter()
            .map_init(align::WordCache::default, |c, (h, r)| {
                self.stats_with(c, &Meteor::pycoco_hypothesis(h), r)
            })
            .collect();
        let mut total = MeteorStats::default();
        for s in &stats {
            total.add(s);
        }
        let seg = stats.iter().map(|s| self.score_stats(s)).collect();
        (self.score_stats(&total), seg)
    }
}
