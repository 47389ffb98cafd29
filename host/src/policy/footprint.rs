//! KV-cache accounting: bytes held per head group, and the ratio against `full`.
//!
//! Counted: the self-attention K and V caches of all layers (not the cross-attention cache,
//! which is the same under every policy), as held after the t = 0 pass of the last chunk of
//! a run of `frames` latent frames. One head holding one latent frame costs
//! `2 (K and V) × tokens_per_frame × head_dim × dtype_bytes`.
//!
//! Frames held per head, following the official code:
//! - `full`: every frame (`frames`).
//! - `window:W,sink:S`: `min(frames, W)` (W counts the sinks and the current chunk's slot).
//! - `dummy`, before HMA (AR steps ≤ ar_start): every head keeps frame 0 plus its local
//!   window, `1 + 3·L` in steady state (fewer in the first L chunks).
//!   After HMA: sink heads 1 frame; dummy heads 1 frame (0 with packing off); neighbor heads
//!   their window, `3·L` in steady state.
//!
//! `peak_bytes` is the largest total at any chunk end, including the moment before HMA
//! where every head still holds its phase-1 cache.

use std::collections::BTreeMap;

use super::{local_frames_after_step, GroupCounts, Policy};
use crate::config::FRAMES_PER_CHUNK;
use crate::{Error, ModelConfig, Result};

/// One group's share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBytes {
    /// `all`, `uncalibrated`, `sink`, `neighbor` or `dummy`.
    pub name: &'static str,
    /// Heads over all layers.
    pub heads: usize,
    /// Latent frames each of these heads keeps.
    pub frames_per_head: usize,
    /// K and V bytes of the group.
    pub bytes: u64,
}

/// KV-cache bytes of a policy after some frames, per group and against `full`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvFootprint {
    /// Latent frames generated.
    pub frames: usize,
    /// Each group's share.
    pub groups: Vec<GroupBytes>,
    /// Bytes held after `frames` frames.
    pub total_bytes: u64,
    /// Most bytes held at any point up to `frames` (Dummy Forcing's phase 1 can exceed the end).
    pub peak_bytes: u64,
    /// `full` at the same frame count.
    pub full_bytes: u64,
}

impl KvFootprint {
    /// `total_bytes / full_bytes`.
    pub fn ratio_vs_full(&self) -> f64 {
        self.total_bytes as f64 / self.full_bytes as f64
    }

    /// One line for the run summary, e.g.
    /// `kv cache: sink 100 heads × 1 frame 79.87 MB, … = 415.33 MB (6.88% of full 6038.32 MB at 21 frames, peak 1150.16 MB)`.
    pub fn summary(&self) -> String {
        let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
        let parts: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                let f = if g.frames_per_head == 1 { "frame" } else { "frames" };
                format!("{} {} heads × {} {f} {}", g.name, g.heads, g.frames_per_head, mb(g.bytes))
            })
            .collect();
        format!(
            "kv cache: {} = {} ({:.2}% of full {} at {} frames, peak {})",
            parts.join(", "),
            mb(self.total_bytes),
            100.0 * self.ratio_vs_full(),
            mb(self.full_bytes),
            self.frames,
            mb(self.peak_bytes)
        )
    }

    /// Output-file metadata: `dfrt.kv_bytes.{group}`, `dfrt.kv_bytes.total`,
    /// `dfrt.kv_bytes.peak`, `dfrt.kv_bytes.full`, `dfrt.kv_ratio_vs_full`.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for g in &self.groups {
            m.insert(format!("dfrt.kv_bytes.{}", g.name), g.bytes.to_string());
        }
        m.insert("dfrt.kv_bytes.total".into(), self.total_bytes.to_string());
        m.insert("dfrt.kv_bytes.peak".into(), self.peak_bytes.to_string());
        m.insert("dfrt.kv_bytes.full".into(), self.full_bytes.to_string());
        m.insert("dfrt.kv_ratio_vs_full".into(), format!("{:.6}", self.ratio_vs_full()));
        m
    }
}

