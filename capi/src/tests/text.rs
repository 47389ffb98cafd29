//! Prompt in: `dfrt_session_set_prompt` against the Rust encoder, and prompt switches.

use super::*;

/// The golden t2v-tiny DiT (text_dim 64, text_len 32) and the t5-tiny encoder, converted once.
pub(super) fn t2v_paths() -> &'static (CString, CString, CString) {
    static P: OnceLock<(CString, CString, CString)> = OnceLock::new();
    P.get_or_init(|| {
        let g = dfrt_testkit::golden::case("t2v-tiny");
        let (dit, t5) = (scratch().join("dit.safetensors"), scratch().join("t5.safetensors"));
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

pub(super) fn chunk(s: &Sess, len: usize) -> Vec<f32> {
    let mut buf = vec![f32::NAN; len];
    let mut n = 0;
    let (st, msg) =
        call(|e| unsafe { dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), &mut n, None, null_mut(), e) });
    assert_eq!(st, DFRT_OK, "{msg}");
    assert_eq!(n, len);
    buf
}

#[test]
pub(super) fn set_prompt_equals_the_rust_encoder_context_and_rejects_bad_text() {
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
pub(super) fn switching_the_prompt_between_chunks_matches_the_rust_session() {
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

#[test]
pub(super) fn longlive_switches_keep_the_global_sink_as_the_rust_session() {
    let m = load();
    let (c0, c1) = (context(4, 9), context(5, 10));
    // window:9,sink:3 over 15 frames; the switch before chunk 4 re-runs frames 3..12, so the
    // global sink keeps frames 0–2 from before it.
    let run_c = |global_sink: std::ffi::c_int| {
        let s = new_session(&m, "window:9,sink:3", 15).unwrap();
        assert_eq!(set_ctx(&s, &c0, 4).0, DFRT_OK);
        assert_eq!(call(|e| unsafe { dfrt_session_set_recache(s.0, 0, global_sink, e) }).0, DFRT_OK);
        let i = info(&s);
        let mut got = Vec::new();
        for chunk in 0..5 {
            if chunk == 4 {
                assert_eq!(call(|e| unsafe { dfrt_session_switch_prompt(s.0, c1.as_ptr(), 5, 64, e) }).0, DFRT_OK);
            }
            let mut buf = vec![f32::NAN; i.chunk_len];
            let st = call(|e| unsafe {
                dfrt_session_next_chunk(s.0, buf.as_mut_ptr(), buf.len(), null_mut(), None, null_mut(), e)
            });
            assert_eq!(st.0, DFRT_OK, "{}", st.1);
            got.extend(buf);
        }
        got
    };
    let (kept, rebuilt) = (run_c(1), run_c(0));
    let lm = dfrt_core::api::CpuModel::cpu(model_path().to_str().unwrap(), dfrt_core::backend::Precision::F32).unwrap();
    let mut opts = SessionOptions::parse("window:9,sink:3", H, W, Some(15), &lm.cfg).unwrap();
    opts.global_sink = true;
    let mut r = lm.session(&opts, &c0, 4, dfrt_core::pipeline::Noise::seeded(0)).unwrap();
    let mut want = Vec::new();
    for chunk in 0..5 {
        if chunk == 4 {
            r.switch_prompt(&c1, 5).unwrap();
        }
        want.extend(r.next_chunk(&mut |_| {}).unwrap());
    }
    assert_eq!(r.recaches(), 1);
    assert_eq!(kept, want, "the C API's global-sink switch is the session's");
    let chunk = kept.len() / 5;
    assert_eq!(kept[..4 * chunk], rebuilt[..4 * chunk], "the chunks before the switch do not depend on it");
    assert_ne!(kept[4 * chunk..], rebuilt[4 * chunk..], "keeping the sink changes the chunk after the switch");
    // Bad settings: a policy error, the session intact.
    let s = new_session(&m, "window:9,sink:3", 15).unwrap();
    expect(
        "recache size",
        call(|e| unsafe { dfrt_session_set_recache(s.0, 6, 0, e) }),
        DFRT_ERR_POLICY,
        "policy's window",
    );
    let d = new_session(&m, "dummy:2", 12).unwrap();
    expect(
        "global sink",
        call(|e| unsafe { dfrt_session_set_recache(d.0, 0, 1, e) }),
        DFRT_ERR_POLICY,
        "window policy",
    );
    assert_eq!(call(|e| unsafe { dfrt_session_set_recache(d.0, 9, 0, e) }).0, DFRT_OK);
}
