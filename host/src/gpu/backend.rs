//! [`GpuBackend`]: the DiT's ops on a [`Device`], every op a kernel launch or a GEMM.
//!
//! Tensors are device buffers with a shape, in the backend's storage precision (f32, or bf16
//! bits). They come from a sub-allocator ([`super::heap::Heap`]) over device regions: the memory
//! plan reserves one region up front ([`GpuBackend::reserve`]), so after warm-up the chunk loop
//! makes no device allocation; a dropped tensor returns its block at once.
//!
//! Errors: the [`Backend`] ops return tensors, not `Result`s (the model is written once for
//! every backend). A failing op therefore records the first error and returns an unbacked
//! tensor; every later op is skipped, and [`Backend::status`] reports the error. The pipeline
//! checks it after every forward, like CUDA's sticky errors at a synchronisation point. There
//! is no host fallback: an op without a kernel is an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfrt_kernels::attention::{AttnBf16D128, AttnBf16D128W8, AttnBf16D64, AttnF32, AttnParams, KvSeg};
use dfrt_kernels::calib::{CalibMassParams, CalibMeanParams};
use dfrt_kernels::elem::Bf16;
use dfrt_kernels::elementwise::{
    AddParams, GatedResidualParams, GeluParams, ModulationParams, SiluParams, SinusoidParams,
};
use dfrt_kernels::layout::{
    CopyRowsParams, HeadCopyJob, HeadCopyShape, KvWriteParams, PatchifyParams, UnpatchifyParams,
};
use dfrt_kernels::norm::{LayerNormModParams, LayerNormParams, RmsNormParams};
use dfrt_kernels::rope::{QkNormRopeParams, RopeParams};
use dfrt_kernels::{Entry, Launch};
use half::bf16;

use super::heap::{round_up, Heap};
use super::{DevPtr, Device, Gemm};
use crate::backend::{Backend, Precision, Seg};
use crate::{Error, Result};

/// The device and the allocator state every tensor keeps alive.
struct Shared<D: Device> {
    dev: D,
    heap: Mutex<Heap>,
}

impl<D: Device> Drop for Shared<D> {
    fn drop(&mut self) {
        let regions: Vec<u64> = self.heap.lock().unwrap().regions().collect();
        for r in regions {
            let _ = self.dev.free(r);
        }
    }
}

/// A block of the heap; returned when the last tensor viewing it drops.
struct Block<D: Device> {
    ptr: DevPtr,
    sh: Arc<Shared<D>>,
}

impl<D: Device> Drop for Block<D> {
    fn drop(&mut self) {
        self.sh.heap.lock().unwrap().release(self.ptr);
    }
}

/// A device tensor: a (view of a) heap block, its shape, its storage precision.
pub struct GpuTensor<D: Device> {
    block: Option<Arc<Block<D>>>,
    ptr: DevPtr,
    shape: Vec<usize>,
    precision: Precision,
}

impl<D: Device> GpuTensor<D> {
    /// Device address of element 0 (0 for the unbacked tensor an errored op returns).
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.precision.size()
    }
    fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }
    /// Address of element `i`.
    fn at(&self, i: usize) -> DevPtr {
        self.ptr + (i * self.precision.size()) as u64
    }
    fn unbacked(shape: &[usize], precision: Precision) -> Self {
        GpuTensor { block: None, ptr: 0, shape: shape.to_vec(), precision }
    }
}

/// Rows of the RoPE table built at first use (grows by doubling if a video gets longer).
const ROPE_ROWS: usize = 1024;

/// The GPU backend over device `D`.
pub struct GpuBackend<D: Device> {
    sh: Arc<Shared<D>>,
    precision: Precision,
    /// First error of any op (sticky; see the module doc).
    error: Mutex<Option<String>>,
    /// RoPE cos/sin tables (f32) by head dim.
    rope: Mutex<HashMap<usize, (usize, GpuTensor<D>)>>,
    /// Sinusoid frequencies (f64) by dim.
    freqs: Mutex<HashMap<usize, GpuTensor<D>>>,
    /// The attention segment table buffer (seg_start then KvSeg entries), reused every call.
    seg_table: Mutex<Option<GpuTensor<D>>>,
    /// Head index lists of the cache groups (u32, device memory), uploaded once per list.
    head_lists: Mutex<HashMap<Vec<u32>, GpuTensor<D>>>,
    /// Heap ranges each live graph holds (given back when it is dropped).
    graph_mem: Mutex<HashMap<usize, Vec<(u64, usize)>>>,
    /// Graph replays, for reports and tests.
    graph_runs: std::sync::atomic::AtomicU64,
    /// Whether a memory plan's arena is reserved: graphs need one, since a capture cannot
    /// allocate device memory.
    reserved: std::sync::atomic::AtomicBool,
    /// bf16: the FFN's GELU in the GEMM epilogue ([`GpuBackend::set_fused_gelu`]).
    fused_gelu: std::sync::atomic::AtomicBool,
    /// Query rows per block of the bf16 d128 attention ([`GpuBackend::set_attn_rows`]).
    attn_rows: std::sync::atomic::AtomicU32,
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Device(format!("{what} = {v} does not fit a kernel's u32 size")))
}

impl<D: Device> GpuBackend<D> {
    pub fn new(dev: D, precision: Precision) -> Self {
        GpuBackend {
            sh: Arc::new(Shared { dev, heap: Mutex::new(Heap::default()) }),
            precision,
            error: Mutex::new(None),
            rope: Mutex::new(HashMap::new()),
            freqs: Mutex::new(HashMap::new()),
            seg_table: Mutex::new(None),
            head_lists: Mutex::new(HashMap::new()),
            graph_mem: Mutex::new(HashMap::new()),
            graph_runs: std::sync::atomic::AtomicU64::new(0),
            reserved: std::sync::atomic::AtomicBool::new(false),
            fused_gelu: std::sync::atomic::AtomicBool::new(true),
            attn_rows: std::sync::atomic::AtomicU32::new(64),
        }
    }

    pub fn device(&self) -> &D {
        &self.sh.dev
    }

