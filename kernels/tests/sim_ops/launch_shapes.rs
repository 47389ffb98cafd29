//! Launch-shape robustness.

use super::*;

#[test]
pub(super) fn grid_stride_loops_cover_everything_with_a_tiny_grid() {
    // The real grids are capped (grid_for); a 1-2 block launch makes every thread loop.
    let mut rng = Rng::new("grid_stride");
    let tiny = |p: dfrt_kernels::LaunchDims| dfrt_kernels::LaunchDims {
        grid: [2, p.grid[1], 1],
        ..p
    };
    // add, bf16
    let n = 3000;
    let (x, xd) = data(&mut rng, n, -4.0, 4.0, true);
    let (y, yd) = data(&mut rng, n, -4.0, 4.0, true);
    let mut o = Output::new(n, true);
    let p = Bf16(AddParams {
        x: xd.ptr(),
        y: yd.ptr(),
        out: o.ptr(),
        n: n as u32,
    });
    launch(add_bf16, tiny(p.dims()), p).unwrap();
    let want: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    check(
        "add bf16, 2 blocks",
        true,
        &o.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
    // kv_compact with two jobs, f32
    let (heads, tpf, d) = (3usize, 40usize, 8usize);
    let (src, sd) = data(&mut rng, heads * tpf * d, -1.0, 1.0, false);
    let hs: Vec<u32> = vec![2, 0];
    let (mut a, mut b) = (
        Output::new(2 * tpf * d, false),
        Output::new(2 * tpf * d, false),
    );
    let job = |dst: u64| HeadCopyJob {
        src_k: sd.ptr(),
        src_v: 0,
        dst_k: dst,
        dst_v: 0,
        heads: hs.as_ptr() as u64,
        n_heads: 2,
        _pad: 0,
    };
    let jobs = [job(a.ptr()), job(b.ptr())];
    let shape = HeadCopyShape {
        rows: tpf as u32,
        head_dim: d as u32,
        src_row_stride: d as u32,
        src_head_stride: (tpf * d) as u32,
        dst_row_stride: d as u32,
        dst_head_stride: (tpf * d) as u32,
    };
    let p = KvCompactParams {
        jobs: jobs.as_ptr() as u64,
        n_jobs: 2,
        max_heads: 2,
        shape,
    };
    launch(kv_compact_f32, tiny(p.dims()), p).unwrap();
    let want: Vec<f64> = hs
        .iter()
        .flat_map(|&h| {
            src[h as usize * tpf * d..][..tpf * d]
                .iter()
                .map(|&v| v as f64)
        })
        .collect();
    check(
        "kv_compact f32 job 0, 2 blocks",
        false,
        &a.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
    check(
        "kv_compact f32 job 1, 2 blocks",
        false,
        &b.values(),
        &want,
        (0.0, 0.0),
        0.0,
    );
}

#[test]
pub(super) fn kv_write_bf16_with_unaligned_pointers_copies_elementwise() {
    // A destination at an odd bf16 offset cannot take 32-bit words: the kernel must fall back.
    let mut rng = Rng::new("kv_write_unaligned");
    let (heads, tpf, d) = (3usize, 4usize, 6usize);
    let (k, kd) = data(&mut rng, tpf * heads * d, -1.0, 1.0, true);
    let group: Vec<u32> = vec![1, 2];
    let mut out = Output::new(1 + tpf * 2 * d, true);
    let p = Bf16(KvWriteParams {
        job: HeadCopyJob {
            src_k: kd.ptr(),
            src_v: 0,
            dst_k: out.ptr() + 2,
            dst_v: 0,
            heads: group.as_ptr() as u64,
            n_heads: 2,
            _pad: 0,
        },
        shape: HeadCopyShape {
            rows: tpf as u32,
            head_dim: d as u32,
            src_row_stride: (heads * d) as u32,
            src_head_stride: d as u32,
            dst_row_stride: (2 * d) as u32,
            dst_head_stride: d as u32,
        },
    });
    p.0.check().unwrap();
    launch(kv_write_bf16, p.dims(), p).unwrap();
    let got = out.values();
    assert!(got[0].is_nan(), "element before the slot was written");
    let mut want = vec![0f64; tpf * 2 * d];
    for (gi, &h) in group.iter().enumerate() {
        for r in 0..tpf {
            for c in 0..d {
                want[r * 2 * d + gi * d + c] = k[r * heads * d + h as usize * d + c] as f64;
            }
        }
    }
    check(
        "kv_write bf16 unaligned",
        true,
        &got[1..],
        &want,
        (0.0, 0.0),
        0.0,
    );
}

#[test]
pub(super) fn barrier_kernels_agree_on_both_engines() {
    // The row kernels and the calibration kernel meet at barriers: run them on the OS-thread
    // engine too (the other tests use the default fiber engine).
    let mut rng = Rng::new("engines");
    for engine in ENGINES {
        let (rows, cols) = (3u32, 200u32);
        let (x, xd) = data(&mut rng, (rows * cols) as usize, -2.0, 2.0, true);
        let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, true);
        let mut y = Output::new(x.len(), true);
        let p = Bf16(RmsNormParams {
            x: xd.ptr(),
            w: wd.ptr(),
            y: y.ptr(),
            rows,
            cols,
            eps: 1e-6,
        });
        launch_on(
            engine,
            std::time::Duration::from_secs(30),
            rms_norm_bf16,
            p.dims(),
            p,
        )
        .unwrap();
        let want = rms_ref(&x, &w, cols as usize, 1e-6, r16);
        check(
            &format!("rms_norm bf16 on {engine:?}"),
            true,
            &y.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}
