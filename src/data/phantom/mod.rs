//! The phantom benchmark (`docs/design.md`, "Phantom benchmark"): procedural radiograph-like studies with exact lesion masks.
//!
//! A seeded generator of schematic PA chest radiographs (body outline, two
//! lungs with vascular markings, mediastinum, heart, clavicles, ribs, spine,
//! noise) with one finding of known kind, side, lobe and size per abnormal
//! study (nodule, consolidation, pleural effusion, pneumothorax, cardiomegaly,
//! atelectasis; ~27% of studies are normal), its exact mask, a DAug-like
//! heatmap, a findings report and VQA questions. [`generate`] writes them in
//! the on-disk formats of the real datasets ([`writer`] documents the
//! layout), so every later stage reads the phantom through the real loaders.
//! Its numbers are phantom numbers, never the paper's.
//!
//! Radiological convention: the patient's right is on the image's left.
//! Every random choice comes from [`crate::util::seed::rng_for`] with a
//! per-study label, so the output is identical for a seed whatever the
//! number of threads.

pub mod anatomy;
pub mod heatmap;
pub mod lesion;
pub mod preview;
pub mod raster;
pub mod study;
pub mod text;
pub mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::util::seed::rng_for;

pub use heatmap::HeatmapNoise;
pub use text::vocabulary;
pub use writer::generate;

/// Version of the generator; bumped whenever the output for a seed changes.
pub const GENERATOR_VERSION: u32 = 1;

/// The default subtle-lesion threshold (share of the image area).
pub const SUBTLE_THRESHOLD: f64 = 0.05;

/// A kind of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Nodule,
    Consolidation,
    PleuralEffusion,
    Pneumothorax,
    Cardiomegaly,
    Atelectasis,
}

impl FindingKind {
    pub const ALL: [FindingKind; 6] = [
        FindingKind::Nodule,
        FindingKind::Consolidation,
        FindingKind::PleuralEffusion,
        FindingKind::Pneumothorax,
        FindingKind::Cardiomegaly,
        FindingKind::Atelectasis,
    ];

    /// The canonical name, used as the open answer ("pleural effusion").
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Nodule => "nodule",
            FindingKind::Consolidation => "consolidation",
            FindingKind::PleuralEffusion => "pleural effusion",
            FindingKind::Pneumothorax => "pneumothorax",
            FindingKind::Cardiomegaly => "cardiomegaly",
            FindingKind::Atelectasis => "atelectasis",
        }
    }

    /// The heatmap class in DAug naming (`{id}_{class}.npy`), snake case.
    pub fn class(self) -> &'static str {
        match self {
            FindingKind::Nodule => "nodule",
            FindingKind::Consolidation => "consolidation",
            FindingKind::PleuralEffusion => "pleural_effusion",
            FindingKind::Pneumothorax => "pneumothorax",
            FindingKind::Cardiomegaly => "cardiomegaly",
            FindingKind::Atelectasis => "atelectasis",
        }
    }

    /// Whether the finding has a side (all but cardiomegaly).
    pub fn has_side(self) -> bool {
        self != FindingKind::Cardiomegaly
    }

    /// Whether the finding lies in a lobe (parenchymal findings).
    pub fn has_lobe(self) -> bool {
        matches!(
            self,
            FindingKind::Nodule | FindingKind::Consolidation | FindingKind::Atelectasis
        )
    }
}

/// The heatmap class of normal studies.
pub const NORMAL_CLASS: &str = "normal";

/// The patient's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Right,
    Left,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
        }
    }
    pub fn opposite(self) -> Side {
        match self {
            Side::Right => Side::Left,
            Side::Left => Side::Right,
        }
    }
}

/// A lung lobe (the left lung has no middle lobe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lobe {
    Upper,
    Middle,
    Lower,
}

