//! Per-op comparison against the CPU reference.

use super::*;

/// Compares `got` with `want`: max |got − want| ≤ `tol` · max|want| (+ a tiny floor), printing
/// the first bad index, both values and the max abs / rel error when it fails.
pub(super) fn check(op: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{op}: length {} vs {}", got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let (mut max_abs, mut worst) = (0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if !g.is_finite() || e.is_nan() || e > tol * scale + 1e-7 {
            panic!("{op}: first bad index {i}: got {g} want {w} (tolerance {tol} × max|want| {scale})");
        }
        if e > max_abs {
            max_abs = e;
            worst = i;
        }
    }
    println!("{op:<28} max abs {max_abs:.3e} (at {worst}), max rel {:.3e}", max_abs / scale);
}

/// How close an op case must be: summation-order differences (`Sum`), bit for bit
/// (`Exact`), or the bounds of ops with their own arithmetic.
#[derive(Clone, Copy)]
pub(super) enum Tol {
    Sum,
    Exact,
    /// f64 angles on both sides: 1e-6 in f32.
    Sinusoid,
    /// Online softmax against the CPU's blocked one: 1e-5 in f32, 2e-2 in bf16.
    Attention,
    /// The fused bias + GELU epilogue: cuBLASLt's GELU formula is its own in bf16.
    Epilogue,
}

/// An op of the comparison table, written once for any backend.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Linear {
        bias: bool,
    },
    LinearGelu,
    LayerNorm {
        affine: bool,
    },
    NormModulate {
        rpf: usize,
    },
    RmsNorm,
    Gelu,
    Silu,
    Add,
    GatedResidual {
        rpf: usize,
    },
    Modulation {
        k: usize,
    },
    Rope {
        heads: usize,
        grid: [usize; 3],
        start: usize,
    },
    QkNormRope {
        heads: usize,
        grid: [usize; 3],
        start: usize,
    },
    Sinusoid {
        dim: usize,
    },
    Patchify,
    Unpatchify {
        grid: [usize; 3],
        c: usize,
    },
    /// `copy_rows(dst = input 0, d, src = input 1, d, heads·d, 5, d)`.
    CopyRows {
        heads: usize,
        d: usize,
    },
    /// Heads 1 and 0 (in that order) of frame 1 of a `[2·5, heads·d]` chunk into slots.
    WriteHeads {
        heads: usize,
        d: usize,
    },
    /// Input 0's host values written into a zero tensor (rounded like an upload).
    Write,
    /// Head 0: two slot segments (one starting mid-slot) + strided fresh rows; head 1: fresh
    /// rows and an empty segment.
    AttentionMixed {
        d: usize,
    },
    /// One segment per head over a `[13, heads·d]` K/V.
    AttentionOne {
        heads: usize,
        d: usize,
    },
    /// The umT5 encoder's attention: q, k, v and a `[heads, n, lk]` bias whose last `masked`
    /// keys of every row are `f32::MIN` (the padding mask).
    AttentionBiased {
        heads: usize,
        d: usize,
        masked: usize,
    },
}

