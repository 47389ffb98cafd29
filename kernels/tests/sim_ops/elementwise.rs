//! Elementwise.

use super::*;

pub(super) fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}
pub(super) fn silu_ref(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
pub(super) fn gelu_and_silu_both_dtypes() {
    let mut rng = Rng::new("gelu_and_silu");
    for bf16 in DTYPES {
        let mut v = rng.vec(777, -8.0, 8.0);
        v.extend([0.0, -0.0, 20.0, -20.0, 1e-3, -1e-3, 90.0, -90.0]);
        let (x, xd) = stored(&v, bf16);
        let mut y = Output::new(x.len(), bf16);
        run(
            GeluParams {
                x: xd.ptr(),
                y: y.ptr(),
                n: x.len() as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x.iter().map(|&v| gelu_ref(v as f64)).collect();
        // The f64 formula's tail underflows to -0 (as the CPU's f32 one does) where the kernel's
        // x·sigmoid(2u) form keeps a ~1e-21 value: an absolute floor covers that.
        check(
            &format!("gelu {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (1e-6, 1e-5),
            1e-6,
        );
        let mut y = Output::new(x.len(), bf16);
        run(
            SiluParams {
                x: xd.ptr(),
                y: y.ptr(),
                n: x.len() as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x.iter().map(|&v| silu_ref(v as f64)).collect();
        check(
            &format!("silu {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (1e-6, 1e-5),
            1e-6,
        );
    }
}

#[test]
pub(super) fn add_both_dtypes() {
    let mut rng = Rng::new("add");
    for bf16 in DTYPES {
        let n = 1500;
        let (x, xd) = data(&mut rng, n, -4.0, 4.0, bf16);
        let (y, yd) = data(&mut rng, n, -4.0, 4.0, bf16);
        let mut o = Output::new(n, bf16);
        run(
            AddParams {
                x: xd.ptr(),
                y: yd.ptr(),
                out: o.ptr(),
                n: n as u32,
            },
            bf16,
        );
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        // One rounding of an exact sum: bit-exact in both dtypes.
        check(
            &format!("add {}", name(bf16)),
            bf16,
            &o.values(),
            &want,
            (0.0, 6e-8),
            0.0,
        );
    }
}

#[test]
pub(super) fn gated_residual_both_dtypes() {
    let mut rng = Rng::new("gated_residual_both_dtypes");
    for bf16 in DTYPES {
        for in_place in [false, true] {
            let (rows, cols, rpf) = (11u32, 37u32, 3u32);
            let frames = rows.div_ceil(rpf) as usize;
            let (x, xd) = data(&mut rng, (rows * cols) as usize, -2.0, 2.0, bf16);
            let (y, yd) = data(&mut rng, x.len(), -2.0, 2.0, bf16);
            let (g, gd) = data(&mut rng, frames * cols as usize, -1.0, 1.0, bf16);
            let mut out = if in_place {
                Output::with(&xd)
            } else {
                Output::new(x.len(), bf16)
            };
            let p = GatedResidualParams {
                x: if in_place { out.ptr() } else { xd.ptr() },
                y: yd.ptr(),
                gate: gd.ptr(),
                out: out.ptr(),
                rows,
                cols,
                rows_per_frame: rpf,
            };
            run(p, bf16);
            let r = if bf16 { r16 } else { ident };
            let c = cols as usize;
            let want: Vec<f64> = (0..x.len())
                .map(|i| {
                    x[i] as f64 + r(y[i] as f64 * g[(i / c / rpf as usize) * c + i % c] as f64)
                })
                .collect();
            check(
                &format!("gated_residual {} in_place {in_place}", name(bf16)),
                bf16,
                &out.values(),
                &want,
                (1e-6, 1e-6),
                0.0,
            );
        }
    }
}

#[test]
pub(super) fn modulation_both_dtypes() {
    let mut rng = Rng::new("modulation");
    for bf16 in DTYPES {
        let (frames, k, dim) = (3u32, 6u32, 37u32);
        let (table, td) = data(&mut rng, (k * dim) as usize, -1.0, 1.0, bf16);
        let (e, ed) = data(&mut rng, (frames * k * dim) as usize, -1.0, 1.0, bf16);
        let mut out = Output::new((k * frames * dim) as usize, bf16);
        let p = ModulationParams {
            table: td.ptr(),
            e: ed.ptr(),
            out: out.ptr(),
            frames,
            k,
            dim,
        };
        p.check().unwrap();
        run(p, bf16);
        // out[i] is Backend::modulation's i-th [frames, dim] tensor.
        let (f_, k_, d_) = (frames as usize, k as usize, dim as usize);
        let mut want = vec![0f64; f_ * k_ * d_];
        for i in 0..k_ {
            for f in 0..f_ {
                for j in 0..d_ {
                    want[(i * f_ + f) * d_ + j] =
                        table[i * d_ + j] as f64 + e[f * k_ * d_ + i * d_ + j] as f64;
                }
            }
        }
        check(
            &format!("modulation {}", name(bf16)),
            bf16,
            &out.values(),
            &want,
            (0.0, 6e-8),
            0.0,
        );
    }
}

#[test]
pub(super) fn sinusoid_both_dtypes() {
    let mut rng = Rng::new("sinusoid");
    for bf16 in DTYPES {
        for dim in [256u32, 31] {
            // Timesteps as the scheduler makes them (0..1000), plus edge values.
            let mut t = rng.vec(5, 0.0, 1000.0);
            t.extend([0.0, 999.0, 1.5, -3.25]);
            let freqs = sinusoid_freqs(dim);
            let mut y = Output::new(t.len() * dim as usize, bf16);
            let p = SinusoidParams {
                t: t.as_ptr() as u64,
                freqs: freqs.as_ptr() as u64,
                y: y.ptr(),
                n: t.len() as u32,
                dim,
            };
            run(p, bf16);
            // The CPU reference: f64 cos/sin of the f64 angle, rounded to f32 (then bf16).
            let half = (dim / 2) as usize;
            let mut want = vec![0f64; t.len() * dim as usize];
            for (i, &ti) in t.iter().enumerate() {
                for j in 0..half {
                    let a = ti as f64 * 10000f64.powf(-(j as f64) / half as f64);
                    want[i * dim as usize + j] = a.cos() as f32 as f64;
                    want[i * dim as usize + half + j] = a.sin() as f32 as f64;
                }
            }
            // f32: at most 1 f32 ulp (values ≤ 1) from the correctly rounded f64 result.
            check(
                &format!("sinusoid {} dim {dim}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (6e-8, 0.0),
                0.0,
            );
        }
    }
}

#[test]
pub(super) fn cos_sin_f64_is_accurate() {
    let mut rng = Rng::new("cos_sin_f64");
    let mut worst = 0f64;
    for _ in 0..20000 {
        let a = rng.f32(-2000.0, 2000.0) as f64 * (1.0 + rng.f32(0.0, 1e-3) as f64);
        let (c, s) = cos_sin_f64(a);
        worst = worst.max((c - a.cos()).abs()).max((s - a.sin()).abs());
    }
    assert!(worst < 1e-13, "cos_sin_f64: max abs error {worst:e}");
}
