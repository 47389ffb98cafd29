//! The kernel benchmark table: one entry per hot kernel (`dfrt_kernels::HOT_KERNELS`), each at
//! the shape the Wan2.1 1.3B model runs it with, and the napkin-math formula its throughput is
//! reported against. Shared by `benches/kernels.rs` and the coverage test in `tests/benches.rs`.
//!
//! Real shapes (`Shapes::full`): dim 1536, 12 heads × d 128, FFN 8960, 480p latent 60×104 →
//! 30×52 = 1560 tokens per frame, a chunk of 3 latent frames = T 4680 tokens. Attention
//! Lq 4680 against Lk 6240 (4 frames), 9360 (6) and 32760 (21, the whole `full` context at 21
//! frames); cross-attention Lk 512 text tokens. `Shapes::tiny` keeps the structure (head dim
//! 128, 3 frames) at a size the simulator runs in seconds.
//!
//! Bytes are the minimum a kernel must move (each input read once, each output written once;
//! small tables that stay in cache are left out where noted); FLOPs are FlashAttention's count.

#![allow(dead_code)]

use dfrt::backend::Precision;
use dfrt::gpu::{DevPtr, Device, Epilogue, Gemm};
use dfrt::pipeline::Rng;
use dfrt::{Error, Result};
use dfrt_kernels::attention::{
    attn_flops, segment_table, AttnBf16D128, AttnBf16D128W8, AttnBf16D64, AttnF32, AttnParams, KvSeg,
};
use dfrt_kernels::attn_bias::AttnBiasParams;
use dfrt_kernels::calib::{CalibMassParams, CalibMeanParams, CalibSeg};
use dfrt_kernels::elem::Bf16;
use dfrt_kernels::elementwise::{
    sinusoid_freqs, AddParams, GatedResidualParams, GeluParams, ModulationParams, SiluParams, SinusoidParams,
};
use dfrt_kernels::layout::{
    CopyRowsParams, HeadCopyJob, HeadCopyShape, KvCompactParams, KvWriteParams, PatchifyParams, UnpatchifyParams,
};
use dfrt_kernels::norm::{LayerNormModParams, LayerNormParams, RmsNormParams};
use dfrt_kernels::rope::{rope_table, QkNormRopeParams, RopeParams};
use dfrt_kernels::Launch;

mod cases;
use cases::*;

/// Storage type of a kernel variant (the test kit's dtype).
pub use dfrt_testkit::Dtype as Ty;

/// The model and chunk geometry the kernels run at.
#[derive(Clone, Debug)]
pub struct Shapes {
    pub name: &'static str,
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    /// Latent frames per chunk, latent height, latent width (patch 2×2 → tokens).
    pub frames: usize,
    pub lat_h: usize,
    pub lat_w: usize,
    pub in_dim: usize,
    pub freq_dim: usize,
    pub text_len: usize,
    /// Self-attention key counts (per head).
    pub attn_lk: Vec<usize>,
    /// Sampled query rows of the calibration statistic (`num_sampled_rows`: 520 at 480p).
    pub calib_rows: usize,
}

impl Shapes {
    /// Wan2.1 1.3B at 480p.
    pub fn full() -> Shapes {
        Shapes {
            name: "full",
            dim: 1536,
            heads: 12,
            head_dim: 128,
            ffn: 8960,
            frames: 3,
            lat_h: 60,
            lat_w: 104,
            in_dim: 16,
            freq_dim: 256,
            text_len: 512,
            attn_lk: vec![6240, 9360, 32760],
            calib_rows: 520,
        }
    }

    /// Wan2.1-T2V-14B (Krea RealTime-14B) at 480p: 40 heads of 128, dim 5120, ffn 13824.
    pub fn wan14b() -> Shapes {
        Shapes { name: "14b", dim: 5120, heads: 40, ffn: 13824, ..Shapes::full() }
    }

