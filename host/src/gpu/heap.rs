//! A sub-allocator over a few large device allocations ("regions").
//!
//! The memory plan reserves one region big enough for the cache and the activation peak before
//! generation starts; every tensor after that is carved out of it, so the chunk loop makes no
//! device allocation. Blocks are 256-byte aligned, found best-fit, and coalesced with their free
//! neighbours when released. When nothing fits, the caller allocates a new region from the
//! device (which the device counts) and adds it here.

use std::collections::BTreeMap;

/// Every block starts and ends on this boundary (cuBLASLt and vector loads want 16; 256 keeps
/// every tensor on its own cache-line group, as cudaMalloc does).
pub const ALIGN: usize = 256;

pub fn round_up(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

#[derive(Default)]
pub struct Heap {
    /// Region base → size.
    regions: BTreeMap<u64, usize>,
    /// Free blocks: address → size (within regions; adjacent free blocks are always merged).
    free: BTreeMap<u64, usize>,
    /// Live blocks: address → size.
    live: BTreeMap<u64, usize>,
    live_bytes: usize,
    peak_bytes: usize,
    /// While a graph is captured: every block handed out, so that the memory the graph uses
    /// can be kept from later allocations ([`Heap::end_capture`]).
    capture_log: Option<Vec<(u64, usize)>>,
    /// Ranges kept allocated for good because a captured graph writes them at every replay.
    held: Vec<(u64, usize)>,
}

impl Heap {
    /// Adds a region (from a device allocation of `size` bytes at `base`).
    pub fn add_region(&mut self, base: u64, size: usize) {
        self.regions.insert(base, size);
        self.insert_free(base, size);
    }

    /// A block of at least `bytes` (rounded to [`ALIGN`]), best fit; None if no free block is
    /// large enough.
    pub fn alloc(&mut self, bytes: usize) -> Option<u64> {
        let need = round_up(bytes);
        let (&addr, &size) = self.free.iter().filter(|(_, &s)| s >= need).min_by_key(|(&a, &s)| (s, a))?;
        self.free.remove(&addr);
        if size > need {
            self.free.insert(addr + need as u64, size - need);
        }
        self.live.insert(addr, need);
        if let Some(log) = &mut self.capture_log {
            log.push((addr, need));
        }
        self.live_bytes += need;
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        Some(addr)
    }

    /// Returns a block; false if `addr` is not a live block.
    pub fn release(&mut self, addr: u64) -> bool {
        let Some(size) = self.live.remove(&addr) else { return false };
        if let Some(log) = &mut self.capture_log {
            // A block made before the capture and freed inside it may have been used by the
            // graph (e.g. a table outgrown half-way): it is held like the graph's own scratch.
            log.push((addr, size));
        }
        self.live_bytes -= size;
        self.insert_free(addr, size);
        true
    }

    fn insert_free(&mut self, mut addr: u64, mut size: usize) {
        // Merge with the following block if it is free and in the same region.
        let region = self.region_of(addr);
        if let Some(&next) = self.free.get(&(addr + size as u64)) {
            if self.region_of(addr + size as u64) == region {
                self.free.remove(&(addr + size as u64));
                size += next;
            }
        }
        // And with the preceding one.
        if let Some((&prev, &psize)) = self.free.range(..addr).next_back() {
            if prev + psize as u64 == addr && self.region_of(prev) == region {
                self.free.remove(&prev);
                addr = prev;
                size += psize;
            }
        }
        self.free.insert(addr, size);
    }

    fn region_of(&self, addr: u64) -> Option<u64> {
        let (&base, &size) = self.regions.range(..=addr).next_back()?;
        (addr < base + size as u64).then_some(base)
    }

    /// The live block containing `[addr, addr + len)`, if any.
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        match self.live.range(..=addr).next_back() {
            Some((&a, &s)) => addr + len as u64 <= a + s as u64,
            None => false,
        }
    }

    /// Starts logging the blocks handed out or freed (a graph capture begins). Blocks freed
    /// during the capture may be reused within it: the graph replays the same order.
    pub fn begin_capture(&mut self) {
        self.capture_log = Some(Vec::new());
    }

    /// Ends the log: every byte handed out during the capture that is free now is taken out
    /// of the free list, since the graph writes it at every replay, and returned: the graph's
    /// ranges, to give back with [`Heap::release_held`] when the graph is dropped. (Blocks
    /// still live are the caller's: the graph's outputs, to be kept while the graph is used.)
    pub fn end_capture(&mut self) -> Vec<(u64, usize)> {
        let Some(mut log) = self.capture_log.take() else { return Vec::new() };
        log.sort_unstable();
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for (a, n) in log {
            let b = a + n as u64;
            match spans.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => spans.push((a, b)),
            }
        }
        let mut taken = Vec::new();
        for (ia, ib) in spans {
            // Free blocks overlapping [ia, ib): carve the overlap out.
            let hits: Vec<(u64, usize)> =
                self.free.range(..ib).filter(|(&fa, &fs)| fa + fs as u64 > ia).map(|(&a, &s)| (a, s)).collect();
            for (fa, fs) in hits {
                let fb = fa + fs as u64;
                let (oa, ob) = (fa.max(ia), fb.min(ib));
                self.free.remove(&fa);
                if fa < oa {
                    self.free.insert(fa, (oa - fa) as usize);
                }
                if ob < fb {
                    self.free.insert(ob, (fb - ob) as usize);
                }
                let n = (ob - oa) as usize;
                taken.push((oa, n));
                self.live_bytes += n;
            }
        }
        self.held.extend_from_slice(&taken);
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        taken
    }

    /// Gives back ranges [`Heap::end_capture`] returned (their graph is gone); ranges not
    /// held are ignored.
    pub fn release_held(&mut self, ranges: &[(u64, usize)]) {
        for &r in ranges {
            if let Some(i) = self.held.iter().position(|&h| h == r) {
                self.held.swap_remove(i);
                self.live_bytes -= r.1;
                self.insert_free(r.0, r.1);
            }
        }
    }

    /// Whether a capture is being logged.
    pub fn capturing(&self) -> bool {
        self.capture_log.is_some()
    }

    /// Bytes kept for captured graphs.
    pub fn held_bytes(&self) -> usize {
        self.held.iter().map(|h| h.1).sum()
    }

    /// Bytes in live blocks now, and at most so far.
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }
    /// Resets the peak to the current live bytes (to measure one phase).
    pub fn reset_peak(&mut self) {
        self.peak_bytes = self.live_bytes;
    }
    /// Total bytes of all regions.
    pub fn capacity(&self) -> usize {
        self.regions.values().sum()
    }
    /// Largest free block.
    pub fn largest_free(&self) -> usize {
        self.free.values().copied().max().unwrap_or(0)
    }
    /// The regions, for freeing them on drop.
    pub fn regions(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_coalesces_and_never_overlaps() {
        let mut h = Heap::default();
        h.add_region(1 << 20, 64 * ALIGN);
        h.add_region(1 << 30, 8 * ALIGN);
        let mut rng = 0x1234_5678_u64;
        let mut live: Vec<(u64, usize)> = Vec::new();
        for step in 0..4000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if live.is_empty() || !rng.is_multiple_of(3) {
                let bytes = (rng >> 20) as usize % (6 * ALIGN) + 1;
                if let Some(a) = h.alloc(bytes) {
                    assert_eq!(a % ALIGN as u64, 0);
                    for &(b, s) in &live {
                        assert!(a + round_up(bytes) as u64 <= b || b + s as u64 <= a, "step {step}: overlap");
                    }
                    assert!(h.contains(a, bytes));
                    live.push((a, round_up(bytes)));
                }
            } else {
                let i = (rng >> 33) as usize % live.len();
                let (a, _) = live.swap_remove(i);
                assert!(h.release(a));
            }
        }
        for (a, _) in live.drain(..) {
            assert!(h.release(a));
        }
        assert_eq!(h.live_bytes(), 0);
        // Fully coalesced: each region is one free block again, and never merged across regions.
        assert_eq!(h.largest_free(), 64 * ALIGN);
        assert_eq!(h.free.len(), 2);
        assert!(!h.release(1 << 20), "double free is refused");
    }

    #[test]
    fn a_capture_keeps_the_memory_its_graph_uses() {
        let mut h = Heap::default();
        h.add_region(1 << 20, 18 * ALIGN);
        let keep = h.alloc(ALIGN).unwrap();
        let old = h.alloc(ALIGN).unwrap();
        let sep = h.alloc(ALIGN).unwrap();
        h.begin_capture();
        h.release(old); // made before the capture, freed in it: held too
        let a = h.alloc(2 * ALIGN).unwrap();
        h.release(a);
        let b = h.alloc(3 * ALIGN).unwrap(); // reuses a's bytes inside the capture
        let out = h.alloc(2 * ALIGN).unwrap();
        h.release(b);
        let held = h.end_capture();
        // The graph's scratch (old, a ∪ b: 4 blocks) is held; its output stays the caller's.
        assert_eq!(h.held_bytes(), 4 * ALIGN);
        assert_eq!(held.iter().map(|r| r.1).sum::<usize>(), 4 * ALIGN);
        assert_eq!(h.live_bytes(), 8 * ALIGN);
        let mut others = Vec::new();
        for _ in 0..10 {
            let c = h.alloc(ALIGN).unwrap();
            assert!(
                c + ALIGN as u64 <= a.min(b) || c >= a.max(b) + 3 * ALIGN as u64,
                "{c:#x} reuses the graph's memory"
            );
            assert!(![keep, old, sep, out, out + ALIGN as u64].contains(&c), "{c:#x} is taken");
            others.push(c);
        }
        assert!(h.alloc(ALIGN).is_none(), "exactly the held and live blocks are taken");
        // Dropping the graph gives its scratch back (once).
        h.release_held(&held);
        h.release_held(&held);
        assert_eq!(h.held_bytes(), 0);
        assert_eq!(h.live_bytes(), 14 * ALIGN);
        assert_eq!(h.largest_free(), 3 * ALIGN);
        assert_eq!(h.alloc(ALIGN), Some(old), "the old block is free again");
        for c in others.into_iter().chain([keep, sep, out, old]) {
            assert!(h.release(c));
        }
        assert_eq!(h.live_bytes(), 0);
        assert_eq!(h.largest_free(), 18 * ALIGN);
    }
}
