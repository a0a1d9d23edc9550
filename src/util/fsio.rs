//! File output that is never half-written, and dataset paths that never
//! escape their dataset root.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Write `bytes` to `path` atomically: the data goes to a temporary file in
/// the same directory, which is then renamed over `path`. A crash leaves
/// either the old file or the new one, never a truncated one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| {
        w.write_all(bytes)?;
        Ok(())
    })
}

/// Like [`atomic_write`], but the content is produced by `fill` writing into
/// a buffered writer (for large outputs such as JSONL files and images).
pub fn atomic_write_with<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".hdpo-tmp-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).with_context(|| format!("while writing {}", path.display()))?;
        w.flush()
            .with_context(|| format!("while writing {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("while syncing {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| {
        format!(
            "cannot move the finished file into place at {}",
            path.display()
        )
    })?;
    Ok(())
}

/// Serialise `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    atomic_write(path, &bytes)
}

/// Resolve `relative`, a path read from a dataset file, under `root`.
///
/// Rejects absolute paths, `..` components, and paths whose existing target
/// (after following symlinks) lies outside `root`. `what` names the record
/// and field for the error message, e.g. `"record 12 (id 'x'), field image_path"`.
pub fn resolve_in_root(root: &Path, relative: &str, what: &str) -> Result<PathBuf> {
    let rel = Path::new(relative);
    if relative.is_empty() {
        bail!("{what}: empty path");
    }
    if rel.is_absolute() || relative.starts_with('/') || relative.starts_with('\\') {
        bail!("{what}: path '{relative}' is absolute; dataset paths must be relative to the dataset root {}", root.display());
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => bail!(
                "{what}: path '{relative}' contains '..' and could escape the dataset root {}",
                root.display()
            ),
            Component::RootDir | Component::Prefix(_) => {
                bail!("{what}: path '{relative}' is absolute")
            }
        }
    }
    let joined = root.join(rel);
    // A symlink inside the root may still point outside it: check the target.
    if let Ok(real) = joined.canonicalize() {
        let real_root = root
            .canonicalize()
            .with_context(|| format!("dataset root {} does not exist", root.display()))?;
        if !real.starts_with(&real_root) {
            bail!(
                "{what}: path '{relative}' resolves to {} which is outside the dataset root {}",
                real.display(),
                real_root.display()
            );
        }
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn failed_fill_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        atomic_write(&p, b"old").unwrap();
        let r = atomic_write_with(&p, |w| {
            w.write_all(b"partial")?;
            bail!("boom")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn paths_cannot_escape_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/x.png"), b"").unwrap();
        assert!(resolve_in_root(&root, "a/x.png", "r").is_ok());
        let e = resolve_in_root(&root, "../etc/passwd", "record 3 (id 'q'), field image")
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 3") && e.contains(".."), "{e}");
        assert!(resolve_in_root(&root, "/etc/passwd", "r").is_err());
        assert!(resolve_in_root(&root, "a/../../x", "r").is_err());
        #[cfg(unix)]
        {
            std::fs::write(dir.path().join("secret"), b"").unwrap();
            std::os::unix::fs::symlink(dir.path().join("secret"), root.join("a/link")).unwrap();
            let e = resolve_in_root(&root, "a/link", "r")
                .unwrap_err()
                .to_string();
            assert!(e.contains("outside the dataset root"), "{e}");
        }
    }
}
