//! The base layer: shared helpers every stage may use and that import no
//! stage: atomic file output and dataset-root-confined paths, seeding,
//! progress bars, Gaussian blur, and rendering (font, colour map, PNG).

pub mod blur;
pub mod fsio;
pub mod progress;
pub mod render;
pub mod seed;

use std::path::PathBuf;

/// The shared folder with the reference fixtures and real data samples:
/// `$HDPO_SHARED` if set, else `../shared` beside this crate's manifest.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("HDPO_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}
