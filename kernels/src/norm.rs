//! Row normalisations: RMSNorm, and LayerNorm fused with the adaLN modulation.

use crate::gpu::reduce::{block_sum, BLOCK_SUM_SCRATCH};
use crate::gpu::{block_dim_x, block_idx_x, dyn_smem_addr, sqrt, thread_idx_x};
use crate::{Launch, LaunchDims};

/// Threads per block of the row kernels (a multiple of 32).
pub const ROW_THREADS: u32 = 128;

/// Params of [`rms_norm_f32`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RmsNormParams {
    /// `[rows, cols]` f32 input.
    pub x: u64,
    /// `[cols]` f32 weight, or 0 for none.
    pub w: u64,
    /// `[rows, cols]` f32 output (may equal `x`).
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

kernel! {
    /// `y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * w` (Wan's RMSNorm), one block per row.
    ///
    /// # Safety
    /// The pointers must be valid for `rows × cols` (`cols` for `w`) f32; launch with `dims()`.
    pub unsafe fn rms_norm_f32(p: RmsNormParams) {
        let row = block_idx_x();
        // Uniform over the block, so returning here cannot split a barrier.
        if row >= p.rows {
            return;
        }
        let (tid, nt) = (thread_idx_x(), block_dim_x());
        let cols = p.cols as usize;
        let x = (p.x as *const f32).add(row as usize * cols);
        let y = (p.y as *mut f32).add(row as usize * cols);
        let mut ss = 0f32;
        let mut c = tid as usize;
        while c < cols {
            let v = *x.add(c);
            ss += v * v;
            c += nt as usize;
        }
        let total = block_sum(ss, dyn_smem_addr(), nt);
        let inv = 1.0 / sqrt(total / p.cols as f32 + p.eps);
        let w = p.w as *const f32;
        let mut c = tid as usize;
        while c < cols {
            let mut v = *x.add(c) * inv;
            if !w.is_null() {
                v *= *w.add(c);
            }
            *y.add(c) = v;
            c += nt as usize;
        }
    }
}

/// Params of [`layer_norm_modulate_f32`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LayerNormModParams {
    /// `[rows, cols]` f32 input.
    pub x: u64,
    /// `[frames, cols]` f32 shift.
    pub shift: u64,
    /// `[frames, cols]` f32 scale.
    pub scale: u64,
    /// `[rows, cols]` f32 output (may equal `x`).
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

kernel! {
    /// `y = LN(x) * (1 + scale[frame]) + shift[frame]`, LN without affine (biased variance),
    /// one block per row.
    ///
    /// # Safety
    /// The pointers must be valid for their shapes, `rows_per_frame > 0`; launch with `dims()`.
    pub unsafe fn layer_norm_modulate_f32(p: LayerNormModParams) {
        let row = block_idx_x();
        // Uniform over the block.
        if row >= p.rows {
            return;
        }
        let (tid, nt) = (thread_idx_x(), block_dim_x());
        let cols = p.cols as usize;
        let x = (p.x as *const f32).add(row as usize * cols);
        let y = (p.y as *mut f32).add(row as usize * cols);
        // Clamped divisor: no division-by-zero panic path.
        let frame = (row / p.rows_per_frame.max(1)) as usize;
        let shift = (p.shift as *const f32).add(frame * cols);
        let scale = (p.scale as *const f32).add(frame * cols);
        let smem = dyn_smem_addr();
        let mut s = 0f32;
        let mut c = tid as usize;
        while c < cols {
            s += *x.add(c);
            c += nt as usize;
        }
        let mean = block_sum(s, smem, nt) / p.cols as f32;
        // Second pass over (x - mean)² rather than E[x²] - mean², which cancels badly.
        let mut s2 = 0f32;
        let mut c = tid as usize;
        while c < cols {
            let d = *x.add(c) - mean;
            s2 += d * d;
            c += nt as usize;
        }
        let rstd = 1.0 / sqrt(block_sum(s2, smem, nt) / p.cols as f32 + p.eps);
        let mut c = tid as usize;
        while c < cols {
            let n = (*x.add(c) - mean) * rstd;
            *y.add(c) = n * (1.0 + *scale.add(c)) + *shift.add(c);
            c += nt as usize;
        }
    }
}
