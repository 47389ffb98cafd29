//! Attention kernels: FLOP accounting and one simulator launch each.
//!
//! `cargo run --release -p dfrt-kernels --example attn_flops [q_rows] [keys] [heads]`
//!
//! FLOPs of a forward launch are counted as FlashAttention does: `4·Lq·Lk·H·d` (QKᵀ and P·V,
//! one multiply-add = 2 FLOPs; softmax not counted), see [`attn_flops`]. On a GPU, TFLOP/s =
//! that count / kernel time; the benchmark harness that times it on hardware lives with the
//! GPU backend. Here the kernels run in the SIMT simulator, so the printed time is simulator
//! wall time (useful only to size tests), not a GPU estimate.
use dfrt_kernels::attention::*;
use dfrt_kernels::gpu::f32_to_bf16;
use dfrt_kernels::{sim, Launch};
use std::time::Instant;

/// 16-byte aligned zeroed storage for `bytes` bytes.
fn storage(bytes: usize) -> Vec<u128> {
    vec![0u128; bytes.div_ceil(16)]
}

fn main() {
    let arg = |i: usize, def: u32| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(def)
    };
    let (q_rows, keys, heads) = (arg(1, 128), arg(2, 256), arg(3, 2));
    for (name, d, es) in [
        ("attn_f32", 128u32, 4usize),
        ("attn_bf16_d128", 128, 2),
        ("attn_bf16_d128_w8", 128, 2),
        ("attn_bf16_d64", 64, 2),
    ] {
        let w = (heads * d) as usize;
        // Small deterministic values: the content does not matter for timing.
        let fill = |v: &mut Vec<u128>, n: usize| {
            // SAFETY: `v` holds at least n·es bytes; u128 storage accepts any bytes.
            let b = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * es) };
            for i in 0..n {
                let x = ((i * 37 % 101) as f32 - 50.0) / 100.0;
                if es == 4 {
                    b[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
                } else {
                    b[2 * i..2 * i + 2].copy_from_slice(&f32_to_bf16(x).to_le_bytes());
                }
            }
        };
        let mut q = storage(q_rows as usize * w * es);
        let mut k = storage(keys as usize * w * es);
        let mut v = storage(keys as usize * w * es);
        let o = storage(q_rows as usize * w * es);
        fill(&mut q, q_rows as usize * w);
        fill(&mut k, keys as usize * w);
        fill(&mut v, keys as usize * w);
        // One segment per head over a [keys][heads·d] buffer (the cross-attention layout).
        let segs: Vec<KvSeg> = (0..heads)
            .map(|h| KvSeg {
                k: k.as_ptr() as u64 + (h * d) as u64 * es as u64,
                v: v.as_ptr() as u64 + (h * d) as u64 * es as u64,
                rows: keys,
                stride: heads * d,
            })
            .collect();
        let seg_start: Vec<u32> = (0..=heads).collect();
        let p = AttnParams {
            q: q.as_ptr() as u64,
            o: o.as_ptr() as u64,
            seg_start: seg_start.as_ptr() as u64,
            segs: segs.as_ptr() as u64,
            q_rows,
            heads,
            head_dim: d,
            q_stride: heads * d,
            scale_log2: std::f32::consts::LOG2_E / (d as f32).sqrt(),
        };
        let t = Instant::now();
        // SAFETY: every buffer is sized for the params and outlives the launch.
        let (r, dims) = unsafe {
            match name {
                "attn_f32" => (sim::run(AttnF32(p)), AttnF32(p).dims()),
                "attn_bf16_d128" => (sim::run(AttnBf16D128(p)), AttnBf16D128(p).dims()),
                "attn_bf16_d128_w8" => (sim::run(AttnBf16D128W8(p)), AttnBf16D128W8(p).dims()),
                _ => (sim::run(AttnBf16D64(p)), AttnBf16D64(p).dims()),
            }
        };
        r.unwrap();
        let s = t.elapsed().as_secs_f64();
        let flops = attn_flops(q_rows as u64, keys as u64 * heads as u64, d as u64);
        println!(
            "{name}: Lq {q_rows} Lk {keys} H {heads} d {d}: {flops} FLOP (4·Lq·Lk·H·d); grid {:?} block {:?} smem {} B; simulator {s:.3} s",
            dims.grid, dims.block, dims.dyn_smem
        );
    }
}
