//! The Wan2.1 video VAE's weights: conversion of `Wan2.1_VAE.pth` (official `WanVAE_` names)
//! or a diffusers `AutoencoderKLWan` safetensors file to a runtime VAE checkpoint, and
//! synthetic VAEs of any width.
//!
//! A runtime VAE checkpoint keeps the official names (encoder included, for image-to-video and
//! re-encoding) and stores its [`VaeConfig`] under the metadata key `dfrt.vae`; the weights fix
//! every field of it (the latent mean/std are the official constants of `WanVAEWrapper`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dfrt::checkpoint::DType;
use dfrt::vae::{VaeConfig, VAE_CONFIG_KEY};
use dfrt::{Error, Result};

use crate::convert::{expand_inputs, strip_prefixes};
use crate::source::Source;
use crate::synth::Rng;
use crate::writer::{encode, write_streaming, Spec};

/// True when the names look like a video VAE (official or diffusers), not a DiT.
pub fn is_vae_names<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    names.into_iter().any(|n| {
        let k = strip_vae_prefix(n);
        k.starts_with("decoder.") || k.starts_with("encoder.") || k.starts_with("post_quant_conv.")
    })
}

/// True when the files hold a video VAE (reads only the headers).
pub fn is_vae_source(inputs: &[PathBuf]) -> Result<bool> {
    let srcs = expand_inputs(inputs)?.iter().map(Source::open).collect::<Result<Vec<_>>>()?;
    Ok(srcs.iter().any(|s| is_vae_names(s.tensors.iter().map(|t| t.name.as_str()))))
}

fn strip_vae_prefix(k: &str) -> String {
    let k = strip_prefixes(k);
    k.strip_prefix("vae.").map(String::from).unwrap_or(k)
}

/// `norm1.gamma` → `residual.0.gamma` and the other diffusers residual-block names.
fn res_tail(t: &str) -> Option<String> {
    const MAP: [(&str, &str); 5] = [
        ("norm1.", "residual.0."),
        ("conv1.", "residual.2."),
        ("norm2.", "residual.3."),
        ("conv2.", "residual.6."),
        ("conv_shortcut.", "shortcut."),
    ];
    MAP.iter().find_map(|(f, to)| t.strip_prefix(f).map(|r| format!("{to}{r}")))
}

/// Maps a diffusers `AutoencoderKLWan` key to its official `WanVAE_` name (`None` if it is not
/// one). `nrb` is `num_res_blocks`: a decoder stage has nrb+1 resnets and one upsampler, so
/// `up_blocks.s.resnets.r` is `upsamples.{s(nrb+2)+r}` and `up_blocks.s.upsamplers.0` is
/// `upsamples.{s(nrb+2)+nrb+1}`.
pub fn diffusers_vae_to_native(k: &str, nrb: usize) -> Option<String> {
    if let Some(r) = k.strip_prefix("quant_conv.") {
        return Some(format!("conv1.{r}"));
    }
    if let Some(r) = k.strip_prefix("post_quant_conv.") {
        return Some(format!("conv2.{r}"));
    }
    let (part, rest) = k.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let tail = if let Some(r) = rest.strip_prefix("conv_in.") {
        format!("conv1.{r}")
    } else if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("head.0.{r}")
    } else if let Some(r) = rest.strip_prefix("conv_out.") {
        format!("head.2.{r}")
    } else if let Some(r) = rest.strip_prefix("mid_block.resnets.") {
        let (j, t) = r.split_once('.')?;
        format!("middle.{}.{}", 2 * j.parse::<usize>().ok()?, res_tail(t)?)
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        format!("middle.1.{r}")
    } else if let Some(r) = rest.strip_prefix("down_blocks.") {
        let (i, t) = r.split_once('.')?;
        i.parse::<usize>().ok()?;
        let t = res_tail(t).unwrap_or_else(|| t.to_string());
        format!("downsamples.{i}.{t}")
    } else if let Some(r) = rest.strip_prefix("up_blocks.") {
        let (s, t) = r.split_once('.')?;
        let s: usize = s.parse().ok()?;
        if let Some(t) = t.strip_prefix("resnets.") {
            let (j, t) = t.split_once('.')?;
            format!("upsamples.{}.{}", s * (nrb + 2) + j.parse::<usize>().ok()?, res_tail(t)?)
        } else if let Some(t) = t.strip_prefix("upsamplers.0.") {
            format!("upsamples.{}.{t}", s * (nrb + 2) + nrb + 1)
        } else {
            return None;
        }
    } else {
        return None;
    };
    Some(format!("{part}.{tail}"))
}

