//! Random, well-scaled weights for any config, so the full 1.3B shape can be run and
//! benchmarked without a download.
//!
//! Each tensor is drawn from its own stream, seeded by (seed, tensor name, 1M-element chunk),
//! so the values do not depend on the order of generation, the thread count, or on which
//! other tensors exist (`--layers 2` gives the first two blocks of the 30-layer model).
//!
//! Scales (why): Linear weights are N(0, 1/fan_in), which keeps activations at unit scale;
//! `time_projection` gets a further 0.6 so the six modulation rows (shift/scale/gate) stay
//! around 0.1-0.2 (rms) and each block changes the residual stream moderately rather than
//! replacing it; modulation tables use the official init N(0, 1/dim); biases are N(0, 0.02)
//! and norm gains N(1, 0.05) so that nothing is exactly zero or one (a swapped or ignored
//! parameter then changes the output).

use rayon::prelude::*;
use std::path::Path;

use dfrt::checkpoint::{DType, OutTensor};
use dfrt::names::expected_tensors;
use dfrt::{Error, ModelConfig, Result};

use crate::writer::{encode, write_checkpoint_streaming, Spec};

/// SplitMix64: seeds the generators and hashes (seed, name, chunk) into stream seeds.
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ with Box–Muller normals: fast, seedable, good enough for weights.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f32>,
}

impl Rng {
    /// A generator whose state is expanded from `seed` by SplitMix64.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [splitmix(&mut x), splitmix(&mut x), splitmix(&mut x), splitmix(&mut x)];
        Rng { s, spare: None }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in (0, 1], never 0 so that ln() is finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box–Muller; the second of each pair is kept for the next call).
    pub fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
}

fn stream_seed(seed: u64, name: &str, chunk: u64) -> u64 {
    // FNV-1a of the name, mixed with the seed and chunk through SplitMix64.
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut x = seed ^ h.rotate_left(17) ^ chunk.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix(&mut x)
}

/// (mean, std) of a tensor's entries, by name.
pub fn init_scale(cfg: &ModelConfig, name: &str, shape: &[usize]) -> (f32, f32) {
    let fan_in = |s: &[usize]| s[1..].iter().product::<usize>().max(1) as f32;
    if name.ends_with("modulation") {
        (0.0, 1.0 / (cfg.dim as f32).sqrt())
    } else if name.contains("norm") && name.ends_with(".weight") {
        (1.0, 0.05)
    } else if name.ends_with(".bias") {
        (0.0, 0.02)
    } else if name == "time_projection.1.weight" {
        (0.0, 0.6 / fan_in(shape).sqrt())
    } else {
        (0.0, 1.0 / fan_in(shape).sqrt())
    }
}

const CHUNK: usize = 1 << 20;

/// One tensor's values (deterministic in `seed` and `name`).
pub fn synth_tensor(cfg: &ModelConfig, seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let (mean, std) = init_scale(cfg, name, shape);
    let n: usize = shape.iter().product();
    let mut v = vec![f32::NAN; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut rng = Rng::new(stream_seed(seed, name, c as u64));
        for x in out {
            *x = mean + std * rng.normal();
        }
    });
    v
}

/// A named f32 tensor.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    /// Native Wan name.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// The tensor encoded for writing in `dtype` (a float type: F32, BF16 or F16).
    pub fn to_out(&self, dtype: DType) -> Result<OutTensor> {
        Ok(OutTensor { name: self.name.clone(), dtype, shape: self.shape.clone(), data: encode(&self.data, dtype)? })
    }
}

/// All tensors of `cfg`, in memory (for tests with tiny models).
pub fn synth_tensors(cfg: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| NamedTensor { data: synth_tensor(cfg, seed, &name, &shape), name, shape })
        .collect()
}

/// Writes a synthetic runtime checkpoint, one tensor at a time (peak memory: the largest tensor).
pub fn synth_checkpoint(path: impl AsRef<Path>, cfg: &ModelConfig, seed: u64, dtype: DType) -> Result<usize> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(Error::Config(format!("synth dtype {dtype:?} is not supported (f32 or bf16)")));
    }
    cfg.validate()?;
    let specs: Vec<Spec> = expected_tensors(cfg).into_iter().map(|(name, shape)| Spec { name, dtype, shape }).collect();
    let bytes = specs.iter().map(Spec::bytes).sum();
    let path = path.as_ref();
    write_checkpoint_streaming(path, cfg, &specs, |_, s, w| {
        let v = synth_tensor(cfg, seed, &s.name, &s.shape);
        w.write_all(&encode(&v, dtype)?).map_err(|e| Error::io(path, e))
    })?;
    Ok(bytes)
}

/// A synthetic text embedding `[text_len, text_dim]` for a config, standing in for the umT5
/// output: the first `⌈text_len/2⌉` rows are N(0, 1), the rest exactly zero, as umT5 pads a
/// short prompt. Written as tensor `context` (the layout `dfrt generate --context` reads).
pub fn synth_context(path: impl AsRef<Path>, cfg: &ModelConfig, seed: u64) -> Result<()> {
    let (l, w) = (cfg.text_len, cfg.text_dim);
    let valid = l.div_ceil(2);
    let mut rng = Rng::new(stream_seed(seed, "context", 0));
    let data: Vec<f32> = (0..l * w).map(|i| if i / w < valid { rng.normal() } else { 0.0 }).collect();
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("dfrt.context_valid_len".to_string(), valid.to_string());
    dfrt::checkpoint::write_safetensors(path, &[OutTensor::f32("context", vec![l, w], &data)], &meta)
}
