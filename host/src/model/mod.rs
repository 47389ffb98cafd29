//! The Wan2.1 causal DiT (Self-Forcing's `CausalWanModel`, inference path), written once
//! against [`Backend`] ops.
//!
//! [`Model::load`] uploads a checkpoint's weights ([`ModelWeights`]) to a backend;
//! [`Model::embed_text`] runs the text embedding once per session; [`Model::forward`] runs one
//! pass of a chunk (patchify, the blocks with self-attention over the KV cache and
//! cross-attention to the text, the head, unpatchify). A [`ForwardHook`] sees every layer's
//! self-attention inputs: that is how Dummy Forcing calibrates. Sessions
//! ([`crate::pipeline::Session`]) drive it; see the crate-level quick start.

use std::collections::BTreeMap;

use crate::backend::{Backend, Seg};
use crate::cache::{Fresh, KvCache};
use crate::checkpoint::TensorFile;
use crate::{Error, ModelConfig, Result};

/// Recorded intermediates (host f32), keyed like the golden outputs (`hidden.0`, `e0`, ...).
pub type Taps = BTreeMap<String, Vec<f32>>;

pub struct Linear<T> {
    pub w: T,
    pub b: T,
}

pub struct Block<T> {
    /// `[6, dim]`
    pub modulation: T,
    pub q: Linear<T>,
    pub k: Linear<T>,
    pub v: Linear<T>,
    pub o: Linear<T>,
    pub norm_q: Option<T>,
    pub norm_k: Option<T>,
    /// norm3 (weight, bias) when `cross_attn_norm`.
    pub norm3: Option<(T, T)>,
    pub cq: Linear<T>,
    pub ck: Linear<T>,
    pub cv: Linear<T>,
    pub co: Linear<T>,
    pub cnorm_q: Option<T>,
    pub cnorm_k: Option<T>,
    pub ffn0: Linear<T>,
    pub ffn2: Linear<T>,
}

pub struct ModelWeights<T> {
    /// Conv3d weight flattened to `[dim, in_dim·pt·ph·pw]`.
    pub patch: Linear<T>,
    pub text0: Linear<T>,
    pub text2: Linear<T>,
    pub time0: Linear<T>,
    pub time2: Linear<T>,
    pub time_proj: Linear<T>,
    pub blocks: Vec<Block<T>>,
    /// `head.modulation` rows (shift, scale), each `[1, dim]`.
    pub head_mod: [T; 2],
    pub head: Linear<T>,
}

