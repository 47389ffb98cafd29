//! C API of the dfrt runtime: `libdfrt.a` / `libdfrt.so` with the header `include/dfrt.h`
//! (generated from this file by cbindgen; `capi/tests/header.rs` fails when it drifts).
//!
//! Sessions are built by `dfrt::api` (crate `dfrt`, here `dfrt_core`), the same path
//! `dfrt generate` takes, so a C program gets the Rust API's latents bit for bit.
//!
//! Conventions (the full rules are in `docs/c-api.md`):
//! - every function returns a `DfrtStatus` and reports into an optional caller-owned
//!   `DfrtError`; there is no global or thread-local error state;
//! - every function runs under a panic guard: a Rust panic becomes `DFRT_ERR_PANIC`, never an
//!   unwind into C;
//! - handles are opaque, made by `*_load`/`*_new` and released by `*_free` (NULL-safe);
//! - a `DfrtModel` is immutable and may be shared by threads; a `DfrtSession` is used by
//!   one thread at a time.
//!
//! The Rust tests of every error path are in `src/tests.rs` (unit tests: the crate builds no
//! rlib, see Cargo.toml); `tests/c_example.rs` compiles and runs `examples/c/generate.c`.

use std::any::Any;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use dfrt_core::api::{draws_per_chunk, noise_from_draws, CpuModel, LoadedModel, SessionOptions};
use dfrt_core::backend::cpu::CpuBackend;
use dfrt_core::backend::Backend;
use dfrt_core::backend::Precision;
use dfrt_core::config::FRAMES_PER_CHUNK;
use dfrt_core::dummy::HeadProgram;
use dfrt_core::gpu::{CudaDevice, Device as GpuDevice, GpuBackend, SimDevice};
use dfrt_core::pipeline::{Noise, Progress, Session};
use dfrt_core::Error;

/// Bytes in `DfrtError.message`, the terminating NUL included.
pub const DFRT_ERROR_MESSAGE_LEN: usize = 1024;

/// Version of this C interface; it changes when a signature or a struct layout changes.
pub const DFRT_API_VERSION: u32 = 1;

/// Result of every call. `DFRT_OK` is 0; everything else is an error, explained in the
/// `DfrtError` passed to the call.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum DfrtStatus {
    DFRT_OK = 0,
    /// A required pointer argument was NULL.
    DFRT_ERR_NULL = 1,
    /// An argument is out of range or misshapen (sizes, dtype, text that is not UTF-8).
    DFRT_ERR_INVALID_ARGUMENT = 2,
    /// A file could not be read or written.
    DFRT_ERR_IO = 3,
    /// The file is not a usable dfrt runtime checkpoint (or head program for this model).
    DFRT_ERR_CHECKPOINT = 4,
    /// The cache policy string is malformed or does not fit the model.
    DFRT_ERR_POLICY = 5,
    /// The device is unknown, absent (no CUDA driver or GPU), or too small for the run.
    DFRT_ERR_DEVICE = 6,
    /// The call is not allowed in the session's current state (no context yet, settings
    /// changed after generation started, a head program asked for before calibration, a
    /// session left broken by an earlier failure: call `dfrt_session_reset`).
    DFRT_ERR_STATE = 7,
    /// Every frame of the session is generated.
    DFRT_ERR_FINISHED = 8,
    /// The caller's buffer is too small; the call says how much it needs.
    DFRT_ERR_BUFFER_TOO_SMALL = 9,
    /// A panic inside the library was caught (a bug: please report it with the message).
    DFRT_ERR_PANIC = 10,
}

use DfrtStatus::*;

/// Error report, owned by the caller (stack or heap). Pass NULL to ignore details. Every
/// call overwrites it: `code` is the call's status, `message` a NUL-terminated UTF-8 text
/// (empty on success, truncated at a character boundary to fit).
#[repr(C)]
pub struct DfrtError {
    pub code: DfrtStatus,
    pub message: [c_char; DFRT_ERROR_MESSAGE_LEN],
}

impl Default for DfrtError {
    fn default() -> Self {
        DfrtError { code: DFRT_OK, message: [0; DFRT_ERROR_MESSAGE_LEN] }
    }
}

impl DfrtError {
    /// The message as Rust text (for Rust callers and tests).
    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Facts about a loaded model that a caller needs to size its inputs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfrtModelInfo {
    /// Latent channels.
    pub in_dim: usize,
    /// Width of a text-embedding row (`cols` of `dfrt_session_set_context`).
    pub text_dim: usize,
    /// Most text-embedding rows the model takes.
    pub text_len: usize,
    pub dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Latent height and width must be multiples of these.
    pub patch_height: usize,
    pub patch_width: usize,
}

/// A session's geometry and position.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfrtSessionInfo {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Latent frames in all; 0 = unbounded.
    pub frames: usize,
    /// Latent frames per chunk (3).
    pub frames_per_chunk: usize,
    /// Floats one `dfrt_session_next_chunk` writes: `frames_per_chunk · channels · height · width`.
    pub chunk_len: usize,
    /// Chunks in all; 0 = unbounded.
    pub chunks_total: usize,
    /// Chunks generated since creation or the last reset.
    pub chunks_done: usize,
    /// Floats `dfrt_session_set_noise` expects (0 when unbounded: given noise needs a count).
    pub noise_len: usize,
    /// Model forwards per chunk (denoising steps + the clean pass); progress callbacks per chunk.
    pub forwards_per_chunk: usize,
}

/// One progress report, passed to the callback once per model forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfrtProgress {
    /// Chunk being generated (0-based).
    pub chunk: usize,
    /// Denoising step (0-based), or -1 for the clean pass that fills the KV cache.
    pub step: i32,
    /// Forwards of this chunk done so far, this one included (1..=forwards_per_chunk).
    pub forward: usize,
    pub forwards_per_chunk: usize,
    /// Chunks in all; 0 = unbounded.
    pub chunks_total: usize,
}

/// Progress callback: called on the calling thread, between model forwards, with a report
/// valid for the call only and the caller's `user` pointer. It must not call into the same
/// session. (The `C-unwind` ABI lets a Rust callback's panic reach the panic guard; C code
/// sees a plain C function pointer.)
pub type DfrtProgressFn = Option<unsafe extern "C-unwind" fn(progress: *const DfrtProgress, user: *mut c_void)>;