impl Op {
    /// Runs the op on `be` over `x` (the uploaded inputs; `host` holds their values) and
    /// downloads every output.
    pub(super) fn apply<B: Backend>(self, be: &B, x: &mut [B::Tensor], host: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let dl = |t: &B::Tensor| be.download(t);
        match self {
            Op::Linear { bias } => vec![dl(&be.linear(&x[0], &x[1], bias.then(|| &x[2])))],
            Op::LinearGelu => vec![dl(&be.linear_gelu(&x[0], &x[1], Some(&x[2])))],
            Op::LayerNorm { affine } => vec![dl(&be.layer_norm(&x[0], 1e-6, affine.then(|| (&x[1], &x[2]))))],
            Op::NormModulate { rpf } => vec![dl(&be.norm_modulate(&x[0], 1e-6, &x[1], &x[2], rpf))],
            Op::RmsNorm => vec![dl(&be.rms_norm(&x[0], &x[1], 1e-6))],
            Op::Gelu => vec![dl(&be.gelu_tanh(&x[0]))],
            Op::Silu => vec![dl(&be.silu(&x[0]))],
            Op::Add => vec![dl(&be.add(&x[0], &x[1]))],
            Op::GatedResidual { rpf } => vec![dl(&be.gated_residual(&x[0], &x[1], &x[2], rpf))],
            Op::Modulation { k } => {
                let m = be.modulation(&x[0], &x[1], k);
                assert_eq!(m.len(), k, "{}: modulation gives k results", be.name());
                m.iter().map(dl).collect()
            }
            Op::Rope { heads, grid, start } => vec![dl(&be.rope(&x[0], heads, grid, start))],
            Op::QkNormRope { heads, grid, start } => {
                let (q, k) = be.qk_norm_rope(&x[0], &x[1], &x[2], &x[3], 1e-6, heads, grid, start);
                vec![dl(&q), dl(&k)]
            }
            Op::Sinusoid { dim } => vec![dl(&be.sinusoid(&[1000.0, 937.5, 0.0], dim))],
            Op::Patchify => {
                let y = be.patchify(&x[0], [1, 2, 2]);
                vec![be.shape(&y).iter().map(|&n| n as f32).collect(), dl(&y)]
            }
            Op::Unpatchify { grid, c } => vec![dl(&be.unpatchify(&x[0], grid, [1, 2, 2], c))],
            Op::CopyRows { heads, d } => {
                let (dst, src) = x.split_at_mut(1);
                be.copy_rows(&mut dst[0], d, &src[0], d, heads * d, 5, d);
                vec![dl(&dst[0])]
            }
            Op::WriteHeads { heads, d } => {
                let (slots, chunk) = x.split_at_mut(2);
                let (sk, sv) = slots.split_at_mut(1);
                be.write_heads(&mut sk[0], &mut sv[0], &chunk[0], &chunk[1], 5 * heads * d, heads * d, &[1, 0], 5, d);
                vec![dl(&sk[0]), dl(&sv[0])]
            }
            Op::Write => {
                let mut t = be.zeros(be.shape(&x[0]));
                be.write(&mut t, &host[0]);
                vec![dl(&t), dl(&x[0])]
            }
            Op::AttentionMixed { d } => {
                let seg = |k, v, offset, rows, stride| Seg { k, v, offset, rows, stride, frame: None };
                let (sk, sv, fk, fv) = (&x[1], &x[2], &x[3], &x[4]);
                let hd = 2 * d;
                let ctx = vec![
                    vec![seg(sk, sv, 0, 9, d), seg(sk, sv, 9 * d + 2 * d, 7, d), seg(fk, fv, 0, 13, hd)],
                    vec![seg(fk, fv, d, 13, hd), seg(sk, sv, 0, 0, d)],
                ];
                vec![dl(&be.attention(&x[0], d, &ctx))]
            }
            Op::AttentionOne { heads, d } => {
                let ctx: Vec<Vec<Seg<'_, B::Tensor>>> = (0..heads)
                    .map(|h| vec![Seg { k: &x[1], v: &x[2], offset: h * d, rows: 13, stride: heads * d, frame: None }])
                    .collect();
                vec![dl(&be.attention(&x[0], d, &ctx))]
            }
            Op::AttentionBiased { heads, d, masked } => {
                let shape = be.shape(&x[3]).to_vec();
                let lk = shape[2];
                let mut bias = host[3].clone();
                for (i, b) in bias.iter_mut().enumerate() {
                    if i % lk >= lk - masked {
                        *b = f32::MIN;
                    }
                }
                let bias = be.upload(&bias, &shape);
                vec![dl(&be.attention_biased(&x[0], &x[1], &x[2], heads, d, &bias))]
            }
        }
    }
}

/// One case of the table: its name, its inputs' shapes (uniform in [-1, 1)), its tolerance.
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) inputs: Vec<Vec<usize>>,
    pub(super) tol: Tol,
    pub(super) op: Op,
}

