//! Sessions: settings, inputs, and the run opened at the first chunk by `dfrt::run::open`,
//! the call `dfrt generate` makes, so a C caller gets the Rust API's latents bit for bit.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use dfrt_core::api::{draws_per_chunk, noise_from_draws, SessionOptions};
use dfrt_core::backend::Precision;
use dfrt_core::config::{ModelConfig, FRAMES_PER_CHUNK};
use dfrt_core::dummy::HeadProgram;
use dfrt_core::pipeline::{Graphs, Noise, Progress};
use dfrt_core::run::{CudaStream, DeviceChoice, ModelSource, RunSession, Target};

use crate::errors::DfrtStatus::*;
use crate::errors::{copy_out, guard, text, DfrtError, DfrtStatus, Fail};
use crate::model::DfrtModel;

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

/// A generation session (opaque): settings, inputs and, once generation starts, the KV cache.
/// Use from one thread at a time.
pub struct DfrtSession {
    /// The checkpoint (shared with the model handle: CPU sessions share its CPU weights, a
    /// GPU session loads its own copy onto the device).
    pub(crate) model: Arc<ModelSource>,
    pub(crate) precision: Precision,
    pub(crate) device: DeviceChoice,
    pub(crate) opts: SessionOptions,
    pub(crate) context: Option<(Vec<f32>, usize)>,
    pub(crate) noise: NoiseSource,
    /// Opened at the first chunk from the settings above (`dfrt::run::open`); dropped by
    /// reset and by setters.
    pub(crate) run: Option<Box<dyn RunSession>>,
    /// Set while a chunk is generated; still set after a failure or a panic mid-chunk, when
    /// the run's state is unknown and only a reset may follow.
    pub(crate) broken: bool,
    /// The VAE decoder of `dfrt_session_set_vae`; its caches restart with the video.
    pub(crate) video: Option<dfrt_core::vae::Decoder>,
}

pub(crate) enum NoiseSource {
    Seed(u64),
    Draws(Vec<f32>),
}

/// The device of `dfrt_session_new`: its name parsed once, with the caller's CUDA stream.
/// A CUDA device is opened here once, so a machine without a GPU (or a stream of another
/// context) fails at creation rather than at the first chunk.
pub(crate) fn open_device(name: &str, cuda_stream: *mut c_void) -> Result<DeviceChoice, Fail> {
    let stream = (!cuda_stream.is_null()).then_some(CudaStream(cuda_stream as usize));
    let device = name.parse::<DeviceChoice>()?;
    let device = device.with_stream(stream).map_err(|e| Fail::new(DFRT_ERR_INVALID_ARGUMENT, e.to_string()))?;
    device.probe()?;
    Ok(device)
}

pub(crate) fn head_program(run: &dyn RunSession) -> Option<&HeadProgram> {
    run.dummy().and_then(|d| d.program())
}

/// # Safety
/// `s` is NULL or a live session from `dfrt_session_new` not used by another thread.
pub(crate) unsafe fn session_mut<'a>(s: *mut DfrtSession) -> Result<&'a mut DfrtSession, Fail> {
    // SAFETY: per this function's contract.
    unsafe { s.as_mut() }.ok_or_else(|| Fail::null("session"))
}

