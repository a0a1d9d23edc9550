//! SIMA-style pairs (Wang et al., 2024, self-improvement modality alignment):
//! the model's own sampled answers ranked by a critic that looks at how well
//! each answer is grounded in the image. SIMA prompts the model as an
//! in-context critic with visual metrics; offline, the critic is the model's
//! own log-prob gain of the answer from the real image over a blank image,
//! per answer word (log π(y|x, image) − log π(y|x, blank)) / |y|.

use anyhow::{Context, Result};

use super::common::{image_of, record, words};
use super::self_reward::{best_vs_worst, sample_answers};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;

pub struct Sima;

impl PairBuilder for Sima {
    fn name(&self) -> &'static str {
        "sima"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let model = ctx.responder.context("baseline 'sima' needs the model")?;
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let q = s.prompt();
            let answers = sample_answers(ctx, self.name(), s)?;
            let critic = |a: &str| -> Result<f64> {
                let with = model.logp(&q, a, Some(img))?;
                let without = model.logp(&q, a, None)?;
                Ok((with - without) / words(a).len().max(1) as f64)
            };
            if let Some((c, r, sc, sr)) = best_vs_worst(&answers, critic)? {
                let mut rec = record(ctx, "sima", s, &c, &r, img, img, 1.0)?;
                rec.extra
                    .insert("critic_scores".into(), serde_json::json!([sc, sr]));
                out.push(rec);
            }
        }
        Ok(out)
    }
}
