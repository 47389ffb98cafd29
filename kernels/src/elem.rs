//! Storage element types and the bf16 params wrapper.
//!
//! Every activation kernel exists twice: `*_f32` (f32 storage) and `*_bf16` (bf16 storage, the
//! bits held as `u16`). Both do their math in f32; the bf16 variant rounds (round to nearest
//! even) exactly where the CPU reference backend (`host/src/backend/cpu.rs`) rounds in bf16
//! mode, using [`Elem::round`] at intermediate points and on every store. For f32 storage
//! `round` is the identity, so one generic body serves both.
//!
//! The bf16 entry points take [`Bf16<P>`], a transparent wrapper of the f32 kernel's params
//! struct `P`: the same fields and layout, a different kernel name.

use crate::gpu::{bf16_to_f32, f32_to_bf16};
use crate::{Entry, Launch, LaunchDims};

/// A storage element: `f32`, or `u16` holding bf16 bits.
pub trait Elem: Copy + 'static {
    /// Reads element `i` of `p` as f32 (exact).
    ///
    /// # Safety
    /// `p.add(i)` must be valid for a read.
    unsafe fn ld(p: *const Self, i: usize) -> f32;
    /// Rounds `v` to this storage and writes it at element `i` of `p`.
    ///
    /// # Safety
    /// `p.add(i)` must be valid for a write.
    unsafe fn st(p: *mut Self, i: usize, v: f32);
    /// `v` rounded to this storage, as f32 (identity for f32).
    fn round(v: f32) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn ld(p: *const f32, i: usize) -> f32 {
        *p.add(i)
    }
    #[inline(always)]
    unsafe fn st(p: *mut f32, i: usize, v: f32) {
        *p.add(i) = v;
    }
    #[inline(always)]
    fn round(v: f32) -> f32 {
        v
    }
}

impl Elem for u16 {
    #[inline(always)]
    unsafe fn ld(p: *const u16, i: usize) -> f32 {
        bf16_to_f32(*p.add(i))
    }
    #[inline(always)]
    unsafe fn st(p: *mut u16, i: usize, v: f32) {
        *p.add(i) = f32_to_bf16(v);
    }
    #[inline(always)]
    fn round(v: f32) -> f32 {
        bf16_to_f32(f32_to_bf16(v))
    }
}

/// Params of the bf16 variant of a kernel: the f32 variant's params `P` (same fields, same
/// layout; every tensor pointer then points at bf16 data unless the field's doc says f32).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct Bf16<P>(pub P);

impl<P: Launch> Launch for Bf16<P>
where
    Bf16<P>: Entry,
{
    /// Same launch shape as the f32 variant.
    fn dims(&self) -> LaunchDims {
        self.0.dims()
    }
}
