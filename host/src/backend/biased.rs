//! Attention with an additive bias and no scaling, on the host: the umT5 encoder's
//! self-attention (`softmax(q·kᵀ + bias)·v`, the bias holding the relative position bias and
//! `finfo.min` on masked keys). [`super::Backend::attention_biased`] defaults to this through
//! download and upload, so every backend has it; a backend may override it with a kernel.

use half::bf16;
use rayon::prelude::*;

fn round(x: f32, bf: bool) -> f32 {
    if bf {
        bf16::from_f32(x).to_f32()
    } else {
        x
    }
}

/// For each head `h`: `softmax(q_h·k_hᵀ + bias[h])·v_h`. `q` is `[n, heads·d]`, `k`/`v` are
/// `[lk, heads·d]`, `bias` is `[heads, n, lk]`; the result is `[n, heads·d]`. With `bf16`
/// the values are rounded where the official bf16 run rounds: the logits, the biased
/// logits, the probabilities (softmax itself in f32) and the output.
#[allow(clippy::too_many_arguments)]
pub fn attention_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    n: usize,
    lk: usize,
    heads: usize,
    d: usize,
    bf: bool,
) -> Vec<f32> {
    let w = heads * d;
    assert_eq!(q.len(), n * w, "q shape");
    assert_eq!(k.len(), lk * w, "k shape");
    assert_eq!(v.len(), lk * w, "v shape");
    assert_eq!(bias.len(), heads * n * lk, "bias shape");
    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut s = vec![0f32; n * lk];
            let mut out = vec![0f32; n * d];
            if n == 0 || lk == 0 {
                return out;
            }
            // SAFETY: q rows i·w + h·d + c (c < d), k rows j·w + h·d + c and s (n × lk,
            // row stride lk) are all inside their slices by the shape asserts above.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    d,
                    lk,
                    1.0,
                    q[h * d..].as_ptr(),
                    w as isize,
                    1,
                    k[h * d..].as_ptr(),
                    1,
                    w as isize,
                    0.0,
                    s.as_mut_ptr(),
                    lk as isize,
                    1,
                );
            }
            let b = &bias[h * n * lk..(h + 1) * n * lk];
            for (row, brow) in s.chunks_mut(lk).zip(b.chunks(lk)) {
                let mut mx = f32::NEG_INFINITY;
                for (x, &bb) in row.iter_mut().zip(brow) {
                    *x = round(round(*x, bf) + bb, bf);
                    mx = mx.max(*x);
                }
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x = round(*x * inv, bf);
                }
            }
            // SAFETY: s is n × lk, v rows j·w + h·d + c, out n × d: in bounds as above.
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    lk,
                    d,
                    1.0,
                    s.as_ptr(),
                    lk as isize,
                    1,
                    v[h * d..].as_ptr(),
                    w as isize,
                    1,
                    0.0,
                    out.as_mut_ptr(),
                    d as isize,
                    1,
                );
            }
            out
        })
        .collect();
    let mut out = vec![0f32; n * w];
    for (h, o) in per_head.iter().enumerate() {
        for i in 0..n {
            for c in 0..d {
                out[i * w + h * d + c] = round(o[i * d + c], bf);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn biased_attention_matches_naive_f64() {
        let (n, lk, heads, d) = (5, 7, 3, 4);
        let (q, k, v) = (rand(n * heads * d, 1), rand(lk * heads * d, 2), rand(lk * heads * d, 3));
        let mut bias: Vec<f32> = rand(heads * n * lk, 4).iter().map(|x| x * 3.0).collect();
        // Key 6 masked for every query, as the encoder masks padding.
        for h in 0..heads {
            for i in 0..n {
                bias[(h * n + i) * lk + 6] = f32::MIN;
            }
        }
        let out = attention_host(&q, &k, &v, &bias, n, lk, heads, d, false);
        let w = heads * d;
        let mut worst = 0f64;
        for h in 0..heads {
            for i in 0..n {
                let logits: Vec<f64> = (0..lk)
                    .map(|j| {
                        if j == 6 {
                            return f64::NEG_INFINITY;
                        }
                        let dot: f64 = (0..d).map(|c| q[i * w + h * d + c] as f64 * k[j * w + h * d + c] as f64).sum();
                        dot + bias[(h * n + i) * lk + j] as f64
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let want: f64 = (0..lk).map(|j| e[j] / z * v[j * w + h * d + c] as f64).sum();
                    let got = out[i * w + h * d + c] as f64;
                    assert!(got.is_finite(), "head {h} row {i} col {c}: {got}");
                    worst = worst.max((got - want).abs());
                }
            }
        }
        assert!(worst < 1e-6, "max abs error {worst}");
    }
}
