//! Streams a runtime checkpoint to disk one tensor at a time, with the same layout as
//! `dfrt::checkpoint::write_safetensors` (every tensor's data 256-byte aligned from the start
//! of the file, `__pad.N` U8 tensors filling the gaps), so a 1.3B model never has to be held
//! in memory twice. The file is written under a temporary name and renamed when complete, so
//! an interrupted run leaves no half-written checkpoint behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dfrt::checkpoint::{DType, ALIGN, CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION};
use dfrt::{Error, ModelConfig, Result};

/// What will be written for one tensor.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Spec {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Builds the header (already padded so data starts aligned) and the padding before each tensor.
fn layout(specs: &[Spec], metadata: &BTreeMap<String, String>) -> (Vec<u8>, Vec<usize>) {
    // The header's length depends on the padding entries and vice versa: iterate to a fixpoint.
    let mut guess = 0usize;
    loop {
        let data_start = (8 + guess).next_multiple_of(ALIGN);
        let mut map = serde_json::Map::new();
        let mut meta = metadata.clone();
        meta.entry(FORMAT_KEY.into()).or_insert_with(|| FORMAT_VERSION.into());
        map.insert("__metadata__".into(), serde_json::to_value(&meta).unwrap());
        let mut pads = Vec::with_capacity(specs.len());
        let mut off = 0usize;
        for (i, s) in specs.iter().enumerate() {
            let aligned = (data_start + off).next_multiple_of(ALIGN) - data_start;
            pads.push(aligned - off);
            if aligned > off {
                map.insert(
                    format!("__pad.{i}"),
                    serde_json::json!({"dtype": "U8", "shape": [aligned - off], "data_offsets": [off, aligned]}),
                );
                off = aligned;
            }
            let end = off + s.bytes();
            map.insert(
                s.name.clone(),
                serde_json::json!({"dtype": s.dtype.safetensors_name(), "shape": s.shape, "data_offsets": [off, end]}),
            );
            off = end;
        }
        let mut header = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap();
        if header.len() > guess {
            guess = header.len();
            continue;
        }
        header.resize(data_start - 8, b' ');
        return (header, pads);
    }
}

/// Counts what a filler writes, so a wrong byte count is caught before the file is renamed.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: usize,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `specs` in order; `fill(i, spec, w)` must write exactly `spec.bytes()` bytes.
pub fn write_streaming(
    path: impl AsRef<Path>,
    specs: &[Spec],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &Spec, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names = std::collections::HashSet::new();
    for s in specs {
        if !names.insert(s.name.as_str()) || s.name.starts_with("__pad.") || s.name == "__metadata__" {
            return Err(Error::tensor(&s.name, "duplicate or reserved tensor name"));
        }
    }
    let (header, pads) = layout(specs, metadata);
    let tmp = path.with_file_name(format!(
        ".{}.partial",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let io = |e| Error::io(path, e);
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (i, (s, pad)) in specs.iter().zip(pads).enumerate() {
            w.write_all(&vec![0u8; pad]).map_err(io)?;
            let mut c = Counting { inner: &mut w, n: 0 };
            fill(i, s, &mut c)?;
            if c.n != s.bytes() {
                return Err(Error::tensor(&s.name, format!("wrote {} bytes, expected {}", c.n, s.bytes())));
            }
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(io),
        Err(e) => {
            std::fs::remove_file(&tmp).ok();
            Err(e)
        }
    }
}

/// Writes a runtime checkpoint (config in the metadata) by streaming.
pub fn write_checkpoint_streaming(
    path: impl AsRef<Path>,
    config: &ModelConfig,
    specs: &[Spec],
    fill: impl FnMut(usize, &Spec, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    config.validate()?;
    let mut meta = BTreeMap::new();
    meta.insert(CONFIG_KEY.to_string(), config.to_json());
    write_streaming(path, specs, &meta, fill)
}

/// Encodes f32 values as little-endian bytes of `dtype` (bf16/f16 round to nearest even).
pub fn encode(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::BF16 => values.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        d => return Err(Error::Config(format!("cannot write float values as {d:?}"))),
    })
}
