//! The GPU path: one backend ([`GpuBackend`]) over a small [`Device`] trait with two
//! implementations.
//!
//! - [`SimDevice`]: host memory, the SIMT simulator (`dfrt_kernels::sim`) running the very same
//!   kernels as the GPU, and a CPU GEMM. `dfrt generate --device sim` runs the whole GPU path
//!   (op sequencing, device cache, memory plan) on any machine, so CI checks it against the
//!   golden cases.
//! - [`CudaDevice`]: cudarc with dynamic loading (builds without CUDA), the committed PTX
//!   (`dfrt_kernels::PTX`), cuBLASLt GEMMs.
//!
//! Everything above the trait (the op sequencing, the tensors, the memory plan) is shared.
//! Device memory is addressed by plain `u64` device pointers, as the kernels' params structs
//! hold them; the devices validate every range they are given for copies and GEMMs against
//! their live allocations, so a wrong range is an error, never a wild write. Kernel launches
//! cannot be validated (the params are opaque), which is why [`Device::launch`] is `unsafe`
//! and [`GpuBackend`] has exactly one place that calls it.

pub mod backend;
pub mod cuda;
pub mod heap;
pub mod plan;
pub mod sim;

pub use backend::{GpuBackend, GpuTensor};
pub use cuda::CudaDevice;
pub use plan::MemoryPlan;
pub use sim::SimDevice;

use dfrt_kernels::Launch;

use crate::backend::Precision;
use crate::Result;

/// A device address (what the kernels' params structs hold).
pub type DevPtr = u64;

/// `y [n, m] = x [n, k] · w [m, k]ᵀ (+ bias [m]) (then GELU-tanh)`, row-major, every operand
/// stored in `dtype`, f32 accumulation; the result is rounded to `dtype` once at the end.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub dtype: Precision,
    pub x: DevPtr,
    pub w: DevPtr,
    pub y: DevPtr,
    pub bias: Option<DevPtr>,
    /// Fused GELU (tanh form) after the bias (cuBLASLt's GELU_BIAS epilogue).
    pub gelu: bool,
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

    /// Device allocations made so far (not frees): the counter behind the "no allocation in
    /// the chunk loop" rule.
    fn allocations(&self) -> u64;
    /// (free, total) device memory in bytes.
    fn mem_info(&self) -> Result<(usize, usize)>;
}
