//! Every error path: NULL pointers, bad files, bad sessions, bad inputs and states, status names.

use super::*;

#[test]
pub(super) fn null_pointers_are_reported() {
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
pub(super) fn bad_files_are_checkpoint_errors_with_a_hint() {
    let d = dfrt_testkit::Scratch::new("capi-files");
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
pub(super) fn bad_sessions_are_refused_at_creation() {
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
pub(super) fn bad_inputs_and_states_are_reported() {
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
pub(super) fn status_names_and_version() {
    let name = |c: i32| unsafe { CStr::from_ptr(dfrt_status_name(c)) }.to_str().unwrap().to_string();
    assert_eq!(name(0), "DFRT_OK");
    assert_eq!(name(DFRT_ERR_PANIC as i32), "DFRT_ERR_PANIC");
    assert_eq!(name(DFRT_ERR_BUFFER_TOO_SMALL as i32), "DFRT_ERR_BUFFER_TOO_SMALL");
    assert_eq!(name(-3), "DFRT_UNKNOWN");
    assert_eq!(unsafe { CStr::from_ptr(dfrt_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
