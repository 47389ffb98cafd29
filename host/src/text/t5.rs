//! The umT5 encoder (official Wan2.1 `wan/modules/t5.py` `T5Encoder`, as `umt5_xxl(encoder_only=True)`
//! builds it), written against [`Backend`] ops.
//!
//! Per block: `x += o(attn(norm1(x)))`, `x += fc2(fc1(norm2(x)) · gelu_tanh(gate(norm2(x))))`;
//! a final norm after the last block; rows at and after the prompt's length are set to
//! exactly 0. The norms are T5 RMSNorm (`x·rsqrt(mean(x²) + eps)·w`, no mean, no bias:
//! [`Backend::rms_norm`]). Attention has no 1/√d scaling and adds a per-layer relative
//! position bias (32 bidirectional buckets up to distance 128, [`rel_buckets`]), with
//! `f32::MIN` on the masked (padding) keys: [`Backend::attention_biased`]. The elementwise
//! product of the gated FFN is [`Backend::gated_residual`] onto zeros (one rounding, as
//! the official `fc1(x) * gate(x)`).
//!
//! The runtime checkpoint is a safetensors file with the official Wan names
//! (`token_embedding.weight`, `blocks.{i}.attn.q.weight`, …) and its [`T5Config`] as JSON under
//! the metadata key [`T5_CONFIG_KEY`] (`dfrt-weights convert-t5` writes it). It is mapped, not
//! read: the token embedding (1 B parameters at umT5-XXL size) stays in the mapping and only
//! a prompt's rows are read; the blocks are uploaded once ([`Residency::Resident`]) or one at
//! a time for each prompt ([`Residency::Streamed`], for a CPU with less memory than the
//! weights widened to f32).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint::{DType, TensorFile, CONFIG_KEY};
use crate::{Error, Result};

/// Metadata key of a text-encoder checkpoint's config.
pub const T5_CONFIG_KEY: &str = "dfrt.text_encoder";

/// The encoder's shape. [`T5Config::umt5_xxl`] is Wan's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab: usize,
    pub dim: usize,
    /// `heads · head_dim` (4096 in umT5-XXL).
    pub dim_attn: usize,
    pub dim_ffn: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub num_buckets: usize,
    /// Relative distances at and beyond this share the last bucket.
    pub max_distance: usize,
    pub eps: f32,
    /// Tokens per prompt after padding and truncation (Wan: 512).
    pub text_len: usize,
}

impl T5Config {
    /// umT5-XXL, encoder only: 5.7 B parameters.
    pub fn umt5_xxl() -> Self {
        T5Config {
            vocab: 256_384,
            dim: 4096,
            dim_attn: 4096,
            dim_ffn: 10240,
            num_heads: 64,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
            text_len: 512,
        }
    }
    pub fn head_dim(&self) -> usize {
        self.dim_attn / self.num_heads
    }
    /// Checks that the shape is usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("text encoder: {m}")));
        if [self.vocab, self.dim, self.dim_attn, self.dim_ffn, self.num_heads, self.num_layers, self.text_len]
            .contains(&0)
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.dim_attn.is_multiple_of(self.num_heads) {
            return bad(format!("dim_attn {} is not a multiple of {} heads", self.dim_attn, self.num_heads));
        }
        if self.num_buckets < 4 || !self.num_buckets.is_multiple_of(4) || self.max_distance <= self.num_buckets / 4 {
            return bad(format!(
                "{} buckets up to distance {} is not a bidirectional T5 bucketing",
                self.num_buckets, self.max_distance
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad(format!("eps {} must be positive", self.eps));
        }
        Ok(())
    }
    /// Parameters in all (the relative-bias tables included).
    pub fn params(&self) -> usize {
        let layer = 4 * self.dim * self.dim_attn
            + 3 * self.dim * self.dim_ffn
            + 2 * self.dim
            + self.num_buckets * self.num_heads;
        self.vocab * self.dim + self.num_layers * layer + self.dim
    }
    /// FLOPs of one forward over `l` tokens (GEMMs and attention, 2 per multiply-add).
    pub fn flops(&self, l: usize) -> f64 {
        let (l, d, a, f) = (l as f64, self.dim as f64, self.dim_attn as f64, self.dim_ffn as f64);
        self.num_layers as f64 * (2.0 * l * (4.0 * d * a + 3.0 * d * f) + 4.0 * l * l * a)
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }
    pub fn from_json(s: &str) -> Result<Self> {
        let c: T5Config = serde_json::from_str(s).map_err(|e| Error::Config(format!("text encoder config: {e}")))?;
        c.validate()?;
        Ok(c)
    }
}

/// The tensors of an encoder checkpoint: (name, shape), in the official order.
pub fn t5_tensor_names(c: &T5Config) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("token_embedding.weight".to_string(), vec![c.vocab, c.dim])];
    for i in 0..c.num_layers {
        let p = format!("blocks.{i}");
        v.push((format!("{p}.norm1.weight"), vec![c.dim]));
        for n in ["q", "k", "v"] {
            v.push((format!("{p}.attn.{n}.weight"), vec![c.dim_attn, c.dim]));
        }
        v.push((format!("{p}.attn.o.weight"), vec![c.dim, c.dim_attn]));
        v.push((format!("{p}.norm2.weight"), vec![c.dim]));
        v.push((format!("{p}.ffn.gate.0.weight"), vec![c.dim_ffn, c.dim]));
        v.push((format!("{p}.ffn.fc1.weight"), vec![c.dim_ffn, c.dim]));
        v.push((format!("{p}.ffn.fc2.weight"), vec![c.dim, c.dim_ffn]));
        v.push((format!("{p}.pos_embedding.embedding.weight"), vec![c.num_buckets, c.num_heads]));
    }
    v.push(("norm.weight".to_string(), vec![c.dim]));
    v
}

