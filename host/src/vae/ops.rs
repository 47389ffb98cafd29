//! The VAE's CPU compute: convolutions as im2col + GEMM, RMS_norm, SiLU, nearest upsampling
//! and the middle attention, on frames stored channel-first (`[C, H, W]`, f32).
//!
//! With bf16 storage every op rounds its result to bf16 where the official module under
//! `.to(torch.bfloat16)` does (convs accumulate in f32 and round once; RMS_norm rounds the
//! norm, the division, `·√C` and `·γ` separately); in f32 nothing is rounded.

use half::bf16;
use rayon::prelude::*;

use crate::backend::Precision;

/// Rounds every value to bf16 in bf16 mode; a no-op in f32.
pub fn round(p: Precision, x: &mut [f32]) {
    if p == Precision::Bf16 {
        x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
    }
}

fn r1(p: Precision, v: f32) -> f32 {
    if p == Precision::Bf16 {
        bf16::from_f32(v).to_f32()
    } else {
        v
    }
}

/// A convolution's weights: `w` is `[cout, cin, kt, kh, kw]` row-major (PyTorch's layout,
/// a Conv2d has kt = 1), `b` is `[cout]`.
#[derive(Clone, Debug)]
pub struct Conv {
    pub cout: usize,
    pub cin: usize,
    pub kt: usize,
    pub kh: usize,
    pub kw: usize,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

/// Spatial geometry of one convolution call.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    /// Zero padding: top, bottom, left, right.
    pub pad: [usize; 4],
}

impl Geom {
    /// Symmetric padding `p`, stride 1.
    pub fn same(h: usize, w: usize, p: usize) -> Self {
        Geom { h, w, stride: 1, pad: [p; 4] }
    }
    fn out(&self, kh: usize, kw: usize) -> (usize, usize) {
        let oh = (self.h + self.pad[0] + self.pad[1] - kh) / self.stride + 1;
        let ow = (self.w + self.pad[2] + self.pad[3] - kw) / self.stride + 1;
        (oh, ow)
    }
}

/// Multiply-add FLOPs of every conv run so far (2·kernel volume·Cin·Cout·output pixels, zero
/// padding taps included), for the benchmark's GFLOP/s.
pub static CONV_FLOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Floats of im2col scratch per task: bounds memory at any resolution.
const TILE_FLOATS: usize = 1 << 20;

