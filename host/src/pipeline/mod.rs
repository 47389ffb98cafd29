//! The Self-Forcing inference loop (official `CausalInferencePipeline.inference`), chunk by
//! chunk: 4 denoising steps at the warped timesteps, flow → x0, re-noising between steps, and
//! the t = 0 clean pass that writes the KV cache.
//!
//! The denoising timesteps are Self-Forcing's `[1000, 750, 500, 250]` warped by the shifted
//! flow-matching schedule (shift 5):
//!
//! ```
//! use dfrt::pipeline::Schedule;
//!
//! let s = Schedule::official();
//! assert_eq!(s.steps, vec![1000.0, 937.5, 833.333_3, 625.0]);
//! // σ(t) = t / 1000 on the schedule's own timesteps.
//! let sigmas: Vec<f32> = s.steps.iter().map(|&t| s.sigma(t)).collect();
//! assert_eq!(sigmas, vec![1.0, 0.9375, 0.833_333_3, 0.625]);
//! // Without the shift the warp is the identity.
//! assert_eq!(Schedule::new(1.0, &[1000, 500]).steps, vec![1000.0, 500.0]);
//! ```
//!
//! A [`Session`] on the CPU backend, opened as every front end opens one (a checked
//! [`crate::run::ModelSource`] and [`crate::api::SessionOptions`]), here under Dummy Forcing
//! with one dummy head: the heads are calibrated in the clean pass of chunk 1, after which the
//! cache is regrouped.
//!
//! ```
//! use dfrt::api::SessionOptions;
//! use dfrt::backend::Precision;
//! use dfrt::checkpoint::DType;
//! use dfrt::pipeline::{Noise, Rng};
//! use dfrt::run::ModelSource;
//! use dfrt::ModelConfig;
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-session-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("tiny.safetensors");
//! let cfg = ModelConfig::preset("tiny")?;
//! dfrt_weights::synth_checkpoint(&path, &cfg, 3, DType::F32)?;
//!
//! let model = ModelSource::open(&path)?.cpu_model(Precision::F32)?;
//! let opts = SessionOptions::parse("dummy:1", 4, 6, Some(6), &cfg)?;
//! let latent = opts.latent(&cfg);
//! let rows = 5;
//! let context = Rng::new(9).normals(rows * cfg.text_dim);
//! let mut session = model.session(&opts, &context, rows, Noise::seeded(4))?;
//!
//! let first = session.next_chunk(&mut |_| {})?;
//! assert_eq!(first.len(), 3 * latent.frame_len());
//! assert!(session.dummy().unwrap().assignment().is_none()); // not calibrated yet
//! let second = session.next_chunk(&mut |_| {})?;
//! assert!(second.iter().chain(&first).all(|x| x.is_finite()));
//! assert!(session.done());
//! assert_eq!(session.dummy().unwrap().assignment().unwrap().counts().dummy, 1);
//! // Asking for more than the frame count is an error, not a panic.
//! assert!(session.next_chunk(&mut |_| {}).is_err());
//! // Under `dummy` the session's one hook slot holds Dummy Forcing: a second hook is refused.
//! assert!(session.set_hook(Box::new(dfrt::model::NoHook)).is_err());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

pub mod inputs;
pub mod kind;
pub mod rng;
pub mod rolling;
pub mod schedule;
pub mod teacache;

mod graphs;
mod switch;

pub use switch::check_recache;

use std::sync::Arc;

use half::bf16;

use crate::backend::{Backend, Precision};
use crate::cache::KvCache;
use crate::config::FRAMES_PER_CHUNK;
use crate::dummy::{kv_footprint, DummyForcing, KvFootprint};
use crate::model::{ForwardHook, Model, NoHook, PassInfo, PassKind, Residual, Taps, TextState, TimeEmbedding};
use crate::policy::{GroupSpec, Policy};
use crate::{Error, Result};

pub use graphs::Graphs;
use graphs::{GraphPasses, Recorded};
pub use kind::{Pipeline, PipelineSpec};
pub use rng::Rng;
pub use schedule::{linspace_f32, Schedule, DENOISING_STEPS, NUM_TRAIN_TIMESTEPS, TIMESTEP_SHIFT};
pub use teacache::TeaPlan;

/// Frames a prompt switch re-runs at t = 0 by default (the official interactive configs'
/// `model_kwargs.local_attn_size`).
pub const RECACHE_FRAMES: usize = 12;