/// Every op the DiT uses, at small odd shapes: `[24, 96]` activations (3 frames of 8 rows),
/// 2 heads of 64 on a `[3, 2, 4]` grid (head dim 64 splits RoPE into 10/11/11 pairs).
pub(super) fn cases() -> Vec<Case> {
    let (rows, cols, rpf, heads, d) = (24, 96, 8, 2, 64);
    let grid = [3, 2, 4];
    let c = |name, inputs: &[&[usize]], tol, op| Case {
        name,
        inputs: inputs.iter().map(|s| s.to_vec()).collect(),
        tol,
        op,
    };
    let x: &[usize] = &[rows, cols];
    let q: &[usize] = &[24, heads * d];
    vec![
        c("linear+bias", &[x, &[40, cols], &[40]], Tol::Sum, Op::Linear { bias: true }),
        c("linear", &[x, &[40, cols]], Tol::Sum, Op::Linear { bias: false }),
        c("linear_gelu", &[x, &[40, cols], &[40]], Tol::Epilogue, Op::LinearGelu),
        c("layer_norm", &[x], Tol::Sum, Op::LayerNorm { affine: false }),
        c("layer_norm affine", &[x, &[cols], &[cols]], Tol::Sum, Op::LayerNorm { affine: true }),
        c("norm_modulate", &[x, &[rows / rpf, cols], &[rows / rpf, cols]], Tol::Sum, Op::NormModulate { rpf }),
        c("rms_norm", &[x, &[cols]], Tol::Sum, Op::RmsNorm),
        c("gelu_tanh", &[x], Tol::Sum, Op::Gelu),
        c("silu", &[x], Tol::Sum, Op::Silu),
        c("add", &[x, x], Tol::Exact, Op::Add),
        c("gated_residual", &[x, x, &[rows / rpf, cols]], Tol::Exact, Op::GatedResidual { rpf }),
        c("modulation", &[&[6, cols], &[3, 6 * cols]], Tol::Exact, Op::Modulation { k: 6 }),
        c("rope", &[q], Tol::Sum, Op::Rope { heads, grid, start: 7 }),
        c("qk_norm_rope", &[q, q, &[heads * d], &[heads * d]], Tol::Sum, Op::QkNormRope { heads, grid, start: 4 }),
        c("sinusoid", &[], Tol::Sinusoid, Op::Sinusoid { dim: 256 }),
        c("patchify", &[&[3, 4, 6, 8]], Tol::Exact, Op::Patchify),
        c("unpatchify", &[&[3 * 3 * 4, 2 * 2 * 5]], Tol::Exact, Op::Unpatchify { grid: [3, 3, 4], c: 5 }),
        c("copy_rows", &[&[2, 5, d], q], Tol::Exact, Op::CopyRows { heads, d }),
        c(
            "write_heads",
            &[&[2, 5, d], &[2, 5, d], &[10, heads * d], &[10, heads * d]],
            Tol::Exact,
            Op::WriteHeads { heads, d },
        ),
        c("write", &[x], Tol::Exact, Op::Write),
        c(
            "attention (mixed segments)",
            &[&[19, heads * d], &[2, 9, d], &[2, 9, d], &[13, heads * d], &[13, heads * d]],
            Tol::Attention,
            Op::AttentionMixed { d },
        ),
        c(
            "attention (one segment)",
            &[&[19, heads * d], &[13, heads * d], &[13, heads * d]],
            Tol::Attention,
            Op::AttentionOne { heads, d },
        ),
        c(
            "attention_biased (umT5, masked tail)",
            &[&[19, heads * d], &[17, heads * d], &[17, heads * d], &[heads, 19, 17]],
            Tol::Attention,
            Op::AttentionBiased { heads, d, masked: 4 },
        ),
        // The 14B model's heads (Wan2.1-T2V-14B, Krea RealTime-14B: 40 × 128, dim 5120): the
        // head-indexed ops and the d128 attention kernels at its head count.
        c("rope (40 heads × 128)", &[&[24, 40 * 128]], Tol::Sum, Op::Rope { heads: 40, grid, start: 5 }),
        c(
            "qk_norm_rope (40 heads × 128)",
            &[&[24, 5120], &[24, 5120], &[5120], &[5120]],
            Tol::Sum,
            Op::QkNormRope { heads: 40, grid, start: 2 },
        ),
        c(
            "write_heads (40 heads × 128)",
            &[&[2, 5, 128], &[2, 5, 128], &[10, 5120], &[10, 5120]],
            Tol::Exact,
            Op::WriteHeads { heads: 40, d: 128 },
        ),
        c(
            "attention (one segment, 40 heads × 128)",
            &[&[19, 5120], &[13, 5120], &[13, 5120]],
            Tol::Attention,
            Op::AttentionOne { heads: 40, d: 128 },
        ),
    ]
}

