//! The tooling every dfrt test crate shares, so that each rule lives in one place:
//!
//! - [`golden`]: where the official code's outputs are (`$DFRT_GOLDEN_DIR` or
//!   `../shared/golden` beside the checkout) and a case's manifest;
//! - [`Scratch`]: a scratch directory that deletes itself;
//! - [`Rng`]: one seeded generator, a fresh seed per run unless `DFRT_TEST_SEED` is set;
//! - [`tol`]: the tolerance rules (relative L2, elementwise abs + rel, FlashAttention's 2×
//!   rule, bf16 ulps), each printing its evidence, NaN always failing;
//! - [`Guarded`]: an output buffer with poisoned guard words on both sides;
//! - [`Dtype`]: the storage types the kernels and backends run in.
//!
//! It depends on no dfrt crate, so the kernel crate's tests use it as well as the host's.

pub mod golden;
pub mod tol;

use std::path::{Path, PathBuf};

/// A scratch directory unique to this process and `tag`, removed (with its contents) on drop.
///
/// ```
/// let p = {
///     let s = dfrt_testkit::Scratch::new("doc");
///     std::fs::write(s.join("a.txt"), "x").unwrap();
///     assert!(s.join("a.txt").exists());
///     s.path().to_path_buf()
/// };
/// assert!(!p.exists());
/// ```
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("dfrt-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("scratch dir {}: {e}", d.display()));
        Scratch(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// xorshift64*. [`Rng::new`] takes its seed from `DFRT_TEST_SEED` or the clock and prints
/// it, so a failure can be replayed; [`Rng::seeded`] is for inputs a test pins.
///
/// ```
/// let mut a = dfrt_testkit::Rng::seeded(5);
/// let mut b = dfrt_testkit::Rng::seeded(5);
/// assert_eq!(a.vec(4, -1.0, 1.0), b.vec(4, -1.0, 1.0));
/// assert!(a.normals(1000).iter().all(|x| x.is_finite()));
/// ```
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("DFRT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: seed {seed} (replay with DFRT_TEST_SEED={seed})");
        Rng::seeded(seed)
    }
    pub fn seeded(seed: u64) -> Rng {
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
    /// Standard normals (Box–Muller on two uniforms in (0, 1]).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = ((self.u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let u2 = (self.u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }
}

/// Poison with a recognisable NaN.
pub const POISON: u32 = 0x7fc0_dead;
/// Guard words before and after an output.
pub const GUARD: usize = 64;

/// An f32 buffer with poisoned guard regions on both sides of its payload: what a kernel
/// writes outside its output shows up in [`Guarded::out`].
pub struct Guarded {
    buf: Vec<f32>,
    n: usize,
}

impl Guarded {
    /// Output buffer: everything poisoned.
    pub fn poisoned(n: usize) -> Guarded {
        Guarded { buf: vec![f32::from_bits(POISON); n + 2 * GUARD], n }
    }
    /// In/out buffer: `data` in the middle, guards poisoned.
    pub fn with(data: &[f32]) -> Guarded {
        let mut g = Guarded::poisoned(data.len());
        g.buf[GUARD..GUARD + data.len()].copy_from_slice(data);
        g
    }
    /// The payload's address (what a kernel's params take).
    pub fn ptr(&mut self) -> u64 {
        self.buf[GUARD..].as_mut_ptr() as u64
    }
    /// The payload; panics if a guard word was touched.
    pub fn out(&self) -> &[f32] {
        let bad = (0..GUARD).chain(GUARD + self.n..self.n + 2 * GUARD).find(|&i| self.buf[i].to_bits() != POISON);
        if let Some(i) = bad {
            let rel = i as i64 - GUARD as i64;
            panic!("kernel wrote outside its output: index {rel} (output has {} elements)", self.n);
        }
        &self.buf[GUARD..GUARD + self.n]
    }
}

/// The storage types the kernels and backends run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub const ALL: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}
