//! RoPE and the fused q/k prologue.

use super::*;

/// `Backend::rope` (cpu.rs): f64 angles and rotation, one rounding (done by `check`).
pub(super) fn rope_ref(x: &[f32], grid: [u32; 3], heads: u32, d: u32, start: u32) -> Vec<f64> {
    let [_, h, w] = grid.map(|v| v as usize);
    let (c, d) = ((d / 2) as usize, d as usize);
    let parts = [c - 2 * (c / 3), c / 3, c / 3];
    let freq =
        |part: usize, j: usize| 1.0 / 10000f64.powf((2 * j) as f64 / (2 * parts[part]) as f64);
    let cols = heads as usize * d;
    let mut out = vec![0f64; x.len()];
    for t in 0..x.len() / cols {
        let pos = [start as usize + t / (h * w), (t / w) % h, t % w];
        for head in 0..heads as usize {
            for p in 0..c {
                let (part, j) = if p < parts[0] {
                    (0, p)
                } else if p < parts[0] + parts[1] {
                    (1, p - parts[0])
                } else {
                    (2, p - parts[0] - parts[1])
                };
                let a = pos[part] as f64 * freq(part, j);
                let i = t * cols + head * d + 2 * p;
                let (re, im) = (x[i] as f64, x[i + 1] as f64);
                out[i] = re * a.cos() - im * a.sin();
                out[i + 1] = re * a.sin() + im * a.cos();
            }
        }
    }
    out
}

#[test]
pub(super) fn rope3d_both_dtypes() {
    let mut rng = Rng::new("rope3d_both_dtypes");
    for bf16 in DTYPES {
        for &(f, h, w, heads, d, start) in
            &[(2u32, 3u32, 5u32, 3u32, 20u32, 4u32), (1, 4, 4, 1, 128, 17)]
        {
            let rows = 24;
            let table = rope_table(d, rows);
            let (x, xd) = data(&mut rng, (f * h * w * heads * d) as usize, -2.0, 2.0, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = RopeParams {
                x: xd.ptr(),
                y: y.ptr(),
                table: table.as_ptr() as u64,
                f,
                h,
                w,
                heads,
                head_dim: d,
                start_frame: start,
                table_rows: rows,
            };
            p.check().unwrap();
            run(p, bf16);
            let want = rope_ref(&x, [f, h, w], heads, d, start);
            check(
                &format!("rope3d {} f{f} h{h} w{w} d{d}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (2e-6, 2e-6),
                2e-7,
            );
        }
    }
}

#[test]
pub(super) fn qk_norm_rope_matches_rms_norm_then_rope() {
    let mut rng = Rng::new("qk_norm_rope");
    for bf16 in DTYPES {
        for &(f, h, w, heads, d, start, with_k, in_place) in &[
            (2u32, 2u32, 3u32, 3u32, 20u32, 5u32, true, false),
            (1, 3, 2, 2, 64, 0, true, true),
            (3, 1, 2, 2, 12, 2, false, false),
        ] {
            let rows = 16;
            let table = rope_table(d, rows);
            let n = (f * h * w * heads * d) as usize;
            let cols = (heads * d) as usize;
            let (q, qd) = data(&mut rng, n, -3.0, 3.0, bf16);
            let (k, kd) = data(&mut rng, n, -3.0, 3.0, bf16);
            let (wq, wqd) = data(&mut rng, cols, 0.5, 1.5, bf16);
            let (wk, wkd) = data(&mut rng, cols, 0.5, 1.5, bf16);
            let (mut qo, mut ko) = if in_place {
                (Output::with(&qd), Output::with(&kd))
            } else {
                (Output::new(n, bf16), Output::new(n, bf16))
            };
            let p = QkNormRopeParams {
                q: if in_place { qo.ptr() } else { qd.ptr() },
                k: if !with_k {
                    0
                } else if in_place {
                    ko.ptr()
                } else {
                    kd.ptr()
                },
                wq: wqd.ptr(),
                wk: wkd.ptr(),
                q_out: qo.ptr(),
                k_out: ko.ptr(),
                table: table.as_ptr() as u64,
                f,
                h,
                w,
                heads,
                head_dim: d,
                start_frame: start,
                table_rows: rows,
                eps: 1e-6,
            };
            p.check().unwrap();
            run(p, bf16);
            let r = if bf16 { r16 } else { ident };
            for (what, x, wt, out) in [("q", &q, &wq, &qo), ("k", &k, &wk, &ko)] {
                if what == "k" && !with_k {
                    // k untouched: still the poison (or the input when in place).
                    assert!(
                        out.values().iter().all(|v| v.is_nan()),
                        "k written although k = 0"
                    );
                    continue;
                }
                // cpu: rms_norm (rounded), then rope on the rounded values.
                let normed: Vec<f32> = rms_ref(x, wt, cols, 1e-6, r)
                    .iter()
                    .map(|&v| r(v) as f32)
                    .collect();
                let want = rope_ref(&normed, [f, h, w], heads, d, start);
                check(
                    &format!("qk_norm_rope {} {what} f{f} h{h} w{w} heads{heads} d{d} in_place {in_place}", name(bf16)),
                    bf16,
                    &out.values(),
                    &want,
                    (1e-5, 1e-5),
                    // A 1-ulp flip of a normalised input moves the rotated pair by ~1 ulp of
                    // the pair's magnitude.
                    2f64.powi(-6),
                );
            }
        }
    }
}

#[test]
pub(super) fn rope_split_matches_wan() {
    // Wan: rope_params dims d - 4(d//6), 2(d//6), 2(d//6), in pairs.
    for d in [12u32, 14, 20, 64, 128] {
        let s = rope_split(d);
        assert_eq!(s, [(d - 4 * (d / 6)) / 2, d / 6, d / 6], "head_dim {d}");
        assert_eq!(s.iter().sum::<u32>(), d / 2);
    }
    assert_eq!(rope_split(128), [22, 21, 21]);
}

#[test]
pub(super) fn rope3d_in_place_and_check() {
    let mut rng = Rng::new("rope3d_in_place");
    let (f, h, w, heads, d, start) = (2u32, 2u32, 3u32, 2u32, 12u32, 5u32);
    let table = rope_table(d, 8);
    let x = rng.vec((f * h * w * heads * d) as usize, -1.0, 1.0);
    let mut buf = Guarded::with(&x);
    let ptr = buf.ptr();
    let p = RopeParams {
        x: ptr,
        y: ptr,
        table: table.as_ptr() as u64,
        f,
        h,
        w,
        heads,
        head_dim: d,
        start_frame: start,
        table_rows: 8,
    };
    p.check().unwrap();
    launch(rope3d_f32, p.dims(), p).unwrap();
    assert_close(
        "rope3d in place",
        buf.out(),
        &rope_ref(&x, [f, h, w], heads, d, start),
        2e-6,
        2e-6,
    );
    // The table must cover start_frame + f; odd head dims are refused.
    assert!(RopeParams {
        start_frame: 7,
        ..p
    }
    .check()
    .is_err());
    assert!(RopeParams { head_dim: 13, ..p }.check().is_err());
}