/// Whether `name` is selected by `DFRT_OPS` (comma-separated substrings; unset: every case).
fn selected(name: &str) -> bool {
    match std::env::var("DFRT_OPS") {
        Ok(f) if !f.is_empty() => f.split(',').any(|s| name.contains(s.trim())),
        _ => true,
    }
}

/// Every case of [`cases`] on `gpu` against `CpuBackend` in the same precision, on the same
/// random inputs; then the checks that are not one op (the device GEMM's epilogue, the
/// unfused GELU backend, zeros, write against upload, the calibration statistic).
/// `unfused`: a backend of the same precision built with `GeluEpilogue::Separate`.
pub(super) fn compare_ops<D: Device>(gpu: &GpuBackend<D>, unfused: Option<&GpuBackend<SimDevice>>, seed: u64) {
    let p = gpu.precision();
    let cpu = CpuBackend::new(p);
    // f32 paths differ only in summation order (f32 vs f64 sums); bf16 by about one bf16 ulp
    // where a different sum order moves a value across a rounding boundary.
    let tol: f32 = if p == Precision::F32 { 2e-5 } else { 1.6e-2 };
    let gtol = if gpu.name() == "cuda" { tol.max(1e-3) } else { tol };
    let f32_or = |f: f32, b: f32| if p == Precision::F32 { f } else { b };
    let mut r = TestRng::seeded(seed);
    let name = |op: &str| format!("{}/{op}", p.name());
    let mut ran = 0;
    for case in cases() {
        if !selected(case.name) {
            continue;
        }
        let host: Vec<Vec<f32>> = case.inputs.iter().map(|s| r.vec(s.iter().product(), -1.0, 1.0)).collect();
        let mut xc: Vec<_> = host.iter().zip(&case.inputs).map(|(v, s)| cpu.upload(v, s)).collect();
        let mut xg: Vec<_> = host.iter().zip(&case.inputs).map(|(v, s)| gpu.upload(v, s)).collect();
        let want = case.op.apply(&cpu, &mut xc, &host);
        let got = case.op.apply(gpu, &mut xg, &host);
        let t = match case.tol {
            Tol::Sum => tol,
            Tol::Exact => 0.0,
            Tol::Sinusoid => f32_or(1e-6, tol),
            Tol::Attention => f32_or(1e-5, 2e-2),
            Tol::Epilogue => f32_or(tol, gtol),
        };
        assert_eq!(got.len(), want.len(), "{}: outputs", case.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let label = if want.len() == 1 { case.name.to_string() } else { format!("{}[{i}]", case.name) };
            check(&name(&label), g, w, t);
        }
        ran += 1;
    }
    println!("{}: {ran} op cases (DFRT_OPS filters them by name)", p.name());

    let both = |r: &mut TestRng, shape: &[usize]| {
        let v = r.vec(shape.iter().product(), -1.0, 1.0);
        (cpu.upload(&v, shape), gpu.upload(&v, shape))
    };
    let (rows, cols, heads, d) = (24, 96, 2, 64);
    let (xc, xg) = both(&mut r, &[rows, cols]);
    let (wc, wg) = both(&mut r, &[40, cols]);
    let (bc, bg) = both(&mut r, &[40]);
    // The device GEMM's fused bias + GELU epilogue (cuBLASLt GELU_BIAS) against linear then
    // GELU; fused, the bf16 result is rounded once instead of twice.
    let eg = gpu.zeros(&[rows, 40]);
    let g = Gemm {
        dtype: p,
        x: xg.ptr(),
        w: wg.ptr(),
        y: eg.ptr(),
        bias: Some(bg.ptr()),
        epilogue: Epilogue::Gelu,
        n: rows,
        k: cols,
        m: 40,
    };
    gpu.device().gemm(&g).unwrap();
    check(
        &name("gemm bias+gelu epilogue"),
        &gpu.download(&eg),
        &cpu.download(&cpu.gelu_tanh(&cpu.linear(&xc, &wc, Some(&bc)))),
        gtol,
    );
    if let Some(unfused) = unfused {
        // The same op on a backend built with the GELU outside the GEMM (the official code's
        // two ops): exactly the composed reference ops.
        let lg = gpu.download(&gpu.linear_gelu(&xg, &wg, Some(&bg)));
        let up = |t: &<CpuBackend as Backend>::Tensor| unfused.upload(&cpu.download(t), cpu.shape(t));
        let lu = unfused.download(&unfused.linear_gelu(&up(&xc), &up(&wc), Some(&up(&bc))));
        check(&name("linear_gelu unfused"), &lu, &cpu.download(&cpu.gelu_tanh(&cpu.linear(&xc, &wc, Some(&bc)))), tol);
        if p == Precision::Bf16 {
            assert!(lg != lu, "bf16: the fused epilogue rounds once, so some values differ from the composed ops");
        }
    }
    let v = r.vec(rows * cols, -1.0, 1.0);
    let mut wt = cpu.zeros(&[rows, cols]);
    cpu.write(&mut wt, &v);
    check(&name("write vs upload"), &cpu.download(&wt), &cpu.download(&cpu.upload(&v, &[rows, cols])), 0.0);
    let zg = gpu.zeros(&[3, 7]);
    assert!(gpu.download(&zg).iter().all(|&v| v == 0.0), "zeros");
    let (fkc, fkg) = both(&mut r, &[13, heads * d]);

    // Dummy Forcing's calibration statistic on the device against the host statistic
    // (`layer_masses`, f64 sums) over the phase-1 layout: a slot [heads, 9, d] (head-major)
    // then the chunk's K [13, heads·d], regions cutting through both.
    fn phase1<'a, T>(sk: &'a T, fk: &'a T, heads: usize, d: usize) -> Vec<Vec<Seg<'a, T>>> {
        (0..heads)
            .map(|h| {
                vec![
                    Seg { k: sk, v: sk, offset: h * 9 * d, rows: 9, stride: d, frame: Some(0) },
                    Seg { k: fk, v: fk, offset: h * d, rows: 13, stride: heads * d, frame: Some(3) },
                ]
            })
            .collect()
    }
    let (slotc, slotg) = both(&mut r, &[heads, 9, d]);
    let (q3c, q3g) = both(&mut r, &[13, heads * d]);
    let rows = [0, 12, 5, 5, 7];
    let (first_end, mid_end) = (4, 22 - 13);
    assert!(
        cpu.calibration_masses(&q3c, d, &[], &rows, first_end, mid_end).is_none(),
        "the CPU backend computes it on the host"
    );
    let got = gpu
        .calibration_masses(&q3g, d, &phase1(&slotg, &fkg, heads, d), &rows, first_end, mid_end)
        .expect("phase-1 contexts run on the device")
        .unwrap();
    let (slot_h, fk_h, q_h) = (cpu.download(&slotc), cpu.download(&fkc), cpu.download(&q3c));
    let keys = [KeySegment::htd(&slot_h, heads, d).unwrap(), KeySegment::thd(&fk_h, heads, d).unwrap()];
    // layer_masses takes the first region from the chunk size (L/3 for ar_start 1 = 4 here).
    let want = layer_masses(&q_h, 13, heads, d, &rows, &keys, 1).unwrap().concat();
    check(&name("calibration masses"), &got, &want, 2e-5);
    // A context the kernel does not cover (heads in different tensors) is left to the host.
    let mixed: Vec<Vec<Seg<'_, GpuTensor<D>>>> = vec![
        vec![Seg { k: &slotg, v: &slotg, offset: 0, rows: 22, stride: d, frame: None }],
        vec![Seg { k: &fkg, v: &fkg, offset: d, rows: 13, stride: heads * d, frame: None }],
    ];
    assert!(gpu.calibration_masses(&q3g, d, &mixed, &rows, first_end, mid_end).is_none());
    gpu.status().expect("no op failed");
}

