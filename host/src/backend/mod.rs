//! The small set of ops the DiT graph is written against.
//!
//! The model (`crate::model`), the KV cache (`crate::cache`) and the pipeline only talk to a
//! [`Backend`]. The CPU backend ([`cpu::CpuBackend`]) is the reference; a GPU backend implements
//! the same trait with device buffers as its tensor type.
//!
//! Conventions:
//! - Activations are row-major 2-D `[rows, cols]`: tokens × features. A chunk's tokens are in
//!   (frame, h, w) order, so frame `f` owns rows `[f·tpf, (f+1)·tpf)` (`tpf` = tokens per frame).
//! - Per-frame modulation rows are `[frames, dim]` and broadcast over the rows of their frame.
//! - Storage precision is [`Precision`]: with `Bf16` every op result is rounded to bf16 at the
//!   same op boundaries the official PyTorch bf16 run rounds at; math and accumulation are f32
//!   (f64 where the official code uses f64: RoPE, the time sinusoid).
//!
//! The contract of an implementation:
//! - Ops are functions: they read their inputs and return a new tensor (only
//!   [`Backend::copy_rows`] writes in place). Results depend only on the inputs and the
//!   precision, so two runs of a session give the same latents.
//! - Shapes are checked by the caller; an op may panic on inconsistent shapes (a bug in the
//!   model code, never a user error, which the model reports as [`crate::Error`] first).
//! - Every op's result is rounded to [`Backend::precision`] once, at the point the official
//!   PyTorch op rounds; the doc of each op says where. A backend is tested against the CPU
//!   reference op by op.
//!
//! One op on the CPU reference backend:
//!
//! ```
//! use dfrt::backend::{cpu::CpuBackend, Backend, Precision};
//!
//! let be = CpuBackend::new(Precision::F32);
//! // Two rows of RMSNorm with a learned weight: x / sqrt(mean(x²) + eps) · w.
//! let x = be.upload(&[3.0, -4.0, 0.5, 1.5, 2.0, -1.0], &[2, 3]);
//! let w = be.upload(&[1.0, 0.5, 2.0], &[3]);
//! let y = be.download(&be.rms_norm(&x, &w, 1e-6));
//! assert_eq!(be.shape(&x), &[2, 3]);
//! let rms0 = ((9.0 + 16.0 + 0.25) / 3.0 + 1e-6f64).sqrt();
//! assert!((y[1] as f64 - (-4.0 / rms0 * 0.5)).abs() < 1e-6, "{y:?}");
//! assert!(y.iter().all(|v| v.is_finite()));
//!
//! // In bf16 storage every value a tensor holds is a bf16 value.
//! let be16 = CpuBackend::new(Precision::Bf16);
//! let t = be16.download(&be16.upload(&[1.0 + 1.0 / 512.0, 0.1], &[2]));
//! assert_eq!(t, vec![1.0, 0.10009765625]);
//! ```

pub mod biased;
pub mod cpu;
pub mod gpu;

/// The scalar GELU (tanh form) every backend's epilogue computes, in f32.
pub use cpu::math::gelu_tanh_f32;

use crate::Result;

