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
use dfrt::gpu::{DevPtr, Device, Gemm};
use dfrt::pipeline::Rng;
use dfrt::{Error, Result};
use dfrt_kernels::attention::{
    attn_flops, segment_table, AttnBf16D128, AttnBf16D128W8, AttnBf16D64, AttnF32, AttnParams, KvSeg,
};
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

/// Storage type of a kernel variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    F32,
    Bf16,
}

impl Ty {
    pub fn size(self) -> usize {
        match self {
            Ty::F32 => 4,
            Ty::Bf16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Ty::F32 => "f32",
            Ty::Bf16 => "bf16",
        }
    }
}

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

fn bf16_bits(x: f32) -> u16 {
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
fn pod_bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: T is a `#[repr(C)]` struct of integers (KvSeg, CalibSeg, HeadCopyJob) without
    // padding holes that matter: the bytes are copied as they are laid out in memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }.to_vec()
}

/// A case launching `ps[i % ps.len()]` as kernel `P`.
fn launches<D: Device, P: Launch>(shape: String, bytes: f64, flops: Option<f64>, ps: Vec<P>) -> Built<D> {
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
fn by_ty<D: Device, P: Launch>(ty: Ty, shape: String, bytes: f64, flops: Option<f64>, ps: Vec<P>) -> Built<D>
where
    Bf16<P>: Launch,
{
    match ty {
        Ty::F32 => launches(shape, bytes, flops, ps),
        Ty::Bf16 => launches(shape, bytes, flops, ps.into_iter().map(Bf16).collect()),
    }
}

fn check(r: std::result::Result<(), impl std::fmt::Display>) -> Result<()> {
    r.map_err(|e| Error::Input(format!("bench params: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

/// Self-attention (`arg` = Lk) or cross-attention (`arg` = 0: Lk = text_len), one segment per
/// head over a `[Lk, H·d]` K/V buffer, Q/O `[Lq, H·d]`. `heads_d` overrides (H, d) for d64.
fn attn_case<D: Device>(
    b: &mut Bench<'_, D>,
    ty: Ty,
    lk: usize,
    heads_d: Option<(usize, usize)>,
) -> Result<(Vec<AttnParams>, String, f64, f64)> {
    let (h, d) = heads_d.unwrap_or((b.s.heads, b.s.head_dim));
    let lq = b.s.tokens();
    let lk = if lk == 0 { b.s.text_len } else { lk };
    let e = ty.size() as f64;
    let bytes = e * (2.0 * (lq * h * d) as f64 + 2.0 * (lk * h * d) as f64);
    let flops = attn_flops(lq as u64, (lk * h) as u64, d as u64) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let q = b.rand(ty, lq * h * d, 1.0)?;
        let k = b.rand(ty, lk * h * d, 1.0)?;
        let v = b.rand(ty, lk * h * d, 1.0)?;
        let o = b.out(ty, lq * h * d)?;
        let segs: Vec<KvSeg> = (0..h)
            .map(|hh| KvSeg {
                k: k + (hh * d) as u64 * e as u64,
                v: v + (hh * d) as u64 * e as u64,
                rows: lk as u32,
                stride: (h * d) as u32,
            })
            .collect();
        let starts: Vec<u32> = (0..=h as u32).collect();
        let table = segment_table(&starts, &segs);
        let at = b.upload(&table.bytes)?;
        let p = AttnParams {
            q,
            o,
            seg_start: at,
            segs: at + table.segs_offset as u64,
            q_rows: lq as u32,
            heads: h as u32,
            head_dim: d as u32,
            q_stride: (h * d) as u32,
            scale_log2: (d as f32).sqrt().recip() * std::f32::consts::LOG2_E,
        };
        ps.push(p);
    }
    let what = if lk == b.s.text_len { " (cross)" } else { "" };
    Ok((ps, format!("Lq {lq} Lk {lk} H {h} d {d}{what}"), bytes, flops))
}

/// The attention launches of one kernel: `wrap` turns the shared params into the kernel's
/// params type and runs its host check. `hd` overrides (heads, head_dim).
fn attn_launches<D: Device, P: Launch>(
    b: &mut Bench<'_, D>,
    ty: Ty,
    lk: usize,
    hd: Option<(usize, usize)>,
    wrap: impl Fn(AttnParams) -> std::result::Result<P, String>,
) -> Result<Built<D>> {
    let (ps, shape, bytes, flops) = attn_case(b, ty, lk, hd)?;
    let ps = ps
        .into_iter()
        .map(|p| wrap(p).map_err(|e| Error::Input(format!("bench params: {e}"))))
        .collect::<Result<Vec<P>>>()?;
    Ok(launches(shape, bytes, Some(flops), ps))
}

fn attn_bf16_d128<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnBf16D128(p).check().map(|_| AttnBf16D128(p)))
}

/// Version 2 of the d128 kernel (8 warps, 128 query rows per block) on the same shapes.
fn attn_bf16_d128_w8<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnBf16D128W8(p).check().map(|_| AttnBf16D128W8(p)))
}

