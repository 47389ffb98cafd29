//! Video out: decoded frames against the Rust decoder, and the calls it refuses.

use super::*;

/// A synthetic VAE of width 4, made once.
pub(super) fn vae_path() -> &'static CString {
    static P: OnceLock<CString> = OnceLock::new();
    P.get_or_init(|| {
        let p = scratch().join("vae4.safetensors");
        dfrt_weights::vae::synth_vae(&p, &dfrt_core::vae::VaeConfig::with_dim(4), 5, dfrt_core::checkpoint::DType::F32)
            .unwrap();
        CString::new(p.to_str().unwrap()).unwrap()
    })
}

#[test]
pub(super) fn decoded_frames_match_the_rust_decoder_and_refuse_bad_calls() {
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

/// One VAE handle serves several sessions: each has its own decoder caches, so two sessions
/// decoding side by side give the frames `dfrt_session_set_vae` gives; the handle may be freed
/// while they decode.
#[test]
pub(super) fn a_loaded_vae_is_shared_by_sessions() {
    let m = load();
    let mut vae = null_mut();
    expect(
        "null out",
        call(|e| unsafe { dfrt_vae_load(vae_path().as_ptr(), null(), null_mut(), e) }),
        DFRT_ERR_NULL,
        "`out`",
    );
    expect(
        "dit as vae",
        call(|e| unsafe { dfrt_vae_load(model_path().as_ptr(), null(), &mut vae, e) }),
        DFRT_ERR_CHECKPOINT,
        "not a VAE",
    );
    assert!(vae.is_null(), "failure leaves *out NULL");
    assert_eq!(call(|e| unsafe { dfrt_vae_load(vae_path().as_ptr(), c"f32".as_ptr(), &mut vae, e) }).0, DFRT_OK);
    let ctx = context(3, 9);
    let sessions: Vec<Sess> = (0..2).map(|_| new_session(&m, "full", 6).unwrap()).collect();
    for s in &sessions {
        assert_eq!(set_ctx(s, &ctx, 3).0, DFRT_OK);
        expect(
            "null vae",
            call(|e| unsafe { dfrt_session_attach_vae(s.0, null(), null_mut(), e) }),
            DFRT_ERR_NULL,
            "`vae`",
        );
        let mut vi = DfrtVideoInfo::default();
        assert_eq!(call(|e| unsafe { dfrt_session_attach_vae(s.0, vae, &mut vi, e) }).0, DFRT_OK);
        assert_eq!((vi.width, vi.height, vi.frames_total), (96, 64, 21));
    }
    unsafe { dfrt_vae_free(vae) };
    // The reference: a session that loads its own VAE by path.
    let r = new_session(&m, "full", 6).unwrap();
    assert_eq!(set_ctx(&r, &ctx, 3).0, DFRT_OK);
    assert_eq!(call(|e| unsafe { dfrt_session_set_vae(r.0, vae_path().as_ptr(), null(), null_mut(), e) }).0, DFRT_OK);
    let mut outs = vec![Vec::new(); 3];
    for _ in 0..2 {
        // Interleaved: a shared decoder cache would mix the sessions' frames.
        for (s, out) in sessions.iter().chain([&r]).zip(outs.iter_mut()) {
            let mut b = vec![f32::NAN; 12 * 64 * 96 * 3];
            let mut n = 0;
            let (st, msg) = call(|e| unsafe {
                dfrt_session_next_frames_f32(s.0, b.as_mut_ptr(), b.len(), &mut n, None, null_mut(), e)
            });
            assert_eq!(st, DFRT_OK, "{msg}");
            out.extend_from_slice(&b[..n * 3 * 64 * 96]);
        }
    }
    assert_eq!(outs[0].len(), 21 * 3 * 64 * 96);
    assert!(outs[0].iter().all(|v| v.is_finite()));
    dfrt_testkit::tol::assert_bits_eq("shared VAE, session 0 vs own VAE", &outs[0], &outs[2]);
    dfrt_testkit::tol::assert_bits_eq("shared VAE, session 1 vs own VAE", &outs[1], &outs[2]);
    // After the first chunk a VAE can no longer be attached.
    let mut again = null_mut();
    assert_eq!(call(|e| unsafe { dfrt_vae_load(vae_path().as_ptr(), null(), &mut again, e) }).0, DFRT_OK);
    expect(
        "mid-run",
        call(|e| unsafe { dfrt_session_attach_vae(sessions[0].0, again, null_mut(), e) }),
        DFRT_ERR_STATE,
        "reset",
    );
    unsafe { dfrt_vae_free(again) };
    unsafe { dfrt_vae_free(null_mut()) };
}