/// A loaded model (opaque). Immutable: share it between threads freely.
pub struct DfrtModel {
    inner: Arc<CpuModel>,
}

// The thread-safety rules of docs/c-api.md, checked by the compiler: a model may be shared
// between threads, a session may move between threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shareable::<DfrtModel>();
    movable::<DfrtSession>();
};

/// A loaded text encoder (opaque): the umT5 tokenizer and encoder on the CPU. Immutable:
/// share it between threads and sessions freely.
pub struct DfrtTextEncoder {
    be: CpuBackend,
    inner: dfrt_core::text::TextEncoder<CpuBackend>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<DfrtTextEncoder>();
};

/// A generation session (opaque): settings, inputs and, once generation starts, the KV cache.
/// Use from one thread at a time.
pub struct DfrtSession {
    model: Arc<CpuModel>,
    device: Device,
    opts: SessionOptions,
    context: Option<(Vec<f32>, usize)>,
    noise: NoiseSource,
    /// Built at the first chunk from the settings above; dropped by reset and by setters.
    run: Option<Engine>,
    /// Set while a chunk is generated; still set after a failure or a panic mid-chunk, when
    /// the run's state is unknown and only a reset may follow.
    broken: bool,
    /// The VAE decoder of `dfrt_session_set_vae`; its caches restart with the video.
    video: Option<dfrt_core::vae::Decoder>,
}

enum NoiseSource {
    Seed(u64),
    Draws(Vec<f32>),
}

/// Where a session runs. New devices add a variant here, a match arm in `open_device` and
/// one in `Engine::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Cpu,
    /// The GPU backend on the SIMT simulator (the PTX kernels' source on the CPU).
    Sim,
    /// The GPU backend on CUDA device 0: on a stream of its own (0), or on the caller's
    /// `cudaStream_t` (its address, kept as an integer so that the session stays `Send`).
    Cuda {
        stream: usize,
    },
}

/// Opens CUDA device 0 on its own stream, or on the caller's.
fn cuda_device(stream: usize) -> Result<CudaDevice, Fail> {
    if stream == 0 {
        return Ok(CudaDevice::new(0, false)?);
    }
    // SAFETY: `dfrt_session_new`'s contract: the caller's stream is live and outlives the
    // session (documented in the header); `with_stream` checks it belongs to GPU 0's context.
    Ok(unsafe { CudaDevice::with_stream(0, false, stream as *mut c_void) }?)
}

/// A running session on its device.
enum Engine {
    Cpu(Session<CpuBackend>),
    Sim(Session<GpuBackend<SimDevice>>),
    Cuda(Session<GpuBackend<CudaDevice>>),
}

/// A session on the GPU backend: the memory plan is checked and reserved first (so a device
/// that is too small fails here, with the bytes needed and free), then the weights are loaded
/// onto the device from the model's checkpoint (each GPU session holds its own copy).
fn gpu_session<D: GpuDevice>(
    dev: D,
    model: &CpuModel,
    opts: &SessionOptions,
    ctx: &[f32],
    rows: usize,
    noise: Noise,
) -> Result<Session<GpuBackend<D>>, Fail> {
    let be = Arc::new(GpuBackend::new(dev, model.be.precision()));
    opts.check(&model.cfg)?;
    let (ckpt, cfg) = dfrt_core::api::open_checkpoint(&model.path)?;
    be.prepare(&cfg, &opts.policy, opts.latent(&cfg), opts.frames, &ckpt)?;
    drop(ckpt);
    let lm = LoadedModel::load(be.clone(), &model.path)?;
    be.status()?;
    Ok(lm.session(opts, ctx, rows, noise)?)
}

impl Engine {
    fn new(
        device: Device,
        model: &CpuModel,
        opts: &SessionOptions,
        ctx: &[f32],
        rows: usize,
        noise: Noise,
    ) -> Result<Self, Fail> {
        match device {
            Device::Cpu => Ok(Engine::Cpu(model.session(opts, ctx, rows, noise)?)),
            Device::Sim => Ok(Engine::Sim(gpu_session(SimDevice::new(), model, opts, ctx, rows, noise)?)),
            Device::Cuda { stream } => {
                Ok(Engine::Cuda(gpu_session(cuda_device(stream)?, model, opts, ctx, rows, noise)?))
            }
        }
    }
    fn next_chunk(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>, Fail> {
        match self {
            Engine::Cpu(s) => Ok(s.next_chunk(progress)?),
            Engine::Sim(s) => Ok(s.next_chunk(progress)?),
            Engine::Cuda(s) => Ok(s.next_chunk(progress)?),
        }
    }
    fn check_switch(&self) -> Result<(), Fail> {
        match self {
            Engine::Cpu(s) => Ok(s.check_switch()?),
            Engine::Sim(s) => Ok(s.check_switch()?),
            Engine::Cuda(s) => Ok(s.check_switch()?),
        }
    }

    fn switch_prompt(&mut self, ctx: &[f32], rows: usize) -> Result<(), Fail> {
        match self {
            Engine::Cpu(s) => Ok(s.switch_prompt(ctx, rows)?),
            Engine::Sim(s) => Ok(s.switch_prompt(ctx, rows)?),
            Engine::Cuda(s) => Ok(s.switch_prompt(ctx, rows)?),
        }
    }

    fn chunk_index(&self) -> usize {
        match self {
            Engine::Cpu(s) => s.chunk_index(),
            Engine::Sim(s) => s.chunk_index(),
            Engine::Cuda(s) => s.chunk_index(),
        }
    }
    fn head_program(&self) -> Option<&HeadProgram> {
        match self {
            Engine::Cpu(s) => s.dummy().and_then(|d| d.program()),
            Engine::Sim(s) => s.dummy().and_then(|d| d.program()),
            Engine::Cuda(s) => s.dummy().and_then(|d| d.program()),
        }
    }
}

/// The one place a device name (and an optional caller CUDA stream) becomes a device.
fn open_device(name: &str, cuda_stream: *mut c_void) -> Result<Device, Fail> {
    match name {
        "cpu" => {
            if !cuda_stream.is_null() {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    "a CUDA stream was given for device `cpu`; pass NULL",
                ));
            }
            Ok(Device::Cpu)
        }
        "sim" => {
            if !cuda_stream.is_null() {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    "a CUDA stream was given for device `sim`; pass NULL",
                ));
            }
            Ok(Device::Sim)
        }
        "cuda" => {
            let stream = cuda_stream as usize;
            // Fail at creation, not at the first chunk, on a machine without a GPU or with a
            // stream of another context.
            cuda_device(stream)?;
            Ok(Device::Cuda { stream })
        }
        _ => Err(Fail::new(DFRT_ERR_DEVICE, format!("unknown device `{name}` (known: cpu, sim, cuda)"))),
    }
}

