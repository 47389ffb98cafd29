//! Reading run inputs: an `--inputs` file laid out like the golden `inputs.safetensors`
//! (`noise`, `context`, `renoise.{c}.{s}`, optional `sampled_rows.{layer}`), or a lone
//! `--context` file.
//!
//! ```
//! use std::collections::BTreeMap;
//! use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile};
//! use dfrt::pipeline::{inputs::Inputs, Noise, Rng};
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-inputs-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("inputs.safetensors");
//! let cfg = dfrt::ModelConfig::preset("tiny")?;
//! let (c, h, w) = (cfg.in_dim, 4, 6);
//! let mut rng = Rng::new(21);
//! let chunk = vec![1, 3, c, h, w];
//! let mut t = vec![
//!     OutTensor::f32("context", vec![1, 5, cfg.text_dim], &rng.normals(5 * cfg.text_dim)),
//!     OutTensor::f32("noise", vec![1, 3, c, h, w], &rng.normals(3 * c * h * w)),
//!     OutTensor::i64("sampled_rows.0", vec![2], &[3, 17]),
//! ];
//! for s in 0..3 {
//!     t.push(OutTensor::f32(format!("renoise.0.{s}"), chunk.clone(), &rng.normals(3 * c * h * w)));
//! }
//! write_safetensors(&path, &t, &BTreeMap::new())?;
//!
//! let inputs = Inputs::read(&TensorFile::open(&path)?, &cfg)?;
//! assert_eq!((inputs.context.rows, inputs.frames, inputs.latent.width), (5, 3, 6));
//! assert_eq!(inputs.sampled_rows[&0], vec![3, 17]);
//! let Noise::Given { noise, renoise } = inputs.noise(3)? else { unreachable!() };
//! assert_eq!((noise.len(), renoise[0].len()), (3 * c * h * w, 3));
//! assert!(inputs.noise(6).is_err()); // the file holds one chunk
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::checkpoint::TensorFile;
use crate::config::FRAMES_PER_CHUNK;
use crate::pipeline::{Latent, Noise};
use crate::{Error, ModelConfig, Result};

/// A text embedding `[rows, text_dim]`.
#[derive(Clone, Debug)]
pub struct Context {
    /// Row-major `[rows, text_dim]`.
    pub data: Vec<f32>,
    /// Rows (tokens); at most the model's `text_len`.
    pub rows: usize,
}

/// Reads tensor `context` (`[L, text_dim]` or `[1, L, text_dim]`; `context.0` in files with
/// several prompts) and checks its width.
pub fn read_context(f: &TensorFile, cfg: &ModelConfig) -> Result<Context> {
    let name = if f.info("context").is_err() && f.info("context.0").is_ok() { "context.0" } else { "context" };
    read_context_named(f, cfg, name)
}

/// [`read_context`] of the tensor `name`.
pub fn read_context_named(f: &TensorFile, cfg: &ModelConfig, name: &str) -> Result<Context> {
    let info = f.info(name)?;
    let (rows, width) = match info.shape.as_slice() {
        [l, w] => (*l, *w),
        [1, l, w] => (*l, *w),
        s => return Err(Error::tensor(name, format!("has shape {s:?}, expected [L, text_dim] or [1, L, text_dim]"))),
    };
    if width != cfg.text_dim {
        return Err(Error::tensor(name, format!("has width {width}, but the model's text_dim is {}", cfg.text_dim)));
    }
    if rows == 0 || rows > cfg.text_len {
        return Err(Error::tensor(
            name,
            format!("has {rows} rows, expected 1..={} (the model's text_len)", cfg.text_len),
        ));
    }
    Ok(Context { data: f.f32_any(name)?, rows })
}

/// Everything an `--inputs` file gives.
pub struct Inputs {
    /// Tensor `context` (or `context.0`).
    pub context: Context,
    /// `context.1`, `context.2`, …: the prompts after each switch, when given.
    pub switch_contexts: Vec<Context>,
    /// Frames the noise covers.
    pub frames: usize,
    /// The geometry of `noise`.
    pub latent: Latent,
    noise: Vec<f32>,
    renoise: BTreeMap<(usize, usize), Vec<f32>>,
    /// `sampled_rows.{layer}` for Dummy Forcing's calibration, when present.
    pub sampled_rows: BTreeMap<usize, Vec<i64>>,
}

impl Inputs {
    /// Reads and checks every tensor against `cfg`: `noise` `[1, F, C, H, W]`, a
    /// `renoise.{c}.{s}` for each chunk and steps 0, 1, … (as many as given, at least one), optional `sampled_rows.{layer}`.
    pub fn read(f: &TensorFile, cfg: &ModelConfig) -> Result<Self> {
        Self::read_with_context(f, cfg, None)
    }