impl Lobe {
    pub fn name(self) -> &'static str {
        match self {
            Lobe::Upper => "upper",
            Lobe::Middle => "middle",
            Lobe::Lower => "lower",
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhantomConfig {
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Image side in pixels (square images).
    pub size: usize,
    /// Share of normal studies per split.
    pub normal_share: f64,
    /// Share of abnormal studies per split given a subtle size (< the subtle
    /// threshold); the flag written is computed from the actual mask area.
    pub subtle_share: f64,
    /// Subtle-lesion threshold, share of the image area.
    pub subtle_threshold: f64,
    pub heatmap: HeatmapNoise,
    /// Also write `preview.png`, a contact sheet of a few studies.
    pub preview: bool,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        PhantomConfig {
            seed: 0,
            train: 800,
            val: 0,
            test: 200,
            size: 128,
            normal_share: 0.27,
            subtle_share: 0.45,
            subtle_threshold: SUBTLE_THRESHOLD,
            heatmap: HeatmapNoise::default(),
            preview: false,
        }
    }
}

impl PhantomConfig {
    pub fn validate(&self) -> Result<()> {
        if !(32..=1024).contains(&self.size) {
            bail!(
                "phantom image size {} is out of range (32..=1024 pixels)",
                self.size
            );
        }
        if self.train + self.val + self.test == 0 {
            bail!("phantom: no studies requested (train, val and test are all 0)");
        }
        if self.train + self.val + self.test > 1_000_000 {
            bail!("phantom: at most 1,000,000 studies");
        }
        for (name, v) in [
            ("normal_share", self.normal_share),
            ("subtle_share", self.subtle_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("phantom: {name} must lie in 0..=1, got {v}");
            }
        }
        if !(self.subtle_threshold > 0.0 && self.subtle_threshold < 1.0) {
            bail!(
                "phantom: subtle_threshold must lie in (0, 1), got {}",
                self.subtle_threshold
            );
        }
        let h = &self.heatmap;
        let ok = h.blur >= 0.0
            && h.noise >= 0.0
            && (0.0..=1.0).contains(&h.spurious_prob)
            && (0.0..1.0).contains(&h.spurious_amp);
        if !ok {
            bail!("phantom: heatmap noise settings out of range: {h:?}");
        }
        Ok(())
    }

    /// The studies per split, in output order.
    pub fn splits(&self) -> [(Split, usize); 3] {
        [
            (Split::Train, self.train),
            (Split::Val, self.val),
            (Split::Test, self.test),
        ]
    }
}

/// The study id of global index `index` (`phantom_000123`).
pub fn study_id(index: usize) -> String {
    format!("phantom_{index:06}")
}

/// The planned content of one study, decided before any pixel is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    pub index: usize,
    pub split: Split,
    pub kind: Option<FindingKind>,
    /// The size range drawn from; the written flag comes from the mask.
    pub subtle_target: bool,
}

/// The plan of every study: per split, exactly round(n × normal_share)
/// normal studies, the finding kinds in balanced rotation, and
/// ceil(abnormal × subtle_share) subtle targets among the kinds that can be
/// subtle; shuffled per split with the seed.
pub fn plan(cfg: &PhantomConfig) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut index = 0usize;
    for (split, n) in cfg.splits() {
        let n_normal = ((n as f64) * cfg.normal_share).round() as usize;
        let n_normal = n_normal.min(n);
        let abnormal = n - n_normal;
        let mut rows: Vec<(Option<FindingKind>, bool)> = Vec::with_capacity(n);
        for _ in 0..n_normal {
            rows.push((None, false));
        }
        let mut rng = rng_for(cfg.seed, &format!("phantom/plan/{split}"));
        let mut kinds: Vec<FindingKind> = (0..abnormal)
            .map(|k| FindingKind::ALL[k % FindingKind::ALL.len()])
            .collect();
        // Subtle targets among the kinds that can be subtle, spread at random.
        let mut eligible: Vec<usize> = (0..abnormal)
            .filter(|&k| kinds[k] != FindingKind::Cardiomegaly)
            .collect();
        eligible.shuffle(&mut rng);
        let n_subtle = ((abnormal as f64) * cfg.subtle_share).ceil() as usize;
        let mut subtle = vec![false; abnormal];
        for &k in eligible.iter().take(n_subtle) {
            subtle[k] = true;
        }
        for (k, kind) in kinds.drain(..).enumerate() {
            rows.push((Some(kind), subtle[k]));
        }
        rows.shuffle(&mut rng);
        for (kind, subtle_target) in rows {
            out.push(Planned {
                index,
                split,
                kind,
                subtle_target,
            });
            index += 1;
        }
    }
    out
}

