//! Graphs.

use super::*;

/// Captures one denoising forward (chunk 1 over the cache of chunk 0) into a graph, replays
/// it, and checks the output against the same forward run eagerly: bit-identical, again after
/// a second replay, and after new input data is copied into the captured input tensor. The
/// capture and the replays allocate nothing on the device.
pub(super) fn graph_replays_a_forward<D: Device>(dev: D, precision: Precision) {
    use dfrt::model::{NoHook, PassInfo};
    let cfg = case_config("tiny-full");
    let be = Arc::new(GpuBackend::new(dev, precision));
    let mut s = gpu_session(&be, "tiny-full", "full", (8, 8), 6, (7, 3));
    let model = s.model().clone();
    // Direct launches: this test records its own graph (the memory plan holds two).
    s.set_graphs(Graphs::Off);
    s.next_chunk(&mut |_| {}).unwrap();
    let allocs = be.allocations();
    let shape = [3, cfg.in_dim, 8, 8];
    let n: usize = shape.iter().product();
    let (a, b) = (TestRng::seeded(8).vec(n, -1.0, 1.0), TestRng::seeded(9).vec(n, -1.0, 1.0));
    let pass = PassInfo::denoise(1, 1, 3, 3);
    let mut eager = |x: &[f32]| {
        let xt = be.upload(x, &shape);
        let (cache, text) = s.cache_and_text_mut();
        let f = model.forward(&*be, &xt, 937.5, &pass, cache, text, &mut NoHook, None).unwrap();
        be.download(&f)
    };
    let (want_a, want_b) = (eager(&a), eager(&b));
    let mut x = be.upload(&a, &shape);
    let (cache, text) = s.cache_and_text_mut();
    let (flow, graph) = be.capture(|be| model.forward(be, &x, 937.5, &pass, cache, text, &mut NoHook, None)).unwrap();
    let flow = flow.unwrap();
    for round in 0..2 {
        be.replay(graph).unwrap();
        assert_eq!(be.download(&flow), want_a, "replay {round} differs from the eager forward");
    }
    // New input data in the captured input tensor → the replay computes the new forward.
    let bt = be.upload(&b, &shape);
    be.copy_rows(&mut x, 0, &bt, 0, 8, n / 8, 8);
    be.replay(graph).unwrap();
    assert_eq!(be.download(&flow), want_b, "replay with new inputs");
    be.status().unwrap();
    assert_eq!(be.allocations(), allocs, "capture and replay allocate nothing on the device");
    // Downloads are refused inside a capture, as on CUDA.
    let err = be.capture(|be| be.download(&flow)).unwrap_err().to_string();
    assert!(err.contains("not allowed during a graph capture"), "{err}");
}

#[test]
pub(super) fn graph_capture_replays_a_forward_on_sim() {
    graph_replays_a_forward(SimDevice::new(), Precision::F32);
}

#[test]
pub(super) fn cuda_graph_capture_replays_a_forward() {
    for p in [Precision::F32, Precision::Bf16] {
        match CudaDevice::new(0, false) {
            Ok(d) => graph_replays_a_forward(d, p),
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        }
    }
}

/// The pipeline's graph path (each chunk's denoising forward recorded once and replayed at
/// its 4 steps) against direct launches: the same latents bit for bit under every policy,
/// 4 replays per chunk, no graph left alive after a chunk, and still no device allocation in
/// the chunk loop.
pub(super) fn graphs_match_direct_launches<D: Device>(make: &dyn Fn() -> D) {
    for (policy, dtype) in [("full", Precision::F32), ("window:6,sink:1", Precision::Bf16), ("dummy:3", Precision::F32)]
    {
        let case = if policy.starts_with("dummy") { "df-tiny" } else { "tiny-full" };
        let frames = 9;
        let run = |graphs: Graphs| {
            let be = Arc::new(GpuBackend::new(make(), dtype));
            let mut s = gpu_session(&be, case, policy, (8, 8), frames, (11, 5));
            assert!(s.graphs(), "graphs are on by default on a GPU backend");
            s.set_graphs(graphs);
            let allocs = be.allocations();
            let mut out = Vec::new();
            while !s.done() {
                out.extend(s.next_chunk(&mut |_| {}).unwrap());
                // Between chunks: the last clean pass and the next chunk's denoising forward.
                let live = be.device().live_graphs();
                assert!(live <= 2 * usize::from(graphs == Graphs::On), "{policy}: {live} graphs alive between chunks");
                assert_eq!(be.allocations(), allocs, "{policy}: device allocation in the chunk loop");
            }
            let asg = s.dummy().and_then(|d| d.assignment()).map(|a| a.to_i64());
            drop(s);
            assert_eq!(be.device().live_graphs(), 0, "{policy}: the session left graphs behind");
            (out, be.graph_replays(), asg)
        };
        let t0 = std::time::Instant::now();
        let (direct, n0, a0) = run(Graphs::Off);
        let (graphed, n1, a1) = run(Graphs::On);
        println!(
            "{policy} {dtype:?}: {n1} graph replays over {} chunks, latents identical: {} ({:.1?})",
            frames / 3,
            direct == graphed,
            t0.elapsed()
        );
        assert_eq!(n0, 0, "graphs off: no replay");
        // One replay per forward (4 steps + the clean pass), but for the clean pass Dummy
        // Forcing calibrates in (chunk 1, which runs directly).
        let calibrating = usize::from(policy.starts_with("dummy"));
        assert_eq!(n1 as usize, 5 * frames / 3 - calibrating, "one replay per forward");
        assert!(graphed.iter().all(|v| v.is_finite()));
        assert!(
            direct == graphed,
            "{policy}: graph replay changed the latents (rel L2 {:.3e})",
            rel_l2(policy, &graphed, &direct)
        );
        assert_eq!(a0, a1, "{policy}: head assignment");
    }
}

