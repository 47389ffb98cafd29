//! Dummy Forcing: policy spec, calibration, DHP, head programs, HMA layout and cache accounting.

pub mod calibrate;
pub mod dhp;
pub mod program;
pub mod spec;

pub use calibrate::{layer_masses, sample_rows, KeySegment, LayerScores, SplitMix64};
pub use dhp::{program, Assignment, Group, GroupCounts};
pub use spec::DummySpec;
pub use program::{stability, HeadEntry, HeadProgram, ModelIdentity, Stability};
