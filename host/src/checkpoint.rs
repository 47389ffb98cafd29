//! The runtime checkpoint: a safetensors file whose tensors carry the official native Wan
//! names (`blocks.0.self_attn.q.weight`, ...), whose header metadata holds the
//! [`ModelConfig`] as JSON, and whose tensor data starts on 256-byte boundaries so that a
//! device upload can use the mapped bytes directly.
//!
//! safetensors forbids holes in the data buffer, so alignment is kept with zero-filled `U8`
//! padding tensors named `__pad.N`; readers skip them.
//!
//! Write a checkpoint with [`write_checkpoint`], read it with [`TensorFile`]:
//!
//! ```
//! use dfrt::checkpoint::{write_checkpoint, DType, OutTensor, TensorFile, ALIGN};
//! use dfrt::ModelConfig;
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-ckpt-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("two.safetensors");
//!
//! let cfg = ModelConfig::preset("tiny")?;
//! let w: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * 0.375).collect();
//! write_checkpoint(&path, &cfg, &[
//!     OutTensor::f32("head.head.bias", vec![2, 3], &w),
//!     OutTensor::bf16("head.modulation", vec![6], &w),
//!     OutTensor::i64("steps", vec![2], &[7, -1]),
//! ])?;
//!
//! let f = TensorFile::open(&path)?;
//! assert_eq!(f.config()?, cfg);
//! // Every tensor starts on a 256-byte boundary; padding tensors are not listed.
//! assert!(f.tensors.values().all(|t| t.start % ALIGN == 0));
//! assert_eq!(f.tensors.len(), 3);
//! // f32 reads back exactly, and bf16 is widened to f32 (these values are exact in bf16).
//! assert_eq!(f.f32("head.head.bias", &[2, 3])?, w);
//! assert_eq!(f.info("head.modulation")?.dtype, DType::BF16);
//! assert_eq!(f.f32_any("head.modulation")?, w);
//! assert_eq!(f.i64_any("steps")?, vec![7, -1]);
//! // A wrong shape or a missing name is an error that names the tensor.
//! assert!(f.f32("head.head.bias", &[3, 2]).unwrap_err().to_string().contains("head.head.bias"));
//! assert!(f.f32_any("nope").is_err());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::{Error, ModelConfig, Result};

/// Metadata key holding the model config JSON.
pub const CONFIG_KEY: &str = "dfrt.config";
/// Metadata key holding the format version.
pub const FORMAT_KEY: &str = "dfrt.format";
/// The format version written under [`FORMAT_KEY`].
pub const FORMAT_VERSION: &str = "1";
/// Alignment of every tensor's data, in bytes, from the start of the file.
pub const ALIGN: usize = 256;
const PAD_PREFIX: &str = "__pad.";

/// Element types the runtime reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// IEEE f32.
    F32,
    /// bfloat16: weights and activations of the bf16 runtime.
    BF16,
    /// IEEE f16 (read, widened to f32).
    F16,
    /// Bytes (the alignment padding).
    U8,
    /// i64 (index tensors, e.g. sampled rows).
    I64,
    /// f64 (read only: golden records such as TeaCache's accumulator).
    F64,
    /// bool, one byte per element (read only: golden decision records).
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
            DType::I64 | DType::F64 => 8,
            DType::Bool => 1,
        }
    }
    /// The dtype's name in a safetensors header (`F32`, `BF16`, ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::U8 => "U8",
            DType::I64 => "I64",
            DType::F64 => "F64",
            DType::Bool => "BOOL",
        }
    }
    fn from_st(d: safetensors::Dtype) -> Option<Self> {
        Some(match d {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::U8 => DType::U8,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::BOOL => DType::Bool,
            _ => return None,
        })
    }
}

