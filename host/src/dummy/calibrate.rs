//! Calibration statistic (official `online_head_classification`) and its query-row sampler.
//!
//! For one layer, in the t = 0 pass of AR step `ar_start`, with `L` = tokens of the current
//! chunk and the FULL key set `K_all = [sink | cached local | current chunk]` (the keys
//! before that pass truncates the cache), every head gets three attention masses:
//!
//! ```text
//! HWr   = L/3 if ar_start == 1 else L         (integer division, as the official code)
//! P     = softmax_over_all_keys(q[row] · kᵀ / √d)   for each sampled row
//! first = mean_rows Σ P[0 .. HWr]              keys[:HWr]
//! mid   = mean_rows Σ P[HWr .. n−L]            keys[HWr:-L]   (may be empty)
//! last  = mean_rows Σ P[n−L .. n]              keys[-L:]      (the current chunk)
//! ```
//!
//! `n` is the total key count. Indices run over the concatenation of the key segments in the
//! order given, so the regions do not have to line up with segment (frame-slot) boundaries.
//! With `ar_start == 1` the first region is exactly frame 0; with `ar_start ≥ 2` it is three
//! frames long (frame 0 and the first two cached local frames), a quirk of the official code
//! that we keep.

use rayon::prelude::*;

use crate::{Error, Result};

/// Masses of one layer: `[first, mid, last]`, each with one value per head. This is the
/// layout of the golden `scores.{layer}` tensor (`[3, heads]`, row-major).
pub type LayerScores = [Vec<f32>; 3];

/// Splits a row-major `[3, heads]` buffer into [`LayerScores`].
pub fn layer_scores_from_rows(v: &[f32], heads: usize) -> Result<LayerScores> {
    if heads == 0 || v.len() != 3 * heads {
        return Err(Error::Input(format!("layer scores have {} values, expected 3 × {heads}", v.len())));
    }
    Ok([v[..heads].to_vec(), v[heads..2 * heads].to_vec(), v[2 * heads..].to_vec()])
}

/// Length of the first ("sink") region in keys: `L/3` when `ar_start == 1`, else `L`.
pub fn first_region_len(chunk_tokens: usize, ar_start: usize) -> usize {
    if ar_start == 1 {
        chunk_tokens / 3
    } else {
        chunk_tokens
    }
}

/// Number of sampled query rows: `first_region_len / 3` (520 at 480p with ar_start 1).
pub fn num_sampled_rows(chunk_tokens: usize, ar_start: usize) -> usize {
    first_region_len(chunk_tokens, ar_start) / 3
}

/// A run of keys, shared by all heads of the layer, addressed with strides:
/// the key of head `h` at token `t` is `data[h·head_stride + t·token_stride ..][..head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KeySegment<'a> {
    /// The keys (host f32).
    pub data: &'a [f32],
    /// Tokens in the segment.
    pub tokens: usize,
    /// Elements from one token to the next.
    pub token_stride: usize,
    /// Elements from one head to the next.
    pub head_stride: usize,
}

impl<'a> KeySegment<'a> {
    /// A contiguous `[tokens, heads, head_dim]` block (the model's K layout, and the layout of
    /// a frame slot holding all heads). `tokens` is taken from the length.
    pub fn thd(data: &'a [f32], heads: usize, head_dim: usize) -> Result<Self> {
        let row = heads * head_dim;
        if row == 0 || !data.len().is_multiple_of(row) {
            return Err(Error::Input(format!(
                "key segment of {} values is not a whole number of [heads {heads} × head_dim {head_dim}] rows",
                data.len()
            )));
        }
        Ok(KeySegment { data, tokens: data.len() / row, token_stride: row, head_stride: head_dim })
    }

    /// A contiguous `[heads, tokens, head_dim]` block.
    pub fn htd(data: &'a [f32], heads: usize, head_dim: usize) -> Result<Self> {
        if heads == 0 || head_dim == 0 || !data.len().is_multiple_of(heads * head_dim) {
            return Err(Error::Input(format!(
                "key segment of {} values is not [heads {heads}, tokens, head_dim {head_dim}]",
                data.len()
            )));
        }
        let tokens = data.len() / (heads * head_dim);
        Ok(KeySegment { data, tokens, token_stride: head_dim, head_stride: tokens * head_dim })
    }