/// The relative-position bucket of key `j` for query `i` (`rel = j − i`), as the official
/// `_relative_position_bucket` (bidirectional): half the buckets per direction, `+half` for
/// a key after its query; `|rel| <` half/2 exact, beyond it logarithmic up to
/// `max_distance`, computed in f32 and truncated, capped at the last bucket.
pub fn rel_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if rel > 0 { half } else { 0 };
    let r = rel.unsigned_abs() as usize;
    let exact = half / 2;
    if r < exact {
        return base + r;
    }
    // f32 throughout, like torch: log(rel / exact) / log(max / exact) · (half − exact).
    let ratio = (r as f32 / exact as f32).ln() / ((max_distance as f64 / exact as f64).ln() as f32);
    let large = exact + (ratio * (half - exact) as f32) as usize;
    base + large.min(half - 1)
}

/// `[lq, lk]` buckets, row-major (query-major), as the golden `rel_buckets`.
pub fn rel_buckets(lq: usize, lk: usize, num_buckets: usize, max_distance: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(lq * lk);
    for i in 0..lq {
        for j in 0..lk {
            v.push(rel_bucket(j as i64 - i as i64, num_buckets, max_distance));
        }
    }
    v
}

/// One block's weights on a backend.
pub struct T5Block<T> {
    pub norm1: T,
    pub q: T,
    pub k: T,
    pub v: T,
    pub o: T,
    pub norm2: T,
    pub gate: T,
    pub fc1: T,
    pub fc2: T,
    /// `[num_buckets, heads]` on the host (the bias is built on the host per prompt).
    pub pos: Vec<f32>,
}

/// Whether the blocks live on the backend or are uploaded per prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Uploaded once at load (the GPU path; fastest for many prompts).
    Resident,
    /// Uploaded block by block for each prompt and dropped after use: the peak is one block.
    Streamed,
}

/// A loaded text encoder.
pub struct T5Encoder<B: Backend> {
    pub cfg: T5Config,
    file: TensorFile,
    blocks: Option<Vec<T5Block<B::Tensor>>>,
    norm: B::Tensor,
    buckets: Vec<usize>,
}

