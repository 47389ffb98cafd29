//! Device-layer primitives in the simulator, checked against their PTX ISA semantics on fresh
//! random data; and the simulator's planted-error reports.

mod common;
use common::*;

use dfrt_kernels::gpu::{bf16_to_f32, ex2, f32_to_bf16, pack_bf16x2, unpack_bf16x2};
use dfrt_kernels::sim::{Engine, SimErrorKind};
use dfrt_kernels::testk::*;
use dfrt_kernels::LaunchDims;
use std::time::{Duration, Instant};

fn dims(blocks: u32, threads: u32, smem: u32) -> LaunchDims {
    LaunchDims {
        grid: [blocks, 1, 1],
        block: [threads, 1, 1],
        dyn_smem: smem,
    }
}

#[test]
fn shuffles_and_ballot_follow_ptx() {
    for engine in ENGINES {
        shuffles_and_ballot_follow_ptx_on(engine);
    }
}

fn shuffles_and_ballot_follow_ptx_on(engine: Engine) {
    let mut rng = Rng::new("warp_ops");
    let (blocks, threads) = (2u32, 64u32);
    let n = (blocks * threads) as usize;
    let vals: Vec<u32> = (0..n).map(|_| rng.u32()).collect();
    // args double as f32 bits for the reductions: finite values of mixed magnitude and sign.
    let args: Vec<u32> = (0..n)
        .map(|_| rng.f32(-1.0, 1.0) * 2f32.powi((rng.u32() % 20) as i32 - 10))
        .map(f32::to_bits)
        .collect();
    let mut out = vec![0xffff_ffffu32; 8 * n];
    let p = WarpOpsParams {
        vals: vals.as_ptr() as u64,
        args: args.as_ptr() as u64,
        out: out.as_mut_ptr() as u64,
    };
    launch_on(
        engine,
        Duration::from_secs(3),
        test_warp_ops,
        dims(blocks, threads, 0),
        p,
    )
    .unwrap();
    for i in 0..n {
        let (w0, lane) = (i / 32 * 32, (i % 32) as u32);
        let a = args[i];
        let v = |src: u32| vals[w0 + src as usize];
        // The PTX ISA uses only the low 5 bits of the lane operand: a delta of 32..39 is 0..7.
        let up = (a % 40) & 31;
        let want = [
            v(lane ^ (a % 32)),
            v(a & 31),
            if up <= lane { v(lane - up) } else { vals[i] },
            if lane + up <= 31 {
                v(lane + up)
            } else {
                vals[i]
            },
            (0..32)
                .filter(|&l| vals[w0 + l] & 1 == 1)
                .fold(0, |m, l| m | 1 << l),
        ];
        assert_eq!(
            &out[8 * i..8 * i + 5],
            &want,
            "thread {i}: [xor, idx, up, down, ballot] with arg {a}"
        );
        // warp_sum is the same butterfly as the explicit shuffles, bit for bit.
        assert_eq!(
            out[8 * i + 5],
            out[8 * i + 6],
            "thread {i}: warp_sum vs shuffle butterfly"
        );
        let xs: Vec<f64> = (0..32)
            .map(|l| f32::from_bits(args[w0 + l]) as f64)
            .collect();
        let sum = f32::from_bits(out[8 * i + 5]) as f64;
        let want_sum: f64 = xs.iter().sum();
        let scale: f64 = xs.iter().map(|x| x.abs()).sum();
        assert!(
            (sum - want_sum).abs() <= 1e-5 * scale,
            "thread {i}: warp_sum {sum} vs {want_sum}"
        );
        let max = xs.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(
            f32::from_bits(out[8 * i + 7]) as f64,
            max,
            "thread {i}: warp_max"
        );
    }
}

