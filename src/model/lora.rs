//! LoRA with PEFT semantics: `W x + (alpha / r) B A dropout(x)`, target
//! modules as PEFT matches them, A kaiming-uniform and B zero at init, and
//! adapters saved and loaded in PEFT's layout (`adapter_config.json` +
//! `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_{A,B}.weight`).
//!
//! A and B are candle [`Var`]s held in their own [`VarMap`] (for AdamW); the
//! frozen base weights are plain tensors, so only LoRA tensors get gradients.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use serde_json::{json, Value};

use super::checkpoint::canonical_name;
use super::nn::{Lora, LoraLinear};

/// PEFT's `target_modules`: a list of names (a module matches when its name
/// equals one or ends with `.name`) or one regex string (full match).
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

/// The LoRA hyper-parameters (PEFT `LoraConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub target_modules: TargetModules,
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
    pub task_type: Option<String>,
}

impl LoraConfig {
    /// A config with PEFT's defaults for everything but `r`, alpha and targets.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            use_rslora: false,
            base_model_name_or_path: None,
            task_type: None,
        }
    }

    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// A compiled matcher for module names.
    pub fn matcher(&self) -> Result<impl Fn(&str) -> bool> {
        let re = match &self.target_modules {
            TargetModules::Regex(s) => Some(
                regex::Regex::new(&format!("^(?:{s})$"))
                    .with_context(|| format!("target_modules regex `{s}` is invalid"))?,
            ),
            TargetModules::List(_) => None,
        };
        let list = match &self.target_modules {
            TargetModules::List(l) => l.clone(),
            TargetModules::Regex(_) => Vec::new(),
        };
        Ok(move |name: &str| match &re {
            Some(re) => re.is_match(name),
            None => list
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
        })
    }

    /// Parse PEFT's `adapter_config.json`.
    pub fn from_json(v: &Value, what: &str) -> Result<Self> {
        if let Some(t) = v.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                bail!("{what}: peft_type is `{t}`, only LORA is supported");
            }
        }
        if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
            bail!("{what}: DoRA adapters are not supported");
        }
        if v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
            bail!("{what}: fan_in_fan_out adapters are not supported");
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key)
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty())
            {
                bail!("{what}: a non-empty {key} is not supported");
            }
        }
        if let Some(b) = v.get("bias").and_then(Value::as_str) {
            if b != "none" {
                bail!("{what}: bias `{b}` is not supported (only `none`)");
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .with_context(|| format!("{what}: missing integer `r`"))? as usize;
        if r == 0 {
            bail!("{what}: r must be positive");
        }
        let lora_alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .with_context(|| format!("{what}: missing number `lora_alpha`"))?;
        let target_modules = match v.get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(a)) => TargetModules::List(
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .with_context(|| format!("{what}: target_modules holds a non-string"))
                    })
                    .collect::<Result<_>>()?,
            ),
            _ => bail!("{what}: missing `target_modules` (a list or a regex string)"),
        };
        Ok(LoraConfig {
            r,
            lora_alpha,
            lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            target_modules,
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            task_type: v
                .get("task_type")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// PEFT's `adapter_config.json` content.
    pub fn to_json(&self) -> Value {
        let targets = match &self.target_modules {
            TargetModules::List(l) => json!(l),
            TargetModules::Regex(s) => json!(s),
        };
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": self.task_type,
            "use_dora": false,
            "use_rslora": self.use_rslora
        })
    }
}