fn shape<'a>(shapes: &'a BTreeMap<String, Vec<usize>>, n: &str) -> Result<&'a [usize]> {
    shapes.get(n).map(|s| s.as_slice()).ok_or_else(|| Error::tensor(n, "missing: needed to infer the VAE config"))
}

/// Infers the VAE config from official names and shapes: the width and z_dim from the first
/// and last convs, the stages, residual blocks and temporal downsamplers by walking
/// `encoder.downsamples.*`.
pub fn infer_vae_config(shapes: &BTreeMap<String, Vec<usize>>) -> Result<VaeConfig> {
    let c1 = shape(shapes, "encoder.conv1.weight")?;
    if c1.len() != 5 {
        return Err(Error::tensor("encoder.conv1.weight", format!("has shape {c1:?}, expected [dim, 3, 3, 3, 3]")));
    }
    let dim = c1[0];
    let z_dim = shape(shapes, "conv2.weight")?[0];
    let (mut dim_mult, mut temporal, mut nrb, mut run) = (Vec::new(), Vec::new(), None, 0usize);
    let mut i = 0;
    loop {
        let p = format!("encoder.downsamples.{i}");
        if let Some(s) = shapes.get(&format!("{p}.residual.2.weight")) {
            run += 1;
            if run == 1 {
                dim_mult.push(s[0] / dim.max(1));
            }
        } else if shapes.contains_key(&format!("{p}.resample.1.weight")) {
            temporal.push(shapes.contains_key(&format!("{p}.time_conv.weight")));
            if *nrb.get_or_insert(run) != run {
                return Err(Error::tensor(
                    format!("{p}.resample.1.weight"),
                    "stages with different numbers of residual blocks",
                ));
            }
            run = 0;
        } else {
            break;
        }
        i += 1;
    }
    let num_res_blocks = nrb.unwrap_or(run);
    let (mean, std) = if z_dim == 16 {
        (dfrt::vae::WAN_MEAN.to_vec(), dfrt::vae::WAN_STD.to_vec())
    } else {
        (vec![0.0; z_dim], vec![1.0; z_dim])
    };
    let cfg = VaeConfig { dim, z_dim, dim_mult, num_res_blocks, temperal_downsample: temporal, mean, std };
    cfg.validate()?;
    Ok(cfg)
}

/// What a VAE conversion did.
#[derive(Clone, Debug)]
pub struct VaeConvertReport {
    pub config: VaeConfig,
    pub dtype: DType,
    pub tensors: usize,
    pub bytes: usize,
    /// Source tensors renamed from diffusers names.
    pub renamed: usize,
    /// Source entries not written, with the reason.
    pub dropped: Vec<(String, String)>,
}