/// An error on its way to the caller.
struct Fail {
    code: DfrtStatus,
    msg: String,
}

impl Fail {
    fn new(code: DfrtStatus, msg: impl Into<String>) -> Self {
        Fail { code, msg: msg.into() }
    }
    fn null(what: &str) -> Self {
        Fail::new(DFRT_ERR_NULL, format!("`{what}` is NULL"))
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Io { .. } => DFRT_ERR_IO,
            Error::Checkpoint { .. } | Error::Config(_) | Error::Tensor { .. } => DFRT_ERR_CHECKPOINT,
            Error::Policy(_) => DFRT_ERR_POLICY,
            Error::Input(_) => DFRT_ERR_INVALID_ARGUMENT,
            Error::Device(_) => DFRT_ERR_DEVICE,
        };
        Fail::new(code, e.to_string())
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Writes `code` and `msg` into `err` (if not NULL): truncated at a UTF-8 character boundary
/// to fit, always NUL-terminated.
///
/// # Safety
/// `err` is NULL or points to a writable `DfrtError`.
unsafe fn report(err: *mut DfrtError, code: DfrtStatus, msg: &str) {
    if err.is_null() {
        return;
    }
    let mut n = msg.len().min(DFRT_ERROR_MESSAGE_LEN - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller guarantees `err` points to a writable DfrtError; `n + 1` bytes fit
    // in its message array (n < DFRT_ERROR_MESSAGE_LEN), and the source is a live &str.
    unsafe {
        (*err).code = code;
        let dst = std::ptr::addr_of_mut!((*err).message) as *mut u8;
        std::ptr::copy_nonoverlapping(msg.as_ptr(), dst, n);
        *dst.add(n) = 0;
    }
}

/// The panic guard every exported function runs its body under.
///
/// # Safety
/// `err` is NULL or points to a writable `DfrtError`.
unsafe fn guard(err: *mut DfrtError, f: impl FnOnce() -> Result<(), Fail>) -> DfrtStatus {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Fail::new(DFRT_ERR_PANIC, format!("internal panic (a dfrt bug): {}", panic_text(&*p))))
    });
    let (code, msg) = match r {
        Ok(()) => (DFRT_OK, String::new()),
        Err(f) => (f.code, f.msg),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { report(err, code, &msg) };
    code
}

/// Reads a NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| Fail::new(DFRT_ERR_INVALID_ARGUMENT, format!("`{what}` is not valid UTF-8")))
}

/// # Safety
/// `s` is NULL or a live session from `dfrt_session_new` not used by another thread.
unsafe fn session_mut<'a>(s: *mut DfrtSession) -> Result<&'a mut DfrtSession, Fail> {
    // SAFETY: per this function's contract.
    unsafe { s.as_mut() }.ok_or_else(|| Fail::null("session"))
}

/// Copies `v` to the caller's `out` (capacity `cap` elements).
///
/// # Safety
/// `out` is NULL or valid for `cap` writes of `T`.
unsafe fn copy_out<T: Copy>(v: &[T], out: *mut T, cap: usize, what: &str, unit: &str) -> Result<(), Fail> {
    if out.is_null() {
        return Err(Fail::null(what));
    }
    if cap < v.len() {
        return Err(Fail::new(
            DFRT_ERR_BUFFER_TOO_SMALL,
            format!("`{what}` holds {cap} {unit}, {} are needed", v.len()),
        ));
    }
    // SAFETY: `out` is valid for `cap >= v.len()` writes (contract); the source is a live slice
    // that cannot overlap a caller-owned buffer.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) };
    Ok(())
}

impl DfrtSession {
    fn info(&self) -> DfrtSessionInfo {
        let lat = self.opts.latent(&self.model.cfg);
        let frames = self.opts.frames.unwrap_or(0);
        DfrtSessionInfo {
            channels: lat.channels,
            height: lat.height,
            width: lat.width,
            frames,
            frames_per_chunk: FRAMES_PER_CHUNK,
            chunk_len: FRAMES_PER_CHUNK * lat.frame_len(),
            chunks_total: frames / FRAMES_PER_CHUNK,
            chunks_done: self.run.as_ref().map_or(0, Engine::chunk_index),
            noise_len: frames / FRAMES_PER_CHUNK * draws_per_chunk(&lat),
            forwards_per_chunk: dfrt_core::pipeline::DENOISING_STEPS.len() + 1,
        }
    }

    /// Settings may change only before the first chunk (or after a reset).
    fn settable(&mut self, what: &str) -> Result<(), Fail> {
        let done = self.run.as_ref().map_or(0, Engine::chunk_index);
        if done > 0 || self.broken {
            return Err(Fail::new(
                DFRT_ERR_STATE,
                format!("cannot {what} after generation started ({done} chunks done); call dfrt_session_reset first"),
            ));
        }
        self.run = None;
        Ok(())
    }

    fn noise(&self) -> Result<Noise, Fail> {
        Ok(match &self.noise {
            NoiseSource::Seed(s) => Noise::seeded(*s),
            NoiseSource::Draws(v) => {
                let frames =
                    self.opts.frames.ok_or_else(|| Fail::new(DFRT_ERR_STATE, "given noise needs a bounded session"))?;
                noise_from_draws(v, frames, &self.opts.latent(&self.model.cfg))?
            }
        })
    }
}

