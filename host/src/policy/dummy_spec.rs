//! The `dummy` cache-policy string: `dummy:N[,chunks:L][,ar-start:K][,packing:on|off]`.

use std::fmt;

use crate::config::FRAMES_PER_CHUNK;
use crate::{Error, ModelConfig, Result};

/// Settings of the Dummy Forcing policy. The defaults (L 1, K 1, packing on) are those of the
/// official Self-Forcing configuration.
///
/// ```
/// use dfrt::dummy::DummySpec;
///
/// let s = DummySpec::parse("dummy:180")?;
/// assert_eq!(s, DummySpec::new(180));
/// assert_eq!((s.chunks, s.ar_start, s.packing), (1, 1, true));
/// assert_eq!(s.to_string(), "dummy:180,chunks:1,ar-start:1,packing:on");
///
/// let s = DummySpec::parse("dummy:4,ar-start:2,chunks:3,packing:off")?;
/// assert_eq!((s.local_frames(), s.dummy_frames()), (9, 0));
/// assert_eq!(DummySpec::parse(&s.to_string())?, s);
///
/// for (bad, says) in [
///     ("dummy:4,chunks:0", "chunks must be at least 1"),
///     ("dummy:4,ar-start:0", "ar-start must be at least 1"),
///     ("dummy:4,packing:maybe", "packing must be `on` or `off`"),
///     ("dummy:4,chunks:2,chunks:3", "given twice"),
///     ("dummy:4,window:6", "unknown option `window`"),
///     ("dummy:-1", "non-negative integer"),
/// ] {
///     let e = DummySpec::parse(bad).unwrap_err().to_string();
///     assert!(e.contains(says), "{bad}: {e}");
/// }
/// // The budget is checked against a model: 30 layers × 12 heads = 360 heads in Wan2.1 1.3B.
/// let wan = dfrt::ModelConfig::preset("wan-1.3b")?;
/// assert!(DummySpec::parse_for("dummy:360", &wan).is_ok());
/// assert!(DummySpec::parse_for("dummy:361", &wan).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DummySpec {
    /// Dummy heads over all layers together (the official `num_dummy`; a global budget).
    pub num_dummy: usize,
    /// Chunks of history kept by neighbor heads (the official `local_context_length`, Lc).
    pub chunks: usize,
    /// AR step whose t = 0 pass calibrates the heads (the official `ar_start`).
    pub ar_start: usize,
    /// Packed attention forward (PAF): dummy heads keep one cached latent frame, the last
    /// frame of the previous chunk. With `packing:off` a dummy head keeps no cache at all and
    /// attends only the current chunk: the conceptual HMA of the paper without PAF. The
    /// official code always packs; `off` is an option, not the default.
    pub packing: bool,
}

impl DummySpec {
    /// The official `local_context_length`.
    pub const DEFAULT_CHUNKS: usize = 1;
    /// The official `ar_start`.
    pub const DEFAULT_AR_START: usize = 1;

    /// `num_dummy` dummy heads with the official defaults for everything else.
    pub fn new(num_dummy: usize) -> Self {
        DummySpec { num_dummy, chunks: Self::DEFAULT_CHUNKS, ar_start: Self::DEFAULT_AR_START, packing: true }
    }

    /// Latent frames in a neighbor head's window: `3·L`.
    pub fn local_frames(&self) -> usize {
        FRAMES_PER_CHUNK * self.chunks
    }

    /// Latent frames a dummy head keeps after HMA: 1 with packing, 0 without.
    pub fn dummy_frames(&self) -> usize {
        usize::from(self.packing)
    }

    /// Parses a policy string. Checks only the syntax and the model-independent ranges
    /// (`chunks` ≥ 1, `ar-start` ≥ 1); use [`DummySpec::validate`] or
    /// [`DummySpec::parse_for`] for the head budget.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Err(Error::Policy(format!("`{s}`: {m}")));
        let usage = "expected dummy:N[,chunks:L][,ar-start:K][,packing:on|off]";
        let mut parts = s.trim().split(',');
        let head = parts.next().unwrap_or("");
        let Some(n) = head.strip_prefix("dummy:") else {
            return bad(format!("not a dummy policy ({usage})"));
        };
        let num_dummy = parse_count("N (number of dummy heads)", n, s)?;
        let mut spec = DummySpec::new(num_dummy);
        let (mut seen_chunks, mut seen_ar, mut seen_packing) = (false, false, false);
        for part in parts {
            let Some((key, val)) = part.split_once(':') else {
                return bad(format!("option `{part}` is not of the form key:value ({usage})"));
            };
            let dup = |seen: &mut bool| -> Result<()> {
                if std::mem::replace(seen, true) {
                    return Err(Error::Policy(format!("`{s}`: option `{key}` is given twice")));
                }
                Ok(())
            };
            match key.trim() {
                "chunks" => {
                    dup(&mut seen_chunks)?;
                    spec.chunks = parse_count("chunks", val, s)?;
                }
                "ar-start" => {
                    dup(&mut seen_ar)?;
                    spec.ar_start = parse_count("ar-start", val, s)?;
                }
                "packing" => {
                    dup(&mut seen_packing)?;
                    spec.packing = match val.trim() {
                        "on" => true,
                        "off" => false,
                        v => return bad(format!("packing must be `on` or `off`, got `{v}`")),
                    };
                }
                k => return bad(format!("unknown option `{k}` (known: chunks, ar-start, packing)")),
            }
        }
        if spec.chunks == 0 {
            return bad("chunks must be at least 1 (neighbor heads keep the last L chunks)".into());
        }
        if spec.ar_start == 0 {
            return bad("ar-start must be at least 1: calibration needs cached frames, and AR step 0 has none".into());
        }
        Ok(spec)
    }

    /// Checks the spec against a model: the dummy budget may not exceed the head count.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let total = cfg.num_layers * cfg.num_heads;
        if self.num_dummy > total {
            return Err(Error::Policy(format!(
                "{self}: asks for {} dummy heads, but the model has only {total} heads ({} layers × {} heads)",
                self.num_dummy, cfg.num_layers, cfg.num_heads
            )));
        }
        if self.chunks == 0 || self.ar_start == 0 {
            return Err(Error::Policy(format!("{self}: chunks and ar-start must be at least 1")));
        }
        Ok(())
    }

    /// [`DummySpec::parse`] followed by [`DummySpec::validate`].
    pub fn parse_for(s: &str, cfg: &ModelConfig) -> Result<Self> {
        let spec = Self::parse(s)?;
        spec.validate(cfg)?;
        Ok(spec)
    }
}

