//! Rolling Forcing's KV buffer (official `CausalWanSelfAttention` of TencentARC/RollingForcing
//! @ a1477d0), kept block by block (a block is one chunk, 3 latent frames).
//!
//! - The buffer holds `buffer_blocks` blocks (24 frames = 8 blocks officially); slot 0 is the
//!   **anchor** (block 0), stored **un-roped** and never evicted.
//! - Every forward writes only the *first* block of its call, before attending. With
//!   `cache_end = first block + 1`, `new = cache_end − global_end` (blocks):
//!   - if `new > 0` and `new + local_end > size`: the oldest non-anchor block is evicted, the
//!     rest move down one slot keeping their rotation, and the new block is written roped;
//!   - otherwise it goes to slot `local_end + cache_end − global_end − 1`, un-roped if that is
//!     slot 0, else roped at its absolute frames;
//!   - the indices advance only when `new > 0`: a cache pass overwrites the slot its window's
//!     denoising forward just wrote (with the noisy first block, which nothing reads).
//! - A denoising forward whose write went to slot 0 (warm-up) attends its own window only.
//!   Otherwise it attends the anchor re-roped just before the working cache, the working cache
//!   `slots[max(1, s − W) .. s)` (s = the slot just written, W = the cap minus the window minus
//!   the anchor, in blocks) and the window.
//! - A cache pass attends `slots[max(0, local_end − cap) .. local_end)`, the slot it just wrote
//!   included (it equals the query block's own K/V), with the anchor re-roped at frames 0–2
//!   when slot 0 is in range. Once the buffer is full the range no longer includes the anchor.

use crate::backend::{Backend, Seg};
use crate::cache::Fresh;
use crate::config::FRAMES_PER_CHUNK;
use crate::{Error, Result};

/// The official sizes in latent frames: a 24-frame buffer, attention capped at 21 frames.
pub const BUFFER_FRAMES: usize = 24;
pub const ATTENTION_FRAMES: usize = 21;

/// One cached block: K `[3·tpf, heads·d]` (un-roped for the anchor, else roped) and V.
struct Block<T> {
    /// Index of the block in the video (for inspection).
    block: usize,
    k: T,
    v: T,
}

/// One layer's buffer and its indices (in blocks).
struct Layer<T> {
    slots: Vec<Block<T>>,
    global_end: usize,
    local_end: usize,
    /// The slot this call wrote, and the anchor re-roped for this call's attention.
    written: usize,
    anchor: Option<T>,
    /// Frames of the working cache in the current call (for the anchor's RoPE start).
    working: std::ops::Range<usize>,
    /// Whether the current call reads the cache at all.
    reads: bool,
}

/// Where the write of the current call went and what it attends, for tests and inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallLayout {
    pub written_slot: usize,
    /// Anchor RoPE start frame, when the anchor is attended.
    pub anchor_rope_start: Option<usize>,
    /// Blocks attended from the buffer (besides the anchor), oldest first; for a cache pass
    /// this ends with the block it just wrote (its own).
    pub working_blocks: Vec<usize>,
    pub evicted: bool,
}

/// Rolling Forcing's buffer for every layer.
pub struct RollingCache<T> {
    pub buffer_blocks: usize,
    pub attention_blocks: usize,
    layers: Vec<Layer<T>>,
    last: Option<CallLayout>,
}

impl<T> RollingCache<T> {
    pub fn new(layers: usize, buffer_frames: usize, attention_frames: usize) -> Result<Self> {
        let b = FRAMES_PER_CHUNK;
        if !buffer_frames.is_multiple_of(b)
            || !attention_frames.is_multiple_of(b)
            || attention_frames > buffer_frames
            || attention_frames < 2 * b
        {
            return Err(Error::Policy(format!("rolling buffer {buffer_frames} / attention {attention_frames} frames: both must be multiples of {b}, attention ≤ buffer, at least 2 blocks")));
        }
        let layers = (0..layers)
            .map(|_| Layer {
                slots: Vec::new(),
                global_end: 0,
                local_end: 0,
                written: 0,
                anchor: None,
                working: 0..0,
                reads: false,
            })
            .collect();
        Ok(RollingCache {
            buffer_blocks: buffer_frames / b,
            attention_blocks: attention_frames / b,
            layers,
            last: None,
        })
    }

    /// Blocks held per slot of `layer` (slot 0 is the anchor).
    pub fn slot_blocks(&self, layer: usize) -> Vec<usize> {
        self.layers[layer].slots.iter().map(|s| s.block).collect()
    }

    /// Layer 0's layout of the last call.
    pub fn last_call(&self) -> Option<&CallLayout> {
        self.last.as_ref()
    }

    /// Slot `slot` of `layer` as (K, V) `[3·tpf, heads·d]` (the anchor un-roped).
    pub fn slot(&self, layer: usize, slot: usize) -> Option<(&T, &T)> {
        self.layers[layer].slots.get(slot).map(|s| (&s.k, &s.v))
    }

    /// The re-roped anchor of the last call in `layer`, when it was attended.
    pub fn anchor_roped(&self, layer: usize) -> Option<&T> {
        self.layers[layer].anchor.as_ref()
    }