/// The PEFT file key of a LoRA tensor name (`<module>.lora_A.weight`).
pub fn peft_file_key(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// Parse a PEFT adapter file key (or in-memory name) into (canonical module, `A`|`B`).
pub fn parse_adapter_key(key: &str) -> Option<(String, char)> {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (suffix, which) in [
        (".lora_A.weight", 'A'),
        (".lora_B.weight", 'B'),
        (".lora_A.default.weight", 'A'),
        (".lora_B.default.weight", 'B'),
    ] {
        if let Some(m) = k.strip_suffix(suffix) {
            return Some((canonical_name(m), which));
        }
    }
    None
}

/// Attach fresh adapters to every linear whose name matches `cfg`: A drawn
/// kaiming-uniform (`U(-1/sqrt(in), 1/sqrt(in))`, PEFT's `a = sqrt(5)`) from
/// `util::seed::rng_for(seed, "lora-init/<module>")`, B zero. The vars go into
/// `varmap` as `<module>.lora_A.weight` / `.lora_B.weight`, in `dtype`.
/// Returns the number of adapted modules (an error when none matches).
pub fn attach(
    linears: Vec<&mut LoraLinear>,
    cfg: &LoraConfig,
    seed: u64,
    varmap: &VarMap,
    dtype: DType,
    device: &Device,
) -> Result<usize> {
    let m = cfg.matcher()?;
    let mut n = 0;
    let data = varmap.data();
    let mut data = data
        .lock()
        .map_err(|_| anyhow::anyhow!("LoRA var map lock poisoned"))?;
    for lin in linears {
        if !m(&lin.name) {
            continue;
        }
        let (out_f, in_f) = (lin.out_features(), lin.in_features());
        let mut rng = crate::util::seed::rng_for(seed, &format!("lora-init/{}", lin.name));
        let bound = 1.0 / (in_f as f64).sqrt();
        let a: Vec<f64> = (0..cfg.r * in_f)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_vec(a, (cfg.r, in_f), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_f, cfg.r), dtype, device)?;
        let a = Var::from_tensor(&a)?;
        let b = Var::from_tensor(&b)?;
        data.insert(format!("{}.lora_A.weight", lin.name), a.clone());
        data.insert(format!("{}.lora_B.weight", lin.name), b.clone());
        lin.lora = Some(Lora {
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
        });
        n += 1;
    }
    if n == 0 {
        bail!(
            "LoRA target_modules {:?} match no linear layer of the model",
            cfg.target_modules
        );
    }
    Ok(n)
}

/// Read an adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
pub fn read_adapter(dir: &Path) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let cp = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&cp).with_context(|| format!("cannot read {}", cp.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", cp.display()))?;
    let cfg = LoraConfig::from_json(&v, &cp.display().to_string())?;
    let wp = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&wp, &Device::Cpu)
        .with_context(|| format!("cannot read {}", wp.display()))?;
    Ok((cfg, tensors))
}

/// Copy adapter tensors (PEFT file keys) into attached LoRA vars, reporting
/// every unknown, missing or mis-shaped tensor.
pub fn set_weights(
    linears: Vec<&mut LoraLinear>,
    tensors: &HashMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    let mut by_module: BTreeMap<String, [Option<&Tensor>; 2]> = BTreeMap::new();
    let mut problems = Vec::new();
    for (k, t) in tensors {
        match parse_adapter_key(k) {
            Some((m, w)) => {
                let e = by_module.entry(m).or_default();
                e[if w == 'A' { 0 } else { 1 }] = Some(t);
            }
            None => problems.push(format!("unexpected tensor `{k}`")),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for lin in linears {
        let Some(l) = &lin.lora else { continue };
        seen.insert(lin.name.clone());
        let Some(pair) = by_module.get(&lin.name) else {
            problems.push(format!("missing LoRA tensors for `{}`", lin.name));
            continue;
        };
        for (i, (var, which)) in [(&l.a, 'A'), (&l.b, 'B')].into_iter().enumerate() {
            match pair[i] {
                None => problems.push(format!("missing `{}.lora_{which}.weight`", lin.name)),
                Some(t) if t.dims() != var.dims() => problems.push(format!(
                    "`{}.lora_{which}.weight` has shape {:?}, expected {:?}",
                    lin.name,
                    t.dims(),
                    var.dims()
                )),
                Some(t) => var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?,
            }
        }
    }
    for m in by_module.keys() {
        if !seen.contains(m) {
            problems.push(format!(
                "adapter has tensors for `{m}`, which is not a targeted linear layer of this model"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "adapter {what} does not fit the model: {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Write the adapters of `linears` to `dir` in PEFT's layout (atomically).
pub fn save(linears: Vec<&LoraLinear>, cfg: &LoraConfig, dir: &Path) -> Result<()> {
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for lin in linears {
        if let Some(l) = &lin.lora {
            map.insert(
                peft_file_key(&format!("{}.lora_A.weight", lin.name)),
                l.a.as_tensor().to_device(&Device::Cpu)?.contiguous()?,
            );
            map.insert(
                peft_file_key(&format!("{}.lora_B.weight", lin.name)),
                l.b.as_tensor().to_device(&Device::Cpu)?.contiguous()?,
            );
        }
    }
    if map.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = safetensors::serialize(&map, None).context("cannot serialise the adapter")?;
    crate::util::fsio::atomic_write(&dir.join("adapter_model.safetensors"), &bytes)?;
    crate::util::fsio::write_json_atomic(&dir.join("adapter_config.json"), &cfg.to_json())?;
    Ok(())
}
