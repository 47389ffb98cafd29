//! The umT5 tokenizer as Wan calls it: `HuggingfaceTokenizer(name, seq_len, clean='whitespace')`
//! with `add_special_tokens=True, padding='max_length', truncation=True, return_mask=True`.
//!
//! The pipeline itself (the Precompiled nmt_nfkc normaliser, the pre-tokenizers, the Unigram
//! model, the `$A </s>` post-processor, the added tokens) is read from the folder's
//! `tokenizer.json` by the `tokenizers` crate, the library transformers' fast tokenizer runs
//! on. Wan's text cleaning ([`super::clean::wan_clean`]) runs first. Truncation keeps the
//! post-processor's EOS: a long prompt becomes its first `seq_len − 1` tokens and `</s>`.

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::clean::{wan_clean, Cleaned};
use crate::{Error, Result};

/// The pad token of umT5 (id 0).
pub const PAD_TOKEN: &str = "<pad>";

/// A prompt as token ids, ready for the encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `seq_len` ids (padding included).
    pub ids: Vec<u32>,
    /// 1 on the tokens (EOS included), 0 on the padding.
    pub mask: Vec<u8>,
    /// Tokens before padding (`mask.sum()`), at least 1 (the EOS).
    pub len: usize,
    /// The cleaned text that was tokenised, with the cleaner's notes.
    pub cleaned: Cleaned,
}

/// A loaded `tokenizer.json` with Wan's padding and truncation to `seq_len`.
pub struct TextTokenizer {
    inner: Tokenizer,
    seq_len: usize,
    /// The folder it was loaded from.
    pub dir: PathBuf,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` (the `google/umt5-xxl` folder layout; `dir` may also be the
    /// file itself) and sets padding and truncation to `seq_len` tokens.
    pub fn load(dir: impl AsRef<Path>, seq_len: usize) -> Result<Self> {
        let dir = dir.as_ref();
        let file = if dir.is_file() { dir.to_path_buf() } else { dir.join("tokenizer.json") };
        if !file.is_file() {
            let what = if dir.is_dir() { "has no tokenizer.json" } else { "does not exist" };
            return Err(Error::Input(format!(
                "tokenizer folder {} {what}: give the folder of the umT5 tokenizer (google/umt5-xxl, with tokenizer.json)",
                dir.display()
            )));
        }
        if seq_len == 0 {
            return Err(Error::Input("tokenizer seq_len must be at least 1".into()));
        }
        let bad = |m: String| Error::Checkpoint { path: file.display().to_string(), msg: m };
        let mut inner = Tokenizer::from_file(&file).map_err(|e| bad(format!("not a usable tokenizer.json ({e})")))?;
        let pad_id =
            inner.token_to_id(PAD_TOKEN).ok_or_else(|| bad(format!("the vocabulary has no `{PAD_TOKEN}` token")))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| bad(format!("cannot truncate to {seq_len} tokens ({e})")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(seq_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: PAD_TOKEN.into(),
        }));
        Ok(TextTokenizer { inner, seq_len, dir: dir.to_path_buf() })
    }

    /// Tokens per prompt after padding and truncation.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Cleans and tokenises one prompt.
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        self.encode_cleaned(wan_clean(prompt))
    }

    /// Tokenises text that is already clean (no cleaning step).
    pub fn encode_cleaned(&self, cleaned: Cleaned) -> Result<Tokens> {
        let enc = self
            .inner
            .encode(cleaned.text.as_str(), true)
            .map_err(|e| Error::Input(format!("cannot tokenise the prompt ({e})")))?;
        let ids = enc.get_ids().to_vec();
        let mask: Vec<u8> = enc.get_attention_mask().iter().map(|&m| (m != 0) as u8).collect();
        if ids.len() != self.seq_len || mask.len() != self.seq_len {
            return Err(Error::Input(format!("the tokenizer gave {} ids, expected {}", ids.len(), self.seq_len)));
        }
        let len = mask.iter().map(|&m| m as usize).sum();
        Ok(Tokens { ids, mask, len, cleaned })
    }
}
