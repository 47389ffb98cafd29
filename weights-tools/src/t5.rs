//! Conversion of umT5 encoder weights to the runtime text-encoder checkpoint
//! (`dfrt::text::t5`): Wan's `models_t5_umt5-xxl-enc-bf16.pth` (official names) or a Hugging
//! Face `UMT5EncoderModel` / `T5EncoderModel` safetensors (`encoder.block.{i}.layer.0.SelfAttention.q.weight`, …).
//! The config comes from the shapes (the heads from the relative-bias tables); `text_len`,
//! the bucket distance and eps are Wan's unless given.

use std::collections::BTreeMap;
use std::path::Path;

use dfrt::checkpoint::DType;
use dfrt::text::t5::{t5_tensor_names, T5Config, T5_CONFIG_KEY};
use dfrt::{Error, Result};

use crate::source::Source;
use crate::writer::{encode, write_streaming, Spec};

/// Options of [`convert_t5`].
#[derive(Clone, Debug, Default)]
pub struct T5Options {
    /// Tokens per prompt (default 512, Wan's).
    pub text_len: Option<usize>,
    /// Output dtype (default: the source's if uniformly f32 or bf16, else f32).
    pub dtype: Option<DType>,
}

/// What [`convert_t5`] wrote.
#[derive(Clone, Debug)]
pub struct T5Report {
    pub config: T5Config,
    pub dtype: DType,
    /// Whether the source had Hugging Face names.
    pub from_hf: bool,
    pub tensors: usize,
    pub bytes: usize,
    /// Source tensors not written (tied copies, decoder parts), with the reason.
    pub dropped: Vec<(String, String)>,
}

/// The official Wan name of a Hugging Face UMT5/T5 encoder key; `None` if it is not one.
pub fn hf_to_wan(k: &str) -> Option<String> {
    match k {
        "shared.weight" | "encoder.embed_tokens.weight" => return Some("token_embedding.weight".into()),
        "encoder.final_layer_norm.weight" => return Some("norm.weight".into()),
        _ => {}
    }
    let rest = k.strip_prefix("encoder.block.")?;
    let (i, tail) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let t = match tail {
        "layer.0.layer_norm.weight" => "norm1.weight".to_string(),
        "layer.0.SelfAttention.relative_attention_bias.weight" => "pos_embedding.embedding.weight".to_string(),
        "layer.1.layer_norm.weight" => "norm2.weight".to_string(),
        // T5DenseGatedActDense: act(wi_0(x)) · wi_1(x), then wo.
        "layer.1.DenseReluDense.wi_0.weight" => "ffn.gate.0.weight".to_string(),
        "layer.1.DenseReluDense.wi_1.weight" => "ffn.fc1.weight".to_string(),
        "layer.1.DenseReluDense.wo.weight" => "ffn.fc2.weight".to_string(),
        _ => {
            let n = tail.strip_prefix("layer.0.SelfAttention.")?.strip_suffix(".weight")?;
            if !matches!(n, "q" | "k" | "v" | "o") {
                return None;
            }
            format!("attn.{n}.weight")
        }
    };
    Some(format!("blocks.{i}.{t}"))
}

fn wrong_kind(src: &Source) -> Option<String> {
    let has = |n: &str| src.tensors.iter().any(|t| t.name.ends_with(n));
    if has("patch_embedding.weight") || has("self_attn.q.weight") || has("attn1.to_q.weight") {
        return Some(
            "is a Wan DiT checkpoint, not the umT5 text encoder; convert it with `dfrt-weights convert`".into(),
        );
    }
    if has("decoder.conv1.weight") || has("encoder.conv1.weight") {
        return Some("looks like a VAE checkpoint, not the umT5 text encoder".into());
    }
    None
}

