//! Self-Rewarding (Yuan et al., 2024): the model samples several answers to
//! each training prompt and a judge ranks them; the best is preferred over the
//! worst. The paper's judge is the model itself prompted as an LLM judge;
//! offline on the phantom the judge is token F1 against the ground truth
//! (`common::token_f1`). Ties (all answers judged equal) give no pair.

use anyhow::Result;

use super::common::{image_of, record, same_answer, token_f1};
use super::{BuildContext, PairBuilder};
use crate::data::pairs::PairRecord;
use crate::data::Sample;

pub struct SelfReward;

/// Sample `ctx.samples_per_prompt` answers of the model to `s`, each seeded
/// by the run seed, the builder and the sample index.
pub fn sample_answers(ctx: &BuildContext, builder: &str, s: &Sample) -> Result<Vec<String>> {
    let Some(model) = ctx.responder else {
        anyhow::bail!("baseline '{builder}' needs the model to sample answers, but none was given");
    };
    let img = image_of(s)?;
    let q = s.prompt();
    let mut out = Vec::new();
    for k in 0..ctx.samples_per_prompt.max(2) {
        let seed: u64 = rand::Rng::random(&mut crate::util::seed::rng_for(
            ctx.seed,
            &format!("{builder}/{}/{k}", s.id),
        ));
        out.push(model.respond(&q, img, ctx.temperature, seed)?);
    }
    Ok(out)
}

/// Best-versus-worst pair by `score`; `None` when best and worst tie or say the same.
pub fn best_vs_worst(
    answers: &[String],
    score: impl Fn(&str) -> Result<f64>,
) -> Result<Option<(String, String, f64, f64)>> {
    let mut scored = Vec::new();
    for a in answers.iter().filter(|a| !a.trim().is_empty()) {
        scored.push((score(a)?, a.clone()));
    }
    if scored.len() < 2 {
        return Ok(None);
    }
    // Stable: the first of equal scores wins the best, the last the worst.
    let best = scored
        .iter()
        .enumerate()
        .fold(0, |b, (i, x)| if x.0 > scored[b].0 { i } else { b });
    let worst = scored
        .iter()
        .enumerate()
        .fold(0, |w, (i, x)| if x.0 <= scored[w].0 { i } else { w });
    let (sb, ab) = &scored[best];
    let (sw, aw) = &scored[worst];
    if sb <= sw || same_answer(ab, aw) {
        return Ok(None);
    }
    Ok(Some((ab.clone(), aw.clone(), *sb, *sw)))
}

impl PairBuilder for SelfReward {
    fn name(&self) -> &'static str {
        "self_reward"
    }

    fn needs_model(&self) -> bool {
        true
    }

    fn build(&self, ctx: &BuildContext, samples: &[Sample]) -> Result<Vec<PairRecord>> {
        let mut out = Vec::new();
        for s in samples {
            let answers = sample_answers(ctx, self.name(), s)?;
            if let Some((c, r, sc, sr)) = best_vs_worst(&answers, |a| Ok(token_f1(a, &s.answer)))? {
                let img = image_of(s)?;
                let mut rec = record(ctx, "self_reward", s, &c, &r, img, img, 1.0)?;
                rec.extra
                    .insert("judge_scores".into(), serde_json::json!([sc, sr]));
                out.push(rec);
            }
        }
        Ok(out)
    }
}