    /// Reserves one device region of `bytes` for the heap (the memory plan's arena).
    pub fn reserve(&self, bytes: usize) -> Result<()> {
        let bytes = round_up(bytes);
        let p = self.sh.dev.alloc(bytes)?;
        self.sh.heap.lock().unwrap().add_region(p, bytes);
        self.reserved.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// In bf16, whether [`Backend::linear_gelu`] (the FFN's first layer) runs the GELU in the
    /// GEMM's epilogue (the default: one rounding to bf16 instead of two and no separate GELU
    /// pass over the `[tokens, ffn_dim]` activation) or as the official code's two ops, which
    /// matches the CPU reference's bf16 rounding points exactly.
    pub fn set_fused_gelu(&self, on: bool) {
        self.fused_gelu.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Which bf16 head-dim-128 attention kernel runs: 64 query rows per block (version 1,
    /// `attn_bf16_d128`, 4 warps; the default) or 128 (version 2, `attn_bf16_d128_w8`, 8
    /// warps). Same results bit for bit; the kernel bench times both. Other values are an error.
    pub fn set_attn_rows(&self, rows: u32) -> Result<()> {
        if rows != 64 && rows != 128 {
            return Err(Error::Input(format!("attention block rows {rows}: 64 or 128")));
        }
        self.attn_rows.store(rows, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Device allocations so far.
    pub fn allocations(&self) -> u64 {
        self.sh.dev.allocations()
    }

    /// (live, peak, capacity) bytes of the heap.
    pub fn heap_stats(&self) -> (usize, usize, usize) {
        let h = self.sh.heap.lock().unwrap();
        (h.live_bytes(), h.peak_bytes(), h.capacity())
    }

    /// Records the device work `f` queues into a graph (a CUDA graph on [`super::CudaDevice`],
    /// a recorded op list on [`super::SimDevice`]) instead of running it, and returns what `f`
    /// returned with the graph's id. Run it with [`GpuBackend::replay`].
    ///
    /// Inside `f` nothing may download or synchronise (a forward without taps or a calibrating
    /// hook qualifies), and every allocation must come from the memory plan's arena. Memory
    /// `f` used and freed stays allocated for good, because the graph writes it at every replay
    /// (within the capture it is reused as usual: the graph replays the same order). The
    /// tensors `f` returns hold the graph's outputs after each replay; inputs the graph reads
    /// (weights, cache, the chunk) must stay alive, and new values can be copied into them
    /// between replays.
    ///
    /// The memory stays taken until [`GpuBackend::drop_graph`].
    pub fn capture<T>(&self, f: impl FnOnce(&Self) -> T) -> Result<(T, usize)> {
        self.status()?;
        self.sh.dev.begin_capture()?;
        self.sh.heap.lock().unwrap().begin_capture();
        let out = f(self);
        let held = self.sh.heap.lock().unwrap().end_capture();
        match self.sh.dev.end_capture() {
            Ok(id) => {
                self.graph_mem.lock().unwrap().insert(id, held);
                if let Err(e) = self.status() {
                    let _ = self.drop_graph(id);
                    return Err(e);
                }
                Ok((out, id))
            }
            Err(e) => {
                self.sh.heap.lock().unwrap().release_held(&held);
                Err(e)
            }
        }
    }

    /// Runs a captured graph.
    pub fn replay(&self, graph: usize) -> Result<()> {
        self.status()?;
        self.graph_runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sh.dev.replay(graph)
    }

    /// Destroys a captured graph and gives the memory it held back to the heap.
    pub fn drop_graph(&self, graph: usize) -> Result<()> {
        self.sh.dev.drop_graph(graph)?;
        if let Some(held) = self.graph_mem.lock().unwrap().remove(&graph) {
            self.sh.heap.lock().unwrap().release_held(&held);
        }
        Ok(())
    }

    /// Graph replays so far.
    pub fn graph_replays(&self) -> u64 {
        self.graph_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a new peak measurement.
    pub fn reset_peak(&self) {
        self.sh.heap.lock().unwrap().reset_peak();
    }

    fn alloc(&self, shape: &[usize], precision: Precision) -> Result<GpuTensor<D>> {
        let bytes = shape.iter().product::<usize>() * precision.size();
        let mut heap = self.sh.heap.lock().unwrap();
        let ptr = match heap.alloc(bytes) {
            Some(p) => p,
            None => {
                // Nothing fits: a new region from the device (counted). The memory plan's
                // reservation makes this happen only before the chunk loop.
                let size = round_up(bytes);
                if heap.capturing() {
                    return Err(Error::Device(format!(
                        "{}: the memory plan's arena has no {bytes} bytes left during a graph capture (a device allocation cannot be recorded); rerun with graphs off (--graphs off)",
                        self.sh.dev.name()
                    )));
                }
                let base = self.sh.dev.alloc(size)?;
                heap.add_region(base, size);
                heap.alloc(bytes).expect("a fresh region fits its block")
            }
        };
        drop(heap);
        Ok(GpuTensor {
            block: Some(Arc::new(Block { ptr, sh: self.sh.clone() })),
            ptr,
            shape: shape.to_vec(),
            precision,
        })
    }

    fn new_tensor(&self, shape: &[usize]) -> Result<GpuTensor<D>> {
        self.alloc(shape, self.precision)
    }

    /// A view of `t`'s elements `[offset, offset + numel(shape))`.
    fn view(&self, t: &GpuTensor<D>, offset: usize, shape: &[usize]) -> GpuTensor<D> {
        GpuTensor { block: t.block.clone(), ptr: t.at(offset), shape: shape.to_vec(), precision: t.precision }
    }

    /// Runs an op: skipped once an error is recorded; a new error is recorded and an unbacked
    /// tensor of `shape` returned in place of the result.
    fn guard(&self, shape: &[usize], op: impl FnOnce() -> Result<GpuTensor<D>>) -> GpuTensor<D> {
        if self.error.lock().unwrap().is_some() {
            return GpuTensor::unbacked(shape, self.precision);
        }
        match op() {
            Ok(t) => t,
            Err(e) => {
                self.fail(e);
                GpuTensor::unbacked(shape, self.precision)
            }
        }
    }

    fn fail(&self, e: Error) {
        let mut err = self.error.lock().unwrap();
        if err.is_none() {
            *err = Some(e.to_string());
        }
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    /// `linear`, with the GELU in the epilogue when `gelu`: `x [.., k] · wᵀ (+ b)`.
    fn gemm_op(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, b: Option<&GpuTensor<D>>, gelu: bool) -> GpuTensor<D> {
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = w.shape[0];
        self.guard(&shape, || self.try_linear(x, w, b, gelu))
    }

    /// The one place that launches kernels.
    fn launch<P: Launch>(&self, p: P) -> Result<()> {
        // SAFETY: every params struct is built by the ops below from tensors they hold borrows
        // of (so the buffers are alive) and whose shapes they checked against the params'
        // sizes; outputs are fresh tensors or views the op owns exclusively.
        unsafe { self.sh.dev.launch(p) }
    }

    /// Launches `p` as its f32 kernel or, in bf16, its `Bf16<P>` sibling.
    fn launch_ew<P: Launch>(&self, p: P) -> Result<()>
    where
        Bf16<P>: Entry,
    {
        match self.precision {
            Precision::F32 => self.launch(p),
            Precision::Bf16 => self.launch(Bf16(p)),
        }
    }

    fn same_len(&self, what: &str, a: &GpuTensor<D>, b: &GpuTensor<D>) -> Result<()> {
        if a.numel() != b.numel() {
            return Err(Error::Device(format!("{what}: shapes {:?} and {:?} differ in size", a.shape, b.shape)));
        }
        Ok(())
    }

    fn rope_table(&self, head_dim: usize, rows_needed: usize) -> Result<(DevPtr, usize)> {
        let mut tables = self.rope.lock().unwrap();
        if let Some((rows, t)) = tables.get(&head_dim) {
            if *rows >= rows_needed {
                return Ok((t.ptr, *rows));
            }
        }
        let mut rows = ROPE_ROWS;
        while rows < rows_needed {
            rows *= 2;
        }
        let data = dfrt_kernels::rope::rope_table(u32_of(head_dim, "head_dim")?, u32_of(rows, "rope rows")?);
        let t = self.alloc(&[data.len()], Precision::F32)?;
        self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&data))?;
        let ptr = t.ptr;
        tables.insert(head_dim, (rows, t));
        Ok((ptr, rows))
    }

    fn sinusoid_freqs(&self, dim: usize) -> Result<DevPtr> {
        let mut m = self.freqs.lock().unwrap();
        if let Some(t) = m.get(&dim) {
            return Ok(t.ptr);
        }
        let f = dfrt_kernels::elementwise::sinusoid_freqs(u32_of(dim, "dim")?);
        // f64 values: allocate as f32 pairs.
        let t = self.alloc(&[2 * f.len().max(1)], Precision::F32)?;
        self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&f))?;
        let ptr = t.ptr;
        m.insert(dim, t);
        Ok(ptr)
    }

    /// Uploads `bytes` into the reusable segment-table buffer; returns its address.
    fn upload_table(&self, bytes: &[u8]) -> Result<DevPtr> {
        let mut slot = self.seg_table.lock().unwrap();
        let cap = slot.as_ref().map_or(0, |t| t.bytes());
        if cap < bytes.len() {
            let want = bytes.len().next_power_of_two().max(64 << 10);
            *slot = Some(self.alloc(&[want / 4], Precision::F32)?);
        }
        let t = slot.as_ref().unwrap();
        self.sh.dev.h2d(t.ptr, bytes)?;
        Ok(t.ptr)
    }

    // --- the ops, as fallible functions ---

    fn try_upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor<D>> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::Device(format!("upload: {} values for shape {shape:?}", data.len())));
        }
        let t = self.new_tensor(shape)?;
        self.try_write(&t, data)?;
        Ok(t)
    }

