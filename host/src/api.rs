//! The embedding API: load a model, open a session, generate chunk by chunk.
//!
//! `dfrt generate` and the C API (crate `dfrt-capi`) both open sessions through
//! [`LoadedModel::session`], so the same model, options, context and noise give the same
//! latents bit for bit whichever front end drives them.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("dfrt-doc-api-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("tiny.safetensors");
//! # let cfg = dfrt::ModelConfig::preset("tiny").unwrap();
//! # dfrt_weights::synth_checkpoint(&path, &cfg, 0, dfrt::checkpoint::DType::F32).unwrap();
//! use dfrt::api::{CpuModel, SessionOptions};
//! use dfrt::backend::Precision;
//! use dfrt::pipeline::Noise;
//!
//! // A tiny synthetic model, e.g. from `dfrt-weights synth --preset tiny -o tiny.safetensors`.
//! let model = CpuModel::cpu(&path, Precision::F32)?;
//! let opts = SessionOptions::parse("window:6,sink:1", 8, 8, Some(6), &model.cfg)?;
//! // A text embedding [rows, text_dim]; a real one comes from the text encoder.
//! let rows = 4;
//! let context: Vec<f32> = (0..rows * model.cfg.text_dim).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut session = model.session(&opts, &context, rows, Noise::seeded(42))?;
//! let mut latents = Vec::new();
//! while !session.done() {
//!     latents.extend(session.next_chunk(&mut |_progress| {})?);
//! }
//! assert_eq!(latents.len(), opts.latent(&model.cfg).frame_len() * 6);
//! assert!(latents.iter().all(|x| x.is_finite()));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Precision};
use crate::checkpoint::TensorFile;
use crate::config::FRAMES_PER_CHUNK;
use crate::dummy::HeadProgram;
use crate::model::Model;
use crate::pipeline::{Graphs, Latent, Noise, PipelineSpec, Rng, Session};
use crate::policy::Policy;
use crate::{Error, ModelConfig, Result};

/// What to tell a user whose `--model` is not a usable checkpoint.
pub const CHECKPOINT_HINT: &str =
    "make a test model with `dfrt-weights synth --preset tiny -o FILE`, or convert real Wan2.1 weights with `dfrt-weights convert`";

/// Opens a runtime checkpoint and reads its config. Errors say what to do next: a missing
/// file or a file that is not a runtime checkpoint points at `dfrt-weights synth`/`convert`.
///
/// ```
/// let e = dfrt::api::open_checkpoint("/nonexistent/model.safetensors").err().unwrap();
/// assert!(e.to_string().contains("dfrt-weights synth"), "{e}");
/// ```
pub fn open_checkpoint(path: impl AsRef<Path>) -> Result<(TensorFile, ModelConfig)> {
    let path = path.as_ref();
    let hint = |e: Error| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Checkpoint { path: path.display().to_string(), msg: format!("no such file; {CHECKPOINT_HINT}") }
        }
        Error::Checkpoint { path, msg } if !msg.contains("dfrt-weights") => {
            Error::Checkpoint { path, msg: format!("{msg}; expected a dfrt runtime checkpoint: {CHECKPOINT_HINT}") }
        }
        e => e,
    };
    let f = TensorFile::open(path).map_err(hint)?;
    if f.metadata.contains_key(crate::text::t5::T5_CONFIG_KEY)
        && !f.metadata.contains_key(crate::checkpoint::CONFIG_KEY)
    {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            msg: "is a umT5 text-encoder checkpoint, not a DiT: give it as --text-encoder (the DiT checkpoint goes in --model)".into(),
        });
    }
    let cfg = f.config().map_err(|e| match e {
        Error::Config(m) => Error::Checkpoint {
            path: path.display().to_string(),
            msg: format!("bad `dfrt.config` metadata ({m}); {CHECKPOINT_HINT}"),
        },
        e => e,
    })?;
    Ok((f, cfg))
}

