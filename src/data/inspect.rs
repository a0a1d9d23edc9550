//! `hdpo data inspect`: what a dataset holds (counts per split and answer
//! type), which images exist, mask coverage and subtle-lesion counts
//! (`docs/design.md`, "Subtle lesions": lesion < 5% of the image, configurable).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::load::{detect_format, load, LoadOptions};
use super::{AnswerType, DatasetFormat, Sample, Split};
use crate::heatmap::io::{is_subtle, mask_share, SUBTLE_THRESHOLD};

/// What to inspect and how.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    /// `None`: detect the format from the files present.
    pub format: Option<DatasetFormat>,
    pub load: LoadOptions,
    pub subtle_threshold: f64,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            format: None,
            load: LoadOptions::default(),
            subtle_threshold: SUBTLE_THRESHOLD,
        }
    }
}

/// Counts of one split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitCounts {
    pub split: Split,
    pub total: usize,
    pub closed: usize,
    pub open: usize,
    pub report: usize,
    /// Samples whose mask file exists.
    pub with_mask: usize,
    /// Samples with a lesion mask whose lesion covers less than the threshold.
    pub subtle: usize,
}

/// Image files referenced by the samples (each path counted once).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImageCounts {
    pub referenced: usize,
    pub found: usize,
    pub missing: usize,
    /// Up to 5 missing paths, for the message.
    pub missing_examples: Vec<PathBuf>,
}

/// Mask coverage and lesion sizes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MaskCounts {
    /// Samples with a mask file.
    pub samples_with_mask: usize,
    /// Of those, samples whose mask is a lesion mask (not an organ mask).
    pub lesion_masks: usize,
    /// Lesion masks with no lesion pixel (normal studies).
    pub normal: usize,
    /// Lesion masks with a lesion below the threshold.
    pub subtle: usize,
    /// Lesion masks with a lesion at or above the threshold.
    pub large: usize,
    /// Masks that could not be read.
    pub unreadable: usize,
    pub subtle_threshold: f64,
}

/// The result of an inspection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InspectReport {
    pub path: PathBuf,
    pub format: DatasetFormat,
    /// Samples per dataset name (`iu-xray`, `mimic-cxr`, ...).
    pub datasets: BTreeMap<String, usize>,
    pub samples: usize,
    pub splits: Vec<SplitCounts>,
    pub images: ImageCounts,
    pub masks: MaskCounts,
    /// Bad records skipped (with `skip_bad`).
    pub skipped: usize,
    /// Up to 10 of their messages.
    pub skipped_examples: Vec<String>,
}

/// The lesion area share of a sample's lesion mask: `None` when the sample
/// has no mask file or its mask is not a lesion mask (SLAKE's organ masks).
/// Use with [`is_subtle`] for the subtle-lesion subset.
pub fn lesion_share(s: &Sample) -> Result<Option<f64>> {
    let Some(m) = s.mask.as_ref().filter(|m| m.is_file()) else {
        return Ok(None);
    };
    if s.meta.get("mask_kind").and_then(|v| v.as_str()) != Some("lesion") {
        return Ok(None);
    }
    Ok(Some(mask_share(m)?))
}

