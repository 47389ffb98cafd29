//! The cases: one builder per hot kernel at its real (or tiny) shape, with its bytes and
//! FLOPs as the roofline formula counts them.

use super::*;

/// Self-attention (`arg` = Lk) or cross-attention (`arg` = 0: Lk = text_len), one segment per
/// head over a `[Lk, H·d]` K/V buffer, Q/O `[Lq, H·d]`. `heads_d` overrides (H, d) for d64.
pub(super) fn attn_case<D: Device>(
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
pub(super) fn attn_launches<D: Device, P: Launch>(
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

pub(super) fn attn_bf16_d128<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnBf16D128(p).check().map(|_| AttnBf16D128(p)))
}

/// Version 2 of the d128 kernel (8 warps, 128 query rows per block) on the same shapes.
pub(super) fn attn_bf16_d128_w8<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnBf16D128W8(p).check().map(|_| AttnBf16D128W8(p)))
}

/// The umT5 encoder's biased attention over its own prompt: L = `text_len` rows and keys,
/// heads of 64 across the model width (umT5-XXL: 64 × 64 at L 512 on the full shapes).
pub(super) fn attn_bias<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let (l, h, d) = (b.s.text_len, (b.s.dim / 64).max(1), 64);
    let e = ty.size() as f64;
    let bytes = e * (4.0 * (l * h * d) as f64 + (h * l * l) as f64);
    let flops = attn_flops(l as u64, (l * h) as u64, d as u64) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let p = AttnBiasParams {
            q: b.rand(ty, l * h * d, 1.0)?,
            k: b.rand(ty, l * h * d, 1.0)?,
            v: b.rand(ty, l * h * d, 1.0)?,
            bias: b.rand(ty, h * l * l, 1.0)?,
            o: b.out(ty, l * h * d)?,
            n: l as u32,
            lk: l as u32,
            heads: h as u32,
            head_dim: d as u32,
        };
        check(p.check())?;
        ps.push(p);
    }
    Ok(by_ty(ty, format!("L {l} H {h} d {d}"), bytes, Some(flops), ps))
}

pub(super) fn attn_bf16_d64<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    // The small models' head dim: the same width split into twice the heads.
    let hd = (b.s.dim / 64, 64);
    attn_launches(b, ty, lk, Some(hd), |p| AttnBf16D64(p).check().map(|_| AttnBf16D64(p)))
}

pub(super) fn attn_f32<D: Device>(b: &mut Bench<'_, D>, ty: Ty, lk: usize) -> Result<Built<D>> {
    attn_launches(b, ty, lk, None, |p| AttnF32(p).check().map(|_| AttnF32(p)))
}

/// Calibration masses: R sampled rows of the chunk's queries against the first region (one
/// chunk of cached keys, head-major slot `[H, 3·tpf, d]`) plus the current chunk `[T, H·d]`.
pub(super) fn calib_mass<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn calib_mean<D: Device>(b: &mut Bench<'_, D>, _: Ty, _: usize) -> Result<Built<D>> {
    let (h, r) = (b.s.heads, b.s.calib_rows);
    let bytes = 4.0 * (3 * h * r + 3 * h) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        let per_row = b.rand(Ty::F32, h * r * 3, 0.3)?;
        ps.push(CalibMeanParams { per_row, out: b.out(Ty::F32, 3 * h)?, heads: h as u32, n_rows: r as u32 });
    }
    Ok(launches(format!("H {h} R {r}"), bytes, None, ps))
}

pub(super) fn gelu<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    let n = b.s.tokens() * b.s.ffn;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(GeluParams { x: b.rand(ty, n, 1.0)?, y: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (T·ffn)"), bytes, None, ps))
}

pub(super) fn silu<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    // The time-embedding MLP's input: [frames, dim] (launch-bound at this size).
    let n = b.s.frames * b.s.dim;
    let bytes = (2 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(SiluParams { x: b.rand(ty, n, 1.0)?, y: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (frames·dim)"), bytes, None, ps))
}

pub(super) fn add<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
    // The cross-attention residual: h + o [T, dim].
    let n = b.s.tokens() * b.s.dim;
    let bytes = (3 * n * ty.size()) as f64;
    let mut ps = Vec::new();
    for _ in 0..b.copies(bytes) {
        ps.push(AddParams { x: b.rand(ty, n, 1.0)?, y: b.rand(ty, n, 1.0)?, out: b.out(ty, n)?, n: n as u32 });
    }
    Ok(by_ty(ty, format!("n {n} (T·dim)"), bytes, None, ps))
}

pub(super) fn gated_residual<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn modulation<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn sinusoid<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn rms_norm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn layer_norm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn layer_norm_modulate<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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
pub(super) fn rope_tab<D: Device>(b: &mut Bench<'_, D>) -> Result<(DevPtr, u32)> {
    let rows = (b.s.frames.max(b.s.lat_h / 2).max(b.s.lat_w / 2) as u32).max(64);
    let t = rope_table(b.s.head_dim as u32, rows);
    Ok((b.f32s(&t)?, rows))
}

pub(super) fn rope3d<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn qk_norm_rope<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn patchify<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn unpatchify<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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

pub(super) fn copy_rows<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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
pub(super) fn kv_write<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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
pub(super) fn kv_compact<D: Device>(b: &mut Bench<'_, D>, ty: Ty, _: usize) -> Result<Built<D>> {
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
pub(super) fn gemm<D: Device>(b: &mut Bench<'_, D>, ty: Ty, arg: usize) -> Result<Built<D>> {
    let (t, d, f) = (b.s.tokens(), b.s.dim, b.s.ffn);
    let (k, m, epilogue, what) = match arg {
        0 => (d, d, Epilogue::None, "q/k/v/o"),
        1 => (d, f, Epilogue::Gelu, "ffn up + GELU"),
        _ => (f, d, Epilogue::None, "ffn down"),
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
        gs.push(Gemm { dtype, x, w, y, bias: Some(bias), epilogue, n: t, k, m });
    }
    Ok(Built {
        name: "gemm",
        shape: format!("{what}: n {t} k {k} m {m}"),
        bytes,
        flops: Some(flops),
        launch: Box::new(move |dv: &D, i| dv.gemm(&gs[i % gs.len()])),
    })
}
