//! Evaluation (paper 4.2-4.3): report and VQA metrics, subsets, probes, tables.

pub mod findings;
pub mod metrics;
pub mod plot;
pub mod probe;
pub mod stats;
pub mod subsets;
pub mod tables;
