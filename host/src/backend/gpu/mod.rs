//! [`GpuBackend`]: the DiT's ops on a [`Device`], every op a kernel launch or a GEMM. It
//! sits beside the CPU backend and over the device layer ([`crate::gpu`]). By concern:
//! - `tensor`: device tensors, the sub-allocator, uploads and downloads;
//! - `ops`: the op launchers (one params struct each, checked at the one launch site);
//! - `attention`: attention (the segment table) and Dummy Forcing's calibration kernels;
//! - this module: the backend, its options, the error guard, graphs and the [`Backend`] impl.
//!
//! Tensors are device buffers with a shape, in the backend's storage precision (f32, or bf16
//! bits). They come from a sub-allocator ([`crate::gpu::heap::Heap`]) over device regions: the memory
//! plan reserves one region up front ([`GpuBackend::reserve`]), so after warm-up the chunk loop
//! makes no device allocation; a dropped tensor returns its block at once.
//!
//! Errors: the [`Backend`] ops return tensors, not `Result`s (the model is written once for
//! every backend). A failing op therefore records the first error and returns an unbacked
//! tensor (a download of it gives zeros, never NaN); every later op is skipped, and
//! [`Backend::status`] reports the error. The CPU backend does the same. The pipeline
//! checks it after every forward, like CUDA's sticky errors at a synchronisation point. There
//! is no host fallback: an op without a kernel is an error.

mod attention;
mod ops;
mod tensor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfrt_kernels as k;
use dfrt_kernels::elem::Bf16;
use dfrt_kernels::{Entry, Launch};

use self::attention::calib_segments;
pub use self::tensor::GpuTensor;
use self::tensor::Shared;
use crate::backend::{Backend, DeviceStats, Precision, Seg};
use crate::error::DeviceError;
use crate::gpu::heap::{round_up, Heap};
use crate::gpu::{Device, Epilogue};
use crate::{Error, Result};

/// Rows of the RoPE table built at first use (grows by doubling if a video gets longer).
const ROPE_ROWS: usize = 1024;

/// The GPU backend over device `D`.
pub struct GpuBackend<D: Device> {
    sh: Arc<Shared<D>>,
    precision: Precision,
    /// First error of any op (sticky; see the module doc).
    error: Mutex<Option<DeviceError>>,
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
    /// Fixed at construction ([`GpuBackend::with_options`]).
    opts: GpuOptions,
}

/// Query rows per block of the bf16 head-dim-128 attention kernel: 64 (version 1,
/// `attn_bf16_d128`, 4 warps; the default) or 128 (version 2, `attn_bf16_d128_w8`, 8 warps).
/// Same results bit for bit; the kernel bench times both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnRows {
    #[default]
    R64,
    R128,
}

impl AttnRows {
    /// 64 or 128; anything else is an error.
    pub fn from_rows(rows: u32) -> Result<Self> {
        match rows {
            64 => Ok(AttnRows::R64),
            128 => Ok(AttnRows::R128),
            _ => Err(Error::Input(format!("attention block rows {rows}: 64 or 128"))),
        }
    }
    pub fn rows(self) -> u32 {
        match self {
            AttnRows::R64 => 64,
            AttnRows::R128 => 128,
        }
    }
}

/// Where the bf16 GELU of [`Backend::linear_gelu`] (the FFN's first layer) runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluEpilogue {
    /// In the GEMM's epilogue: one rounding to bf16 instead of two, and no separate GELU pass
    /// over the `[tokens, ffn_dim]` activation.
    #[default]
    Fused,
    /// As the official code's two ops (GEMM, then GELU), which matches the CPU reference's
    /// bf16 rounding points exactly.
    Separate,
}

/// How a [`GpuBackend`] runs some ops, fixed when it is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// The bf16 FFN GELU ([`GeluEpilogue`]; f32 always runs it separately).
    pub gelu: GeluEpilogue,
    /// Which bf16 head-dim-128 attention kernel runs.
    pub attn_rows: AttnRows,
}

/// The elementwise activations with a kernel of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unary {
    GeluTanh,
    Silu,
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::unsupported(format!("{what} = {v} does not fit a kernel's u32 size")))
}

