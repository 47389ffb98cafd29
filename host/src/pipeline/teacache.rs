//! TeaCache as Dummy Forcing's `CausalWanModel._forward_inference` implements it: some
//! denoising forwards skip the transformer blocks and add the residual of the last computed
//! forward to the patch embedding instead. The head always runs.
//!
//! The rule, per forward (denoising, clean and recache passes alike):
//! - the measured tensor is `e0`, the per-frame modulation `time_projection(time_embedding(t))`
//!   (not `e`, which TeaCache's coefficients were fitted for: an official quirk kept here);
//! - a pass at t = 1000 or t = 0 is always computed and resets the accumulator;
//! - otherwise `acc += poly(rel)`, with `rel = mean|e0 − e0_prev| / mean|e0_prev|` (f32 means,
//!   the ratio in f32) and `poly` the official polynomial (f64); `acc < threshold` skips,
//!   anything else computes and resets `acc`;
//! - `e0_prev = e0` after every pass, skipped or not.
//!
//! `e0` depends only on t and the weights, so the decisions of a whole video are known before
//! the first chunk: [`TeaState::decide`] runs once per distinct pass up front (the official code
//! calls `.item()` on every forward; nothing here synchronises per forward).
//!
//! ```
//! use dfrt::pipeline::teacache::{rescale, TeaState};
//!
//! // The polynomial is negative between its real roots 0.1849 and 0.3105.
//! assert!(rescale(0.25) < 0.0 && rescale(0.0769) > 0.0);
//! let e0 = |t: f32| vec![1.0 + t / 1000.0, 2.0 - t / 2000.0];
//! let mut s = TeaState::default();
//! let d: Vec<_> = [1000.0, 990.0, 980.0, 970.0, 0.0].iter().map(|&t| s.decide(t, &e0(t), 0.3)).collect();
//! // t = 1000 and t = 0 are always computed; in between each small change adds about 0.106
//! // to the accumulator: two skips, then a computed pass that resets it.
//! assert_eq!(d.iter().map(|d| d.skip).collect::<Vec<_>>(), vec![false, true, true, false, false]);
//! assert!((d[1].rescaled - 0.106).abs() < 1e-3 && d[3].accumulated > 0.3);
//! ```

/// The official `CausalWanModel.coefficients` (TeaCache4Wan2.1 T2V-1.3B, `use_ret_steps=False`),
/// highest degree first as `np.poly1d` takes them.
pub const COEFFICIENTS: [f64; 5] = [2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774];

/// The official polynomial at `x` (Horner's rule in f64, as `np.poly1d` evaluates it).
pub fn rescale(x: f64) -> f64 {
    COEFFICIENTS.iter().fold(0.0, |acc, &c| acc * x + c)
}

/// `mean|a − b| / mean|b|` with both means in f32, then the f32 ratio as f64 (the official
/// `((e0 − prev).abs().mean() / prev.abs().mean()).item()`).
pub fn rel_l1(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().max(1) as f64;
    let num = (a.iter().zip(b).map(|(&x, &y)| (x - y).abs() as f64).sum::<f64>() / n) as f32;
    let den = (b.iter().map(|&y| y.abs() as f64).sum::<f64>() / n) as f32;
    (num / den) as f64
}

/// One pass's decision and the values behind it (all 0 for a forced pass).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub t: f32,
    pub skip: bool,
    pub rel_l1: f64,
    pub rescaled: f64,
    /// The accumulator compared with the threshold (after adding `rescaled`).
    pub accumulated: f64,
}

/// The accumulator and the previous pass's `e0`.
#[derive(Clone, Debug, Default)]
pub struct TeaState {
    acc: f64,
    prev: Option<Vec<f32>>,
}

impl TeaState {
    /// Decides one pass at timestep `t` with measured tensor `e0`, and moves the state on.
    pub fn decide(&mut self, t: f32, e0: &[f32], threshold: f64) -> Decision {
        let prev = self.prev.replace(e0.to_vec());
        let forced = t == 1000.0 || t == 0.0;
        let Some(prev) = prev.filter(|p| !forced && p.len() == e0.len()) else {
            self.acc = 0.0;
            return Decision { t, skip: false, rel_l1: 0.0, rescaled: 0.0, accumulated: 0.0 };
        };
        let rel = rel_l1(e0, &prev);
        let r = rescale(rel);
        self.acc += r;
        let accumulated = self.acc;
        let skip = accumulated < threshold;
        if !skip {
            self.acc = 0.0;
        }
        Decision { t, skip, rel_l1: rel, rescaled: r, accumulated }
    }
}

/// The decisions of a video whose chunks all run the same passes (the denoising steps, then
/// the t = 0 clean pass): the first chunk's, and every later chunk's (the state after a clean
/// pass is always the same, since t = 0 resets it).
#[derive(Clone, Debug, PartialEq)]
pub struct TeaPlan {
    pub threshold: f64,
    /// Chunk 0's passes: steps…, clean.
    pub first: Vec<Decision>,
    /// Every later chunk's passes.
    pub steady: Vec<Decision>,
}

impl TeaPlan {
    /// Plans from each pass's timestep and `e0` (in pass order: steps, then the clean pass).
    pub fn new(threshold: f64, passes: &[(f32, Vec<f32>)]) -> Self {
        let mut s = TeaState::default();
        let run = |s: &mut TeaState| passes.iter().map(|(t, e0)| s.decide(*t, e0, threshold)).collect::<Vec<_>>();
        let first = run(&mut s);
        let steady = run(&mut s);
        TeaPlan { threshold, first, steady }
    }

    /// The decision of chunk `chunk`'s pass `pass` (step index; the clean pass is the last).
    pub fn get(&self, chunk: usize, pass: usize) -> Decision {
        if chunk == 0 {
            self.first[pass]
        } else {
            self.steady[pass]
        }
    }

    /// Skipped (chunk, step) pairs of a video of `chunks` chunks.
    pub fn skipped(&self, chunks: usize) -> Vec<[usize; 2]> {
        (0..chunks)
            .flat_map(|c| (0..self.first.len()).filter(move |&p| self.get(c, p).skip).map(move |p| [c, p]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_decisions_of_the_df_teacache_case() {
        // The golden manifest's values: rel_l1 0.076942071 → rescaled 0.178068714, etc.
        for (rel, want) in [(0.0769420713186264, 0.1780687138170961), (0.07505879551172256, 0.17092539140019947)] {
            assert!((rescale(rel) - want).abs() < 1e-12, "{rel}: {} vs {want}", rescale(rel));
        }
        assert!(rescale(0.1849052).abs() < 1e-3 && rescale(0.31045878).abs() < 1e-3);
    }

    #[test]
    fn skipped_passes_keep_accumulating_until_the_threshold() {
        // A constant change accumulates: skip, skip, then compute and reset.
        let r = rescale(0.05);
        assert!(r > 0.0);
        let mut s = TeaState::default();
        let mut e = vec![1.0f32; 8];
        let mut out = vec![s.decide(1000.0, &e, 2.5 * r).skip];
        for t in [900.0, 800.0, 700.0, 600.0] {
            e = e.iter().map(|x| x * 1.05).collect();
            out.push(s.decide(t, &e, 2.5 * r).skip);
        }
        assert_eq!(out, vec![false, true, true, false, true]);
    }
}
