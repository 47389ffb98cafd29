//! One owner of a run: the device is chosen once ([`DeviceChoice`]), the checkpoint is opened
//! once ([`ModelSource`]), and [`open`] plans device memory, loads the weights onto the
//! device and opens a session from [`SessionOptions`]. The CLI, the C API, the benches, the
//! profile example and the tests all open their runs here, so a run on a given device is
//! the same run whoever drives it.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("dfrt-doc-run-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("tiny.safetensors");
//! # let cfg = dfrt::ModelConfig::preset("tiny").unwrap();
//! # dfrt_weights::synth_checkpoint(&path, &cfg, 0, dfrt::checkpoint::DType::F32).unwrap();
//! use dfrt::api::SessionOptions;
//! use dfrt::backend::Precision;
//! use dfrt::pipeline::Noise;
//! use dfrt::run::{DeviceChoice, ModelSource, Target};
//!
//! let device: DeviceChoice = "sim".parse()?;
//! assert!("gpu".parse::<DeviceChoice>().is_err());
//! let model = ModelSource::open(&path)?;
//! let opts = SessionOptions::parse("window:4,sink:1", 4, 4, Some(3), &model.cfg)?;
//! let context = vec![0.25; 2 * model.cfg.text_dim];
//! let target = Target::new(device, Precision::F32);
//! let mut run = dfrt::run::open(&target, &model, &opts, &context, 2, Noise::seeded(1))?;
//! let latents = run.run(&mut |_| {})?;
//! assert_eq!((run.device_name(), run.frames_done()), ("sim", 3));
//! assert!(latents.iter().all(|x| x.is_finite()));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

pub mod plan;

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

pub use plan::MemoryPlan;

use crate::api::{open_checkpoint, CpuModel, LoadedModel, SessionOptions, CHECKPOINT_HINT};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{GpuBackend, GpuOptions};
use crate::backend::{Backend, DeviceStats, Precision};
use crate::checkpoint::{DType, TensorFile};
use crate::dummy::{DummyForcing, KvFootprint};
use crate::error::DeviceError;
use crate::gpu::{CudaDevice, Device, SimDevice};
use crate::pipeline::{Latent, Noise, PipelineSpec, Progress, Session, TeaPlan};
use crate::vae::Vae;
use crate::{Error, ModelConfig, Result};

/// A caller's CUDA stream (`CUstream` / `cudaStream_t`), held as its address so that a run
/// stays `Send`; see [`CudaDevice::with_stream`] for what it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaStream(pub usize);

/// Where a run executes. Parsed from `cpu`, `sim`, `cuda` or `cuda:N` (GPU `N`); the CUDA
/// stream and sync-debug mode are set on the parsed value, never spelled in the string.
///
/// ```
/// use dfrt::run::DeviceChoice;
/// assert_eq!("cpu".parse::<DeviceChoice>()?, DeviceChoice::Cpu);
/// let DeviceChoice::Cuda { ordinal, stream, sync_debug } = "cuda:1".parse()? else { unreachable!() };
/// assert_eq!((ordinal, stream, sync_debug), (1, None, false));
/// assert_eq!("cuda".parse::<DeviceChoice>()?.to_string(), "cuda:0");
/// // sync-debug is a CUDA mode: asking for it on another device is an error.
/// assert!(DeviceChoice::Sim.with_sync_debug(true).is_err());
/// let e = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
/// assert!(e.contains("cpu, sim, cuda"), "{e}");
/// # Ok::<(), dfrt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU reference backend.
    Cpu,
    /// The GPU backend on the SIMT simulator (the kernels' source, or the committed PTX with
    /// `DFRT_SIM_ENGINE=ptx`, on the CPU).
    Sim,
    /// The GPU backend on CUDA GPU `ordinal`, on a stream of its own or the caller's.
    Cuda {
        ordinal: usize,
        stream: Option<CudaStream>,
        /// Synchronise after every kernel and name the kernel that faulted.
        sync_debug: bool,
    },
}

