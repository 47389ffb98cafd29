//! Head programs: the saved result of a calibration (`--save-heads FILE`, `--heads FILE`),
//! and the stability report of several programs (`dfrt calibrate`).
//!
//! JSON layout (version 1):
//! ```json
//! {
//!   "format": "dfrt.head-program", "version": 1,
//!   "source": "calibration",
//!   "model": { "dim": 1536, "num_layers": 30, "num_heads": 12, "head_dim": 128,
//!              "fingerprint": "fnv1a64:…", "config": { …ModelConfig… } },
//!   "spec": { "num_dummy": 180, "chunks": 1, "ar_start": 1, "packing": true },
//!   "layers": [ [ {"group": "sink", "first": 0.31, "mid": 0.12, "last": 0.57}, … ], … ]
//! }
//! ```
//! `layers[l][h]` is head `h` of layer `l`; `first`/`mid`/`last` are the calibration masses
//! behind its group. The model identity covers the configuration only: two checkpoints of
//! the same architecture cannot be told apart by it.
//!
//! A program from calibration masses, saved and loaded back (what `--save-heads` and
//! `--heads` do):
//!
//! ```
//! use dfrt::dummy::{DummySpec, Group, HeadProgram, LayerScores};
//! use dfrt::ModelConfig;
//!
//! let tiny = ModelConfig::preset("tiny")?; // 2 layers × 2 heads
//! // Per layer: the attention mass of each head on the first frame, the middle, the last chunk.
//! let scores: Vec<LayerScores> = vec![
//!     [vec![0.60, 0.10], vec![0.10, 0.60], vec![0.30, 0.30]],
//!     [vec![0.05, 0.30], vec![0.05, 0.20], vec![0.90, 0.50]],
//! ];
//! let program = HeadProgram::from_calibration(&tiny, DummySpec::new(1), &scores)?;
//! // Layer 1 head 0 looks almost only at the current chunk: it loses least without history.
//! let a = program.assignment();
//! assert_eq!(a.get(1, 0), Group::Dummy);
//! assert_eq!((a.get(0, 0), a.get(0, 1), a.get(1, 1)), (Group::Sink, Group::Neighbor, Group::Sink));
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-heads-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("heads.json");
//! program.save(&path)?;
//! assert_eq!(HeadProgram::load_for(&path, &tiny)?, program);
//! // A program belongs to one model configuration and one dummy budget.
//! let other = ModelConfig::preset("tiny4")?;
//! let e = HeadProgram::load_for(&path, &other).unwrap_err();
//! assert!(e.to_string().contains("different model"), "{e}");
//! assert!(program.check_spec(&DummySpec::new(2)).is_err());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::calibrate::LayerScores;
use super::dhp::{program, Assignment, Group};
use crate::policy::DummySpec;
use crate::{Error, ModelConfig, Result};

/// The `format` field of every head program.
pub const FORMAT: &str = "dfrt.head-program";
/// The `version` field this build reads and writes.
pub const VERSION: u32 = 1;

/// Which model a program was made for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// `ModelConfig::dim`.
    pub dim: usize,
    /// `ModelConfig::num_layers`.
    pub num_layers: usize,
    /// `ModelConfig::num_heads`.
    pub num_heads: usize,
    /// `ModelConfig::head_dim()`.
    pub head_dim: usize,
    /// `fnv1a64:` + hex of the FNV-1a hash of the config's JSON.
    pub fingerprint: String,
    /// The whole config (what [`HeadProgram::validate_for`] compares).
    pub config: ModelConfig,
}

impl ModelIdentity {
    /// The identity of `cfg`.
    pub fn of(cfg: &ModelConfig) -> Self {
        ModelIdentity {
            dim: cfg.dim,
            num_layers: cfg.num_layers,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            fingerprint: fingerprint(cfg),
            config: cfg.clone(),
        }
    }
}

