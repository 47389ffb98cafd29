//! Test helpers: a seeded RNG with a fresh seed per run, guarded and poisoned output buffers,
//! and a tolerance check that prints its evidence.
#![allow(dead_code)]

use dfrt_kernels::sim::{self, Engine, Kernel, Options, SimError};
use dfrt_kernels::LaunchDims;
use std::time::Duration;

/// xorshift64*; the seed comes from `DFRT_TEST_SEED` or the clock, and is printed so a failure
/// can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("DFRT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (replay with DFRT_TEST_SEED={seed})");
        Rng(seed | 1)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    /// Uniform in [lo, hi).
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }
}

/// Poison with a recognisable NaN.
pub const POISON: u32 = 0x7fc0_dead;
/// Guard words before and after an output.
pub const GUARD: usize = 64;

/// An f32 device buffer with poisoned guard regions on both sides.
pub struct Guarded {
    buf: Vec<f32>,
    n: usize,
}

impl Guarded {
    /// Output buffer: everything poisoned.
    pub fn poisoned(n: usize) -> Guarded {
        Guarded {
            buf: vec![f32::from_bits(POISON); n + 2 * GUARD],
            n,
        }
    }
    /// In/out buffer: `data` in the middle, guards poisoned.
    pub fn with(data: &[f32]) -> Guarded {
        let mut g = Guarded::poisoned(data.len());
        g.buf[GUARD..GUARD + data.len()].copy_from_slice(data);
        g
    }
    pub fn ptr(&mut self) -> u64 {
        self.buf[GUARD..].as_mut_ptr() as u64
    }
    /// The payload; panics if a guard word was touched.
    pub fn out(&self) -> &[f32] {
        let bad = (0..GUARD)
            .chain(GUARD + self.n..self.n + 2 * GUARD)
            .find(|&i| self.buf[i].to_bits() != POISON);
        if let Some(i) = bad {
            let rel = i as i64 - GUARD as i64;
            panic!(
                "kernel wrote outside its output: index {rel} (output has {} elements)",
                self.n
            );
        }
        &self.buf[GUARD..GUARD + self.n]
    }
}

/// |got - want| <= atol + rtol·|want| everywhere; NaN always fails. Prints the evidence.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // Written so that a NaN error counts as bad.
        let ok = err <= atol + rtol * w.abs();
        if !ok && first_bad.is_none() {
            first_bad = Some(i);
        }
        if err.is_finite() {
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / w.abs().max(1e-30));
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: mismatch at index {i}: got {} want {} (max abs err {max_abs:e}, max rel err {max_rel:e}, atol {atol:e}, rtol {rtol:e})",
            got[i], want[i]
        );
    }
}

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
