//! Minimal reader for the entries of a zip archive (a `.jar` or a `.whl`):
//! central directory, stored and deflated entries. Enough to take METEOR's
//! resources out of `meteor-1.5.jar` without a zip dependency.

use std::io::Read;

use anyhow::{bail, Context, Result};

/// One file of a zip archive.
pub struct ZipEntry {
    /// Path inside the archive.
    pub name: String,
    method: u16,
    compressed_size: u64,
    local_offset: u64,
}

fn u16le(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).context("zip: truncated record")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32le(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("zip: truncated record")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// List the entries of the archive held in `data`.
pub fn entries(data: &[u8]) -> Result<Vec<ZipEntry>> {
    // End of central directory: signature 0x06054b50 within the last 64 KiB + 22 bytes.
    let min = data.len().saturating_sub(65_557);
    let mut eocd = None;
    let mut i = data.len().saturating_sub(22);
    loop {
        if u32le(data, i).ok() == Some(0x0605_4b50) {
            eocd = Some(i);
            break;
        }
        if i == min || i == 0 {
            break;
        }
        i -= 1;
    }
    let eocd = eocd.context("not a zip archive (no end of central directory record)")?;
    let count = u16le(data, eocd + 10)? as usize;
    let mut at = u32le(data, eocd + 16)? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32le(data, at)? != 0x0201_4b50 {
            bail!("zip: bad central directory entry at byte {at}");
        }
        let method = u16le(data, at + 10)?;
        let compressed_size = u32le(data, at + 20)? as u64;
        let name_len = u16le(data, at + 28)? as usize;
        let extra_len = u16le(data, at + 30)? as usize;
        let comment_len = u16le(data, at + 32)? as usize;
        let local_offset = u32le(data, at + 42)? as u64;
        let name = data
            .get(at + 46..at + 46 + name_len)
            .context("zip: truncated file name")?;
        out.push(ZipEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            method,
            compressed_size,
            local_offset,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// The uncompressed bytes of `entry`.
pub fn read(data: &[u8], entry: &ZipEntry) -> Result<Vec<u8>> {
    let at = entry.local_offset as usize;
    if u32le(data, at)? != 0x0403_4b50 {
        bail!("zip: bad local header for {}", entry.name);
    }
    let name_len = u16le(data, at + 26)? as usize;
    let extra_len = u16le(data, at + 28)? as usize;
    let start = at + 30 + name_len + extra_len;
    let raw = data
        .get(start..start + entry.compressed_size as usize)
        .with_context(|| format!("zip: truncated data for {}", entry.name))?;
    match entry.method {
        0 => Ok(raw.to_vec()),
        8 => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(raw)
                .read_to_end(&mut out)
                .with_context(|| format!("zip: cannot inflate {}", entry.name))?;
            Ok(out)
        }
        m => bail!("zip: unsupported compression method {m} for {}", entry.name),
    }
}

/// Read the entry named `name`, if present.
pub fn read_named(data: &[u8], name: &str) -> Result<Option<Vec<u8>>> {
    for e in entries(data)? {
        if e.name == name {
            return read(data, &e).map(Some);
        }
    }
    Ok(None)
}
