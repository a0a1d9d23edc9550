//! The run: data, encoder, base model, SFT model, then every cell of the grid
//! (pairs, preference training, prediction, metrics, probe), then the report.
//!
//! The run folder holds `config.toml` (the config as run), `run.json` (seed,
//! crate version, config fingerprint, timings), `data/`, `encoder/`,
//! `models/{base,sft}/`, `pairs/`, `cells/<key>/` and the report
//! (`results.json`, `tables.md`, `plots/`). Every stage whose output exists
//! under the same fingerprint is reused, so a rerun only computes what is
//! missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::baselines::{self, BuildContext, ImageTextScore, Responder};
use super::config::ExperimentConfig;
use super::grid::{self, Cell, CellCache, CellResult, CurvePoint, Variant};
use super::pieces::{self, DatasetData};
use super::report::{self, add_primary, DatasetSpec, Task, PROBE};
use super::tiny;
use crate::data::pairs::PairRecord;
use crate::data::{AnswerType, DatasetFormat, Sample, Split};
use crate::encode::DualEncoder;
use crate::eval::probe::{lesion_probe, Answerer};
use crate::eval::subsets::is_subtle_sample;
use crate::eval::tables::ResultRow;
use crate::model::{ChatTemplate, LlavaModel, LoraConfig, TargetModules, TextTokenizer};
use crate::train::{LossType, PreferencePair, SeqItem};
use crate::util::fsio::{atomic_write, write_json_atomic};
use crate::util::seed::rng_for;

/// Progress of a run, shown by the CLI (the library prints nothing).
pub trait Progress {
    /// A stage starts (`data`, `encoder`, `base model`, `sft`, `curation`, a cell key, `report`).
    fn stage(&self, name: &str, detail: &str);
    /// A stage ends after `seconds`, with a one-line summary.
    fn done(&self, name: &str, summary: &str, seconds: f64);
}

/// A [`Progress`] that only logs (tracing at info level).
pub struct LogProgress;

impl Progress for LogProgress {
    fn stage(&self, name: &str, detail: &str) {
        tracing::info!("{name}: {detail}");
    }
    fn done(&self, name: &str, summary: &str, seconds: f64) {
        tracing::info!("{name}: {summary} ({seconds:.1} s)");
    }
}

/// The record of a run (`run.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub crate_version: String,
    pub seed: u64,
    pub fingerprint: String,
    pub phantom: bool,
    /// Seconds per stage of the latest invocation.
    pub stage_seconds: BTreeMap<String, f64>,
    pub cells_computed: Vec<String>,
    pub cells_skipped: Vec<String>,
    pub total_seconds: f64,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub record: RunRecord,
    pub results: Vec<CellResult>,
    pub datasets: Vec<DatasetSpec>,
    pub files: report::ReportFiles,
    pub tables_markdown: String,
}

/// Everything the cells share.
struct Prepared<'a> {
    cfg: &'a ExperimentConfig,
    run_dir: PathBuf,
    datasets: Vec<DatasetData>,
    encoder: Arc<DualEncoder>,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    base_dir: PathBuf,
    sft_dir: Option<PathBuf>,
    sft_curve: Vec<CurvePoint>,
    vocabulary: Vec<(String, String)>,
}

fn timed<T>(
    progress: &dyn Progress,
    times: &mut BTreeMap<String, f64>,
    name: &str,
    detail: &str,
    f: impl FnOnce() -> Result<(T, String)>,
) -> Result<T> {
    progress.stage(name, detail);
    let t = Instant::now();
    let (v, summary) = f().with_context(|| format!("stage '{name}'"))?;
    let s = t.elapsed().as_secs_f64();
    progress.done(name, &summary, s);
    times.insert(name.to_string(), s);
    Ok(v)
}

