//! A curation run (paper 3.1-3.2 end to end): for each sample, the heatmap,
//! the chunks, k* (Eq. 3-6), each requested perturbation (Eq. 7-10) and its
//! weight (Eq. 11), written as pair records.
//!
//! * **Output.** `out` (JSON Lines, one `PairRecord` per line, in input order,
//!   kinds in the configured order). Images live under `images/` beside it:
//!   the chosen image is linked or copied to `images/src/<path under the
//!   data root>`, the false-positive image is written to
//!   `images/fp/<pair id>.png`. Previews go to `preview/<pair id>.png`.
//! * **Atomic and resumable.** Records are appended to `out.partial` and
//!   flushed after every sample; at the end the partial file is renamed over
//!   `out`. A later run with the same `out` skips every pair id already in
//!   `out` or `out.partial` (a torn last line is dropped), so an interrupted
//!   run resumes where it stopped and a finished run is a no-op.
//! * **Shards.** `shard = (i, n)` (0-based) takes the i-th of n contiguous
//!   blocks of the samples; concatenating the outputs of shards 0..n gives
//!   the single run's file byte for byte (every random draw is seeded by the
//!   sample id, never by its position).
//! * **Bad inputs** (missing image or heatmap, shape mismatch, all-zero
//!   heatmap, empty answer, answer with no chunk) skip the sample with a
//!   reason code, counted in the summary; nothing panics.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::chunk::{chunk_answer, Chunk};
use super::keyword::select_keyword;
use super::perturb::{perturbation, Fill, PairKind, PerturbInput, Perturbed};
use super::preview::{pair_sheet, PreviewInput};
use super::record::{build, pair_id, safe_name, RecordParts};
use super::vocab::Vocabulary;
use super::weight::{pair_weight, DEFAULT_LAMBDA};
use crate::data::pairs::{read_pairs, write_rule_pairs, PairRecord};
use crate::data::Sample;
use crate::encode::DualEncoder;
use crate::heatmap::pool::check_heatmap;
use crate::heatmap::region::{RegionOptions, Threshold};
use crate::heatmap::{Heatmap, HeatmapError, HeatmapFault, HeatmapSource, SampleView};
use crate::util::fsio::atomic_write;
use crate::util::render::png_bytes;

/// The default prompt of report samples (they have no question).
pub const DEFAULT_REPORT_PROMPT: &str = crate::data::REPORT_PROMPT;

/// How to curate.
#[derive(Clone, Debug)]
pub struct CurateConfig {
    /// Pair kinds to make, in record order.
    pub kinds: Vec<PairKind>,
    /// λ of Eq. 11 (0 gives w = 1).
    pub lambda: f64,
    /// Seed of every random draw (k̃), combined with the sample id.
    pub seed: u64,
    /// `(i, n)`: curate only the i-th (0-based) of n contiguous blocks.
    pub shard: Option<(usize, usize)>,
    /// Ω* (Eq. 8).
    pub region: RegionOptions,
    /// How the false-positive image fills Ω*.
    pub fill: Fill,
    /// The vocabulary 𝒦.
    pub vocab: Vocabulary,
    /// Write a preview sheet for the first `preview` pairs of this run.
    pub preview: usize,
    /// The dataset folder: chosen images are stored under their path
    /// relative to it (else under a hash of their folder).
    pub data_root: Option<PathBuf>,
    /// The prompt of samples without a question (reports).
    pub report_prompt: String,
}

impl Default for CurateConfig {
    fn default() -> Self {
        CurateConfig {
            kinds: PairKind::ALL.to_vec(),
            lambda: DEFAULT_LAMBDA,
            seed: 0,
            shard: None,
            region: RegionOptions::default(),
            fill: Fill::Zero,
            vocab: Vocabulary::default_vocab(),
            preview: 0,
            data_root: None,
            report_prompt: DEFAULT_REPORT_PROMPT.to_string(),
        }
    }
}

