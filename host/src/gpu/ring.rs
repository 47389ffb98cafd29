//! Space accounting for a ring of staging memory whose regions are in use until a fence
//! passes: the pinned upload ring of [`super::CudaDevice`], where a fence is the CUDA event
//! recorded after an asynchronous host-to-device copy.
//!
//! Uploads go into the ring one after another, wrapping at the end. Before a region is
//! written again, every earlier upload that overlaps it must have left the ring (its copy
//! done), so [`Ring::reserve`] hands back exactly those fences to wait on. Everything else is
//! left in flight: the host never waits for the GPU on an upload unless the ring is full of
//! copies it has not reached yet.

use std::collections::VecDeque;

/// Offsets into the ring are aligned to this (the copy engines' fast path).
pub const RING_ALIGN: usize = 16;

pub struct Ring<F> {
    cap: usize,
    head: usize,
    /// Regions in flight `[start, end)` with their fences, oldest first.
    pending: VecDeque<(usize, usize, F)>,
}

impl<F> Ring<F> {
    pub fn new(cap: usize) -> Self {
        Ring { cap, head: 0, pending: VecDeque::new() }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Where the next `len` bytes go, and the fences of the regions in flight that overlap
    /// it: wait for them before writing (they are forgotten here). None when `len` exceeds
    /// the capacity (the caller copies without the ring).
    pub fn reserve(&mut self, len: usize) -> Option<(usize, Vec<F>)> {
        if len == 0 || len > self.cap {
            return None;
        }
        let mut at = self.head.div_ceil(RING_ALIGN) * RING_ALIGN;
        if at + len > self.cap {
            at = 0;
        }
        let end = at + len;
        let mut wait = Vec::new();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for (s, e, f) in self.pending.drain(..) {
            if s < end && at < e {
                wait.push(f);
            } else {
                keep.push_back((s, e, f));
            }
        }
        self.pending = keep;
        self.head = end;
        Some((at, wait))
    }

    /// Records that `[start, start + len)` is in flight until `fence` passes.
    pub fn commit(&mut self, start: usize, len: usize, fence: F) {
        self.pending.push_back((start, start + len, fence));
    }

    /// Regions in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of the device: each fence is an upload id; "waiting" marks it done. Every byte
    /// of the ring remembers which upload wrote it, and an upload's bytes must still be its own
    /// when its copy is done, i.e. nothing overwrote a region before its fence was waited for.
    #[test]
    fn no_region_is_reused_before_its_fence() {
        let cap = 1000;
        let mut ring = Ring::new(cap);
        let mut owner = vec![usize::MAX; cap];
        let mut done = vec![false; 5000];
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut regions = vec![];
        for id in 0..5000usize {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = 1 + (rng >> 40) as usize % 300;
            let (at, wait) = ring.reserve(len).unwrap();
            assert_eq!(at % RING_ALIGN, 0);
            assert!(at + len <= cap);
            for w in wait {
                // The waited-for upload's bytes are intact when it completes.
                let (s, l) = regions[w];
                assert!(owner[s..s + l].iter().all(|&o| o == w), "upload {w} was overwritten before its copy finished");
                done[w] = true;
            }
            // Writing over a region that is still in flight would be the bug.
            for &o in &owner[at..at + len] {
                assert!(
                    o == usize::MAX || done[o] || !ring.pending.iter().any(|p| p.2 == o),
                    "upload {id} overwrites {o} in flight"
                );
            }
            owner[at..at + len].fill(id);
            regions.push((at, len));
            ring.commit(at, len, id);
            assert!(ring.in_flight() <= cap / RING_ALIGN);
            if id % 7 == 0 {
                // Sometimes the device catches up by itself: nothing to wait for then.
                for p in ring.pending.drain(..) {
                    done[p.2] = true;
                }
            }
        }
        assert!(ring.reserve(cap + 1).is_none());
        assert!(ring.reserve(0).is_none());
        assert_eq!(ring.reserve(cap).unwrap().0, 0, "a full-size upload starts at 0");
    }

    #[test]
    fn fences_come_back_only_when_their_region_is_reused() {
        let mut ring = Ring::new(64);
        let (a, w) = ring.reserve(20).unwrap();
        assert!(w.is_empty());
        ring.commit(a, 20, 'a');
        let (b, w) = ring.reserve(20).unwrap();
        assert_eq!((a, b), (0, 32), "aligned to 16");
        assert!(w.is_empty());
        ring.commit(b, 20, 'b');
        // 52 + 20 > 64: wraps to 0 and overlaps `a` only.
        let (c, w) = ring.reserve(20).unwrap();
        assert_eq!((c, w), (0, vec!['a']));
        ring.commit(c, 20, 'c');
        assert_eq!(ring.in_flight(), 2);
        let (d, w) = ring.reserve(40).unwrap();
        assert_eq!((d, w), (0, vec!['b', 'c']));
    }
}
