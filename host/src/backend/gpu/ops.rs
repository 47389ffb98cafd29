//! The op launchers: each op checks its tensors' shapes, builds its kernel's params struct
//! and launches it through [`GpuBackend::launch`] (which checks the params first), or runs a
//! GEMM on the device.

use dfrt_kernels::elementwise::*;
use dfrt_kernels::layout::*;
use dfrt_kernels::norm::{LayerNormModParams, LayerNormParams, RmsNormParams};
use dfrt_kernels::rope::{QkNormRopeParams, RopeParams};

use super::{u32_of, GpuBackend, GpuTensor, Unary, ROPE_ROWS};
use crate::backend::Precision;
use crate::gpu::{DevPtr, Device, Epilogue, Gemm};
use crate::{Error, Result};

impl<D: Device> GpuBackend<D> {
    /// `linear` with `epilogue` after the bias: `x [.., k] · wᵀ (+ b)`.
    pub(super) fn gemm_op(
        &self,
        x: &GpuTensor<D>,
        w: &GpuTensor<D>,
        b: Option<&GpuTensor<D>>,
        epilogue: Epilogue,
    ) -> GpuTensor<D> {
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = w.shape[0];
        self.guard(&shape, || self.try_linear(x, w, b, epilogue))
    }

    pub(super) fn same_len(&self, what: &str, a: &GpuTensor<D>, b: &GpuTensor<D>) -> Result<()> {
        if a.numel() != b.numel() {
            return Err(Error::invalid_op(format!("{what}: shapes {:?} and {:?} differ in size", a.shape, b.shape)));
        }
        Ok(())
    }

