//! The device layer of the GPU path: a small [`Device`] trait with two implementations, under
//! one backend ([`crate::backend::gpu::GpuBackend`], beside the CPU backend).
//!
//! - [`SimDevice`]: host memory, the SIMT simulator (`dfrt_kernels::sim`) running the very same
//!   kernels as the GPU, and a CPU GEMM. `dfrt generate --device sim` runs the whole GPU path
//!   (op sequencing, device cache, memory plan) on any machine, so CI checks it against the
//!   golden cases.
//! - [`CudaDevice`]: cudarc with dynamic loading (builds without CUDA), the committed PTX
//!   (`dfrt_kernels::PTX`), cuBLASLt GEMMs.
//!
//! Everything above the trait (the op sequencing, the tensors, the memory plan) is shared.
//!
//! Which kernel runs each [`crate::backend::Backend`] op (`*` = `_f32` or `_bf16` by the
//! storage precision):
//!
//! | op | runs on |
//! |---|---|
//! | `linear` | [`Device::gemm`]: cuBLASLt (bias epilogue; f32 with exact `COMPUTE_32F`, bf16 with f32 accumulation) / CPU GEMM on the sim |
//! | `layer_norm` | `layer_norm_*` (affine or not) |
//! | `norm_modulate` | `layer_norm_modulate_*` |
//! | `rms_norm` | `rms_norm_*` |
//! | `gelu_tanh`, `silu`, `add` | `gelu_tanh_*`, `silu_*`, `add_*` |
//! | `gated_residual` | `gated_residual_*` |
//! | `modulation` | `modulation_*` (one `[k, frames, dim]` buffer; the k results are views) |
//! | `rope` | `rope3d_*` (cos/sin table built once per head dim in f64 on the host) |
//! | `qk_norm_rope` (RMSNorm of q and k, then RoPE) | `qk_norm_rope_*`: one launch for both |
//! | `sinusoid` | `sinusoid_*` (f64 angles on the device) |
//! | `patchify`, `unpatchify` | `patchify_*`, `unpatchify_*` |
//! | `write_heads` (cache commits: a group's heads of one frame) | `kv_write_*`: one launch for K and V of all the group's heads |
//! | `copy_rows` (HMA regrouping, copies) | `copy_rows_*` |
//! | `attention` (self and cross) | `attn_f32`, or `attn_bf16_d128` / `attn_bf16_d64`; the per-head `Seg` lists become one segment table uploaded per call into a reused buffer |
//! | `upload`, `download`, `zeros` | copies and memset |
//!
//! | `calibration_masses` (Dummy Forcing's head statistic) | `calib_mass_*` per sampled row and key segment, then `calib_mean_f32` |
//!
//! The one kernel in the PTX the backend does not use yet: `kv_compact_*` (HMA regrouping in
//! one launch); the cache regroups with one `copy_rows_*` per slot instead.
//! Device memory is addressed by plain `u64` device pointers, as the kernels' params structs
//! hold them; the devices validate every range they are given for copies and GEMMs against
//! their live allocations, so a wrong range is an error, never a wild write. Kernel launches
//! cannot be validated (the params are opaque), which is why [`Device::launch`] is `unsafe`
//! and [`crate::backend::gpu::GpuBackend`] has exactly one place that calls it.

pub mod cuda;
pub mod heap;
pub mod ring;
pub mod sim;

pub use cuda::CudaDevice;
pub use sim::SimDevice;

use dfrt_kernels::Launch;

use crate::backend::Precision;
use crate::Result;

/// A device address (what the kernels' params structs hold).
pub type DevPtr = u64;

/// What a [`Gemm`] applies after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// The product (plus bias) as it is.
    None,
    /// GELU (tanh form) after the bias: cuBLASLt's GELU_BIAS epilogue.
    Gelu,
}

/// `y [n, m] = x [n, k] · w [m, k]ᵀ (+ bias [m]) (then GELU-tanh)`, row-major, every operand
/// stored in `dtype`, f32 accumulation; the result is rounded to `dtype` once at the end.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub dtype: Precision,
    pub x: DevPtr,
    pub w: DevPtr,
    pub y: DevPtr,
    pub bias: Option<DevPtr>,
    /// What follows the bias, before the one rounding.
    pub epilogue: Epilogue,
    pub n: usize,
    pub k: usize,
    pub m: usize,
}

