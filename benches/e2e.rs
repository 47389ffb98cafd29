//! End-to-end benchmark: FPS, ms per chunk and KV bytes for each cache policy and resolution,
//! with synthetic weights (`dfrt_weights::synth_checkpoint`, bf16).
//!
//!   cargo bench --bench e2e -- [--device auto|cuda|sim|cpu] [--model PRESET|FILE] [--layers N]
//!       [--res 480p,720p,1080p] [--policy P]... [--chunks N] [--dtype bf16|f32]
//!       [--graphs on|off|both] [--teacache off,0.2] [--attn-rows 64|128] [--json FILE]
//!
//! Defaults on cuda: the full Wan2.1 1.3B config, 480p (latent 60x104), 720p (90x160) and
//! 1080p (136x240: 1080/8 = 135 is not a multiple of the 2x2 patch, so 1088 rows, the nearest
//! valid size), policies `full`, `window:12,sink:3`, `dummy:180`, 7 chunks (21 latent frames).
//! On sim or cpu (no GPU): the `tiny` preset at a tiny latent (8x12), 3 chunks, and
//! `dummy:<half the heads>`: those times only show that the path runs (NOT GPU figures).
//!
//! Counting (see support/e2e_run.rs): 1 latent frame = 4 video frames; FPS = video frames /
//! diffusion time (the chunk loop: 4 denoising forwards + 1 cache-writing forward per chunk).
//! `--graphs` (GPU devices): every forward as a recorded graph (`on`, the default, as
//! `dfrt generate`), direct launches (`off`), or both side by side. `--attn-rows 128` runs
//! version 2 of the bf16 d128 attention kernel (`attn_bf16_d128_w8`; default 64, version 1).
//! `--teacache off,0.2` gives rows with TeaCache off and at each threshold (direct launches:
//! TeaCache runs no graphs), with the skipped denoising forwards counted. Synthetic weights
//! change the time modulation far more between steps than trained ones, so the official 0.2
//! skips nothing on them; the skip counts say what a row measured. `--layers N` cuts a
//! preset to its first N blocks with every shape kept (e.g. `--model wan-14b --layers 2`: the
//! 14B model's dim 5120, 40 heads × 128, ffn 13824 without 28 GB of weights); per-layer costs
//! scale by `num_layers / N` to the whole model.
//! "ms/chunk" is the mean over chunks after the first (the first carries one-time costs such
//! as PTX JIT and cuBLASLt heuristics; under `dummy` chunk 1 also calibrates and compacts).

#[path = "support/e2e_run.rs"]
mod e2e_run;
#[path = "support/report.rs"]
mod report;

use std::path::PathBuf;

use dfrt::backend::gpu::{AttnRows, GpuOptions};
use dfrt::backend::Precision;
use dfrt::checkpoint::{DType, TensorFile};
use dfrt::pipeline::Graphs;
use dfrt::run::{DeviceChoice, ModelSource, Target};
use dfrt::ModelConfig;
use e2e_run::{default_policies, run_one, E2eRow, Res, RunSpec};
use report::{ms, Args};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("e2e bench: error: {e}");
        std::process::exit(1);
    }
}

