//! Per-layer cache layout of the head groups after HMA, for a frame-slot cache where each
//! group of heads has `sink_slots` fixed frame slots plus a ring of `ring_cap` frame slots,
//! attends `sink ++ ring ++ current chunk`, and commits frames only in the t = 0 pass
//! (sink slots first, while free; then the ring, oldest frame evicted first).

use super::dhp::{Assignment, Group};
use crate::policy::{local_frames_after_step, DummySpec, SlotShape};

/// Where a group's slots are filled from at HMA time (the end of the t = 0 pass of AR step
/// `ar_start`, after that pass has committed its frames to the phase-1 cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmaSource {
    /// The single sink slot takes the phase-1 sink: latent frame 0.
    Frame0,
    /// The single ring slot takes the newest frame of the phase-1 ring (the last frame of
    /// chunk `ar_start`).
    LastLocalFrame,
    /// The ring takes the whole phase-1 ring, oldest first: `frames` latent frames, which is
    /// `3·L`, or fewer when `ar_start ≤ L−1` (see [`local_frames_after_step`]).
    LocalWindow { frames: usize },
    /// No slots (dummy heads with packing off).
    Nothing,
}

/// One head group of one layer after HMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    /// Which group.
    pub group: Group,
    /// Head indices of the layer, ascending. May be empty: the group is then skipped.
    pub heads: Vec<usize>,
    /// Its slot capacities.
    pub shape: SlotShape,
    /// Which of the layer's current frames it starts with.
    pub source: HmaSource,
}

/// The layout of every layer after HMA: per layer `[sink, neighbor, dummy]` (the order of
/// [`Group::ALL`]), including empty groups.
///
/// - sink: 1 sink slot (frame 0), ring 0; commits nothing afterwards.
/// - dummy: 0 sink slots, ring 1 (the last frame of each committed chunk), or ring 0 with
///   packing off (attends only the current chunk).
/// - neighbor: 0 sink slots, ring 3·L (the last L chunks).
pub fn hma_layout(a: &Assignment, spec: &DummySpec) -> Vec<[GroupLayout; 3]> {
    let window = local_frames_after_step(spec, spec.ar_start);
    (0..a.num_layers)
        .map(|l| {
            Group::ALL.map(|g| {
                let (shape, source) = match g {
                    Group::Sink => (SlotShape { sink_slots: 1, ring_cap: 0 }, HmaSource::Frame0),
                    Group::Neighbor => (
                        SlotShape { sink_slots: 0, ring_cap: spec.local_frames() },
                        HmaSource::LocalWindow { frames: window },
                    ),
                    Group::Dummy if spec.packing => {
                        (SlotShape { sink_slots: 0, ring_cap: 1 }, HmaSource::LastLocalFrame)
                    }
                    Group::Dummy => (SlotShape { sink_slots: 0, ring_cap: 0 }, HmaSource::Nothing),
                };
                GroupLayout { group: g, heads: a.heads_in(l, g), shape, source }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::phase1_shape;

    #[test]
    fn df_tiny_layout() {
        // The df-tiny groups: layers 0, 1, 3: sink [0], dummy [1]; layer 2: neighbor [0, 1].
        let a = Assignment::from_i64(&[0, 2, 0, 2, 1, 1, 0, 2], 4, 2).unwrap();
        let spec = DummySpec::new(3);
        let lay = hma_layout(&a, &spec);
        assert_eq!(lay.len(), 4);
        let l0 = &lay[0];
        assert_eq!(
            l0[0],
            GroupLayout {
                group: Group::Sink,
                heads: vec![0],
                shape: SlotShape { sink_slots: 1, ring_cap: 0 },
                source: HmaSource::Frame0
            }
        );
        assert_eq!(l0[1].heads, Vec::<usize>::new());
        assert_eq!(l0[1].shape, SlotShape { sink_slots: 0, ring_cap: 3 });
        assert_eq!(l0[1].source, HmaSource::LocalWindow { frames: 3 });
        assert_eq!(
            l0[2],
            GroupLayout {
                group: Group::Dummy,
                heads: vec![1],
                shape: SlotShape { sink_slots: 0, ring_cap: 1 },
                source: HmaSource::LastLocalFrame
            }
        );
        assert_eq!(lay[2][1].heads, vec![0, 1]);
        assert!(lay[2][0].heads.is_empty() && lay[2][2].heads.is_empty());
        assert_eq!(phase1_shape(&spec), SlotShape { sink_slots: 1, ring_cap: 3 });
    }

    #[test]
    fn packing_off_and_long_context() {
        let a = Assignment::from_i64(&[2, 1, 0], 1, 3).unwrap();
        let spec = DummySpec::parse("dummy:1,chunks:2,packing:off").unwrap();
        let lay = hma_layout(&a, &spec);
        assert_eq!(lay[0][2].shape, SlotShape { sink_slots: 0, ring_cap: 0 });
        assert_eq!(lay[0][2].source, HmaSource::Nothing);
        // ar_start 1 ≤ L−1 = 1: the local window at HMA holds frames 1..5 (5 frames).
        assert_eq!(lay[0][1].shape.ring_cap, 6);
        assert_eq!(lay[0][1].source, HmaSource::LocalWindow { frames: 5 });
        assert_eq!(phase1_shape(&spec), SlotShape { sink_slots: 1, ring_cap: 6 });
        // Official full-path rule, step by step (L = 2): 2, 5, 6, 6 frames.
        let got: Vec<usize> = (0..4).map(|s| local_frames_after_step(&spec, s)).collect();
        assert_eq!(got, vec![2, 5, 6, 6]);
        let l1 = DummySpec::new(0);
        assert_eq!((0..3).map(|s| local_frames_after_step(&l1, s)).collect::<Vec<_>>(), vec![2, 3, 3]);
    }
}