impl DeviceChoice {
    /// The device names [`FromStr`] accepts (`cuda` also as `cuda:N`).
    pub const NAMES: [&'static str; 3] = ["cpu", "sim", "cuda"];

    /// `cpu`, `sim` or `cuda`.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Sim => "sim",
            DeviceChoice::Cuda { .. } => "cuda",
        }
    }

    /// Whether this is a GPU backend (sim or cuda): the ones with a memory plan and graphs.
    pub fn is_gpu(&self) -> bool {
        !matches!(self, DeviceChoice::Cpu)
    }

    /// Sets CUDA's sync-debug mode; an error for any other device, which runs every op
    /// synchronously already.
    pub fn with_sync_debug(self, on: bool) -> Result<Self> {
        match self {
            DeviceChoice::Cuda { ordinal, stream, .. } => Ok(DeviceChoice::Cuda { ordinal, stream, sync_debug: on }),
            d if !on => Ok(d),
            d => Err(Error::Input(format!(
                "--sync-debug is for --device cuda (device `{}` runs every op synchronously already)",
                d.name()
            ))),
        }
    }

    /// Queues the run's work on the caller's CUDA stream (None: a stream of its own). An
    /// error for any other device.
    pub fn with_stream(self, stream: Option<CudaStream>) -> Result<Self> {
        match (self, stream) {
            (DeviceChoice::Cuda { ordinal, sync_debug, .. }, s) => {
                Ok(DeviceChoice::Cuda { ordinal, stream: s, sync_debug })
            }
            (d, None) => Ok(d),
            (d, Some(_)) => Err(Error::Input(format!("a CUDA stream was given for device `{}`; pass NULL", d.name()))),
        }
    }

    /// Opens the CUDA device this choice names (the one place a [`CudaDevice`] is made).
    fn cuda(ordinal: usize, stream: Option<CudaStream>, sync_debug: bool) -> Result<CudaDevice> {
        match stream {
            None => CudaDevice::new(ordinal, sync_debug),
            // SAFETY: a `CudaStream` is only made by a caller who promises (C API contract of
            // `dfrt_session_new`) that the stream is live and outlives the run;
            // `with_stream` itself refuses the legacy stream and streams of other contexts.
            Some(s) => unsafe { CudaDevice::with_stream(ordinal, sync_debug, s.0 as *mut std::ffi::c_void) },
        }
    }

    /// `auto`, as the benches take it: the first CUDA device when one answers, else
    /// `fallback`, with the reason the GPU did not answer.
    pub fn auto(fallback: DeviceChoice) -> (DeviceChoice, Option<Error>) {
        let cuda = DeviceChoice::Cuda { ordinal: 0, stream: None, sync_debug: false };
        match cuda.probe() {
            Ok(()) => (cuda, None),
            Err(e) => (fallback, Some(e)),
        }
    }

    /// The CUDA device this choice names, opened (None for `cpu` and `sim`): for code below
    /// the backend, such as the kernel bench, that launches on a device directly.
    pub fn open_cuda(&self) -> Result<Option<CudaDevice>> {
        match *self {
            DeviceChoice::Cuda { ordinal, stream, sync_debug } => Self::cuda(ordinal, stream, sync_debug).map(Some),
            _ => Ok(None),
        }
    }

    /// Checks that the device can be opened (a machine without a GPU fails here, with the
    /// driver's reason), without keeping it open.
    pub fn probe(&self) -> Result<()> {
        match *self {
            DeviceChoice::Cuda { ordinal, stream, sync_debug } => Self::cuda(ordinal, stream, sync_debug).map(drop),
            _ => Ok(()),
        }
    }

    /// Runs `f` on a fresh backend of this device at `precision`: the one place a device
    /// choice becomes a backend, for users that need the backend itself (the text encoder).
    pub fn with_backend<T>(&self, precision: Precision, f: impl BackendFn<T>) -> Result<T> {
        match *self {
            DeviceChoice::Cpu => f.call(Arc::new(CpuBackend::new(precision))),
            DeviceChoice::Sim => f.call(Arc::new(GpuBackend::new(SimDevice::new(), precision))),
            DeviceChoice::Cuda { ordinal, stream, sync_debug } => {
                f.call(Arc::new(GpuBackend::new(Self::cuda(ordinal, stream, sync_debug)?, precision)))
            }
        }
    }
}

