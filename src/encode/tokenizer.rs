//! Text tokenizers: a `tokenizer.json`, or a BERT WordPiece `vocab.txt`
//! assembled in code (BertNormalizer with lowercase, BertPreTokenizer,
//! `[CLS] $A [SEP]`), and a whole-word vocabulary built from training text
//! for `hdpo align`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    Tokenizer,
};

/// The BERT special tokens, in the id order `hdpo align` gives them.
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Load `dir/tokenizer.json`, else build a WordPiece tokenizer from `dir/vocab.txt`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json)
            .map_err(|e| anyhow!("reading tokenizer {}: {e}", json.display()));
    }
    let vocab = dir.join("vocab.txt");
    if vocab.is_file() {
        return wordpiece_from_vocab(&vocab);
    }
    bail!(
        "{} has neither tokenizer.json nor vocab.txt; the text tower needs a tokenizer",
        dir.display()
    )
}

/// A BERT tokenizer from a WordPiece `vocab.txt` (one token per line, line
/// number = id), as `BertTokenizerFast` builds it: BertNormalizer (clean text,
/// Chinese chars, lowercase, accents stripped), BertPreTokenizer, WordPiece
/// with `##` and 100 max chars, and `[CLS] $A [SEP]`.
pub fn wordpiece_from_vocab(vocab: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(vocab)
        .with_context(|| format!("reading vocabulary {}", vocab.display()))?;
    let ids: HashMap<&str, u32> = text
        .lines()
        .enumerate()
        .map(|(i, t)| (t.trim_end_matches('\r'), i as u32))
        .collect();
    let need = |tok: &str| -> Result<u32> {
        ids.get(tok)
            .copied()
            .with_context(|| format!("vocabulary {} has no {tok} token", vocab.display()))
    };
    let cls = need("[CLS]")?;
    let sep = need("[SEP]")?;
    need("[UNK]")?;
    let path = vocab
        .to_str()
        .with_context(|| format!("vocabulary path {} is not UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| anyhow!("reading vocabulary {}: {e}", vocab.display()))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| anyhow!("{e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| anyhow!("{e}"))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tok.with_post_processor(Some(post));
    let specials: Vec<AddedToken> = BERT_SPECIALS
        .iter()
        .filter(|s| ids.contains_key(**s))
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    Ok(tok)
}

/// The words BertNormalizer + BertPreTokenizer make of `text`.
pub fn bert_words(text: &str) -> Result<Vec<String>> {
    let mut pts = PreTokenizedString::from(text);
    let norm = BertNormalizer::new(true, true, None, true);
    pts.normalize(|s| norm.normalize(s))
        .map_err(|e| anyhow!("{e}"))?;
    BertPreTokenizer
        .pre_tokenize(&mut pts)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

/// A whole-word BERT-style tokenizer built from training texts: the special
/// tokens, then every word seen at least `min_count` times (most frequent
/// first, ties alphabetical); other words map to `[UNK]`. `vocab_out` is
/// where the vocabulary file is written (it is read back by [`wordpiece_from_vocab`]).
pub fn build_word_tokenizer(
    texts: &[String],
    min_count: usize,
    vocab_out: &Path,
) -> Result<Tokenizer> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in texts {
        for w in bert_words(t)? {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(w, c)| *c >= min_count && !BERT_SPECIALS.contains(&w.as_str()))
        .collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut lines: Vec<String> = BERT_SPECIALS.iter().map(|s| s.to_string()).collect();
    lines.extend(words.into_iter().map(|(w, _)| w));
    crate::util::fsio::atomic_write(vocab_out, (lines.join("\n") + "\n").as_bytes())?;
    wordpiece_from_vocab(vocab_out)
}

/// Token ids and the 0/1 attention mask `[T, L]` of `texts`, right-padded
/// with `pad_id` to the longest and cut to `max_len` (keeping the last token,
/// so that `[SEP]` / end-of-text survives).
pub fn encode_batch(
    tok: &Tokenizer,
    texts: &[&str],
    pad_id: u32,
    max_len: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    if texts.is_empty() {
        bail!("no texts to encode");
    }
    let mut rows = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let enc = tok
            .encode(*t, true)
            .map_err(|e| anyhow!("tokenizing text {i} ({t:?}): {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > max_len && max_len > 0 {
            let last = ids[ids.len() - 1];
            ids.truncate(max_len);
            ids[max_len - 1] = last;
        }
        rows.push(ids);
    }
    let l = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(rows.len() * l);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in &rows {
        ids.extend(r.iter().copied());
        mask.extend(std::iter::repeat_n(1u32, r.len()));
        ids.extend(std::iter::repeat_n(pad_id, l - r.len()));
        mask.extend(std::iter::repeat_n(0u32, l - r.len()));
    }
    let n = rows.len();
    Ok((
        Tensor::from_vec(ids, (n, l), dev)?,
        Tensor::from_vec(mask, (n, l), dev)?,
    ))
}
