//! Small kernels that exercise the device layer's primitives one by one. The tests run them in
//! the simulator against the PTX ISA semantics; they are also in the PTX so a GPU session can
//! run the same checks on hardware. Two of them plant errors on purpose.

use crate::gpu::*;

/// Params of [`test_warp_ops`]: per thread `vals[i]`, `args[i]` in; 8 u32 out per thread:
/// `[shfl_xor(v, a%32), shfl_idx(v, a), shfl_up(v, a%40), shfl_down(v, a%40), ballot(v&1),
/// warp_sum(x), butterfly of shfl_xor_f32 sums of x, warp_max(x)]` with `x = f32::from_bits(a)`
/// (f32 results as bits).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WarpOpsParams {
    pub vals: u64,
    pub args: u64,
    pub out: u64,
}

kernel! {
    /// Shuffles and ballot, one result row per thread.
    ///
    /// # Safety
    /// Block size a multiple of 32; buffers sized for the grid.
    pub unsafe fn test_warp_ops(p: WarpOpsParams) {
        let i = (block_idx_x() * block_dim_x() + thread_idx_x()) as usize;
        let v = *(p.vals as *const u32).add(i);
        let a = *(p.args as *const u32).add(i);
        let o = (p.out as *mut u32).add(8 * i);
        *o = shfl_xor(v, a % 32);
        *o.add(1) = shfl_idx(v, a);
        *o.add(2) = shfl_up(v, a % 40);
        *o.add(3) = shfl_down(v, a % 40);
        *o.add(4) = ballot(v & 1 == 1);
        let x = f32::from_bits(a);
        *o.add(5) = reduce::warp_sum(x).to_bits();
        let mut s = x;
        let mut m = 16;
        while m > 0 {
            s += shfl_xor_f32(s, m);
            m /= 2;
        }
        *o.add(6) = s.to_bits();
        *o.add(7) = reduce::warp_max(x).to_bits();
    }
}

/// Params of [`test_mma_tile`] (one warp).
///
/// Inputs (bf16 bits): `a` = A `[16][32]` row-major, `bt` = B stored n-major `[8][32]`
/// (Bᵀ, like K in attention), `bk` = the same B stored k-major `[32][8]` (like V), `c` = C
/// `[16][8]` f32. Outputs: `d1` = A·B + C using `bt` (ldmatrix x4 + x2), `d2` = A·B + C using
/// `bk` (ldmatrix x4 + x2.trans), both `[16][8]` f32; `raw` = per lane 14 u32: ldmatrix
/// x1, x1.trans, x2, x2.trans, x4, x4.trans of A's first k16 slice with the A address map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmaTileParams {
    pub a: u64,
    pub bt: u64,
    pub bk: u64,
    pub c: u64,
    pub d1: u64,
    pub d2: u64,
    pub raw: u64,
}

/// Dynamic shared memory [`test_mma_tile`] needs: A, Bᵀ and B, bf16.
pub const MMA_TILE_SMEM: u32 = (16 * 32 + 8 * 32 + 32 * 8) * 2;

kernel! {
    /// One warp: m16n8k32 as two m16n8k16 MMAs over ldmatrix-loaded tiles.
    ///
    /// # Safety
    /// Launch with one block of 32 threads and `MMA_TILE_SMEM` bytes.
    pub unsafe fn test_mma_tile(p: MmaTileParams) {
        let lane = lane_id();
        let s_a = dyn_smem_addr();
        let s_bt = s_a + 16 * 32 * 2;
        let s_bk = s_bt + 8 * 32 * 2;
        // Stage all three tiles into shared memory, 2 bytes at a time.
        let mut e = lane;
        while e < 16 * 32 {
            st_shared_u16(s_a + 2 * e, *(p.a as *const u16).add(e as usize));
            if e < 8 * 32 {
                st_shared_u16(s_bt + 2 * e, *(p.bt as *const u16).add(e as usize));
                st_shared_u16(s_bk + 2 * e, *(p.bk as *const u16).add(e as usize));
            }
            e += 32;
        }
        sync_threads();

        let (g, t) = (lane / 4, lane % 4);
        let c = p.c as *const f32;
        let cin = [*c.add((g * 8 + 2 * t) as usize), *c.add((g * 8 + 2 * t + 1) as usize),
                   *c.add(((g + 8) * 8 + 2 * t) as usize), *c.add(((g + 8) * 8 + 2 * t + 1) as usize)];
        let mut d1 = cin;
        let mut d2 = cin;
        let mut kk = 0;
        while kk < 2 {
            // A (16×16 slice kk): lane L points at row L%16, column 16kk + (L/16)*8.
            let a = ldmatrix_x4(s_a + (lane % 16) * 64 + (16 * kk + (lane / 16) * 8) * 2);
            // Bᵀ rows are n: lanes 0-7 give k 0-7, lanes 8-15 give k 8-15 of the slice.
            let b1 = ldmatrix_x2(s_bt + (lane % 8) * 64 + (16 * kk + ((lane / 8) % 2) * 8) * 2);
            // B rows are k: lanes 0-15 give k rows 16kk + lane.
            let b2 = ldmatrix_x2_trans(s_bk + (16 * kk + lane % 16) * 16);
            mma_m16n8k16_bf16(&mut d1, &a, &b1);
            mma_m16n8k16_bf16(&mut d2, &a, &b2);
            kk += 1;
        }
        for (i, (r, n)) in [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)].into_iter().enumerate() {
            *(p.d1 as *mut f32).add((r * 8 + n) as usize) = d1[i];
            *(p.d2 as *mut f32).add((r * 8 + n) as usize) = d2[i];
        }

        let addr = s_a + (lane % 16) * 64 + (lane / 16) * 16;
        let raw = (p.raw as *mut u32).add(14 * lane as usize);
        let x1 = ldmatrix_x1(addr);
        let x1t = ldmatrix_x1_trans(addr);
        let x2 = ldmatrix_x2(addr);
        let x2t = ldmatrix_x2_trans(addr);
        let x4 = ldmatrix_x4(addr);
        let x4t = ldmatrix_x4_trans(addr);
        let all = [x1[0], x1t[0], x2[0], x2[1], x2t[0], x2t[1], x4[0], x4[1], x4[2], x4[3], x4t[0], x4t[1], x4t[2], x4t[3]];
        for (k, v) in all.into_iter().enumerate() {
            *raw.add(k) = v;
        }
    }
}

