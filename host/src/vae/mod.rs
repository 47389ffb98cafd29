//! The Wan2.1 video VAE (official `wan/modules/vae.py`, as Self-Forcing's `WanVAEWrapper`
//! uses it): a CPU reference decoder that streams latent chunks into pixel frames, and the
//! encoder.
//!
//! - A runtime VAE checkpoint is a safetensors file with the official `Wan2.1_VAE.pth` names
//!   (`encoder.*`, `conv1.*`, `conv2.*`, `decoder.*`) and the [`VaeConfig`] as JSON under the
//!   metadata key [`VAE_CONFIG_KEY`] (`dfrt-weights convert` / `dfrt-weights synth --vae`).
//! - [`Decoder`] keeps every causal conv's feature cache (the last 2 input frames) across calls,
//!   so decoding a video chunk by chunk gives exactly the frames of a one-shot decode.
//!   Latent frame 0 gives 1 pixel frame, every later frame `2^k` (k temporal upsamplers: 4).
//! - [`Vae::encode`] maps pixel frames (1, then groups of 4) to normalised latents.
//!
//! Latents are in the DiT's layout `[F, C, H, W]` (normalised); pixels are `[T, 3, H, W]`
//! in [-1, 1].

pub mod ops;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::Precision;
use crate::checkpoint::TensorFile;
use crate::{Error, Result};
use ops::{Conv, Geom};

/// Metadata key holding the VAE config JSON in a runtime VAE checkpoint.
pub const VAE_CONFIG_KEY: &str = "dfrt.vae";

