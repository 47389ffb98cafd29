//! The benches run here (no GPU): the kernel table covers every hot kernel and every entry runs
//! on the simulator at the tiny size with its whole output written; the e2e bench generates a
//! tiny config on the CPU backend and on the simulated GPU path.

#[path = "../benches/support/e2e_run.rs"]
mod e2e_run;
#[path = "../benches/support/kernel_cases/mod.rs"]
mod kernel_cases;

use std::collections::BTreeSet;

use dfrt::backend::Precision;
use dfrt::checkpoint::DType;
use dfrt::gpu::{Device, SimDevice};
use dfrt::pipeline::Graphs;
use dfrt::run::{DeviceChoice, ModelSource, Target};
use dfrt::ModelConfig;
use kernel_cases::{RunOpts, Shapes};

#[test]
fn kernel_table_covers_every_hot_kernel() {
    let specs = kernel_cases::specs::<SimDevice>(&Shapes::full());
    let have: BTreeSet<&str> = specs.iter().map(|s| s.kernel).collect();
    let missing: Vec<&str> = dfrt_kernels::HOT_KERNELS.iter().copied().filter(|k| !have.contains(k)).collect();
    assert!(missing.is_empty(), "hot kernels without a bench entry: {missing:?}");
    for s in &specs {
        assert!(
            s.kernel == kernel_cases::GEMM || dfrt_kernels::KERNELS.contains(&s.kernel),
            "bench entry `{}` is not a kernel",
            s.kernel
        );
        assert!(!s.formula.is_empty(), "bench entry `{}` states no formula", s.kernel);
    }
    // The attention shapes of the issue: Lq 4680 against Lk 6240, 9360 and 32760.
    assert_eq!(Shapes::full().tokens(), 4680);
    let lks: Vec<usize> = specs.iter().filter(|s| s.kernel == "attn_bf16_d128" && s.arg > 0).map(|s| s.arg).collect();
    assert_eq!(lks, [6240, 9360, 32760]);
}

#[test]
fn every_kernel_entry_runs_on_sim() {
    let dev = SimDevice::new();
    let opts =
        RunOpts { warmup: 0, min_reps: 1, max_reps: 1, target_secs: 0.0, rotate_bytes: 0, filter: None, graph: false };
    let mut seen = 0;
    // `run` launches each entry, checks that its outputs were fully written (they start as
    // NaN poison), then times it.
    let rows = kernel_cases::run(&dev, &Shapes::tiny(), &opts, &mut |_| seen += 1).unwrap();
    assert_eq!(rows.len(), kernel_cases::specs::<SimDevice>(&Shapes::tiny()).len());
    assert_eq!(seen, rows.len());
    for r in &rows {
        assert!(r.secs > 0.0 && r.bytes > 0.0, "{} {}: {} s, {} bytes", r.kernel, r.shape, r.secs, r.bytes);
    }
    let attn = rows.iter().find(|r| r.kernel == "attn_bf16_d128").unwrap();
    // 4·Lq·Lk·H·d at Lq 48, Lk 64, H 2, d 128.
    assert_eq!(attn.flops, Some((4 * 48 * 64 * 2 * 128) as f64));
    // Every case frees what it allocated.
    let (free, total) = dev.mem_info().unwrap();
    assert_eq!(free, total, "bench cases leaked device memory");

    // The graph timer (used on cuda) through the simulator's recorded graphs.
    let opts = RunOpts { min_reps: 3, max_reps: 3, filter: Some("gelu".into()), graph: true, ..opts };
    let rows = kernel_cases::run(&dev, &Shapes::tiny(), &opts, &mut |_| {}).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.timer, r.reps), ("graph", 3), "{r:?}");
        assert!(r.secs > 0.0, "{r:?}");
    }
}

/// The kernel bench's `--size 14b` is the 14B preset's shapes (the kernels at head count 40
/// run on sim in gpu_sim's op table; at 480p they need a GPU).
#[test]
fn kernel_shapes_14b_are_the_14b_model() {
    let (s, c) = (Shapes::wan14b(), ModelConfig::preset("wan-14b").unwrap());
    assert_eq!(
        (s.dim, s.heads, s.head_dim, s.ffn, s.freq_dim),
        (c.dim, c.num_heads, c.head_dim(), c.ffn_dim, c.freq_dim)
    );
    assert_eq!((s.tpf(), s.tokens(), s.text_len), (1560, 4680, c.text_len));
}

#[test]
fn e2e_runs_tiny_on_cpu_and_sim() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let dir = std::env::temp_dir().join(format!("dfrt-test-benches-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-bf16.safetensors");
    dfrt_weights::synth_checkpoint(&path, &cfg, 3, DType::BF16).unwrap();
    let model = ModelSource::open(&path).unwrap();
    let res = e2e_run::Res::parse("tiny").unwrap();
    let policies = e2e_run::default_policies(&cfg);
    assert_eq!(policies[2], "dummy:2");
    for p in &policies {
        let spec = e2e_run::RunSpec { policy: p, chunks: 2, graphs: Graphs::On, teacache: None };
        let r = e2e_run::run_one(&Target::new(DeviceChoice::Cpu, Precision::Bf16), &model, &res, &spec).unwrap();
        assert_eq!((r.chunk_ms.len(), r.latent_frames, r.video_frames), (2, 6, 24));
        assert!(r.fps() > 0.0 && r.kv_bytes > 0 && r.kv_policy_bytes <= r.kv_full_bytes, "{r:?}");
    }
    // The GPU path in the simulator, under the policy that exercises the most (calibration and
    // compaction after chunk 1): no device allocation inside the chunk loop.
    let spec = e2e_run::RunSpec { policy: "dummy:2", chunks: 2, graphs: Graphs::On, teacache: None };
    let r = e2e_run::run_one(&Target::new(DeviceChoice::Sim, Precision::Bf16), &model, &res, &spec).unwrap();
    assert_eq!(r.loop_allocs, Some(0), "{r:?}");
    assert!(r.kv_policy_bytes < r.kv_full_bytes, "{r:?}");
    // TeaCache rows (the bench's `--teacache off,T`). Random weights change the modulation far
    // more between steps than trained ones (0.2 skips nothing here), so a threshold no change
    // reaches: every pass but the always-computed t = 1000 step and clean pass is skipped.
    let spec = e2e_run::RunSpec { policy: "dummy:2", chunks: 2, graphs: Graphs::On, teacache: Some(1e12) };
    let t = e2e_run::run_one(&Target::new(DeviceChoice::Sim, Precision::Bf16), &model, &res, &spec).unwrap();
    assert_eq!(t.skipped_forwards, 2 * 3, "{t:?}");
    assert_eq!((t.teacache, t.graphs), (Some(1e12), Some(false)), "TeaCache runs direct launches: {t:?}");
    // 1080p is not patchable at 135 latent rows; the bench uses the nearest valid size.
    let hd = e2e_run::Res::parse("1080p").unwrap();
    assert_eq!((hd.lat_h % 2, hd.video()), (0, (1088, 1920)));
    std::fs::remove_dir_all(&dir).ok();
}
