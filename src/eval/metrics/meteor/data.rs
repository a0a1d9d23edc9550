//! METEOR's English resources, supplied by the user (they come with the
//! `pycocoevalcap` package: `meteor-1.5.jar` holds the function words, the
//! non-breaking prefixes and the WordNet synonym files, `data/paraphrase-en.gz`
//! the paraphrase table). [`build_data_dir`] extracts them once into a folder
//! with a compact binary index of the paraphrase table; [`MeteorData::load`]
//! reads that folder back quickly.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::normalize::{parse_nbp, Nbp};
use crate::util::fsio::atomic_write;

const FUNCTION_FILE: &str = "function.words";
const NBP_FILE: &str = "nonbreaking.prefixes";
const SYN_FILE: &str = "synonym-en.idx";
const PARA_FILE: &str = "paraphrase-en.idx";
const MANIFEST_FILE: &str = "manifest.json";
const PARA_MAGIC: &[u8; 16] = b"HDPO-METEOR-PAR1";

/// Bytes of an index file: memory-mapped when loaded from disk, owned when
/// built in memory.
enum Buf {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Map(m) => m,
            Buf::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} bytes)", self.len())
    }
}

/// A section of an index file (byte range). u32 sections are little-endian.
#[derive(Clone, Copy, Debug, Default)]
struct Sec {
    at: usize,
    len: usize,
}

impl Sec {
    fn n_u32(&self) -> usize {
        self.len / 4
    }
    /// Element `i` of a u32 section; `None` out of range (a corrupt file
    /// then reads as "no entry", never as a panic).
    fn u32(&self, b: &[u8], i: usize) -> Option<u32> {
        if i >= self.n_u32() {
            return None;
        }
        let o = self.at + 4 * i;
        let s = b.get(o..o + 4)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn bytes<'a>(&self, b: &'a [u8], from: usize, to: usize) -> Option<&'a [u8]> {
        if from > to || to > self.len {
            return None;
        }
        b.get(self.at + from..self.at + to)
    }
}

