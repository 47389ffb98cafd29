//! Attention (self and cross, one packed launch over every head's segment list) and Dummy
//! Forcing's calibration statistic on the device.

use dfrt_kernels::attention::{segment_table, AttnBf16D128, AttnBf16D128W8, AttnBf16D64, AttnF32, AttnParams, KvSeg};
use dfrt_kernels::attn_bias::AttnBiasParams;
use dfrt_kernels::calib::{CalibMassParams, CalibMeanParams};
use dfrt_kernels::Launch;

use super::{u32_of, AttnRows, CheckParams, GpuBackend, GpuTensor};
use crate::backend::{Precision, Seg};
use crate::gpu::{DevPtr, Device};
use crate::{Error, Result};

/// The four attention kernels share one params struct ([`AttnParams`]) and one table check.
trait AttnKernel: Launch + CheckParams {
    fn check_table(&self, seg_start: &[u32], segs: &[KvSeg]) -> std::result::Result<(), String>;
}

macro_rules! attn_kernels {
    ($($t:ty),*) => {$(
        impl AttnKernel for $t {
            fn check_table(&self, seg_start: &[u32], segs: &[KvSeg]) -> std::result::Result<(), String> {
                <$t>::check_table(self, seg_start, segs)
            }
        }
    )*};
}

attn_kernels!(AttnF32, AttnBf16D128, AttnBf16D128W8, AttnBf16D64);

impl<D: Device> GpuBackend<D> {
    /// Checks the segment table the host built against the kernel's rules, then launches.
    fn launch_attention<A: AttnKernel>(&self, a: A, seg_start: &[u32], segs: &[KvSeg]) -> Result<()> {
        a.check_table(seg_start, segs).map_err(Error::invalid_op)?;
        self.launch(a)
    }

    /// The umT5 encoder's attention ([`crate::backend::Backend::attention_biased`]) on
    /// `attn_bias_*`: shapes checked here, then one launch for every head.
    pub(super) fn try_attention_biased(
        &self,
        q: &GpuTensor<D>,
        k: &GpuTensor<D>,
        v: &GpuTensor<D>,
        heads: usize,
        d: usize,
        bias: &GpuTensor<D>,
    ) -> Result<GpuTensor<D>> {
        let (n, lk, w) = (q.rows(), k.rows(), heads * d);
        let shapes_ok = q.shape.len() == 2
            && q.cols() == w
            && k.shape == [lk, w]
            && v.shape == [lk, w]
            && bias.shape == [heads, n, lk];
        if !shapes_ok || w == 0 {
            return Err(Error::invalid_op(format!(
                "attention_biased: q {:?}, k {:?}, v {:?}, bias {:?} for {heads} heads of {d}",
                q.shape, k.shape, v.shape, bias.shape
            )));
        }
        let o = self.new_tensor(&q.shape)?;
        self.launch_ew(AttnBiasParams {
            q: q.ptr,
            k: k.ptr,
            v: v.ptr,
            bias: bias.ptr,
            o: o.ptr,
            n: u32_of(n, "query rows")?,
            lk: u32_of(lk, "keys")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
        })?;
        Ok(o)
    }

