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
use dfrt_core::pipeline::Rng;
use dfrt_core::ModelConfig;

const H: usize = 8;
const W: usize = 12;

/// A tiny synthetic model (preset `tiny`: 2 layers × 2 heads, text_dim 64), made once.
fn model_path() -> &'static CString {
    static P: OnceLock<CString> = OnceLock::new();
    P.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("dfrt-capi-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("tiny.safetensors");
        dfrt_weights::synth_checkpoint(&p, &ModelConfig::preset("tiny").unwrap(), 3, dfrt_core::checkpoint::DType::F32)
            .unwrap();
        CString::new(p.to_str().unwrap()).unwrap()
    })
}

/// Runs a call with a fresh error report; checks that the report agrees with the status
/// and that a failure explains itself.
fn call(f: impl FnOnce(*mut DfrtError) -> DfrtStatus) -> (DfrtStatus, String) {
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

fn expect(what: &str, (st, msg): (DfrtStatus, String), code: DfrtStatus, needle: &str) {
    println!("{what}: {st:?}: {msg}");
    assert_eq!(st, code, "{what}: {msg}");
    assert!(msg.contains(needle), "{what}: `{needle}` not in: {msg}");
}

struct Model(*mut DfrtModel);
impl Drop for Model {
    fn drop(&mut self) {
        unsafe { dfrt_model_free(self.0) }
    }
}
// SAFETY: a DfrtModel is immutable after loading (documented as shareable between threads).
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

struct Sess(*mut DfrtSession);
impl Drop for Sess {
    fn drop(&mut self) {
        unsafe { dfrt_session_free(self.0) }
    }
}

fn load() -> Model {
    let mut m = null_mut();
    let (st, msg) = call(|e| unsafe { dfrt_model_load(model_path().as_ptr(), null(), &mut m, e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    Model(m)
}

fn new_session(m: &Model, policy: &str, frames: usize) -> Result<Sess, (DfrtStatus, String)> {
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

fn context(rows: usize, salt: u64) -> Vec<f32> {
    Rng::new(1000 + salt).normals(rows * 64)
}

fn info(s: &Sess) -> DfrtSessionInfo {
    let mut i = DfrtSessionInfo::default();
    assert_eq!(call(|e| unsafe { dfrt_session_info(s.0, &mut i, e) }).0, DFRT_OK);
    i
}

/// Generates every chunk; returns the latents and the progress reports.
fn run_all(s: &Sess) -> (Vec<f32>, Vec<DfrtProgress>) {
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

fn set_ctx(s: &Sess, ctx: &[f32], rows: usize) -> (DfrtStatus, String) {
    call(|e| unsafe { dfrt_session_set_context(s.0, ctx.as_ptr(), rows, 64, e) })
}

#[test]
fn null_pointers_are_reported() {
    let m = load();
    let s = new_session(&m, "full", 3).unwrap();
    let mut mp = null_mut();
    let mut sp = null_mut();
    let mut buf = vec![0f32; 10_000];
    let ctx = context(2, 0);
    expect("load path", call(|e| unsafe { dfrt_model_load(null(), null(), &mut mp, e) }), DFRT_ERR_NULL, "`path`");
    expect(
        "load out",
        call(|e| unsafe { dfrt_model_load(model_path().as_ptr(), null(), null_mut(), e) }),
        DFRT_ERR_NULL,
        "`out`",
    );
    expect(
        "model info",
        call(|e| unsafe { dfrt_model_info(null(), &mut DfrtModelInfo::default(), e) }),
        DFRT_ERR_NULL,
        "`model`",
    );
    expect("model info out", call(|e| unsafe { dfrt_model_info(m.0, null_mut(), e) }), DFRT_ERR_NULL, "`out`");
    expect(
        "session model",
        call(|e| unsafe { dfrt_session_new(null(), c"full".as_ptr(), H, W, 3, null(), null_mut(), &mut sp, e) }),
        DFRT_ERR_NULL,
        "`model`",
    );
    expect(
        "session policy",
        call(|e| unsafe { dfrt_session_new(m.0, null(), H, W, 3, null(), null_mut(), &mut sp, e) }),
        DFRT_ERR_NULL,
        "`policy`",
    );
    expect(
        "session out",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, W, 3, null(), null_mut(), null_mut(), e) }),
        DFRT_ERR_NULL,
        "`out`",
    );
    expect(
        "info",
        call(|e| unsafe { dfrt_session_info(null(), &mut DfrtSessionInfo::default(), e) }),
        DFRT_ERR_NULL,
        "`session`",
    );
    expect(
        "context session",
        call(|e| unsafe { dfrt_session_set_context(null_mut(), ctx.as_ptr(), 2, 64, e) }),
        DFRT_ERR_NULL,
        "`session`",
    );
    expect(
        "context data",
        call(|e| unsafe { dfrt_session_set_context(s.0, null(), 2, 64, e) }),
        DFRT_ERR_NULL,
        "`data`",
    );
    expect("seed", call(|e| unsafe { dfrt_session_set_seed(null_mut(), 1, e) }), DFRT_ERR_NULL, "`session`");
    expect("noise", call(|e| unsafe { dfrt_session_set_noise(s.0, null(), 5, e) }), DFRT_ERR_NULL, "`noise`");
    expect("heads json", call(|e| unsafe { dfrt_session_set_head_program(s.0, null(), e) }), DFRT_ERR_NULL, "`json`");
    expect(
        "chunk session",
        call(|e| unsafe {
            dfrt_session_next_chunk(null_mut(), buf.as_mut_ptr(), buf.len(), null_mut(), None, null_mut(), e)
        }),
        DFRT_ERR_NULL,
        "`session`",
    );
    expect(
        "chunk out",
        call(|e| unsafe { dfrt_session_next_chunk(s.0, null_mut(), 10_000, null_mut(), None, null_mut(), e) }),
        DFRT_ERR_NULL,
        "`out`",
    );
    expect(
        "program",
        call(|e| unsafe { dfrt_session_head_program(null(), null_mut(), 0, null_mut(), e) }),
        DFRT_ERR_NULL,
        "`session`",
    );
    expect(
        "assignment",
        call(|e| unsafe { dfrt_session_head_assignment(null(), null_mut(), 0, null_mut(), null_mut(), e) }),
        DFRT_ERR_NULL,
        "`session`",
    );
    expect("reset", call(|e| unsafe { dfrt_session_reset(null_mut(), e) }), DFRT_ERR_NULL, "`session`");
    // A NULL error report is fine: the status still comes back.
    assert_eq!(unsafe { dfrt_session_reset(null_mut(), null_mut()) }, DFRT_ERR_NULL);
    assert_eq!(unsafe { dfrt_model_load(null(), null(), &mut mp, null_mut()) }, DFRT_ERR_NULL);
    // Freeing NULL is a no-op.
    unsafe {
        dfrt_model_free(null_mut());
        dfrt_session_free(null_mut());
    }
}

#[test]
fn bad_files_are_checkpoint_errors_with_a_hint() {
    let d = std::env::temp_dir().join(format!("dfrt-capi-files-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let text = d.join("notes.txt");
    std::fs::write(&text, "not a checkpoint at all").unwrap();
    let plain = d.join("plain.safetensors");
    dfrt_core::checkpoint::write_safetensors(
        &plain,
        &[dfrt_core::checkpoint::OutTensor::f32("x", vec![2], &[1.0, 2.0])],
        &Default::default(),
    )
    .unwrap();
    let mut m = null_mut();
    let load = |p: &std::path::Path, m: &mut *mut DfrtModel| {
        let c = CString::new(p.to_str().unwrap()).unwrap();
        call(|e| unsafe { dfrt_model_load(c.as_ptr(), null(), m, e) })
    };
    expect("missing file", load(&d.join("nope.safetensors"), &mut m), DFRT_ERR_CHECKPOINT, "dfrt-weights synth");
    expect("text file", load(&text, &mut m), DFRT_ERR_CHECKPOINT, "dfrt-weights");
    expect("no config", load(&plain, &mut m), DFRT_ERR_CHECKPOINT, "dfrt-weights convert");
    assert!(m.is_null());
    expect(
        "dtype",
        call(|e| unsafe { dfrt_model_load(model_path().as_ptr(), c"f16".as_ptr(), &mut m, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "f16",
    );
    expect(
        "utf8",
        call(|e| unsafe { dfrt_model_load(model_path().as_ptr(), c"\xff".as_ptr(), &mut m, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "UTF-8",
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_sessions_are_refused_at_creation() {
    let m = load();
    expect("unknown policy", new_session(&m, "bogus", 3).err().unwrap(), DFRT_ERR_POLICY, "unknown policy");
    expect("dummy budget", new_session(&m, "dummy:99", 6).err().unwrap(), DFRT_ERR_POLICY, "99");
    expect("small window", new_session(&m, "window:2", 6).err().unwrap(), DFRT_ERR_POLICY, "at least");
    expect("full unbounded", new_session(&m, "full", 0).err().unwrap(), DFRT_ERR_POLICY, "frame count");
    expect("frames", new_session(&m, "full", 4).err().unwrap(), DFRT_ERR_INVALID_ARGUMENT, "multiple");
    let mut sp = null_mut();
    expect(
        "odd height",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), 7, W, 3, null(), null_mut(), &mut sp, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "patch",
    );
    expect(
        "zero width",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, 0, 3, null(), null_mut(), &mut sp, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "patch",
    );
    let cuda =
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, W, 3, c"cuda".as_ptr(), null_mut(), &mut sp, e) });
    match dfrt_core::gpu::CudaDevice::new(0, false) {
        Err(_) => expect("cuda without a GPU", cuda, DFRT_ERR_DEVICE, "CUDA"),
        Ok(_) => {
            assert_eq!(cuda.0, DFRT_OK, "cuda with a GPU: {}", cuda.1);
            unsafe { dfrt_session_free(sp) };
        }
    }
    let mut fake = 0u8;
    let stream = &mut fake as *mut u8 as *mut c_void;
    if dfrt_core::gpu::CudaDevice::new(0, false).is_err() {
        // Without a driver a caller's stream fails at creation like any CUDA session (the
        // stream is never touched). With a GPU, tests/gpu_sim.rs runs a session on a stream.
        expect(
            "stream on cuda without a GPU",
            call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, W, 3, c"cuda".as_ptr(), stream, &mut sp, e) }),
            DFRT_ERR_DEVICE,
            "CUDA",
        );
    }
    expect(
        "stream on sim",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, W, 3, c"sim".as_ptr(), stream, &mut sp, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "pass NULL",
    );
    expect(
        "tpu",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), H, W, 3, c"tpu".as_ptr(), null_mut(), &mut sp, e) }),
        DFRT_ERR_DEVICE,
        "unknown device",
    );
    let mut fake_stream = 0u8;
    expect(
        "stream on cpu",
        call(|e| unsafe {
            dfrt_session_new(
                m.0,
                c"full".as_ptr(),
                H,
                W,
                3,
                c"cpu".as_ptr(),
                &mut fake_stream as *mut u8 as *mut c_void,
                &mut sp,
                e,
            )
        }),
        DFRT_ERR_INVALID_ARGUMENT,
        "pass NULL",
    );
    let big = 1usize << 40;
    expect(
        "huge size",
        call(|e| unsafe { dfrt_session_new(m.0, c"full".as_ptr(), big, big, 3, null(), null_mut(), &mut sp, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "too large",
    );
    expect(
        "huge frames",
        call(|e| unsafe {
            dfrt_session_new(m.0, c"window:6".as_ptr(), H, W, usize::MAX / 3 * 3, null(), null_mut(), &mut sp, e)
        }),
        DFRT_ERR_INVALID_ARGUMENT,
        "too large",
    );
    assert!(sp.is_null());
    // A message longer than the report is truncated at a character boundary.
    let long = format!("ünknown-{}", "é".repeat(3000));
    let (st, msg) = new_session(&m, &long, 3).err().unwrap();
    assert_eq!(st, DFRT_ERR_POLICY);
    assert!(msg.len() < DFRT_ERROR_MESSAGE_LEN && msg.len() >= DFRT_ERROR_MESSAGE_LEN - 4, "{}", msg.len());
    assert!(msg.ends_with('é'), "cut at a character boundary");
}

#[test]
fn bad_inputs_and_states_are_reported() {
    let m = load();
    let s = new_session(&m, "window:6,sink:1", 6).unwrap();
    let i = info(&s);
    assert_eq!(
        (i.channels, i.height, i.width, i.frames, i.chunk_len, i.chunks_total, i.chunks_done),
        (16, H, W, 6, 3 * 16 * H * W, 2, 0)
    );
    assert_eq!((i.noise_len, i.forwards_per_chunk), (2 * 4 * i.chunk_len, 5));
    let mut buf = vec![0f32; i.chunk_len];
    let mut n = 7usize;
    expect(
        "no context",
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) }),
        DFRT_ERR_STATE,
        "set_context",
    );
    assert_eq!(n, 0);
    let ctx = context(20, 1);
    expect(
        "context cols",
        call(|e| unsafe { dfrt_session_set_context(s.0, ctx.as_ptr(), 2, 63, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "the model takes",
    );
    expect("context rows", set_ctx(&s, &ctx, 17), DFRT_ERR_INVALID_ARGUMENT, "[17, 64]");
    expect("context empty", set_ctx(&s, &ctx, 0), DFRT_ERR_INVALID_ARGUMENT, "[0, 64]");
    let mut nan = ctx.clone();
    nan[70] = f32::NAN;
    expect("context NaN", set_ctx(&s, &nan, 2), DFRT_ERR_INVALID_ARGUMENT, "row 1, col 6");
    expect(
        "noise length",
        call(|e| unsafe { dfrt_session_set_noise(s.0, ctx.as_ptr(), 100, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        &i.noise_len.to_string(),
    );
    expect(
        "program json",
        call(|e| unsafe { dfrt_session_set_head_program(s.0, c"{".as_ptr(), e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "JSON",
    );
    assert_eq!(set_ctx(&s, &ctx, 3).0, DFRT_OK);
    expect(
        "small buffer",
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len() - 1, &mut n, None, null_mut(), e) }),
        DFRT_ERR_BUFFER_TOO_SMALL,
        &i.chunk_len.to_string(),
    );
    assert_eq!(info(&s).chunks_done, 0, "a refused call does no work");
    assert_eq!(
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) }).0,
        DFRT_OK
    );
    assert_eq!((n, info(&s).chunks_done), (i.chunk_len, 1));
    expect("seed mid-run", call(|e| unsafe { dfrt_session_set_seed(s.0, 5, e) }), DFRT_ERR_STATE, "dfrt_session_reset");
    expect("context mid-run", set_ctx(&s, &ctx, 3), DFRT_ERR_STATE, "1 chunks done");
    expect(
        "program of window",
        call(|e| unsafe { dfrt_session_head_program(s.0, null_mut(), 0, null_mut(), e) }),
        DFRT_ERR_STATE,
        "no head program",
    );
    assert_eq!(
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) }).0,
        DFRT_OK
    );
    expect(
        "finished",
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) }),
        DFRT_ERR_FINISHED,
        "reset",
    );
    assert_eq!(call(|e| unsafe { dfrt_session_reset(s.0, e) }).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(s.0, 5, e) }).0, DFRT_OK, "settable after reset");
    // Unbounded sessions take no given noise.
    let u = new_session(&m, "window:6,sink:1", 0).unwrap();
    expect(
        "noise unbounded",
        call(|e| unsafe { dfrt_session_set_noise(u.0, ctx.as_ptr(), 1, e) }),
        DFRT_ERR_STATE,
        "bounded",
    );
}

