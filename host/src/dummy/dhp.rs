//! Dynamic head programming (official `dynamic_head_programming`): a global budget of dummy
//! heads over all layers, chosen by opportunity cost.

use super::calibrate::LayerScores;
pub use crate::policy::{Group, GroupCounts};
use crate::{Error, Result};

/// The group of every head, `[layers][heads]`, stored row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Layers.
    pub num_layers: usize,
    /// Heads per layer.
    pub num_heads: usize,
    groups: Vec<Group>,
}

impl Assignment {
    /// Builds from a row-major `[layers × heads]` list.
    pub fn new(num_layers: usize, num_heads: usize, groups: Vec<Group>) -> Result<Self> {
        if groups.len() != num_layers * num_heads {
            return Err(Error::Input(format!(
                "assignment has {} heads, expected {num_layers} layers × {num_heads} heads",
                groups.len()
            )));
        }
        Ok(Assignment { num_layers, num_heads, groups })
    }

    /// Reads the `assignment` tensor layout (`[layers, heads]` int64: 0 sink, 1 neighbor, 2 dummy).
    pub fn from_i64(v: &[i64], num_layers: usize, num_heads: usize) -> Result<Self> {
        let groups = v
            .iter()
            .map(|&x| Group::from_i64(x).ok_or_else(|| Error::Input(format!("assignment value {x} is not 0, 1 or 2"))))
            .collect::<Result<Vec<_>>>()?;
        Self::new(num_layers, num_heads, groups)
    }

    /// The `assignment` output tensor's data, `[layers, heads]` row-major.
    pub fn to_i64(&self) -> Vec<i64> {
        self.groups.iter().map(|&g| g as i64).collect()
    }

    /// The group of `head` in `layer` (panics out of range, like indexing).
    pub fn get(&self, layer: usize, head: usize) -> Group {
        self.groups[layer * self.num_heads + head]
    }

    pub fn layer(&self, layer: usize) -> &[Group] {
        &self.groups[layer * self.num_heads..(layer + 1) * self.num_heads]
    }

    /// All heads, row-major.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Heads of `group` in `layer`, ascending.
    pub fn heads_in(&self, layer: usize, group: Group) -> Vec<usize> {
        (0..self.num_heads).filter(|&h| self.get(layer, h) == group).collect()
    }

    /// Heads per group over all layers.
    pub fn counts(&self) -> GroupCounts {
        let mut c = GroupCounts::default();
        for g in &self.groups {
            match g {
                Group::Sink => c.sink += 1,
                Group::Neighbor => c.neighbor += 1,
                Group::Dummy => c.dummy += 1,
            }
        }
        c
    }
}