impl CurateConfig {
    /// A hash of everything that decides the pairs (not the shard, preview
    /// or data root), recorded in each pair's `config_hash`.
    pub fn hash(&self, heatmap_source: &str) -> String {
        use sha2::Digest;
        let thr = match self.region.threshold {
            Threshold::FractionOfMax(f) => format!("frac{f}"),
            Threshold::TopQuantile(q) => format!("topq{q}"),
        };
        let desc = serde_json::json!({
            "kinds": self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "lambda": self.lambda,
            "seed": self.seed,
            "region": format!("{thr}/{:?}/{}", self.region.connectivity, self.region.dilate_px),
            "fill": self.fill,
            "vocab": self.vocab.fingerprint(),
            "heatmap_source": heatmap_source,
            "report_prompt": self.report_prompt,
        });
        let h = sha2::Sha256::digest(desc.to_string().as_bytes());
        format!("{h:x}")[..16].to_string()
    }

    fn check(&self) -> Result<()> {
        if self.kinds.is_empty() {
            bail!("no pair kinds to curate");
        }
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            bail!("λ = {}: Eq. 11 needs a finite λ >= 0", self.lambda);
        }
        if let Some((i, n)) = self.shard {
            if n == 0 || i >= n {
                bail!("shard {i}/{n}: expected 0 <= i < n (0-based)");
            }
        }
        Ok(())
    }
}

/// Parse `i/n` (0-based shard index).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once('/')
        .with_context(|| format!("--shard {s:?}: expected i/n, e.g. 0/4"))?;
    let i: usize = a
        .trim()
        .parse()
        .with_context(|| format!("--shard {s:?}: bad i"))?;
    let n: usize = b
        .trim()
        .parse()
        .with_context(|| format!("--shard {s:?}: bad n"))?;
    if n == 0 || i >= n {
        bail!("--shard {s:?}: expected 0 <= i < n (0-based)");
    }
    Ok((i, n))
}

/// The sample range of shard `(i, n)` over `len` samples.
pub fn shard_range(len: usize, shard: Option<(usize, usize)>) -> std::ops::Range<usize> {
    match shard {
        None => 0..len,
        Some((i, n)) => (i * len / n)..((i + 1) * len / n),
    }
}

/// Why a sample produced no pair (serialised as its snake_case code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    EmptyAnswer,
    NoChunk,
    MissingImage,
    ImageUnreadable,
    EncoderError,
    MissingHeatmap,
    ShapeMismatch,
    AllZeroHeatmap,
    HeatmapError,
}

