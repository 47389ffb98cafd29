//! The self-attention KV cache: per layer, a list of head groups, each holding frame slots.
//!
//! A **slot** holds one latent frame of K (or V) for the heads of one group:
//! `[heads_in_group, tokens_per_frame, head_dim]`, post-RoPE K and raw V.
//! A **group** has `sink_cap` sink slots (filled first, never evicted) and a ring of
//! `ring_cap` slots; when the ring is full a new frame overwrites the oldest slot and the ring
//! start advances, so eviction moves no data.
//!
//! A head's attention context is its group's sink slots, then its ring slots oldest first, then
//! the current chunk's fresh K/V (see [`KvCache::context`]). Only the t = 0 clean pass calls
//! [`KvCache::commit`]; the denoising passes only read.
//!
//! Policies map to groups as follows (one group per layer, all heads):
//! - `full`: 0 sinks, ring cap = every frame of the video (never evicts);
//! - `window:W,sink:S`: S sinks, ring cap W − S − 3 (W counts the current chunk, as the official
//!   `local_attn_size`). This reproduces the official roll: e.g. W 6, S 1 gives at chunk 2 the
//!   context f0 | f4 f5 | f6–8, exactly the official cache after its first eviction.
//! - `dummy:N,chunks:L,…` starts as one group with 1 sink and ring cap 3·L (the official full
//!   path); after calibration [`crate::dummy::DummyForcing`] calls [`KvCache::replace_groups`]
//!   to make up to 3 groups per layer (sink, neighbor, dummy).

pub mod rolling;

use crate::backend::{Backend, Precision, Seg};
pub use crate::policy::GroupSpec;
use crate::{Error, Result};

/// One stored frame for a group's heads.
pub struct Slot<T> {
    /// Absolute latent frame index.
    pub frame: usize,
    /// Post-RoPE keys `[heads_in_group, tokens_per_frame, head_dim]`.
    pub k: T,
    /// Values, same layout.
    pub v: T,
}

/// A head group of one layer.
pub struct Group<T> {
    /// Heads of the layer in this group, ascending.
    pub heads: Vec<usize>,
    /// Sink slots.
    pub sink_cap: usize,
    /// Ring slots.
    pub ring_cap: usize,
    sinks: Vec<Slot<T>>,
    /// Ring storage; slots are allocated on first use, so memory never exceeds the capacity.
    ring: Vec<Slot<T>>,
    /// Index in `ring` of the oldest slot once the ring is full.
    ring_start: usize,
}

impl<T> Group<T> {
    fn new(heads: Vec<usize>, sink_cap: usize, ring_cap: usize) -> Self {
        Group { heads, sink_cap, ring_cap, sinks: Vec::new(), ring: Vec::new(), ring_start: 0 }
    }

    /// Slots in context order: sinks, then the ring oldest first.
    pub fn slots(&self) -> impl Iterator<Item = &Slot<T>> {
        let n = self.ring.len();
        self.sinks.iter().chain((0..n).map(move |i| &self.ring[(self.ring_start + i) % n]))
    }

    /// Frames in the sink slots, in order.
    pub fn sink_frames(&self) -> Vec<usize> {
        self.sinks.iter().map(|s| s.frame).collect()
    }

    /// Frames in context order.
    pub fn frames(&self) -> Vec<usize> {
        self.slots().map(|s| s.frame).collect()
    }

    /// Slots holding a frame now.
    pub fn slot_count(&self) -> usize {
        self.sinks.len() + self.ring.len()
    }
}

/// The cache of one layer: its head groups.
pub struct LayerCache<T> {
    /// The groups; every head of the layer is in exactly one.
    pub groups: Vec<Group<T>>,
    /// For each head of the layer: (group index, position within the group).
    head_slot: Vec<(usize, usize)>,
}

/// Where the current chunk's K/V live: rows `frame·tpf + t` of `[frames·tpf, heads·d]`.
pub struct Fresh<'a, T> {
    /// Post-RoPE keys of the chunk.
    pub k: &'a T,
    /// Values of the chunk.
    pub v: &'a T,
    /// Absolute index of the chunk's first frame.
    pub start_frame: usize,
    /// Frames in the chunk.
    pub frames: usize,
    /// First frame (relative to `start_frame`) whose K/V are keys and get committed; the
    /// frames before it are queries only ([`crate::model::PassInfo::recache`]). 0 normally.
    pub keys_from: usize,
}

