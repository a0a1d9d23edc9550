//! Checkpoint files: memory-mapped safetensors (single file or sharded with
//! `model.safetensors.index.json`), key layouts, and the list of tensors a
//! config needs (also the source of `hdpo model info`'s parameter count).
//!
//! Internally every tensor has a *canonical* name, the module names PEFT sees
//! in transformers 5 (`model.language_model.layers.0.self_attn.q_proj.weight`,
//! `lm_head.weight`, `model.vision_tower.vision_model.encoder.layers.0...`,
//! `model.multi_modal_projector.linear_1.weight`). [`canonical_name`] maps the
//! stored names of every supported layout onto them:
//!
//! | layout | decoder | lm head | vision | projector |
//! |---|---|---|---|---|
//! | HF legacy (transformers <= 4.51, 5.x save) | `language_model.model.*` | `language_model.lm_head` | `vision_tower.[vision_model.]*` | `multi_modal_projector.*` |
//! | HF new (transformers >= 4.52) | `model.language_model.*` | `lm_head` | `model.vision_tower.[vision_model.]*` | `model.multi_modal_projector.*` |
//! | original LLaVA-Med | `model.*` | `lm_head` | `model.vision_tower.vision_tower.vision_model.*` | `model.mm_projector.{0,2}` / `model.mm_projector` |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::{LlavaConfig, ProjectorKind, VisionAct, VisionConfig};

/// Map a stored tensor (or PEFT module) name of any supported layout to its
/// canonical name. Names that belong to no known part are returned unchanged.
pub fn canonical_name(name: &str) -> String {
    const LM: &str = "model.language_model.";
    const VT: &str = "model.vision_tower.vision_model.";
    const PJ: &str = "model.multi_modal_projector.";
    if name.starts_with(LM) || name.starts_with(VT) || name.starts_with(PJ) {
        return name.to_string();
    }
    if let Some(r) = name.strip_prefix("language_model.model.") {
        return format!("{LM}{r}");
    }
    if let Some(r) = name.strip_prefix("language_model.lm_head") {
        return format!("lm_head{r}");
    }
    if let Some(r) = name.strip_prefix("model.vision_tower.vision_tower.vision_model.") {
        return format!("{VT}{r}");
    }
    if let Some(r) = name.strip_prefix("vision_tower.vision_model.") {
        return format!("{VT}{r}");
    }
    if let Some(r) = name.strip_prefix("model.vision_tower.") {
        return format!("{VT}{r}");
    }
    if let Some(r) = name.strip_prefix("vision_tower.") {
        return format!("{VT}{r}");
    }
    if let Some(r) = name.strip_prefix("multi_modal_projector.") {
        return format!("{PJ}{r}");
    }
    if let Some(r) = name.strip_prefix("model.mm_projector.") {
        // mlp2x_gelu: Sequential(Linear, GELU, Linear) -> 0 and 2; linear: weight/bias.
        if let Some(rr) = r.strip_prefix("0.").or_else(|| r.strip_prefix("0")) {
            return format!("{PJ}linear_1{}{rr}", if rr.is_empty() { "" } else { "." });
        }
        if let Some(rr) = r.strip_prefix("2.").or_else(|| r.strip_prefix("2")) {
            return format!("{PJ}linear_2{}{rr}", if rr.is_empty() { "" } else { "." });
        }
        return format!("{PJ}linear_1.{r}");
    }
    if name == "model.mm_projector" {
        return format!("{PJ}linear_1");
    }
    if let Some(r) = name.strip_prefix("model.") {
        if r.starts_with("layers.") || r.starts_with("embed_tokens") || r.starts_with("norm") {
            return format!("{LM}{r}");
        }
    }
    name.to_string()
}

/// One tensor the model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Canonical name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Optional tensors (CLIP's unused `post_layernorm`) are counted in
    /// parameter totals but their absence is not an error.
    pub required: bool,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn spec(out: &mut Vec<TensorSpec>, name: String, shape: &[usize]) {
    out.push(TensorSpec {
        name,
        shape: shape.to_vec(),
        required: true,
    });
}

