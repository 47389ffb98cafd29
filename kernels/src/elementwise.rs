//! Elementwise kernels: GELU (tanh form), SiLU, add, the gated residual, the modulation rows
//! and the sinusoidal time embedding. All are grid-stride loops, one element per thread
//! iteration, f32 math; the `_bf16` variants round where `Backend` (cpu.rs) rounds.

use crate::elem::{Bf16, Elem};
use crate::gpu::{block_dim_x, block_idx_x, ex2, grid_dim_x, thread_idx_x};
use crate::{Launch, LaunchDims};

/// `(first index, stride)` of this thread's grid-stride loop.
#[inline(always)]
fn grid_stride() -> (u32, u32) {
    (
        block_idx_x() * block_dim_x() + thread_idx_x(),
        block_dim_x() * grid_dim_x(),
    )
}

/// Launch shape of a grid-stride loop over `n` elements.
fn ew_dims(n: u32) -> LaunchDims {
    LaunchDims {
        grid: [crate::grid_for(n, EW_THREADS), 1, 1],
        block: [EW_THREADS, 1, 1],
        dyn_smem: 0,
    }
}

/// Threads per block of the elementwise kernels.
pub const EW_THREADS: u32 = 256;

/// Params of [`gelu_tanh_f32`] / [`gelu_tanh_bf16`] (`Backend::gelu_tanh`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GeluParams {
    /// `[n]` input.
    pub x: u64,
    /// `[n]` output (may equal `x`).
    pub y: u64,
    pub n: u32,
}

impl Launch for GeluParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.n)
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

/// `y[i] = f(x[i])`.
#[inline(always)]
unsafe fn map_unary<T: Elem>(x: u64, y: u64, n: u32, f: impl Fn(f32) -> f32) {
    let (mut i, stride) = grid_stride();
    while i < n {
        T::st(y as *mut T, i as usize, f(T::ld(x as *const T, i as usize)));
        i += stride;
    }
}

kernel! {
    independent;
    /// `y = gelu_tanh(x)` elementwise.
    ///
    /// # Safety
    /// `x` and `y` must be valid for `n` f32; launch with `dims()`.
    pub unsafe fn gelu_tanh_f32(p: GeluParams) {
        map_unary::<f32>(p.x, p.y, p.n, gelu_tanh)
    }
}

kernel! {
    independent;
    /// `y = bf16(gelu_tanh(x))` on bf16 buffers.
    ///
    /// # Safety
    /// `x` and `y` must be valid for `n` bf16; launch with `dims()`.
    pub unsafe fn gelu_tanh_bf16(p: Bf16<GeluParams>) {
        map_unary::<u16>(p.0.x, p.0.y, p.0.n, gelu_tanh)
    }
}

/// Params of [`silu_f32`] / [`silu_bf16`] (`Backend::silu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SiluParams {
    /// `[n]` input.
    pub x: u64,
    /// `[n]` output (may equal `x`).
    pub y: u64,
    pub n: u32,
}

impl Launch for SiluParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.n)
    }
}

/// `x · sigmoid(x) = x / (1 + e^{-x})`; `e^{-x}` overflowing to inf gives the right `-0` limit.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + ex2(-core::f32::consts::LOG2_E * x))
}

kernel! {
    independent;
    /// `y = silu(x)` elementwise.
    ///
    /// # Safety
    /// `x` and `y` must be valid for `n` f32; launch with `dims()`.
    pub unsafe fn silu_f32(p: SiluParams) {
        map_unary::<f32>(p.x, p.y, p.n, silu)
    }
}

kernel! {
    independent;
    /// `y = bf16(silu(x))` on bf16 buffers.
    ///
    /// # Safety
    /// `x` and `y` must be valid for `n` bf16; launch with `dims()`.
    pub unsafe fn silu_bf16(p: Bf16<SiluParams>) {
        map_unary::<u16>(p.0.x, p.0.y, p.0.n, silu)
    }
}

/// Params of [`add_f32`] / [`add_bf16`] (`Backend::add`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AddParams {
    /// `[n]` first input.
    pub x: u64,
    /// `[n]` second input.
    pub y: u64,
    /// `[n]` output (may equal `x` or `y`).
    pub out: u64,
    pub n: u32,
}

impl Launch for AddParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.n)
    }
}

#[inline(always)]
unsafe fn add_body<T: Elem>(p: AddParams) {
    let (mut i, stride) = grid_stride();
    while i < p.n {
        let i_ = i as usize;
        T::st(
            p.out as *mut T,
            i_,
            T::ld(p.x as *const T, i_) + T::ld(p.y as *const T, i_),
        );
        i += stride;
    }
}

kernel! {
    independent;
    /// `out = x + y` elementwise.
    ///
    /// # Safety
    /// Pointers valid for `n` f32; launch with `dims()`.
    pub unsafe fn add_f32(p: AddParams) {
        add_body::<f32>(p)
    }
}

