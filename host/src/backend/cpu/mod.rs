//! The CPU reference backend.
//!
//! Tensors are host `Vec<f32>`. In bf16 mode every value a tensor holds is exactly
//! representable in bf16 (each op rounds its result with round-to-nearest-even), so the numbers
//! equal those of bf16 storage while the GEMM crate still works on f32 with f32 accumulation.
//! Row-wise ops run in parallel with rayon, their inner loops vectorised ([`math`]: AVX2+FMA
//! when the CPU has it, checked at run time); GEMMs use the `gemm` crate ([`gemm`]) on rayon's
//! threads, and in bf16 mode on a CPU with AVX512-BF16 the linears use `vdpbf16ps`
//! ([`gemm_bf16`]); attention is blocked with an online softmax ([`attention`]).

pub mod attention;
pub mod gemm;
pub mod gemm_bf16;
pub mod math;

use rayon::prelude::*;

use self::gemm::{sgemm, Mat};
pub use self::math::{gelu_tanh_f32, silu_f32};
use self::math::{multiversion, round_bf16, round_bf16_slice};
use super::{Backend, Precision, Seg};
use crate::error::DeviceError;
use crate::{Error, Result};

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
///
/// An op whose operands do not fit (shapes, ranges) records an error, as the GPU backend
/// does, and returns zeros in the result's shape: nothing panics, [`Backend::status`] reports
/// the first failure, and the pipeline checks it after every forward.
#[derive(Debug)]
pub struct CpuBackend {
    precision: Precision,
    error: std::sync::Mutex<Option<DeviceError>>,
}

impl Clone for CpuBackend {
    /// A backend of the same precision, with no error recorded.
    fn clone(&self) -> Self {
        CpuBackend::new(self.precision)
    }
}

impl CpuBackend {
    /// A backend storing weights, activations and the KV cache at `precision`.
    pub fn new(precision: Precision) -> Self {
        CpuBackend { precision, error: std::sync::Mutex::new(None) }
    }

    /// True when the operands fit; otherwise records `msg()` (the first failure sticks) and
    /// returns false, and the op returns zeros instead of computing.
    fn fits(&self, ok: bool, msg: impl FnOnce() -> String) -> bool {
        let mut e = self.error.lock().unwrap();
        if !ok && e.is_none() {
            *e = Some(DeviceError::Invalid(format!("cpu: {}", msg())));
        }
        ok && e.is_none()
    }

    fn bf16(&self) -> bool {
        self.precision == Precision::Bf16
    }

    fn round_all(&self, v: &mut [f32]) {
        if self.bf16() {
            if v.len() >= PAR_MIN {
                v.par_chunks_mut(PAR_MIN).for_each(round_bf16_slice);
            } else {
                round_bf16_slice(v);
            }
        }
    }

