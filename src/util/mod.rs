//! Small shared utilities: atomic file output, dataset-root-confined paths, seeding.

pub mod fsio;
pub mod guard;
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
