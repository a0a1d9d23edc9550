//! METEOR 1.5's aligner: candidate matches from the exact, stem, synonym and
//! paraphrase modules, one-to-one non-overlapping matches fixed up front, then
//! a left-to-right beam search (beam 40) over the reference positions ranked
//! by weighted matched words (integer-truncated sums, weights 1/0.5/0.5/0.5),
//! then fewer chunks, then smaller distance — reproducing the jar's behaviour,
//! including how it accumulates the distance term.

// Index loops mirror the reference implementations line by line.
#![allow(clippy::needless_range_loop)]

use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;

use super::data::{ParaphraseTable, Synonyms};

/// Beam width of the jar.
pub const BEAM: usize = 40;

/// Java `String.hashCode()` (UTF-16 code units), which the jar compares
/// instead of the strings themselves.
pub fn java_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    for u in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(u as i32);
    }
    h
}

/// A candidate match: `len` reference words from `start` aligned with
/// `match_len` hypothesis words from `match_start`, found by module `module`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// First reference word.
    pub start: usize,
    /// Reference words covered.
    pub len: usize,
    /// First hypothesis word.
    pub match_start: usize,
    /// Hypothesis words covered.
    pub match_len: usize,
    /// Index of the module in the module list.
    pub module: usize,
}

/// Matching modules, in the jar's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// Identical words.
    Exact,
    /// Same Snowball English stem.
    Stem,
    /// Shared WordNet synset.
    Synonym,
    /// Paraphrase table entry.
    Paraphrase,
}

/// What the modules need.
pub struct Resources<'a> {
    /// Snowball English stemmer.
    pub stemmer: &'a rust_stemmers::Stemmer,
    /// Synonyms (required for [`Module::Synonym`]).
    pub synonyms: Option<&'a Synonyms>,
    /// Paraphrases (required for [`Module::Paraphrase`]).
    pub paraphrase: Option<&'a ParaphraseTable>,
}

/// Per-word results (hashes, stems, synsets, paraphrase ids) reused across
/// the segments of a corpus; one per thread.
#[derive(Default)]
pub struct WordCache {
    index: HashMap<String, usize, std::hash::BuildHasherDefault<Fnv>>,
    info: Vec<WordInfo>,
}

struct WordInfo {
    hash: i32,
    stem: Option<i32>,
    syn: Option<Vec<u32>>,
    para: Option<i64>,
    block: Option<(usize, usize)>,
}

/// FNV-1a, a fast hasher for the per-thread word cache (keys are words).
#[derive(Default)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

impl WordCache {
    fn id(&mut self, w: &str) -> usize {
        if let Some(&i) = self.index.get(w) {
            return i;
        }
        let i = self.info.len();
        self.info.push(WordInfo {
            hash: java_hash(w),
            stem: None,
            syn: None,
            para: None,
            block: None,
        });
        self.index.insert(w.to_string(), i);
        i
    }

    fn stem(&mut self, i: usize, w: &str, stemmer: &rust_stemmers::Stemmer) -> i32 {
        *self.info[i]
            .stem
            .get_or_insert_with(|| java_hash(&stemmer.stem(w)))
    }

    fn fill_syn(&mut self, i: usize, w: &str, syn: &Synonyms) {
        if self.info[i].syn.is_none() {
            self.info[i].syn = Some(syn.all_synsets(w));
        }
    }

    fn para(&mut self, i: usize, w: &str, pt: &ParaphraseTable) -> i64 {
        *self.info[i].para.get_or_insert_with(|| pt.word_id(w))
    }
}

impl WordCache {
    /// Paraphrase paths at `line[start..]` (word `ids[start]` of this
    /// cache), searching only the block of phrases that start with that word.
    fn paths(
        &mut self,
        pt: &ParaphraseTable,
        line: &[i64],
        ids: &[usize],
        start: usize,
    ) -> Vec<(usize, Vec<u32>)> {
        let w = line[start];
        if w < 0 {
            return Vec::new();
        }
        let info = &mut self.info[ids[start]];
        let block = *info
            .block
            .get_or_insert_with(|| pt.first_word_block(w as u32));
        pt.paths_in(line, start, block)
    }
}

/// Result of aligning a hypothesis (line 1) with a reference (line 2).
#[derive(Clone, Debug, Default)]
pub struct Alignment {
    /// Final matches, indexed by reference start position.
    pub matches: Vec<Option<Match>>,
    /// Chunks of the final alignment.
    pub chunks: usize,
}

/// Fixed-size bit set (used-word flags); inline up to 256 words, so that
/// extending a path allocates nothing for ordinary sentences.
#[derive(Clone, Debug)]
struct Bits {
    small: [u64; 4],
    large: Vec<u64>,
}

