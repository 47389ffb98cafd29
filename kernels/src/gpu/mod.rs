//! Device layer (the role of cuda_std).
//!
//! Every item has two bodies: inline PTX on `nvptx64`, and a call into the SIMT simulator
//! (`crate::sim`) on the host. Kernels use only this module to talk to the hardware, so the same
//! kernel source runs on the GPU and in the simulator.
//!
//! Conventions:
//! - Shared memory is addressed by **32-bit shared-window addresses** (`u32`), as `ld.shared`,
//!   `ldmatrix` and `cp.async` take them. Get the base with [`dyn_smem_addr`] and add byte offsets.
//!   All shared loads/stores go through the `ld_shared_*`/`st_shared_*` accessors so the
//!   simulator can bounds-check them.
//! - Functions marked `unsafe` are warp or block collectives: every thread of the warp (block,
//!   for [`sync_threads`]) must call them from the same place, in warp-uniform control flow.
//! - Global memory is plain raw pointers (`u64` device addresses in the params structs).

#[cfg(target_arch = "nvptx64")]
use core::arch::asm;
#[cfg(target_arch = "nvptx64")]
use core::arch::nvptx as nv;

#[cfg(not(target_arch = "nvptx64"))]
use crate::sim::ctx as sim;

pub mod reduce;

// The dynamic shared memory window. `#[link_section = ".shared"]` would silently land in global
// memory, so the symbol is declared in PTX directly.
#[cfg(target_arch = "nvptx64")]
core::arch::global_asm!(".extern .shared .align 16 .b8 dyn_smem[];");

/// Threads per warp.
pub const WARP: u32 = 32;

macro_rules! special_reg {
    ($(#[$m:meta])* $name:ident, $nv:ident, $sim:expr) => {
        $(#[$m])*
        #[inline(always)]
        pub fn $name() -> u32 {
            #[cfg(target_arch = "nvptx64")]
            // SAFETY: reading a special register has no preconditions.
            unsafe {
                nv::$nv() as u32
            }
            #[cfg(not(target_arch = "nvptx64"))]
            {
                $sim
            }
        }
    };
}

special_reg!(/// `%tid.x`
    thread_idx_x, _thread_idx_x, sim::with(|c| c.tid[0]));
special_reg!(/// `%tid.y`
    thread_idx_y, _thread_idx_y, sim::with(|c| c.tid[1]));
special_reg!(/// `%tid.z`
    thread_idx_z, _thread_idx_z, sim::with(|c| c.tid[2]));
special_reg!(/// `%ctaid.x`
    block_idx_x, _block_idx_x, sim::with(|c| c.block.idx[0]));
special_reg!(/// `%ctaid.y`
    block_idx_y, _block_idx_y, sim::with(|c| c.block.idx[1]));
special_reg!(/// `%ctaid.z`
    block_idx_z, _block_idx_z, sim::with(|c| c.block.idx[2]));
special_reg!(/// `%ntid.x`
    block_dim_x, _block_dim_x, sim::with(|c| c.block.dim[0]));
special_reg!(/// `%ntid.y`
    block_dim_y, _block_dim_y, sim::with(|c| c.block.dim[1]));
special_reg!(/// `%ntid.z`
    block_dim_z, _block_dim_z, sim::with(|c| c.block.dim[2]));
special_reg!(/// `%nctaid.x`
    grid_dim_x, _grid_dim_x, sim::with(|c| c.block.grid[0]));
special_reg!(/// `%nctaid.y`
    grid_dim_y, _grid_dim_y, sim::with(|c| c.block.grid[1]));
special_reg!(/// `%nctaid.z`
    grid_dim_z, _grid_dim_z, sim::with(|c| c.block.grid[2]));

/// Linear thread index inside the block (x fastest), as the hardware forms warps.
#[inline(always)]
pub fn thread_linear() -> u32 {
    thread_idx_x() + block_dim_x() * (thread_idx_y() + block_dim_y() * thread_idx_z())
}

/// Lane inside the warp (0..32).
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_linear() % WARP
}

/// Warp index inside the block.
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_linear() / WARP
}