#[test]
fn status_names_and_version() {
    let name = |c: i32| unsafe { CStr::from_ptr(dfrt_status_name(c)) }.to_str().unwrap().to_string();
    assert_eq!(name(0), "DFRT_OK");
    assert_eq!(name(DFRT_ERR_PANIC as i32), "DFRT_ERR_PANIC");
    assert_eq!(name(DFRT_ERR_BUFFER_TOO_SMALL as i32), "DFRT_ERR_BUFFER_TOO_SMALL");
    assert_eq!(name(-3), "DFRT_UNKNOWN");
    assert_eq!(unsafe { CStr::from_ptr(dfrt_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn given_noise_equals_the_seed_and_reset_repeats_the_video() {
    let m = load();
    let a = new_session(&m, "full", 6).unwrap();
    let ctx = context(5, 2);
    assert_eq!(set_ctx(&a, &ctx, 5).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(a.0, 77, e) }).0, DFRT_OK);
    let (x, reports) = run_all(&a);
    // 2 chunks × (4 steps + the clean pass), in order.
    let got: Vec<(usize, i32, usize)> = reports.iter().map(|p| (p.chunk, p.step, p.forward)).collect();
    let want: Vec<(usize, i32, usize)> =
        (0..2).flat_map(|c| [(c, 0, 1), (c, 1, 2), (c, 2, 3), (c, 3, 4), (c, -1, 5)]).collect();
    assert_eq!(got, want);
    assert!(reports.iter().all(|p| p.forwards_per_chunk == 5 && p.chunks_total == 2));

    assert_eq!(call(|e| unsafe { dfrt_session_reset(a.0, e) }).0, DFRT_OK);
    assert_eq!(info(&a).chunks_done, 0);
    let (again, _) = run_all(&a);
    assert_eq!(x, again, "reset repeats the video");

    let b = new_session(&m, "full", 6).unwrap();
    assert_eq!(set_ctx(&b, &ctx, 5).0, DFRT_OK);
    let draws = Rng::new(77).normals(info(&b).noise_len);
    assert_eq!(call(|e| unsafe { dfrt_session_set_noise(b.0, draws.as_ptr(), draws.len(), e) }).0, DFRT_OK);
    let (y, _) = run_all(&b);
    assert_eq!(x, y, "the seeded generator's draws, given, are the seed");

    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(b.0, 78, e) }).0, DFRT_ERR_STATE);
    assert_eq!(call(|e| unsafe { dfrt_session_reset(b.0, e) }).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(b.0, 78, e) }).0, DFRT_OK);
    let (z, _) = run_all(&b);
    let diff = x.iter().zip(&z).filter(|(p, q)| p != q).count();
    assert!(diff > x.len() / 2, "another seed gives another video ({diff} of {} differ)", x.len());
}