impl Bits {
    fn new(n: usize) -> Bits {
        Bits {
            small: [0; 4],
            large: if n > 256 {
                vec![0; n.div_ceil(64)]
            } else {
                Vec::new()
            },
        }
    }
    fn words(&self) -> &[u64] {
        if self.large.is_empty() {
            &self.small
        } else {
            &self.large
        }
    }
    fn get(&self, i: usize) -> bool {
        self.words()[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        if self.large.is_empty() {
            self.small[i / 64] |= 1 << (i % 64);
        } else {
            self.large[i / 64] |= 1 << (i % 64);
        }
    }
    fn any(&self, from: usize, len: usize) -> bool {
        (from..from + len).any(|i| self.get(i))
    }
    fn set_span(&mut self, from: usize, len: usize) {
        (from..from + len).for_each(|i| self.set(i));
    }
}

/// Matches chosen by the search, newest first (shared between paths).
struct Chosen {
    m: Match,
    prev: Option<Rc<Chosen>>,
}

/// The scalar part of the jar's `PartialAlignment`.
#[derive(Clone, Copy, Debug)]
struct Score {
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: i64,
    distance: i32,
}

impl Score {
    /// `int += double` in Java: the sum is truncated toward zero.
    fn add_match(&mut self, m: &Match, w: f64) {
        self.matches1 = (self.matches1 as f64 + m.match_len as f64 * w) as i32;
        self.matches2 = (self.matches2 as f64 + m.len as f64 * w) as i32;
        if self.last_match_end != -1 && m.match_start as i64 != self.last_match_end {
            self.chunks += 1;
        }
        self.idx = m.start + m.len;
        self.last_match_end = (m.match_start + m.match_len) as i64;
    }
}

/// A partial alignment (the vectors of the jar's `PartialAlignment`, shared
/// or as bit sets so that extending a path is cheap).
#[derive(Clone)]
struct Path {
    score: Score,
    chosen: Option<Rc<Chosen>>,
    used1: Bits,
    used2: Bits,
}

/// A path the search would create: its parent, the match it adds (if any)
/// and its resulting scalars. Only the best `BEAM` ones are materialised,
/// which is all the jar ever looks at again.
struct Candidate {
    parent: usize,
    add: Option<Match>,
    score: Score,
}

/// The jar's `PARTIAL_COMPARE_TOTAL`: more (truncated, weighted) matched
/// words, then fewer chunks, then smaller distance.
fn compare(x: &Score, y: &Score) -> Ordering {
    let diff = (y.matches1 + y.matches2) - (x.matches1 + x.matches2);
    if diff > 0 {
        return Ordering::Greater;
    }
    if diff < 0 {
        return Ordering::Less;
    }
    match x.chunks.cmp(&y.chunks) {
        Ordering::Equal => x.distance.cmp(&y.distance),
        o => o,
    }
}

/// Align `words1` (hypothesis) with `words2` (reference) using `modules`.
pub fn align(
    words1: &[String],
    words2: &[String],
    modules: &[Module],
    res: &Resources,
    cache: &mut WordCache,
) -> Alignment {
    let n1 = words1.len();
    let n2 = words2.len();
    let id1: Vec<usize> = words1.iter().map(|w| cache.id(w)).collect();
    let id2: Vec<usize> = words2.iter().map(|w| cache.id(w)).collect();
    let h1: Vec<i32> = id1.iter().map(|&i| cache.info[i].hash).collect();
    let h2: Vec<i32> = id2.iter().map(|&i| cache.info[i].hash).collect();
    let mut cand: Vec<Vec<Match>> = vec![Vec::new(); n2];
    let mut cov1 = vec![0u32; n1];
    let mut cov2 = vec![0u32; n2];
    // Identical sentences: exact matching only.
    let used_mods = if h1 == h2 {
        1.min(modules.len())
    } else {
        modules.len()
    };
    let add = |m: Match, cand: &mut Vec<Vec<Match>>, cov1: &mut Vec<u32>, cov2: &mut Vec<u32>| {
        cand[m.start].push(m);
        cov1[m.match_start..m.match_start + m.match_len]
            .iter_mut()
            .for_each(|c| *c += 1);
        cov2[m.start..m.start + m.len]
            .iter_mut()
            .for_each(|c| *c += 1);
    };
    let single = |j: usize, i: usize, module: usize| Match {
        start: j,
        len: 1,
        match_start: i,
        match_len: 1,
        module,
    };
    for (mi, module) in modules.iter().enumerate().take(used_mods) {
        match module {
            Module::Exact => {
                for j in 0..n2 {
                    for i in 0..n1 {
                        if h1[i] == h2[j] {
                            add(single(j, i, mi), &mut cand, &mut cov1, &mut cov2);
                        }
                    }
                }
            }
            Module::Stem => {
                let s1: Vec<i32> = (0..n1)
                    .map(|k| cache.stem(id1[k], &words1[k], res.stemmer))
                    .collect();
                let s2: Vec<i32> = (0..n2)
                    .map(|k| cache.stem(id2[k], &words2[k], res.stemmer))
                    .collect();
                for j in 0..n2 {
                    for i in 0..n1 {
                        if s1[i] == s2[j] && h1[i] != h2[j] {
                            add(single(j, i, mi), &mut cand, &mut cov1, &mut cov2);
                        }
                    }
                }
            }
            Module::Synonym => {
                let Some(syn) = res.synonyms else { continue };
                for k in 0..n1 {
                    cache.fill_syn(id1[k], &words1[k], syn);
                }
                for k in 0..n2 {
                    cache.fill_syn(id2[k], &words2[k], syn);
                }
                let none: Vec<u32> = Vec::new();
                let get = |i: usize| cache.info[i].syn.as_ref().unwrap_or(&none);
                let y1: Vec<&Vec<u32>> = id1.iter().map(|&i| get(i)).collect();
                let y2: Vec<&Vec<u32>> = id2.iter().map(|&i| get(i)).collect();
                for j in 0..n2 {
                    for i in 0..n1 {
                        if h1[i] != h2[j] && sorted_intersect(y1[i], y2[j]) {
                            add(single(j, i, mi), &mut cand, &mut cov1, &mut cov2);
                        }
                    }
                }
            }
            Module::Paraphrase => {
                let Some(pt) = res.paraphrase else { continue };
                let l1: Vec<i64> = (0..n1)
                    .map(|k| cache.para(id1[k], &words1[k], pt))
                    .collect();
                let l2: Vec<i64> = (0..n2)
                    .map(|k| cache.para(id2[k], &words2[k], pt))
                    .collect();
                let occurs = |line: &[i64], at: usize, words: &[u32]| {
                    words
                        .iter()
                        .enumerate()
                        .all(|(k, &w)| at + k < line.len() && line[at + k] == w as i64)
                };
                // Paraphrases in line 1 of reference phrases of line 2.
                for j in 0..n2 {
                    for (len, words) in cache.paths(pt, &l2, &id2, j) {
                        for i in 0..n1 {
                            if occurs(&l1, i, &words) {
                                let m = Match {
                                    start: j,
                                    len,
                                    match_start: i,
                                    match_len: words.len(),
                                    module: mi,
                                };
                                add(m, &mut cand, &mut cov1, &mut cov2);
                            }
                        }
                    }
                }
                // Paraphrases in line 2 of phrases of line 1.
                for i in 0..n1 {
                    for (len, words) in cache.paths(pt, &l1, &id1, i) {
                        for j in 0..n2 {
                            if occurs(&l2, j, &words) {
                                let m = Match {
                                    start: j,
                                    len: words.len(),
                                    match_start: i,
                                    match_len: len,
                                    module: mi,
                                };
                                add(m, &mut cand, &mut cov1, &mut cov2);
                            }
                        }
                    }
                }
            }
        }
    }

    // Search weights of the jar's scorer: exact 1, everything else 0.5.
    let weights: Vec<f64> = modules
        .iter()
        .map(|m| if *m == Module::Exact { 1.0 } else { 0.5 })
        .collect();

    // One-to-one, non-overlapping matches are fixed.
    let mut fixed: Vec<Option<Match>> = vec![None; n2];
    let mut used1 = Bits::new(n1);
    let mut used2 = Bits::new(n2);
    for (i, ms) in cand.iter().enumerate() {
        if ms.len() == 1 {
            let m = ms[0];
            let overlap = cov2[i..i + m.len].iter().any(|&c| c != 1)
                || cov1[m.match_start..m.match_start + m.match_len]
                    .iter()
                    .any(|&c| c != 1);
            if !overlap {
                fixed[i] = Some(m);
                used2.set_span(m.start, m.len);
                used1.set_span(m.match_start, m.match_len);
            }
        }
    }
    let initial = Path {
        score: Score {
            matches1: 0,
            matches2: 0,
            chunks: 0,
            idx: 0,
            last_match_end: -1,
            distance: 0,
        },
        chosen: None,
        used1,
        used2,
    };

    let best = resolve(&cand, &fixed, initial, &weights);
    let mut matches = fixed;
    let mut c = best.chosen.clone();
    while let Some(node) = c {
        matches[node.m.start] = Some(node.m);
        c = node.prev.clone();
    }
    let chunks = count_chunks(&matches);
    Alignment { matches, chunks }
}

/// The jar's beam search (`Aligner.resolve`), left to right over reference
/// positions. Paths are kept sorted; at each position every surviving path
/// proposes its successors in the jar's order, and the best `BEAM` of them
/// (stable order) survive.
fn resolve(cand: &[Vec<Match>], fixed: &[Option<Match>], start: Path, weights: &[f64]) -> Path {
    let n = cand.len();
    let mut paths: Vec<Path> = vec![start];
    let mut next: Vec<Candidate> = Vec::new();
    for current in 0..=n {
        next.clear();
        for (pi, path) in paths.iter().enumerate().take(BEAM) {
            let mut sc = path.score;
            if current == n {
                if sc.last_match_end != -1 {
                    sc.chunks += 1;
                }
                next.push(Candidate {
                    parent: pi,
                    add: None,
                    score: sc,
                });
                continue;
            }
            if path.used2.get(current) {
                if current < sc.idx {
                    next.push(Candidate {
                        parent: pi,
                        add: None,
                        score: sc,
                    });
                } else if let Some(m) = fixed.get(sc.idx).copied().flatten() {
                    sc.add_match(&m, weights[m.module]);
                    sc.distance += (m.start as i32 - m.match_start as i32).abs();
                    next.push(Candidate {
                        parent: pi,
                        add: None,
                        score: sc,
                    });
                }
                continue;
            }
            for m in &cand[current] {
                if path.used2.any(m.start, m.len) || path.used1.any(m.match_start, m.match_len) {
                    continue;
                }
                let mut ns = sc;
                ns.add_match(m, weights[m.module]);
                next.push(Candidate {
                    parent: pi,
                    add: Some(*m),
                    score: ns,
                });
                // The jar adds this distance to the path being extended, not
                // to the new one (so later copies and the skip path carry it).
                sc.distance += (m.start as i32 - m.match_start as i32).abs();
            }
            if sc.last_match_end != -1 {
                sc.chunks += 1;
                sc.last_match_end = -1;
            }
            sc.idx += 1;
            next.push(Candidate {
                parent: pi,
                add: None,
                score: sc,
            });
        }
        if next.is_empty() {
            // The jar warns and carries its best path on unchanged.
            paths.truncate(1);
            continue;
        }
        // Stable order = comparator, then creation order.
        let keep = BEAM.min(next.len());
        let order = |a: &(usize, &Candidate), b: &(usize, &Candidate)| {
            compare(&a.1.score, &b.1.score).then(a.0.cmp(&b.0))
        };
        let mut ranked: Vec<(usize, &Candidate)> = next.iter().enumerate().collect();
        if ranked.len() > keep {
            ranked.select_nth_unstable_by(keep - 1, order);
            ranked.truncate(keep);
        }
        ranked.sort_by(order);
        let materialised: Vec<Path> = ranked
            .iter()
            .map(|(_, c)| {
                let parent = &paths[c.parent];
                let mut p = Path {
                    score: c.score,
                    chosen: parent.chosen.clone(),
                    used1: parent.used1.clone(),
                    used2: parent.used2.clone(),
                };
                if let Some(m) = c.add {
                    p.used2.set_span(m.start, m.len);
                    p.used1.set_span(m.match_start, m.match_len);
                    p.chosen = Some(Rc::new(Chosen {
                        m,
                        prev: parent.chosen.clone(),
                    }));
                }
                p
            })
            .collect();
        paths = materialised;
    }
    paths
        .into_iter()
        .next()
        .expect("the beam always keeps a path")
}

/// Whether two sorted id lists share an element.
fn sorted_intersect(a: &[u32], b: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => return true,
        }
    }
    false
}

/// Chunks of a final alignment (contiguous, identically ordered runs).
fn count_chunks(matches: &[Option<Match>]) -> usize {
    let mut chunks = 0;
    let mut idx = 0;
    let mut last_end: i64 = -1;
    while idx < matches.len() {
        match matches[idx] {
            None => {
                if last_end != -1 {
                    chunks += 1;
                    last_end = -1;
                }
                idx += 1;
            }
            Some(m) => {
                if last_end != -1 && m.match_start as i64 != last_end {
                    chunks += 1;
                }
                idx = m.start + m.len;
                last_end = (m.match_start + m.match_len) as i64;
            }
        }
    }
    if last_end != -1 {
        chunks += 1;
    }
    chunks
}