    /// The same structure at simulator size (2 heads of d 128, 4×4 tokens per frame).
    pub fn tiny() -> Shapes {
        Shapes {
            name: "tiny",
            dim: 256,
            heads: 2,
            head_dim: 128,
            ffn: 512,
            frames: 3,
            lat_h: 8,
            lat_w: 8,
            in_dim: 16,
            freq_dim: 256,
            text_len: 16,
            attn_lk: vec![64, 96],
            calib_rows: 8,
        }
    }

    /// Tokens per latent frame.
    pub fn tpf(&self) -> usize {
        (self.lat_h / 2) * (self.lat_w / 2)
    }
    /// Tokens of a chunk.
    pub fn tokens(&self) -> usize {
        self.frames * self.tpf()
    }
}

/// A built benchmark case: the launches (one params set per rotating copy) and the work.
pub struct Built<D: Device> {
    /// The entry point launched (`P::NAME`).
    pub name: &'static str,
    pub shape: String,
    /// Bytes moved (minimum), per launch.
    pub bytes: f64,
    /// FLOPs per launch, for compute-bound kernels.
    pub flops: Option<f64>,
    /// Launches copy `i % copies`.
    #[allow(clippy::type_complexity)]
    pub launch: Box<dyn Fn(&D, usize) -> Result<()>>,
}

/// One table entry: kernel, variant, formula, and how to build it.
pub struct Spec<D: Device> {
    pub kernel: &'static str,
    pub ty: Ty,
    /// A per-entry argument (the key count of an attention entry).
    pub arg: usize,
    pub formula: &'static str,
    pub build: fn(&mut Bench<'_, D>, Ty, usize) -> Result<Built<D>>,
}

/// Buffers of the case being built, on one device; everything is freed by [`Bench::free_all`].
pub struct Bench<'a, D: Device> {
    pub dev: &'a D,
    pub s: Shapes,
    /// Rotate over enough copies of a case's buffers that their total exceeds this many bytes
    /// (2.5× the 50 MB L2 of an H100/H200), so back-to-back launches do not read from L2 what
    /// the previous launch left there. 0 = one copy (the simulator).
    pub rotate_bytes: usize,
    allocs: Vec<DevPtr>,
    /// Every output buffer (pointer, elements, type): checked after the run, so a kernel that
    /// leaves part of its output unwritten (still the 0xff poison) fails the bench.
    outs: Vec<(DevPtr, usize, Ty)>,
    rng: Rng,
}