/// The self-attention KV cache of every layer (see the [module docs](self)).
///
/// A rolling `window:6,sink:1` cache: 1 sink slot and a ring of 6 − 1 − 3 = 2 frames.
///
/// ```
/// use dfrt::backend::{cpu::CpuBackend, Backend, Precision};
/// use dfrt::cache::{Fresh, KvCache};
/// use dfrt::policy::Policy;
///
/// let be = CpuBackend::new(Precision::F32);
/// let (heads, d, tpf) = (2, 4, 3);
/// let groups = Policy::parse("window:6,sink:1")?.initial_groups(heads, None)?;
/// let mut cache = KvCache::new(1, heads, d, tpf, Precision::F32, &groups)?;
/// for chunk in 0..3 {
///     // The clean pass of each chunk commits its 3 frames ([frames·tpf, heads·d]).
///     let n = 3 * tpf * heads * d;
///     let k = be.upload(&(0..n).map(|i| (i + chunk * n) as f32 * 0.01).collect::<Vec<_>>(), &[3 * tpf, heads * d]);
///     let v = be.upload(&(0..n).map(|i| -((i + chunk * n) as f32) * 0.02).collect::<Vec<_>>(), &[3 * tpf, heads * d]);
///     let fresh = Fresh { k: &k, v: &v, start_frame: 3 * chunk, frames: 3, keys_from: 0 };
///     if chunk == 2 {
///         // Chunk 2 attends frame 0 (the sink), frames 4 and 5 (the ring), then itself.
///         assert_eq!(cache.head_frames(0, 1), vec![0, 4, 5]);
///         let ctx = cache.context(0, &fresh);
///         let frames: Vec<_> = ctx[1].iter().map(|s| s.frame.unwrap()).collect();
///         assert_eq!(frames, vec![0, 4, 5, 6, 7, 8]);
///     }
///     cache.commit(&be, 0, &fresh);
/// }
/// assert_eq!(cache.head_frames(0, 0), vec![0, 7, 8]);
/// // Full: 3 slots × 2 heads × K and V × 3 tokens × 4 dims × 4 bytes.
/// assert_eq!(cache.bytes(), cache.capacity_bytes());
/// assert_eq!(cache.bytes(), 3 * heads * 2 * tpf * d * 4);
/// # Ok::<(), dfrt::Error>(())
/// ```
pub struct KvCache<T> {
    /// Heads per layer.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens of one latent frame (`(H/ph)·(W/pw)`).
    pub tokens_per_frame: usize,
    /// Per layer: its groups.
    pub layers: Vec<LayerCache<T>>,
    /// Rolling Forcing's buffer, which then replaces the groups ([`KvCache::new_rolling`]).
    pub rolling: Option<rolling::RollingCache<T>>,
    precision: Precision,
}

impl<T> KvCache<T> {
    /// A cache of `layers` layers, each starting with `groups` (empty slots).
    pub fn new(
        layers: usize,
        heads: usize,
        head_dim: usize,
        tokens_per_frame: usize,
        precision: Precision,
        groups: &[GroupSpec],
    ) -> Result<Self> {
        let mut c = KvCache { heads, head_dim, tokens_per_frame, layers: Vec::new(), rolling: None, precision };
        for _ in 0..layers {
            for g in groups {
                if !g.sink_frames.is_empty() || !g.ring_frames.is_empty() {
                    return Err(Error::Policy("initial groups cannot name frames".into()));
                }
            }
            let head_slot = c.check_partition(groups)?;
            let gs = groups.iter().map(|g| Group::new(g.heads.clone(), g.sink_cap, g.ring_cap)).collect();
            c.layers.push(LayerCache { groups: gs, head_slot });
        }
        Ok(c)
    }

    /// Rolling Forcing's cache ([`rolling::RollingCache`]) with the official sizes: the model
    /// writes it before attending ([`rolling::RollingCache::write`]) and [`KvCache::commit`]
    /// does nothing.
    pub fn new_rolling(
        layers: usize,
        heads: usize,
        head_dim: usize,
        tokens_per_frame: usize,
        precision: Precision,
    ) -> Result<Self> {
        let all = [GroupSpec::empty((0..heads).collect(), 0, 0)];
        let mut c = KvCache::new(layers, heads, head_dim, tokens_per_frame, precision, &all)?;
        c.rolling = Some(rolling::RollingCache::new(layers, rolling::BUFFER_FRAMES, rolling::ATTENTION_FRAMES)?);
        Ok(c)
    }

