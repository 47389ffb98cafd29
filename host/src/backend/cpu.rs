//! The CPU reference backend.
//!
//! Tensors are host `Vec<f32>`. In bf16 mode every value a tensor holds is exactly
//! representable in bf16 (each op rounds its result with round-to-nearest-even), so the numbers
//! equal those of bf16 storage while the GEMM crate still works on f32 with f32 accumulation.
//! Row-wise ops run in parallel with rayon; GEMMs use `matrixmultiply` (its own threads).

use half::bf16;
use rayon::prelude::*;

use super::{Backend, Precision, Seg};

/// A host tensor: row-major f32 data (bf16 values in bf16 mode) and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl CpuTensor {
    /// Wraps data of the given shape; panics if the lengths disagree (a programming error).
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Self {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "data length vs shape {shape:?}");
        CpuTensor { data, shape: shape.to_vec() }
    }
    fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    fn rows(&self) -> usize {
        self.data.len() / self.cols().max(1)
    }
}

/// Below this many elements an op runs on one thread (rayon's overhead dominates).
const PAR_MIN: usize = 1 << 14;

/// The reference [`Backend`]: plain f32 host math with rounding to the storage precision
/// at the official op boundaries. See the [`crate::backend`] docs for an example.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    precision: Precision,
}

impl CpuBackend {
    /// A backend storing weights, activations and the KV cache at `precision`.
    pub fn new(precision: Precision) -> Self {
        CpuBackend { precision }
    }