impl Gemm {
    /// Bytes of (x, w, y, bias).
    pub fn extents(&self) -> [(DevPtr, usize); 4] {
        let e = self.dtype.size();
        [
            (self.x, self.n * self.k * e),
            (self.w, self.m * self.k * e),
            (self.y, self.n * self.m * e),
            (self.bias.unwrap_or(0), if self.bias.is_some() { self.m * e } else { 0 }),
        ]
    }
}

/// Checks that `[ptr, ptr + len)` lies inside one of a device's `live` allocations (base →
/// size); the copy and GEMM range checks of both devices.
pub(crate) fn check_live(
    live: &std::collections::BTreeMap<u64, usize>,
    device: &str,
    ptr: DevPtr,
    len: usize,
    what: &str,
) -> crate::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match live.range(..=ptr).next_back() {
        Some((&base, &size)) if ptr + len as u64 <= base + size as u64 => Ok(()),
        _ => Err(crate::Error::invalid_op(format!(
            "{device}: {what}: range {ptr:#x}+{len} is outside every live allocation"
        ))),
    }
}

/// What a GPU backend needs from a device. Errors are [`crate::Error::Device`] with a message
/// naming what failed.
pub trait Device: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// A new allocation of `bytes` (256-byte aligned), contents undefined. Counted by
    /// [`Device::allocations`].
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Frees an allocation from [`Device::alloc`] once the work queued on it is done.
    fn free(&self, ptr: DevPtr) -> Result<()>;

    /// Host → device (the host slice may be dropped when this returns).
    fn h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Device → host; waits for the queued work first.
    fn d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    fn d2d(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    fn memset(&self, dst: DevPtr, byte: u8, bytes: usize) -> Result<()>;

    /// Launches the kernel of `p` (`P::NAME` in `dfrt_kernels::PTX`) with `p.dims()`, passing
    /// `p` by value as the kernel's single argument.
    ///
    /// # Safety
    /// Every device pointer in `p` must be valid for everything the kernel reads and writes
    /// (as the params struct's docs state), and no other queued work may write what it reads.
    unsafe fn launch<P: Launch>(&self, p: P) -> Result<()>;

    /// A GEMM (see [`Gemm`]); operand ranges are checked against live allocations.
    fn gemm(&self, g: &Gemm) -> Result<()>;

    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// Starts recording the device work queued from now on (launches, copies, GEMMs) into a
    /// graph instead of running it. Allocation, freeing, downloads and synchronisation are
    /// errors until [`Device::end_capture`].
    fn begin_capture(&self) -> Result<()>;
    /// Ends the recording; returns the graph's id.
    fn end_capture(&self) -> Result<usize>;
    /// Runs a recorded graph again: the same ops, params and uploaded bytes, in order. Every
    /// buffer the graph touches must still be allocated.
    fn replay(&self, graph: usize) -> Result<()>;
    /// Destroys a recorded graph (its id is not reused). Work already queued from it still
    /// completes; the buffers it touched are the caller's to reuse afterwards, in stream order.
    fn drop_graph(&self, graph: usize) -> Result<()>;
    /// Graphs recorded and not dropped (a test checks that sessions do not leak them).
    fn live_graphs(&self) -> usize;

    /// A marker of the work queued so far (a CUDA event; a wall-clock instant on the sim).
    type Event: Send;
    fn record(&self) -> Result<Self::Event>;
    /// Milliseconds of device time between two markers (waits for `end`).
    fn elapsed_ms(&self, start: &Self::Event, end: &Self::Event) -> Result<f32>;

    /// Device allocations made so far (not frees): the counter behind the "no allocation in
    /// the chunk loop" rule.
    fn allocations(&self) -> u64;
    /// (free, total) device memory in bytes.
    fn mem_info(&self) -> Result<(usize, usize)>;
}
