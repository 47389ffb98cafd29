//! The umT5 encoder's biased attention (`attn_bias_*`) against an f64 reference with the CPU
//! backend's bf16 rounding points (`host/src/backend/biased.rs`): the logits, the biased
//! logits, the probabilities and the output.

use super::*;
use dfrt_kernels::attn_bias::AttnBiasParams;

/// `o_h = softmax(q_h·k_hᵀ + bias[h])·v_h`, rounded by `r` where the reference rounds.
#[allow(clippy::too_many_arguments)]
fn biased_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: &[f32],
    (n, lk, heads, d): (usize, usize, usize, usize),
    r: fn(f64) -> f64,
) -> Vec<f64> {
    let w = heads * d;
    let mut out = vec![0f64; n * w];
    for h in 0..heads {
        for i in 0..n {
            let l: Vec<f64> = (0..lk)
                .map(|j| {
                    let dot: f64 = (0..d)
                        .map(|c| q[i * w + h * d + c] as f64 * k[j * w + h * d + c] as f64)
                        .sum();
                    r(r(dot) + bias[(h * n + i) * lk + j] as f64)
                })
                .collect();
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let e: Vec<f64> = l.iter().map(|&x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..d {
                let acc: f64 = (0..lk)
                    .map(|j| r(e[j] / s) * v[j * w + h * d + c] as f64)
                    .sum();
                out[i * w + h * d + c] = acc;
            }
        }
    }
    out
}

#[test]
pub(super) fn attn_bias_matches_the_reference_with_masks_and_odd_shapes() {
    let mut rng = Rng::new("attn_bias");
    // (query rows, keys, heads, head dim, masked tail keys): odd head dims, one key, no keys,
    // a row block with a tail (n not a multiple of 4), head dim 128 (4 elements per lane).
    let cases = [
        (5, 7, 2, 64, 2),
        (6, 33, 3, 40, 5),
        (9, 1, 1, 128, 0),
        (3, 0, 2, 16, 0),
        (4, 20, 1, 1, 19),
    ];
    for bf16 in DTYPES {
        for &(n, lk, heads, d, masked) in &cases {
            let w = heads * d;
            let (q, qd) = data(&mut rng, n * w, -1.0, 1.0, bf16);
            let (k, kd) = data(&mut rng, lk * w, -1.0, 1.0, bf16);
            let (v, vd) = data(&mut rng, lk * w, -2.0, 2.0, bf16);
            // A relative-bias-like table, and f32::MIN (bf16: −∞) on the last `masked` keys.
            let mut b = rng.vec(heads * n * lk, -3.0, 3.0);
            for (idx, x) in b.iter_mut().enumerate() {
                if idx % lk.max(1) >= lk - masked {
                    *x = f32::MIN;
                }
            }
            let (b, bd) = stored(&b, bf16);
            let mut o = Output::new(n * w, bf16);
            let p = AttnBiasParams {
                q: qd.ptr(),
                k: kd.ptr(),
                v: vd.ptr(),
                bias: bd.ptr(),
                o: o.ptr(),
                n: n as u32,
                lk: lk as u32,
                heads: heads as u32,
                head_dim: d as u32,
            };
            p.check().unwrap();
            run(p, bf16);
            let got = o.values();
            let want = biased_ref(
                &q,
                &k,
                &v,
                &b,
                (n, lk, heads, d),
                if bf16 { r16 } else { ident },
            );
            if lk == 0 {
                assert!(got.iter().all(|&x| x == 0.0), "no keys: zeros, got {got:?}");
                continue;
            }
            check(
                &format!(
                    "attn_bias {} n{n} lk{lk} h{heads} d{d} masked{masked}",
                    name(bf16)
                ),
                bf16,
                &got,
                &want,
                (2e-5, 2e-5),
                2e-2,
            );
        }
    }
}

#[test]
pub(super) fn attn_bias_checks_its_params() {
    let p = AttnBiasParams {
        q: 64,
        k: 64,
        v: 64,
        bias: 64,
        o: 128,
        n: 1,
        lk: 1,
        heads: 1,
        head_dim: 129,
    };
    assert!(p.check().unwrap_err().contains("head_dim"));
    let p = AttnBiasParams {
        head_dim: 64,
        heads: 70_000,
        ..p
    };
    assert!(p.check().unwrap_err().contains("65535"));
    let p = AttnBiasParams {
        heads: 1,
        k: 0,
        ..p
    };
    assert!(p.check().unwrap_err().contains("k is null"));
    let p = AttnBiasParams { lk: 0, ..p };
    assert!(p.check().is_ok(), "no keys: k, v and bias are not read");
}