/// Where the random tensors come from.
pub enum Noise {
    /// Given tensors (`--inputs`): `noise` `[F, C, H, W]` and `renoise[c][s]` `[3, C, H, W]`.
    Given { noise: Vec<f32>, renoise: Vec<Vec<Vec<f32>>> },
    /// Drawn from a seeded [`Rng`]: per chunk, first its initial noise, then the re-noise of
    /// steps 0, 1, 2, each as standard normals in `[3, C, H, W]` order.
    Seeded(Rng),
}

/// Latent geometry of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latent {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Latent {
    pub fn frame_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Progress report, once per forward.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub pass: PassInfo,
    pub chunks: Option<usize>,
}

/// Checks a session's shape against the model before any work: latent channels and size,
/// the frame count, and that the policy can cache that many frames (`full` needs a count).
///
/// ```
/// use dfrt::policy::Policy;
/// use dfrt::pipeline::{check_geometry, Latent};
/// let cfg = dfrt::ModelConfig::preset("tiny").unwrap();
/// let ok = Latent { channels: 16, height: 8, width: 12 };
/// assert!(check_geometry(&cfg, &Policy::Full, ok, Some(9)).is_ok());
/// // Odd sizes do not split into 2×2 patches; `full` must know how many frames to keep.
/// assert!(check_geometry(&cfg, &Policy::Full, Latent { height: 7, ..ok }, Some(9)).is_err());
/// assert!(check_geometry(&cfg, &Policy::Full, ok, None).is_err());
/// assert!(check_geometry(&cfg, &Policy::parse("window:6,sink:1").unwrap(), ok, None).is_ok());
/// ```
pub fn check_geometry(c: &crate::ModelConfig, policy: &Policy, latent: Latent, frames: Option<usize>) -> Result<()> {
    if latent.channels != c.in_dim {
        return Err(Error::Input(format!("latent has {} channels, the model takes {}", latent.channels, c.in_dim)));
    }
    let [_, ph, pw] = c.patch_size;
    if latent.height == 0 || latent.width == 0 || !latent.height.is_multiple_of(ph) || !latent.width.is_multiple_of(pw)
    {
        return Err(Error::Input(format!(
            "latent size {}×{} must be a positive multiple of the patch {ph}×{pw}",
            latent.height, latent.width
        )));
    }
    if let Some(f) = frames {
        if f == 0 || f % FRAMES_PER_CHUNK != 0 {
            return Err(Error::Input(format!(
                "{f} frames is not a positive multiple of the chunk ({FRAMES_PER_CHUNK} latent frames)"
            )));
        }
    }
    policy.validate(c)?;
    policy.initial_groups(c.num_heads, frames)?;
    Ok(())
}

/// A generation session: the state the official pipeline keeps between chunks (KV cache, text
/// cache, noise position). [`Session::next_chunk`] produces 3 latent frames at a time, so a C
/// API can drive it chunk by chunk.
pub struct Session<B: Backend> {
    model: Arc<Model<B>>,
    be: Arc<B>,
    schedule: Schedule,
    cache: KvCache<B::Tensor>,
    text: TextState<B::Tensor>,
    latent: Latent,
    policy: Policy,
    /// Total frames, when known (needed for `full`, and to stop).
    frames: Option<usize>,
    noise: Noise,
    chunk: usize,
    /// The one forward hook: none, the caller's, or (under `dummy`) Dummy Forcing itself.
    hook: HookSlot<B>,
    /// When set, records `xt/flow/x0.{c}.{s}` and the first forward's intermediates
    /// ([`Session::record_taps`]).
    record: Option<Taps>,
    /// Whether forwards run as recorded graphs ([`Session::set_graphs`]).
    graphs: bool,
    /// The pipeline and its options (given when the session opens).
    spec: PipelineSpec,
    /// TeaCache's decisions for every pass, planned once when the session opens.
    tea: Option<TeaPlan>,
    /// The residual of the last computed forward (TeaCache on).
    tea_residual: Option<B::Tensor>,
    /// Rolling Forcing's window state.
    rolling: Option<rolling::RollingRun>,
    /// The newest generated latent frames (at most `recache_frames`), for a prompt switch's
    /// recache pass.
    history: std::collections::VecDeque<Vec<f32>>,
    /// Frames a prompt switch re-runs (the official `model_kwargs.local_attn_size`: 12 under
    /// `dummy`, the window under `window`).
    recache_frames: usize,
    /// LongLive's `global_sink`: a switch under `window` keeps the sink frames' K/V.
    global_sink: bool,
    recaches: usize,
    /// Which of this chunk's passes replay graphs (decided when the chunk starts).
    chunk_graphs: GraphPasses,
    /// The denoising forward's graph: this chunk's, or (between chunks) the next chunk's,
    /// recorded at the end of this one while the device runs the clean pass.
    denoise_graph: Option<Recorded<B>>,
    /// This chunk's clean pass, recorded while the device runs its last denoising step.
    clean_graph: Option<Recorded<B>>,
    /// The last clean pass's graph: kept until its replay has surely run (the next chunk's
    /// first download), since the device may still be executing it.
    last_clean: Option<Recorded<B>>,
}

