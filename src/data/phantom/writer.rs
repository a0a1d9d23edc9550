//! Rendering each study and writing the benchmark to disk, in the formats
//! of the real datasets (all writes atomic):
//!
//! ```text
//! DIR/train.json, validate.json, test.json   SLAKE-style QA arrays (+ study_id, finding, side,
//!                                             lobe, lesion_area, subtle)
//! DIR/imgs/phantom_000123/source.png          8-bit grayscale image
//! DIR/imgs/phantom_000123/mask.png            lesion mask, 0 / 255 (all 0 for normal studies)
//! DIR/annotation.json                         R2Gen-style {"train","val","test"} report records
//! DIR/images/phantom_000123/0.png             the same pixels as source.png
//! DIR/heatmaps/phantom_000123_<class>.npy     DAug-like heatmap, f32 little-endian, H x W
//! DIR/phantom.json                            generator config + per-study ground truth
//! DIR/preview.png                             with --preview: a contact sheet
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::raster::{encode_gray_png, encode_mask_png, encode_npy_f32};
pub use super::study::{render_study, RenderedStudy};
use super::text::Question;
use super::{
    heatmap_path, plan, preview, FindingKind, Lobe, PhantomConfig, PhantomSummary, Planned, Side,
    StudyTruth, GENERATOR_VERSION,
};
use crate::data::Split;
use crate::util::fsio::{atomic_write, write_json_atomic};

/// One SLAKE-style QA record of `train.json` / `validate.json` / `test.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QaRecord {
    pub img_id: usize,
    pub img_name: String,
    pub question: String,
    pub answer: String,
    pub q_lang: String,
    pub location: String,
    pub modality: String,
    pub answer_type: String,
    pub base_type: String,
    pub content_type: String,
    pub qid: usize,
    pub study_id: String,
    pub finding: Option<FindingKind>,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    pub lesion_area: f64,
    pub subtle: bool,
}

/// One R2Gen-style record of `annotation.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub id: String,
    pub report: String,
    pub image_path: Vec<String>,
    pub split: Split,
}

/// `phantom.json`: the generator's configuration and every study's truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhantomManifest {
    pub generator: String,
    pub version: u32,
    pub config: PhantomConfig,
    /// Conventions a reader needs: coordinates and sides.
    pub conventions: String,
    pub studies: Vec<StudyTruth>,
}

fn write_study_files(root: &Path, size: usize, s: &RenderedStudy) -> Result<()> {
    let id = &s.truth.id;
    let png = encode_gray_png(size, size, &s.pixels)?;
    atomic_write(&root.join("imgs").join(id).join("source.png"), &png)?;
    atomic_write(&root.join("images").join(id).join("0.png"), &png)?;
    let mask = encode_mask_png(size, size, &s.mask)?;
    atomic_write(&root.join("imgs").join(id).join("mask.png"), &mask)?;
    let npy = encode_npy_f32(size, size, &s.heatmap);
    atomic_write(&heatmap_path(root, id, &s.truth.heatmap_class), &npy)?;
    Ok(())
}

/// The studies shown in the preview: the first of each finding kind (test
/// split first), one normal and a subtle nodule.
fn preview_indices(planned: &[Planned]) -> Vec<usize> {
    let order = |p: &&Planned| (p.split != Split::Test, p.index);
    let mut sorted: Vec<&Planned> = planned.iter().collect();
    sorted.sort_by_key(order);
    let mut picks = Vec::new();
    for kind in FindingKind::ALL {
        // Large lesions first so the sheet shows what each kind looks like.
        let found = sorted
            .iter()
            .find(|p| p.kind == Some(kind) && !p.subtle_target)
            .or_else(|| sorted.iter().find(|p| p.kind == Some(kind)));
        if let Some(p) = found {
            picks.push(p.index);
        }
    }
    if let Some(p) = sorted.iter().find(|p| p.kind.is_none()) {
        picks.push(p.index);
    }
    // A subtle nodule (or another subtle study): what "subtle" looks like.
    let subtle = |p: &&&Planned| p.subtle_target && !picks.contains(&p.index);
    if let Some(p) = sorted
        .iter()
        .filter(subtle)
        .find(|p| p.kind == Some(FindingKind::Nodule))
        .or_else(|| sorted.iter().find(subtle))
    {
        picks.push(p.index);
    }
    picks
}

/// Generate the phantom benchmark into `out_dir` (see the module docs for
/// the layout) and return what was written.
pub fn generate(cfg: &PhantomConfig, out_dir: &Path) -> Result<PhantomSummary> {
    generate_with_progress(cfg, out_dir, &|| {})
}

/// [`generate`], calling `tick` once per finished study (from any thread).
/// What a phantom dataset folder holds (files and folders the writer makes).
const WRITTEN: [&str; 9] = [
    "annotation.json",
    "heatmaps",
    "images",
    "imgs",
    "phantom.json",
    "preview.png",
    "test.json",
    "train.json",
    "validate.json",
];

/// Before writing into `out_dir`: an earlier phantom dataset there (it has `phantom.json`)
/// is removed first, so no stale study, mask or heatmap file of it survives next to the new
/// ones (a heatmap source reading the folder would otherwise mix them); a non-empty folder
/// that is not a phantom dataset is refused.
fn clear_earlier_dataset(out_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if !out_dir.join("phantom.json").is_file() {
        anyhow::bail!(
            "{} is not empty and holds no phantom dataset (no phantom.json); choose an empty \
             or new folder",
            out_dir.display()
        );
    }
    for name in WRITTEN {
        let p = out_dir.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        };
        r.with_context(|| format!("cannot remove the earlier {}", p.display()))?;
    }
    Ok(())
}

