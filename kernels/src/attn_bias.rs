//! Attention with an additive bias and no scaling: the umT5 encoder's self-attention,
//! `o_h = softmax(q_h·k_hᵀ + bias[h])·v_h` for every head `h` (the bias holds the layer's
//! relative position bias, with the dtype's lowest value or −∞ on masked keys). It is the
//! device version of `host/src/backend/biased.rs` and rounds where that reference rounds in
//! bf16: the logits, the biased logits, the probabilities and the output (math in f32).
//!
//! Layout: `q` `[n, heads·d]`, `k` and `v` `[lk, heads·d]`, `o` `[n, heads·d]` (head `h` at
//! column `h·d`, rows contiguous), `bias` `[heads, n, lk]`, all in the storage dtype.
//!
//! One warp per query row, 4 rows per block, grid `(ceil(n/4), heads)`. Lane `c` holds the
//! query and output elements `c, c+32, c+64, c+96` (`d ≤ 128`). Two passes over the keys: the
//! first finds the row's maximum and the sum of `exp(l − max)` (online, rescaled when the
//! maximum grows), the second accumulates `round(exp(l − max)/sum)·v`. The logits are
//! recomputed in the second pass rather than stored, so nothing scales with `lk` but the
//! loop count. This is the exact kernel (the encoder's correctness path, any `lk`), not a
//! tuned one: a key costs a 32-lane dot product and a 5-step butterfly.
//!
//! A key whose biased logit is −∞ (a bf16 `finfo.min` mask rounds to −∞) contributes 0; a row
//! whose every key is −∞ outputs zeros.

// Register arrays are indexed by loop counters that are constants after full unrolling.
#![allow(clippy::needless_range_loop)]

use crate::elem::{Bf16, Elem};
use crate::gpu::reduce::warp_sum;
use crate::gpu::{block_idx_x, block_idx_y, ex2, lane_id, warp_id, WARP};
use crate::{Launch, LaunchDims};

/// Query rows (warps) per block.
pub const ATTN_BIAS_ROWS: u32 = 4;
/// The largest head dim (4 elements per lane).
pub const ATTN_BIAS_MAX_D: u32 = 128;

const LOG2E: f32 = core::f32::consts::LOG2_E;

/// Params of [`attn_bias_f32`] / [`attn_bias_bf16`] (`Backend::attention_biased`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnBiasParams {
    /// `[n, heads·head_dim]`.
    pub q: u64,
    /// `[lk, heads·head_dim]`.
    pub k: u64,
    /// `[lk, heads·head_dim]`.
    pub v: u64,
    /// `[heads, n, lk]`.
    pub bias: u64,
    /// `[n, heads·head_dim]`; must not overlap the inputs.
    pub o: u64,
    pub n: u32,
    pub lk: u32,
    pub heads: u32,
    pub head_dim: u32,
}

impl Launch for AttnBiasParams {
    /// One warp per query row, [`ATTN_BIAS_ROWS`] rows per block, one grid row per head.
    fn dims(&self) -> LaunchDims {
        LaunchDims {
            grid: [
                self.n.div_ceil(ATTN_BIAS_ROWS).max(1),
                self.heads.clamp(1, 65535),
                1,
            ],
            block: [ATTN_BIAS_ROWS * WARP, 1, 1],
            dyn_smem: 0,
        }
    }
}

#[cfg(not(target_arch = "nvptx64"))]
impl AttnBiasParams {
    /// Checks the params a launcher passes: head dim 1..=128, at most 65535 heads (grid.y),
    /// non-null buffers (k, v and bias may be null only with no keys).
    pub fn check(&self) -> Result<(), String> {
        let p = self;
        if !(1..=ATTN_BIAS_MAX_D).contains(&p.head_dim) {
            return Err(format!(
                "attn_bias: head_dim {} not in 1..={ATTN_BIAS_MAX_D}",
                p.head_dim
            ));
        }
        if p.heads > 65535 {
            return Err(format!(
                "attn_bias: {} heads > 65535 (grid.y limit)",
                p.heads
            ));
        }
        if p.n == 0 || p.heads == 0 {
            return Ok(());
        }
        for (what, ptr, needed) in [
            ("q", p.q, true),
            ("o", p.o, true),
            ("k", p.k, p.lk > 0),
            ("v", p.v, p.lk > 0),
            ("bias", p.bias, p.lk > 0),
        ] {
            if ptr == 0 && needed {
                return Err(format!("attn_bias: {what} is null"));
            }
        }
        Ok(())
    }
}

