//! STLLaVA-Med-style pairs (Sun et al., 2024): the model answers its training
//! questions and a stronger judge (GPT-4o in the paper) prefers the better of
//! the reference and the model's answer. Offline the judge is token F1
//! against the ground truth: when the model's greedy answer is not an exact
//! match (F1 < 1), the ground truth is preferred over it.

use anyhow::{Context, Result};

use super::common::{image_of, record, same_answer, token_f1};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;

pub struct StLlavaMed;

impl PairBuilder for StLlavaMed {
    fn name(&self) -> &'static str {
        "stllava"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let model = ctx
            .responder
            .context("baseline 'stllava' needs the model")?;
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let own = model.respond(&s.prompt(), img, 0.0, ctx.seed)?;
            let f1 = token_f1(&own, &s.answer);
            if f1 < 1.0 && !same_answer(&own, &s.answer) && !own.trim().is_empty() {
                let mut rec = record(ctx, "stllava", s, &s.answer, &own, img, img, 1.0)?;
                rec.extra.insert("judge_f1".into(), serde_json::json!(f1));
                out.push(rec);
            }
        }
        Ok(out)
    }
}
