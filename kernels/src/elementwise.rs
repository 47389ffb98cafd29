//! Elementwise kernels: GELU (tanh form) and the gated residual.

use crate::gpu::{block_dim_x, block_idx_x, ex2, grid_dim_x, thread_idx_x};
use crate::{Launch, LaunchDims};

/// Threads per block of the elementwise kernels.
pub const EW_THREADS: u32 = 256;

/// Params of [`gelu_tanh_f32`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GeluParams {
    /// `[n]` f32 input.
    pub x: u64,
    /// `[n]` f32 output (may equal `x`).
    pub y: u64,
    pub n: u32,
}

impl Launch for GeluParams {
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [crate::grid_for(self.n, EW_THREADS), 1, 1],
            block: [EW_THREADS, 1, 1],
            dyn_smem: 0,
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`, written as `x · sigmoid(2u)` so it needs one exp.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    let u = K * (x + 0.044715 * x * x * x);
    // 0.5(1 + tanh u) = 1 / (1 + e^{-2u}); e^{-2u} overflowing to inf gives the right 0 limit.
    x / (1.0 + ex2(-2.0 * LOG2E * u))
}

kernel! {
    independent;
    /// `y = gelu_tanh(x)` elementwise.
    ///
    /// # Safety
    /// `x` and `y` must be valid for `n` f32; launch with `dims()`.
    pub unsafe fn gelu_tanh_f32(p: GeluParams) {
        let stride = block_dim_x() * grid_dim_x();
        let mut i = block_idx_x() * block_dim_x() + thread_idx_x();
        while i < p.n {
            *(p.y as *mut f32).add(i as usize) = gelu_tanh(*(p.x as *const f32).add(i as usize));
            i += stride;
        }
    }
}

/// Params of [`gated_residual_f32`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GatedResidualParams {
    /// `[rows, cols]` f32 residual stream, updated in place.
    pub x: u64,
    /// `[rows, cols]` f32 branch output.
    pub y: u64,
    /// `[frames, cols]` f32 gate.
    pub gate: u64,
    pub rows: u32,
    pub cols: u32,
    /// Row r uses gate row `r / rows_per_frame`.
    pub rows_per_frame: u32,
}

impl Launch for GatedResidualParams {
    fn dims(&self) -> LaunchDims {
        let n = self.rows.saturating_mul(self.cols);
        LaunchDims {
            grid: [crate::grid_for(n, EW_THREADS), 1, 1],
            block: [EW_THREADS, 1, 1],
            dyn_smem: 0,
        }
    }
}

kernel! {
    independent;
    /// `x[r, c] += y[r, c] · gate[r / rows_per_frame, c]`.
    ///
    /// # Safety
    /// Pointers valid for their shapes, `rows·cols < 2³²`, `rows_per_frame > 0`.
    pub unsafe fn gated_residual_f32(p: GatedResidualParams) {
        let n = p.rows * p.cols;
        // Clamped divisors: no division-by-zero panic path (n is 0 when cols is).
        let (cols, rpf) = (p.cols.max(1), p.rows_per_frame.max(1));
        let stride = block_dim_x() * grid_dim_x();
        let mut i = block_idx_x() * block_dim_x() + thread_idx_x();
        while i < n {
            let (r, c) = (i / cols, i % cols);
            let g = *(p.gate as *const f32).add(((r / rpf) * cols + c) as usize);
            let x = (p.x as *mut f32).add(i as usize);
            *x += *(p.y as *const f32).add(i as usize) * g;
            i += stride;
        }
    }
}