/// Loads a dfrt runtime checkpoint (safetensors with `dfrt.config` metadata, as written by
/// `dfrt-weights convert` or `dfrt-weights synth`) for the CPU.
///
/// `dtype`: storage precision, `"f32"` or `"bf16"`; NULL means `"f32"`. On success `*out`
/// receives a model to release with `dfrt_model_free`; on failure it is set to NULL.
///
/// # Safety
/// `path` and `dtype` are NULL or NUL-terminated strings; `out` is NULL or writable; `err`
/// is NULL or points to a writable `DfrtError`.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_load(
    path: *const c_char,
    dtype: *const c_char,
    out: *mut *mut DfrtModel,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            *out = std::ptr::null_mut();
            let path = path_arg(path)?;
            let precision = if dtype.is_null() { Precision::F32 } else { Precision::parse(text(dtype, "dtype")?)? };
            let m = CpuModel::cpu(&path, precision)?;
            *out = Box::into_raw(Box::new(DfrtModel { inner: Arc::new(m) }));
            Ok(())
        })
    }
}

/// A path argument: raw bytes on Unix (any file name), UTF-8 elsewhere.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn path_arg(p: *const c_char) -> Result<PathBuf, Fail> {
    if p.is_null() {
        return Err(Fail::null("path"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: non-null and NUL-terminated by contract.
        let c = unsafe { CStr::from_ptr(p) };
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        // SAFETY: forwarded contract.
        Ok(PathBuf::from(unsafe { text(p, "path") }?))
    }
}

/// Releases a model. NULL is ignored. Sessions made from it stay valid (they share the
/// weights), so a model may be freed before its sessions.
///
/// # Safety
/// `model` is NULL or a model from `dfrt_model_load` not freed before, and no other thread
/// is using this handle during the call.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_free(model: *mut DfrtModel) {
    if model.is_null() {
        return;
    }
    // A panic in a destructor must not unwind into C; there is nobody to report it to.
    // SAFETY: the pointer came from Box::into_raw in dfrt_model_load and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
}

/// Fills `*out` with the model's dimensions.
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable; `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_info(
    model: *const DfrtModel,
    out: *mut DfrtModelInfo,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let m = model.as_ref().ok_or_else(|| Fail::null("model"))?;
            let out = out.as_mut().ok_or_else(|| Fail::null("out"))?;
            let c = &m.inner.cfg;
            *out = DfrtModelInfo {
                in_dim: c.in_dim,
                text_dim: c.text_dim,
                text_len: c.text_len,
                dim: c.dim,
                num_layers: c.num_layers,
                num_heads: c.num_heads,
                patch_height: c.patch_size[1],
                patch_width: c.patch_size[2],
            };
            Ok(())
        })
    }
}

/// Creates a session on `model`.
///
/// - `policy`: KV-cache policy, `full` | `window:W,sink:S` |
///   `dummy:N[,chunks:L][,ar-start:K][,packing:on|off]` (as `dfrt generate --policy`).
/// - `height`, `width`: latent size (multiples of the patch size, see `dfrt_model_info`).
/// - `frames`: latent frames in all, a multiple of 3; 0 = unbounded (window and dummy
///   policies with seeded noise only; generate until you stop).
/// - `device`: `"cpu"` (the reference backend), `"sim"` (the GPU backend with its kernels in
///   the SIMT simulator; slow, for tests) or `"cuda"` (GPU 0; `DFRT_ERR_DEVICE` here when no
///   driver or GPU is present); NULL means `"cpu"`. A GPU session checks its memory plan and
///   loads its own copy of the weights onto the device when its first chunk starts.
/// - `cuda_stream`: NULL, or for `"cuda"` a `cudaStream_t` / `CUstream` of GPU 0 that the
///   caller created (the runtime API's primary context; the legacy default stream is refused,
///   since it cannot be captured into CUDA graphs). Every kernel, copy and graph replay of the
///   session is queued on it, in order with the caller's own work on that stream, and
///   `dfrt_session_next_chunk` returns after its chunk's work on the stream is complete. The
///   stream must stay alive until the session is freed. NULL: the session uses a stream of
///   its own. `DFRT_ERR_INVALID_ARGUMENT` for a stream with `"cpu"` or `"sim"`.
///
/// The session starts with no text embedding (`dfrt_session_set_context` is required), noise
/// seed 0, and for `dummy` row-sampler seed 0. `*out` receives the session (NULL on failure).
///
/// # Safety
/// `model` is NULL or a live model; the strings are NULL or NUL-terminated; `out` is NULL or
/// writable; `err` as everywhere.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dfrt_session_new(
    model: *const DfrtModel,
    policy: *const c_char,
    height: usize,
    width: usize,
    frames: usize,
    device: *const c_char,
    cuda_stream: *mut c_void,
    out: *mut *mut DfrtSession,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            *out = std::ptr::null_mut();
            let m = model.as_ref().ok_or_else(|| Fail::null("model"))?;
            let policy = text(policy, "policy")?;
            let device = if device.is_null() { "cpu" } else { text(device, "device")? };
            let device = open_device(device, cuda_stream)?;
            let frames = (frames != 0).then_some(frames);
            // Sizes must be representable before anything multiplies them (info, buffers).
            let c = &m.inner.cfg;
            let chunk =
                [c.in_dim, height, width, FRAMES_PER_CHUNK, 4].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
            let all = chunk.and_then(|n| n.checked_mul(frames.unwrap_or(0) / FRAMES_PER_CHUNK + 1));
            if all.is_none() {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    format!("{height}×{width} latents × {} frames is too large to address", frames.unwrap_or(0)),
                ));
            }
            let opts = SessionOptions::parse(policy, height, width, frames, c)?;
            opts.check(c)?;
            let s = DfrtSession {
                model: m.inner.clone(),
                device,
                opts,
                context: None,
                noise: NoiseSource::Seed(0),
                run: None,
                broken: false,
                video: None,
            };
            *out = Box::into_raw(Box::new(s));
            Ok(())
        })
    }
}

/// Releases a session and its KV cache. NULL is ignored.
///
/// # Safety
/// `session` is NULL or a session from `dfrt_session_new` not freed before, not in use by
/// another thread.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_free(session: *mut DfrtSession) {
    if session.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in dfrt_session_new and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(session) })));
}

/// Fills `*out` with the session's geometry and position.
///
/// # Safety
/// `session` is NULL or a live session; `out` is NULL or writable; `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_info(
    session: *const DfrtSession,
    out: *mut DfrtSessionInfo,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session.as_ref().ok_or_else(|| Fail::null("session"))?;
            *out.as_mut().ok_or_else(|| Fail::null("out"))? = s.info();
            Ok(())
        })
    }
}

