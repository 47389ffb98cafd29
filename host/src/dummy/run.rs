//! Dummy Forcing inside a running session: calibration in the t = 0 pass of AR step K, DHP,
//! and the HMA regrouping of the cache at the end of that forward. Written over the
//! [`Backend`] trait only, so every backend runs the same policy logic.
//!
//! Phase 1 and the packed phase need no code here: the cache's initial groups
//! ([`crate::policy::Policy::initial_groups`]) give the full path, and after the regrouping
//! each head's context is its own group's slots ++ the current chunk, which the attention op
//! takes per head ([`crate::cache::KvCache::context`]); outputs stay at their head positions.

use std::collections::{BTreeMap, HashMap};

use super::calibrate::{
    first_region_len, layer_masses, layer_scores_from_rows, rows_from_i64, sample_rows, KeySegment, LayerScores,
    SplitMix64,
};
use super::dhp::Assignment;
use super::heads::HeadProgram;
use super::layout::{hma_layout, HmaSource};
use crate::backend::{Backend, Seg};
use crate::cache::{GroupSpec, KvCache};
use crate::model::{ForwardHook, PassInfo};
use crate::policy::DummySpec;
use crate::{Error, ModelConfig, Result};

/// The Dummy Forcing state of one video.
pub struct DummyForcing {
    /// The policy settings of the run.
    pub spec: DummySpec,
    cfg: ModelConfig,
    /// A program given with `--heads`: calibration is skipped.
    given: Option<HeadProgram>,
    /// `sampled_rows.{layer}` from `--inputs`; layers not listed draw from `rng`.
    rows: BTreeMap<usize, Vec<i64>>,
    rng: SplitMix64,
    /// Calibration masses per layer, filled during the t = 0 pass of AR step K.
    scores: Vec<Option<LayerScores>>,
    /// The program in force after HMA (calibrated or given).
    program: Option<HeadProgram>,
}

impl DummyForcing {
    /// Checks `spec` against the model. The row sampler starts from seed 0 (see
    /// [`DummyForcing::set_seed`]).
    pub fn new(cfg: &ModelConfig, spec: DummySpec) -> Result<Self> {
        spec.validate(cfg)?;
        Ok(DummyForcing {
            spec,
            cfg: cfg.clone(),
            given: None,
            rows: BTreeMap::new(),
            rng: SplitMix64::new(0),
            scores: vec![None; cfg.num_layers],
            program: None,
        })
    }

    /// Seeds the query-row sampler (one generator per video, drawn layer by layer).
    pub fn set_seed(&mut self, seed: u64) {
        self.rng = SplitMix64::new(seed);
    }

    /// Uses stored query rows (`sampled_rows.{layer}` of an `--inputs` file).
    pub fn set_sampled_rows(&mut self, rows: BTreeMap<usize, Vec<i64>>) -> Result<()> {
        if let Some(&l) = rows.keys().find(|&&l| l >= self.cfg.num_layers) {
            return Err(Error::Input(format!("sampled_rows.{l}: the model has {} layers", self.cfg.num_layers)));
        }
        self.rows = rows;
        Ok(())
    }

    /// Reuses a head program (offline mode, `--heads FILE`): checked against the model and
    /// the dummy budget; calibration is skipped and HMA uses its groups.
    pub fn set_program(&mut self, p: HeadProgram) -> Result<()> {
        p.validate_for(&self.cfg)?;
        p.check_spec(&self.spec)?;
        self.given = Some(p);
        Ok(())
    }

    /// The prompt-switch reset (official `_recache_after_switch` with `global_sink: false`):
    /// every layer's cache becomes one empty group of all heads, the full path's shape for a
    /// recache pass starting at AR step `ar_step` (1 sink slot; the last `3·L` frames, or every
    /// frame of the `frames`-frame window but its first when `ar_step ≤ L − 1`). The groups
    /// stay calibrated. A switch before calibration is an error (the official code raises a
    /// `KeyError` there).
    pub fn reset_for_recache<B: Backend>(
        &self,
        be: &B,
        cache: &mut KvCache<B::Tensor>,
        ar_step: usize,
        frames: usize,
    ) -> Result<()> {
        if self.program.is_none() {
            return Err(Error::Policy(format!(
                "a prompt switch needs the head groups, which are calibrated at AR step {}; switch at a later chunk",
                self.spec.ar_start
            )));
        }
        let ring =
            if ar_step + 1 > self.spec.chunks { self.spec.local_frames() } else { frames.saturating_sub(1).max(1) };
        let all = GroupSpec::empty((0..self.cfg.num_heads).collect(), 1, ring);
        for l in 0..cache.layers.len() {
            cache.replace_groups(be, l, std::slice::from_ref(&all))?;
        }
        Ok(())
    }

