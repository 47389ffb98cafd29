//! Video out: a session's VAE decoder and the decoded frames (RGB8 or f32).

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use dfrt_core::config::FRAMES_PER_CHUNK;
use dfrt_core::pipeline::Progress;
use dfrt_core::run::Target;

use crate::errors::DfrtStatus::*;
use crate::errors::{copy_out, guard, path_arg, precision_arg, text, DfrtError, DfrtStatus, Fail};
use crate::session::{session_mut, DfrtProgress, DfrtProgressFn, DfrtSession};

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

pub(crate) fn video_info(s: &DfrtSession) -> Option<DfrtVideoInfo> {
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

/// A loaded Wan VAE (opaque), to attach to any number of sessions with
/// `dfrt_session_attach_vae`: the weights are loaded once and shared, each session keeps its
/// own decoder caches. Immutable: share it between threads freely.
pub struct DfrtVae {
    pub(crate) vae: Arc<dfrt_core::vae::Vae>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<DfrtVae>();
};

/// Loads a Wan VAE (a runtime VAE checkpoint, as for `dfrt_session_set_vae`) at `dtype`
/// (`"f32"` or `"bf16"`; NULL: `"f32"`). On success `*out` receives a handle to release with
/// `dfrt_vae_free` (sessions attached to it keep the weights alive); on failure NULL.
///
/// # Safety
/// `path` and `dtype` are NULL or NUL-terminated strings; `out` is NULL or writable; `err` as
/// everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_vae_load(
    path: *const c_char,
    dtype: *const c_char,
    out: *mut *mut DfrtVae,
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
            let precision = precision_arg(dtype)?;
            let vae = Arc::new(dfrt_core::vae::Vae::open(&path, precision)?);
            *out = Box::into_raw(Box::new(DfrtVae { vae }));
            Ok(())
        })
    }
}

/// Releases a VAE handle. NULL is ignored. Sessions it was attached to keep decoding.
///
/// # Safety
/// `vae` is NULL or a handle from `dfrt_vae_load` not freed before, unused by other threads
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn dfrt_vae_free(vae: *mut DfrtVae) {
    if vae.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in dfrt_vae_load and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(vae) })));
}

/// Attaches a loaded VAE to a session (as `dfrt_session_set_vae`, without loading it again):
/// the session gets its own decoder (its caches) over the shared weights. Only before the
/// first chunk (or after a reset); the VAE's latent channels must be the model's. `*info` (if
/// not NULL) receives the video geometry.
///
/// # Safety
/// `vae` is NULL or a live handle from `dfrt_vae_load`; `info` is NULL or writable;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_attach_vae(
    session: *mut DfrtSession,
    vae: *const DfrtVae,
    info: *mut DfrtVideoInfo,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            let v = vae.as_ref().ok_or_else(|| Fail::null("vae"))?;
            s.settable("attach a VAE")?;
            let lat = s.opts.latent(&s.model.cfg);
            dfrt_core::video::stream::check_latents(&v.vae, lat.channels, lat.height, lat.width)?;
            attach(s, v.vae.clone(), info)
        })
    }
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
            let precision = precision_arg(dtype)?;
            s.settable("attach a VAE")?;
            let vae = dfrt_core::run::open_vae(path, precision, s.opts.latent(&s.model.cfg))?;
            attach(s, vae, info)
        })
    }
}

/// Gives the session its own decoder over `vae` and fills `*info` (if not NULL) with the
/// video geometry.
///
/// # Safety
/// `info` is NULL or writable.
unsafe fn attach(s: &mut DfrtSession, vae: Arc<dfrt_core::vae::Vae>, info: *mut DfrtVideoInfo) -> Result<(), Fail> {
    s.video = Some(dfrt_core::vae::Decoder::new(vae));
    // SAFETY: `info` is NULL or writable (contract).
    if let Some(i) = unsafe { info.as_mut() } {
        *i = video_info(s).ok_or_else(|| Fail::new(DFRT_ERR_STATE, "no video after attaching a VAE"))?;
    }
    Ok(())
}

/// Generates the next chunk and decodes it; returns the pixels `[n, 3, H, W]` in [-1, 1].
/// `need(n)` is checked against the caller's buffer before any work.
///
/// # Safety
/// `progress` is NULL or a function safe to call with `user`.
pub(crate) unsafe fn next_decoded(
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