    fn check_partition(&self, groups: &[GroupSpec]) -> Result<Vec<(usize, usize)>> {
        let mut head_slot = vec![(usize::MAX, 0); self.heads];
        for (gi, g) in groups.iter().enumerate() {
            for (pi, &h) in g.heads.iter().enumerate() {
                if h >= self.heads {
                    return Err(Error::Policy(format!(
                        "group {gi} names head {h}, but the layer has {} heads",
                        self.heads
                    )));
                }
                if head_slot[h].0 != usize::MAX {
                    return Err(Error::Policy(format!("head {h} is in two groups")));
                }
                head_slot[h] = (gi, pi);
            }
            // A ring may start over its capacity (Dummy Forcing's re-pack after a prompt
            // switch hands the neighbor heads the whole recache window); its next commit trims
            // it to the newest `ring_cap` frames, as the official `local = K[:, -3·HW·L:]`.
            if g.sink_frames.len() > g.sink_cap || (g.ring_cap == 0 && !g.ring_frames.is_empty()) {
                return Err(Error::Policy(format!("group {gi} is given more frames than its capacity")));
            }
        }
        if let Some(h) = head_slot.iter().position(|s| s.0 == usize::MAX) {
            return Err(Error::Policy(format!("head {h} is in no group")));
        }
        Ok(head_slot)
    }

    /// Bytes of K and V storage currently allocated (in the storage precision).
    pub fn bytes(&self) -> usize {
        let per_head_frame = 2 * self.tokens_per_frame * self.head_dim * self.precision.size();
        self.layers.iter().flat_map(|l| &l.groups).map(|g| g.slot_count() * g.heads.len() * per_head_frame).sum()
    }

    /// Bytes the cache holds at most (every slot of every group filled).
    pub fn capacity_bytes(&self) -> usize {
        let per_head_frame = 2 * self.tokens_per_frame * self.head_dim * self.precision.size();
        self.layers
            .iter()
            .flat_map(|l| &l.groups)
            .map(|g| (g.sink_cap + g.ring_cap) * g.heads.len() * per_head_frame)
            .sum()
    }

    /// Frames head `head` of `layer` currently sees from the cache, in context order.
    pub fn head_frames(&self, layer: usize, head: usize) -> Vec<usize> {
        let (g, _) = self.layers[layer].head_slot[head];
        self.layers[layer].groups[g].frames()
    }

    /// Each head's attention context: its group's slots, then the current chunk frame by frame.
    /// Every segment carries its absolute frame, which is what calibration needs to split the
    /// keys into regions (frame 0, middle frames, current chunk).
    pub fn context<'a>(&'a self, layer: usize, fresh: &Fresh<'a, T>) -> Vec<Vec<Seg<'a, T>>> {
        let (tpf, d, nh) = (self.tokens_per_frame, self.head_dim, self.heads);
        if let Some(r) = &self.rolling {
            return r.context(layer, fresh, nh, d, tpf);
        }
        let l = &self.layers[layer];
        (0..nh)
            .map(|h| {
                let (gi, pi) = l.head_slot[h];
                let mut segs: Vec<Seg<'a, T>> = l.groups[gi]
                    .slots()
                    .map(|s| Seg { k: &s.k, v: &s.v, offset: pi * tpf * d, rows: tpf, stride: d, frame: Some(s.frame) })
                    .collect();
                for f in fresh.keys_from..fresh.frames {
                    segs.push(Seg {
                        k: fresh.k,
                        v: fresh.v,
                        offset: f * tpf * nh * d + h * d,
                        rows: tpf,
                        stride: nh * d,
                        frame: Some(fresh.start_frame + f),
                    });
                }
                segs
            })
            .collect()
    }