/// Sets the text embedding: `rows × cols` floats, row-major (`cols` = the model's
/// `text_dim`, 1 ≤ `rows` ≤ `text_len`; shorter contexts are zero padded as in the official
/// pipeline). The data is copied. Allowed before the first chunk or after a reset.
///
/// # Safety
/// `data` is NULL or valid for `rows · cols` reads; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_context(
    session: *mut DfrtSession,
    data: *const f32,
    rows: usize,
    cols: usize,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            if data.is_null() {
                return Err(Fail::null("data"));
            }
            let cfg = &s.model.cfg;
            if cols != cfg.text_dim || rows == 0 || rows > cfg.text_len {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    format!("context is [{rows}, {cols}], the model takes [1..={}, {}] (rows up to text_len, cols = text_dim)", cfg.text_len, cfg.text_dim),
                ));
            }
            let v = std::slice::from_raw_parts(data, rows * cols);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    format!("context value {i} (row {}, col {}) is {} (not finite)", i / cols, i % cols, v[i]),
                ));
            }
            s.settable("set the context")?;
            s.context = Some((v.to_vec(), rows));
            Ok(())
        })
    }
}

/// Draws the noise from the seeded generator (PCG32 + Box–Muller, `dfrt::pipeline::Rng`)
/// and seeds Dummy Forcing's query-row sampler, as `dfrt generate --seed` does. Replaces
/// noise given by `dfrt_session_set_noise`. Allowed before the first chunk or after a reset.
///
/// # Safety
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_seed(
    session: *mut DfrtSession,
    seed: u64,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            s.settable("set the seed")?;
            s.noise = NoiseSource::Seed(seed);
            s.opts.seed = seed;
            Ok(())
        })
    }
}

/// Runs the GPU devices' forwards as recorded CUDA graphs (`enabled` non-zero, the default) or
/// launches every kernel directly (0; e.g. to profile per-block NVTX ranges with ncu). The
/// latents are the same bit for bit. No effect on `"cpu"`. Allowed before the first chunk or
/// after a reset.
///
/// # Safety
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_graphs(
    session: *mut DfrtSession,
    enabled: c_int,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            s.settable("switch graphs")?;
            s.opts.graphs = enabled != 0;
            Ok(())
        })
    }
}

/// Gives every random draw of the run instead of a seed: `len` must equal the session's
/// `noise_len` (bounded sessions only). Layout, per chunk: its initial noise, then the
/// re-noise of denoising steps 0, 1, 2, each `[3, C, H, W]` float. Filling it with the seeded
/// generator's normals gives the same latents as `dfrt_session_set_seed`. The data is copied;
/// the row-sampler seed stays as set. Allowed before the first chunk or after a reset.
///
/// # Safety
/// `noise` is NULL or valid for `len` reads; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_noise(
    session: *mut DfrtSession,
    noise: *const f32,
    len: usize,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            if noise.is_null() {
                return Err(Fail::null("noise"));
            }
            let frames = s.opts.frames.ok_or_else(|| {
                Fail::new(DFRT_ERR_STATE, "given noise needs a bounded session (frames > 0 at dfrt_session_new)")
            })?;
            let v = std::slice::from_raw_parts(noise, len);
            noise_from_draws(v, frames, &s.opts.latent(&s.model.cfg))?;
            s.settable("set the noise")?;
            s.noise = NoiseSource::Draws(v.to_vec());
            Ok(())
        })
    }
}

/// Dummy Forcing: reuses a head program (the JSON of `dfrt generate --save-heads` or
/// `dfrt_session_head_program`) instead of calibrating. It must be made for this model and
/// have the policy's dummy-head budget. Allowed before the first chunk or after a reset.
///
/// # Safety
/// `json` is NULL or a NUL-terminated string; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_head_program(
    session: *mut DfrtSession,
    json: *const c_char,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            let p = HeadProgram::from_json(text(json, "json")?)?;
            let mut opts = s.opts.clone();
            opts.heads = Some(p);
            opts.check(&s.model.cfg)?;
            s.settable("set the head program")?;
            s.opts = opts;
            Ok(())
        })
    }
}

/// Generates the next chunk (3 latent frames, `[3, C, H, W]` floats) into `out`, whose
/// capacity (in floats) must be at least the session's `chunk_len`; `*written` (if not NULL)
/// receives the count written. `progress` (may be NULL) is called once per model forward with
/// `user`. Returns `DFRT_ERR_FINISHED` once every frame is generated. After a failure
/// mid-chunk the session needs `dfrt_session_reset`.
///
/// # Safety
/// `out` is NULL or valid for `capacity` float writes; `written` is NULL or writable;
/// `progress` is NULL or a function safe to call with `user`; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_next_chunk(
    session: *mut DfrtSession,
    out: *mut f32,
    capacity: usize,
    written: *mut usize,
    progress: DfrtProgressFn,
    user: *mut c_void,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if let Some(w) = written.as_mut() {
                *w = 0;
            }
            let s = session_mut(session)?;
            if s.broken {
                return Err(Fail::new(
                    DFRT_ERR_STATE,
                    "an earlier call failed in the middle of a chunk; call dfrt_session_reset",
                ));
            }
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            let info = s.info();
            if info.chunks_total > 0 && info.chunks_done >= info.chunks_total {
                return Err(Fail::new(
                    DFRT_ERR_FINISHED,
                    format!("all {} frames are generated; call dfrt_session_reset to start over", info.frames),
                ));
            }
            if capacity < info.chunk_len {
                return Err(Fail::new(
                    DFRT_ERR_BUFFER_TOO_SMALL,
                    format!("`out` holds {capacity} floats, a chunk needs {}", info.chunk_len),
                ));
            }
            if s.run.is_none() {
                let (ctx, rows) = s.context.as_ref().ok_or_else(|| {
                    Fail::new(DFRT_ERR_STATE, "no text embedding: call dfrt_session_set_context first")
                })?;
                let noise = s.noise()?;
                s.run = Some(Engine::new(s.device, &s.model, &s.opts, ctx, *rows, noise)?);
            }
            let mut forward = 0;
            let mut on_progress = |p: Progress| {
                forward += 1;
                if let Some(cb) = progress {
                    let r = DfrtProgress {
                        chunk: p.pass.chunk,
                        step: p.pass.step.map_or(-1, |s| s as i32),
                        forward,
                        forwards_per_chunk: info.forwards_per_chunk,
                        chunks_total: info.chunks_total,
                    };
                    // SAFETY: the caller gave a function safe to call with `user`; the report
                    // lives for the call.
                    cb(&r, user);
                }
            };
            s.broken = true;
            let x = s.run.as_mut().expect("built above").next_chunk(&mut on_progress)?;
            s.broken = false;
            copy_out(&x, out, capacity, "out", "floats")?;
            if let Some(w) = written.as_mut() {
                *w = x.len();
            }
            Ok(())
        })
    }
}

