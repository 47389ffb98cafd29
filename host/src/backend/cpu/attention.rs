//! Blocked, flash-style attention on the CPU: online softmax over K/V blocks, so the
//! `[Lq, Lk]` score matrix never exists (only one `[BQ, BK]` tile per task).
//!
//! Work splits into (head, block of `BQ` query rows) tasks over rayon. Each task walks the
//! head's segments in order, `BK` keys at a time: `S = (Q·Kᵀ)/√d`, a running row max `m` and
//! sum `l`, the accumulator `O` rescaled by `e^(m_old − m_new)` before `O += P·V`; at the end
//! `O / l`. In bf16 mode `P` is rounded to bf16 before `P·V` while `l` sums the unrounded
//! values (PyTorch's CPU flash kernel does the same); the result is rounded once.

use rayon::prelude::*;

use super::gemm::{sgemm, Mat};
use super::math::{exp_shifted_sum, max, round_bf16, round_bf16_slice};
use super::CpuTensor;
use crate::backend::Seg;

/// Query rows per task.
const BQ: usize = 64;
/// Keys per block.
const BK: usize = 256;

/// `softmax(q_h·Kᵀ/√d)·V` for every head `h` over `ctx[h]`'s segments; `q` is `[n, heads·d]`
/// row-major, the result too.
pub fn flash_attention(q: &[f32], n: usize, d: usize, ctx: &[Vec<Seg<'_, CpuTensor>>], bf16: bool) -> Vec<f32> {
    let heads = ctx.len();
    let qc = heads * d;
    assert_eq!(q.len(), n * qc, "attention: q has {} values, want [{n}, {qc}]", q.len());
    let mut out = vec![0f32; n * qc];
    if n == 0 || d == 0 {
        return out;
    }
    let qblocks = n.div_ceil(BQ);
    let tiles: Vec<(usize, usize, Vec<f32>)> = (0..heads * qblocks)
        .into_par_iter()
        .map(|t| {
            let (h, qb) = (t / qblocks, t % qblocks);
            let q0 = qb * BQ;
            let rows = BQ.min(n - q0);
            (h, q0, tile(&q[q0 * qc + h * d..], qc, rows, d, &ctx[h], bf16))
        })
        .collect();
    for (h, q0, o) in tiles {
        for (i, row) in o.chunks_exact(d).enumerate() {
            let at = (q0 + i) * qc + h * d;
            out[at..at + d].copy_from_slice(row);
        }
    }
    out
}

/// One task: `rows` query rows (row stride `qs`) of one head against all its segments;
/// returns `[rows, d]`.
fn tile(q: &[f32], qs: usize, rows: usize, d: usize, segs: &[Seg<'_, CpuTensor>], bf16: bool) -> Vec<f32> {
    let scale = 1.0 / (d as f32).sqrt();
    let mut acc = vec![0f32; rows * d];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut s = vec![0f32; rows * BK];
    let qm = Mat::new(q, qs, 1);
    let mut seen = false;
    for seg in segs {
        for k0 in (0..seg.rows).step_by(BK) {
            let bk = BK.min(seg.rows - k0);
            let base = seg.offset + k0 * seg.stride;
            let s = &mut s[..rows * bk];
            // S = scale·Q·Kᵀ: Kᵀ's element (c, j) is key j's component c.
            sgemm(rows, d, bk, qm, Mat::new(&seg.k.data[base..], 1, seg.stride), scale, s, bk, false, false);
            for ((srow, mi), (li, arow)) in
                s.chunks_exact_mut(bk).zip(&mut m).zip(l.iter_mut().zip(acc.chunks_exact_mut(d)))
            {
                let mx = max(srow).max(*mi);
                // A row of only −inf scores keeps m = −inf; shifting by 0 then gives e^−inf = 0.
                let shift = if mx == f32::NEG_INFINITY { 0.0 } else { mx };
                let sum = exp_shifted_sum(srow, shift);
                if bf16 {
                    round_bf16_slice(srow);
                }
                let alpha = if *mi == f32::NEG_INFINITY { 0.0 } else { (*mi - shift).exp() };
                *li = *li * alpha + sum;
                if seen && alpha != 1.0 {
                    arow.iter_mut().for_each(|x| *x *= alpha);
                }
                *mi = mx;
            }
            // O += P·V
            sgemm(
                rows,
                bk,
                d,
                Mat::new(s, bk, 1),
                Mat::new(&seg.v.data[base..], seg.stride, 1),
                1.0,
                &mut acc,
                d,
                seen,
                false,
            );
            seen = true;
        }
    }
    for (arow, &li) in acc.chunks_exact_mut(d).zip(&l) {
        let inv = 1.0 / li;
        for x in arow.iter_mut() {
            let v = *x * inv;
            *x = if bf16 { round_bf16(v) } else { v };
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, Precision};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The textbook computation in f64: all scores, softmax, P·V.
    fn naive(q: &[f32], n: usize, d: usize, ctx: &[Vec<Seg<'_, CpuTensor>>]) -> Vec<f64> {
        let heads = ctx.len();
        let qc = heads * d;
        let mut out = vec![0f64; n * qc];
        for (h, segs) in ctx.iter().enumerate() {
            let kv: Vec<(&[f32], &[f32])> = segs
                .iter()
                .flat_map(|s| {
                    (0..s.rows).map(move |r| {
                        let o = s.offset + r * s.stride;
                        (&s.k.data[o..o + d], &s.v.data[o..o + d])
                    })
                })
                .collect();
            for i in 0..n {
                let qi = &q[i * qc + h * d..i * qc + (h + 1) * d];
                let sc: Vec<f64> = kv
                    .iter()
                    .map(|(k, _)| {
                        qi.iter().zip(*k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = p.iter().sum();
                for c in 0..d {
                    out[i * qc + h * d + c] = p.iter().zip(&kv).map(|(p, (_, v))| p * v[c] as f64).sum::<f64>() / z;
                }
            }
        }
        out
    }

    /// Runs the backend's attention on `n` query rows and per-head segment lengths `lens`
    /// (each segment a strided slice of its own tensor, rows interleaved with other data) and
    /// compares with the f64 reference.
    fn check(n: usize, heads: usize, d: usize, lens: &[usize], seed: u64) {
        let be = CpuBackend::new(Precision::F32);
        let q = be.upload(&rand_vec(n * heads * d, seed), &[n, heads * d]);
        // Each segment lives in a tensor with 3 heads' worth of columns: stride 3d, offset d.
        let kt: Vec<CpuTensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &r)| be.upload(&rand_vec(r.max(1) * 3 * d, seed * 31 + i as u64), &[r.max(1), 3 * d]))
            .collect();
        let vt: Vec<CpuTensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &r)| be.upload(&rand_vec(r.max(1) * 3 * d, seed * 37 + i as u64), &[r.max(1), 3 * d]))
            .collect();
        let ctx: Vec<Vec<Seg<'_, CpuTensor>>> = (0..heads)
            .map(|h| {
                lens.iter()
                    .enumerate()
                    // Heads see the segments rotated, so each has a different context.
                    .map(|(i, _)| (i + h) % lens.len())
                    .map(|i| Seg { k: &kt[i], v: &vt[i], offset: d, rows: lens[i], stride: 3 * d, frame: None })
                    .collect()
            })
            .collect();
        let got = be.attention(&q, d, &ctx);
        let want = naive(&q.data, n, d, &ctx);
        let mut worst = (0f64, 0usize);
        for (i, (&g, &w)) in got.data.iter().zip(&want).enumerate() {
            assert!(g.is_finite(), "n {n} lens {lens:?}: NaN/inf at {i}");
            let e = (g as f64 - w).abs();
            if e > worst.0 {
                worst = (e, i);
            }
        }
        let (e, i) = worst;
        assert!(
            e < 2e-6,
            "n {n} heads {heads} d {d} lens {lens:?}: max abs error {e:.3e} at {i}: got {} want {}",
            got.data[i],
            want[i]
        );
    }

    #[test]
    fn flash_matches_naive_on_odd_shapes() {
        // One query row; odd lengths; several segments crossing the key block (BK) and query
        // block (BQ) sizes; an empty segment in the middle.
        check(1, 2, 8, &[5], 1);
        check(1, 3, 16, &[BK + 3, 7], 2);
        check(BQ + 5, 2, 8, &[3, 0, BK - 1, 2 * BK + 11], 3);
        check(2 * BQ + 1, 1, 64, &[BK * 2 + 1], 4);
        check(17, 4, 12, &[1, 1, 1, 300], 5);
    }

    #[test]
    fn flash_handles_large_score_ranges() {
        // Large logits: a later block's max far above the first one's forces the rescale.
        let be = CpuBackend::new(Precision::F32);
        let d = 8;
        let n = 3;
        let q = be.upload(&rand_vec(n * d, 9).iter().map(|x| x * 30.0).collect::<Vec<_>>(), &[n, d]);
        let k = be.upload(&rand_vec(600 * d, 10).iter().map(|x| x * 30.0).collect::<Vec<_>>(), &[600, d]);
        let v = be.upload(&rand_vec(600 * d, 11), &[600, d]);
        let ctx = vec![vec![Seg { k: &k, v: &v, offset: 0, rows: 600, stride: d, frame: None }]];
        let got = be.attention(&q, d, &ctx);
        let want = naive(&q.data, n, d, &ctx);
        for (i, (&g, &w)) in got.data.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() < 1e-5, "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn bf16_attention_stays_within_bf16_rounding() {
        let be = CpuBackend::new(Precision::Bf16);
        let (n, d) = (70, 16);
        let q = be.upload(&rand_vec(n * d, 12), &[n, d]);
        let k = be.upload(&rand_vec(400 * d, 13), &[400, d]);
        let v = be.upload(&rand_vec(400 * d, 14), &[400, d]);
        let ctx = vec![vec![Seg { k: &k, v: &v, offset: 0, rows: 400, stride: d, frame: None }]];
        let got = be.attention(&q, d, &ctx);
        let want = naive(&q.data, n, d, &ctx);
        let (mut num, mut den) = (0f64, 0f64);
        for (&g, &w) in got.data.iter().zip(&want) {
            assert!(round_bf16(g) == g, "{g} is not a bf16 value");
            num += (g as f64 - w).powi(2);
            den += w * w;
        }
        // P rounded to bf16 (2⁻⁹ relative) and the output rounded once: well under 1 %.
        let rel = (num / den).sqrt();
        assert!(rel < 5e-3, "bf16 attention relative L2 error {rel:.3e}");
    }
}