/// Converts one umT5 encoder file to a runtime text-encoder checkpoint.
pub fn convert_t5(input: impl AsRef<Path>, output: impl AsRef<Path>, opts: &T5Options) -> Result<T5Report> {
    let input = input.as_ref();
    let src = Source::open(input)?;
    let bad = |m: String| Error::Checkpoint { path: input.display().to_string(), msg: m };
    if let Some(m) = wrong_kind(&src) {
        return Err(bad(m));
    }
    // Map every source tensor to its Wan name; the first of tied copies wins.
    let mut map: BTreeMap<String, usize> = BTreeMap::new();
    let mut dropped = Vec::new();
    let mut from_hf = false;
    for (i, t) in src.tensors.iter().enumerate() {
        let name = if let Some(n) = hf_to_wan(&t.name) {
            from_hf = true;
            n
        } else {
            t.name.clone()
        };
        if map.contains_key(&name) {
            dropped.push((t.name.clone(), format!("a second copy of `{name}` (tied weights)")));
            continue;
        }
        map.insert(name, i);
    }
    let shape = |n: &str| -> Result<&[usize]> {
        let i = map.get(n).ok_or_else(|| bad(format!("no `{n}`: not a umT5 encoder checkpoint (expected Wan's models_t5_umt5-xxl-enc-bf16.pth names or Hugging Face UMT5EncoderModel names)")))?;
        Ok(&src.tensors[*i].shape)
    };
    let emb = shape("token_embedding.weight")?.to_vec();
    let q = shape("blocks.0.attn.q.weight")?.to_vec();
    let fc1 = shape("blocks.0.ffn.fc1.weight")?.to_vec();
    let pos = shape("blocks.0.pos_embedding.embedding.weight")?.to_vec();
    if [&emb, &q, &fc1, &pos].iter().any(|s| s.len() != 2) {
        return Err(bad(format!(
            "embedding {emb:?}, q {q:?}, fc1 {fc1:?} and bias table {pos:?} are not all matrices"
        )));
    }
    let layers = (0..).take_while(|i| map.contains_key(&format!("blocks.{i}.attn.q.weight"))).count();
    let cfg = T5Config {
        vocab: emb[0],
        dim: emb[1],
        dim_attn: q[0],
        dim_ffn: fc1[0],
        num_heads: pos[1],
        num_layers: layers,
        num_buckets: pos[0],
        max_distance: 128,
        eps: 1e-6,
        text_len: opts.text_len.unwrap_or(512),
    };
    cfg.validate().map_err(|e| bad(format!("the shapes give an unusable config: {e}")))?;
    let want = t5_tensor_names(&cfg);
    for (n, s) in &want {
        let got = shape(n)?;
        if got != s.as_slice() {
            return Err(bad(format!("tensor `{n}` has shape {got:?}, expected {s:?} (config {cfg:?})")));
        }
    }
    for (n, &i) in &map {
        if !want.iter().any(|(w, _)| w == n) {
            dropped.push((src.tensors[i].name.clone(), "not part of the encoder".into()));
        }
    }
    let dtypes: Vec<Option<DType>> = want.iter().map(|(n, _)| src.tensors[map[n]].dtype).collect();
    let dtype =
        opts.dtype.unwrap_or(if dtypes.iter().all(|d| *d == Some(DType::BF16)) { DType::BF16 } else { DType::F32 });
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(Error::Config(format!("text encoder dtype {dtype:?}: f32 or bf16")));
    }
    let specs: Vec<Spec> = want.iter().map(|(n, s)| Spec { name: n.clone(), dtype, shape: s.clone() }).collect();
    let mut meta = BTreeMap::new();
    meta.insert(T5_CONFIG_KEY.to_string(), cfg.to_json());
    meta.insert("dfrt.source".to_string(), input.display().to_string());
    write_streaming(output, &specs, &meta, |_, s, w| {
        let t = &src.tensors[map[&s.name]];
        let bytes = if t.dtype == Some(dtype) { src.raw(t)?.into_owned() } else { encode(&src.f32(t)?, dtype)? };
        w.write_all(&bytes).map_err(|e| Error::io("<output>", e))
    })?;
    Ok(T5Report {
        bytes: specs.iter().map(Spec::bytes).sum(),
        tensors: specs.len(),
        config: cfg,
        dtype,
        from_hf,
        dropped,
    })
}
