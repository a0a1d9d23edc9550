//! Runs that know what they are: a fingerprint of a run's inputs and settings kept beside its
//! resumable outputs, a lock against two runs writing one output, and the rule that an output
//! never overwrites an input.
//!
//! Every resumable output of hdpo (a training run folder with its `ref_logps.jsonl` and
//! checkpoints, a `.partial` prediction file, a pair file being curated) carries a fingerprint
//! file ([`RunFingerprint`]): named parts such as `model`, `adapter`, `data`, `config`, each a
//! content id or a canonical rendering of a setting. A later run that would continue or reuse
//! that output must present the same parts; otherwise it stops with the parts that differ and
//! how to start fresh (`--overwrite`), so outputs of two models or two settings never mix.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsio::write_json_atomic;

/// Files up to this size are hashed whole; larger ones (multi-GB checkpoint shards) by their
/// length, their first and last [`EDGE`] bytes and a [`PROBE`]-byte sample every [`STRIDE`]
/// bytes, which still changes when any tensor of a real checkpoint is retrained or merged.
const WHOLE: u64 = 64 << 20;
const EDGE: u64 = 1 << 20;
const PROBE: u64 = 64 << 10;
const STRIDE: u64 = 32 << 20;

/// A content id of one file (hex, 16 characters): see [`WHOLE`] for what is hashed.
pub fn file_content_id(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {} to fingerprint it", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= WHOLE {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        h.update(&buf);
    } else {
        let mut take = |at: u64, n: u64| -> Result<()> {
            let mut buf = vec![0u8; n as usize];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            h.update(at.to_le_bytes());
            h.update(&buf);
            Ok(())
        };
        take(0, EDGE)?;
        let mut at = STRIDE;
        while at + PROBE < len - EDGE {
            take(at, PROBE)?;
            at += STRIDE;
        }
        take(len - EDGE, EDGE)?;
    }
    Ok(hex(&h.finalize()[..8]))
}

/// A content id of a file or of a folder (every regular file below it, by relative path, in
/// sorted order; hidden files such as locks and fingerprints are left out).
pub fn content_id(path: &Path) -> Result<String> {
    if path.is_file() {
        return file_content_id(path);
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let id = file_content_id(&path.join(&rel))?;
        let name = rel.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(id.as_bytes());
    }
    Ok(hex(&h.finalize()[..8]))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else if p.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash of a serialisable setting (its canonical JSON), for fingerprint parts.
pub fn settings_id<T: Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_vec(value)?;
    Ok(hex(&Sha256::digest(&json)[..8]))
}

/// What a run is: named parts (`model`, `data`, `config`, ...), compared part by part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFingerprint {
    /// The command that wrote the output (`train hdpo`, `predict`, `curate`).
    pub command: String,
    pub parts: BTreeMap<String, String>,
}

impl RunFingerprint {
    pub fn new(command: &str) -> Self {
        RunFingerprint {
            command: command.into(),
            parts: BTreeMap::new(),
        }
    }