/// Every tensor `cfg` needs, with its shape, in a stable order.
pub fn expected_tensors(cfg: &LlavaConfig) -> Result<Vec<TensorSpec>> {
    let mut out = Vec::new();
    let t = &cfg.text;
    let lm = "model.language_model";
    let (h, i, hd) = (t.hidden_size, t.intermediate_size, t.head_dim);
    spec(
        &mut out,
        format!("{lm}.embed_tokens.weight"),
        &[t.vocab_size, h],
    );
    for l in 0..t.num_hidden_layers {
        let p = format!("{lm}.layers.{l}");
        spec(
            &mut out,
            format!("{p}.self_attn.q_proj.weight"),
            &[t.num_attention_heads * hd, h],
        );
        spec(
            &mut out,
            format!("{p}.self_attn.k_proj.weight"),
            &[t.num_key_value_heads * hd, h],
        );
        spec(
            &mut out,
            format!("{p}.self_attn.v_proj.weight"),
            &[t.num_key_value_heads * hd, h],
        );
        spec(
            &mut out,
            format!("{p}.self_attn.o_proj.weight"),
            &[h, t.num_attention_heads * hd],
        );
        spec(&mut out, format!("{p}.mlp.gate_proj.weight"), &[i, h]);
        spec(&mut out, format!("{p}.mlp.up_proj.weight"), &[i, h]);
        spec(&mut out, format!("{p}.mlp.down_proj.weight"), &[h, i]);
        spec(&mut out, format!("{p}.input_layernorm.weight"), &[h]);
        spec(
            &mut out,
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
        );
    }
    spec(&mut out, format!("{lm}.norm.weight"), &[h]);
    if !t.tie_word_embeddings {
        spec(&mut out, "lm_head.weight".into(), &[t.vocab_size, h]);
    }
    let v = cfg.vision()?;
    let vt = "model.vision_tower.vision_model";
    let d = v.hidden_size;
    spec(&mut out, format!("{vt}.embeddings.class_embedding"), &[d]);
    spec(
        &mut out,
        format!("{vt}.embeddings.patch_embedding.weight"),
        &[d, v.num_channels, v.patch_size, v.patch_size],
    );
    spec(
        &mut out,
        format!("{vt}.embeddings.position_embedding.weight"),
        &[v.num_patches() + 1, d],
    );
    spec(&mut out, format!("{vt}.pre_layrnorm.weight"), &[d]);
    spec(&mut out, format!("{vt}.pre_layrnorm.bias"), &[d]);
    for l in 0..v.num_hidden_layers {
        let p = format!("{vt}.encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            spec(&mut out, format!("{p}.self_attn.{proj}.weight"), &[d, d]);
            spec(&mut out, format!("{p}.self_attn.{proj}.bias"), &[d]);
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            spec(&mut out, format!("{p}.{ln}.weight"), &[d]);
            spec(&mut out, format!("{p}.{ln}.bias"), &[d]);
        }
        spec(
            &mut out,
            format!("{p}.mlp.fc1.weight"),
            &[v.intermediate_size, d],
        );
        spec(
            &mut out,
            format!("{p}.mlp.fc1.bias"),
            &[v.intermediate_size],
        );
        spec(
            &mut out,
            format!("{p}.mlp.fc2.weight"),
            &[d, v.intermediate_size],
        );
        spec(&mut out, format!("{p}.mlp.fc2.bias"), &[d]);
    }
    for n in ["weight", "bias"] {
        out.push(TensorSpec {
            name: format!("{vt}.post_layernorm.{n}"),
            shape: vec![d],
            required: false,
        });
    }
    let pj = "model.multi_modal_projector";
    let vin = d;
    spec(&mut out, format!("{pj}.linear_1.weight"), &[h, vin]);
    if cfg.projector_bias {
        spec(&mut out, format!("{pj}.linear_1.bias"), &[h]);
    }
    if cfg.projector == ProjectorKind::Mlp2xGelu {
        spec(&mut out, format!("{pj}.linear_2.weight"), &[h, h]);
        if cfg.projector_bias {
            spec(&mut out, format!("{pj}.linear_2.bias"), &[h]);
        }
    }
    Ok(out)
}

