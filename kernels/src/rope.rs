//! 3D rotary position embedding (Wan2.1 semantics) on q/k laid out `[tokens, heads, head_dim]`.
//!
//! The `head_dim / 2` pairs `(x[2i], x[2i+1])` are complex numbers. They split into three parts
//! `[c - 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋]` (c = head_dim/2) for (frame, height, width). Pair j of a part
//! with `n` pairs rotates by `pos · 10000^(-2j / (2n))`. Tokens are ordered (frame, h, w)
//! row-major; the frame position is `start_frame + f`, h and w start at 0.
//!
//! The angles' cos/sin come from a table built on the host in f64 ([`rope_table`], the same
//! numbers as the official complex128 `rope_params`), rounded to f32, so the kernel only does
//! the f32 rotation. (The CPU reference rotates in f64; the f32 path differs from it by a few
//! f32 ulp of the pair's magnitude, the bf16 path by at most 1 bf16 ulp at a rounding tie.)
//!
//! Kernels: [`rope3d_f32`]/[`rope3d_bf16`] (`Backend::rope`) and the fused
//! [`qk_norm_rope_f32`]/[`qk_norm_rope_bf16`] (RMSNorm over the whole `heads·head_dim` row,
//! then RoPE, for q and k in one launch).

use crate::elem::{Bf16, Elem};
use crate::gpu::reduce::{block_sum, BLOCK_SUM_SCRATCH};
use crate::gpu::{
    block_dim_x, block_idx_x, block_idx_y, dyn_smem_addr, grid_dim_x, sqrt, thread_idx_x,
};
use crate::norm::ROW_THREADS;
use crate::{Launch, LaunchDims};

/// Pairs per part (frame, height, width) for a head dimension.
pub const fn rope_split(head_dim: u32) -> [u32; 3] {
    let c = head_dim / 2;
    [c - 2 * (c / 3), c / 3, c / 3]
}

/// The cos/sin table: `rows × (head_dim/2) × [cos, sin]` f32, row p holding position p of every
/// pair (frame part, then h part, then w part). Angles are computed in f64.
#[cfg(not(target_arch = "nvptx64"))]
pub fn rope_table(head_dim: u32, rows: u32) -> Vec<f32> {
    let split = rope_split(head_dim);
    let c = (head_dim / 2) as usize;
    let mut freqs = Vec::with_capacity(c);
    for &n in &split {
        for j in 0..n {
            freqs.push(1.0 / 10000f64.powf((2 * j) as f64 / (2 * n) as f64));
        }
    }
    let mut t = Vec::with_capacity(rows as usize * c * 2);
    for p in 0..rows {
        for &f in &freqs {
            let a = p as f64 * f;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}

/// Params of [`rope3d_f32`] / [`rope3d_bf16`] (`Backend::rope`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    /// `[f·h·w, heads, head_dim]` input.
    pub x: u64,
    /// Output, same shape (may equal `x`).
    pub y: u64,
    /// [`rope_table`] with `table_rows` rows (f32 in both variants).
    pub table: u64,
    pub f: u32,
    pub h: u32,
    pub w: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// Absolute index of the first frame.
    pub start_frame: u32,
    pub table_rows: u32,
}

/// Threads per block of the rope kernel.
pub const ROPE_THREADS: u32 = 256;

impl RopeParams {
    /// Total pairs to rotate.
    pub fn pairs(&self) -> u64 {
        self.f as u64
            * self.h as u64
            * self.w as u64
            * self.heads as u64
            * (self.head_dim / 2) as u64
    }

    /// Checks what the kernel relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.head_dim & 1 != 0 || self.head_dim < 6 {
            return Err("rope: head_dim must be even and at least 6");
        }
        if self.pairs() > u32::MAX as u64 {
            return Err("rope: too many elements for one launch");
        }
        let need = [
            self.start_frame as u64 + self.f as u64,
            self.h as u64,
            self.w as u64,
        ];
        if need.iter().any(|&n| n > self.table_rows as u64) {
            return Err("rope: table has fewer rows than the positions need");
        }
        Ok(())
    }
}