/// One tensor's place in a mapped file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A memory-mapped safetensors file, validated on open.
pub struct TensorFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Maps and validates a safetensors file. Truncation, a bad header or an unsupported
    /// dtype is an error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; a file changed under us
        // while mapped can only change the numbers we read, not memory safety of the Vec
        // copies we make from it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Checkpoint { path: path.display().to_string(), msg };
        if mmap.len() < 8 {
            return Err(bad(format!("file is {} bytes, too short for a safetensors header", mmap.len())));
        }
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
            .map_err(|e| bad(format!("not a valid safetensors file ({e:?})")))?;
        let data_start = 8 + n;
        let mut tensors = BTreeMap::new();
        for (name, info) in meta.tensors() {
            if name.starts_with(PAD_PREFIX) {
                continue;
            }
            let dtype = DType::from_st(info.dtype)
                .ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {:?}", info.dtype)))?;
            tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(TensorFile { path: path.to_path_buf(), mmap, tensors, metadata })
    }

    /// Dtype, shape and byte range of a tensor; an error if there is none of that name.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::tensor(name, format!("missing from {}", self.path.display())))
    }

    /// The raw little-endian bytes of a tensor, straight from the mapping.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.info(name)?;
        Ok(&self.mmap[i.start..i.end])
    }

    /// Reads a float tensor as f32 (bf16/f16 are widened exactly) and checks its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let i = self.info(name)?;
        if i.shape != shape {
            return Err(Error::tensor(name, format!("has shape {:?}, expected {:?}", i.shape, shape)));
        }
        self.f32_any(name)
    }

    /// Reads a float tensor as f32 with whatever shape it has.
    pub fn f32_any(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.info(name)?;
        let b = &self.mmap[i.start..i.end];
        let v = match i.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            d => return Err(Error::tensor(name, format!("has dtype {d:?}, expected a float type"))),
        };
        Ok(v)
    }

    /// Reads an integer tensor (I64) as i64.
    pub fn i64_any(&self, name: &str) -> Result<Vec<i64>> {
        let i = self.info(name)?;
        if i.dtype != DType::I64 {
            return Err(Error::tensor(name, format!("has dtype {:?}, expected I64", i.dtype)));
        }
        let b = &self.mmap[i.start..i.end];
        Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
    }

    /// Reads an F64 tensor (golden outputs hold some, e.g. TeaCache's accumulator).
    pub fn f64_any(&self, name: &str) -> Result<Vec<f64>> {
        let i = self.info(name)?;
        if i.dtype != DType::F64 {
            return Err(Error::tensor(name, format!("has dtype {:?}, expected F64", i.dtype)));
        }
        Ok(self.mmap[i.start..i.end].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
    }

    /// Reads a BOOL tensor (one byte per element).
    pub fn bool_any(&self, name: &str) -> Result<Vec<bool>> {
        let i = self.info(name)?;
        if i.dtype != DType::Bool {
            return Err(Error::tensor(name, format!("has dtype {:?}, expected BOOL", i.dtype)));
        }
        Ok(self.mmap[i.start..i.end].iter().map(|&b| b != 0).collect())
    }

    /// The model config stored in the header metadata of a runtime checkpoint.
    pub fn config(&self) -> Result<ModelConfig> {
        let s = self.metadata.get(CONFIG_KEY).ok_or_else(|| Error::Checkpoint {
            path: self.path.display().to_string(),
            msg: format!(
                "no `{CONFIG_KEY}` metadata: this is not a dfrt runtime checkpoint (convert it with `dfrt-weights convert`)"
            ),
        })?;
        ModelConfig::from_json(s)
    }
}

/// A tensor to be written.
pub struct OutTensor {
    /// Tensor name.
    pub name: String,
    /// Element type of `data`.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl OutTensor {
    /// An F32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        OutTensor { name: name.into(), dtype: DType::F32, shape, data: bytemuck::cast_slice(v).to_vec() }
    }
    /// A BF16 tensor: each value rounded to nearest even.
    pub fn bf16(name: impl Into<String>, shape: Vec<usize>, v: &[f32]) -> Self {
        let data = v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect();
        OutTensor { name: name.into(), dtype: DType::BF16, shape, data }
    }
    /// An I64 tensor.
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, v: &[i64]) -> Self {
        OutTensor { name: name.into(), dtype: DType::I64, shape, data: bytemuck::cast_slice(v).to_vec() }
    }
}