/// Opens a text-encoder checkpoint and reads its config; a checkpoint of another kind is an
/// error that says what it is.
pub fn open_t5(path: impl AsRef<Path>) -> Result<(TensorFile, T5Config)> {
    let path = path.as_ref();
    let bad = |m: String| Error::Checkpoint { path: path.display().to_string(), msg: m };
    let f = TensorFile::open(path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            bad("no such file; convert the umT5 weights with `dfrt-weights convert-t5 models_t5_umt5-xxl-enc-bf16.pth -o FILE`".into())
        }
        e => e,
    })?;
    let Some(json) = f.metadata.get(T5_CONFIG_KEY) else {
        let what = if f.metadata.contains_key(CONFIG_KEY) {
            "is a DiT checkpoint (it has `dfrt.config`), not a text encoder".to_string()
        } else {
            format!("has no `{T5_CONFIG_KEY}` metadata: it is not a dfrt text-encoder checkpoint")
        };
        return Err(bad(format!("{what}; convert the umT5 weights with `dfrt-weights convert-t5`")));
    };
    let cfg = T5Config::from_json(json).map_err(|e| bad(format!("bad `{T5_CONFIG_KEY}` metadata ({e})")))?;
    for (name, shape) in t5_tensor_names(&cfg) {
        let i =
            f.info(&name).map_err(|_| bad(format!("tensor `{name}` is missing (a truncated or hand-edited file?)")))?;
        if i.shape != shape {
            return Err(bad(format!("tensor `{name}` has shape {:?}, expected {shape:?} from its config", i.shape)));
        }
        if !matches!(i.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(bad(format!("tensor `{name}` has dtype {:?}, expected a float type", i.dtype)));
        }
    }
    Ok((f, cfg))
}

impl<B: Backend> T5Encoder<B> {
    /// Maps a text-encoder checkpoint and loads it onto `be` (see [`Residency`]).
    pub fn load(be: &B, path: impl AsRef<Path>, residency: Residency) -> Result<Self> {
        let (file, cfg) = open_t5(path)?;
        let norm = be.upload(&file.f32_any("norm.weight")?, &[cfg.dim]);
        let buckets = rel_buckets(cfg.text_len, cfg.text_len, cfg.num_buckets, cfg.max_distance);
        let mut enc = T5Encoder { cfg, file, blocks: None, norm, buckets };
        if residency == Residency::Resident {
            let blocks = (0..enc.cfg.num_layers).map(|i| enc.block(be, i)).collect::<Result<Vec<_>>>()?;
            enc.blocks = Some(blocks);
        }
        Ok(enc)
    }

    fn block(&self, be: &B, i: usize) -> Result<T5Block<B::Tensor>> {
        let c = &self.cfg;
        let p = format!("blocks.{i}");
        let t = |n: &str, shape: &[usize]| -> Result<B::Tensor> {
            Ok(be.upload(&self.file.f32(&format!("{p}.{n}"), shape)?, shape))
        };
        Ok(T5Block {
            norm1: t("norm1.weight", &[c.dim])?,
            q: t("attn.q.weight", &[c.dim_attn, c.dim])?,
            k: t("attn.k.weight", &[c.dim_attn, c.dim])?,
            v: t("attn.v.weight", &[c.dim_attn, c.dim])?,
            o: t("attn.o.weight", &[c.dim, c.dim_attn])?,
            norm2: t("norm2.weight", &[c.dim])?,
            gate: t("ffn.gate.0.weight", &[c.dim_ffn, c.dim])?,
            fc1: t("ffn.fc1.weight", &[c.dim_ffn, c.dim])?,
            fc2: t("ffn.fc2.weight", &[c.dim, c.dim_ffn])?,
            pos: self.file.f32(&format!("{p}.pos_embedding.embedding.weight"), &[c.num_buckets, c.num_heads])?,
        })
    }