#[test]
pub(super) fn sessions_replay_graphs_with_the_latents_of_direct_launches() {
    graphs_match_direct_launches(&SimDevice::new);
}

#[test]
pub(super) fn cuda_sessions_replay_graphs_with_the_latents_of_direct_launches() {
    if let Err(e) = CudaDevice::new(0, false) {
        println!("skipped: {e}");
        return;
    }
    graphs_match_direct_launches(&|| CudaDevice::new(0, false).unwrap());
}

/// A session on a stream the caller created gives the latents of one on the device's own
/// stream, and its work is queued on that stream. Without a GPU: only the refusal of the
/// legacy default stream, which needs no driver.
#[test]
pub(super) fn cuda_session_on_a_caller_stream() {
    // SAFETY: a null stream is refused before anything touches it.
    let err = unsafe { CudaDevice::with_stream(0, false, std::ptr::null_mut()) }
        .err()
        .expect("the legacy stream is refused")
        .to_string();
    assert!(err.contains("legacy default stream"), "{err}");
    if let Err(e) = CudaDevice::new(0, false) {
        println!("skipped: {e}");
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let raw = stream.cu_stream() as *mut std::ffi::c_void;
    let run = |dev: CudaDevice| {
        let be = Arc::new(GpuBackend::new(dev, Precision::Bf16));
        gpu_session(&be, "tiny-window", "window:6,sink:1", (8, 8), 9, (12, 2)).run(&mut |_| {}).unwrap()
    };
    let own = run(CudaDevice::new(0, false).unwrap());
    // SAFETY: `stream` lives until the end of this test, after the device is dropped.
    let dev = unsafe { CudaDevice::with_stream(0, false, raw) }.unwrap();
    assert_eq!(dev.cu_stream(), raw, "work goes to the caller's stream");
    let theirs = run(dev);
    assert!(own.iter().all(|v| v.is_finite()));
    assert!(own == theirs, "caller's stream vs own stream: rel L2 {:.3e}", rel_l2("stream", &theirs, &own));
    stream.synchronize().unwrap();
}

/// The bf16 head-dim-128 attention's kernel version 2 (8 warps, 128 query rows per block)
/// gives the session the latents of version 1 bit for bit (the block shape changes, not any
/// row's arithmetic); anything but 64 or 128 rows is refused.
#[test]
pub(super) fn attention_kernel_version_2_gives_the_same_latents() {
    assert_eq!(case_config("tiny-full").head_dim(), 128);
    let run = |rows: u32| {
        let opts = GpuOptions { attn_rows: AttnRows::from_rows(rows).unwrap(), ..Default::default() };
        let be = Arc::new(GpuBackend::with_options(SimDevice::new(), Precision::Bf16, opts));
        // 16×16 latent: 64 tokens per frame, 192 query rows per chunk (two version-2 blocks).
        gpu_session(&be, "tiny-full", "full", (16, 16), 3, (13, 4)).run(&mut |_| {}).unwrap()
    };
    let (v1, v2) = (run(64), run(128));
    assert!(v1.iter().all(|x| x.is_finite()));
    assert!(v1 == v2, "version 2 changed the latents: rel L2 {:.3e}", rel_l2("attn v2", &v2, &v1));
    let err = AttnRows::from_rows(96).unwrap_err().to_string();
    assert!(err.contains("64 or 128"), "{err}");
}

/// Dummy Forcing with a given head program: nothing calibrates, so every forward of every
/// chunk replays from a graph, including the clean pass after which the cache is regrouped
/// (the regroup is queued behind the replay). Same latents as direct launches.
#[test]
pub(super) fn a_given_head_program_replays_every_forward() {
    let run = |graphs: Graphs, program: Option<dfrt::dummy::HeadProgram>| {
        let be = Arc::new(GpuBackend::new(SimDevice::new(), Precision::F32));
        let mut s = gpu_session(&be, "df-tiny", "dummy:3", (8, 8), 9, (14, 6));
        s.set_graphs(graphs);
        if let Some(p) = program {
            s.dummy_mut().unwrap().set_program(p).unwrap();
        }
        let out = s.run(&mut |_| {}).unwrap();
        (out, s.dummy().unwrap().program().unwrap().clone(), be.graph_replays())
    };
    let (_, program, _) = run(Graphs::Off, None);
    let (direct, _, n0) = run(Graphs::Off, Some(program.clone()));
    let (graphed, _, n1) = run(Graphs::On, Some(program));
    assert_eq!((n0, n1), (0, 15), "every forward replays from a graph");
    assert!(graphed.iter().all(|v| v.is_finite()));
    assert!(
        direct == graphed,
        "given program: graph replay changed the latents (rel L2 {:.3e})",
        rel_l2("given", &graphed, &direct)
    );
}
