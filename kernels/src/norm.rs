//! Row normalisations: RMSNorm, LayerNorm (optional affine), and LayerNorm fused with the
//! adaLN modulation. One block per row; sums in f32 (the CPU reference sums in f64, so f32
//! results differ from it by a few f32 ulp; bf16 results agree up to a rare 1-ulp tie flip).

use crate::elem::{Bf16, Elem};
use crate::gpu::reduce::{block_sum, BLOCK_SUM_SCRATCH};
use crate::gpu::{block_dim_x, block_idx_x, dyn_smem_addr, sqrt, thread_idx_x};
use crate::{Launch, LaunchDims};

/// Threads per block of the row kernels (a multiple of 32).
pub const ROW_THREADS: u32 = 128;

/// Params of [`rms_norm_f32`] / [`rms_norm_bf16`] (`Backend::rms_norm`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RmsNormParams {
    /// `[rows, cols]` input.
    pub x: u64,
    /// `[cols]` weight, or 0 for none.
    pub w: u64,
    /// `[rows, cols]` output (may equal `x`).
    pub y: u64,
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
}

impl Launch for RmsNormParams {
    /// One block per row.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [self.rows.max(1), 1, 1],
            block: [ROW_THREADS, 1, 1],
            dyn_smem: BLOCK_SUM_SCRATCH,
        }
    }
}

/// RMSNorm of one row; see [`rms_norm_f32`].
#[inline(always)]
unsafe fn rms_norm_row<T: Elem>(p: RmsNormParams) {
    let row = block_idx_x();
    // Uniform over the block, so returning here cannot split a barrier.
    if row >= p.rows {
        return;
    }
    let (tid, nt) = (thread_idx_x(), block_dim_x());
    let cols = p.cols as usize;
    let x = (p.x as *const T).add(row as usize * cols);
    let y = (p.y as *mut T).add(row as usize * cols);
    let mut ss = 0f32;
    let mut c = tid as usize;
    while c < cols {
        let v = T::ld(x, c);
        ss += v * v;
        c += nt as usize;
    }
    let total = block_sum(ss, dyn_smem_addr(), nt);
    let inv = 1.0 / sqrt(total / p.cols as f32 + p.eps);
    let w = p.w as *const T;
    let mut c = tid as usize;
    while c < cols {
        // The official order: normalise, round to the storage dtype, then scale by the weight.
        let mut v = T::round(T::ld(x, c) * inv);
        if !w.is_null() {
            v *= T::ld(w, c);
        }
        T::st(y, c, v);
        c += nt as usize;
    }
}

kernel! {
    /// `y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w` (Wan's RMSNorm), one block per row.
    ///
    /// # Safety
    /// The pointers must be valid for `rows × cols` (`cols` for `w`) f32; launch with `dims()`.
    pub unsafe fn rms_norm_f32(p: RmsNormParams) {
        rms_norm_row::<f32>(p)
    }
}

kernel! {
    /// [`rms_norm_f32`] with bf16 `x`, `w`, `y`: `y = bf16(bf16(x·inv) · w)`, `inv` from an f32
    /// sum of squares (`Backend::rms_norm`'s rounding points).
    ///
    /// # Safety
    /// As [`rms_norm_f32`], for bf16 buffers.
    pub unsafe fn rms_norm_bf16(p: Bf16<RmsNormParams>) {
        rms_norm_row::<u16>(p.0)
    }
}

/// Params of [`layer_norm_f32`] / [`layer_norm_bf16`] (`Backend::layer_norm`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LayerNormParams {
    /// `[rows, cols]` input.
    pub x: u64,
    /// `[cols]` affine weight, or 0 for no affine (then `b` is ignored).
    pub w: u64,
    /// `[cols]` affine bias (used only with `w`).
    pub b: u64,
    /// `[rows, cols]` output (may equal `x`).
    pub y: u64,
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
}

impl Launch for LayerNormParams {
    /// One block per row.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [self.rows.max(1), 1, 1],
            block: [ROW_THREADS, 1, 1],
            dyn_smem: BLOCK_SUM_SCRATCH,
        }
    }
}

/// Mean and `1/sqrt(var + eps)` of a row (f32, two passes: the second over `(x - mean)²`, since
/// `E[x²] - mean²` cancels badly). Every thread of the block must call it.
#[inline(always)]
unsafe fn mean_rstd<T: Elem>(x: *const T, cols: u32, eps: f32) -> (f32, f32) {
    let (tid, nt) = (thread_idx_x(), block_dim_x());
    let smem = dyn_smem_addr();
    let mut s = 0f32;
    let mut c = tid;
    while c < cols {
        s += T::ld(x, c as usize);
        c += nt;
    }
    let mean = block_sum(s, smem, nt) / cols as f32;
    let mut s2 = 0f32;
    let mut c = tid;
    while c < cols {
        let d = T::ld(x, c as usize) - mean;
        s2 += d * d;
        c += nt;
    }
    let rstd = 1.0 / sqrt(block_sum(s2, smem, nt) / cols as f32 + eps);
    (mean, rstd)
}

