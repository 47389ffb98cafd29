//! Packed attention forward over per-head K/V segment tables (no mask other than tails).
//!
//! One launch covers every head of a layer. Head `h` attends its query rows to the concatenation
//! of its segments `segs[seg_start[h]..seg_start[h+1]]`; each segment is a contiguous run of K/V
//! rows read in place (for example a sink slot, window ring slots in any order, and the current
//! chunk, straight from the frame-slot cache). Cross-attention over per-prompt text K/V is the
//! same kernel with one segment per head.
//!
//! Semantics, for query row `i` of head `h` with keys/values `k_j, v_j` (all segments in order):
//! `o_i = Σ_j softmax_j(q_i·k_j · scale) v_j`, where `scale_log2 = scale · log2(e)`. A head with
//! no keys (no segments, or only empty ones) outputs zeros.
//!
//! Kernels (one params wrapper type per entry point, all sharing [`AttnParams`]):
//! - [`attn_f32`] ([`AttnF32`]): f32 Q/K/V/O, f32 math on CUDA cores; the exact path for
//!   `--dtype f32`. Any `head_dim` in 1..=128.
//! - [`attn_bf16_d128`] / [`attn_bf16_d64`] ([`AttnBf16D128`] / [`AttnBf16D64`]): bf16 Q/K/V/O,
//!   f32 accumulation, FlashAttention-2 style (mma.sync m16n8k16 over ldmatrix fragments,
//!   cp.async double-buffered K/V tiles, online softmax in registers with exp2). 4 warps, 64
//!   query rows per block.
//! - [`attn_bf16_d128_w8`] ([`AttnBf16D128W8`]): the same body with 8 warps and 128 query rows
//!   per block: every K/V tile brought into shared memory serves twice the rows (half the
//!   global/L2 traffic for K/V per FLOP, half the blocks), at 96 KiB of shared memory. Kernel
//!   version 2 of the bf16 d128 path, kept beside version 1 until a GPU run picks one
//!   (`benches/kernels.rs` times both at the real shapes; `GpuOptions::attn_rows` in the host).
//!
//! Preconditions (checked on the host by `check()` and `check_table()` of each wrapper):
//! - f32: `q`, `o` and every segment's `k`/`v` 4-byte aligned.
//! - bf16: `q`, `o` and every segment's `k`/`v` 16-byte aligned, and `q_stride` and every
//!   segment `stride` a multiple of 8 elements, so every 16-byte cp.async row chunk is aligned.
//! - `q_stride >= heads·head_dim`, each segment `stride >= head_dim`; `seg_start` has `heads+1`
//!   non-decreasing entries; `scale_log2` finite.
//! - bf16 d128 needs 80 KiB of dynamic shared memory: the launcher must raise the kernel's
//!   `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` to `dims().dyn_smem` before launching.
//! - `o` must not overlap any K/V row (other blocks may still be reading K/V while one block
//!   writes its output), nor `q` (in-place is not supported or tested).
//! - `heads <= 65535` (grid.y).
//!
//! Launch shapes (`Launch::dims`): 128 threads; f32: grid (ceil(q_rows/16), heads), dynamic
//! smem [`attn_f32_smem`]`(head_dim)` (43 KiB at d128); bf16: grid (ceil(q_rows/64), heads),
//! [`attn_bf16_smem`] (80 KiB at d128, 40 KiB at d64); bf16 w8: 256 threads, grid
//! (ceil(q_rows/128), heads), 96 KiB. Zero rows or zero heads still give a one-block grid whose
//! block returns at once.

// Register arrays are indexed by loop counters that are constants after full unrolling; that is
// what keeps them in registers, so index loops are deliberate.
#![allow(clippy::needless_range_loop)]

use crate::gpu::reduce::{warp_max, warp_sum};
use crate::gpu::*;
use crate::{Launch, LaunchDims};

/// One contiguous run of K/V rows of one head: row r's K is at k + r*stride elements (same for v).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvSeg {
    /// Device address of row 0's K (element type per kernel).
    pub k: u64,
    /// Device address of row 0's V.
    pub v: u64,
    /// Rows in this run (0 is allowed and skipped).
    pub rows: u32,
    /// Elements between consecutive rows (for example `heads·head_dim` in a `[tokens, heads,
    /// head_dim]` cache).
    pub stride: u32,
}

