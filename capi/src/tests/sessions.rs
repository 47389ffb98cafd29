//! Sessions: noise, resets, head programs, panicking callbacks, threads, model lifetime, sim vs cpu.

use super::*;

#[test]
pub(super) fn given_noise_equals_the_seed_and_reset_repeats_the_video() {
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
    // The runtime's own generator: the draws the seed stands for.
    let draws = dfrt_core::pipeline::Rng::new(77).normals(info(&b).noise_len);
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
pub(super) fn head_programs_round_trip_through_the_api() {
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
pub(super) fn a_panicking_callback_is_caught_and_the_session_recovers() {
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
pub(super) fn one_model_serves_sessions_on_several_threads() {
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
pub(super) fn sessions_outlive_their_model_handle() {
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
pub(super) fn a_sim_session_matches_the_cpu_session() {
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
