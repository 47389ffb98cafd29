//! The real kernels, run in the SIMT simulator against plain-Rust CPU references (f64) on fresh
//! random inputs, with poisoned outputs and guard regions, at odd sizes.

mod common;
use common::*;

use dfrt_kernels::elementwise::*;
use dfrt_kernels::norm::*;
use dfrt_kernels::rope::*;
use dfrt_kernels::{sim, Entry, Launch};

#[test]
fn rms_norm_matches_reference() {
    let mut rng = Rng::new("rms_norm");
    for &(rows, cols, with_w) in &[(5u32, 333u32, true), (3, 37, false), (2, 1030, true)] {
        let x = rng.vec((rows * cols) as usize, -3.0, 3.0);
        let w = rng.vec(cols as usize, 0.5, 1.5);
        let mut y = Guarded::poisoned(x.len());
        let p = RmsNormParams {
            x: x.as_ptr() as u64,
            w: if with_w { w.as_ptr() as u64 } else { 0 },
            y: y.ptr(),
            rows,
            cols,
            eps: 1e-6,
        };
        // SAFETY: buffers sized for the params.
        unsafe { sim::run(p) }.unwrap();
        let mut want = vec![0f64; x.len()];
        for r in 0..rows as usize {
            let row = &x[r * cols as usize..][..cols as usize];
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for c in 0..cols as usize {
                let wc = if with_w { w[c] as f64 } else { 1.0 };
                want[r * cols as usize + c] = row[c] as f64 * inv * wc;
            }
        }
        assert_close(
            &format!("rms_norm {rows}x{cols}"),
            y.out(),
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn rms_norm_in_place() {
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

#[test]
fn layer_norm_modulate_matches_reference() {
    let mut rng = Rng::new("layer_norm_modulate");
    let (rows, cols, rpf) = (9u32, 333u32, 4u32);
    let frames = rows.div_ceil(rpf) as usize;
    // An offset mean makes a one-pass variance visibly wrong.
    let x = rng.vec((rows * cols) as usize, 5.0, 9.0);
    let shift = rng.vec(frames * cols as usize, -1.0, 1.0);
    let scale = rng.vec(frames * cols as usize, -0.5, 0.5);
    let mut y = Guarded::poisoned(x.len());
    let p = LayerNormModParams {
        x: x.as_ptr() as u64,
        shift: shift.as_ptr() as u64,
        scale: scale.as_ptr() as u64,
        y: y.ptr(),
        rows,
        cols,
        rows_per_frame: rpf,
        eps: 1e-6,
    };
    launch(layer_norm_modulate_f32, p.dims(), p).unwrap();
    let c = cols as usize;
    let mut want = vec![0f64; x.len()];
    for r in 0..rows as usize {
        let row: Vec<f64> = x[r * c..][..c].iter().map(|&v| v as f64).collect();
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let f = r / rpf as usize;
        for j in 0..c {
            let n = (row[j] - mean) / (var + 1e-6).sqrt();
            want[r * c + j] = n * (1.0 + scale[f * c + j] as f64) + shift[f * c + j] as f64;
        }
    }
    assert_close("layer_norm_modulate", y.out(), &want, 2e-5, 2e-5);
}

fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

#[test]
fn gelu_tanh_matches_reference() {
    let mut rng = Rng::new("gelu_tanh");
    let mut x = rng.vec(1001, -6.0, 6.0);
    x.extend([0.0, -0.0, 20.0, -20.0, 1e-3, -1e-3, 90.0, -90.0]);
    let mut y = Guarded::poisoned(x.len());
    let p = GeluParams {
        x: x.as_ptr() as u64,
        y: y.ptr(),
        n: x.len() as u32,
    };
    launch(gelu_tanh_f32, p.dims(), p).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| gelu_ref(v as f64)).collect();
    assert_close("gelu_tanh", y.out(), &want, 1e-6, 1e-5);
}

#[test]
fn gated_residual_matches_reference() {
    let mut rng = Rng::new("gated_residual");
    let (rows, cols, rpf) = (11u32, 37u32, 3u32);
    let frames = rows.div_ceil(rpf) as usize;
    let x = rng.vec((rows * cols) as usize, -2.0, 2.0);
    let y = rng.vec(x.len(), -2.0, 2.0);
    let gate = rng.vec(frames * cols as usize, -1.0, 1.0);
    let mut xb = Guarded::with(&x);
    let p = GatedResidualParams {
        x: xb.ptr(),
        y: y.as_ptr() as u64,
        gate: gate.as_ptr() as u64,
        out: xb.ptr(),
        rows,
        cols,
        rows_per_frame: rpf,
    };
    launch(gated_residual_f32, p.dims(), p).unwrap();
    let c = cols as usize;
    let want: Vec<f64> = (0..x.len())
        .map(|i| x[i] as f64 + y[i] as f64 * gate[(i / c / rpf as usize) * c + i % c] as f64)
        .collect();
    assert_close("gated_residual", xb.out(), &want, 1e-6, 1e-6);
}

#[test]
fn rope_split_matches_wan() {
    // Wan: rope_params dims d - 4(d//6), 2(d//6), 2(d//6), in pairs.
    for d in [12u32, 14, 20, 64, 128] {
        let s = rope_split(d);
        assert_eq!(s, [(d - 4 * (d / 6)) / 2, d / 6, d / 6], "head_dim {d}");
        assert_eq!(s.iter().sum::<u32>(), d / 2);
    }
    assert_eq!(rope_split(128), [22, 21, 21]);
}

/// Reference: straight from the official definition, in f64.
fn rope_ref(x: &[f32], f: u32, h: u32, w: u32, heads: u32, d: u32, start: u32) -> Vec<f64> {
    let c = (d / 2) as usize;
    let parts = [c - 2 * (c / 3), c / 3, c / 3];
    let mut out = vec![0f64; x.len()];
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                let t = ((fi * h + hi) * w + wi) as usize;
                for head in 0..heads as usize {
                    for j in 0..c {
                        let (part, jj) = if j < parts[0] {
                            (0, j)
                        } else if j < parts[0] + parts[1] {
                            (1, j - parts[0])
                        } else {
                            (2, j - parts[0] - parts[1])
                        };
                        let pos = [(start + fi) as f64, hi as f64, wi as f64][part];
                        let dim_part = 2 * parts[part];
                        let angle = pos / 10000f64.powf((2 * jj) as f64 / dim_part as f64);
                        let i = (t * heads as usize + head) * d as usize + 2 * j;
                        let (a, b) = (x[i] as f64, x[i + 1] as f64);
                        out[i] = a * angle.cos() - b * angle.sin();
                        out[i + 1] = a * angle.sin() + b * angle.cos();
                    }
                }
            }
        }
    }
    out
}