impl Launch for RopeParams {
    fn dims(&self) -> LaunchDims {
        let n = self.pairs().min(u32::MAX as u64) as u32;
        LaunchDims {
            grid: [crate::grid_for(n, ROPE_THREADS), 1, 1],
            block: [ROPE_THREADS, 1, 1],
            dyn_smem: 0,
        }
    }
}

/// The table position of pair `j` (of `c` per head) of token `t` (tokens in (f, h, w) order).
#[inline(always)]
fn rope_pos(j: u32, t: u32, pf: u32, ph: u32, start_frame: u32, h: u32, w: u32) -> u32 {
    if j < pf {
        start_frame + t / (h * w).max(1)
    } else if j < pf + ph {
        (t / w.max(1)) % h.max(1)
    } else {
        t % w.max(1)
    }
}

#[inline(always)]
unsafe fn rope_body<T: Elem>(p: RopeParams) {
    // Divisors are clamped to >= 1 so no division-by-zero panic path is compiled in; `check()`
    // already rejects the shapes where that would matter.
    let c = (p.head_dim / 2).max(1);
    let [pf, ph, _] = rope_split(p.head_dim);
    let heads = p.heads.max(1);
    let n = p.f * p.h * p.w * p.heads * c;
    let stride = block_dim_x() * grid_dim_x();
    let mut i = block_idx_x() * block_dim_x() + thread_idx_x();
    let (x, y) = (p.x as *const T, p.y as *mut T);
    while i < n {
        let j = i % c;
        let t = i / c / heads;
        let pos = rope_pos(j, t, pf, ph, p.start_frame, p.h, p.w);
        let [cos, sin] = *(p.table as *const [f32; 2]).add((pos * c + j) as usize);
        let e = 2 * i as usize;
        let (a, b) = (T::ld(x, e), T::ld(x, e + 1));
        T::st(y, e, a * cos - b * sin);
        T::st(y, e + 1, a * sin + b * cos);
        i += stride;
    }
}

kernel! {
    independent;
    /// Rotates every (frame, h, w) token of q or k by its 3D rotary angle (see the module doc).
    ///
    /// # Safety
    /// `check()` must pass and the pointers must be valid for their shapes.
    pub unsafe fn rope3d_f32(p: RopeParams) {
        rope_body::<f32>(p)
    }
}

kernel! {
    independent;
    /// [`rope3d_f32`] on bf16 `x`/`y` (the table stays f32), one rounding per output.
    ///
    /// # Safety
    /// As [`rope3d_f32`], for bf16 buffers.
    pub unsafe fn rope3d_bf16(p: Bf16<RopeParams>) {
        rope_body::<u16>(p.0)
    }
}

/// Params of [`qk_norm_rope_f32`] / [`qk_norm_rope_bf16`]: the self-attention q/k prologue,
/// `rope(rms_norm(q, wq))` and `rope(rms_norm(k, wk))` with exactly the rounding points of
/// `Backend::rms_norm` followed by `Backend::rope`:
/// `y = r(rot(r(r(x·inv)·w)))` (r = round to storage; identity for f32).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QkNormRopeParams {
    /// `[f·h·w, heads·head_dim]` queries.
    pub q: u64,
    /// `[f·h·w, heads·head_dim]` keys, or 0 to process q only.
    pub k: u64,
    /// `[heads·head_dim]` RMSNorm weight of q.
    pub wq: u64,
    /// `[heads·head_dim]` RMSNorm weight of k.
    pub wk: u64,
    /// Output for q (may equal `q`).
    pub q_out: u64,
    /// Output for k (may equal `k`).
    pub k_out: u64,
    /// [`rope_table`] (f32) with `table_rows` rows.
    pub table: u64,
    pub f: u32,
    pub h: u32,
    pub w: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// Absolute index of the first frame.
    pub start_frame: u32,
    pub table_rows: u32,
    pub eps: f32,
}