/// Lane operands of 32 and more: the PTX ISA takes `bval = b[4:0]`, so `shfl.up` and
/// `shfl.down` by 32 + k move by k, and `shfl.idx` with 32 + k reads lane k (a GPU never
/// treats them as out of range).
#[test]
fn shuffle_lane_operands_of_32_and_more_use_their_low_5_bits() {
    for engine in ENGINES {
        let mut rng = Rng::new("shfl_delta_ge_32");
        let (blocks, threads) = (1u32, 64u32);
        let n = (blocks * threads) as usize;
        let vals: Vec<u32> = (0..n).map(|_| rng.u32()).collect();
        // a % 40 in 32..40 (the up/down delta), a itself ≥ 32 (the idx lane).
        let args: Vec<u32> = (0..n)
            .map(|_| (rng.u32() % 1000) * 40 + 32 + rng.u32() % 8)
            .collect();
        let mut out = vec![0xffff_ffffu32; 8 * n];
        let p = WarpOpsParams {
            vals: vals.as_ptr() as u64,
            args: args.as_ptr() as u64,
            out: out.as_mut_ptr() as u64,
        };
        launch_on(
            engine,
            Duration::from_secs(3),
            test_warp_ops,
            dims(blocks, threads, 0),
            p,
        )
        .unwrap();
        for i in 0..n {
            let (w0, lane) = (i / 32 * 32, (i % 32) as u32);
            let a = args[i];
            let v = |src: u32| vals[w0 + src as usize];
            let k = a % 40 - 32;
            assert!(a % 40 >= 32 && a >= 32);
            let want = [
                v(lane ^ (a % 32)),
                v(a & 31),
                if k <= lane { v(lane - k) } else { vals[i] },
                if lane + k <= 31 { v(lane + k) } else { vals[i] },
            ];
            assert_eq!(
                &out[8 * i..8 * i + 4],
                &want,
                "{engine:?} thread {i}: [xor, idx, up, down] with arg {a}"
            );
        }
    }
}

fn bf16_round(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

#[test]
fn mma_over_ldmatrix_tiles_equals_cpu_matmul() {
    for engine in ENGINES {
        mma_over_ldmatrix_tiles_equals_cpu_matmul_on(engine);
    }
}

fn mma_over_ldmatrix_tiles_equals_cpu_matmul_on(engine: Engine) {
    let mut rng = Rng::new("mma_tile");
    // A [16][32], B [32][8] (bf16 values), C [16][8] f32.
    let a: Vec<f32> = (0..16 * 32)
        .map(|_| bf16_round(rng.f32(-2.0, 2.0)))
        .collect();
    let b: Vec<f32> = (0..32 * 8)
        .map(|_| bf16_round(rng.f32(-2.0, 2.0)))
        .collect();
    let c = rng.vec(16 * 8, -1.0, 1.0);
    let bits = |v: &[f32]| v.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<u16>>();
    let a16 = bits(&a);
    let bk16 = bits(&b);
    let bt16: Vec<u16> = (0..8 * 32)
        .map(|i| f32_to_bf16(b[(i % 32) * 8 + i / 32]))
        .collect();
    let mut d1 = Guarded::poisoned(16 * 8);
    let mut d2 = Guarded::poisoned(16 * 8);
    let mut raw = vec![0xffff_ffffu32; 32 * 14];
    let p = MmaTileParams {
        a: a16.as_ptr() as u64,
        bt: bt16.as_ptr() as u64,
        bk: bk16.as_ptr() as u64,
        c: c.as_ptr() as u64,
        d1: d1.ptr(),
        d2: d2.ptr(),
        raw: raw.as_mut_ptr() as u64,
    };
    launch_on(
        engine,
        Duration::from_secs(3),
        test_mma_tile,
        dims(1, 32, MMA_TILE_SMEM),
        p,
    )
    .unwrap();
    let want: Vec<f64> = (0..16 * 8)
        .map(|i| {
            let (r, n) = (i / 8, i % 8);
            c[i] as f64
                + (0..32)
                    .map(|k| a[r * 32 + k] as f64 * b[k * 8 + n] as f64)
                    .sum::<f64>()
        })
        .collect();
    assert_close(
        "mma via ldmatrix x4 + x2 (B n-major)",
        d1.out(),
        &want,
        1e-4,
        1e-5,
    );
    assert_close(
        "mma via ldmatrix x4 + x2.trans (B k-major)",
        d2.out(),
        &want,
        1e-4,
        1e-5,
    );

    // Raw ldmatrix results. Lane L's address is A row L%16, column (L/16)*8, so matrix i is
    // A rows (i%2)*8.., columns (i/2)*8.. .
    let m = |i: usize, r: usize, col: usize| a16[((i % 2) * 8 + r) * 32 + (i / 2) * 8 + col] as u32;
    let plain = |i: usize, l: usize| m(i, l / 4, 2 * (l % 4)) | m(i, l / 4, 2 * (l % 4) + 1) << 16;
    let trans = |i: usize, l: usize| m(i, 2 * (l % 4), l / 4) | m(i, 2 * (l % 4) + 1, l / 4) << 16;
    for l in 0..32 {
        let want = [
            plain(0, l),
            trans(0, l),
            plain(0, l),
            plain(1, l),
            trans(0, l),
            trans(1, l),
            plain(0, l),
            plain(1, l),
            plain(2, l),
            plain(3, l),
            trans(0, l),
            trans(1, l),
            trans(2, l),
            trans(3, l),
        ];
        assert_eq!(
            &raw[14 * l..14 * l + 14],
            &want,
            "lane {l}: x1, x1.t, x2, x2.t, x4, x4.t"
        );
    }
}

#[test]
fn cp_async_copies_and_zero_fills() {
    for engine in ENGINES {
        cp_async_copies_and_zero_fills_on(engine);
    }
}

fn cp_async_copies_and_zero_fills_on(engine: Engine) {
    let mut rng = Rng::new("cp_async");
    let threads = 64u32;
    let total = (32 * threads) as usize;
    for n_valid in [total as u32, 1000 + rng.u32() % 900, 0] {
        // 16-byte aligned source, with random bytes past n_valid that must not be copied.
        let words: Vec<u128> = (0..total / 16)
            .map(|_| (rng.u64() as u128) << 64 | rng.u64() as u128)
            .collect();
        let src: &[u8] = unsafe_bytes(&words);
        let mut out = vec![0xffff_ffffu32; total / 4];
        let mut flags = vec![7u32; threads as usize];
        let p = CpAsyncParams {
            src: src.as_ptr() as u64,
            out: out.as_mut_ptr() as u64,
            flags: flags.as_mut_ptr() as u64,
            n_valid,
        };
        launch_on(
            engine,
            Duration::from_secs(3),
            test_cp_async,
            dims(1, threads, total as u32),
            p,
        )
        .unwrap();
        let got: Vec<u8> = out.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (i, &g) in got.iter().enumerate() {
            let want = if i < n_valid as usize { src[i] } else { 0 };
            assert_eq!(g, want, "byte {i} with n_valid {n_valid}");
        }
        assert!(
            flags.iter().all(|&f| f == 1),
            "own chunk not visible after wait_group 1: {flags:?}"
        );
    }
}

fn unsafe_bytes(w: &[u128]) -> &[u8] {
    // SAFETY: u128 has no padding and u8 has alignment 1; the length covers the same bytes.
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, w.len() * 16) }
}