/// The params every attention kernel shares (wrapped per entry point).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    /// `[q_rows, heads*head_dim]` (element type per kernel), head h at column `h*head_dim`.
    pub q: u64,
    /// Output, same shape and stride as `q`.
    pub o: u64,
    /// `[heads+1]` u32: head h uses `segs[seg_start[h]..seg_start[h+1]]`.
    pub seg_start: u64,
    /// `[n]` [`KvSeg`], device memory.
    pub segs: u64,
    pub q_rows: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// Elements between query rows (= `heads*head_dim` normally); also the stride of `o`.
    pub q_stride: u32,
    /// Softmax scale · log2(e).
    pub scale_log2: f32,
}

/// Params of [`attn_f32`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct AttnF32(pub AttnParams);

/// Params of [`attn_bf16_d128`] (`head_dim` must be 128).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct AttnBf16D128(pub AttnParams);

/// Params of [`attn_bf16_d128_w8`] (`head_dim` must be 128).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct AttnBf16D128W8(pub AttnParams);

/// Params of [`attn_bf16_d64`] (`head_dim` must be 64).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct AttnBf16D64(pub AttnParams);

/// FLOPs of one forward launch as FlashAttention counts them: `4·Lq·Lk·H·d` (two matmuls),
/// with `keys` the per-head key count summed over heads (`Lk·H` for equal heads).
pub fn attn_flops(q_rows: u64, keys_all_heads: u64, head_dim: u64) -> u64 {
    4 * q_rows * keys_all_heads * head_dim
}

/// A segment table as the bytes of one upload: `seg_start` (`[heads + 1]` u32) at offset 0,
/// then the [`KvSeg`] entries (24 bytes each, little-endian fields in declaration order) from
/// `segs_offset`, which is 16-byte aligned. The GPU backend and the kernel bench both build
/// their tables here; `AttnParams::seg_start` is the upload's address and `segs` that address
/// plus `segs_offset`.
#[cfg(not(target_arch = "nvptx64"))]
pub struct SegmentTable {
    pub bytes: Vec<u8>,
    pub segs_offset: usize,
}

/// Serialises `seg_start` and `segs` into one [`SegmentTable`].
///
/// ```
/// use dfrt_kernels::attention::{segment_table, KvSeg};
/// let seg = KvSeg { k: 0x1000, v: 0x2000, rows: 7, stride: 64 };
/// let t = segment_table(&[0, 1, 1], &[seg]);
/// assert_eq!(t.segs_offset, 16);
/// assert_eq!(t.bytes.len(), 16 + 24);
/// assert_eq!(&t.bytes[4..8], &1u32.to_le_bytes());
/// assert_eq!(&t.bytes[16..24], &0x1000u64.to_le_bytes());
/// assert_eq!(&t.bytes[32..36], &7u32.to_le_bytes());
/// ```
#[cfg(not(target_arch = "nvptx64"))]
pub fn segment_table(seg_start: &[u32], segs: &[KvSeg]) -> SegmentTable {
    const _: () = assert!(core::mem::size_of::<KvSeg>() == 24);
    let segs_offset = (seg_start.len() * 4).div_ceil(16) * 16;
    let mut bytes = vec![0u8; segs_offset + segs.len() * 24];
    for (i, s) in seg_start.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&s.to_le_bytes());
    }
    for (i, s) in segs.iter().enumerate() {
        let o = segs_offset + i * 24;
        bytes[o..o + 8].copy_from_slice(&s.k.to_le_bytes());
        bytes[o + 8..o + 16].copy_from_slice(&s.v.to_le_bytes());
        bytes[o + 16..o + 20].copy_from_slice(&s.rows.to_le_bytes());
        bytes[o + 20..o + 24].copy_from_slice(&s.stride.to_le_bytes());
    }
    SegmentTable { bytes, segs_offset }
}

// ---------------------------------------------------------------------------------------------
// Host-side checks (host builds only: they allocate error strings)
// ---------------------------------------------------------------------------------------------