/// Params of [`test_cp_async`]: `src` holds `n_valid` valid bytes (16-byte aligned); each
/// thread t copies chunks t and t + nthreads (two commit groups) with zero-fill past `n_valid`,
/// then the block writes the whole `2·16·nthreads`-byte shared buffer to `out`, and `flags[t]`
/// = 1 when thread t's read of its first chunk right after `wait_group 1` already saw the data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpAsyncParams {
    pub src: u64,
    pub out: u64,
    pub flags: u64,
    pub n_valid: u32,
}

kernel! {
    /// cp.async 16-byte copies with zero-fill, two groups, wait_group 1 then 0.
    ///
    /// # Safety
    /// `src` valid for `n_valid` bytes, `out` for `32·nthreads`; smem `32·nthreads` bytes.
    pub unsafe fn test_cp_async(p: CpAsyncParams) {
        let (t, nt) = (thread_idx_x(), block_dim_x());
        let base = dyn_smem_addr();
        let mut grp = 0;
        while grp < 2 {
            let chunk = t + grp * nt;
            let start = 16 * chunk;
            let size = if start >= p.n_valid { 0 } else { (p.n_valid - start).min(16) };
            // Keep the source address inside the buffer even when nothing is read.
            let src_off = if size == 0 { 0 } else { start };
            cp_async_16(base + start, (p.src as *const u8).add(src_off as usize), size);
            cp_async_commit();
            grp += 1;
        }
        cp_async_wait_group::<1>();
        // The first group has landed: this thread may read its own first chunk.
        let own = ld_shared_u32(base + 16 * t);
        cp_async_wait_group::<0>();
        sync_threads();
        let out = p.out as *mut u32;
        let mut w = t;
        while w < 8 * nt {
            *out.add(w as usize) = ld_shared_u32(base + 4 * w);
            w += nt;
        }
        *(p.flags as *mut u32).add(t as usize) = (own == ld_shared_u32(base + 16 * t)) as u32;
    }
}

/// Params of [`test_smem_oob`]: thread `bad_thread` stores at byte offset `offset`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SmemOobParams {
    pub offset: u32,
    pub bad_thread: u32,
}

kernel! {
    /// Planted error: one thread writes shared memory at an arbitrary offset.
    ///
    /// # Safety
    /// Planted to fail; run it only in the simulator.
    pub unsafe fn test_smem_oob(p: SmemOobParams) {
        let t = thread_idx_x();
        let off = if t == p.bad_thread { p.offset } else { 4 * t };
        // Wrapping, like the 32-bit add on the GPU, so a "negative" offset reaches the check.
        st_shared_u32(dyn_smem_addr().wrapping_add(off), t);
        sync_threads();
    }
}

/// Params of [`test_divergent_barrier`]: `mode` 0 = threads `>= split` return before the
/// barrier; 1 = threads `>= split` wait at a different barrier; 2 = threads `>= split` wait
/// at a warp shuffle instead (a deadlock).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DivergentBarrierParams {
    pub split: u32,
    pub mode: u32,
}

kernel! {
    /// Planted error: a barrier that only some threads reach.
    ///
    /// # Safety
    /// Planted to fail; run it only in the simulator.
    #[allow(clippy::if_same_then_else)] // two barriers on purpose: the sim tells them apart
    pub unsafe fn test_divergent_barrier(p: DivergentBarrierParams) {
        let t = thread_idx_x();
        if t < p.split {
            sync_threads();
        } else if p.mode == 1 {
            sync_threads();
        } else if p.mode == 2 {
            // A deadlock no thread exit reveals: only the timeout can end it.
            shfl_xor(t, 1);
        }
    }
}

/// Params of [`test_divergent_shfl`]: `mode` 0 = lanes 16..32 return before the shuffle;
/// 1 = the two half-warps shuffle at different call sites. `out[t]` gets the result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DivergentShflParams {
    pub out: u64,
    pub mode: u32,
}

kernel! {
    /// Planted error: a warp shuffle that not every lane reaches together.
    ///
    /// # Safety
    /// Planted to fail; run it only in the simulator.
    #[allow(clippy::if_same_then_else)] // two call sites on purpose: the sim tells them apart
    pub unsafe fn test_divergent_shfl(p: DivergentShflParams) {
        let t = thread_idx_x();
        let r = if lane_id() < 16 {
            shfl_xor(t, 1)
        } else if p.mode == 1 {
            shfl_xor(t, 1)
        } else {
            return;
        };
        *(p.out as *mut u32).add(t as usize) = r;
    }
}

kernel! {
    independent;
    /// Planted error: a kernel declared `independent` that calls a barrier.
    ///
    /// # Safety
    /// Planted to fail; run it only in the simulator.
    pub unsafe fn test_independent_barrier(p: IndependentBarrierParams) {
        if thread_idx_x() == p.thread {
            sync_threads();
        }
    }
}

/// Params of [`test_independent_barrier`]: the thread that calls the barrier.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IndependentBarrierParams {
    pub thread: u32,
}
