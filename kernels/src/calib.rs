//! The Dummy Forcing calibration statistic (`host/src/dummy/calibrate.rs`, the official
//! `online_head_classification`): for sampled query rows of each head, the softmax over ALL
//! keys (segments in context order: frame 0, the cached frames, the current chunk) and its
//! mass on three regions of the concatenated key index `i`:
//! `first: i < first_end`, `mid: first_end ≤ i < mid_end`, `last: i ≥ mid_end`
//! (`first_end = HWr`, `mid_end = n − L` in the CPU doc's terms; the host computes them).
//!
//! Two launches:
//! 1. [`calib_mass_f32`] / [`calib_mass_bf16`]: one block per (8 sampled rows, head); each
//!    thread walks a strided share of the keys with an online softmax per row (running max
//!    and three running sums), then the block combines the partials in a fixed order. Writes
//!    the masses of every (head, sampled row): `[heads, n_rows, 3]` f32.
//! 2. [`calib_mean_f32`]: the mean over the sampled rows, `[3, heads]` f32 (the golden
//!    `scores.{layer}` layout, `LayerScores` rows).
//!
//! Precision: logits `(q·k) / scale` in f32 (host passes `scale = (head_dim as f32).sqrt()`, as
//! the CPU statistic divides by it), `exp` by `ex2.approx` with the log2(e) factor folded in,
//! sums in f32 (the CPU accumulates in f64). Masses agree with the CPU/f64 reference to about
//! 1e-5 absolute (the test allows 2e-5).

use crate::elem::{Bf16, Elem};
use crate::gpu::reduce::{block_sum, BLOCK_SUM_SCRATCH};
use crate::gpu::{
    block_dim_x, block_idx_x, block_idx_y, dyn_smem_addr, ex2, ld_shared_f32, st_shared_f32,
    sync_threads, thread_idx_x,
};
use crate::{Launch, LaunchDims};

/// Sampled rows per block of [`calib_mass_f32`].
pub const CALIB_ROWS: u32 = 8;
/// Threads per block of the calibration kernels.
pub const CALIB_THREADS: u32 = 128;
/// Largest head dim (bounds the shared memory for the query rows).
pub const CALIB_MAX_HEAD_DIM: u32 = 256;

/// A run of keys shared by all heads: the key of head `h`, token `t` starts at element
/// `h·head_stride + t·token_stride` of `k` (storage dtype). A phase-1 slot `[heads, tpf, d]` has
/// `(token_stride, head_stride) = (d, tpf·d)`; chunk K `[tokens, heads·d]` has `(heads·d, d)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibSeg {
    pub k: u64,
    pub tokens: u32,
    pub token_stride: u32,
    pub head_stride: u32,
    pub _pad: u32,
}

/// Params of [`calib_mass_f32`] / [`calib_mass_bf16`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibMassParams {
    /// `[chunk_tokens, heads, head_dim]` post-RoPE queries of the current chunk.
    pub q: u64,
    /// `[n_rows]` u32 sampled query rows (repeats allowed).
    pub rows: u64,
    /// `[n_segs]` [`CalibSeg`], in context order.
    pub segs: u64,
    /// `[heads, n_rows, 3]` f32 output: masses (first, mid, last) per head and sampled row.
    pub out: u64,
    pub n_rows: u32,
    pub n_segs: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// Keys with concatenated index `< first_end` form the first region.
    pub first_end: u32,
    /// Keys with index `≥ mid_end` form the last region (the current chunk).
    pub mid_end: u32,
    /// Logits are `q·k / scale` (`sqrt(head_dim)` as f32).
    pub scale: f32,
}

impl CalibMassParams {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.n_rows == 0 || self.heads == 0 || self.head_dim == 0 {
            return Err("calib_mass: empty shape");
        }
        if self.head_dim > CALIB_MAX_HEAD_DIM {
            return Err("calib_mass: head_dim above 256");
        }
        if self.heads > 65535 {
            return Err("calib_mass: more than 65535 heads");
        }
        if self.first_end > self.mid_end {
            return Err("calib_mass: first_end > mid_end");
        }
        Ok(())
    }
    fn q_bytes(&self) -> u32 {
        CALIB_ROWS * self.head_dim.min(CALIB_MAX_HEAD_DIM) * 4
    }
}

impl Launch for CalibMassParams {
    /// Grid (row groups of [`CALIB_ROWS`], heads); smem: the rows' queries (f32) and every
    /// thread's partials (max and three sums per row).
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [
                self.n_rows.div_ceil(CALIB_ROWS).max(1),
                self.heads.max(1),
                1,
            ],
            block: [CALIB_THREADS, 1, 1],
            dyn_smem: self.q_bytes() + CALIB_ROWS * CALIB_THREADS * 16,
        }
    }
}

const LOG2E: f32 = core::f32::consts::LOG2_E;

/// `e^(a − b)` for `b ≥ a`, 0 when `a` is −inf (an empty partial).
#[inline(always)]
fn rescale(a: f32, b: f32) -> f32 {
    if a == f32::NEG_INFINITY {
        0.0
    } else {
        ex2((a - b) * LOG2E)
    }
}