fn attn_bf16_d64<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    // The small models' head dim: the same width split into twice the heads.
    let hd = (b.s.dim / 64, 64);
    attn_launches(b, ty, lk, Some(hd), |p| AttnBf16D64(p).check().map(|_| AttnBf16D64(p)))
}

fn attn_f32<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnF32(p).check().map(|_| AttnF32(p)))
}

/// Calibration masses: R sampled rows of the chunk's queries against the first region (one
/// chunk of cached keys, head-major slot `[H, 3·tpf, d]`) plus the current chunk `[T, H·d]`.
fn calib_mass<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (h, d, t, r) = (b.s.heads, b.s.head_dim, b.s.tokens(), b.s.calib_rows);
    let lk = 2 * t;
    let e = ty.size() as f64;
    let bytes = e * ((r * h * d) as f64 + (lk * h * d) as f64) + 4.0 * (h * r * 3) as f64;
    let flops = 2.0 * (r * lk * h * d) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let q = b.rand(ty, t * h * d, 1.0)?;
        let sink = b.rand(ty, t * h * d, 1.0)?;
        let cur = b.rand(ty, t * h * d, 1.0)?;
        let rows: Vec<u32> = (0..r).map(|i| ((i * 7919) % t) as u32).collect();
        let segs = [
            CalibSeg { k: sink, tokens: t as u32, token_stride: d as u32, head_stride: (t * d) as u32, _pad: 0 },
            CalibSeg { k: cur, tokens: t as u32, token_stride: (h * d) as u32, head_stride: d as u32, _pad: 0 },
        ];
        let p = CalibMassParams {
            q,
            rows: b.u32s(&rows)?,
            segs: b.upload(&pod_bytes(&segs))?,
            out: b.out(Ty::F32, h * r * 3)?,
            n_rows: r as u32,
            n_segs: 2,
            heads: h as u32,
            head_dim: d as u32,
            first_end: t as u32,
            mid_end: t as u32,
            scale: (d as f32).sqrt(),
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("R {r} Lk {lk} H {h} d {d}"), bytes, Some(flops), ps))
}

fn calib_mean<D: Device>(b: &mut Bench<'_, D>, _: Ty, _: usize) -> Result<Built<D>> {
    let (h, r) = (b.s.heads, b.s.calib_rows);
    let bytes = 4.0 * (3 * h * r + 3 * h) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let per_row = b.rand(Ty::F32, h * r * 3, 0.3)?;
        ps.push(CalibMeanParams { per_row, out: b.out(Ty::F32, 3 * h)?, heads: h as u32, n_rows: r as u32 });
    }
    Ok(launches(format!("H {h} R {r}"), bytes, None, ps))
}