/// Writes a safetensors file with every tensor's data aligned to [`ALIGN`] bytes from the
/// start of the file. Tensors are written in the given order.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n * t.dtype.size() != t.data.len() {
            return Err(Error::tensor(
                &t.name,
                format!("{} bytes for shape {:?} {:?}", t.data.len(), t.shape, t.dtype),
            ));
        }
    }
    // The header length depends on the padding entries, and the padding depends on the
    // header length: iterate until the layout is stable (two passes in practice).
    let mut header_len_guess = 0usize;
    loop {
        let data_start = (8 + header_len_guess).next_multiple_of(ALIGN);
        let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
        let mut off = 0usize;
        let mut pads = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let aligned = (data_start + off).next_multiple_of(ALIGN) - data_start;
            if aligned > off {
                let name = format!("{PAD_PREFIX}{i}");
                entries.push((
                    name,
                    serde_json::json!({"dtype": "U8", "shape": [aligned - off], "data_offsets": [off, aligned]}),
                ));
                pads.push(aligned - off);
                off = aligned;
            } else {
                pads.push(0);
            }
            let end = off + t.data.len();
            entries.push((
                t.name.clone(),
                serde_json::json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [off, end]}),
            ));
            off = end;
        }
        let mut map = serde_json::Map::new();
        let mut meta = metadata.clone();
        meta.entry(FORMAT_KEY.into()).or_insert_with(|| FORMAT_VERSION.into());
        map.insert("__metadata__".into(), serde_json::to_value(&meta).unwrap());
        for (k, v) in entries {
            map.insert(k, v);
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap();
        if header.len() > header_len_guess {
            header_len_guess = header.len();
            continue;
        }
        // Pad the header with spaces (allowed by the format) so data starts aligned.
        header.resize(data_start - 8, b' ');
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(f);
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (t, pad) in tensors.iter().zip(pads) {
            w.write_all(&vec![0u8; pad]).map_err(io)?;
            w.write_all(&t.data).map_err(io)?;
        }
        w.flush().map_err(io)?;
        return Ok(());
    }
}

/// Writes a runtime checkpoint: tensors plus the config in the metadata (key
/// [`CONFIG_KEY`]). The config is validated; the tensors are written as given (use
/// [`crate::names::expected_tensors`] for the set a model needs). See the [module
/// example](self).
pub fn write_checkpoint(path: impl AsRef<Path>, config: &ModelConfig, tensors: &[OutTensor]) -> Result<()> {
    config.validate()?;
    let mut meta = BTreeMap::new();
    meta.insert(CONFIG_KEY.to_string(), config.to_json());
    write_safetensors(path, tensors, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_roundtrip() {
        let dir = std::env::temp_dir().join(format!("dfrt-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.safetensors");
        let cfg = ModelConfig::preset("tiny").unwrap();
        let a: Vec<f32> = (0..7).map(|i| i as f32 * 0.5 - 1.0).collect();
        let b: Vec<f32> = (0..33).map(|i| (i as f32).sin()).collect();
        write_checkpoint(&p, &cfg, &[OutTensor::f32("a", vec![7], &a), OutTensor::bf16("b", vec![3, 11], &b)]).unwrap();
        let f = TensorFile::open(&p).unwrap();
        assert_eq!(f.config().unwrap(), cfg);
        assert_eq!(f.f32("a", &[7]).unwrap(), a);
        let bb = f.f32("b", &[3, 11]).unwrap();
        for (x, y) in b.iter().zip(&bb) {
            assert!((x - y).abs() <= x.abs() / 128.0, "{x} vs {y}");
        }
        for t in f.tensors.values() {
            assert_eq!(t.start % ALIGN, 0);
        }
        assert_eq!(f.tensors.len(), 2, "padding tensors are hidden");
        // The reference library accepts the file as is.
        let raw = std::fs::read(&p).unwrap();
        safetensors::SafeTensors::deserialize(&raw).unwrap();
        assert!(f.f32("a", &[8]).unwrap_err().to_string().contains("expected [8]"));
        assert!(f.f32("zz", &[1]).unwrap_err().to_string().contains("missing"));
        // Truncation is a readable error.
        std::fs::write(dir.join("t.safetensors"), &raw[..raw.len() / 2]).unwrap();
        let e = TensorFile::open(dir.join("t.safetensors")).err().unwrap().to_string();
        assert!(e.contains("not a valid safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