    pub(super) fn rope_table(&self, head_dim: usize, rows_needed: usize) -> Result<(DevPtr, usize)> {
        let mut tables = self.rope.lock().unwrap();
        if let Some((rows, t)) = tables.get(&head_dim) {
            if *rows >= rows_needed {
                return Ok((t.ptr, *rows));
            }
        }
        let mut rows = ROPE_ROWS;
        while rows < rows_needed {
            rows *= 2;
        }
        let data = dfrt_kernels::rope::rope_table(u32_of(head_dim, "head_dim")?, u32_of(rows, "rope rows")?);
        let t = self.alloc(&[data.len()], Precision::F32)?;
        self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&data))?;
        let ptr = t.ptr;
        tables.insert(head_dim, (rows, t));
        Ok((ptr, rows))
    }

    pub(super) fn sinusoid_freqs(&self, dim: usize) -> Result<DevPtr> {
        let mut m = self.freqs.lock().unwrap();
        if let Some(t) = m.get(&dim) {
            return Ok(t.ptr);
        }
        let f = dfrt_kernels::elementwise::sinusoid_freqs(u32_of(dim, "dim")?);
        // f64 values: allocate as f32 pairs.
        let t = self.alloc(&[2 * f.len().max(1)], Precision::F32)?;
        self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&f))?;
        let ptr = t.ptr;
        m.insert(dim, t);
        Ok(ptr)
    }

    /// Uploads `bytes` into the reusable segment-table buffer; returns its address.
    pub(super) fn upload_table(&self, bytes: &[u8]) -> Result<DevPtr> {
        let mut slot = self.seg_table.lock().unwrap();
        let cap = slot.as_ref().map_or(0, |t| t.bytes());
        if cap < bytes.len() {
            let want = bytes.len().next_power_of_two().max(64 << 10);
            *slot = Some(self.alloc(&[want / 4], Precision::F32)?);
        }
        let t = slot.as_ref().unwrap();
        self.sh.dev.h2d(t.ptr, bytes)?;
        Ok(t.ptr)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_copy_rows(
        &self,
        dst: &GpuTensor<D>,
        dst_off: usize,
        src: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let src_end = src_off + (rows - 1) * src_stride + cols;
        if dst_off + rows * cols > dst.numel() || src_end > src.numel() {
            return Err(Error::invalid_op(format!("copy_rows: {rows}×{cols} rows out of range (dst {:?} at {dst_off}, src {:?} at {src_off} stride {src_stride})", dst.shape, src.shape)));
        }
        let p = CopyRowsParams {
            dst: dst.at(dst_off),
            src: src.at(src_off),
            dst_stride: u32_of(cols, "cols")?,
            src_stride: u32_of(src_stride, "src_stride")?,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
        };
        self.launch_ew(p)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_write_heads(
        &self,
        dst_k: &GpuTensor<D>,
        dst_v: &GpuTensor<D>,
        k: &GpuTensor<D>,
        v: &GpuTensor<D>,
        src_off: usize,
        src_stride: usize,
        heads: &[usize],
        rows: usize,
        d: usize,
    ) -> Result<()> {
        if heads.is_empty() || rows == 0 || d == 0 {
            return Ok(());
        }
        let maxh = *heads.iter().max().unwrap();
        let src_end = src_off + maxh * d + (rows - 1) * src_stride + d;
        if src_end > k.numel()
            || src_end > v.numel()
            || heads.len() * rows * d > dst_k.numel().min(dst_v.numel())
            || src_stride < d
        {
            return Err(Error::invalid_op(format!(
                "write_heads: {} heads × {rows}×{d} from {:?} at {src_off} (stride {src_stride}) into {:?}",
                heads.len(),
                k.shape,
                dst_k.shape
            )));
        }
        let list: Vec<u32> = heads.iter().map(|&h| u32_of(h, "head")).collect::<Result<_>>()?;
        let heads_ptr = {
            let mut m = self.head_lists.lock().unwrap();
            match m.get(&list) {
                Some(t) => t.ptr,
                None => {
                    let t = self.alloc(&[list.len()], Precision::F32)?;
                    self.sh.dev.h2d(t.ptr, bytemuck::cast_slice(&list))?;
                    let p = t.ptr;
                    m.insert(list.clone(), t);
                    p
                }
            }
        };
        let p = KvWriteParams {
            job: HeadCopyJob {
                src_k: k.at(src_off),
                src_v: v.at(src_off),
                dst_k: dst_k.ptr,
                dst_v: dst_v.ptr,
                heads: heads_ptr,
                n_heads: u32_of(heads.len(), "heads")?,
                _pad: 0,
            },
            shape: HeadCopyShape {
                rows: u32_of(rows, "rows")?,
                head_dim: u32_of(d, "head_dim")?,
                src_row_stride: u32_of(src_stride, "src_stride")?,
                src_head_stride: u32_of(d, "head_dim")?,
                dst_row_stride: u32_of(d, "head_dim")?,
                dst_head_stride: u32_of(rows * d, "rows·head_dim")?,
            },
        };
        self.launch_ew(p)
    }

    pub(super) fn try_linear(
        &self,
        x: &GpuTensor<D>,
        w: &GpuTensor<D>,
        b: Option<&GpuTensor<D>>,
        epilogue: Epilogue,
    ) -> Result<GpuTensor<D>> {
        let k = x.cols();
        let n = x.rows();
        if w.shape.len() != 2 || w.shape[1] != k {
            return Err(Error::invalid_op(format!("linear: x {:?} against weight {:?}", x.shape, w.shape)));
        }
        let m = w.shape[0];
        if let Some(b) = b {
            if b.numel() != m {
                return Err(Error::invalid_op(format!("linear: bias {:?} for {m} outputs", b.shape)));
            }
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = m;
        let y = self.new_tensor(&shape)?;
        self.sh.dev.gemm(&Gemm {
            dtype: self.precision,
            x: x.ptr,
            w: w.ptr,
            y: y.ptr,
            bias: b.map(|b| b.ptr),
            epilogue,
            n,
            k,
            m,
        })?;
        Ok(y)
    }

    pub(super) fn try_layer_norm(
        &self,
        x: &GpuTensor<D>,
        eps: f32,
        affine: Option<(&GpuTensor<D>, &GpuTensor<D>)>,
    ) -> Result<GpuTensor<D>> {
        let cols = x.cols();
        if let Some((w, b)) = affine {
            if w.numel() != cols || b.numel() != cols {
                return Err(Error::invalid_op(format!(
                    "layer_norm: affine {:?}/{:?} for {cols} columns",
                    w.shape, b.shape
                )));
            }
        }
        let y = self.new_tensor(&x.shape)?;
        let (w, b) = affine.map_or((0, 0), |(w, b)| (w.ptr, b.ptr));
        self.launch_ew(LayerNormParams {
            x: x.ptr,
            w,
            b,
            y: y.ptr,
            rows: u32_of(x.rows(), "rows")?,
            cols: u32_of(cols, "cols")?,
            eps,
        })?;
        Ok(y)
    }

    pub(super) fn try_norm_modulate(
        &self,
        x: &GpuTensor<D>,
        eps: f32,
        shift: &GpuTensor<D>,
        scale: &GpuTensor<D>,
        rpf: usize,
    ) -> Result<GpuTensor<D>> {
        let (rows, cols) = (x.rows(), x.cols());
        let frames = rows.div_ceil(rpf.max(1));
        if rpf == 0 || shift.numel() < frames * cols || scale.numel() < frames * cols {
            return Err(Error::invalid_op(format!(
                "norm_modulate: x {:?}, {rpf} rows per frame, shift {:?}, scale {:?}",
                x.shape, shift.shape, scale.shape
            )));
        }
        let y = self.new_tensor(&x.shape)?;
        self.launch_ew(LayerNormModParams {
            x: x.ptr,
            shift: shift.ptr,
            scale: scale.ptr,
            y: y.ptr,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
            rows_per_frame: u32_of(rpf, "rows_per_frame")?,
            eps,
        })?;
        Ok(y)
    }

    pub(super) fn try_rms_norm(&self, x: &GpuTensor<D>, w: &GpuTensor<D>, eps: f32) -> Result<GpuTensor<D>> {
        if w.numel() != x.cols() {
            return Err(Error::invalid_op(format!("rms_norm: weight {:?} for x {:?}", w.shape, x.shape)));
        }
        let y = self.new_tensor(&x.shape)?;
        self.launch_ew(RmsNormParams {
            x: x.ptr,
            w: w.ptr,
            y: y.ptr,
            rows: u32_of(x.rows(), "rows")?,
            cols: u32_of(x.cols(), "cols")?,
            eps,
        })?;
        Ok(y)
    }

    pub(super) fn try_unary(&self, x: &GpuTensor<D>, op: Unary) -> Result<GpuTensor<D>> {
        let y = self.new_tensor(&x.shape)?;
        let n = u32_of(x.numel(), "elements")?;
        match op {
            Unary::GeluTanh => self.launch_ew(GeluParams { x: x.ptr, y: y.ptr, n })?,
            Unary::Silu => self.launch_ew(SiluParams { x: x.ptr, y: y.ptr, n })?,
        }
        Ok(y)
    }

    pub(super) fn try_add(&self, x: &GpuTensor<D>, y: &GpuTensor<D>) -> Result<GpuTensor<D>> {
        self.same_len("add", x, y)?;
        let out = self.new_tensor(&x.shape)?;
        self.launch_ew(AddParams { x: x.ptr, y: y.ptr, out: out.ptr, n: u32_of(x.numel(), "elements")? })?;
        Ok(out)
    }

    pub(super) fn try_gated_residual(
        &self,
        x: &GpuTensor<D>,
        y: &GpuTensor<D>,
        gate: &GpuTensor<D>,
        rpf: usize,
    ) -> Result<GpuTensor<D>> {
        self.same_len("gated_residual", x, y)?;
        let (rows, cols) = (x.rows(), x.cols());
        if rpf == 0 || gate.numel() < rows.div_ceil(rpf) * cols {
            return Err(Error::invalid_op(format!(
                "gated_residual: x {:?}, gate {:?}, {rpf} rows per frame",
                x.shape, gate.shape
            )));
        }
        let out = self.new_tensor(&x.shape)?;
        self.launch_ew(GatedResidualParams {
            x: x.ptr,
            y: y.ptr,
            gate: gate.ptr,
            out: out.ptr,
            rows: u32_of(rows, "rows")?,
            cols: u32_of(cols, "cols")?,
            rows_per_frame: u32_of(rpf, "rows_per_frame")?,
        })?;
        Ok(out)
    }

    pub(super) fn try_modulation(&self, table: &GpuTensor<D>, e: &GpuTensor<D>, k: usize) -> Result<Vec<GpuTensor<D>>> {
        let kd = e.cols();
        if k == 0 || !kd.is_multiple_of(k) || table.numel() != kd {
            return Err(Error::invalid_op(format!("modulation: table {:?}, e {:?}, k {k}", table.shape, e.shape)));
        }
        let (d, frames) = (kd / k, e.rows());
        let out = self.new_tensor(&[k, frames, d])?;
        let p = ModulationParams {
            table: table.ptr,
            e: e.ptr,
            out: out.ptr,
            frames: u32_of(frames, "frames")?,
            k: u32_of(k, "k")?,
            dim: u32_of(d, "dim")?,
        };
        self.launch_ew(p)?;
        // The kernel writes one [k, frames, d] buffer; the k results are views of it.
        Ok((0..k).map(|i| self.view(&out, i * frames * d, &[frames, d])).collect())
    }

    pub(super) fn try_rope(
        &self,
        x: &GpuTensor<D>,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> Result<GpuTensor<D>> {
        let [f, h, w] = grid;
        if heads == 0 || !x.cols().is_multiple_of(heads) || x.rows() != f * h * w {
            return Err(Error::invalid_op(format!("rope: x {:?} for {heads} heads on grid {grid:?}", x.shape)));
        }
        let d = x.cols() / heads;
        let (table, table_rows) = self.rope_table(d, (start_frame + f).max(h).max(w))?;
        let y = self.new_tensor(&x.shape)?;
        let p = RopeParams {
            x: x.ptr,
            y: y.ptr,
            table,
            f: u32_of(f, "frames")?,
            h: u32_of(h, "h")?,
            w: u32_of(w, "w")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            start_frame: u32_of(start_frame, "start_frame")?,
            table_rows: u32_of(table_rows, "rope rows")?,
        };
        self.launch_ew(p)?;
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_qk_norm_rope(
        &self,
        q: &GpuTensor<D>,
        k: &GpuTensor<D>,
        wq: &GpuTensor<D>,
        wk: &GpuTensor<D>,
        eps: f32,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> Result<(GpuTensor<D>, GpuTensor<D>)> {
        let [f, h, w] = grid;
        let cols = q.cols();
        if heads == 0
            || !cols.is_multiple_of(heads)
            || q.rows() != f * h * w
            || k.shape != q.shape
            || wq.numel() != cols
            || wk.numel() != cols
        {
            return Err(Error::invalid_op(format!(
                "qk_norm_rope: q {:?}, k {:?}, weights {:?}/{:?} for {heads} heads on grid {grid:?}",
                q.shape, k.shape, wq.shape, wk.shape
            )));
        }
        let d = cols / heads;
        let (table, table_rows) = self.rope_table(d, (start_frame + f).max(h).max(w))?;
        let (qo, ko) = (self.new_tensor(&q.shape)?, self.new_tensor(&k.shape)?);
        let p = QkNormRopeParams {
            q: q.ptr,
            k: k.ptr,
            wq: wq.ptr,
            wk: wk.ptr,
            q_out: qo.ptr,
            k_out: ko.ptr,
            table,
            f: u32_of(f, "frames")?,
            h: u32_of(h, "h")?,
            w: u32_of(w, "w")?,
            heads: u32_of(heads, "heads")?,
            head_dim: u32_of(d, "head_dim")?,
            start_frame: u32_of(start_frame, "start_frame")?,
            table_rows: u32_of(table_rows, "rope rows")?,
            eps,
        };
        self.launch_ew(p)?;
        Ok((qo, ko))
    }

    pub(super) fn try_sinusoid(&self, t: &[f32], dim: usize) -> Result<GpuTensor<D>> {
        let freqs = self.sinusoid_freqs(dim)?;
        let tt = self.alloc(&[t.len().max(1)], Precision::F32)?;
        self.sh.dev.h2d(tt.ptr, bytemuck::cast_slice(t))?;
        let y = self.new_tensor(&[t.len(), dim])?;
        self.launch_ew(SinusoidParams {
            t: tt.ptr,
            freqs,
            y: y.ptr,
            n: u32_of(t.len(), "timesteps")?,
            dim: u32_of(dim, "dim")?,
        })?;
        Ok(y)
    }

    pub(super) fn try_patchify(&self, x: &GpuTensor<D>, patch: [usize; 3]) -> Result<GpuTensor<D>> {
        let [pt, ph, pw] = patch;
        if x.shape.len() != 4 || pt != 1 {
            return Err(Error::invalid_op(format!(
                "patchify: latent {:?} with patch {patch:?} (temporal patch must be 1)",
                x.shape
            )));
        }
        let [f, c, hh, ww] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let p = PatchifyParams {
            x: x.ptr,
            y: 0,
            f: u32_of(f, "f")?,
            c: u32_of(c, "c")?,
            hh: u32_of(hh, "h")?,
            ww: u32_of(ww, "w")?,
            ph: u32_of(ph, "ph")?,
            pw: u32_of(pw, "pw")?,
        };
        let y = self.new_tensor(&[f * (hh / ph) * (ww / pw), c * ph * pw])?;
        self.launch_ew(PatchifyParams { y: y.ptr, ..p })?;
        Ok(y)
    }

    pub(super) fn try_unpatchify(
        &self,
        x: &GpuTensor<D>,
        grid: [usize; 3],
        patch: [usize; 3],
        c: usize,
    ) -> Result<GpuTensor<D>> {
        let [f, gh, gw] = grid;
        let [pt, ph, pw] = patch;
        if pt != 1 || x.rows() != f * gh * gw || x.cols() != ph * pw * c {
            return Err(Error::invalid_op(format!(
                "unpatchify: x {:?} for grid {grid:?}, patch {patch:?}, {c} channels",
                x.shape
            )));
        }
        let y = self.new_tensor(&[f, c, gh * ph, gw * pw])?;
        let p = UnpatchifyParams {
            x: x.ptr,
            y: y.ptr,
            f: u32_of(f, "f")?,
            gh: u32_of(gh, "gh")?,
            gw: u32_of(gw, "gw")?,
            ph: u32_of(ph, "ph")?,
            pw: u32_of(pw, "pw")?,
            c: u32_of(c, "c")?,
        };
        self.launch_ew(p)?;
        Ok(y)
    }
}