#[test]
fn rope3d_matches_reference() {
    let mut rng = Rng::new("rope3d");
    for &(f, h, w, heads, d, start) in &[
        (2u32, 3u32, 5u32, 3u32, 20u32, 4u32),
        (3, 2, 3, 2, 14, 0),
        (1, 4, 4, 1, 128, 17),
    ] {
        let rows = 24;
        let table = rope_table(d, rows);
        let x = rng.vec((f * h * w * heads * d) as usize, -2.0, 2.0);
        let mut y = Guarded::poisoned(x.len());
        let p = RopeParams {
            x: x.as_ptr() as u64,
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
        launch(rope3d_f32, p.dims(), p).unwrap();
        let want = rope_ref(&x, f, h, w, heads, d, start);
        assert_close(
            &format!("rope3d f{f} h{h} w{w} d{d} start{start}"),
            y.out(),
            &want,
            2e-6,
            2e-6,
        );
    }
}

#[test]
fn rope3d_in_place_and_check() {
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
        &rope_ref(&x, f, h, w, heads, d, start),
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

#[test]
fn params_name_their_kernels() {
    assert_eq!(RmsNormParams::NAME, "rms_norm_f32");
    assert_eq!(RopeParams::NAME, "rope3d_f32");
    assert_eq!(GatedResidualParams::SIM.name, "gated_residual_f32");
    for n in [
        LayerNormModParams::NAME,
        GeluParams::NAME,
        GatedResidualParams::NAME,
    ] {
        assert!(dfrt_kernels::KERNELS.contains(&n), "{n}");
    }
}
