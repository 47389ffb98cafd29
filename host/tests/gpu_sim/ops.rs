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

/// Every `Backend` op of `gpu` against `CpuBackend` in the same precision, on random inputs.
/// `unfused`: a backend of the same precision built with `fused_gelu: false`, to check the
/// composed GELU path too.
pub(super) fn compare_ops<D: Device>(gpu: &GpuBackend<D>, unfused: Option<&GpuBackend<SimDevice>>, seed: u64) {
    let p = gpu.precision();
    let cpu = CpuBackend::new(p);
    // f32 paths differ only in summation order (f32 vs f64 sums); bf16 by about one bf16 ulp
    // where a different sum order moves a value across a rounding boundary.
    let tol = if p == Precision::F32 { 2e-5 } else { 1.6e-2 };
    let mut r = TestRng::seeded(seed);
    let both = |r: &mut TestRng, shape: &[usize]| {
        let v = r.vec(shape.iter().product(), -1.0, 1.0);
        (cpu.upload(&v, shape), gpu.upload(&v, shape))
    };
    let name = |op: &str| format!("{}/{op}", p.name());
    let (rows, cols, rpf) = (24, 96, 8);
    let (xc, xg) = both(&mut r, &[rows, cols]);
    let (yc, yg) = both(&mut r, &[rows, cols]);

    let (wc, wg) = both(&mut r, &[40, cols]);
    let (bc, bg) = both(&mut r, &[40]);
    check(
        &name("linear+bias"),
        &gpu.download(&gpu.linear(&xg, &wg, Some(&bg))),
        &cpu.download(&cpu.linear(&xc, &wc, Some(&bc))),
        tol,
    );
    check(&name("linear"), &gpu.download(&gpu.linear(&xg, &wg, None)), &cpu.download(&cpu.linear(&xc, &wc, None)), tol);
    // The device GEMM's fused bias + GELU epilogue (cuBLASLt GELU_BIAS) against linear then
    // GELU; fused, the bf16 result is rounded once instead of twice. cuBLASLt's GELU formula is
    // its own, so CUDA gets a looser bound.
    let eg = gpu.zeros(&[rows, 40]);
    let g = Gemm {
        dtype: p,
        x: xg.ptr(),
        w: wg.ptr(),
        y: eg.ptr(),
        bias: Some(bg.ptr()),
        gelu: true,
        n: rows,
        k: cols,
        m: 40,
    };
    gpu.device().gemm(&g).unwrap();
    let gtol = if gpu.name() == "cuda" { tol.max(1e-3) } else { tol };
    check(
        &name("gemm bias+gelu epilogue"),
        &gpu.download(&eg),
        &cpu.download(&cpu.gelu_tanh(&cpu.linear(&xc, &wc, Some(&bc)))),
        gtol,
    );
    // The op the FFN uses: fused in bf16 (one rounding), composed in f32 (exactly the reference).
    let lg = gpu.download(&gpu.linear_gelu(&xg, &wg, Some(&bg)));
    check(
        &name("linear_gelu"),
        &lg,
        &cpu.download(&cpu.linear_gelu(&xc, &wc, Some(&bc))),
        if p == Precision::F32 { tol } else { gtol },
    );
    if let Some(unfused) = unfused {
        // The same op on a backend built with the GELU outside the GEMM (the official code's
        // two ops): exactly the composed reference ops.
        let up = |t: &<CpuBackend as Backend>::Tensor| unfused.upload(&cpu.download(t), cpu.shape(t));
        let lu = unfused.download(&unfused.linear_gelu(&up(&xc), &up(&wc), Some(&up(&bc))));
        check(&name("linear_gelu unfused"), &lu, &cpu.download(&cpu.gelu_tanh(&cpu.linear(&xc, &wc, Some(&bc)))), tol);
        if p == Precision::Bf16 {
            assert!(lg != lu, "bf16: the fused epilogue rounds once, so some values differ from the composed ops");
        }
    }

    let (nwc, nwg) = both(&mut r, &[cols]);
    let (nbc, nbg) = both(&mut r, &[cols]);
    check(
        &name("layer_norm"),
        &gpu.download(&gpu.layer_norm(&xg, 1e-6, None)),
        &cpu.download(&cpu.layer_norm(&xc, 1e-6, None)),
        tol,
    );
    check(
        &name("layer_norm affine"),
        &gpu.download(&gpu.layer_norm(&xg, 1e-6, Some((&nwg, &nbg)))),
        &cpu.download(&cpu.layer_norm(&xc, 1e-6, Some((&nwc, &nbc)))),
        tol,
    );
    let (shc, shg) = both(&mut r, &[rows / rpf, cols]);
    let (scc, scg) = both(&mut r, &[rows / rpf, cols]);
    check(
        &name("norm_modulate"),
        &gpu.download(&gpu.norm_modulate(&xg, 1e-6, &shg, &scg, rpf)),
        &cpu.download(&cpu.norm_modulate(&xc, 1e-6, &shc, &scc, rpf)),
        tol,
    );
    check(
        &name("rms_norm"),
        &gpu.download(&gpu.rms_norm(&xg, &nwg, 1e-6)),
        &cpu.download(&cpu.rms_norm(&xc, &nwc, 1e-6)),
        tol,
    );
    check(&name("gelu_tanh"), &gpu.download(&gpu.gelu_tanh(&xg)), &cpu.download(&cpu.gelu_tanh(&xc)), tol);
    check(&name("silu"), &gpu.download(&gpu.silu(&xg)), &cpu.download(&cpu.silu(&xc)), tol);
    check(&name("add"), &gpu.download(&gpu.add(&xg, &yg)), &cpu.download(&cpu.add(&xc, &yc)), 0.0);
    check(
        &name("gated_residual"),
        &gpu.download(&gpu.gated_residual(&xg, &yg, &scg, rpf)),
        &cpu.download(&cpu.gated_residual(&xc, &yc, &scc, rpf)),
        0.0,
    );

    let (k, frames) = (6, 3);
    let (tc, tg) = both(&mut r, &[k, cols]);
    let (ec, eg) = both(&mut r, &[frames, k * cols]);
    let mg = gpu.modulation(&tg, &eg, k);
    let mc = cpu.modulation(&tc, &ec, k);
    assert_eq!(mg.len(), k);
    for (i, (g, c)) in mg.iter().zip(&mc).enumerate() {
        assert_eq!(gpu.shape(g), &[frames, cols][..]);
        check(&name(&format!("modulation[{i}]")), &gpu.download(g), &cpu.download(c), 0.0);
    }

    // RoPE on [f·h·w, heads·d] at a frame offset; head dim 64 splits 10/11/11 pairs.
    let (grid, heads, d) = ([3, 2, 4], 2, 64);
    let (qc, qg) = both(&mut r, &[24, heads * d]);
    check(
        &name("rope"),
        &gpu.download(&gpu.rope(&qg, heads, grid, 7)),
        &cpu.download(&cpu.rope(&qc, heads, grid, 7)),
        tol,
    );

    let (kc, kg) = both(&mut r, &[24, heads * d]);
    let (wqc, wqg) = both(&mut r, &[heads * d]);
    let (wkc, wkg) = both(&mut r, &[heads * d]);
    let (gq, gk) = gpu.qk_norm_rope(&qg, &kg, &wqg, &wkg, 1e-6, heads, grid, 4);
    let (cq, ck) = cpu.qk_norm_rope(&qc, &kc, &wqc, &wkc, 1e-6, heads, grid, 4);
    check(&name("qk_norm_rope q"), &gpu.download(&gq), &cpu.download(&cq), tol);
    check(&name("qk_norm_rope k"), &gpu.download(&gk), &cpu.download(&ck), tol);

    let ts = [1000.0, 937.5, 0.0];
    check(
        &name("sinusoid"),
        &gpu.download(&gpu.sinusoid(&ts, 256)),
        &cpu.download(&cpu.sinusoid(&ts, 256)),
        if p == Precision::F32 { 1e-6 } else { tol },
    );

    let (lc, lg) = both(&mut r, &[3, 4, 6, 8]);
    let pg = gpu.patchify(&lg, [1, 2, 2]);
    let pc = cpu.patchify(&lc, [1, 2, 2]);
    assert_eq!(gpu.shape(&pg), cpu.shape(&pc));
    check(&name("patchify"), &gpu.download(&pg), &cpu.download(&pc), 0.0);
    let (uc, ug) = both(&mut r, &[3 * 3 * 4, 2 * 2 * 5]);
    check(
        &name("unpatchify"),
        &gpu.download(&gpu.unpatchify(&ug, [3, 3, 4], [1, 2, 2], 5)),
        &cpu.download(&cpu.unpatchify(&uc, [3, 3, 4], [1, 2, 2], 5)),
        0.0,
    );

    // copy_rows: strided head rows into a packed slot, at offsets, over a random destination.
    let (mut dc, mut dg) = both(&mut r, &[2, 5, d]);
    cpu.copy_rows(&mut dc, d, &qc, d, heads * d, 5, d);
    gpu.copy_rows(&mut dg, d, &qg, d, heads * d, 5, d);
    check(&name("copy_rows"), &gpu.download(&dg), &cpu.download(&dc), 0.0);
    // write_heads: heads 1 and 0 (in that order) of frame 1 of a [2 frames·5 rows, heads·d]
    // chunk into a head-major slot [2, 5, d] over random contents.
    let (ckc, ckg) = both(&mut r, &[10, heads * d]);
    let (cvc, cvg) = both(&mut r, &[10, heads * d]);
    let (mut skc, mut skg) = both(&mut r, &[2, 5, d]);
    let (mut svc, mut svg) = both(&mut r, &[2, 5, d]);
    cpu.write_heads(&mut skc, &mut svc, &ckc, &cvc, 5 * heads * d, heads * d, &[1, 0], 5, d);
    gpu.write_heads(&mut skg, &mut svg, &ckg, &cvg, 5 * heads * d, heads * d, &[1, 0], 5, d);
    check(&name("write_heads k"), &gpu.download(&skg), &cpu.download(&skc), 0.0);
    check(&name("write_heads v"), &gpu.download(&svg), &cpu.download(&svc), 0.0);
    // write: new host data into an existing tensor, rounded like an upload.
    let v = r.vec(rows * cols, -1.0, 1.0);
    let (mut wc, mut wg) = (cpu.zeros(&[rows, cols]), gpu.zeros(&[rows, cols]));
    cpu.write(&mut wc, &v);
    gpu.write(&mut wg, &v);
    check(&name("write"), &gpu.download(&wg), &cpu.download(&wc), 0.0);
    check(&name("write vs upload"), &cpu.download(&wc), &cpu.download(&cpu.upload(&v, &[rows, cols])), 0.0);
    let zg = gpu.zeros(&[3, 7]);
    assert!(gpu.download(&zg).iter().all(|&v| v == 0.0), "zeros");

    // Attention over mixed segment tables: head 0 = two slot segments (one starting mid-slot)
    // + strided fresh rows; head 1 = fresh rows only; then cross-attention-like one segment.
    let n = 19;
    let (q2c, q2g) = both(&mut r, &[n, heads * d]);
    let (skc, skg) = both(&mut r, &[2, 9, d]);
    let (svc, svg) = both(&mut r, &[2, 9, d]);
    let (fkc, fkg) = both(&mut r, &[13, heads * d]);
    let (fvc, fvg) = both(&mut r, &[13, heads * d]);
    fn ctx<'a, T>(sk: &'a T, sv: &'a T, fk: &'a T, fv: &'a T, heads: usize, d: usize) -> Vec<Vec<Seg<'a, T>>> {
        let seg = |k, v, offset, rows, stride| Seg { k, v, offset, rows, stride, frame: None };
        vec![
            vec![seg(sk, sv, 0, 9, d), seg(sk, sv, 9 * d + 2 * d, 7, d), seg(fk, fv, 0, 13, heads * d)],
            vec![seg(fk, fv, d, 13, heads * d), seg(sk, sv, 0, 0, d)],
        ]
    }
    let ag = gpu.attention(&q2g, d, &ctx(&skg, &svg, &fkg, &fvg, heads, d));
    let ac = cpu.attention(&q2c, d, &ctx(&skc, &svc, &fkc, &fvc, heads, d));
    check(
        &name("attention (mixed segments)"),
        &gpu.download(&ag),
        &cpu.download(&ac),
        if p == Precision::F32 { 1e-5 } else { 2e-2 },
    );
    fn one<'a, T>(t: &'a T, u: &'a T, heads: usize, d: usize) -> Vec<Vec<Seg<'a, T>>> {
        (0..heads).map(|h| vec![Seg { k: t, v: u, offset: h * d, rows: 13, stride: heads * d, frame: None }]).collect()
    }
    let ag = gpu.attention(&q2g, d, &one(&fkg, &fvg, heads, d));
    let ac = cpu.attention(&q2c, d, &one(&fkc, &fvc, heads, d));
    check(
        &name("attention (one segment)"),
        &gpu.download(&ag),
        &cpu.download(&ac),
        if p == Precision::F32 { 1e-5 } else { 2e-2 },
    );

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
        GpuOptions { fused_gelu: false, ..Default::default() },
    );
    compare_ops(&GpuBackend::new(SimDevice::new(), Precision::F32), Some(&unfused), 11);
}

#[test]
pub(super) fn ops_match_cpu_on_sim_bf16() {
    let unfused = GpuBackend::with_options(
        SimDevice::new(),
        Precision::Bf16,
        GpuOptions { fused_gelu: false, ..Default::default() },
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