/// A model loaded onto a backend, ready to open sessions. Immutable after loading, so it can
/// be shared (`Arc`) by sessions on several threads.
pub struct LoadedModel<B: Backend> {
    /// The checkpoint it was loaded from.
    pub path: PathBuf,
    /// The config stored in the checkpoint.
    pub cfg: ModelConfig,
    /// The backend holding the weights; sessions run on it.
    pub be: Arc<B>,
    /// The weights on `be`.
    pub model: Arc<Model<B>>,
}

/// A model on the CPU reference backend.
pub type CpuModel = LoadedModel<CpuBackend>;

impl CpuModel {
    /// Loads a runtime checkpoint for the CPU backend at `precision`.
    pub fn cpu(path: impl AsRef<Path>, precision: Precision) -> Result<Self> {
        Self::load(Arc::new(CpuBackend::new(precision)), path)
    }
}

impl<B: Backend + 'static> LoadedModel<B> {
    /// Loads a runtime checkpoint onto `be`. A checkpoint whose tensors do not fit its config
    /// is reported as a checkpoint error with a hint.
    pub fn load(be: Arc<B>, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (f, cfg) = open_checkpoint(path)?;
        Self::load_file(be, path, &f, cfg)
    }

    /// Loads the tensors of `f` (opened from `path`) for `cfg` onto `be`.
    pub(crate) fn load_file(be: Arc<B>, path: &Path, f: &TensorFile, cfg: ModelConfig) -> Result<Self> {
        let model = Model::load(&*be, f, &cfg).map_err(|e| match e {
            Error::Tensor { .. } => Error::Checkpoint {
                path: path.display().to_string(),
                msg: format!("{e}; its tensors do not match its own config (a truncated or hand-edited file?): {CHECKPOINT_HINT}"),
            },
            e => e,
        })?;
        Ok(LoadedModel { path: path.to_path_buf(), cfg, be, model: Arc::new(model) })
    }

    /// Opens a session: `context` is the text embedding `[rows, text_dim]`, `noise` the source
    /// of every random draw ([`Noise::seeded`] or [`noise_from_draws`]).
    pub fn session(&self, opts: &SessionOptions, context: &[f32], rows: usize, noise: Noise) -> Result<Session<B>> {
        opts.check(&self.cfg)?;
        let latent = opts.latent(&self.cfg);
        let mut s = Session::new(
            self.model.clone(),
            self.be.clone(),
            opts.pipeline,
            opts.policy.clone(),
            latent,
            opts.frames,
            context,
            rows,
            noise,
        )?;
        s.set_graphs(opts.graphs);
        s.set_global_sink(opts.global_sink)?;
        if let Some(n) = opts.recache_frames {
            s.set_recache_frames(n)?;
        }
        if let Some(d) = s.dummy_mut() {
            d.set_seed(opts.seed);
            d.set_sampled_rows(opts.sampled_rows.clone())?;
            if let Some(p) = &opts.heads {
                d.set_program(p.clone())?;
            }
        }
        Ok(s)
    }
}