/// The official latent statistics of Wan2.1's VAE (`WanVAEWrapper`): per channel mean.
pub const WAN_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
/// The official per-channel std.
pub const WAN_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// What a runtime VAE checkpoint needs besides its tensors: the `WanVAE_` constructor's
/// arguments (`attn_scales` is always empty, as in every released Wan2.1 VAE) and the latent
/// normalisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Per encoder stage boundary: does that downsample also halve time? The decoder mirrors it.
    pub temperal_downsample: Vec<bool>,
    /// Latent mean and std per channel: decode takes `z·std + mean`, encode `(mu − mean)/std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl VaeConfig {
    /// The released Wan2.1 VAE (`Wan2.1_VAE.pth`): dim 96, z_dim 16, about 127M parameters.
    pub fn wan21() -> Self {
        Self::with_dim(96)
    }
    /// The Wan2.1 structure at another base width (the golden `vae-tiny` has dim 6).
    pub fn with_dim(dim: usize) -> Self {
        VaeConfig {
            dim,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            mean: WAN_MEAN.to_vec(),
            std: WAN_STD.to_vec(),
        }
    }
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("vae: {m}")));
        if self.dim == 0 || self.z_dim == 0 || self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return bad(format!(
                "dim {}, z_dim {}, dim_mult {:?} must be positive",
                self.dim, self.z_dim, self.dim_mult
            ));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return bad(format!(
                "{} temporal flags for {} stages (need stages − 1)",
                self.temperal_downsample.len(),
                self.dim_mult.len()
            ));
        }
        if self.mean.len() != self.z_dim || self.std.len() != self.z_dim {
            return bad(format!(
                "mean/std have {}/{} values for z_dim {}",
                self.mean.len(),
                self.std.len(),
                self.z_dim
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean/std must be finite and std non-zero".into());
        }
        // Every upsampler halves its channels: the stage widths must stay even.
        if self.decoder_dims().iter().skip(1).any(|d| d % 2 != 0) {
            return bad(format!("decoder widths {:?} must be even", self.decoder_dims()));
        }
        Ok(())
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let c: VaeConfig = serde_json::from_str(s).map_err(|e| Error::Config(format!("vae config JSON: {e}")))?;
        c.validate()?;
        Ok(c)
    }
    /// Channel widths `[dim, dim·m0, dim·m1, …]` of the encoder.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(self.dim).chain(self.dim_mult.iter().map(|m| self.dim * m)).collect()
    }
    /// Channel widths of the decoder: `[dim·m_last, dim·m_last, …, dim·m0]`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(self.dim * last).chain(self.dim_mult.iter().rev().map(|m| self.dim * m)).collect()
    }
    pub fn temperal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().cloned().collect()
    }
    /// Pixels per latent pixel along height and width.
    pub fn spatial_scale(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }
    /// Pixel frames per latent frame after the first.
    pub fn temporal_scale(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|t| **t).count()
    }
    /// Pixel frames decoded from `latent_frames` (21 → 81 for Wan2.1).
    pub fn pixel_frames(&self, latent_frames: usize) -> usize {
        if latent_frames == 0 {
            0
        } else {
            1 + self.temporal_scale() * (latent_frames - 1)
        }
    }

    /// Every tensor of the official `WanVAE_` state dict, in its order, with shapes.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let conv = |v: &mut Vec<(String, Vec<usize>)>, p: &str, co: usize, ci: usize, k: &[usize]| {
            v.push((format!("{p}.weight"), [&[co, ci][..], k].concat()));
            v.push((format!("{p}.bias"), vec![co]));
        };
        let res = |v: &mut Vec<(String, Vec<usize>)>, p: &str, i: usize, o: usize| {
            v.push((format!("{p}.residual.0.gamma"), vec![i, 1, 1, 1]));
            conv(v, &format!("{p}.residual.2"), o, i, &[3, 3, 3]);
            v.push((format!("{p}.residual.3.gamma"), vec![o, 1, 1, 1]));
            conv(v, &format!("{p}.residual.6"), o, o, &[3, 3, 3]);
            if i != o {
                conv(v, &format!("{p}.shortcut"), o, i, &[1, 1, 1]);
            }
        };
        let middle = |v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
            res(v, &format!("{p}.middle.0"), c, c);
            v.push((format!("{p}.middle.1.norm.gamma"), vec![c, 1, 1]));
            conv(v, &format!("{p}.middle.1.to_qkv"), 3 * c, c, &[1, 1]);
            conv(v, &format!("{p}.middle.1.proj"), c, c, &[1, 1]);
            res(v, &format!("{p}.middle.2"), c, c);
        };
        let (ed, z, nrb) = (self.encoder_dims(), self.z_dim, self.num_res_blocks);
        conv(&mut v, "encoder.conv1", ed[0], 3, &[3, 3, 3]);
        let mut idx = 0;
        let stages = self.dim_mult.len();
        for s in 0..stages {
            let (mut i, o) = (ed[s], ed[s + 1]);
            for _ in 0..nrb {
                res(&mut v, &format!("encoder.downsamples.{idx}"), i, o);
                i = o;
                idx += 1;
            }
            if s + 1 != stages {
                conv(&mut v, &format!("encoder.downsamples.{idx}.resample.1"), o, o, &[3, 3]);
                if self.temperal_downsample[s] {
                    conv(&mut v, &format!("encoder.downsamples.{idx}.time_conv"), o, o, &[3, 1, 1]);
                }
                idx += 1;
            }
        }
        let top = ed[stages];
        middle(&mut v, "encoder", top);
        v.push(("encoder.head.0.gamma".into(), vec![top, 1, 1, 1]));
        conv(&mut v, "encoder.head.2", 2 * z, top, &[3, 3, 3]);
        conv(&mut v, "conv1", 2 * z, 2 * z, &[1, 1, 1]);
        conv(&mut v, "conv2", z, z, &[1, 1, 1]);
        let dd = self.decoder_dims();
        conv(&mut v, "decoder.conv1", dd[0], z, &[3, 3, 3]);
        middle(&mut v, "decoder", dd[0]);
        let up = self.temperal_upsample();
        let mut idx = 0;
        for s in 0..stages {
            let (mut i, o) = (if s == 0 { dd[0] } else { dd[s] / 2 }, dd[s + 1]);
            for _ in 0..nrb + 1 {
                res(&mut v, &format!("decoder.upsamples.{idx}"), i, o);
                i = o;
                idx += 1;
            }
            if s + 1 != stages {
                conv(&mut v, &format!("decoder.upsamples.{idx}.resample.1"), o / 2, o, &[3, 3]);
                if up[s] {
                    conv(&mut v, &format!("decoder.upsamples.{idx}.time_conv"), 2 * o, o, &[3, 1, 1]);
                }
                idx += 1;
            }
        }
        let last = dd[stages];
        v.push(("decoder.head.0.gamma".into(), vec![last, 1, 1, 1]));
        conv(&mut v, "decoder.head.2", 3, last, &[3, 3, 3]);
        v
    }
}

