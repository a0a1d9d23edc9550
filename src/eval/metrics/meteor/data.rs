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
use super::zip;
use crate::util::fsio::atomic_write;

const FUNCTION_FILE: &str = "function.words";
const NBP_FILE: &str = "nonbreaking.prefixes";
const SYNSETS_FILE: &str = "synonym.synsets";
const EXCEPTIONS_FILE: &str = "synonym.exceptions";
const PARA_FILE: &str = "paraphrase-en.idx";
const MANIFEST_FILE: &str = "manifest.json";
const PARA_MAGIC: &[u8; 16] = b"HDPO-METEOR-PAR1";

/// WordNet synonym sets as METEOR's `SynonymDictionary` uses them.
#[derive(Debug, Default)]
pub struct Synonyms {
    word_to_synsets: HashMap<String, Vec<u32>>,
    word_to_bases: HashMap<String, Vec<String>>,
}

const SUFX: [&str; 20] = [
    "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed",
    "ing", "ing", "er", "est", "er", "est",
];
const ADDR: [&str; 20] = [
    "", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e", "e",
];

impl Synonyms {
    /// Parse the `.synsets` (word line, synset-id line) and `.exceptions`
    /// (base line, forms line) files.
    pub fn parse(synsets: &str, exceptions: &str) -> Result<Synonyms> {
        let mut s = Synonyms::default();
        let mut lines = exceptions.lines();
        while let Some(base) = lines.next() {
            let forms = lines.next().unwrap_or("");
            for form in super::normalize::java_tokens(forms) {
                s.word_to_bases
                    .entry(form.to_string())
                    .or_default()
                    .push(base.to_string());
            }
        }
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
            s.word_to_synsets.insert(word.to_string(), set);
        }
        Ok(s)
    }

    fn synsets(&self, word: &str) -> &[u32] {
        self.word_to_synsets
            .get(word)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// WordNet 3 morphology as in METEOR (`morph`): first suffix rule whose
    /// base form has synsets; `""` when none.
    fn morph(&self, word: &str) -> String {
        if word.ends_with("ss") || word.encode_utf16().count() <= 2 {
            return word.to_string();
        }
        for (suf, add) in SUFX.iter().zip(ADDR.iter()) {
            if let Some(stem) = word.strip_suffix(suf) {
                let cand = format!("{stem}{add}");
                if self.word_to_synsets.contains_key(&cand) {
                    return cand;
                }
            }
        }
        String::new()
    }

    /// `getSynSets(word) ∪ getStemSynSets(word)`.
    pub fn all_synsets(&self, word: &str) -> HashSet<u32> {
        let mut out: HashSet<u32> = self.synsets(word).iter().copied().collect();
        if let Some(bases) = self.word_to_bases.get(word) {
            for b in bases {
                out.extend(self.synsets(b).iter().copied());
            }
        } else {
            out.extend(self.synsets(&self.morph(word)).iter().copied());
        }
        out
    }
}

/// The paraphrase table as a sorted, binary-searchable index: vocabulary
/// (sorted strings), phrases (sorted word-id sequences), and for each phrase
/// the paraphrases listed for it, in the order of the original file.
#[derive(Debug, Default)]
pub struct ParaphraseTable {
    vocab_off: Vec<u32>,
    vocab_bytes: Vec<u8>,
    phrase_off: Vec<u32>,
    phrase_words: Vec<u32>,
    group_off: Vec<u32>,
    group_items: Vec<u32>,
    max_len: usize,
}

impl ParaphraseTable {
    fn word(&self, i: usize) -> &[u8] {
        &self.vocab_bytes[self.vocab_off[i] as usize..self.vocab_off[i + 1] as usize]
    }

    fn phrase(&self, i: usize) -> &[u32] {
        &self.phrase_words[self.phrase_off[i] as usize..self.phrase_off[i + 1] as usize]
    }

    /// Number of phrases.
    pub fn n_phrases(&self) -> usize {
        self.phrase_off.len().saturating_sub(1)
    }

    /// Number of (phrase, paraphrase) entries.
    pub fn n_entries(&self) -> usize {
        self.group_items.len()
    }