/// Converts a VAE state dict (one file or shards) to a runtime VAE checkpoint. The output
/// dtype is `dtype`, else the source's if uniformly bf16, else f32.
pub fn convert_vae_files(
    inputs: &[PathBuf],
    output: impl AsRef<Path>,
    dtype: Option<DType>,
) -> Result<VaeConvertReport> {
    let srcs = expand_inputs(inputs)?.iter().map(Source::open).collect::<Result<Vec<_>>>()?;
    let all: Vec<(usize, usize)> =
        srcs.iter().enumerate().flat_map(|(p, s)| (0..s.tensors.len()).map(move |i| (p, i))).collect();
    let name = |&(p, i): &(usize, usize)| strip_vae_prefix(&srcs[p].tensors[i].name);
    // num_res_blocks from the diffusers decoder (resnets per up block − 1) when names are diffusers.
    let nrb = all
        .iter()
        .filter_map(|t| {
            name(t)
                .strip_prefix("decoder.up_blocks.0.resnets.")
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
        })
        .max()
        .unwrap_or(0);
    let mut by_native: HashMap<String, (usize, usize)> = HashMap::new();
    let mut shapes = BTreeMap::new();
    let mut renamed = 0;
    for t in &all {
        let k = name(t);
        let native = match diffusers_vae_to_native(&k, nrb) {
            Some(n) => {
                renamed += 1;
                n
            }
            None => k,
        };
        if by_native.insert(native.clone(), *t).is_some() {
            return Err(Error::tensor(&native, "two source tensors map to this name"));
        }
        shapes.insert(native, srcs[t.0].tensors[t.1].shape.clone());
    }
    let config = infer_vae_config(&shapes)?;
    let expected = config.expected_tensors();
    for (n, s) in &expected {
        match shapes.get(n) {
            None => return Err(Error::tensor(n, "missing from the VAE checkpoint")),
            Some(got) if got != s => return Err(Error::tensor(n, format!("has shape {got:?}, expected {s:?}"))),
            Some(_) => {}
        }
    }
    let wanted: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut dropped: Vec<(String, String)> = by_native
        .keys()
        .filter(|n| !wanted.contains(n.as_str()))
        .map(|n| (n.clone(), "not part of the Wan2.1 VAE".to_string()))
        .collect();
    dropped.sort();
    let mut dtypes = std::collections::BTreeSet::new();
    for (n, _) in &expected {
        let (p, i) = by_native[n];
        let t = &srcs[p].tensors[i];
        match t.dtype {
            Some(d @ (DType::F32 | DType::BF16 | DType::F16)) => dtypes.insert(d.safetensors_name()),
            _ => return Err(Error::tensor(&t.name, format!("has dtype {}, expected F32, BF16 or F16", t.dtype_name))),
        };
    }
    let dtype = match dtype {
        Some(d @ (DType::F32 | DType::BF16)) => d,
        Some(d) => return Err(Error::Config(format!("output dtype {d:?} is not supported (f32 or bf16)"))),
        None if dtypes.len() == 1 && dtypes.contains("BF16") => DType::BF16,
        None => DType::F32,
    };
    let specs: Vec<Spec> = expected.iter().map(|(n, s)| Spec { name: n.clone(), dtype, shape: s.clone() }).collect();
    let mut meta = BTreeMap::new();
    meta.insert(VAE_CONFIG_KEY.to_string(), config.to_json());
    let out = output.as_ref();
    write_streaming(out, &specs, &meta, |i, spec, w| {
        let (p, j) = by_native[&spec.name];
        let (src, t) = (&srcs[p], &srcs[p].tensors[j]);
        let io = |e| Error::io(out, e);
        let _ = i;
        if t.dtype == Some(dtype) {
            w.write_all(&src.raw(t)?).map_err(io)
        } else {
            w.write_all(&encode(&src.f32(t)?, dtype)?).map_err(io)
        }
    })?;
    let bytes = specs.iter().map(|s| s.bytes()).sum();
    Ok(VaeConvertReport { config, dtype, tensors: specs.len(), bytes, renamed, dropped })
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// One synthetic VAE tensor, deterministic in (seed, name). Conv weights are
/// N(0, (g/√fan_in)²) with g = 3 on each residual branch's second conv (so residual branches
/// matter) and 0.7 on the decoder head (pixels mostly inside [-1, 1]); biases N(0, 0.1²); RMS_norm
/// gammas U(0.6, 1.4): nothing is exactly zero or one, and the middle attention is not a no-op
/// (the official init zeroes its `proj`).
pub fn synth_vae_tensor(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ name_hash(name));
    let n: usize = shape.iter().product();
    if name.ends_with(".gamma") {
        return (0..n).map(|_| 0.6 + 0.8 * rng.uniform() as f32).collect();
    }
    if name.ends_with(".bias") {
        return (0..n).map(|_| 0.1 * rng.normal()).collect();
    }
    let fan_in: usize = shape[1..].iter().product();
    let gain = if name.ends_with("residual.6.weight") {
        3.0
    } else if name == "decoder.head.2.weight" {
        0.7
    } else if name == "encoder.head.2.weight" {
        4.0
    } else {
        1.0
    };
    let s = gain / (fan_in as f32).sqrt();
    (0..n).map(|_| s * rng.normal()).collect()
}