    /// Add a part given as a value (a setting, a name).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.parts.insert(key.into(), value.into());
        self
    }

    /// Add the content id of a file or folder.
    pub fn with_content(self, key: &str, path: &Path) -> Result<Self> {
        let id = content_id(path).with_context(|| format!("fingerprint of the {key}"))?;
        Ok(self.with(key, id))
    }

    /// Add the id of a serialisable setting.
    pub fn with_settings<T: Serialize>(self, key: &str, value: &T) -> Result<Self> {
        Ok(self.with(key, settings_id(value)?))
    }

    /// The parts that differ from `other`, as `key: was A, now B` lines.
    pub fn differences(&self, earlier: &RunFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.command != earlier.command {
            out.push(format!(
                "command: was '{}', now '{}'",
                earlier.command, self.command
            ));
        }
        let keys: std::collections::BTreeSet<&String> =
            self.parts.keys().chain(earlier.parts.keys()).collect();
        for k in keys {
            let (a, b) = (earlier.parts.get(k), self.parts.get(k));
            if a != b {
                out.push(format!(
                    "{k}: was {}, now {}",
                    a.map(String::as_str).unwrap_or("(none)"),
                    b.map(String::as_str).unwrap_or("(none)")
                ));
            }
        }
        out
    }

    /// Compare with the fingerprint stored at `file` (if any) and store this one.
    ///
    /// - no file: `existing_output` says whether the output already holds results (written
    ///   before fingerprints existed, or by hand); then it is refused unless `overwrite`,
    ///   since nothing says what made it;
    /// - same parts: the output may be continued;
    /// - other parts: refused, naming each differing part, unless `overwrite`; with
    ///   `overwrite` the caller must have cleared the output first ([`claim_output_folder`] does).
    pub fn check_and_record(&self, file: &Path, existing_output: bool) -> Result<()> {
        let what = output_of(file);
        match Self::read(file)? {
            Some(earlier) => {
                let diff = self.differences(&earlier);
                if !diff.is_empty() {
                    bail!(
                        "{} was written by another run ({}); its inputs or settings differ:\n  {}\n\
                         Its results cannot be continued or reused. Pass --overwrite to discard \
                         them and start fresh, or choose another output.",
                        what.display(),
                        earlier.command,
                        diff.join("\n  ")
                    );
                }
            }
            None if existing_output => bail!(
                "{} already holds results, but no record of the run that wrote them ({} is \
                 missing), so they cannot be continued or reused safely. Pass --overwrite to \
                 discard them and start fresh, or choose another output.",
                what.display(),
                file.display()
            ),
            None => {}
        }
        write_json_atomic(file, self)
    }

    /// The fingerprint stored at `file`, if any.
    pub fn read(file: &Path) -> Result<Option<RunFingerprint>> {
        if !file.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let fp = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a run fingerprint (field 'command' and 'parts' expected); remove it \
                 with --overwrite",
                file.display()
            )
        })?;
        Ok(Some(fp))
    }
}

/// The fingerprint file of a run folder.
pub fn folder_fingerprint_file(dir: &Path) -> PathBuf {
    dir.join(".hdpo-run.json")
}

/// The fingerprint file of an output file (`preds.jsonl` -> `preds.jsonl.hdpo-run.json`).
pub fn file_fingerprint_file(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".hdpo-run.json");
    file.with_file_name(name)
}

fn output_of(fingerprint_file: &Path) -> PathBuf {
    let name = fingerprint_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".hdpo-run.json") {
        Some("") => fingerprint_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        Some(stem) => fingerprint_file.with_file_name(stem),
        None => fingerprint_file.to_path_buf(),
    }
}