kernel! {
    independent;
    /// `out = bf16(x + y)` on bf16 buffers.
    ///
    /// # Safety
    /// Pointers valid for `n` bf16; launch with `dims()`.
    pub unsafe fn add_bf16(p: Bf16<AddParams>) {
        add_body::<u16>(p.0)
    }
}

/// Params of [`gated_residual_f32`] / [`gated_residual_bf16`] (`Backend::gated_residual`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GatedResidualParams {
    /// `[rows, cols]` residual stream.
    pub x: u64,
    /// `[rows, cols]` branch output.
    pub y: u64,
    /// `[frames, cols]` gate.
    pub gate: u64,
    /// `[rows, cols]` result; may equal `x` (in place) or `y`.
    pub out: u64,
    pub rows: u32,
    pub cols: u32,
    /// Row r uses gate row `r / rows_per_frame`.
    pub rows_per_frame: u32,
}

impl Launch for GatedResidualParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.rows.saturating_mul(self.cols))
    }
}

#[inline(always)]
unsafe fn gated_residual_body<T: Elem>(p: GatedResidualParams) {
    let n = p.rows * p.cols;
    // Clamped divisors: no division-by-zero panic path (n is 0 when cols is).
    let (cols, rpf) = (p.cols.max(1), p.rows_per_frame.max(1));
    let (mut i, stride) = grid_stride();
    while i < n {
        let (r, c) = (i / cols, i % cols);
        let g = T::ld(p.gate as *const T, ((r / rpf) * cols + c) as usize);
        let i_ = i as usize;
        // The branch·gate product is rounded before the add, as `Backend::gated_residual`.
        let yg = T::round(T::ld(p.y as *const T, i_) * g);
        T::st(p.out as *mut T, i_, T::ld(p.x as *const T, i_) + yg);
        i += stride;
    }
}

kernel! {
    independent;
    /// `out[r, c] = x[r, c] + y[r, c] · gate[r / rows_per_frame, c]`.
    ///
    /// # Safety
    /// Pointers valid for their shapes, `rows·cols < 2³²`; launch with `dims()`.
    pub unsafe fn gated_residual_f32(p: GatedResidualParams) {
        gated_residual_body::<f32>(p)
    }
}

kernel! {
    independent;
    /// `out = bf16(x + bf16(y · gate[frame]))` on bf16 buffers.
    ///
    /// # Safety
    /// As [`gated_residual_f32`], for bf16 buffers.
    pub unsafe fn gated_residual_bf16(p: Bf16<GatedResidualParams>) {
        gated_residual_body::<u16>(p.0)
    }
}

/// Params of [`modulation_f32`] / [`modulation_bf16`] (`Backend::modulation`).
///
/// Output layout: ONE buffer `[k, frames, dim]`; the i-th tensor of `Backend::modulation`
/// (`[frames, dim]`) is the contiguous block at element offset `i · frames · dim`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModulationParams {
    /// `[k, dim]` learned table.
    pub table: u64,
    /// `[frames, k·dim]` time embedding projection.
    pub e: u64,
    /// `[k, frames, dim]` output.
    pub out: u64,
    pub frames: u32,
    pub k: u32,
    pub dim: u32,
}

