//! hdpo: Heatmap-informed Direct Preference Optimization (HDPO) for medical
//! vision-language models.
//!
//! The crate mirrors the pipeline of the paper's Figure 2 (see `docs/design.md`).
//! Its top modules are stages in a one-way order, lowest first:
//!
//! util < heatmap < data < encode < curate < train < model < eval < experiment
//!
//! A stage imports only itself and the stages before it, and no two modules
//! import each other (checked by `tests/layering.rs`):
//!
//! - `util`: the base layer (atomic file output, seeding, progress bars,
//!   Gaussian blur, rendering helpers);
//! - `heatmap`: the [`heatmap::Heatmap`] and [`heatmap::LesionMask`] types, their
//!   files, model-free heatmap sources, patch pooling (Eq. 2) and the salient
//!   region Ω*;
//! - `data`: dataset loaders, images, pair files and the phantom benchmark;
//! - `encode`: the dual encoder (Eq. 3-5), its alignment, and the heatmaps it
//!   explains itself with (GradCAM, attention rollout);
//! - `curate`: preference-pair curation (paper 3.1);
//! - `train`: losses (Eq. 1, 13) and the training engine over the policy traits;
//! - `model`: the LLaVA-style policy that implements those traits;
//! - `eval`: metrics, probes, tables and plots;
//! - `experiment`: the end-to-end experiment and its baselines.
//!
//! The `hdpo` binary (`src/main.rs`, `src/cli/`) only parses arguments and
//! shows progress.

pub mod curate;
pub mod data;
pub mod encode;
pub mod eval;
pub mod experiment;
pub mod heatmap;
pub mod model;
pub mod train;
pub mod util;