    /// [`Inputs::read`] with `context` (a prompt's embedding) instead of the file's, which may
    /// then have none.
    pub fn read_with_context(f: &TensorFile, cfg: &ModelConfig, context: Option<Context>) -> Result<Self> {
        let context = match context {
            Some(c) => c,
            None => read_context(f, cfg)?,
        };
        let ns = f.info("noise")?.shape.clone();
        let [frames, c, h, w] = match ns.as_slice() {
            [1, fr, c, h, w] => [*fr, *c, *h, *w],
            [fr, c, h, w] => [*fr, *c, *h, *w],
            s => return Err(Error::tensor("noise", format!("has shape {s:?}, expected [1, F, C, H, W]"))),
        };
        if c != cfg.in_dim {
            return Err(Error::tensor("noise", format!("has {c} channels, the model takes {}", cfg.in_dim)));
        }
        let latent = Latent { channels: c, height: h, width: w };
        let noise = f.f32_any("noise")?;
        // Every `renoise.{a}.{b}`: (chunk, step) for the chunk-wise pipelines, (window, block)
        // for Rolling Forcing; [`Inputs::noise`] and [`Inputs::noise_rolling`] pick them out.
        let mut renoise = BTreeMap::new();
        for name in f.tensors.keys() {
            let Some(rest) = name.strip_prefix("renoise.") else { continue };
            let ix: Vec<usize> = rest.split('.').filter_map(|x| x.parse().ok()).collect();
            let [a, b] = ix[..] else { return Err(Error::tensor(name, "expected renoise.{a}.{b}")) };
            let i = f.info(name)?;
            if i.shape.iter().product::<usize>() != FRAMES_PER_CHUNK * latent.frame_len() {
                return Err(Error::tensor(name, format!("has shape {:?}, expected [1, 3, {c}, {h}, {w}]", i.shape)));
            }
            renoise.insert((a, b), f.f32_any(name)?);
        }
        let mut sampled_rows = BTreeMap::new();
        for name in f.tensors.keys() {
            if let Some(l) = name.strip_prefix("sampled_rows.") {
                let l: usize = l.parse().map_err(|_| Error::tensor(name, "expected sampled_rows.{layer}"))?;
                sampled_rows.insert(l, f.i64_any(name)?);
            }
        }
        let switch_contexts = (1..)
            .map_while(|i| f.info(&format!("context.{i}")).ok().map(|_| i))
            .map(|i| read_context_named(f, cfg, &format!("context.{i}")))
            .collect::<Result<_>>()?;
        Ok(Inputs { context, switch_contexts, frames, latent, noise, renoise, sampled_rows })
    }

    /// The noise for the first `frames` frames (a multiple of 3, at most the file's).
    pub fn noise(&self, frames: usize) -> Result<Noise> {
        if frames > self.frames {
            return Err(Error::Input(format!("{frames} frames requested, the inputs hold noise for {}", self.frames)));
        }
        if frames == 0 || !frames.is_multiple_of(FRAMES_PER_CHUNK) {
            return Err(Error::Input(format!(
                "{frames} frames is not a positive multiple of the chunk ({FRAMES_PER_CHUNK} latent frames)"
            )));
        }
        let n = frames * self.latent.frame_len();
        // Per chunk its steps 0, 1, … as far as given (3 for Self-Forcing, 2 for CausVid).
        let renoise = (0..frames / FRAMES_PER_CHUNK)
            .map(|c| (0..).map_while(|s| self.renoise.get(&(c, s)).cloned()).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        if let Some(c) = renoise.iter().position(|r| r.is_empty()) {
            return Err(Error::tensor(format!("renoise.{c}.0"), "missing from the inputs"));
        }
        Ok(Noise::Given { noise: self.noise[..n].to_vec(), renoise })
    }

    /// The noise for Rolling Forcing with `steps` denoising steps: block `b` is re-noised after
    /// its step `s` in window `b + s`, with the draw stored as `renoise.{b+s}.{b}`.
    pub fn noise_rolling(&self, frames: usize, steps: usize) -> Result<Noise> {
        if frames > self.frames || frames == 0 || !frames.is_multiple_of(FRAMES_PER_CHUNK) {
            return Err(Error::Input(format!(
                "{frames} frames: expected a positive multiple of {FRAMES_PER_CHUNK}, at most the inputs' {}",
                self.frames
            )));
        }
        let mut renoise = Vec::new();
        for b in 0..frames / FRAMES_PER_CHUNK {
            let mut r = Vec::new();
            for s in 0..steps.saturating_sub(1) {
                let x = self.renoise.get(&(b + s, b)).ok_or_else(|| {
                    Error::tensor(
                        format!("renoise.{}.{b}", b + s),
                        "missing from the inputs (Rolling Forcing layout renoise.{window}.{block})",
                    )
                })?;
                r.push(x.clone());
            }
            renoise.push(r);
        }
        Ok(Noise::Given { noise: self.noise[..frames * self.latent.frame_len()].to_vec(), renoise })
    }
}
