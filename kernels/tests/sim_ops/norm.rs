//! Norms.

use super::*;

pub(super) fn rms_ref(x: &[f32], w: &[f32], cols: usize, eps: f32, r: fn(f64) -> f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
        let rs = 1.0 / (ms + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            out.push(r(v as f64 * rs) * w[j] as f64);
        }
    }
    out
}

#[test]
pub(super) fn rms_norm_both_dtypes() {
    let mut rng = Rng::new("rms_norm_both_dtypes");
    for bf16 in DTYPES {
        for &(rows, cols) in &[(5u32, 333u32), (2, 1030)] {
            let (x, xd) = data(&mut rng, (rows * cols) as usize, -3.0, 3.0, bf16);
            let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = RmsNormParams {
                x: xd.ptr(),
                w: wd.ptr(),
                y: y.ptr(),
                rows,
                cols,
                eps: 1e-6,
            };
            run(p, bf16);
            let want = rms_ref(&x, &w, cols as usize, 1e-6, if bf16 { r16 } else { ident });
            check(
                &format!("rms_norm {} {rows}x{cols}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (1e-5, 1e-5),
                0.0,
            );
        }
    }
}

pub(super) fn mean_rstd(row: &[f32], eps: f32) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

#[test]
pub(super) fn layer_norm_with_and_without_affine() {
    let mut rng = Rng::new("layer_norm");
    for bf16 in DTYPES {
        for affine in [true, false] {
            let (rows, cols) = (6u32, 301u32);
            // An offset mean makes a one-pass variance visibly wrong.
            let (x, xd) = data(&mut rng, (rows * cols) as usize, 4.0, 9.0, bf16);
            let (w, wd) = data(&mut rng, cols as usize, 0.5, 1.5, bf16);
            let (b, bd) = data(&mut rng, cols as usize, -1.0, 1.0, bf16);
            let mut y = Output::new(x.len(), bf16);
            let p = LayerNormParams {
                x: xd.ptr(),
                w: if affine { wd.ptr() } else { 0 },
                b: if affine { bd.ptr() } else { 0 },
                y: y.ptr(),
                rows,
                cols,
                eps: 1e-6,
            };
            run(p, bf16);
            let c = cols as usize;
            let mut want = vec![0f64; x.len()];
            for r in 0..rows as usize {
                let (mean, rstd) = mean_rstd(&x[r * c..][..c], 1e-6);
                for j in 0..c {
                    let n = (x[r * c + j] as f64 - mean) * rstd;
                    want[r * c + j] = if affine {
                        n * w[j] as f64 + b[j] as f64
                    } else {
                        n
                    };
                }
            }
            // The f32 kernel's statistics carry f32 error on O(10)-sized inputs.
            check(
                &format!("layer_norm {} affine {affine}", name(bf16)),
                bf16,
                &y.values(),
                &want,
                (3e-5, 3e-5),
                1e-6,
            );
        }
    }
}

#[test]
pub(super) fn layer_norm_modulate_both_dtypes() {
    let mut rng = Rng::new("layer_norm_modulate_both_dtypes");
    for bf16 in DTYPES {
        let (rows, cols, rpf) = (9u32, 333u32, 4u32);
        let frames = rows.div_ceil(rpf) as usize;
        let (x, xd) = data(&mut rng, (rows * cols) as usize, 5.0, 9.0, bf16);
        let (shift, shd) = data(&mut rng, frames * cols as usize, -1.0, 1.0, bf16);
        let (scale, scd) = data(&mut rng, frames * cols as usize, -0.5, 0.5, bf16);
        // In place for bf16 (the kernel allows y == x), out of place for f32.
        let mut y = if bf16 {
            Output::with(&xd)
        } else {
            Output::new(x.len(), bf16)
        };
        let p = LayerNormModParams {
            x: if bf16 { y.ptr() } else { xd.ptr() },
            shift: shd.ptr(),
            scale: scd.ptr(),
            y: y.ptr(),
            rows,
            cols,
            rows_per_frame: rpf,
            eps: 1e-6,
        };
        run(p, bf16);
        let r = if bf16 { r16 } else { ident };
        let c = cols as usize;
        let mut want = vec![0f64; x.len()];
        for i in 0..rows as usize {
            let (mean, rstd) = mean_rstd(&x[i * c..][..c], 1e-6);
            let f = i / rpf as usize;
            for j in 0..c {
                let n = r((x[i * c + j] as f64 - mean) * rstd);
                let s1 = r(1.0 + scale[f * c + j] as f64);
                want[i * c + j] = r(n * s1) + shift[f * c + j] as f64;
            }
        }
        // bf16: a 1-ulp flip of the rounded product can meet cancellation with the shift.
        check(
            &format!("layer_norm_modulate {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (3e-5, 3e-5),
            2f64.powi(-7),
        );
    }
}

#[test]
pub(super) fn rms_norm_in_place() {
    let mut rng = Rng::new("rms_norm_in_place");
    let (rows, cols) = (3u32, 129u32);
    let x = rng.vec((rows * cols) as usize, -2.0, 2.0);
    let mut buf = Guarded::with(&x);
    let ptr = buf.ptr();
    let p = RmsNormParams {
        x: ptr,
        w: 0,
        y: ptr,
        rows,
        cols,
        eps: 1e-5,
    };
    launch(rms_norm_f32, p.dims(), p).unwrap();
    let want: Vec<f64> = x
        .chunks(cols as usize)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            row.iter().map(move |&v| v as f64 / (ms + 1e-5).sqrt())
        })
        .collect();
    assert_close("rms_norm in place", buf.out(), &want, 1e-5, 1e-5);
}