#[test]
pub(super) fn ops_match_cpu_on_sim_f32() {
    let unfused = GpuBackend::with_options(
        SimDevice::new(),
        Precision::F32,
        GpuOptions { gelu: GeluEpilogue::Separate, ..Default::default() },
    );
    compare_ops(&GpuBackend::new(SimDevice::new(), Precision::F32), Some(&unfused), 11);
}

#[test]
pub(super) fn ops_match_cpu_on_sim_bf16() {
    let unfused = GpuBackend::with_options(
        SimDevice::new(),
        Precision::Bf16,
        GpuOptions { gelu: GeluEpilogue::Separate, ..Default::default() },
    );
    compare_ops(&GpuBackend::new(SimDevice::new(), Precision::Bf16), Some(&unfused), 12);
}

#[test]
pub(super) fn failed_ops_are_sticky_errors_not_panics() {
    let be = GpuBackend::new(SimDevice::new(), Precision::Bf16);
    let q = be.upload(&[0.5; 4 * 2 * 48], &[4, 96]);
    // bf16 attention exists for head dims 64 and 128 only.
    let ctx: Vec<Vec<Seg<'_, _>>> =
        (0..2).map(|h| vec![Seg { k: &q, v: &q, offset: h * 48, rows: 4, stride: 96, frame: None }]).collect();
    let o = be.attention(&q, 48, &ctx);
    let err = be.status().unwrap_err();
    assert!(matches!(err, dfrt::Error::Device(DeviceError::Unsupported(_))), "an unsupported op: {err:?}");
    let err = err.to_string();
    assert!(err.contains("head_dim 48"), "{err}");
    // Every later op is skipped (its result downloads as zeros, not NaN) and the first error stays.
    let y = be.gelu_tanh(&o);
    assert_eq!(be.shape(&y), &[4, 96][..]);
    assert!(be.download(&y).iter().all(|&v| v == 0.0));
    assert_eq!(be.status().unwrap_err().to_string(), err);
}