impl SkipReason {
    /// The reason's code (`missing_heatmap`, ...), as in the summary's counts.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::EmptyAnswer => "empty_answer",
            SkipReason::NoChunk => "no_chunk",
            SkipReason::MissingImage => "missing_image",
            SkipReason::ImageUnreadable => "image_unreadable",
            SkipReason::EncoderError => "encoder_error",
            SkipReason::MissingHeatmap => "missing_heatmap",
            SkipReason::ShapeMismatch => "shape_mismatch",
            SkipReason::AllZeroHeatmap => "all_zero_heatmap",
            SkipReason::HeatmapError => "heatmap_error",
        }
    }

    /// The reason of a heatmap source's error, by the error's type: a
    /// [`HeatmapError`]'s fault, or an I/O error anywhere in the chain (the
    /// file could not be read) as a missing heatmap.
    pub fn of_heatmap_error(e: &anyhow::Error) -> SkipReason {
        if let Some(h) = e.downcast_ref::<HeatmapError>() {
            return match h.fault {
                HeatmapFault::AllZero => SkipReason::AllZeroHeatmap,
                HeatmapFault::ShapeMismatch => SkipReason::ShapeMismatch,
                HeatmapFault::Missing => SkipReason::MissingHeatmap,
            };
        }
        let io = |c: &(dyn std::error::Error + 'static)| {
            c.downcast_ref::<std::io::Error>().is_some()
                || matches!(
                    c.downcast_ref::<image::ImageError>(),
                    Some(image::ImageError::IoError(_))
                )
        };
        if e.chain().any(io) {
            SkipReason::MissingHeatmap
        } else {
            SkipReason::HeatmapError
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sample skipped for `reason`, with a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct SampleSkip {
    pub reason: SkipReason,
    pub message: String,
}

/// A sample that produced no pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedSample {
    /// Index in the input samples (before sharding).
    pub index: usize,
    pub id: String,
    pub reason: SkipReason,
    pub message: String,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurateSummary {
    pub out: PathBuf,
    pub heatmap_source: String,
    pub config_hash: String,
    /// Samples given, before sharding.
    pub input_samples: usize,
    pub shard: Option<(usize, usize)>,
    /// Samples in this shard.
    pub samples: usize,
    /// Samples whose pairs were all in the output already (resume).
    pub resumed_samples: usize,
    /// Pairs written by this run, per kind.
    pub pairs_per_kind: BTreeMap<String, usize>,
    /// Mean w of this run's pairs, per kind.
    pub mean_weight_per_kind: BTreeMap<String, f64>,
    /// Pairs in the output file after the run.
    pub pairs_in_file: usize,
    pub skipped_samples: Vec<SkippedSample>,
    /// Skipped samples per reason.
    pub skipped_by_reason: BTreeMap<String, usize>,
    /// Per kind, samples that kind could not perturb, per reason.
    pub kind_skips: BTreeMap<String, BTreeMap<String, usize>>,
    pub previews: Vec<PathBuf>,
    pub seconds: f64,
    /// Dataset records left out before curation for absent images (`--skip-missing`; filled
    /// by the caller that loaded the data).
    #[serde(default)]
    pub missing_images: crate::data::MissingImages,
}

impl CurateSummary {
    /// Pairs written by this run.
    pub fn pairs_written(&self) -> usize {
        self.pairs_per_kind.values().sum()
    }
}

impl fmt::Display for CurateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shard = match self.shard {
            Some((i, n)) => format!(" (shard {i}/{n})"),
            None => String::new(),
        };
        writeln!(
            f,
            "curated {} samples{shard} of {} with heatmaps '{}' in {:.1} s: {} new pairs, {} in {}",
            self.samples,
            self.input_samples,
            self.heatmap_source,
            self.seconds,
            self.pairs_written(),
            self.pairs_in_file,
            self.out.display()
        )?;
        if self.resumed_samples > 0 {
            writeln!(
                f,
                "  resumed: {} samples already written",
                self.resumed_samples
            )?;
        }
        for (k, n) in &self.pairs_per_kind {
            let w = self
                .mean_weight_per_kind
                .get(k)
                .copied()
                .unwrap_or(f64::NAN);
            writeln!(f, "  {k:<10} {n:>7} pairs, mean w {w:.4}")?;
        }
        for (k, reasons) in &self.kind_skips {
            let r: Vec<String> = reasons.iter().map(|(c, n)| format!("{c} {n}")).collect();
            writeln!(f, "  {k:<10} not applicable: {}", r.join(", "))?;
        }
        let total: usize = self.skipped_by_reason.values().sum();
        if total > 0 {
            let r: Vec<String> = self
                .skipped_by_reason
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            writeln!(f, "  skipped samples: {total} ({})", r.join(", "))?;
            for s in self.skipped_samples.iter().take(5) {
                writeln!(
                    f,
                    "    record {} (id {}): {}: {}",
                    s.index, s.id, s.reason, s.message
                )?;
            }
            if self.skipped_samples.len() > 5 {
                writeln!(f, "    ... (all in the summary JSON)")?;
            }
        }
        for p in &self.previews {
            writeln!(f, "  preview: {}", p.display())?;
        }
        Ok(())
    }
}

