//! Dummy Forcing: policy spec, calibration, DHP, head programs, HMA layout and cache accounting.

pub mod calibrate;
pub mod dhp;
pub mod footprint;
pub mod layout;
pub mod program;
pub mod spec;

pub use calibrate::{layer_masses, sample_rows, KeySegment, LayerScores, SplitMix64};
pub use dhp::{program, Assignment, Group, GroupCounts};
pub use footprint::{kv_footprint, GroupBytes, KvFootprint, KvPolicy};
pub use layout::{hma_layout, local_frames_after_step, phase1_shape, GroupLayout, HmaSource, SlotShape};
pub use program::{stability, HeadEntry, HeadProgram, ModelIdentity, Stability};
pub use spec::DummySpec;
