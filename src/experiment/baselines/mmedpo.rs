//! MMedPO-style pairs (Zhu et al., 2024): clinically weighted dispreferred
//! answers. (i) Text: one finding swapped (MMedPO asks a medical LLM to write
//! a hallucinated answer). (ii) Image: the lesion region noised, the answer
//! unchanged (MMedPO localises the lesion with a visual tool; here the
//! dataset's lesion mask). Each pair carries a clinical-relevance score s,
//! normalised over the set to mean 1 and trained with the weighted loss
//! (Eq. 13's form with w = s). MMedPO scores relevance with a medical LLM;
//! here a fixed score per term category: findings and closed yes/no flips 1,
//! laterality 0.75, anatomy 0.5, size 0.25, a noised lesion 1.

use anyhow::Result;

use super::common::{
    corrupt_image, generated_image, image_of, lesion_mask, pair_image_path, record, swap_term,
    Corruption,
};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;
use crate::train::LossType;
use crate::util::seed::rng_for;

/// MMedPO with the noise level inside the lesion.
#[derive(Clone, Debug)]
pub struct MMedPo {
    pub sigma: f32,
}

impl Default for MMedPo {
    fn default() -> Self {
        MMedPo { sigma: 80.0 }
    }
}

/// The clinical relevance of a swapped term's category.
pub fn relevance(category: &str) -> f64 {
    match category {
        "finding" | "closed" => 1.0,
        "laterality" => 0.75,
        "anatomy" => 0.5,
        "size" => 0.25,
        _ => 0.5,
    }
}

impl PairBuilder for MMedPo {
    fn name(&self) -> &'static str {
        "mmedpo"
    }

    fn loss(&self) -> LossType {
        LossType::Hdpo
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let mut rng = rng_for(ctx.seed, &format!("mmedpo/{}", s.id));
            if let Some(sw) = swap_term(&s.answer, ctx.vocabulary, &mut rng) {
                let mut r = record(
                    ctx,
                    "mmedpo_text",
                    s,
                    &s.answer,
                    &sw.text,
                    img,
                    img,
                    relevance(&sw.category),
                )?;
                r.keyword = Some(sw.old);
                r.replacement = Some(sw.new);
                out.push(r);
            }
            if let Some(mask) = lesion_mask(s) {
                let noised = generated_image(ctx, "mmedpo", &s.id, "lesion_noised");
                let share = corrupt_image(
                    img,
                    &noised,
                    &Corruption::NoiseInMask {
                        mask,
                        sigma: self.sigma,
                    },
                    &mut rng,
                )?;
                let mut r = record(
                    ctx,
                    "mmedpo_image",
                    s,
                    &s.answer,
                    &s.answer,
                    img,
                    &noised,
                    1.0,
                )?;
                r.mask_share = Some(share);
                r.extra
                    .insert("mask".into(), pair_image_path(ctx.root, mask)?.into());
                out.push(r);
            }
        }
        // Normalise the relevance scores to mean 1 so the step size matches DPO's.
        let mean = out.iter().map(|r| r.weight).sum::<f64>() / out.len().max(1) as f64;
        if mean > 0.0 {
            for r in &mut out {
                r.weight /= mean;
            }
        }
        Ok(out)
    }
}