/// A session's forward hook. Under the `dummy` policy the hook is Dummy Forcing's own state,
/// so there is no second slot a caller's hook could sit in unused.
enum HookSlot<B: Backend> {
    None(NoHook),
    Custom(Box<dyn ForwardHook<B> + Send>),
    Dummy(Box<DummyForcing>),
}

impl<B: Backend> HookSlot<B> {
    fn get(&self) -> &dyn ForwardHook<B> {
        match self {
            HookSlot::None(h) => h,
            HookSlot::Custom(h) => h.as_ref(),
            HookSlot::Dummy(d) => d.as_ref(),
        }
    }
    fn get_mut(&mut self) -> &mut dyn ForwardHook<B> {
        match self {
            HookSlot::None(h) => h,
            HookSlot::Custom(h) => h.as_mut(),
            HookSlot::Dummy(d) => d.as_mut(),
        }
    }
    fn dummy(&self) -> Option<&DummyForcing> {
        match self {
            HookSlot::Dummy(d) => Some(d),
            _ => None,
        }
    }
    fn dummy_mut(&mut self) -> Option<&mut DummyForcing> {
        match self {
            HookSlot::Dummy(d) => Some(d),
            _ => None,
        }
    }
}

impl<B: Backend + 'static> Session<B> {
    /// `context` is `[rows, text_dim]`. `frames` must be a multiple of 3 (None = unbounded,
    /// only with a bounded policy and seeded noise). Crate-private: sessions open through
    /// [`crate::api::LoadedModel::session`] (what [`crate::run::open`] calls), which applies
    /// [`crate::api::SessionOptions`] in one place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: Arc<Model<B>>,
        be: Arc<B>,
        spec: PipelineSpec,
        policy: Policy,
        latent: Latent,
        frames: Option<usize>,
        context: &[f32],
        context_rows: usize,
        noise: Noise,
    ) -> Result<Self> {
        let c = &model.cfg;
        check_geometry(c, &policy, latent, frames)?;
        spec.check()?;
        let schedule = spec.schedule();
        if let (Policy::Full, Some(max), Some(f)) = (&policy, spec.pipeline.max_full_frames(), frames) {
            if f > max {
                return Err(Error::Input(format!("{f} frames: the {} pipeline's cache holds {max} latent frames (it never evicts); generate at most {max}", spec.pipeline.name())));
            }
        }
        let renoises = schedule.steps.len().saturating_sub(1);
        let [_, ph, pw] = c.patch_size;
        if let Noise::Given { noise, renoise } = &noise {
            let f = frames.ok_or_else(|| Error::Input("given noise needs a frame count".into()))?;
            if noise.len() < f * latent.frame_len() {
                return Err(Error::Input(format!(
                    "noise holds {} frames, {f} requested",
                    noise.len() / latent.frame_len()
                )));
            }
            if renoise.len() < f / FRAMES_PER_CHUNK
                || renoise
                    .iter()
                    .any(|r| r.len() < renoises || r.iter().any(|x| x.len() != FRAMES_PER_CHUNK * latent.frame_len()))
            {
                return Err(Error::Input("re-noise tensors missing or misshapen".into()));
            }
        }
        let dummy = match &policy {
            Policy::Dummy(spec) => Some(DummyForcing::new(c, *spec)?),
            _ => None,
        };
        let tpf = (latent.height / ph) * (latent.width / pw);
        let (cache, rolling) = if spec.pipeline == Pipeline::Rolling {
            if policy != Policy::Full {
                return Err(Error::Policy(format!("--pipeline rolling keeps its own cache (24-frame buffer, anchor chunk, 21-frame attention); run it with the default policy `full`, not `{}`", policy.name())));
            }
            let f = frames.ok_or_else(|| Error::Input("--pipeline rolling needs a frame count".into()))?;
            let cache = KvCache::new_rolling(c.num_layers, c.num_heads, c.head_dim(), tpf, be.precision())?;
            (cache, Some(rolling::RollingRun { window: 0, noisy: vec![None; f / FRAMES_PER_CHUNK] }))
        } else {
            let groups = policy.initial_groups(c.num_heads, frames)?;
            (KvCache::new(c.num_layers, c.num_heads, c.head_dim(), tpf, be.precision(), &groups)?, None)
        };
        let text = model.embed_text(&be, context, context_rows)?;
        be.status()?;
        let recache_frames = match policy {
            Policy::Window { window, .. } => window,
            _ => RECACHE_FRAMES,
        };
        let graphs = be.supports_graphs() && spec.teacache.is_none() && rolling.is_none();
        let tea = match spec.teacache {
            Some(th) => Some(Self::plan_teacache(&model, &be, &schedule, th)?),
            None => None,
        };
        Ok(Session {
            model,
            be,
            schedule,
            cache,
            text,
            latent,
            policy,
            frames,
            noise,
            chunk: 0,
            hook: match dummy {
                Some(d) => HookSlot::Dummy(Box::new(d)),
                None => HookSlot::None(NoHook),
            },
            record: None,
            graphs,
            spec,
            tea,
            tea_residual: None,
            rolling,
            history: Default::default(),
            recache_frames,
            global_sink: false,
            recaches: 0,
            chunk_graphs: GraphPasses { denoise: false, clean: false },
            denoise_graph: None,
            clean_graph: None,
            last_clean: None,
        })
    }

    /// TeaCache's decisions for every pass of the video, from `e0` at each of the chunk's
    /// timesteps (the denoising steps, then 0): computed and downloaded once, here.
    fn plan_teacache(model: &Model<B>, be: &B, schedule: &Schedule, threshold: f64) -> Result<TeaPlan> {
        let ts: Vec<f32> = schedule.steps.iter().copied().chain([0.0]).collect();
        let mut passes = Vec::new();
        for t in ts {
            let e0 = be.download(&model.time_embedding(be, t, FRAMES_PER_CHUNK, None).e0);
            passes.push((t, e0));
        }
        be.status()?;
        Ok(TeaPlan::new(threshold, &passes))
    }

    /// The pipeline and its options.
    pub fn pipeline(&self) -> PipelineSpec {
        self.spec
    }

    /// Forwards a run of `frames` frames takes: per chunk the steps and a clean pass, or per
    /// Rolling Forcing window one forward and a cache pass.
    pub fn forwards_for(&self, frames: usize) -> usize {
        let (chunks, steps) = (frames / FRAMES_PER_CHUNK, self.schedule.steps.len());
        if self.rolling.is_some() {
            2 * (chunks + steps - 1)
        } else {
            chunks * (steps + 1)
        }
    }

    /// TeaCache's plan (None when off): which passes skip the blocks.
    pub fn teacache(&self) -> Option<&TeaPlan> {
        self.tea.as_ref()
    }

    /// Runs every forward as a recorded graph (on by default where the backend supports
    /// graphs: a CUDA graph on `cuda`, a recorded op list on `sim`, both once the memory plan
    /// is reserved), or as direct launches. The latents are the same bit for bit either way.
    ///
    /// A chunk has two graphs: its denoising forward, replayed at the 4 steps with the step's
    /// latents and time embedding written into its inputs, and its clean pass. They are
    /// recorded anew for every chunk (the RoPE offset, the cache slots and the attention
    /// segment tables change from chunk to chunk), each while the device still runs the
    /// previous forward, so recording costs host time only: the clean pass during the last
    /// denoising step, the next chunk's denoising forward during the clean pass. At most two
    /// graphs are alive at a time (the memory plan holds two forwards' scratch). Passes that
    /// record taps or that Dummy Forcing calibrates in run directly. A recorded pass does its
    /// host-side bookkeeping (a clean pass's cache commit) when it is recorded, so a hook's
    /// `after_forward` for the last denoising step already sees the committed cache.
    pub fn set_graphs(&mut self, mode: Graphs) {
        // TeaCache's skipped passes run a different op sequence: direct launches only.
        self.graphs = mode == Graphs::On && self.be.supports_graphs() && self.tea.is_none() && self.rolling.is_none();
        if !self.graphs {
            self.denoise_graph = None;
            self.last_clean = None;
        }
    }

    /// Whether chunks run as recorded graphs ([`Session::set_graphs`]).
    pub fn graphs(&self) -> bool {
        self.graphs
    }

    /// Installs a forward hook (for inspection or an experimental policy). Under the `dummy`
    /// policy the session's hook is its [`DummyForcing`], so another one is an error.
    pub fn set_hook(&mut self, hook: Box<dyn ForwardHook<B> + Send>) -> Result<()> {
        if let HookSlot::Dummy(_) = self.hook {
            return Err(Error::Policy(
                "under the dummy policy the session's forward hook is Dummy Forcing itself; a second hook cannot be installed".into(),
            ));
        }
        self.hook = HookSlot::Custom(hook);
        Ok(())
    }

    /// Dummy Forcing's state (program, assignment, calibration masses), under `dummy`.
    pub fn dummy(&self) -> Option<&DummyForcing> {
        self.hook.dummy()
    }

    /// Dummy Forcing's settings before the run: row seed, stored rows, a reused program.
    pub fn dummy_mut(&mut self) -> Option<&mut DummyForcing> {
        self.hook.dummy_mut()
    }

    /// Records the tensors of this run from now on: `xt/flow/x0.{c}.{s}` per pass and the
    /// first forward's intermediates (what the golden cases compare). Forwards then run
    /// directly, not as graphs.
    pub fn record_taps(&mut self) {
        self.record = Some(Taps::default());
    }

    /// The tensors recorded so far ([`Session::record_taps`]).
    pub fn taps(&self) -> Option<&Taps> {
        self.record.as_ref()
    }

    /// Takes the recorded tensors and stops recording.
    pub fn take_taps(&mut self) -> Option<Taps> {
        self.record.take()
    }

    /// The model the session runs.
    pub fn model(&self) -> &Arc<Model<B>> {
        &self.model
    }

    /// The backend the session runs on.
    pub fn backend(&self) -> &Arc<B> {
        &self.be
    }

    /// The flow-matching schedule (its denoising steps).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The self-attention KV cache.
    pub fn cache(&self) -> &KvCache<B::Tensor> {
        &self.cache
    }

    /// The cache (mutable) and the text state, for driving a forward by hand (tests and
    /// experiments that call [`Model::forward`] on a session's state).
    pub fn cache_and_text_mut(&mut self) -> (&mut KvCache<B::Tensor>, &TextState<B::Tensor>) {
        (&mut self.cache, &self.text)
    }

    /// The per-prompt text state (embedded context, cross-attention K/V).
    pub fn text(&self) -> &TextState<B::Tensor> {
        &self.text
    }

    /// The latent geometry.
    pub fn latent(&self) -> Latent {
        self.latent
    }

    /// The cache policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Latent frames in all, when known.
    pub fn frames(&self) -> Option<usize> {
        self.frames
    }

    /// Latent frames generated so far.
    pub fn frames_done(&self) -> usize {
        self.chunk * FRAMES_PER_CHUNK
    }

    /// KV-cache accounting after the frames generated so far (at least one chunk; bytes per group and against
    /// `full` at the same frame count); compare with [`KvCache::bytes`], which is what is
    /// actually allocated.
    pub fn kv_footprint(&self) -> Result<KvFootprint> {
        let tpf = self.cache.tokens_per_frame;
        let counts = self.hook.dummy().and_then(|d| d.assignment()).map(|a| a.counts());
        kv_footprint(
            &self.policy,
            counts,
            &self.model.cfg,
            tpf,
            self.be.precision().size(),
            self.frames_done().max(FRAMES_PER_CHUNK),
        )
    }

    /// Index of the next chunk.
    pub fn chunk_index(&self) -> usize {
        self.chunk
    }

    pub fn done(&self) -> bool {
        self.frames.is_some_and(|f| self.chunk * FRAMES_PER_CHUNK >= f)
    }

    /// Rounds like the official `.to(dtype)` from f64.
    fn store_f64(&self, x: f64) -> f32 {
        match self.be.precision() {
            Precision::F32 => x as f32,
            Precision::Bf16 => bf16::from_f64(x).to_f32(),
        }
    }
    fn store_f32(&self, x: f32) -> f32 {
        match self.be.precision() {
            Precision::F32 => x,
            Precision::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    fn draw(&mut self, c: usize, what: Option<usize>) -> Vec<f32> {
        let n = FRAMES_PER_CHUNK * self.latent.frame_len();
        match &mut self.noise {
            Noise::Given { noise, renoise } => match what {
                None => noise[c * n..(c + 1) * n].to_vec(),
                Some(s) => renoise[c][s].clone(),
            },
            Noise::Seeded(rng) => rng.normals(n),
        }
    }

    /// Generates the next chunk: returns its latents `[3, C, H, W]` (f32).
    pub fn next_chunk(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>> {
        if self.done() {
            return Err(Error::Input("all frames are already generated".into()));
        }
        if self.rolling.is_some() {
            return self.next_chunk_rolling(progress);
        }
        let c = self.chunk;
        let nf = FRAMES_PER_CHUNK;
        let chunks = self.frames.map(|f| f / nf);
        let steps = self.schedule.steps.clone();
        self.begin_chunk_graphs(c);
        // The official loop (`CausalInferencePipeline.inference`), one block of 3 frames:
        // denoise from noise at each warped timestep, then the clean pass at t = 0.
        let mut xt: Vec<f32> = self.draw(c, None).into_iter().map(|x| self.store_f32(x)).collect();
        let mut x0 = Vec::new();
        for (s, &t) in steps.iter().enumerate() {
            let pass = PassInfo::denoise(c, s, c * nf, nf);
            let mut taps = Taps::new();
            let want_taps = self.record.is_some() && c == 0 && s == 0;
            let flow = self.run_pass(&pass, t, &xt, want_taps.then_some(&mut taps))?;
            // flow → x0 in f64 (official wrapper), cast back to the working dtype.
            let sigma = self.schedule.sigma(t) as f64;
            x0 = xt.iter().zip(&flow).map(|(&a, &f)| self.store_f64(a as f64 - sigma * f as f64)).collect();
            if let Some(rec) = &mut self.record {
                rec.append(&mut taps);
                rec.insert(format!("xt.{c}.{s}"), xt.clone());
                rec.insert(format!("flow.{c}.{s}"), flow);
                rec.insert(format!("x0.{c}.{s}"), x0.clone());
            }
            progress(Progress { pass, chunks });
            if s + 1 < steps.len() {
                // add_noise in f32: (1 − σ)·x0 + σ·ε, cast to the working dtype.
                let sn = self.schedule.sigma(steps[s + 1]);
                let eps = self.draw(c, Some(s));
                xt = x0.iter().zip(&eps).map(|(&a, &e)| self.store_f32((1.0 - sn) * a + sn * e)).collect();
            }
        }
        // The clean pass at t = 0 writes the chunk's K/V into the cache; its output is unused.
        let clean = PassInfo::clean(c, c * nf, nf);
        self.run_pass(&clean, 0.0, &x0, None)?;
        progress(Progress { pass: clean, chunks });
        for f in x0.chunks_exact(self.latent.frame_len()) {
            self.history.push_back(f.to_vec());
        }
        while self.history.len() > self.recache_frames {
            self.history.pop_front();
        }
        self.chunk += 1;
        self.end_chunk_graphs(steps[0])?;
        Ok(x0)
    }

    /// Runs one forward of the loop on `x` at timestep `t` and returns its output (the flow;
    /// nothing for the clean pass): as a replay of the chunk's recorded graph, as TeaCache's
    /// forward, or as direct launches, which the caller cannot tell apart. The hook's
    /// `after_forward` runs exactly once (not for a pass TeaCache skips, whose blocks do not
    /// run), and the backend's status is checked.
    fn run_pass(&mut self, pass: &PassInfo, t: f32, x: &[f32], taps: Option<&mut Taps>) -> Result<Vec<f32>> {
        let lat = self.latent;
        let shape = [pass.frames, lat.channels, lat.height, lat.width];
        let steps = self.schedule.steps.len();
        if pass.commits() {
            // The denoising graph goes before the clean pass: the memory plan holds two
            // forwards' graphs, and the next chunk's is recorded after this pass.
            self.denoise_graph = None;
        }
        let mut hook_runs = true;
        let out = match pass.kind {
            PassKind::Denoise { step } if self.chunk_graphs.denoise => {
                let mut g = match self.denoise_graph.take() {
                    Some(g) => g,
                    None => self.record_forward(pass, t)?,
                };
                self.replay(&mut g, x, Some(t))?;
                if step == 0 {
                    // The previous clean pass is queued before this replay: done by the download.
                    self.last_clean = None;
                }
                if step + 1 == steps && self.chunk_graphs.clean {
                    // Recorded while the device runs the last denoising step.
                    let clean = PassInfo::clean(pass.chunk, pass.start_frame, pass.frames);
                    self.clean_graph = Some(self.record_forward(&clean, 0.0)?);
                }
                let flow = self.be.download(&g.out);
                self.denoise_graph = Some(g);
                flow
            }
            PassKind::Clean if self.clean_graph.is_some() => {
                let mut g = self.clean_graph.take().expect("checked");
                self.replay(&mut g, x, None)?;
                self.last_clean = Some(g);
                Vec::new()
            }
            _ => {
                let xt = self.be.upload(x, &shape);
                let y = if self.tea.is_some() {
                    let (y, computed) = self.forward_teacache(&xt, t, pass, pass.step().unwrap_or(steps), taps)?;
                    hook_runs = computed;
                    y
                } else {
                    let (model, be, cache, text, hook) = self.parts();
                    let mut taps = taps;
                    let temb = model.time_embedding(be, t, pass.frames, taps.as_deref_mut());
                    model.forward_embedded(be, &xt, &temb, pass, cache, text, hook, taps)?
                };
                if pass.commits() {
                    Vec::new()
                } else {
                    self.be.download(&y)
                }
            }
        };
        if hook_runs {
            self.after_forward(pass)?;
        }
        self.be.status()?;
        Ok(out)
    }

    /// One forward under TeaCache: pass `index` of the chunk (its step, or the step count for
    /// the clean pass) either runs the blocks and keeps their residual, or, when the plan
    /// skips it, adds the kept residual to the patch embedding and runs only the head.
    /// Returns the output and whether the blocks ran (the hook's `after_forward` is the
    /// caller's, for computed passes only).
    fn forward_teacache(
        &mut self,
        x: &B::Tensor,
        t: f32,
        pass: &PassInfo,
        index: usize,
        taps: Option<&mut Taps>,
    ) -> Result<(B::Tensor, bool)> {
        let skip = self.tea.as_ref().is_some_and(|p| p.get(pass.chunk, index).skip);
        let residual = self.tea_residual.take();
        let temb = self.model.time_embedding(&self.be, t, pass.frames, None);
        if skip && residual.is_none() {
            return Err(Error::Input("TeaCache skips a pass before any pass was computed".into()));
        }
        if let (true, Some(rec), Some(r), Some(s)) = (skip, self.record.as_mut(), &residual, pass.step()) {
            rec.insert(format!("teacache.residual.{}.{s}", pass.chunk), self.be.download(r));
        }
        let (model, be, cache, text, hook) = self.parts();
        let mode = match (&residual, skip) {
            (Some(r), true) => Residual::Reuse(r),
            _ => Residual::Record,
        };
        let (flow, kept) = model.forward_teacache(be, x, &temb, pass, cache, text, hook, taps, mode)?;
        self.tea_residual = kept.or(residual);
        Ok((flow, !skip))
    }

    /// The hook's `after_forward` for `pass` ([`Session::run_pass`] calls it once per pass).
    fn after_forward(&mut self, pass: &PassInfo) -> Result<()> {
        let _rp = crate::profile::range("dit.after_forward");
        let (_, be, cache, _, hook) = self.parts();
        hook.after_forward(be, pass, cache)
    }

    /// What a forward borrows from the session, borrowed apart: the model, the backend, the
    /// cache, the text state and the hook (Dummy Forcing's state under `dummy`, else the
    /// installed one).
    #[allow(clippy::type_complexity)]
    fn parts(&mut self) -> (&Model<B>, &B, &mut KvCache<B::Tensor>, &TextState<B::Tensor>, &mut dyn ForwardHook<B>) {
        (&self.model, &self.be, &mut self.cache, &self.text, self.hook.get_mut())
    }

    /// The hook, read-only (see [`Session::parts`]).
    fn hook_ref(&self) -> &dyn ForwardHook<B> {
        self.hook.get()
    }

    /// Generates every remaining chunk; returns the latents `[F, C, H, W]`.
    pub fn run(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>> {
        if self.frames.is_none() {
            return Err(Error::Input("run() needs a frame count".into()));
        }
        let mut out = Vec::new();
        while !self.done() {
            out.extend(self.next_chunk(progress)?);
        }
        Ok(out)
    }
}