    /// Host f32 data into `t`'s storage (same element count), rounded to the precision.
    fn try_write(&self, t: &GpuTensor<D>, data: &[f32]) -> Result<()> {
        if data.len() != t.numel() || t.ptr == 0 {
            return Err(Error::Device(format!("write: {} values into a tensor of shape {:?}", data.len(), t.shape)));
        }
        match t.precision {
            Precision::F32 => self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(data)),
            Precision::Bf16 => {
                let b: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&b))
            }
        }
    }

    fn try_download(&self, t: &GpuTensor<D>) -> Result<Vec<f32>> {
        if t.ptr == 0 {
            return Err(Error::Device("download of a tensor an earlier failed op did not produce".into()));
        }
        match t.precision {
            Precision::F32 => {
                let mut v = vec![0f32; t.numel()];
                self.sh.dev.d2h(t.ptr, bytemuck::cast_slice_mut(&mut v))?;
                Ok(v)
            }
            Precision::Bf16 => {
                let mut v = vec![bf16::ZERO; t.numel()];
                self.sh.dev.d2h(t.ptr, bytemuck::cast_slice_mut(&mut v))?;
                Ok(v.iter().map(|x| x.to_f32()).collect())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_copy_rows(
        &self,
        dst: &GpuTensor<D>,
        dst_off: usize,
        src: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let src_end = src_off + (rows - 1) * src_stride + cols;
        if dst_off + rows * cols > dst.numel() || src_end > src.numel() {
            return Err(Error::Device(format!("copy_rows: {rows}×{cols} rows out of range (dst {:?} at {dst_off}, src {:?} at {src_off} stride {src_stride})", dst.shape, src.shape)));
        }
        let p = CopyRowsParams {
            dst: dst.at(dst_off),
            src: src.at(src_off),
            dst_stride: u32_of(cols, "cols")?,
            src_stride: u32_of(src_stride, "src_stride")?,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)
    }

    #[allow(clippy::too_many_arguments)]
    fn try_write_heads(
        &self,
        dst_k: &GpuTensor<D>,
        dst_v: &GpuTensor<D>,
        k: &GpuTensor<D>,
        v: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        heads: &[usize],
        rows: usize,
        d: usize,
    ) -> Result<()> {
        if heads.is_empty() || rows == 0 || d == 0 {
            return Ok(());
        }
        let maxh = *heads.iter().max().unwrap();
        let src_end = src_off + maxh * d + (rows - 1) * src_stride + d;
        if src_end > k.numel()
            || src_end > v.numel()
            || heads.len() * rows * d > dst_k.numel().min(dst_v.numel())
            || src_stride < d
        {
            return Err(Error::Device(format!(
                "write_heads: {} heads × {rows}×{d} from {:?} at {src_off} (stride {src_stride}) into {:?}",
                heads.len(),
                k.shape,
                dst_k.shape
            )));
        }
        let list: Vec<u32> = heads.iter().map(|&h| u32_of(h, "head")).collect::<Result<_>>()?;
        let heads_ptr = {
            let mut m = self.head_lists.lock().unwrap();
            match m.get(&list) {
                Some(t) => t.ptr,
                None => {
                    let t = self.alloc(&[list.len()], Precision::F32)?;
                    self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&list))?;
                    let p = t.ptr;
                    m.insert(list.clone(), t);
                    p
                }
            }
        };
        let p = KvWriteParams {
            job: HeadCopyJob {
                src_k: k.at(src_off),
                src_v: v.at(src_off),
                dst_k: dst_k.ptr,
                dst_v: dst_v.ptr,
                heads: heads_ptr,
                n_heads: u32_of(heads.len(), "heads")?,
                _pad: 0,
            },
            shape: HeadCopyShape {
                rows: u32_of(rows, "rows")?,
                head_dim: u32_of(d, "head_dim")?,
                src_row_stride: u32_of(src_stride, "src_stride")?,
                src_head_stride: u32_of(d, "head_dim")?,
                dst_row_stride: u32_of(d, "head_dim")?,
                dst_head_stride: u32_of(rows * d, "rows·head_dim")?,
            },
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)
    }

    fn try_linear(
        &self,
        x: &GpuTensor<D>,
        w: &GpuTensor<D>,
        b: Option<&GpuTensor<D>>,
        gelu: bool,
    ) -> Result<GpuTensor<D>> {
        let k = x.cols();
        let n = x.rows();
        if w.shape.len() != 2 || w.shape[1] != k {
            return Err(Error::Device(format!("linear: x {:?} against weight {:?}", x.shape, w.shape)));
        }
        let m = w.shape[0];
        if let Some(b) = b {
            if b.numel() != m {
                return Err(Error::Device(format!("linear: bias {:?} for {m} outputs", b.shape)));
            }
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = m;
        let y = self.new_tensor(&shape)?;
        self.sh.dev.gemm(&Gemm {
            dtype: self.precision,
            x: x.ptr,
            w: w.ptr,
            y: y.ptr,
            bias: b.map(|b| b.ptr),
            gelu,
            n,
            k,
            m,
        })?;
        Ok(y)
    }

    fn try_layer_norm(
        &self,
        x: &GpuTensor<D>,
        eps: f32,
        affine: Option<(&GpuTensor<D>, &GpuTensor<D>)>,
    ) -> Result<GpuTensor<D>> {
        let cols = x.cols();
        if let Some((w, b)) = affine {
            if w.numel() != cols || b.numel() != cols {
                return Err(Error::Device(format!(
                    "layer_norm: affine {:?}/{:?} for {cols} columns",
                    w.shape, b.shape
                )));
            }
        }
        let y = self.new_tensor(&x.shape)?;
        let (w, b) = affine.map_or((0, 0), |(w, b)| (w.ptr, b.ptr));
        self.launch_ew(LayerNormParams {
            x: x.ptr,
            w,
            b,
            y: y.ptr,
            rows: u32_of(x.rows(), "rows")?,
            cols: u32_of(cols, "cols")?,
            eps,
        })?;
        Ok(y)
    }

    fn try_norm_modulate(
        &self,
        x: &GpuTensor<D>,
        eps: f32,
        shift: &GpuTensor<D>,
        scale: &GpuTensor<D>,
        rpf: usize,
    ) -> Result<GpuTensor<D>> {
        let (rows, cols) = (x.rows(), x.cols());
        let frames = rows.div_ceil(rpf.max(1));
        if rpf == 0 || shift.numel() < frames * cols || scale.numel() < frames * cols {
            return Err(Error::Device(format!(
                "norm_modulate: x {:?}, {rpf} rows per frame, shift {:?}, scale {:?}",
                x.shape, shift.shape, scale.shape
            )));
        }
        let y = self.new_tensor(&x.shape)?;
        self.launch_ew(LayerNormModParams {
            x: x.ptr,
            shift: shift.ptr,
            scale: scale.ptr,
            y: y.ptr,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
            rows_per_frame: u32_of(rpf, "rows_per_frame")?,
            eps,
        })?;
        Ok(y)
    }

    fn try_rms_norm(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, eps: f32) -> Result<GpuTensor<D>> {
        if w.numel() != x.cols() {
            return Err(Error::Device(format!("rms_norm: weight {:?} for x {:?}", w.shape, x.shape)));
        }
        let y = self.new_tensor(&x.shape)?;
        self.launch_ew(RmsNormParams {
            x: x.ptr,
            w: w.ptr,
            y: y.ptr,
            rows: u32_of(x.rows(), "rows")?,
            cols: u32_of(x.cols(), "cols")?,
            eps,
        })?;
        Ok(y)
    }

    fn try_unary(&self, x: &GpuTensor<D>, gelu: bool) -> Result<GpuTensor<D>> {
        let y = self.new_tensor(&x.shape)?;
        let n = u32_of(x.numel(), "elements")?;
        if gelu {
            self.launch_ew(GeluParams { x: x.ptr, y: y.ptr, n })?;
        } else {
            self.launch_ew(SiluParams { x: x.ptr, y: y.ptr, n })?;
        }
        Ok(y)
    }

    fn try_add(&self, x: &GpuTensor<D>, y: &GpuTensor<D>) -> Result<GpuTensor<D>> {
        self.same_len("add", x, y)?;
        let out = self.new_tensor(&x.shape)?;
        self.launch_ew(AddParams { x: x.ptr, y: y.ptr, out: out.ptr, n: u32_of(x.numel(), "elements")? })?;
        Ok(out)
    }

    fn try_gated_residual(
        &self,
        x: &GpuTensor<D>,
        y: &GpuTensor<D>,
        gate: &GpuTensor<D>,
        rpf: usize,
    ) -> Result<GpuTensor<D>> {
        self.same_len("gated_residual", x, y)?;
        let (rows, cols) = (x.rows(), x.cols());
        if rpf == 0 || gate.numel() < rows.div_ceil(rpf) * cols {
            return Err(Error::Device(format!(
                "gated_residual: x {:?}, gate {:?}, {rpf} rows per frame",
                x.shape, gate.shape
            )));
        }
        let out = self.new_tensor(&x.shape)?;
        self.launch_ew(GatedResidualParams {
            x: x.ptr,
            y: y.ptr,
            gate: gate.ptr,
            out: out.ptr,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
            rows_per_frame: u32_of(rpf, "rows_per_frame")?,
        })?;
        Ok(out)
    }

    fn try_modulation(&self, table: &GpuTensor<D>, e: &GpuTensor<D>, k: usize) -> Result<Vec<GpuTensor<D>>> {
        let kd = e.cols();
        if k == 0 || !kd.is_multiple_of(k) || table.numel() != kd {
            return Err(Error::Device(format!("modulation: table {:?}, e {:?}, k {k}", table.shape, e.shape)));
        }
        let (d, frames) = (kd / k, e.rows());
        let out = self.new_tensor(&[k, frames, d])?;
        let p = ModulationParams {
            table: table.ptr,
            e: e.ptr,
            out: out.ptr,
            frames: u32_of(frames, "frames")?,
            k: u32_of(k, "k")?,
            dim: u32_of(d, "dim")?,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)?;
        // The kernel writes one [k, frames, d] buffer; the k results are views of it.
        Ok((0..k).map(|i| self.view(&out, i * frames * d, &[frames, d])).collect())
    }

    fn try_rope(&self, x: &GpuTensor<D>, heads: usize, grid: [usize; 3], start_frame: usize) -> Result<GpuTensor<D>> {
        let [f, h, w] = grid;
        if heads == 0 || !x.cols().is_multiple_of(heads) || x.rows() != f * h * w {
            return Err(Error::Device(format!("rope: x {:?} for {heads} heads on grid {grid:?}", x.shape)));
        }
        let d = x.cols() / heads;
        let (table, table_rows) = self.rope_table(d, (start_frame + f).max(h).max(w))?;
        let y = self.new_tensor(&x.shape)?;
        let p = RopeParams {
            x: x.ptr,
            y: y.ptr,
            table,
            f: u32_of(f, "frames")?,
            h: u32_of(h, "h")?,
            w: u32_of(w, "w")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            start_frame: u32_of(start_frame, "start_frame")?,
            table_rows: u32_of(table_rows, "rope rows")?,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)?;
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    fn try_qk_norm_rope(
        &self,
        q: &GpuTensor<D>,
        k: &GpuTensor<D>,
        wq: &GpuTensor<D>,
        wk: &GpuTensor<D>,
        eps: f32,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> Result<(GpuTensor<D>, GpuTensor<D>)> {
        let [f, h, w] = grid;
        let cols = q.cols();
        if heads == 0
            || !cols.is_multiple_of(heads)
            || q.rows() != f * h * w
            || k.shape != q.shape
            || wq.numel() != cols
            || wk.numel() != cols
        {
            return Err(Error::Device(format!(
                "qk_norm_rope: q {:?}, k {:?}, weights {:?}/{:?} for {heads} heads on grid {grid:?}",
                q.shape, k.shape, wq.shape, wk.shape
            )));
        }
        let d = cols / heads;
        let (table, table_rows) = self.rope_table(d, (start_frame + f).max(h).max(w))?;
        let (qo, ko) = (self.new_tensor(&q.shape)?, self.new_tensor(&k.shape)?);
        let p = QkNormRopeParams {
            q: q.ptr,
            k: k.ptr,
            wq: wq.ptr,
            wk: wk.ptr,
            q_out: qo.ptr,
            k_out: ko.ptr,
            table,
            f: u32_of(f, "frames")?,
            h: u32_of(h, "h")?,
            w: u32_of(w, "w")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            start_frame: u32_of(start_frame, "start_frame")?,
            table_rows: u32_of(table_rows, "rope rows")?,
            eps,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)?;
        Ok((qo, ko))
    }

    fn try_sinusoid(&self, t: &[f32], dim: usize) -> Result<GpuTensor<D>> {
        let freqs = self.sinusoid_freqs(dim)?;
        let tt = self.alloc(&[t.len().max(1)], Precision::F32)?;
        self.sh.dev.h2d(tt.ptr, bytemuck::cast_slice(t))?;
        let y = self.new_tensor(&[t.len(), dim])?;
        self.launch_ew(SinusoidParams {
            t: tt.ptr,
            freqs,
            y: y.ptr,
            n: u32_of(t.len(), "timesteps")?,
            dim: u32_of(dim, "dim")?,
        })?;
        Ok(y)
    }

    fn try_patchify(&self, x: &GpuTensor<D>, patch: [usize; 3]) -> Result<GpuTensor<D>> {
        let [pt, ph, pw] = patch;
        if x.shape.len() != 4 || pt != 1 {
            return Err(Error::Device(format!(
                "patchify: latent {:?} with patch {patch:?} (temporal patch must be 1)",
                x.shape
            )));
        }
        let [f, c, hh, ww] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let p = PatchifyParams {
            x: x.ptr,
            y: 0,
            f: u32_of(f, "f")?,
            c: u32_of(c, "c")?,
            hh: u32_of(hh, "h")?,
            ww: u32_of(ww, "w")?,
            ph: u32_of(ph, "ph")?,
            pw: u32_of(pw, "pw")?,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        let y = self.new_tensor(&[f * (hh / ph) * (ww / pw), c * ph * pw])?;
        self.launch_ew(PatchifyParams { y: y.ptr, ..p })?;
        Ok(y)
    }

    fn try_unpatchify(&self, x: &GpuTensor<D>, grid: [usize; 3], patch: [usize; 3], c: usize) -> Result<GpuTensor<D>> {
        let [f, gh, gw] = grid;
        let [pt, ph, pw] = patch;
        if pt != 1 || x.rows() != f * gh * gw || x.cols() != ph * pw * c {
            return Err(Error::Device(format!(
                "unpatchify: x {:?} for grid {grid:?}, patch {patch:?}, {c} channels",
                x.shape
            )));
        }
        let y = self.new_tensor(&[f, c, gh * ph, gw * pw])?;
        let p = UnpatchifyParams {
            x: x.ptr,
            y: y.ptr,
            f: u32_of(f, "f")?,
            gh: u32_of(gh, "gh")?,
            gw: u32_of(gw, "gw")?,
            ph: u32_of(ph, "ph")?,
            pw: u32_of(pw, "pw")?,
            c: u32_of(c, "c")?,
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        self.launch_ew(p)?;
        Ok(y)
    }

    fn try_attention(&self, q: &GpuTensor<D>, d: usize, ctx: &[Vec<Seg<'_, GpuTensor<D>>>]) -> Result<GpuTensor<D>> {
        let heads = ctx.len();
        if heads == 0 || q.cols() != heads * d {
            return Err(Error::Device(format!("attention: q {:?} for {heads} heads of {d}", q.shape)));
        }
        // The per-head segment table, exactly the cache's segment lists: seg_start [heads+1]
        // u32, then the KvSeg entries (8-byte aligned), uploaded into one reused buffer.
        let mut seg_start = Vec::with_capacity(heads + 1);
        let mut segs = Vec::new();
        for list in ctx {
            seg_start.push(u32_of(segs.len(), "segments")?);
            for s in list {
                if s.rows == 0 {
                    continue;
                }
                let end = s.offset + (s.rows - 1) * s.stride + d;
                if s.stride < d || end > s.k.numel() || end > s.v.numel() || s.k.ptr == 0 || s.v.ptr == 0 {
                    return Err(Error::Device(format!(
                        "attention: segment at {} ({} rows, stride {}) outside K {:?} / V {:?}",
                        s.offset, s.rows, s.stride, s.k.shape, s.v.shape
                    )));
                }
                segs.push(KvSeg {
                    k: s.k.at(s.offset),
                    v: s.v.at(s.offset),
                    rows: u32_of(s.rows, "segment rows")?,
                    stride: u32_of(s.stride, "segment stride")?,
                });
            }
        }
        seg_start.push(u32_of(segs.len(), "segments")?);
        let segs_off = ((heads + 1) * 4).div_ceil(16) * 16;
        let mut bytes = vec![0u8; segs_off + segs.len() * std::mem::size_of::<KvSeg>()];
        bytes[..seg_start.len() * 4].copy_from_slice(bytemuck::cast_slice(&seg_start));
        for (i, s) in segs.iter().enumerate() {
            let o = segs_off + i * 24;
            bytes[o..o + 8].copy_from_slice(&s.k.to_le_bytes());
            bytes[o + 8..o + 16].copy_from_slice(&s.v.to_le_bytes());
            bytes[o + 16..o + 20].copy_from_slice(&s.rows.to_le_bytes());
            bytes[o + 20..o + 24].copy_from_slice(&s.stride.to_le_bytes());
        }
        let table = self.upload_table(&bytes)?;
        let o = self.new_tensor(&q.shape)?;
        let p = AttnParams {
            q: q.ptr,
            o: o.ptr,
            seg_start: table,
            segs: table + segs_off as u64,
            q_rows: u32_of(q.rows(), "query rows")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            q_stride: u32_of(q.cols(), "q stride")?,
            scale_log2: (1.0 / (d as f64).sqrt() * std::f64::consts::LOG2_E) as f32,
        };
        let bad = |e: String| Error::Device(e);
        match (self.precision, d) {
            (Precision::F32, _) => {
                let a = AttnF32(p);
                a.check().map_err(bad)?;
                a.check_table(&seg_start, &segs).map_err(bad)?;
                self.launch(a)?;
            }
            (Precision::Bf16, 128) if self.attn_rows.load(std::sync::atomic::Ordering::Relaxed) == 128 => {
                let a = AttnBf16D128W8(p);
                a.check().map_err(bad)?;
                a.check_table(&seg_start, &segs).map_err(bad)?;
                self.launch(a)?;
            }
            (Precision::Bf16, 128) => {
                let a = AttnBf16D128(p);
                a.check().map_err(bad)?;
                a.check_table(&seg_start, &segs).map_err(bad)?;
                self.launch(a)?;
            }
            (Precision::Bf16, 64) => {
                let a = AttnBf16D64(p);
                a.check().map_err(bad)?;
                a.check_table(&seg_start, &segs).map_err(bad)?;
                self.launch(a)?;
            }
            (Precision::Bf16, _) => {
                return Err(Error::Device(format!(
                    "attention: no bf16 kernel for head_dim {d} (have 64 and 128; use --dtype f32)"
                )))
            }
        }
        Ok(o)
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    type Tensor = GpuTensor<D>;

    fn name(&self) -> &'static str {
        self.sh.dev.name()
    }
    /// Once the memory plan's arena is reserved ([`GpuBackend::prepare`]): a capture takes its
    /// memory from the arena, since device allocations cannot be recorded.
    fn supports_graphs(&self) -> bool {
        self.reserved.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn capture_graph(&self, f: &mut dyn FnMut(&Self) -> Result<GpuTensor<D>>) -> Result<(GpuTensor<D>, usize)> {
        let (out, id) = self.capture(|be| f(be))?;
        match out {
            Ok(t) => Ok((t, id)),
            Err(e) => {
                let _ = self.drop_graph(id);
                Err(e)
            }
        }
    }
    fn replay_graph(&self, graph: usize) -> Result<()> {
        self.replay(graph)
    }
    fn drop_graph(&self, graph: usize) -> Result<()> {
        GpuBackend::drop_graph(self, graph)
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn status(&self) -> Result<()> {
        match &*self.error.lock().unwrap() {
            Some(e) => Err(Error::Device(e.clone())),
            None => Ok(()),
        }
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> GpuTensor<D> {
        self.guard(shape, || self.try_upload(data, shape))
    }
    fn download(&self, t: &GpuTensor<D>) -> Vec<f32> {
        if self.failed() {
            return vec![f32::NAN; t.numel()];
        }
        self.try_download(t).unwrap_or_else(|e| {
            self.fail(e);
            vec![f32::NAN; t.numel()]
        })
    }
    fn write(&self, dst: &mut GpuTensor<D>, data: &[f32]) {
        if !self.failed() {
            if let Err(e) = self.try_write(dst, data) {
                self.fail(e);
            }
        }
    }
    fn shape<'a>(&self, t: &'a GpuTensor<D>) -> &'a [usize] {
        &t.shape
    }
    fn zeros(&self, shape: &[usize]) -> GpuTensor<D> {
        self.guard(shape, || {
            let t = self.new_tensor(shape)?;
            self.sh.dev.memset(t.ptr, 0, t.bytes())?;
            Ok(t)
        })
    }
    fn copy_rows(
        &self,
        dst: &mut GpuTensor<D>,
        dst_off: usize,
        src: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        if self.failed() {
            return;
        }
        if let Err(e) = self.try_copy_rows(dst, dst_off, src, src_off, src_stride, rows, cols) {
            self.fail(e);
        }
    }

    fn write_heads(
        &self,
        dst_k: &mut GpuTensor<D>,
        dst_v: &mut GpuTensor<D>,
        k: &GpuTensor<D>,
        v: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        heads: &[usize],
        rows: usize,
        d: usize,
    ) {
        if self.failed() {
            return;
        }
        if let Err(e) = self.try_write_heads(dst_k, dst_v, k, v, src_off, src_stride, heads, rows, d) {
            self.fail(e);
        }
    }

    fn linear(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, b: Option<&GpuTensor<D>>) -> GpuTensor<D> {
        self.gemm_op(x, w, b, false)
    }
    /// Fused into the GEMM epilogue in bf16 (see [`GpuBackend::set_fused_gelu`]); composed in
    /// f32, where the 1e-4 contract wants the reference's own GELU (cuBLASLt's differs in the
    /// last bits).
    fn linear_gelu(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, b: Option<&GpuTensor<D>>) -> GpuTensor<D> {
        if self.precision != Precision::Bf16 || !self.fused_gelu.load(std::sync::atomic::Ordering::Relaxed) {
            return self.gelu_tanh(&self.linear(x, w, b));
        }
        self.gemm_op(x, w, b, true)
    }
    fn layer_norm(&self, x: &GpuTensor<D>, eps: f32, affine: Option<(&GpuTensor<D>, &GpuTensor<D>)>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_layer_norm(x, eps, affine))
    }
    fn norm_modulate(
        &self,
        x: &GpuTensor<D>,
        eps: f32,
        shift: &GpuTensor<D>,
        scale: &GpuTensor<D>,
        rpf: usize,
    ) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_norm_modulate(x, eps, shift, scale, rpf))
    }
    fn rms_norm(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, eps: f32) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_rms_norm(x, w, eps))
    }
    fn gelu_tanh(&self, x: &GpuTensor<D>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_unary(x, true))
    }
    fn silu(&self, x: &GpuTensor<D>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_unary(x, false))
    }
    fn add(&self, x: &GpuTensor<D>, y: &GpuTensor<D>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_add(x, y))
    }
    fn gated_residual(&self, x: &GpuTensor<D>, y: &GpuTensor<D>, gate: &GpuTensor<D>, rpf: usize) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_gated_residual(x, y, gate, rpf))
    }
    fn modulation(&self, table: &GpuTensor<D>, e: &GpuTensor<D>, k: usize) -> Vec<GpuTensor<D>> {
        let (frames, d) = (e.rows(), e.cols() / k.max(1));
        if self.failed() {
            return (0..k).map(|_| GpuTensor::unbacked(&[frames, d], self.precision)).collect();
        }
        self.try_modulation(table, e, k).unwrap_or_else(|err| {
            self.fail(err);
            (0..k).map(|_| GpuTensor::unbacked(&[frames, d], self.precision)).collect()
        })
    }
    fn rope(&self, x: &GpuTensor<D>, heads: usize, grid: [usize; 3], start_frame: usize) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_rope(x, heads, grid, start_frame))
    }
    fn qk_norm_rope(
        &self,
        q: &GpuTensor<D>,
        k: &GpuTensor<D>,
        wq: &GpuTensor<D>,
        wk: &GpuTensor<D>,
        eps: f32,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> (GpuTensor<D>, GpuTensor<D>) {
        let unbacked =
            || (GpuTensor::unbacked(&q.shape, self.precision), GpuTensor::unbacked(&k.shape, self.precision));
        if self.failed() {
            return unbacked();
        }
        self.try_qk_norm_rope(q, k, wq, wk, eps, heads, grid, start_frame).unwrap_or_else(|e| {
            self.fail(e);
            unbacked()
        })
    }
    fn sinusoid(&self, t: &[f32], dim: usize) -> GpuTensor<D> {
        self.guard(&[t.len(), dim], || self.try_sinusoid(t, dim))
    }
    fn patchify(&self, x: &GpuTensor<D>, patch: [usize; 3]) -> GpuTensor<D> {
        let [_, ph, pw] = patch;
        let s = &x.shape;
        let shape = if s.len() == 4 {
            vec![s[0] * (s[2] / ph.max(1)) * (s[3] / pw.max(1)), s[1] * ph * pw]
        } else {
            vec![0, 0]
        };
        self.guard(&shape, || self.try_patchify(x, patch))
    }
    fn unpatchify(&self, x: &GpuTensor<D>, grid: [usize; 3], patch: [usize; 3], channels: usize) -> GpuTensor<D> {
        let shape = [grid[0], channels, grid[1] * patch[1], grid[2] * patch[2]];
        self.guard(&shape, || self.try_unpatchify(x, grid, patch, channels))
    }
    fn attention(&self, q: &GpuTensor<D>, head_dim: usize, ctx: &[Vec<Seg<'_, GpuTensor<D>>>]) -> GpuTensor<D> {
        self.guard(&q.shape, || self.try_attention(q, head_dim, ctx))
    }

    /// `calib_mass_*` then `calib_mean_f32`, when every head's context is the same run of
    /// segments at a fixed head stride (phase 1 of Dummy Forcing: all heads in one group).
    fn calibration_masses(
        &self,
        q: &GpuTensor<D>,
        head_dim: usize,
        ctx: &[Vec<Seg<'_, GpuTensor<D>>>],
        rows: &[usize],
        first_end: usize,
        mid_end: usize,
    ) -> Option<Result<Vec<f32>>> {
        let segs = calib_segments(ctx, head_dim)?;
        Some(segs.and_then(|segs| {
            self.status()?;
            self.try_calibration(q, head_dim, ctx.len(), &segs, rows, first_end, mid_end)
        }))
    }
}

/// The calibration kernel's segments for `ctx`, if it is one list of segments shared by all
/// heads at a fixed head stride: `(key address, tokens, token stride, head stride)`; an error
/// when a segment reaches outside its tensor.
#[allow(clippy::type_complexity)]
fn calib_segments<D: Device>(
    ctx: &[Vec<Seg<'_, GpuTensor<D>>>],
    d: usize,
) -> Option<Result<Vec<(DevPtr, usize, usize, usize)>>> {
    let first = ctx.first()?;
    let mut out = Vec::with_capacity(first.len());
    for (i, s0) in first.iter().enumerate() {
        let hs = match ctx.get(1) {
            Some(l) => l.get(i)?.offset.checked_sub(s0.offset)?,
            None => 0,
        };
        for (h, l) in ctx.iter().enumerate() {
            let s = l.get(i)?;
            let same = l.len() == first.len()
                && std::ptr::eq(s.k, s0.k)
                && s.offset == s0.offset + h * hs
                && s.rows == s0.rows
                && s.stride == s0.stride;
            if !same || s.k.ptr == 0 {
                return None;
            }
        }
        if s0.rows > 0 {
            let end = s0.offset + (s0.rows - 1) * s0.stride + (ctx.len() - 1) * hs + d;
            if end > s0.k.numel() {
                return Some(Err(Error::Device(format!(
                    "calibration: segment {i} at {} ({} rows, stride {}, head stride {hs}) outside K {:?}",
                    s0.offset, s0.rows, s0.stride, s0.k.shape
                ))));
            }
            out.push((s0.k.at(s0.offset), s0.rows, s0.stride, hs));
        }
    }
    Some(Ok(out))
}

impl<D: Device> GpuBackend<D> {
    #[allow(clippy::too_many_arguments)]
    fn try_calibration(
        &self,
        q: &GpuTensor<D>,
        d: usize,
        heads: usize,
        segs: &[(DevPtr, usize, usize, usize)],
        rows: &[usize],
        first_end: usize,
        mid_end: usize,
    ) -> Result<Vec<f32>> {
        let t = q.rows();
        if q.cols() != heads * d || rows.is_empty() || rows.iter().any(|&r| r >= t) {
            return Err(Error::Device(format!(
                "calibration: q {:?} for {heads} heads of {d}, {} sampled rows below {t}",
                q.shape,
                rows.len()
            )));
        }
        let rows32: Vec<u32> = rows.iter().map(|&r| u32_of(r, "sampled row")).collect::<Result<_>>()?;
        let mut table = Vec::with_capacity(segs.len() * 24);
        for &(k, tokens, ts, hs) in segs {
            table.extend_from_slice(&k.to_le_bytes());
            for v in [u32_of(tokens, "segment tokens")?, u32_of(ts, "token stride")?, u32_of(hs, "head stride")?, 0] {
                table.extend_from_slice(&v.to_le_bytes());
            }
        }
        let rows_t = self.alloc(&[rows32.len()], Precision::F32)?;
        self.sh.dev.h2d(rows_t.ptr, bytemuck::cast_slice(&rows32))?;
        let segs_t = self.alloc(&[table.len().div_ceil(4).max(1)], Precision::F32)?;
        self.sh.dev.h2d(segs_t.ptr, &table)?;
        let per_row = self.alloc(&[heads, rows.len(), 3], Precision::F32)?;
        let out = self.alloc(&[3, heads], Precision::F32)?;
        let p = CalibMassParams {
            q: q.ptr,
            rows: rows_t.ptr,
            segs: segs_t.ptr,
            out: per_row.ptr,
            n_rows: u32_of(rows.len(), "sampled rows")?,
            n_segs: u32_of(segs.len(), "segments")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            first_end: u32_of(first_end, "first region")?,
            mid_end: u32_of(mid_end, "last region start")?,
            scale: (d as f32).sqrt(),
        };
        p.check().map_err(|e| Error::Device(e.into()))?;
        match self.precision {
            Precision::F32 => self.launch(p)?,
            Precision::Bf16 => self.launch(Bf16(p))?,
        }
        self.launch(CalibMeanParams { per_row: per_row.ptr, out: out.ptr, heads: p.heads, n_rows: p.n_rows })?;
        let v = self.try_download(&out)?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::Device("calibration: non-finite attention mass (NaN or infinite queries/keys)".into()));
        }
        Ok(v)
    }
}

impl<D: Device> GpuBackend<D> {
    /// The memory plan for a run of `ckpt`'s model: checks it against the device's free memory
    /// (failing with "needs X bytes, Y free") and reserves the whole plan as one heap region,
    /// so neither loading nor the chunk loop allocates on the device afterwards. Call before
    /// loading the model.
    pub fn prepare(
        &self,
        cfg: &crate::ModelConfig,
        policy: &crate::cache::Policy,
        latent: crate::pipeline::Latent,
        frames: Option<usize>,
        ckpt: &crate::checkpoint::TensorFile,
    ) -> Result<super::MemoryPlan> {
        let numel: usize = ckpt.tensors.values().map(|t| t.shape.iter().product::<usize>()).sum();
        let plan = super::MemoryPlan::estimate(
            cfg,
            policy,
            latent,
            frames,
            self.precision,
            numel * self.precision.size(),
            ckpt.tensors.len(),
        )?;
        let (free, total) = self.sh.dev.mem_info()?;
        plan.check(free, total)?;
        self.reserve(plan.total())?;
        Ok(plan)
    }
}
