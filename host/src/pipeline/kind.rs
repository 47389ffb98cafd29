//! Which autoregressive pipeline a session runs, and its schedule: the one place where the
//! systems differ (the cache policy is separate, see [`crate::policy::Policy`]).
//!
//! | pipeline | schedule | passes per chunk |
//! |---|---|---|
//! | `self-forcing` (default; also LongLive, Causal-Forcing) | `[1000, 750, 500, 250]` warped, shift 5 → 1000, 937.5, 833.3, 625 | 4 denoising + t = 0 clean pass |
//! | `causvid` | `[1000, 757, 522]` **unwarped**, shift 8 (σ from the nearest grid point) | 3 denoising + t = 0 clean pass |
//! | `rolling` | `[1000, 800, 600, 400, 200]` warped, shift 5 → 1000, 952.4, 882.4, 769.2, 555.6 | per window of up to 5 chunks at staggered steps: 1 joint forward + a t = 0 cache pass of its oldest chunk ([`super::rolling`]) |
//!
//! TeaCache ([`super::teacache`]) composes with the chunk-wise pipelines and every cache policy.
//! Rolling Forcing brings its own cache (a 24-frame buffer with an un-roped anchor, attention
//! capped at 21 frames), so it runs with the default policy `full` only.
//!
//! ```
//! use dfrt::pipeline::kind::{Pipeline, PipelineSpec};
//!
//! let cv = PipelineSpec::parse("causvid", None)?;
//! assert_eq!(cv.pipeline, Pipeline::CausVid);
//! let s = cv.schedule();
//! assert_eq!(s.steps, vec![1000.0, 757.0, 522.0]);
//! // σ comes from the nearest point of the shift-8 grid, not t / 1000.
//! assert_eq!(s.sigma(757.0), 0.756_756_7);
//! assert_eq!(PipelineSpec::default().schedule().steps, vec![1000.0, 937.5, 833.333_3, 625.0]);
//! assert!(PipelineSpec::parse("causvid", Some(-1.0)).is_err());
//! assert!(PipelineSpec::parse("lcm", None).unwrap_err().to_string().contains("unknown pipeline"));
//! # Ok::<(), dfrt::Error>(())
//! ```

use super::Schedule;
use crate::{Error, Result};

/// CausVid's steps (`configs/wan_causal_dmd.yaml`, the trailing 0 dropped) and its shift,
/// hard-coded in its wrapper.
pub const CAUSVID_STEPS: [u32; 3] = [1000, 757, 522];
pub const CAUSVID_SHIFT: f32 = 8.0;
/// CausVid's KV cache holds 21 latent frames (`32760 = 21 × 1560` tokens), never evicting.
pub const CAUSVID_CACHE_FRAMES: usize = 21;

/// Rolling Forcing's steps (`configs/rolling_forcing_dmd.yaml`), warped with shift 5; the
/// window holds as many chunks as there are steps.
pub const ROLLING_STEPS: [u32; 5] = [1000, 800, 600, 400, 200];
pub const ROLLING_SHIFT: f32 = 5.0;

/// The autoregressive pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pipeline {
    /// Self-Forcing's `CausalInferencePipeline` (LongLive and Causal-Forcing run the same loop).
    #[default]
    SelfForcing,
    /// CausVid's `InferencePipeline`: 3 unwarped steps at shift 8, fixed 21-frame cache.
    CausVid,
    /// Rolling Forcing's `inference_rolling_forcing`: joint windows of staggered chunks.
    Rolling,
}

impl Pipeline {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "self-forcing" | "self_forcing" | "sf" => Ok(Pipeline::SelfForcing),
            "causvid" => Ok(Pipeline::CausVid),
            "rolling" | "rolling-forcing" => Ok(Pipeline::Rolling),
            _ => Err(Error::Input(format!("unknown pipeline `{s}` (expected self-forcing, causvid or rolling)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pipeline::SelfForcing => "self-forcing",
            Pipeline::CausVid => "causvid",
            Pipeline::Rolling => "rolling",
        }
    }

    /// The denoising schedule of the pipeline.
    pub fn schedule(self) -> Schedule {
        match self {
            Pipeline::SelfForcing => Schedule::official(),
            Pipeline::CausVid => Schedule::unwarped(CAUSVID_SHIFT, &CAUSVID_STEPS),
            Pipeline::Rolling => Schedule::new(ROLLING_SHIFT, &ROLLING_STEPS),
        }
    }

    /// The most frames a `full` cache may hold under this pipeline (None: no limit).
    pub fn max_full_frames(self) -> Option<usize> {
        match self {
            Pipeline::SelfForcing | Pipeline::Rolling => None,
            Pipeline::CausVid => Some(CAUSVID_CACHE_FRAMES),
        }
    }
}

/// A session's pipeline and the options that change its passes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PipelineSpec {
    pub pipeline: Pipeline,
    /// TeaCache threshold (`--teacache THRESHOLD`); None = off.
    pub teacache: Option<f64>,
}

impl PipelineSpec {
    pub fn parse(pipeline: &str, teacache: Option<f64>) -> Result<Self> {
        let s = PipelineSpec { pipeline: Pipeline::parse(pipeline)?, teacache };
        s.check()?;
        Ok(s)
    }

    pub fn check(&self) -> Result<()> {
        if self.teacache.is_some() && self.pipeline == Pipeline::Rolling {
            return Err(Error::Input("--teacache does not compose with --pipeline rolling: a window mixes timesteps, so the official t = 1000 / t = 0 rule has no meaning there".into()));
        }
        if let Some(t) = self.teacache {
            if !t.is_finite() || t <= 0.0 {
                return Err(Error::Input(format!(
                    "--teacache {t}: the threshold must be a positive number (the official value is 0.2)"
                )));
            }
        }
        Ok(())
    }

    pub fn schedule(&self) -> Schedule {
        self.pipeline.schedule()
    }
}