#[cfg(not(target_arch = "nvptx64"))]
impl AttnParams {
    /// The checks shared by all kernels; `elem` is the element size, `align` the byte alignment
    /// every row start needs.
    fn check_with(&self, name: &str, elem: u32, align: u64) -> Result<(), String> {
        let p = self;
        if !p.scale_log2.is_finite() {
            return Err(format!("{name}: scale_log2 {} is not finite", p.scale_log2));
        }
        if p.heads > 65535 {
            return Err(format!("{name}: {} heads > 65535 (grid.y limit)", p.heads));
        }
        let width = p.heads as u64 * p.head_dim as u64;
        if (p.q_stride as u64) < width {
            return Err(format!(
                "{name}: q_stride {} < heads·head_dim = {width}",
                p.q_stride
            ));
        }
        if p.heads == 0 || p.q_rows == 0 {
            return Ok(());
        }
        for (what, ptr) in [
            ("q", p.q),
            ("o", p.o),
            ("seg_start", p.seg_start),
            ("segs", p.segs),
        ] {
            if ptr == 0 {
                return Err(format!("{name}: {what} is null"));
            }
        }
        if !p.q.is_multiple_of(align) || !p.o.is_multiple_of(align) {
            return Err(format!(
                "{name}: q {:#x} and o {:#x} must be {align}-byte aligned",
                p.q, p.o
            ));
        }
        if !(p.q_stride as u64 * elem as u64).is_multiple_of(align) {
            return Err(format!(
                "{name}: q_stride {} elements is not a multiple of {align} bytes",
                p.q_stride
            ));
        }
        if !p.seg_start.is_multiple_of(4) || !p.segs.is_multiple_of(8) {
            return Err(format!("{name}: seg_start/segs misaligned"));
        }
        Ok(())
    }

    /// Checks a segment table (host copies of what `seg_start`/`segs` point to).
    fn check_table_with(
        &self,
        name: &str,
        elem: u32,
        align: u64,
        seg_start: &[u32],
        segs: &[KvSeg],
    ) -> Result<(), String> {
        if seg_start.len() != self.heads as usize + 1 {
            return Err(format!(
                "{name}: seg_start has {} entries, want heads+1 = {}",
                seg_start.len(),
                self.heads + 1
            ));
        }
        if let Some(w) = seg_start.windows(2).position(|w| w[0] > w[1]) {
            return Err(format!("{name}: seg_start decreases at head {w}"));
        }
        let last = *seg_start.last().unwrap_or(&0) as usize;
        if last > segs.len() {
            return Err(format!(
                "{name}: seg_start ends at {last} but there are {} segments",
                segs.len()
            ));
        }
        for (i, s) in segs[seg_start[0] as usize..last].iter().enumerate() {
            let i = i + seg_start[0] as usize;
            if s.rows == 0 {
                continue;
            }
            if s.k == 0 || s.v == 0 {
                return Err(format!("{name}: segment {i} has a null k or v"));
            }
            if s.stride < self.head_dim {
                return Err(format!(
                    "{name}: segment {i} stride {} < head_dim {}",
                    s.stride, self.head_dim
                ));
            }
            let row_bytes = s.stride as u64 * elem as u64;
            if !s.k.is_multiple_of(align)
                || !s.v.is_multiple_of(align)
                || !row_bytes.is_multiple_of(align)
            {
                return Err(format!(
                    "{name}: segment {i} (k {:#x}, v {:#x}, stride {}) rows are not {align}-byte aligned",
                    s.k, s.v, s.stride
                ));
            }
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "nvptx64"))]
impl AttnF32 {
    /// Checks the params a launcher passes (head_dim 1..=128, alignment, strides).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=F32_MAX_D).contains(&self.0.head_dim) {
            return Err(format!(
                "attn_f32: head_dim {} not in 1..={F32_MAX_D}",
                self.0.head_dim
            ));
        }
        self.0.check_with("attn_f32", 4, 4)
    }
    /// Checks the segment table (host copies of `seg_start` and `segs`).
    pub fn check_table(&self, seg_start: &[u32], segs: &[KvSeg]) -> Result<(), String> {
        self.0.check_table_with("attn_f32", 4, 4, seg_start, segs)
    }
}

macro_rules! bf16_checks {
    ($ty:ident, $name:literal, $d:expr) => {
        #[cfg(not(target_arch = "nvptx64"))]
        impl $ty {
            /// Checks the params a launcher passes (head_dim, 16-byte row alignment, strides).
            pub fn check(&self) -> Result<(), String> {
                if self.0.head_dim != $d {
                    return Err(format!(
                        "{}: head_dim {} (this kernel needs {})",
                        $name, self.0.head_dim, $d
                    ));
                }
                self.0.check_with($name, 2, 16)
            }
            /// Checks the segment table (host copies of `seg_start` and `segs`): every row of
            /// K and V must start 16-byte aligned.
            pub fn check_table(&self, seg_start: &[u32], segs: &[KvSeg]) -> Result<(), String> {
                self.0.check_table_with($name, 2, 16, seg_start, segs)
            }
        }
    };
}
bf16_checks!(AttnBf16D128, "attn_bf16_d128", 128);
bf16_checks!(AttnBf16D128W8, "attn_bf16_d128_w8", 128);
bf16_checks!(AttnBf16D64, "attn_bf16_d64", 64);

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// Threads per block of the f32 and 4-warp bf16 attention kernels.
pub const ATTN_THREADS: u32 = 128;

