//! The paper's experiments end to end (section 4, Tables 1-5): the grid of
//! methods x starting points (base / SFT) x ablations, the baselines, the
//! on-disk cell cache, `results.json`, Markdown tables and PNG plots.
//!
//! ```text
//! config ──> data (phantom or paths) ──> encoder ──> base model ──> SFT model
//!                                                        │              │
//!         cells: pairs (curation or baselines/) ──> preference training ──> predict
//!                ──> metrics (all, subtle) + lesion-masking probe ──> cells/<key>/result.json
//!         report: results.json, tables.md (Tables 1-5, probe), plots/*.png
//! ```

pub mod baselines;
pub mod config;
pub mod grid;
pub mod hallucination;
pub mod pieces;
pub mod pipeline;
pub mod pretrain;
pub mod report;
pub mod sees;
pub mod tiny;

pub use config::ExperimentConfig;
pub use grid::{Cell, CellCache, CellResult, Variant};

/// The config of `hdpo demo`: the phantom default with every baseline from
/// both starting points (Tables 1-2 and the probe), without the ablation
/// cells of Tables 3-5 (to stay within 15 minutes on 2 cores); with `quick`
/// a smaller run with DPO and HDPO only and fewer samples and epochs. The
/// full demo's config differs from `configs/phantom.toml` only in its name
/// and grid lists, which the cell cache ignores, so `hdpo experiment --config
/// phantom --out <demo folder>` reuses the demo's cells and computes only the
/// ablations.
pub fn demo_config(quick: bool) -> ExperimentConfig {
    let mut c = ExperimentConfig::phantom();
    c.name = "demo".into();
    c.grid.error_types = false;
    c.grid.lambda_zero = false;
    c.grid.heatmap_sources.clear();
    if quick {
        c.name = "demo-quick".into();
        c.data.train = 50;
        c.data.test = 16;
        c.data.max_train_per_dataset = 100;
        c.data.max_test_per_dataset = 24;
        c.encoder.epochs = 4;
        // The quick base model pretrains on its 50 training studies, as
        // before the pretraining phantom: 1,000 pretraining studies alone
        // take longer than the quick demo's budget (docs/experiments.md).
        c.model.pretrain_studies = 0;
        c.model.pretrain_vqa_epochs = 0;
        c.model.pretrain_epochs = 10;
        c.model.pretrain_learning_rate = 0.003;
        c.sft.epochs = 1;
        c.preference.max_pairs = 64;
        c.eval.probe_max_samples = 8;
        c.grid.methods = vec!["dpo".into(), "hdpo".into()];
    }
    c
}
