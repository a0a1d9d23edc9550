//! Reference log-probs (π_ref = the model with its adapters off), computed once
//! per pair and kept in the run folder as `ref_logps.jsonl`, so that later
//! epochs and `--resume` reuse them. Each row carries the exact bits of the
//! numbers (JSON decimals are for reading) and a fingerprint of the pair's
//! texts and images, so a cache made for other pairs is refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{PreferencePair, PreferencePolicy};
use crate::util::fsio::atomic_write_with;

/// The cache file name inside a run folder.
pub const FILE: &str = "ref_logps.jsonl";

/// log π_ref of a pair's two sides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefLogps {
    pub chosen: f64,
    pub rejected: f64,
}

#[derive(Serialize, Deserialize)]
struct Row {
    id: String,
    fingerprint: String,
    chosen: f64,
    rejected: f64,
    chosen_bits: String,
    rejected_bits: String,
}

/// A hash of everything in a pair that its log-probs depend on.
pub fn fingerprint(p: &PreferencePair) -> String {
    let mut h = Sha256::new();
    for part in [
        p.prompt.as_str(),
        p.chosen.as_str(),
        p.rejected.as_str(),
        &p.chosen_image
            .as_ref()
            .map(|x| x.display().to_string())
            .unwrap_or_default(),
        &p.rejected_image
            .as_ref()
            .map(|x| x.display().to_string())
            .unwrap_or_default(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_bits(s: &str, what: &str) -> Result<f64> {
    let b = u64::from_str_radix(s, 16).with_context(|| format!("{what}: '{s}' is not hex"))?;
    Ok(f64::from_bits(b))
}

/// Read a cache file into id → (fingerprint, logps).
pub fn read(path: &Path) -> Result<HashMap<String, (String, RefLogps)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not a valid row", path.display(), i + 1))?;
        let what = format!("{}: line {} (id '{}')", path.display(), i + 1, row.id);
        let c = parse_bits(&row.chosen_bits, &format!("{what}, field chosen_bits"))?;
        let r = parse_bits(&row.rejected_bits, &format!("{what}, field rejected_bits"))?;
        ensure!(
            c.is_finite() && r.is_finite(),
            "{what}: reference log-probs are not finite ({c}, {r})"
        );
        out.insert(
            row.id,
            (
                row.fingerprint,
                RefLogps {
                    chosen: c,
                    rejected: r,
                },
            ),
        );
    }
    Ok(out)
}

fn write(path: &Path, rows: &[(&PreferencePair, RefLogps)]) -> Result<()> {
    atomic_write_with(path, |w| {
        for (p, r) in rows {
            let row = Row {
                id: p.id.clone(),
                fingerprint: fingerprint(p),
                chosen: r.chosen,
                rejected: r.rejected,
                chosen_bits: format!("{:016x}", r.chosen.to_bits()),
                rejected_bits: format!("{:016x}", r.rejected.to_bits()),
            };
            serde_json::to_writer(&mut *w, &row)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Reference log-probs of `p` computed now (adapters off).
pub fn compute_one<P: PreferencePolicy + ?Sized>(
    policy: &P,
    p: &PreferencePair,
    index: usize,
) -> Result<RefLogps> {
    let t = policy
        .logps(&[p.chosen_item(), p.rejected_item()], false)
        .with_context(|| format!("reference log-probs of pair {index} (id '{}')", p.id))?;
    let v: Vec<f64> = t
        .detach()
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()
        .with_context(|| format!("pair {index} (id '{}'): log-probs must be [2]", p.id))?;
    let [c, r] = v[..] else {
        bail!(
            "pair {index} (id '{}'): the policy returned {} log-probs for 2 sequences",
            p.id,
            v.len()
        );
    };
    ensure!(
        c.is_finite() && r.is_finite(),
        "pair {index} (id '{}'): reference log-probs are not finite (chosen {c}, rejected {r})",
        p.id
    );
    Ok(RefLogps {
        chosen: c,
        rejected: r,
    })
}

/// The reference log-probs of every pair, in order: taken from
/// `<run_dir>/ref_logps.jsonl` where present (and made for the same pair
/// content), computed (adapters off) and added to the file otherwise.
pub fn load_or_compute<P: PreferencePolicy + ?Sized>(
    policy: &P,
    pairs: &[PreferencePair],
    run_dir: &Path,
) -> Result<Vec<RefLogps>> {
    let path = run_dir.join(FILE);
    let cached = if path.exists() {
        read(&path)?
    } else {
        HashMap::new()
    };
    let mut out: Vec<RefLogps> = Vec::with_capacity(pairs.len());
    let missing = pairs.iter().filter(|p| !cached.contains_key(&p.id)).count();
    let pb = crate::util::progress::bar(missing as u64, "ref logps");
    let mut computed = 0usize;
    for (i, p) in pairs.iter().enumerate() {
        match cached.get(&p.id) {
            Some((fp, r)) => {
                ensure!(
                    *fp == fingerprint(p),
                    "{}: the row for pair {i} (id '{}') was computed for a different prompt, \
                     response or image; remove the file to recompute",
                    path.display(),
                    p.id
                );
                out.push(*r);
            }
            None => {
                out.push(compute_one(policy, p, i)?);
                computed += 1;
                pb.inc(1);
                // Save progress now and then so that a long first pass survives a kill.
                if computed.is_multiple_of(256) {
                    let rows: Vec<_> = pairs.iter().zip(out.iter().copied()).collect();
                    write(&path, &rows)?;
                }
            }
        }
    }
    pb.finish_and_clear();
    if computed > 0 || !path.exists() {
        let rows: Vec<_> = pairs.iter().zip(out.iter().copied()).collect();
        write(&path, &rows)?;
    }
    Ok(out)
}
