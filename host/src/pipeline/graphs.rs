//! Graph lifetimes: which of a chunk's passes replay recorded graphs, the graphs themselves,
//! and when they are recorded (the next chunk's denoising forward while the device runs this
//! chunk's clean pass; the clean pass while it runs the last denoising step) and dropped.
//! [`Session::run_pass`] is the only user; the loop itself never sees a graph.

use super::*;

/// Whether a session's forwards run as recorded graphs (`--graphs on|off`): recorded once per
/// chunk and replayed, or launched op by op. Same latents either way; only backends that
/// support graphs record them ([`Session::set_graphs`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Graphs {
    #[default]
    On,
    Off,
}

/// Which passes of a chunk run as recorded graphs.
#[derive(Clone, Copy, Debug)]
pub(super) struct GraphPasses {
    /// The denoising forwards (one graph, replayed at every step).
    pub(super) denoise: bool,
    /// The clean pass that commits the chunk to the cache.
    pub(super) clean: bool,
}

/// One forward recorded as a graph: its input tensors (the chunk, and the time embedding),
/// overwritten before each replay, its output, and the graph, dropped with it.
pub(super) struct Recorded<B: Backend> {
    pub(super) be: Arc<B>,
    pub(super) id: usize,
    /// The pass it was recorded for (a replay serves this chunk's passes of the same kind).
    pub(super) pass: PassInfo,
    pub(super) x: B::Tensor,
    /// The time embedding in its inputs, and the timestep it is for.
    pub(super) temb: TimeEmbedding<B::Tensor>,
    pub(super) t: f32,
    pub(super) out: B::Tensor,
}

impl<B: Backend> Drop for Recorded<B> {
    fn drop(&mut self) {
        // Before the tensors (fields drop after this): the graph may write them at a replay.
        let _ = self.be.drop_graph(self.id);
    }
}

/// Overwrites `dst` with `src` (same shape) on the device.
pub(super) fn overwrite<B: Backend>(be: &B, dst: &mut B::Tensor, src: &B::Tensor) {
    let s = be.shape(src);
    let cols = s.last().copied().unwrap_or(1).max(1);
    let rows = s.iter().product::<usize>() / cols;
    be.copy_rows(dst, 0, src, 0, cols, rows, cols);
}

impl<B: Backend + 'static> Session<B> {
    /// Whether chunk `c`'s (denoising forwards, clean pass) run as graphs: graphs on, no taps
    /// recorded, and the hook does not look inside the pass (Dummy Forcing's calibration).
    pub(super) fn graph_passes(&self, c: usize) -> GraphPasses {
        let nf = FRAMES_PER_CHUNK;
        if !self.graphs || self.record.is_some() {
            return GraphPasses { denoise: false, clean: false };
        }
        let hook = self.hook_ref();
        let denoise =
            !(0..self.schedule.steps.len()).any(|s| hook.wants_attention(&PassInfo::denoise(c, s, c * nf, nf)));
        GraphPasses { denoise, clean: denoise && !hook.wants_attention(&PassInfo::clean(c, c * nf, nf)) }
    }

    /// Records the forward of `pass` (its host logic runs now, including a clean pass's cache
    /// bookkeeping; its device work runs at each replay) with fresh input tensors; the time
    /// embedding at `t` is computed now and stays for replays that pass no new timestep.
    pub(super) fn record_forward(&mut self, pass: &PassInfo, t: f32) -> Result<Recorded<B>> {
        let be = self.be.clone();
        let lat = self.latent;
        let x = be.zeros(&[pass.frames, lat.channels, lat.height, lat.width]);
        let temb = self.model.time_embedding(&be, t, pass.frames, None);
        let (model, _, cache, text, hook) = self.parts();
        let (out, id) = be.capture_graph(&mut |be| {
            model.forward_embedded(be, &x, &temb, pass, &mut *cache, text, &mut *hook, None)
        })?;
        Ok(Recorded { be: be.clone(), id, pass: *pass, x, temb, t, out })
    }

    /// Writes a replay's inputs (the latents, and the time embedding at `t` when given and not
    /// already there) and queues the graph.
    pub(super) fn replay(&self, g: &mut Recorded<B>, x: &[f32], t: Option<f32>) -> Result<()> {
        let be = &*self.be;
        be.write(&mut g.x, x);
        if let Some(t) = t.filter(|&t| t != g.t) {
            let temb = self.model.time_embedding(be, t, g.pass.frames, None);
            overwrite(be, &mut g.temb.e, &temb.e);
            overwrite(be, &mut g.temb.e0, &temb.e0);
            g.t = t;
        }
        be.replay_graph(g.id)
    }

    /// Decides which of chunk `c`'s passes replay graphs, keeping the denoising graph
    /// recorded for it at the end of the previous chunk only if it serves.
    pub(super) fn begin_chunk_graphs(&mut self, c: usize) {
        self.chunk_graphs = self.graph_passes(c);
        if !(self.chunk_graphs.denoise && self.denoise_graph.as_ref().is_some_and(|g| g.pass.chunk == c)) {
            self.denoise_graph = None;
        }
        self.clean_graph = None;
    }

    /// After a chunk: records the next chunk's denoising forward (at its first timestep `t`)
    /// while the device runs this chunk's clean pass.
    pub(super) fn end_chunk_graphs(&mut self, t: f32) -> Result<()> {
        let c = self.chunk;
        if !self.done() && self.graph_passes(c).denoise {
            let nf = FRAMES_PER_CHUNK;
            self.denoise_graph = Some(self.record_forward(&PassInfo::denoise(c, 0, c * nf, nf), t)?);
        }
        Ok(())
    }
}