/// Everything about a session except its inputs (context and noise).
///
/// ```
/// use dfrt::api::SessionOptions;
/// use dfrt::dummy::{DummySpec, Group, HeadProgram};
/// use dfrt::ModelConfig;
///
/// let cfg = ModelConfig::preset("tiny")?;
/// let opts = SessionOptions::parse("full", 16, 8, Some(9), &cfg)?;
/// assert_eq!(opts.latent(&cfg).frame_len(), 16 * 16 * 8);
/// opts.check(&cfg)?;
/// // The checks `session` would make, before any work: 9 frames are 3 chunks, 10 are not.
/// assert!(SessionOptions { frames: Some(10), ..opts.clone() }.check(&cfg).is_err());
/// assert!(SessionOptions::parse("full", 16, 8, None, &cfg)?.check(&cfg).is_err());
/// assert!(SessionOptions::parse("dummy:9", 16, 8, Some(9), &cfg).is_err()); // 4 heads in all
///
/// // A reused head program must fit the model and the dummy budget of the policy.
/// let scores = vec![[vec![0.5, 0.2], vec![0.3, 0.6], vec![0.2, 0.2]]; 2];
/// let program = HeadProgram::from_calibration(&cfg, DummySpec::new(2), &scores)?;
/// assert_eq!(program.assignment().counts().get(Group::Dummy), 2);
/// let mut opts = SessionOptions::parse("dummy:2", 16, 8, Some(9), &cfg)?;
/// opts.heads = Some(program.clone());
/// opts.check(&cfg)?;
/// assert!(SessionOptions { policy: dfrt::policy::Policy::parse("dummy:1")?, ..opts.clone() }.check(&cfg).is_err());
/// assert!(SessionOptions { policy: dfrt::policy::Policy::Full, ..opts }.check(&cfg).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The KV-cache policy ([`Policy::parse`]).
    pub policy: Policy,
    /// Latent height (latent pixels, a multiple of the patch size; 60 for 480p).
    pub height: usize,
    /// Latent width (latent pixels, a multiple of the patch size; 104 for 832 pixels).
    pub width: usize,
    /// Latent frames in all, a multiple of 3; None = unbounded (bounded policies only).
    pub frames: Option<usize>,
    /// Seed of Dummy Forcing's query-row sampler (the CLI passes `--seed`, which also seeds
    /// the noise).
    pub seed: u64,
    /// Dummy Forcing: a head program to reuse (calibration is skipped).
    pub heads: Option<HeadProgram>,
    /// Dummy Forcing: stored query rows per layer (`sampled_rows.{layer}` of an inputs file).
    pub sampled_rows: BTreeMap<usize, Vec<i64>>,
    /// Run the forwards as recorded graphs where the backend supports them (GPU backends; see
    /// [`Session::set_graphs`]). Same latents either way.
    pub graphs: Graphs,
    /// The pipeline (Self-Forcing, CausVid) and TeaCache ([`PipelineSpec`]).
    pub pipeline: PipelineSpec,
    /// Frames a prompt switch re-runs ([`Session::set_recache_frames`]); None: the policy's
    /// default (12 under `dummy`, the window under `window`).
    pub recache_frames: Option<usize>,
    /// LongLive's `global_sink` for prompt switches under `window` ([`Session::set_global_sink`]).
    pub global_sink: bool,
}

impl SessionOptions {
    /// Options for `policy` (checked when a session opens): row seed 0, no head program or
    /// stored rows, graphs where supported, the default pipeline.
    pub fn new(policy: Policy, height: usize, width: usize, frames: Option<usize>) -> Self {
        SessionOptions {
            policy,
            height,
            width,
            frames,
            seed: 0,
            heads: None,
            sampled_rows: BTreeMap::new(),
            graphs: Graphs::On,
            pipeline: PipelineSpec::default(),
            recache_frames: None,
            global_sink: false,
        }
    }

    /// [`SessionOptions::new`] with a parsed policy (checked against `cfg`).
    pub fn parse(policy: &str, height: usize, width: usize, frames: Option<usize>, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self::new(Policy::parse_for(policy, cfg)?, height, width, frames))
    }

    /// Checks the options against a model without doing any work (the checks
    /// the session makes when it opens): policy, latent size, frame count.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        crate::pipeline::check_geometry(cfg, &self.policy, self.latent(cfg), self.frames)?;
        if let Some(p) = &self.heads {
            let Policy::Dummy(spec) = &self.policy else {
                return Err(Error::Policy(format!(
                    "a head program needs a dummy policy (dummy:N), not `{}`",
                    self.policy.name()
                )));
            };
            p.validate_for(cfg)?;
            p.check_spec(spec)?;
        }
        crate::pipeline::check_recache(&self.policy, self.recache_frames, self.global_sink)
    }

    /// The latent geometry: the model's input channels at this height and width.
    pub fn latent(&self, cfg: &ModelConfig) -> Latent {
        Latent { channels: cfg.in_dim, height: self.height, width: self.width }
    }
}