impl<T> ModelWeights<T> {
    /// Loads every tensor the config needs, by its official name, checking each shape; the
    /// storage precision is the backend's (bf16 rounds f32 weights, as `.to(bfloat16)` does).
    pub fn load<B: Backend<Tensor = T>>(be: &B, f: &TensorFile, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let (d, ffn, fd, td) = (cfg.dim, cfg.ffn_dim, cfg.freq_dim, cfg.text_dim);
        let t = |name: &str, shape: &[usize]| -> Result<T> { Ok(be.upload(&f.f32(name, shape)?, shape)) };
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear<T>> {
            Ok(Linear { w: t(&format!("{name}.weight"), &[out, inp])?, b: t(&format!("{name}.bias"), &[out])? })
        };
        let [pt, ph, pw] = cfg.patch_size;
        let pfeat = cfg.in_dim * pt * ph * pw;
        let patch = Linear {
            w: be.upload(&f.f32("patch_embedding.weight", &[d, cfg.in_dim, pt, ph, pw])?, &[d, pfeat]),
            b: t("patch_embedding.bias", &[d])?,
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("blocks.{i}");
            let norm = |n: &str| -> Result<Option<T>> {
                if cfg.qk_norm {
                    Ok(Some(t(&format!("{p}.{n}.weight"), &[d])?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                modulation: be.upload(&f.f32(&format!("{p}.modulation"), &[1, 6, d])?, &[6, d]),
                q: lin(&format!("{p}.self_attn.q"), d, d)?,
                k: lin(&format!("{p}.self_attn.k"), d, d)?,
                v: lin(&format!("{p}.self_attn.v"), d, d)?,
                o: lin(&format!("{p}.self_attn.o"), d, d)?,
                norm_q: norm("self_attn.norm_q")?,
                norm_k: norm("self_attn.norm_k")?,
                norm3: if cfg.cross_attn_norm {
                    Some((t(&format!("{p}.norm3.weight"), &[d])?, t(&format!("{p}.norm3.bias"), &[d])?))
                } else {
                    None
                },
                cq: lin(&format!("{p}.cross_attn.q"), d, d)?,
                ck: lin(&format!("{p}.cross_attn.k"), d, d)?,
                cv: lin(&format!("{p}.cross_attn.v"), d, d)?,
                co: lin(&format!("{p}.cross_attn.o"), d, d)?,
                cnorm_q: norm("cross_attn.norm_q")?,
                cnorm_k: norm("cross_attn.norm_k")?,
                ffn0: lin(&format!("{p}.ffn.0"), ffn, d)?,
                ffn2: lin(&format!("{p}.ffn.2"), d, ffn)?,
            });
        }
        let hm = f.f32("head.modulation", &[1, 2, d])?;
        Ok(ModelWeights {
            patch,
            text0: lin("text_embedding.0", d, td)?,
            text2: lin("text_embedding.2", d, d)?,
            time0: lin("time_embedding.0", d, fd)?,
            time2: lin("time_embedding.2", d, d)?,
            time_proj: lin("time_projection.1", 6 * d, d)?,
            blocks,
            head_mod: [be.upload(&hm[..d], &[1, d]), be.upload(&hm[d..], &[1, d])],
            head: lin("head.head", cfg.patch_features(), d)?,
        })
    }
}

/// The per-prompt text state: the embedded context and each block's cross-attention K/V
/// (computed once per prompt, as the official `crossattn_cache`).
pub struct TextState<T> {
    pub embedded: T,
    pub kv: Vec<(T, T)>,
}

/// A pass's time embedding ([`Model::time_embedding`]): `e [frames, dim]` (the head's
/// modulation input) and `e0 [frames, 6·dim]` (the blocks' modulation rows).
pub struct TimeEmbedding<T> {
    pub e: T,
    pub e0: T,
}

/// The two kinds of forward of the official loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    /// Denoising step `step` (0..steps) of a chunk: reads the cache, writes nothing.
    Denoise { step: usize },
    /// The t = 0 clean pass: the only pass that writes the chunk into the cache.
    Clean,
}

/// What one forward is: which chunk, which kind of pass, and which frames it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassInfo {
    pub chunk: usize,
    pub kind: PassKind,
    pub start_frame: usize,
    pub frames: usize,
    /// Leading frames of the pass that are queries only: their K/V are neither attended nor
    /// committed (LongLive's recache with a kept sink, see [`PassInfo::recache`]). 0 otherwise.
    pub queries_only: usize,
}

impl PassInfo {
    /// Denoising step `step` of `chunk`, over `frames` frames from `start_frame`.
    pub fn denoise(chunk: usize, step: usize, start_frame: usize, frames: usize) -> Self {
        PassInfo { chunk, kind: PassKind::Denoise { step }, start_frame, frames, queries_only: 0 }
    }
    /// The clean pass of `chunk`.
    pub fn clean(chunk: usize, start_frame: usize, frames: usize) -> Self {
        PassInfo { chunk, kind: PassKind::Clean, start_frame, frames, queries_only: 0 }
    }
    /// A prompt switch's recache pass: a clean pass over earlier frames whose first
    /// `queries_only` frames attend but leave no K/V (official LongLive `_recache_after_switch`
    /// with `global_sink: true`: the sink slots are protected, so the window's first
    /// `sink_size` frames are computed as queries and their keys discarded).
    pub fn recache(chunk: usize, start_frame: usize, frames: usize, queries_only: usize) -> Self {
        PassInfo { chunk, kind: PassKind::Clean, start_frame, frames, queries_only: queries_only.min(frames) }
    }
    /// The denoising step, or None for the clean pass.
    pub fn step(&self) -> Option<usize> {
        match self.kind {
            PassKind::Denoise { step } => Some(step),
            PassKind::Clean => None,
        }
    }
    /// Whether this pass writes the cache (the clean pass).
    pub fn commits(&self) -> bool {
        self.kind == PassKind::Clean
    }
}

