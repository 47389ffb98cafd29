//! dfrt GPU kernels.
//!
//! The same source builds two ways:
//! - for `nvptx64-nvidia-cuda` with the nightly (`cargo xtask ptx`), giving the committed
//!   `ptx/dfrt_kernels.ptx`;
//! - for the host with stable Rust, where the device layer (`gpu`) is backed by the SIMT
//!   simulator (`sim`), so every kernel can be run and tested on the CPU.
//!
//! Host/device contract: every kernel takes exactly one argument, a `#[repr(C)]` `Copy` params
//! struct of plain fields (device pointers as `u64`, sizes as `u32`). The host passes it by value
//! as the single kernel parameter.
//!
//! # Running a kernel in the simulator
//!
//! On the host every kernel is a [`sim::Kernel`] constant, and every params struct knows its
//! launch shape ([`Launch`]), so [`sim::run`] launches it exactly as a GPU backend would,
//! on host memory. Poison the output first: a value the kernel forgets to write stays NaN.
//!
//! ```
//! use dfrt_kernels::norm::{RmsNormParams, ROW_THREADS};
//! use dfrt_kernels::{sim, Launch};
//!
//! let (rows, cols) = (3usize, 200usize);
//! let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
//! let w: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
//! let mut y = vec![f32::NAN; rows * cols];
//! let p = RmsNormParams {
//!     x: x.as_ptr() as u64,
//!     w: w.as_ptr() as u64,
//!     y: y.as_mut_ptr() as u64,
//!     rows: rows as u32,
//!     cols: cols as u32,
//!     eps: 1e-6,
//! };
//! // One block of ROW_THREADS threads per row.
//! assert_eq!((p.dims().grid, p.dims().block), ([3, 1, 1], [ROW_THREADS, 1, 1]));
//! // SAFETY: x, w and y are live host buffers of rows × cols (cols for w) f32, as the kernel
//! // requires, and nothing else touches them during the launch.
//! unsafe { sim::run(p) }.expect("launch");
//!
//! for r in 0..rows {
//!     let row = &x[r * cols..(r + 1) * cols];
//!     let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
//!     let inv = 1.0 / (ms + 1e-6).sqrt();
//!     for c in 0..cols {
//!         let want = (row[c] as f64 * inv) * w[c] as f64;
//!         let got = y[r * cols + c];
//!         assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "[{r}, {c}]: {got} vs {want}");
//!     }
//! }
//!
//! // A bad launch is an error naming the kernel, never a hang or a crash.
//! // SAFETY: the grid is empty, so the kernel body never runs.
//! let e = unsafe { sim::launch([0, 1, 1], [ROW_THREADS, 1, 1], 0, dfrt_kernels::norm::rms_norm_f32, p) }.unwrap_err();
//! assert_eq!(e.kind, sim::SimErrorKind::Launch);
//! assert_eq!(e.kernel, "rms_norm_f32");
//! ```
//!
//! # Adding a kernel
//!
//! 1. **Params.** In the module of its kind (`norm`, `elementwise`, `layout`, ...), declare a
//!    `#[repr(C)] #[derive(Clone, Copy, Debug)]` struct of plain fields: device pointers as
//!    `u64`, sizes as `u32`, scalars as `f32`. It is the kernel's only argument, passed by
//!    value, so host and device must agree on its layout.
//! 2. **Launch shape.** `impl Launch for YourParams`: grid, block and dynamic shared memory
//!    from the params alone (use [`grid_for`] for grid-stride loops). Backends and the
//!    simulator launch through this, so it is the one place the shape is decided.
//! 3. **Body.** Declare the entry point with the crate's `kernel!` macro:
//!    ```text
//!    kernel! {
//!        /// What it computes. # Safety: which pointers must be valid for what.
//!        pub unsafe fn your_op_f32(p: YourParams) { your_op::<f32>(p) }
//!    }
//!    ```
//!    Write the body once, generic over [`elem::Elem`], and add the bf16 entry taking
//!    [`elem::Bf16`]`<YourParams>`. Use only [`gpu`] for thread indices, shared memory,
//!    barriers and warp collectives, so the same source runs in the simulator. Use
//!    `kernel!(independent; ...)` when the threads never meet (no barrier, no collective):
//!    the simulator then runs them one after another, much faster. The macro implements
//!    [`Entry`] for the params type, which ties it to exactly one kernel name.
//! 4. **Lists.** Add the entry names to [`KERNELS`], and to [`HOT_KERNELS`] if they run on
//!    the hot path (then `cargo xtask ptx-report` fails on any stack frame or spill).
//! 5. **PTX.** Run `cargo xtask ptx` (needs the nightly with rust-src and llvm-tools) to
//!    rebuild the committed `ptx/dfrt_kernels.ptx`; `cargo xtask ptx --check` (CI) fails if
//!    the committed file is stale, and the `ptx_contract` test checks that [`PTX`]'s entry
//!    points are exactly [`KERNELS`].
//! 6. **Tests.** Run the kernel in the simulator on fresh random data with a poisoned output
//!    (as above) against a plain-Rust reference that follows the CPU backend op
//!    (`host/src/backend/cpu.rs`), in f32 and bf16, as `kernels/tests/sim_ops.rs` does.
//!
//! # Kernels for the `Backend` ops (host/src/backend)
//!
//! Every op kernel has an f32-storage and a bf16-storage entry (`*_f32`, `*_bf16`; bf16 data
//! is `u16` bits, math is f32). The bf16 entry takes [`elem::Bf16`]`(params)`, the same struct.
//!
//! | `Backend` op | kernel | params |
//! |---|---|---|
//! | `copy_rows` | `copy_rows_*` | [`layout::CopyRowsParams`] |
//! | `layer_norm` | `layer_norm_*` | [`norm::LayerNormParams`] |
//! | `norm_modulate` | `layer_norm_modulate_*` | [`norm::LayerNormModParams`] |
//! | `rms_norm` | `rms_norm_*` | [`norm::RmsNormParams`] |
//! | `rms_norm` + `rope` on q and k | `qk_norm_rope_*` | [`rope::QkNormRopeParams`] |
//! | `gelu_tanh` / `silu` / `add` | `gelu_tanh_*` / `silu_*` / `add_*` | [`elementwise::GeluParams`] / [`elementwise::SiluParams`] / [`elementwise::AddParams`] |
//! | `gated_residual` | `gated_residual_*` | [`elementwise::GatedResidualParams`] |
//! | `modulation` | `modulation_*` (one `[k, frames, dim]` buffer) | [`elementwise::ModulationParams`] |
//! | `rope` | `rope3d_*` (f32 cos/sin table from [`rope::rope_table`]) | [`rope::RopeParams`] |
//! | `sinusoid` | `sinusoid_*` (f64 freqs from [`elementwise::sinusoid_freqs`]) | [`elementwise::SinusoidParams`] |
//! | `patchify` / `unpatchify` | `patchify_*` / `unpatchify_*` | [`layout::PatchifyParams`] / [`layout::UnpatchifyParams`] |
//! | cache commit (`KvCache::commit`) | `kv_write_*` | [`layout::KvWriteParams`] |
//! | HMA compaction in one launch (not used by the host yet: `KvCache::replace_groups` regroups with `copy_rows_*`) | `kv_compact_*` | [`layout::KvCompactParams`] |
//! | calibration (`dummy::calibrate::layer_masses`) | `calib_mass_*` then `calib_mean_f32` | [`calib::CalibMassParams`], [`calib::CalibMeanParams`] |
//! | `attention_biased` (the umT5 encoder: relative bias, no scale) | `attn_bias_*` | [`attn_bias::AttnBiasParams`] |
//!
//! `upload`/`download`/`zeros` are copies and memsets, `linear` is cuBLASLt (a CPU GEMM on the
//! sim device), `attention` has its own kernels. Rolling-window eviction is ring-slot
//! bookkeeping in the host cache (no data moves); see [`layout`].
#![cfg_attr(target_arch = "nvptx64", no_std)]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, asm_experimental_arch, stdarch_nvptx)
)]

