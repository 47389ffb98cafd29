//! Prompt switches with KV recache: Dummy Forcing's interactive pipeline under `dummy`, and
//! LongLive's `_recache_after_switch` under `window:W,sink:S` (its `global_sink` included).

use super::*;

/// The prompt-switch settings for `policy`: a recache window of `frames` (None: the default)
/// and LongLive's `global_sink`. Under `window` the recache re-runs the policy's window
/// (LongLive's `min(local_attn_size, frames done)`), so no other size is accepted; the global
/// sink is LongLive's, so only `window` takes it (the official Dummy Forcing interactive code
/// crashes with `global_sink: true` at the first switch).
pub fn check_recache(policy: &Policy, frames: Option<usize>, global_sink: bool) -> Result<()> {
    if frames == Some(0) {
        return Err(Error::Input("the recache window needs at least one frame".into()));
    }
    match (policy, frames) {
        (Policy::Window { window, .. }, Some(n)) if n != *window => Err(Error::Policy(format!(
            "under `{}` a prompt switch re-runs the policy's window ({window} frames, LongLive's local_attn_size), not {n}",
            policy.name()
        ))),
        (Policy::Window { .. }, _) => Ok(()),
        (_, _) if global_sink => Err(Error::Policy(format!(
            "global sink is LongLive's prompt-switch option for the window policy, not for `{}`",
            policy.name()
        ))),
        _ => Ok(()),
    }
}

impl<B: Backend + 'static> Session<B> {
    /// Frames a prompt switch re-runs (default [`RECACHE_FRAMES`] under `dummy`); set before
    /// the run. Under `window` the recache window is the policy's window (LongLive re-runs
    /// `min(local_attn_size, frames done)` frames), so another value is refused.
    pub fn set_recache_frames(&mut self, n: usize) -> Result<()> {
        check_recache(&self.policy, Some(n), self.global_sink)?;
        self.recache_frames = n;
        Ok(())
    }

    /// LongLive's `global_sink` (default false): whether a prompt switch under `window` keeps
    /// the sink frames' K/V from before the switch. The official Dummy Forcing interactive
    /// code crashes with `global_sink: true` at the first switch (the recache concatenates
    /// the packed caches with all-head keys), so `dummy` refuses it.
    pub fn set_global_sink(&mut self, on: bool) -> Result<()> {
        check_recache(&self.policy, None, on)?;
        self.global_sink = on;
        Ok(())
    }

    /// Switches the prompt before the next chunk; the next chunk and every later pass use the
    /// new prompt. Before any frame exists only the prompt changes. Otherwise the text K/V are
    /// replaced and the self-attention cache is rebuilt by one t = 0 pass over the last
    /// `n = min(recache_frames, frames done)` generated frames with the new prompt, attending
    /// bidirectionally over the window (the official pipelines build a block-causal mask
    /// there but never use it):
    /// - `dummy` (Dummy Forcing's interactive pipeline, `global_sink: false`): the cache is
    ///   emptied, the pass runs with all heads on the full path, then the calibrated head groups
    ///   are packed again from the window;
    /// - `window:W,sink:S` (LongLive's `_recache_after_switch`, n = min(W, frames done)): the
    ///   window is re-run and written again, sink slots included, except with
    ///   [`Session::set_global_sink`] when the window does not start at frame 0: then the sink
    ///   keeps its K/V, the window's first S frames are queries only, and its other frames are
    ///   written after the sink.
    pub fn switch_prompt(&mut self, context: &[f32], rows: usize) -> Result<()> {
        self.check_switch()?;
        let f = self.frames_done();
        self.text = self.model.embed_text(&self.be, context, rows)?;
        self.denoise_graph = None;
        self.tea_residual = None;
        if f == 0 {
            return Ok(());
        }
        let n = self.recache_frames.min(f).min(self.history.len());
        let start = f - n;
        let queries_only = if let Policy::Window { sink, .. } = self.policy {
            let keep = self.global_sink && start > 0;
            self.reset_window_for_recache(keep)?;
            if keep {
                sink
            } else {
                0
            }
        } else {
            let d = self
                .hook
                .dummy()
                .ok_or_else(|| Error::Policy("prompt switches need the window or dummy policy".into()))?;
            d.reset_for_recache(&*self.be, &mut self.cache, start / FRAMES_PER_CHUNK, n)?;
            0
        };
        let x: Vec<f32> = self.history.iter().skip(self.history.len() - n).flatten().copied().collect();
        let lat = self.latent;
        let x = self.be.upload(&x, &[n, lat.channels, lat.height, lat.width]);
        let pass = PassInfo::recache(self.chunk, start, n, queries_only);
        let (model, be, cache, text, hook) = self.parts();
        model.forward(be, &x, 0.0, &pass, cache, text, hook, None)?;
        self.be.status()?;
        if let Some(d) = self.hook.dummy() {
            d.repack(&*self.be, &mut self.cache)?;
        }
        self.recaches += 1;
        Ok(())
    }

    /// The window cache before a LongLive recache pass: every layer's slots are emptied
    /// (the official `global_sink: false` zero-fills them), or only the ring when `keep_sink`.
    fn reset_window_for_recache(&mut self, keep_sink: bool) -> Result<()> {
        let heads: Vec<usize> = (0..self.model.cfg.num_heads).collect();
        for l in 0..self.cache.layers.len() {
            let g = &self.cache.layers[l].groups[0];
            let sink_frames = if keep_sink { g.sink_frames() } else { Vec::new() };
            let spec = GroupSpec {
                heads: heads.clone(),
                sink_cap: g.sink_cap,
                ring_cap: g.ring_cap,
                sink_frames,
                ring_frames: Vec::new(),
            };
            self.cache.replace_groups(&*self.be, l, std::slice::from_ref(&spec))?;
        }
        Ok(())
    }

    /// Whether [`Session::switch_prompt`] may run now (its checks, which change nothing): a
    /// switch after the first chunk needs the `window` or `dummy` policy on a chunk-wise
    /// pipeline, and under `dummy` a chunk after the calibration chunk. An error past these
    /// checks leaves the session mid-switch.
    pub fn check_switch(&self) -> Result<()> {
        if self.frames_done() == 0 {
            return Ok(());
        }
        let admitted = self.rolling.is_none() && matches!(self.policy, Policy::Window { .. } | Policy::Dummy(_));
        if !admitted {
            return Err(Error::Policy(format!(
                "prompt switches with KV recache are implemented for the window (LongLive) and dummy policies on the chunk-wise pipelines, not for `{}` / {}",
                self.policy.name(),
                self.spec.pipeline.name()
            )));
        }
        if let Some(d) = self.hook.dummy() {
            if d.program().is_none() {
                return Err(Error::Policy(format!(
                    "a prompt switch needs the head groups, which are calibrated at AR step {}; switch at a later chunk",
                    d.spec.ar_start
                )));
            }
        }
        Ok(())
    }

    /// Prompt switches done so far ([`Session::switch_prompt`]).
    pub fn recaches(&self) -> usize {
        self.recaches
    }
}