/// The safetensors files of a checkpoint directory, in shard order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: missing object `weight_map`", index.display()))?;
        let mut files: Vec<String> = Vec::new();
        for (k, f) in map {
            let f = f
                .as_str()
                .with_context(|| format!("{}: weight_map[{k}] is not a string", index.display()))?;
            if f.contains('/') || f.contains('\\') || f.contains("..") {
                bail!(
                    "{}: weight_map[{k}] names `{f}`, which is not a file in the checkpoint directory",
                    index.display()
                );
            }
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                bail!(
                    "{} names shard {}, which does not exist",
                    index.display(),
                    p.display()
                );
            }
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("adapter_") || n.starts_with("reference"))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        bail!(
            "no model.safetensors, model.safetensors.index.json or *.safetensors in {}",
            dir.display()
        );
    }
    Ok(found)
}

/// A memory-mapped checkpoint with its names mapped onto canonical names.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    st: MmapedSafetensors,
    /// canonical name -> stored name.
    canon_to_stored: HashMap<String, String>,
    /// stored name -> (shape, dtype).
    stored: BTreeMap<String, (Vec<usize>, safetensors::Dtype)>,
}

impl Checkpoint {
    /// Memory-map the safetensors of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = safetensors_files(dir)?;
        // SAFETY: the files are mapped read-only; hdpo never writes to a
        // checkpoint it has open (outputs go through atomic renames).
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .with_context(|| format!("cannot memory-map the safetensors in {}", dir.display()))?;
        let mut stored = BTreeMap::new();
        for (name, view) in st.tensors() {
            stored.insert(name, (view.shape().to_vec(), view.dtype()));
        }
        let mut canon_to_stored: HashMap<String, String> = HashMap::new();
        for name in stored.keys() {
            let c = canonical_name(name);
            if let Some(prev) = canon_to_stored.insert(c.clone(), name.clone()) {
                bail!(
                    "{}: tensors `{prev}` and `{name}` both map to `{c}`; mixed key layouts",
                    dir.display()
                );
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            st,
            canon_to_stored,
            stored,
        })
    }

    /// Stored names with their shapes and dtypes.
    pub fn stored(&self) -> &BTreeMap<String, (Vec<usize>, safetensors::Dtype)> {
        &self.stored
    }

    /// The stored name of a canonical tensor, if present.
    pub fn stored_name(&self, canonical: &str) -> Option<&str> {
        self.canon_to_stored.get(canonical).map(String::as_str)
    }

    /// The shape of a canonical tensor, if present.
    pub fn shape(&self, canonical: &str) -> Option<&[usize]> {
        self.stored_name(canonical)
            .and_then(|s| self.stored.get(s))
            .map(|(sh, _)| sh.as_slice())
    }

    /// Check every expected tensor and report ALL missing or mis-shaped ones.
    pub fn check(&self, expected: &[TensorSpec]) -> Result<()> {
        let mut problems = Vec::new();
        for s in expected {
            match self.shape(&s.name) {
                None if s.required => problems.push(format!("missing `{}`", s.name)),
                None => {}
                Some(sh) if sh != s.shape.as_slice() => problems.push(format!(
                    "`{}` (stored as `{}`) has shape {:?}, expected {:?}",
                    s.name,
                    self.stored_name(&s.name).unwrap_or(""),
                    sh,
                    s.shape
                )),
                Some(_) => {}
            }
        }
        problems.extend(self.layers_beyond(expected));
        if !problems.is_empty() {
            bail!(
                "checkpoint {} does not fit its config: {} problem(s):\n  {}",
                self.dir.display(),
                problems.len(),
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    /// Stored layers that the config does not have: a tensor `<stack>.layers.N.*` whose stack
    /// the config builds with fewer than N + 1 layers (a config with fewer layers than its
    /// checkpoint would otherwise drop the rest silently). One line per stack.
    fn layers_beyond(&self, expected: &[TensorSpec]) -> Vec<String> {
        fn split(name: &str) -> Option<(&str, usize)> {
            let i = name.find(".layers.")?;
            let rest = &name[i + ".layers.".len()..];
            let n = rest.split('.').next()?.parse().ok()?;
            Some((&name[..i], n))
        }
        let mut declared: HashMap<&str, usize> = HashMap::new();
        for s in expected {
            if let Some((stack, n)) = split(&s.name) {
                let e = declared.entry(stack).or_default();
                *e = (*e).max(n + 1);
            }
        }
        let mut beyond: BTreeMap<&str, usize> = BTreeMap::new();
        for canon in self.canon_to_stored.keys() {
            if let Some((stack, n)) = split(canon) {
                if declared.get(stack).is_some_and(|&d| n >= d) {
                    let e = beyond.entry(stack).or_default();
                    *e = (*e).max(n + 1);
                }
            }
        }
        beyond
            .into_iter()
            .map(|(stack, stored)| {
                format!(
                    "the checkpoint has {stored} layers under `{stack}` but the config declares \
                     {}; fix num_hidden_layers in config.json (no layer is dropped silently)",
                    declared[stack]
                )
            })
            .collect()
    }

    /// Load a canonical tensor onto `device` as `dtype`.
    pub fn load(&self, canonical: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let stored = self
            .stored_name(canonical)
            .with_context(|| format!("checkpoint {}: missing `{canonical}`", self.dir.display()))?;
        let t = self
            .st
            .load(stored, device)
            .with_context(|| format!("cannot load `{stored}` from {}", self.dir.display()))?;
        Ok(t.to_dtype(dtype)?)
    }

    /// Load a stored tensor by its stored name (for merging).
    pub fn load_stored(&self, stored: &str) -> Result<Tensor> {
        Ok(self.st.load(stored, &Device::Cpu)?)
    }

    /// Infer the CLIP tower's shape from the tensors (original LLaVA configs
    /// carry no vision config). Heads are `hidden / 64`, as in every OpenAI CLIP.
    pub fn infer_vision_config(&self) -> Result<VisionConfig> {
        let vt = "model.vision_tower.vision_model";
        let pe = self
            .shape(&format!("{vt}.embeddings.patch_embedding.weight"))
            .with_context(|| format!("{}: no vision tower tensors", self.dir.display()))?
            .to_vec();
        let pos = self
            .shape(&format!("{vt}.embeddings.position_embedding.weight"))
            .context("no position embedding")?
            .to_vec();
        let fc1 = self
            .shape(&format!("{vt}.encoder.layers.0.mlp.fc1.weight"))
            .context("no encoder layer 0")?
            .to_vec();
        let (&d, &c, &p) = match pe.as_slice() {
            [d, c, p, _] => (d, c, p),
            _ => bail!("patch_embedding has shape {pe:?}"),
        };
        let n_pos = *pos.first().context("bad position embedding")?;
        let grid = ((n_pos.saturating_sub(1)) as f64).sqrt().round() as usize;
        let mut layers = 0;
        while self
            .shape(&format!("{vt}.encoder.layers.{layers}.mlp.fc1.weight"))
            .is_some()
        {
            layers += 1;
        }
        Ok(VisionConfig {
            hidden_size: d,
            intermediate_size: *fc1.first().context("bad fc1")?,
            num_hidden_layers: layers,
            num_attention_heads: (d / 64).max(1),
            image_size: grid * p,
            patch_size: p,
            num_channels: c,
            layer_norm_eps: 1e-5,
            hidden_act: VisionAct::QuickGelu,
        })
    }
}