/// Block barrier (`bar.sync 0`).
///
/// # Safety
/// Every thread of the block must reach the same barrier (no thread may have returned).
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn sync_threads() {
    #[cfg(target_arch = "nvptx64")]
    nv::_syncthreads();
    #[cfg(not(target_arch = "nvptx64"))]
    sim::barrier(core::panic::Location::caller());
}

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

/// 32-bit shared-window address of the dynamic shared memory (for `ld.shared`, ldmatrix,
/// cp.async). Never derive it from the generic pointer.
#[inline(always)]
pub fn dyn_smem_addr() -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let a: u32;
        // SAFETY: takes the address of the declared shared symbol; no memory access.
        unsafe { asm!("mov.u32 {0}, dyn_smem;", out(reg32) a, options(pure, nomem, nostack)) };
        a
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        sim::SMEM_BASE
    }
}

/// Generic pointer to the dynamic shared memory. Accesses through it are not bounds-checked by
/// the simulator; kernels should prefer the `ld_shared_*`/`st_shared_*` accessors.
#[inline(always)]
pub fn dyn_smem_ptr() -> *mut u8 {
    #[cfg(target_arch = "nvptx64")]
    {
        let p: u64;
        // SAFETY: converts the shared symbol's address to a generic address; no memory access.
        unsafe {
            asm!("cvta.shared.u64 {0}, dyn_smem;", out(reg64) p, options(pure, nomem, nostack))
        };
        p as *mut u8
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        sim::with(|c| c.block.smem_host_ptr())
    }
}

/// Size in bytes of the dynamic shared memory this launch was given.
#[inline(always)]
pub fn dyn_smem_size() -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let n: u32;
        // SAFETY: reads a special register.
        unsafe {
            asm!("mov.u32 {0}, %dynamic_smem_size;", out(reg32) n, options(pure, nomem, nostack))
        };
        n
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        sim::with(|c| c.block.smem_len() as u32)
    }
}

macro_rules! smem_access {
    ($ld:ident, $st:ident, $t:ty, $ptx:literal, $class:ident) => {
        /// Load from a shared-window address (naturally aligned, inside the dynamic smem).
        #[inline(always)]
        #[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
        pub fn $ld(addr: u32) -> $t {
            #[cfg(target_arch = "nvptx64")]
            {
                let v: $t;
                // SAFETY: an out-of-window shared address traps on the GPU; no Rust object
                // lives in shared memory, so a load cannot break Rust's aliasing rules.
                unsafe {
                    asm!(concat!("ld.shared.", $ptx, " {0}, [{1}];"), out($class) v, in(reg32) addr,
                         options(pure, readonly, nostack))
                };
                v
            }
            #[cfg(not(target_arch = "nvptx64"))]
            {
                let mut b = [0u8; core::mem::size_of::<$t>()];
                sim::smem_read(addr, &mut b);
                <$t>::from_le_bytes(b)
            }
        }
        /// Store to a shared-window address (naturally aligned, inside the dynamic smem).
        #[inline(always)]
        #[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
        pub fn $st(addr: u32, v: $t) {
            #[cfg(target_arch = "nvptx64")]
            // SAFETY: as for the load; shared memory holds no Rust objects.
            unsafe {
                asm!(concat!("st.shared.", $ptx, " [{0}], {1};"), in(reg32) addr, in($class) v,
                     options(nostack))
            };
            #[cfg(not(target_arch = "nvptx64"))]
            sim::smem_write(addr, &v.to_le_bytes());
        }
    };
}

smem_access!(ld_shared_f32, st_shared_f32, f32, "f32", reg32);
smem_access!(ld_shared_u32, st_shared_u32, u32, "u32", reg32);
smem_access!(ld_shared_u16, st_shared_u16, u16, "u16", reg16);

// ---------------------------------------------------------------------------------------------
// Warp collectives (full warp, mask 0xffffffff)
// ---------------------------------------------------------------------------------------------