impl Noise {
    /// Draws from the seeded generator ([`Rng`]).
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded(Rng::new(seed))
    }
}

/// Values one chunk draws: its initial noise and 3 re-noises, each `[3, C, H, W]`.
pub fn draws_per_chunk(latent: &Latent) -> usize {
    (1 + 3) * FRAMES_PER_CHUNK * latent.frame_len()
}

/// Noise given as the stream of draws in the order a seeded session makes them: per chunk,
/// its initial noise, then the re-noise of denoising steps 0, 1, 2, each `[3, C, H, W]`.
/// `draws` must hold exactly `frames / 3 ·` [`draws_per_chunk`] values. Filling it with
/// `Rng::new(s).normals(len)` gives the same latents as [`Noise::seeded`]`(s)` (the chunk size
/// is even, so the pairwise Box–Muller stream splits cleanly).
///
/// ```
/// use dfrt::api::{draws_per_chunk, noise_from_draws};
/// use dfrt::pipeline::{Latent, Noise, Rng};
///
/// let latent = Latent { channels: 16, height: 8, width: 8 };
/// let len = 2 * draws_per_chunk(&latent); // 6 frames = 2 chunks
/// let draws = Rng::new(42).normals(len);
/// let Noise::Given { noise, renoise } = noise_from_draws(&draws, 6, &latent)? else { unreachable!() };
/// assert_eq!(noise.len(), 6 * latent.frame_len());
/// assert_eq!((renoise.len(), renoise[0].len()), (2, 3));
/// assert!(noise_from_draws(&draws[1..], 6, &latent).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
pub fn noise_from_draws(draws: &[f32], frames: usize, latent: &Latent) -> Result<Noise> {
    if frames == 0 || !frames.is_multiple_of(FRAMES_PER_CHUNK) {
        return Err(Error::Input(format!(
            "given noise needs a frame count that is a positive multiple of {FRAMES_PER_CHUNK}, got {frames}"
        )));
    }
    let per = draws_per_chunk(latent);
    let chunks = frames / FRAMES_PER_CHUNK;
    if draws.len() != chunks * per {
        return Err(Error::Input(format!(
            "noise holds {} values, expected {} ({chunks} chunks × 4 draws × [3, {}, {}, {}])",
            draws.len(),
            chunks * per,
            latent.channels,
            latent.height,
            latent.width
        )));
    }
    if let Some(i) = draws.iter().position(|x| !x.is_finite()) {
        return Err(Error::Input(format!("noise value {i} is {} (not finite)", draws[i])));
    }
    let n = per / 4;
    let mut noise = Vec::with_capacity(frames * latent.frame_len());
    let mut renoise = Vec::with_capacity(chunks);
    for c in draws.chunks_exact(per) {
        noise.extend_from_slice(&c[..n]);
        renoise.push((1..4).map(|s| c[s * n..(s + 1) * n].to_vec()).collect());
    }
    Ok(Noise::Given { noise, renoise })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_split_into_noise_and_renoise() {
        let lat = Latent { channels: 2, height: 2, width: 2 };
        let per = draws_per_chunk(&lat);
        assert_eq!(per, 4 * 24);
        let v: Vec<f32> = (0..2 * per).map(|i| i as f32).collect();
        let Noise::Given { noise, renoise } = noise_from_draws(&v, 6, &lat).unwrap() else { panic!("given") };
        assert_eq!(noise[..24], v[..24]);
        assert_eq!(noise[24..], v[per..per + 24]);
        assert_eq!(renoise[1][2], v[per + 72..per + 96]);
        assert!(noise_from_draws(&v[1..], 6, &lat).is_err());
        assert!(noise_from_draws(&v, 5, &lat).is_err());
        let mut bad = v.clone();
        bad[7] = f32::NAN;
        assert!(noise_from_draws(&bad, 6, &lat).err().unwrap().to_string().contains("value 7"));
    }
}
