//! The attention kernels in the simulator against an f64 CPU reference, on fresh random inputs,
//! with poisoned outputs and guard regions, over mixed per-head segment tables shaped like the
//! frame-slot cache (sink slot + window ring slots in wrap-around order + current chunk,
//! compact per-group buffers, empty segments, heads without segments), cross-attention, odd
//! lengths, one query row and zero heads.
//!
//! f32 must match the f64 reference to ~1e-5. bf16 is judged by FlashAttention's rule: its max
//! error vs the f64 reference (computed from the same bf16 inputs) is at most twice the max error
//! of a naive bf16 reference (f32 math, bf16 storage of S, P and O, as PyTorch runs it in bf16),
//! plus a small absolute slack.

mod common;
use common::*;

use dfrt_kernels::attention::*;
use dfrt_kernels::gpu::{bf16_to_f32, f32_to_bf16};
use dfrt_kernels::sim;
use dfrt_kernels::Launch;

use dfrt_testkit::Dtype as Dt;

/// A value as a dtype stores it.
trait Stored {
    fn round(self, x: f32) -> f32;
}

impl Stored for Dt {
    fn round(self, x: f32) -> f32 {
        match self {
            Dt::F32 => x,
            Dt::Bf16 => bf16_to_f32(f32_to_bf16(x)),
        }
    }
}

/// Guard bytes before and after every device buffer.
const GB: usize = 64;

/// A device-like buffer: 16-byte aligned, 0xff-poisoned (NaN in f32 and bf16), guard bytes on
/// both sides that must stay poisoned.
struct Dev {
    mem: Vec<u128>,
    n: usize,
    dt: Dt,
}

impl Dev {
    fn poisoned(dt: Dt, n: usize) -> Dev {
        Dev {
            mem: vec![u128::MAX; (2 * GB + n * dt.size()).div_ceil(16)],
            n,
            dt,
        }
    }
    fn from(dt: Dt, vals: &[f32]) -> Dev {
        let mut d = Dev::poisoned(dt, vals.len());
        let b = d.bytes_mut();
        for (i, &v) in vals.iter().enumerate() {
            match dt {
                Dt::F32 => b[i * 4..][..4].copy_from_slice(&v.to_le_bytes()),
                Dt::Bf16 => b[i * 2..][..2].copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
            }
        }
        d
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.n * self.dt.size();
        // SAFETY: the Vec holds 2·GB + len bytes (rounded up); u128 has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts_mut((self.mem.as_mut_ptr() as *mut u8).add(GB), len) }
    }
    fn all(&self) -> &[u8] {
        // SAFETY: viewing the Vec's own bytes.
        unsafe { std::slice::from_raw_parts(self.mem.as_ptr() as *const u8, self.mem.len() * 16) }
    }
    /// Device address of element 0 (16-byte aligned).
    fn ptr(&self) -> u64 {
        self.mem.as_ptr() as u64 + GB as u64
    }
    /// The payload as f32; panics if a guard byte was written.
    fn read(&self) -> Vec<f32> {
        let all = self.all();
        let len = self.n * self.dt.size();
        let bad = (0..GB).chain(GB + len..all.len()).find(|&i| all[i] != 0xff);
        if let Some(i) = bad {
            panic!(
                "kernel wrote outside its output: byte {} (output has {len} bytes)",
                i as i64 - GB as i64
            );
        }
        let b = &all[GB..GB + len];
        (0..self.n)
            .map(|i| match self.dt {
                Dt::F32 => f32::from_le_bytes(b[i * 4..][..4].try_into().unwrap()),
                Dt::Bf16 => bf16_to_f32(u16::from_le_bytes(b[i * 2..][..2].try_into().unwrap())),
            })
            .collect()
    }
}

/// K and V storage (e.g. the frame-slot cache or a compact per-group buffer): the device
/// buffers and the stored values.
struct Kv {
    k: Dev,
    v: Dev,
    kf: Vec<f32>,
    vf: Vec<f32>,
}

impl Kv {
    fn random(rng: &mut Rng, dt: Dt, n: usize) -> Kv {
        let kf: Vec<f32> = rng
            .vec(n, -1.0, 1.0)
            .into_iter()
            .map(|x| dt.round(x))
            .collect();
        let vf: Vec<f32> = rng
            .vec(n, -1.0, 1.0)
            .into_iter()
            .map(|x| dt.round(x))
            .collect();
        Kv {
            k: Dev::from(dt, &kf),
            v: Dev::from(dt, &vf),
            kf,
            vf,
        }
    }
}