/// Segment range of head `h`.
#[inline(always)]
unsafe fn seg_range(p: &AttnParams, h: u32) -> (u32, u32) {
    let st = p.seg_start as *const u32;
    (*st.add(h as usize), *st.add(h as usize + 1))
}

#[inline(always)]
unsafe fn seg(p: &AttnParams, i: u32) -> KvSeg {
    *(p.segs as *const KvSeg).add(i as usize)
}

// ---------------------------------------------------------------------------------------------
// f32 kernel
// ---------------------------------------------------------------------------------------------

/// Largest head_dim of [`attn_f32`].
pub const F32_MAX_D: u32 = 128;
/// Query rows per warp / per block, keys per tile of [`attn_f32`].
const F32_RPW: usize = 4;
/// Query rows per block of [`attn_f32`] (4 warps × 4 rows).
pub const F32_BLOCK_M: u32 = 16;
/// Keys per shared-memory tile of [`attn_f32`] (one per lane).
pub const F32_BLOCK_N: u32 = 32;
/// Head-dim elements per lane (lane l owns dims l, l+32, l+64, l+96).
const F32_DPL: usize = (F32_MAX_D / 32) as usize;

/// Shared-memory row stride of the K tile: odd, so lane j reading row j is conflict-free.
const fn f32_kstride(d: u32) -> u32 {
    d | 1
}

/// Dynamic shared memory of [`attn_f32`] for a head_dim: Q `[16][d]`, K `[32][d|1]`, V `[32][d]`,
/// P `[4 warps][4 rows][32]`, all f32.
pub const fn attn_f32_smem(d: u32) -> u32 {
    4 * (F32_BLOCK_M * d + F32_BLOCK_N * f32_kstride(d) + F32_BLOCK_N * d + F32_BLOCK_M * 32)
}

impl Launch for AttnF32 {
    /// grid = (ceil(q_rows/16), heads), 128 threads. Zero rows or heads still launch one block
    /// (it returns at once), so a launcher never sees a zero grid.
    fn dims(&self) -> LaunchDims {
        let p = &self.0;
        LaunchDims {
            grid: [p.q_rows.div_ceil(F32_BLOCK_M).max(1), p.heads.max(1), 1],
            block: [ATTN_THREADS, 1, 1],
            dyn_smem: attn_f32_smem(p.head_dim.min(F32_MAX_D)),
        }
    }
}

