//! The one entry point through which every dataset format becomes [`super::Sample`]s
//! (the format files share the record helpers of [`super::reader`]).

use std::path::Path;

use anyhow::{bail, Result};

pub use super::reader::{LoadOptions, LoadOutcome};
use super::DatasetFormat;

/// Load the dataset at `root` (its folder, or for single-file formats the file
/// itself) in the given format.
pub fn load(format: DatasetFormat, root: &Path, opts: &LoadOptions) -> Result<LoadOutcome> {
    if !root.exists() {
        bail!("dataset path {} does not exist", root.display());
    }
    match format {
        DatasetFormat::VqaRad => super::vqa_rad::load(root, opts),
        DatasetFormat::Slake => super::slake::load(root, opts, "slake"),
        DatasetFormat::Phantom => super::slake::load(root, opts, "phantom"),
        DatasetFormat::R2gen => super::r2gen::load(root, opts, None),
        DatasetFormat::PhantomReport => super::r2gen::load(root, opts, Some("phantom")),
        DatasetFormat::Rule => super::rule::load(root, opts),
    }
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