/// KV-cache bytes of `policy` for `cfg` after `frames` latent frames (a whole number of
/// chunks), with `tokens_per_frame` tokens per latent frame and `dtype_bytes` per element.
///
/// Wan2.1 1.3B at 480p (1560 tokens per latent frame) in bf16, 21 frames, 180 dummy heads:
///
/// ```
/// use dfrt::policy::{kv_footprint, DummySpec, GroupCounts, Policy};
///
/// let wan = dfrt::ModelConfig::preset("wan-1.3b")?;
/// let head_frame: u64 = 2 * 1560 * 128 * 2; // K and V of one head for one frame
/// let spec = DummySpec::new(180);
/// let counts = GroupCounts { sink: 100, neighbor: 80, dummy: 180 };
/// let fp = kv_footprint(&Policy::Dummy(spec), Some(counts), &wan, 1560, 2, 21)?;
/// // Sink heads keep frame 0, neighbor heads the last chunk, dummy heads one frame.
/// assert_eq!(fp.total_bytes, (100 + 80 * 3 + 180) * head_frame);
/// assert_eq!(fp.full_bytes, 360 * 21 * head_frame);
/// assert!(fp.summary().contains("415.33 MB (6.88% of full 6038.32 MB at 21 frames"), "{}", fp.summary());
/// // After calibration the group sizes are needed; partial chunks are not a thing.
/// assert!(kv_footprint(&Policy::Dummy(spec), None, &wan, 1560, 2, 21).is_err());
/// assert!(kv_footprint(&Policy::Full, None, &wan, 1560, 2, 20).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
pub fn kv_footprint(
    policy: &Policy,
    counts: Option<GroupCounts>,
    cfg: &ModelConfig,
    tokens_per_frame: usize,
    dtype_bytes: usize,
    frames: usize,
) -> Result<KvFootprint> {
    if frames == 0 || !frames.is_multiple_of(FRAMES_PER_CHUNK) {
        return Err(Error::Input(format!(
            "{frames} latent frames is not a whole number of {FRAMES_PER_CHUNK}-frame chunks"
        )));
    }
    let per_head_frame = 2 * (tokens_per_frame * cfg.head_dim() * dtype_bytes) as u64;
    let all = cfg.num_layers * cfg.num_heads;
    let group = |name, heads: usize, f: usize| GroupBytes {
        name,
        heads,
        frames_per_head: f,
        bytes: heads as u64 * f as u64 * per_head_frame,
    };
    let full_bytes = all as u64 * frames as u64 * per_head_frame;
    let (groups, peak_bytes) = match *policy {
        Policy::Full => (vec![group("all", all, frames)], full_bytes),
        Policy::Window { window: w, sink: sinks } => {
            if w == 0 || sinks >= w {
                return Err(Error::Policy(format!(
                    "window:{w},sink:{sinks}: the window must be longer than its sinks"
                )));
            }
            let g = group("all", all, frames.min(w));
            let b = g.bytes;
            (vec![g], b)
        }
        Policy::Dummy(spec) => {
            spec.validate(cfg)?;
            let last = frames / FRAMES_PER_CHUNK - 1;
            let phase1 = |c: usize| 1 + local_frames_after_step(&spec, c.min(spec.ar_start));
            // Largest phase-1 total: the cache only grows until HMA.
            let peak1 = all as u64 * phase1(last) as u64 * per_head_frame;
            if last < spec.ar_start {
                let g = group("uncalibrated", all, phase1(last));
                (vec![g], peak1)
            } else {
                let c = counts.ok_or_else(|| {
                    Error::Input(format!(
                        "{frames} frames reach calibration (AR step {}), so group counts are needed",
                        spec.ar_start
                    ))
                })?;
                if c.total() != all || c.dummy != spec.num_dummy {
                    return Err(Error::Input(format!(
                        "group counts {c:?} do not fit {all} heads with {} dummy heads",
                        spec.num_dummy
                    )));
                }
                // Neighbor window: the phase-1 window at HMA, then + one chunk per step, capped.
                let steps_after = last - spec.ar_start;
                let neighbor = (local_frames_after_step(&spec, spec.ar_start) + FRAMES_PER_CHUNK * steps_after)
                    .min(spec.local_frames());
                let gs = vec![
                    group("sink", c.sink, 1),
                    group("neighbor", c.neighbor, neighbor),
                    group("dummy", c.dummy, spec.dummy_frames()),
                ];
                let total: u64 = gs.iter().map(|g| g.bytes).sum();
                (gs, peak1.max(total))
            }
        }
    };
    let total_bytes = groups.iter().map(|g| g.bytes).sum();
    Ok(KvFootprint { frames, groups, total_bytes, peak_bytes, full_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DummySpec;

    fn wan() -> ModelConfig {
        ModelConfig::preset("wan-1.3b").unwrap()
    }

    // One head, one 480p latent frame, bf16, K and V: 2 × 1560 × 128 × 2 bytes.
    const HF: u64 = 798_720;

    #[test]
    fn wan_1_3b_at_480p_bf16() {
        let cfg = wan();
        let full = kv_footprint(&Policy::Full, None, &cfg, 1560, 2, 21).unwrap();
        assert_eq!(full.total_bytes, 6_038_323_200); // 360 heads × 21 frames × HF
        assert_eq!(full.total_bytes, 360 * 21 * HF);
        assert_eq!(full.ratio_vs_full(), 1.0);

        let counts = GroupCounts { sink: 100, neighbor: 80, dummy: 180 };
        let d = (Policy::Dummy(DummySpec::new(180)), Some(counts));
        let f = kv_footprint(&d.0, d.1, &cfg, 1560, 2, 21).unwrap();
        let by = |n: &str| f.groups.iter().find(|g| g.name == n).unwrap().clone();
        assert_eq!(by("sink").bytes, 79_872_000); // 100 × 1 × HF
        assert_eq!(by("neighbor").bytes, 191_692_800); // 80 × 3 × HF
        assert_eq!(by("neighbor").frames_per_head, 3);
        assert_eq!(by("dummy").bytes, 143_769_600); // 180 × 1 × HF
        assert_eq!(f.total_bytes, 415_334_400);
        assert_eq!(f.full_bytes, 6_038_323_200);
        assert_eq!(f.peak_bytes, 1_150_156_800); // 360 heads × (1 + 3) frames before HMA
        assert!((f.ratio_vs_full() - 415_334_400.0 / 6_038_323_200.0).abs() < 1e-15);
        let line = f.summary();
        assert!(line.contains("sink 100 heads × 1 frame 79.87 MB"), "{line}");
        assert!(line.contains("= 415.33 MB (6.88% of full 6038.32 MB at 21 frames, peak 1150.16 MB)"), "{line}");
        assert_eq!(f.metadata()["dfrt.kv_bytes.dummy"], "143769600");

        let off = (Policy::Dummy(DummySpec::parse("dummy:180,packing:off").unwrap()), Some(counts));
        assert_eq!(kv_footprint(&off.0, off.1, &cfg, 1560, 2, 21).unwrap().total_bytes, 271_564_800);

        // LongLive window 12 with 3 sinks, and a 240-frame run where full keeps growing.
        let w = (Policy::Window { window: 12, sink: 3 }, None);
        assert_eq!(kv_footprint(&w.0, w.1, &cfg, 1560, 2, 21).unwrap().total_bytes, 3_450_470_400);
        let long = kv_footprint(&w.0, w.1, &cfg, 1560, 2, 240).unwrap();
        assert_eq!(long.total_bytes, 3_450_470_400);
        assert_eq!(long.full_bytes, 69_009_408_000);
        assert_eq!(kv_footprint(&d.0, d.1, &cfg, 1560, 2, 240).unwrap().total_bytes, 415_334_400);
    }

    #[test]
    fn short_runs_and_long_context() {
        let cfg = wan();
        let counts = GroupCounts { sink: 100, neighbor: 80, dummy: 180 };
        // One chunk: calibration never happens; every head holds frames 0..2.
        let d = (Policy::Dummy(DummySpec::new(180)), None);
        let f = kv_footprint(&d.0, d.1, &cfg, 1560, 2, 3).unwrap();
        assert_eq!(f.groups[0].name, "uncalibrated");
        assert_eq!(f.total_bytes, 360 * 3 * HF);
        assert_eq!(f.total_bytes, f.full_bytes);
        assert!(kv_footprint(&d.0, d.1, &cfg, 1560, 2, 6).unwrap_err().to_string().contains("group counts are needed"));
        // chunks:2: neighbor heads hold 5 frames after HMA at step 1, then 6.
        let spec = DummySpec::parse("dummy:180,chunks:2").unwrap();
        let d2 = (Policy::Dummy(spec), Some(counts));
        let n = |frames| kv_footprint(&d2.0, d2.1, &cfg, 1560, 2, frames).unwrap().groups[1].frames_per_head;
        assert_eq!((n(6), n(9), n(30)), (5, 6, 6));
        assert_eq!(kv_footprint(&d2.0, d2.1, &cfg, 1560, 2, 30).unwrap().peak_bytes, 360 * 6 * HF);
        // ar-start 2: peak is every head with 1 + 3 frames.
        let d3 = (Policy::Dummy(DummySpec::parse("dummy:180,ar-start:2").unwrap()), Some(counts));
        assert_eq!(kv_footprint(&d3.0, d3.1, &cfg, 1560, 2, 21).unwrap().peak_bytes, 360 * 4 * HF);
        // Errors.
        assert!(kv_footprint(&Policy::Full, None, &cfg, 1560, 2, 20).is_err());
        assert!(kv_footprint(&Policy::Window { window: 3, sink: 3 }, None, &cfg, 1560, 2, 21).is_err());
        let bad = (Policy::Dummy(DummySpec::new(180)), Some(GroupCounts { sink: 1, neighbor: 1, dummy: 180 }));
        assert!(kv_footprint(&bad.0, bad.1, &cfg, 1560, 2, 21).unwrap_err().to_string().contains("do not fit"));
    }
}