fn gelu<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let n = b.s.tokens() * b.s.ffn;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(GeluParams { x: b.rand(ty, n, 1.0)?, y: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (T·ffn)"), bytes, None, ps))
}

fn silu<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    // The time-embedding MLP's input: [frames, dim] (launch-bound at this size).
    let n = b.s.frames * b.s.dim;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(SiluParams { x: b.rand(ty, n, 1.0)?, y: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (frames·dim)"), bytes, None, ps))
}

fn add<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    // The cross-attention residual: h + o [T, dim].
    let n = b.s.tokens() * b.s.dim;
    let bytes = (3 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(AddParams { x: b.rand(ty, n, 1.0)?, y: b.rand(ty, n, 1.0)?, out: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (T·dim)"), bytes, None, ps))
}

fn gated_residual<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (t, c, f) = (b.s.tokens(), b.s.dim, b.s.frames);
    let bytes = ((3 * t * c + f * c) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(GatedResidualParams {
            x: b.rand(ty, t * c, 1.0)?,
            y: b.rand(ty, t * c, 1.0)?,
            gate: b.rand(ty, f * c, 1.0)?,
            out: b.out(ty, t * c)?,
            rows: t as u32,
            cols: c as u32,
            rows_per_frame: b.s.tpf() as u32,
        });
    }
    Ok(by_ty(ty, format!("rows {t} cols {c}"), bytes, None, ps))
}

fn modulation<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (k, f, dim) = (6, b.s.frames, b.s.dim);
    let bytes = ((k * dim + 2 * f * k * dim) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let p = ModulationParams {
            table: b.rand(ty, k * dim, 1.0)?,
            e: b.rand(ty, f * k * dim, 1.0)?,
            out: b.out(ty, k * f * dim)?,
            frames: f as u32,
            k: k as u32,
            dim: dim as u32,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("k {k} frames {f} dim {dim}"), bytes, None, ps))
}

fn sinusoid<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (n, dim) = (b.s.frames, b.s.freq_dim);
    let bytes = (4 * n + 8 * (dim / 2) + n * dim * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let freqs: Vec<u8> = sinusoid_freqs(dim as u32).iter().flat_map(|x| x.to_le_bytes()).collect();
        let t: Vec<f32> = (0..n).map(|i| 1000.0 - 250.0 * i as f32).collect();
        ps.push(SinusoidParams {
            t: b.f32s(&t)?,
            freqs: b.upload(&freqs)?,
            y: b.out(ty, n * dim)?,
            n: n as u32,
            dim: dim as u32,
        });
    }
    Ok(by_ty(ty, format!("n {n} dim {dim}"), bytes, None, ps))
}

fn rms_norm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    // The cross-attention q norm (the self-attention one is fused into qk_norm_rope).
    let (t, c) = (b.s.tokens(), b.s.dim);
    let bytes = ((2 * t * c + c) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(RmsNormParams {
            x: b.rand(ty, t * c, 1.0)?,
            w: b.rand(ty, c, 1.0)?,
            y: b.out(ty, t * c)?,
            rows: t as u32,
            cols: c as u32,
            eps: 1e-6,
        });
    }
    Ok(by_ty(ty, format!("rows {t} cols {c}"), bytes, None, ps))
}

fn layer_norm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (t, c) = (b.s.tokens(), b.s.dim);
    let bytes = ((2 * t * c + 2 * c) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(LayerNormParams {
            x: b.rand(ty, t * c, 1.0)?,
            w: b.rand(ty, c, 1.0)?,
            b: b.rand(ty, c, 1.0)?,
            y: b.out(ty, t * c)?,
            rows: t as u32,
            cols: c as u32,
            eps: 1e-6,
        });
    }
    Ok(by_ty(ty, format!("rows {t} cols {c} (affine)"), bytes, None, ps))
}

fn layer_norm_modulate<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (t, c, f) = (b.s.tokens(), b.s.dim, b.s.frames);
    let bytes = ((2 * t * c + 2 * f * c) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(LayerNormModParams {
            x: b.rand(ty, t * c, 1.0)?,
            shift: b.rand(ty, f * c, 1.0)?,
            scale: b.rand(ty, f * c, 0.1)?,
            y: b.out(ty, t * c)?,
            rows: t as u32,
            cols: c as u32,
            rows_per_frame: b.s.tpf() as u32,
            eps: 1e-6,
        });
    }
    Ok(by_ty(ty, format!("rows {t} cols {c}"), bytes, None, ps))
}