/// DHP over all layers.
///
/// With `p0` = first-region mass and `p1` = mid mass of every head (the current-chunk mass is
/// not used):
/// - `p0n = p0 / Σ p0`, `p1n = p1 / Σ p1`, sums over ALL layers × heads (f32 values, sums
///   accumulated in f64 and rounded to f32 before the division, as a torch f32 sum);
/// - `cost = max(p0n, p1n)`, the history mass lost if the head gets no history;
/// - the `num_dummy` heads with the smallest cost become [`Group::Dummy`]. Ties are broken by
///   the flattened index `layer·heads + head` (a stable ascending sort, the order in which
///   torch.argsort sees the `[layer, head]` scores), so the result is deterministic;
/// - every other head is [`Group::Neighbor`] if `p0n < p1n` (strict), else [`Group::Sink`].
///
/// If a sum is zero (no head puts any mass there) the normalised values are taken as 0.
/// Errors: layers with different head counts, non-finite or negative masses, or a budget
/// above the head count.
///
/// ```
/// use dfrt::dummy::{program, Group, LayerScores};
///
/// // 1 layer × 3 heads; per region [first, mid, last] the mass of each head.
/// let scores: Vec<LayerScores> = vec![[vec![0.7, 0.1, 0.2], vec![0.2, 0.8, 0.1], vec![0.1, 0.1, 0.7]]];
/// // p0n = [0.7, 0.1, 0.2], p1n = [0.18, 0.73, 0.09]: head 2 has the lowest cost max(p0n, p1n).
/// let a = program(&scores, 1)?;
/// assert_eq!((a.get(0, 0), a.get(0, 1), a.get(0, 2)), (Group::Sink, Group::Neighbor, Group::Dummy));
/// assert_eq!(a.to_i64(), vec![0, 1, 2]);
/// // No dummies: every head keeps the history it attends most.
/// assert_eq!(program(&scores, 0)?.counts().dummy, 0);
/// assert!(program(&scores, 4).is_err()); // only 3 heads
/// let mut bad = scores.clone();
/// bad[0][1][2] = f32::NAN;
/// assert!(program(&bad, 1).is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
pub fn program(scores: &[LayerScores], num_dummy: usize) -> Result<Assignment> {
    let num_layers = scores.len();
    let num_heads = scores.first().map_or(0, |s| s[0].len());
    if num_layers == 0 || num_heads == 0 {
        return Err(Error::Input("DHP needs at least one layer with at least one head".into()));
    }
    for (l, s) in scores.iter().enumerate() {
        if s.iter().any(|r| r.len() != num_heads) {
            return Err(Error::Input(format!(
                "layer {l} scores have {:?} heads per region, expected {num_heads}",
                s.iter().map(|r| r.len()).collect::<Vec<_>>()
            )));
        }
        if let Some(x) = s.iter().flatten().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(Error::Input(format!("layer {l} has an invalid attention mass {x}")));
        }
    }
    let total = num_layers * num_heads;
    if num_dummy > total {
        return Err(Error::Policy(format!("{num_dummy} dummy heads requested, but there are only {total} heads")));
    }
    let norm = |region: usize| -> Vec<f32> {
        let vals: Vec<f32> = scores.iter().flat_map(|s| s[region].iter().copied()).collect();
        let sum = vals.iter().map(|&x| x as f64).sum::<f64>() as f32;
        vals.iter().map(|&x| if sum > 0.0 { x / sum } else { 0.0 }).collect()
    };
    let (p0n, p1n) = (norm(0), norm(1));
    let cost: Vec<f32> = p0n.iter().zip(&p1n).map(|(a, b)| a.max(*b)).collect();
    let mut order: Vec<usize> = (0..total).collect();
    // Stable sort: equal costs keep ascending flattened index order.
    order.sort_by(|&a, &b| cost[a].total_cmp(&cost[b]));
    let mut groups: Vec<Group> =
        (0..total).map(|i| if p0n[i] < p1n[i] { Group::Neighbor } else { Group::Sink }).collect();
    for &i in &order[..num_dummy] {
        groups[i] = Group::Dummy;
    }
    Assignment::new(num_layers, num_heads, groups)
}