    pub(super) fn try_attention(
        &self,
        q: &GpuTensor<D>,
        d: usize,
        ctx: &[Vec<Seg<'_, GpuTensor<D>>>],
    ) -> Result<GpuTensor<D>> {
        let heads = ctx.len();
        if heads == 0 || q.cols() != heads * d {
            return Err(Error::invalid_op(format!("attention: q {:?} for {heads} heads of {d}", q.shape)));
        }
        // The per-head segment table, exactly the cache's segment lists: seg_start [heads+1]
        // u32, then the KvSeg entries (8-byte aligned), uploaded into one reused buffer.
        let mut seg_start = Vec::with_capacity(heads + 1);
        let mut segs = Vec::new();
        for list in ctx {
            seg_start.push(u32_of(segs.len(), "segments")?);
            for s in list {
                if s.rows == 0 {
                    continue;
                }
                let end = s.offset + (s.rows - 1) * s.stride + d;
                if s.stride < d || end > s.k.numel() || end > s.v.numel() || s.k.ptr == 0 || s.v.ptr == 0 {
                    return Err(Error::invalid_op(format!(
                        "attention: segment at {} ({} rows, stride {}) outside K {:?} / V {:?}",
                        s.offset, s.rows, s.stride, s.k.shape, s.v.shape
                    )));
                }
                segs.push(KvSeg {
                    k: s.k.at(s.offset),
                    v: s.v.at(s.offset),
                    rows: u32_of(s.rows, "segment rows")?,
                    stride: u32_of(s.stride, "segment stride")?,
                });
            }
        }
        seg_start.push(u32_of(segs.len(), "segments")?);
        let table_bytes = segment_table(&seg_start, &segs);
        let table = self.upload_table(&table_bytes.bytes)?;
        let o = self.new_tensor(&q.shape)?;
        let p = AttnParams {
            q: q.ptr,
            o: o.ptr,
            seg_start: table,
            segs: table + table_bytes.segs_offset as u64,
            q_rows: u32_of(q.rows(), "query rows")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            q_stride: u32_of(q.cols(), "q stride")?,
            scale_log2: (1.0 / (d as f64).sqrt() * std::f64::consts::LOG2_E) as f32,
        };
        match (self.precision, d) {
            (Precision::F32, _) => self.launch_attention(AttnF32(p), &seg_start, &segs)?,
            (Precision::Bf16, 128) if self.opts.attn_rows == AttnRows::R128 => {
                self.launch_attention(AttnBf16D128W8(p), &seg_start, &segs)?
            }
            (Precision::Bf16, 128) => self.launch_attention(AttnBf16D128(p), &seg_start, &segs)?,
            (Precision::Bf16, 64) => self.launch_attention(AttnBf16D64(p), &seg_start, &segs)?,
            (Precision::Bf16, _) => {
                return Err(Error::unsupported(format!(
                    "attention: no bf16 kernel for head_dim {d} (have 64 and 128; use --dtype f32)"
                )))
            }
        }
        Ok(o)
    }
}

/// The calibration kernel's segments for `ctx`, if it is one list of segments shared by all
/// heads at a fixed head stride: `(key address, tokens, token stride, head stride)`; an error
/// when a segment reaches outside its tensor.
#[allow(clippy::type_complexity)]
pub(super) fn calib_segments<D: Device>(
    ctx: &[Vec<Seg<'_, GpuTensor<D>>>],
    d: usize,
) -> Option<Result<Vec<(DevPtr, usize, usize, usize)>>> {
    let first = ctx.first()?;
    let mut out = Vec::with_capacity(first.len());
    for (i, s0) in first.iter().enumerate() {
        let hs = match ctx.get(1) {
            Some(l) => l.get(i)?.offset.checked_sub(s0.offset)?,
            None => 0,
        };
        for (h, l) in ctx.iter().enumerate() {
            let s = l.get(i)?;
            let same = l.len() == first.len()
                && std::ptr::eq(s.k, s0.k)
                && s.offset == s0.offset + h * hs
                && s.rows == s0.rows
                && s.stride == s0.stride;
            if !same || s.k.ptr == 0 {
                return None;
            }
        }
        if s0.rows > 0 {
            let end = s0.offset + (s0.rows - 1) * s0.stride + (ctx.len() - 1) * hs + d;
            if end > s0.k.numel() {
                return Some(Err(Error::invalid_op(format!(
                    "calibration: segment {i} at {} ({} rows, stride {}, head stride {hs}) outside K {:?}",
                    s0.offset, s0.rows, s0.stride, s0.k.shape
                ))));
            }
            out.push((s0.k.at(s0.offset), s0.rows, s0.stride, hs));
        }
    }
    Some(Ok(out))
}

impl<D: Device> GpuBackend<D> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_calibration(
        &self,
        q: &GpuTensor<D>,
        d: usize,
        heads: usize,
        segs: &[(DevPtr, usize, usize, usize)],
        rows: &[usize],
        first_end: usize,
        mid_end: usize,
    ) -> Result<Vec<f32>> {
        let t = q.rows();
        if q.cols() != heads * d || rows.is_empty() || rows.iter().any(|&r| r >= t) {
            return Err(Error::invalid_op(format!(
                "calibration: q {:?} for {heads} heads of {d}, {} sampled rows below {t}",
                q.shape,
                rows.len()
            )));
        }
        let rows32: Vec<u32> = rows.iter().map(|&r| u32_of(r, "sampled row")).collect::<Result<_>>()?;
        let mut table = Vec::with_capacity(segs.len() * 24);
        for &(k, tokens, ts, hs) in segs {
            table.extend_from_slice(&k.to_le_bytes());
            for v in [u32_of(tokens, "segment tokens")?, u32_of(ts, "token stride")?, u32_of(hs, "head stride")?, 0] {
                table.extend_from_slice(&v.to_le_bytes());
            }
        }
        let rows_t = self.alloc(&[rows32.len()], Precision::F32)?;
        self.sh.dev.h2d(rows_t.ptr, bytemuck::cast_slice(&rows32))?;
        let segs_t = self.alloc(&[table.len().div_ceil(4).max(1)], Precision::F32)?;
        self.sh.dev.h2d(segs_t.ptr, &table)?;
        let per_row = self.alloc(&[heads, rows.len(), 3], Precision::F32)?;
        let out = self.alloc(&[3, heads], Precision::F32)?;
        let p = CalibMassParams {
            q: q.ptr,
            rows: rows_t.ptr,
            segs: segs_t.ptr,
            out: per_row.ptr,
            n_rows: u32_of(rows.len(), "sampled rows")?,
            n_segs: u32_of(segs.len(), "segments")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            first_end: u32_of(first_end, "first region")?,
            mid_end: u32_of(mid_end, "last region start")?,
            scale: (d as f32).sqrt(),
        };
        self.launch_ew(p)?;
        self.launch(CalibMeanParams { per_row: per_row.ptr, out: out.ptr, heads: p.heads, n_rows: p.n_rows })?;
        let v = self.try_download(&out)?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::Input("calibration: non-finite attention mass (NaN or infinite queries/keys)".into()));
        }
        Ok(v)
    }
}