/// The host-side checks of a kernel's params (sizes its grid can cover, alignment), run by
/// [`GpuBackend::launch`] before every launch; params without limits of their own pass.
trait CheckParams {
    fn check_params(&self) -> std::result::Result<(), String>;
}

macro_rules! checked_params {
    ($($t:ty),* $(,)?) => {$(
        impl CheckParams for $t {
            fn check_params(&self) -> std::result::Result<(), String> {
                <$t>::check(self).map_err(|e| e.to_string())
            }
        }
    )*};
}

macro_rules! unchecked_params {
    ($($t:ty),* $(,)?) => {$(
        impl CheckParams for $t {
            fn check_params(&self) -> std::result::Result<(), String> {
                Ok(())
            }
        }
    )*};
}

checked_params!(
    k::calib::CalibMassParams,
    k::elementwise::ModulationParams,
    k::layout::PatchifyParams,
    k::layout::UnpatchifyParams,
    k::layout::CopyRowsParams,
    k::layout::KvWriteParams,
    k::rope::RopeParams,
    k::rope::QkNormRopeParams,
    k::attention::AttnF32,
    k::attention::AttnBf16D128,
    k::attention::AttnBf16D128W8,
    k::attention::AttnBf16D64,
    k::attn_bias::AttnBiasParams,
);
unchecked_params!(
    k::calib::CalibMeanParams,
    k::elementwise::GeluParams,
    k::elementwise::SiluParams,
    k::elementwise::AddParams,
    k::elementwise::GatedResidualParams,
    k::elementwise::SinusoidParams,
    k::norm::RmsNormParams,
    k::norm::LayerNormParams,
    k::norm::LayerNormModParams,
);

impl<P: CheckParams> CheckParams for Bf16<P> {
    fn check_params(&self) -> std::result::Result<(), String> {
        self.0.check_params()
    }
}

impl<D: Device> GpuBackend<D> {
    /// A backend with the default [`GpuOptions`].
    pub fn new(dev: D, precision: Precision) -> Self {
        Self::with_options(dev, precision, GpuOptions::default())
    }