/// Run the experiment of `cfg` into `run_dir` (see the module docs).
pub fn run(cfg: &ExperimentConfig, run_dir: &Path, progress: &dyn Progress) -> Result<RunOutcome> {
    cfg.validate()?;
    let t0 = Instant::now();
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create the run folder {}", run_dir.display()))?;
    let fingerprint = cfg.fingerprint();
    atomic_write(&run_dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let mut times = BTreeMap::new();
    let phantom = cfg.data.source == "phantom";

    let datasets = timed(progress, &mut times, "data", "samples and splits", || {
        let d = prepare_data(cfg, run_dir)?;
        let s = d
            .iter()
            .map(|d| {
                format!(
                    "{}: {} train / {} test",
                    d.spec.label,
                    d.train.len(),
                    d.test.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok((d, s))
    })?;
    let encoder = timed(
        progress,
        &mut times,
        "encoder",
        "dual encoder for curation (Eq. 3-6, 11)",
        || {
            let (enc, s) = prepare_encoder(cfg, run_dir, &datasets, &fingerprint)?;
            Ok((Arc::new(enc), s))
        },
    )?;
    let template = ChatTemplate::from_name(&cfg.model.template)?;
    let (tokenizer, base_dir) = timed(
        progress,
        &mut times,
        "base model",
        "the model before any tuning",
        || prepare_base(cfg, run_dir, &datasets, template, &fingerprint),
    )?;
    let need_sft = cfg.grid.sft.contains(&true);
    let (sft_dir, sft_curve) = if need_sft {
        timed(
            progress,
            &mut times,
            "sft",
            "supervised fine-tuning (LoRA, merged)",
            || {
                let (d, c, s) = prepare_sft(
                    cfg,
                    run_dir,
                    &datasets,
                    &tokenizer,
                    template,
                    &base_dir,
                    &fingerprint,
                )?;
                Ok(((Some(d), c), s))
            },
        )?
    } else {
        (None, Vec::new())
    };
    let mut vocabulary = crate::data::phantom::text::vocabulary();
    vocabulary.sort();
    vocabulary.dedup();
    let prep = Prepared {
        cfg,
        run_dir: run_dir.to_path_buf(),
        datasets,
        encoder,
        tokenizer,
        template,
        base_dir,
        sft_dir,
        sft_curve,
        vocabulary,
    };

    let cells = grid::cells(cfg);
    let cache = CellCache::new(run_dir, &fingerprint);
    let n = cells.len();
    let mut index = 0usize;
    let outcome = grid::run_cells(&cells, &cache, |cell| {
        index += 1;
        let name = format!("cell {index}/{n} {}", cell.key());
        progress.stage(&name, &describe(cell));
        let t = Instant::now();
        let r = compute_cell(&prep, cell, &cache)?;
        let s = t.elapsed().as_secs_f64();
        progress.done(&name, &summarise(&r), s);
        times.insert(format!("cell {}", cell.key()), s);
        Ok(r)
    })?;
    for k in &outcome.skipped {
        progress.done(&format!("cell {k}"), "finished earlier, skipped", 0.0);
    }

    let specs: Vec<DatasetSpec> = prep.datasets.iter().map(|d| d.spec.clone()).collect();
    let ablation_sft = !cfg.grid.sft.contains(&false);
    let mut header = header(cfg, phantom);
    if phantom {
        header.push_str(&sees_lesions(&prep, &cache, run_dir)?);
    }
    let files = timed(
        progress,
        &mut times,
        "report",
        "results.json, tables.md, plots",
        || {
            let audits = pieces::read_keyword_audits(&run_dir.join("pairs"))?;
            let spec = report::ReportSpec {
                header: &header,
                datasets: &specs,
                methods: &cfg.grid.methods,
                ablation_sft,
                main_source: &cfg.curation.heatmap_source,
                audits: &audits,
            };
            let f = report::write_report(run_dir, &cfg.name, phantom, &spec, &outcome.results)?;
            let s = format!("{} plots", f.plots.len());
            Ok((f, s))
        },
    )?;
    if phantom {
        let opts = crate::eval::findings::FindingsOptions {
            subtle_threshold: cfg.data.subtle_threshold,
            seed: cfg.seed,
            ..Default::default()
        };
        let cells: Vec<Cell> = outcome.results.iter().map(|r| r.cell.clone()).collect();
        let doc =
            super::hallucination::compute(&cells, |c| cache.cell_dir(c), &prep.datasets, &opts)?;
        if let Some(doc) = doc {
            doc.append_to(&files)?;
            let plots = files
                .results_json
                .parent()
                .unwrap_or(Path::new("."))
                .join("plots");
            doc.write_figures(&plots)?;
        }
    }
    let tables_markdown = std::fs::read_to_string(&files.tables_md)?;
    let record = RunRecord {
        name: cfg.name.clone(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        seed: cfg.seed,
        fingerprint,
        phantom,
        stage_seconds: times,
        cells_computed: outcome.computed.clone(),
        cells_skipped: outcome.skipped.clone(),
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    write_json_atomic(&run_dir.join("run.json"), &record)?;
    Ok(RunOutcome {
        run_dir: run_dir.to_path_buf(),
        record,
        results: outcome.results,
        datasets: specs,
        files,
        tables_markdown,
    })
}

fn header(cfg: &ExperimentConfig, phantom: bool) -> String {
    let mut h = format!("# Experiment `{}` (seed {})\n\n", cfg.name, cfg.seed);
    if phantom {
        h.push_str(
            "**PHANTOM NUMBERS.** These results come from the synthetic phantom benchmark and a tiny \
             randomly initialised LLaVA trained on it. They show that the pipeline runs end to end; \
             they are not the paper's numbers and say nothing about LLaVA-Med on real data.\n",
        );
    }
    h
}

/// The base model's "sees lesions" lines (`experiment::sees`) for each VQA
/// dataset, also written to `sees_lesions.json`; a note when they cannot be
/// measured (the base cell's files are missing).
fn sees_lesions(p: &Prepared, cache: &CellCache, run_dir: &Path) -> Result<String> {
    let dir = cache.cell_dir(&Cell::new("base", false));
    let mut text = String::new();
    let mut all = Vec::new();
    for d in p.datasets.iter().filter(|d| d.spec.task == Task::Vqa) {
        let slug = pieces::slug(&d.spec.label);
        match super::sees::from_files(
            &d.spec.label,
            &slug,
            &d.test,
            &dir,
            p.cfg.data.subtle_threshold,
        ) {
            Ok(s) => {
                text.push('\n');
                text.push_str(&s.markdown());
                all.push(s);
            }
            Err(e) => text.push_str(&format!(
                "\nWhether the base model sees lesions on {} could not be measured: {e:#}\n",
                d.spec.label
            )),
        }
    }
    write_json_atomic(&run_dir.join("sees_lesions.json"), &all)?;
    Ok(text)
}

fn describe(cell: &Cell) -> String {
    let start = if cell.sft { "SFT model" } else { "base model" };
    match (&cell.method[..], &cell.variant) {
        ("base", _) => "evaluate the base model".into(),
        ("sft", _) => "evaluate the SFT model".into(),
        (m, None) => format!("{m} from the {start}"),
        (m, Some(v)) => format!("{m} ({}) from the {start}", v.label()),
    }
}

fn summarise(r: &CellResult) -> String {
    let mut parts = Vec::new();
    for row in r.rows.iter().filter(|r| r.subset == "all") {
        if let Some(v) = row.metrics.get(report::PRIMARY) {
            parts.push(format!("{} {:.1}", row.dataset, v * 100.0));
        }
    }
    format!(
        "{} training items; mean metric {}",
        r.n_train,
        parts.join(", ")
    )
}

// ---------------------------------------------------------------- data

fn cap(mut v: Vec<Sample>, n: usize) -> Vec<Sample> {
    if n > 0 && v.len() > n {
        v.truncate(n);
    }
    v
}

fn split_samples(samples: Vec<Sample>, cfg: &ExperimentConfig) -> (Vec<Sample>, Vec<Sample>) {
    let (train, rest): (Vec<Sample>, Vec<Sample>) =
        samples.into_iter().partition(|s| s.split == Split::Train);
    let test: Vec<Sample> = rest
        .into_iter()
        .filter(|s| s.split == Split::Test)
        .collect();
    (
        cap(train, cfg.data.max_train_per_dataset),
        cap(test, cfg.data.max_test_per_dataset),
    )
}

fn prepare_data(cfg: &ExperimentConfig, run_dir: &Path) -> Result<Vec<DatasetData>> {
    let opts = crate::data::load::LoadOptions::default();
    let mut out = Vec::new();
    if cfg.data.source == "phantom" {
        let dir = run_dir.join("data").join("phantom");
        let pcfg = crate::data::phantom::PhantomConfig {
            seed: cfg.seed,
            train: cfg.data.train,
            val: 0,
            test: cfg.data.test,
            size: cfg.data.size,
            subtle_threshold: cfg.data.subtle_threshold,
            ..Default::default()
        };
        let marker = dir.join("phantom.json");
        let same = std::fs::read_to_string(dir.join(".hdpo-experiment-phantom"))
            .is_ok_and(|s| s == serde_json::to_string(&pcfg).unwrap_or_default());
        if !(marker.is_file() && same) {
            crate::data::phantom::generate(&pcfg, &dir)?;
            atomic_write(
                &dir.join(".hdpo-experiment-phantom"),
                serde_json::to_string(&pcfg)?.as_bytes(),
            )?;
        }
        for (label, format, task) in [
            ("Phantom VQA", DatasetFormat::Phantom, Task::Vqa),
            (
                "Phantom reports",
                DatasetFormat::PhantomReport,
                Task::Report,
            ),
        ] {
            let loaded = crate::data::load::load(format, &dir, &opts)?;
            let (train, test) = split_samples(loaded.samples, cfg);
            out.push(DatasetData {
                spec: DatasetSpec {
                    label: label.into(),
                    task,
                },
                train,
                test,
                root: dir.clone(),
                heatmaps: Some(dir.join("heatmaps")),
            });
        }
    } else {
        for d in &cfg.data.datasets {
            let format: DatasetFormat =
                <DatasetFormat as clap::ValueEnum>::from_str(&d.format, true).map_err(|e| {
                    anyhow::anyhow!("data.datasets '{}': field format: {e}", d.name)
                })?;
            let loaded = crate::data::load::load(format, &d.path, &opts)
                .with_context(|| format!("data.datasets '{}'", d.name))?;
            let task = if loaded
                .samples
                .iter()
                .any(|s| s.answer_type == AnswerType::Report)
            {
                Task::Report
            } else {
                Task::Vqa
            };
            let (train, test) = split_samples(loaded.samples, cfg);
            out.push(DatasetData {
                spec: DatasetSpec {
                    label: d.name.clone(),
                    task,
                },
                train,
                test,
                root: if d.path.is_dir() {
                    d.path.clone()
                } else {
                    d.path.parent().map(Path::to_path_buf).unwrap_or_default()
                },
                heatmaps: d.heatmaps.clone(),
            });
        }
    }
    for d in &out {
        ensure!(
            !d.train.is_empty(),
            "dataset '{}' has no training samples",
            d.spec.label
        );
        ensure!(
            !d.test.is_empty(),
            "dataset '{}' has no test samples",
            d.spec.label
        );
    }
    Ok(out)
}

fn all_train(datasets: &[DatasetData]) -> Vec<Sample> {
    datasets
        .iter()
        .flat_map(|d| d.train.iter().cloned())
        .collect()
}

/// A stage's output folder is reused when its `.done` file holds `key`.
fn stage_done(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(".done")).is_ok_and(|s| s == key)
}

fn mark_done(dir: &Path, key: &str) -> Result<()> {
    atomic_write(&dir.join(".done"), key.as_bytes())
}

// ---------------------------------------------------------------- encoder

fn prepare_encoder(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    datasets: &[DatasetData],
    fingerprint: &str,
) -> Result<(DualEncoder, String)> {
    let opts = crate::encode::LoadOptions::default();
    if let Some(p) = &cfg.encoder.path {
        let e =
            DualEncoder::load(p, &opts).with_context(|| format!("encoder.path {}", p.display()))?;
        return Ok((e, format!("loaded {}", p.display())));
    }
    let dir = run_dir.join("encoder");
    if stage_done(&dir, fingerprint) {
        return Ok((DualEncoder::load(&dir, &opts)?, "reused".into()));
    }
    // Report samples pair an image with its findings (VQA-only runs: question + answer).
    let train: Vec<crate::data::Sample> = datasets
        .iter()
        .flat_map(|d| d.train.iter().cloned())
        .collect();
    let e = &cfg.encoder;
    let pairs = if e.regions {
        let vocab = crate::curate::Vocabulary::default_vocab();
        crate::curate::regions::pairs_with_regions(
            &train,
            &vocab,
            crate::curate::regions::RegionHeatmaps::Masks,
        )
        .0
    } else {
        crate::encode::align::pairs_from_samples(&train)
    };
    let acfg = crate::encode::align::AlignConfig {
        image_size: e.image_size,
        patch_size: e.patch_size,
        vision_hidden: e.hidden,
        vision_layers: e.layers,
        vision_heads: e.heads,
        text_hidden: e.hidden,
        text_layers: e.layers,
        text_heads: e.heads,
        projection_dim: e.projection_dim,
        epochs: e.epochs,
        batch_size: e.batch_size,
        learning_rate: e.learning_rate,
        seed: cfg.seed,
        ..Default::default()
    };
    let rep = crate::encode::align::align(pairs, &acfg, &dir)?;
    mark_done(&dir, fingerprint)?;
    let mut s = format!(
        "{} training pairs, final loss {:.3}, held-out image->text R@1 {:.2} (chance {:.2})",
        rep.train_pairs,
        rep.epoch_loss.last().copied().unwrap_or(f64::NAN),
        rep.recall.image_to_text_r1,
        rep.recall.chance_r1
    );
    if let Some(g) = &rep.regions {
        s += &format!(", {}", g.describe());
    }
    Ok((DualEncoder::load(&dir, &opts)?, s))
}

// ---------------------------------------------------------------- models

/// The loop settings of a training stage: whole batches (no
/// accumulation), no intermediate checkpoints (stages are cached whole).
fn stage_run(batch_size: usize, epochs: usize, seed: u64) -> crate::train::RunConfig {
    crate::train::RunConfig {
        batch_size,
        micro_batch_size: batch_size,
        epochs,
        seed,
        checkpoint_every: 0,
        ..Default::default()
    }
}

/// The optimiser of a training stage: `learning_rate` with 5% warm-up.
fn stage_optim(learning_rate: f64) -> crate::train::OptimConfig {
    crate::train::OptimConfig {
        learning_rate,
        warmup_ratio: 0.05,
        ..Default::default()
    }
}

fn lora_config(cfg: &ExperimentConfig) -> LoraConfig {
    let mut l = LoraConfig::new(
        cfg.model.lora_r,
        cfg.model.lora_alpha,
        // The decoder's projections and the multimodal projector, so that SFT
        // and preference training can change how the image is read.
        TargetModules::Regex(
            r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|multi_modal_projector\.linear_[12])"
                .into(),
        ),
    );
    l.task_type = Some("CAUSAL_LM".into());
    l
}

fn load_model(cfg: &ExperimentConfig, dir: &Path) -> Result<LlavaModel> {
    let opts = crate::model::LoadOptions {
        device: crate::model::parse_device(&cfg.model.device)?,
        dtype: None,
    };
    LlavaModel::load(dir, &opts).with_context(|| format!("loading the model {}", dir.display()))
}

fn curve_of(run_dir: &Path) -> Vec<CurvePoint> {
    crate::train::metrics::read_log_rows(run_dir)
        .into_iter()
        .filter_map(|r| {
            Some(CurvePoint {
                step: r.step?,
                loss: r.loss?,
                margin: r.margin,
            })
        })
        .collect()
}

fn prepare_base(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    datasets: &[DatasetData],
    template: ChatTemplate,
    fingerprint: &str,
) -> Result<((TextTokenizer, PathBuf), String)> {
    if let Some(p) = &cfg.model.path {
        let model_cfg = crate::model::LlavaConfig::from_dir(p)?;
        let tok = TextTokenizer::from_dir(p, &model_cfg)?;
        return Ok(((tok, p.clone()), format!("loaded {}", p.display())));
    }
    let dir = run_dir.join("models").join("base");
    let load_tok = |dir: &Path| -> Result<TextTokenizer> {
        let t = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        Ok(tiny::text_tokenizer(t))
    };
    if stage_done(&dir, fingerprint) {
        return Ok(((load_tok(&dir)?, dir), "reused".into()));
    }
    let train = all_train(datasets);
    let pretrain = super::pretrain::samples(cfg, run_dir, &train)?;
    let mut texts = train.clone();
    if cfg.model.pretrain_studies > 0 {
        texts.extend(pretrain.iter().cloned());
    }
    let (mut model, tok) = tiny::init_tiny_model(&cfg.model, &texts, template, cfg.seed)?;
    let vocab = tok.get_vocab_size(true);
    let vars = tiny::make_trainable(&mut model)?;
    let ttok = tiny::text_tokenizer(tok.clone());
    let examples = pieces::sft_examples(&pretrain)?;
    let work = run_dir.join("models").join("base_pretrain");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let scfg = crate::train::SftConfig {
        run: stage_run(
            cfg.sft.batch_size,
            cfg.model.pretrain_epochs.max(1),
            cfg.seed,
        ),
        optim: crate::train::OptimConfig {
            weight_decay: 0.01,
            ..stage_optim(cfg.model.pretrain_learning_rate)
        },
    };
    if cfg.model.pretrain_vqa_epochs > 0 {
        // First the short answers alone: nearly every loss token then depends
        // on the image, and the steps are cheap (docs/experiments.md,
        // "Choosing the phantom base model").
        let vqa: Vec<Sample> = pretrain
            .iter()
            .filter(|s| s.answer_type != AnswerType::Report)
            .cloned()
            .collect();
        let first = crate::train::SftConfig {
            run: stage_run(cfg.sft.batch_size, cfg.model.pretrain_vqa_epochs, cfg.seed),
            ..scfg.clone()
        };
        pieces::train_full(
            &model,
            &ttok,
            template,
            vars.clone(),
            &pieces::sft_examples(&vqa)?,
            &first,
            &work.join("vqa"),
        )?;
    }
    let summary = if cfg.model.pretrain_epochs > 0 {
        pieces::train_full(&model, &ttok, template, vars, &examples, &scfg, &work)?
    } else {
        "n/a".into()
    };
    model.save_pretrained(&dir)?;
    tiny::save_tokenizer(&tok, &dir)?;
    let _ = std::fs::remove_dir_all(work.join("checkpoints"));
    let _ = std::fs::remove_dir_all(work.join("vqa").join("checkpoints"));
    mark_done(&dir, fingerprint)?;
    Ok((
        (load_tok(&dir)?, dir),
        format!(
            "tiny LLaVA, vocabulary {vocab}, pretrained on {} examples ({}) x {} epochs after {} epochs on their VQA alone, final loss {summary}",
            examples.len(),
            match cfg.model.pretrain_studies {
                0 => "the training split".to_string(),
                n => format!("{n} pretraining studies"),
            },
            cfg.model.pretrain_epochs,
            cfg.model.pretrain_vqa_epochs
        ),
    ))
}

#[allow(clippy::type_complexity)]
fn prepare_sft(
    cfg: &ExperimentConfig,
    run_dir: &Path,
    datasets: &[DatasetData],
    tok: &TextTokenizer,
    template: ChatTemplate,
    base_dir: &Path,
    fingerprint: &str,
) -> Result<(PathBuf, Vec<CurvePoint>, String)> {
    let dir = run_dir.join("models").join("sft");
    let work = run_dir.join("models").join("sft_run");
    if stage_done(&dir, fingerprint) {
        return Ok((dir, curve_of(&work), "reused".into()));
    }
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let mut model = load_model(cfg, base_dir)?;
    model.add_lora(lora_config(cfg), cfg.seed)?;
    let train = all_train(datasets);
    let examples = pieces::sft_examples(&train)?;
    let scfg = crate::train::SftConfig {
        run: stage_run(cfg.sft.batch_size, cfg.sft.epochs, cfg.seed),
        optim: stage_optim(cfg.sft.learning_rate),
    };
    let loss = pieces::train_sft(&model, tok, template, &examples, &scfg, &work)?;
    let adapter = work.join("adapter");
    model.save_adapter(&adapter)?;
    crate::model::merge::merge(base_dir, &adapter, &dir)?;
    std::fs::copy(base_dir.join("tokenizer.json"), dir.join("tokenizer.json"))
        .context("copying the tokenizer next to the SFT model")?;
    let _ = std::fs::remove_dir_all(work.join("checkpoints"));
    mark_done(&dir, fingerprint)?;
    Ok((
        dir,
        curve_of(&work),
        format!(
            "{} examples x {} epochs, final loss {loss}",
            examples.len(),
            cfg.sft.epochs
        ),
    ))
}

// ---------------------------------------------------------------- cells

/// The model as the self-generating baselines and the probe use it.
struct ModelView<'a> {
    model: &'a LlavaModel,
    tok: &'a TextTokenizer,
    template: ChatTemplate,
    max_new_tokens: usize,
}

impl Responder for ModelView<'_> {
    fn respond(&self, question: &str, image: &Path, temperature: f64, seed: u64) -> Result<String> {
        pieces::generate(
            self.model,
            self.tok,
            self.template,
            question,
            Some(image),
            temperature,
            seed,
            self.max_new_tokens,
        )
    }

    fn logp(&self, question: &str, answer: &str, image: Option<&Path>) -> Result<f64> {
        pieces::logp(
            self.model,
            self.tok,
            self.template,
            &SeqItem {
                prompt: question.into(),
                response: answer.into(),
                image: image.map(Path::to_path_buf),
            },
        )
    }
}

impl Answerer for ModelView<'_> {
    fn answer(&self, question: &str, image: &Path) -> Result<String> {
        pieces::generate(
            self.model,
            self.tok,
            self.template,
            question,
            Some(image),
            0.0,
            0,
            self.max_new_tokens,
        )
    }
}

struct EncoderScore<'a>(&'a DualEncoder);

