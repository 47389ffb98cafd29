//! 3D rotary position embedding (Wan2.1 semantics) on q/k laid out `[tokens, heads, head_dim]`.
//!
//! The `head_dim / 2` pairs `(x[2i], x[2i+1])` are complex numbers. They split into three parts
//! `[c - 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋]` (c = head_dim/2) for (frame, height, width). Pair j of a part
//! with `n` pairs rotates by `pos · 10000^(-2j / (2n))`. Tokens are ordered (frame, h, w)
//! row-major; the frame position is `start_frame + f`, h and w start at 0.
//!
//! The angles' cos/sin come from a table built on the host in f64 ([`rope_table`], the same
//! numbers as the official complex128 `rope_params`), so the kernel only does the f32 rotation.

use crate::gpu::{block_dim_x, block_idx_x, grid_dim_x, thread_idx_x};
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

/// Params of [`rope3d_f32`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    /// `[f·h·w, heads, head_dim]` f32 input.
    pub x: u64,
    /// Output, same shape (may equal `x`).
    pub y: u64,
    /// [`rope_table`] with `table_rows` rows.
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

kernel! {
    independent;
    /// Rotates every (frame, h, w) token of q or k by its 3D rotary angle (see the module doc).
    ///
    /// # Safety
    /// `check()` must pass and the pointers must be valid for their shapes.
    pub unsafe fn rope3d_f32(p: RopeParams) {
        // Divisors are clamped to >= 1 so no division-by-zero panic path is compiled in; `check()`
        // already rejects the shapes where that would matter.
        let c = (p.head_dim / 2).max(1);
        let [pf, ph, _] = rope_split(p.head_dim);
        let (h, w, heads) = (p.h.max(1), p.w.max(1), p.heads.max(1));
        let hw = (h * w).max(1);
        let n = p.f * p.h * p.w * p.heads * c;
        let stride = block_dim_x() * grid_dim_x();
        let mut i = block_idx_x() * block_dim_x() + thread_idx_x();
        while i < n {
            let j = i % c;
            let t = i / c / heads;
            let pos = if j < pf {
                p.start_frame + t / hw
            } else if j < pf + ph {
                (t / w) % h
            } else {
                t % w
            };
            let cs = (p.table as *const [f32; 2]).add((pos * c + j) as usize);
            let [cos, sin] = *cs;
            let [a, b] = *(p.x as *const [f32; 2]).add(i as usize);
            *(p.y as *mut [f32; 2]).add(i as usize) = [a * cos - b * sin, a * sin + b * cos];
            i += stride;
        }
    }
}
