//! Prompt in: Wan's text path, prompt → cleaning → umT5 tokenizer → umT5 encoder → the
//! context a DiT session takes.
//!
//! | module | what it holds |
//! |---|---|
//! | [`clean`] | Wan's `clean='whitespace'` (html.unescape, whitespace) and the reproduced part of ftfy |
//! | [`tokenizer`] | `tokenizer.json` through the `tokenizers` crate, EOS, padding and truncation to `text_len`, the mask |
//! | [`t5`] | the encoder: config, checkpoint, relative buckets, the forward on any [`Backend`] |
//!
//! [`TextEncoder::encode`] is the seam the rest of the pipeline joins to: it turns a prompt
//! into a [`Context`] (`[text_len, dim]`, padded rows exactly 0), which
//! [`crate::api::LoadedModel::session`] takes as it takes a `--context` file.

pub mod clean;
mod entities;
pub mod t5;
pub mod tokenizer;

use std::path::Path;

use crate::backend::{Backend, Precision};
use crate::pipeline::inputs::Context;
use crate::run::{BackendFn, DeviceChoice};
use crate::{Error, ModelConfig, Result};

pub use t5::{Residency, T5Config, T5Encoder};
pub use tokenizer::{TextTokenizer, Tokens};

/// The tokenizer and the encoder, loaded once.
pub struct TextEncoder<B: Backend> {
    pub tokenizer: TextTokenizer,
    pub encoder: T5Encoder<B>,
}

/// One encoded prompt.
pub struct Encoded {
    /// The embedding, `[text_len, dim]`.
    pub context: Context,
    /// The ids, mask and cleaned text behind it.
    pub tokens: Tokens,
}

impl<B: Backend> TextEncoder<B> {
    /// Loads the encoder checkpoint onto `be` and the tokenizer folder (`tokenizer.json`),
    /// padding to the encoder's `text_len`.
    pub fn load(be: &B, encoder: impl AsRef<Path>, tokenizer: impl AsRef<Path>, residency: Residency) -> Result<Self> {
        let encoder = T5Encoder::load(be, encoder, residency)?;
        let tokenizer = TextTokenizer::load(tokenizer, encoder.cfg.text_len)?;
        let vocab = tokenizer.vocab_size();
        if vocab > encoder.cfg.vocab {
            return Err(Error::Input(format!(
                "the tokenizer has {vocab} tokens but the encoder's embedding only {} rows: a tokenizer of another model?",
                encoder.cfg.vocab
            )));
        }
        Ok(TextEncoder { tokenizer, encoder })
    }

    /// Checks that this encoder's output fits a DiT: width `text_dim`, at most `text_len` rows.
    pub fn check_for(&self, cfg: &ModelConfig) -> Result<()> {
        let c = &self.encoder.cfg;
        if c.dim != cfg.text_dim {
            return Err(Error::Input(format!(
                "the text encoder's output width is {}, but the DiT's text_dim is {}: this encoder does not belong to this model",
                c.dim, cfg.text_dim
            )));
        }
        if c.text_len > cfg.text_len {
            return Err(Error::Input(format!(
                "the text encoder pads prompts to {} tokens, more than the DiT's text_len {}",
                c.text_len, cfg.text_len
            )));
        }
        Ok(())
    }

    /// Prompt → context: clean, tokenise, encode, zero the padded rows.
    pub fn encode(&self, be: &B, prompt: &str) -> Result<Encoded> {
        let tokens = self.tokenizer.encode(prompt)?;
        let data = self.encoder.encode(be, &tokens.ids, &tokens.mask, None)?;
        Ok(Encoded { context: Context { data, rows: self.encoder.cfg.text_len }, tokens })
    }
}

/// Encodes `prompts` on `device` at `precision`, one after another; `progress(i)` runs after
/// prompt `i`. The encoder is loaded once and dropped before this returns, so a GPU gets its
/// memory back before the DiT's plan is reserved. The cpu device streams the blocks
/// ([`Residency::Streamed`]: one block widened to f32 at a time); the GPU devices hold them.
pub fn encode_prompts(
    device: &DeviceChoice,
    precision: Precision,
    encoder: &Path,
    tokenizer: &Path,
    prompts: &[String],
    progress: &mut dyn FnMut(usize, &Encoded),
) -> Result<Vec<Encoded>> {
    struct Job<'a> {
        r: Residency,
        encoder: &'a Path,
        tokenizer: &'a Path,
        prompts: &'a [String],
        progress: &'a mut dyn FnMut(usize, &Encoded),
    }
    impl BackendFn<Vec<Encoded>> for Job<'_> {
        fn call<B: Backend + 'static>(self, be: std::sync::Arc<B>) -> Result<Vec<Encoded>> {
            let te = TextEncoder::load(&*be, self.encoder, self.tokenizer, self.r)?;
            let mut out = Vec::with_capacity(self.prompts.len());
            for (i, p) in self.prompts.iter().enumerate() {
                let e = te.encode(&*be, p)?;
                (self.progress)(i, &e);
                out.push(e);
            }
            Ok(out)
        }
    }
    let r = if device.is_gpu() { Residency::Resident } else { Residency::Streamed };
    device.with_backend(precision, Job { r, encoder, tokenizer, prompts, progress })
}