macro_rules! shfl {
    ($(#[$m:meta])* $name:ident, $mode:literal, $clamp:literal, $op:expr) => {
        $(#[$m])*
        ///
        /// # Safety
        /// All 32 lanes of the warp must execute it together (warp-uniform control flow).
        #[inline(always)]
        #[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
        pub unsafe fn $name(v: u32, b: u32) -> u32 {
            #[cfg(target_arch = "nvptx64")]
            {
                let r: u32;
                asm!(concat!("shfl.sync.", $mode, ".b32 {0}, {1}, {2}, ", $clamp, ", 0xffffffff;"),
                     out(reg32) r, in(reg32) v, in(reg32) b, options(nomem, nostack));
                r
            }
            #[cfg(not(target_arch = "nvptx64"))]
            {
                sim::shfl(core::panic::Location::caller(), $op, v, b)
            }
        }
    };
}

shfl!(/// `shfl.sync.bfly`: value of lane `lane ^ mask`.
    shfl_xor, "bfly", "0x1f", sim::Shfl::Xor);
shfl!(/// `shfl.sync.idx`: value of lane `src & 31`.
    shfl_idx, "idx", "0x1f", sim::Shfl::Idx);
shfl!(/// `shfl.sync.up`: value of lane `lane - delta`, or the own value when that is below 0.
    shfl_up, "up", "0x0", sim::Shfl::Up);
shfl!(/// `shfl.sync.down`: value of lane `lane + delta`, or the own value when that is above 31.
    shfl_down, "down", "0x1f", sim::Shfl::Down);

/// `shfl_xor` on an f32.
///
/// # Safety
/// As [`shfl_xor`].
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn shfl_xor_f32(v: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor(v.to_bits(), mask))
}

/// `vote.sync.ballot.b32`: bit i is set when lane i passed `pred == true`.
///
/// # Safety
/// All 32 lanes of the warp must execute it together.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn ballot(pred: bool) -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        asm!("{{ .reg .pred p; setp.ne.u32 p, {1}, 0; vote.sync.ballot.b32 {0}, p, 0xffffffff; }}",
             out(reg32) r, in(reg32) pred as u32, options(nomem, nostack));
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        sim::ballot(core::panic::Location::caller(), pred)
    }
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: `d = a·b + d` for one warp.
///
/// Fragments (g = lane/4, t = lane%4; bf16 pairs packed low = lower index):
/// ```text
/// a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..), a[2] = A(g, 2t+8..), a[3] = A(g+8, 2t+8..)
/// b[0] = B(2t..2t+1, g), b[1] = B(2t+8..2t+9, g)
/// d    = [C(g,2t), C(g,2t+1), C(g+8,2t), C(g+8,2t+1)]
/// ```
///
/// # Safety
/// All 32 lanes of the warp must execute it together.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn mma_m16n8k16_bf16(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
    #[cfg(target_arch = "nvptx64")]
    asm!("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{0},{1},{2},{3}}}, {{{4},{5},{6},{7}}}, {{{8},{9}}}, {{{0},{1},{2},{3}}};",
         inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
         in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
         in(reg32) b[0], in(reg32) b[1], options(nomem, nostack));
    #[cfg(not(target_arch = "nvptx64"))]
    sim::mma_m16n8k16(core::panic::Location::caller(), d, a, b);
}

macro_rules! ldmatrix {
    ($(#[$m:meta])* $name:ident, $n:literal, $trans:literal, $ptx:literal, [$($r:ident),+]) => {
        $(#[$m])*
        ///
        /// Lanes 8i..8i+7 give the 16-byte-aligned row addresses of matrix i (shared window).
        /// Without `.trans` lane L receives row L/4, columns 2(L%4), 2(L%4)+1 of each matrix; with
        /// `.trans` it receives rows 2(L%4), 2(L%4)+1 of column L/4.
        ///
        /// # Safety
        /// All 32 lanes of the warp must execute it together.
        #[inline(always)]
        #[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
        pub unsafe fn $name(addr: u32) -> [u32; $n] {
            #[cfg(target_arch = "nvptx64")]
            {
                $(let $r: u32;)+
                asm!($ptx, $(out(reg32) $r,)+ in(reg32) addr, options(readonly, nostack));
                [$($r),+]
            }
            #[cfg(not(target_arch = "nvptx64"))]
            {
                let mut out = [0u32; $n];
                sim::ldmatrix(core::panic::Location::caller(), addr, $trans, &mut out);
                out
            }
        }
    };
}

ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x1.shared.b16`
    ldmatrix_x1, 1, false, "ldmatrix.sync.aligned.m8n8.x1.shared.b16 {{{0}}}, [{1}];", [r0]);
ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x2.shared.b16`
    ldmatrix_x2, 2, false, "ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{{0},{1}}}, [{2}];", [r0, r1]);
ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`
    ldmatrix_x4, 4, false, "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0},{1},{2},{3}}}, [{4}];", [r0, r1, r2, r3]);
ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16`
    ldmatrix_x1_trans, 1, true, "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {{{0}}}, [{1}];", [r0]);
ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16`
    ldmatrix_x2_trans, 2, true, "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{{0},{1}}}, [{2}];", [r0, r1]);
ldmatrix!(/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`
    ldmatrix_x4_trans, 4, true, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0},{1},{2},{3}}}, [{4}];", [r0, r1, r2, r3]);

