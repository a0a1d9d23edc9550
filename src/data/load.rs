//! The one entry point through which every dataset format becomes [`super::Sample`]s
//! (the format files share the record helpers of [`super::reader`]).

use std::path::Path;

use anyhow::{bail, Result};

pub use super::reader::MissingImages;
pub use super::reader::{LoadOptions, LoadOutcome};
use super::{DatasetFormat, RecordError};

/// Load the dataset at `root` (its folder, or for single-file formats the file
/// itself) in the given format.
pub fn load(format: DatasetFormat, root: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    if !root.exists() {
        bail!("dataset path {} does not exist", root.display());
    }
    // With skip_missing the format's loader accepts absent images and they are filtered
    // below, one rule for every format.
    let opts = &LoadOptions {
        require_images: opts.require_images && !opts.skip_missing,
        ..opts.clone()
    };
    let loaded = match format {
        DatasetFormat::VqaRad => super::vqa_rad::load(root, opts),
        DatasetFormat::Slake => super::slake::load(root, opts, "slake"),
        DatasetFormat::Phantom => super::slake::load(root, opts, "phantom"),
        DatasetFormat::R2gen => super::r2gen::load(root, opts, None),
        DatasetFormat::PhantomReport => super::r2gen::load(root, opts, Some("phantom")),
        DatasetFormat::Rule => super::rule::load(root, opts),
    }?;
    let loaded = if opts.skip_missing {
        without_missing_images(loaded)
    } else {
        loaded
    };
    unique_ids(loaded, root, opts.skip_bad)
}

/// Leave out the samples with an absent image file, counting them per split.
fn without_missing_images(mut loaded: LoadOutcome) -> LoadOutcome {
    let mut keep = Vec::with_capacity(loaded.samples.len());
    for s in loaded.samples {
        match s.images.iter().find(|p| !p.is_file()) {
            Some(absent) => {
                *loaded
                    .missing
                    .per_split
                    .entry(s.split.to_string())
                    .or_default() += 1;
                if loaded.missing.first.len() < MissingImages::EXAMPLES {
                    loaded.missing.first.push(absent.clone());
                }
            }
            None => keep.push(s),
        }
    }
    loaded.samples = keep;
    loaded
}

/// Sample ids key predictions, pairs and caches, so a dataset whose ids repeat is refused
/// (or, with `skip_bad`, every repeat after the first is skipped and counted).
fn unique_ids(mut loaded: LoadOutcome, root: &Path, skip_bad: bool) -> Result<LoadOutcome> {
    let mut first: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut keep = Vec::with_capacity(loaded.samples.len());
    for (i, s) in loaded.samples.into_iter().enumerate() {
        match first.get(&s.id) {
            Some(&j) => {
                let err = RecordError::new(
                    root,
                    format!(
                        "id '{}' occurs twice (samples {j} and {i}, split {}); ids must be \
                         unique",
                        s.id, s.split
                    ),
                )
                .record(i, Some(s.id.clone()))
                .field("id");
                if !skip_bad {
                    bail!("{err}");
                }
                loaded.skipped.push(err);
            }
            None => {
                first.insert(s.id.clone(), i);
                keep.push(s);
            }
        }
    }
    loaded.samples = keep;
    Ok(loaded)
}

/// Guess the format of the dataset at `root` from the files present.
pub fn detect_format(root: &Path) -> Result<DatasetFormat> {
    if root.is_file() {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(match name.as_str() {
            super::vqa_rad::JSON_NAME => DatasetFormat::VqaRad,
            "annotation.json" => DatasetFormat::R2gen,
            n if n.ends_with(".jsonl") => DatasetFormat::Rule,
            n if n.ends_with(".json") => DatasetFormat::Slake,
            _ => bail!(
                "cannot tell the dataset format of {}; pass --format",
                root.display()
            ),
        });
    }
    let has = |n: &str| root.join(n).is_file();
    if has(super::vqa_rad::JSON_NAME) {
        return Ok(DatasetFormat::VqaRad);
    }
    let slake_like = super::slake::SPLIT_FILES
        .iter()
        .any(|(_, names)| names.iter().any(|n| has(n)));
    if has("phantom.json") && slake_like {
        return Ok(DatasetFormat::Phantom);
    }
    if has("phantom.json") && has("annotation.json") {
        return Ok(DatasetFormat::PhantomReport);
    }
    if slake_like {
        return Ok(DatasetFormat::Slake);
    }
    if has("annotation.json") {
        return Ok(DatasetFormat::R2gen);
    }
    if !super::rule::jsonl_files(root)?.is_empty() {
        return Ok(DatasetFormat::Rule);
    }
    bail!(
        "cannot tell the dataset format of {}: none of '{}', train/validate/test.json, annotation.json or *.jsonl is there; pass --format",
        root.display(),
        super::vqa_rad::JSON_NAME
    )
}