/// Ground truth of one study, as written to `phantom.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyTruth {
    pub id: String,
    pub index: usize,
    pub split: Split,
    pub finding: Option<FindingKind>,
    pub side: Option<Side>,
    pub lobe: Option<Lobe>,
    /// `[x_min, y_min, x_max, y_max]` of the mask in pixels, inclusive.
    pub bbox: Option<[usize; 4]>,
    pub lesion_pixels: usize,
    /// Lesion area, share of the image.
    pub lesion_area: f64,
    pub subtle: bool,
    pub size: Option<String>,
    pub location: Option<String>,
    /// The report's phrases naming the lesion: the finding term, then its
    /// location ("right upper lobe") or side.
    pub keywords: Vec<String>,
    /// The heatmap class (`nodule`, ..., or `normal`).
    pub heatmap_class: String,
    pub report: String,
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhantomSummary {
    pub out_dir: PathBuf,
    pub seed: u64,
    pub size: usize,
    /// Studies per split (`train`, `val`, `test`).
    pub studies: BTreeMap<String, usize>,
    /// VQA questions per split.
    pub questions: BTreeMap<String, usize>,
    /// Studies per finding kind (`normal` for normal studies).
    pub findings: BTreeMap<String, usize>,
    pub abnormal: usize,
    /// The subtle threshold used (share of the image area).
    pub subtle_threshold: f64,
    pub subtle: usize,
    pub abnormal_test: usize,
    pub subtle_test: usize,
    pub preview: Option<PathBuf>,
}

impl fmt::Display for PhantomSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "phantom benchmark (seed {}, {}x{} px) written to {}",
            self.seed,
            self.size,
            self.size,
            self.out_dir.display()
        )?;
        for split in ["train", "val", "test"] {
            writeln!(
                f,
                "  {split:<5} {:>6} studies {:>7} questions",
                self.studies.get(split).copied().unwrap_or(0),
                self.questions.get(split).copied().unwrap_or(0)
            )?;
        }
        let kinds: Vec<String> = self
            .findings
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  findings: {}", kinds.join(", "))?;
        writeln!(
            f,
            "  subtle lesions (< {}% of the image): {} of {} abnormal; test: {} of {}",
            self.subtle_threshold * 100.0,
            self.subtle,
            self.abnormal,
            self.subtle_test,
            self.abnormal_test
        )?;
        if let Some(p) = &self.preview {
            writeln!(f, "  preview: {}", p.display())?;
        }
        Ok(())
    }
}

/// The path of a study's heatmap (`heatmaps/{id}_{class}.npy`) under `root`.
pub fn heatmap_path(root: &Path, id: &str, class: &str) -> PathBuf {
    root.join("heatmaps").join(format!("{id}_{class}.npy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_exact_shares() {
        let cfg = PhantomConfig {
            train: 40,
            val: 7,
            test: 30,
            ..PhantomConfig::default()
        };
        let p = plan(&cfg);
        assert_eq!(p.len(), 77);
        assert!(p.iter().enumerate().all(|(i, s)| s.index == i));
        let test: Vec<_> = p.iter().filter(|s| s.split == Split::Test).collect();
        assert_eq!(test.len(), 30);
        let normal = test.iter().filter(|s| s.kind.is_none()).count();
        assert_eq!(normal, 8); // round(30 * 0.27)
        let subtle = test.iter().filter(|s| s.subtle_target).count();
        assert_eq!(subtle, 10); // ceil(22 * 0.45)
        assert!(test
            .iter()
            .all(|s| !(s.subtle_target && s.kind == Some(FindingKind::Cardiomegaly))));
        for k in FindingKind::ALL {
            assert!(test.iter().any(|s| s.kind == Some(k)), "{k:?} missing");
        }
    }

    #[test]
    fn bad_configs_are_rejected_with_the_field_named() {
        let ok = PhantomConfig::default();
        assert!(ok.validate().is_ok());
        let cases: [(PhantomConfig, &str); 5] = [
            (
                PhantomConfig {
                    size: 8,
                    ..ok.clone()
                },
                "size 8",
            ),
            (
                PhantomConfig {
                    train: 0,
                    val: 0,
                    test: 0,
                    ..ok.clone()
                },
                "no studies",
            ),
            (
                PhantomConfig {
                    normal_share: 1.5,
                    ..ok.clone()
                },
                "normal_share",
            ),
            (
                PhantomConfig {
                    subtle_threshold: 0.0,
                    ..ok.clone()
                },
                "subtle_threshold",
            ),
            (
                PhantomConfig {
                    heatmap: HeatmapNoise {
                        spurious_amp: 1.5,
                        ..HeatmapNoise::default()
                    },
                    ..ok.clone()
                },
                "heatmap",
            ),
        ];
        for (cfg, want) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