/// Pair ids already present in the output (`out` and `out.partial`); a
/// torn last line of the partial file is cut off.
fn existing_ids(out: &Path, partial: &Path) -> Result<(HashSet<String>, usize)> {
    let mut ids = HashSet::new();
    if out.is_file() {
        for p in read_pairs(out).with_context(|| format!("resuming from {}", out.display()))? {
            ids.insert(p.id);
        }
        if !partial.exists() {
            std::fs::copy(out, partial)
                .with_context(|| format!("cannot copy {} to resume", out.display()))?;
        }
    }
    if partial.is_file() {
        let f = std::fs::File::open(partial)
            .with_context(|| format!("cannot read {}", partial.display()))?;
        let mut good = 0u64;
        for line in std::io::BufReader::new(f).split(b'\n') {
            let line = line?;
            let complete = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
            match complete {
                Some(id) => {
                    ids.insert(id);
                    good += line.len() as u64 + 1;
                }
                None if line.iter().all(u8::is_ascii_whitespace) => good += line.len() as u64 + 1,
                None => break,
            }
        }
        let len = std::fs::metadata(partial)?.len();
        if good < len {
            let f = std::fs::OpenOptions::new().write(true).open(partial)?;
            f.set_len(good)?;
            f.sync_all()?;
        }
    }
    let n = ids.len();
    Ok((ids, n))
}

/// Where the chosen image of `path` is stored, relative to the pair file's folder.
fn chosen_rel(path: &Path, root: Option<&Path>) -> String {
    if let Some(rel) = root.and_then(|r| path.strip_prefix(r).ok()) {
        let parts: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(safe_name(&s.to_string_lossy())),
                _ => None,
            })
            .collect();
        if !parts.is_empty() {
            return format!("images/src/{}", parts.join("/"));
        }
    }
    use sha2::Digest;
    let dir = path
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let h = format!("{:x}", sha2::Sha256::digest(dir.as_bytes()));
    let name = path
        .file_name()
        .map(|n| safe_name(&n.to_string_lossy()))
        .unwrap_or_else(|| "image".into());
    format!("images/src/{}/{name}", &h[..12])
}

/// Link (or copy, atomically) `src` to `dst` unless `dst` exists.
/// Place the source image `src` inside the pair folder `pair_dir` (a hard link, or a copy
/// across file systems) and return its path relative to `pair_dir`, the form pair files
/// store (`data::pairs::PairRecord::resolve_images` resolves it under the pair file's
/// folder). Images of a dataset root `data_root` keep their relative layout under
/// `images/src/`; others go to a folder named by a hash of their directory.
pub fn store_source_image(pair_dir: &Path, src: &Path, data_root: Option<&Path>) -> Result<String> {
    let rel = chosen_rel(src, data_root);
    store_image(src, &pair_dir.join(&rel))?;
    Ok(rel)
}

fn store_image(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    let bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    atomic_write(dst, &bytes)
}

/// What one sample produced.
struct SampleOutput {
    records: Vec<PairRecord>,
    previews: Vec<PathBuf>,
}

/// Curate `samples` into `out` (see the module docs); the library entry
/// point. `encoder` embeds images and texts (Eq. 3-5, 11), `heatmaps` gives
/// H for each sample (Eq. 2).
pub fn run(
    cfg: &CurateConfig,
    samples: &[Sample],
    encoder: &DualEncoder,
    heatmaps: &dyn HeatmapSource,
    out: &Path,
) -> Result<CurateSummary> {
    run_with_progress(cfg, samples, encoder, heatmaps, out, &mut |_, _| {})
}