pub fn generate_with_progress(
    cfg: &PhantomConfig,
    out_dir: &Path,
    tick: &(dyn Fn() + Sync),
) -> Result<PhantomSummary> {
    cfg.validate()?;
    clear_earlier_dataset(out_dir)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the output folder {}", out_dir.display()))?;
    let planned = plan(cfg);
    let show = if cfg.preview {
        preview_indices(&planned)
    } else {
        Vec::new()
    };
    let size = cfg.size;
    let results: Vec<(StudyTruth, Vec<Question>, Option<RenderedStudy>)> = planned
        .par_iter()
        .map(|p| -> Result<_> {
            let s = render_study(cfg, p);
            write_study_files(out_dir, size, &s)
                .with_context(|| format!("while writing study {}", s.truth.id))?;
            tick();
            let keep = show.contains(&p.index).then(|| s.clone());
            Ok((s.truth, s.questions, keep))
        })
        .collect::<Result<_>>()?;

    // SLAKE-style QA files and the R2Gen-style annotation.
    let mut qa: BTreeMap<Split, Vec<QaRecord>> = BTreeMap::new();
    let mut ann: BTreeMap<Split, Vec<AnnotationRecord>> = BTreeMap::new();
    let mut qid = 0usize;
    let mut studies = Vec::with_capacity(results.len());
    let mut kept = Vec::new();
    for (truth, questions, keep) in results {
        for q in questions {
            qa.entry(truth.split).or_default().push(QaRecord {
                img_id: truth.index,
                img_name: format!("{}/source.png", truth.id),
                question: q.question,
                answer: q.answer,
                q_lang: "en".into(),
                location: "Chest".into(),
                modality: "X-Ray".into(),
                answer_type: q.answer_type.into(),
                base_type: "vqa".into(),
                content_type: q.content_type.into(),
                qid,
                study_id: truth.id.clone(),
                finding: truth.finding,
                side: truth.side,
                lobe: truth.lobe,
                lesion_area: truth.lesion_area,
                subtle: truth.subtle,
            });
            qid += 1;
        }
        ann.entry(truth.split).or_default().push(AnnotationRecord {
            id: truth.id.clone(),
            report: truth.report.clone(),
            image_path: vec![format!("{}/0.png", truth.id)],
            split: truth.split,
        });
        if let Some(k) = keep {
            kept.push(k);
        }
        studies.push(truth);
    }
    let empty = Vec::new();
    for (split, file) in [
        (Split::Train, "train.json"),
        (Split::Val, "validate.json"),
        (Split::Test, "test.json"),
    ] {
        write_json_atomic(&out_dir.join(file), qa.get(&split).unwrap_or(&empty))?;
    }
    let empty_ann = Vec::new();
    let annotation = serde_json::json!({
        "train": ann.get(&Split::Train).unwrap_or(&empty_ann),
        "val": ann.get(&Split::Val).unwrap_or(&empty_ann),
        "test": ann.get(&Split::Test).unwrap_or(&empty_ann),
    });
    write_json_atomic(&out_dir.join("annotation.json"), &annotation)?;

    // Summary before the manifest takes ownership of the truths.
    let mut summary = PhantomSummary {
        out_dir: out_dir.to_path_buf(),
        seed: cfg.seed,
        size,
        studies: BTreeMap::new(),
        questions: BTreeMap::new(),
        findings: BTreeMap::new(),
        abnormal: 0,
        subtle_threshold: cfg.subtle_threshold,
        subtle: 0,
        abnormal_test: 0,
        subtle_test: 0,
        preview: None,
    };
    for (split, n) in cfg.splits() {
        summary.studies.insert(split.to_string(), n);
        summary
            .questions
            .insert(split.to_string(), qa.get(&split).map_or(0, |v| v.len()));
    }
    for t in &studies {
        *summary.findings.entry(t.heatmap_class.clone()).or_default() += 1;
        if t.finding.is_some() {
            summary.abnormal += 1;
            summary.subtle += usize::from(t.subtle);
            if t.split == Split::Test {
                summary.abnormal_test += 1;
                summary.subtle_test += usize::from(t.subtle);
            }
        }
    }

    if cfg.preview {
        let refs: Vec<&RenderedStudy> = kept.iter().collect();
        let png = preview::contact_sheet(&refs, size)?;
        let path = out_dir.join("preview.png");
        atomic_write(&path, &png)?;
        summary.preview = Some(path);
    }

    let manifest = PhantomManifest {
        generator: "hdpo phantom".into(),
        version: GENERATOR_VERSION,
        config: cfg.clone(),
        conventions: "Images are PA views: the patient's right is on the image's left. \
                      bbox is [x_min, y_min, x_max, y_max] in pixels, inclusive, origin top left. \
                      lesion_area is the mask's share of the image; subtle means lesion_area < \
                      config.subtle_threshold."
            .into(),
        studies,
    };
    write_json_atomic(&out_dir.join("phantom.json"), &manifest)?;
    Ok(summary)
}