/// Storage precision of weights, activations and the KV cache.
/// A GPU backend's memory counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    /// Device allocations made so far (the "no allocation in the chunk loop" rule).
    pub allocations: u64,
    /// Bytes of the device heap live now, at their peak, and reserved in all.
    pub heap_live: usize,
    pub heap_peak: usize,
    pub heap_capacity: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::parse(s)
    }
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(crate::Error::Input(format!("unknown dtype `{s}` (expected f32 or bf16)"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

/// One contiguous run of K/V rows for one head: rows `r` of the segment live at
/// `offset + r·stride .. + head_dim` in both `k` and `v`. A head's attention context is a
/// list of segments (cache slots, then the current chunk), which is exactly the per-head
/// segment table a GPU kernel reads.
pub struct Seg<'a, T> {
    pub k: &'a T,
    pub v: &'a T,
    pub offset: usize,
    pub rows: usize,
    pub stride: usize,
    /// Absolute latent frame the rows belong to (None for rows without a frame, e.g. text).
    pub frame: Option<usize>,
}

impl<T> Clone for Seg<'_, T> {
    fn clone(&self) -> Self {
        Seg { k: self.k, v: self.v, offset: self.offset, rows: self.rows, stride: self.stride, frame: self.frame }
    }
}

/// The ops of the DiT. All shapes are checked by the caller (the model); ops may panic on
/// inconsistent shapes, which is a programming error, not a user error.
pub trait Backend {
    type Tensor: Send + Sync;

    fn name(&self) -> &'static str;
    fn precision(&self) -> Precision;
    /// The first error an op hit, for backends whose ops can fail at run time (a device fault,
    /// out of memory). Such a backend skips every op after the first failure; callers check
    /// this at synchronisation points (the pipeline does after every forward).
    fn status(&self) -> Result<()> {
        Ok(())
    }

    /// Device memory counters (GPU backends): what the benches and tests watch.
    fn device_stats(&self) -> Option<DeviceStats> {
        None
    }

    // --- graphs (optional; GPU backends) ---
    /// Whether [`Backend::capture_graph`] works on this backend. The pipeline then runs every
    /// forward as a recorded graph (a CUDA graph on CUDA; see `pipeline::Session::set_graphs`).
    fn supports_graphs(&self) -> bool {
        false
    }
    /// Records the device work `f` queues into a graph instead of running it; returns the
    /// tensor `f` returned (it holds the graph's output after each replay, not before) and
    /// the graph's id. Inside `f` nothing may download. Tensors `f` reads that were made
    /// before the capture are the graph's inputs: they must stay alive, and new values may
    /// be written into them ([`Backend::copy_rows`]) between replays.
    fn capture_graph(&self, f: &mut dyn FnMut(&Self) -> Result<Self::Tensor>) -> Result<(Self::Tensor, usize)> {
        let _ = f;
        Err(crate::Error::unsupported(format!("backend `{}` cannot record graphs", self.name())))
    }
    /// Runs a recorded graph once.
    fn replay_graph(&self, graph: usize) -> Result<()> {
        Err(crate::Error::invalid_op(format!("backend `{}` has no graph {graph}", self.name())))
    }
    /// Destroys a recorded graph and frees what it holds.
    fn drop_graph(&self, graph: usize) -> Result<()> {
        Err(crate::Error::invalid_op(format!("backend `{}` has no graph {graph}", self.name())))
    }

    // --- memory ---
    /// Uploads host f32 data, rounding to the storage precision.
    fn upload(&self, data: &[f32], shape: &[usize]) -> Self::Tensor;
    fn download(&self, t: &Self::Tensor) -> Vec<f32>;
    /// Overwrites `dst` with host f32 data of the same element count, rounding to the storage
    /// precision like [`Backend::upload`] (a recorded graph's input, refilled before each
    /// replay).
    fn write(&self, dst: &mut Self::Tensor, data: &[f32]);
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    /// A tensor filled with zeros.
    fn zeros(&self, shape: &[usize]) -> Self::Tensor;
    /// `dst[dst_off + r·cols + c] = src[src_off + r·src_stride + c]` for `r < rows, c < cols`:
    /// the copy behind cache commits (strided head rows → packed slot) and regrouping.
    /// The arguments are the kernel's own parameters, one for one.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        dst: &mut Self::Tensor,
        dst_off: usize,
        src: &Self::Tensor,
        src_off: usize,
        src_stride: usize,
        rows: usize,
        cols: usize,
    );

    /// The cache write of one frame for a head group: for each `(i, &h)` of `heads`, the
    /// `rows` rows of head `h` of `k` and `v` (row `r` at `src_off + r·src_stride + h·d`, `d`
    /// wide) go to rows `i·rows·d + r·d` of `dst_k` and `dst_v`. The default is
    /// [`Backend::copy_rows`] per head and tensor; the GPU backend does all in one launch.
    #[allow(clippy::too_many_arguments)]
    fn write_heads(
        &self,
        dst_k: &mut Self::Tensor,
        dst_v: &mut Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        src_off: usize,
        src_stride: usize,
        heads: &[usize],
        rows: usize,
        d: usize,
    ) {
        for (i, &h) in heads.iter().enumerate() {
            self.copy_rows(dst_k, i * rows * d, k, src_off + h * d, src_stride, rows, d);
            self.copy_rows(dst_v, i * rows * d, v, src_off + h * d, src_stride, rows, d);
        }
    }

    // --- dense ---
    /// `x [n, k] · wᵀ (w [m, k]) + b [m]` → `[n, m]`, f32 accumulation.
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, b: Option<&Self::Tensor>) -> Self::Tensor;

    /// `gelu_tanh(linear(x, w, b))`, the FFN's first layer. The default composes the two ops
    /// (two roundings to the storage type, as the official code); a backend may fuse the GELU
    /// into the GEMM's epilogue, rounding once (the GPU backend does in bf16, where that is
    /// cuBLASLt's GELU_BIAS epilogue: one pass over the FFN's widest activation fewer).
    fn linear_gelu(&self, x: &Self::Tensor, w: &Self::Tensor, b: Option<&Self::Tensor>) -> Self::Tensor {
        self.gelu_tanh(&self.linear(x, w, b))
    }

    // --- elementwise / norms ---
    /// LayerNorm over the last dim, eps, optional affine (weight, bias).
    fn layer_norm(&self, x: &Self::Tensor, eps: f32, affine: Option<(&Self::Tensor, &Self::Tensor)>) -> Self::Tensor;
    /// adaLN: `LN(x)·(1 + scale[f]) + shift[f]` with no-affine LN, for rows of frame `f`.
    fn norm_modulate(
        &self,
        x: &Self::Tensor,
        eps: f32,
        shift: &Self::Tensor,
        scale: &Self::Tensor,
        rows_per_frame: usize,
    ) -> Self::Tensor;
    /// RMSNorm over the full last dim with a learned weight: normalisation in f32, rounded to
    /// the storage dtype, then multiplied by the weight (the official order).
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor;
    fn gelu_tanh(&self, x: &Self::Tensor) -> Self::Tensor;
    fn silu(&self, x: &Self::Tensor) -> Self::Tensor;
    /// `x + y`.
    fn add(&self, x: &Self::Tensor, y: &Self::Tensor) -> Self::Tensor;
    /// Gated residual `x + y·gate[f]` for rows of frame `f`.
    fn gated_residual(
        &self,
        x: &Self::Tensor,
        y: &Self::Tensor,
        gate: &Self::Tensor,
        rows_per_frame: usize,
    ) -> Self::Tensor;
    /// Modulation rows: `table [k, dim]` + `e [frames, k·dim]` → k tensors `[frames, dim]`.
    fn modulation(&self, table: &Self::Tensor, e: &Self::Tensor, k: usize) -> Vec<Self::Tensor>;

    // --- position / time ---
    /// 3D RoPE on `x [f·h·w, heads·d]` (pairs `(2i, 2i+1)` as complex numbers), with the frame
    /// position `start_frame + local frame`; angles and the rotation in f64.
    fn rope(&self, x: &Self::Tensor, heads: usize, grid: [usize; 3], start_frame: usize) -> Self::Tensor;
    /// The self-attention prologue: `rope(rms_norm(q, wq, eps))` and the same for k, as one op
    /// so that a backend can fuse it (the GPU backend runs one `qk_norm_rope` kernel); the
    /// default composes the two ops, with their rounding points.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        wq: &Self::Tensor,
        wk: &Self::Tensor,
        eps: f32,
        heads: usize,
        grid: [usize; 3],
        start_frame: usize,
    ) -> (Self::Tensor, Self::Tensor) {
        let q = self.rope(&self.rms_norm(q, wq, eps), heads, grid, start_frame);
        let k = self.rope(&self.rms_norm(k, wk, eps), heads, grid, start_frame);
        (q, k)
    }
    /// Sinusoidal embedding `[cos | sin]` of each timestep, computed in f64, then stored.
    fn sinusoid(&self, t: &[f32], dim: usize) -> Self::Tensor;

    // --- layout ---
    /// Latent `[f, c, H, W]` → patches `[f·(H/ph)·(W/pw), c·ph·pw]` in (f, h, w) token order and
    /// (c, ph, pw) feature order, i.e. the Conv3d k = stride = (1, ph, pw) as a GEMM input.
    fn patchify(&self, x: &Self::Tensor, patch: [usize; 3]) -> Self::Tensor;
    /// Head output `[f·h·w, ph·pw·c]` (channel fastest) → latent `[f, c, h·ph, w·pw]`.
    fn unpatchify(&self, x: &Self::Tensor, grid: [usize; 3], patch: [usize; 3], channels: usize) -> Self::Tensor;

    // --- attention ---
    /// For each head `h`: `softmax(q_h·Kᵀ/√d)·V` over the concatenation of `ctx[h]`'s segments,
    /// unmasked. `q` is `[n, heads·d]`; the output has the same shape.
    fn attention(&self, q: &Self::Tensor, head_dim: usize, ctx: &[Vec<Seg<'_, Self::Tensor>>]) -> Self::Tensor;

    /// The umT5 encoder's attention: for each head `h`, `softmax(q_h·k_hᵀ + bias[h])·v_h` with
    /// **no** 1/√d scaling. `q` is `[n, heads·d]`, `k` and `v` `[lk, heads·d]`, `bias`
    /// `[heads, n, lk]` (the relative position bias, `f32::MIN` on masked keys). The default
    /// runs [`biased::attention_host`] on downloaded copies and uploads the result (exact, and
    /// the same on every backend); the GPU backend overrides it with `attn_bias_*`.
    #[allow(clippy::too_many_arguments)]
    fn attention_biased(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        head_dim: usize,
        bias: &Self::Tensor,
    ) -> Self::Tensor {
        let (n, lk) = (self.shape(q)[0], self.shape(k)[0]);
        let bf = self.precision() == Precision::Bf16;
        let out = biased::attention_host(
            &self.download(q),
            &self.download(k),
            &self.download(v),
            &self.download(bias),
            n,
            lk,
            heads,
            head_dim,
            bf,
        );
        self.upload(&out, &[n, heads * head_dim])
    }

    /// Dummy Forcing's calibration statistic on the device, where the backend has it: for
    /// each head `h` and each sampled query row `r` of `q [n, heads·d]`, the softmax of
    /// `q_r·kᵀ / √d` over the keys of `ctx[h]` (concatenated in order; every head has the same
    /// key count), summed over the key indices `[0, first_end)`, `[first_end, mid_end)` and
    /// `[mid_end, keys)`, then averaged over `rows`: `[3, heads]` row-major (the layout of
    /// `dummy::LayerScores`). `None`: not available here (the default, or a context this
    /// backend's kernel does not cover); the caller computes it on the host
    /// (`dummy::calibrate::layer_masses`, which this must match to about 1e-5).
    #[allow(clippy::too_many_arguments)]
    fn calibration_masses(
        &self,
        q: &Self::Tensor,
        head_dim: usize,
        ctx: &[Vec<Seg<'_, Self::Tensor>>],
        rows: &[usize],
        first_end: usize,
        mid_end: usize,
    ) -> Option<Result<Vec<f32>>> {
        let _ = (q, head_dim, ctx, rows, first_end, mid_end);
        None
    }
}