/// The RoPE table for the chunk at frame 0, and its rows.
fn rope_tab<D: Device>(b: &mut Bench<'_, D>) -> Result<(DevPtr, u32)> {
    let rows = (b.s.frames.max(b.s.lat_h / 2).max(b.s.lat_w / 2) as u32).max(64);
    let t = rope_table(b.s.head_dim as u32, rows);
    Ok((b.f32s(&t)?, rows))
}

fn rope3d<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (t, h, d) = (b.s.tokens(), b.s.heads, b.s.head_dim);
    let bytes = (2 * t * h * d * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let (table, table_rows) = rope_tab(b)?;
        let p = RopeParams {
            x: b.rand(ty, t * h * d, 1.0)?,
            y: b.out(ty, t * h * d)?,
            table,
            f: b.s.frames as u32,
            h: (b.s.lat_h / 2) as u32,
            w: (b.s.lat_w / 2) as u32,
            heads: h as u32,
            head_dim: d as u32,
            start_frame: 0,
            table_rows,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("T {t} H {h} d {d}"), bytes, None, ps))
}

fn qk_norm_rope<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (t, h, d) = (b.s.tokens(), b.s.heads, b.s.head_dim);
    let bytes = ((4 * t * h * d + 2 * h * d) * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let (table, table_rows) = rope_tab(b)?;
        let p = QkNormRopeParams {
            q: b.rand(ty, t * h * d, 1.0)?,
            k: b.rand(ty, t * h * d, 1.0)?,
            wq: b.rand(ty, h * d, 1.0)?,
            wk: b.rand(ty, h * d, 1.0)?,
            q_out: b.out(ty, t * h * d)?,
            k_out: b.out(ty, t * h * d)?,
            table,
            f: b.s.frames as u32,
            h: (b.s.lat_h / 2) as u32,
            w: (b.s.lat_w / 2) as u32,
            heads: h as u32,
            head_dim: d as u32,
            start_frame: 0,
            table_rows,
            eps: 1e-6,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("q+k T {t} H {h} d {d}"), bytes, None, ps))
}

fn patchify<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (f, c, hh, ww) = (b.s.frames, b.s.in_dim, b.s.lat_h, b.s.lat_w);
    let n = f * c * hh * ww;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let p = PatchifyParams {
            x: b.rand(ty, n, 1.0)?,
            y: b.out(ty, n)?,
            f: f as u32,
            c: c as u32,
            hh: hh as u32,
            ww: ww as u32,
            ph: 2,
            pw: 2,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("[{f},{c},{hh},{ww}] patch 2x2"), bytes, None, ps))
}

fn unpatchify<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (f, c, gh, gw) = (b.s.frames, b.s.in_dim, b.s.lat_h / 2, b.s.lat_w / 2);
    let n = f * gh * gw * 4 * c;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let p = UnpatchifyParams {
            x: b.rand(ty, n, 1.0)?,
            y: b.out(ty, n)?,
            f: f as u32,
            gh: gh as u32,
            gw: gw as u32,
            ph: 2,
            pw: 2,
            c: c as u32,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("[{},{}] -> [{f},{c},{},{}]", f * gh * gw, 4 * c, 2 * gh, 2 * gw), bytes, None, ps))
}

fn copy_rows<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (r, c) = (b.s.tokens(), b.s.dim);
    let bytes = (2 * r * c * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let p = CopyRowsParams {
            dst: b.out(ty, r * c)?,
            src: b.rand(ty, r * c, 1.0)?,
            dst_stride: c as u32,
            src_stride: c as u32,
            rows: r as u32,
            cols: c as u32,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("rows {r} cols {c}"), bytes, None, ps))
}