/// The biased (and in bf16 rounded) logit of key `j` for the warp's query row; every lane gets
/// it. `qv` are this lane's query elements.
#[inline(always)]
unsafe fn logit<T: Elem>(
    qv: &[f32; 4],
    kp: *const T,
    width: usize,
    j: usize,
    d: usize,
    b: f32,
) -> f32 {
    let lane = lane_id() as usize;
    let row = kp.add(j * width);
    let mut part = 0f32;
    for t in 0..4 {
        let c = lane + t * WARP as usize;
        if c < d {
            part += qv[t] * T::ld(row, c);
        }
    }
    T::round(T::round(warp_sum(part)) + b)
}

#[inline(always)]
unsafe fn attn_bias_row<T: Elem>(p: AttnBiasParams) {
    let i = block_idx_x() * ATTN_BIAS_ROWS + warp_id();
    let h = block_idx_y();
    // Uniform over the warp (the only collectives are warp-wide), so returning is safe.
    if i >= p.n || h >= p.heads {
        return;
    }
    let (d, lk) = (p.head_dim as usize, p.lk as usize);
    let width = p.heads as usize * d;
    let lane = lane_id() as usize;
    let col = h as usize * d;
    let q = (p.q as *const T).add(i as usize * width + col);
    let k = (p.k as *const T).add(col);
    let v = (p.v as *const T).add(col);
    let bias = (p.bias as *const T).add((h as usize * p.n as usize + i as usize) * lk);
    let mut qv = [0f32; 4];
    for t in 0..4 {
        let c = lane + t * WARP as usize;
        if c < d {
            qv[t] = T::ld(q, c);
        }
    }
    // Pass 1: the maximum and the sum of exp(l − max), rescaled as the maximum grows.
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    for j in 0..lk {
        let l = logit::<T>(&qv, k, width, j, d, T::ld(bias, j));
        let m_new = m.max(l);
        if m_new != f32::NEG_INFINITY {
            s = s * ex2((m - m_new) * LOG2E) + ex2((l - m_new) * LOG2E);
            m = m_new;
        }
    }
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    // Pass 2: the probabilities (rounded as the reference rounds them) times v.
    let mut acc = [0f32; 4];
    for j in 0..lk {
        let l = logit::<T>(&qv, k, width, j, d, T::ld(bias, j));
        if l == f32::NEG_INFINITY {
            continue;
        }
        let pr = T::round(ex2((l - m) * LOG2E) * inv);
        let row = v.add(j * width);
        for t in 0..4 {
            let c = lane + t * WARP as usize;
            if c < d {
                acc[t] += pr * T::ld(row, c);
            }
        }
    }
    let o = (p.o as *mut T).add(i as usize * width + col);
    for t in 0..4 {
        let c = lane + t * WARP as usize;
        if c < d {
            T::st(o, c, acc[t]);
        }
    }
}

kernel! {
    /// `o_h = softmax(q_h·k_hᵀ + bias[h])·v_h` for every head, no scaling, f32 storage; see the
    /// module docs.
    ///
    /// # Safety
    /// The pointers must be valid for the shapes in [`AttnBiasParams`] (f32), `o` must not
    /// overlap the inputs; launch with `dims()`.
    pub unsafe fn attn_bias_f32(p: AttnBiasParams) {
        attn_bias_row::<f32>(p)
    }
}

kernel! {
    /// [`attn_bias_f32`] with bf16 storage, rounding the logits, the biased logits, the
    /// probabilities and the output to bf16 (`host/src/backend/biased.rs`'s points).
    ///
    /// # Safety
    /// As [`attn_bias_f32`], for bf16 buffers.
    pub unsafe fn attn_bias_bf16(p: Bf16<AttnBiasParams>) {
        attn_bias_row::<u16>(p.0)
    }
}