#[test]
fn head_programs_round_trip_through_the_api() {
    let m = load();
    let ctx = context(4, 3);
    let a = new_session(&m, "dummy:2", 9).unwrap();
    assert_eq!(set_ctx(&a, &ctx, 4).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(a.0, 21, e) }).0, DFRT_OK);
    let mut buf = vec![0f32; info(&a).chunk_len];
    assert_eq!(
        call(|e| unsafe { dfrt_session_next_chunk(a.0, buf.as_mut_ptr(), buf.len(), null_mut(), None, null_mut(), e) })
            .0,
        DFRT_OK
    );
    expect(
        "before calibration",
        call(|e| unsafe { dfrt_session_head_program(a.0, null_mut(), 0, null_mut(), e) }),
        DFRT_ERR_STATE,
        "generate 2 chunks",
    );
    assert_eq!(call(|e| unsafe { dfrt_session_reset(a.0, e) }).0, DFRT_OK);
    let (xa, _) = run_all(&a);

    let mut needed = 0;
    assert_eq!(call(|e| unsafe { dfrt_session_head_program(a.0, null_mut(), 0, &mut needed, e) }).0, DFRT_OK);
    let mut small = vec![0 as c_char; needed - 1];
    expect(
        "json buffer",
        call(|e| unsafe { dfrt_session_head_program(a.0, small.as_mut_ptr(), small.len(), null_mut(), e) }),
        DFRT_ERR_BUFFER_TOO_SMALL,
        &needed.to_string(),
    );
    let mut json = vec![0 as c_char; needed];
    assert_eq!(
        call(|e| unsafe { dfrt_session_head_program(a.0, json.as_mut_ptr(), json.len(), null_mut(), e) }).0,
        DFRT_OK
    );
    let json = unsafe { CStr::from_ptr(json.as_ptr()) }.to_owned();
    let p = HeadProgram::from_json(json.to_str().unwrap()).unwrap();

    let (mut l, mut h) = (0, 0);
    assert_eq!(call(|e| unsafe { dfrt_session_head_assignment(a.0, null_mut(), 0, &mut l, &mut h, e) }).0, DFRT_OK);
    assert_eq!((l, h), (2, 2));
    let mut asg = vec![-1i32; 3];
    expect(
        "assignment buffer",
        call(|e| unsafe { dfrt_session_head_assignment(a.0, asg.as_mut_ptr(), 3, null_mut(), null_mut(), e) }),
        DFRT_ERR_BUFFER_TOO_SMALL,
        "3 entries, 4 are needed",
    );
    asg.resize(4, -1);
    assert_eq!(
        call(|e| unsafe { dfrt_session_head_assignment(a.0, asg.as_mut_ptr(), 4, null_mut(), null_mut(), e) }).0,
        DFRT_OK
    );
    assert_eq!(asg, p.assignment().to_i64().iter().map(|&v| v as i32).collect::<Vec<_>>());
    assert_eq!(asg.iter().filter(|&&g| g == 2).count(), 2, "dummy:2");

    // Reusing the program skips calibration; calibration does not change the outputs, so
    // the video is the same.
    let b = new_session(&m, "dummy:2", 9).unwrap();
    assert_eq!(set_ctx(&b, &ctx, 4).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(b.0, 21, e) }).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_head_program(b.0, json.as_ptr(), e) }).0, DFRT_OK);
    let (xb, _) = run_all(&b);
    assert_eq!(xa, xb);
    // A program with another budget does not fit.
    let c = new_session(&m, "dummy:1", 9).unwrap();
    expect(
        "budget",
        call(|e| unsafe { dfrt_session_set_head_program(c.0, json.as_ptr(), e) }),
        DFRT_ERR_POLICY,
        "dummy heads",
    );
    let f = new_session(&m, "full", 9).unwrap();
    expect(
        "not dummy",
        call(|e| unsafe { dfrt_session_set_head_program(f.0, json.as_ptr(), e) }),
        DFRT_ERR_POLICY,
        "dummy policy",
    );
}