/// The canonical policy string, with every option spelled out; it parses back to the same spec.
impl fmt::Display for DummySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = if self.packing { "on" } else { "off" };
        write!(f, "dummy:{},chunks:{},ar-start:{},packing:{p}", self.num_dummy, self.chunks, self.ar_start)
    }
}

fn parse_count(what: &str, v: &str, whole: &str) -> Result<usize> {
    let t = v.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Policy(format!("`{whole}`: {what} must be a non-negative integer, got `{v}`")));
    }
    t.parse::<usize>().map_err(|_| Error::Policy(format!("`{whole}`: {what} `{t}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        DummySpec::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_defaults_and_options() {
        assert_eq!(
            DummySpec::parse("dummy:180").unwrap(),
            DummySpec { num_dummy: 180, chunks: 1, ar_start: 1, packing: true }
        );
        let s = DummySpec::parse("dummy:7,packing:off,ar-start:2,chunks:3").unwrap();
        assert_eq!(s, DummySpec { num_dummy: 7, chunks: 3, ar_start: 2, packing: false });
        assert_eq!(s.local_frames(), 9);
        assert_eq!(s.dummy_frames(), 0);
        assert_eq!(DummySpec::parse(&s.to_string()).unwrap(), s);
        assert_eq!(DummySpec::parse("dummy:0").unwrap().num_dummy, 0);
    }

    #[test]
    fn bad_strings_have_readable_errors() {
        assert!(err("window:3").contains("not a dummy policy"));
        assert!(err("dummy:").contains("N (number of dummy heads) must be a non-negative integer"));
        assert!(err("dummy:-1").contains("non-negative integer, got `-1`"));
        assert!(err("dummy:1.5").contains("got `1.5`"));
        assert!(err("dummy:99999999999999999999999").contains("too large"));
        assert!(err("dummy:4,chunks:0").contains("chunks must be at least 1"));
        assert!(err("dummy:4,ar-start:0").contains("ar-start must be at least 1"));
        assert!(err("dummy:4,chunks:x").contains("chunks must be a non-negative integer"));
        assert!(err("dummy:4,foo:1").contains("unknown option `foo`"));
        assert!(err("dummy:4,chunks").contains("not of the form key:value"));
        assert!(err("dummy:4,packing:yes").contains("packing must be `on` or `off`"));
        assert!(err("dummy:4,chunks:1,chunks:2").contains("given twice"));
        assert!(err("dummy:4,").contains("not of the form key:value"));
    }

    #[test]
    fn validates_against_the_model() {
        let cfg = ModelConfig::preset("tiny4").unwrap(); // 4 layers × 2 heads
        assert!(DummySpec::parse_for("dummy:8", &cfg).is_ok());
        let e = DummySpec::parse_for("dummy:9", &cfg).unwrap_err().to_string();
        assert!(e.contains("asks for 9 dummy heads, but the model has only 8 heads (4 layers × 2 heads)"), "{e}");
    }
}

/// Frame slots of one head group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    pub sink_slots: usize,
    pub ring_cap: usize,
}

/// Phase 1 (AR steps ≤ ar_start, before HMA): every head in one group with one sink slot
/// (frame 0) and a ring of `3·L` frames. This reproduces the official full path: after the
/// t = 0 pass of step c, local = last 3·L frames if c > L−1, else every frame but frame 0;
/// both are "the last min(3·L, frames−1) frames", because with c ≤ L−1 fewer than 3·L frames
/// follow frame 0.
pub fn phase1_shape(spec: &DummySpec) -> SlotShape {
    SlotShape { sink_slots: 1, ring_cap: spec.local_frames() }
}

/// Latent frames in the (pre-HMA) local window right after the t = 0 pass of AR step `step`:
/// `3·L` if `step > L−1`, else `3·(step+1) − 1`.
pub fn local_frames_after_step(spec: &DummySpec, step: usize) -> usize {
    if step + 1 > spec.chunks {
        spec.local_frames()
    } else {
        FRAMES_PER_CHUNK * (step + 1) - 1
    }
}
