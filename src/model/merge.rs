//! `hdpo merge`: fold a LoRA adapter into the base weights (`W + (alpha/r) B A`)
//! and write a full checkpoint in the input's key layout, shard layout and
//! storage dtype. The other files of the model directory (config, tokenizer,
//! processor) are copied.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{canonical_name, safetensors_files};
use super::lora::{parse_adapter_key, read_adapter};

/// Problems between an adapter's config and its tensors: lora_A must be `[r, in]` and
/// lora_B `[out, r]` with the configured r (the scale is alpha / r, so another rank would
/// merge a wrong delta), and every adapted module must be one that `target_modules` names.
fn adapter_consistency(
    cfg: &super::lora::LoraConfig,
    pairs: &HashMap<String, (Option<Tensor>, Option<Tensor>)>,
) -> Result<Vec<String>> {
    let matches = cfg.matcher()?;
    let mut problems = Vec::new();
    let mut modules: Vec<&String> = pairs.keys().collect();
    modules.sort();
    for m in modules {
        let (a, b) = &pairs[m];
        if let Some(a) = a {
            if a.dims().first() != Some(&cfg.r) {
                problems.push(format!(
                    "lora_A of `{m}` has shape {:?}, but adapter_config.json says r = {}",
                    a.dims(),
                    cfg.r
                ));
            }
        }
        if let Some(b) = b {
            if b.dims().get(1) != Some(&cfg.r) {
                problems.push(format!(
                    "lora_B of `{m}` has shape {:?}, but adapter_config.json says r = {}",
                    b.dims(),
                    cfg.r
                ));
            }
        }
        if !matches(m) {
            problems.push(format!(
                "`{m}` is not matched by target_modules {:?} of adapter_config.json",
                cfg.target_modules
            ));
        }
    }
    Ok(problems)
}

/// Merge `adapter_dir` into `model_dir`, writing to `out_dir`. Returns the
/// number of merged weight matrices.
pub fn merge(model_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<usize> {
    let (cfg, tensors) = read_adapter(adapter_dir)?;
    let scale = cfg.scale();
    // module -> (A, B)
    let mut pairs: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (k, t) in &tensors {
        let (m, w) = parse_adapter_key(k)
            .with_context(|| format!("{}: unexpected tensor `{k}`", adapter_dir.display()))?;
        let e = pairs.entry(m).or_default();
        if w == 'A' {
            e.0 = Some(t.clone());
        } else {
            e.1 = Some(t.clone());
        }
    }
    let files = safetensors_files(model_dir)?;
    // Check everything before writing anything: the checks loading an adapter for training
    // or generation makes (rank as configured, modules matched by target_modules), then
    // that every adapted module has a base weight of B A's shape.
    let mut problems = adapter_consistency(&cfg, &pairs)?;
    let mut found = BTreeSet::new();
    for f in &files {
        // SAFETY: read-only mapping of an input file that is not written to.
        let st = unsafe { MmapedSafetensors::new(f) }
            .with_context(|| format!("cannot memory-map {}", f.display()))?;
        for (name, view) in st.tensors() {
            let canon = canonical_name(&name);
            let module = canon.strip_suffix(".weight").unwrap_or("");
            match pairs.get(module) {
                Some((Some(a), Some(b))) => {
                    let want = [
                        b.dims().first().copied().unwrap_or(0),
                        a.dims().get(1).copied().unwrap_or(0),
                    ];
                    if view.shape() != want {
                        problems.push(format!(
                            "`{name}` has shape {:?} but B A has shape {:?}",
                            view.shape(),
                            want
                        ));
                    }
                    found.insert(module.to_string());
                }
                Some(_) => problems.push(format!("adapter lacks lora_A or lora_B for `{module}`")),
                None => {}
            }
        }
    }
    for m in pairs.keys() {
        if !found.contains(m) {
            problems.push(format!(
                "adapted module `{m}` has no weight in {}",
                model_dir.display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "cannot merge {} into {}: {} problem(s):\n  {}",
            adapter_dir.display(),
            model_dir.display(),
            problems.len(),
            problems.join("\n  ")
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut merged = 0;
    for f in &files {
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::new(f) }
            .with_context(|| format!("cannot memory-map {}", f.display()))?;
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (name, _) in st.tensors() {
            let t = st.load(&name, &Device::Cpu)?;
            let canon = canonical_name(&name);
            let module = canon.strip_suffix(".weight").unwrap_or("");
            let t = match pairs.get(module) {
                Some((Some(a), Some(b))) => {
                    let ba = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale)?;
                    merged += 1;
                    (t.to_dtype(DType::F32)? + ba)?.to_dtype(t.dtype())?
                }
                _ => t,
            };
            out.insert(name, t);
        }
        let bytes = safetensors::serialize(&out, None)
            .with_context(|| format!("cannot serialise {}", f.display()))?;
        let fname = f.file_name().context("shard without a file name")?;
        crate::util::fsio::atomic_write(&out_dir.join(fname), &bytes)?;
    }
    for e in std::fs::read_dir(model_dir)
        .with_context(|| format!("cannot read {}", model_dir.display()))?
    {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if p.is_file() && !name.ends_with(".safetensors") {
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            crate::util::fsio::atomic_write(&out_dir.join(name), &bytes)?;
        }
    }
    Ok(merged)
}
