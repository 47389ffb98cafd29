//! The Backend-op kernels (f32 and bf16 storage) run in the SIMT simulator against plain-Rust
//! references that follow `host/src/backend/cpu.rs` op by op, including its bf16 rounding
//! points, on fresh random inputs, with poisoned outputs and guard regions.
//!
//! f32: compared to the f64 reference with small tolerances (the kernels sum in f32).
//! bf16: inputs are bf16 values; the reference is computed from exactly those values in f64
//! with the CPU backend's intermediate roundings, and the kernel's output must be within 1 bf16
//! ulp of the rounded reference (or within a small absolute error where a 1-ulp flip of an
//! intermediate shows up magnified by cancellation).

mod common;
use common::*;

use dfrt_kernels::elem::Bf16;
use dfrt_kernels::elementwise::*;
use dfrt_kernels::layout::*;
use dfrt_kernels::norm::*;
use dfrt_kernels::rope::*;
use dfrt_kernels::{sim, Launch};

// ---------------------------------------------------------------------------------------------
// bf16 helpers (written independently of the kernel crate's conversion)
// ---------------------------------------------------------------------------------------------

/// f32 → bf16 bits, round to nearest even.
fn bf(x: f32) -> u16 {
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
fn unbf(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}
fn r16(x: f64) -> f64 {
    unbf(bf(x as f32)) as f64
}
fn ident(x: f64) -> f64 {
    x
}

/// A recognisable bf16 NaN.
const POISON16: u16 = 0x7fd1;

/// A device input buffer in the storage dtype.
enum Input {
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
fn data(rng: &mut Rng, n: usize, lo: f32, hi: f32, bf16: bool) -> (Vec<f32>, Input) {
    let v = rng.vec(n, lo, hi);
    stored(&v, bf16)
}

fn stored(v: &[f32], bf16: bool) -> (Vec<f32>, Input) {
    if bf16 {
        let h: Vec<u16> = v.iter().map(|&x| bf(x)).collect();
        (h.iter().map(|&x| unbf(x)).collect(), Input::Bf16(h))
    } else {
        (v.to_vec(), Input::F32(v.to_vec()))
    }
}

/// An output buffer with poisoned payload and guards.
enum Output {
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
fn ulps16(a: f32, b: f32) -> u32 {
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
fn check(what: &str, bf16: bool, got: &[f32], want: &[f64], tol: (f64, f64), bf_atol: f64) {
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
fn run<P: Launch>(p: P, bf16: bool)
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

const DTYPES: [bool; 2] = [false, true];

fn name(bf16: bool) -> &'static str {
    if bf16 {
        "bf16"
    } else {
        "f32"
    }
}

// ---------------------------------------------------------------------------------------------
// Norms
// ---------------------------------------------------------------------------------------------

fn rms_ref(x: &[f32], w: &[f32], cols: usize, eps: f32, r: fn(f64) -> f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
        let rs = 1.0 / (ms + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            out.push(r(v as f64 * rs) * w[j] as f64);
        }
    }
    out
}

#[test]
fn rms_norm_both_dtypes() {
    let mut rng = Rng::new("rms_norm_both_dtypes");
    for bf16 in DTYPES {
        for &(rows, cols) in &[(5u32, 333u32), (2, 1030)] {
            let (x, xd) = data(&mut rng, (rows * cols) as usize, -3.0, 3.0, bf16);
            let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = RmsNormParams {
                x: xd.ptr(),
                w: wd.ptr(),
                y: y.ptr(),
                rows,
                cols,
                eps: 1e-6,
            };
            run(p, bf16);
            let want = rms_ref(&x, &w, cols as usize, 1e-6, if bf16 { r16 } else { ident });
            check(
                &format!("rms_norm {} {rows}x{cols}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (1e-5, 1e-5),
                0.0,
            );
        }
    }
}

fn mean_rstd(row: &[f32], eps: f32) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

#[test]
fn layer_norm_with_and_without_affine() {
    let mut rng = Rng::new("layer_norm");
    for bf16 in DTYPES {
        for affine in [true, false] {
            let (rows, cols) = (6u32, 301u32);
            // An offset mean makes a one-pass variance visibly wrong.
            let (x, xd) = data(&mut rng, (rows * cols) as usize, 4.0, 9.0, bf16);
            let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, bf16);
            let (b, bd) = data(&mut rng, cols as usize, -1.0, 1.0, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = LayerNormParams {
                x: xd.ptr(),
                w: if affine { wd.ptr() } else { 0 },
                b: if affine { bd.ptr() } else { 0 },
                y: y.ptr(),
                rows,
                cols,
                eps: 1e-6,
            };
            run(p, bf16);
            let c = cols as usize;
            let mut want = vec![0f64; x.len()];
            for r in 0..rows as usize {
                let (mean, rstd) = mean_rstd(&x[r * c..][..c], 1e-6);
                for j in 0..c {
                    let n = (x[r * c + j] as f64 - mean) * rstd;
                    want[r * c + j] = if affine {
                        n * w[j] as f64 + b[j] as f64
                    } else {
                        n
                    };
                }
            }
            // The f32 kernel's statistics carry f32 error on O(10)-sized inputs.
            check(
                &format!("layer_norm {} affine {affine}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (3e-5, 3e-5),
                1e-6,
            );
        }
    }
}

#[test]
fn layer_norm_modulate_both_dtypes() {
    let mut rng = Rng::new("layer_norm_modulate_both_dtypes");
    for bf16 in DTYPES {
        let (rows, cols, rpf) = (9u32, 333u32, 4u32);
        let frames = rows.div_ceil(rpf) as usize;
        let (x, xd) = data(&mut rng, (rows * cols) as usize, 5.0, 9.0, bf16);
        let (shift, shd) = data(&mut rng, frames * cols as usize, -1.0, 1.0, bf16);
        let (scale, scd) = data(&mut rng, frames * cols as usize, -0.5, 0.5, bf16);
        // In place for bf16 (the kernel allows y == x), out of place for f32.
        let mut y = if bf16 {
            Output::with(&xd)
        } else {
            Output::new(x.len(), bf16)
        };
        let p = LayerNormModParams {
            x: if bf16 { y.ptr() } else { xd.ptr() },
            shift: shd.ptr(),
            scale: scd.ptr(),
            y: y.ptr(),
            rows,
            cols,
            rows_per_frame: rpf,
            eps: 1e-6,
        };
        run(p, bf16);
        let r = if bf16 { r16 } else { ident };
        let c = cols as usize;
        let mut want = vec![0f64; x.len()];
        for i in 0..rows as usize {
            let (mean, rstd) = mean_rstd(&x[i * c..][..c], 1e-6);
            let f = i / rpf as usize;
            for j in 0..c {
                let n = r((x[i * c + j] as f64 - mean) * rstd);
                let s1 = r(1.0 + scale[f * c + j] as f64);
                want[i * c + j] = r(n * s1) + shift[f * c + j] as f64;
            }
        }
        // bf16: a 1-ulp flip of the rounded product can meet cancellation with the shift.
        check(
            &format!("layer_norm_modulate {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (3e-5, 3e-5),
            2f64.powi(-7),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}
fn silu_ref(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn gelu_and_silu_both_dtypes() {
    let mut rng = Rng::new("gelu_and_silu");
    for bf16 in DTYPES {
        let mut v = rng.vec(777, -8.0, 8.0);
        v.extend([0.0, -0.0, 20.0, -20.0, 1e-3, -1e-3, 90.0, -90.0]);
        let (x, xd) = stored(&v, bf16);
        let mut y = Output::new(x.len(), bf16);
        run(
            GeluParams {
                x: xd.ptr(),
                y: y.ptr(),
                n: x.len() as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x.iter().map(|&v| gelu_ref(v as f64)).collect();
        // The f64 formula's tail underflows to -0 (as the CPU's f32 one does) where the kernel's
        // x·sigmoid(2u) form keeps a ~1e-21 value: an absolute floor covers that.
        check(
            &format!("gelu {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (1e-6, 1e-5),
            1e-6,
        );
        let mut y = Output::new(x.len(), bf16);
        run(
            SiluParams {
                x: xd.ptr(),
                y: y.ptr(),
                n: x.len() as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x.iter().map(|&v| silu_ref(v as f64)).collect();
        check(
            &format!("silu {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (1e-6, 1e-5),
            1e-6,
        );
    }
}

#[test]
fn add_both_dtypes() {
    let mut rng = Rng::new("add");
    for bf16 in DTYPES {
        let n = 1500;
        let (x, xd) = data(&mut rng, n, -4.0, 4.0, bf16);
        let (y, yd) = data(&mut rng, n, -4.0, 4.0, bf16);
        let mut o = Output::new(n, bf16);
        run(
            AddParams {
                x: xd.ptr(),
                y: yd.ptr(),
                out: o.ptr(),
                n: n as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        // One rounding of an exact sum: bit-exact in both dtypes.
        check(
            &format!("add {}", name(bf16)),
            bf16,
            &o.values(),
            &want,
            (0.0, 6e-8),
            0.0,
        );
    }
}

#[test]
fn gated_residual_both_dtypes() {
    let mut rng = Rng::new("gated_residual_both_dtypes");
    for bf16 in DTYPES {
        for in_place in [false, true] {
            let (rows, cols, rpf) = (11u32, 37u32, 3u32);
            let frames = rows.div_ceil(rpf) as usize;
            let (x, xd) = data(&mut rng, (rows * cols) as usize, -2.0, 2.0, bf16);
            let (y, yd) = data(&mut rng, x.len(), -2.0, 2.0, bf16);
            let (g, gd) = data(&mut rng, frames * cols as usize, -1.0, 1.0, bf16);
            let mut out = if in_place {
                Output::with(&xd)
            } else {
                Output::new(x.len(), bf16)
            };
            let p = GatedResidualParams {
                x: if in_place { out.ptr() } else { xd.ptr() },
                y: yd.ptr(),
                gate: gd.ptr(),
                out: out.ptr(),
                rows,
                cols,
                rows_per_frame: rpf,
            };
            run(p, bf16);
            let r = if bf16 { r16 } else { ident };
            let c = cols as usize;
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    x[i] as f64 + r(y[i] as f64 * g[(i / c / rpf as usize) * c + i % c] as f64)
                })
                .collect();
            check(
                &format!("gated_residual {} in_place {in_place}", name(bf16)),
                bf16,
                &out.values(),
                &want,
                (1e-6, 1e-6),
                0.0,
            );
        }
    }
}

#[test]
fn modulation_both_dtypes() {
    let mut rng = Rng::new("modulation");
    for bf16 in DTYPES {
        let (frames, k, dim) = (3u32, 6u32, 37u32);
        let (table, td) = data(&mut rng, (k * dim) as usize, -1.0, 1.0, bf16);
        let (e, ed) = data(&mut rng, (frames * k * dim) as usize, -1.0, 1.0, bf16);
        let mut out = Output::new((k * frames * dim) as usize, bf16);
        let p = ModulationParams {
            table: td.ptr(),
            e: ed.ptr(),
            out: out.ptr(),
            frames,
            k,
            dim,
        };
        p.check().unwrap();
        run(p, bf16);
        // out[i] is Backend::modulation's i-th [frames, dim] tensor.
        let (f_, k_, d_) = (frames as usize, k as usize, dim as usize);
        let mut want = vec![0f64; f_ * k_ * d_];
        for i in 0..k_ {
            for f in 0..f_ {
                for j in 0..d_ {
                    want[(i * f_ + f) * d_ + j] =
                        table[i * d_ + j] as f64 + e[f * k_ * d_ + i * d_ + j] as f64;
                }
            }
        }
        check(
            &format!("modulation {}", name(bf16)),
            bf16,
            &out.values(),
            &want,
            (0.0, 6e-8),
            0.0,
        );
    }
}

#[test]
fn sinusoid_both_dtypes() {
    let mut rng = Rng::new("sinusoid");
    for bf16 in DTYPES {
        for dim in [256u32, 31] {
            // Timesteps as the scheduler makes them (0..1000), plus edge values.
            let mut t = rng.vec(5, 0.0, 1000.0);
            t.extend([0.0, 999.0, 1.5, -3.25]);
            let freqs = sinusoid_freqs(dim);
            let mut y = Output::new(t.len() * dim as usize, bf16);
            let p = SinusoidParams {
                t: t.as_ptr() as u64,
                freqs: freqs.as_ptr() as u64,
                y: y.ptr(),
                n: t.len() as u32,
                dim,
            };
            run(p, bf16);
            // The CPU reference: f64 cos/sin of the f64 angle, rounded to f32 (then bf16).
            let half = (dim / 2) as usize;
            let mut want = vec![0f64; t.len() * dim as usize];
            for (i, &ti) in t.iter().enumerate() {
                for j in 0..half {
                    let a = ti as f64 * 10000f64.powf(-(j as f64) / half as f64);
                    want[i * dim as usize + j] = a.cos() as f32 as f64;
                    want[i * dim as usize + half + j] = a.sin() as f32 as f64;
                }
            }
            // f32: at most 1 f32 ulp (values ≤ 1) from the correctly rounded f64 result.
            check(
                &format!("sinusoid {} dim {dim}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (6e-8, 0.0),
                0.0,
            );
        }
    }
}

#[test]
fn cos_sin_f64_is_accurate() {
    let mut rng = Rng::new("cos_sin_f64");
    let mut worst = 0f64;
    for _ in 0..20000 {
        let a = rng.f32(-2000.0, 2000.0) as f64 * (1.0 + rng.f32(0.0, 1e-3) as f64);
        let (c, s) = cos_sin_f64(a);
        worst = worst.max((c - a.cos()).abs()).max((s - a.sin()).abs());
    }
    assert!(worst < 1e-13, "cos_sin_f64: max abs error {worst:e}");
}

// ---------------------------------------------------------------------------------------------
// RoPE and the fused q/k prologue
// ---------------------------------------------------------------------------------------------

/// `Backend::rope` (cpu.rs): f64 angles and rotation, one rounding (done by `check`).
fn rope_ref(x: &[f32], grid: [u32; 3], heads: u32, d: u32, start: u32) -> Vec<f64> {
    let [_, h, w] = grid.map(|v| v as usize);
    let (c, d) = ((d / 2) as usize, d as usize);
    let parts = [c - 2 * (c / 3), c / 3, c / 3];
    let freq =
        |part: usize, j: usize| 1.0 / 10000f64.powf((2 * j) as f64 / (2 * parts[part]) as f64);
    let cols = heads as usize * d;
    let mut out = vec![0f64; x.len()];
    for t in 0..x.len() / cols {
        let pos = [start as usize + t / (h * w), (t / w) % h, t % w];
        for head in 0..heads as usize {
            for p in 0..c {
                let (part, j) = if p < parts[0] {
                    (0, p)
                } else if p < parts[0] + parts[1] {
                    (1, p - parts[0])
                } else {
                    (2, p - parts[0] - parts[1])
                };
                let a = pos[part] as f64 * freq(part, j);
                let i = t * cols + head * d + 2 * p;
                let (re, im) = (x[i] as f64, x[i + 1] as f64);
                out[i] = re * a.cos() - im * a.sin();
                out[i + 1] = re * a.sin() + im * a.cos();
            }
        }
    }
    out
}

#[test]
fn rope3d_both_dtypes() {
    let mut rng = Rng::new("rope3d_both_dtypes");
    for bf16 in DTYPES {
        for &(f, h, w, heads, d, start) in
            &[(2u32, 3u32, 5u32, 3u32, 20u32, 4u32), (1, 4, 4, 1, 128, 17)]
        {
            let rows = 24;
            let table = rope_table(d, rows);
            let (x, xd) = data(&mut rng, (f * h * w * heads * d) as usize, -2.0, 2.0, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = RopeParams {
                x: xd.ptr(),
                y: y.ptr(),
                table: table.as_ptr() as u64,
                f,
                h,
                w,
                heads,
                head_dim: d,
                start_frame: start,
                table_rows: rows,
            };
            p.check().unwrap();
            run(p, bf16);
            let want = rope_ref(&x, [f, h, w], heads, d, start);
            check(
                &format!("rope3d {} f{f} h{h} w{w} d{d}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (2e-6, 2e-6),
                2e-7,
            );
        }
    }
}

#[test]
fn qk_norm_rope_matches_rms_norm_then_rope() {
    let mut rng = Rng::new("qk_norm_rope");
    for bf16 in DTYPES {
        for &(f, h, w, heads, d, start, with_k, in_place) in &[
            (2u32, 2u32, 3u32, 3u32, 20u32, 5u32, true, false),
            (1, 3, 2, 2, 64, 0, true, true),
            (3, 1, 2, 2, 12, 2, false, false),
        ] {
            let rows = 16;
            let table = rope_table(d, rows);
            let n = (f * h * w * heads * d) as usize;
            let cols = (heads * d) as usize;
            let (q, qd) = data(&mut rng, n, -3.0, 3.0, bf16);
            let (k, kd) = data(&mut rng, n, -3.0, 3.0, bf16);
            let (wq, wqd) = data(&mut rng, cols, 0.5, 1.5, bf16);
            let (wk, wkd) = data(&mut rng, cols, 0.5, 1.5, bf16);
            let (mut qo, mut ko) = if in_place {
                (Output::with(&qd), Output::with(&kd))
            } else {
                (Output::new(n, bf16), Output::new(n, bf16))
            };
            let p = QkNormRopeParams {
                q: if in_place { qo.ptr() } else { qd.ptr() },
                k: if !with_k {
                    0
                } else if in_place {
                    ko.ptr()
                } else {
                    kd.ptr()
                },
                wq: wqd.ptr(),
                wk: wkd.ptr(),
                q_out: qo.ptr(),
                k_out: ko.ptr(),
                table: table.as_ptr() as u64,
                f,
                h,
                w,
                heads,
                head_dim: d,
                start_frame: start,
                table_rows: rows,
                eps: 1e-6,
            };
            p.check().unwrap();
            run(p, bf16);
            let r = if bf16 { r16 } else { ident };
            for (what, x, wt, out) in [("q", &q, &wq, &qo), ("k", &k, &wk, &ko)] {
                if what == "k" && !with_k {
                    // k untouched: still the poison (or the input when in place).
                    assert!(
                        out.values().iter().all(|v| v.is_nan()),
                        "k written although k = 0"
                    );
                    continue;
                }
                // cpu: rms_norm (rounded), then rope on the rounded values.
                let normed: Vec<f32> = rms_ref(x, wt, cols, 1e-6, r)
                    .iter()
                    .map(|&v| r(v) as f32)
                    .collect();
                let want = rope_ref(&normed, [f, h, w], heads, d, start);
                check(
                    &format!("qk_norm_rope {} {what} f{f} h{h} w{w} heads{heads} d{d} in_place {in_place}", name(bf16)),
                    bf16,
                    &out.values(),
                    &want,
                    (1e-5, 1e-5),
                    // A 1-ulp flip of a normalised input moves the rotated pair by ~1 ulp of
                    // the pair's magnitude.
                    2f64.powi(-6),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout and copies
// ---------------------------------------------------------------------------------------------

#[test]
fn patchify_and_unpatchify_match_cpu_layouts() {
    let mut rng = Rng::new("patchify");
    for bf16 in DTYPES {
        let (f, c, hh, ww, ph, pw) = (2u32, 3u32, 4u32, 6u32, 2u32, 3u32);
        let (x, xd) = data(&mut rng, (f * c * hh * ww) as usize, -1.0, 1.0, bf16);
        let (gh, gw) = (hh / ph, ww / pw);
        let feat = (c * ph * pw) as usize;
        let mut y = Output::new(x.len(), bf16);
        let p = PatchifyParams {
            x: xd.ptr(),
            y: y.ptr(),
            f,
            c,
            hh,
            ww,
            ph,
            pw,
        };
        p.check().unwrap();
        run(p, bf16);
        // cpu.rs patchify, loop for loop.
        let mut want = vec![0f64; x.len()];
        let (c_, hh_, ww_, ph_, pw_) = (
            c as usize,
            hh as usize,
            ww as usize,
            ph as usize,
            pw as usize,
        );
        for fi in 0..f as usize {
            for i in 0..gh as usize {
                for j in 0..gw as usize {
                    let tok = (fi * gh as usize + i) * gw as usize + j;
                    for ci in 0..c_ {
                        for a in 0..ph_ {
                            for b in 0..pw_ {
                                want[tok * feat + (ci * ph_ + a) * pw_ + b] = x
                                    [((fi * c_ + ci) * hh_ + i * ph_ + a) * ww_ + j * pw_ + b]
                                    as f64;
                            }
                        }
                    }
                }
            }
        }
        check(
            &format!("patchify {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
        assert!(PatchifyParams { hh: 5, ..p }.check().is_err());

        // unpatchify: channel-fastest features → latent.
        let (z, zd) = data(&mut rng, x.len(), -1.0, 1.0, bf16);
        let mut out = Output::new(x.len(), bf16);
        let p = UnpatchifyParams {
            x: zd.ptr(),
            y: out.ptr(),
            f,
            gh,
            gw,
            ph,
            pw,
            c,
        };
        p.check().unwrap();
        run(p, bf16);
        let mut want = vec![0f64; x.len()];
        for fi in 0..f as usize {
            for i in 0..gh as usize {
                for j in 0..gw as usize {
                    let tok = (fi * gh as usize + i) * gw as usize + j;
                    for a in 0..ph_ {
                        for b in 0..pw_ {
                            for ci in 0..c_ {
                                want[((fi * c_ + ci) * hh_ + i * ph_ + a) * ww_ + j * pw_ + b] =
                                    z[tok * feat + (a * pw_ + b) * c_ + ci] as f64;
                            }
                        }
                    }
                }
            }
        }
        check(
            &format!("unpatchify {}", name(bf16)),
            bf16,
            &out.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}

#[test]
fn copy_rows_is_backend_copy_rows() {
    let mut rng = Rng::new("copy_rows");
    for bf16 in DTYPES {
        let (rows, cols, src_stride, src_off) = (7u32, 13u32, 40u32, 5usize);
        let (src, sd) = data(
            &mut rng,
            src_off + (rows * src_stride) as usize,
            -1.0,
            1.0,
            bf16,
        );
        // The destination already holds data; only the copied window may change.
        let (dst0, dd) = data(&mut rng, 200, -1.0, 1.0, bf16);
        let mut dst = Output::with(&dd);
        let dst_off = 9usize;
        let esz = if bf16 { 2 } else { 4 };
        let p = CopyRowsParams {
            dst: dst.ptr() + (dst_off * esz) as u64,
            src: sd.ptr() + (src_off * esz) as u64,
            dst_stride: cols,
            src_stride,
            rows,
            cols,
        };
        p.check().unwrap();
        run(p, bf16);
        let mut want: Vec<f64> = dst0.iter().map(|&v| v as f64).collect();
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                want[dst_off + r * cols as usize + c] =
                    src[src_off + r * src_stride as usize + c] as f64;
            }
        }
        check(
            &format!("copy_rows {}", name(bf16)),
            bf16,
            &dst.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}

/// Where element (row r, head h, col c) lives in a buffer with (row, head) strides.
fn at(r: usize, h: usize, c: usize, row_stride: usize, head_stride: usize) -> usize {
    h * head_stride + r * row_stride + c
}

#[test]
fn kv_write_gathers_a_groups_heads_into_a_slot() {
    let mut rng = Rng::new("kv_write");
    for bf16 in DTYPES {
        // Chunk K/V [frames·tpf, heads·d]; write frame 1's rows of heads [4, 1, 2] into a slot,
        // once token-major [tpf, 3·d] and once head-major [3, tpf, d]; d odd once (bf16 then
        // copies element by element).
        for &(d, token_major, with_v) in &[(8usize, true, true), (8, false, true), (5, true, false)]
        {
            let (heads, tpf, frames) = (5usize, 6usize, 3usize);
            let group: Vec<u32> = vec![4, 1, 2];
            let gh = group.len();
            let (k, kd) = data(&mut rng, frames * tpf * heads * d, -2.0, 2.0, bf16);
            let (v, vd) = data(&mut rng, frames * tpf * heads * d, -2.0, 2.0, bf16);
            let (mut ks, mut vs) = (
                Output::new(tpf * gh * d, bf16),
                Output::new(tpf * gh * d, bf16),
            );
            let esz = if bf16 { 2 } else { 4 };
            let frame_off = (tpf * heads * d * esz) as u64;
            let (drs, dhs) = if token_major {
                (gh * d, d)
            } else {
                (d, tpf * d)
            };
            let p = KvWriteParams {
                job: HeadCopyJob {
                    src_k: kd.ptr() + frame_off,
                    src_v: if with_v { vd.ptr() + frame_off } else { 0 },
                    dst_k: ks.ptr(),
                    dst_v: if with_v { vs.ptr() } else { 0 },
                    heads: group.as_ptr() as u64,
                    n_heads: gh as u32,
                    _pad: 0,
                },
                shape: HeadCopyShape {
                    rows: tpf as u32,
                    head_dim: d as u32,
                    src_row_stride: (heads * d) as u32,
                    src_head_stride: d as u32,
                    dst_row_stride: drs as u32,
                    dst_head_stride: dhs as u32,
                },
            };
            p.check().unwrap();
            run(p, bf16);
            for (what, src, out) in [("k", &k, &ks), ("v", &v, &vs)] {
                let got = out.values();
                if what == "v" && !with_v {
                    assert!(
                        got.iter().all(|x| x.is_nan()),
                        "v written although dst_v = 0"
                    );
                    continue;
                }
                let mut want = vec![f64::NAN; tpf * gh * d];
                for (gi, &h) in group.iter().enumerate() {
                    for r in 0..tpf {
                        for c in 0..d {
                            want[at(r, gi, c, drs, dhs)] =
                                src[(tpf + r) * heads * d + h as usize * d + c] as f64;
                        }
                    }
                }
                check(
                    &format!(
                        "kv_write {} {what} d{d} token_major {token_major}",
                        name(bf16)
                    ),
                    bf16,
                    &got,
                    &want,
                    (0.0, 0.0),
                    0.0,
                );
            }
        }
    }
}

#[test]
fn kv_compact_moves_retained_frames_into_group_slots() {
    let mut rng = Rng::new("kv_compact");
    for bf16 in DTYPES {
        // Phase-1 layout: one group of all heads, 4 frame slots [heads, tpf, d] (head-major, as
        // host/src/cache). After DHP: sink group [0, 3] keeps frame slot 0; neighbor group [2]
        // keeps slots 1..4; dummy group [1, 4] keeps the last slot; plus an empty group (no jobs).
        let (heads, tpf, d, slots) = (5usize, 4usize, 6usize, 4usize);
        let slot_len = heads * tpf * d;
        let old_k: Vec<(Vec<f32>, Input)> = (0..slots)
            .map(|_| data(&mut rng, slot_len, -2.0, 2.0, bf16))
            .collect();
        let old_v: Vec<(Vec<f32>, Input)> = (0..slots)
            .map(|_| data(&mut rng, slot_len, -2.0, 2.0, bf16))
            .collect();
        let groups: Vec<(Vec<u32>, Vec<usize>)> = vec![
            (vec![0, 3], vec![0]),
            (vec![2], vec![1, 2, 3]),
            (vec![1, 4], vec![3]),
            (vec![], vec![]),
        ];
        let mut outs = Vec::new(); // (group, frame slot, K out, V out)
        let mut jobs = Vec::new();
        for (gi, (hs, frames)) in groups.iter().enumerate() {
            for &s in frames {
                let mut ko = Output::new(hs.len() * tpf * d, bf16);
                let mut vo = Output::new(hs.len() * tpf * d, bf16);
                jobs.push(HeadCopyJob {
                    src_k: old_k[s].1.ptr(),
                    src_v: old_v[s].1.ptr(),
                    dst_k: ko.ptr(),
                    dst_v: vo.ptr(),
                    heads: hs.as_ptr() as u64,
                    n_heads: hs.len() as u32,
                    _pad: 0,
                });
                outs.push((gi, s, ko, vo));
            }
        }
        let p = KvCompactParams {
            jobs: jobs.as_ptr() as u64,
            n_jobs: jobs.len() as u32,
            max_heads: 3,
            shape: HeadCopyShape {
                rows: tpf as u32,
                head_dim: d as u32,
                src_row_stride: d as u32,
                src_head_stride: (tpf * d) as u32,
                dst_row_stride: d as u32,
                dst_head_stride: (tpf * d) as u32,
            },
        };
        p.check().unwrap();
        run(p, bf16);
        for (gi, s, ko, vo) in &outs {
            let hs = &groups[*gi].0;
            for (what, src, out) in [("k", &old_k[*s].0, ko), ("v", &old_v[*s].0, vo)] {
                let mut want = vec![0f64; hs.len() * tpf * d];
                for (pi, &h) in hs.iter().enumerate() {
                    for r in 0..tpf {
                        for c in 0..d {
                            want[(pi * tpf + r) * d + c] =
                                src[(h as usize * tpf + r) * d + c] as f64;
                        }
                    }
                }
                check(
                    &format!("kv_compact {} group {gi} slot {s} {what}", name(bf16)),
                    bf16,
                    &out.values(),
                    &want,
                    (0.0, 0.0),
                    0.0,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calibration statistic
// ---------------------------------------------------------------------------------------------

use dfrt_kernels::calib::*;

#[test]
fn calib_masses_match_the_cpu_statistic() {
    let mut rng = Rng::new("calib");
    for bf16 in DTYPES {
        // (tokens per frame, heads, head dim, cached frames incl. frame 0, ar_start,
        //  cache as one token-major segment, query scale)
        for &(tpf, heads, d, cached, ar, one_seg, qs) in &[
            (4usize, 3usize, 16usize, 3usize, 1usize, false, 1.0f32),
            (5, 2, 32, 4, 2, true, 3.0),
            (3, 2, 8, 5, 1, true, 6.0),
        ] {
            let l = 3 * tpf;
            let n = cached * tpf + l;
            let (q, qd) = data(&mut rng, l * heads * d, -qs, qs, bf16);
            // All keys in one [n, heads, d] array for the reference.
            let (kall, _) = data(&mut rng, n * heads * d, -1.0, 1.0, bf16);
            let hwr = if ar == 1 { l / 3 } else { l };
            let rows: Vec<u32> = (0..11).map(|_| rng.u32() % l as u32).collect();
            // Device segments: the cache either as one token-major [cached·tpf, heads·d] run or
            // as head-major [heads, tpf, d] frame slots; the chunk as per-frame token-major runs.
            let mut bufs: Vec<Input> = Vec::new();
            let mut segs: Vec<CalibSeg> = Vec::new();
            let row = heads * d;
            if one_seg {
                bufs.push(stored(&kall[..cached * tpf * row], bf16).1);
                segs.push(CalibSeg {
                    k: 0,
                    tokens: (cached * tpf) as u32,
                    token_stride: row as u32,
                    head_stride: d as u32,
                    _pad: 0,
                });
            } else {
                for f in 0..cached {
                    let mut slot = vec![0f32; tpf * row];
                    for h in 0..heads {
                        for t in 0..tpf {
                            for c in 0..d {
                                slot[(h * tpf + t) * d + c] =
                                    kall[((f * tpf + t) * heads + h) * d + c];
                            }
                        }
                    }
                    bufs.push(stored(&slot, bf16).1);
                    segs.push(CalibSeg {
                        k: 0,
                        tokens: tpf as u32,
                        token_stride: d as u32,
                        head_stride: (tpf * d) as u32,
                        _pad: 0,
                    });
                }
            }
            for f in 0..3 {
                let o = (cached + f) * tpf * row;
                bufs.push(stored(&kall[o..o + tpf * row], bf16).1);
                segs.push(CalibSeg {
                    k: 0,
                    tokens: tpf as u32,
                    token_stride: row as u32,
                    head_stride: d as u32,
                    _pad: 0,
                });
            }
            for (s, b) in segs.iter_mut().zip(&bufs) {
                s.k = b.ptr();
            }
            let nr = rows.len();
            let mut per_row = Output::new(heads * nr * 3, false);
            let p = CalibMassParams {
                q: qd.ptr(),
                rows: rows.as_ptr() as u64,
                segs: segs.as_ptr() as u64,
                out: per_row.ptr(),
                n_rows: nr as u32,
                n_segs: segs.len() as u32,
                heads: heads as u32,
                head_dim: d as u32,
                first_end: hwr as u32,
                mid_end: (n - l) as u32,
                scale: (d as f32).sqrt(),
            };
            p.check().unwrap();
            run(p, bf16);
            let mut means = Output::new(3 * heads, false);
            let mp = CalibMeanParams {
                per_row: per_row.ptr(),
                out: means.ptr(),
                heads: heads as u32,
                n_rows: nr as u32,
            };
            // SAFETY: buffers sized for the params.
            unsafe { sim::run(mp) }.unwrap();

            // Reference (calibrate.rs semantics, f64).
            let mut want_rows = vec![0f64; heads * nr * 3];
            let mut want_mean = vec![0f64; 3 * heads];
            for h in 0..heads {
                for (i, &r) in rows.iter().enumerate() {
                    let lg: Vec<f64> = (0..n)
                        .map(|t| {
                            (0..d)
                                .map(|c| {
                                    q[(r as usize * heads + h) * d + c] as f64
                                        * kall[(t * heads + h) * d + c] as f64
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = lg.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = lg.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let m = [
                        e[..hwr].iter().sum::<f64>() / z,
                        e[hwr..n - l].iter().sum::<f64>() / z,
                        e[n - l..].iter().sum::<f64>() / z,
                    ];
                    for k in 0..3 {
                        want_rows[(h * nr + i) * 3 + k] = m[k];
                        want_mean[k * heads + h] += m[k] / nr as f64;
                    }
                }
            }
            let what = format!(
                "calib {} tpf{tpf} heads{heads} d{d} cached{cached} ar{ar} one_seg {one_seg}",
                name(bf16)
            );
            assert_close(
                &format!("{what} per-row masses"),
                &per_row.values(),
                &want_rows,
                2e-5,
                0.0,
            );
            assert_close(
                &format!("{what} mean masses [3, heads]"),
                &means.values(),
                &want_mean,
                2e-5,
                0.0,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Launch-shape robustness
// ---------------------------------------------------------------------------------------------

#[test]
fn grid_stride_loops_cover_everything_with_a_tiny_grid() {
    // The real grids are capped (grid_for); a 1-2 block launch makes every thread loop.
    let mut rng = Rng::new("grid_stride");
    let tiny = |p: dfrt_kernels::LaunchDims| dfrt_kernels::LaunchDims {
        grid: [2, p.grid[1], 1],
        ..p
    };
    // add, bf16
    let n = 3000;
    let (x, xd) = data(&mut rng, n, -4.0, 4.0, true);
    let (y, yd) = data(&mut rng, n, -4.0, 4.0, true);
    let mut o = Output::new(n, true);
    let p = Bf16(AddParams {
        x: xd.ptr(),
        y: yd.ptr(),
        out: o.ptr(),
        n: n as u32,
    });
    launch(add_bf16, tiny(p.dims()), p).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    check(
        "add bf16, 2 blocks",
        true,
        &o.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
    // kv_compact with two jobs, f32
    let (heads, tpf, d) = (3usize, 40usize, 8usize);
    let (src, sd) = data(&mut rng, heads * tpf * d, -1.0, 1.0, false);
    let hs: Vec<u32> = vec![2, 0];
    let (mut a, mut b) = (
        Output::new(2 * tpf * d, false),
        Output::new(2 * tpf * d, false),
    );
    let job = |dst: u64| HeadCopyJob {
        src_k: sd.ptr(),
        src_v: 0,
        dst_k: dst,
        dst_v: 0,
        heads: hs.as_ptr() as u64,
        n_heads: 2,
        _pad: 0,
    };
    let jobs = [job(a.ptr()), job(b.ptr())];
    let shape = HeadCopyShape {
        rows: tpf as u32,
        head_dim: d as u32,
        src_row_stride: d as u32,
        src_head_stride: (tpf * d) as u32,
        dst_row_stride: d as u32,
        dst_head_stride: (tpf * d) as u32,
    };
    let p = KvCompactParams {
        jobs: jobs.as_ptr() as u64,
        n_jobs: 2,
        max_heads: 2,
        shape,
    };
    launch(kv_compact_f32, tiny(p.dims()), p).unwrap();
    let want: Vec<f64> = hs
        .iter()
        .flat_map(|&h| {
            src[h as usize * tpf * d..][..tpf * d]
                .iter()
                .map(|&v| v as f64)
        })
        .collect();
    check(
        "kv_compact f32 job 0, 2 blocks",
        false,
        &a.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
    check(
        "kv_compact f32 job 1, 2 blocks",
        false,
        &b.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
}

#[test]
fn kv_write_bf16_with_unaligned_pointers_copies_elementwise() {
    // A destination at an odd bf16 offset cannot take 32-bit words: the kernel must fall back.
    let mut rng = Rng::new("kv_write_unaligned");
    let (heads, tpf, d) = (3usize, 4usize, 6usize);
    let (k, kd) = data(&mut rng, tpf * heads * d, -1.0, 1.0, true);
    let group: Vec<u32> = vec![1, 2];
    let mut out = Output::new(1 + tpf * 2 * d, true);
    let p = Bf16(KvWriteParams {
        job: HeadCopyJob {
            src_k: kd.ptr(),
            src_v: 0,
            dst_k: out.ptr() + 2,
            dst_v: 0,
            heads: group.as_ptr() as u64,
            n_heads: 2,
            _pad: 0,
        },
        shape: HeadCopyShape {
            rows: tpf as u32,
            head_dim: d as u32,
            src_row_stride: (heads * d) as u32,
            src_head_stride: d as u32,
            dst_row_stride: (2 * d) as u32,
            dst_head_stride: d as u32,
        },
    });
    p.0.check().unwrap();
    launch(kv_write_bf16, p.dims(), p).unwrap();
    let got = out.values();
    assert!(got[0].is_nan(), "element before the slot was written");
    let mut want = vec![0f64; tpf * 2 * d];
    for (gi, &h) in group.iter().enumerate() {
        for r in 0..tpf {
            for c in 0..d {
                want[r * 2 * d + gi * d + c] = k[r * heads * d + h as usize * d + c] as f64;
            }
        }
    }
    check(
        "kv_write bf16 unaligned",
        true,
        &got[1..],
        &want,
        (0.0, 0.0),
        0.0,
    );
}

#[test]
fn barrier_kernels_agree_on_both_engines() {
    // The row kernels and the calibration kernel meet at barriers: run them on the OS-thread
    // engine too (the other tests use the default fiber engine).
    let mut rng = Rng::new("engines");
    for engine in ENGINES {
        let (rows, cols) = (3u32, 200u32);
        let (x, xd) = data(&mut rng, (rows * cols) as usize, -2.0, 2.0, true);
        let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, true);
        let mut y = Output::new(x.len(), true);
        let p = Bf16(RmsNormParams {
            x: xd.ptr(),
            w: wd.ptr(),
            y: y.ptr(),
            rows,
            cols,
            eps: 1e-6,
        });
        launch_on(
            engine,
            std::time::Duration::from_secs(30),
            rms_norm_bf16,
            p.dims(),
            p,
        )
        .unwrap();
        let want = rms_ref(&x, &w, cols as usize, 1e-6, r16);
        check(
            &format!("rms_norm bf16 on {engine:?}"),
            true,
            &y.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}
