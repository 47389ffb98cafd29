//! CPU encode time of one 512-token prompt at the real umT5-XXL size (dim 4096, 64 heads, FFN
//! 10240, 24 layers; 5.7 B parameters), from a reduced layer count: every layer is the same
//! work, so the time of `DFRT_BENCH_LAYERS` (default 2) random-weight layers, per layer, times
//! 24 is the full encoder's (the embedding gather and the final norm are negligible). Also
//! prints the measured GFLOP/s (FLOPs as `T5Config::flops` counts them: the GEMMs and the
//! attention, 2 per multiply-add).
//! `DFRT_BENCH_DTYPE` f32 (default) or bf16 storage. The PyTorch peer is
//! `benches/text_encoder_torch.py`, the same layers in eager PyTorch on the same machine.
//!
//!   cargo bench -p dfrt-tests --bench text_encoder

use std::collections::BTreeMap;
use std::time::Instant;

use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::Precision;
use dfrt::checkpoint::{write_safetensors, OutTensor};
use dfrt::pipeline::Rng;
use dfrt::text::t5::{t5_tensor_names, T5_CONFIG_KEY};
use dfrt::text::{Residency, T5Config, T5Encoder};

fn main() {
    let layers: usize = std::env::var("DFRT_BENCH_LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let precision = Precision::parse(&std::env::var("DFRT_BENCH_DTYPE").unwrap_or_else(|_| "f32".into())).unwrap();
    let full = T5Config::umt5_xxl();
    // A small vocabulary: the embedding is a row gather, its size changes nothing but the file.
    let cfg = T5Config { num_layers: layers, vocab: 1024, ..full.clone() };
    let dir = std::env::temp_dir().join(format!("dfrt-bench-t5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t5.safetensors");
    let mut rng = Rng::new(5);
    let ts: Vec<OutTensor> = t5_tensor_names(&cfg)
        .into_iter()
        .map(|(n, s)| {
            let fan_in = *s.last().unwrap() as f32;
            let v: Vec<f32> = rng
                .normals(s.iter().product())
                .into_iter()
                .map(|x| if s.len() == 1 { 1.0 } else { x / fan_in.sqrt() })
                .collect();
            OutTensor::bf16(n, s, &v)
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert(T5_CONFIG_KEY.to_string(), cfg.to_json());
    write_safetensors(&path, &ts, &meta).unwrap();
    drop(ts);

    let be = CpuBackend::new(precision);
    let enc = T5Encoder::load(&be, &path, Residency::Resident).unwrap();
    let l = cfg.text_len;
    let ids: Vec<u32> = (0..l as u32).map(|i| 3 + i % 1000).collect();
    let mask = vec![1u8; l];
    // One warm-up, then the best of 3.
    enc.encode(&be, &ids, &mask, None).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let out = enc.encode(&be, &ids, &mask, None).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(out.iter().all(|x| x.is_finite()));
    }
    let per_layer = best / layers as f64;
    let gflops = cfg.flops(l) / best / 1e9;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "umT5-XXL encoder, {l} tokens, {} storage, {threads} threads: {layers} layers in {best:.2} s ({per_layer:.2} s/layer, {gflops:.1} GFLOP/s); full 24 layers ({:.2} TFLOP): {:.1} s",
        precision.name(),
        full.flops(l) / 1e12,
        per_layer * full.num_layers as f64
    );
    println!(
        "{}",
        serde_json::json!({"bench": "text_encoder", "tokens": l, "dtype": precision.name(), "threads": threads, "layers_measured": layers,
            "seconds": best, "seconds_per_layer": per_layer, "gflops": gflops, "full_encoder_s": per_layer * full.num_layers as f64, "full_params": full.params()})
    );
    std::fs::remove_dir_all(&dir).ok();
}