    fn key(&self, h: usize, t: usize, d: usize) -> &'a [f32] {
        let o = h * self.head_stride + t * self.token_stride;
        &self.data[o..o + d]
    }

    fn check(&self, heads: usize, d: usize, i: usize) -> Result<()> {
        if self.tokens == 0 {
            return Ok(());
        }
        let last = (heads - 1) * self.head_stride + (self.tokens - 1) * self.token_stride + d;
        if last > self.data.len() {
            return Err(Error::Input(format!(
                "key segment {i}: {} tokens × {heads} heads with strides (token {}, head {}) need {last} values, it has {}",
                self.tokens,
                self.token_stride,
                self.head_stride,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Calibration masses of one layer (see the module doc for the exact regions).
///
/// - `q`: the RoPE'd queries of the current chunk, `[chunk_tokens, heads, head_dim]`.
/// - `rows`: sampled query rows (with repeats), each `< chunk_tokens`.
/// - `keys`: the full key set in order; the last `chunk_tokens` keys must be the current chunk.
///
/// Logits are `(q·k) / √d` in f32, as the official statistic divides by `sqrt(head_dim)`
/// (the attention itself multiplies by `1/√d`; for d = 128 the two differ in the last bit).
/// The softmax normaliser and the region sums are accumulated in f64.
pub fn layer_masses(
    q: &[f32],
    chunk_tokens: usize,
    heads: usize,
    head_dim: usize,
    rows: &[usize],
    keys: &[KeySegment],
    ar_start: usize,
) -> Result<LayerScores> {
    let bad = |m: String| Err(Error::Input(format!("calibration: {m}")));
    if heads == 0 || head_dim == 0 || chunk_tokens == 0 {
        return bad(format!("empty shape (chunk_tokens {chunk_tokens}, heads {heads}, head_dim {head_dim})"));
    }
    if ar_start == 0 {
        return bad("ar_start must be at least 1".into());
    }
    if q.len() != chunk_tokens * heads * head_dim {
        return bad(format!("q has {} values, expected [{chunk_tokens}, {heads}, {head_dim}]", q.len()));
    }
    if rows.is_empty() {
        return bad("no sampled query rows".into());
    }
    if let Some(&r) = rows.iter().find(|&&r| r >= chunk_tokens) {
        return bad(format!("sampled row {r} is outside the chunk's {chunk_tokens} rows"));
    }
    for (i, s) in keys.iter().enumerate() {
        s.check(heads, head_dim, i)?;
    }
    let n: usize = keys.iter().map(|s| s.tokens).sum();
    let hwr = first_region_len(chunk_tokens, ar_start);
    if n < hwr + chunk_tokens {
        return bad(format!("{n} keys is fewer than the first region ({hwr}) plus the current chunk ({chunk_tokens})"));
    }
    let mid_end = n - chunk_tokens;
    let scale = (head_dim as f32).sqrt();

    // One task per (head, sampled row); each returns its three region masses.
    let per: Vec<[f64; 3]> = (0..heads * rows.len())
        .into_par_iter()
        .map_init(
            || Vec::with_capacity(n),
            |logits, job| {
                let (h, r) = (job / rows.len(), rows[job % rows.len()]);
                let qo = (r * heads + h) * head_dim;
                let qv = &q[qo..qo + head_dim];
                logits.clear();
                for s in keys {
                    for t in 0..s.tokens {
                        logits.push(dot(qv, s.key(h, t, head_dim)) / scale);
                    }
                }
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut acc = [0f64; 3];
                for (i, &x) in logits.iter().enumerate() {
                    let e = ((x - max) as f64).exp();
                    acc[if i < hwr {
                        0
                    } else if i < mid_end {
                        1
                    } else {
                        2
                    }] += e;
                }
                let z = acc[0] + acc[1] + acc[2];
                [acc[0] / z, acc[1] / z, acc[2] / z]
            },
        )
        .collect();

    let mut out: LayerScores = [vec![0.0; heads], vec![0.0; heads], vec![0.0; heads]];
    for h in 0..heads {
        for (k, o) in out.iter_mut().enumerate() {
            let s: f64 = per[h * rows.len()..(h + 1) * rows.len()].iter().map(|m| m[k]).sum();
            o[h] = (s / rows.len() as f64) as f32;
        }
    }
    if out.iter().flatten().any(|x| !x.is_finite()) {
        return bad("non-finite attention mass (NaN or infinite queries/keys)".into());
    }
    Ok(out)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// SplitMix64: a small, well-mixed seeded generator for the row sampler (the official code
/// uses torch's global CPU RNG; golden runs pass the drawn rows instead).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Draws `num_sampled_rows(chunk_tokens, ar_start)` query rows uniformly from
/// `0..chunk_tokens`, with replacement, in draw order. Use one generator per video, called
/// for layers 0, 1, … in order, to mirror the official per-layer draws.
pub fn sample_rows(chunk_tokens: usize, ar_start: usize, rng: &mut SplitMix64) -> Result<Vec<usize>> {
    let k = num_sampled_rows(chunk_tokens, ar_start);
    if k == 0 {
        return Err(Error::Input(format!(
            "a chunk of {chunk_tokens} tokens gives no sampled rows (need at least 9 tokens)"
        )));
    }
    Ok((0..k).map(|_| rng.below(chunk_tokens as u64) as usize).collect())
}

/// Converts stored rows (`sampled_rows.{layer}`, int64) and checks they lie in the chunk.
pub fn rows_from_i64(v: &[i64], chunk_tokens: usize) -> Result<Vec<usize>> {
    v.iter()
        .map(|&r| {
            usize::try_from(r)
                .ok()
                .filter(|&r| r < chunk_tokens)
                .ok_or_else(|| Error::Input(format!("sampled row {r} is outside the chunk's {chunk_tokens} rows")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(rng: &mut SplitMix64, n: usize, s: f32) -> Vec<f32> {
        // Irwin–Hall approximation of a normal: plenty for test data.
        (0..n)
            .map(|_| {
                let u: f64 = (0..4).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64).sum();
                ((u - 2.0) * 1.732) as f32 * s
            })
            .collect()
    }

    /// Plain f64 reference over one concatenated `[n, heads, d]` key array.
    fn reference(q: &[f32], k: &[f32], l: usize, heads: usize, d: usize, rows: &[usize], ar: usize) -> [Vec<f64>; 3] {
        let n = k.len() / (heads * d);
        let hwr = first_region_len(l, ar);
        let mut out = [vec![0.0; heads], vec![0.0; heads], vec![0.0; heads]];
        for h in 0..heads {
            for &r in rows {
                let lg: Vec<f64> = (0..n)
                    .map(|t| {
                        (0..d)
                            .map(|i| q[(r * heads + h) * d + i] as f64 * k[(t * heads + h) * d + i] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = lg.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = lg.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                out[0][h] += e[..hwr].iter().sum::<f64>() / z / rows.len() as f64;
                out[1][h] += e[hwr..n - l].iter().sum::<f64>() / z / rows.len() as f64;
                out[2][h] += e[n - l..].iter().sum::<f64>() / z / rows.len() as f64;
            }
        }
        out
    }

    fn check_close(got: &LayerScores, want: &[Vec<f64>; 3], tol: f64) {
        let mut worst = (0.0f64, 0, 0);
        for k in 0..3 {
            for h in 0..want[k].len() {
                let g = got[k][h] as f64;
                assert!(g.is_finite(), "NaN at region {k} head {h}");
                let e = (g - want[k][h]).abs();
                if e > worst.0 {
                    worst = (e, k, h);
                }
            }
        }
        let (e, k, h) = worst;
        assert!(e <= tol, "region {k} head {h}: got {} want {} (max abs err {e:e})", got[k][h], want[k][h]);
    }

    #[test]
    fn masses_match_f64_reference_for_frame_segments() {
        // tokens/frame 12, chunk 36 tokens, 3 heads, d 128; cache = frame 0 + 2 local frames.
        let (hw, heads, d) = (12, 3, 128);
        let l = 3 * hw;
        for (seed, ar, cached_frames) in [(1u64, 1, 3), (2, 2, 6), (3, 1, 4)] {
            let mut rng = SplitMix64::new(seed);
            let q = randn(&mut rng, l * heads * d, 0.25);
            let n = (cached_frames + 3) * hw;
            let k = randn(&mut rng, n * heads * d, 0.25);
            let rows = sample_rows(l, ar, &mut rng).unwrap();
            assert_eq!(rows.len(), first_region_len(l, ar) / 3);
            // One segment per frame slot, as a frame-slot cache would pass them.
            let segs: Vec<KeySegment> =
                k.chunks(hw * heads * d).map(|c| KeySegment::thd(c, heads, d).unwrap()).collect();
            let got = layer_masses(&q, l, heads, d, &rows, &segs, ar).unwrap();
            let want = reference(&q, &k, l, heads, d, &rows, ar);
            check_close(&got, &want, 2e-6);
            for h in 0..heads {
                let s: f32 = (0..3).map(|r| got[r][h]).sum();
                assert!((s - 1.0).abs() < 1e-5, "masses of head {h} sum to {s}");
            }
        }
    }

    #[test]
    fn head_major_segments_give_the_same_masses() {
        let (hw, heads, d) = (8, 2, 64);
        let l = 3 * hw;
        let mut rng = SplitMix64::new(9);
        let q = randn(&mut rng, l * heads * d, 0.3);
        let k = randn(&mut rng, 6 * hw * heads * d, 0.3); // [n, heads, d]
        let n = 6 * hw;
        let mut khtd = vec![f32::NAN; k.len()];
        for t in 0..n {
            for h in 0..heads {
                for i in 0..d {
                    khtd[(h * n + t) * d + i] = k[(t * heads + h) * d + i];
                }
            }
        }
        let rows = vec![0, 5, 5, 23, 11];
        let a = layer_masses(&q, l, heads, d, &rows, &[KeySegment::thd(&k, heads, d).unwrap()], 1).unwrap();
        let b = layer_masses(&q, l, heads, d, &rows, &[KeySegment::htd(&khtd, heads, d).unwrap()], 1).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn planted_patterns_show_in_the_masses() {
        // Head 0's query matches frame 0, head 1's matches the middle frames, head 2's the chunk.
        let (hw, heads, d) = (4, 3, 16);
        let l = 3 * hw;
        let n = 6 * hw;
        let mut rng = SplitMix64::new(5);
        let mut k = randn(&mut rng, n * heads * d, 0.05);
        let mut q = randn(&mut rng, l * heads * d, 0.05);
        for t in 0..n {
            let region = if t < hw {
                0
            } else if t < n - l {
                1
            } else {
                2
            };
            k[(t * heads + region) * d] += 8.0; // a shared direction for the planted region
        }
        for r in 0..l {
            for h in 0..heads {
                q[(r * heads + h) * d] += 8.0;
            }
        }
        let rows: Vec<usize> = (0..l).collect();
        let s = layer_masses(&q, l, heads, d, &rows, &[KeySegment::thd(&k, heads, d).unwrap()], 1).unwrap();
        for h in 0..heads {
            assert!(s[h][h] > 0.9, "head {h} should put its mass on region {h}: {s:?}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (l, heads, d) = (12, 2, 8);
        let q = vec![0.1; l * heads * d];
        let k = vec![0.2; 24 * heads * d];
        let segs = [KeySegment::thd(&k, heads, d).unwrap()];
        let e = |r: Result<LayerScores>| r.unwrap_err().to_string();
        assert!(e(layer_masses(&q, l, heads, d, &[12], &segs, 1)).contains("outside the chunk"));
        assert!(e(layer_masses(&q, l, heads, d, &[], &segs, 1)).contains("no sampled query rows"));
        assert!(e(layer_masses(&q[1..], l, heads, d, &[0], &segs, 1)).contains("q has"));
        let short = [KeySegment::thd(&k[..14 * heads * d], heads, d).unwrap()];
        assert!(e(layer_masses(&q, l, heads, d, &[0], &short, 2)).contains("fewer than the first region"));
        let strided = [KeySegment { data: &k, tokens: 25, token_stride: heads * d, head_stride: d }];
        assert!(e(layer_masses(&q, l, heads, d, &[0], &strided, 1)).contains("need"));
        let mut qn = q.clone();
        qn[0] = f32::NAN;
        assert!(e(layer_masses(&qn, l, heads, d, &[0], &segs, 1)).contains("non-finite"));
        assert!(KeySegment::thd(&k[1..], heads, d).is_err());
        assert!(rows_from_i64(&[3, -1], 12).is_err());
        assert_eq!(rows_from_i64(&[3, 11], 12).unwrap(), vec![3, 11]);
    }

    #[test]
    fn sampler_is_seeded_uniform_and_in_range() {
        let a = sample_rows(4680, 1, &mut SplitMix64::new(42)).unwrap();
        let b = sample_rows(4680, 1, &mut SplitMix64::new(42)).unwrap();
        let c = sample_rows(4680, 1, &mut SplitMix64::new(43)).unwrap();
        assert_eq!(a.len(), 520);
        assert_eq!(sample_rows(4680, 2, &mut SplitMix64::new(1)).unwrap().len(), 1560);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&r| r < 4680));
        // Uniformity: 60000 draws from 0..6, every bucket within 3% of 10000.
        let mut rng = SplitMix64::new(7);
        let mut hist = [0usize; 6];
        for _ in 0..60000 {
            hist[rng.below(6) as usize] += 1;
        }
        assert!(hist.iter().all(|&c| (9700..=10300).contains(&c)), "{hist:?}");
        assert!(sample_rows(6, 1, &mut rng).is_err());
    }
}