    /// The re-pack after a recache pass: the calibrated groups again, from the recache
    /// window (sink heads ← its first frame, dummy heads ← its last, neighbor heads ← all of
    /// the ring). Resolution-generic: frames are slots, whatever the tokens per frame.
    pub fn repack<B: Backend>(&self, be: &B, cache: &mut KvCache<B::Tensor>) -> Result<()> {
        let program = self.program.as_ref().ok_or_else(|| Error::Policy("re-pack before calibration".into()))?;
        let lay = hma_layout(&program.assignment(), &self.spec);
        for (l, g) in lay.iter().enumerate() {
            self.regroup(be, cache, l, g, true)?;
        }
        Ok(())
    }

    /// Whether calibration runs (no program was given).
    pub fn calibrates(&self) -> bool {
        self.given.is_none()
    }

    /// The program in force, once the run has passed AR step K.
    pub fn program(&self) -> Option<&HeadProgram> {
        self.program.as_ref()
    }

    /// The head groups, once the run has passed AR step K.
    pub fn assignment(&self) -> Option<Assignment> {
        self.program.as_ref().map(|p| p.assignment())
    }

    /// The masses computed by this run's calibration (None with a given program or before it).
    pub fn calibration_scores(&self) -> Option<Vec<LayerScores>> {
        self.scores.iter().cloned().collect()
    }

    /// Rebuilds `layer`'s cache from the phase-1 group into the groups of `a`.
    /// With `recache` (the re-pack after a prompt switch) the phase-1 group holds the recache
    /// window: its sink is the window's first frame (not frame 0) and its ring may hold more
    /// than `3·L` frames (the neighbor heads keep them all until the next clean pass).
    fn regroup<B: Backend>(
        &self,
        be: &B,
        cache: &mut KvCache<B::Tensor>,
        layer: usize,
        lay: &[super::layout::GroupLayout; 3],
        recache: bool,
    ) -> Result<()> {
        let groups = &cache.layers[layer].groups;
        if groups.len() != 1 || groups[0].sink_cap != 1 {
            return Err(Error::Policy(format!(
                "layer {layer}: HMA expects the single phase-1 group, found {} groups",
                groups.len()
            )));
        }
        let frames = groups[0].frames();
        let (sink, ring) = match frames.split_first() {
            Some((&0, ring)) if !ring.is_empty() => (0usize, ring.to_vec()),
            Some((&f, ring)) if recache && !ring.is_empty() => (f, ring.to_vec()),
            _ => {
                return Err(Error::Policy(format!(
                    "layer {layer}: phase-1 cache holds frames {frames:?}, expected frame 0 then a window"
                )))
            }
        };
        let mut specs = Vec::new();
        for g in lay.iter().filter(|g| !g.heads.is_empty()) {
            let (sink_frames, ring_frames) = match g.source {
                HmaSource::Frame0 => (vec![sink], vec![]),
                HmaSource::LastLocalFrame => (vec![], vec![*ring.last().expect("checked non-empty")]),
                HmaSource::LocalWindow { frames } => {
                    if frames != ring.len() && !recache {
                        return Err(Error::Policy(format!(
                            "layer {layer}: the phase-1 window holds {} frames, HMA expects {frames}",
                            ring.len()
                        )));
                    }
                    (vec![], ring.clone())
                }
                HmaSource::Nothing => (vec![], vec![]),
            };
            specs.push(GroupSpec {
                heads: g.heads.clone(),
                sink_cap: g.shape.sink_slots,
                ring_cap: g.shape.ring_cap,
                sink_frames,
                ring_frames,
            });
        }
        cache.replace_groups(be, layer, &specs)
    }
}