/// FNV-1a (64-bit) of the config's canonical JSON.
pub fn fingerprint(cfg: &ModelConfig) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cfg.to_json().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// One head: its group and the calibration masses behind it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadEntry {
    /// The head's group.
    pub group: Group,
    /// Calibration mass on the first frame(s).
    pub first: f32,
    /// Mass on the middle frames.
    pub mid: f32,
    /// Mass on the current chunk.
    pub last: f32,
}

/// The head groups of one model under one dummy budget, with the calibration masses behind
/// them; the JSON layout is in the [module docs](self).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadProgram {
    /// Always `dfrt.head-program`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// How the program was made: `calibration`, or `majority of K programs`.
    pub source: String,
    /// The model it was made for.
    pub model: ModelIdentity,
    /// The policy it was made under; only `num_dummy` must match a run that reuses it.
    pub spec: DummySpec,
    /// `layers[l][h]`: head `h` of layer `l`.
    pub layers: Vec<Vec<HeadEntry>>,
}

impl HeadProgram {
    /// Packs an assignment and the masses it came from.
    pub fn new(
        cfg: &ModelConfig,
        spec: DummySpec,
        scores: &[LayerScores],
        a: &Assignment,
        source: &str,
    ) -> Result<Self> {
        if a.num_layers != cfg.num_layers || a.num_heads != cfg.num_heads || scores.len() != cfg.num_layers {
            return Err(Error::Input(format!(
                "head program: assignment [{}, {}] / {} score layers do not match the model [{}, {}]",
                a.num_layers,
                a.num_heads,
                scores.len(),
                cfg.num_layers,
                cfg.num_heads
            )));
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (l, s) in scores.iter().enumerate() {
            if s.iter().any(|r| r.len() != cfg.num_heads) {
                return Err(Error::Input(format!(
                    "head program: layer {l} scores do not have {} heads",
                    cfg.num_heads
                )));
            }
            layers.push(
                (0..cfg.num_heads)
                    .map(|h| HeadEntry { group: a.get(l, h), first: s[0][h], mid: s[1][h], last: s[2][h] })
                    .collect(),
            );
        }
        let p = HeadProgram {
            format: FORMAT.into(),
            version: VERSION,
            source: source.into(),
            model: ModelIdentity::of(cfg),
            spec,
            layers,
        };
        p.check_consistent()?;
        Ok(p)
    }

    /// Runs DHP on calibration masses and packs the result.
    pub fn from_calibration(cfg: &ModelConfig, spec: DummySpec, scores: &[LayerScores]) -> Result<Self> {
        spec.validate(cfg)?;
        let a = program(scores, spec.num_dummy)?;
        Self::new(cfg, spec, scores, &a, "calibration")
    }

    /// Layers listed.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Heads per layer.
    pub fn num_heads(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len())
    }

    /// The group of every head, as DHP returns it.
    pub fn assignment(&self) -> Assignment {
        let g = self.layers.iter().flatten().map(|e| e.group).collect();
        Assignment::new(self.num_layers(), self.num_heads(), g).expect("checked on construction")
    }

    /// The calibration masses, per layer `[first, mid, last]`.
    pub fn scores(&self) -> Vec<LayerScores> {
        self.layers
            .iter()
            .map(|l| {
                [
                    l.iter().map(|e| e.first).collect(),
                    l.iter().map(|e| e.mid).collect(),
                    l.iter().map(|e| e.last).collect(),
                ]
            })
            .collect()
    }