#[test]
fn bf16_pack_and_ex2() {
    let mut rng = Rng::new("bf16_ex2");
    for _ in 0..1000 {
        let (lo, hi) = (rng.f32(-1e3, 1e3), rng.f32(-1e-3, 1e-3));
        let p = pack_bf16x2(lo, hi);
        let (l2, h2) = unpack_bf16x2(p);
        // Round to nearest: within half a bf16 ulp (2^-8 relative).
        assert!(((l2 - lo) / lo).abs() <= 1.0 / 256.0, "{lo} -> {l2}");
        assert!(((h2 - hi) / hi).abs() <= 1.0 / 256.0, "{hi} -> {h2}");
        let x = rng.f32(-20.0, 20.0);
        let e = ex2(x) as f64;
        let want = 2f64.powf(x as f64);
        assert!(
            ((e - want) / want).abs() < 1e-6,
            "ex2({x}) = {e}, want {want}"
        );
    }
    // Ties go to even; NaN stays NaN.
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    assert_eq!(ex2(-130.0), 0.0, "ftz: subnormal results flush to zero");
}

#[test]
fn planted_shared_oob_is_reported() {
    for engine in ENGINES {
        planted_shared_oob_is_reported_on(engine);
    }
}

fn planted_shared_oob_is_reported_on(engine: Engine) {
    let p = SmemOobParams {
        offset: 256,
        bad_thread: 37,
    };
    let e = launch_on(
        engine,
        Duration::from_secs(3),
        test_smem_oob,
        LaunchDims {
            grid: [2, 1, 1],
            block: [64, 1, 1],
            dyn_smem: 256,
        },
        p,
    )
    .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert_eq!(e.kind, SimErrorKind::SharedOutOfBounds, "{msg}");
    assert_eq!(
        (e.kernel.as_str(), e.block, e.thread),
        ("test_smem_oob", [0, 0, 0], Some([37, 0, 0])),
        "{msg}"
    );
    assert!(
        msg.contains("test_smem_oob")
            && msg.contains("thread (37,0,0)")
            && msg.contains("offset 256"),
        "{msg}"
    );
    // The last in-range word is fine.
    launch_on(
        engine,
        Duration::from_secs(3),
        test_smem_oob,
        dims(2, 64, 256),
        SmemOobParams {
            offset: 252,
            bad_thread: 37,
        },
    )
    .unwrap();
    // Below the base is out of range too.
    let e = launch_on(
        engine,
        Duration::from_secs(3),
        test_smem_oob,
        dims(1, 64, 256),
        SmemOobParams {
            offset: u32::MAX - 3,
            bad_thread: 5,
        },
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.thread),
        (SimErrorKind::SharedOutOfBounds, Some([5, 0, 0])),
        "{e}"
    );
    assert!(e.to_string().contains("offset -4"), "{e}");
}