/// A lock on an output (a folder, or a file's `<name>.lock`) held while a run writes it. The
/// lock file holds the writer's process id; a lock whose process no longer runs is stale and is
/// taken over. Dropping the guard removes the lock.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    /// Lock the output folder `dir` (creating it).
    pub fn folder(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
        Self::at(dir.join(".hdpo.lock"), dir)
    }

    /// Lock the output file `file` (its folder is created).
    pub fn file(file: &Path) -> Result<Self> {
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
        let mut name = file.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        Self::at(file.with_file_name(name), file)
    }

    fn at(path: PathBuf, output: &Path) -> Result<Self> {
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(OutputLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if process_alive(pid) => bail!(
                            "{} is being written by another hdpo run (process {pid}, lock {}); \
                             wait for it to finish or choose another output",
                            output.display(),
                            path.display()
                        ),
                        _ => {
                            tracing::warn!(
                                "removing the stale lock {} (its process has ended)",
                                path.display()
                            );
                            std::fs::remove_file(&path).with_context(|| {
                                format!("cannot remove the stale lock {}", path.display())
                            })?;
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot create the lock {} (is {} writable?)",
                            path.display(),
                            output.display()
                        )
                    })
                }
            }
        }
        bail!("cannot take the lock {}", path.display())
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` runs (Linux: `/proc/<pid>`; elsewhere every lock counts as held).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// An absolute, normalised form of `p` for comparisons: the longest existing prefix is
/// canonicalised (symlinks resolved) and the rest appended.
fn normalise(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// An input of a command, for [`check_output_against_inputs`].
pub enum Input<'a> {
    /// A file the command reads (`--predictions`, `--pairs`).
    File(&'a str, &'a Path),
    /// A folder nothing may be written into (a model, an adapter).
    Sealed(&'a str, &'a Path),
    /// A data folder: new files may be written in it, existing ones never replaced.
    Data(&'a str, &'a Path),
}

/// Refuse an output that would overwrite an input: the same file as an input file; any path
/// inside (or equal to, or containing) a sealed folder such as a model; an existing file
/// inside a data folder. `option` names the output's option (`--out`).
pub fn check_output_against_inputs(option: &str, output: &Path, inputs: &[Input]) -> Result<()> {
    let out = normalise(output);
    for input in inputs {
        match input {
            Input::File(name, p) => {
                if normalise(p) == out {
                    bail!(
                        "{option} {} is the same file as {name} {}: the output would overwrite \
                         its input; choose another output",
                        output.display(),
                        p.display()
                    );
                }
            }
            Input::Sealed(name, p) => {
                let inp = normalise(p);
                if out.starts_with(&inp) || inp.starts_with(&out) {
                    bail!(
                        "{option} {} overlaps {name} {}: hdpo never writes into an input \
                         model or adapter folder (nor over a folder holding one); choose \
                         another output",
                        output.display(),
                        p.display()
                    );
                }
            }
            Input::Data(name, p) => {
                let inp = normalise(p);
                // A file this command wrote earlier (its fingerprint lies beside it) may be
                // rewritten; any other existing file in the data folder is part of the data.
                let earlier_output = file_fingerprint_file(&out).is_file();
                if out.starts_with(&inp) && out.is_file() && !earlier_output
                    || out == inp
                    || inp.starts_with(&out)
                {
                    bail!(
                        "{option} {} would overwrite part of {name} {}; choose an output \
                         outside the input",
                        output.display(),
                        p.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// With `--overwrite`: clear the run folder `dir` (every entry except the lock this run
/// holds) before a fresh start. Only a folder hdpo wrote (with a fingerprint, a config or
/// checkpoints) is cleared.
fn clear_run_folder(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let ours = folder_fingerprint_file(dir).exists()
        || dir.join("checkpoints").exists()
        || dir.join("config.json").exists();
    if !ours {
        bail!(
            "--overwrite: {} does not look like an hdpo run folder (no .hdpo-run.json, \
             config.json or checkpoints/); refusing to delete it",
            dir.display()
        );
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name().is_some_and(|n| n == ".hdpo.lock") {
            continue;
        }
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("--overwrite: cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// With `--overwrite`: remove the files `paths` where they exist.
fn remove_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        if p.exists() {
            std::fs::remove_file(p)
                .with_context(|| format!("--overwrite: cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}

/// Take an output file for a run: lock it, refuse it when it is an input, with `overwrite`
/// remove `stale` (its partial and earlier results), then compare and record `fingerprint`
/// beside it. `existing` says whether results to continue are there (a `.partial` file).
pub fn claim_output_file(
    option: &str,
    out: &Path,
    inputs: &[Input],
    fingerprint: &RunFingerprint,
    overwrite: bool,
    stale: &[PathBuf],
) -> Result<OutputLock> {
    check_output_against_inputs(option, out, inputs)?;
    let lock = OutputLock::file(out)?;
    let record = file_fingerprint_file(out);
    if overwrite {
        let mut all = stale.to_vec();
        all.push(record.clone());
        remove_files(&all)?;
    }
    let existing = stale.iter().any(|p| p.exists());
    fingerprint.check_and_record(&record, existing)?;
    Ok(lock)
}

/// Take an output folder for a run: lock it, refuse it when it overlaps an input, with
/// `overwrite` clear it, then compare and record `fingerprint` in it. `existing` says whether
/// it already holds results to continue or reuse.
pub fn claim_output_folder(
    option: &str,
    out: &Path,
    inputs: &[Input],
    fingerprint: &RunFingerprint,
    overwrite: bool,
    existing: impl Fn(&Path) -> bool,
) -> Result<OutputLock> {
    check_output_against_inputs(option, out, inputs)?;
    let lock = OutputLock::folder(out)?;
    if overwrite {
        clear_run_folder(out)?;
    }
    fingerprint.check_and_record(&folder_fingerprint_file(out), existing(out))?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_follow_content_not_names_of_folders() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("w.bin"), [1u8, 2, 3]).unwrap();
            std::fs::write(dir.join(".hdpo.lock"), "1").unwrap();
        }
        assert_eq!(content_id(&a).unwrap(), content_id(&b).unwrap());
        std::fs::write(b.join("w.bin"), [1u8, 2, 4]).unwrap();
        assert_ne!(content_id(&a).unwrap(), content_id(&b).unwrap());
    }

    #[test]
    fn a_changed_part_is_refused_and_named() {
        let d = tempfile::tempdir().unwrap();
        let f = folder_fingerprint_file(d.path());
        let one = RunFingerprint::new("train hdpo")
            .with("model", "aaa")
            .with("config", "c");
        one.check_and_record(&f, false).unwrap();
        one.check_and_record(&f, true).unwrap();
        let two = one.clone().with("model", "bbb");
        let e = format!("{:#}", two.check_and_record(&f, true).unwrap_err());
        assert!(e.contains("model: was aaa, now bbb"), "{e}");
        assert!(!e.contains("config:"), "{e}");
        assert!(e.contains("--overwrite"), "{e}");
        // Results without a fingerprint are refused too.
        let g = d.path().join("x.hdpo-run.json");
        let e = format!("{:#}", one.check_and_record(&g, true).unwrap_err());
        assert!(e.contains("no record of the run"), "{e}");
        assert_eq!(output_of(&g), d.path().join("x"));
    }

    #[test]
    fn a_second_lock_is_refused_and_a_stale_one_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let lock = OutputLock::folder(d.path()).unwrap();
        let e = format!("{:#}", OutputLock::folder(d.path()).unwrap_err());
        assert!(e.contains("another hdpo run"), "{e}");
        drop(lock);
        assert!(!d.path().join(".hdpo.lock").exists());
        // A pid that cannot run (above the kernel's pid_max) is stale.
        std::fs::write(d.path().join(".hdpo.lock"), "4294967295\n").unwrap();
        let _again = OutputLock::folder(d.path()).unwrap();
    }

    #[test]
    fn outputs_never_overwrite_inputs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.jsonl");
        std::fs::write(&p, "").unwrap();
        let model = d.path().join("M");
        std::fs::create_dir_all(&model).unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("test.json"), "[]").unwrap();
        let same = d.path().join("./p.jsonl");
        assert!(check_output_against_inputs("--out", &same, &[Input::File("--in", &p)]).is_err());
        let inside = model.join("sub");
        for out in [&model, &inside, &d.path().to_path_buf()] {
            assert!(
                check_output_against_inputs("--out", out, &[Input::Sealed("--model", &model)])
                    .is_err(),
                "{}",
                out.display()
            );
        }
        let existing = data.join("test.json");
        assert!(
            check_output_against_inputs("--out", &existing, &[Input::Data("--data", &data)])
                .is_err()
        );
        let fresh = data.join("preds.jsonl");
        check_output_against_inputs("--out", &fresh, &[Input::Data("--data", &data)]).unwrap();
        let other = d.path().join("M2");
        check_output_against_inputs("--out", &other, &[Input::Sealed("--model", &model)]).unwrap();
    }
}
