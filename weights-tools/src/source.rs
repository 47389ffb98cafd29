//! Opens a weight file of either format (safetensors, or a `torch.save` zip archive) as one flat
//! list of named tensors whose bytes stay in the mapped file until read.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dfrt::checkpoint::{DType, TensorFile};
use dfrt::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;

use crate::pickle::{unpickle_flat, Leaf};
use crate::zip;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Torch,
}

/// Where a tensor's elements are.
#[derive(Clone, Debug)]
enum Loc {
    /// A contiguous safetensors tensor.
    St,
    /// A view into a torch storage: absolute byte start of the storage, element offset and strides.
    Pt { storage_start: usize, offset: usize, stride: Vec<usize> },
}

/// One tensor of a source file. `dtype` is `None` for element types the runtime cannot use
/// (e.g. float64); `dtype_name` says which.
#[derive(Clone, Debug)]
pub struct SrcTensor {
    pub name: String,
    pub dtype: Option<DType>,
    pub dtype_name: String,
    pub shape: Vec<usize>,
    loc: Loc,
}

impl SrcTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    pub tensors: Vec<SrcTensor>,
    /// Non-tensor entries of a torch pickle (path, description), e.g. a step counter.
    pub others: Vec<(String, String)>,
    /// safetensors header metadata (empty for torch files).
    pub metadata: BTreeMap<String, String>,
    st: Option<TensorFile>,
    mmap: Option<Mmap>,
}

/// Element size and runtime dtype of a torch storage class.
fn storage_dtype(kind: &str) -> Option<(usize, Option<DType>)> {
    Some(match kind {
        "FloatStorage" => (4, Some(DType::F32)),
        "BFloat16Storage" => (2, Some(DType::BF16)),
        "HalfStorage" => (2, Some(DType::F16)),
        "LongStorage" => (8, Some(DType::I64)),
        "ByteStorage" => (1, Some(DType::U8)),
        "DoubleStorage" => (8, None),
        "IntStorage" => (4, None),
        "ShortStorage" => (2, None),
        "CharStorage" | "BoolStorage" => (1, None),
        _ => return None,
    })
}

fn dtype_name(d: DType) -> String {
    d.safetensors_name().to_string()
}