    /// `x·wᵀ + b`, then GELU-tanh when `gelu`, rounded once per op (with `gelu` in bf16 the
    /// linear's result is rounded before the GELU, as two separate official ops round).
    fn linear_epilogue(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>, gelu: bool) -> CpuTensor {
        let k = x.cols();
        let n = x.rows();
        let m = w.shape.first().copied().unwrap_or(0);
        let mut shape = x.shape.clone();
        if let Some(l) = shape.last_mut() {
            *l = m;
        }
        if !self.fits(w.shape.len() == 2 && w.shape[1] == k && b.is_none_or(|b| b.data.len() == m), || {
            format!("linear: x {:?} against weight {:?}, bias {:?}", x.shape, w.shape, b.map(|b| &b.shape))
        }) {
            return self.zeros(&shape);
        }
        let mut out = vec![0f32; n * m];
        let bf = self.bf16();
        if bf && gemm_bf16::available() {
            // bf16 storage on an AVX512-BF16 CPU: pairs of bf16 products per instruction.
            gemm_bf16::linear(&x.data, &w.data, n, k, m, &mut out);
        } else {
            // wᵀ's element (c, j) is w[j, c].
            sgemm(n, k, m, Mat::new(&x.data, k, 1), Mat::new(&w.data, 1, k), 1.0, &mut out, m, false, true);
        }
        let bias = b.map(|b| b.data.as_slice());
        let fix = |row: &mut [f32]| {
            bias_row(row, bias, bf);
            if gelu {
                let mut buf = [0f32; 256];
                for c in row.chunks_mut(256) {
                    let t = &mut buf[..c.len()];
                    math::gelu_tanh(c, t);
                    if bf {
                        round_bf16_slice(t);
                    }
                    c.copy_from_slice(t);
                }
            }
        };
        if out.len() >= PAR_MIN {
            out.par_chunks_mut(m).for_each(fix);
        } else {
            out.chunks_mut(m).for_each(fix);
        }
        CpuTensor { data: out, shape }
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

/// Rounds to bf16 when `bf16` (an op's output rounding; `bf16` is loop-invariant, so the
/// branch leaves the vectorised loops).
#[inline(always)]
fn rnd(x: f32, bf16: bool) -> f32 {
    if bf16 {
        round_bf16(x)
    } else {
        x
    }
}

multiversion! {
    /// Mean and 1/sqrt(var + eps) of a row: two passes in f32 over 8 partial sums.
    fn mean_rstd(a: &[f32], eps: f32) -> (f32, f32) {
        let n = a.len() as f32;
        let mean = math::sum(a) / n;
        let var = math::sum_sq(a, mean) / n;
        (mean, 1.0 / (var + eps).sqrt())
    }
}

multiversion! {
    /// adaLN of one row: `LN(x)·(1 + scale) + shift`, rounding where the official bf16 run does.
    fn norm_modulate_row(a: &[f32], o: &mut [f32], sh: &[f32], sc: &[f32], mean: f32, rstd: f32, bf16: bool) {
        for j in 0..a.len() {
            // Official order: LN(x) (rounded), (1 + scale) (rounded), product, + shift.
            let n = rnd((a[j] - mean) * rstd, bf16);
            let s1 = rnd(1.0 + sc[j], bf16);
            o[j] = rnd(rnd(n * s1, bf16) + sh[j], bf16);
        }
    }
}

multiversion! {
    /// LayerNorm of one row with an optional affine.
    fn layer_norm_row(a: &[f32], o: &mut [f32], w: Option<(&[f32], &[f32])>, mean: f32, rstd: f32, bf16: bool) {
        match w {
            Some((w, b)) => {
                for j in 0..a.len() {
                    o[j] = rnd((a[j] - mean) * rstd * w[j] + b[j], bf16);
                }
            }
            None => {
                for j in 0..a.len() {
                    o[j] = rnd((a[j] - mean) * rstd, bf16);
                }
            }
        }
    }
}

multiversion! {
    /// RMSNorm of one row: `x / sqrt(mean(x²) + eps)` (rounded), times the weight (rounded).
    fn rms_norm_row(a: &[f32], o: &mut [f32], w: &[f32], eps: f32, bf16: bool) {
        let ms = math::sum_sq(a, 0.0) / a.len() as f32;
        let rs = 1.0 / (ms + eps).sqrt();
        for j in 0..a.len() {
            o[j] = rnd(rnd(a[j] * rs, bf16) * w[j], bf16);
        }
    }
}

multiversion! {
    /// `o = x + y·g`, the gated residual of one row (the product rounded, then the sum).
    fn gated_row(a: &[f32], b: &[f32], g: &[f32], o: &mut [f32], bf16: bool) {
        for j in 0..a.len() {
            o[j] = rnd(a[j] + rnd(b[j] * g[j], bf16), bf16);
        }
    }
}

multiversion! {
    /// `o = x + y`.
    fn add_row(a: &[f32], b: &[f32], o: &mut [f32], bf16: bool) {
        for j in 0..a.len() {
            o[j] = rnd(a[j] + b[j], bf16);
        }
    }
}

multiversion! {
    /// `o += bias` (or nothing), then rounding: the GEMM epilogue of `linear`.
    fn bias_row(o: &mut [f32], b: Option<&[f32]>, bf16: bool) {
        if let Some(b) = b {
            for j in 0..o.len() {
                o[j] = rnd(o[j] + b[j], bf16);
            }
        } else if bf16 {
            round_bf16_slice(o);
        }
    }
}

/// RoPE of one row in place: pairs `(2i, 2i+1)` of each head rotated by `angles` (cos, sin),
/// in f64, rounded to the storage type.
#[inline]
fn rope_row(x: &mut [f32], heads: usize, d: usize, angles: &[(f64, f64)], bf16: bool) {
    for h in 0..heads {
        let row = &mut x[h * d..(h + 1) * d];
        for (p, &(c, s)) in row.chunks_exact_mut(2).zip(angles) {
            let (re, im) = (p[0] as f64, p[1] as f64);
            p[0] = rnd((re * c - im * s) as f32, bf16);
            p[1] = rnd((re * s + im * c) as f32, bf16);
        }
    }
}

/// Per-row RoPE angles of a `[f·h·w]` grid: `(cos, sin)` of every pair, `d/2` per row, built
/// from per-axis tables (the angle of a pair depends on one coordinate only).
struct RopeGrid {
    tf: Vec<(f64, f64)>,
    th: Vec<(f64, f64)>,
    tw: Vec<(f64, f64)>,
    n: [usize; 3],
    gh: usize,
    gw: usize,
}

impl RopeGrid {
    fn new(d: usize, rows: usize, grid: [usize; 3], start_frame: usize) -> Self {
        let [_, gh, gw] = grid;
        let tables = RopeTables::new(d);
        let gf = rows.div_ceil(gh * gw);
        let axis = |n: usize, off: usize, fr: &[f64]| -> Vec<(f64, f64)> {
            (0..n)
                .flat_map(|p| fr.iter().map(move |&th| ((p + off) as f64 * th).sin_cos()).map(|(s, c)| (c, s)))
                .collect()
        };
        RopeGrid {
            tf: axis(gf, start_frame, &tables.freqs[0]),
            th: axis(gh, 0, &tables.freqs[1]),
            tw: axis(gw, 0, &tables.freqs[2]),
            n: [tables.freqs[0].len(), tables.freqs[1].len(), tables.freqs[2].len()],
            gh,
            gw,
        }
    }
    /// The angles of row `i`, written into `buf` (d/2 long).
    fn row<'a>(&self, i: usize, buf: &'a mut Vec<(f64, f64)>) -> &'a [(f64, f64)] {
        let (f, hh, ww) = (i / (self.gh * self.gw), (i / self.gw) % self.gh, i % self.gw);
        let [nf, nh, nw] = self.n;
        buf.clear();
        buf.extend_from_slice(&self.tf[f * nf..(f + 1) * nf]);
        buf.extend_from_slice(&self.th[hh * nh..(hh + 1) * nh]);
        buf.extend_from_slice(&self.tw[ww * nw..(ww + 1) * nw]);
        buf
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn precision(&self) -> Precision {
        self.precision
    }

    fn status(&self) -> Result<()> {
        match &*self.error.lock().unwrap() {
            Some(e) => Err(Error::Device(e.clone())),
            None => Ok(()),
        }
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> CpuTensor {
        let n: usize = shape.iter().product();
        if !self.fits(data.len() == n, || format!("upload: {} values for shape {shape:?}", data.len())) {
            return self.zeros(shape);
        }
        let mut t = CpuTensor::new(data.to_vec(), shape);
        self.round_all(&mut t.data);
        t
    }
    fn download(&self, t: &CpuTensor) -> Vec<f32> {
        t.data.clone()
    }
    fn write(&self, dst: &mut CpuTensor, data: &[f32]) {
        if !self.fits(dst.data.len() == data.len(), || {
            format!("write: {} values into a tensor of shape {:?}", data.len(), dst.shape)
        }) {
            return;
        }
        dst.data.copy_from_slice(data);
        self.round_all(&mut dst.data);
    }
    fn shape<'a>(&self, t: &'a CpuTensor) -> &'a [usize] {
        &t.shape
    }
    fn zeros(&self, shape: &[usize]) -> CpuTensor {
        CpuTensor::new(vec![0.0; shape.iter().product()], shape)
    }
    fn copy_rows(
        &self,
        dst: &mut CpuTensor,
        dst_off: usize,
        src: &CpuTensor,
        src_off: usize,
        src_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        let src_end = if rows == 0 { 0 } else { src_off + (rows - 1) * src_stride + cols };
        if !self.fits(dst_off + rows * cols <= dst.data.len() && src_end <= src.data.len(), || {
            format!(
                "copy_rows: {rows}×{cols} rows out of range (dst {:?} at {dst_off}, src {:?} at {src_off} stride {src_stride})",
                dst.shape, src.shape
            )
        }) {
            return;
        }
        for r in 0..rows {
            let s = src_off + r * src_stride;
            let d = dst_off + r * cols;
            dst.data[d..d + cols].copy_from_slice(&src.data[s..s + cols]);
        }
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> CpuTensor {
        self.linear_epilogue(x, w, b, false)
    }

    fn linear_gelu(&self, x: &CpuTensor, w: &CpuTensor, b: Option<&CpuTensor>) -> CpuTensor {
        self.linear_epilogue(x, w, b, true)
    }

    fn layer_norm(&self, x: &CpuTensor, eps: f32, affine: Option<(&CpuTensor, &CpuTensor)>) -> CpuTensor {
        let bf = self.bf16();
        let cols = x.cols();
        if !self.fits(affine.is_none_or(|(w, b)| w.data.len() == cols && b.data.len() == cols), || {
            format!("layer_norm: affine {:?} for x {:?}", affine.map(|(w, b)| (&w.shape, &b.shape)), x.shape)
        }) {
            return self.zeros(&x.shape);
        }
        let affine = affine.map(|(w, b)| (w.data.as_slice(), b.data.as_slice()));
        self.map_rows(x, |_, a, o| {
            let (mean, rstd) = mean_rstd(a, eps);
            layer_norm_row(a, o, affine, mean, rstd, bf);
        })
    }

    fn norm_modulate(&self, x: &CpuTensor, eps: f32, shift: &CpuTensor, scale: &CpuTensor, rpf: usize) -> CpuTensor {
        let d = x.cols();
        let bf = self.bf16();
        let frames = if rpf == 0 { usize::MAX } else { x.rows().div_ceil(rpf) };
        if !self.fits(rpf > 0 && shift.data.len() >= frames * d && scale.data.len() >= frames * d, || {
            format!(
                "norm_modulate: x {:?}, {rpf} rows per frame, shift {:?}, scale {:?}",
                x.shape, shift.shape, scale.shape
            )
        }) {
            return self.zeros(&x.shape);
        }
        self.map_rows(x, |i, a, o| {
            let f = i / rpf;
            let (mean, rstd) = mean_rstd(a, eps);
            norm_modulate_row(a, o, &shift.data[f * d..(f + 1) * d], &scale.data[f * d..(f + 1) * d], mean, rstd, bf);
        })
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuTensor, eps: f32) -> CpuTensor {
        if !self.fits(w.data.len() == x.cols(), || format!("rms_norm: weight {:?} for x {:?}", w.shape, x.shape)) {
            return self.zeros(&x.shape);
        }
        let bf = self.bf16();
        self.map_rows(x, |_, a, o| rms_norm_row(a, o, &w.data, eps, bf))
    }

    fn gelu_tanh(&self, x: &CpuTensor) -> CpuTensor {
        let bf = self.bf16();
        self.map_rows(x, |_, a, o| {
            math::gelu_tanh(a, o);
            if bf {
                round_bf16_slice(o);
            }
        })
    }
    fn silu(&self, x: &CpuTensor) -> CpuTensor {
        let bf = self.bf16();
        self.map_rows(x, |_, a, o| {
            math::silu(a, o);
            if bf {
                round_bf16_slice(o);
            }
        })
    }
    fn add(&self, x: &CpuTensor, y: &CpuTensor) -> CpuTensor {
        if !self.fits(x.data.len() == y.data.len(), || {
            format!("add: shapes {:?} and {:?} differ in size", x.shape, y.shape)
        }) {
            return self.zeros(&x.shape);
        }
        let c = x.cols();
        let bf = self.bf16();
        self.map_rows(x, |i, a, o| add_row(a, &y.data[i * c..(i + 1) * c], o, bf))
    }
    fn gated_residual(&self, x: &CpuTensor, y: &CpuTensor, gate: &CpuTensor, rpf: usize) -> CpuTensor {
        let d = x.cols();
        let frames = if rpf == 0 { usize::MAX } else { x.rows().div_ceil(rpf) };
        if !self.fits(x.data.len() == y.data.len() && rpf > 0 && gate.data.len() >= frames * d, || {
            format!("gated_residual: x {:?}, y {:?}, gate {:?}, {rpf} rows per frame", x.shape, y.shape, gate.shape)
        }) {
            return self.zeros(&x.shape);
        }
        let bf = self.bf16();
        self.map_rows(x, |i, a, o| {
            let f = i / rpf;
            gated_row(a, &y.data[i * d..(i + 1) * d], &gate.data[f * d..(f + 1) * d], o, bf);
        })
    }
    fn modulation(&self, table: &CpuTensor, e: &CpuTensor, k: usize) -> Vec<CpuTensor> {
        let kd = e.cols();
        let d = kd / k.max(1);
        let frames = e.rows();
        if !self.fits(k > 0 && kd.is_multiple_of(k) && table.data.len() == kd, || {
            format!("modulation: table {:?}, e {:?}, k {k}", table.shape, e.shape)
        }) {
            return (0..k).map(|_| self.zeros(&[frames, d])).collect();
        }
        (0..k)
            .map(|i| {
                let mut out = vec![0f32; frames * d];
                for f in 0..frames {
                    for j in 0..d {
                        out[f * d + j] = rnd(table.data[i * d + j] + e.data[f * kd + i * d + j], self.bf16());
                    }
                }
                CpuTensor { data: out, shape: vec![frames, d] }
            })
            .collect()
    }

    fn rope(&self, x: &CpuTensor, heads: usize, grid: [usize; 3], start_frame: usize) -> CpuTensor {
        if !self.fits(rope_fits(x, heads, grid), || format!("rope: x {:?} for {heads} heads on grid {grid:?}", x.shape))
        {
            return self.zeros(&x.shape);
        }
        let d = x.cols() / heads;
        let g = RopeGrid::new(d, x.rows(), grid, start_frame);
        let bf = self.bf16();
        self.map_rows(x, |i, a, o| {
            let mut buf = Vec::with_capacity(d / 2);
            o.copy_from_slice(a);
            rope_row(o, heads, d, g.row(i, &mut buf), bf);
        })
    }

    /// Fused: each row of q and k is RMS-normalised and rotated in one pass (same rounding
    /// points as `rope(rms_norm(·))`).
    fn qk_norm_rope(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        wq: &CpuTensor,
        wk: &CpuTensor,
        eps: f32,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> (CpuTensor, CpuTensor) {
        let ok = rope_fits(q, heads, grid)
            && rope_fits(k, heads, grid)
            && q.cols() == k.cols()
            && wq.data.len() == q.cols()
            && wk.data.len() == k.cols();
        if !self.fits(ok, || {
            format!(
                "qk_norm_rope: q {:?}, k {:?}, weights {:?}/{:?} for {heads} heads on grid {grid:?}",
                q.shape, k.shape, wq.shape, wk.shape
            )
        }) {
            return (self.zeros(&q.shape), self.zeros(&k.shape));
        }
        let d = q.cols() / heads;
        let g = RopeGrid::new(d, q.rows().max(k.rows()), grid, start_frame);
        let bf = self.bf16();
        let one = |x: &CpuTensor, w: &CpuTensor| {
            self.map_rows(x, |i, a, o| {
                let mut buf = Vec::with_capacity(d / 2);
                rms_norm_row(a, o, &w.data, eps, bf);
                rope_row(o, heads, d, g.row(i, &mut buf), bf);
            })
        };
        (one(q, wq), one(k, wk))
    }

    fn sinusoid(&self, t: &[f32], dim: usize) -> CpuTensor {
        let v = sinusoid_f64(t, dim);
        let data: Vec<f32> = v.iter().map(|&x| rnd(x as f32, self.bf16())).collect();
        CpuTensor::new(data, &[t.len(), dim])
    }

    fn patchify(&self, x: &CpuTensor, patch: [usize; 3]) -> CpuTensor {
        let [pt, ph, pw] = patch;
        let ok = x.shape.len() == 4
            && pt == 1
            && ph > 0
            && pw > 0
            && x.shape[2].is_multiple_of(ph)
            && x.shape[3].is_multiple_of(pw);
        if !self.fits(ok, || format!("patchify: latent {:?} with patch {patch:?} (temporal patch must be 1)", x.shape))
        {
            return self.zeros(&[0, 0]);
        }
        let [f, c, hh, ww] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
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
                                out[tok * feat + (ci * ph + a) * pw + b] =
                                    x.data[((fi * c + ci) * hh + i * ph + a) * ww + j * pw + b];
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
        if !self.fits(x.cols() == feat && x.rows() == f * gh * gw, || {
            format!("unpatchify: x {:?} for grid {grid:?}, patch {patch:?}, {c} channels", x.shape)
        }) {
            return self.zeros(&[f, c, hh, ww]);
        }
        let mut out = vec![0f32; f * c * hh * ww];
        for fi in 0..f {
            for i in 0..gh {
                for j in 0..gw {
                    let tok = (fi * gh + i) * gw + j;
                    for a in 0..ph {
                        for b in 0..pw {
                            for ci in 0..c {
                                // Feature index (p=0, q=a, r=b, channel) with the channel fastest.
                                out[((fi * c + ci) * hh + i * ph + a) * ww + j * pw + b] =
                                    x.data[tok * feat + (a * pw + b) * c + ci];
                            }
                        }
                    }
                }
            }
        }
        CpuTensor::new(out, &[f, c, hh, ww])
    }

    fn attention(&self, q: &CpuTensor, d: usize, ctx: &[Vec<Seg<'_, CpuTensor>>]) -> CpuTensor {
        let heads = ctx.len();
        let segs_fit = ctx.iter().flatten().all(|s| {
            s.rows == 0
                || (s.stride >= d && s.offset + (s.rows - 1) * s.stride + d <= s.k.data.len().min(s.v.data.len()))
        });
        if !self.fits(heads > 0 && d > 0 && q.cols() == heads * d && segs_fit, || {
            format!("attention: q {:?} for {heads} heads of {d}, or a segment outside its K/V", q.shape)
        }) {
            return self.zeros(&q.shape);
        }
        CpuTensor::new(attention::flash_attention(&q.data, q.rows(), d, ctx, self.bf16()), &q.shape)
    }
}

/// Whether `x` is `[grid tokens, heads · d]` with an even head dim.
fn rope_fits(x: &CpuTensor, heads: usize, grid: [usize; 3]) -> bool {
    heads > 0
        && x.cols().is_multiple_of(heads)
        && (x.cols() / heads).is_multiple_of(2)
        && x.rows() == grid.iter().product::<usize>()
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
                let r: f64 =
                    (0..k).map(|t| x.data[i * k + t] as f64 * w.data[j * k + t] as f64).sum::<f64>() + b.data[j] as f64;
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
                [0, 1, 4, 5]
                    .iter()
                    .map(|&r| (slot_k.data[r * d..(r + 1) * d].to_vec(), slot_v.data[r * d..(r + 1) * d].to_vec()))
                    .collect()
            } else {
                (0..3)
                    .map(|r| {
                        let o = r * heads * d + d;
                        (cur_k.data[o..o + d].to_vec(), cur_v.data[o..o + d].to_vec())
                    })
                    .collect()
            }
        };
        for h in 0..heads {
            let kv = rows_of(h);
            for i in 0..n {
                let qi = &q.data[i * heads * d + h * d..i * heads * d + (h + 1) * d];
                let s: Vec<f64> = kv
                    .iter()
                    .map(|(k, _)| qi.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt())
                    .collect();
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
            assert!(t.data.iter().all(|v| half::bf16::from_f32(*v).to_f32() == *v));
        }
    }
}
