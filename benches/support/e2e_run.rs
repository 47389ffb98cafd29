//! End-to-end runs for `benches/e2e.rs` (and its test in `tests/benches.rs`): one generation per
//! (resolution, policy) with synthetic weights, timed chunk by chunk.
//!
//! Counting: a chunk is 3 latent frames; one latent frame is 4 video frames (the Wan VAE's
//! temporal stride; its causal first frame decodes to 1, so 21 latent frames are 81 frames of
//! video, not 84: FPS here counts the steady 4 per latent frame). FPS = video frames / diffusion
//! time, where the diffusion time is the chunk loop only (5 forwards per chunk: 4 denoising
//! steps and the clean pass that writes the KV cache), without model loading, text encoding or
//! VAE decoding.

#![allow(dead_code)]

use std::time::Instant;

use dfrt::api::SessionOptions;
use dfrt::config::FRAMES_PER_CHUNK;
use dfrt::pipeline::{Graphs, Noise, Rng};
use dfrt::run::{ModelSource, Target};
use dfrt::{Error, ModelConfig, Result};

/// Video frames per latent frame (see the module doc).
pub const VIDEO_FRAMES_PER_LATENT: usize = 4;

/// A resolution: its latent size (video / 8) and a note on how it was chosen.
#[derive(Clone, Debug)]
pub struct Res {
    pub name: &'static str,
    pub lat_h: usize,
    pub lat_w: usize,
    pub note: &'static str,
}

impl Res {
    pub fn video(&self) -> (usize, usize) {
        (self.lat_h * 8, self.lat_w * 8)
    }

    pub fn parse(s: &str) -> Result<Res> {
        Ok(match s {
            "480p" => Res { name: "480p", lat_h: 60, lat_w: 104, note: "832x480, the Self-Forcing / Wan2.1 1.3B size" },
            "720p" => Res { name: "720p", lat_h: 90, lat_w: 160, note: "1280x720" },
            // 1080 / 8 = 135 latent rows, not a multiple of the 2x2 patch. Wan2.1 has no 1080p
            // size; the nearest valid height is 136 latent rows = 1088 pixels (1080 padded to
            // 16, as video codecs store 1080p).
            "1080p" => Res {
                name: "1080p",
                lat_h: 136,
                lat_w: 240,
                note: "1920x1088: 1080/8 = 135 is not patchable (2x2); nearest valid",
            },
            "tiny" => Res { name: "tiny", lat_h: 8, lat_w: 12, note: "tiny (simulator/CPU check, not a real size)" },
            _ => {
                // `HxW` latent sizes for experiments.
                let (h, w) = s.split_once('x').ok_or_else(|| {
                    Error::Input(format!("unknown resolution `{s}` (480p, 720p, 1080p, tiny or HxW latent)"))
                })?;
                let p = |v: &str| v.parse::<usize>().map_err(|_| Error::Input(format!("bad latent size `{s}`")));
                Res { name: "custom", lat_h: p(h)?, lat_w: p(w)?, note: "custom latent size" }
            }
        })
    }
}

/// One measured generation.
#[derive(Clone, Debug)]
pub struct E2eRow {
    pub res: String,
    pub lat_h: usize,
    pub lat_w: usize,
    pub policy: String,
    pub chunks: usize,
    pub latent_frames: usize,
    pub video_frames: usize,
    /// Diffusion time (the chunk loop).
    pub secs: f64,
    pub chunk_ms: Vec<f64>,
    /// KV cache bytes allocated at the end, and the policy's accounting (with `full`'s).
    pub kv_bytes: usize,
    pub kv_policy_bytes: u64,
    pub kv_full_bytes: u64,
    /// Device allocations during the chunk loop (must be 0 on the GPU path) and heap peak.
    pub loop_allocs: Option<u64>,
    pub heap_peak: Option<usize>,
    /// Whether the denoising forwards ran as recorded graphs (None: the backend has none).
    pub graphs: Option<bool>,
    /// TeaCache's threshold (None: off) and the denoising forwards it skipped.
    pub teacache: Option<f64>,
    pub skipped_forwards: usize,
}