/// Code generic over the backend, run by [`DeviceChoice::with_backend`] on the chosen one.
pub trait BackendFn<T> {
    fn call<B: Backend + 'static>(self, be: Arc<B>) -> Result<T>;
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Device(DeviceError::NotAvailable(format!(
                "unknown device `{s}` (known: {}; `cuda:N` for GPU N)",
                Self::NAMES.join(", ")
            )))
        };
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "sim" => Ok(DeviceChoice::Sim),
            "cuda" => Ok(DeviceChoice::Cuda { ordinal: 0, stream: None, sync_debug: false }),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                let ordinal = n.parse().map_err(|_| bad())?;
                Ok(DeviceChoice::Cuda { ordinal, stream: None, sync_debug: false })
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cuda { ordinal, .. } => write!(f, "cuda:{ordinal}"),
            d => f.write_str(d.name()),
        }
    }
}

/// A runtime checkpoint, opened and checked once: its config, and the size of its tensors
/// (what the memory plan needs), without holding the weights. The CPU weights are loaded on
/// the first CPU session and shared by later ones; a GPU run loads its own copy onto the
/// device, straight from the file.
pub struct ModelSource {
    pub path: PathBuf,
    pub cfg: ModelConfig,
    /// Elements and tensors in the checkpoint.
    elems: usize,
    tensors: usize,
    cpu: OnceLock<Arc<CpuModel>>,
}

impl ModelSource {
    /// Opens `path` and checks that it holds every tensor of its config with the right
    /// shape and a float dtype ([`crate::names::expected_tensors`]), so a truncated or
    /// hand-edited file fails here rather than at the first session.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (f, cfg) = open_checkpoint(path)?;
        Self::checked(path, &f, cfg)
    }

    /// A checkpoint without `dfrt.config` metadata (the golden cases' weights) for `cfg`,
    /// checked the same way.
    pub fn with_config(path: impl AsRef<Path>, cfg: ModelConfig) -> Result<Self> {
        let path = path.as_ref();
        cfg.validate()?;
        let f = TensorFile::open(path)?;
        Self::checked(path, &f, cfg)
    }

    fn checked(path: &Path, f: &TensorFile, cfg: ModelConfig) -> Result<Self> {
        for (name, shape) in crate::names::expected_tensors(&cfg) {
            let bad = |msg: String| {
                Error::Checkpoint {
                path: path.display().to_string(),
                msg: format!("tensor `{name}`: {msg}; its tensors do not match its own config (a truncated or hand-edited file?): {CHECKPOINT_HINT}"),
            }
            };
            let info = f.tensors.get(&name).ok_or_else(|| bad("missing".into()))?;
            if info.shape != shape {
                return Err(bad(format!("has shape {:?}, expected {shape:?}", info.shape)));
            }
            if !matches!(info.dtype, DType::F32 | DType::BF16 | DType::F16) {
                return Err(bad(format!("has dtype {:?}, expected a float type", info.dtype)));
            }
        }
        let elems = f.tensors.values().map(|t| t.shape.iter().product::<usize>()).sum();
        let tensors = f.tensors.len();
        Ok(ModelSource { path: path.to_path_buf(), cfg, elems, tensors, cpu: OnceLock::new() })
    }

    /// The weights' bytes and tensor count in `precision` (the memory plan's `weights`).
    pub fn weights(&self, precision: Precision) -> (usize, usize) {
        (self.elems * precision.size(), self.tensors)
    }

    /// The CPU model at `precision`, loaded on first use and shared afterwards. A source
    /// serves one CPU precision (the C API's model handle has one dtype).
    pub fn cpu_model(&self, precision: Precision) -> Result<Arc<CpuModel>> {
        let m = match self.cpu.get() {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(self.load(Arc::new(CpuBackend::new(precision)))?);
                self.cpu.get_or_init(|| m).clone()
            }
        };
        if m.be.precision() != precision {
            return Err(Error::Input(format!(
                "this model's CPU weights are loaded in {}, not {}",
                m.be.precision().name(),
                precision.name()
            )));
        }
        Ok(m)
    }

    /// Loads the weights onto `be` (in `be`'s precision) with this source's config.
    pub fn load<B: Backend + 'static>(&self, be: Arc<B>) -> Result<LoadedModel<B>> {
        let f = TensorFile::open(&self.path)?;
        LoadedModel::load_file(be, &self.path, &f, self.cfg.clone())
    }
}