kernel! {
    /// Attention in f32 on CUDA cores (see the module doc). Block (x, h) handles query rows
    /// 16x..16x+16 of head h; warp w owns 4 of them. Per 32-key tile, lane j scores key j
    /// against the warp's 4 rows, the warp folds them into a running max/sum (online softmax in
    /// base 2, scale folded in), and lane l accumulates output dims l, l+32, l+64, l+96.
    ///
    /// # Safety
    /// `check()` and `check_table()` must pass, the pointers must be valid for their shapes;
    /// launch with `dims()`.
    pub unsafe fn attn_f32(pa: AttnF32) {
        let p = pa.0;
        let h = block_idx_y();
        let row0 = block_idx_x() * F32_BLOCK_M;
        // Block-uniform exits, before any barrier.
        if h >= p.heads || row0 >= p.q_rows || p.head_dim == 0 || p.head_dim > F32_MAX_D {
            return;
        }
        let d = p.head_dim;
        let ks = f32_kstride(d);
        let (tid, lane, warp) = (thread_idx_x(), lane_id(), warp_id());
        let s_q = dyn_smem_addr();
        let s_k = s_q + 4 * F32_BLOCK_M * d;
        let s_v = s_k + 4 * F32_BLOCK_N * ks;
        let s_p = s_v + 4 * F32_BLOCK_N * d + 4 * warp * (F32_RPW as u32 * 32);
        let col0 = (h * d) as usize;

        // Q tile (rows past q_rows read as 0 and are never stored).
        let q = p.q as *const f32;
        let mut i = tid;
        while i < F32_BLOCK_M * d {
            let (r, c) = (i / d, i % d);
            let row = row0 + r;
            let v = if row < p.q_rows {
                *q.add(row as usize * p.q_stride as usize + col0 + c as usize)
            } else {
                0.0
            };
            st_shared_f32(s_q + 4 * i, v);
            i += ATTN_THREADS;
        }

        // Per row of this warp: running max (base-2 scaled), this lane's partial sum, and
        // this lane's output dims.
        let mut m = [f32::NEG_INFINITY; F32_RPW];
        let mut l = [0f32; F32_RPW];
        let mut o = [[0f32; F32_DPL]; F32_RPW];
        let my_rows = s_q + 4 * (warp * F32_RPW as u32) * d;

        let (s_begin, s_end) = seg_range(&p, h);
        let mut si = s_begin;
        while si < s_end {
            let sg = seg(&p, si);
            let (kg, vg) = (sg.k as *const f32, sg.v as *const f32);
            let mut t0 = 0u32;
            while t0 < sg.rows {
                let n = (sg.rows - t0).min(F32_BLOCK_N);
                // Everyone is done with the previous tile (and the Q stores are visible).
                sync_threads();
                let mut i = tid;
                while i < F32_BLOCK_N * d {
                    let (j, c) = (i / d, i % d);
                    let (kv, vv) = if j < n {
                        let off = (t0 + j) as usize * sg.stride as usize + c as usize;
                        (*kg.add(off), *vg.add(off))
                    } else {
                        (0.0, 0.0)
                    };
                    st_shared_f32(s_k + 4 * (j * ks + c), kv);
                    st_shared_f32(s_v + 4 * i, vv);
                    i += ATTN_THREADS;
                }
                sync_threads();

                // Scores: lane = key.
                let mut acc = [0f32; F32_RPW];
                let krow = s_k + 4 * lane * ks;
                let mut c = 0;
                while c < d {
                    let kv = ld_shared_f32(krow + 4 * c);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a += ld_shared_f32(my_rows + 4 * (r as u32 * d + c)) * kv;
                    }
                    c += 1;
                }
                let mut alpha = [0f32; F32_RPW];
                for r in 0..F32_RPW {
                    let x = if lane < n { acc[r] * p.scale_log2 } else { f32::NEG_INFINITY };
                    let m_new = m[r].max(warp_max(x));
                    // −inf guard: with no finite score yet, subtract 0, never (−inf) − (−inf).
                    let base = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
                    alpha[r] = ex2(m[r] - base);
                    let pj = ex2(x - base);
                    l[r] = l[r] * alpha[r] + pj;
                    m[r] = m_new;
                    st_shared_f32(s_p + 4 * (r as u32 * 32 + lane), pj);
                }
                // The warp's P row is in shared memory for every lane.
                sync_threads();
                for r in 0..F32_RPW {
                    for x in o[r].iter_mut() {
                        *x *= alpha[r];
                    }
                }
                let mut j = 0;
                while j < n {
                    let vrow = s_v + 4 * j * d;
                    let mut pr = [0f32; F32_RPW];
                    for (r, x) in pr.iter_mut().enumerate() {
                        *x = ld_shared_f32(s_p + 4 * (r as u32 * 32 + j));
                    }
                    for e in 0..F32_DPL {
                        let c = lane + 32 * e as u32;
                        if c < d {
                            let vv = ld_shared_f32(vrow + 4 * c);
                            for r in 0..F32_RPW {
                                o[r][e] += pr[r] * vv;
                            }
                        }
                    }
                    j += 1;
                }
                t0 += F32_BLOCK_N;
            }
            si += 1;
        }

        let out = p.o as *mut f32;
        for r in 0..F32_RPW {
            let total = warp_sum(l[r]);
            // No keys at all: output 0 (not 0/0).
            let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
            let row = row0 + warp * F32_RPW as u32 + r as u32;
            if row < p.q_rows {
                let dst = out.add(row as usize * p.q_stride as usize + col0);
                for e in 0..F32_DPL {
                    let c = lane + 32 * e as u32;
                    if c < d {
                        *dst.add(c as usize) = o[r][e] * inv;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 kernels (FlashAttention-2 style)
// ---------------------------------------------------------------------------------------------

/// Query rows per block of the 4-warp bf16 kernels (one m16 slab per warp); the 8-warp
/// kernel has twice as many.
pub const BF16_BLOCK_M: u32 = 64;
/// Keys per K/V tile of the bf16 kernels.
pub const BF16_BLOCK_N: u32 = 64;

/// Dynamic shared memory of a 4-warp bf16 kernel for head_dim `d`: Q `[64][d]` plus two K/V
/// stages (`[64][d]` each for K and V), bf16. d = 128: 80 KiB (above the 48 KiB default: the
/// launcher must raise the function's max dynamic shared memory); d = 64: 40 KiB.
pub const fn attn_bf16_smem(d: u32) -> u32 {
    attn_bf16_smem_warps(d, 4)
}

/// Dynamic shared memory of a bf16 kernel with `warps` warps (Q `[16·warps][d]` plus the two
/// K/V stages): 96 KiB for 8 warps at d = 128.
pub const fn attn_bf16_smem_warps(d: u32, warps: u32) -> u32 {
    2 * d * (16 * warps + 4 * BF16_BLOCK_N)
}

macro_rules! bf16_launch {
    ($ty:ident, $d:expr, $warps:expr) => {
        impl Launch for $ty {
            /// grid = (ceil(q_rows / (16·warps)), heads), 32·warps threads; zero rows or heads
            /// launch one block that returns at once.
            fn dims(&self) -> LaunchDims {
                let p = &self.0;
                LaunchDims {
                    grid: [p.q_rows.div_ceil(16 * $warps).max(1), p.heads.max(1), 1],
                    block: [32 * $warps, 1, 1],
                    dyn_smem: attn_bf16_smem_warps($d, $warps),
                }
            }
        }
    };
}
bf16_launch!(AttnBf16D128, 128, 4);
bf16_launch!(AttnBf16D128W8, 128, 8);
bf16_launch!(AttnBf16D64, 64, 4);

/// Byte offset of 16-byte chunk `c` of row `r` in a `[rows][d]` bf16 tile with `row_bytes =
/// 2d`. The chunk index is XORed with `r % 8`, so the 8 rows one ldmatrix phase reads (same
/// logical chunk) and the chunks cp.async writes fall in distinct bank groups. Writer and
/// readers use this same function.
#[inline(always)]
fn swz(r: u32, c: u32, row_bytes: u32) -> u32 {
    r * row_bytes + ((c ^ (r & 7)) << 4)
}

/// Position in a head's key sequence: segment `si`, first row `t0` of the tile.
#[derive(Clone, Copy)]
struct Cursor {
    si: u32,
    t0: u32,
}

/// The first tile at or after (si, t0): skips finished and empty segments. `si == end` means
/// no tile is left.
#[inline(always)]
unsafe fn settle(p: &AttnParams, mut c: Cursor, end: u32) -> Cursor {
    while c.si < end && c.t0 >= seg(p, c.si).rows {
        c.si += 1;
        c.t0 = 0;
    }
    c
}

/// Issues the cp.async copies of one K/V tile (rows t0.. of segment si) into stage buffers
/// `sk`/`sv` by the block's `threads` threads (`d` and `threads` are constants after
/// inlining). Rows past the segment's end are zero-filled (their scores are masked, and the
/// zeros keep P·V free of NaN). Not committed here.
#[inline(always)]
unsafe fn load_kv_tile(p: &AttnParams, d: u32, threads: u32, c: Cursor, sk: u32, sv: u32) {
    let sg = seg(p, c.si);
    let n = (sg.rows - c.t0).min(BF16_BLOCK_N);
    let cpr = d / 8; // 16-byte chunks per row
    let tid = thread_idx_x();
    let (kb, vb) = (sg.k as *const u8, sg.v as *const u8);
    let mut i = 0;
    while i < BF16_BLOCK_N * cpr / threads {
        let idx = tid + i * threads;
        let (r, ch) = (idx / cpr, idx % cpr);
        let dst = swz(r, ch, 2 * d);
        // Out-of-range rows copy 0 bytes from the (aligned) segment start.
        let (off, size) = if r < n {
            (
                ((c.t0 + r) as usize * sg.stride as usize) * 2 + ch as usize * 16,
                16,
            )
        } else {
            (0, 0)
        };
        cp_async_16(sk + dst, kb.add(off), size);
        cp_async_16(sv + dst, vb.add(off), size);
        i += 1;
    }
}

/// The bf16 kernel body for head_dim `D = 8·NDT` (NDT n8 output tiles, NKS = D/16 k16 slices)
/// with `WARPS` warps.
///
/// Block (x, h): query rows `BM·x .. BM·x + BM` (`BM = 16·WARPS`) of head h; warp w owns the m16 slab 16w..16w+16 (Q
/// stays in shared memory; its fragments are re-read per tile). Per 64-key tile: S = Q·Kᵀ (mma.sync m16n8k16, K via
/// ldmatrix), tail mask, online softmax in base 2 (quad shuffles xor 1, 2; −inf guards),
/// O += P·V with P repacked from the S accumulators as bf16 A fragments and V via
/// ldmatrix.trans. K/V tiles are double-buffered with cp.async: tile i+1 loads while tile i
/// computes.
#[inline(always)]
unsafe fn attn_bf16_body<const NDT: usize, const NKS: usize, const WARPS: u32>(p: AttnParams) {
    const { assert!(NDT == 2 * NKS) };
    const { assert!(WARPS == 4 || WARPS == 8) };
    let d = 8 * NDT as u32;
    let (block_m, threads) = (16 * WARPS, 32 * WARPS);
    let h = block_idx_y();
    let row0 = block_idx_x() * block_m;
    // Block-uniform exits, before any barrier.
    if h >= p.heads || row0 >= p.q_rows || p.head_dim != d {
        return;
    }
    let (tid, lane, warp) = (thread_idx_x(), lane_id(), warp_id());
    let rb = 2 * d; // bytes per smem row
    let s_q = dyn_smem_addr();
    let stage = |b: u32| {
        let k = s_q + block_m * rb + b * 2 * BF16_BLOCK_N * rb;
        (k, k + BF16_BLOCK_N * rb)
    };

    // Q tile (rows past q_rows zero-filled) and the first K/V tile: one group.
    let cpr = d / 8;
    let qb = (p.q as *const u8).add(h as usize * d as usize * 2);
    let mut i = 0;
    while i < block_m * cpr / threads {
        let idx = tid + i * threads;
        let (r, ch) = (idx / cpr, idx % cpr);
        let row = row0 + r;
        let (off, size) = if row < p.q_rows {
            (
                row as usize * p.q_stride as usize * 2 + ch as usize * 16,
                16,
            )
        } else {
            (0, 0)
        };
        cp_async_16(s_q + swz(r, ch, rb), qb.add(off), size);
        i += 1;
    }
    let (s_begin, s_end) = seg_range(&p, h);
    let mut cur = settle(&p, Cursor { si: s_begin, t0: 0 }, s_end);
    if cur.si < s_end {
        let (k, v) = stage(0);
        load_kv_tile(&p, d, threads, cur, k, v);
    }
    cp_async_commit();
    cp_async_wait_group::<0>();
    sync_threads();

    let t = lane % 4;
    let mut o = [[0f32; 4]; NDT];
    // Rows g and g+8 of the slab: running max (scaled, base 2) and this lane's partial sum.
    let mut m = [f32::NEG_INFINITY; 2];
    let mut l = [0f32; 2];
    let mut buf = 0;
    while cur.si < s_end {
        let n = (seg(&p, cur.si).rows - cur.t0).min(BF16_BLOCK_N);
        let next = settle(
            &p,
            Cursor {
                si: cur.si,
                t0: cur.t0 + BF16_BLOCK_N,
            },
            s_end,
        );
        if next.si < s_end {
            let (k, v) = stage(buf ^ 1);
            load_kv_tile(&p, d, threads, next, k, v);
        }
        // Always commit (possibly an empty group) so every thread's group count agrees.
        cp_async_commit();
        cp_async_wait_group::<1>();
        // Tile `cur` is in shared memory for every thread.
        sync_threads();
        let (sk, sv) = stage(buf);

        // S = Q·Kᵀ: 16 rows × 64 keys per warp, 8 n8 tiles.
        let mut s = [[0f32; 4]; 8];
        for kk in 0..NKS {
            // This warp's Q slab as A fragments (lane L reads row L%16, chunk 2kk + L/16),
            // re-read from shared memory each tile rather than held: 32 registers fewer at d128.
            let qf = ldmatrix_x4(s_q + swz(16 * warp + lane % 16, 2 * kk as u32 + lane / 16, rb));
            for np in 0..4 {
                let r = 16 * np as u32 + (lane & 7) + ((lane >> 4) << 3);
                let b = ldmatrix_x4(sk + swz(r, 2 * kk as u32 + ((lane >> 3) & 1), rb));
                mma_m16n8k16_bf16(&mut s[2 * np], &qf, &[b[0], b[1]]);
                mma_m16n8k16_bf16(&mut s[2 * np + 1], &qf, &[b[2], b[3]]);
            }
        }

        // Scale into base 2, mask keys past the tile's end, row max over the quad.
        let mut mx = [f32::NEG_INFINITY; 2];
        for nt in 0..8 {
            for e in 0..4 {
                let col = 8 * nt as u32 + 2 * t + (e as u32 & 1);
                let x = if col < n {
                    s[nt][e] * p.scale_log2
                } else {
                    f32::NEG_INFINITY
                };
                s[nt][e] = x;
                mx[e / 2] = mx[e / 2].max(x);
            }
        }
        let mut base = [0f32; 2];
        let mut alpha = [0f32; 2];
        for i in 0..2 {
            mx[i] = mx[i].max(shfl_xor_f32(mx[i], 1));
            mx[i] = mx[i].max(shfl_xor_f32(mx[i], 2));
            let m_new = m[i].max(mx[i]);
            // −inf guard: with no finite score yet, subtract 0, never (−inf) − (−inf).
            base[i] = if m_new == f32::NEG_INFINITY {
                0.0
            } else {
                m_new
            };
            alpha[i] = ex2(m[i] - base[i]);
            m[i] = m_new;
        }
        let mut rs = [0f32; 2];
        for nt in 0..8 {
            for e in 0..4 {
                let pv = ex2(s[nt][e] - base[e / 2]);
                s[nt][e] = pv;
                rs[e / 2] += pv;
            }
        }
        for i in 0..2 {
            l[i] = l[i] * alpha[i] + rs[i];
        }
        for dt in 0..NDT {
            for e in 0..4 {
                o[dt][e] *= alpha[e / 2];
            }
        }

        // O += P·V: P's k16 slice j is n8 tiles 2j, 2j+1 of S, repacked as A fragments.
        for j in 0..4 {
            let a = [
                pack_bf16x2(s[2 * j][0], s[2 * j][1]),
                pack_bf16x2(s[2 * j][2], s[2 * j][3]),
                pack_bf16x2(s[2 * j + 1][0], s[2 * j + 1][1]),
                pack_bf16x2(s[2 * j + 1][2], s[2 * j + 1][3]),
            ];
            for dp in 0..NDT / 2 {
                let r = 16 * j as u32 + (lane & 7) + ((lane >> 3) & 1) * 8;
                let b = ldmatrix_x4_trans(sv + swz(r, 2 * dp as u32 + (lane >> 4), rb));
                mma_m16n8k16_bf16(&mut o[2 * dp], &a, &[b[0], b[1]]);
                mma_m16n8k16_bf16(&mut o[2 * dp + 1], &a, &[b[2], b[3]]);
            }
        }
        // Everyone is done with this stage before the next iteration refills it.
        sync_threads();
        cur = next;
        buf ^= 1;
    }

    // Row sums over the quad; a row without keys outputs 0.
    let g = lane / 4;
    let ob = (p.o as *mut u8).add(h as usize * d as usize * 2);
    for i in 0..2 {
        l[i] += shfl_xor_f32(l[i], 1);
        l[i] += shfl_xor_f32(l[i], 2);
        let inv = if l[i] > 0.0 { 1.0 / l[i] } else { 0.0 };
        let row = row0 + 16 * warp + g + 8 * i as u32;
        if row < p.q_rows {
            let dst = ob.add(row as usize * p.q_stride as usize * 2) as *mut u32;
            for dt in 0..NDT {
                let v = pack_bf16x2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
                *dst.add(4 * dt + t as usize) = v;
            }
        }
    }
}

kernel! {
    /// bf16 attention, head_dim 128 (FlashAttention-2 schedule; see the module doc).
    ///
    /// # Safety
    /// `check()` and `check_table()` must pass, the pointers must be valid for their shapes;
    /// launch with `dims()` (80 KiB dynamic shared memory).
    pub unsafe fn attn_bf16_d128(pa: AttnBf16D128) {
        attn_bf16_body::<16, 8, 4>(pa.0);
    }
}

kernel! {
    /// bf16 attention, head_dim 128, 8 warps × 16 rows = 128 query rows per block (kernel
    /// version 2; see the module doc).
    ///
    /// # Safety
    /// `check()` and `check_table()` must pass, the pointers must be valid for their shapes;
    /// launch with `dims()` (256 threads, 96 KiB dynamic shared memory).
    pub unsafe fn attn_bf16_d128_w8(pa: AttnBf16D128W8) {
        attn_bf16_body::<16, 8, 8>(pa.0);
    }
}

kernel! {
    /// bf16 attention, head_dim 64 (FlashAttention-2 schedule; see the module doc).
    ///
    /// # Safety
    /// `check()` and `check_table()` must pass, the pointers must be valid for their shapes;
    /// launch with `dims()`.
    pub unsafe fn attn_bf16_d64(pa: AttnBf16D64) {
        attn_bf16_body::<8, 4, 4>(pa.0);
    }
}