    /// Pretty JSON (the file format).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("head program serialises")
    }

    /// Parses and checks a program on its own (format, shape, masses, dummy budget).
    pub fn from_json(s: &str) -> Result<Self> {
        let p: HeadProgram = serde_json::from_str(s)
            .map_err(|e| Error::Input(format!("head program is not valid JSON of the expected form: {e}")))?;
        p.check_consistent()?;
        Ok(p)
    }

    /// Writes [`HeadProgram::to_json`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        std::fs::write(path.as_ref(), self.to_json()).map_err(|e| Error::io(path, e))
    }

    /// Reads and checks a program on its own ([`HeadProgram::from_json`]); use
    /// [`HeadProgram::load_for`] to also check it against the model.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&s).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
    }

    /// Loads a program and checks that it belongs to `cfg` (the `--heads FILE` path).
    pub fn load_for(path: impl AsRef<Path>, cfg: &ModelConfig) -> Result<Self> {
        let p = Self::load(path.as_ref())?;
        p.validate_for(cfg).map_err(|e| Error::Input(format!("{}: {e}", path.as_ref().display())))?;
        Ok(p)
    }

    /// Errors if the program was made for a different model; names the differing fields.
    pub fn validate_for(&self, cfg: &ModelConfig) -> Result<()> {
        if self.model.fingerprint == fingerprint(cfg) && self.model.config == *cfg {
            return Ok(());
        }
        let mine = serde_json::to_value(&self.model.config).expect("config serialises");
        let theirs = serde_json::to_value(cfg).expect("config serialises");
        let diff: Vec<String> = match (mine.as_object(), theirs.as_object()) {
            (Some(a), Some(b)) => b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k} {} vs {v}", a.get(k).map_or("missing".into(), |x| x.to_string())))
                .collect(),
            _ => vec![],
        };
        Err(Error::Policy(format!(
            "head program is for a different model ({} layers × {} heads, dim {}) than the one loaded ({} layers × {} heads, dim {}); differing config fields (program vs model): {}",
            self.model.num_layers,
            self.model.num_heads,
            self.model.dim,
            cfg.num_layers,
            cfg.num_heads,
            cfg.dim,
            if diff.is_empty() { "fingerprint only".into() } else { diff.join(", ") }
        )))
    }

    /// Checks a reused program against the policy of the run: the dummy budget must agree.
    /// `chunks`, `ar-start` and `packing` come from the run, not from the program.
    pub fn check_spec(&self, spec: &DummySpec) -> Result<()> {
        if spec.num_dummy != self.spec.num_dummy {
            return Err(Error::Policy(format!(
                "the head program has {} dummy heads, but the policy asks for {}",
                self.spec.num_dummy, spec.num_dummy
            )));
        }
        Ok(())
    }

    fn check_consistent(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("head program: {m}")));
        if self.format != FORMAT {
            return bad(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        if self.version != VERSION {
            return bad(format!("version {} is not supported (expected {VERSION})", self.version));
        }
        let m = &self.model;
        if m.config.num_layers != m.num_layers || m.config.num_heads != m.num_heads || m.config.dim != m.dim {
            return bad("model identity fields disagree with its config".into());
        }
        if m.fingerprint != fingerprint(&m.config) {
            return bad("model fingerprint does not match its config (edited file?)".into());
        }
        if self.layers.len() != m.num_layers {
            return bad(format!("{} layers listed, the model has {}", self.layers.len(), m.num_layers));
        }
        for (l, heads) in self.layers.iter().enumerate() {
            if heads.len() != m.num_heads {
                return bad(format!("layer {l} lists {} heads, the model has {}", heads.len(), m.num_heads));
            }
            for (h, e) in heads.iter().enumerate() {
                if [e.first, e.mid, e.last].iter().any(|x| !x.is_finite() || *x < 0.0 || *x > 1.0 + 1e-4) {
                    return bad(format!("layer {l} head {h}: masses must lie in [0, 1], got {e:?}"));
                }
            }
        }
        let dummies = self.layers.iter().flatten().filter(|e| e.group == Group::Dummy).count();
        if dummies != self.spec.num_dummy {
            return bad(format!("{dummies} heads are dummy, but the spec says {}", self.spec.num_dummy));
        }
        self.spec.validate(&m.config)
    }
}

