//! The base layer: shared helpers every stage may use and that import no
//! stage: atomic file output and dataset-root-confined paths, run fingerprints,
//! output locks and input checks, numeric option validation, seeding,
//! progress bars, Gaussian blur, and rendering (font, colour map, PNG).

pub mod blur;
pub mod fsio;
pub mod guard;
pub mod progress;
pub mod render;
pub mod seed;
pub mod validate;

use std::path::PathBuf;

/// The shared folder with the reference fixtures and real data samples:
/// `$HDPO_SHARED` if set, else `../shared` beside this crate's manifest.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("HDPO_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}