    /// Word id of `w`, or -1 when the table does not know it.
    pub fn word_id(&self, w: &str) -> i64 {
        let n = self.vocab_off.len().saturating_sub(1);
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.word(mid).cmp(w.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return mid as i64,
            }
        }
        -1
    }

    fn lower_bound(&self, key: &[u32]) -> usize {
        let (mut lo, mut hi) = (0usize, self.n_phrases());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.phrase(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Paraphrases of the phrases starting at `words[start]`, as
    /// `(phrase length, paraphrase word ids)`, by increasing length and then
    /// in file order (the order of METEOR's transducer).
    pub fn paths(&self, words: &[i64], start: usize) -> Vec<(usize, &[u32])> {
        let mut out = Vec::new();
        let mut key: Vec<u32> = Vec::new();
        for len in 1..=self.max_len.min(words.len() - start) {
            let w = words[start + len - 1];
            if w < 0 {
                break;
            }
            key.push(w as u32);
            let pos = self.lower_bound(&key);
            if pos >= self.n_phrases() || !self.phrase(pos).starts_with(&key) {
                break;
            }
            if self.phrase(pos) == key.as_slice() {
                let (a, b) = (
                    self.group_off[pos] as usize,
                    self.group_off[pos + 1] as usize,
                );
                for &p in &self.group_items[a..b] {
                    out.push((len, self.phrase(p as usize)));
                }
            }
        }
        out
    }

    /// Build the index from the text of `paraphrase-en.gz` (decompressed
    /// lines: probability, phrase, paraphrase; repeated).
    pub fn from_reader<R: BufRead>(reader: R) -> Result<ParaphraseTable> {
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
            let r = lines
                .next()
                .with_context(|| {
                    format!("paraphrase table ends inside the entry at line {}", ln + 1)
                })?
                .with_context(|| format!("paraphrase table, line {}", ln + 2))?;
            let p = lines
                .next()
                .with_context(|| {
                    format!("paraphrase table ends inside the entry at line {}", ln + 1)
                })?
                .with_context(|| format!("paraphrase table, line {}", ln + 3))?;
            ln += 3;
            let rid = intern(&r, &mut vocab, &mut phrase_ids, &mut phrases);
            let pid = intern(&p, &mut vocab, &mut phrase_ids, &mut phrases);
            pairs.push((rid, pid));
        }
        drop(phrase_ids);
        // Sort the vocabulary and remap word ids.
        let mut words: Vec<(String, u32)> = vocab.into_iter().collect();
        words.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut word_map = vec![0u32; words.len()];
        let mut vocab_off = Vec::with_capacity(words.len() + 1);
        let mut vocab_bytes = Vec::new();
        vocab_off.push(0u32);
        for (new, (w, old)) in words.iter().enumerate() {
            word_map[*old as usize] = new as u32;
            vocab_bytes.extend_from_slice(w.as_bytes());
            vocab_off
                .push(u32::try_from(vocab_bytes.len()).context("paraphrase vocabulary too large")?);
        }
        for ph in phrases.iter_mut() {
            for w in ph.iter_mut() {
                *w = word_map[*w as usize];
            }
        }
        // Sort phrases and remap phrase ids.
        let mut order: Vec<u32> = (0..phrases.len() as u32).collect();
        order.sort_by(|&a, &b| phrases[a as usize].cmp(&phrases[b as usize]));
        let mut phrase_map = vec![0u32; phrases.len()];
        let mut phrase_off = Vec::with_capacity(phrases.len() + 1);
        let mut phrase_words = Vec::new();
        phrase_off.push(0u32);
        let mut max_len = 0;
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
        let group_items = pairs.iter().map(|p| p.1).collect();
        Ok(ParaphraseTable {
            vocab_off,
            vocab_bytes,
            phrase_off,
            phrase_words,
            group_off,
            group_items,
            max_len,
        })
    }

    /// Serialise the index (little-endian arrays after a magic header).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(PARA_MAGIC);
        out.extend_from_slice(&(self.max_len as u64).to_le_bytes());
        let put = |out: &mut Vec<u8>, v: &[u32]| {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
        put(&mut out, &self.vocab_off);
        out.extend_from_slice(&(self.vocab_bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.vocab_bytes);
        put(&mut out, &self.phrase_off);
        put(&mut out, &self.phrase_words);
        put(&mut out, &self.group_off);
        put(&mut out, &self.group_items);
        out
    }

    /// Read an index written by [`ParaphraseTable::to_bytes`], checking its structure.
    pub fn from_bytes(b: &[u8]) -> Result<ParaphraseTable> {
        if b.len() < 24 || &b[..16] != PARA_MAGIC {
            bail!("not an hdpo METEOR paraphrase index (bad header)");
        }
        let mut at = 16usize;
        let take_u64 = |at: &mut usize| -> Result<u64> {
            let s = b.get(*at..*at + 8).context("paraphrase index truncated")?;
            *at += 8;
            Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
        };
        let max_len = take_u64(&mut at)? as usize;
        let take_vec = |at: &mut usize| -> Result<Vec<u32>> {
            let n = take_u64(at)? as usize;
            let s = b
                .get(*at..*at + n.checked_mul(4).context("paraphrase index corrupt")?)
                .context("paraphrase index truncated")?;
            *at += n * 4;
            Ok(s.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let vocab_off = take_vec(&mut at)?;
        let nb = take_u64(&mut at)? as usize;
        let vocab_bytes = b
            .get(at..at + nb)
            .context("paraphrase index truncated")?
            .to_vec();
        at += nb;
        let phrase_off = take_vec(&mut at)?;
        let phrase_words = take_vec(&mut at)?;
        let group_off = take_vec(&mut at)?;
        let group_items = take_vec(&mut at)?;
        let t = ParaphraseTable {
            vocab_off,
            vocab_bytes,
            phrase_off,
            phrase_words,
            group_off,
            group_items,
            max_len,
        };
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<()> {
        let mono = |v: &[u32], end: usize, what: &str| -> Result<()> {
            if v.is_empty()
                || v[0] != 0
                || v.windows(2).any(|w| w[0] > w[1])
                || *v.last().expect("non-empty") as usize != end
            {
                bail!("paraphrase index corrupt ({what} offsets)");
            }
            Ok(())
        };
        mono(&self.vocab_off, self.vocab_bytes.len(), "vocabulary")?;
        mono(&self.phrase_off, self.phrase_words.len(), "phrase")?;
        mono(&self.group_off, self.group_items.len(), "group")?;
        let nv = self.vocab_off.len() - 1;
        let np = self.phrase_off.len() - 1;
        if self.group_off.len() != np + 1
            || self.phrase_words.iter().any(|&w| w as usize >= nv)
            || self.group_items.iter().any(|&p| p as usize >= np)
            || std::str::from_utf8(&self.vocab_bytes).is_err()
        {
            bail!("paraphrase index corrupt (ids out of range)");
        }
        Ok(())
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
        let synonyms = Some(Synonyms::parse(
            &read_text(dir, SYNSETS_FILE)?,
            &read_text(dir, EXCEPTIONS_FILE)?,
        )?);
        let pp = dir.join(PARA_FILE);
        let bytes = std::fs::read(&pp).with_context(|| format!("cannot read {}", pp.display()))?;
        let paraphrase = Some(
            ParaphraseTable::from_bytes(&bytes).with_context(|| format!("in {}", pp.display()))?,
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

fn find_sources(from: &Path) -> Result<(Vec<u8>, Vec<u8>, PathBuf, PathBuf)> {
    if from.is_file() {
        // A pycocoevalcap wheel (zip) holding pycocoevalcap/meteor/...
        let whl = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        let jar = zip::read_named(&whl, "pycocoevalcap/meteor/meteor-1.5.jar")
            .with_context(|| format!("reading {}", from.display()))?
            .with_context(|| {
                format!(
                    "{} has no pycocoevalcap/meteor/meteor-1.5.jar",
                    from.display()
                )
            })?;
        let para = zip::read_named(&whl, "pycocoevalcap/meteor/data/paraphrase-en.gz")?
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
        zip::read_named(&jar, name)
            .with_context(|| format!("reading {}", jar_path.display()))?
            .with_context(|| format!("{} has no {name}", jar_path.display()))
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    atomic_write(&out.join(FUNCTION_FILE), &get("function/english.words")?)?;
    atomic_write(&out.join(NBP_FILE), &get("nonbreaking/english.prefixes")?)?;
    atomic_write(&out.join(SYNSETS_FILE), &get("synonym/english.synsets")?)?;
    atomic_write(
        &out.join(EXCEPTIONS_FILE),
        &get("synonym/english.exceptions")?,
    )?;
    let mut gz = flate2::read::MultiGzDecoder::new(para.as_slice());
    let mut text = Vec::new();
    gz.read_to_end(&mut text)
        .with_context(|| format!("cannot decompress {}", para_path.display()))?;
    let table = ParaphraseTable::from_reader(BufReader::new(text.as_slice()))
        .with_context(|| format!("in {}", para_path.display()))?;
    drop(text);
    atomic_write(&out.join(PARA_FILE), &table.to_bytes())?;
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
    fn paraphrase_index_roundtrip_and_order() {
        let text = "0.5\na b\nc\n0.1\na\nd e\n0.2\na b\nf\n0.3\nx\ny\n";
        let t = ParaphraseTable::from_reader(BufReader::new(text.as_bytes())).unwrap();
        let t = ParaphraseTable::from_bytes(&t.to_bytes()).unwrap();
        let ids: Vec<i64> = ["a", "b", "zz"].iter().map(|w| t.word_id(w)).collect();
        assert_eq!(ids[2], -1);
        let p = t.paths(&ids, 0);
        let words = |ph: &[u32]| -> Vec<String> {
            ph.iter()
                .map(|&w| String::from_utf8(t.word(w as usize).to_vec()).unwrap())
                .collect()
        };
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].0, words(p[0].1)),
            (1, vec!["d".to_string(), "e".to_string()])
        );
        assert_eq!((p[1].0, words(p[1].1)), (2, vec!["c".to_string()]));
        assert_eq!((p[2].0, words(p[2].1)), (2, vec!["f".to_string()]));
        assert!(ParaphraseTable::from_bytes(b"garbage").is_err());
    }
}