pub(crate) fn bf16_bits(x: f32) -> u16 {
    // Round to nearest even (inputs are finite normals).
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

impl<'a, D: Device> Bench<'a, D> {
    pub fn new(dev: &'a D, s: Shapes, rotate_bytes: usize) -> Self {
        Bench { dev, s, rotate_bytes, allocs: Vec::new(), outs: Vec::new(), rng: Rng::new(0x5eed) }
    }

    /// How many copies of a case moving `bytes` per launch to rotate over.
    pub fn copies(&self, bytes: f64) -> usize {
        if self.rotate_bytes == 0 || bytes <= 0.0 {
            return 1;
        }
        ((self.rotate_bytes as f64 / bytes).ceil() as usize).clamp(1, 32)
    }

    fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        let p = self.dev.alloc(bytes.max(1))?;
        self.allocs.push(p);
        Ok(p)
    }

    /// Raw bytes on the device.
    pub fn upload(&mut self, bytes: &[u8]) -> Result<DevPtr> {
        let p = self.alloc(bytes.len())?;
        self.dev.h2d(p, bytes)?;
        Ok(p)
    }

    /// `n` random normals scaled by `scale`, stored as `ty`.
    pub fn rand(&mut self, ty: Ty, n: usize, scale: f32) -> Result<DevPtr> {
        let v: Vec<f32> = self.rng.normals(n).into_iter().map(|x| x * scale).collect();
        let bytes: Vec<u8> = match ty {
            Ty::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Ty::Bf16 => v.iter().flat_map(|&x| bf16_bits(x).to_le_bytes()).collect(),
        };
        self.upload(&bytes)
    }

    /// An output buffer of `n` elements, poisoned (0xff: NaN in f32 and bf16).
    pub fn out(&mut self, ty: Ty, n: usize) -> Result<DevPtr> {
        let p = self.alloc(n * ty.size())?;
        self.dev.memset(p, 0xff, n * ty.size())?;
        self.outs.push((p, n, ty));
        Ok(p)
    }

    pub fn u32s(&mut self, v: &[u32]) -> Result<DevPtr> {
        self.upload(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    pub fn f32s(&mut self, v: &[f32]) -> Result<DevPtr> {
        self.upload(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Checks that every output element was written with a finite value; the error names the
    /// first bad element.
    pub fn check_outputs(&self, kernel: &str) -> Result<()> {
        for (i, &(p, n, ty)) in self.outs.iter().enumerate() {
            let mut buf = vec![0u8; n * ty.size()];
            self.dev.d2h(p, &mut buf)?;
            let bad = match ty {
                Ty::F32 => buf.chunks_exact(4).position(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
                Ty::Bf16 => {
                    buf.chunks_exact(2).position(|c| u16::from_le_bytes(c.try_into().unwrap()) & 0x7f80 == 0x7f80)
                }
            };
            if let Some(j) = bad {
                return Err(Error::kernel_fault(
                    kernel.to_string(),
                    format!(
                        "bench {kernel}: output {i} ({n} x {}) element {j} is not finite (unwritten poison or overflow)",
                        ty.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Frees every buffer of the case (after synchronising).
    pub fn free_all(&mut self) -> Result<()> {
        self.dev.synchronize()?;
        self.outs.clear();
        for p in self.allocs.drain(..) {
            self.dev.free(p)?;
        }
        Ok(())
    }
}

/// Plain-old-data structs as bytes (the params tables the kernels read from device memory).
pub(crate) fn pod_bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: T is a `#[repr(C)]` struct of integers (KvSeg, CalibSeg, HeadCopyJob) without
    // padding holes that matter: the bytes are copied as they are laid out in memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }.to_vec()
}

/// A case launching `ps[i % ps.len()]` as kernel `P`.
pub(crate) fn launches<D: Device, P: Launch>(shape: String, bytes: f64, flops: Option<f64>, ps: Vec<P>) -> Built<D> {
    Built {
        name: P::NAME,
        shape,
        bytes,
        flops,
        launch: Box::new(move |d: &D, i| {
            // SAFETY: every pointer in `ps` is a live allocation of the `Bench` that built
            // them, sized for the params (built below), and freed only after the runner
            // synchronised at the end of the case.
            unsafe { d.launch(ps[i % ps.len()]) }
        }),
    }
}

/// [`launches`] of the f32 params `ps` or of their bf16 wrapper.
pub(crate) fn by_ty<D: Device, P: Launch>(ty: Ty, shape: String, bytes: f64, flops: Option<f64>, ps: Vec<P>) -> Built<D>
where
    Bf16<P>: Launch,
{
    match ty {
        Ty::F32 => launches(shape, bytes, flops, ps),
        Ty::Bf16 => launches(shape, bytes, flops, ps.into_iter().map(Bf16).collect()),
    }
}

pub(crate) fn check(r: std::result::Result<(), impl std::fmt::Display>) -> Result<()> {
    r.map_err(|e| Error::Input(format!("bench params: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

const ATTN: &str = "FLOPs 4·Lq·Lk·H·d";
/// The name of the GEMM entries (`Device::gemm`, not a kernel of ours).
pub const GEMM: &str = "gemm";
const ROW2: &str = "bytes (2·rows·cols + cols)·e";

/// Every entry, in report order. `shapes.attn_lk` decides the self-attention key counts.
pub fn specs<D: Device>(s: &Shapes) -> Vec<Spec<D>> {
    use Ty::*;
    let mut v: Vec<Spec<D>> = Vec::new();
    let mut push = |kernel, ty, arg, formula, build| v.push(Spec { kernel, ty, arg, formula, build });
    for &lk in &s.attn_lk {
        push(
            "attn_bf16_d128",
            Bf16,
            lk,
            ATTN,
            attn_bf16_d128::<D> as fn(&mut Bench<'_, D>, Ty, usize) -> Result<Built<D>>,
        );
        push("attn_bf16_d128_w8", Bf16, lk, ATTN, attn_bf16_d128_w8::<D>);
    }
    push("attn_bf16_d128", Bf16, 0, "FLOPs 4·Lq·Lk·H·d (Lk = text tokens)", attn_bf16_d128::<D>);
    push("attn_bf16_d128_w8", Bf16, 0, "FLOPs 4·Lq·Lk·H·d (Lk = text tokens)", attn_bf16_d128_w8::<D>);
    let mid = s.attn_lk[s.attn_lk.len() / 2];
    push("attn_bf16_d64", Bf16, mid, ATTN, attn_bf16_d64::<D>);
    push("attn_f32", F32, mid, ATTN, attn_f32::<D>);
    for ty in [F32, Bf16] {
        push(
            if ty == F32 { "calib_mass_f32" } else { "calib_mass_bf16" },
            ty,
            0,
            "FLOPs 2·R·Lk·H·d (q·k only)",
            calib_mass::<D>,
        );
    }
    push("calib_mean_f32", F32, 0, "bytes 4·(3·H·R + 3·H)", calib_mean::<D>);
    for ty in [F32, Bf16] {
        push(
            if ty == F32 { "attn_bias_f32" } else { "attn_bias_bf16" },
            ty,
            0,
            "FLOPs 4·L²·H·d (the umT5 attention; the kernel computes q·k twice)",
            attn_bias::<D>,
        );
    }
    type B<X> = fn(&mut Bench<'_, X>, Ty, usize) -> Result<Built<X>>;
    let pairs: [(&str, &str, &str, B<D>); 16] = [
        ("gelu_tanh_f32", "gelu_tanh_bf16", "bytes 2·n·e", gelu::<D>),
        ("silu_f32", "silu_bf16", "bytes 2·n·e", silu::<D>),
        ("add_f32", "add_bf16", "bytes 3·n·e", add::<D>),
        ("gated_residual_f32", "gated_residual_bf16", "bytes (3·rows·cols + frames·cols)·e", gated_residual::<D>),
        ("modulation_f32", "modulation_bf16", "bytes (k·dim + 2·frames·k·dim)·e", modulation::<D>),
        ("sinusoid_f32", "sinusoid_bf16", "bytes 4·n + 8·dim/2 + n·dim·e", sinusoid::<D>),
        ("rms_norm_f32", "rms_norm_bf16", ROW2, rms_norm::<D>),
        ("layer_norm_f32", "layer_norm_bf16", "bytes (2·rows·cols + 2·cols)·e", layer_norm::<D>),
        (
            "layer_norm_modulate_f32",
            "layer_norm_modulate_bf16",
            "bytes (2·rows·cols + 2·frames·cols)·e",
            layer_norm_modulate::<D>,
        ),
        ("rope3d_f32", "rope3d_bf16", "bytes 2·T·H·d·e (table cached)", rope3d::<D>),
        ("qk_norm_rope_f32", "qk_norm_rope_bf16", "bytes (4·T·H·d + 2·H·d)·e (table cached)", qk_norm_rope::<D>),
        ("patchify_f32", "patchify_bf16", "bytes 2·n·e", patchify::<D>),
        ("unpatchify_f32", "unpatchify_bf16", "bytes 2·n·e", unpatchify::<D>),
        ("copy_rows_f32", "copy_rows_bf16", "bytes 2·rows·cols·e", copy_rows::<D>),
        ("kv_write_f32", "kv_write_bf16", "bytes 4·tpf·H·d·e (K,V read+write)", kv_write::<D>),
        ("kv_compact_f32", "kv_compact_bf16", "bytes 4·jobs·heads·tpf·d·e (K,V read+write)", kv_compact::<D>),
    ];
    for (f, b16, formula, build) in pairs {
        push(f, F32, 0, formula, build);
        push(b16, Bf16, 0, formula, build);
    }
    for arg in 0..3 {
        push(GEMM, Bf16, arg, "FLOPs 2·n·k·m", gemm::<D>);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// One measured entry.
#[derive(Clone, Debug)]
pub struct Row {
    pub kernel: &'static str,
    pub dtype: &'static str,
    pub shape: String,
    pub formula: &'static str,
    /// Seconds per launch.
    pub secs: f64,
    pub bytes: f64,
    pub flops: Option<f64>,
    /// Rotating buffer copies, launches timed, and how (`loop` or `graph`).
    pub copies: usize,
    pub reps: usize,
    pub timer: &'static str,
}

impl Row {
    pub fn gbps(&self) -> f64 {
        self.bytes / self.secs / 1e9
    }
    pub fn tflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.secs / 1e12)
    }
}

/// Back-to-back launches, timed with device events around them (includes launch overhead
/// where a kernel is shorter than its launch).
pub fn time_loop<D: Device>(dev: &D, b: &Built<D>, reps: usize) -> Result<f64> {
    let e0 = dev.record()?;
    for i in 0..reps {
        (b.launch)(dev, i)?;
    }
    let e1 = dev.record()?;
    Ok(dev.elapsed_ms(&e0, &e1)? as f64 / 1e3 / reps as f64)
}

/// The same launches captured into one graph, replayed once to warm up and once timed with
/// device events: the launch overhead is left out.
pub fn time_graph<D: Device>(dev: &D, b: &Built<D>, reps: usize) -> Result<f64> {
    dev.synchronize()?;
    dev.begin_capture()?;
    let mut captured = Ok(());
    for i in 0..reps {
        captured = (b.launch)(dev, i);
        if captured.is_err() {
            break;
        }
    }
    let g = dev.end_capture()?;
    captured?;
    dev.replay(g)?;
    let e0 = dev.record()?;
    dev.replay(g)?;
    let e1 = dev.record()?;
    Ok(dev.elapsed_ms(&e0, &e1)? as f64 / 1e3 / reps as f64)
}

pub struct RunOpts {
    pub warmup: usize,
    pub min_reps: usize,
    pub max_reps: usize,
    /// Aim for about this much timed work per entry (0: exactly `min_reps`).
    pub target_secs: f64,
    pub rotate_bytes: usize,
    /// Only kernels whose name contains this.
    pub filter: Option<String>,
    /// Time a captured graph of the launches ([`time_graph`]) rather than a launch loop.
    pub graph: bool,
}

/// Builds, checks and times every entry of [`specs`] (filtered), calling `on_row` as each ends.
pub fn run<D: Device>(dev: &D, s: &Shapes, o: &RunOpts, on_row: &mut dyn FnMut(&Row)) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for spec in specs::<D>(s) {
        if o.filter.as_ref().is_some_and(|f| !spec.kernel.contains(f.as_str())) {
            continue;
        }
        let mut b = Bench::new(dev, s.clone(), o.rotate_bytes);
        let built = (spec.build)(&mut b, spec.ty, spec.arg)?;
        if built.name != spec.kernel {
            return Err(Error::Input(format!("bench table: entry `{}` launches `{}`", spec.kernel, built.name)));
        }
        let copies = b.copies(built.bytes);
        // At least one launch per copy, so every output buffer is checked.
        for i in 0..o.warmup.max(copies) {
            (built.launch)(dev, i)?;
        }
        dev.synchronize()?;
        b.check_outputs(spec.kernel)?;
        let est = time_loop(dev, &built, 1)?;
        let reps = if o.target_secs > 0.0 {
            ((o.target_secs / est.max(1e-7)) as usize).clamp(o.min_reps, o.max_reps)
        } else {
            o.min_reps
        };
        let (secs, how) = if o.graph {
            match time_graph(dev, &built, reps) {
                Ok(t) => (t, "graph"),
                Err(e) => {
                    eprintln!("bench {}: graph timing failed ({e}); timing a launch loop", spec.kernel);
                    (time_loop(dev, &built, reps)?, "loop")
                }
            }
        } else {
            (time_loop(dev, &built, reps)?, "loop")
        };
        b.free_all()?;
        let row = Row {
            kernel: spec.kernel,
            dtype: spec.ty.name(),
            shape: built.shape,
            formula: spec.formula,
            secs,
            bytes: built.bytes,
            flops: built.flops,
            copies,
            reps,
            timer: how,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}