/// Switches the prompt between chunks (interactive generation): `rows × cols` floats as for
/// `dfrt_session_set_context`. Before the first chunk it only replaces the context. After it,
/// under a `dummy` policy, the next chunk follows the new prompt with the KV cache rebuilt as
/// Dummy Forcing's interactive pipeline does (the last ≤ 12 frames re-run at t = 0 with the new
/// prompt, the calibrated head groups re-packed); it must come after the calibration chunk.
/// Other policies, and a switch before calibration, return `DFRT_ERR_POLICY` after the first
/// chunk (LongLive's window recache is not implemented). A reset returns to the first context.
///
/// # Safety
/// `data` is NULL or valid for `rows · cols` reads; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_switch_prompt(
    session: *mut DfrtSession,
    data: *const f32,
    rows: usize,
    cols: usize,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            if data.is_null() {
                return Err(Fail::null("data"));
            }
            let cfg = &s.model.cfg;
            if cols != cfg.text_dim || rows == 0 || rows > cfg.text_len {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    format!("context is [{rows}, {cols}], the model takes [1..={}, {}]", cfg.text_len, cfg.text_dim),
                ));
            }
            let v = std::slice::from_raw_parts(data, rows * cols);
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Fail::new(
                    DFRT_ERR_INVALID_ARGUMENT,
                    format!("context value {i} is {} (not finite)", v[i]),
                ));
            }
            if s.broken {
                return Err(Fail::new(
                    DFRT_ERR_STATE,
                    "an earlier call failed in the middle of a chunk; call dfrt_session_reset",
                ));
            }
            let Some(run) = s.run.as_mut() else {
                s.context = Some((v.to_vec(), rows));
                return Ok(());
            };
            // A refused switch leaves the session as it was; one that fails midway needs a reset.
            run.check_switch()?;
            s.broken = true;
            run.switch_prompt(v, rows)?;
            s.broken = false;
            Ok(())
        })
    }
}

/// Dummy Forcing: copies the head program in force (JSON, NUL-terminated) into `buf`.
/// `*needed` (if not NULL) receives its size in bytes, NUL included. A size query passes
/// `buf` NULL and `capacity` 0 and gets `DFRT_OK`. The program exists once calibration ran
/// (the clean pass of AR step K) or a given program was applied there; before that, and for
/// other policies, the call returns `DFRT_ERR_STATE`.
///
/// # Safety
/// `buf` is NULL or valid for `capacity` byte writes; `needed` is NULL or writable;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_head_program(
    session: *const DfrtSession,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session.as_ref().ok_or_else(|| Fail::null("session"))?;
            let json = program_of(s)?.to_json();
            let mut bytes = json.into_bytes();
            bytes.push(0);
            if let Some(n) = needed.as_mut() {
                *n = bytes.len();
            }
            if buf.is_null() && capacity == 0 {
                return Ok(());
            }
            copy_out(&bytes, buf as *mut u8, capacity, "buf", "bytes")
        })
    }
}

fn program_of(s: &DfrtSession) -> Result<&HeadProgram, Fail> {
    if !matches!(s.opts.policy, dfrt_core::cache::Policy::Dummy(_)) {
        return Err(Fail::new(
            DFRT_ERR_STATE,
            format!("policy `{}` has no head program (only dummy:N has)", s.opts.policy.name()),
        ));
    }
    s.run.as_ref().and_then(Engine::head_program).ok_or_else(|| {
        let k = match s.opts.policy {
            dfrt_core::cache::Policy::Dummy(spec) => spec.ar_start,
            _ => 0,
        };
        Fail::new(
            DFRT_ERR_STATE,
            format!("no head program yet: it is made in chunk {k} (AR step K = {k}); generate {} chunks first", k + 1),
        )
    })
}

/// Dummy Forcing: copies the head groups `[layers, heads]` (row-major; 0 = sink,
/// 1 = neighbor, 2 = dummy, as the `assignment` output of `dfrt generate`) into `out`.
/// `*layers` and `*heads` (if not NULL) receive the shape even when `out` is too small; a size
/// query passes `out` NULL and `capacity` 0. Availability as `dfrt_session_head_program`.
///
/// # Safety
/// `out` is NULL or valid for `capacity` writes; `layers`, `heads` are NULL or writable;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_head_assignment(
    session: *const DfrtSession,
    out: *mut i32,
    capacity: usize,
    layers: *mut usize,
    heads: *mut usize,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session.as_ref().ok_or_else(|| Fail::null("session"))?;
            let a = program_of(s)?.assignment();
            if let Some(l) = layers.as_mut() {
                *l = a.num_layers;
            }
            if let Some(h) = heads.as_mut() {
                *h = a.num_heads;
            }
            if out.is_null() && capacity == 0 {
                return Ok(());
            }
            let v: Vec<i32> = a.groups().iter().map(|&g| g as i32).collect();
            copy_out(&v, out, capacity, "out", "entries")
        })
    }
}

/// Starts the video over: drops the KV cache and the position; keeps the settings (context,
/// seed or noise, head program), so the next chunks repeat the same latents. Also the way
/// out of a session broken by a failure mid-chunk.
///
/// # Safety
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_reset(session: *mut DfrtSession, err: *mut DfrtError) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            s.run = None;
            s.broken = false;
            Ok(())
        })
    }
}

