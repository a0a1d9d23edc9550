//! Local (region-phrase) alignment for `hdpo align` (see [`super::align`]):
//! pairs that carry a [`RegionText`] add a multi-positive InfoNCE between
//! their region embedding v = Σ_i H̃(p_i) f_v(p_i) (Eq. 2-3, the v of
//! curation) and the phrases of the batch, where the pair's own positive
//! phrases are the targets:
//!
//! `L_region = mean_r [ −log Σ_{u ∈ P(r)} softmax_u(s · cos(v_r, f_t(t_u))) ]`
//!
//! over the union of the batch's phrases (its own negatives are hard
//! negatives; other pairs' phrases are negatives unless they are also
//! positives of r).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::align_pairs::{AlignPair, RegionText};
use super::contrastive::LogitScale;
use super::l2_normalize;
use crate::heatmap::pool::patch_weights;

/// One pair's region: Eq. 2 patch weights and phrase indices.
#[derive(Clone, Debug)]
pub struct RegionRow {
    pub weights: Vec<f32>,
    pub positives: Vec<usize>,
    pub negatives: Vec<usize>,
}

/// The regions of the training and held-out pairs over one phrase list.
#[derive(Clone, Debug, Default)]
pub struct RegionTable {
    /// By position in the training rows.
    pub train: Vec<Option<RegionRow>>,
    /// By position in the held-out rows.
    pub hold: Vec<Option<RegionRow>>,
    /// Every distinct phrase (compared case-insensitively, trimmed).
    pub phrases: Vec<String>,
}

/// The phrases and patch weights of one batch.
pub struct RegionBatch {
    /// Batch positions that have a region `[R]`.
    pub rows: Tensor,
    /// Their patch weights `[R, 1, N]`.
    pub weights: Tensor,
    /// Phrase indices used by the batch `[U]`.
    pub phrases: Tensor,
    /// `positive[r][u]`: phrase column u is a positive of region row r.
    pub positive: Vec<Vec<bool>>,
}

fn phrase_key(s: &str) -> String {
    s.trim().to_lowercase()
}