impl Source {
    /// Opens `path`, deciding the format from its first bytes (a zip archive is a torch file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Legacy torch.save files start with a pickled magic number (LONG1 0x1950a86a20f9469cfc6c).
        const LEGACY: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
        let mut head = [0u8; 14];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
            if n >= 4 && &head[..4] == b"PK\x03\x04" {
                return Self::open_torch(path);
            }
            if n == LEGACY.len() && head == LEGACY {
                return Err(Error::Checkpoint {
                    path: path.display().to_string(),
                    msg: "this is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it with a current torch".into(),
                });
            }
        }
        let st = TensorFile::open(path)?;
        let tensors = st
            .tensors
            .iter()
            .map(|(name, i)| SrcTensor {
                name: name.clone(),
                dtype: Some(i.dtype),
                dtype_name: dtype_name(i.dtype),
                shape: i.shape.clone(),
                loc: Loc::St,
            })
            .collect();
        let metadata = st.metadata.clone();
        Ok(Source {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            tensors,
            others: Vec::new(),
            metadata,
            st: Some(st),
            mmap: None,
        })
    }

    fn open_torch(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint { path: path.display().to_string(), msg };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a read-only private map; if the file changes under us we may read wrong
        // numbers, but every access is bounds-checked against the map's length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let entries = zip::entries(&mmap).map_err(&bad)?;
        let by_name: HashMap<&str, &zip::Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
        // torch names the top folder after the file (or `archive`); find it via data.pkl.
        let pkls: Vec<&zip::Entry> =
            entries.iter().filter(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1).collect();
        let pkl = match pkls.as_slice() {
            [one] => *one,
            [] => return Err(bad("zip archive without `<folder>/data.pkl`: not a torch.save checkpoint".into())),
            _ => return Err(bad("zip archive with several `*/data.pkl` entries".into())),
        };
        let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
        if let Some(bo) = by_name.get(format!("{prefix}byteorder").as_str()) {
            if &mmap[bo.start..bo.end] != b"little" {
                return Err(bad("big-endian torch checkpoints are not supported".into()));
            }
        }
        let pkl_bytes = &mmap[pkl.start..pkl.end];
        if zip::crc32(pkl_bytes) != pkl.crc32 {
            return Err(bad("data.pkl fails its CRC check: the archive is corrupt".into()));
        }
        let leaves = unpickle_flat(pkl_bytes).map_err(&bad)?;
        let mut tensors = Vec::new();
        let mut others = Vec::new();
        for (name, leaf) in leaves {
            let t = match leaf {
                Leaf::Other(desc) => {
                    others.push((name, desc));
                    continue;
                }
                Leaf::Tensor(t) => t,
            };
            let what = |m: String| bad(format!("tensor `{name}`: {m}"));
            let (es, dtype) = storage_dtype(&t.storage.kind)
                .ok_or_else(|| what(format!("unsupported storage type `{}`", t.storage.kind)))?;
            let entry = by_name
                .get(format!("{prefix}data/{}", t.storage.key).as_str())
                .ok_or_else(|| what(format!("storage `data/{}` is missing from the archive", t.storage.key)))?;
            let storage_bytes = t.storage.numel.checked_mul(es).ok_or_else(|| what("storage size overflows".into()))?;
            if entry.end - entry.start < storage_bytes {
                return Err(what(format!(
                    "storage `data/{}` has {} bytes, its {} elements need {storage_bytes}",
                    t.storage.key,
                    entry.end - entry.start,
                    t.storage.numel
                )));
            }
            // The view must stay inside its storage: offset + Σ (size-1)·stride < numel.
            let numel = t
                .shape
                .iter()
                .try_fold(1usize, |a, &s| a.checked_mul(s))
                .ok_or_else(|| what("size overflows".into()))?;
            if numel > 0 {
                let mut last = t.offset;
                for (&s, &st) in t.shape.iter().zip(&t.stride) {
                    last = (s - 1)
                        .checked_mul(st)
                        .and_then(|x| x.checked_add(last))
                        .ok_or_else(|| what("view overflows".into()))?;
                }
                if last >= t.storage.numel {
                    return Err(what(format!(
                        "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a {}-element storage",
                        t.offset, t.shape, t.stride, t.storage.numel
                    )));
                }
            }
            tensors.push(SrcTensor {
                name,
                dtype,
                dtype_name: dtype
                    .map(dtype_name)
                    .unwrap_or_else(|| t.storage.kind.trim_end_matches("Storage").to_string()),
                shape: t.shape,
                loc: Loc::Pt { storage_start: entry.start, offset: t.offset, stride: t.stride },
            });
        }
        Ok(Source {
            path: path.to_path_buf(),
            format: Format::Torch,
            tensors,
            others,
            metadata: BTreeMap::new(),
            st: None,
            mmap: Some(mmap),
        })
    }

    pub fn get(&self, name: &str) -> Option<&SrcTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's elements in row-major order, in its own dtype (views are gathered).
    pub fn raw(&self, t: &SrcTensor) -> Result<Cow<'_, [u8]>> {
        let dtype =
            t.dtype.ok_or_else(|| Error::tensor(&t.name, format!("dtype {} is not supported", t.dtype_name)))?;
        let es = dtype.size();
        match &t.loc {
            Loc::St => Ok(Cow::Borrowed(self.st.as_ref().unwrap().bytes(&t.name)?)),
            Loc::Pt { storage_start, offset, stride } => {
                let m = self.mmap.as_ref().unwrap();
                let base = &m[*storage_start..];
                let n = t.numel();
                // Row-major strides (ignoring size-1 dims) mean the view is one slice.
                let mut expect = 1usize;
                let mut contiguous = true;
                for (&s, &st) in t.shape.iter().zip(stride).rev() {
                    if s != 1 && st != expect {
                        contiguous = false;
                    }
                    expect *= s;
                }
                if contiguous {
                    return Ok(Cow::Borrowed(&base[offset * es..(offset + n) * es]));
                }
                let mut out = Vec::with_capacity(n * es);
                let mut idx = vec![0usize; t.shape.len()];
                for _ in 0..n {
                    let e = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
                    out.extend_from_slice(&base[e * es..(e + 1) * es]);
                    for d in (0..idx.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < t.shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The tensor as f32 (bf16/f16 widen exactly).
    pub fn f32(&self, t: &SrcTensor) -> Result<Vec<f32>> {
        let raw = self.raw(t)?;
        Ok(match t.dtype {
            Some(DType::F32) => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Some(DType::BF16) => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Some(DType::F16) => raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => return Err(Error::tensor(&t.name, format!("has dtype {}, expected a float type", t.dtype_name))),
        })
    }
}