/// Reads tensors by name with shape checks, rounding to bf16 in bf16 mode.
struct Loader<'a> {
    f: &'a TensorFile,
    p: Precision,
}

impl Loader<'_> {
    fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let mut v = self.f.f32(name, shape)?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::tensor(name, "holds NaN or infinite values"));
        }
        ops::round(self.p, &mut v);
        Ok(v)
    }
    fn conv(&self, p: &str) -> Result<Conv> {
        let name = format!("{p}.weight");
        let s = self.f.info(&name)?.shape.clone();
        let k = match s.len() {
            5 => [s[2], s[3], s[4]],
            4 => [1, s[2], s[3]],
            _ => return Err(Error::tensor(&name, format!("has shape {s:?}, expected a conv weight"))),
        };
        Ok(Conv {
            cout: s[0],
            cin: s[1],
            kt: k[0],
            kh: k[1],
            kw: k[2],
            w: self.vec(&name, &s)?,
            b: self.vec(&format!("{p}.bias"), &[s[0]])?,
        })
    }
    fn res(&self, p: &str) -> Result<Res> {
        let conv1 = self.conv(&format!("{p}.residual.2"))?;
        let shortcut = if self.f.tensors.contains_key(&format!("{p}.shortcut.weight")) {
            Some(self.conv(&format!("{p}.shortcut"))?)
        } else {
            None
        };
        Ok(Res {
            norm1: self.vec(&format!("{p}.residual.0.gamma"), &[conv1.cin, 1, 1, 1])?,
            norm2: self.vec(&format!("{p}.residual.3.gamma"), &[conv1.cout, 1, 1, 1])?,
            conv2: self.conv(&format!("{p}.residual.6"))?,
            conv1,
            shortcut,
        })
    }
    fn attn(&self, p: &str, c: usize) -> Result<Attn> {
        Ok(Attn {
            norm: self.vec(&format!("{p}.norm.gamma"), &[c, 1, 1])?,
            qkv: self.conv(&format!("{p}.to_qkv"))?,
            proj: self.conv(&format!("{p}.proj"))?,
        })
    }
    fn middle(&self, p: &str, c: usize) -> Result<[Block; 3]> {
        Ok([
            Block::Res(self.res(&format!("{p}.middle.0"))?),
            Block::Attn(self.attn(&format!("{p}.middle.1"), c)?),
            Block::Res(self.res(&format!("{p}.middle.2"))?),
        ])
    }
}

struct Res {
    norm1: Vec<f32>,
    conv1: Conv,
    norm2: Vec<f32>,
    conv2: Conv,
    shortcut: Option<Conv>,
}

struct Attn {
    norm: Vec<f32>,
    qkv: Conv,
    proj: Conv,
}

enum Block {
    Res(Res),
    Attn(Attn),
    /// Nearest 2× then a 3×3 conv to c/2; with `time`, first a (3,1,1) causal conv to 2c
    /// channels interleaved into 2× the frames (skipped on latent frame 0).
    Up {
        conv: Conv,
        time: Option<Conv>,
    },
    /// Zero pad right/bottom, 3×3 stride-2 conv; with `time`, then a stride-2 (3,1,1) conv over
    /// [last frame of the previous chunk, this chunk] (skipped on the first chunk).
    Down {
        conv: Conv,
        time: Option<Conv>,
    },
}

/// A run of frames at one resolution: each frame `[c, h, w]`.
#[derive(Clone, Debug)]
struct Seq {
    c: usize,
    h: usize,
    w: usize,
    frames: Vec<Vec<f32>>,
}

