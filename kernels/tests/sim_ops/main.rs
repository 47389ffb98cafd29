//! The Backend-op kernels (f32 and bf16 storage) run in the SIMT simulator against plain-Rust
//! references that follow `host/src/backend/cpu.rs` op by op, including its bf16 rounding
//! points, on fresh random inputs, with poisoned outputs and guard regions.
//!
//! f32: compared to the f64 reference with small tolerances (the kernels sum in f32).
//! bf16: inputs are bf16 values; the reference is computed from exactly those values in f64
//! with the CPU backend's intermediate roundings, and the kernel's output must be within 1 bf16
//! ulp of the rounded reference (or within a small absolute error where a 1-ulp flip of an
//! intermediate shows up magnified by cancellation).

#[path = "../common/mod.rs"]
mod common;
use common::*;

use dfrt_kernels::elem::Bf16;
use dfrt_kernels::elementwise::*;
use dfrt_kernels::layout::*;
use dfrt_kernels::norm::*;
use dfrt_kernels::rope::*;
use dfrt_kernels::{sim, Entry, Launch};

mod attn_bias;
mod calib;
mod elementwise;
mod launch_shapes;
mod layout;
mod norm;
mod rope;

use norm::*;

// ---------------------------------------------------------------------------------------------
// bf16 helpers (written independently of the kernel crate's conversion)
// ---------------------------------------------------------------------------------------------

/// f32 → bf16 bits, round to nearest even.
pub(crate) fn bf(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    let lower = b & 0xffff;
    let mut hi = b >> 16;
    if lower > 0x8000 || (lower == 0x8000 && hi & 1 == 1) {
        hi += 1;
    }
    hi as u16
}
pub(crate) fn unbf(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}
pub(crate) fn r16(x: f64) -> f64 {
    unbf(bf(x as f32)) as f64
}
pub(crate) fn ident(x: f64) -> f64 {
    x
}

/// A recognisable bf16 NaN.
pub(crate) const POISON16: u16 = 0x7fd1;

/// A device input buffer in the storage dtype.
pub(crate) enum Input {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Input {
    fn ptr(&self) -> u64 {
        match self {
            Input::F32(v) => v.as_ptr() as u64,
            Input::Bf16(v) => v.as_ptr() as u64,
        }
    }
}

/// Random data in the storage dtype: the returned f32 values are exactly what the device holds.
pub(crate) fn data(rng: &mut Rng, n: usize, lo: f32, hi: f32, bf16: bool) -> (Vec<f32>, Input) {
    let v = rng.vec(n, lo, hi);
    stored(&v, bf16)
}

pub(crate) fn stored(v: &[f32], bf16: bool) -> (Vec<f32>, Input) {
    if bf16 {
        let h: Vec<u16> = v.iter().map(|&x| bf(x)).collect();
        (h.iter().map(|&x| unbf(x)).collect(), Input::Bf16(h))
    } else {
        (v.to_vec(), Input::F32(v.to_vec()))
    }
}

/// An output buffer with poisoned payload and guards.
pub(crate) enum Output {
    F32(Guarded),
    Bf16 { buf: Vec<u16>, n: usize },
}

impl Output {
    fn new(n: usize, bf16: bool) -> Output {
        if bf16 {
            Output::Bf16 {
                buf: vec![POISON16; n + 2 * GUARD],
                n,
            }
        } else {
            Output::F32(Guarded::poisoned(n))
        }
    }
    /// In/out buffer holding `init` (already in the storage dtype).
    fn with(init: &Input) -> Output {
        match init {
            Input::F32(v) => Output::F32(Guarded::with(v)),
            Input::Bf16(v) => {
                let mut buf = vec![POISON16; v.len() + 2 * GUARD];
                buf[GUARD..GUARD + v.len()].copy_from_slice(v);
                Output::Bf16 { buf, n: v.len() }
            }
        }
    }
    fn ptr(&mut self) -> u64 {
        match self {
            Output::F32(g) => g.ptr(),
            Output::Bf16 { buf, .. } => buf[GUARD..].as_mut_ptr() as u64,
        }
    }
    /// The payload as f32; panics if a guard was touched.
    fn values(&self) -> Vec<f32> {
        match self {
            Output::F32(g) => g.out().to_vec(),
            Output::Bf16 { buf, n } => {
                let bad = (0..GUARD)
                    .chain(GUARD + n..n + 2 * GUARD)
                    .find(|&i| buf[i] != POISON16);
                if let Some(i) = bad {
                    panic!(
                        "kernel wrote outside its output: index {} (output has {n} elements)",
                        i as i64 - GUARD as i64
                    );
                }
                buf[GUARD..GUARD + n].iter().map(|&h| unbf(h)).collect()
            }
        }
    }
}

/// Distance in bf16 ulps (via the ordered integer line).
pub(crate) fn ulps16(a: f32, b: f32) -> u32 {
    let ord = |h: u16| -> i32 {
        if h & 0x8000 != 0 {
            -((h & 0x7fff) as i32)
        } else {
            h as i32
        }
    };
    (ord(bf(a)) - ord(bf(b))).unsigned_abs()
}

/// Compares an output to its reference. f32: `|got − want| ≤ atol + rtol·|want|`. bf16: within
/// 1 ulp of `bf16(want)`, or within `bf_atol`. NaN always fails. Prints the evidence.
pub(crate) fn check(
    what: &str,
    bf16: bool,
    got: &[f32],
    want: &[f64],
    tol: (f64, f64),
    bf_atol: f64,
) {
    if !bf16 {
        assert_close(what, got, want, tol.0, tol.1);
        return;
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_ulps, mut max_abs, mut bad) = (0u32, 0f64, None);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let wr = r16(w) as f32;
        let u = if g.is_nan() || wr.is_nan() {
            u32::MAX
        } else {
            ulps16(g, wr)
        };
        let abs = (g as f64 - w).abs();
        if u != u32::MAX {
            max_ulps = max_ulps.max(u);
            max_abs = max_abs.max(abs);
        }
        // Written so that a NaN error counts as bad.
        let abs_ok = abs <= bf_atol;
        if u > 1 && !abs_ok && bad.is_none() {
            bad = Some(i);
        }
    }
    if let Some(i) = bad {
        panic!(
            "{what} (bf16): mismatch at index {i}: got {} want {} (rounded {}), max ulps {max_ulps}, max abs err {max_abs:e}, atol {bf_atol:e}",
            got[i],
            want[i],
            r16(want[i])
        );
    }
}

/// Runs the f32 or the bf16 kernel of `p` in the simulator.
pub(crate) fn run<P: Launch>(p: P, bf16: bool)
where
    Bf16<P>: Launch,
{
    // SAFETY: every test sizes its buffers for the shapes in `p`.
    let r = unsafe {
        if bf16 {
            sim::run(Bf16(p))
        } else {
            sim::run(p)
        }
    };
    r.unwrap();
}

pub(crate) const DTYPES: [bool; 2] = [false, true];

pub(crate) fn name(bf16: bool) -> &'static str {
    if bf16 {
        "bf16"
    } else {
        "f32"
    }
}

#[test]
fn params_name_their_kernels() {
    assert_eq!(RmsNormParams::NAME, "rms_norm_f32");
    assert_eq!(RopeParams::NAME, "rope3d_f32");
    assert_eq!(GatedResidualParams::SIM.name, "gated_residual_f32");
    for n in [
        LayerNormModParams::NAME,
        GeluParams::NAME,
        GatedResidualParams::NAME,
    ] {
        assert!(dfrt_kernels::KERNELS.contains(&n), "{n}");
    }
}