    /// Writes the current chunk's frames into every group of `layer`, in frame order: a frame
    /// takes the next empty sink slot, else goes to the ring (overwriting the oldest when full).
    pub fn commit<B: Backend<Tensor = T>>(&mut self, be: &B, layer: usize, fresh: &Fresh<'_, T>) {
        if self.rolling.is_some() {
            return;
        }
        let (tpf, d, nh) = (self.tokens_per_frame, self.head_dim, self.heads);
        for g in &mut self.layers[layer].groups {
            let gh = g.heads.len();
            let heads = g.heads.clone();
            if g.ring.len() > g.ring_cap {
                // Over capacity (after a re-pack): append in order, then keep the newest.
                let start = g.ring_start;
                g.ring.rotate_left(start);
                g.ring_start = 0;
                for f in fresh.keys_from..fresh.frames {
                    let (mut k, mut v) = (be.zeros(&[gh, tpf, d]), be.zeros(&[gh, tpf, d]));
                    be.write_heads(&mut k, &mut v, fresh.k, fresh.v, f * tpf * nh * d, nh * d, &heads, tpf, d);
                    g.ring.push(Slot { frame: fresh.start_frame + f, k, v });
                }
                let excess = g.ring.len().saturating_sub(g.ring_cap);
                g.ring.drain(..excess);
                continue;
            }
            for f in fresh.keys_from..fresh.frames {
                let frame = fresh.start_frame + f;
                let write = |slot_k: &mut T, slot_v: &mut T| {
                    be.write_heads(slot_k, slot_v, fresh.k, fresh.v, f * tpf * nh * d, nh * d, &heads, tpf, d);
                };
                if g.sinks.len() < g.sink_cap {
                    let (mut k, mut v) = (be.zeros(&[gh, tpf, d]), be.zeros(&[gh, tpf, d]));
                    write(&mut k, &mut v);
                    g.sinks.push(Slot { frame, k, v });
                } else if g.ring_cap == 0 {
                    // A group without a ring keeps nothing beyond its sinks.
                } else if g.ring.len() < g.ring_cap {
                    let (mut k, mut v) = (be.zeros(&[gh, tpf, d]), be.zeros(&[gh, tpf, d]));
                    write(&mut k, &mut v);
                    g.ring.push(Slot { frame, k, v });
                } else {
                    let i = g.ring_start;
                    let s = &mut g.ring[i];
                    write(&mut s.k, &mut s.v);
                    s.frame = frame;
                    g.ring_start = (i + 1) % g.ring_cap;
                }
            }
        }
    }

    /// Replaces `layer`'s groups with new ones whose slots are copied from the current ones:
    /// for each new group and each of its frames, every head's rows are taken from the slot
    /// holding that frame in the head's current group. The new heads must partition the layer's
    /// heads; a frame a head does not hold is an error. Used by Dummy Forcing's HMA step.
    pub fn replace_groups<B: Backend<Tensor = T>>(&mut self, be: &B, layer: usize, specs: &[GroupSpec]) -> Result<()> {
        let (tpf, d) = (self.tokens_per_frame, self.head_dim);
        let head_slot = self.check_partition(specs)?;
        let old = &self.layers[layer];
        let build = |heads: &[usize], frame: usize| -> Result<Slot<T>> {
            let mut k = be.zeros(&[heads.len(), tpf, d]);
            let mut v = be.zeros(&[heads.len(), tpf, d]);
            for (pi, &h) in heads.iter().enumerate() {
                let (og, op) = old.head_slot[h];
                let src = old.groups[og].slots().find(|s| s.frame == frame).ok_or_else(|| {
                    Error::Policy(format!("layer {layer} head {h}: frame {frame} is not in the cache"))
                })?;
                be.copy_rows(&mut k, pi * tpf * d, &src.k, op * tpf * d, d, tpf, d);
                be.copy_rows(&mut v, pi * tpf * d, &src.v, op * tpf * d, d, tpf, d);
            }
            Ok(Slot { frame, k, v })
        };
        let mut groups = Vec::new();
        for s in specs {
            let mut g = Group::new(s.heads.clone(), s.sink_cap, s.ring_cap);
            for &f in &s.sink_frames {
                g.sinks.push(build(&s.heads, f)?);
            }
            for &f in &s.ring_frames {
                g.ring.push(build(&s.heads, f)?);
            }
            groups.push(g);
        }
        self.layers[layer] = LayerCache { groups, head_slot };
        Ok(())
    }
}