impl DfrtSession {
    pub(crate) fn info(&self) -> DfrtSessionInfo {
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
            chunks_done: self.run.as_ref().map_or(0, |r| r.chunk_index()),
            noise_len: frames / FRAMES_PER_CHUNK * draws_per_chunk(&lat),
            forwards_per_chunk: dfrt_core::pipeline::DENOISING_STEPS.len() + 1,
        }
    }

    /// Settings may change only before the first chunk (or after a reset).
    pub(crate) fn settable(&mut self, what: &str) -> Result<(), Fail> {
        let done = self.run.as_ref().map_or(0, |r| r.chunk_index());
        if done > 0 || self.broken {
            return Err(Fail::new(
                DFRT_ERR_STATE,
                format!("cannot {what} after generation started ({done} chunks done); call dfrt_session_reset first"),
            ));
        }
        self.run = None;
        Ok(())
    }

    pub(crate) fn noise(&self) -> Result<Noise, Fail> {
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
                precision: m.precision,
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

/// A text embedding passed in: `rows × cols` finite floats, `cols` = the model's `text_dim`,
/// 1 ≤ `rows` ≤ `text_len` (the one check of `dfrt_session_set_context` and
/// `dfrt_session_switch_prompt`).
///
/// # Safety
/// `data` is NULL or valid for `rows · cols` reads for `'a`.
unsafe fn context_arg<'a>(cfg: &ModelConfig, data: *const f32, rows: usize, cols: usize) -> Result<&'a [f32], Fail> {
    if data.is_null() {
        return Err(Fail::null("data"));
    }
    if cols != cfg.text_dim || rows == 0 || rows > cfg.text_len {
        return Err(Fail::new(
            DFRT_ERR_INVALID_ARGUMENT,
            format!(
                "context is [{rows}, {cols}], the model takes [1..={}, {}] (rows up to text_len, cols = text_dim)",
                cfg.text_len, cfg.text_dim
            ),
        ));
    }
    // SAFETY: non-null, and valid for `rows · cols` reads by this function's contract.
    let v = unsafe { std::slice::from_raw_parts(data, rows * cols) };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Fail::new(
            DFRT_ERR_INVALID_ARGUMENT,
            format!("context value {i} (row {}, col {}) is {} (not finite)", i / cols, i % cols, v[i]),
        ));
    }
    Ok(v)
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
            let v = context_arg(&s.model.cfg, data, rows, cols)?;
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
            s.opts.graphs = if enabled != 0 { Graphs::On } else { Graphs::Off };
            Ok(())
        })
    }
}

/// Sets how prompt switches (`dfrt_session_switch_prompt`) rebuild the KV cache:
/// - `frames`: the frames the recache pass re-runs; 0 keeps the policy's default (12 under
///   `dummy`, as the official interactive configs; under `window` the window, the only value
///   allowed there, since LongLive re-runs `min(local_attn_size, frames done)`);
/// - `global_sink`: non-zero for LongLive's `global_sink: true` (`window` policy only): a
///   switch keeps the sink frames' K/V from before it. `DFRT_ERR_POLICY` under other policies.
///
/// Allowed before the first chunk or after a reset.
///
/// # Safety
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_recache(
    session: *mut DfrtSession,
    frames: usize,
    global_sink: c_int,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            s.settable("set the recache")?;
            let mut opts = s.opts.clone();
            opts.recache_frames = (frames != 0).then_some(frames);
            opts.global_sink = global_sink != 0;
            opts.check(&s.model.cfg)?;
            s.opts = opts;
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
                let target = Target::new(s.device, s.precision);
                s.run = Some(dfrt_core::run::open(&target, &s.model, &s.opts, ctx, *rows, noise)?);
            }
            let mut forward = 0;
            let mut on_progress = |p: Progress| {
                forward += 1;
                if let Some(cb) = progress {
                    let r = DfrtProgress {
                        chunk: p.pass.chunk,
                        step: p.pass.step().map_or(-1, |s| s as i32),
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
/// the next chunk follows the new prompt with the KV cache rebuilt by one t = 0 pass over the
/// newest frames under the new prompt:
/// - `dummy`: as Dummy Forcing's interactive pipeline (the last ≤ 12 frames re-run, the
///   calibrated head groups re-packed); it must come after the calibration chunk;
/// - `window:W,sink:S`: as LongLive's (the last ≤ W frames re-run; the sink kept or rebuilt as
///   `dfrt_session_set_recache` says).
///
/// `full`, and a `dummy` switch before calibration, return `DFRT_ERR_POLICY` after the first
/// chunk. A reset returns to the first context.
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
            let v = context_arg(&s.model.cfg, data, rows, cols)?;
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

pub(crate) fn program_of(s: &DfrtSession) -> Result<&HeadProgram, Fail> {
    if !matches!(s.opts.policy, dfrt_core::policy::Policy::Dummy(_)) {
        return Err(Fail::new(
            DFRT_ERR_STATE,
            format!("policy `{}` has no head program (only dummy:N has)", s.opts.policy.name()),
        ));
    }
    s.run.as_deref().and_then(head_program).ok_or_else(|| {
        let k = match s.opts.policy {
            dfrt_core::policy::Policy::Dummy(spec) => spec.ar_start,
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