/// Loads a text encoder for the CPU: `encoder` is a text-encoder checkpoint (`dfrt-weights
/// convert-t5` of Wan's `models_t5_umt5-xxl-enc-bf16.pth`), `tokenizer` the tokenizer folder
/// (`google/umt5-xxl`, with `tokenizer.json`). `dtype` as in `dfrt_model_load`. The weights
/// stay memory-mapped; each block is widened to f32 only while a prompt is encoded. On
/// success `*out` receives a handle to release with `dfrt_text_encoder_free`; on failure NULL.
///
/// # Safety
/// `encoder`, `tokenizer` and `dtype` are NULL or NUL-terminated strings (`dtype` may be
/// NULL); `out` is NULL or writable; `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_text_encoder_load(
    encoder: *const c_char,
    tokenizer: *const c_char,
    dtype: *const c_char,
    out: *mut *mut DfrtTextEncoder,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            *out = std::ptr::null_mut();
            let enc = path_arg(encoder)?;
            let tok = path_arg(tokenizer)?;
            let precision = if dtype.is_null() { Precision::F32 } else { Precision::parse(text(dtype, "dtype")?)? };
            let be = CpuBackend::new(precision);
            let inner = dfrt_core::text::TextEncoder::load(&be, &enc, &tok, dfrt_core::text::Residency::Streamed)?;
            *out = Box::into_raw(Box::new(DfrtTextEncoder { be, inner }));
            Ok(())
        })
    }
}

/// Releases a text encoder. NULL is ignored. Contexts already set from it stay.
///
/// # Safety
/// `encoder` is NULL or a handle from `dfrt_text_encoder_load` not freed before, unused by
/// other threads during the call.
#[no_mangle]
pub unsafe extern "C" fn dfrt_text_encoder_free(encoder: *mut DfrtTextEncoder) {
    if encoder.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in dfrt_text_encoder_load and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(encoder) })));
}

/// Sets the text embedding from a prompt: Wan's cleaning, the tokenizer, the encoder (as
/// `dfrt generate --prompt`), then as `dfrt_session_set_context` with the encoder's
/// `text_len` rows. `prompt` must be UTF-8 (else `DFRT_ERR_INVALID_ARGUMENT`); an encoder
/// whose width is not the model's `text_dim` is `DFRT_ERR_INVALID_ARGUMENT` too. Allowed
/// before the first chunk or after a reset.
///
/// # Safety
/// `prompt` is NULL or a NUL-terminated string; `encoder` NULL or a live text encoder;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_prompt(
    session: *mut DfrtSession,
    encoder: *const DfrtTextEncoder,
    prompt: *const c_char,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            let te = encoder.as_ref().ok_or_else(|| Fail::null("encoder"))?;
            let prompt = text(prompt, "prompt")?;
            te.inner.check_for(&s.model.cfg)?;
            s.settable("set the prompt")?;
            let e = te.inner.encode(&te.be, prompt)?;
            s.context = Some((e.context.data, e.context.rows));
            Ok(())
        })
    }
}

/// The name of a status code (`"DFRT_ERR_POLICY"`), or `"DFRT_UNKNOWN"`. The string is
/// static: do not free it.
#[no_mangle]
pub extern "C" fn dfrt_status_name(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"DFRT_OK",
        1 => c"DFRT_ERR_NULL",
        2 => c"DFRT_ERR_INVALID_ARGUMENT",
        3 => c"DFRT_ERR_IO",
        4 => c"DFRT_ERR_CHECKPOINT",
        5 => c"DFRT_ERR_POLICY",
        6 => c"DFRT_ERR_DEVICE",
        7 => c"DFRT_ERR_STATE",
        8 => c"DFRT_ERR_FINISHED",
        9 => c"DFRT_ERR_BUFFER_TOO_SMALL",
        10 => c"DFRT_ERR_PANIC",
        _ => c"DFRT_UNKNOWN",
    };
    s.as_ptr()
}

/// The library version (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn dfrt_version() -> *const c_char {
    const V: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("version has no NUL"),
    };
    V.as_ptr()
}

#[cfg(test)]
mod tests;

/// A session's video geometry, once a VAE is attached (`dfrt_session_set_vae`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfrtVideoInfo {
    /// Pixels of a decoded frame.
    pub width: usize,
    pub height: usize,
    /// Frames the first chunk decodes to (9 with Wan2.1's VAE: 1 + 4·2) and every later chunk (12).
    pub first_chunk_frames: usize,
    pub chunk_frames: usize,
    /// Frames of the whole video (1 + 4·(latent frames − 1)); 0 = unbounded.
    pub frames_total: usize,
    /// Bytes of the largest chunk as RGB8: `max(first_chunk_frames, chunk_frames)·height·width·3`.
    pub max_chunk_rgb8_bytes: usize,
}

fn video_info(s: &DfrtSession) -> Option<DfrtVideoInfo> {
    let d = s.video.as_ref()?;
    let cfg = &d.vae().cfg;
    let lat = s.opts.latent(&s.model.cfg);
    let sc = cfg.spatial_scale();
    let first = cfg.pixel_frames(FRAMES_PER_CHUNK);
    let later = cfg.pixel_frames(2 * FRAMES_PER_CHUNK) - first;
    let (w, h) = (lat.width * sc, lat.height * sc);
    Some(DfrtVideoInfo {
        width: w,
        height: h,
        first_chunk_frames: first,
        chunk_frames: later,
        frames_total: s.opts.frames.map_or(0, |f| cfg.pixel_frames(f)),
        max_chunk_rgb8_bytes: first.max(later) * w * h * 3,
    })
}

/// Attaches a Wan VAE (a runtime VAE checkpoint from `dfrt-weights convert Wan2.1_VAE.pth` or
/// `dfrt-weights synth --vae`) so that `dfrt_session_next_frames_rgb8` / `_f32` hand out
/// decoded frames; the decoder runs on the CPU and keeps its caches from chunk to chunk.
/// `dtype`: `"f32"` or `"bf16"` (NULL: `"f32"`). Only before the first chunk (or after a
/// reset). `*info` (if not NULL) receives the video geometry. The VAE's latent channels must be
/// the model's.
///
/// # Safety
/// `path` and `dtype` are NULL or NUL-terminated strings; `info` is NULL or writable;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_vae(
    session: *mut DfrtSession,
    path: *const c_char,
    dtype: *const c_char,
    info: *mut DfrtVideoInfo,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            let path = text(path, "path")?;
            let dtype = if dtype.is_null() { "f32" } else { text(dtype, "dtype")? };
            let precision = Precision::parse(dtype).map_err(|e| Fail::new(DFRT_ERR_INVALID_ARGUMENT, e.to_string()))?;
            s.settable("attach a VAE")?;
            let vae = dfrt_core::vae::Vae::open(path, precision)?;
            let lat = s.opts.latent(&s.model.cfg);
            dfrt_core::video::stream::check_latents(&vae, lat.channels, lat.height, lat.width)?;
            s.video = Some(dfrt_core::vae::Decoder::new(Arc::new(vae)));
            if let Some(i) = info.as_mut() {
                *i = video_info(s).expect("attached above");
            }
            Ok(())
        })
    }
}