impl E2eRow {
    pub fn fps(&self) -> f64 {
        self.video_frames as f64 / self.secs
    }
    /// Mean ms per chunk after the first (which carries one-time costs), or the first alone.
    pub fn steady_ms(&self) -> f64 {
        let rest = &self.chunk_ms[1.min(self.chunk_ms.len() - 1)..];
        rest.iter().sum::<f64>() / rest.len() as f64
    }
}

/// The policy names of the bench, for a config: `dummy:180` is half the heads of the 1.3B
/// model; a smaller model gets half of its own heads (`dummy:N` must fit the model).
pub fn default_policies(cfg: &ModelConfig) -> Vec<String> {
    let half = cfg.num_layers * cfg.num_heads / 2;
    vec!["full".into(), "window:12,sink:3".into(), format!("dummy:{half}")]
}

/// What one e2e row runs: the policy, chunks, graphs or direct launches (where the backend
/// has graphs), and TeaCache's threshold (None: off; TeaCache runs direct launches).
#[derive(Clone, Debug)]
pub struct RunSpec<'a> {
    pub policy: &'a str,
    pub chunks: usize,
    pub graphs: Graphs,
    pub teacache: Option<f64>,
}

/// Generates `spec.chunks` chunks at `res` under `spec.policy` on a fresh run of `target`
/// (opened by `dfrt::run::open`, as `dfrt generate` does).
pub fn run_one(target: &Target, model: &ModelSource, res: &Res, spec: &RunSpec) -> Result<E2eRow> {
    let cfg = &model.cfg;
    let (policy, chunks) = (spec.policy, spec.chunks);
    let frames = chunks * FRAMES_PER_CHUNK;
    let mut opts = SessionOptions::parse(policy, res.lat_h, res.lat_w, Some(frames), cfg)?;
    opts.graphs = spec.graphs;
    opts.pipeline.teacache = spec.teacache;
    let context = Rng::new(7).normals(cfg.text_len * cfg.text_dim);
    let mut s = dfrt::run::open(target, model, &opts, &context, cfg.text_len, Noise::Seeded(Rng::new(1)))?;
    let a0 = s.device_stats().map(|d| d.allocations);
    let t0 = Instant::now();
    let mut chunk_ms = Vec::new();
    while !s.done() {
        let tc = Instant::now();
        let x = s.next_chunk(&mut |_| {})?;
        chunk_ms.push(tc.elapsed().as_secs_f64() * 1e3);
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::kernel_fault(
                "e2e",
                format!(
                    "e2e {} {}: chunk {} latent element {i} is {}",
                    res.name,
                    opts.policy.name(),
                    chunk_ms.len() - 1,
                    x[i]
                ),
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let stats = s.device_stats();
    let loop_allocs = match (a0, stats) {
        (Some(a), Some(b)) => Some(b.allocations - a),
        _ => None,
    };
    let foot = s.kv_footprint()?;
    Ok(E2eRow {
        res: res.name.to_string(),
        lat_h: res.lat_h,
        lat_w: res.lat_w,
        policy: opts.policy.name(),
        chunks,
        latent_frames: frames,
        video_frames: frames * VIDEO_FRAMES_PER_LATENT,
        secs,
        chunk_ms,
        kv_bytes: s.kv_bytes(),
        kv_policy_bytes: foot.total_bytes,
        kv_full_bytes: foot.full_bytes,
        loop_allocs,
        heap_peak: stats.map(|d| d.heap_peak),
        graphs: s.supports_graphs().then_some(s.graphs()),
        teacache: spec.teacache,
        skipped_forwards: s.teacache().map_or(0, |p| p.skipped(chunks).len()),
    })
}