impl ImageTextScore for EncoderScore<'_> {
    fn score(&self, image: &Path, text: &str) -> Result<f64> {
        let img = self.0.load_image(image)?;
        let v = self.0.embed_images(&img.unsqueeze(0)?)?;
        let t = self.0.embed_texts(&[text])?;
        let c = crate::encode::cosine(&v, &t)?;
        Ok(c.flatten_all()?.to_vec1::<f32>()?[0] as f64)
    }
}

fn start_dir<'p>(p: &'p Prepared, cell: &Cell) -> Result<&'p Path> {
    if cell.sft {
        p.sft_dir
            .as_deref()
            .context("the cell starts from the SFT model, but no SFT model was built")
    } else {
        Ok(&p.base_dir)
    }
}

/// Training pairs from the records of `pair_file`; image paths resolve under the pair
/// file's folder, the one rule every pair file follows (`PairRecord::resolve_images`).
fn to_pairs(pair_file: &Path, records: &[PairRecord]) -> Result<Vec<PreferencePair>> {
    records
        .iter()
        .map(|r| {
            let (chosen_image, rejected_image) = r.resolve_images(pair_file)?;
            Ok(PreferencePair {
                id: r.id.clone(),
                kind: r.kind.clone(),
                prompt: r.prompt.clone(),
                chosen: r.chosen.clone(),
                rejected: r.rejected.clone(),
                chosen_image: Some(chosen_image),
                rejected_image: Some(rejected_image),
                weight: r.weight,
            })
        })
        .collect()
}

