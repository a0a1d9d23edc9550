//! hdpo: Heatmap-informed Direct Preference Optimization (HDPO) for medical
//! vision-language models.
//!
//! The crate mirrors the pipeline of the paper's Figure 2 (see `docs/design.md`):
//!
//! ```text
//! data ──> heatmap ──> encode ──> curate ──> pairs ──> model + train ──> eval
//! ```
//!
//! Each module owns its types; later stages depend on earlier ones, never the
//! reverse. The `hdpo` binary (`src/main.rs`, `src/cli/`) only parses arguments
//! and shows progress.

pub mod curate;
pub mod data;
pub mod encode;
pub mod eval;
pub mod experiment;
pub mod heatmap;
pub mod model;
pub mod train;
pub mod util;