// ---------------------------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------------------------

/// `cp.async.cg.shared.global [dst], [src], 16, src_size`: copies `src_size` (0..=16) bytes
/// from global `src` to shared `dst` and zero-fills the rest of the 16 bytes. Both addresses
/// must be 16-byte aligned. The data is visible to this thread only after a
/// [`cp_async_wait_group`] that covers its group, and to other threads after a barrier.
///
/// # Safety
/// `src` must be a valid global address for `src_size` bytes.
#[inline(always)]
#[cfg_attr(not(target_arch = "nvptx64"), track_caller)]
pub unsafe fn cp_async_16(dst: u32, src: *const u8, src_size: u32) {
    #[cfg(target_arch = "nvptx64")]
    asm!("cp.async.cg.shared.global [{0}], [{1}], 16, {2};", in(reg32) dst, in(reg64) src,
         in(reg32) src_size, options(nostack));
    #[cfg(not(target_arch = "nvptx64"))]
    // SAFETY: forwarded from this function's contract.
    sim::cp_async_16(dst, src, src_size);
}

/// `cp.async.commit_group`: closes this thread's outstanding cp.async ops into a group.
/// Commit in every thread (even with nothing issued) so group counts stay uniform.
#[inline(always)]
pub fn cp_async_commit() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: only groups this thread's own pending copies.
    unsafe {
        asm!("cp.async.commit_group;", options(nostack))
    };
    #[cfg(not(target_arch = "nvptx64"))]
    sim::cp_async_commit();
}

/// `cp.async.wait_group N`: waits until at most `N` of this thread's newest groups are pending.
#[inline(always)]
pub fn cp_async_wait_group<const N: u32>() {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: waits on this thread's own copies; memory clobber orders later smem reads.
    unsafe {
        asm!("cp.async.wait_group {n};", n = const N, options(nostack))
    };
    #[cfg(not(target_arch = "nvptx64"))]
    sim::cp_async_wait(N);
}

// ---------------------------------------------------------------------------------------------
// Math and bf16
// ---------------------------------------------------------------------------------------------

/// `ex2.approx.ftz.f32`: 2^x (about 2 ulp; subnormal inputs and results flush to zero).
#[inline(always)]
pub fn ex2(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: f32;
        // SAFETY: pure register arithmetic.
        unsafe {
            asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        let ftz = |v: f32| {
            if v.is_subnormal() {
                0.0f32.copysign(v)
            } else {
                v
            }
        };
        ftz(ftz(x).exp2())
    }
}

/// IEEE square root, round to nearest (`sqrt.rn.f32`).
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: f32;
        // SAFETY: pure register arithmetic.
        unsafe {
            asm!("sqrt.rn.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.sqrt()
    }
}

/// f32 → bf16 bits, round to nearest even (NaN stays NaN).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        // cvt.rn.bf16x2 gives the canonical NaN.
        return 0x7fff;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Packs two f32 into bf16x2 (`cvt.rn.bf16x2.f32 d, hi, lo`): `lo` in bits 0..16, `hi` in 16..32.
#[inline(always)]
pub fn pack_bf16x2(lo: f32, hi: f32) -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: pure register arithmetic.
        unsafe {
            asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) r, in(reg32) hi, in(reg32) lo,
                 options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        f32_to_bf16(lo) as u32 | ((f32_to_bf16(hi) as u32) << 16)
    }
}

/// Unpacks bf16x2 into (lo, hi) f32.
#[inline(always)]
pub fn unpack_bf16x2(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}
