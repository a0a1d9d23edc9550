//! FiSAO-style pairs (Cui et al., 2024, fine-grained verifiers): the vision
//! encoder verifies the model's own answers. FiSAO turns the encoder's
//! token-level image-text alignment into token rewards for PPO-style
//! training; offline, each sampled answer gets one sequence-level reward, the
//! dual encoder's cosine between the image and the answer, and the best is
//! preferred over the worst (DPO loss).

use anyhow::{Context, Result};

use super::common::{image_of, record};
use super::self_reward::{best_vs_worst, sample_answers};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;

pub struct FiSao;

impl PairBuilder for FiSao {
    fn name(&self) -> &'static str {
        "fisao"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let verifier = ctx
            .scorer
            .context("baseline 'fisao' needs the dual encoder as verifier")?;
        let mut out = Vec::new();
        for s in samples {
            let img = image_of(s)?;
            let answers = sample_answers(ctx, self.name(), s)?;
            if let Some((c, r, sc, sr)) = best_vs_worst(&answers, |a| verifier.score(img, a))? {
                let mut rec = record(ctx, "fisao", s, &c, &r, img, img, 1.0)?;
                rec.extra
                    .insert("verifier_scores".into(), serde_json::json!([sc, sr]));
                out.push(rec);
            }
        }
        Ok(out)
    }
}