impl<T> KvCache<T> {
    /// Group `group` of `layer` as `(frames, K, V)` with K/V laid out `[frames·tpf, heads_in_group, d]`
    /// (the official cache layout), for tests and inspection.
    pub fn dump_group<B: Backend<Tensor = T>>(
        &self,
        be: &B,
        layer: usize,
        group: usize,
    ) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
        let (tpf, d) = (self.tokens_per_frame, self.head_dim);
        let g = &self.layers[layer].groups[group];
        let gh = g.heads.len();
        let mut frames = Vec::new();
        let (mut ko, mut vo) = (Vec::new(), Vec::new());
        for s in g.slots() {
            frames.push(s.frame);
            let (k, v) = (be.download(&s.k), be.download(&s.v));
            for t in 0..tpf {
                for h in 0..gh {
                    let o = (h * tpf + t) * d;
                    ko.extend_from_slice(&k[o..o + d]);
                    vo.extend_from_slice(&v[o..o + d]);
                }
            }
        }
        (frames, ko, vo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CpuBackend, CpuTensor};
    use crate::policy::Policy;

    fn chunk(be: &CpuBackend, start: usize, heads: usize, tpf: usize, d: usize) -> (CpuTensor, CpuTensor) {
        // Every element encodes (frame, token, head, col) so copies can be checked exactly.
        let mut k = Vec::new();
        for f in 0..3 {
            for t in 0..tpf {
                for h in 0..heads {
                    for c in 0..d {
                        k.push(((start + f) * 1000 + t * 100 + h * 10 + c) as f32);
                    }
                }
            }
        }
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        (be.upload(&k, &[3 * tpf, heads * d]), be.upload(&v, &[3 * tpf, heads * d]))
    }

    fn run(policy: &str, chunks: usize) -> (CpuBackend, KvCache<CpuTensor>, Vec<Vec<usize>>) {
        let be = CpuBackend::new(Precision::F32);
        let (heads, tpf, d) = (2, 2, 4);
        let p = Policy::parse(policy).unwrap();
        let groups = p.initial_groups(heads, Some(3 * chunks)).unwrap();
        let mut c = KvCache::new(1, heads, d, tpf, Precision::F32, &groups).unwrap();
        let mut seen = Vec::new();
        for ch in 0..chunks {
            let (k, v) = chunk(&be, 3 * ch, heads, tpf, d);
            let fresh = Fresh { k: &k, v: &v, start_frame: 3 * ch, frames: 3, keys_from: 0 };
            let ctx = c.context(0, &fresh);
            seen.push(ctx[1].iter().map(|s| s.frame.unwrap()).collect());
            // The rows a segment points at hold the frame it claims (head 1).
            for s in &ctx[1] {
                let f = s.frame.unwrap();
                for r in 0..s.rows {
                    let x = s.k.data[s.offset + r * s.stride];
                    assert_eq!(x, (f * 1000 + r * 100 + 10) as f32);
                    assert_eq!(s.v.data[s.offset + r * s.stride + 3], -x - 3.0);
                }
            }
            drop(ctx);
            c.commit(&be, 0, &fresh);
        }
        (be, c, seen)
    }

