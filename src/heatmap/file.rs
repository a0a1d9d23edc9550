//! Heatmaps from files (the `file` source): DAug's `{image_id}_{class}.npy`
//! (or `.png`) in one folder, read by `heatmap::io::read_daug`. Without a
//! class, the elementwise maximum over all of the image's classes.
//!
//! The image id is tried in this order: the sample id, the image file's stem
//! (`synpic54610` for `synpic54610.jpg`), the image's folder name
//! (`phantom_000123` for `imgs/phantom_000123/source.png`); the first with a
//! file wins. A file heatmap must have the image's size (checked when the
//! image path is known).

use std::path::PathBuf;

use anyhow::Result;

use super::io::{daug_files, read_daug, read_heatmap};
use super::source::{HeatmapSource, SampleView};
use super::{Heatmap, HeatmapError, HeatmapFault};

/// Heatmap files in a folder.
#[derive(Clone, Debug)]
pub struct FileSource {
    pub dir: PathBuf,
    /// Read `{id}_{class}.npy`; `None`: the maximum over every class file.
    pub class: Option<String>,
}

impl FileSource {
    /// The image ids to try for a sample, in order, deduplicated.
    pub fn candidate_ids(sample: &SampleView) -> Vec<String> {
        let mut ids = vec![sample.id.to_string()];
        if let Some(p) = sample.image_path {
            if let Some(s) = p.file_stem() {
                ids.push(s.to_string_lossy().into_owned());
            }
            if let Some(d) = p.parent().and_then(|d| d.file_name()) {
                ids.push(d.to_string_lossy().into_owned());
            }
        }
        let mut out: Vec<String> = Vec::new();
        for i in ids {
            if !i.is_empty() && !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
}

impl HeatmapSource for FileSource {
    fn name(&self) -> &str {
        "file"
    }

    fn heatmap(&self, sample: &SampleView) -> Result<Heatmap> {
        let expected = match sample.image_path {
            Some(p) => image::image_dimensions(p)
                .ok()
                .map(|(w, h)| (h as usize, w as usize)),
            None => None,
        };
        for id in Self::candidate_ids(sample) {
            let has = match &self.class {
                Some(c) => {
                    let p = self.dir.join(format!("{id}_{c}.npy"));
                    if !p.is_file() {
                        let png = self.dir.join(format!("{id}_{c}.png"));
                        if png.is_file() {
                            return read_heatmap(&png, expected).map_err(|e| {
                                e.context(format!("sample {}: heatmap file", sample.id))
                            });
                        }
                    }
                    p.is_file()
                }
                None => !daug_files(&self.dir, &id)?.is_empty(),
            };
            if has {
                return read_daug(&self.dir, &id, self.class.as_deref(), expected)
                    .map_err(|e| e.context(format!("sample {}: heatmap file", sample.id)));
            }
        }
        Err(HeatmapError::err(
            HeatmapFault::Missing,
            format!(
                "sample {}: no heatmap file {{{}}}_{}.npy in {} (missing heatmap)",
                sample.id,
                Self::candidate_ids(sample).join(","),
                self.class.as_deref().unwrap_or("<class>"),
                self.dir.display()
            ),
        ))
    }
}