/// Hook points for cache policies that need to look inside a forward (Dummy Forcing's
/// calibration) or change the cache between forwards (its regrouping). All default to no-ops.
pub trait ForwardHook<B: Backend> {
    /// Whether `on_self_attention` should be called in this pass (it costs nothing otherwise).
    fn wants_attention(&self, _pass: &PassInfo) -> bool {
        false
    }
    /// Called in every layer's self-attention, before the attention and before the commit, with
    /// the post-RoPE queries `q [T, heads·d]` and each head's full context (cache slots, then the
    /// current chunk frame by frame; each segment names its absolute frame).
    fn on_self_attention(
        &mut self,
        _be: &B,
        _pass: &PassInfo,
        _layer: usize,
        _q: &B::Tensor,
        _head_dim: usize,
        _ctx: &[Vec<Seg<'_, B::Tensor>>],
    ) -> Result<()> {
        Ok(())
    }
    /// Called after each forward (after the last block's commit in a clean pass).
    fn after_forward(&mut self, _be: &B, _pass: &PassInfo, _cache: &mut KvCache<B::Tensor>) -> Result<()> {
        Ok(())
    }
}

/// What a forward does with the TeaCache residual ([`Model::forward_teacache`]).
pub enum Residual<'a, T> {
    /// Run the blocks (no TeaCache).
    Off,
    /// Run the blocks and return their residual.
    Record,
    /// Skip the blocks and add this residual to the patch embedding.
    Reuse(&'a T),
}

/// A hook that does nothing (policies `full` and `window`).
pub struct NoHook;
impl<B: Backend> ForwardHook<B> for NoHook {}

/// Elements of the live intermediates of one forward at its peak, for a chunk of 3 frames
/// of `tokens_per_frame` tokens each (`T` tokens in all): at a block's FFN, [`Model::block`]
/// still holds about twenty `[T, dim]` tensors (the caller's residual, the normed inputs,
/// q/k/v before and after norm and RoPE, attention outputs and projections, the
/// cross-attention's q) plus the FFN's two `[T, ffn_dim]`, and the patch features in and
/// out; per frame, the time embedding and its modulation (14·dim + freq_dim) and the patch
/// embedding's input. The text embedding's own peak (`[text_len, text_dim + 3·dim]`) is
/// the floor. The memory plan of a GPU run reserves this (crate::run::MemoryPlan).
pub fn forward_scratch(cfg: &ModelConfig, tokens_per_frame: usize) -> usize {
    let f = crate::config::FRAMES_PER_CHUNK;
    let [_, ph, pw] = cfg.patch_size;
    let (d, ffn) = (cfg.dim, cfg.ffn_dim);
    let t = f * tokens_per_frame;
    let pf = cfg.patch_features().max(cfg.in_dim * ph * pw);
    let per_forward = t * (20 * d + 2 * ffn + 2 * pf) + f * (14 * d + cfg.freq_dim + 2 * cfg.in_dim * ph * pw);
    let text_embed = cfg.text_len * (cfg.text_dim + 3 * d);
    per_forward.max(text_embed)
}

/// Elements of the per-prompt [`TextState`]: the embedded context `[text_len, dim]` and every
/// block's cross-attention K and V.
pub fn text_state_elems(cfg: &ModelConfig) -> usize {
    cfg.text_len * cfg.dim * (1 + 2 * cfg.num_layers)
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub w: ModelWeights<B::Tensor>,
}

impl<B: Backend> Model<B> {
    pub fn load(be: &B, f: &TensorFile, cfg: &ModelConfig) -> Result<Self> {
        Ok(Model { cfg: cfg.clone(), w: ModelWeights::load(be, f, cfg)? })
    }

    /// Embeds a context `[rows, text_dim]` (zero padded to `text_len`, not masked) and computes
    /// every block's cross-attention K/V.
    pub fn embed_text(&self, be: &B, context: &[f32], rows: usize) -> Result<TextState<B::Tensor>> {
        let c = &self.cfg;
        if context.len() != rows * c.text_dim {
            return Err(Error::Input(format!(
                "context has {} values, expected {rows} rows × text_dim {}",
                context.len(),
                c.text_dim
            )));
        }
        if rows > c.text_len {
            return Err(Error::Input(format!(
                "context has {rows} rows, more than the model's text_len {}",
                c.text_len
            )));
        }
        let mut padded = context.to_vec();
        padded.resize(c.text_len * c.text_dim, 0.0);
        let x = be.upload(&padded, &[c.text_len, c.text_dim]);
        let w = &self.w;
        let h = be.linear_gelu(&x, &w.text0.w, Some(&w.text0.b));
        let embedded = be.linear(&h, &w.text2.w, Some(&w.text2.b));
        let kv = w
            .blocks
            .iter()
            .map(|b| {
                let mut k = be.linear(&embedded, &b.ck.w, Some(&b.ck.b));
                if let Some(n) = &b.cnorm_k {
                    k = be.rms_norm(&k, n, c.eps);
                }
                let v = be.linear(&embedded, &b.cv.w, Some(&b.cv.b));
                (k, v)
            })
            .collect();
        Ok(TextState { embedded, kv })
    }

