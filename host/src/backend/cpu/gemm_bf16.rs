//! The bf16-storage linear on AVX512-BF16: `out[m×n] = x[m×k]·w[n×k]ᵀ` with `vdpbf16ps`,
//! which multiplies pairs of bf16 values and adds both products to an f32 lane. On a CPU that
//! has it (Zen 4, Sapphire Rapids and later) this does twice the multiply-adds per instruction
//! of an f32 FMA and reads half the bytes, which is what makes bf16 storage faster than f32.
//!
//! Numerics: the operands are bf16 values already (the CPU backend rounds every op result in
//! bf16 mode), a bf16 × bf16 product is exact in f32, and the sums are f32, so the result is an
//! f32 GEMM of the same values in another summation order (pairs of `k`, then `k` in order); the
//! instruction flushes subnormal inputs and results to zero, as bf16 hardware does. The caller
//! rounds the output to bf16 as for any op.
//!
//! Blocking: `x` is converted once to bf16 pairs (`[m, k/2]` u32). The columns are split into
//! panels of `NB` = 64 (four 16-lane registers); each panel of `w` is packed as `[k/2][64]`
//! pairs (zero beyond `n` and for an odd `k`'s last pair), about `k·128` bytes, in L2. The
//! panel is walked in blocks of `KC` pairs (24 KiB, which stay in L1) and every tile of
//! `MR` = 6 rows runs over a block: 24 accumulators, 4 panel registers and 1 broadcast, 29 of
//! the 32 vector registers; blocks after the first add to the tile's partial sums. Panels run
//! in parallel on rayon's threads.

use rayon::prelude::*;

/// Columns per panel (4 × 16 f32 lanes).
const NB: usize = 64;
/// Rows per register tile.
const MR: usize = 6;
/// Pairs of `k` per cache block: `KC·NB·4` bytes = 24 KiB of the packed panel.
const KC: usize = 96;

/// Whether this CPU runs [`linear`] (AVX512F + AVX512-BF16), checked once. `DFRT_CPU_BF16_DOT=0`
/// turns it off (to compare against the f32 GEMM path).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("DFRT_CPU_BF16_DOT").is_ok_and(|v| v == "0");
        !off && detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// Packs `row` (bf16 values held as f32) as pairs, `(row[2p], row[2p + 1])` in `out[p·step]`
/// (element 2p in the low half; a missing last element is 0). The backend's bf16 tensors hold
/// exact bf16 values, so the top 16 bits of each f32 are the bf16 (no rounding needed); this
/// is the hot part of the packing, so it is a plain shift and mask.
fn pack_row(row: &[f32], out: &mut [u32], step: usize) {
    let mut pairs = row.chunks_exact(2);
    for (p, two) in pairs.by_ref().enumerate() {
        out[p * step] = (two[0].to_bits() >> 16) | (two[1].to_bits() & 0xffff_0000);
    }
    if let [last] = pairs.remainder() {
        out[(row.len() / 2) * step] = last.to_bits() >> 16;
    }
}

/// `out[m×n] = x[m×k]·w[n×k]ᵀ` (row-major, `out` with row stride `n`). Panics on a length
/// mismatch (the backend checks shapes first) or when [`available`] is false.
pub fn linear(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(available(), "gemm_bf16::linear needs AVX512-BF16");
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n, "gemm_bf16: shapes");
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    let mut xa = vec![0u32; m * kp];
    xa.par_chunks_mut(kp.max(1)).zip(x.par_chunks(k.max(1))).for_each(|(dst, row)| pack_row(row, dst, 1));
    let panels: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(NB))
        .into_par_iter()
        .map(|b| {
            let n0 = b * NB;
            let cols = NB.min(n - n0);
            let mut wp = vec![0u32; kp * NB];
            for j in 0..cols {
                pack_row(&w[(n0 + j) * k..(n0 + j + 1) * k], &mut wp[j..], NB);
            }
            let mut c = vec![0f32; m * NB];
            for p0 in (0..kp).step_by(KC) {
                let kc = KC.min(kp - p0);
                let b = &wp[p0 * NB..(p0 + kc) * NB];
                for (t, ct) in c.chunks_mut(MR * NB).enumerate() {
                    let a = &xa[t * MR * kp + p0..];
                    // SAFETY: `available()` checked the CPU features; row r < rows (rows =
                    // ct.len() / NB ≤ MR) of the tile reads a[r·kp .. r·kp + kc], inside `xa`
                    // (its row t·MR + r starts at (t·MR + r)·kp and p0 + kc ≤ kp); `b` holds
                    // kc·NB pairs, `ct` rows·NB values.
                    unsafe { tile(a, kp, b, kc, ct, p0 > 0) };
                }
            }
            (n0, c)
        })
        .collect();
    // The panels' columns into the output rows, rows in parallel.
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (n0, c) in &panels {
            let cols = NB.min(n - n0);
            row[*n0..n0 + cols].copy_from_slice(&c[i * NB..i * NB + cols]);
        }
    });
}