impl Conv {
    /// One output frame from `kt` input frames (`None` = a zero frame: causal padding), each
    /// `[cin, g.h, g.w]`. Returns `[cout, oh, ow]` and (oh, ow).
    pub fn frame(&self, p: Precision, taps: &[Option<&[f32]>], g: Geom) -> (Vec<f32>, usize, usize) {
        assert_eq!(taps.len(), self.kt, "conv taps");
        let (oh, ow) = g.out(self.kh, self.kw);
        let k = self.cin * self.kt * self.kh * self.kw;
        CONV_FLOPS.fetch_add((2 * k * self.cout * oh * ow) as u64, std::sync::atomic::Ordering::Relaxed);
        let rows = (TILE_FLOATS / (k * ow).max(1)).clamp(1, oh);
        let tiles: Vec<(usize, Vec<f32>)> = (0..oh.div_ceil(rows))
            .into_par_iter()
            .map(|ti| {
                let (y0, y1) = (ti * rows, ((ti + 1) * rows).min(oh));
                let n = (y1 - y0) * ow;
                let mut col = vec![0f32; k * n];
                for ci in 0..self.cin {
                    for (t, tap) in taps.iter().enumerate() {
                        let Some(src) = tap else { continue };
                        let plane = &src[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                        for ky in 0..self.kh {
                            for kx in 0..self.kw {
                                let kk = ((ci * self.kt + t) * self.kh + ky) * self.kw + kx;
                                let dst = &mut col[kk * n..(kk + 1) * n];
                                for oy in y0..y1 {
                                    let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                    if iy < 0 || iy >= g.h as isize {
                                        continue;
                                    }
                                    let row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                                    let d = &mut dst[(oy - y0) * ow..(oy - y0 + 1) * ow];
                                    for (ox, dv) in d.iter_mut().enumerate() {
                                        let ix = (ox * g.stride + kx) as isize - g.pad[2] as isize;
                                        if ix >= 0 && (ix as usize) < g.w {
                                            *dv = row[ix as usize];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                // Start from the bias and accumulate the products on top, in f32.
                let mut out = vec![0f32; self.cout * n];
                for (co, o) in out.chunks_mut(n).enumerate() {
                    o.fill(self.b[co]);
                }
                // SAFETY: the slices hold exactly m·k, k·n and m·n elements for these strides.
                unsafe {
                    matrixmultiply::sgemm(
                        self.cout,
                        k,
                        n,
                        1.0,
                        self.w.as_ptr(),
                        k as isize,
                        1,
                        col.as_ptr(),
                        n as isize,
                        1,
                        1.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                (y0, out)
            })
            .collect();
        let mut out = vec![0f32; self.cout * oh * ow];
        for (y0, t) in tiles {
            let n = t.len() / self.cout;
            for co in 0..self.cout {
                out[co * oh * ow + y0 * ow..][..n].copy_from_slice(&t[co * n..(co + 1) * n]);
            }
        }
        round(p, &mut out);
        (out, oh, ow)
    }
}

/// `F.normalize(x, dim=channels) · √C · γ` per pixel of a `[c, hw]` frame (no mean, no bias;
/// the norm is clamped at 1e-12 as `F.normalize` does).
pub fn rms_norm(p: Precision, x: &[f32], c: usize, gamma: &[f32]) -> Vec<f32> {
    let hw = x.len() / c;
    let scale = (c as f64).sqrt() as f32;
    let mut norm = vec![0f32; hw];
    for ch in 0..c {
        for (n, v) in norm.iter_mut().zip(&x[ch * hw..(ch + 1) * hw]) {
            *n += v * v;
        }
    }
    for n in &mut norm {
        *n = r1(p, n.sqrt()).max(1e-12);
    }
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(hw).enumerate().for_each(|(ch, o)| {
        for ((y, v), n) in o.iter_mut().zip(&x[ch * hw..(ch + 1) * hw]).zip(&norm) {
            let a = r1(p, v / n);
            let a = r1(p, a * scale);
            *y = r1(p, a * gamma[ch]);
        }
    });
    out
}

/// SiLU in place (computed in f32, rounded in bf16 mode).
pub fn silu(p: Precision, x: &mut [f32]) {
    x.par_iter_mut().for_each(|v| *v = r1(p, *v / (1.0 + (-*v).exp())));
}

/// `a += b`, rounded.
pub fn add(p: Precision, a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x = r1(p, *x + y));
}

/// Nearest 2× upsampling of a `[c, h, w]` frame to `[c, 2h, 2w]` (exact in any precision).
pub fn upsample2x(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * 4 * h * w];
    for ch in 0..c {
        for y in 0..2 * h {
            let src = &x[(ch * h + y / 2) * w..][..w];
            let dst = &mut out[(ch * 2 * h + y) * 2 * w..][..2 * w];
            for (xo, d) in dst.iter_mut().enumerate() {
                *d = src[xo / 2];
            }
        }
    }
    out
}

/// Single-head attention over the `n` positions of one frame: `q`, `k`, `v` are `[c, n]`
/// (channel-first, as the 1×1 `to_qkv` conv leaves them); returns `[c, n]`. Scale 1/√c.
/// In bf16 the probabilities are rounded before the product with V and the output is rounded,
/// as PyTorch's CPU flash attention does for reduced precision.
pub fn attention(p: Precision, q: &[f32], k: &[f32], v: &[f32], c: usize, n: usize) -> Vec<f32> {
    let scale = 1.0 / (c as f32).sqrt();
    // Position-major copies so each dot product reads contiguous rows.
    let tr = |a: &[f32]| {
        let mut t = vec![0f32; c * n];
        for ch in 0..c {
            for i in 0..n {
                t[i * c + ch] = a[ch * n + i];
            }
        }
        t
    };
    let (qt, kt, vt) = (tr(q), tr(k), tr(v));
    let mut out_t = vec![0f32; n * c];
    out_t.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
        let qi = &qt[i * c..(i + 1) * c];
        let s: Vec<f32> =
            (0..n).map(|j| qi.iter().zip(&kt[j * c..(j + 1) * c]).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        for (j, ej) in e.iter().enumerate() {
            let pj = r1(p, *ej);
            for (ov, vv) in o.iter_mut().zip(&vt[j * c..(j + 1) * c]) {
                *ov += pj * vv;
            }
        }
        o.iter_mut().for_each(|x| *x = r1(p, *x / sum));
    });
    tr_back(&out_t, c, n)
}

fn tr_back(t: &[f32], c: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * n];
    for i in 0..n {
        for ch in 0..c {
            out[ch * n + i] = t[i * c + ch];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct 3-D convolution, for checking the im2col path.
    fn direct(c: &Conv, taps: &[Option<&[f32]>], g: Geom) -> Vec<f32> {
        let (oh, ow) = g.out(c.kh, c.kw);
        let mut out = vec![0f32; c.cout * oh * ow];
        for co in 0..c.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = c.b[co] as f64;
                    for ci in 0..c.cin {
                        for (t, tap) in taps.iter().enumerate() {
                            let Some(x) = tap else { continue };
                            for ky in 0..c.kh {
                                for kx in 0..c.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad[2] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let wv = c.w[(((co * c.cin + ci) * c.kt + t) * c.kh + ky) * c.kw + kx];
                                    acc += wv as f64 * x[(ci * g.h + iy as usize) * g.w + ix as usize] as f64;
                                }
                            }
                        }
                    }
                    out[(co * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
        out
    }

    fn rnd(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn conv_matches_direct_sum_for_causal_strided_and_padded_shapes() {
        // (cin, cout, kt, k, h, w, stride, pad)
        for (i, &(cin, cout, kt, k, h, w, stride, pad)) in [
            (3, 5, 3, 3, 7, 9, 1, [1, 1, 1, 1]),
            (4, 4, 1, 3, 8, 6, 2, [0, 1, 0, 1]),
            (6, 2, 3, 1, 5, 5, 1, [0, 0, 0, 0]),
            (2, 3, 1, 1, 4, 3, 1, [0, 0, 0, 0]),
        ]
        .iter()
        .enumerate()
        {
            let c = Conv {
                cout,
                cin,
                kt,
                kh: k,
                kw: k,
                w: rnd(cout * cin * kt * k * k, 3 + i as u32),
                b: rnd(cout, 9 + i as u32),
            };
            let frames: Vec<Vec<f32>> = (0..kt).map(|t| rnd(cin * h * w, 20 + t as u32)).collect();
            // The first tap is causal padding when there are 3.
            let taps: Vec<Option<&[f32]>> = frames
                .iter()
                .enumerate()
                .map(|(t, f)| if kt == 3 && t == 0 { None } else { Some(f.as_slice()) })
                .collect();
            let g = Geom { h, w, stride, pad };
            let (got, _, _) = c.frame(Precision::F32, &taps, g);
            let want = direct(&c, &taps, g);
            assert_eq!(got.len(), want.len());
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "case {i} index {j}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rms_norm_gives_root_c_times_gamma_on_unit_directions() {
        let (c, hw) = (4, 3);
        let x = rnd(c * hw, 5);
        let g = [0.5, 1.0, 1.5, 2.0];
        let y = rms_norm(Precision::F32, &x, c, &g);
        for p in 0..hw {
            let n: f32 = (0..c).map(|ch| x[ch * hw + p].powi(2)).sum::<f32>().sqrt();
            for ch in 0..c {
                let want = x[ch * hw + p] / n * 2.0 * g[ch];
                assert!((y[ch * hw + p] - want).abs() < 1e-6, "{} vs {want}", y[ch * hw + p]);
            }
        }
    }

    #[test]
    fn attention_rows_are_convex_combinations_of_values() {
        let (c, n) = (3, 5);
        let (q, k) = (rnd(c * n, 1), rnd(c * n, 2));
        let v = rnd(c * n, 3);
        let o = attention(Precision::F32, &q, &k, &v, c, n);
        for ch in 0..c {
            let (lo, hi) =
                v[ch * n..(ch + 1) * n].iter().fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            for i in 0..n {
                let y = o[ch * n + i];
                assert!(y.is_finite() && y >= lo - 1e-6 && y <= hi + 1e-6, "{y} outside [{lo}, {hi}]");
            }
        }
    }
}