/// A seeded subset of at most `max` pairs (0 = all), the same for every cell that shares `label`.
fn subset(
    mut pairs: Vec<PreferencePair>,
    max: usize,
    seed: u64,
    label: &str,
) -> Vec<PreferencePair> {
    if max > 0 && pairs.len() > max {
        pairs.shuffle(&mut rng_for(seed, &format!("pairs/{label}")));
        pairs.truncate(max);
    }
    pairs
}

/// HDPO's curated pairs with heatmap source `source`, cached under `pairs/`.
fn curated(p: &Prepared, source: &str) -> Result<Vec<PreferencePair>> {
    let dir = p.run_dir.join("pairs").join(format!("hdpo-{source}"));
    let key = format!("{}:{source}", p.cfg.fingerprint());
    if !stage_done(&dir, &key) {
        pieces::curate(p.cfg, &p.datasets, &p.encoder, source, &dir)?;
        mark_done(&dir, &key)?;
    }
    pieces::read_curated(&dir)
}

fn pairs_for(
    p: &Prepared,
    cell: &Cell,
    cache: &CellCache,
    view: &ModelView,
) -> Result<(Vec<PreferencePair>, LossType)> {
    let m = cell.method.as_str();
    if m == "dpo" || m == "hdpo" {
        let source = match &cell.variant {
            Some(Variant::Heatmap(h)) => h.clone(),
            _ => p.cfg.curation.heatmap_source.clone(),
        };
        let mut pairs = curated(p, &source)?;
        if let Some(Variant::ErrorType(e)) = &cell.variant {
            pairs.retain(|x| e.includes(&x.kind));
        }
        let label = format!(
            "curated-{source}-{}",
            cell.variant
                .as_ref()
                .map(Variant::label)
                .unwrap_or_default()
        );
        let loss = if m == "dpo" {
            LossType::Dpo
        } else {
            LossType::Hdpo
        };
        return Ok((
            subset(pairs, p.cfg.preference.max_pairs, p.cfg.seed, &label),
            loss,
        ));
    }
    let builder = baselines::by_name(m)?;
    let dir = cache.cell_dir(cell).join("pairs");
    std::fs::create_dir_all(&dir)?;
    let train = all_train(&p.datasets);
    // Self-generating builders sample the model: cap the samples first so the cost stays bounded.
    let cap = p.cfg.preference.max_generate_samples;
    let train: Vec<Sample> = if builder.needs_model() && cap > 0 && train.len() > cap {
        let mut t = train;
        t.shuffle(&mut rng_for(p.cfg.seed, &format!("baseline-samples/{m}")));
        t.truncate(cap);
        t
    } else {
        train
    };
    let scorer = EncoderScore(&p.encoder);
    let ctx = BuildContext {
        seed: p.cfg.seed,
        root: &dir,
        vocabulary: &p.vocabulary,
        responder: Some(view),
        scorer: Some(&scorer),
        samples_per_prompt: 3,
        temperature: 1.0,
    };
    let records = builder.build(&ctx, &train)?;
    let pair_file = dir.join("pairs.jsonl");
    crate::data::pairs::write_pairs(&pair_file, &records)?;
    let pairs = to_pairs(&pair_file, &records)?;
    Ok((
        subset(pairs, p.cfg.preference.max_pairs, p.cfg.seed, m),
        builder.loss(),
    ))
}