impl ModulationParams {
    /// Elements of the output.
    pub fn len(&self) -> u64 {
        self.frames as u64 * self.k as u64 * self.dim as u64
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn check(&self) -> Result<(), &'static str> {
        if self.len() > u32::MAX as u64 {
            return Err("modulation: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for ModulationParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.len().min(u32::MAX as u64) as u32)
    }
}

#[inline(always)]
unsafe fn modulation_body<T: Elem>(p: ModulationParams) {
    let n = p.frames * p.k * p.dim;
    let (dim, frames) = (p.dim.max(1), p.frames.max(1));
    let (mut o, stride) = grid_stride();
    while o < n {
        let j = o % dim;
        let f = (o / dim) % frames;
        let i = o / dim / frames;
        let t = T::ld(p.table as *const T, (i * dim + j) as usize);
        let e = T::ld(p.e as *const T, ((f * p.k + i) * dim + j) as usize);
        T::st(p.out as *mut T, o as usize, t + e);
        o += stride;
    }
}

kernel! {
    independent;
    /// `out[i, f, j] = table[i, j] + e[f, i·dim + j]`.
    ///
    /// # Safety
    /// `check()` passes, pointers valid for their shapes; launch with `dims()`.
    pub unsafe fn modulation_f32(p: ModulationParams) {
        modulation_body::<f32>(p)
    }
}

kernel! {
    independent;
    /// [`modulation_f32`] on bf16 buffers (one rounding of the sum).
    ///
    /// # Safety
    /// As [`modulation_f32`], for bf16 buffers.
    pub unsafe fn modulation_bf16(p: Bf16<ModulationParams>) {
        modulation_body::<u16>(p.0)
    }
}

/// Params of [`sinusoid_f32`] / [`sinusoid_bf16`] (`Backend::sinusoid`).
///
/// Precision: the angle `t·ω` and its cos/sin are computed in f64 on the device (argument
/// reduction by π/2 in f64, then degree-15/16 Taylor polynomials, error < 1e-15), so the f32
/// result is the correctly rounded `cos`/`sin` of the f64 angle up to a rare 1-ulp difference
/// from the CPU's libm (the test allows 1 f32 ulp); bf16 is that value rounded once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SinusoidParams {
    /// `[n]` f32 timesteps (f32 in both variants).
    pub t: u64,
    /// `[dim/2]` **f64** frequencies `ω_j = 10000^(−j/(dim/2))` from [`sinusoid_freqs`].
    pub freqs: u64,
    /// `[n, dim]` output `[cos(t·ω) | sin(t·ω)]` (an odd `dim`'s last column is 0).
    pub y: u64,
    pub n: u32,
    pub dim: u32,
}

impl Launch for SinusoidParams {
    fn dims(&self) -> LaunchDims {
        ew_dims(self.n.saturating_mul(self.dim))
    }
}

/// The frequencies [`SinusoidParams::freqs`] expects, computed like the CPU reference.
#[cfg(not(target_arch = "nvptx64"))]
pub fn sinusoid_freqs(dim: u32) -> Vec<f64> {
    let half = dim / 2;
    (0..half)
        .map(|j| 10000f64.powf(-(j as f64) / half as f64))
        .collect()
}

/// `(cos a, sin a)` in f64: reduce by π/2 to |r| ≤ π/4 (plus rounding slack), then Taylor.
#[inline(always)]
pub fn cos_sin_f64(a: f64) -> (f64, f64) {
    const PIO2_HI: f64 = 1.570_796_326_734_125_6; // first 33 bits of π/2
    const PIO2_LO: f64 = 6.077_100_506_506_192e-11; // π/2 − PIO2_HI
    let kf = a * core::f64::consts::FRAC_2_PI;
    // Round to nearest; `as` saturates, and angles here are far below 2^62.
    let k = if kf >= 0.0 {
        (kf + 0.5) as i64
    } else {
        (kf - 0.5) as i64
    };
    let r = (a - k as f64 * PIO2_HI) - k as f64 * PIO2_LO;
    let r2 = r * r;
    // Horner forms of the Taylor series to x^15 (sin) and x^16 (cos).
    let mut s = 0f64;
    let mut c = 0f64;
    let mut n = 8;
    while n > 0 {
        // term index n: sin coefficient (-1)^n / (2n+1)!, cos coefficient (-1)^n / (2n)!
        s = s * r2 + inv_fact_signed(2 * n + 1, n);
        c = c * r2 + inv_fact_signed(2 * n, n);
        n -= 1;
    }
    let sin = r * (s * r2 + 1.0);
    let cos = c * r2 + 1.0;
    match k & 3 {
        0 => (cos, sin),
        1 => (-sin, cos),
        2 => (-cos, -sin),
        _ => (sin, -cos),
    }
}

/// `(-1)^n / m!` (constant-folded once the loop above unrolls).
#[inline(always)]
const fn inv_fact_signed(m: i32, n: i32) -> f64 {
    let mut f = 1f64;
    let mut i = 2;
    while i <= m {
        f *= i as f64;
        i += 1;
    }
    if n % 2 == 0 {
        1.0 / f
    } else {
        -1.0 / f
    }
}

#[inline(always)]
unsafe fn sinusoid_body<T: Elem>(p: SinusoidParams) {
    let n = p.n * p.dim;
    let (dim, half) = (p.dim.max(1), p.dim / 2);
    let (mut o, stride) = grid_stride();
    while o < n {
        let (row, col) = (o / dim, o % dim);
        let v = if col < 2 * half {
            let j = if col < half { col } else { col - half };
            let a = *(p.t as *const f32).add(row as usize) as f64
                * *(p.freqs as *const f64).add(j as usize);
            let (c, s) = cos_sin_f64(a);
            (if col < half { c } else { s }) as f32
        } else {
            0.0
        };
        T::st(p.y as *mut T, o as usize, v);
        o += stride;
    }
}

kernel! {
    independent;
    /// `y[i] = [cos(t_i·ω) | sin(t_i·ω)]` (see [`SinusoidParams`] for the precision).
    ///
    /// # Safety
    /// Pointers valid for their shapes, `n·dim < 2³²`; launch with `dims()`.
    pub unsafe fn sinusoid_f32(p: SinusoidParams) {
        sinusoid_body::<f32>(p)
    }
}

kernel! {
    independent;
    /// [`sinusoid_f32`] with a bf16 output (`t` and `freqs` keep their types).
    ///
    /// # Safety
    /// As [`sinusoid_f32`].
    pub unsafe fn sinusoid_bf16(p: Bf16<SinusoidParams>) {
        sinusoid_body::<u16>(p.0)
    }
}