#[test]
fn a_panicking_callback_is_caught_and_the_session_recovers() {
    unsafe extern "C-unwind" fn boom(p: *const DfrtProgress, _: *mut c_void) {
        // SAFETY: valid for the call.
        if unsafe { (*p).forward } == 3 {
            panic!("callback exploded");
        }
    }
    let m = load();
    let s = new_session(&m, "window:6,sink:1", 6).unwrap();
    assert_eq!(set_ctx(&s, &context(2, 4), 2).0, DFRT_OK);
    let mut buf = vec![0f32; info(&s).chunk_len];
    let mut n = 9;
    expect(
        "panic",
        call(|e| unsafe {
            dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, Some(boom), null_mut(), e)
        }),
        DFRT_ERR_PANIC,
        "callback exploded",
    );
    assert_eq!(n, 0);
    expect(
        "broken",
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) }),
        DFRT_ERR_STATE,
        "dfrt_session_reset",
    );
    assert_eq!(call(|e| unsafe { dfrt_session_reset(s.0, e) }).0, DFRT_OK);
    let (x, _) = run_all(&s);
    let t = new_session(&m, "window:6,sink:1", 6).unwrap();
    assert_eq!(set_ctx(&t, &context(2, 4), 2).0, DFRT_OK);
    assert_eq!(run_all(&t).0, x, "after reset the session is as new");
}