fn compute_cell(p: &Prepared, cell: &Cell, cache: &CellCache) -> Result<CellResult> {
    let t = Instant::now();
    let cfg = p.cfg;
    let dir = start_dir(p, cell)?;
    let mut model = load_model(cfg, dir)?;
    let work = cache.cell_dir(cell);
    let (n_train, curve) = if cell.is_preference() {
        model.add_lora(lora_config(cfg), cfg.seed)?;
        let (pairs, loss) = {
            let view = ModelView {
                model: &model,
                tok: &p.tokenizer,
                template: p.template,
                max_new_tokens: cfg.eval.max_new_tokens,
            };
            pairs_for(p, cell, cache, &view)?
        };
        if pairs.is_empty() {
            bail!("method '{}' built no preference pairs", cell.method);
        }
        let run = work.join("train");
        if run.exists() {
            std::fs::remove_dir_all(&run)?;
        }
        let pcfg = crate::train::PreferenceConfig {
            loss,
            alpha: cfg.preference.alpha,
            run: stage_run(cfg.preference.batch_size, cfg.preference.epochs, cfg.seed),
            optim: stage_optim(cfg.preference.learning_rate),
        };
        pieces::train_preference(&model, &p.tokenizer, p.template, &pairs, &pcfg, &run)?;
        let _ = std::fs::remove_dir_all(run.join("checkpoints"));
        (pairs.len(), curve_of(&run))
    } else if cell.method == "sft" {
        (all_train(&p.datasets).len(), p.sft_curve.clone())
    } else {
        (0, Vec::new())
    };
    let rows = evaluate(p, cell, &model, &work)?;
    Ok(CellResult {
        cell: cell.clone(),
        fingerprint: String::new(),
        rows,
        curve,
        n_train,
        seconds: t.elapsed().as_secs_f64(),
    })
}

