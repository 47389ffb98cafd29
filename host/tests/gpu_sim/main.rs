//! The GPU path (`GpuBackend`) on the simulated device, and on CUDA where a GPU is present.
//!
//! - Every backend op against the CPU reference on fresh random inputs (ggml test-backend-ops
//!   style), in f32 and bf16.
//! - The golden cases through `dfrt generate --device sim`: f32 within 1e-4 relative L2 of the
//!   official latents, `tiny-full-bf16` within the CPU bf16 bound (1.5e-2).
//! - The memory plan: no device allocation after preparation, across every chunk; the
//!   estimate bounds the measured peak; a device that is too small fails before generating.
//! - Graphs: a captured forward replays bit for bit; sessions that replay each chunk's
//!   denoising forward from a graph give the latents of direct launches, bit for bit.
//! - CUDA: the same op comparison on a real GPU, or `skipped: <reason>` without one; a session
//!   on a caller's stream; and `--device cuda` without a GPU is a clear error, not a panic.

use std::sync::Arc;

use dfrt::api::SessionOptions;
use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::gpu::{AttnRows, GeluEpilogue, GpuBackend, GpuOptions, GpuTensor};
use dfrt::backend::{Backend, Precision, Seg};
use dfrt::checkpoint::TensorFile;
use dfrt::dummy::calibrate::{layer_masses, KeySegment};
use dfrt::error::DeviceError;
use dfrt::gpu::{CudaDevice, Device, Epilogue, Gemm, SimDevice};
use dfrt::pipeline::{Graphs, Latent, Noise, Rng, Session};
use dfrt::policy::Policy;
use dfrt::run::{MemoryPlan, ModelSource};
use dfrt_testkit::Rng as TestRng;

#[path = "../common/mod.rs"]
mod common;
use common::{case_config, checkpoint, dfrt, golden, rel_l2, tmp};

mod cuda;
mod golden_cli;
mod graphs;
mod memory_plan;
mod ops;

use golden_cli::*;
use ops::*;