#[test]
fn one_model_serves_sessions_on_several_threads() {
    let m = load();
    let run = |seed: u64| {
        let s = new_session(&m, "window:6,sink:1", 6).unwrap();
        assert_eq!(set_ctx(&s, &context(3, 5), 3).0, DFRT_OK);
        assert_eq!(call(|e| unsafe { dfrt_session_set_seed(s.0, seed, e) }).0, DFRT_OK);
        run_all(&s).0
    };
    let alone: Vec<Vec<f32>> = (0..3).map(run).collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3).map(|seed| sc.spawn(move || run(seed))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    assert_ne!(alone[0], alone[1]);
}

#[test]
fn sessions_outlive_their_model_handle() {
    let m = load();
    let s = new_session(&m, "window:6,sink:1", 0).unwrap();
    drop(m);
    assert_eq!(set_ctx(&s, &context(1, 6), 1).0, DFRT_OK);
    let i = info(&s);
    assert_eq!((i.frames, i.chunks_total, i.noise_len), (0, 0, 0));
    let mut buf = vec![0f32; i.chunk_len];
    // Unbounded: more chunks than the window holds, never finished.
    for _ in 0..4 {
        assert_eq!(
            call(|e| unsafe {
                dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), null_mut(), None, null_mut(), e)
            })
            .0,
            DFRT_OK
        );
        assert!(buf.iter().all(|x| x.is_finite()));
    }
    assert_eq!(info(&s).chunks_done, 4);
}

