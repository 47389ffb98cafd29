//! Cache policies, in one place: the policy a run is given (`full`, `window:W,sink:S`,
//! `dummy:N[,…]`), parsed and checked against the model once ([`Policy::parse_for`]); the
//! groups every layer's cache starts with ([`Policy::initial_groups`]); Dummy Forcing's
//! options ([`DummySpec`]) and head groups ([`Group`], [`GroupCounts`]); and the KV bytes a
//! policy keeps ([`kv_footprint`]). The cache and Dummy Forcing build on this module; it
//! depends on neither.

pub mod dummy_spec;
pub mod footprint;

pub use dummy_spec::{local_frames_after_step, phase1_shape, DummySpec, SlotShape};
pub use footprint::{kv_footprint, GroupBytes, KvFootprint};

use serde::{Deserialize, Serialize};

use crate::config::FRAMES_PER_CHUNK;
use crate::{Error, ModelConfig, Result};

/// A cache policy as given on the command line (`--policy`).
///
/// ```
/// use dfrt::policy::Policy;
/// use dfrt::policy::DummySpec;
/// use dfrt::ModelConfig;
///
/// assert_eq!(Policy::parse("full")?, Policy::Full);
/// assert_eq!(Policy::parse("window:6,sink:1")?, Policy::Window { window: 6, sink: 1 });
/// // The sink defaults to 0; the window counts the current chunk (3 frames).
/// assert_eq!(Policy::parse("window:9")?, Policy::Window { window: 9, sink: 0 });
/// let Policy::Dummy(spec) = Policy::parse("dummy:2,chunks:2")? else { unreachable!() };
/// assert_eq!(spec, DummySpec { chunks: 2, ..DummySpec::new(2) });
/// // `name` gives the canonical string, which parses back to the same policy.
/// let p = Policy::parse("dummy:2")?;
/// assert_eq!(Policy::parse(&p.name())?, p);
///
/// // Mistakes are errors that say what was expected.
/// for (bad, says) in [
///     ("window:2", "at least sink + 3"),
///     ("window:6,sinks:1", "unknown window option `sinks`"),
///     ("window:six", "not a number"),
///     ("lru", "unknown policy `lru`"),
///     ("dummy:two", "dummy"),
/// ] {
///     let e = Policy::parse(bad).unwrap_err().to_string();
///     assert!(e.contains(says), "{bad}: {e}");
/// }
/// // The dummy head budget depends on the model: `tiny` has 2 layers × 2 heads.
/// let tiny = ModelConfig::preset("tiny")?;
/// assert!(Policy::parse_for("dummy:3", &tiny).is_ok());
/// assert!(Policy::parse_for("dummy:5", &tiny).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Every earlier frame.
    Full,
    /// `window` latent frames in all (current chunk included), the first `sink` of which never roll.
    Window { window: usize, sink: usize },
    /// Dummy Forcing: one group of all heads with 1 sink slot and a ring of 3·L frames until
    /// calibration, then per-head groups (see [`crate::dummy`]).
    Dummy(DummySpec),
}

impl Policy {
    /// Parses `full`, `window:W,sink:S` (sink defaults to 0) or
    /// `dummy:N[,chunks:L][,ar-start:K][,packing:on|off]`. The dummy head budget is checked
    /// against a model by [`Policy::parse_for`] / [`Policy::validate`].
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "full" {
            return Ok(Policy::Full);
        }
        if let Some(rest) = s.strip_prefix("window:") {
            let mut window = None;
            let mut sink = 0;
            for (i, part) in rest.split(',').enumerate() {
                let (key, val) = match part.split_once(':') {
                    Some((k, v)) => (k, v),
                    None if i == 0 => ("window", part),
                    None => return Err(Error::Policy(format!("`{part}` in `{s}`: expected key:value"))),
                };
                let n: usize = val.parse().map_err(|_| Error::Policy(format!("`{val}` in `{s}` is not a number")))?;
                match key {
                    "window" => window = Some(n),
                    "sink" => sink = n,
                    _ => return Err(Error::Policy(format!("unknown window option `{key}` in `{s}` (known: sink)"))),
                }
            }
            let window = window.ok_or_else(|| Error::Policy(format!("`{s}`: missing window size")))?;
            let p = Policy::Window { window, sink };
            p.check()?;
            return Ok(p);
        }
        if s.starts_with("dummy") {
            return Ok(Policy::Dummy(DummySpec::parse(s)?));
        }
        Err(Error::Policy(format!("unknown policy `{s}` (expected full, window:W,sink:S or dummy:N)")))
    }

    /// [`Policy::parse`] followed by [`Policy::validate`] against `cfg`.
    pub fn parse_for(s: &str, cfg: &ModelConfig) -> Result<Self> {
        let p = Self::parse(s)?;
        p.validate(cfg)?;
        Ok(p)
    }

    /// Checks the policy against a model (the dummy head budget).
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.check()?;
        match self {
            Policy::Dummy(spec) => spec.validate(cfg),
            _ => Ok(()),
        }
    }

    fn check(&self) -> Result<()> {
        if let Policy::Window { window, sink } = *self {
            if window < sink + FRAMES_PER_CHUNK {
                return Err(Error::Policy(format!(
                    "window:{window},sink:{sink}: the window counts the current chunk, so it must be at least sink + {FRAMES_PER_CHUNK} = {}",
                    sink + FRAMES_PER_CHUNK
                )));
            }
        }
        Ok(())
    }

    /// The canonical policy string (every option spelled out); it parses back to `self`.
    pub fn name(&self) -> String {
        match self {
            Policy::Full => "full".into(),
            Policy::Window { window, sink } => format!("window:{window},sink:{sink}"),
            Policy::Dummy(spec) => spec.to_string(),
        }
    }

    /// The groups every layer starts with, for a video of `total_frames` latent frames
    /// (None = unbounded, only allowed for bounded policies).
    pub fn initial_groups(&self, heads: usize, total_frames: Option<usize>) -> Result<Vec<GroupSpec>> {
        self.check()?;
        let all: Vec<usize> = (0..heads).collect();
        Ok(match *self {
            Policy::Full => {
                let f =
                    total_frames.ok_or_else(|| Error::Policy("the full policy needs a known frame count".into()))?;
                vec![GroupSpec::empty(all, 0, f)]
            }
            Policy::Window { window, sink } => vec![GroupSpec::empty(all, sink, window - sink - FRAMES_PER_CHUNK)],
            Policy::Dummy(spec) => {
                let s = phase1_shape(&spec);
                vec![GroupSpec::empty(all, s.sink_slots, s.ring_cap)]
            }
        })
    }
}

