//! Rendering one planned study in memory: anatomy, finding, image, mask,
//! heatmap, report and questions (written to disk by [`super::writer`],
//! drawn on contact sheets by [`super::preview`]).

use super::anatomy::Anatomy;
use super::lesion::Lesion;
use super::text::{self, Facts, Question};
use super::{heatmap, study_id, PhantomConfig, Planned, StudyTruth, NORMAL_CLASS};
use crate::util::seed::rng_for;

/// A rendered study in memory.
#[derive(Clone, Debug)]
pub struct RenderedStudy {
    pub truth: StudyTruth,
    pub questions: Vec<Question>,
    /// 8-bit grayscale pixels, `size × size`, row-major.
    pub pixels: Vec<u8>,
    pub mask: Vec<bool>,
    pub heatmap: Vec<f32>,
}

/// Render one planned study: anatomy, finding, image, mask, heatmap, report
/// and questions, each from its own seeded stream.
pub fn render_study(cfg: &PhantomConfig, p: &Planned) -> RenderedStudy {
    let id = study_id(p.index);
    let label = |what: &str| format!("phantom/study/{}/{what}", p.index);
    let size = cfg.size;
    let mut anatomy = Anatomy::sample(&mut rng_for(cfg.seed, &label("anatomy")));
    let lesion = p.kind.map(|kind| {
        Lesion::place(
            &mut rng_for(cfg.seed, &label("lesion")),
            &mut anatomy,
            kind,
            p.subtle_target,
            size,
        )
    });
    let mut base = anatomy.render_lungs(size);
    if let Some(l) = &lesion {
        l.draw(&mut base, &anatomy);
    }
    let image = anatomy.finish(base, &mut rng_for(cfg.seed, &label("noise")));
    let mask = lesion
        .as_ref()
        .map(|l| l.mask.clone())
        .unwrap_or_else(|| vec![false; size * size]);
    let heat = heatmap::make(
        &mut rng_for(cfg.seed, &label("heatmap")),
        &anatomy,
        lesion.as_ref().map(|l| l.mask.as_slice()),
        size,
        &cfg.heatmap,
    );
    let pixels_in = mask.iter().filter(|b| **b).count();
    let area = pixels_in as f64 / (size * size) as f64;
    let facts = Facts {
        kind: p.kind,
        side: lesion.as_ref().and_then(|l| l.side),
        lobe: lesion.as_ref().and_then(|l| l.lobe),
        area,
        heart_scale: lesion.as_ref().and_then(|l| l.heart_scale),
    };
    let written = text::write(&mut rng_for(cfg.seed, &label("text")), &facts);
    let truth = StudyTruth {
        id,
        index: p.index,
        split: p.split,
        finding: p.kind,
        side: facts.side,
        lobe: facts.lobe,
        bbox: lesion.as_ref().and_then(|l| l.bbox()),
        lesion_pixels: pixels_in,
        lesion_area: area,
        subtle: p.kind.is_some() && area < cfg.subtle_threshold,
        size: written.size_word.map(String::from),
        location: written.location.clone(),
        keywords: written.keywords.clone(),
        heatmap_class: p.kind.map(|k| k.class()).unwrap_or(NORMAL_CLASS).into(),
        report: written.report.clone(),
    };
    RenderedStudy {
        truth,
        questions: written.questions,
        pixels: image.to_u8(),
        mask,
        heatmap: heat,
    }
}