/// What a run executes on: the device, the storage precision, and the GPU backend's options
/// (ignored on the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub device: DeviceChoice,
    pub precision: Precision,
    pub gpu: GpuOptions,
}

impl Target {
    /// `device` at `precision` with the default GPU options.
    pub fn new(device: DeviceChoice, precision: Precision) -> Self {
        Target { device, precision, gpu: GpuOptions::default() }
    }
}

/// Opens a run: on a GPU device the memory plan is computed from the model's own
/// description of what it allocates and checked against the device's free memory (too
/// little fails here, with the bytes needed and free), the whole plan is reserved, the
/// weights are loaded onto the device, then the session opens. On the CPU the source's
/// shared CPU weights are used. `context` is the text embedding `[rows, text_dim]`.
pub fn open(
    target: &Target,
    model: &ModelSource,
    opts: &SessionOptions,
    context: &[f32],
    rows: usize,
    noise: Noise,
) -> Result<Box<dyn RunSession>> {
    opts.check(&model.cfg)?;
    let p = target.precision;
    match target.device {
        DeviceChoice::Cpu => Ok(Box::new(model.cpu_model(p)?.session(opts, context, rows, noise)?)),
        DeviceChoice::Sim => {
            let be = Arc::new(GpuBackend::with_options(SimDevice::new(), p, target.gpu));
            Ok(Box::new(open_on(be, model, opts, context, rows, noise)?))
        }
        DeviceChoice::Cuda { ordinal, stream, sync_debug } => {
            let dev = DeviceChoice::cuda(ordinal, stream, sync_debug)?;
            Ok(Box::new(open_on(
                Arc::new(GpuBackend::with_options(dev, p, target.gpu)),
                model,
                opts,
                context,
                rows,
                noise,
            )?))
        }
    }
}

/// Opens the Wan VAE that decodes a run into video, at `precision`, checked against the run's
/// latent geometry (its channels must be the VAE's `z_dim`): the one place a front end (the
/// CLI's `generate --vae` and `decode`, the C API's `dfrt_session_set_vae`) gets its decoder.
/// The decoder runs on the host CPU whatever device the DiT runs on (there is no GPU decoder
/// yet), so it takes no device memory and a GPU run's memory plan does not include it.
pub fn open_vae(path: impl AsRef<Path>, precision: Precision, latent: Latent) -> Result<Arc<Vae>> {
    let vae = Vae::open(path, precision)?;
    crate::video::stream::check_latents(&vae, latent.channels, latent.height, latent.width)?;
    Ok(Arc::new(vae))
}

/// The memory plan of a run of `model` with `opts` at `precision`.
pub fn plan(model: &ModelSource, precision: Precision, opts: &SessionOptions) -> Result<MemoryPlan> {
    let (bytes, tensors) = model.weights(precision);
    MemoryPlan::estimate(&model.cfg, &opts.policy, opts.latent(&model.cfg), opts.frames, precision, bytes, tensors)
}

/// Reserves `plan` on `be` after checking it against the device's free memory.
pub fn reserve<D: Device>(be: &GpuBackend<D>, plan: &MemoryPlan) -> Result<()> {
    let (free, total) = be.device().mem_info()?;
    plan.check(free, total)?;
    be.reserve(plan.total())
}

/// [`open`] on a GPU backend the caller built and keeps (tests and benches read its
/// counters): the plan is checked and reserved, the weights loaded, the session opened.
pub fn open_on<D: Device>(
    be: Arc<GpuBackend<D>>,
    model: &ModelSource,
    opts: &SessionOptions,
    context: &[f32],
    rows: usize,
    noise: Noise,
) -> Result<Session<GpuBackend<D>>> {
    opts.check(&model.cfg)?;
    reserve(&be, &plan(model, be.precision(), opts)?)?;
    let lm = model.load(be.clone())?;
    be.status()?;
    lm.session(opts, context, rows, noise)
}