    /// The write of a call (before its attention), then the anchor re-roped for it. `k_plain`
    /// is the call's K after the norm and before RoPE, `k` after RoPE, both `[frames·tpf,
    /// heads·d]`; `grid` is `[1, h, w]` of one frame; `cache_pass` tells a cache pass (t = 0)
    /// from a denoising forward.
    #[allow(clippy::too_many_arguments)]
    pub fn write<B: Backend<Tensor = T>>(
        &mut self,
        be: &B,
        layer: usize,
        fresh: &Fresh<'_, T>,
        k_plain: &T,
        heads: usize,
        grid: [usize; 3],
        cache_pass: bool,
    ) -> Result<()> {
        let nb = FRAMES_PER_CHUNK;
        if !fresh.start_frame.is_multiple_of(nb) || !fresh.frames.is_multiple_of(nb) || fresh.frames == 0 {
            return Err(Error::Input(format!(
                "rolling forward over frames {}+{}: must be whole blocks",
                fresh.start_frame, fresh.frames
            )));
        }
        let (size, cap) = (self.buffer_blocks, self.attention_blocks);
        let first = fresh.start_frame / nb;
        let l = &mut self.layers[layer];
        let cache_end = first + 1;
        let cols = be.shape(fresh.k)[1];
        let rows = nb * grid[1] * grid[2];
        let copy = |src: &T| {
            let mut t = be.zeros(&[rows, cols]);
            be.copy_rows(&mut t, 0, src, 0, cols, rows, cols);
            t
        };
        let new = cache_end as isize - l.global_end as isize;
        let mut evicted = false;
        let local_end = if new > 0 && new as usize + l.local_end > size {
            let ev = new as usize + l.local_end - size;
            // The anchor stays; the oldest `ev` blocks after it go, the rest move down.
            l.slots.drain(1..1 + ev);
            evicted = true;
            l.local_end + cache_end - l.global_end - ev
        } else {
            (l.local_end as isize + new) as usize
        };
        if local_end == 0 {
            return Err(Error::Input(format!("rolling forward at block {first} goes behind the buffer")));
        }
        let s = local_end - 1;
        let k = if s == 0 && !evicted { copy(k_plain) } else { copy(fresh.k) };
        let blk = Block { block: first, k, v: copy(fresh.v) };
        if s < l.slots.len() {
            l.slots[s] = blk;
        } else if s == l.slots.len() {
            l.slots.push(blk);
        } else {
            return Err(Error::Input(format!("rolling buffer: slot {s} written with only {} filled", l.slots.len())));
        }
        if new > 0 {
            l.global_end = cache_end;
            l.local_end = local_end;
        }
        l.written = s;
        // What this call attends.
        let q_blocks = fresh.frames / nb;
        let (reads, working) = if s == 0 {
            (false, 0..0)
        } else if cache_pass {
            (true, l.local_end.saturating_sub(cap)..l.local_end)
        } else {
            let wmax = cap.saturating_sub(q_blocks + 1);
            (true, s.saturating_sub(wmax).max(1)..s)
        };
        l.reads = reads;
        l.working = working.clone();
        let rope_start = if !reads {
            None
        } else if cache_pass {
            (working.start == 0).then_some(0)
        } else {
            let wf = (working.end - working.start) * nb;
            Some(
                fresh
                    .start_frame
                    .checked_sub(wf + nb)
                    .ok_or_else(|| Error::Input("rolling: the anchor would sit before frame 0".into()))?,
            )
        };
        l.anchor = rope_start.map(|rs| be.rope(&l.slots[0].k, heads, [nb, grid[1], grid[2]], rs));
        if layer == 0 {
            let blocks = working.clone().filter(|&i| i != 0).map(|i| l.slots[i].block).collect();
            self.last =
                Some(CallLayout { written_slot: s, anchor_rope_start: rope_start, working_blocks: blocks, evicted });
        }
        Ok(())
    }

    /// Each head's context for the call [`RollingCache::write`] just prepared: the anchor (if
    /// read), the working blocks, then the call's own K/V.
    pub fn context<'a>(
        &'a self,
        layer: usize,
        fresh: &Fresh<'a, T>,
        heads: usize,
        head_dim: usize,
        tpf: usize,
    ) -> Vec<Vec<Seg<'a, T>>> {
        let l = &self.layers[layer];
        let nb = FRAMES_PER_CHUNK;
        let stride = heads * head_dim;
        let frame_segs =
            |segs: &mut Vec<Seg<'a, T>>, h: usize, k: &'a T, v: &'a T, first_frame: usize, frames: usize| {
                for f in 0..frames {
                    segs.push(Seg {
                        k,
                        v,
                        offset: f * tpf * stride + h * head_dim,
                        rows: tpf,
                        stride,
                        frame: Some(first_frame + f),
                    });
                }
            };
        (0..heads)
            .map(|h| {
                let mut segs = Vec::new();
                if l.reads {
                    if let Some(a) = &l.anchor {
                        frame_segs(&mut segs, h, a, &l.slots[0].v, 0, nb);
                    }
                    // Slot 0 is the anchor (above); the slot this call wrote is the call's own
                    // first block, taken from `fresh` below (the same values).
                    for i in l.working.clone().filter(|&i| i != 0 && i != l.written) {
                        let s = &l.slots[i];
                        frame_segs(&mut segs, h, &s.k, &s.v, s.block * nb, nb);
                    }
                }
                frame_segs(&mut segs, h, fresh.k, fresh.v, fresh.start_frame, fresh.frames);
                segs
            })
            .collect()
    }
}