    pub fn with_options(dev: D, precision: Precision, opts: GpuOptions) -> Self {
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
            opts,
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

    /// The options it was built with.
    pub fn options(&self) -> GpuOptions {
        self.opts
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

    /// Records the device work `f` queues into a graph (a CUDA graph on [`crate::gpu::CudaDevice`],
    /// a recorded op list on [`crate::gpu::SimDevice`]) instead of running it, and returns what `f`
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

    /// The one error guard every op runs under: `op` is skipped once an error is recorded,
    /// and a new error is recorded; either way `fallback()` stands in for the result (an
    /// unbacked tensor, NaNs for a download, nothing for an in-place op).
    fn sticky<T>(&self, fallback: impl FnOnce() -> T, op: impl FnOnce() -> Result<T>) -> T {
        if self.failed() {
            return fallback();
        }
        match op() {
            Ok(t) => t,
            Err(e) => {
                self.fail(e);
                fallback()
            }
        }
    }

    /// [`GpuBackend::sticky`] for an op that returns one tensor of `shape`.
    fn guard(&self, shape: &[usize], op: impl FnOnce() -> Result<GpuTensor<D>>) -> GpuTensor<D> {
        self.sticky(|| GpuTensor::unbacked(shape, self.precision), op)
    }

    /// Records the first failure (sticky, like CUDA's errors); a device error keeps its kind.
    fn fail(&self, e: Error) {
        let mut err = self.error.lock().unwrap();
        if err.is_none() {
            *err = Some(match e {
                Error::Device(d) => d,
                e => DeviceError::Invalid(e.to_string()),
            });
        }
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    /// The one place that launches kernels.
    /// The params are checked first ([`CheckParams`]): a size the kernel's grid cannot cover
    /// or a misaligned row is an error here, never a launch.
    fn launch<P: Launch + CheckParams>(&self, p: P) -> Result<()> {
        p.check_params().map_err(|e| Error::invalid_op(format!("{}: {e}", P::NAME)))?;
        // SAFETY: every params struct is built by the ops below from tensors they hold borrows
        // of (so the buffers are alive) and whose shapes they checked against the params'
        // sizes; outputs are fresh tensors or views the op owns exclusively.
        unsafe { self.sh.dev.launch(p) }
    }

    /// Launches `p` as its f32 kernel or, in bf16, its `Bf16<P>` sibling.
    fn launch_ew<P: Launch + CheckParams>(&self, p: P) -> Result<()>
    where
        Bf16<P>: Entry,
    {
        match self.precision {
            Precision::F32 => self.launch(p),
            Precision::Bf16 => self.launch(Bf16(p)),
        }
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    type Tensor = GpuTensor<D>;

    fn name(&self) -> &'static str {
        self.sh.dev.name()
    }
    /// Once the memory plan's arena is reserved ([`crate::run::open`] reserves it): a capture takes its
    /// memory from the arena, since device allocations cannot be recorded.
    fn device_stats(&self) -> Option<DeviceStats> {
        let (heap_live, heap_peak, heap_capacity) = self.heap_stats();
        Some(DeviceStats { allocations: self.allocations(), heap_live, heap_peak, heap_capacity })
    }
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
        self.sticky(|| vec![0.0; t.numel()], || self.try_download(t))
    }
    fn write(&self, dst: &mut GpuTensor<D>, data: &[f32]) {
        self.sticky(|| (), || self.try_write(dst, data))
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
        self.sticky(|| (), || self.try_copy_rows(dst, dst_off, src, src_off, src_stride, rows, cols))
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
        self.sticky(|| (), || self.try_write_heads(dst_k, dst_v, k, v, src_off, src_stride, heads, rows, d))
    }

    fn linear(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, b: Option<&GpuTensor<D>>) -> GpuTensor<D> {
        self.gemm_op(x, w, b, Epilogue::None)
    }
    /// Fused into the GEMM epilogue in bf16 (see [`GpuOptions::gelu`]); composed in
    /// f32, where the 1e-4 contract wants the reference's own GELU (cuBLASLt's differs in the
    /// last bits).
    fn linear_gelu(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, b: Option<&GpuTensor<D>>) -> GpuTensor<D> {
        if self.precision != Precision::Bf16 || self.opts.gelu == GeluEpilogue::Separate {
            return self.gelu_tanh(&self.linear(x, w, b));
        }
        self.gemm_op(x, w, b, Epilogue::Gelu)
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
        self.guard(&x.shape, || self.try_unary(x, Unary::GeluTanh))
    }
    fn silu(&self, x: &GpuTensor<D>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_unary(x, Unary::Silu))
    }
    fn add(&self, x: &GpuTensor<D>, y: &GpuTensor<D>) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_add(x, y))
    }
    fn gated_residual(&self, x: &GpuTensor<D>, y: &GpuTensor<D>, gate: &GpuTensor<D>, rpf: usize) -> GpuTensor<D> {
        self.guard(&x.shape, || self.try_gated_residual(x, y, gate, rpf))
    }
    fn modulation(&self, table: &GpuTensor<D>, e: &GpuTensor<D>, k: usize) -> Vec<GpuTensor<D>> {
        let (frames, d) = (e.rows(), e.cols() / k.max(1));
        let unbacked = || (0..k).map(|_| GpuTensor::unbacked(&[frames, d], self.precision)).collect();
        self.sticky(unbacked, || self.try_modulation(table, e, k))
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
        self.sticky(unbacked, || self.try_qk_norm_rope(q, k, wq, wk, eps, heads, grid, start_frame))
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

    /// On the device (`attn_bias_*`), not the trait's host round trip.
    fn attention_biased(
        &self,
        q: &GpuTensor<D>,
        k: &GpuTensor<D>,
        v: &GpuTensor<D>,
        heads: usize,
        head_dim: usize,
        bias: &GpuTensor<D>,
    ) -> GpuTensor<D> {
        self.guard(&q.shape, || self.try_attention_biased(q, k, v, heads, head_dim, bias))
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