/// `device = "sim"`: the GPU backend (the PTX kernels in the simulator) behind the same calls;
/// its latents match the CPU reference's within the f32 golden bound.
#[test]
fn a_sim_session_matches_the_cpu_session() {
    let m = load();
    let ctx = context(16, 9);
    let run = |dev: &CStr, graphs: i32| {
        let mut sp = null_mut();
        let (st, msg) = call(|e| unsafe {
            dfrt_session_new(m.0, c"window:6,sink:1".as_ptr(), H, W, 6, dev.as_ptr(), null_mut(), &mut sp, e)
        });
        assert_eq!(st, DFRT_OK, "{msg}");
        let s = Sess(sp);
        assert_eq!(set_ctx(&s, &ctx, 16).0, DFRT_OK);
        assert_eq!(call(|e| unsafe { dfrt_session_set_seed(s.0, 21, e) }).0, DFRT_OK);
        assert_eq!(call(|e| unsafe { dfrt_session_set_graphs(s.0, graphs, e) }).0, DFRT_OK);
        let out = run_all(&s).0;
        // Like the other settings, graphs are fixed once generation has started.
        expect("graphs after start", call(|e| unsafe { dfrt_session_set_graphs(s.0, 1, e) }), DFRT_ERR_STATE, "reset");
        out
    };
    let (cpu, sim) = (run(c"cpu", 1), run(c"sim", 1));
    // Direct launches on sim: the same latents as graph replays, bit for bit.
    assert!(run(c"sim", 0) == sim, "sim with graphs off differs from graphs on");
    assert_eq!(cpu.len(), sim.len());
    assert!(sim.iter().all(|x| x.is_finite()), "non-finite latents on sim");
    let num: f64 = cpu.iter().zip(&sim).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = cpu.iter().map(|a| (*a as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    println!("sim vs cpu through the C API: rel L2 {rel:.3e}");
    assert!(rel <= 1e-4, "sim vs cpu rel L2 {rel:.3e}");
}

/// A synthetic VAE of width 4, made once.
fn vae_path() -> &'static CString {
    static P: OnceLock<CString> = OnceLock::new();
    P.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("dfrt-capi-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("vae4.safetensors");
        dfrt_weights::vae::synth_vae(&p, &dfrt_core::vae::VaeConfig::with_dim(4), 5, dfrt_core::checkpoint::DType::F32)
            .unwrap();
        CString::new(p.to_str().unwrap()).unwrap()
    })
}