/// One tile of `c.len() / NB` (≤ `MR`) rows over `kc` pairs: row r's pairs are
/// `a[r·stride ..][..kc]`; `accumulate` adds to `c` instead of overwriting it.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `a` must hold `(rows − 1)·stride + kc` pairs,
/// `b` `kc·NB`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: &[u32], stride: usize, b: &[u32], kc: usize, c: &mut [f32], accumulate: bool) {
    match c.len() / NB {
        6 => tile_rows::<6>(a, stride, b, kc, c, accumulate),
        5 => tile_rows::<5>(a, stride, b, kc, c, accumulate),
        4 => tile_rows::<4>(a, stride, b, kc, c, accumulate),
        3 => tile_rows::<3>(a, stride, b, kc, c, accumulate),
        2 => tile_rows::<2>(a, stride, b, kc, c, accumulate),
        _ => tile_rows::<1>(a, stride, b, kc, c, accumulate),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &[u32], _: usize, _: &[u32], _: usize, _: &mut [f32], _: bool) {
    unreachable!("available() is false off x86_64")
}

/// The register tile: `R` rows × 64 columns, 4·R accumulators.
///
/// # Safety
/// As [`tile`], with `c.len() == R·NB`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile_rows<const R: usize>(a: &[u32], stride: usize, b: &[u32], kc: usize, c: &mut [f32], accumulate: bool) {
    use std::arch::x86_64::*;
    assert!(a.len() >= (R - 1) * stride + kc && b.len() >= kc * NB && c.len() == R * NB);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    if accumulate {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (q, v) in acc_r.iter_mut().enumerate() {
                // SAFETY: r·NB + 16·q + 16 ≤ R·NB = c.len().
                *v = unsafe { _mm512_loadu_ps(c.as_ptr().add(r * NB + 16 * q)) };
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kc {
        // SAFETY: p < kc, so the 64 pairs at p·NB are inside `b`, and a[r·stride + p] (r < R)
        // inside `a`, by the assert above. __m512i and __m512bh are both 64 bytes of lanes.
        unsafe {
            let row = bp.add(p * NB) as *const __m512i;
            let bv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(row)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(row.add(1))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(row.add(2))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(row.add(3))),
            ];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r * stride + p) as i32));
                for (q, acc_rq) in acc_r.iter_mut().enumerate() {
                    *acc_rq = _mm512_dpbf16_ps(*acc_rq, av, bv[q]);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (q, v) in acc_r.iter().enumerate() {
            // SAFETY: r·NB + 16·q + 16 ≤ R·NB = c.len().
            unsafe { _mm512_storeu_ps(c.as_mut_ptr().add(r * NB + 16 * q), *v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [-2, 2), rounded to bf16 (the test kit's seeded generator).
    fn bf16_values(n: usize, seed: u64) -> Vec<f32> {
        let v = dfrt_testkit::Rng::seeded(seed).vec(n, -2.0, 2.0);
        v.into_iter().map(|u| half::bf16::from_f32(u).to_f32()).collect()
    }

    /// Odd sizes on every axis (a partial row tile, a partial panel, an odd k), against an f64
    /// GEMM of the same bf16 values: within f32 summation error of Σ|x·w|.
    #[test]
    fn matches_an_f64_gemm_on_odd_shapes() {
        if !available() {
            println!("skipped: this CPU has no AVX512-BF16 (the f32 GEMM serves bf16 storage)");
            return;
        }
        for &(m, k, n) in &[(13usize, 37usize, 70usize), (1, 1, 1), (6, 512, 64), (7, 2, 129), (14, 1001, 65)] {
            let x = bf16_values(m * k, 1 + m as u64);
            let w = bf16_values(n * k, 2 + n as u64);
            let mut out = vec![f32::NAN; m * n];
            linear(&x, &w, m, k, n, &mut out);
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let (mut s, mut mag) = (0f64, 0f64);
                    for c in 0..k {
                        let p = x[i * k + c] as f64 * w[j * k + c] as f64;
                        s += p;
                        mag += p.abs();
                    }
                    let e = (out[i * n + j] as f64 - s).abs();
                    let bound = 1e-6 * mag + 1e-30;
                    worst = worst.max(e / bound);
                    assert!(e <= bound, "[{m}x{k}x{n}] ({i},{j}): got {} want {s} (Σ|xw| {mag})", out[i * n + j]);
                }
            }
            println!("bf16 dot GEMM {m}x{k}x{n}: worst error {worst:.3} of the bound 1e-6·Σ|xw|");
        }
    }
}