    /// Rounds to the storage precision.
    #[inline]
    fn r(&self, x: f32) -> f32 {
        match self.precision {
            Precision::F32 => x,
            Precision::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    fn round_all(&self, v: &mut [f32]) {
        if self.precision == Precision::Bf16 {
            par_each(v, |x| *x = bf16::from_f32(*x).to_f32());
        }
    }

    /// Applies `f(row_index, input_row, output_row)` to every row, in parallel for big tensors.
    fn map_rows(&self, x: &CpuTensor, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) -> CpuTensor {
        let cols = x.cols();
        let mut out = vec![0f32; x.data.len()];
        if x.data.len() >= PAR_MIN {
            out.par_chunks_mut(cols).zip(x.data.par_chunks(cols)).enumerate().for_each(|(i, (o, a))| f(i, a, o));
        } else {
            out.chunks_mut(cols).zip(x.data.chunks(cols)).enumerate().for_each(|(i, (o, a))| f(i, a, o));
        }
        CpuTensor { data: out, shape: x.shape.clone() }
    }
}

fn par_each(v: &mut [f32], f: impl Fn(&mut f32) + Sync + Send) {
    if v.len() >= PAR_MIN {
        v.par_iter_mut().for_each(f);
    } else {
        v.iter_mut().for_each(f);
    }
}

/// Mean and 1/sqrt(var + eps) of a row, accumulated in f64 (the reference wants the exact value).
fn mean_rstd(a: &[f32], eps: f32) -> (f32, f32) {
    let n = a.len() as f64;
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = a.iter().map(|&x| (x as f64 - mean) * (x as f64 - mean)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// `C[m×n] = A[m×k]·B[k×n]` with explicit strides, f32 accumulation.
#[allow(clippy::too_many_arguments)]
fn sgemm(m: usize, k: usize, n: usize, a: &[f32], rsa: usize, csa: usize, b: &[f32], rsb: usize, csb: usize, c: &mut [f32], rsc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            c[i * rsc..i * rsc + n].fill(0.0);
        }
        return;
    }
    // Bounds the unsafe call below: the last element each operand reaches is in range.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len());
    assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    assert!((m - 1) * rsc + n - 1 < c.len());
    // SAFETY: the asserts above show every index the GEMM touches (i·rs + j·cs for i < rows,
    // j < cols) lies inside the slices; `c` is exclusively borrowed and does not alias a or b.
    unsafe {
        matrixmultiply::sgemm(
            m, k, n, 1.0,
            a.as_ptr(), rsa as isize, csa as isize,
            b.as_ptr(), rsb as isize, csb as isize,
            0.0, c.as_mut_ptr(), rsc as isize, 1,
        );
    }
}

/// GELU, tanh approximation (`torch.nn.GELU(approximate="tanh")`), in f32.
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// SiLU `x·sigmoid(x)`, in f32.
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn precision(&self) -> Precision {
        self.precision
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> CpuTensor {
        let mut t = CpuTensor::new(data.to_vec(), shape);
        self.round_all(&mut t.data);
        t
    }
    fn download(&self, t: &CpuTensor) -> Vec<f32> {
        t.data.clone()
    }
    fn write(&self, dst: &mut CpuTensor, data: &[f32]) {
        assert_eq!(dst.data.len(), data.len(), "write: {} values into {:?}", data.len(), dst.shape);
        dst.data.copy_from_slice(data);
        self.round_all(&mut dst.data);
    }
    fn shape<'a>(&self, t: &'a CpuTensor) -> &'a [usize] {
        &t.shape
    }
    fn zeros(&self, shape: &[usize]) -> CpuTensor {
        CpuTensor::new(vec![0.0; shape.iter().product()], shape)
    }
    fn copy_rows(&self, dst: &mut CpuTensor, dst_off: usize, src: &CpuTensor, src_off: usize, src_stride: usize, rows: usize, cols: usize) {
        for r in 0..rows {
            let s = src_off + r * src_stride;
            let d = dst_off + r * cols;
            dst.data[d..d + cols].copy_from_slice(&src.data[s..s + cols]);
        }
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> CpuTensor {
        let k = x.cols();
        let n = x.rows();
        assert_eq!(w.shape.len(), 2);
        let m = w.shape[0];
        assert_eq!(w.shape[1], k, "linear: x has {k} features, weight {:?}", w.shape);
        let mut out = vec![0f32; n * m];
        sgemm(n, k, m, &x.data, k, 1, &w.data, 1, k, &mut out, m);
        let bias = b.map(|b| b.data.as_slice());
        let fix = |row: &mut [f32]| {
            for (j, y) in row.iter_mut().enumerate() {
                let v = if let Some(b) = bias { *y + b[j] } else { *y };
                *y = self.r(v);
            }
        };
        if out.len() >= PAR_MIN {
            out.par_chunks_mut(m).for_each(fix);
        } else {
            out.chunks_mut(m).for_each(fix);
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = m;
        CpuTensor { data: out, shape }
    }

    fn layer_norm(&self, x: &CpuTensor, eps: f32, affine: Option<(&CpuTensor, &CpuTensor)>) -> CpuTensor {
        self.map_rows(x, |_, a, o| {
            let (mean, rstd) = mean_rstd(a, eps);
            for j in 0..a.len() {
                let n = (a[j] - mean) * rstd;
                let v = match affine {
                    Some((w, b)) => n * w.data[j] + b.data[j],
                    None => n,
                };
                o[j] = self.r(v);
            }
        })
    }

    fn norm_modulate(&self, x: &CpuTensor, eps: f32, shift: &CpuTensor, scale: &CpuTensor, rpf: usize) -> CpuTensor {
        let d = x.cols();
        self.map_rows(x, |i, a, o| {
            let f = i / rpf;
            let sh = &shift.data[f * d..(f + 1) * d];
            let sc = &scale.data[f * d..(f + 1) * d];
            let (mean, rstd) = mean_rstd(a, eps);
            for j in 0..d {
                // Official order: LN(x) (rounded), (1 + scale) (rounded), product, + shift.
                let n = self.r((a[j] - mean) * rstd);
                let s1 = self.r(1.0 + sc[j]);
                o[j] = self.r(self.r(n * s1) + sh[j]);
            }
        })
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32) -> CpuTensor {
        self.map_rows(x, |_, a, o| {
            let ms = (a.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / a.len() as f64) as f32;
            let rs = 1.0 / (ms + eps).sqrt();
            for j in 0..a.len() {
                o[j] = self.r(self.r(a[j] * rs) * w.data[j]);
            }
        })
    }

    fn gelu_tanh(&self, x: &CpuTensor) -> CpuTensor {
        self.map_rows(x, |_, a, o| a.iter().zip(o).for_each(|(a, o)| *o = self.r(gelu_tanh_f32(*a))))
    }
    fn silu(&self, x: &CpuTensor) -> CpuTensor {
        self.map_rows(x, |_, a, o| a.iter().zip(o).for_each(|(a, o)| *o = self.r(silu_f32(*a))))
    }
    fn add(&self, x: &CpuTensor, y: &CpuTensor) -> CpuTensor {
        assert_eq!(x.data.len(), y.data.len());
        let c = x.cols();
        self.map_rows(x, |i, a, o| {
            let b = &y.data[i * c..(i + 1) * c];
            for j in 0..c {
                o[j] = self.r(a[j] + b[j]);
            }
        })
    }
    fn gated_residual(&self, x: &CpuTensor, y: &CpuTensor, gate: &CpuTensor, rpf: usize) -> CpuTensor {
        assert_eq!(x.data.len(), y.data.len());
        let d = x.cols();
        self.map_rows(x, |i, a, o| {
            let f = i / rpf;
            let g = &gate.data[f * d..(f + 1) * d];
            let b = &y.data[i * d..(i + 1) * d];
            for j in 0..d {
                o[j] = self.r(a[j] + self.r(b[j] * g[j]));
            }
        })
    }
    fn modulation(&self, table: &CpuTensor, e: &CpuTensor, k: usize) -> Vec<CpuTensor> {
        let kd = e.cols();
        let d = kd / k;
        let frames = e.rows();
        assert_eq!(table.data.len(), kd);
        (0..k)
            .map(|i| {
                let mut out = vec![0f32; frames * d];
                for f in 0..frames {
                    for j in 0..d {
                        out[f * d + j] = self.r(table.data[i * d + j] + e.data[f * kd + i * d + j]);
                    }
                }
                CpuTensor { data: out, shape: vec![frames, d] }
            })
            .collect()
    }

    fn rope(&self, x: &CpuTensor, heads: usize, grid: [usize; 3], start_frame: usize) -> CpuTensor {
        let cols = x.cols();
        let d = cols / heads;
        let [_, gh, gw] = grid;
        let tables = RopeTables::new(d);
        // cos/sin per axis position, computed once per call instead of once per row: the
        // angle of a pair depends on one coordinate only.
        let gf = x.rows().div_ceil(gh * gw);
        let axis = |n: usize, off: usize, fr: &[f64]| -> Vec<(f64, f64)> {
            (0..n).flat_map(|p| fr.iter().map(move |&th| ((p + off) as f64 * th).sin_cos()).map(|(s, c)| (c, s))).collect()
        };
        let tf = axis(gf, start_frame, &tables.freqs[0]);
        let th = axis(gh, 0, &tables.freqs[1]);
        let tw = axis(gw, 0, &tables.freqs[2]);
        let [nf, nh, nw] = [tables.freqs[0].len(), tables.freqs[1].len(), tables.freqs[2].len()];
        self.map_rows(x, |i, a, o| {
            let f = i / (gh * gw);
            let hh = (i / gw) % gh;
            let ww = i % gw;
            let angles = tf[f * nf..(f + 1) * nf].iter().chain(&th[hh * nh..(hh + 1) * nh]).chain(&tw[ww * nw..(ww + 1) * nw]);
            for h in 0..heads {
                for (p, &(c, s)) in angles.clone().enumerate() {
                    let j = h * d + 2 * p;
                    let (re, im) = (a[j] as f64, a[j + 1] as f64);
                    o[j] = self.r((re * c - im * s) as f32);
                    o[j + 1] = self.r((re * s + im * c) as f32);
                }
            }
        })
    }

    fn sinusoid(&self, t: &[f32], dim: usize) -> CpuTensor {
        let v = sinusoid_f64(t, dim);
        let data: Vec<f32> = v.iter().map(|&x| self.r(x as f32)).collect();
        CpuTensor::new(data, &[t.len(), dim])
    }

    fn patchify(&self, x: &CpuTensor, patch: [usize; 3]) -> CpuTensor {
        let [f, c, hh, ww] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let [_, ph, pw] = patch;
        let (gh, gw) = (hh / ph, ww / pw);
        let feat = c * ph * pw;
        let mut out = vec![0f32; f * gh * gw * feat];
        for fi in 0..f {
            for i in 0..gh {
                for j in 0..gw {
                    let tok = (fi * gh + i) * gw + j;
                    for ci in 0..c {
                        for a in 0..ph {
                            for b in 0..pw {
                                out[tok * feat + (ci * ph + a) * pw + b] = x.data[((fi * c + ci) * hh + i * ph + a) * ww + j * pw + b];
                            }
                        }
                    }
                }
            }
        }
        CpuTensor::new(out, &[f * gh * gw, feat])
    }

    fn unpatchify(&self, x: &CpuTensor, grid: [usize; 3], patch: [usize; 3], c: usize) -> CpuTensor {
        let [f, gh, gw] = grid;
        let [_, ph, pw] = patch;
        let (hh, ww) = (gh * ph, gw * pw);
        let feat = ph * pw * c;
        assert_eq!(x.cols(), feat);
        let mut out = vec![0f32; f * c * hh * ww];
        for fi in 0..f {
            for i in 0..gh {
                for j in 0..gw {
                    let tok = (fi * gh + i) * gw + j;
                    for a in 0..ph {
                        for b in 0..pw {
                            for ci in 0..c {
                                // Feature index (p=0, q=a, r=b, channel) with the channel fastest.
                                out[((fi * c + ci) * hh + i * ph + a) * ww + j * pw + b] = x.data[tok * feat + (a * pw + b) * c + ci];
                            }
                        }
                    }
                }
            }
        }
        CpuTensor::new(out, &[f, c, hh, ww])
    }

    fn attention(&self, q: &CpuTensor, d: usize, ctx: &[Vec<Seg<'_, CpuTensor>>]) -> CpuTensor {
        let n = q.rows();
        let qc = q.cols();
        let heads = ctx.len();
        assert_eq!(qc, heads * d);
        let scale = 1.0 / (d as f32).sqrt();
        let bf = self.precision == Precision::Bf16;
        // One head at a time in parallel; each builds its contiguous K/V from its segments.
        let per_head: Vec<Vec<f32>> = ctx
            .par_iter()
            .enumerate()
            .map(|(h, segs)| {
                let lk: usize = segs.iter().map(|s| s.rows).sum();
                let mut k = Vec::with_capacity(lk * d);
                let mut v = Vec::with_capacity(lk * d);
                for s in segs {
                    for r in 0..s.rows {
                        let o = s.offset + r * s.stride;
                        k.extend_from_slice(&s.k.data[o..o + d]);
                        v.extend_from_slice(&s.v.data[o..o + d]);
                    }
                }
                let mut out = vec![0f32; n * d];
                if lk == 0 {
                    return out;
                }
                // S = Q_h · Kᵀ  ([n, lk])
                let mut sc = vec![0f32; n * lk];
                sgemm(n, d, lk, &q.data[h * d..], qc, 1, &k, 1, d, &mut sc, lk);
                let mut sums = vec![0f32; n];
                for (i, row) in sc.chunks_mut(lk).enumerate() {
                    let mut mx = f32::NEG_INFINITY;
                    for x in row.iter_mut() {
                        *x *= scale;
                        mx = mx.max(*x);
                    }
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        let p = (*x - mx).exp();
                        sum += p;
                        // bf16 attention multiplies V by the probabilities rounded to bf16
                        // (the sum stays f32), as PyTorch's CPU flash kernel does.
                        *x = if bf { bf16::from_f32(p).to_f32() } else { p };
                    }
                    sums[i] = sum;
                }
                // O = P · V  ([n, d])
                sgemm(n, lk, d, &sc, lk, 1, &v, d, 1, &mut out, d);
                for (i, row) in out.chunks_mut(d).enumerate() {
                    for x in row.iter_mut() {
                        *x = self.r(*x / sums[i]);
                    }
                }
                out
            })
            .collect();
        let mut out = vec![0f32; n * qc];
        for (h, o) in per_head.iter().enumerate() {
            for i in 0..n {
                out[i * qc + h * d..i * qc + (h + 1) * d].copy_from_slice(&o[i * d..(i + 1) * d]);
            }
        }
        CpuTensor::new(out, &q.shape)
    }
}

/// `[cos(t·ω_j) | sin(t·ω_j)]` with `ω_j = 10000^(−j/half)`, in f64 like the official code.
pub fn sinusoid_f64(t: &[f32], dim: usize) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0f64; t.len() * dim];
    for (i, &ti) in t.iter().enumerate() {
        for j in 0..half {
            let w = 10000f64.powf(-(j as f64) / half as f64);
            let a = ti as f64 * w;
            out[i * dim + j] = a.cos();
            out[i * dim + half + j] = a.sin();
        }
    }
    out
}