    /// One forward of a chunk `x [frames, in_dim, H, W]` at timestep `t` (same for every frame).
    /// Returns the flow prediction `[frames, out_dim, H, W]`. This is
    /// [`Model::time_embedding`], [`Model::forward_embedded`], then the hook's `after_forward`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        x: &B::Tensor,
        t: f32,
        pass: &PassInfo,
        cache: &mut KvCache<B::Tensor>,
        text: &TextState<B::Tensor>,
        hook: &mut dyn ForwardHook<B>,
        mut taps: Option<&mut Taps>,
    ) -> Result<B::Tensor> {
        let nf = be.shape(x).first().copied().unwrap_or(0);
        let temb = self.time_embedding(be, t, nf, taps.as_deref_mut());
        let flow = self.forward_embedded(be, x, &temb, pass, cache, text, hook, taps)?;
        let _rp = crate::profile::range("dit.after_forward");
        hook.after_forward(be, pass, cache)?;
        Ok(flow)
    }

    /// The time embedding of a pass at timestep `t` for `frames` frames: per-frame sinusoid →
    /// MLP (`e`) → 6 modulation rows per frame (`e0`). It is the only part of a forward that
    /// depends on the timestep, so a recorded graph of [`Model::forward_embedded`] serves
    /// every denoising step of a chunk with the new embedding copied into its inputs.
    pub fn time_embedding(&self, be: &B, t: f32, frames: usize, taps: Option<&mut Taps>) -> TimeEmbedding<B::Tensor> {
        self.time_embedding_frames(be, &vec![t; frames], taps)
    }

    /// [`Model::time_embedding`] with one timestep per frame (Rolling Forcing's windows).
    pub fn time_embedding_frames(&self, be: &B, ts: &[f32], mut taps: Option<&mut Taps>) -> TimeEmbedding<B::Tensor> {
        let (c, w) = (&self.cfg, &self.w);
        let _r = crate::profile::range("dit.time_embedding");
        let sin = be.sinusoid(ts, c.freq_dim);
        tap(be, &mut taps, "time_sinusoid", &sin);
        let e = be.linear(&be.silu(&be.linear(&sin, &w.time0.w, Some(&w.time0.b))), &w.time2.w, Some(&w.time2.b));
        tap(be, &mut taps, "e", &e);
        let e0 = be.linear(&be.silu(&e), &w.time_proj.w, Some(&w.time_proj.b));
        tap(be, &mut taps, "e0", &e0);
        TimeEmbedding { e, e0 }
    }

