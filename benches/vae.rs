//! CPU VAE decode: ms per 3-latent-frame chunk, pixel frames per second and conv GFLOP/s
//! (counted as 2·kernel volume·Cin·Cout·output pixels) of the Wan2.1 VAE decoder with synthetic
//! weights. `DFRT_VAE_DIM` (default 96, the released VAE), `DFRT_VAE_HW` (latent side, default
//! 8: 64×64 pixels) and `DFRT_VAE_FRAMES` (latent frames, default 6) change the size.
//!
//!   cargo bench --bench vae

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dfrt::backend::Precision;
use dfrt::checkpoint::DType;
use dfrt::vae::{ops::CONV_FLOPS, Decoder, Vae, VaeConfig};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    let (dim, hw, frames) = (env("DFRT_VAE_DIM", 96), env("DFRT_VAE_HW", 8), env("DFRT_VAE_FRAMES", 6));
    let dir = std::env::temp_dir().join(format!("dfrt-bench-vae-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vae.safetensors");
    let cfg = VaeConfig::with_dim(dim);
    dfrt_weights::vae::synth_vae(&path, &cfg, 0, DType::F32).unwrap();
    for p in [Precision::F32, Precision::Bf16] {
        let vae = Arc::new(Vae::open(&path, p).unwrap());
        let z = cfg.z_dim;
        let lat = dfrt::pipeline::Rng::new(1).normals(frames * z * hw * hw);
        let mut dec = Decoder::new(vae.clone());
        let (mut ms, mut out) = (Vec::new(), 0);
        CONV_FLOPS.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        for lo in (0..frames).step_by(3) {
            let n = 3.min(frames - lo);
            let t = Instant::now();
            let px = dec.decode_chunk(&lat[lo * z * hw * hw..(lo + n) * z * hw * hw], n, hw, hw).unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            out += px.len() / (3 * 64 * hw * hw);
        }
        let s = t0.elapsed().as_secs_f64();
        let gflop = CONV_FLOPS.load(Ordering::Relaxed) as f64 / 1e9;
        println!(
            "vae decode cpu {}: dim {dim}, {frames} latent frames {hw}x{hw} -> {out} frames {}x{}: {} ms/chunk, {:.2} frames/s, conv {gflop:.1} GFLOP at {:.1} GFLOP/s",
            p.name(),
            8 * hw,
            8 * hw,
            ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
            out as f64 / s,
            gflop / s
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
