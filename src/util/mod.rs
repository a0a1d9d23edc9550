//! Small shared utilities: atomic file output, dataset-root-confined paths, seeding.

pub mod fsio;
pub mod seed;
