//! Data-movement kernels: patchify/unpatchify, the strided row copy, and the KV-cache copies
//! (writing the current chunk into frame slots, HMA compaction).
//!
//! These only move bits, so the `_f32` and `_bf16` variants differ only in element size (the
//! bf16 KV copies move pairs of elements as 32-bit words when every dimension allows it).
//!
//! Rolling-window eviction needs no kernel: the host keeps each group's ring of frame slots
//! and a ring start (`host/src/cache`); a new frame overwrites the oldest slot in place
//! ([`kv_write_f32`]) and the start advances, so no data moves. Data moves only when a layout
//! changes, which is HMA compaction ([`kv_compact_f32`]).

use crate::elem::Bf16;
use crate::gpu::{block_dim_x, block_idx_x, block_idx_y, grid_dim_x, thread_idx_x};
use crate::{Launch, LaunchDims};

/// Threads per block of the copy kernels.
pub const COPY_THREADS: u32 = 256;

#[inline(always)]
fn grid_stride() -> (u32, u32) {
    (
        block_idx_x() * block_dim_x() + thread_idx_x(),
        block_dim_x() * grid_dim_x(),
    )
}

fn copy_dims(n: u64, grid_y: u32) -> LaunchDims {
    LaunchDims {
        grid: [
            crate::grid_for(n.min(u32::MAX as u64) as u32, COPY_THREADS),
            grid_y.max(1),
            1,
        ],
        block: [COPY_THREADS, 1, 1],
        dyn_smem: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Patchify / unpatchify
// ---------------------------------------------------------------------------------------------

/// Params of [`patchify_f32`] / [`patchify_bf16`] (`Backend::patchify`).
///
/// Input latent `[f, c, hh, ww]`; output patches `[f·gh·gw, c·ph·pw]` with `gh = hh/ph`,
/// `gw = ww/pw`: tokens in (f, h, w) order, features in (c, ph, pw) order. The temporal patch
/// size must be 1 (as in Wan2.1; the CPU reference ignores it too).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PatchifyParams {
    /// `[f, c, hh, ww]` latent.
    pub x: u64,
    /// `[f·gh·gw, c·ph·pw]` patches.
    pub y: u64,
    pub f: u32,
    pub c: u32,
    pub hh: u32,
    pub ww: u32,
    pub ph: u32,
    pub pw: u32,
}

impl PatchifyParams {
    /// Output elements (`f·gh·gw·c·ph·pw`).
    pub fn len(&self) -> u64 {
        let (gh, gw) = (self.hh / self.ph.max(1), self.ww / self.pw.max(1));
        self.f as u64 * gh as u64 * gw as u64 * self.c as u64 * self.ph as u64 * self.pw as u64
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    // `is_multiple_of` is newer than the workspace's rust-version.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn check(&self) -> Result<(), &'static str> {
        if self.ph == 0 || self.pw == 0 || self.hh % self.ph != 0 || self.ww % self.pw != 0 {
            return Err("patchify: the latent's height and width must be multiples of the patch");
        }
        if self.f as u64 * self.c as u64 * self.hh as u64 * self.ww as u64 > u32::MAX as u64 {
            return Err("patchify: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for PatchifyParams {
    fn dims(&self) -> LaunchDims {
        copy_dims(self.len(), 1)
    }
}

#[inline(always)]
unsafe fn patchify_body<T: Copy>(p: PatchifyParams) {
    let (ph, pw) = (p.ph.max(1), p.pw.max(1));
    let (gh, gw) = ((p.hh / ph).max(1), (p.ww / pw).max(1));
    let feat = (p.c * ph * pw).max(1);
    let n = p.len().min(u32::MAX as u64) as u32;
    let (mut o, stride) = grid_stride();
    // One thread per output element: the writes coalesce, the reads are pw-long runs.
    while o < n {
        let (tok, fe) = (o / feat, o % feat);
        let (ci, a, b) = (fe / (ph * pw), (fe / pw) % ph, fe % pw);
        let (fi, i, j) = (tok / (gh * gw), (tok / gw) % gh, tok % gw);
        let src = ((fi * p.c + ci) * p.hh + i * ph + a) * p.ww + j * pw + b;
        *(p.y as *mut T).add(o as usize) = *(p.x as *const T).add(src as usize);
        o += stride;
    }
}

kernel! {
    independent;
    /// Latent → patches (see [`PatchifyParams`]).
    ///
    /// # Safety
    /// `check()` passes, pointers valid for their shapes; launch with `dims()`.
    pub unsafe fn patchify_f32(p: PatchifyParams) {
        patchify_body::<u32>(p)
    }
}

kernel! {
    independent;
    /// [`patchify_f32`] on bf16 buffers.
    ///
    /// # Safety
    /// As [`patchify_f32`].
    pub unsafe fn patchify_bf16(p: Bf16<PatchifyParams>) {
        patchify_body::<u16>(p.0)
    }
}

/// Params of [`unpatchify_f32`] / [`unpatchify_bf16`] (`Backend::unpatchify`).
///
/// Input `[f·gh·gw, ph·pw·c]` (feature index `(a·pw + b)·c + ch`: channel fastest, the Wan
/// head's output order); output latent `[f, c, gh·ph, gw·pw]`. Temporal patch 1.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnpatchifyParams {
    /// `[f·gh·gw, ph·pw·c]` head output.
    pub x: u64,
    /// `[f, c, gh·ph, gw·pw]` latent.
    pub y: u64,
    pub f: u32,
    pub gh: u32,
    pub gw: u32,
    pub ph: u32,
    pub pw: u32,
    pub c: u32,
}

impl UnpatchifyParams {
    pub fn len(&self) -> u64 {
        [self.f, self.gh, self.gw, self.ph, self.pw, self.c]
            .iter()
            .map(|&v| v as u64)
            .product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn check(&self) -> Result<(), &'static str> {
        if self.len() > u32::MAX as u64 {
            return Err("unpatchify: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for UnpatchifyParams {
    fn dims(&self) -> LaunchDims {
        copy_dims(self.len(), 1)
    }
}

#[inline(always)]
unsafe fn unpatchify_body<T: Copy>(p: UnpatchifyParams) {
    let (ph, pw, c) = (p.ph.max(1), p.pw.max(1), p.c.max(1));
    let (gh, gw) = (p.gh.max(1), p.gw.max(1));
    let (hh, ww) = (gh * ph, gw * pw);
    let feat = ph * pw * c;
    let n = p.len().min(u32::MAX as u64) as u32;
    let (mut o, stride) = grid_stride();
    // One thread per output (latent) element: coalesced writes.
    while o < n {
        let (x, y) = (o % ww, (o / ww) % hh);
        let ci = (o / (ww * hh)) % c;
        let fi = o / (ww * hh * c);
        let (i, a, j, b) = (y / ph, y % ph, x / pw, x % pw);
        let tok = (fi * gh + i) * gw + j;
        let src = tok * feat + (a * pw + b) * c + ci;
        *(p.y as *mut T).add(o as usize) = *(p.x as *const T).add(src as usize);
        o += stride;
    }
}

kernel! {
    independent;
    /// Patches → latent (see [`UnpatchifyParams`]).
    ///
    /// # Safety
    /// `check()` passes, pointers valid for their shapes; launch with `dims()`.
    pub unsafe fn unpatchify_f32(p: UnpatchifyParams) {
        unpatchify_body::<u32>(p)
    }
}

kernel! {
    independent;
    /// [`unpatchify_f32`] on bf16 buffers.
    ///
    /// # Safety
    /// As [`unpatchify_f32`].
    pub unsafe fn unpatchify_bf16(p: Bf16<UnpatchifyParams>) {
        unpatchify_body::<u16>(p.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Strided row copy
// ---------------------------------------------------------------------------------------------

/// Params of [`copy_rows_f32`] / [`copy_rows_bf16`] (`Backend::copy_rows`):
/// `dst[r·dst_stride + c] = src[r·src_stride + c]` for `r < rows, c < cols`. The backend's
/// element offsets are folded into the pointers; `Backend::copy_rows` has `dst_stride = cols`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CopyRowsParams {
    pub dst: u64,
    pub src: u64,
    /// Elements between destination rows.
    pub dst_stride: u32,
    /// Elements between source rows.
    pub src_stride: u32,
    pub rows: u32,
    pub cols: u32,
}

impl CopyRowsParams {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.rows as u64 * self.cols as u64 > u32::MAX as u64 {
            return Err("copy_rows: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for CopyRowsParams {
    fn dims(&self) -> LaunchDims {
        copy_dims(self.rows as u64 * self.cols as u64, 1)
    }
}

#[inline(always)]
unsafe fn copy_rows_body<T: Copy>(p: CopyRowsParams) {
    let n = p.rows * p.cols;
    let cols = p.cols.max(1);
    let (mut i, stride) = grid_stride();
    while i < n {
        let (r, c) = (i / cols, i % cols);
        *(p.dst as *mut T).add((r * p.dst_stride + c) as usize) =
            *(p.src as *const T).add((r * p.src_stride + c) as usize);
        i += stride;
    }
}

kernel! {
    independent;
    /// Strided row copy of f32 elements (see [`CopyRowsParams`]).
    ///
    /// # Safety
    /// `check()` passes, pointers valid for their shapes, the regions do not overlap.
    pub unsafe fn copy_rows_f32(p: CopyRowsParams) {
        copy_rows_body::<u32>(p)
    }
}

kernel! {
    independent;
    /// Strided row copy of bf16 elements.
    ///
    /// # Safety
    /// As [`copy_rows_f32`].
    pub unsafe fn copy_rows_bf16(p: Bf16<CopyRowsParams>) {
        copy_rows_body::<u16>(p.0)
    }
}

// ---------------------------------------------------------------------------------------------
// KV cache: head-group copies
// ---------------------------------------------------------------------------------------------

/// One K/V copy of a head group's rows for one frame: destination head `i` (of `n_heads`)
/// takes source head `heads[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeadCopyJob {
    pub src_k: u64,
    pub src_v: u64,
    pub dst_k: u64,
    /// May be 0 with `src_v` 0: copy K only.
    pub dst_v: u64,
    /// `[n_heads]` u32 source head indices (device memory).
    pub heads: u64,
    pub n_heads: u32,
    pub _pad: u32,
}

/// Geometry shared by the jobs of a launch, all in elements. Element `(row r, head h, col c)`
/// of a source is at `h·src_head_stride + r·src_row_stride + c`; likewise the destination.
///
/// - Chunk K/V `[tokens, heads·d]`: head stride `d`, row stride `heads·d` (offset the pointer
///   to the frame's first row).
/// - A slot `[tpf, group_heads·d]` (token-major): head stride `d`, row stride `group_heads·d`.
/// - A slot `[group_heads, tpf, d]` (head-major, today's `host/src/cache` slot): head stride
///   `tpf·d`, row stride `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeadCopyShape {
    /// Rows (tokens) per head: the tokens of one frame.
    pub rows: u32,
    pub head_dim: u32,
    pub src_row_stride: u32,
    pub src_head_stride: u32,
    pub dst_row_stride: u32,
    pub dst_head_stride: u32,
}

impl HeadCopyShape {
    /// The same shape counted in `k`-element words, if every size divides.
    fn in_words(self, k: u32) -> Option<HeadCopyShape> {
        let all = [
            self.head_dim,
            self.src_row_stride,
            self.src_head_stride,
            self.dst_row_stride,
            self.dst_head_stride,
        ];
        if all.iter().any(|&v| v % k != 0) {
            return None;
        }
        Some(HeadCopyShape {
            rows: self.rows,
            head_dim: self.head_dim / k,
            src_row_stride: self.src_row_stride / k,
            src_head_stride: self.src_head_stride / k,
            dst_row_stride: self.dst_row_stride / k,
            dst_head_stride: self.dst_head_stride / k,
        })
    }

    fn per_head(&self) -> u64 {
        self.rows as u64 * self.head_dim as u64
    }
}

/// Copies this block's share of one job. `W` is the unit moved (an element or a pair).
#[inline(always)]
unsafe fn head_copy_job<W: Copy>(job: &HeadCopyJob, s: HeadCopyShape) {
    let n = job.n_heads * s.rows * s.head_dim;
    let (d, rows) = (s.head_dim.max(1), s.rows.max(1));
    let (mut i, stride) = grid_stride();
    while i < n {
        let c = i % d;
        let r = (i / d) % rows;
        let hi = i / d / rows;
        let h = *(job.heads as *const u32).add(hi as usize);
        let so = (h * s.src_head_stride + r * s.src_row_stride + c) as usize;
        let dof = (hi * s.dst_head_stride + r * s.dst_row_stride + c) as usize;
        *(job.dst_k as *mut W).add(dof) = *(job.src_k as *const W).add(so);
        if job.dst_v != 0 {
            *(job.dst_v as *mut W).add(dof) = *(job.src_v as *const W).add(so);
        }
        i += stride;
    }
}

/// A job's pointers all aligned to `a` bytes.
fn job_aligned(j: &HeadCopyJob, a: u64) -> bool {
    [j.src_k, j.src_v, j.dst_k, j.dst_v]
        .iter()
        .all(|&p| p % a == 0)
}

/// bf16: move pairs as u32 when the shape and the job's pointers allow it (uniform branch).
#[inline(always)]
unsafe fn head_copy_job_bf16(job: &HeadCopyJob, s: HeadCopyShape) {
    match s.in_words(2) {
        Some(w) if job_aligned(job, 4) => head_copy_job::<u32>(job, w),
        _ => head_copy_job::<u16>(job, s),
    }
}

/// Params of [`kv_write_f32`] / [`kv_write_bf16`]: the cache write of one frame of the current
/// chunk's post-RoPE K and V into one frame slot of a head group, all the group's heads in one
/// launch (`Backend::copy_rows` once per head, fused). The host launches it once per (group,
/// frame); a ring slot being overwritten is just the destination (that is the eviction).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvWriteParams {
    pub job: HeadCopyJob,
    pub shape: HeadCopyShape,
}

impl KvWriteParams {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.job.n_heads as u64 * self.shape.per_head() > u32::MAX as u64 {
            return Err("kv_write: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for KvWriteParams {
    fn dims(&self) -> LaunchDims {
        copy_dims(self.job.n_heads as u64 * self.shape.per_head(), 1)
    }
}

kernel! {
    independent;
    /// Gathers heads `job.heads` of one frame's K/V rows into a group's frame slot (f32).
    ///
    /// # Safety
    /// `check()` passes; pointers and the head list valid for the shape; src and dst disjoint.
    pub unsafe fn kv_write_f32(p: KvWriteParams) {
        head_copy_job::<u32>(&p.job, p.shape)
    }
}

kernel! {
    independent;
    /// [`kv_write_f32`] for bf16 K/V.
    ///
    /// # Safety
    /// As [`kv_write_f32`].
    pub unsafe fn kv_write_bf16(p: Bf16<KvWriteParams>) {
        head_copy_job_bf16(&p.0.job, p.0.shape)
    }
}

/// Params of [`kv_compact_f32`] / [`kv_compact_bf16`]: HMA compaction, run once per layer
/// after DHP. `jobs` holds one [`HeadCopyJob`] per (new group, retained frame): source = the
/// phase-1 slot holding that frame (all heads), destination = the new group's slot for it,
/// `heads` = the group's heads (their positions in the phase-1 slot). Empty groups have no
/// jobs. Block row `y` runs job `y`. (The same kernel can also do a whole layer's cache
/// commit in one launch, one job per (group, frame), if the host keeps such a job table.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvCompactParams {
    /// `[n_jobs]` [`HeadCopyJob`] (device memory).
    pub jobs: u64,
    pub n_jobs: u32,
    /// The largest `n_heads` over the jobs (sizes the grid).
    pub max_heads: u32,
    pub shape: HeadCopyShape,
}

impl KvCompactParams {
    pub fn check(&self) -> Result<(), &'static str> {
        if self.n_jobs > 65535 {
            return Err("kv_compact: more than 65535 jobs in one launch");
        }
        if self.max_heads as u64 * self.shape.per_head() > u32::MAX as u64 {
            return Err("kv_compact: too many elements for one launch");
        }
        Ok(())
    }
}

impl Launch for KvCompactParams {
    fn dims(&self) -> LaunchDims {
        copy_dims(self.max_heads as u64 * self.shape.per_head(), self.n_jobs)
    }
}

kernel! {
    independent;
    /// Runs every [`HeadCopyJob`] of the table (f32), job `blockIdx.y`.
    ///
    /// # Safety
    /// `check()` passes, every job's `n_heads ≤ max_heads`, pointers valid, no job's
    /// destination overlaps any source.
    pub unsafe fn kv_compact_f32(p: KvCompactParams) {
        let y = block_idx_y();
        if y < p.n_jobs {
            head_copy_job::<u32>(&*(p.jobs as *const HeadCopyJob).add(y as usize), p.shape)
        }
    }
}

kernel! {
    independent;
    /// [`kv_compact_f32`] for bf16 K/V.
    ///
    /// # Safety
    /// As [`kv_compact_f32`].
    pub unsafe fn kv_compact_bf16(p: Bf16<KvCompactParams>) {
        let y = block_idx_y();
        if y < p.0.n_jobs {
            head_copy_job_bf16(&*(p.0.jobs as *const HeadCopyJob).add(y as usize), p.0.shape)
        }
    }
}
