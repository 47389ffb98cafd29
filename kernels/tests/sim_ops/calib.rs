//! Calibration statistic.

use super::*;

use dfrt_kernels::calib::*;

#[test]
pub(super) fn calib_masses_match_the_cpu_statistic() {
    let mut rng = Rng::new("calib");
    for bf16 in DTYPES {
        // (tokens per frame, heads, head dim, cached frames incl. frame 0, ar_start,
        //  cache as one token-major segment, query scale)
        for &(tpf, heads, d, cached, ar, one_seg, qs) in &[
            (4usize, 3usize, 16usize, 3usize, 1usize, false, 1.0f32),
            (5, 2, 32, 4, 2, true, 3.0),
            (3, 2, 8, 5, 1, true, 6.0),
        ] {
            let l = 3 * tpf;
            let n = cached * tpf + l;
            let (q, qd) = data(&mut rng, l * heads * d, -qs, qs, bf16);
            // All keys in one [n, heads, d] array for the reference.
            let (kall, _) = data(&mut rng, n * heads * d, -1.0, 1.0, bf16);
            let hwr = if ar == 1 { l / 3 } else { l };
            let rows: Vec<u32> = (0..11).map(|_| rng.u32() % l as u32).collect();
            // Device segments: the cache either as one token-major [cached·tpf, heads·d] run or
            // as head-major [heads, tpf, d] frame slots; the chunk as per-frame token-major runs.
            let mut bufs: Vec<Input> = Vec::new();
            let mut segs: Vec<CalibSeg> = Vec::new();
            let row = heads * d;
            if one_seg {
                bufs.push(stored(&kall[..cached * tpf * row], bf16).1);
                segs.push(CalibSeg {
                    k: 0,
                    tokens: (cached * tpf) as u32,
                    token_stride: row as u32,
                    head_stride: d as u32,
                    _pad: 0,
                });
            } else {
                for f in 0..cached {
                    let mut slot = vec![0f32; tpf * row];
                    for h in 0..heads {
                        for t in 0..tpf {
                            for c in 0..d {
                                slot[(h * tpf + t) * d + c] =
                                    kall[((f * tpf + t) * heads + h) * d + c];
                            }
                        }
                    }
                    bufs.push(stored(&slot, bf16).1);
                    segs.push(CalibSeg {
                        k: 0,
                        tokens: tpf as u32,
                        token_stride: d as u32,
                        head_stride: (tpf * d) as u32,
                        _pad: 0,
                    });
                }
            }
            for f in 0..3 {
                let o = (cached + f) * tpf * row;
                bufs.push(stored(&kall[o..o + tpf * row], bf16).1);
                segs.push(CalibSeg {
                    k: 0,
                    tokens: tpf as u32,
                    token_stride: row as u32,
                    head_stride: d as u32,
                    _pad: 0,
                });
            }
            for (s, b) in segs.iter_mut().zip(&bufs) {
                s.k = b.ptr();
            }
            let nr = rows.len();
            let mut per_row = Output::new(heads * nr * 3, false);
            let p = CalibMassParams {
                q: qd.ptr(),
                rows: rows.as_ptr() as u64,
                segs: segs.as_ptr() as u64,
                out: per_row.ptr(),
                n_rows: nr as u32,
                n_segs: segs.len() as u32,
                heads: heads as u32,
                head_dim: d as u32,
                first_end: hwr as u32,
                mid_end: (n - l) as u32,
                scale: (d as f32).sqrt(),
            };
            p.check().unwrap();
            run(p, bf16);
            let mut means = Output::new(3 * heads, false);
            let mp = CalibMeanParams {
                per_row: per_row.ptr(),
                out: means.ptr(),
                heads: heads as u32,
                n_rows: nr as u32,
            };
            // SAFETY: buffers sized for the params.
            unsafe { sim::run(mp) }.unwrap();

            // Reference (calibrate.rs semantics, f64).
            let mut want_rows = vec![0f64; heads * nr * 3];
            let mut want_mean = vec![0f64; 3 * heads];
            for h in 0..heads {
                for (i, &r) in rows.iter().enumerate() {
                    let lg: Vec<f64> = (0..n)
                        .map(|t| {
                            (0..d)
                                .map(|c| {
                                    q[(r as usize * heads + h) * d + c] as f64
                                        * kall[(t * heads + h) * d + c] as f64
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = lg.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = lg.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let m = [
                        e[..hwr].iter().sum::<f64>() / z,
                        e[hwr..n - l].iter().sum::<f64>() / z,
                        e[n - l..].iter().sum::<f64>() / z,
                    ];
                    for k in 0..3 {
                        want_rows[(h * nr + i) * 3 + k] = m[k];
                        want_mean[k * heads + h] += m[k] / nr as f64;
                    }
                }
            }
            let what = format!(
                "calib {} tpf{tpf} heads{heads} d{d} cached{cached} ar{ar} one_seg {one_seg}",
                name(bf16)
            );
            assert_close(
                &format!("{what} per-row masses"),
                &per_row.values(),
                &want_rows,
                2e-5,
                0.0,
            );
            assert_close(
                &format!("{what} mean masses [3, heads]"),
                &means.values(),
                &want_mean,
                2e-5,
                0.0,
            );
        }
    }
}