impl RegionTable {
    /// Patch weights on a `grid × grid` patch grid of a `size × size` input,
    /// and phrase indices, for `pairs[train]` and `pairs[hold]`.
    pub fn build(
        pairs: &[AlignPair],
        train: &[usize],
        hold: &[usize],
        size: usize,
        grid: usize,
    ) -> Result<Self> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut phrases = Vec::new();
        let mut row = |i: usize, r: &RegionText| -> Result<RegionRow> {
            let mut id = |t: &String| -> Result<usize> {
                let k = phrase_key(t);
                if k.is_empty() {
                    bail!("pair {i}: empty region phrase");
                }
                Ok(*index.entry(k).or_insert_with(|| {
                    phrases.push(t.trim().to_string());
                    phrases.len() - 1
                }))
            };
            let mut positives = r
                .positives
                .iter()
                .map(&mut id)
                .collect::<Result<Vec<_>>>()?;
            positives.sort_unstable();
            positives.dedup();
            if positives.is_empty() {
                bail!("pair {i}: a region needs at least one positive phrase");
            }
            let mut negatives: Vec<usize> = r
                .negatives
                .iter()
                .map(&mut id)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|n| !positives.contains(n))
                .collect();
            negatives.sort_unstable();
            negatives.dedup();
            let weights =
                patch_weights(&r.heatmap, &format!("pair {i}"), (size, size), (grid, grid))?;
            Ok(RegionRow {
                weights,
                positives,
                negatives,
            })
        };
        let mut rows = |idx: &[usize]| -> Result<Vec<Option<RegionRow>>> {
            idx.iter()
                .map(|&i| pairs[i].region.as_ref().map(|r| row(i, r)).transpose())
                .collect()
        };
        let train = rows(train)?;
        let hold = rows(hold)?;
        Ok(RegionTable {
            train,
            hold,
            phrases,
        })
    }

    /// Whether any pair has a region.
    pub fn is_empty(&self) -> bool {
        self.train.iter().chain(&self.hold).all(Option::is_none)
    }

    /// The regions among the training rows `sel` (positions in `self.train`,
    /// in batch order), or `None` when the batch has none.
    pub fn batch(&self, sel: &[u32], dev: &Device) -> Result<Option<RegionBatch>> {
        let mut rows = Vec::new();
        let mut weights = Vec::new();
        let mut cols: BTreeMap<usize, usize> = BTreeMap::new();
        let mut members: Vec<&RegionRow> = Vec::new();
        for (b, &t) in sel.iter().enumerate() {
            if let Some(Some(r)) = self.train.get(t as usize) {
                rows.push(b as u32);
                weights.extend_from_slice(&r.weights);
                members.push(r);
                for p in r.positives.iter().chain(&r.negatives) {
                    cols.insert(*p, 0);
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        for (k, (_, c)) in cols.iter_mut().enumerate() {
            *c = k;
        }
        let positive = members
            .iter()
            .map(|r| {
                let mut v = vec![false; cols.len()];
                for p in &r.positives {
                    v[cols[p]] = true;
                }
                v
            })
            .collect();
        let n = members[0].weights.len();
        let r = rows.len();
        let phrases: Vec<u32> = cols.keys().map(|k| *k as u32).collect();
        Ok(Some(RegionBatch {
            rows: Tensor::new(rows, dev)?,
            weights: Tensor::from_vec(weights, (r, 1, n), dev)?,
            phrases: Tensor::new(phrases, dev)?,
            positive,
        }))
    }

    /// The held-out rows that have a region: their positions and regions.
    pub fn heldout_rows(&self) -> (Vec<u32>, Vec<&RegionRow>) {
        self.hold
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
            .unzip()
    }

    /// Eq. 3 for the held-out regions from their patch embeddings: `patches`
    /// `[H, N, D]` of all held-out rows (in order) -> `[R, D]` for the rows
    /// with a region, with those rows.
    pub fn heldout_regions(&self, patches: &Tensor) -> Result<Option<(Tensor, Vec<&RegionRow>)>> {
        let (idx, rows) = self.heldout_rows();
        if rows.is_empty() {
            return Ok(None);
        }
        let dev = patches.device();
        let n = rows[0].weights.len();
        let w: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.weights.iter().copied())
            .collect();
        let w = Tensor::from_vec(w, (rows.len(), 1, n), dev)?.to_dtype(patches.dtype())?;
        let sel = patches.index_select(&Tensor::new(idx, dev)?, 0)?;
        Ok(Some((w.matmul(&sel)?.squeeze(1)?, rows)))
    }
}

/// The multi-positive InfoNCE of the module docs for region embeddings
/// `[R, D]` and phrase embeddings `[U, D]`.
pub fn region_nce(
    regions: &Tensor,
    phrases: &Tensor,
    positive: &[Vec<bool>],
    scale: &LogitScale,
) -> Result<Tensor> {
    let sim = l2_normalize(regions)?.matmul(&l2_normalize(phrases)?.t()?)?;
    let logits = match scale.scale()? {
        Some(s) => sim.broadcast_mul(&s)?,
        None => (sim * scale.fixed)?,
    };
    let (r, u) = logits.dims2()?;
    if positive.len() != r || positive.iter().any(|p| p.len() != u) {
        bail!("region loss: positives are not {r} x {u}");
    }
    // 0 on positives, a large negative elsewhere: log Σ_pos softmax.
    let off: Vec<f32> = positive
        .iter()
        .flatten()
        .map(|p| if *p { 0.0 } else { -1e4 })
        .collect();
    let off = Tensor::from_vec(off, (r, u), logits.device())?.to_dtype(logits.dtype())?;
    let lsm = candle_nn::ops::log_softmax(&logits, 1)?;
    let pos = (lsm + off)?.log_sum_exp(1)?;
    Ok(pos.mean_all()?.neg()?)
}

/// Held-out top-1: the share of `rows` whose closest phrase among their own
/// (positives and negatives) is a positive, given region embeddings `[R, D]`
/// and the embeddings of every phrase of the table `[Q, D]`; and the chance
/// share.
pub fn heldout_top1(regions: &Tensor, rows: &[&RegionRow], phrases: &Tensor) -> Result<(f64, f64)> {
    let sim: Vec<Vec<f32>> = l2_normalize(regions)?
        .matmul(&l2_normalize(phrases)?.t()?)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2()?;
    let mut hits = 0usize;
    let mut chance = 0f64;
    for (r, s) in rows.iter().zip(&sim) {
        let best_pos = r.positives.iter().map(|p| s[*p]).fold(f32::MIN, f32::max);
        let best_neg = r.negatives.iter().map(|p| s[*p]).fold(f32::MIN, f32::max);
        hits += usize::from(best_pos > best_neg);
        chance += r.positives.len() as f64 / (r.positives.len() + r.negatives.len()) as f64;
    }
    let n = rows.len().max(1) as f64;
    Ok((hits as f64 / n, chance / n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::align_pairs::PairImage;
    use crate::heatmap::Heatmap;

    fn pair(region: Option<(&[&str], &[&str])>) -> AlignPair {
        let img = Tensor::zeros((3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut p = AlignPair::global(PairImage::Tensor(img), "text");
        p.region = region.map(|(pos, neg)| RegionText {
            // The left half of an 8 x 8 image.
            heatmap: Heatmap::new(8, 8, (0..64).map(|i| f32::from(i % 8 < 4)).collect()).unwrap(),
            positives: pos.iter().map(|s| s.to_string()).collect(),
            negatives: neg.iter().map(|s| s.to_string()).collect(),
        });
        p
    }

    #[test]
    fn table_dedupes_phrases_and_batches_only_region_rows() {
        let pairs = vec![
            pair(Some((
                &["Nodule", "left lung"],
                &["nodule ", "heart", "Heart"],
            ))),
            pair(None),
            pair(Some((&["effusion"], &["heart"]))),
        ];
        let t = RegionTable::build(&pairs, &[0, 1], &[2], 8, 2).unwrap();
        assert_eq!(t.phrases, ["Nodule", "left lung", "heart", "effusion"]);
        let r0 = t.train[0].as_ref().unwrap();
        // "nodule " is the positive "Nodule"; "Heart" is "heart".
        assert_eq!(
            (r0.positives.clone(), r0.negatives.clone()),
            (vec![0, 1], vec![2])
        );
        // Eq. 2 on a 2 x 2 grid: the two left patches share the weight.
        assert_eq!(r0.weights, [0.5, 0.0, 0.5, 0.0]);
        assert!(t.train[1].is_none());
        assert_eq!(t.heldout_rows().0, [0]);
        let b = t.batch(&[1, 0], &Device::Cpu).unwrap().unwrap();
        assert_eq!(b.rows.to_vec1::<u32>().unwrap(), [1]);
        assert_eq!(b.phrases.to_vec1::<u32>().unwrap(), [0, 1, 2]);
        assert_eq!(b.positive, [vec![true, true, false]]);
        assert!(t.batch(&[1], &Device::Cpu).unwrap().is_none());
        // A region without a positive phrase is an error naming the pair.
        let bad = vec![pair(None), pair(Some((&[], &["heart"])))];
        let e = RegionTable::build(&bad, &[0, 1], &[], 8, 2).unwrap_err();
        assert!(e.to_string().contains("pair 1"), "{e}");
    }

    #[test]
    fn region_nce_gradients_reach_regions_and_phrases_and_match_finite_differences() {
        let dev = Device::Cpu;
        let r0 = [0.3f64, -1.2, 0.7, 1.1, 0.4, -0.5];
        let p0 = [0.9f64, 0.1, -0.3, -0.2, 0.8, 0.5, 0.4, -0.6, 1.0];
        let positive = vec![vec![true, false, true], vec![false, true, false]];
        let scale = LogitScale {
            var: None,
            fixed: 3.0,
        };
        let loss = |r: &[f64], p: &[f64]| -> f64 {
            let r = Tensor::from_slice(r, (2, 3), &dev).unwrap();
            let p = Tensor::from_slice(p, (3, 3), &dev).unwrap();
            region_nce(&r, &p, &positive, &scale)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let rv = candle_core::Var::from_slice(&r0, (2, 3), &dev).unwrap();
        let pv = candle_core::Var::from_slice(&p0, (3, 3), &dev).unwrap();
        let g = region_nce(rv.as_tensor(), pv.as_tensor(), &positive, &scale)
            .unwrap()
            .backward()
            .unwrap();
        for (var, base, is_region) in [(&rv, &r0[..], true), (&pv, &p0[..], false)] {
            let got: Vec<f64> = g
                .get(var.as_tensor())
                .expect("every input gets a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(got.iter().any(|x| x.abs() > 1e-3), "{got:?}");
            for i in 0..base.len() {
                let (mut up, mut down) = (base.to_vec(), base.to_vec());
                up[i] += 1e-6;
                down[i] -= 1e-6;
                let fd = if is_region {
                    (loss(&up, &p0) - loss(&down, &p0)) / 2e-6
                } else {
                    (loss(&r0, &up) - loss(&r0, &down)) / 2e-6
                };
                assert!((got[i] - fd).abs() < 1e-6, "{i}: {} vs {fd}", got[i]);
            }
        }
    }

    #[test]
    fn region_nce_is_minus_log_of_the_positive_mass() {
        let dev = Device::Cpu;
        let regions = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let phrases = Tensor::new(&[[1f32, 0.0], [0.6, 0.8], [0.0, 1.0]], &dev).unwrap();
        let positive = vec![vec![true, false, false], vec![false, true, true]];
        let scale = LogitScale {
            var: None,
            fixed: 2.0,
        };
        let got = region_nce(&regions, &phrases, &positive, &scale)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Row 0: cosines 1, 0.6, 0; row 1: 0, 0.8, 1 (scaled by 2).
        let z0 = 2f64.exp() + 1.2f64.exp() + 1.0;
        let z1 = 1.0 + 1.6f64.exp() + 2f64.exp();
        let l0 = -(2f64.exp() / z0).ln();
        let l1 = -((1.6f64.exp() + 2f64.exp()) / z1).ln();
        assert!((f64::from(got) - (l0 + l1) / 2.0).abs() < 1e-5, "{got}");
    }
}