    /// The rest of a forward, given the time embedding: patch embedding, the blocks, the head.
    /// It neither downloads nor synchronises unless taps are recorded or the hook wants the
    /// attention inputs, and it does not call the hook's `after_forward`; so it can be
    /// recorded into a graph ([`Backend::capture_graph`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_embedded(
        &self,
        be: &B,
        x: &B::Tensor,
        temb: &TimeEmbedding<B::Tensor>,
        pass: &PassInfo,
        cache: &mut KvCache<B::Tensor>,
        text: &TextState<B::Tensor>,
        hook: &mut dyn ForwardHook<B>,
        taps: Option<&mut Taps>,
    ) -> Result<B::Tensor> {
        Ok(self.forward_teacache(be, x, temb, pass, cache, text, hook, taps, Residual::Off)?.0)
    }

    /// [`Model::forward_embedded`] under TeaCache: with [`Residual::Record`] it also returns
    /// the blocks' residual (`h` after the last block − `h` after the patch embedding); with
    /// [`Residual::Reuse`] the blocks are skipped (no attention, no cache access) and the given
    /// residual is added to the patch embedding instead. The head runs either way.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_teacache(
        &self,
        be: &B,
        x: &B::Tensor,
        temb: &TimeEmbedding<B::Tensor>,
        pass: &PassInfo,
        cache: &mut KvCache<B::Tensor>,
        text: &TextState<B::Tensor>,
        hook: &mut dyn ForwardHook<B>,
        mut taps: Option<&mut Taps>,
        residual: Residual<'_, B::Tensor>,
    ) -> Result<(B::Tensor, Option<B::Tensor>)> {
        let c = &self.cfg;
        let w = &self.w;
        let xs = be.shape(x).to_vec();
        let [pt, ph, pw] = c.patch_size;
        if xs.len() != 4 || xs[1] != c.in_dim || xs[2] % ph != 0 || xs[3] % pw != 0 || xs[0] % pt != 0 {
            return Err(Error::Input(format!(
                "chunk has shape {xs:?}, expected [frames, {}, H, W] with H, W multiples of the patch",
                c.in_dim
            )));
        }
        let nf = xs[0];
        if be.shape(&temb.e).first() != Some(&nf) {
            return Err(Error::Input(format!(
                "time embedding for {:?} frames, the chunk has {nf}",
                be.shape(&temb.e).first()
            )));
        }
        let grid = [nf, xs[2] / ph, xs[3] / pw];
        let tpf = grid[1] * grid[2];
        if cache.tokens_per_frame != tpf {
            return Err(Error::Input(format!(
                "chunk has {tpf} tokens per frame, the cache was built for {}",
                cache.tokens_per_frame
            )));
        }
        let eps = c.eps;
        let _r = crate::profile::range("dit.forward");

        // Patch embedding (Conv3d k = stride = patch) as a GEMM over patches.
        let mut h = be.linear(&be.patchify(x, c.patch_size), &w.patch.w, Some(&w.patch.b));
        tap(be, &mut taps, "patch_embedded", &h);
        tap(be, &mut taps, "context_embedded", &text.embedded);

        let mut kept = None;
        match residual {
            Residual::Reuse(r) => h = be.add(&h, r),
            Residual::Off | Residual::Record => {
                let h0 = matches!(residual, Residual::Record).then(|| h_clone(be, &h));
                for l in 0..w.blocks.len() {
                    h = self.block(be, l, &h, &temb.e0, grid, pass, cache, text, hook, taps.as_deref_mut())?;
                }
                if let Some(h0) = h0 {
                    // h − h0 as h + h0·(−1): exact, and an op every backend has.
                    let minus = be.upload(&vec![-1.0; nf * c.dim], &[nf, c.dim]);
                    kept = Some(be.gated_residual(&h, &h0, &minus, tpf));
                }
            }
        }

        // Head: its 2-row modulation uses e (not e0).
        let rh = crate::profile::range("dit.head");
        let shift = be.modulation(&w.head_mod[0], &temb.e, 1).pop().unwrap();
        let scale = be.modulation(&w.head_mod[1], &temb.e, 1).pop().unwrap();
        let out = be.linear(&be.norm_modulate(&h, eps, &shift, &scale, tpf), &w.head.w, Some(&w.head.b));
        let flow = be.unpatchify(&out, grid, c.patch_size, c.out_dim);
        drop(rh);
        Ok((flow, kept))
    }
    /// Block `l` on the residual stream `h [T, dim]` with the chunk's time projection `e0`.
    #[allow(clippy::too_many_arguments)]
    pub fn block(
        &self,
        be: &B,
        l: usize,
        h: &B::Tensor,
        e0: &B::Tensor,
        grid: [usize; 3],
        pass: &PassInfo,
        cache: &mut KvCache<B::Tensor>,
        text: &TextState<B::Tensor>,
        hook: &mut dyn ForwardHook<B>,
        mut taps: Option<&mut Taps>,
    ) -> Result<B::Tensor> {
        let c = &self.cfg;
        let b = &self.w.blocks[l];
        let _r = crate::nvtx_range!("dit.block{l:02}");
        let (heads, hd, eps) = (c.num_heads, c.head_dim(), c.eps);
        let tpf = grid[1] * grid[2];
        let m = be.modulation(&b.modulation, e0, 6);

        // Self-attention over the cache plus the current chunk.
        let ra = crate::nvtx_range!("dit.block{l:02}.self_attn");
        let xn = be.norm_modulate(h, eps, &m[0], &m[1], tpf);
        let q = be.linear(&xn, &b.q.w, Some(&b.q.b));
        let k = be.linear(&xn, &b.k.w, Some(&b.k.b));
        let v = be.linear(&xn, &b.v.w, Some(&b.v.b));
        // Rolling Forcing also keeps K before RoPE (its anchor is stored un-roped).
        let mut k_plain = None;
        let (q, k) = match (&b.norm_q, &b.norm_k) {
            (Some(nq), Some(nk)) if cache.rolling.is_some() => {
                let kn = be.rms_norm(&k, nk, eps);
                let k = be.rope(&kn, heads, grid, pass.start_frame);
                k_plain = Some(kn);
                (be.rope(&be.rms_norm(&q, nq, eps), heads, grid, pass.start_frame), k)
            }
            (Some(nq), Some(nk)) => be.qk_norm_rope(&q, &k, nq, nk, eps, heads, grid, pass.start_frame),
            _ => (be.rope(&q, heads, grid, pass.start_frame), be.rope(&k, heads, grid, pass.start_frame)),
        };
        if l == 0 {
            tap(be, &mut taps, "l0.q_roped", &q);
            tap(be, &mut taps, "l0.k_roped", &k);
        }
        let fresh =
            Fresh { k: &k, v: &v, start_frame: pass.start_frame, frames: grid[0], keys_from: pass.queries_only };
        if let Some(r) = cache.rolling.as_mut() {
            // Rolling Forcing writes the call's first block before attending.
            let kp = match &k_plain {
                Some(kp) => kp,
                None => {
                    return Err(Error::Config(
                        "Rolling Forcing needs qk_norm (its anchor is stored after the norm, before RoPE)".into(),
                    ))
                }
            };
            r.write(be, l, &fresh, kp, heads, [1, grid[1], grid[2]], pass.commits())?;
        }
        let a = {
            let ctx = cache.context(l, &fresh);
            if hook.wants_attention(pass) {
                hook.on_self_attention(be, pass, l, &q, hd, &ctx)?;
            }
            let _r = crate::nvtx_range!("dit.block{l:02}.self_attn.attention");
            be.attention(&q, hd, &ctx)
        };
        if l == 0 {
            tap(be, &mut taps, "l0.attn_out", &a);
        }
        if pass.commits() {
            let _r = crate::nvtx_range!("dit.block{l:02}.kv_commit");
            cache.commit(be, l, &fresh);
        }
        let y = be.linear(&a, &b.o.w, Some(&b.o.b));
        let mut h = be.gated_residual(h, &y, &m[2], tpf);
        drop(ra);

        // Cross-attention over the per-prompt K/V (no RoPE, no mask).
        let rc = crate::nvtx_range!("dit.block{l:02}.cross_attn");
        let hn = match &b.norm3 {
            Some((nw, nb)) => be.layer_norm(&h, eps, Some((nw, nb))),
            None => h_clone(be, &h),
        };
        let mut cq = be.linear(&hn, &b.cq.w, Some(&b.cq.b));
        if let Some(n) = &b.cnorm_q {
            cq = be.rms_norm(&cq, n, eps);
        }
        let (ck, cv) = &text.kv[l];
        let rows = be.shape(ck)[0];
        let cctx: Vec<Vec<Seg<'_, B::Tensor>>> = (0..heads)
            .map(|hh| vec![Seg { k: ck, v: cv, offset: hh * hd, rows, stride: heads * hd, frame: None }])
            .collect();
        let ca = be.attention(&cq, hd, &cctx);
        h = be.add(&h, &be.linear(&ca, &b.co.w, Some(&b.co.b)));
        drop(rc);

        // FFN.
        let _rf = crate::nvtx_range!("dit.block{l:02}.ffn");
        let xn = be.norm_modulate(&h, eps, &m[3], &m[4], tpf);
        let y = be.linear(&be.linear_gelu(&xn, &b.ffn0.w, Some(&b.ffn0.b)), &b.ffn2.w, Some(&b.ffn2.b));
        h = be.gated_residual(&h, &y, &m[5], tpf);
        tap(be, &mut taps, &format!("hidden.{l}"), &h);
        Ok(h)
    }
}

/// Records `t` under `name` when taps are being collected.
fn tap<B: Backend>(be: &B, taps: &mut Option<&mut Taps>, name: &str, t: &B::Tensor) {
    if let Some(m) = taps.as_deref_mut() {
        m.insert(name.to_string(), be.download(t));
    }
}

/// A copy of a tensor through the backend (used only when norm3 is the identity).
fn h_clone<B: Backend>(be: &B, h: &B::Tensor) -> B::Tensor {
    let s = be.shape(h).to_vec();
    let mut out = be.zeros(&s);
    let cols = *s.last().unwrap();
    let rows = s.iter().product::<usize>() / cols;
    be.copy_rows(&mut out, 0, h, 0, cols, rows, cols);
    out
}