    /// The embedding rows of `ids`, read from the mapping (widened to f32).
    fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let info = self.file.info("token_embedding.weight")?;
        let bytes = self.file.bytes("token_embedding.weight")?;
        let (d, es) = (self.cfg.dim, info.dtype.size());
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let id = id as usize;
            if id >= self.cfg.vocab {
                return Err(Error::Input(format!(
                    "token id {id} is outside the encoder's vocabulary of {}",
                    self.cfg.vocab
                )));
            }
            let row = &bytes[id * d * es..(id + 1) * d * es];
            match info.dtype {
                DType::F32 => out.extend(row.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                DType::BF16 => {
                    out.extend(row.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
                }
                _ => out.extend(row.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            }
        }
        Ok(out)
    }

    /// Encodes one tokenised prompt: `ids` and `mask` of `text_len` entries. Returns
    /// `[text_len, dim]` row-major with the rows at and after the prompt's length (the mask's
    /// sum) set to 0. `taps`, when given, receives `embed`, `hidden.{l}`, `final_norm` and
    /// `pos_bias.0` (named like the golden `p0.*` tensors).
    pub fn encode(
        &self,
        be: &B,
        ids: &[u32],
        mask: &[u8],
        mut taps: Option<&mut BTreeMap<String, Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let l = c.text_len;
        if ids.len() != l || mask.len() != l {
            return Err(Error::Input(format!(
                "{} ids and {} mask entries, expected {l} (the encoder's text_len)",
                ids.len(),
                mask.len()
            )));
        }
        let len = mask.iter().filter(|&&m| m != 0).count();
        if len == 0 {
            return Err(Error::Input("the mask has no tokens (a prompt always has at least its EOS)".into()));
        }
        let (h, d) = (c.num_heads, c.head_dim());
        let emb = self.embed(ids)?;
        let mut x = be.upload(&emb, &[l, c.dim]);
        if let Some(t) = taps.as_deref_mut() {
            t.insert("embed".into(), be.download(&x));
        }
        let zeros = be.zeros(&[l, c.dim_ffn]);
        for i in 0..c.num_layers {
            let streamed;
            let b = match &self.blocks {
                Some(bs) => &bs[i],
                None => {
                    streamed = self.block(be, i)?;
                    &streamed
                }
            };
            // The bias [heads, l, l]: the layer's table at each bucket, f32::MIN on masked keys
            // (the official masked_fill on the bias, which replaces rather than adds).
            let mut bias = vec![0f32; h * l * l];
            for hh in 0..h {
                let dst = &mut bias[hh * l * l..(hh + 1) * l * l];
                for (k, (o, &bk)) in dst.iter_mut().zip(&self.buckets).enumerate() {
                    *o = if mask[k % l] == 0 { f32::MIN } else { b.pos[bk * h + hh] };
                }
            }
            let bias_t = be.upload(&bias, &[h, l, l]);
            if i == 0 {
                if let Some(t) = taps.as_deref_mut() {
                    // The table at each bucket, before masking (the golden pos_bias.0).
                    let pb: Vec<f32> = (0..h)
                        .flat_map(|hh| self.buckets.iter().map(move |&bk| (hh, bk)))
                        .map(|(hh, bk)| b.pos[bk * h + hh])
                        .collect();
                    t.insert("pos_bias.0".into(), pb);
                }
            }
            let n1 = be.rms_norm(&x, &b.norm1, c.eps);
            let q = be.linear(&n1, &b.q, None);
            let k = be.linear(&n1, &b.k, None);
            let v = be.linear(&n1, &b.v, None);
            let a = be.attention_biased(&q, &k, &v, h, d, &bias_t);
            x = be.add(&x, &be.linear(&a, &b.o, None));
            let n2 = be.rms_norm(&x, &b.norm2, c.eps);
            let g = be.gelu_tanh(&be.linear(&n2, &b.gate, None));
            let f = be.linear(&n2, &b.fc1, None);
            let prod = be.gated_residual(&zeros, &f, &g, 1);
            x = be.add(&x, &be.linear(&prod, &b.fc2, None));
            be.status()?;
            if let Some(t) = taps.as_deref_mut() {
                t.insert(format!("hidden.{i}"), be.download(&x));
            }
        }
        let y = be.rms_norm(&x, &self.norm, c.eps);
        let mut out = be.download(&y);
        be.status()?;
        if let Some(t) = taps {
            t.insert("final_norm".into(), out.clone());
        }
        out[len * c.dim..].fill(0.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_official_formula_at_512() {
        // The official formula run in PyTorch 2.15 on 512 positions: the first rel (key after
        // query) of each forward bucket 24..=31; backward buckets are the same minus 16.
        let starts = [(8, 24), (12, 25), (16, 26), (23, 27), (32, 28), (46, 29), (64, 30), (91, 31)];
        for rel in 1..512i64 {
            let want =
                if rel < 8 { 16 + rel as usize } else { starts.iter().rev().find(|(s, _)| rel >= *s).unwrap().1 };
            assert_eq!(rel_bucket(rel, 32, 128), want, "rel {rel}");
            assert_eq!(rel_bucket(-rel, 32, 128), want - 16, "rel -{rel}");
        }
        assert_eq!(rel_bucket(0, 32, 128), 0);
    }

    #[test]
    fn umt5_xxl_has_5_7_billion_parameters() {
        let c = T5Config::umt5_xxl();
        c.validate().unwrap();
        assert_eq!(c.head_dim(), 64);
        let p = c.params() as f64 / 1e9;
        assert!((5.6..5.8).contains(&p), "{p} B");
    }
}