/// A segment: `rows` rows of storage `buf` starting at element `off`, `stride` apart.
#[derive(Clone, Copy, Debug)]
struct Seg {
    buf: usize,
    off: usize,
    rows: u32,
    stride: u32,
}

/// One launch: shapes, storages and the per-head segment lists.
struct Case {
    name: String,
    dt: Dt,
    d: u32,
    heads: u32,
    q_rows: u32,
    q_stride: u32,
    scale: f32,
    /// Queries are uniform in `[q_lo, 2)`.
    q_lo: f32,
    kv: Vec<Kv>,
    /// Segments of each head.
    table: Vec<Vec<Seg>>,
}

/// Keys of every head in order: (k row, v row) slices of the stored values.
fn head_keys(c: &Case, h: usize) -> Vec<(&[f32], &[f32])> {
    let d = c.d as usize;
    let mut out = Vec::new();
    for s in &c.table[h] {
        let kv = &c.kv[s.buf];
        for r in 0..s.rows as usize {
            let o = s.off + r * s.stride as usize;
            out.push((&kv.kf[o..o + d], &kv.vf[o..o + d]));
        }
    }
    out
}

/// f64 reference: `[q_rows][heads][d]` (packed).
fn reference(c: &Case, q: &[f32]) -> Vec<f64> {
    let (d, heads) = (c.d as usize, c.heads as usize);
    let mut out = vec![0f64; c.q_rows as usize * heads * d];
    for h in 0..heads {
        let keys = head_keys(c, h);
        for i in 0..c.q_rows as usize {
            let qi = &q[i * c.q_stride as usize + h * d..][..d];
            let s: Vec<f64> = keys
                .iter()
                .map(|(k, _)| {
                    qi.iter()
                        .zip(*k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * c.scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let sum: f64 = w.iter().sum();
            let o = &mut out[(i * heads + h) * d..][..d];
            for (wj, (_, v)) in w.iter().zip(&keys) {
                for (oc, &vc) in o.iter_mut().zip(*v) {
                    *oc += wj / sum * vc as f64;
                }
            }
        }
    }
    out
}

/// Naive bf16 reference: f32 math, S, P and O stored as bf16 (PyTorch's bf16 path).
fn naive_bf16(c: &Case, q: &[f32]) -> Vec<f32> {
    let r = |x: f32| Dt::Bf16.round(x);
    let (d, heads) = (c.d as usize, c.heads as usize);
    let mut out = vec![0f32; c.q_rows as usize * heads * d];
    for h in 0..heads {
        let keys = head_keys(c, h);
        for i in 0..c.q_rows as usize {
            let qi = &q[i * c.q_stride as usize + h * d..][..d];
            let s: Vec<f32> = keys
                .iter()
                .map(|(k, _)| r(qi.iter().zip(*k).map(|(&a, &b)| a * b).sum::<f32>()) * c.scale)
                .collect();
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = s.iter().map(|&x| (x - m).exp()).collect();
            let sum: f32 = w.iter().sum();
            let o = &mut out[(i * heads + h) * d..][..d];
            let mut acc = vec![0f32; d];
            for (wj, (_, v)) in w.iter().zip(&keys) {
                let p = r(wj / sum);
                for (a, &vc) in acc.iter_mut().zip(*v) {
                    *a += p * vc;
                }
            }
            for (oc, a) in o.iter_mut().zip(acc) {
                *oc = r(a);
            }
        }
    }
    out
}

/// The kernel's params for a case, plus the host-side tables they point into.
struct Launched {
    p: AttnParams,
    _seg_start: Vec<u32>,
    _segs: Vec<KvSeg>,
}

fn params(c: &Case, q: &Dev, o: &Dev) -> Launched {
    let mut seg_start = vec![0u32];
    let mut segs = Vec::new();
    for list in &c.table {
        for s in list {
            let kv = &c.kv[s.buf];
            let es = c.dt.size() as u64;
            segs.push(KvSeg {
                k: kv.k.ptr() + s.off as u64 * es,
                v: kv.v.ptr() + s.off as u64 * es,
                rows: s.rows,
                stride: s.stride,
            });
        }
        seg_start.push(segs.len() as u32);
    }
    let p = AttnParams {
        q: q.ptr(),
        o: o.ptr(),
        seg_start: seg_start.as_ptr() as u64,
        segs: segs.as_ptr() as u64,
        q_rows: c.q_rows,
        heads: c.heads,
        head_dim: c.d,
        q_stride: c.q_stride,
        scale_log2: c.scale * std::f32::consts::LOG2_E,
    };
    Launched {
        p,
        _seg_start: seg_start,
        _segs: segs,
    }
}

/// The kernel versions that serve a case's dtype and head_dim, by warps per block: bf16 d128
/// has version 1 (4 warps) and version 2 (8 warps); every other path has one kernel.
fn variants(c: &Case) -> &'static [u32] {
    if c.dt == Dt::Bf16 && c.d == 128 {
        &[4, 8]
    } else {
        &[4]
    }
}

/// Launches the kernel for the case's dtype and head_dim (and warps, for bf16 d128) after the
/// host checks pass.
fn launch_attn(c: &Case, l: &Launched, warps: u32) {
    let starts = &l._seg_start;
    let segs = &l._segs;
    // SAFETY: every buffer is sized for the shapes in the params, the tables outlive the launch.
    let r = unsafe {
        match (c.dt, c.d) {
            (Dt::F32, _) => {
                let k = AttnF32(l.p);
                k.check().unwrap();
                k.check_table(starts, segs).unwrap();
                sim::run(k)
            }
            (Dt::Bf16, 128) if warps == 8 => {
                let k = AttnBf16D128W8(l.p);
                k.check().unwrap();
                k.check_table(starts, segs).unwrap();
                sim::run(k)
            }
            (Dt::Bf16, 128) => {
                let k = AttnBf16D128(l.p);
                k.check().unwrap();
                k.check_table(starts, segs).unwrap();
                sim::run(k)
            }
            (Dt::Bf16, 64) => {
                let k = AttnBf16D64(l.p);
                k.check().unwrap();
                k.check_table(starts, segs).unwrap();
                sim::run(k)
            }
            (dt, d) => panic!("no {dt:?} kernel for head_dim {d}"),
        }
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", c.name));
}

/// Runs the case on fresh random queries and checks the output against the references;
/// returns the output (packed `[q_rows][heads][d]`).
fn run_case(rng: &mut Rng, c: &Case) -> Vec<f32> {
    let (_d, _heads) = (c.d as usize, c.heads as usize);
    let qf: Vec<f32> = rng
        .vec(c.q_rows as usize * c.q_stride as usize, c.q_lo, 2.0)
        .into_iter()
        .map(|x| c.dt.round(x))
        .collect();
    let q = Dev::from(c.dt, &qf);
    let mut first: Option<Vec<f32>> = None;
    for &warps in variants(c) {
        let got = run_variant(c, &qf, &q, warps);
        match &first {
            // The versions change the block shape, not any row's arithmetic: equal bit for bit.
            Some(v1) => assert!(
                v1.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: {warps} warps differ from 4 warps",
                c.name
            ),
            None => first = Some(got),
        }
    }
    first.unwrap()
}

/// One kernel version of [`run_case`]: launch into a poisoned output, check it.
fn run_variant(c: &Case, qf: &[f32], q: &Dev, warps: u32) -> Vec<f32> {
    let (d, heads) = (c.d as usize, c.heads as usize);
    let o = Dev::poisoned(c.dt, c.q_rows as usize * c.q_stride as usize);
    let l = params(c, q, &o);
    launch_attn(c, &l, warps);
    let name = format!("{} ({warps} warps)", c.name);
    let full = o.read();
    // The padding columns of each output row (q_stride > heads·d) must stay poisoned.
    for i in 0..c.q_rows as usize {
        for x in &full[i * c.q_stride as usize + heads * d..(i + 1) * c.q_stride as usize] {
            assert!(
                x.is_nan(),
                "{}: kernel wrote a padding column of row {i}",
                name
            );
        }
    }
    let got: Vec<f32> = (0..c.q_rows as usize)
        .flat_map(|i| full[i * c.q_stride as usize..][..heads * d].iter().copied())
        .collect();
    let want = reference(c, qf);
    // Heads without keys output exact zeros.
    for h in 0..heads {
        if head_keys(c, h).is_empty() {
            for i in 0..c.q_rows as usize {
                let row = &got[(i * heads + h) * d..][..d];
                assert!(
                    row.iter().all(|&x| x == 0.0),
                    "{}: head {h} has no keys but row {i} is not 0: {:?}",
                    name,
                    &row[..4.min(d)]
                );
            }
        }
    }
    match c.dt {
        Dt::F32 => assert_close(&name, &got, &want, 1e-5, 1e-5),
        Dt::Bf16 => flash_rule(&name, &got, &want, &naive_bf16(c, qf)),
    }
    got
}

/// FlashAttention's acceptance rule: max |kernel − ref| ≤ 2·max |naive − ref| + slack. The
/// naive reference's max error is dominated by its bf16 rounding of S, which makes the rule
/// loose, so the mean error must also stay at or below the naive reference's (a systematic
/// bug, e.g. a slightly wrong scale, moves the mean long before the max).
fn flash_rule(what: &str, got: &[f32], want: &[f64], naive: &[f32]) {
    let errs = |xs: &[f32]| {
        let (mut worst, mut at, mut sum) = (0f64, 0usize, 0f64);
        for (i, (&g, &w)) in xs.iter().zip(want).enumerate() {
            let e = (g as f64 - w).abs();
            // NaN counts as infinitely wrong.
            let e = if e.is_nan() { f64::INFINITY } else { e };
            if e > worst {
                (worst, at) = (e, i);
            }
            sum += e;
        }
        (worst, at, sum / xs.len().max(1) as f64)
    };
    let (ek, ik, mk) = errs(got);
    let (en, _, mn) = errs(naive);
    // About half a bf16 ulp at 0.3..0.5 (the output's own rounding); FlashAttention's tests
    // allow an absolute slack of this order.
    let slack = 1e-3;
    let bound = 2.0 * en + slack;
    eprintln!(
        "{what}: kernel max err {ek:.3e} (index {ik}) mean {mk:.3e}; naive bf16 max {en:.3e} mean {mn:.3e}; bound {bound:.3e}"
    );
    assert!(
        ek <= bound,
        "{what}: kernel error {ek:e} at index {ik} (got {} want {}) > 2·naive {en:e} + {slack:e}",
        got[ik],
        want[ik]
    );
    assert!(
        mk <= mn.max(1e-4),
        "{what}: kernel mean error {mk:e} > naive bf16 mean error {mn:e} (max err {ek:e} at index {ik}: got {} want {})",
        got[ik],
        want[ik]
    );
}

/// Frame-slot cache shaped case: `slots` slots of `t` tokens plus a current chunk of `chunk`
/// tokens, all `[tokens][heads·d]` (+`pad` columns); a compact per-group buffer `[n][d]`;
/// heads with different segment lists.
fn cache_case(rng: &mut Rng, dt: Dt, d: u32, heads: u32, q_rows: u32, t: u32, chunk: u32) -> Case {
    let pad = 8;
    let w = heads * d + pad;
    let slots = 4u32;
    let cache_rows = slots * t + chunk;
    let compact_rows = 2 * t;
    let kv = vec![
        Kv::random(rng, dt, (cache_rows * w) as usize),
        Kv::random(rng, dt, (compact_rows * d) as usize),
    ];
    let slot = |s: u32, h: u32, rows: u32| Seg {
        buf: 0,
        off: (s * t * w + h * d) as usize,
        rows,
        stride: w,
    };
    let current = |h: u32| Seg {
        buf: 0,
        off: (slots * t * w + h * d) as usize,
        rows: chunk,
        stride: w,
    };
    let mut table = Vec::new();
    for h in 0..heads {
        table.push(match h % 4 {
            // Sink head: sink slot 0, then the window ring (slots 1..=3) at its wrap-around
            // (oldest frame in slot 3, then 1, 2: out of memory order), then the current chunk.
            0 => vec![
                slot(0, h, t),
                slot(3, h, t),
                slot(1, h, t),
                slot(2, h, t),
                current(h),
            ],
            // Compact per-group layout (HMA): [rows][d], then an empty segment, then the chunk.
            1 => vec![
                Seg {
                    buf: 1,
                    off: 0,
                    rows: compact_rows - 3,
                    stride: d,
                },
                slot(2, h, 0),
                current(h),
            ],
            // Dummy head with nothing to attend to: output 0.
            2 => vec![],
            // Neighbor head: a partly filled slot and the current chunk.
            _ => vec![slot(1, h, t - 5), current(h)],
        });
    }
    Case {
        name: format!("{dt:?} d{d} cache heads {heads} q_rows {q_rows} t {t} chunk {chunk}"),
        dt,
        d,
        heads,
        q_rows,
        q_stride: w,
        scale: 3.0 / (d as f32).sqrt(),
        q_lo: -2.0,
        kv,
        table,
    }
}

/// Cross-attention: one segment per head over text K/V `[keys][heads·d]`.
fn cross_case(rng: &mut Rng, dt: Dt, d: u32, heads: u32, q_rows: u32, keys: u32) -> Case {
    let w = heads * d;
    let kv = vec![Kv::random(rng, dt, (keys * w) as usize)];
    let table = (0..heads)
        .map(|h| {
            vec![Seg {
                buf: 0,
                off: (h * d) as usize,
                rows: keys,
                stride: w,
            }]
        })
        .collect();
    Case {
        name: format!("{dt:?} d{d} cross heads {heads} q_rows {q_rows} keys {keys}"),
        dt,
        d,
        heads,
        q_rows,
        q_stride: w,
        scale: 2.0 / (d as f32).sqrt(),
        q_lo: -2.0,
        kv,
        table,
    }
}

// ---------------------------------------------------------------------------------------------
// f32
// ---------------------------------------------------------------------------------------------

#[test]
fn f32_mixed_segment_tables_d128() {
    let mut rng = Rng::new("attn f32 mixed d128");
    // 37 query rows: 3 blocks of 16, the last partial; slots of 21 tokens (tiles of 32 split).
    let c = cache_case(&mut rng, Dt::F32, 128, 4, 37, 21, 19);
    run_case(&mut rng, &c);
}

#[test]
fn f32_mixed_segment_tables_d64_long_segments() {
    let mut rng = Rng::new("attn f32 mixed d64");
    // Slots longer than a tile (45 = 32 + 13).
    let c = cache_case(&mut rng, Dt::F32, 64, 4, 20, 45, 33);
    run_case(&mut rng, &c);
}

#[test]
fn f32_cross_attention_odd_head_dim() {
    let mut rng = Rng::new("attn f32 cross");
    // head_dim 40: lanes past the head's dims stay idle; 77 keys = 2·32 + 13.
    let c = cross_case(&mut rng, Dt::F32, 40, 3, 70, 77);
    run_case(&mut rng, &c);
}

#[test]
fn f32_one_query_row() {
    let mut rng = Rng::new("attn f32 one row");
    let c = cache_case(&mut rng, Dt::F32, 128, 4, 1, 7, 5);
    run_case(&mut rng, &c);
    let c = cross_case(&mut rng, Dt::F32, 64, 2, 1, 1);
    run_case(&mut rng, &c);
}

// ---------------------------------------------------------------------------------------------
// bf16
// ---------------------------------------------------------------------------------------------

#[test]
fn bf16_d128_mixed_segment_tables() {
    let mut rng = Rng::new("attn bf16 d128 mixed");
    // 70 query rows: 2 blocks of 64, the second with 6 rows; slots of 21 tokens, so tiles
    // never fill (every tile is a tail) and the double buffer cycles through 5+ tiles.
    let c = cache_case(&mut rng, Dt::Bf16, 128, 4, 70, 21, 19);
    run_case(&mut rng, &c);
}

#[test]
fn bf16_d128_several_blocks_of_rows() {
    let mut rng = Rng::new("attn bf16 d128 blocks");
    // 200 query rows: 4 blocks of 64 (tail 8) for version 1, 2 blocks of 128 (tail 72) for
    // version 2; 2 heads so blocks of both heads run.
    let c = cache_case(&mut rng, Dt::Bf16, 128, 2, 200, 30, 17);
    run_case(&mut rng, &c);
}

#[test]
fn bf16_d64_mixed_segment_tables_long_segments() {
    let mut rng = Rng::new("attn bf16 d64 mixed");
    // Slots longer than a tile (70 = 64 + 6), chunk of 65.
    let c = cache_case(&mut rng, Dt::Bf16, 64, 4, 33, 70, 65);
    run_case(&mut rng, &c);
}

#[test]
fn bf16_cross_attention() {
    let mut rng = Rng::new("attn bf16 cross");
    // 77 text keys = 64 + 13, one segment per head with stride heads·d.
    let c = cross_case(&mut rng, Dt::Bf16, 128, 2, 40, 77);
    run_case(&mut rng, &c);
    let c = cross_case(&mut rng, Dt::Bf16, 64, 3, 65, 150);
    run_case(&mut rng, &c);
}

#[test]
fn bf16_one_query_row() {
    let mut rng = Rng::new("attn bf16 one row");
    let c = cache_case(&mut rng, Dt::Bf16, 128, 4, 1, 9, 3);
    run_case(&mut rng, &c);
    let c = cross_case(&mut rng, Dt::Bf16, 64, 1, 1, 1);
    run_case(&mut rng, &c);
}

// ---------------------------------------------------------------------------------------------
// All kernels
// ---------------------------------------------------------------------------------------------

/// Keys whose scores overflow to −inf in f32 come first (whole tiles of them), then ordinary
/// keys: the running max is −inf after the first tiles, which must not turn into NaN
/// ((−inf) − (−inf)). In f64 those scores are finite but so negative that their weight is 0,
/// so the references agree.
#[test]
fn neg_inf_scores_before_finite_ones() {
    let mut rng = Rng::new("attn -inf guard");
    for (dt, d) in [(Dt::F32, 64), (Dt::Bf16, 128), (Dt::Bf16, 64)] {
        let heads = 2u32;
        let w = heads * d;
        let (n_inf, n_fin) = (70u32, 30u32);
        let mut kv = Kv::random(&mut rng, dt, ((n_inf + n_fin) * w) as usize);
        // q > 0 and k = −3e38 (finite in bf16): every product is about −3e38, the sum
        // overflows to −inf.
        for x in &mut kv.kf[..(n_inf * w) as usize] {
            *x = dt.round(-3e38);
        }
        kv.k = Dev::from(dt, &kv.kf);
        let table = (0..heads)
            .map(|h| {
                let seg = |row: u32, rows: u32| Seg {
                    buf: 0,
                    off: (row * w + h * d) as usize,
                    rows,
                    stride: w,
                };
                // Two −inf segments (one spans whole tiles), then the finite keys.
                vec![seg(0, 64), seg(64, n_inf - 64), seg(n_inf, n_fin)]
            })
            .collect();
        let c = Case {
            name: format!("{dt:?} d{d} -inf scores first"),
            dt,
            d,
            heads,
            q_rows: 17,
            q_stride: w,
            scale: 1.0 / (d as f32).sqrt(),
            q_lo: 0.5,
            kv: vec![kv],
            table,
        };
        run_case(&mut rng, &c);
    }
}

// ---------------------------------------------------------------------------------------------
// Both kernels: zero heads / zero rows, host checks
// ---------------------------------------------------------------------------------------------

fn empty_launch(dt: Dt, d: u32, heads: u32, q_rows: u32) {
    let c = Case {
        name: format!("{dt:?} d{d} heads {heads} q_rows {q_rows}"),
        dt,
        d,
        heads,
        q_rows,
        q_stride: heads * d,
        scale: 0.1,
        q_lo: -2.0,
        kv: vec![],
        table: vec![vec![]; heads as usize],
    };
    for &warps in variants(&c) {
        let q = Dev::poisoned(dt, 16);
        let o = Dev::poisoned(dt, 16);
        let l = params(&c, &q, &o);
        launch_attn(&c, &l, warps);
        // Nothing may be written (read() checks the guards; the payload must stay poisoned).
        assert!(
            o.read().iter().all(|x| x.is_nan()),
            "{} ({warps} warps): wrote output",
            c.name
        );
    }
}

#[test]
fn zero_heads_and_zero_rows_launch_and_write_nothing() {
    for (dt, d) in [(Dt::F32, 128), (Dt::Bf16, 128), (Dt::Bf16, 64)] {
        empty_launch(dt, d, 0, 5);
        empty_launch(dt, d, 3, 0);
    }
}

#[test]
fn checks_reject_bad_params() {
    let good = AttnParams {
        q: 0x1000,
        o: 0x2000,
        seg_start: 0x3000,
        segs: 0x4000,
        q_rows: 10,
        heads: 2,
        head_dim: 128,
        q_stride: 256,
        scale_log2: 0.1,
    };
    assert!(AttnF32(good).check().is_ok());
    assert!(AttnBf16D128(good).check().is_ok());
    let bad = |f: &dyn Fn(&mut AttnParams)| {
        let mut p = good;
        f(&mut p);
        p
    };
    assert!(AttnBf16D64(good).check().unwrap_err().contains("head_dim"));
    assert!(AttnF32(bad(&|p| p.head_dim = 129)).check().is_err());
    assert!(AttnF32(bad(&|p| p.q_stride = 255)).check().is_err());
    assert!(AttnF32(bad(&|p| p.o = 0)).check().is_err());
    assert!(AttnF32(bad(&|p| p.scale_log2 = f32::NAN)).check().is_err());
    assert!(AttnF32(bad(&|p| {
        p.heads = 70000;
        p.head_dim = 1;
        p.q_stride = 70000
    }))
    .check()
    .is_err());
    // bf16 rows must be 16-byte aligned.
    assert!(AttnBf16D128(bad(&|p| p.q = 0x1008)).check().is_err());
    assert!(AttnBf16D128(bad(&|p| p.q_stride = 260)).check().is_err());
    assert!(AttnBf16D128W8(good).check().is_ok());
    assert!(AttnBf16D128W8(bad(&|p| p.q = 0x1008)).check().is_err());
    assert!(AttnBf16D128W8(bad(&|p| p.head_dim = 64))
        .check()
        .unwrap_err()
        .contains("attn_bf16_d128_w8"));
    // Version 2 covers twice the rows per block with twice the threads.
    let (v1, v2) = (AttnBf16D128(good).dims(), AttnBf16D128W8(good).dims());
    assert_eq!((v1.block[0], v2.block[0]), (128, 256));
    assert_eq!((v1.grid, v2.grid), ([1, 2, 1], [1, 2, 1]));
    assert_eq!((v1.dyn_smem, v2.dyn_smem), (80 << 10, 96 << 10));
    assert!(AttnF32(bad(&|p| p.q = 0x1004)).check().is_ok());

    let seg = |k: u64, rows: u32, stride: u32| KvSeg {
        k,
        v: 0x9000,
        rows,
        stride,
    };
    let b = AttnBf16D128(good);
    assert!(b
        .check_table(&[0, 1, 2], &[seg(0x8000, 5, 256), seg(0x8000, 5, 128)])
        .is_ok());
    assert!(
        b.check_table(&[0, 1], &[seg(0x8000, 5, 256)]).is_err(),
        "seg_start length"
    );
    assert!(
        b.check_table(&[0, 2, 1], &[seg(0x8000, 5, 256); 2])
            .is_err(),
        "decreasing"
    );
    assert!(
        b.check_table(&[0, 1, 3], &[seg(0x8000, 5, 256); 2])
            .is_err(),
        "past the end"
    );
    assert!(
        b.check_table(&[0, 1, 1], &[seg(0x8008, 5, 256)]).is_err(),
        "misaligned k"
    );
    assert!(
        b.check_table(&[0, 1, 1], &[seg(0x8000, 5, 260)]).is_err(),
        "misaligned stride"
    );
    assert!(
        b.check_table(&[0, 1, 1], &[seg(0x8000, 5, 64)]).is_err(),
        "stride < head_dim"
    );
    // Empty segments are not dereferenced, so they may be anything.
    assert!(b.check_table(&[0, 1, 1], &[seg(0, 0, 0)]).is_ok());
    assert!(AttnF32(good)
        .check_table(&[0, 1, 1], &[seg(0x8004, 5, 129)])
        .is_ok());
}

#[test]
fn params_layout_is_the_contract() {
    use std::mem::{align_of, size_of};
    assert_eq!((size_of::<KvSeg>(), align_of::<KvSeg>()), (24, 8));
    assert_eq!((size_of::<AttnParams>(), align_of::<AttnParams>()), (56, 8));
    assert_eq!(size_of::<AttnF32>(), 56);
    assert_eq!(size_of::<AttnBf16D128>(), 56);
    assert_eq!(size_of::<AttnBf16D128W8>(), 56);
    assert_eq!(size_of::<AttnBf16D64>(), 56);
}
