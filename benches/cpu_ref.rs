//! CPU reference throughput: one forward and a whole generation of the `small` preset with
//! random weights. `DFRT_BENCH_FRAMES` (default 9) and `DFRT_BENCH_HW` (latent side, default 32)
//! change the size, `DFRT_BENCH_DTYPE` (`f32`, `bf16`; default both) the precision. Prints
//! latent tokens/s (tokens of the generated frames per second; each token goes through 5
//! forwards) and forward tokens/s, then the same as a JSON line (read by
//! `benches/cpu_vs_torch.py`, which runs this beside `benches/torch_ref.py`). Threads: rayon's
//! (`RAYON_NUM_THREADS`, default one per core).

use std::time::Instant;

use dfrt::api::SessionOptions;
use dfrt::backend::{Backend, Precision};
use dfrt::cache::KvCache;
use dfrt::checkpoint::{write_checkpoint, OutTensor};
use dfrt::model::{NoHook, PassInfo};
use dfrt::pipeline::{Latent, Noise, Rng};
use dfrt::policy::Policy;
use dfrt::run::ModelSource;
use dfrt::ModelConfig;

fn synth(cfg: &ModelConfig, path: &std::path::Path) {
    let mut rng = Rng::new(11);
    let d = cfg.dim;
    let mut ts = Vec::new();
    let mut t = |name: String, shape: Vec<usize>, fan_in: usize| {
        let n: usize = shape.iter().product();
        let s = 1.0 / (fan_in as f32).sqrt();
        let v: Vec<f32> = rng.normals(n).into_iter().map(|x| x * s).collect();
        ts.push(OutTensor::f32(name, shape, &v));
    };
    let pf = cfg.in_dim * 4;
    t("patch_embedding.weight".into(), vec![d, cfg.in_dim, 1, 2, 2], pf);
    t("patch_embedding.bias".into(), vec![d], 1);
    for (n, o, i) in [
        ("text_embedding.0", d, cfg.text_dim),
        ("text_embedding.2", d, d),
        ("time_embedding.0", d, cfg.freq_dim),
        ("time_embedding.2", d, d),
        ("time_projection.1", 6 * d, d),
        ("head.head", cfg.patch_features(), d),
    ] {
        t(format!("{n}.weight"), vec![o, i], i);
        t(format!("{n}.bias"), vec![o], 1);
    }
    t("head.modulation".into(), vec![1, 2, d], 100);
    for l in 0..cfg.num_layers {
        let p = format!("blocks.{l}");
        t(format!("{p}.modulation"), vec![1, 6, d], 100);
        for a in ["self_attn", "cross_attn"] {
            for x in ["q", "k", "v", "o"] {
                t(format!("{p}.{a}.{x}.weight"), vec![d, d], d);
                t(format!("{p}.{a}.{x}.bias"), vec![d], 1);
            }
            t(format!("{p}.{a}.norm_q.weight"), vec![d], 1);
            t(format!("{p}.{a}.norm_k.weight"), vec![d], 1);
        }
        t(format!("{p}.norm3.weight"), vec![d], 1);
        t(format!("{p}.norm3.bias"), vec![d], 1);
        t(format!("{p}.ffn.0.weight"), vec![cfg.ffn_dim, d], d);
        t(format!("{p}.ffn.0.bias"), vec![cfg.ffn_dim], 1);
        t(format!("{p}.ffn.2.weight"), vec![d, cfg.ffn_dim], cfg.ffn_dim);
        t(format!("{p}.ffn.2.bias"), vec![d], 1);
    }
    write_checkpoint(path, cfg, &ts).unwrap();
}

/// CPU seconds this process has used (all threads, user + system), from /proc/self/stat
/// (clock ticks of 10 ms); 0 where that file does not exist. On a loaded machine CPU time is
/// steadier than wall time.
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let frames = env("DFRT_BENCH_FRAMES", 9);
    let hw = env("DFRT_BENCH_HW", 32);
    let cfg = ModelConfig::preset("small").unwrap();
    let path = std::env::temp_dir().join(format!("dfrt-bench-small-{}.safetensors", std::process::id()));
    synth(&cfg, &path);
    // rayon's rule: RAYON_NUM_THREADS, else one thread per core.
    let threads = env("RAYON_NUM_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dtypes = match std::env::var("DFRT_BENCH_DTYPE").as_deref() {
        Ok("f32") => vec![Precision::F32],
        Ok("bf16") => vec![Precision::Bf16],
        _ => vec![Precision::F32, Precision::Bf16],
    };
    for precision in dtypes {
        // The weights load the way every run loads them (one source per precision: a
        // source serves one CPU precision).
        let lm = ModelSource::with_config(&path, cfg.clone()).unwrap().cpu_model(precision).unwrap();
        let (be, model) = (lm.be.clone(), lm.model.clone());
        let latent = Latent { channels: cfg.in_dim, height: hw, width: hw };
        let tpf = (hw / 2) * (hw / 2);
        let ctx = Rng::new(5).normals(cfg.text_len * cfg.text_dim);

        // One forward of chunk 0 (no cache).
        let text = model.embed_text(&be, &ctx, cfg.text_len).unwrap();
        let groups = Policy::Full.initial_groups(cfg.num_heads, Some(frames)).unwrap();
        let mut cache = KvCache::new(cfg.num_layers, cfg.num_heads, cfg.head_dim(), tpf, precision, &groups).unwrap();
        let x = be.upload(&Rng::new(6).normals(3 * latent.frame_len()), &[3, cfg.in_dim, hw, hw]);
        let pass = PassInfo::denoise(0, 0, 0, 3);
        // One warm-up forward (as the peer does), then the timed ones.
        model.forward(&be, &x, 1000.0, &pass, &mut cache, &text, &mut NoHook, None).unwrap();
        let reps = 3;
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        for _ in 0..reps {
            model.forward(&be, &x, 1000.0, &pass, &mut cache, &text, &mut NoHook, None).unwrap();
        }
        let fwd = t0.elapsed().as_secs_f64() / reps as f64;
        let fwd_cpu = (cpu_seconds() - c0) / reps as f64;

        // A whole generation.
        let opts = SessionOptions::new(Policy::Full, hw, hw, Some(frames));
        let mut s = lm.session(&opts, &ctx, cfg.text_len, Noise::Seeded(Rng::new(1))).unwrap();
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        s.run(&mut |_| {}).unwrap();
        let gen = t0.elapsed().as_secs_f64();
        let gen_cpu = cpu_seconds() - c0;
        println!(
            "small preset, {hw}x{hw} latent ({tpf} tokens/frame), {}: forward (chunk 0, {} tokens) {:.1} ms = {:.0} tokens/s; generation of {frames} frames {:.2} s = {:.0} latent tokens/s",
            precision.name(), 3 * tpf, fwd * 1e3, 3.0 * tpf as f64 / fwd, gen, (frames * tpf) as f64 / gen
        );
        println!(
            "{{\"peer\":\"dfrt-cpu\",\"threads\":{},\"preset\":\"small\",\"hw\":{hw},\"dtype\":\"{}\",\"frames\":{frames},\"forward_ms\":{},\"forward_tokens_per_s\":{},\"generation_s\":{gen},\"forward_cpu_ms\":{},\"generation_cpu_s\":{gen_cpu},\"latent_tokens_per_s\":{}}}",
            threads, precision.name(), fwd * 1e3, 3.0 * tpf as f64 / fwd, fwd_cpu * 1e3, (frames * tpf) as f64 / gen
        );
    }
    std::fs::remove_file(&path).ok();
}