#[inline(always)]
unsafe fn layer_norm_row<T: Elem>(p: LayerNormParams) {
    let row = block_idx_x();
    // Uniform over the block.
    if row >= p.rows {
        return;
    }
    let cols = p.cols as usize;
    let x = (p.x as *const T).add(row as usize * cols);
    let y = (p.y as *mut T).add(row as usize * cols);
    let (mean, rstd) = mean_rstd(x, p.cols, p.eps);
    let (w, b) = (p.w as *const T, p.b as *const T);
    let mut c = thread_idx_x() as usize;
    while c < cols {
        let n = (T::ld(x, c) - mean) * rstd;
        // One rounding at the end, as the reference (no intermediate rounding of n).
        let v = if w.is_null() {
            n
        } else {
            n * T::ld(w, c) + T::ld(b, c)
        };
        T::st(y, c, v);
        c += block_dim_x() as usize;
    }
}

kernel! {
    /// `y = LN(x)` (biased variance), times `w` plus `b` when `w` is given; one block per row.
    ///
    /// # Safety
    /// The pointers must be valid for their shapes; launch with `dims()`.
    pub unsafe fn layer_norm_f32(p: LayerNormParams) {
        layer_norm_row::<f32>(p)
    }
}

kernel! {
    /// [`layer_norm_f32`] on bf16 `x`, `w`, `b`, `y` (f32 math, one rounding on the store).
    ///
    /// # Safety
    /// As [`layer_norm_f32`], for bf16 buffers.
    pub unsafe fn layer_norm_bf16(p: Bf16<LayerNormParams>) {
        layer_norm_row::<u16>(p.0)
    }
}

/// Params of [`layer_norm_modulate_f32`] / [`layer_norm_modulate_bf16`] (`Backend::norm_modulate`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LayerNormModParams {
    /// `[rows, cols]` input.
    pub x: u64,
    /// `[frames, cols]` shift.
    pub shift: u64,
    /// `[frames, cols]` scale.
    pub scale: u64,
    /// `[rows, cols]` output (may equal `x`).
    pub y: u64,
    pub rows: u32,
    pub cols: u32,
    /// Rows (tokens) per frame: row r uses modulation row `r / rows_per_frame`.
    pub rows_per_frame: u32,
    pub eps: f32,
}

impl Launch for LayerNormModParams {
    /// One block per row.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [self.rows.max(1), 1, 1],
            block: [ROW_THREADS, 1, 1],
            dyn_smem: BLOCK_SUM_SCRATCH,
        }
    }
}

#[inline(always)]
unsafe fn layer_norm_modulate_row<T: Elem>(p: LayerNormModParams) {
    let row = block_idx_x();
    // Uniform over the block.
    if row >= p.rows {
        return;
    }
    let cols = p.cols as usize;
    let x = (p.x as *const T).add(row as usize * cols);
    let y = (p.y as *mut T).add(row as usize * cols);
    // Clamped divisor: no division-by-zero panic path.
    let frame = (row / p.rows_per_frame.max(1)) as usize;
    let shift = (p.shift as *const T).add(frame * cols);
    let scale = (p.scale as *const T).add(frame * cols);
    let (mean, rstd) = mean_rstd(x, p.cols, p.eps);
    let mut c = thread_idx_x() as usize;
    while c < cols {
        // The official order and rounding points: LN(x), (1 + scale), their product, + shift.
        let n = T::round((T::ld(x, c) - mean) * rstd);
        let s1 = T::round(1.0 + T::ld(scale, c));
        T::st(y, c, T::round(n * s1) + T::ld(shift, c));
        c += block_dim_x() as usize;
    }
}

kernel! {
    /// `y = LN(x) * (1 + scale[frame]) + shift[frame]`, LN without affine (biased variance),
    /// one block per row.
    ///
    /// # Safety
    /// The pointers must be valid for their shapes, `rows_per_frame > 0`; launch with `dims()`.
    pub unsafe fn layer_norm_modulate_f32(p: LayerNormModParams) {
        layer_norm_modulate_row::<f32>(p)
    }
}

kernel! {
    /// [`layer_norm_modulate_f32`] on bf16 `x`, `shift`, `scale`, `y`, rounding like
    /// `Backend::norm_modulate`: `bf16(bf16(bf16(LN(x)) · bf16(1 + scale)) + shift)`.
    ///
    /// # Safety
    /// As [`layer_norm_modulate_f32`], for bf16 buffers.
    pub unsafe fn layer_norm_modulate_bf16(p: Bf16<LayerNormModParams>) {
        layer_norm_modulate_row::<u16>(p.0)
    }
}