/// Load the dataset at `path` and count what it holds.
pub fn inspect(path: &Path, opts: &InspectOptions) -> Result<InspectReport> {
    let format = match opts.format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    let out = load(format, path, &opts.load)?;
    let mut splits: BTreeMap<Split, SplitCounts> = BTreeMap::new();
    let mut datasets = BTreeMap::new();
    let mut images = BTreeSet::new();
    let mut masks = MaskCounts {
        subtle_threshold: opts.subtle_threshold,
        ..MaskCounts::default()
    };
    let mut shares: HashMap<PathBuf, Option<f64>> = HashMap::new();
    for s in &out.samples {
        *datasets.entry(s.dataset.clone()).or_insert(0) += 1;
        let c = splits.entry(s.split).or_insert_with(|| SplitCounts {
            split: s.split,
            total: 0,
            closed: 0,
            open: 0,
            report: 0,
            with_mask: 0,
            subtle: 0,
        });
        c.total += 1;
        match s.answer_type {
            AnswerType::Closed => c.closed += 1,
            AnswerType::Open => c.open += 1,
            AnswerType::Report => c.report += 1,
        }
        images.extend(s.images.iter().cloned());
        let Some(m) = s.mask.as_ref().filter(|m| m.is_file()) else {
            continue;
        };
        c.with_mask += 1;
        masks.samples_with_mask += 1;
        if s.meta.get("mask_kind").and_then(|v| v.as_str()) != Some("lesion") {
            continue;
        }
        masks.lesion_masks += 1;
        let share = *shares
            .entry(m.clone())
            .or_insert_with(|| match mask_share(m) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::warn!("{e:#}");
                    None
                }
            });
        match share {
            None => masks.unreadable += 1,
            Some(x) if x <= 0.0 => masks.normal += 1,
            Some(x) if is_subtle(x, opts.subtle_threshold) => {
                masks.subtle += 1;
                c.subtle += 1;
            }
            Some(_) => masks.large += 1,
        }
    }
    let mut img = ImageCounts {
        referenced: images.len(),
        ..ImageCounts::default()
    };
    for p in &images {
        if p.is_file() {
            img.found += 1;
        } else {
            img.missing += 1;
            if img.missing_examples.len() < 5 {
                img.missing_examples.push(p.clone());
            }
        }
    }
    Ok(InspectReport {
        path: path.to_path_buf(),
        format,
        datasets,
        samples: out.samples.len(),
        splits: splits.into_values().collect(),
        images: img,
        masks,
        skipped: out.skipped.len(),
        skipped_examples: out.skipped.iter().take(10).map(|e| e.to_string()).collect(),
    })
}

impl InspectReport {
    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let names: Vec<String> = self
            .datasets
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect();
        let _ = writeln!(s, "dataset  {} [{}]", self.path.display(), self.format);
        let _ = writeln!(s, "samples  {}  {}", self.samples, names.join(", "));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "split", "total", "closed", "open", "report", "w/ mask", "subtle"
        );
        for c in &self.splits {
            let _ = writeln!(
                s,
                "{:<6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
                c.split.to_string(),
                c.total,
                c.closed,
                c.open,
                c.report,
                c.with_mask,
                c.subtle
            );
        }
        let _ = writeln!(s);
        let i = &self.images;
        let _ = writeln!(
            s,
            "images   {} referenced, {} found, {} missing",
            i.referenced, i.found, i.missing
        );
        for p in &i.missing_examples {
            let _ = writeln!(s, "         missing: {}", p.display());
        }
        let m = &self.masks;
        if m.samples_with_mask == 0 {
            let _ = writeln!(
                s,
                "masks    none (the subtle-lesion subset is empty for this dataset)"
            );
        } else {
            let _ = writeln!(
                s,
                "masks    {} samples with a mask ({:.1}%), {} lesion masks",
                m.samples_with_mask,
                100.0 * m.samples_with_mask as f64 / self.samples.max(1) as f64,
                m.lesion_masks
            );
            if m.lesion_masks > 0 {
                let _ = writeln!(
                    s,
                    "lesions  {} normal, {} subtle (< {:.1}% of the image), {} larger, {} unreadable",
                    m.normal,
                    m.subtle,
                    100.0 * m.subtle_threshold,
                    m.large,
                    m.unreadable
                );
            } else {
                let _ = writeln!(
                    s,
                    "lesions  the masks are organ masks, not lesion masks: no subtle-lesion counts"
                );
            }
        }
        if self.skipped > 0 {
            let _ = writeln!(s, "skipped  {} bad records", self.skipped);
            for e in &self.skipped_examples {
                let _ = writeln!(s, "         {e}");
            }
        }
        s
    }
}
