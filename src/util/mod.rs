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