/// The feature caches of one pass, one slot per cached op in call order (the official
/// `feat_cache` / `feat_idx`). `None` = never called.
#[derive(Default)]
struct Caches {
    slots: Vec<Option<Vec<Vec<f32>>>>,
    idx: usize,
}

impl Caches {
    fn next(&mut self) -> &mut Option<Vec<Vec<f32>>> {
        if self.idx == self.slots.len() {
            self.slots.push(None);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// Keeps the last 2 frames of `prev ++ x` (the official `CACHE_T = 2`).
fn keep_last2(prev: &[Vec<f32>], x: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let all: Vec<&Vec<f32>> = prev.iter().chain(x).collect();
    all[all.len().saturating_sub(2)..].iter().map(|f| (*f).clone()).collect()
}

/// A causal conv (kernel kt in time, spatial padding kh/2) over `x`, continuing from the
/// frames cached in `slot` (zeros before the first frame); updates the slot.
fn causal(p: Precision, conv: &Conv, slot: &mut Option<Vec<Vec<f32>>>, x: &Seq) -> Seq {
    let prev = slot.take().unwrap_or_default();
    let pad = conv.kt - 1;
    let mut seq: Vec<Option<&[f32]>> = vec![None; pad.saturating_sub(prev.len())];
    seq.extend(prev[prev.len().saturating_sub(pad)..].iter().map(|f| Some(f.as_slice())));
    seq.extend(x.frames.iter().map(|f| Some(f.as_slice())));
    let g = Geom::same(x.h, x.w, conv.kh / 2);
    let mut out = Seq { c: conv.cout, h: x.h, w: x.w, frames: Vec::with_capacity(x.frames.len()) };
    for t in 0..x.frames.len() {
        let (f, oh, ow) = conv.frame(p, &seq[t..t + conv.kt], g);
        (out.h, out.w) = (oh, ow);
        out.frames.push(f);
    }
    if pad > 0 {
        *slot = Some(keep_last2(&prev, &x.frames));
    }
    out
}

fn per_frame(x: &Seq, c: usize, f: impl Fn(&[f32]) -> Vec<f32>) -> Seq {
    Seq { c, h: x.h, w: x.w, frames: x.frames.iter().map(|v| f(v)).collect() }
}

fn norm_silu(p: Precision, x: &Seq, gamma: &[f32]) -> Seq {
    per_frame(x, x.c, |f| {
        let mut y = ops::rms_norm(p, f, x.c, gamma);
        ops::silu(p, &mut y);
        y
    })
}

impl Res {
    fn forward(&self, p: Precision, x: &Seq, cache: &mut Caches) -> Seq {
        let h = match &self.shortcut {
            Some(s) => per_frame(x, s.cout, |f| s.frame(p, &[Some(f)], Geom::same(x.h, x.w, 0)).0),
            None => x.clone(),
        };
        let y = causal(p, &self.conv1, cache.next(), &norm_silu(p, x, &self.norm1));
        let mut y = causal(p, &self.conv2, cache.next(), &norm_silu(p, &y, &self.norm2));
        for (a, b) in y.frames.iter_mut().zip(&h.frames) {
            ops::add(p, a, b);
        }
        y
    }
}

impl Attn {
    fn forward(&self, p: Precision, x: &Seq) -> Seq {
        let (c, n) = (x.c, x.h * x.w);
        per_frame(x, c, |f| {
            let xn = ops::rms_norm(p, f, c, &self.norm);
            let qkv = self.qkv.frame(p, &[Some(&xn)], Geom::same(x.h, x.w, 0)).0;
            let a = ops::attention(p, &qkv[..c * n], &qkv[c * n..2 * c * n], &qkv[2 * c * n..], c, n);
            let mut y = self.proj.frame(p, &[Some(&a)], Geom::same(x.h, x.w, 0)).0;
            ops::add(p, &mut y, f);
            y
        })
    }
}

impl Block {
    fn forward(&self, p: Precision, x: Seq, cache: &mut Caches) -> Seq {
        match self {
            Block::Res(r) => r.forward(p, &x, cache),
            Block::Attn(a) => a.forward(p, &x),
            Block::Up { conv, time } => {
                let mut x = x;
                if let Some(tc) = time {
                    let slot = cache.next();
                    if slot.is_none() {
                        // Latent frame 0: no time conv (the official 'Rep' mark); later
                        // frames start from zero padding, never from frame 0's features.
                        *slot = Some(Vec::new());
                    } else {
                        let y = causal(p, tc, slot, &x);
                        let c = x.c;
                        let hw = x.h * x.w;
                        let mut frames = Vec::with_capacity(2 * y.frames.len());
                        for f in &y.frames {
                            frames.push(f[..c * hw].to_vec());
                            frames.push(f[c * hw..].to_vec());
                        }
                        x = Seq { c, h: x.h, w: x.w, frames };
                    }
                }
                let (h2, w2) = (2 * x.h, 2 * x.w);
                let mut out = Seq { c: conv.cout, h: h2, w: w2, frames: Vec::new() };
                for f in &x.frames {
                    let u = ops::upsample2x(f, x.c, x.h, x.w);
                    out.frames.push(conv.frame(p, &[Some(&u)], Geom::same(h2, w2, 1)).0);
                }
                out
            }
            Block::Down { conv, time } => {
                let g = Geom { h: x.h, w: x.w, stride: 2, pad: [0, 1, 0, 1] };
                let mut out = Seq { c: conv.cout, h: 0, w: 0, frames: Vec::new() };
                for f in &x.frames {
                    let (y, oh, ow) = conv.frame(p, &[Some(f)], g);
                    (out.h, out.w) = (oh, ow);
                    out.frames.push(y);
                }
                let Some(tc) = time else { return out };
                let slot = cache.next();
                let last = out.frames.last().cloned().unwrap_or_default();
                let Some(prev) = slot.replace(vec![last]) else { return out };
                let seq: Vec<&[f32]> = prev.iter().chain(&out.frames).map(|f| f.as_slice()).collect();
                let g = Geom::same(out.h, out.w, 0);
                let frames = (0..=(seq.len() - 3) / 2)
                    .map(|t| tc.frame(p, &[Some(seq[2 * t]), Some(seq[2 * t + 1]), Some(seq[2 * t + 2])], g).0)
                    .collect();
                Seq { frames, ..out }
            }
        }
    }
}

/// Recorded intermediates (name, `[C, T, H, W]` data) for checking against the golden.
pub type Trace = Vec<(String, Vec<f32>)>;

fn trace_seq(trace: &mut Option<Trace>, name: impl FnOnce() -> String, x: &Seq) {
    if let Some(t) = trace {
        let hw = x.h * x.w;
        let mut v = vec![0f32; x.c * x.frames.len() * hw];
        for (ti, f) in x.frames.iter().enumerate() {
            for ch in 0..x.c {
                v[(ch * x.frames.len() + ti) * hw..][..hw].copy_from_slice(&f[ch * hw..(ch + 1) * hw]);
            }
        }
        t.push((name(), v));
    }
}

/// The VAE's weights, loaded for the CPU at one storage precision.
pub struct Vae {
    pub cfg: VaeConfig,
    pub precision: Precision,
    conv1: Conv,
    conv2: Conv,
    dec_conv1: Conv,
    dec_blocks: Vec<(Block, Option<usize>)>,
    dec_head_gamma: Vec<f32>,
    dec_head: Conv,
    enc_conv1: Conv,
    enc_blocks: Vec<Block>,
    enc_head_gamma: Vec<f32>,
    enc_head: Conv,
}

/// What to tell a user whose `--vae` is not a usable VAE checkpoint.
pub const VAE_HINT: &str =
    "make a test VAE with `dfrt-weights synth --vae -o FILE`, or convert Wan2.1_VAE.pth with `dfrt-weights convert`";

impl Vae {
    /// Opens a runtime VAE checkpoint (config in its metadata). Errors name the file and say
    /// how to make one.
    pub fn open(path: impl AsRef<Path>, precision: Precision) -> Result<Self> {
        let path = path.as_ref();
        let f = TensorFile::open(path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::Checkpoint { path: path.display().to_string(), msg: format!("no such file; {VAE_HINT}") }
            }
            e => e,
        })?;
        let bad = |msg: String| Error::Checkpoint { path: path.display().to_string(), msg };
        let s = f.metadata.get(VAE_CONFIG_KEY).ok_or_else(|| {
            let what = if f.metadata.contains_key(crate::checkpoint::CONFIG_KEY) {
                "a DiT checkpoint, not a VAE"
            } else {
                "not a dfrt VAE checkpoint"
            };
            bad(format!("no `{VAE_CONFIG_KEY}` metadata: {what}; {VAE_HINT}"))
        })?;
        let cfg = VaeConfig::from_json(s).map_err(|e| bad(format!("bad `{VAE_CONFIG_KEY}` metadata ({e})")))?;
        Self::load(&f, cfg, precision).map_err(|e| match e {
            Error::Tensor { .. } => bad(format!("{e}; its tensors do not match its own VAE config: {VAE_HINT}")),
            e => e,
        })
    }

    /// Loads the weights of `cfg` from any safetensors file with the official names (checks
    /// every tensor's presence and shape first).
    pub fn load(f: &TensorFile, cfg: VaeConfig, precision: Precision) -> Result<Self> {
        cfg.validate()?;
        for (name, shape) in cfg.expected_tensors() {
            let i = f.info(&name)?;
            if i.shape != shape {
                return Err(Error::tensor(&name, format!("has shape {:?}, expected {shape:?}", i.shape)));
            }
        }
        let l = Loader { f, p: precision };
        let stages = cfg.dim_mult.len();
        let nrb = cfg.num_res_blocks;
        let (ed, dd) = (cfg.encoder_dims(), cfg.decoder_dims());
        let mut enc_blocks = Vec::new();
        let mut idx = 0;
        for s in 0..stages {
            for _ in 0..nrb {
                enc_blocks.push(Block::Res(l.res(&format!("encoder.downsamples.{idx}"))?));
                idx += 1;
            }
            if s + 1 != stages {
                let p = format!("encoder.downsamples.{idx}");
                let time = if cfg.temperal_downsample[s] { Some(l.conv(&format!("{p}.time_conv"))?) } else { None };
                enc_blocks.push(Block::Down { conv: l.conv(&format!("{p}.resample.1"))?, time });
                idx += 1;
            }
        }
        enc_blocks.extend(l.middle("encoder", ed[stages])?);
        let up = cfg.temperal_upsample();
        let mut dec_blocks: Vec<(Block, Option<usize>)> =
            l.middle("decoder", dd[0])?.into_iter().map(|b| (b, None)).collect();
        let mut idx = 0;
        for s in 0..stages {
            for r in 0..nrb + 1 {
                let tag = if s + 1 == stages && r == nrb { Some(stages - 1) } else { None };
                dec_blocks.push((Block::Res(l.res(&format!("decoder.upsamples.{idx}"))?), tag));
                idx += 1;
            }
            if s + 1 != stages {
                let p = format!("decoder.upsamples.{idx}");
                let time = if up[s] { Some(l.conv(&format!("{p}.time_conv"))?) } else { None };
                dec_blocks.push((Block::Up { conv: l.conv(&format!("{p}.resample.1"))?, time }, Some(s)));
                idx += 1;
            }
        }
        // Tag the last middle block so the trace can name its output.
        dec_blocks[2].1 = Some(usize::MAX);
        Ok(Vae {
            precision,
            conv1: l.conv("conv1")?,
            conv2: l.conv("conv2")?,
            dec_conv1: l.conv("decoder.conv1")?,
            dec_blocks,
            dec_head_gamma: l.vec("decoder.head.0.gamma", &[dd[stages], 1, 1, 1])?,
            dec_head: l.conv("decoder.head.2")?,
            enc_conv1: l.conv("encoder.conv1")?,
            enc_blocks,
            enc_head_gamma: l.vec("encoder.head.0.gamma", &[ed[stages], 1, 1, 1])?,
            enc_head: l.conv("encoder.head.2")?,
            cfg,
        })
    }

    /// Decodes all latents `[F, z_dim, h, w]` at once: pixels `[1 + 4(F−1), 3, 8h, 8w]`.
    pub fn decode(self: &Arc<Self>, latents: &[f32], frames: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        Decoder::new(self.clone()).decode_chunk(latents, frames, h, w)
    }

    /// Encodes pixels `[T, 3, H, W]` in [-1, 1] (T = 1 + 4k, H and W multiples of 8) to
    /// normalised latent means `[1 + (T−1)/4, z_dim, H/8, W/8]`.
    pub fn encode(&self, pixels: &[f32], t: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let (ts, ss) = (self.cfg.temporal_scale(), self.cfg.spatial_scale());
        if t == 0 || !(t - 1).is_multiple_of(ts) {
            return Err(Error::Input(format!("encode: {t} pixel frames; the encoder takes 1 + {ts}·k frames")));
        }
        if h == 0 || w == 0 || !h.is_multiple_of(ss) || !w.is_multiple_of(ss) {
            return Err(Error::Input(format!(
                "encode: {h}×{w} pixels; height and width must be positive multiples of {ss}"
            )));
        }
        if pixels.len() != t * 3 * h * w {
            return Err(Error::Input(format!("encode: {} values for [{t}, 3, {h}, {w}]", pixels.len())));
        }
        let p = self.precision;
        let mut px = pixels.to_vec();
        ops::round(p, &mut px);
        let frame = 3 * h * w;
        let mut cache = Caches::default();
        let mut out = Vec::new();
        let mut start = 0;
        while start < t {
            let n = if start == 0 { 1 } else { ts };
            cache.idx = 0;
            let mut x = Seq {
                c: 3,
                h,
                w,
                frames: (start..start + n).map(|i| px[i * frame..(i + 1) * frame].to_vec()).collect(),
            };
            x = causal(p, &self.enc_conv1, cache.next(), &x);
            for b in &self.enc_blocks {
                x = b.forward(p, x, &mut cache);
            }
            x = causal(p, &self.enc_head, cache.next(), &norm_silu(p, &x, &self.enc_head_gamma));
            out.extend(x.frames.into_iter().map(|f| (f, x.h, x.w)));
            start += n;
        }
        let z = self.cfg.z_dim;
        let (mean, inv) = self.norm_consts();
        let mut lat = Vec::with_capacity(out.len() * z * out[0].1 * out[0].2);
        for (f, oh, ow) in out {
            let hw = oh * ow;
            let y = self.conv1.frame(p, &[Some(&f)], Geom::same(oh, ow, 0)).0;
            for ch in 0..z {
                lat.extend(y[ch * hw..(ch + 1) * hw].iter().map(|v| {
                    let d = ops_r(p, v - mean[ch]);
                    ops_r(p, d * inv[ch])
                }));
            }
        }
        Ok(lat)
    }

    /// (mean, 1/std) in the storage precision: the reciprocal is taken in that precision, as
    /// `WanVAEWrapper` computes `1.0 / std.to(dtype)`.
    fn norm_consts(&self) -> (Vec<f32>, Vec<f32>) {
        let p = self.precision;
        let mean = self.cfg.mean.iter().map(|m| ops_r(p, *m)).collect();
        let inv = self.cfg.std.iter().map(|s| ops_r(p, 1.0 / ops_r(p, *s))).collect();
        (mean, inv)
    }
}

fn ops_r(p: Precision, v: f32) -> f32 {
    let mut a = [v];
    ops::round(p, &mut a);
    a[0]
}

/// A streaming decode: the feature caches live as long as the decoder, so consecutive
/// [`Decoder::decode_chunk`] calls continue one video (the official `cached_decode`).
pub struct Decoder {
    vae: Arc<Vae>,
    cache: Caches,
    frames_in: usize,
    trace: Option<Trace>,
}

impl Decoder {
    /// A decoder at the start of a video (empty caches).
    pub fn new(vae: Arc<Vae>) -> Self {
        Decoder { vae, cache: Caches::default(), frames_in: 0, trace: None }
    }
    /// The VAE it decodes with.
    pub fn vae(&self) -> &Arc<Vae> {
        &self.vae
    }
    /// Latent frames decoded so far.
    pub fn frames_in(&self) -> usize {
        self.frames_in
    }
    /// Pixel frames the next `latent_frames` will give.
    pub fn frames_out(&self, latent_frames: usize) -> usize {
        let c = &self.vae.cfg;
        c.pixel_frames(self.frames_in + latent_frames) - c.pixel_frames(self.frames_in)
    }
    /// Starts a new video: drops every cache.
    pub fn reset(&mut self) {
        self.cache = Caches::default();
        self.frames_in = 0;
    }
    /// Records named intermediates (`conv2_in`, `conv2_out`, `f{i}.conv1`, `f{i}.middle`,
    /// `f{i}.up{s}`, `f{i}.head`) from now on; [`Decoder::take_trace`] returns them.
    pub fn enable_trace(&mut self) {
        self.trace = Some(Vec::new());
    }
    pub fn take_trace(&mut self) -> Trace {
        self.trace.take().unwrap_or_default()
    }