impl QkNormRopeParams {
    /// The same shape as a [`RopeParams`] (for its checks).
    pub fn rope(&self) -> RopeParams {
        RopeParams {
            x: self.q,
            y: self.q_out,
            table: self.table,
            f: self.f,
            h: self.h,
            w: self.w,
            heads: self.heads,
            head_dim: self.head_dim,
            start_frame: self.start_frame,
            table_rows: self.table_rows,
        }
    }
    /// Checks what the kernel relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        self.rope().check()
    }
    fn tokens(&self) -> u32 {
        self.f * self.h * self.w
    }
}

impl Launch for QkNormRopeParams {
    /// One block per token (grid x); grid y = 2 (q, then k) or 1 when `k` is 0.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [self.tokens().max(1), if self.k == 0 { 1 } else { 2 }, 1],
            block: [ROW_THREADS, 1, 1],
            dyn_smem: BLOCK_SUM_SCRATCH,
        }
    }
}

#[inline(always)]
unsafe fn qk_norm_rope_row<T: Elem>(p: QkNormRopeParams) {
    let t = block_idx_x();
    // Uniform over the block, so returning here cannot split a barrier.
    if t >= p.tokens() {
        return;
    }
    let (x, w, y) = if block_idx_y() == 0 {
        (p.q, p.wq, p.q_out)
    } else {
        (p.k, p.wk, p.k_out)
    };
    let cols = p.heads * p.head_dim;
    let (tid, nt) = (thread_idx_x(), block_dim_x());
    let x = (x as *const T).add((t * cols) as usize);
    let y = (y as *mut T).add((t * cols) as usize);
    let w = w as *const T;
    let mut ss = 0f32;
    let mut e = tid;
    while e < cols {
        let v = T::ld(x, e as usize);
        ss += v * v;
        e += nt;
    }
    let inv = 1.0 / sqrt(block_sum(ss, dyn_smem_addr(), nt) / cols as f32 + p.eps);
    // Every x is read (above) before any y is written (below) by the block's barrier inside
    // block_sum, so y may alias x.
    let c = (p.head_dim / 2).max(1);
    let [pf, ph, _] = rope_split(p.head_dim);
    let mut i = tid;
    while i < cols / 2 {
        let j = i % c;
        let pos = rope_pos(j, t, pf, ph, p.start_frame, p.h, p.w);
        let [cos, sin] = *(p.table as *const [f32; 2]).add((pos * c + j) as usize);
        let e = 2 * i as usize;
        let a = T::round(T::round(T::ld(x, e) * inv) * T::ld(w, e));
        let b = T::round(T::round(T::ld(x, e + 1) * inv) * T::ld(w, e + 1));
        T::st(y, e, a * cos - b * sin);
        T::st(y, e + 1, a * sin + b * cos);
        i += nt;
    }
}

kernel! {
    /// RMSNorm over each token's full `heads·head_dim` row with a learned weight, then 3D RoPE
    /// at the absolute frame offset, for q (block y 0) and k (block y 1).
    ///
    /// # Safety
    /// `check()` must pass, pointers valid for their shapes; launch with `dims()`.
    pub unsafe fn qk_norm_rope_f32(p: QkNormRopeParams) {
        qk_norm_rope_row::<f32>(p)
    }
}

kernel! {
    /// [`qk_norm_rope_f32`] on bf16 q, k, weights and outputs (table f32), rounding like
    /// `Backend::rms_norm` then `Backend::rope`.
    ///
    /// # Safety
    /// As [`qk_norm_rope_f32`], for bf16 buffers.
    pub unsafe fn qk_norm_rope_bf16(p: Bf16<QkNormRopeParams>) {
        qk_norm_rope_row::<u16>(p.0)
    }
}