#[test]
fn decoded_frames_match_the_rust_decoder_and_refuse_bad_calls() {
    let m = load();
    let s = new_session(&m, "full", 6).unwrap();
    let ctx = context(3, 7);
    assert_eq!(set_ctx(&s, &ctx, 3).0, DFRT_OK);
    let mut buf = vec![0u8; 9 * 64 * 96 * 3];
    let mut n = 7;
    expect(
        "no vae",
        call(|e| unsafe {
            dfrt_session_next_frames_rgb8(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e)
        }),
        DFRT_ERR_STATE,
        "dfrt_session_set_vae",
    );
    assert_eq!(n, 0);
    expect(
        "bad vae path",
        call(|e| unsafe { dfrt_session_set_vae(s.0, c"/nonexistent/vae.safetensors".as_ptr(), null(), null_mut(), e) }),
        DFRT_ERR_CHECKPOINT,
        "no such file",
    );
    expect(
        "dit as vae",
        call(|e| unsafe { dfrt_session_set_vae(s.0, model_path().as_ptr(), null(), null_mut(), e) }),
        DFRT_ERR_CHECKPOINT,
        "not a VAE",
    );
    expect(
        "bad dtype",
        call(|e| unsafe { dfrt_session_set_vae(s.0, vae_path().as_ptr(), c"f16".as_ptr(), null_mut(), e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "f16",
    );
    let mut vi = DfrtVideoInfo::default();
    assert_eq!(
        call(|e| unsafe { dfrt_session_set_vae(s.0, vae_path().as_ptr(), c"f32".as_ptr(), &mut vi, e) }).0,
        DFRT_OK
    );
    assert_eq!(
        vi,
        DfrtVideoInfo {
            width: 96,
            height: 64,
            first_chunk_frames: 9,
            chunk_frames: 12,
            frames_total: 21,
            max_chunk_rgb8_bytes: 12 * 64 * 96 * 3
        }
    );
    // Too small a buffer is refused before any work: the session does not advance.
    expect(
        "small",
        call(|e| unsafe { dfrt_session_next_frames_rgb8(s.0, buf.as_mut_ptr(), 100, &mut n, None, null_mut(), e) }),
        DFRT_ERR_BUFFER_TOO_SMALL,
        "need",
    );
    assert_eq!(info(&s).chunks_done, 0);

    // The Rust path: the same session settings, latents decoded by the Rust decoder.
    let rust = {
        let r = new_session(&m, "full", 6).unwrap();
        assert_eq!(set_ctx(&r, &ctx, 3).0, DFRT_OK);
        let (lat, _) = run_all(&r);
        let vae = std::sync::Arc::new(dfrt_core::vae::Vae::open(vae_path().to_str().unwrap(), Precision::F32).unwrap());
        vae.decode(&lat, 6, H, W).unwrap()
    };
    assert_eq!(rust.len(), 21 * 3 * 64 * 96);
    let mut got = Vec::new();
    for (chunk, want_n) in [(0, 9), (1, 12)] {
        let mut b = vec![0xA5u8; 12 * 64 * 96 * 3 + 7];
        let (st, msg) = call(|e| unsafe {
            dfrt_session_next_frames_rgb8(s.0, b.as_mut_ptr(), b.len(), &mut n, None, null_mut(), e)
        });
        assert_eq!(st, DFRT_OK, "chunk {chunk}: {msg}");
        assert_eq!(n, want_n);
        got.extend_from_slice(&b[..n * 64 * 96 * 3]);
        assert!(b[b.len() - 7..].iter().all(|&x| x == 0xA5), "nothing written past the frames");
    }
    let want: Vec<u8> = rust.chunks(3 * 64 * 96).flat_map(|f| dfrt_core::video::rgb8_from_pixels(f, 96, 64)).collect();
    assert!(got == want, "C frames differ from the Rust decoder's");
    expect(
        "finished",
        call(|e| unsafe {
            dfrt_session_next_frames_rgb8(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e)
        }),
        DFRT_ERR_FINISHED,
        "reset",
    );
    // After a reset the decoder starts over too: f32 frames equal the Rust floats exactly.
    assert_eq!(call(|e| unsafe { dfrt_session_reset(s.0, e) }).0, DFRT_OK);
    let mut f = Vec::new();
    for _ in 0..2 {
        let mut b = vec![f32::NAN; 12 * 64 * 96 * 3];
        assert_eq!(
            call(|e| unsafe {
                dfrt_session_next_frames_f32(s.0, b.as_mut_ptr(), b.len(), &mut n, None, null_mut(), e)
            })
            .0,
            DFRT_OK
        );
        f.extend_from_slice(&b[..n * 3 * 64 * 96]);
    }
    assert!(f == rust, "f32 frames after reset differ");
    expect(
        "vae after start",
        call(|e| unsafe { dfrt_session_set_vae(s.0, vae_path().as_ptr(), null(), null_mut(), e) }),
        DFRT_ERR_STATE,
        "after generation started",
    );
}

/// The golden t2v-tiny DiT (text_dim 64, text_len 32) and the t5-tiny encoder, converted once.
fn t2v_paths() -> &'static (CString, CString, CString) {
    static P: OnceLock<(CString, CString, CString)> = OnceLock::new();
    P.get_or_init(|| {
        let g = match std::env::var_os("DFRT_GOLDEN_DIR") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
        }
        .join("t2v-tiny");
        let d = std::env::temp_dir().join(format!("dfrt-capi-text-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (dit, t5) = (d.join("dit.safetensors"), d.join("t5.safetensors"));
        let o = dfrt_weights::ConvertOptions { text_len: Some(32), heads: Some(2), ..Default::default() };
        dfrt_weights::convert_file(g.join("dit.safetensors"), &dit, &o).unwrap();
        dfrt_weights::convert_t5(
            g.join("t5.safetensors"),
            &t5,
            &dfrt_weights::T5Options { text_len: Some(32), dtype: None },
        )
        .unwrap();
        let c = |p: &std::path::Path| CString::new(p.to_str().unwrap()).unwrap();
        (c(&dit), c(&t5), c(&g.join("tokenizer")))
    })
}

struct Text(*mut DfrtTextEncoder);
impl Drop for Text {
    fn drop(&mut self) {
        unsafe { dfrt_text_encoder_free(self.0) }
    }
}

fn chunk(s: &Sess, len: usize) -> Vec<f32> {
    let mut buf = vec![f32::NAN; len];
    let mut n = 0;
    let (st, msg) =
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    assert_eq!(n, len);
    buf
}

#[test]
fn set_prompt_equals_the_rust_encoder_context_and_rejects_bad_text() {
    let (dit, t5, tok) = t2v_paths();
    let mut m = null_mut();
    let (st, msg) = call(|e| unsafe { dfrt_model_load(dit.as_ptr(), null(), &mut m, e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    let m = Model(m);
    let mut te = null_mut();
    let (st, msg) = call(|e| unsafe { dfrt_text_encoder_load(t5.as_ptr(), tok.as_ptr(), null(), &mut te, e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    let te = Text(te);
    let prompt = c"A corgi surfs a wave at sunset.";
    // The Rust path: TextEncoder → context → set_context.
    let be = CpuBackend::new(Precision::F32);
    let rust = dfrt_core::text::TextEncoder::load(
        &be,
        t5.to_str().unwrap(),
        tok.to_str().unwrap(),
        dfrt_core::text::Residency::Resident,
    )
    .unwrap();
    let ctx = rust.encode(&be, prompt.to_str().unwrap()).unwrap().context;
    let (h, w) = (4, 6);
    let sess = |m: &Model| {
        let mut s = null_mut();
        let (st, msg) = call(|e| unsafe {
            dfrt_session_new(m.0, c"full".as_ptr(), h, w, 3, c"cpu".as_ptr(), null_mut(), &mut s, e)
        });
        assert_eq!(st, DFRT_OK, "{msg}");
        Sess(s)
    };
    let (a, b) = (sess(&m), sess(&m));
    let (st, msg) = call(|e| unsafe { dfrt_session_set_prompt(a.0, te.0, prompt.as_ptr(), e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    let (st, msg) = call(|e| unsafe { dfrt_session_set_context(b.0, ctx.data.as_ptr(), ctx.rows, 64, e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    let len = 3 * 16 * h * w;
    let (la, lb) = (chunk(&a, len), chunk(&b, len));
    assert!(la.iter().all(|x| x.is_finite()));
    assert_eq!(la, lb, "set_prompt = set_context(the Rust encoder's context), bit for bit");

    // Bad input: text that is not UTF-8, NULLs, an encoder that does not fit the model.
    let s = sess(&m);
    let bad = [0x41u8, 0xFF, 0xFE, 0x00];
    expect(
        "non-UTF-8 prompt",
        call(|e| unsafe { dfrt_session_set_prompt(s.0, te.0, bad.as_ptr() as *const c_char, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "not valid UTF-8",
    );
    expect(
        "null prompt",
        call(|e| unsafe { dfrt_session_set_prompt(s.0, te.0, null(), e) }),
        DFRT_ERR_NULL,
        "`prompt`",
    );
    expect(
        "null encoder",
        call(|e| unsafe { dfrt_session_set_prompt(s.0, null(), prompt.as_ptr(), e) }),
        DFRT_ERR_NULL,
        "`encoder`",
    );
    let tiny = load(); // text_len 16: the encoder pads to 32
    let mut st16 = null_mut();
    let (st, msg) = call(|e| unsafe {
        dfrt_session_new(tiny.0, c"full".as_ptr(), H, W, 3, c"cpu".as_ptr(), null_mut(), &mut st16, e)
    });
    assert_eq!(st, DFRT_OK, "{msg}");
    let st16 = Sess(st16);
    expect(
        "encoder does not fit",
        call(|e| unsafe { dfrt_session_set_prompt(st16.0, te.0, prompt.as_ptr(), e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "text_len 16",
    );
    // Loading: the DiT as the encoder, a folder without tokenizer.json.
    let mut x = null_mut();
    expect(
        "dit as encoder",
        call(|e| unsafe { dfrt_text_encoder_load(dit.as_ptr(), tok.as_ptr(), null(), &mut x, e) }),
        DFRT_ERR_CHECKPOINT,
        "is a DiT checkpoint",
    );
    assert!(x.is_null());
    let no_tok = CString::new(std::env::temp_dir().to_str().unwrap()).unwrap();
    expect(
        "no tokenizer.json",
        call(|e| unsafe { dfrt_text_encoder_load(t5.as_ptr(), no_tok.as_ptr(), null(), &mut x, e) }),
        DFRT_ERR_INVALID_ARGUMENT,
        "tokenizer.json",
    );
    unsafe { dfrt_text_encoder_free(null_mut()) };
}

#[test]
fn switching_the_prompt_between_chunks_matches_the_rust_session() {
    let m = load();
    let (c0, c1) = (context(4, 7), context(5, 8));
    // 12 frames: chunk 1 calibrates (dummy:2, ar-start 1); the switch comes before chunk 2.
    let s = new_session(&m, "dummy:2", 12).unwrap();
    assert_eq!(set_ctx(&s, &c0, 4).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(s.0, 5, e) }).0, DFRT_OK);
    let i = info(&s);
    let mut got = Vec::new();
    for chunk in 0..4 {
        if chunk == 1 {
            // Before calibration the groups do not exist: a policy error, the session intact.
            expect(
                "too early",
                call(|e| unsafe { dfrt_session_switch_prompt(s.0, c1.as_ptr(), 5, 64, e) }),
                DFRT_ERR_POLICY,
                "calibrated at AR step 1",
            );
        }
        if chunk == 2 {
            expect(
                "bad width",
                call(|e| unsafe { dfrt_session_switch_prompt(s.0, c1.as_ptr(), 5, 63, e) }),
                DFRT_ERR_INVALID_ARGUMENT,
                "the model takes",
            );
            assert_eq!(call(|e| unsafe { dfrt_session_switch_prompt(s.0, c1.as_ptr(), 5, 64, e) }).0, DFRT_OK);
        }
        let mut buf = vec![f32::NAN; i.chunk_len];
        assert_eq!(
            call(|e| unsafe {
                dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), null_mut(), None, null_mut(), e)
            })
            .0,
            DFRT_OK
        );
        got.extend(buf);
    }
    // The same through the Rust session.
    let lm = dfrt_core::api::CpuModel::cpu(model_path().to_str().unwrap(), dfrt_core::backend::Precision::F32).unwrap();
    let mut opts = SessionOptions::parse("dummy:2", H, W, Some(12), &lm.cfg).unwrap();
    opts.seed = 5;
    let mut r = lm.session(&opts, &c0, 4, dfrt_core::pipeline::Noise::seeded(5)).unwrap();
    let mut want = Vec::new();
    for chunk in 0..4 {
        if chunk == 2 {
            r.switch_prompt(&c1, 5).unwrap();
        }
        want.extend(r.next_chunk(&mut |_| {}).unwrap());
    }
    assert_eq!(r.recaches(), 1);
    assert_eq!(got, want, "the C API switch is the session's");
    // Without the switch the last two chunks differ: the prompt reached them.
    let n = new_session(&m, "dummy:2", 12).unwrap();
    assert_eq!(set_ctx(&n, &c0, 4).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_seed(n.0, 5, e) }).0, DFRT_OK);
    let (plain, _) = run_all(&n);
    let half = got.len() / 2;
    assert_eq!(plain[..half], got[..half]);
    assert_ne!(plain[half..], got[half..]);
}