#[macro_use]
mod macros;
pub mod gpu;
#[cfg(not(target_arch = "nvptx64"))]
pub mod ptx;
#[cfg(not(target_arch = "nvptx64"))]
pub mod sim;

pub mod attention;
pub mod attn_bias;
pub mod calib;
pub mod elem;
pub mod elementwise;
pub mod layout;
pub mod norm;
pub mod rope;
#[doc(hidden)]
pub mod testk;

/// The committed PTX of all kernels (generated by `cargo xtask ptx`).
#[cfg(not(target_arch = "nvptx64"))]
pub const PTX: &str = include_str!("../ptx/dfrt_kernels.ptx");

/// Every kernel entry point in `PTX`, by name: the hot kernels, then the test kernels.
pub const KERNELS: &[&str] = &ALL_KERNELS;

/// Kernels that exist only for the simulator's and the device layer's own tests.
pub const TEST_KERNELS: &[&str] = &[
    "test_smem_oob",
    "test_divergent_barrier",
    "test_divergent_shfl",
    "test_independent_barrier",
    "test_warp_ops",
    "test_mma_tile",
    "test_cp_async",
];

const ALL_KERNELS: [&str; HOT_KERNELS.len() + TEST_KERNELS.len()] = {
    let mut all = [""; HOT_KERNELS.len() + TEST_KERNELS.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < HOT_KERNELS.len() {
            HOT_KERNELS[i]
        } else {
            TEST_KERNELS[i - HOT_KERNELS.len()]
        };
        i += 1;
    }
    all
};