/// Per-axis RoPE frequencies for head dim `d`: the `d/2` complex pairs split into
/// `[d/2 − 2⌊d/6⌋, ⌊d/6⌋, ⌊d/6⌋]` for (frame, h, w), each with `θ_j = 1/10000^(2j/(2·pairs))`.
pub struct RopeTables {
    /// Frequencies of the (frame, h, w) pairs.
    pub freqs: [Vec<f64>; 3],
}

impl RopeTables {
    /// The tables of head dim `d`.
    pub fn new(d: usize) -> Self {
        let c = d / 2;
        let parts = [c - 2 * (c / 3), c / 3, c / 3];
        let f = |pairs: usize| -> Vec<f64> {
            let dim = 2 * pairs;
            (0..pairs).map(|j| 1.0 / 10000f64.powf((2 * j) as f64 / dim as f64)).collect()
        };
        RopeTables { freqs: [f(parts[0]), f(parts[1]), f(parts[2])] }
    }

    /// (cos, sin) of every pair's angle at position (frame, h, w).
    pub fn angles(&self, f: usize, h: usize, w: usize) -> Vec<(f64, f64)> {
        let mut v = Vec::with_capacity(self.freqs.iter().map(|x| x.len()).sum());
        for (pos, fr) in [f, h, w].into_iter().zip(&self.freqs) {
            for &th in fr {
                let a = pos as f64 * th;
                v.push((a.cos(), a.sin()));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive() {
        let be = CpuBackend::new(Precision::F32);
        let (n, k, m) = (7, 13, 5);
        let x = be.upload(&rand_vec(n * k, 1), &[n, k]);
        let w = be.upload(&rand_vec(m * k, 2), &[m, k]);
        let b = be.upload(&rand_vec(m, 3), &[m]);
        let y = be.linear(&x, &w, Some(&b));
        for i in 0..n {
            for j in 0..m {
                let r: f64 = (0..k).map(|t| x.data[i * k + t] as f64 * w.data[j * k + t] as f64).sum::<f64>() + b.data[j] as f64;
                assert!((y.data[i * m + j] as f64 - r).abs() < 1e-5, "({i},{j}) {} vs {r}", y.data[i * m + j]);
            }
        }
    }

    #[test]
    fn attention_matches_naive_over_segments() {
        let be = CpuBackend::new(Precision::F32);
        let (n, heads, d) = (5, 2, 8);
        let q = be.upload(&rand_vec(n * heads * d, 4), &[n, heads * d]);
        // head 0: two segments from a "slot" tensor [rows, d]; head 1: strided rows of `cur`.
        let slot_k = be.upload(&rand_vec(6 * d, 5), &[6, d]);
        let slot_v = be.upload(&rand_vec(6 * d, 6), &[6, d]);
        let cur_k = be.upload(&rand_vec(3 * heads * d, 7), &[3, heads * d]);
        let cur_v = be.upload(&rand_vec(3 * heads * d, 8), &[3, heads * d]);
        let ctx = vec![
            vec![
                Seg { k: &slot_k, v: &slot_v, offset: 0, rows: 2, stride: d, frame: None },
                Seg { k: &slot_k, v: &slot_v, offset: 4 * d, rows: 2, stride: d, frame: None },
            ],
            vec![Seg { k: &cur_k, v: &cur_v, offset: d, rows: 3, stride: heads * d, frame: None }],
        ];
        let out = be.attention(&q, d, &ctx);
        assert!(out.data.iter().all(|x| x.is_finite()));
        let rows_of = |h: usize| -> Vec<(Vec<f32>, Vec<f32>)> {
            if h == 0 {
                [0, 1, 4, 5].iter().map(|&r| (slot_k.data[r * d..(r + 1) * d].to_vec(), slot_v.data[r * d..(r + 1) * d].to_vec())).collect()
            } else {
                (0..3).map(|r| {
                    let o = r * heads * d + d;
                    (cur_k.data[o..o + d].to_vec(), cur_v.data[o..o + d].to_vec())
                }).collect()
            }
        };
        for h in 0..heads {
            let kv = rows_of(h);
            for i in 0..n {
                let qi = &q.data[i * heads * d + h * d..i * heads * d + (h + 1) * d];
                let s: Vec<f64> = kv.iter().map(|(k, _)| qi.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()).collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = p.iter().sum();
                for c in 0..d {
                    let r: f64 = p.iter().zip(&kv).map(|(p, (_, v))| p * v[c] as f64).sum::<f64>() / z;
                    let got = out.data[i * heads * d + h * d + c];
                    assert!((got as f64 - r).abs() < 1e-5, "head {h} row {i} col {c}: {got} vs {r}");
                }
            }
        }
    }

    #[test]
    fn patchify_unpatchify_roundtrip() {
        let be = CpuBackend::new(Precision::F32);
        let x = be.upload(&rand_vec(2 * 3 * 4 * 6, 9), &[2, 3, 4, 6]);
        let p = be.patchify(&x, [1, 2, 2]);
        assert_eq!(p.shape, vec![2 * 2 * 3, 12]);
        // unpatchify expects channel-fastest features; reorder (c, a, b) → (a, b, c).
        let mut q = p.clone();
        for t in 0..12 {
            for c in 0..3 {
                for a in 0..2 {
                    for b in 0..2 {
                        q.data[t * 12 + (a * 2 + b) * 3 + c] = p.data[t * 12 + (c * 2 + a) * 2 + b];
                    }
                }
            }
        }
        let y = be.unpatchify(&q, [2, 2, 3], [1, 2, 2], 3);
        assert_eq!(y, x);
    }

    #[test]
    fn bf16_rounds_every_output() {
        let be = CpuBackend::new(Precision::Bf16);
        let x = be.upload(&rand_vec(64, 10), &[4, 16]);
        for t in [be.gelu_tanh(&x), be.silu(&x), be.layer_norm(&x, 1e-6, None), be.add(&x, &x)] {
            assert!(t.data.iter().all(|v| bf16::from_f32(*v).to_f32() == *v));
        }
    }
}