/// The shape of a group to build: its heads, capacities, and which frames (absolute latent
/// frame indices) its sink and ring slots start with, copied from the layer's current slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Heads of the layer in this group, ascending.
    pub heads: Vec<usize>,
    /// Sink slots (filled first, never evicted).
    pub sink_cap: usize,
    /// Ring slots (the oldest is overwritten when full).
    pub ring_cap: usize,
    /// Frames for the sink slots, in order (at most `sink_cap`).
    pub sink_frames: Vec<usize>,
    /// Frames for the ring, oldest first (at most `ring_cap`).
    pub ring_frames: Vec<usize>,
}

impl GroupSpec {
    /// A group with these capacities and no frames yet.
    pub fn empty(heads: Vec<usize>, sink_cap: usize, ring_cap: usize) -> Self {
        GroupSpec { heads, sink_cap, ring_cap, sink_frames: vec![], ring_frames: vec![] }
    }
}

/// The group of one head. The numbers are those of the `assignment` output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// A ("first"): keeps latent frame 0.
    Sink = 0,
    /// B ("mid"): keeps the last L chunks.
    Neighbor = 1,
    /// C ("last"): keeps the newest previous latent frame (or nothing without packing).
    Dummy = 2,
}

impl Group {
    /// Every group, in the order of their numbers.
    pub const ALL: [Group; 3] = [Group::Sink, Group::Neighbor, Group::Dummy];

    /// The group of an `assignment` value (0, 1, 2); None for anything else.
    pub fn from_i64(v: i64) -> Option<Group> {
        match v {
            0 => Some(Group::Sink),
            1 => Some(Group::Neighbor),
            2 => Some(Group::Dummy),
            _ => None,
        }
    }

    /// `sink`, `neighbor` or `dummy` (the name in head-program JSON).
    pub fn name(self) -> &'static str {
        match self {
            Group::Sink => "sink",
            Group::Neighbor => "neighbor",
            Group::Dummy => "dummy",
        }
    }
}

/// Heads per group, over all layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Sink heads.
    pub sink: usize,
    /// Neighbor heads.
    pub neighbor: usize,
    /// Dummy heads.
    pub dummy: usize,
}

impl GroupCounts {
    /// The count of group `g`.
    pub fn get(&self, g: Group) -> usize {
        match g {
            Group::Sink => self.sink,
            Group::Neighbor => self.neighbor,
            Group::Dummy => self.dummy,
        }
    }
    /// Heads in all.
    pub fn total(&self) -> usize {
        self.sink + self.neighbor + self.dummy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parse_errors_are_readable() {
        assert_eq!(Policy::parse("window:12,sink:3").unwrap(), Policy::Window { window: 12, sink: 3 });
        assert!(Policy::parse("window:4,sink:2").unwrap_err().to_string().contains("at least sink + 3"));
        assert!(Policy::parse("bogus").unwrap_err().to_string().contains("unknown policy"));
        assert_eq!(Policy::parse("dummy:4").unwrap(), Policy::Dummy(DummySpec::new(4)));
        assert!(Policy::parse("dummy:4,chunks:0").unwrap_err().to_string().contains("chunks must be at least 1"));
        let cfg = ModelConfig::preset("tiny4").unwrap();
        assert!(Policy::parse_for("dummy:9", &cfg).unwrap_err().to_string().contains("only 8 heads"));
        assert_eq!(
            Policy::parse("dummy:2,chunks:2").unwrap().initial_groups(2, None).unwrap(),
            vec![GroupSpec::empty(vec![0, 1], 1, 6)]
        );
        assert!(Policy::parse("window:x").unwrap_err().to_string().contains("not a number"));
    }
}