/// [`run`], calling `progress(done, total)` after each sample of the shard.
pub fn run_with_progress(
    cfg: &CurateConfig,
    samples: &[Sample],
    encoder: &DualEncoder,
    heatmaps: &dyn HeatmapSource,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CurateSummary> {
    cfg.check()?;
    let start = Instant::now();
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let (done, _) = existing_ids(out, &partial)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .with_context(|| format!("cannot open {}", partial.display()))?;

    let source_name = heatmaps.name().to_string();
    let hash = cfg.hash(&source_name);
    let range = shard_range(samples.len(), cfg.shard);
    let mut summary = CurateSummary {
        out: out.to_path_buf(),
        heatmap_source: source_name.clone(),
        config_hash: hash.clone(),
        input_samples: samples.len(),
        shard: cfg.shard,
        samples: range.len(),
        ..CurateSummary::default()
    };
    let mut weight_sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut previews_left = cfg.preview;
    let total = range.len();
    for (n, index) in range.enumerate() {
        let sample = &samples[index];
        let todo: Vec<PairKind> = cfg
            .kinds
            .iter()
            .copied()
            .filter(|k| !done.contains(&pair_id(&sample.id, *k)))
            .collect();
        if todo.is_empty() {
            summary.resumed_samples += 1;
            progress(n + 1, total);
            continue;
        }
        let ctx = SampleCtx {
            cfg,
            encoder,
            heatmaps,
            out_dir: &out_dir,
            hash: &hash,
            source_name: &source_name,
        };
        match ctx.curate_sample(sample, &todo, &mut summary, &mut previews_left) {
            Ok(Ok(o)) => {
                let mut buf = Vec::new();
                for r in &o.records {
                    serde_json::to_writer(&mut buf, r)?;
                    buf.push(b'\n');
                    *summary.pairs_per_kind.entry(r.kind.clone()).or_default() += 1;
                    *weight_sums.entry(r.kind.clone()).or_default() += r.weight;
                }
                file.write_all(&buf)
                    .and_then(|_| file.flush())
                    .with_context(|| format!("cannot append to {}", partial.display()))?;
                summary.previews.extend(o.previews);
            }
            Ok(Err(SampleSkip { reason, message })) => {
                *summary
                    .skipped_by_reason
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
                summary.skipped_samples.push(SkippedSample {
                    index,
                    id: sample.id.clone(),
                    reason,
                    message,
                });
            }
            Err(e) => {
                return Err(e.context(format!("record {index} (id {})", sample.id)));
            }
        }
        progress(n + 1, total);
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, out).with_context(|| {
        format!(
            "cannot move {} into place at {}",
            partial.display(),
            out.display()
        )
    })?;
    for (k, s) in &weight_sums {
        let n = summary.pairs_per_kind.get(k).copied().unwrap_or(0);
        if n > 0 {
            summary.mean_weight_per_kind.insert(k.clone(), s / n as f64);
        }
    }
    summary.pairs_in_file = done.len() + summary.pairs_written();
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Write the pairs of `pairs_file` in the RULE / MMedPO layout to `rule_out`
/// (image paths stay relative to `pairs_file`'s folder, so put `rule_out` beside it).
pub fn export_rule(pairs_file: &Path, rule_out: &Path) -> Result<usize> {
    let pairs = read_pairs(pairs_file)?;
    write_rule_pairs(rule_out, &pairs)?;
    Ok(pairs.len())
}

/// A heatmap source from its command-line spec: `file[:DIR]` (DAug `.npy`
/// files; default `DATA/heatmaps`), `mask[:SIGMA]` (the lesion mask,
/// optionally smoothed), `gradcam`, `attention` (rollout) or `uniform` (the
/// ablation baseline).
pub fn heatmap_source_from_spec(
    spec: &str,
    data_dir: &Path,
    encoder: &std::sync::Arc<DualEncoder>,
) -> Result<Box<dyn HeatmapSource>> {
    use crate::encode::{gradcam::GradCamSource, rollout::RolloutSource};
    use crate::heatmap::{file::FileSource, mask::MaskSource, uniform::UniformSource};
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    Ok(match (name, arg) {
        ("file", dir) => Box::new(FileSource {
            dir: dir
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("heatmaps")),
            class: None,
        }),
        ("mask", None) => Box::new(MaskSource { sigma: None }),
        ("mask", Some(s)) => {
            let sigma: f32 = s
                .parse()
                .with_context(|| format!("heatmap source {spec:?}: bad smoothing sigma"))?;
            Box::new(MaskSource { sigma: Some(sigma) })
        }
        ("gradcam", None) => Box::new(GradCamSource {
            encoder: encoder.clone(),
            layer: None,
        }),
        ("attention", None) => Box::new(RolloutSource {
            encoder: encoder.clone(),
        }),
        ("uniform", None) => Box::new(UniformSource::default()),
        _ => bail!(
            "unknown heatmap source {spec:?} (expected file[:DIR], mask[:SIGMA], gradcam, attention or uniform)"
        ),
    })
}

struct SampleCtx<'a> {
    cfg: &'a CurateConfig,
    encoder: &'a DualEncoder,
    heatmaps: &'a dyn HeatmapSource,
    out_dir: &'a Path,
    hash: &'a str,
    source_name: &'a str,
}