/// The checkpoint: a file, or a preset synthesised once into the temp dir (reused by later
/// runs: same preset, seed and dtype give the same file).
fn checkpoint(model: &str, layers: Option<usize>) -> Result<(PathBuf, ModelConfig), String> {
    if model.ends_with(".safetensors") {
        if layers.is_some() {
            return Err("--layers applies to presets, not to a checkpoint file".into());
        }
        let f = TensorFile::open(model).map_err(|e| e.to_string())?;
        return Ok((PathBuf::from(model), f.config().map_err(|e| e.to_string())?));
    }
    let mut cfg = ModelConfig::preset(model).map_err(|e| e.to_string())?;
    if let Some(n) = layers {
        if n == 0 || n > cfg.num_layers {
            return Err(format!("--layers {n}: the {model} preset has {} blocks", cfg.num_layers));
        }
        cfg.num_layers = n;
    }
    let dir = std::env::var_os("DFRT_BENCH_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("dfrt-bench-{model}-l{}-bf16.safetensors", cfg.num_layers));
    let ok = TensorFile::open(&path).ok().and_then(|f| f.config().ok()).is_some_and(|c| c == cfg);
    if !ok {
        eprintln!("synthesising {model} weights (bf16) into {} ...", path.display());
        let t = std::time::Instant::now();
        let tmp = path.with_extension("partial");
        dfrt_weights::synth_checkpoint(&tmp, &cfg, 1, DType::BF16).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok((path, cfg))
}

fn real_main() -> Result<(), String> {
    let a = Args::parse(&[
        "device",
        "model",
        "layers",
        "res",
        "policy",
        "chunks",
        "dtype",
        "graphs",
        "teacache",
        "attn-rows",
        "json",
    ])?;
    let choice = a.device_choice(DeviceChoice::Sim)?;
    let cuda = choice.open_cuda().map_err(|e| e.to_string())?.map(|d| d.describe());
    let device = choice.name();
    let big = cuda.is_some();
    let model = a.get("model").unwrap_or(if big { "wan-1.3b" } else { "tiny" });
    let res: Vec<Res> = a
        .get("res")
        .unwrap_or(if big { "480p,720p,1080p" } else { "tiny" })
        .split(',')
        .map(Res::parse)
        .collect::<dfrt::Result<_>>()
        .map_err(|e| e.to_string())?;
    let chunks: usize = a
        .get("chunks")
        .map(|c| c.parse().map_err(|_| format!("bad --chunks `{c}`")))
        .transpose()?
        .unwrap_or(if big { 7 } else { 3 });
    if chunks == 0 {
        return Err("--chunks must be at least 1".into());
    }
    let precision = Precision::parse(a.get("dtype").unwrap_or("bf16")).map_err(|e| e.to_string())?;
    let attn_rows: u32 =
        a.get("attn-rows").unwrap_or("64").parse().map_err(|_| "bad --attn-rows (64 or 128)".to_string())?;
    let modes: &[Graphs] = match a.get("graphs").unwrap_or("on") {
        "on" => &[Graphs::On],
        "off" => &[Graphs::Off],
        "both" => &[Graphs::Off, Graphs::On],
        g => return Err(format!("bad --graphs `{g}` (on, off or both)")),
    };
    let teacache: Vec<Option<f64>> = a
        .get("teacache")
        .unwrap_or("off")
        .split(',')
        .map(|t| match t {
            "off" => Ok(None),
            t => t.parse().map(Some).map_err(|_| format!("bad --teacache `{t}` (off or a threshold)")),
        })
        .collect::<Result<_, _>>()?;
    let layers = a.get("layers").map(|n| n.parse::<usize>().map_err(|_| format!("bad --layers `{n}`"))).transpose()?;
    let (path, cfg) = checkpoint(model, layers)?;
    let mut policies = a.all("policy");
    if policies.is_empty() {
        policies = default_policies(&cfg);
    }
    let source = ModelSource::open(&path).map_err(|e| e.to_string())?;
    let gpu =
        GpuOptions { attn_rows: AttnRows::from_rows(attn_rows).map_err(|e| e.to_string())?, ..Default::default() };
    let target = Target { device: choice, precision, gpu };
    let card = cuda.clone().unwrap_or_else(|| {
        if choice == DeviceChoice::Cpu {
            "CPU reference backend".into()
        } else {
            "SIMT simulator (CPU)".into()
        }
    });
    let model = match layers {
        Some(n) => format!("{model} cut to {n} of its blocks"),
        None => model.to_string(),
    };
    println!("device: {device} ({card}); model {model} (synthetic bf16 weights), dtype {}, {chunks} chunks = {} latent frames = {} video frames; bf16 d128 attention: {attn_rows} rows per block", precision.name(), chunks * 3, chunks * 12);
    if !big {
        println!("{}", if choice == DeviceChoice::Cpu { report::CPU_NOTE } else { report::SIM_NOTE });
    }
    let mut rows = Vec::new();
    for r in &res {
        for p in &policies {
            for &tea in &teacache {
                // TeaCache runs direct launches, so its rows have no graphs axis.
                let graph_modes = if choice == DeviceChoice::Cpu || tea.is_some() { &[Graphs::Off][..] } else { modes };
                for &graphs in graph_modes {
                    let spec = RunSpec { policy: p, chunks, graphs, teacache: tea };
                    rows.push(go(&target, &source, r, &spec)?);
                }
            }
        }
    }
    let mb = |b: f64| if b < 1e7 { format!("{:.3}", b / 1e6) } else { format!("{:.1}", b / 1e6) };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.res.clone(),
                format!("{}x{}", r.lat_h, r.lat_w),
                r.policy.clone(),
                r.teacache.map_or("off".into(), |t| format!("{t} ({} skipped)", r.skipped_forwards)),
                graphs_cell(r.graphs).into(),
                format!("{:.2}", r.fps()),
                ms(r.steady_ms() / 1e3),
                ms(r.chunk_ms[0] / 1e3),
                mb(r.kv_bytes as f64),
                format!("{:.1}%", 100.0 * r.kv_policy_bytes as f64 / r.kv_full_bytes as f64),
                r.loop_allocs.map_or("-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "res",
                "latent",
                "policy",
                "teacache",
                "graphs",
                "FPS",
                "ms/chunk",
                "chunk0 ms",
                "KV MB",
                "KV vs full",
                "loop allocs"
            ],
            &cells,
            &[5, 6, 7, 8, 9, 10]
        )
    );
    println!("FPS = 4 video frames per latent frame / diffusion time; KV MB = cache bytes allocated after the last chunk; KV vs full = the policy's accounting against `full` at the same frames");
    if let Some(p) = a.json() {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "res": r.res, "latent": [r.lat_h, r.lat_w], "video": [r.lat_h * 8, r.lat_w * 8], "policy": r.policy,
                    "chunks": r.chunks, "latent_frames": r.latent_frames, "video_frames": r.video_frames,
                    "diffusion_s": r.secs, "fps": r.fps(), "ms_per_chunk": r.steady_ms(), "chunk_ms": r.chunk_ms,
                    "kv_bytes": r.kv_bytes, "kv_policy_bytes": r.kv_policy_bytes, "kv_full_bytes": r.kv_full_bytes,
                    "loop_allocs": r.loop_allocs, "heap_peak": r.heap_peak, "graphs": r.graphs,
                    "teacache": r.teacache, "skipped_forwards": r.skipped_forwards,
                })
            })
            .collect();
        let v = serde_json::json!({
            "bench": "e2e", "device": device, "card": card, "model": model, "layers": cfg.num_layers, "dtype": precision.name(), "attn_rows": attn_rows,
            "unix_time": report::unix_time(), "note": (!big).then_some(if choice == DeviceChoice::Cpu { report::CPU_NOTE } else { report::SIM_NOTE }),
            "counting": "1 latent frame = 4 video frames; FPS = video frames / diffusion time (chunk loop)",
            "rows": rows,
        });
        report::write_json(&p, &v)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn graphs_cell(g: Option<bool>) -> &'static str {
    match g {
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    }
}

fn go(target: &Target, model: &ModelSource, r: &Res, spec: &RunSpec) -> Result<E2eRow, String> {
    let p = spec.policy;
    eprintln!(
        "  {} ({}x{} latent) {p}, teacache {:?}, graphs {:?} ...",
        r.name, r.lat_h, r.lat_w, spec.teacache, spec.graphs
    );
    let row = run_one(target, model, r, spec).map_err(|e| format!("{} {p}: {e}", r.name))?;
    eprintln!(
        "    {:.2} FPS, {} ms/chunk, chunk ms {:?}",
        row.fps(),
        ms(row.steady_ms() / 1e3),
        row.chunk_ms.iter().map(|m| m.round() as i64).collect::<Vec<_>>()
    );
    Ok(row)
}
