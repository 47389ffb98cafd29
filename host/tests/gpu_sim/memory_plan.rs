//! Memory plan.

use super::*;

/// Golden case `case`'s weights (no config of their own) as a run's model source.
fn golden_model(case: &str) -> ModelSource {
    ModelSource::with_config(golden().join(case).join("weights.safetensors"), case_config(case)).unwrap()
}

/// The memory plan of a run of `model` with `opts`, reserved on `be` the way `run::open_on`
/// reserves it; the steps are apart so that the heap can be measured between them.
fn prepare<D: Device>(be: &GpuBackend<D>, model: &ModelSource, opts: &SessionOptions) -> dfrt::Result<MemoryPlan> {
    let plan = dfrt::run::plan(model, be.precision(), opts)?;
    dfrt::run::reserve(be, &plan)?;
    Ok(plan)
}

/// Runs `chunks` chunks of the tiny golden model at 8×8 latents on the sim device after
/// `prepare`; returns the device allocation count after preparation and after every chunk,
/// the measured peak of live bytes beyond the weights, and the plan.
pub(super) fn alloc_counts(policy: &str, dtype: Precision, chunks: usize) -> (u64, Vec<u64>, usize, MemoryPlan) {
    let case = if policy.starts_with("dummy") { "df-tiny" } else { "tiny-full" };
    let model = golden_model(case);
    let be = Arc::new(GpuBackend::new(SimDevice::new(), dtype));
    let opts = SessionOptions::parse(policy, 8, 8, Some(3 * chunks), &model.cfg).unwrap();
    let plan = prepare(&be, &model, &opts).unwrap();
    let after_prepare = be.allocations();
    let lm = model.load(be.clone()).unwrap();
    let (weights_live, _, _) = be.heap_stats();
    be.reset_peak();
    let ctx = TestRng::seeded(5).vec(3 * model.cfg.text_dim, -1.0, 1.0);
    let mut s = lm.session(&opts, &ctx, 3, Noise::Seeded(Rng::new(9))).unwrap();
    let mut counts = Vec::new();
    while !s.done() {
        let x = s.next_chunk(&mut |_| {}).unwrap();
        assert!(x.iter().all(|v| v.is_finite()));
        counts.push(be.allocations());
    }
    let (_, peak, _) = be.heap_stats();
    (after_prepare, counts, peak - weights_live, plan)
}

#[test]
pub(super) fn chunk_loop_makes_no_device_allocation() {
    for (policy, dtype) in [("full", Precision::F32), ("window:6,sink:1", Precision::Bf16), ("dummy:3", Precision::F32)]
    {
        let t0 = std::time::Instant::now();
        let (prep, counts, peak, plan) = alloc_counts(policy, dtype, 4);
        println!("{policy} {dtype:?}: allocations after prepare {prep}, after each chunk {counts:?}; peak beyond weights {peak} B, plan {} B ({:.1?})", plan.arena(), t0.elapsed());
        assert_eq!(prep, 1, "{policy}: the plan reserves one region");
        assert!(
            counts.iter().all(|&c| c == prep),
            "{policy}: device allocations in the chunk loop: {counts:?} (after prepare: {prep})"
        );
        assert!(peak <= plan.core(), "{policy}: measured peak {peak} exceeds the estimate {plan:?}");
    }
}

#[test]
pub(super) fn without_a_plan_the_pool_still_stops_allocating_after_warm_up() {
    // No reservation: the heap grows region by region during the first chunks; under a bounded
    // policy it must stop once the cache is full and every activation size has been seen.
    let model = golden_model("tiny-full");
    let be = Arc::new(GpuBackend::new(SimDevice::new(), Precision::F32));
    let ctx = TestRng::seeded(6).vec(2 * model.cfg.text_dim, -1.0, 1.0);
    let opts = SessionOptions::parse("window:6,sink:1", 8, 8, Some(15), &model.cfg).unwrap();
    let lm = model.load(be.clone()).unwrap();
    let mut s = lm.session(&opts, &ctx, 2, Noise::Seeded(Rng::new(1))).unwrap();
    let mut counts = Vec::new();
    while !s.done() {
        s.next_chunk(&mut |_| {}).unwrap();
        counts.push(be.allocations());
    }
    println!("window, no plan: allocations after each chunk {counts:?}");
    // The ring is full after chunk 2 (1 sink + 2 ring frames + the current chunk); from then on
    // blocks are recycled.
    assert!(counts[2..].windows(2).all(|w| w[0] == w[1]), "allocations after warm-up: {counts:?}");
}

#[test]
pub(super) fn a_device_too_small_fails_before_generating() {
    let model = golden_model("tiny-full");
    let cfg = &model.cfg;
    let latent = Latent { channels: cfg.in_dim, height: 16, width: 16 };
    let plan = MemoryPlan::estimate(cfg, &Policy::Full, latent, Some(9), Precision::F32, 0, 0).unwrap();
    let be = GpuBackend::new(SimDevice::with_limit(plan.arena() / 2), Precision::F32);
    let opts = SessionOptions::parse("full", 16, 16, Some(9), cfg).unwrap();
    let err = prepare(&be, &model, &opts).unwrap_err();
    assert!(
        matches!(&err, dfrt::Error::Device(DeviceError::OutOfMemory { needed, free, .. }) if needed > free),
        "a structured out-of-memory error: {err:?}"
    );
    let err = err.to_string();
    println!("{err}");
    assert!(err.contains("needs") && err.contains("bytes free of"), "{err}");
    assert_eq!(be.allocations(), 0, "nothing was allocated");
    // The same through the CLI: exit code 1 and the message, no output file.
    let d = tmp("oom");
    let ck = d.join("model.safetensors");
    checkpoint("tiny-full", &ck, |_| {});
    let out = d.join("out.safetensors");
    // A full-policy 3000-frame video does not fit the simulated device's 16 GiB.
    let ctx = golden().join("tiny-full/inputs.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--device",
        "sim",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        ctx.to_str().unwrap(),
        "--height",
        "512",
        "--width",
        "512",
        "--frames",
        "3000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out of device memory") && err.contains("bytes free"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).ok();
}