type SampleResult = std::result::Result<SampleOutput, SampleSkip>;

fn skip(reason: SkipReason, message: impl Into<String>) -> Result<SampleResult> {
    Ok(Err(SampleSkip {
        reason,
        message: message.into(),
    }))
}

/// A skip for a heatmap source's error, its reason from the error's type.
fn skip_heatmap(e: anyhow::Error) -> Result<SampleResult> {
    skip(SkipReason::of_heatmap_error(&e), format!("{e:#}"))
}

impl SampleCtx<'_> {
    fn curate_sample(
        &self,
        sample: &Sample,
        todo: &[PairKind],
        summary: &mut CurateSummary,
        previews_left: &mut usize,
    ) -> Result<SampleResult> {
        let cfg = self.cfg;
        let id = sample.id.as_str();
        if sample.answer.trim().is_empty() {
            return skip(SkipReason::EmptyAnswer, "the answer is empty");
        }
        let chunks: Vec<Chunk> = chunk_answer(&sample.answer, sample.answer_type, &cfg.vocab);
        if chunks.is_empty() {
            return skip(
                SkipReason::NoChunk,
                format!(
                    "the answer {:?} has no chunk (no term, no clause)",
                    sample.answer
                ),
            );
        }
        let Some(image_path) = sample.images.first() else {
            return skip(SkipReason::MissingImage, "the sample has no image");
        };
        let decoded = match image::open(image_path) {
            Ok(d) => d,
            Err(e) => {
                let reason = if image_path.exists() {
                    SkipReason::ImageUnreadable
                } else {
                    SkipReason::MissingImage
                };
                return skip(reason, format!("{}: {e}", image_path.display()));
            }
        };
        let rgb = decoded.to_rgb8();
        let (iw, ih) = (rgb.width() as usize, rgb.height() as usize);
        let tensor = match self.encoder.image_tensor(&decoded) {
            Ok(t) => t,
            Err(e) => return skip(SkipReason::EncoderError, format!("{e:#}")),
        };
        let view = SampleView {
            id,
            image: Some(&tensor),
            image_path: Some(image_path),
            mask_path: sample.mask.as_deref(),
            text: Some(&sample.answer),
        };
        let heat: Heatmap = match self.heatmaps.heatmap(&view) {
            Ok(h) => h,
            Err(e) => return skip_heatmap(e),
        };
        if matches!(self.source_name, "file" | "mask") && (heat.height, heat.width) != (ih, iw) {
            return skip(
                SkipReason::ShapeMismatch,
                format!(
                    "heatmap is {}x{} but the image {} is {ih}x{iw} (height x width)",
                    heat.height,
                    heat.width,
                    image_path.display()
                ),
            );
        }
        if let Err(e) = check_heatmap(&heat, id) {
            return skip_heatmap(e);
        }
        let kw = match select_keyword(self.encoder, &tensor, &heat, id, &chunks) {
            Ok(k) => k,
            Err(e) => return skip_heatmap(e),
        };
        let chosen_image = chosen_rel(image_path, cfg.data_root.as_deref());
        let mut records = Vec::new();
        let mut previews = Vec::new();
        let prompt = sample
            .question
            .clone()
            .unwrap_or_else(|| cfg.report_prompt.clone());
        for kind in todo {
            let input = PerturbInput {
                id,
                answer: &sample.answer,
                answer_type: sample.answer_type,
                chunks: &chunks,
                k: kw.best,
                vocab: &cfg.vocab,
                seed: cfg.seed,
                heatmap: &heat,
                image: Some(&rgb),
                region: &cfg.region,
                fill: cfg.fill,
            };
            let p: Perturbed = match perturbation(*kind).apply(&input)? {
                Ok(p) => p,
                Err(s) => {
                    *summary
                        .kind_skips
                        .entry(kind.as_str().to_string())
                        .or_default()
                        .entry(s.code)
                        .or_default() += 1;
                    continue;
                }
            };
            let (w, cos) = pair_weight(self.encoder, &kw.v, &p.delta, cfg.lambda)
                .with_context(|| format!("sample {id}: weight of the {kind} pair"))?;
            let pid = pair_id(id, *kind);
            let rejected_image = match &p.image {
                Some(m) => {
                    let rel = format!("images/fp/{}.png", safe_name(&pid));
                    atomic_write(&self.out_dir.join(&rel), &png_bytes(&m.rgb)?)?;
                    rel
                }
                None => chosen_image.clone(),
            };
            let rec = build(&RecordParts {
                sample,
                kind: *kind,
                prompt: &prompt,
                chunks: &chunks,
                k: kw.best,
                similarities: &kw.similarities,
                perturbed: &p,
                weight: w,
                delta_cosines: &cos,
                chosen_image: chosen_image.clone(),
                rejected_image,
                heatmap_source: self.source_name,
                config_hash: self.hash,
            });
            if *previews_left > 0 {
                *previews_left -= 1;
                let path = self
                    .out_dir
                    .join("preview")
                    .join(format!("{}.png", safe_name(&pid)));
                let region = match &p.image {
                    Some(m) => m.region.clone(),
                    None => {
                        crate::heatmap::region::salient_region(&heat, id, (ih, iw), &cfg.region)?
                    }
                };
                let sheet = pair_sheet(&PreviewInput {
                    image: &rgb,
                    heatmap: &heat,
                    region: &region,
                    masked: p.image.as_ref().map(|m| &m.rgb),
                    record: &rec,
                    keyword_span: (chunks[kw.best].start, chunks[kw.best].end),
                })?;
                atomic_write(&path, &sheet)?;
                previews.push(path);
            }
            records.push(rec);
        }
        store_image(image_path, &self.out_dir.join(&chosen_image))?;
        Ok(Ok(SampleOutput { records, previews }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_in_order() {
        for len in [0usize, 1, 7, 10] {
            for n in 1..5 {
                let mut all = Vec::new();
                for i in 0..n {
                    all.extend(shard_range(len, Some((i, n))));
                }
                assert_eq!(all, (0..len).collect::<Vec<_>>());
            }
        }
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("x").is_err());
    }

    #[test]
    fn heatmap_error_reasons_come_from_the_error_type() {
        use crate::heatmap::{HeatmapError, HeatmapFault};
        let typed = |f| HeatmapError::err(f, "message").context("sample a");
        assert_eq!(
            SkipReason::of_heatmap_error(&typed(HeatmapFault::AllZero)),
            SkipReason::AllZeroHeatmap
        );
        assert_eq!(
            SkipReason::of_heatmap_error(&typed(HeatmapFault::ShapeMismatch)),
            SkipReason::ShapeMismatch
        );
        assert_eq!(
            SkipReason::of_heatmap_error(&typed(HeatmapFault::Missing)),
            SkipReason::MissingHeatmap
        );
        let io = std::fs::read("/nonexistent/hdpo/x.npy")
            .context("cannot read x.npy")
            .unwrap_err();
        assert_eq!(
            SkipReason::of_heatmap_error(&io),
            SkipReason::MissingHeatmap
        );
        // The message alone decides nothing.
        let untyped = anyhow::anyhow!("sample a: heatmap is all zero, shape 3x4, no such file");
        assert_eq!(
            SkipReason::of_heatmap_error(&untyped),
            SkipReason::HeatmapError
        );
        assert_eq!(
            serde_json::to_string(&SkipReason::AllZeroHeatmap).unwrap(),
            "\"all_zero_heatmap\""
        );
    }
}