#[inline(always)]
unsafe fn calib_mass_body<T: Elem>(p: CalibMassParams) {
    const R: usize = CALIB_ROWS as usize;
    let (tid, nt) = (thread_idx_x(), block_dim_x());
    let h = block_idx_y();
    let row0 = block_idx_x() * CALIB_ROWS;
    // Uniform over the block.
    if row0 >= p.n_rows || h >= p.heads {
        return;
    }
    let d = p.head_dim.min(CALIB_MAX_HEAD_DIM);
    let smem = dyn_smem_addr();
    let part = smem + CALIB_ROWS * d * 4;
    // Stage the block's query rows (a tail group repeats its last row; those are not written).
    let rows = p.rows as *const u32;
    let qstride = (p.heads * p.head_dim) as usize;
    let mut i = tid;
    while i < CALIB_ROWS * d {
        let (r, c) = (i / d, i % d);
        let row = *rows.add((row0 + r).min(p.n_rows - 1) as usize);
        let v = T::ld(
            p.q as *const T,
            row as usize * qstride + (h * p.head_dim + c) as usize,
        );
        st_shared_f32(smem + 4 * i, v);
        i += nt;
    }
    sync_threads();

    let mut m = [f32::NEG_INFINITY; R];
    let mut s = [[0f32; 3]; R];
    let mut seg_start = 0u32;
    for si in 0..p.n_segs as usize {
        let seg = *(p.segs as *const CalibSeg).add(si);
        let base = (seg.k as *const T).add((h * seg.head_stride) as usize);
        let mut t = tid;
        while t < seg.tokens {
            let key = base.add((t * seg.token_stride) as usize);
            let mut acc = [0f32; R];
            for c in 0..d {
                let kv = T::ld(key, c as usize);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a += ld_shared_f32(smem + 4 * (r as u32 * d + c)) * kv;
                }
            }
            let g = seg_start + t;
            let (in0, in1) = (g < p.first_end, g >= p.first_end && g < p.mid_end);
            for r in 0..R {
                let x = acc[r] / p.scale;
                if x > m[r] {
                    let f = rescale(m[r], x);
                    for v in s[r].iter_mut() {
                        *v *= f;
                    }
                    m[r] = x;
                }
                let e = ex2((x - m[r]) * LOG2E);
                // Selects, not a dynamic index: register arrays stay in registers.
                s[r][0] += if in0 { e } else { 0.0 };
                s[r][1] += if in1 { e } else { 0.0 };
                s[r][2] += if !in0 && !in1 { e } else { 0.0 };
            }
            t += nt;
        }
        seg_start += seg.tokens;
    }

    // Partials to shared memory: [row][thread] × (max, s0, s1, s2).
    for r in 0..R {
        let a = part + 16 * (r as u32 * nt + tid);
        st_shared_f32(a, m[r]);
        st_shared_f32(a + 4, s[r][0]);
        st_shared_f32(a + 8, s[r][1]);
        st_shared_f32(a + 12, s[r][2]);
    }
    sync_threads();
    // Thread r combines row r in thread order (deterministic).
    if tid < CALIB_ROWS && row0 + tid < p.n_rows {
        let a0 = part + 16 * tid * nt;
        let mut mx = f32::NEG_INFINITY;
        for j in 0..nt {
            mx = mx.max(ld_shared_f32(a0 + 16 * j));
        }
        let mut tot = [0f32; 3];
        for j in 0..nt {
            let a = a0 + 16 * j;
            let f = rescale(ld_shared_f32(a), mx);
            for (k, v) in tot.iter_mut().enumerate() {
                *v += ld_shared_f32(a + 4 + 4 * k as u32) * f;
            }
        }
        let z = tot[0] + tot[1] + tot[2];
        let out = (p.out as *mut f32).add(((h * p.n_rows + row0 + tid) * 3) as usize);
        for (k, v) in tot.iter().enumerate() {
            *out.add(k) = *v / z;
        }
    }
}

kernel! {
    /// Per (head, sampled row) softmax masses of the three key regions (see the module doc).
    ///
    /// # Safety
    /// `check()` passes; `q`, `rows` (each `< chunk_tokens`), `segs` and every segment's keys
    /// valid for their shapes; `out` valid for `heads·n_rows·3` f32; launch with `dims()`.
    pub unsafe fn calib_mass_f32(p: CalibMassParams) {
        calib_mass_body::<f32>(p)
    }
}

kernel! {
    /// [`calib_mass_f32`] with bf16 queries and keys (output f32).
    ///
    /// # Safety
    /// As [`calib_mass_f32`].
    pub unsafe fn calib_mass_bf16(p: Bf16<CalibMassParams>) {
        calib_mass_body::<u16>(p.0)
    }
}

/// Params of [`calib_mean_f32`] (f32 only: its input is [`calib_mass_f32`]'s f32 output in
/// both storage precisions).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibMeanParams {
    /// `[heads, n_rows, 3]` f32 per-row masses.
    pub per_row: u64,
    /// `[3, heads]` f32 means over the rows.
    pub out: u64,
    pub heads: u32,
    pub n_rows: u32,
}

impl Launch for CalibMeanParams {
    /// One block per head.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [self.heads.max(1), 1, 1],
            block: [CALIB_THREADS, 1, 1],
            dyn_smem: BLOCK_SUM_SCRATCH,
        }
    }
}

kernel! {
    /// `out[k, h] = mean_i per_row[h, i, k]`.
    ///
    /// # Safety
    /// Pointers valid for their shapes, `n_rows > 0`; launch with `dims()`.
    pub unsafe fn calib_mean_f32(p: CalibMeanParams) {
        let h = block_idx_x();
        // Uniform over the block.
        if h >= p.heads {
            return;
        }
        let (tid, nt) = (thread_idx_x(), block_dim_x());
        let src = (p.per_row as *const f32).add((h * p.n_rows * 3) as usize);
        for k in 0..3u32 {
            let mut acc = 0f32;
            let mut i = tid;
            while i < p.n_rows {
                acc += *src.add((i * 3 + k) as usize);
                i += nt;
            }
            let total = block_sum(acc, dyn_smem_addr(), nt);
            if tid == 0 {
                *(p.out as *mut f32).add((k * p.heads + h) as usize) = total / p.n_rows as f32;
            }
        }
    }
}
