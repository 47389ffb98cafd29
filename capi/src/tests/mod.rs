//! The C API driven from Rust: every error path returns its code and a readable message
//! (never a panic, never an unwind into the caller), and the working paths (seed vs given
//! noise, reset, progress, head programs, threads) behave as documented.

use std::ffi::{c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use super::*;
use crate::errors::DfrtStatus::*;
use dfrt_core::api::SessionOptions;
use dfrt_core::backend::cpu::CpuBackend;
use dfrt_core::backend::Precision;
use dfrt_core::dummy::HeadProgram;
use dfrt_core::ModelConfig;

mod errors;
mod sessions;
mod text;
mod video;

const H: usize = 8;
const W: usize = 12;

/// The unit tests' scratch dir, shared by the models they make once (a static is never
/// dropped, so it lives as long as the process).
pub(super) fn scratch() -> &'static dfrt_testkit::Scratch {
    static D: OnceLock<dfrt_testkit::Scratch> = OnceLock::new();
    D.get_or_init(|| dfrt_testkit::Scratch::new("capi-unit"))
}

/// A tiny synthetic model (preset `tiny`: 2 layers × 2 heads, text_dim 64), made once.
pub(super) fn model_path() -> &'static CString {
    static P: OnceLock<CString> = OnceLock::new();
    P.get_or_init(|| {
        let p = scratch().join("tiny.safetensors");
        dfrt_weights::synth_checkpoint(&p, &ModelConfig::preset("tiny").unwrap(), 3, dfrt_core::checkpoint::DType::F32)
            .unwrap();
        CString::new(p.to_str().unwrap()).unwrap()
    })
}

/// Runs a call with a fresh error report; checks that the report agrees with the status
/// and that a failure explains itself.
pub(super) fn call(f: impl FnOnce(*mut DfrtError) -> DfrtStatus) -> (DfrtStatus, String) {
    // Poison the report: a call must overwrite both fields.
    let mut e = DfrtError { code: DFRT_ERR_PANIC, message: [b'x' as c_char; DFRT_ERROR_MESSAGE_LEN] };
    let st = f(&mut e);
    assert_eq!(e.code, st, "report code vs returned status");
    assert!(e.message.contains(&0), "message is NUL-terminated");
    let msg = e.message();
    if st == DFRT_OK {
        assert!(msg.is_empty(), "success leaves an empty message: {msg}");
    } else {
        assert!(msg.len() > 10, "{st:?}: message too short: {msg:?}");
        assert!(!msg.contains("panicked") || st == DFRT_ERR_PANIC, "{msg}");
    }
    (st, msg)
}

pub(super) fn expect(what: &str, (st, msg): (DfrtStatus, String), code: DfrtStatus, needle: &str) {
    println!("{what}: {st:?}: {msg}");
    assert_eq!(st, code, "{what}: {msg}");
    assert!(msg.contains(needle), "{what}: `{needle}` not in: {msg}");
}

pub(super) struct Model(*mut DfrtModel);
impl Drop for Model {
    fn drop(&mut self) {
        unsafe { dfrt_model_free(self.0) }
    }
}
// SAFETY: a DfrtModel is immutable after loading (documented as shareable between threads).
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

pub(super) struct Sess(*mut DfrtSession);
impl Drop for Sess {
    fn drop(&mut self) {
        unsafe { dfrt_session_free(self.0) }
    }
}

pub(super) fn load() -> Model {
    let mut m = null_mut();
    let (st, msg) = call(|e| unsafe { dfrt_model_load(model_path().as_ptr(), null(), &mut m, e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    Model(m)
}

pub(super) fn new_session(m: &Model, policy: &str, frames: usize) -> Result<Sess, (DfrtStatus, String)> {
    let p = CString::new(policy).unwrap();
    let mut s = null_mut();
    let r =
        call(|e| unsafe { dfrt_session_new(m.0, p.as_ptr(), H, W, frames, c"cpu".as_ptr(), null_mut(), &mut s, e) });
    if r.0 == DFRT_OK {
        assert!(!s.is_null());
        Ok(Sess(s))
    } else {
        assert!(s.is_null(), "failure leaves *out NULL");
        Err(r)
    }
}

/// A text embedding `[rows, 64]` of the test kit's normals (fixed per `salt`, so that a C
/// run and a Rust run of the same test see the same context).
pub(super) fn context(rows: usize, salt: u64) -> Vec<f32> {
    dfrt_testkit::Rng::seeded(1000 + salt).normals(rows * 64)
}

pub(super) fn info(s: &Sess) -> DfrtSessionInfo {
    let mut i = DfrtSessionInfo::default();
    assert_eq!(call(|e| unsafe { dfrt_session_info(s.0, &mut i, e) }).0, DFRT_OK);
    i
}

/// Generates every chunk; returns the latents and the progress reports.
pub(super) fn run_all(s: &Sess) -> (Vec<f32>, Vec<DfrtProgress>) {
    unsafe extern "C-unwind" fn record(p: *const DfrtProgress, user: *mut c_void) {
        // SAFETY: `user` is the Vec passed below; `p` is valid for the call.
        unsafe { (*(user as *mut Vec<DfrtProgress>)).push(*p) };
    }
    let i = info(s);
    let mut out = Vec::new();
    let mut reports: Vec<DfrtProgress> = Vec::new();
    loop {
        let mut buf = vec![f32::NAN; i.chunk_len + 5];
        let mut n = usize::MAX;
        let (st, msg) = call(|e| unsafe {
            dfrt_session_next_chunk(
                s.0,
                buf.as_mut_ptr(),
                buf.len(),
                &mut n,
                Some(record),
                &mut reports as *mut _ as *mut c_void,
                e,
            )
        });
        if st == DFRT_ERR_FINISHED {
            assert_eq!(n, 0);
            break;
        }
        assert_eq!(st, DFRT_OK, "{msg}");
        assert_eq!(n, i.chunk_len);
        assert!(buf[..n].iter().all(|x| x.is_finite()), "chunk fully written");
        assert!(buf[n..].iter().all(|x| x.is_nan()), "nothing written past the chunk");
        out.extend_from_slice(&buf[..n]);
    }
    (out, reports)
}

pub(super) fn set_ctx(s: &Sess, ctx: &[f32], rows: usize) -> (DfrtStatus, String) {
    call(|e| unsafe { dfrt_session_set_context(s.0, ctx.as_ptr(), rows, 64, e) })
}