/// Writes a synthetic runtime VAE checkpoint of `cfg`; returns the bytes of tensor data.
pub fn synth_vae(path: impl AsRef<Path>, cfg: &VaeConfig, seed: u64, dtype: DType) -> Result<usize> {
    cfg.validate()?;
    let expected = cfg.expected_tensors();
    let specs: Vec<Spec> = expected.iter().map(|(n, s)| Spec { name: n.clone(), dtype, shape: s.clone() }).collect();
    let mut meta = BTreeMap::new();
    meta.insert(VAE_CONFIG_KEY.to_string(), cfg.to_json());
    let path = path.as_ref();
    write_streaming(path, &specs, &meta, |_, s, w| {
        w.write_all(&encode(&synth_vae_tensor(seed, &s.name, &s.shape), dtype)?).map_err(|e| Error::io(path, e))
    })?;
    Ok(specs.iter().map(|s| s.bytes()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_back_to_every_official_name() {
        let cfg = VaeConfig::with_dim(4);
        let nrb = cfg.num_res_blocks;
        // Forward map (official → diffusers) written independently, then mapped back.
        let to_diffusers = |n: &str| -> String {
            let res = |t: &str| {
                t.replace("residual.0.", "norm1.")
                    .replace("residual.2.", "conv1.")
                    .replace("residual.3.", "norm2.")
                    .replace("residual.6.", "conv2.")
                    .replace("shortcut.", "conv_shortcut.")
            };
            if let Some(r) = n.strip_prefix("conv1.") {
                return format!("quant_conv.{r}");
            }
            if let Some(r) = n.strip_prefix("conv2.") {
                return format!("post_quant_conv.{r}");
            }
            let (part, rest) = n.split_once('.').unwrap();
            let tail = if let Some(r) = rest.strip_prefix("conv1.") {
                format!("conv_in.{r}")
            } else if let Some(r) = rest.strip_prefix("head.0.") {
                format!("norm_out.{r}")
            } else if let Some(r) = rest.strip_prefix("head.2.") {
                format!("conv_out.{r}")
            } else if let Some(r) = rest.strip_prefix("middle.1.") {
                format!("mid_block.attentions.0.{r}")
            } else if let Some(r) = rest.strip_prefix("middle.") {
                let (j, t) = r.split_once('.').unwrap();
                format!("mid_block.resnets.{}.{}", j.parse::<usize>().unwrap() / 2, res(t))
            } else if let Some(r) = rest.strip_prefix("downsamples.") {
                format!("down_blocks.{}", res(r))
            } else {
                let r = rest.strip_prefix("upsamples.").unwrap();
                let (i, t) = r.split_once('.').unwrap();
                let i: usize = i.parse().unwrap();
                let (s, j) = (i / (nrb + 2), i % (nrb + 2));
                if j == nrb + 1 {
                    format!("up_blocks.{s}.upsamplers.0.{t}")
                } else {
                    format!("up_blocks.{s}.resnets.{j}.{}", res(t))
                }
            };
            format!("{part}.{tail}")
        };
        for (n, _) in cfg.expected_tensors() {
            let d = to_diffusers(&n);
            assert_eq!(diffusers_vae_to_native(&d, nrb).as_deref(), Some(n.as_str()), "diffusers `{d}`");
        }
        assert_eq!(diffusers_vae_to_native("blocks.0.ffn.0.weight", nrb), None);
    }

    #[test]
    fn config_is_inferred_from_shapes() {
        for cfg in [
            VaeConfig::with_dim(6),
            VaeConfig {
                dim_mult: vec![1, 2, 2],
                temperal_downsample: vec![true, false],
                num_res_blocks: 1,
                ..VaeConfig::with_dim(4)
            },
        ] {
            let shapes: BTreeMap<String, Vec<usize>> = cfg.expected_tensors().into_iter().collect();
            assert_eq!(infer_vae_config(&shapes).unwrap(), cfg);
        }
    }
}