/// Generates the next chunk and decodes it; returns the pixels `[n, 3, H, W]` in [-1, 1].
/// `need(n)` is checked against the caller's buffer before any work.
///
/// # Safety
/// `progress` is NULL or a function safe to call with `user`.
unsafe fn next_decoded(
    s: &mut DfrtSession,
    need: &dyn Fn(&DfrtVideoInfo, usize) -> Result<(), Fail>,
    progress: DfrtProgressFn,
    user: *mut c_void,
) -> Result<(Vec<f32>, usize), Fail> {
    if s.broken {
        return Err(Fail::new(
            DFRT_ERR_STATE,
            "an earlier call failed in the middle of a chunk; call dfrt_session_reset",
        ));
    }
    let vi = video_info(s).ok_or_else(|| Fail::new(DFRT_ERR_STATE, "no VAE: call dfrt_session_set_vae first"))?;
    let info = s.info();
    if info.chunks_total > 0 && info.chunks_done >= info.chunks_total {
        return Err(Fail::new(
            DFRT_ERR_FINISHED,
            format!("all {} frames are generated; call dfrt_session_reset to start over", info.frames),
        ));
    }
    let n = if info.chunks_done == 0 { vi.first_chunk_frames } else { vi.chunk_frames };
    need(&vi, n)?;
    if s.run.is_none() {
        let (ctx, rows) = s
            .context
            .as_ref()
            .ok_or_else(|| Fail::new(DFRT_ERR_STATE, "no text embedding: call dfrt_session_set_context first"))?;
        let noise = s.noise()?;
        s.run = Some(Engine::new(s.device, &s.model, &s.opts, ctx, *rows, noise)?);
    }
    let mut forward = 0;
    let mut on_progress = |p: Progress| {
        forward += 1;
        if let Some(cb) = progress {
            let r = DfrtProgress {
                chunk: p.pass.chunk,
                step: p.pass.step.map_or(-1, |s| s as i32),
                forward,
                forwards_per_chunk: info.forwards_per_chunk,
                chunks_total: info.chunks_total,
            };
            // SAFETY: the caller gave a function safe to call with `user`; the report lives
            // for the call.
            unsafe { cb(&r, user) };
        }
    };
    s.broken = true;
    let x = s.run.as_mut().expect("built above").next_chunk(&mut on_progress)?;
    let dec = s.video.as_mut().expect("checked above");
    if info.chunks_done == 0 {
        dec.reset();
    }
    let lat = s.opts.latent(&s.model.cfg);
    let px = dec.decode_chunk(&x, FRAMES_PER_CHUNK, lat.height, lat.width)?;
    s.broken = false;
    Ok((px, n))
}

/// Generates the next chunk, decodes it with the attached VAE and copies its frames into
/// `out` as RGB8, `[n, height, width, 3]` (n = `first_chunk_frames` for the first chunk,
/// `chunk_frames` after; `*frames` receives n). `capacity` is in bytes; a buffer too small is
/// refused before any work (`DFRT_ERR_BUFFER_TOO_SMALL`). States as `dfrt_session_next_chunk`.
///
/// # Safety
/// `out` is NULL or valid for `capacity` byte writes; `frames` is NULL or writable;
/// `progress` is NULL or a function safe to call with `user`; `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_next_frames_rgb8(
    session: *mut DfrtSession,
    out: *mut u8,
    capacity: usize,
    frames: *mut usize,
    progress: DfrtProgressFn,
    user: *mut c_void,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if let Some(f) = frames.as_mut() {
                *f = 0;
            }
            let s = session_mut(session)?;
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            let need = |vi: &DfrtVideoInfo, n: usize| {
                let b = n * vi.width * vi.height * 3;
                if capacity < b {
                    return Err(Fail::new(
                        DFRT_ERR_BUFFER_TOO_SMALL,
                        format!("`out` holds {capacity} bytes, this chunk's {n} RGB8 frames need {b}"),
                    ));
                }
                Ok(())
            };
            let (px, n) = next_decoded(s, &need, progress, user)?;
            let vi = video_info(s).expect("decoded above");
            let fl = 3 * vi.width * vi.height;
            let rgb: Vec<u8> =
                px.chunks(fl).flat_map(|f| dfrt_core::video::rgb8_from_pixels(f, vi.width, vi.height)).collect();
            copy_out(&rgb, out, capacity, "out", "bytes")?;
            if let Some(f) = frames.as_mut() {
                *f = n;
            }
            Ok(())
        })
    }
}

/// As `dfrt_session_next_frames_rgb8`, with the decoder's floats: `[n, 3, height, width]` in
/// [-1, 1] (planar RGB); `capacity` is in floats.
///
/// # Safety
/// `out` is NULL or valid for `capacity` float writes; the rest as
/// `dfrt_session_next_frames_rgb8`.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_next_frames_f32(
    session: *mut DfrtSession,
    out: *mut f32,
    capacity: usize,
    frames: *mut usize,
    progress: DfrtProgressFn,
    user: *mut c_void,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if let Some(f) = frames.as_mut() {
                *f = 0;
            }
            let s = session_mut(session)?;
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            let need = |vi: &DfrtVideoInfo, n: usize| {
                let b = n * vi.width * vi.height * 3;
                if capacity < b {
                    return Err(Fail::new(
                        DFRT_ERR_BUFFER_TOO_SMALL,
                        format!("`out` holds {capacity} floats, this chunk's {n} frames need {b}"),
                    ));
                }
                Ok(())
            };
            let (px, n) = next_decoded(s, &need, progress, user)?;
            copy_out(&px, out, capacity, "out", "floats")?;
            if let Some(f) = frames.as_mut() {
                *f = n;
            }
            Ok(())
        })
    }
}
