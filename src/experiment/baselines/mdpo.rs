//! mDPO-style pairs (Wang et al., 2024, "mDPO: conditional preference
//! optimisation"): the standard pair (same image, a hallucinated answer) plus
//! the conditional image pair: the same answer with the real image preferred
//! over a corrupted one, so that the model cannot ignore the image. mDPO
//! corrupts by random cropping; here a random rectangle covering `share` of
//! the image is blanked. Both pair kinds train with mDPO's loss
//! (`train::losses::mdpo`): DPO plus the anchor that keeps the chosen
//! reward above 0.

use anyhow::Result;

use super::common::{corrupt_image, generated_image, image_of, record, swap_term, Corruption};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;
use crate::train::LossType;
use crate::util::seed::rng_for;

#[derive(Clone, Debug)]
pub struct MDpo {
    /// Share of the image the corruption blanks.
    pub share: f32,
}

impl Default for MDpo {
    fn default() -> Self {
        MDpo { share: 0.4 }
    }
}

impl PairBuilder for MDpo {
    fn name(&self) -> &'static str {
        "mdpo"
    }

    fn loss(&self) -> LossType {
        LossType::Mdpo
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let mut rng = rng_for(ctx.seed, &format!("mdpo/{}", s.id));
            if let Some(sw) = swap_term(&s.answer, ctx.vocabulary, &mut rng) {
                let mut r = record(ctx, "mdpo_text", s, &s.answer, &sw.text, img, img, 1.0)?;
                r.keyword = Some(sw.old);
                r.replacement = Some(sw.new);
                out.push(r);
            }
            let corrupted = generated_image(ctx, "mdpo", &s.id, "block");
            let share = corrupt_image(
                img,
                &corrupted,
                &Corruption::Block { share: self.share },
                &mut rng,
            )?;
            let mut r = record(
                ctx,
                "mdpo_image",
                s,
                &s.answer,
                &s.answer,
                img,
                &corrupted,
                1.0,
            )?;
            r.mask_share = Some(share);
            out.push(r);
        }
        Ok(out)
    }
}
