//! Test helpers for the kernel tests: the shared test kit (a seeded RNG with a fresh seed per
//! run, guarded and poisoned output buffers, tolerance checks that print their evidence) and
//! the simulator launchers.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use dfrt_kernels::sim::{self, Engine, Kernel, Options, SimError};
use dfrt_kernels::LaunchDims;
use std::time::Duration;

pub use dfrt_testkit::tol::assert_close;
pub use dfrt_testkit::{Guarded, Rng, GUARD, POISON};

/// Runs a kernel in the simulator with its dims.
pub fn launch<P: Copy + Send + Sync>(k: Kernel<P>, dims: LaunchDims, p: P) -> Result<(), SimError> {
    // SAFETY: the tests size every buffer for the shapes in `p`.
    unsafe { sim::launch(dims.grid, dims.block, dims.dyn_smem, k, p) }
}

/// Both simulator engines.
pub const ENGINES: [Engine; 2] = [Engine::Fibers, Engine::Threads];

/// Runs a kernel in the simulator on the given engine, with a wait limit.
pub fn launch_on<P: Copy + Send + Sync>(
    engine: Engine,
    timeout: Duration,
    k: Kernel<P>,
    dims: LaunchDims,
    p: P,
) -> Result<(), SimError> {
    // The PTX CI pass (`DFRT_SIM_ENGINE=ptx` or `dual`) runs these on the PTX engine too.
    let engine = sim::ptx_engine_from_env().unwrap_or(engine);
    let opts = Options { timeout, engine };
    // SAFETY: the tests size every buffer for the shapes in `p`.
    unsafe { sim::launch_with(opts, dims.grid, dims.block, dims.dyn_smem, k, p) }
}