#[test]
fn planted_divergent_barrier_is_reported() {
    for engine in ENGINES {
        planted_divergent_barrier_is_reported_on(engine);
    }
}

fn planted_divergent_barrier_is_reported_on(engine: Engine) {
    // On the PTX engine (as on a GPU) two `bar.sync 0` sites reached by all threads are one
    // barrier; the native engines are stricter and reject it (mode 1).
    let ptx_only = dfrt_kernels::sim::ptx_engine_from_env() == Some(Engine::Ptx);
    let modes: &[u32] = if ptx_only { &[0] } else { &[0, 1] };
    for &mode in modes {
        let t0 = Instant::now();
        let p = DivergentBarrierParams { split: 40, mode };
        let e = launch_on(
            engine,
            Duration::from_secs(3),
            test_divergent_barrier,
            dims(1, 64, 0),
            p,
        )
        .unwrap_err();
        eprintln!("mode {mode}: {e} ({:?})", t0.elapsed());
        assert_eq!(e.kind, SimErrorKind::Barrier, "{e}");
        assert!(
            e.to_string().contains("barrier")
                && e.to_string().contains("not reached by all threads"),
            "{e}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
    }
    if ptx_only {
        launch_on(
            engine,
            Duration::from_secs(3),
            test_divergent_barrier,
            dims(1, 64, 0),
            DivergentBarrierParams { split: 40, mode: 1 },
        )
        .expect("two bar.sync 0 sites reached by every thread");
    }
    // Every thread at the barrier: fine.
    launch_on(
        engine,
        Duration::from_secs(3),
        test_divergent_barrier,
        dims(1, 64, 0),
        DivergentBarrierParams { split: 64, mode: 0 },
    )
    .unwrap();
}

#[test]
fn planted_deadlock_is_reported() {
    // A true deadlock (some threads at the barrier, the others at a shuffle): the fiber engine
    // sees it at once, the thread engine by timeout.
    for engine in ENGINES {
        let t0 = Instant::now();
        let p = DivergentBarrierParams { split: 40, mode: 2 };
        let e = launch_on(
            engine,
            Duration::from_millis(300),
            test_divergent_barrier,
            dims(1, 64, 0),
            p,
        )
        .unwrap_err();
        eprintln!("mode 2 {engine:?}: {e} ({:?})", t0.elapsed());
        assert!(
            matches!(e.kind, SimErrorKind::Barrier | SimErrorKind::Collective),
            "{e}"
        );
        let why = if engine == Engine::Fibers || dfrt_kernels::sim::ptx_engine_from_env().is_some()
        {
            "deadlock"
        } else {
            "within"
        };
        assert!(e.to_string().contains(why), "{e}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn planted_divergent_shuffle_is_reported() {
    for engine in ENGINES {
        planted_divergent_shuffle_is_reported_on(engine);
    }
}

fn planted_divergent_shuffle_is_reported_on(engine: Engine) {
    for mode in [0u32, 1] {
        let t0 = Instant::now();
        let mut out = vec![0u32; 64];
        let p = DivergentShflParams {
            out: out.as_mut_ptr() as u64,
            mode,
        };
        let e = launch_on(
            engine,
            Duration::from_secs(3),
            test_divergent_shfl,
            dims(1, 64, 0),
            p,
        )
        .unwrap_err();
        eprintln!("mode {mode}: {e} ({:?})", t0.elapsed());
        assert_eq!(e.kind, SimErrorKind::Collective, "{e}");
        let want = if mode == 0 {
            "not reached by all lanes"
        } else {
            "different collectives"
        };
        assert!(e.to_string().contains(want), "{e}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn independent_kernel_may_not_meet() {
    let e = launch(
        test_independent_barrier,
        dims(2, 64, 0),
        IndependentBarrierParams { thread: 9 },
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.thread),
        (SimErrorKind::Barrier, Some([9, 0, 0])),
        "{e}"
    );
    assert!(e.to_string().contains("independent"), "{e}");
    const { assert!(test_independent_barrier.independent && !test_warp_ops.independent) };
}

#[test]
fn bad_launches_are_errors() {
    let p = DivergentBarrierParams { split: 0, mode: 0 };
    for d in [dims(0, 32, 0), dims(1, 2048, 0), dims(1, 32, 300 * 1024)] {
        let e = launch(test_divergent_barrier, d, p).unwrap_err();
        assert_eq!(e.kind, SimErrorKind::Launch, "{e}");
    }
}