/// Runs `f` on a fresh backend and checks that it failed as a bad shape should: no panic,
/// results download as finite values (zeros), and `status` names `op` with the kind
/// `DeviceError::Invalid`, which stays the first error after later ops.
fn fails_cleanly<B: Backend>(be: B, op: &str, f: impl FnOnce(&B) -> Vec<f32>) {
    let out = f(&be);
    assert!(out.iter().all(|v| v.is_finite()), "{}/{op}: a failed op downloads NaN", be.name());
    let e = be.status().expect_err("the bad shape is reported");
    assert!(
        matches!(&e, dfrt::Error::Device(DeviceError::Invalid(m)) if m.contains(op)),
        "{}/{op}: expected an invalid-operands error naming the op, got {e:?}",
        be.name()
    );
    let x = be.upload(&[1.0; 6], &[2, 3]);
    let _ = be.download(&be.add(&x, &x));
    assert!(be.status().unwrap_err().to_string().contains(op), "{}/{op}: the first error sticks", be.name());
}

/// Both backends answer a bad shape with an error, never a panic and never NaN.
#[test]
fn bad_shapes_are_errors_on_both_backends() {
    fn all<B: Backend>(make: impl Fn() -> B) {
        fails_cleanly(make(), "linear", |be| {
            let x = be.upload(&[0.5; 24], &[4, 6]);
            let w = be.upload(&[0.25; 35], &[5, 7]);
            be.download(&be.linear(&x, &w, None))
        });
        fails_cleanly(make(), "rms_norm", |be| {
            let x = be.upload(&[0.5; 24], &[4, 6]);
            let w = be.upload(&[1.0; 5], &[5]);
            be.download(&be.rms_norm(&x, &w, 1e-6))
        });
        fails_cleanly(make(), "copy_rows", |be| {
            let src = be.upload(&[0.5; 12], &[3, 4]);
            let mut dst = be.zeros(&[2, 4]);
            be.copy_rows(&mut dst, 0, &src, 0, 4, 3, 4);
            be.download(&dst)
        });
        fails_cleanly(make(), "gated_residual", |be| {
            let x = be.upload(&[0.5; 24], &[4, 6]);
            let gate = be.upload(&[1.0; 6], &[1, 6]);
            be.download(&be.gated_residual(&x, &x, &gate, 2))
        });
        fails_cleanly(make(), "attention", |be| {
            let q = be.upload(&[0.5; 24], &[4, 6]);
            let k = be.upload(&[0.5; 24], &[4, 6]);
            let seg = |h: usize| Seg { k: &k, v: &k, offset: h * 3, rows: 4, stride: 6, frame: None };
            // Two heads of 4 do not make q's 6 columns.
            be.download(&be.attention(&q, 4, &[vec![seg(0)], vec![seg(1)]]))
        });
        fails_cleanly(make(), "upload", |be| be.download(&be.upload(&[1.0; 5], &[2, 3])));
    }
    all(|| CpuBackend::new(Precision::F32));
    all(|| GpuBackend::new(SimDevice::new(), Precision::F32));
}