/// How stable head groups are across several programs (e.g. different prompts or seeds).
#[derive(Clone, Debug)]
pub struct Stability {
    /// Programs compared.
    pub programs: usize,
    /// Heads per program (layers × heads).
    pub heads: usize,
    /// Per program: share of heads whose group equals program 0's (1.0 for program 0).
    pub keep_vs_first: Vec<f64>,
    /// Per program: share of heads whose group equals the majority program's.
    pub keep_vs_majority: Vec<f64>,
    /// Mean of `keep_vs_first` over programs 1.. (1.0 for a single program).
    pub mean_keep_vs_first: f64,
    /// Mean of `keep_vs_majority` over all programs.
    pub mean_keep_vs_majority: f64,
    /// Share of heads with the same group in every program.
    pub unanimous: f64,
    /// The majority-vote program (see [`stability`]).
    pub majority: HeadProgram,
}

/// Compares programs of one model and budget, and builds the majority-vote program:
/// - masses are the mean over programs;
/// - the dummy budget stays exact: heads are ranked by dummy votes (most first), then by the
///   DHP cost of the mean masses, then by flattened index; the first N are dummy;
/// - each other head takes the group with more votes among sink and neighbor; a tie is
///   settled by the DHP rule on the mean masses (neighbor iff p0n < p1n).
///
/// If all programs agree, the majority program has their groups.
pub fn stability(programs: &[HeadProgram]) -> Result<Stability> {
    let p0 = programs.first().ok_or_else(|| Error::Input("stability needs at least one head program".into()))?;
    for (i, p) in programs.iter().enumerate().skip(1) {
        if p.model.fingerprint != p0.model.fingerprint || p.model.config != p0.model.config {
            return Err(Error::Input(format!("head program {i} is for a different model than program 0")));
        }
        if p.spec.num_dummy != p0.spec.num_dummy {
            return Err(Error::Input(format!(
                "head program {i} has {} dummy heads, program 0 has {}",
                p.spec.num_dummy, p0.spec.num_dummy
            )));
        }
    }
    let (layers, heads) = (p0.num_layers(), p0.num_heads());
    let n = layers * heads;
    let k = programs.len() as f32;
    let groups: Vec<Vec<Group>> =
        programs.iter().map(|p| p.layers.iter().flatten().map(|e| e.group).collect()).collect();

    // Mean masses.
    let mut mean: Vec<LayerScores> =
        (0..layers).map(|_| [vec![0.0; heads], vec![0.0; heads], vec![0.0; heads]]).collect();
    for p in programs {
        for (l, hs) in p.layers.iter().enumerate() {
            for (h, e) in hs.iter().enumerate() {
                mean[l][0][h] += e.first / k;
                mean[l][1][h] += e.mid / k;
                mean[l][2][h] += e.last / k;
            }
        }
    }
    let flat = |r: usize| -> Vec<f64> { mean.iter().flat_map(|s| s[r].iter().map(|&x| x as f64)).collect() };
    let (m0, m1) = (flat(0), flat(1));
    let (s0, s1) = (m0.iter().sum::<f64>(), m1.iter().sum::<f64>());
    let nz = |x: f64, s: f64| if s > 0.0 { x / s } else { 0.0 };
    let votes = |i: usize, g: Group| groups.iter().filter(|gs| gs[i] == g).count();

    let mut order: Vec<usize> = (0..n).collect();
    let cost = |i: usize| nz(m0[i], s0).max(nz(m1[i], s1));
    order.sort_by(|&a, &b| votes(b, Group::Dummy).cmp(&votes(a, Group::Dummy)).then(cost(a).total_cmp(&cost(b))));
    let mut maj: Vec<Group> = (0..n)
        .map(|i| match votes(i, Group::Neighbor).cmp(&votes(i, Group::Sink)) {
            std::cmp::Ordering::Greater => Group::Neighbor,
            std::cmp::Ordering::Less => Group::Sink,
            std::cmp::Ordering::Equal if nz(m0[i], s0) < nz(m1[i], s1) => Group::Neighbor,
            std::cmp::Ordering::Equal => Group::Sink,
        })
        .collect();
    for &i in &order[..p0.spec.num_dummy] {
        maj[i] = Group::Dummy;
    }
    let a = Assignment::new(layers, heads, maj.clone())?;
    let majority =
        HeadProgram::new(&p0.model.config, p0.spec, &mean, &a, &format!("majority of {} programs", programs.len()))?;

    let share = |a: &[Group], b: &[Group]| a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64;
    let keep_vs_first: Vec<f64> = groups.iter().map(|g| share(g, &groups[0])).collect();
    let keep_vs_majority: Vec<f64> = groups.iter().map(|g| share(g, &maj)).collect();
    let mean_of = |v: &[f64]| if v.is_empty() { 1.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let unanimous = (0..n).filter(|&i| groups.iter().all(|g| g[i] == groups[0][i])).count() as f64 / n as f64;
    Ok(Stability {
        programs: programs.len(),
        heads: n,
        mean_keep_vs_first: mean_of(&keep_vs_first[1..]),
        mean_keep_vs_majority: mean_of(&keep_vs_majority),
        keep_vs_first,
        keep_vs_majority,
        unanimous,
        majority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dummy::calibrate::SplitMix64;
    use crate::dummy::dhp::random_scores;

    fn cfg() -> ModelConfig {
        ModelConfig { num_layers: 5, num_heads: 4, dim: 512, ..ModelConfig::preset("tiny").unwrap() }
    }

    #[test]
    fn round_trip_through_json_and_file() {
        let c = cfg();
        let mut rng = SplitMix64::new(21);
        let s = random_scores(&mut rng, 5, 4);
        let spec = DummySpec::parse("dummy:7,chunks:2,packing:off").unwrap();
        let p = HeadProgram::from_calibration(&c, spec, &s).unwrap();
        assert_eq!(p.assignment(), program(&s, 7).unwrap());
        assert_eq!(p.scores(), s);
        let back = HeadProgram::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        let dir = std::env::temp_dir().join(format!("dfrt-heads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("heads.json");
        p.save(&f).unwrap();
        let loaded = HeadProgram::load_for(&f, &c).unwrap();
        assert_eq!(loaded, p);
        assert_eq!(loaded.assignment().to_i64(), p.assignment().to_i64());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_program_for_another_model_is_refused_clearly() {
        let c = cfg();
        let mut rng = SplitMix64::new(22);
        let p = HeadProgram::from_calibration(&c, DummySpec::new(3), &random_scores(&mut rng, 5, 4)).unwrap();
        let other = ModelConfig::preset("tiny4").unwrap();
        let e = p.validate_for(&other).unwrap_err().to_string();
        assert!(e.contains("different model (5 layers × 4 heads, dim 512)"), "{e}");
        assert!(e.contains("num_layers 5 vs 4"), "{e}");
        let same_shape = ModelConfig { ffn_dim: 999, ..c.clone() };
        let e = p.validate_for(&same_shape).unwrap_err().to_string();
        assert!(e.contains("ffn_dim 512 vs 999"), "{e}");
        assert!(p
            .check_spec(&DummySpec::new(4))
            .unwrap_err()
            .to_string()
            .contains("has 3 dummy heads, but the policy asks for 4"));
        assert!(p.check_spec(&DummySpec::parse("dummy:3,chunks:2").unwrap()).is_ok());
    }

    #[test]
    fn malformed_files_are_refused_clearly() {
        let c = cfg();
        let mut rng = SplitMix64::new(23);
        let p = HeadProgram::from_calibration(&c, DummySpec::new(3), &random_scores(&mut rng, 5, 4)).unwrap();
        let e = |s: &str| HeadProgram::from_json(s).unwrap_err().to_string();
        assert!(e("{ not json").contains("not valid JSON"));
        assert!(e("{}").contains("not valid JSON of the expected form"));
        let j = p.to_json();
        assert!(e(&j.replacen("\"dummy\"", "\"bogus\"", 1)).contains("not valid JSON"));
        assert!(e(&j.replacen("dfrt.head-program", "other", 1)).contains("format is `other`"));
        let mut q = p.clone();
        q.layers[2].pop();
        assert!(e(&q.to_json()).contains("layer 2 lists 3 heads"));
        let mut q = p.clone();
        q.layers.pop();
        assert!(e(&q.to_json()).contains("4 layers listed"));
        let mut q = p.clone();
        q.spec.num_dummy = 4;
        assert!(e(&q.to_json()).contains("3 heads are dummy, but the spec says 4"));
        let mut q = p.clone();
        q.layers[0][0].mid = 1.5;
        assert!(e(&q.to_json()).contains("masses must lie in [0, 1]"));
        let mut q = p.clone();
        q.model.config.ffn_dim += 1;
        assert!(e(&q.to_json()).contains("fingerprint does not match"));
        let missing = std::env::temp_dir().join("dfrt-no-such-heads.json");
        assert!(HeadProgram::load(&missing).is_err());
    }

    #[test]
    fn stability_of_identical_and_perturbed_programs() {
        let c = cfg();
        let mut rng = SplitMix64::new(24);
        let s = random_scores(&mut rng, 5, 4);
        let spec = DummySpec::new(6);
        let p = HeadProgram::from_calibration(&c, spec, &s).unwrap();
        let st = stability(&[p.clone(), p.clone(), p.clone()]).unwrap();
        assert_eq!(st.unanimous, 1.0);
        assert_eq!(st.keep_vs_first, vec![1.0; 3]);
        assert_eq!(st.keep_vs_majority, vec![1.0; 3]);
        assert_eq!(st.majority.assignment(), p.assignment());
        assert!(st.majority.source.starts_with("majority of 3"));

        // Swap the groups of two heads in one program: it keeps 18 of 20 heads.
        let a = p.assignment();
        let (i, j) = {
            let g = a.groups();
            let i = g.iter().position(|&x| x == Group::Dummy).unwrap();
            let j = g.iter().position(|&x| x != Group::Dummy).unwrap();
            (i, j)
        };
        let mut q = p.clone();
        let (gi, gj) = (q.layers[i / 4][i % 4].group, q.layers[j / 4][j % 4].group);
        q.layers[i / 4][i % 4].group = gj;
        q.layers[j / 4][j % 4].group = gi;
        let st = stability(&[p.clone(), q.clone(), p.clone()]).unwrap();
        assert_eq!(st.keep_vs_first, vec![1.0, 0.9, 1.0]);
        assert!((st.mean_keep_vs_first - 0.95).abs() < 1e-12);
        assert_eq!(st.unanimous, 0.9);
        assert_eq!(st.majority.assignment(), p.assignment());
        assert_eq!(st.majority.assignment().counts().dummy, 6);
        assert!((st.keep_vs_majority[1] - 0.9).abs() < 1e-12);

        // Programs of different budgets cannot be compared.
        let r = HeadProgram::from_calibration(&c, DummySpec::new(5), &s).unwrap();
        assert!(stability(&[p, r]).unwrap_err().to_string().contains("dummy heads"));
        assert!(stability(&[]).is_err());
    }

    #[test]
    fn majority_keeps_the_budget_when_programs_disagree() {
        let c = cfg();
        let mut rng = SplitMix64::new(25);
        let progs: Vec<HeadProgram> = (0..4)
            .map(|_| HeadProgram::from_calibration(&c, DummySpec::new(8), &random_scores(&mut rng, 5, 4)).unwrap())
            .collect();
        let st = stability(&progs).unwrap();
        assert_eq!(st.majority.assignment().counts().dummy, 8);
        assert!(st.unanimous < 1.0);
        assert!(st.keep_vs_majority.iter().all(|&x| (0.0..=1.0).contains(&x)));
        // Re-serialises as a valid program.
        HeadProgram::from_json(&st.majority.to_json()).unwrap();
    }
}