/// Random per-head masses (each head's three masses sum to 1, none zero), for tests here and
/// in the head-program module.
#[cfg(test)]
pub(crate) fn random_scores(
    rng: &mut crate::dummy::calibrate::SplitMix64,
    layers: usize,
    heads: usize,
) -> Vec<LayerScores> {
    (0..layers)
        .map(|_| {
            let mut s: LayerScores = [vec![], vec![], vec![]];
            for _ in 0..heads {
                let w: Vec<f64> = (0..3).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + 0.01).collect();
                let z: f64 = w.iter().sum();
                for k in 0..3 {
                    s[k].push((w[k] / z) as f32);
                }
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TensorFile;
    use crate::dummy::calibrate::{layer_scores_from_rows, SplitMix64};

    fn golden_dir() -> std::path::PathBuf {
        match std::env::var_os("DFRT_GOLDEN_DIR") {
            Some(p) => p.into(),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
        }
    }

    #[test]
    fn golden_df_tiny_assignment() {
        let dir = golden_dir().join("df-tiny");
        let out = TensorFile::open(dir.join("outputs.safetensors"))
            .unwrap_or_else(|e| panic!("df-tiny golden case not found ({e}); set DFRT_GOLDEN_DIR"));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        let df = &manifest["dummy_forcing"];
        let num_dummy = df["num_dummy"].as_u64().unwrap() as usize;
        let layers = manifest["model_config"]["num_layers"].as_u64().unwrap() as usize;
        let heads = manifest["model_config"]["num_heads"].as_u64().unwrap() as usize;
        let scores: Vec<LayerScores> = (0..layers)
            .map(|l| {
                let name = format!("scores.{l}");
                assert_eq!(out.info(&name).unwrap().shape, vec![3, heads]);
                layer_scores_from_rows(&out.f32_any(&name).unwrap(), heads).unwrap()
            })
            .collect();
        let want = out.i64_any("assignment").unwrap();
        assert_eq!(out.info("assignment").unwrap().shape, vec![layers, heads]);
        let got = program(&scores, num_dummy).unwrap();
        assert_eq!(got.to_i64(), want, "assignment differs from the golden one");
        // The per-layer head lists of the manifest, too.
        for l in 0..layers {
            let m = &manifest["head_groups_per_layer"][l.to_string()];
            for (g, key) in [(Group::Sink, "A_sink"), (Group::Neighbor, "B_neighbor"), (Group::Dummy, "C_dummy")] {
                let want: Vec<usize> =
                    m[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
                assert_eq!(got.heads_in(l, g), want, "layer {l} group {key}");
            }
        }
        assert_eq!(got.counts().dummy, num_dummy);
    }

    #[test]
    fn budget_is_exact_for_every_n() {
        let mut rng = SplitMix64::new(11);
        let s = random_scores(&mut rng, 5, 4);
        for n in 0..=20 {
            let a = program(&s, n).unwrap();
            assert_eq!(a.counts().dummy, n);
            assert_eq!(a.counts().total(), 20);
        }
        let e = program(&s, 21).unwrap_err().to_string();
        assert!(e.contains("21 dummy heads requested, but there are only 20 heads"), "{e}");
    }

    #[test]
    fn n_zero_and_n_all() {
        let mut rng = SplitMix64::new(12);
        let s = random_scores(&mut rng, 3, 3);
        let none = program(&s, 0).unwrap();
        assert!(none.groups().iter().all(|&g| g != Group::Dummy));
        let all = program(&s, 9).unwrap();
        assert!(all.groups().iter().all(|&g| g == Group::Dummy));
    }

    #[test]
    fn dummy_heads_are_the_cheapest_and_the_rest_follow_their_larger_mass() {
        let mut rng = SplitMix64::new(13);
        let s = random_scores(&mut rng, 6, 5);
        let sum = |k: usize| s.iter().flat_map(|l| l[k].iter()).map(|&x| x as f64).sum::<f64>();
        let (s0, s1) = (sum(0), sum(1));
        let cost = |l: usize, h: usize| (s[l][0][h] as f64 / s0).max(s[l][1][h] as f64 / s1);
        let a = program(&s, 11).unwrap();
        let max_dummy = (0..6)
            .flat_map(|l| (0..5).map(move |h| (l, h)))
            .filter(|&(l, h)| a.get(l, h) == Group::Dummy)
            .map(|(l, h)| cost(l, h))
            .fold(0.0, f64::max);
        for l in 0..6 {
            for h in 0..5 {
                match a.get(l, h) {
                    Group::Dummy => {}
                    g => {
                        assert!(cost(l, h) >= max_dummy, "non-dummy head ({l},{h}) is cheaper than a dummy head");
                        let want =
                            if s[l][0][h] as f64 / s0 < s[l][1][h] as f64 / s1 { Group::Neighbor } else { Group::Sink };
                        assert_eq!(g, want, "head ({l},{h})");
                    }
                }
            }
        }
    }

    #[test]
    fn ties_are_broken_by_flattened_index() {
        // Every head identical: the first N in (layer, head) order become dummy, and
        // p0n == p1n makes the rest sink (the comparison is strict).
        let s: Vec<LayerScores> = (0..3).map(|_| [vec![0.2; 4], vec![0.2; 4], vec![0.6; 4]]).collect();
        for n in [0, 1, 5, 12] {
            let a = program(&s, n).unwrap();
            for i in 0..12 {
                let want = if i < n { Group::Dummy } else { Group::Sink };
                assert_eq!(a.groups()[i], want, "n {n} head {i}");
            }
            assert_eq!(program(&s, n).unwrap(), a);
        }
        // A tie across layers in the middle of the order.
        let mut s2 = s.clone();
        s2[2][0][1] = 0.01;
        s2[2][1][1] = 0.01;
        s2[0][0][3] = 0.01;
        s2[0][1][3] = 0.01;
        let a = program(&s2, 1).unwrap();
        assert_eq!(a.get(0, 3), Group::Dummy);
        assert_eq!(a.get(2, 1), Group::Sink);
    }

    #[test]
    fn planted_heads_are_classified_as_planted() {
        // Plant: sink-like heads (mass on frame 0), neighbor-like (mass on cached frames) and
        // dummy-like (almost everything on the current chunk), shuffled over layers.
        let mut rng = SplitMix64::new(14);
        let (layers, heads) = (6, 6);
        let mut planted = vec![Group::Sink; layers * heads];
        let mut scores: Vec<LayerScores> =
            (0..layers).map(|_| [vec![0.0; heads], vec![0.0; heads], vec![0.0; heads]]).collect();
        let mut n_dummy = 0;
        for i in 0..layers * heads {
            let g = Group::ALL[rng.below(3) as usize];
            planted[i] = g;
            let jitter = || 0.02 * ((i * 7919 % 13) as f32 / 13.0);
            let (p0, p1) = match g {
                Group::Sink => (0.5 + jitter(), 0.05),
                Group::Neighbor => (0.05, 0.5 + jitter()),
                Group::Dummy => {
                    n_dummy += 1;
                    (0.01 + jitter() / 10.0, 0.01)
                }
            };
            let (l, h) = (i / heads, i % heads);
            scores[l][0][h] = p0;
            scores[l][1][h] = p1;
            scores[l][2][h] = 1.0 - p0 - p1;
        }
        let a = program(&scores, n_dummy).unwrap();
        assert_eq!(a.groups(), &planted[..]);
    }

    #[test]
    fn a_layer_may_have_empty_groups() {
        // Layer 1 is all neighbor, layer 0 has no neighbor head.
        let s = vec![
            [vec![0.6, 0.01], vec![0.1, 0.01], vec![0.3, 0.98]],
            [vec![0.05, 0.04], vec![0.7, 0.6], vec![0.25, 0.36]],
        ];
        let a = program(&s, 1).unwrap();
        assert_eq!(a.layer(0), &[Group::Sink, Group::Dummy]);
        assert_eq!(a.layer(1), &[Group::Neighbor, Group::Neighbor]);
        assert!(a.heads_in(0, Group::Neighbor).is_empty());
        assert!(a.heads_in(1, Group::Sink).is_empty() && a.heads_in(1, Group::Dummy).is_empty());
    }

    #[test]
    fn bad_scores_are_errors() {
        assert!(program(&[], 0).is_err());
        let ragged = vec![[vec![0.1, 0.2], vec![0.1], vec![0.8, 0.7]]];
        assert!(program(&ragged, 0).unwrap_err().to_string().contains("layer 0"));
        let nan = vec![[vec![f32::NAN], vec![0.1], vec![0.8]]];
        assert!(program(&nan, 0).unwrap_err().to_string().contains("invalid attention mass"));
        assert!(Assignment::from_i64(&[0, 3], 1, 2).is_err());
        assert!(Assignment::from_i64(&[0, 1, 2], 1, 2).is_err());
        let a = Assignment::from_i64(&[0, 1, 2, 2], 2, 2).unwrap();
        assert_eq!(a.to_i64(), vec![0, 1, 2, 2]);
    }
}