/// Sections file: `magic (16 bytes)`, `count: u64`, then per section
/// `len: u64` and its bytes, padded to a multiple of 4.
fn write_sections(magic: &[u8; 16], secs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(magic);
    out.extend_from_slice(&(secs.len() as u64).to_le_bytes());
    for s in secs {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}

fn read_sections(b: &[u8], magic: &[u8; 16], expected: usize) -> Result<Vec<Sec>> {
    if b.len() < 24 || &b[..16] != magic {
        bail!("not an hdpo METEOR index (bad header)");
    }
    let rd = |at: usize| -> Result<u64> {
        let s = b.get(at..at + 8).context("index truncated")?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    let n = rd(16)? as usize;
    if n != expected {
        bail!("index has {n} sections, expected {expected}");
    }
    let mut at = 24usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = rd(at)? as usize;
        at += 8;
        if b.len() < at || b.len() - at < len {
            bail!("index truncated");
        }
        out.push(Sec { at, len });
        at += len;
        at = at.div_ceil(4) * 4;
    }
    Ok(out)
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Sorted string keys (offsets + bytes), each with a list of u32 values.
#[derive(Clone, Copy, Debug, Default)]
struct KeyTable {
    key_off: Sec,
    key_bytes: Sec,
    val_off: Sec,
    vals: Sec,
}

impl KeyTable {
    /// Serialise `(key, values)` pairs, sorted by key bytes (keys unique).
    fn build(mut items: Vec<(String, Vec<u32>)>) -> Result<[Vec<u8>; 4]> {
        items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let (mut ko, mut kb, mut vo, mut vs) = (vec![0u32], Vec::new(), vec![0u32], Vec::new());
        for (k, v) in items {
            kb.extend_from_slice(k.as_bytes());
            ko.push(u32::try_from(kb.len()).context("METEOR table too large")?);
            vs.extend_from_slice(&v);
            vo.push(u32::try_from(vs.len()).context("METEOR table too large")?);
        }
        Ok([u32s(&ko), kb, u32s(&vo), u32s(&vs)])
    }

    fn from_secs(s: &[Sec]) -> KeyTable {
        KeyTable {
            key_off: s[0],
            key_bytes: s[1],
            val_off: s[2],
            vals: s[3],
        }
    }

    fn len(&self) -> usize {
        self.key_off.n_u32().saturating_sub(1)
    }

    fn key<'a>(&self, b: &'a [u8], i: usize) -> &'a [u8] {
        match (self.key_off.u32(b, i), self.key_off.u32(b, i + 1)) {
            (Some(x), Some(y)) => self
                .key_bytes
                .bytes(b, x as usize, y as usize)
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Index of `key`, if present.
    fn find(&self, b: &[u8], key: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(b, mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn values(&self, b: &[u8], i: usize, out: &mut Vec<u32>) {
        if let (Some(x), Some(y)) = (self.val_off.u32(b, i), self.val_off.u32(b, i + 1)) {
            for k in x..y {
                if let Some(v) = self.vals.u32(b, k as usize) {
                    out.push(v);
                }
            }
        }
    }
}

fn map_file(path: &Path) -> Result<Buf> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the index is opened read-only and only read through bounds-checked
    // accessors; like any mapped file it must not be truncated while in use
    // (`hdpo eval meteor-data` replaces files by atomic rename, which does not).
    let m = unsafe { memmap2::Mmap::map(&f) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    Ok(Buf::Map(m))
}

/// WordNet synonym sets as METEOR's `SynonymDictionary` uses them, indexed:
/// word -> synset ids, and irregular form -> the synsets of its base forms.
#[derive(Debug)]
pub struct Synonyms {
    buf: Buf,
    synsets: KeyTable,
    exceptions: KeyTable,
}

const SYN_MAGIC: &[u8; 16] = b"HDPO-METEOR-SYN1";

const SUFX: [&str; 20] = [
    "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed",
    "ing", "ing", "er", "est", "er", "est",
];
const ADDR: [&str; 20] = [
    "", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e", "e",
];

impl Synonyms {
    /// Build the index from the jar's `english.synsets` (word line, synset-id
    /// line) and `english.exceptions` (base line, forms line).
    pub fn build(synsets: &str, exceptions: &str) -> Result<Vec<u8>> {
        let mut word_to_synsets: HashMap<String, Vec<u32>> = HashMap::new();
        let mut lines = synsets.lines().enumerate();
        while let Some((_, word)) = lines.next() {
            let (ln, ids) = lines.next().unwrap_or((0, ""));
            let mut set = Vec::new();
            for t in super::normalize::java_tokens(ids) {
                set.push(t.parse::<u32>().with_context(|| {
                    format!("synonym synsets file, line {}: bad synset id '{t}'", ln + 1)
                })?);
            }
            // Java's Hashtable.put: a repeated word replaces the earlier set.
            word_to_synsets.insert(word.to_string(), set);
        }
        let mut word_to_bases: HashMap<String, Vec<String>> = HashMap::new();
        let mut lines = exceptions.lines();
        while let Some(base) = lines.next() {
            let forms = lines.next().unwrap_or("");
            for form in super::normalize::java_tokens(forms) {
                word_to_bases
                    .entry(form.to_string())
                    .or_default()
                    .push(base.to_string());
            }
        }
        let exc: Vec<(String, Vec<u32>)> = word_to_bases
            .into_iter()
            .map(|(form, bases)| {
                let mut ids: Vec<u32> = bases
                    .iter()
                    .flat_map(|b| word_to_synsets.get(b).cloned().unwrap_or_default())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                (form, ids)
            })
            .collect();
        let [a, b, c, d] = KeyTable::build(word_to_synsets.into_iter().collect())?;
        let [e, f, g, h] = KeyTable::build(exc)?;
        Ok(write_sections(SYN_MAGIC, &[a, b, c, d, e, f, g, h]))
    }

    fn from_buf(buf: Buf) -> Result<Synonyms> {
        let s = read_sections(&buf, SYN_MAGIC, 8)?;
        Ok(Synonyms {
            synsets: KeyTable::from_secs(&s[0..4]),
            exceptions: KeyTable::from_secs(&s[4..8]),
            buf,
        })
    }

    /// Index bytes built in memory (tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Synonyms> {
        Synonyms::from_buf(Buf::Owned(bytes))
    }

    /// WordNet 3 morphology as in METEOR (`morph`): the first suffix rule
    /// whose base form has synsets; `None` when none does.
    fn morph(&self, word: &str) -> Option<String> {
        if word.ends_with("ss") || word.encode_utf16().count() <= 2 {
            return Some(word.to_string());
        }
        for (suf, add) in SUFX.iter().zip(ADDR.iter()) {
            if let Some(stem) = word.strip_suffix(suf) {
                let cand = format!("{stem}{add}");
                if self.synsets.find(&self.buf, cand.as_bytes()).is_some() {
                    return Some(cand);
                }
            }
        }
        None
    }

    /// `getSynSets(word) ∪ getStemSynSets(word)`, sorted and deduplicated.
    pub fn all_synsets(&self, word: &str) -> Vec<u32> {
        let b = &self.buf;
        let mut out = Vec::new();
        if let Some(i) = self.synsets.find(b, word.as_bytes()) {
            self.synsets.values(b, i, &mut out);
        }
        if let Some(i) = self.exceptions.find(b, word.as_bytes()) {
            self.exceptions.values(b, i, &mut out);
        } else if let Some(base) = self.morph(word) {
            if let Some(i) = self.synsets.find(b, base.as_bytes()) {
                self.synsets.values(b, i, &mut out);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The paraphrase table as a sorted, binary-searchable index: vocabulary
/// (sorted strings), phrases (sorted word-id sequences), and for each phrase
/// the paraphrases listed for it, in the order of the original file.
#[derive(Debug)]
pub struct ParaphraseTable {
    buf: Buf,
    vocab: KeyTable,
    phrase_off: Sec,
    phrase_words: Sec,
    group_off: Sec,
    group_items: Sec,
    max_len: usize,
}

impl ParaphraseTable {
    fn phrase(&self, i: usize) -> Vec<u32> {
        let b = &self.buf;
        let mut out = Vec::new();
        if let (Some(x), Some(y)) = (self.phrase_off.u32(b, i), self.phrase_off.u32(b, i + 1)) {
            for k in x..y {
                match self.phrase_words.u32(b, k as usize) {
                    Some(w) => out.push(w),
                    None => break,
                }
            }
        }
        out
    }

    /// Longest phrase, in words.
    pub fn max_phrase_len(&self) -> usize {
        self.max_len
    }

    /// Number of phrases.
    pub fn n_phrases(&self) -> usize {
        self.phrase_off.n_u32().saturating_sub(1)
    }

    /// Number of (phrase, paraphrase) entries.
    pub fn n_entries(&self) -> usize {
        self.group_items.n_u32()
    }

    /// Word id of `w`, or -1 when the table does not know it.
    pub fn word_id(&self, w: &str) -> i64 {
        self.vocab
            .find(&self.buf, w.as_bytes())
            .map(|i| i as i64)
            .unwrap_or(-1)
    }

    /// Range of phrase `i`'s words in the word section.
    fn phrase_range(&self, i: usize) -> (usize, usize) {
        let b = &self.buf;
        match (self.phrase_off.u32(b, i), self.phrase_off.u32(b, i + 1)) {
            (Some(x), Some(y)) if x <= y => (x as usize, y as usize),
            _ => (0, 0),
        }
    }

    /// Compare phrase `i` with `key` (lexicographic), and whether `key` is a
    /// prefix of it; no allocation.
    fn phrase_cmp(&self, i: usize, key: &[u32]) -> (std::cmp::Ordering, bool) {
        let b = &self.buf;
        let (x, y) = self.phrase_range(i);
        for (k, &kw) in key.iter().enumerate() {
            if x + k >= y {
                return (std::cmp::Ordering::Less, false);
            }
            let w = self.phrase_words.u32(b, x + k).unwrap_or(u32::MAX);
            match w.cmp(&kw) {
                std::cmp::Ordering::Equal => {}
                o => return (o, false),
            }
        }
        if y - x == key.len() {
            (std::cmp::Ordering::Equal, true)
        } else {
            (std::cmp::Ordering::Greater, true)
        }
    }

    fn lower_bound_in(&self, key: &[u32], mut lo: usize, mut hi: usize) -> usize {
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.phrase_cmp(mid, key).0 == std::cmp::Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The block of phrases whose first word is `w` (a range of phrase indices).
    pub fn first_word_block(&self, w: u32) -> (usize, usize) {
        let n = self.n_phrases();
        let lo = self.lower_bound_in(&[w], 0, n);
        let hi = match w.checked_add(1) {
            Some(w1) => self.lower_bound_in(&[w1], lo, n),
            None => n,
        };
        (lo, hi)
    }

    /// Paraphrases of the phrases starting at `words[start]`, as
    /// `(phrase length, paraphrase word ids)`, by increasing length and then
    /// in file order (the order of METEOR's transducer).
    pub fn paths(&self, words: &[i64], start: usize) -> Vec<(usize, Vec<u32>)> {
        match words.get(start) {
            Some(&w) if w >= 0 => self.paths_in(words, start, self.first_word_block(w as u32)),
            _ => Vec::new(),
        }
    }

    /// [`ParaphraseTable::paths`] given the first word's block.
    pub fn paths_in(
        &self,
        words: &[i64],
        start: usize,
        block: (usize, usize),
    ) -> Vec<(usize, Vec<u32>)> {
        let b = &self.buf;
        let mut out = Vec::new();
        let mut key: Vec<u32> = Vec::new();
        let (mut lo, hi) = block;
        for len in 1..=self.max_len.min(words.len().saturating_sub(start)) {
            let w = words[start + len - 1];
            if w < 0 {
                break;
            }
            key.push(w as u32);
            let pos = self.lower_bound_in(&key, lo, hi);
            if pos >= hi {
                break;
            }
            let (ord, prefix) = self.phrase_cmp(pos, &key);
            if !prefix {
                break;
            }
            lo = pos;
            if ord == std::cmp::Ordering::Equal {
                if let (Some(x), Some(y)) =
                    (self.group_off.u32(b, pos), self.group_off.u32(b, pos + 1))
                {
                    for k in x..y {
                        if let Some(p) = self.group_items.u32(b, k as usize) {
                            out.push((len, self.phrase(p as usize)));
                        }
                    }
                }
            }
        }
        out
    }

    /// Build the index bytes from the text of `paraphrase-en.gz` (decompressed
    /// lines: probability, phrase, paraphrase; repeated).
    pub fn build<R: BufRead>(reader: R) -> Result<Vec<u8>> {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut phrase_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut phrases: Vec<Vec<u32>> = Vec::new();
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut lines = reader.lines();
        let mut ln = 0usize;
        let intern = |line: &str,
                      vocab: &mut HashMap<String, u32>,
                      phrase_ids: &mut HashMap<Vec<u32>, u32>,
                      phrases: &mut Vec<Vec<u32>>|
         -> u32 {
            let ids: Vec<u32> = super::normalize::java_tokens(line)
                .map(|t| {
                    let n = vocab.len() as u32;
                    *vocab.entry(t.to_string()).or_insert(n)
                })
                .collect();
            let n = phrases.len() as u32;
            *phrase_ids.entry(ids.clone()).or_insert_with(|| {
                phrases.push(ids);
                n
            })
        };
        while let Some(prob) = lines.next() {
            prob.with_context(|| format!("paraphrase table, line {}", ln + 1))?;
            let mut next = |k: usize| -> Result<String> {
                lines
                    .next()
                    .with_context(|| {
                        format!("paraphrase table ends inside the entry at line {}", ln + 1)
                    })?
                    .with_context(|| format!("paraphrase table, line {}", ln + k))
            };
            let r = next(2)?;
            let p = next(3)?;
            ln += 3;
            let rid = intern(&r, &mut vocab, &mut phrase_ids, &mut phrases);
            let pid = intern(&p, &mut vocab, &mut phrase_ids, &mut phrases);
            pairs.push((rid, pid));
        }
        drop(phrase_ids);
        // Sorted vocabulary; remap word ids.
        let mut words: Vec<(String, u32)> = vocab.into_iter().collect();
        words.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut word_map = vec![0u32; words.len()];
        for (new, (_, old)) in words.iter().enumerate() {
            word_map[*old as usize] = new as u32;
        }
        let [vk, vb, vo, vv] =
            KeyTable::build(words.into_iter().map(|(w, _)| (w, Vec::new())).collect())?;
        for ph in phrases.iter_mut() {
            for w in ph.iter_mut() {
                *w = word_map[*w as usize];
            }
        }
        // Sorted phrases; remap phrase ids.
        let mut order: Vec<u32> = (0..phrases.len() as u32).collect();
        order.sort_by(|&a, &b| phrases[a as usize].cmp(&phrases[b as usize]));
        let mut phrase_map = vec![0u32; phrases.len()];
        let mut phrase_off = vec![0u32];
        let mut phrase_words = Vec::new();
        let mut max_len = 0usize;
        for (new, &old) in order.iter().enumerate() {
            phrase_map[old as usize] = new as u32;
            let ph = &phrases[old as usize];
            max_len = max_len.max(ph.len());
            phrase_words.extend_from_slice(ph);
            phrase_off
                .push(u32::try_from(phrase_words.len()).context("paraphrase table too large")?);
        }
        drop(phrases);
        for pr in pairs.iter_mut() {
            pr.0 = phrase_map[pr.0 as usize];
            pr.1 = phrase_map[pr.1 as usize];
        }
        // Stable: keeps file order within one phrase's group.
        pairs.sort_by_key(|p| p.0);
        let mut group_off = vec![0u32; order.len() + 1];
        for p in &pairs {
            group_off[p.0 as usize + 1] += 1;
        }
        for i in 0..order.len() {
            group_off[i + 1] += group_off[i];
        }
        let group_items: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        Ok(write_sections(
            PARA_MAGIC,
            &[
                vk,
                vb,
                vo,
                vv,
                u32s(&phrase_off),
                u32s(&phrase_words),
                u32s(&group_off),
                u32s(&group_items),
                (max_len as u64).to_le_bytes().to_vec(),
            ],
        ))
    }

    fn from_buf(buf: Buf) -> Result<ParaphraseTable> {
        let s = read_sections(&buf, PARA_MAGIC, 9)?;
        let ml = s[8]
            .bytes(&buf, 0, 8)
            .context("paraphrase index truncated")?;
        let max_len = u64::from_le_bytes(ml.try_into().expect("8 bytes")) as usize;
        let t = ParaphraseTable {
            vocab: KeyTable::from_secs(&s[0..4]),
            phrase_off: s[4],
            phrase_words: s[5],
            group_off: s[6],
            group_items: s[7],
            max_len: max_len.min(64),
            buf,
        };
        if t.group_off.n_u32() != t.phrase_off.n_u32() {
            bail!("paraphrase index corrupt (group table size)");
        }
        Ok(t)
    }

    /// Index bytes built in memory (tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ParaphraseTable> {
        ParaphraseTable::from_buf(Buf::Owned(bytes))
    }
}

/// Everything METEOR needs besides the stemmer.
#[derive(Debug, Default)]
pub struct MeteorData {
    /// Function words (`function/english.words`).
    pub function_words: HashSet<String>,
    /// Non-breaking prefixes (`nonbreaking/english.prefixes`).
    pub nbp: HashMap<String, Nbp>,
    /// WordNet synonyms, if supplied.
    pub synonyms: Option<Synonyms>,
    /// Paraphrase table, if supplied.
    pub paraphrase: Option<ParaphraseTable>,
}

fn read_text(dir: &Path, name: &str) -> Result<String> {
    let p = dir.join(name);
    let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    String::from_utf8(b).with_context(|| format!("{} is not valid UTF-8", p.display()))
}

impl MeteorData {
    /// Load a folder written by [`build_data_dir`].
    pub fn load(dir: &Path) -> Result<MeteorData> {
        if !dir.join(MANIFEST_FILE).is_file() {
            bail!(
                "{} is not a METEOR data folder (no {MANIFEST_FILE}); create it with `hdpo eval meteor-data --from PYCOCOEVALCAP_METEOR_FOLDER --out {}`",
                dir.display(),
                dir.display()
            );
        }
        let function_words = read_text(dir, FUNCTION_FILE)?
            .lines()
            .map(str::to_string)
            .collect();
        let nbp = parse_nbp(&read_text(dir, NBP_FILE)?);
        let sp = dir.join(SYN_FILE);
        let synonyms = Some(
            Synonyms::from_buf(map_file(&sp)?).with_context(|| format!("in {}", sp.display()))?,
        );
        let pp = dir.join(PARA_FILE);
        let paraphrase = Some(
            ParaphraseTable::from_buf(map_file(&pp)?)
                .with_context(|| format!("in {}", pp.display()))?,
        );
        Ok(MeteorData {
            function_words,
            nbp,
            synonyms,
            paraphrase,
        })
    }
}

/// Where [`build_data_dir`] found its inputs.
#[derive(Debug)]
pub struct BuildSummary {
    /// The jar read.
    pub jar: PathBuf,
    /// The paraphrase table read.
    pub paraphrase: PathBuf,
    /// Phrases in the index.
    pub phrases: usize,
    /// Paraphrase entries in the index.
    pub entries: usize,
}

/// The uncompressed bytes of the entry `name` of the zip archive (a `.jar` or
/// a `.whl`) held in `data`, `None` when the archive has no such entry.
fn read_zip_entry(data: &[u8], name: &str) -> Result<Option<Vec<u8>>> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(data)).context("not a readable zip archive")?;
    let mut entry = match archive.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("zip entry {name}"))),
    };
    let mut out = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
    entry
        .read_to_end(&mut out)
        .with_context(|| format!("cannot inflate zip entry {name}"))?;
    Ok(Some(out))
}

fn find_sources(from: &Path) -> Result<(Vec<u8>, Vec<u8>, PathBuf, PathBuf)> {
    if from.is_file() {
        // A pycocoevalcap wheel (zip) holding pycocoevalcap/meteor/...
        let whl = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        let jar = read_zip_entry(&whl, "pycocoevalcap/meteor/meteor-1.5.jar")
            .with_context(|| format!("reading {}", from.display()))?
            .with_context(|| {
                format!(
                    "{} has no pycocoevalcap/meteor/meteor-1.5.jar",
                    from.display()
                )
            })?;
        let para = read_zip_entry(&whl, "pycocoevalcap/meteor/data/paraphrase-en.gz")?
            .with_context(|| {
                format!(
                    "{} has no pycocoevalcap/meteor/data/paraphrase-en.gz",
                    from.display()
                )
            })?;
        return Ok((
            jar,
            para,
            from.join("meteor-1.5.jar"),
            from.join("data/paraphrase-en.gz"),
        ));
    }
    let jar_path = [
        from.join("meteor-1.5.jar"),
        from.join("meteor/meteor-1.5.jar"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| {
        format!(
            "no meteor-1.5.jar in {} (give pycocoevalcap's meteor/ folder or its wheel)",
            from.display()
        )
    })?;
    let base = jar_path.parent().unwrap_or(from).to_path_buf();
    let para_path = base.join("data").join("paraphrase-en.gz");
    let jar =
        std::fs::read(&jar_path).with_context(|| format!("cannot read {}", jar_path.display()))?;
    let para = std::fs::read(&para_path)
        .with_context(|| format!("cannot read {}", para_path.display()))?;
    Ok((jar, para, jar_path, para_path))
}

/// Extract METEOR's English resources from `from` (pycocoevalcap's `meteor/`
/// folder, the folder above it, or the pycocoevalcap wheel) into `out`, with
/// a compact index of the paraphrase table. Files are written atomically.
pub fn build_data_dir(from: &Path, out: &Path) -> Result<BuildSummary> {
    let (jar, para, jar_path, para_path) = find_sources(from)?;
    let get = |name: &str| -> Result<Vec<u8>> {
        read_zip_entry(&jar, name)
            .with_context(|| format!("reading {}", jar_path.display()))?
            .with_context(|| format!("{} has no {name}", jar_path.display()))
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    atomic_write(&out.join(FUNCTION_FILE), &get("function/english.words")?)?;
    atomic_write(&out.join(NBP_FILE), &get("nonbreaking/english.prefixes")?)?;
    let text = |name: &str| -> Result<String> {
        String::from_utf8(get(name)?).with_context(|| format!("{name} is not valid UTF-8"))
    };
    let syn = Synonyms::build(
        &text("synonym/english.synsets")?,
        &text("synonym/english.exceptions")?,
    )?;
    atomic_write(&out.join(SYN_FILE), &syn)?;
    let mut gz = flate2::read::MultiGzDecoder::new(para.as_slice());
    let mut text = Vec::new();
    gz.read_to_end(&mut text)
        .with_context(|| format!("cannot decompress {}", para_path.display()))?;
    let bytes = ParaphraseTable::build(BufReader::new(text.as_slice()))
        .with_context(|| format!("in {}", para_path.display()))?;
    drop(text);
    let table = ParaphraseTable::from_bytes(bytes)?;
    atomic_write(&out.join(PARA_FILE), &table.buf)?;
    let manifest = serde_json::json!({
        "format": "hdpo meteor data 1",
        "source_jar": jar_path.display().to_string(),
        "source_paraphrase": para_path.display().to_string(),
        "phrases": table.n_phrases(),
        "entries": table.n_entries(),
    });
    atomic_write(
        &out.join(MANIFEST_FILE),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(BuildSummary {
        jar: jar_path,
        paraphrase: para_path,
        phrases: table.n_phrases(),
        entries: table.n_entries(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_entries_read_stored_and_deflated_and_missing_is_none() {
        use std::io::Write;
        use zip::write::SimpleFileOptions;
        let text = "the a an of ".repeat(50);
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            for (name, method) in [
                ("function/english.words", zip::CompressionMethod::Stored),
                ("data/deflated.txt", zip::CompressionMethod::Deflated),
            ] {
                w.start_file(
                    name,
                    SimpleFileOptions::default().compression_method(method),
                )
                .unwrap();
                w.write_all(text.as_bytes()).unwrap();
            }
            w.finish().unwrap();
        }
        let data = buf.into_inner();
        assert!(data.len() < 2 * text.len(), "one entry is compressed");
        for name in ["function/english.words", "data/deflated.txt"] {
            let got = read_zip_entry(&data, name).unwrap().unwrap();
            assert_eq!(got, text.as_bytes(), "{name}");
        }
        assert_eq!(read_zip_entry(&data, "nope.txt").unwrap(), None);
        assert!(read_zip_entry(b"not a zip", "x").is_err());
    }

    #[test]
    fn paraphrase_index_roundtrip_and_order() {
        let text = "0.5\na b\nc\n0.1\na\nd e\n0.2\na b\nf\n0.3\nx\ny\n";
        let t = ParaphraseTable::from_bytes(
            ParaphraseTable::build(BufReader::new(text.as_bytes())).unwrap(),
        )
        .unwrap();
        let ids: Vec<i64> = ["a", "b", "zz"].iter().map(|w| t.word_id(w)).collect();
        assert_eq!(ids[2], -1);
        let p = t.paths(&ids, 0);
        let id = |w: &str| t.word_id(w) as u32;
        assert_eq!(
            p,
            vec![
                (1, vec![id("d"), id("e")]),
                (2, vec![id("c")]),
                (2, vec![id("f")])
            ]
        );
        assert!(ParaphraseTable::from_bytes(b"garbage".to_vec()).is_err());
        // A truncated index fails cleanly.
        let mut b = ParaphraseTable::build(BufReader::new(text.as_bytes())).unwrap();
        b.truncate(b.len() - 10);
        assert!(ParaphraseTable::from_bytes(b).is_err());
    }

    #[test]
    fn synonyms_with_exceptions_and_morphology() {
        let syn = Synonyms::from_bytes(
            Synonyms::build("big\n1 2\nlarge\n2\nmouse\n7\nbox\n9\n", "mouse\nmice\n").unwrap(),
        )
        .unwrap();
        assert_eq!(syn.all_synsets("big"), vec![1, 2]);
        assert_eq!(syn.all_synsets("mice"), vec![7]);
        assert_eq!(syn.all_synsets("boxes"), vec![9]);
        assert!(syn.all_synsets("unknown").is_empty());
    }
}