impl<B: Backend> ForwardHook<B> for DummyForcing {
    fn wants_attention(&self, pass: &PassInfo) -> bool {
        pass.commits() && pass.chunk == self.spec.ar_start && self.given.is_none()
    }

    /// Calibration: the masses of this layer over the full key set, before the commit.
    fn on_self_attention(
        &mut self,
        be: &B,
        pass: &PassInfo,
        layer: usize,
        q: &B::Tensor,
        head_dim: usize,
        ctx: &[Vec<Seg<'_, B::Tensor>>],
    ) -> Result<()> {
        let heads = ctx.len();
        let t = be.shape(q)[0];
        let rows = match self.rows.get(&layer) {
            Some(r) => rows_from_i64(r, t)?,
            None => sample_rows(t, self.spec.ar_start, &mut self.rng)?,
        };
        // Every head sees the same keys in phase 1; gather them into `[heads, n, d]`,
        // downloading each distinct tensor once.
        let n: usize = ctx[0].iter().map(|s| s.rows).sum();
        if ctx.iter().any(|segs| segs.iter().map(|s| s.rows).sum::<usize>() != n) {
            return Err(Error::Policy(format!("layer {layer}: calibration needs the same key count for every head")));
        }
        let fresh: usize =
            ctx[0].iter().filter(|s| s.frame.is_some_and(|f| f >= pass.start_frame)).map(|s| s.rows).sum();
        if fresh != t
            || ctx[0]
                .iter()
                .rev()
                .take_while(|s| s.frame.is_some_and(|f| f >= pass.start_frame))
                .map(|s| s.rows)
                .sum::<usize>()
                != t
        {
            return Err(Error::Policy(format!("layer {layer}: the last {t} keys must be the current chunk")));
        }
        // On the device where the backend has the kernel (the GPU path), else on the host.
        let first_end = first_region_len(t, self.spec.ar_start);
        if n < first_end + t {
            return Err(Error::Policy(format!(
                "layer {layer}: {n} keys is fewer than the first region ({first_end}) plus the current chunk ({t})"
            )));
        }
        if let Some(v) = be.calibration_masses(q, head_dim, ctx, &rows, first_end, n - t) {
            self.scores[layer] = Some(layer_scores_from_rows(&v?, heads)?);
            return Ok(());
        }
        let mut host: HashMap<*const B::Tensor, Vec<f32>> = HashMap::new();
        let mut keys = vec![0f32; heads * n * head_dim];
        for (h, segs) in ctx.iter().enumerate() {
            let mut r0 = h * n;
            for s in segs {
                let data = host.entry(s.k as *const _).or_insert_with(|| be.download(s.k));
                for r in 0..s.rows {
                    let src = s.offset + r * s.stride;
                    keys[(r0 + r) * head_dim..(r0 + r + 1) * head_dim].copy_from_slice(&data[src..src + head_dim]);
                }
                r0 += s.rows;
            }
        }
        let qh = be.download(q);
        let seg = KeySegment::htd(&keys, heads, head_dim)?;
        self.scores[layer] = Some(layer_masses(&qh, t, heads, head_dim, &rows, &[seg], self.spec.ar_start)?);
        Ok(())
    }

    /// DHP + HMA at the end of the t = 0 forward of AR step K.
    fn after_forward(&mut self, be: &B, pass: &PassInfo, cache: &mut KvCache<B::Tensor>) -> Result<()> {
        if !(pass.commits() && pass.chunk == self.spec.ar_start) {
            return Ok(());
        }
        let program = match &self.given {
            Some(p) => p.clone(),
            None => {
                let scores = self
                    .calibration_scores()
                    .ok_or_else(|| Error::Policy("calibration did not run in every layer".into()))?;
                HeadProgram::from_calibration(&self.cfg, self.spec, &scores)?
            }
        };
        let lay = hma_layout(&program.assignment(), &self.spec);
        for (l, g) in lay.iter().enumerate() {
            self.regroup(be, cache, l, g, false)?;
        }
        self.program = Some(program);
        Ok(())
    }
}