/// Kernels on the hot path: `cargo xtask ptx-report` fails if any of them has a stack frame or
/// spills. (This list is read textually by xtask; keep it one string literal per kernel.)
pub const HOT_KERNELS: &[&str] = &[
    "attn_bias_f32",
    "attn_bias_bf16",
    "attn_bf16_d128",
    "attn_bf16_d128_w8",
    "attn_bf16_d64",
    "attn_f32",
    "add_f32",
    "add_bf16",
    "calib_mass_f32",
    "calib_mass_bf16",
    "calib_mean_f32",
    "copy_rows_f32",
    "copy_rows_bf16",
    "gated_residual_f32",
    "gated_residual_bf16",
    "gelu_tanh_f32",
    "gelu_tanh_bf16",
    "kv_compact_f32",
    "kv_compact_bf16",
    "kv_write_f32",
    "kv_write_bf16",
    "layer_norm_f32",
    "layer_norm_bf16",
    "layer_norm_modulate_f32",
    "layer_norm_modulate_bf16",
    "modulation_f32",
    "modulation_bf16",
    "patchify_f32",
    "patchify_bf16",
    "qk_norm_rope_f32",
    "qk_norm_rope_bf16",
    "rms_norm_f32",
    "rms_norm_bf16",
    "rope3d_f32",
    "rope3d_bf16",
    "silu_f32",
    "silu_bf16",
    "sinusoid_f32",
    "sinusoid_bf16",
    "unpatchify_f32",
    "unpatchify_bf16",
];

#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: trap aborts the kernel; there is nothing to unwind to on the device.
    unsafe { core::arch::nvptx::trap() }
}

/// Implemented (by the `kernel!` macro) for every params struct: the kernel it launches.
pub trait Entry: Copy + Send + Sync + 'static {
    /// The entry point's name in [`PTX`].
    const NAME: &'static str;
    /// The same kernel for the simulator.
    #[cfg(not(target_arch = "nvptx64"))]
    const SIM: sim::Kernel<Self>;
}

/// A params struct that also knows its launch shape. A host backend needs only this to launch
/// any kernel: load `P::NAME` from [`PTX`], launch with `p.dims()`, pass `p` by value as the
/// single argument. [`sim::run`] does the same in the simulator.
pub trait Launch: Entry {
    /// The launch shape for these params.
    fn dims(&self) -> LaunchDims;
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory per block.
    pub dyn_smem: u32,
}

/// Blocks for a grid-stride loop over `n` items with `threads` per block (capped: the loop
/// covers the rest).
///
/// ```
/// use dfrt_kernels::grid_for;
/// assert_eq!(grid_for(1000, 256), 4);
/// assert_eq!(grid_for(0, 256), 1); // never an empty grid
/// assert_eq!(grid_for(u32::MAX, 256), 4096);
/// ```
pub const fn grid_for(n: u32, threads: u32) -> u32 {
    let b = n.div_ceil(threads);
    if b == 0 {
        1
    } else if b > 4096 {
        4096
    } else {
        b
    }
}
