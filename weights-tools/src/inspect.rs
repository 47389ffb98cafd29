//! `inspect`: the config and a table of tensors of any weight file.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use dfrt::checkpoint::CONFIG_KEY;
use dfrt::{ModelConfig, Result};
use serde_json::json;

use crate::convert::{infer_config, native_name};
use crate::source::{Format, Source};

#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f32,
    pub max: f32,
    pub nonfinite: usize,
}

pub fn stats(v: &[f32]) -> Stats {
    let (mut s, mut s2, mut min, mut max, mut bad, mut n) = (0f64, 0f64, f32::INFINITY, f32::NEG_INFINITY, 0, 0usize);
    for &x in v {
        if !x.is_finite() {
            bad += 1;
            continue;
        }
        s += x as f64;
        s2 += (x as f64) * (x as f64);
        min = min.min(x);
        max = max.max(x);
        n += 1;
    }
    let mean = if n > 0 { s / n as f64 } else { f64::NAN };
    let var = if n > 0 { (s2 / n as f64 - mean * mean).max(0.0) } else { f64::NAN };
    Stats { mean, std: var.sqrt(), min, max, nonfinite: bad }
}

/// The config of a file: from its metadata (a runtime checkpoint) or inferred from the
/// tensor shapes of a raw state dict. The second value says which.
pub fn file_config(src: &Source) -> (Option<ModelConfig>, &'static str) {
    if let Some(s) = src.metadata.get(CONFIG_KEY) {
        return match ModelConfig::from_json(s) {
            Ok(c) => (Some(c), "metadata"),
            Err(_) => (None, "metadata (invalid)"),
        };
    }
    // A raw file: infer from the (first group of) tensors, ignoring wrapper prefixes.
    let group =
        ["generator_ema.", "generator."].into_iter().find(|g| src.tensors.iter().any(|t| t.name.starts_with(g)));
    let shapes: BTreeMap<String, Vec<usize>> = src
        .tensors
        .iter()
        .filter_map(|t| match group {
            Some(g) => t.name.strip_prefix(g).map(|k| (native_name(k), t.shape.clone())),
            None => Some((native_name(&t.name), t.shape.clone())),
        })
        .collect();
    match infer_config(&shapes, None, None) {
        Ok(c) => (Some(c), "inferred from shapes (num_heads, text_len, eps are defaults)"),
        Err(_) => (None, "none"),
    }
}

/// Renders the inspection as text or JSON.
pub fn inspect(path: impl AsRef<Path>, with_stats: bool, as_json: bool) -> Result<String> {
    let src = Source::open(path.as_ref())?;
    let (cfg, cfg_src) = file_config(&src);
    let mut rows = Vec::new();
    let (mut total_bytes, mut total_params) = (0usize, 0usize);
    for t in &src.tensors {
        let bytes = t.dtype.map_or(0, |d| d.size() * t.numel());
        total_bytes += bytes;
        total_params += t.numel();
        let st = if with_stats && t.dtype.is_some_and(|d| d.size() >= 2 && d != dfrt::checkpoint::DType::I64) {
            Some(stats(&src.f32(t)?))
        } else {
            None
        };
        rows.push((t, bytes, st));
    }
    let format = match src.format {
        Format::Safetensors => "safetensors",
        Format::Torch => "torch zip",
    };
    if as_json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(t, bytes, st)| {
                let mut o = json!({"name": t.name, "dtype": t.dtype_name, "shape": t.shape, "bytes": bytes});
                if let Some(s) = st {
                    o["stats"] =
                        json!({"mean": s.mean, "std": s.std, "min": s.min, "max": s.max, "nonfinite": s.nonfinite});
                }
                o
            })
            .collect();
        let others: Vec<_> = src.others.iter().map(|(n, d)| json!({"name": n, "value": d})).collect();
        let v = json!({
            "path": src.path.display().to_string(),
            "format": format,
            "config": cfg,
            "config_source": cfg_src,
            "metadata": src.metadata,
            "tensors": tensors,
            "others": others,
            "total_params": total_params,
            "total_bytes": total_bytes,
        });
        return Ok(serde_json::to_string_pretty(&v).unwrap() + "\n");
    }
    let mut o = String::new();
    writeln!(
        o,
        "{} ({format}): {} tensors, {} parameters, {} bytes",
        src.path.display(),
        src.tensors.len(),
        total_params,
        total_bytes
    )
    .unwrap();
    match &cfg {
        Some(c) => writeln!(o, "config ({cfg_src}): {}", c.to_json()).unwrap(),
        None => writeln!(o, "config: {cfg_src}").unwrap(),
    }
    for (k, v) in &src.metadata {
        if k != CONFIG_KEY {
            writeln!(o, "metadata {k}: {v}").unwrap();
        }
    }
    let w = src.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    write!(o, "{:w$}  {:5}  {:22}  {:>12}", "name", "dtype", "shape", "bytes").unwrap();
    if with_stats {
        write!(o, "  {:>11} {:>11} {:>11} {:>11}", "mean", "std", "min", "max").unwrap();
    }
    o.push('\n');
    for (t, bytes, st) in &rows {
        write!(o, "{:w$}  {:5}  {:22}  {:>12}", t.name, t.dtype_name, format!("{:?}", t.shape), bytes).unwrap();
        if let Some(s) = st {
            write!(o, "  {:>11.4e} {:>11.4e} {:>11.4e} {:>11.4e}", s.mean, s.std, s.min, s.max).unwrap();
            if s.nonfinite > 0 {
                write!(o, "  ({} non-finite)", s.nonfinite).unwrap();
            }
        }
        o.push('\n');
    }
    for (n, d) in &src.others {
        writeln!(o, "{n}: {d}").unwrap();
    }
    Ok(o)
}