/// One frame's K/V from the chunk layout `[T, H·d]` into a head-major slot `[H, tpf, d]`.
fn kv_write<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (tpf, h, d) = (b.s.tpf(), b.s.heads, b.s.head_dim);
    let bytes = (4 * tpf * h * d * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let heads: Vec<u32> = (0..h as u32).collect();
        let job = HeadCopyJob {
            src_k: b.rand(ty, tpf * h * d, 1.0)?,
            src_v: b.rand(ty, tpf * h * d, 1.0)?,
            dst_k: b.out(ty, tpf * h * d)?,
            dst_v: b.out(ty, tpf * h * d)?,
            heads: b.u32s(&heads)?,
            n_heads: h as u32,
            _pad: 0,
        };
        let shape = HeadCopyShape {
            rows: tpf as u32,
            head_dim: d as u32,
            src_row_stride: (h * d) as u32,
            src_head_stride: d as u32,
            dst_row_stride: d as u32,
            dst_head_stride: (tpf * d) as u32,
        };
        let p = KvWriteParams { job, shape };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("1 frame: tpf {tpf} H {h} d {d}"), bytes, None, ps))
}

/// HMA compaction of one layer: 2 groups of H/2 heads × 3 retained frames (6 jobs), each from
/// a head-major phase-1 slot `[H, tpf, d]` into the group's slot `[H/2, tpf, d]`.
fn kv_compact<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (tpf, h, d) = (b.s.tpf(), b.s.heads, b.s.head_dim);
    let (groups, frames, gh) = (2, 3, (h / 2).max(1));
    let n_jobs = groups * frames;
    let bytes = (4 * n_jobs * gh * tpf * d * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let mut jobs = Vec::new();
        for g in 0..groups {
            let heads: Vec<u32> = (0..gh as u32).map(|i| (g * gh) as u32 + i).collect();
            let hp = b.u32s(&heads)?;
            for _ in 0..frames {
                jobs.push(HeadCopyJob {
                    src_k: b.rand(ty, h * tpf * d, 1.0)?,
                    src_v: b.rand(ty, h * tpf * d, 1.0)?,
                    dst_k: b.out(ty, gh * tpf * d)?,
                    dst_v: b.out(ty, gh * tpf * d)?,
                    heads: hp,
                    n_heads: gh as u32,
                    _pad: 0,
                });
            }
        }
        let shape = HeadCopyShape {
            rows: tpf as u32,
            head_dim: d as u32,
            src_row_stride: d as u32,
            src_head_stride: (tpf * d) as u32,
            dst_row_stride: d as u32,
            dst_head_stride: (tpf * d) as u32,
        };
        let p =
            KvCompactParams { jobs: b.upload(&pod_bytes(&jobs))?, n_jobs: n_jobs as u32, max_heads: gh as u32, shape };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("{n_jobs} jobs x {gh} heads: tpf {tpf} d {d}"), bytes, None, ps))
}

/// The GEMMs of a block (`Device::gemm`: cuBLASLt on cuda), `y [n, m] = x [n, k] · w [m, k]ᵀ + b`:
/// `arg` selects the projection (0: q/k/v/o, 1: FFN up with GELU, 2: FFN down). Not kernels of
/// ours, but most of a forward's time, so the table shows them beside the kernels.
fn gemm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, arg: usize) -> Result<Built<D>> {
    let (t, d, f) = (b.s.tokens(), b.s.dim, b.s.ffn);
    let (k, m, gelu, what) = match arg {
        0 => (d, d, false, "q/k/v/o"),
        1 => (d, f, true, "ffn up + GELU"),
        _ => (f, d, false, "ffn down"),
    };
    let e = ty.size();
    let bytes = ((t * k + m * k + t * m + m) * e) as f64;
    let flops = 2.0 * (t * k * m) as f64;
    let dtype = if ty == Ty::F32 { Precision::F32 } else { Precision::Bf16 };
    let mut gs = Vec::new();
    for _ in 0..b.copies(bytes) {
        let x = b.rand(ty, t * k, 1.0)?;
        let w = b.rand(ty, m * k, (k as f32).sqrt().recip())?;
        let bias = b.rand(ty, m, 0.1)?;
        let y = b.out(ty, t * m)?;
        gs.push(Gemm { dtype, x, w, y, bias: Some(bias), gelu, n: t, k, m });
    }
    Ok(Built {
        name: "gemm",
        shape: format!("{what}: n {t} k {k} m {m}"),
        bytes,
        flops: Some(flops),
        launch: Box::new(move |dv: &D, i| dv.gemm(&gs[i % gs.len()])),
    })
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
