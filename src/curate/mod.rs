//! Preference curation (paper 3.1-3.2, Eq. 3-12): chunks, keyword k*, the
//! vocabulary, the perturbations, differential keywords Δ, weight w and
//! pair records. The folder reads as the algorithm:
//!
//! | file | what | paper |
//! | --- | --- | --- |
//! | `vocab.rs` | terms with categories and concepts, longest match, k̃ draws | Eq. 7 (𝒦) |
//! | `chunk.rs` | the chunks t_j of y_gt with their spans | Eq. 4 |
//! | `keyword.rs` | v, u_j, s_j, k* | Eq. 3-6 |
//! | `perturb/` | `mis.rs`, `fp.rs`, `fn_neutral.rs`, `fn_delete.rs` behind one trait | Eq. 7-10 |
//! | `weight.rs` | Δ's cosines and w | Eq. 11 |
//! | `record.rs` | pair records with the audit fields | Eq. 12 |
//! | `run.rs` | the run: progress, summary, resume, shards | |
//! | `preview.rs` | a PNG sheet per pair | |
//! | `bench.rs` | curation throughput on a ViT-B/16-sized tower | |
//!
//! Library entry point: [`run::run`] (`curate::run(&CurateConfig, &samples,
//! &encoder, &heatmap_source, out_path) -> Result<CurateSummary>`).

pub mod audit;
pub mod bench;
pub mod chunk;
pub mod keyword;
pub mod perturb;
pub mod preview;
pub mod record;
pub mod regions;
pub mod run;
pub mod vocab;
pub mod weight;

pub use perturb::{Fill, PairKind};
pub use run::{
    export_rule, run, run_with_progress, CurateConfig, CurateSummary, SampleSkip, SkipReason,
    SkippedSample,
};
pub use vocab::Vocabulary;