    #[test]
    fn window_reproduces_official_eviction() {
        // tiny-window: local_attn_size 6, sink 1 → at chunk 2 the context is f0, f4, f5, f6–8.
        let (_, c, seen) = run("window:6,sink:1", 5);
        assert_eq!(seen[0], vec![0, 1, 2]);
        assert_eq!(seen[1], vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(seen[2], vec![0, 4, 5, 6, 7, 8]);
        assert_eq!(seen[3], vec![0, 7, 8, 9, 10, 11]);
        assert_eq!(seen[4], vec![0, 10, 11, 12, 13, 14]);
        assert_eq!(c.head_frames(0, 0), vec![0, 13, 14]);
        // LongLive shape: 12 frames, 3 sinks.
        let (_, _, seen) = run("window:12,sink:3", 6);
        assert_eq!(seen[4], vec![0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(seen[5], vec![0, 1, 2, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
    }

    #[test]
    fn queries_only_frames_are_neither_attended_nor_committed() {
        // LongLive's recache with a kept sink: window:9,sink:3 (ring 3) holding f0–2 | f6–8;
        // a 9-frame pass over f6–14 whose first 3 frames are queries only.
        let (be, mut c, _) = run("window:9,sink:3", 3);
        assert_eq!(c.head_frames(0, 0), vec![0, 1, 2, 6, 7, 8]);
        let (heads, tpf, d) = (2, 2, 4);
        let specs = [GroupSpec {
            heads: vec![0, 1],
            sink_cap: 3,
            ring_cap: 3,
            sink_frames: vec![0, 1, 2],
            ring_frames: vec![],
        }];
        c.replace_groups(&be, 0, &specs).unwrap();
        let parts: Vec<_> = (0..3).map(|i| chunk(&be, 6 + 3 * i, heads, tpf, d)).collect();
        let cat = |f: fn(&(CpuTensor, CpuTensor)) -> &CpuTensor| {
            let v: Vec<f32> = parts.iter().flat_map(|p| f(p).data.clone()).collect();
            be.upload(&v, &[9 * tpf, heads * d])
        };
        let (k, v) = (cat(|p| &p.0), cat(|p| &p.1));
        let fresh = Fresh { k: &k, v: &v, start_frame: 6, frames: 9, keys_from: 3 };
        let ctx = c.context(0, &fresh);
        let frames: Vec<_> = ctx[1].iter().map(|s| s.frame.unwrap()).collect();
        assert_eq!(
            frames,
            vec![0, 1, 2, 9, 10, 11, 12, 13, 14],
            "the old sink, then the window's frames after its first 3"
        );
        // The rows a fresh segment points at hold the frame it claims.
        for s in &ctx[1][3..] {
            assert_eq!(s.k.data[s.offset], (s.frame.unwrap() * 1000 + 10) as f32);
        }
        drop(ctx);
        c.commit(&be, 0, &fresh);
        assert_eq!(c.head_frames(0, 1), vec![0, 1, 2, 12, 13, 14], "sink kept, the ring keeps the newest 3");
    }

    #[test]
    fn full_keeps_everything_and_memory_is_bounded_for_windows() {
        let (_, c, seen) = run("full", 4);
        assert_eq!(seen[3], (0..12).collect::<Vec<_>>());
        assert_eq!(c.bytes(), c.capacity_bytes());
        let (_, c1, _) = run("window:6,sink:1", 3);
        let (_, c2, _) = run("window:6,sink:1", 8);
        assert_eq!(c1.bytes(), c2.bytes(), "the window cache stops growing");
    }

    #[test]
    fn replace_groups_copies_slots_per_head() {
        let (be, mut c, _) = run("window:7,sink:1", 2); // sink f0, ring f2..f5
        let specs = vec![
            GroupSpec { heads: vec![1], sink_cap: 1, ring_cap: 0, sink_frames: vec![0], ring_frames: vec![] },
            GroupSpec { heads: vec![0], sink_cap: 0, ring_cap: 1, sink_frames: vec![], ring_frames: vec![5] },
        ];
        c.replace_groups(&be, 0, &specs).unwrap();
        assert_eq!(c.head_frames(0, 1), vec![0]);
        assert_eq!(c.head_frames(0, 0), vec![5]);
        let (k, v) = chunk(&be, 6, 2, 2, 4);
        let fresh = Fresh { k: &k, v: &v, start_frame: 6, frames: 3, keys_from: 0 };
        let ctx = c.context(0, &fresh);
        for (h, s) in [(1usize, &ctx[1][0]), (0, &ctx[0][0])] {
            let f = s.frame.unwrap();
            assert_eq!(s.k.data[s.offset + s.stride], (f * 1000 + 100 + h * 10) as f32);
        }
        drop(ctx);
        c.commit(&be, 0, &fresh);
        assert_eq!(c.head_frames(0, 0), vec![8], "a ring of one keeps the newest frame");
        assert_eq!(c.head_frames(0, 1), vec![0], "sink heads keep frame 0");
        // Errors: a frame not held, heads not partitioned.
        let bad =
            vec![GroupSpec { heads: vec![0, 1], sink_cap: 1, ring_cap: 0, sink_frames: vec![3], ring_frames: vec![] }];
        assert!(c.replace_groups(&be, 0, &bad).unwrap_err().to_string().contains("frame 3"));
        let bad = vec![GroupSpec::empty(vec![0], 0, 1)];
        assert!(c.replace_groups(&be, 0, &bad).unwrap_err().to_string().contains("head 1 is in no group"));
    }
}