    /// Decodes the next `frames` latent frames `[frames, z_dim, h, w]` (normalised, as the
    /// DiT gives them) into pixel frames `[n, 3, 8h, 8w]` clamped to [-1, 1], where n is 1 +
    /// 4(frames − 1) for the first chunk of a video and 4·frames after.
    pub fn decode_chunk(&mut self, latents: &[f32], frames: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let vae = self.vae.clone();
        let (z, p) = (vae.cfg.z_dim, vae.precision);
        if h == 0 || w == 0 || latents.len() != frames * z * h * w {
            return Err(Error::Input(format!(
                "decode: {} latent values for [{frames}, {z}, {h}, {w}] (the VAE takes {z} latent channels)",
                latents.len()
            )));
        }
        if let Some(i) = latents.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("decode: latent value {i} is {}", latents[i])));
        }
        let hw = h * w;
        let (mean, inv) = vae.norm_consts();
        let mut out = Vec::with_capacity(self.frames_out(frames) * 3 * 64 * hw);
        let mut zin = Vec::new();
        let mut xs = Vec::new();
        for fi in 0..frames {
            let mut x: Vec<f32> = latents[fi * z * hw..(fi + 1) * z * hw].to_vec();
            ops::round(p, &mut x);
            for ch in 0..z {
                for v in &mut x[ch * hw..(ch + 1) * hw] {
                    *v = ops_r(p, ops_r(p, *v / inv[ch]) + mean[ch]);
                }
            }
            let y = vae.conv2.frame(p, &[Some(&x)], Geom::same(h, w, 0)).0;
            zin.push(x);
            xs.push(y);
        }
        trace_seq(&mut self.trace, || "conv2_in".into(), &Seq { c: z, h, w, frames: zin });
        trace_seq(&mut self.trace, || "conv2_out".into(), &Seq { c: z, h, w, frames: xs.clone() });
        for x in xs {
            let i = self.frames_in;
            self.cache.idx = 0;
            let mut s = causal(p, &vae.dec_conv1, self.cache.next(), &Seq { c: z, h, w, frames: vec![x] });
            trace_seq(&mut self.trace, || format!("f{i}.conv1"), &s);
            for (b, tag) in &vae.dec_blocks {
                s = b.forward(p, s, &mut self.cache);
                match tag {
                    Some(usize::MAX) => trace_seq(&mut self.trace, || format!("f{i}.middle"), &s),
                    Some(st) => trace_seq(&mut self.trace, || format!("f{i}.up{st}"), &s),
                    None => {}
                }
            }
            s = causal(p, &vae.dec_head, self.cache.next(), &norm_silu(p, &s, &vae.dec_head_gamma));
            trace_seq(&mut self.trace, || format!("f{i}.head"), &s);
            for f in s.frames {
                out.extend(f.into_iter().map(|v| v.clamp(-1.0, 1.0)));
            }
            self.frames_in += 1;
        }
        Ok(out)
    }
}
