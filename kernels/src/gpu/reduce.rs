//! Warp and block reductions built from the primitives.

use super::{lane_id, ld_shared_f32, shfl_xor_f32, st_shared_f32, sync_threads, warp_id, WARP};

/// Sum over the 32 lanes of a warp; every lane gets the total.
///
/// # Safety
/// All 32 lanes must call it together.
#[inline(always)]
pub unsafe fn warp_sum(mut v: f32) -> f32 {
    v += shfl_xor_f32(v, 16);
    v += shfl_xor_f32(v, 8);
    v += shfl_xor_f32(v, 4);
    v += shfl_xor_f32(v, 2);
    v += shfl_xor_f32(v, 1);
    v
}

/// Bytes of shared scratch that [`block_sum`] needs.
pub const BLOCK_SUM_SCRATCH: u32 = 33 * 4;

/// Sum over all threads of the block; every thread gets the total.
///
/// `scratch` is a shared-window address with [`BLOCK_SUM_SCRATCH`] bytes. The block size must be
/// a multiple of 32 and at most 1024. Ends with a barrier, so `scratch` may be reused at once.
///
/// # Safety
/// Every thread of the block must call it together.
#[inline(always)]
pub unsafe fn block_sum(v: f32, scratch: u32, block_threads: u32) -> f32 {
    let w = warp_sum(v);
    let (lane, warp) = (lane_id(), warp_id());
    if lane == 0 {
        st_shared_f32(scratch + 4 * warp, w);
    }
    sync_threads();
    if warp == 0 {
        let n_warps = block_threads / WARP;
        let x = if lane < n_warps {
            ld_shared_f32(scratch + 4 * lane)
        } else {
            0.0
        };
        let t = warp_sum(x);
        if lane == 0 {
            st_shared_f32(scratch + 4 * 32, t);
        }
    }
    sync_threads();
    let total = ld_shared_f32(scratch + 4 * 32);
    sync_threads();
    total
}
