//! POVID-style pairs (Zhou et al., 2024): two dispreferred answers per sample.
//! (i) Hallucinated text: the ground truth with one finding swapped for
//! another (POVID asks GPT-4V to inject hallucinations; here a seeded
//! vocabulary swap, `common::swap_term`). (ii) Image-distortion
//! hallucination: the model's own answer when the image is noised (POVID adds
//! diffusion noise; here Gaussian pixel noise), scored against the clean
//! image, kept when it differs from the ground truth.

use anyhow::Result;

use super::common::{
    corrupt_image, generated_image, image_of, record, same_answer, swap_term, Corruption,
};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;
use crate::util::seed::rng_for;

/// POVID with the noise level of the distorted image.
#[derive(Clone, Debug)]
pub struct Povid {
    /// σ of the Gaussian pixel noise (grey levels).
    pub sigma: f32,
}

impl Default for Povid {
    fn default() -> Self {
        Povid { sigma: 60.0 }
    }
}

impl PairBuilder for Povid {
    fn name(&self) -> &'static str {
        "povid"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let mut rng = rng_for(ctx.seed, &format!("povid/{}", s.id));
            if let Some(sw) = swap_term(&s.answer, ctx.vocabulary, &mut rng) {
                let mut r = record(ctx, "povid_text", s, &s.answer, &sw.text, img, img, 1.0)?;
                r.keyword = Some(sw.old);
                r.replacement = Some(sw.new);
                out.push(r);
            }
            if let Some(model) = ctx.responder {
                let noised = generated_image(ctx, "povid", &s.id, "noised");
                corrupt_image(
                    img,
                    &noised,
                    &Corruption::Noise { sigma: self.sigma },
                    &mut rng,
                )?;
                let answer = model.respond(&s.prompt(), &noised, 0.0, ctx.seed)?;
                if !answer.trim().is_empty() && !same_answer(&answer, &s.answer) {
                    let mut r = record(ctx, "povid_image", s, &s.answer, &answer, img, img, 1.0)?;
                    r.extra.insert(
                        "noised_image".into(),
                        super::common::rel_to(ctx.root, &noised).into(),
                    );
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}