fn evaluate(p: &Prepared, cell: &Cell, model: &LlavaModel, work: &Path) -> Result<Vec<ResultRow>> {
    let cfg = p.cfg;
    let meteor = pieces::meteor(cfg.eval.meteor_data.as_deref())?;
    let mut rows = Vec::new();
    for d in &p.datasets {
        let preds = pieces::predict(
            model,
            &p.tokenizer,
            p.template,
            &d.test,
            cfg.eval.max_new_tokens,
        )?;
        crate::util::fsio::atomic_write_with(
            &work.join(format!("predictions_{}.jsonl", pieces::slug(&d.spec.label))),
            |w| {
                for r in &preds {
                    serde_json::to_writer(&mut *w, r)?;
                    std::io::Write::write_all(w, b"\n")?;
                }
                Ok(())
            },
        )?;
        let mut subtle_idx = Vec::new();
        for (i, s) in d.test.iter().enumerate() {
            if is_subtle_sample(s, cfg.data.subtle_threshold)? {
                subtle_idx.push(i);
            }
        }
        let probe = if cfg.eval.probe {
            let view = ModelView {
                model,
                tok: &p.tokenizer,
                template: p.template,
                max_new_tokens: cfg.eval.max_new_tokens,
            };
            let r = lesion_probe(
                &view,
                &d.test,
                &Sample::prompt,
                &work.join("probe_images").join(pieces::slug(&d.spec.label)),
                cfg.eval.probe_max_samples,
            )?;
            write_json_atomic(
                &work.join(format!("probe_{}.json", pieces::slug(&d.spec.label))),
                &r,
            )?;
            Some(r.rate)
        } else {
            None
        };
        for (subset, idx) in [
            ("all", (0..preds.len()).collect::<Vec<_>>()),
            ("subtle", subtle_idx),
        ] {
            if idx.is_empty() {
                continue;
            }
            let chosen: Vec<_> = idx.iter().map(|&i| preds[i].clone()).collect();
            let metrics = pieces::score(d.spec.task, &chosen, &meteor)?;
            let mut row = ResultRow {
                method: cell.method.clone(),
                dataset: d.spec.label.clone(),
                sft: cell.sft,
                subset: subset.into(),
                variant: cell.variant.as_ref().map(Variant::label),
                n: chosen.len(),
                metrics,
            };
            add_primary(&mut row, d.spec.task);
            if let (Some(rate), "all") = (probe, subset) {
                row.metrics.insert(PROBE.into(), rate);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}