/// A session on whichever backend a run chose, as one object type: what the front ends
/// (CLI, C API, benches) call. Implemented by every [`Session`]; [`RunSession::as_any`]
/// gives the concrete session back for backend-specific counters.
pub trait RunSession: Send {
    /// The next chunk's 3 latent frames `[3, C, H, W]`; `progress` is called once per forward.
    fn next_chunk(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>>;
    /// Every remaining chunk, concatenated.
    fn run(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>>;
    fn done(&self) -> bool;
    fn frames_done(&self) -> usize;
    fn chunk_index(&self) -> usize;
    /// Forwards (denoising steps and clean passes) a run of `frames` makes.
    fn forwards_for(&self, frames: usize) -> usize;
    /// Whether a prompt switch is possible now.
    fn check_switch(&self) -> Result<()>;
    /// Switches the prompt before the next chunk (the recache pass runs then).
    fn switch_prompt(&mut self, context: &[f32], rows: usize) -> Result<()>;
    fn set_recache_frames(&mut self, n: usize) -> Result<()>;
    /// LongLive's `global_sink` for prompt switches under `window`.
    fn set_global_sink(&mut self, on: bool) -> Result<()>;
    /// Prompt switches' recache passes so far.
    fn recaches(&self) -> usize;
    /// Bytes the KV cache holds allocated.
    fn kv_bytes(&self) -> usize;
    fn kv_footprint(&self) -> Result<KvFootprint>;
    /// Dummy Forcing's state (head groups, program) under a `dummy` policy.
    fn dummy(&self) -> Option<&DummyForcing>;
    fn teacache(&self) -> Option<&TeaPlan>;
    fn pipeline(&self) -> PipelineSpec;
    /// Denoising steps per chunk.
    fn steps(&self) -> usize;
    /// Whether forwards run as recorded graphs (only where the backend supports them).
    fn graphs(&self) -> bool;
    fn supports_graphs(&self) -> bool;
    /// The backend's name (`cpu`, `sim`, `cuda`).
    fn device_name(&self) -> &'static str;
    /// The GPU backend's memory counters (None on the CPU).
    fn device_stats(&self) -> Option<DeviceStats>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<B: Backend + 'static> RunSession for Session<B>
where
    Session<B>: Send,
{
    fn next_chunk(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>> {
        Session::next_chunk(self, progress)
    }
    fn run(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>> {
        Session::run(self, progress)
    }
    fn done(&self) -> bool {
        Session::done(self)
    }
    fn frames_done(&self) -> usize {
        Session::frames_done(self)
    }
    fn chunk_index(&self) -> usize {
        Session::chunk_index(self)
    }
    fn forwards_for(&self, frames: usize) -> usize {
        Session::forwards_for(self, frames)
    }
    fn check_switch(&self) -> Result<()> {
        Session::check_switch(self)
    }
    fn switch_prompt(&mut self, context: &[f32], rows: usize) -> Result<()> {
        Session::switch_prompt(self, context, rows)
    }
    fn set_recache_frames(&mut self, n: usize) -> Result<()> {
        Session::set_recache_frames(self, n)
    }
    fn set_global_sink(&mut self, on: bool) -> Result<()> {
        Session::set_global_sink(self, on)
    }
    fn recaches(&self) -> usize {
        Session::recaches(self)
    }
    fn kv_bytes(&self) -> usize {
        self.cache().bytes()
    }
    fn kv_footprint(&self) -> Result<KvFootprint> {
        Session::kv_footprint(self)
    }
    fn dummy(&self) -> Option<&DummyForcing> {
        Session::dummy(self)
    }
    fn teacache(&self) -> Option<&TeaPlan> {
        Session::teacache(self)
    }
    fn pipeline(&self) -> PipelineSpec {
        Session::pipeline(self)
    }
    fn steps(&self) -> usize {
        self.schedule().steps.len()
    }
    fn graphs(&self) -> bool {
        Session::graphs(self)
    }
    fn supports_graphs(&self) -> bool {
        self.backend().supports_graphs()
    }
    fn device_name(&self) -> &'static str {
        self.backend().name()
    }
    fn device_stats(&self) -> Option<DeviceStats> {
        self.backend().device_stats()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
