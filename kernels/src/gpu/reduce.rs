//! Warp and block reductions built from the primitives.

#[cfg(target_arch = "nvptx64")]
use super::shfl_xor_f32;
use super::{lane_id, ld_shared_f32, st_shared_f32, sync_threads, warp_id, WARP};

/// Sum over the 32 lanes of a warp; every lane gets the total. The butterfly order is fixed
/// (xor 16, 8, 4, 2, 1), so every lane gets bit-identical results on GPU and in the simulator.
///
/// # Safety
/// All 32 lanes must call it together.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn warp_sum(v: f32) -> f32 {
    warp_allreduce(v, ReduceOp::Sum)
}

/// Maximum over the 32 lanes of a warp (same butterfly as [`warp_sum`]).
///
/// # Safety
/// All 32 lanes must call it together.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn warp_max(v: f32) -> f32 {
    warp_allreduce(v, ReduceOp::Max)
}

/// A warp all-reduce operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

impl ReduceOp {
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            ReduceOp::Sum => a + b,
            ReduceOp::Max => a.max(b),
        }
    }
}

/// Butterfly all-reduce: `v = op(v, shfl_xor(v, m))` for m = 16, 8, 4, 2, 1.
///
/// On the GPU these are five `shfl.sync.bfly`. The simulator does the same five steps on all
/// lanes' values at one rendezvous instead of five (same result, a fifth of the thread
/// wake-ups).
///
/// # Safety
/// All 32 lanes must call it together.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn warp_allreduce(v: f32, op: ReduceOp) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let mut v = v;
        let mut m = 16;
        while m > 0 {
            v = op.apply(v, shfl_xor_f32(v, m));
            m /= 2;
        }
        v
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let loc = core::panic::Location::caller();
        crate::sim::ctx::warp_allreduce(loc, v, |all| {
            let mut vals = all;
            let mut m = 16;
            while m > 0 {
                let prev = vals;
                for (l, x) in vals.iter_mut().enumerate() {
                    *x = op.apply(prev[l], prev[l ^ m]);
                }
                m /= 2;
            }
            vals
        })
    }
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
