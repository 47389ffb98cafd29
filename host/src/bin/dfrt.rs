//! `dfrt`: generate latent video with a Wan causal DiT.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::{Backend, Precision};
use dfrt::cache::Policy;
use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile, CONFIG_KEY};
use dfrt::config::FRAMES_PER_CHUNK;
use dfrt::dummy::{stability, HeadProgram};
use dfrt::model::Model;
use dfrt::pipeline::inputs::{read_context, Inputs};
use dfrt::pipeline::{Latent, Noise, Rng, Session};
use dfrt::gpu::{CudaDevice, Device, GpuBackend, SimDevice};
use dfrt::{Error, ModelConfig, Result};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "dfrt", version, about = "Autoregressive video diffusion runtime (Wan causal DiT, Self-Forcing, Dummy Forcing)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate latent frames chunk by chunk (3 latent frames, 4 denoising steps + 1 clean pass each).
    Generate(GenerateArgs),
    /// Dummy Forcing offline calibration: run each context up to and including the calibration
    /// step, report how stable the head groups are across contexts, write the majority program.
    Calibrate(CalibrateArgs),
}

#[derive(clap::Args)]
struct CalibrateArgs {
    /// Runtime checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Text embedding file (tensor `context`); give several to compare prompts.
    #[arg(long, required = true)]
    context: Vec<PathBuf>,
    /// Dummy Forcing policy: dummy:N[,chunks:L][,ar-start:K][,packing:on|off]
    /// (default: half of all heads dummy, as the official 180 of 360).
    #[arg(long)]
    policy: Option<String>,
    /// Seed of the noise and of the query-row sampler (the first seed with --seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seeds per context: seed, seed+1, ….
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Latent frames of the video being calibrated for (default and minimum: 3·(K+1));
    /// generation stops after AR step K.
    #[arg(long)]
    frames: Option<usize>,
    #[arg(long, default_value_t = 16)]
    height: usize,
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Where to write the majority head program (JSON, usable with `generate --heads`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("cond").required(true).args(["context", "inputs"]))]
struct GenerateArgs {
    /// Runtime checkpoint (safetensors with `dfrt.config` metadata; see `dfrt-weights convert`).
    #[arg(long)]
    model: PathBuf,
    /// Text embedding: safetensors with a tensor `context` of shape [L, text_dim] or [1, L, text_dim].
    /// Noise then comes from --seed.
    #[arg(long)]
    context: Option<PathBuf>,
    /// All inputs and random draws: `noise`, `context`, `renoise.{c}.{s}` (golden inputs layout).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Latent frames to generate, a multiple of 3 (default: the noise's frame count, or 21).
    #[arg(long)]
    frames: Option<usize>,
    /// Seed of the noise generator (PCG32 + Box–Muller) when no --inputs is given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latent height and width (latent pixels) for the seeded path.
    #[arg(long, default_value_t = 16)]
    height: usize,
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// KV-cache policy: full | window:W,sink:S | dummy:N[,chunks:L][,ar-start:K][,packing:on|off].
    #[arg(long, default_value = "full")]
    policy: String,
    /// Dummy Forcing: reuse this head program (JSON) and skip calibration.
    #[arg(long)]
    heads: Option<PathBuf>,
    /// Dummy Forcing: write the head program (groups and calibration masses) to this JSON file.
    #[arg(long)]
    save_heads: Option<PathBuf>,
    /// Compute device: cpu (reference) | sim (the GPU path in the SIMT simulator) | cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// No progress bar and no summary line.
    #[arg(long)]
    quiet: bool,
    /// With --device cuda: synchronise after every kernel and name the kernel that faulted.
    #[arg(long)]
    sync_debug: bool,
    /// Output safetensors file (tensor `latents` [1, F, C, H, W], f32).
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Calibrate(a) => calibrate(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc offers it.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    if a.sync_debug && a.device != "cuda" {
        return Err(Error::Input(format!("--sync-debug is for --device cuda (device `{}` runs every op synchronously already)", a.device)));
    }
    match a.device.as_str() {
        "cpu" => generate_on(a, Arc::new(CpuBackend::new(precision)), &|_, _, _, _, _| Ok(())),
        "sim" => gpu_generate(a, GpuBackend::new(SimDevice::new(), precision)),
        "cuda" => {
            let dev = CudaDevice::new(0, a.sync_debug)?;
            if !a.quiet {
                eprintln!("dfrt: cuda device {}", dev.describe());
            }
            gpu_generate(a, GpuBackend::new(dev, precision))
        }
        d => Err(Error::Device(format!("unknown device `{d}` (expected cpu, sim or cuda)"))),
    }
}

/// The GPU path: the memory plan is checked and reserved before the model is loaded.
fn gpu_generate<D: Device>(a: GenerateArgs, be: GpuBackend<D>) -> Result<()> {
    let be = Arc::new(be);
    let planner = be.clone();
    generate_on(a, be, &move |cfg, policy, latent, frames, ckpt| planner.prepare(cfg, policy, latent, Some(frames), ckpt).map(|_| ()))
}

type Prepare<'a> = &'a dyn Fn(&ModelConfig, &Policy, Latent, usize, &TensorFile) -> Result<()>;

fn generate_on<B: Backend + 'static>(a: GenerateArgs, be: Arc<B>, prepare: Prepare<'_>) -> Result<()> {
    let precision = be.precision();
    let policy = Policy::parse(&a.policy)?;
    let spec = match &policy {
        Policy::Dummy(s) => Some(*s),
        _ => None,
    };
    if spec.is_none() && (a.heads.is_some() || a.save_heads.is_some()) {
        return Err(Error::Policy(format!("--heads and --save-heads need a dummy policy (--policy dummy:N), not `{}`", a.policy)));
    }
    let t_load = Instant::now();
    let ckpt = TensorFile::open(&a.model)?;
    let cfg = ckpt.config()?;
    policy.validate(&cfg)?;
    let program = a.heads.as_ref().map(|p| HeadProgram::load_for(p, &cfg)).transpose()?;

    let (context, latent, frames, noise, source, rows) = if let Some(p) = &a.inputs {
        let f = TensorFile::open(p)?;
        let inp = Inputs::read(&f, &cfg)?;
        let frames = a.frames.unwrap_or(inp.frames);
        let noise = inp.noise(frames)?;
        (inp.context, inp.latent, frames, noise, format!("inputs:{}", p.display()), inp.sampled_rows)
    } else {
        let p = a.context.as_ref().expect("clap requires --context or --inputs");
        let ctx = read_context(&TensorFile::open(p)?, &cfg)?;
        let frames = a.frames.unwrap_or(21);
        let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
        (ctx, latent, frames, Noise::Seeded(Rng::new(a.seed)), format!("seed:{}", a.seed), Default::default())
    };
    prepare(&cfg, &policy, latent, frames, &ckpt)?;
    let model = Arc::new(Model::load(&*be, &ckpt, &cfg)?);
    be.status()?;
    let load_s = t_load.elapsed().as_secs_f64();
    if let (Some(s), Some(_)) = (spec, &a.save_heads) {
        if frames <= s.ar_start * FRAMES_PER_CHUNK {
            return Err(Error::Policy(format!(
                "--save-heads: {frames} frames end before the calibration step (AR step {}, frames {}..{}); generate at least {} frames",
                s.ar_start,
                s.ar_start * FRAMES_PER_CHUNK,
                (s.ar_start + 1) * FRAMES_PER_CHUNK,
                (s.ar_start + 1) * FRAMES_PER_CHUNK
            )));
        }
    }
    let mut session = Session::new(model.clone(), be.clone(), policy.clone(), latent, Some(frames), &context.data, context.rows, noise)?;
    if let Some(d) = session.dummy_mut() {
        d.set_seed(a.seed);
        d.set_sampled_rows(rows)?;
        if let Some(p) = program {
            d.set_program(p)?;
        }
    }

    let chunks = frames / FRAMES_PER_CHUNK;
    let forwards = (chunks * (session.schedule.steps.len() + 1)) as u64;
    let bar = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(forwards), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(forwards);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} forwards  {msg}  [{elapsed_precise}]").unwrap());
        b
    };
    let t_gen = Instant::now();
    let mut chunk_ms = Vec::new();
    let mut latents = Vec::with_capacity(frames * latent.frame_len());
    while !session.done() {
        let tc = Instant::now();
        let x = session.next_chunk(&mut |p| {
            let what = match p.pass.step {
                Some(s) => format!("step {s}"),
                None => "clean pass".into(),
            };
            bar.set_message(format!("chunk {}/{} {what}", p.pass.chunk + 1, chunks));
            bar.inc(1);
        })?;
        chunk_ms.push(tc.elapsed().as_secs_f64() * 1e3);
        latents.extend(x);
    }
    bar.finish_and_clear();
    let gen_s = t_gen.elapsed().as_secs_f64();
    let tpf = (latent.height / cfg.patch_size[1]) * (latent.width / cfg.patch_size[2]);
    let tokens = frames * tpf;
    let tok_s = tokens as f64 / gen_s;
    let peak = peak_rss();
    let kv = session.cache.bytes();
    let foot = session.kv_footprint()?;
    let assignment = session.dummy().and_then(|d| d.assignment());
    if let (Some(path), Some(d)) = (&a.save_heads, session.dummy()) {
        d.program().expect("the run passed the calibration step").save(path)?;
    }

    let mut meta = BTreeMap::new();
    meta.insert(CONFIG_KEY.to_string(), cfg.to_json());
    meta.insert("dfrt.policy".into(), policy.name());
    meta.insert("dfrt.dtype".into(), precision.name().into());
    meta.insert("dfrt.device".into(), be.name().into());
    meta.insert("dfrt.source".into(), source);
    meta.extend(foot.metadata());
    meta.insert("dfrt.kv_bytes.allocated".into(), kv.to_string());
    if let Some(d) = session.dummy() {
        let how = match &a.heads {
            Some(p) => format!("given:{}", p.display()),
            None if d.program().is_some() => "calibrated".into(),
            None => "not reached".into(),
        };
        meta.insert("dfrt.heads".into(), how);
    }
    meta.insert(
        "dfrt.timings".into(),
        serde_json::json!({
            "load_s": load_s, "generate_s": gen_s, "chunk_ms": chunk_ms,
            "latent_tokens": tokens, "tokens_per_s": tok_s, "peak_rss_bytes": peak, "kv_cache_bytes": kv,
        })
        .to_string(),
    );
    let shape = vec![1, frames, latent.channels, latent.height, latent.width];
    let mut tensors = vec![OutTensor::f32("latents", shape, &latents)];
    if let Some(asg) = &assignment {
        tensors.push(OutTensor::i64("assignment", vec![asg.num_layers, asg.num_heads], &asg.to_i64()));
    }
    write_safetensors(&a.out, &tensors, &meta)?;
    if !a.quiet {
        eprintln!(
            "dfrt: {frames} frames ({tokens} latent tokens, {chunks} chunks, {} forwards) in {gen_s:.2} s: {tok_s:.0} tokens/s, {:.1} ms/chunk; policy {}, {}, KV cache {:.1} MiB, peak memory {}; wrote {}",
            forwards,
            gen_s * 1e3 / chunks as f64,
            policy.name(),
            precision.name(),
            kv as f64 / (1 << 20) as f64,
            peak.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "n/a".into()),
            a.out.display()
        );
        eprintln!("dfrt: {}; allocated {:.2} MB", foot.summary(), kv as f64 / 1e6);
    }
    Ok(())
}

fn calibrate(a: CalibrateArgs) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    let be = std::sync::Arc::new(CpuBackend::new(precision));
    let ckpt = TensorFile::open(&a.model)?;
    let cfg = ckpt.config()?;
    let policy = match &a.policy {
        Some(p) => Policy::parse_for(p, &cfg)?,
        None => Policy::parse_for(&format!("dummy:{}", cfg.num_layers * cfg.num_heads / 2), &cfg)?,
    };
    let Policy::Dummy(spec) = policy else {
        return Err(Error::Policy(format!("calibrate needs a dummy policy (dummy:N[,…]), not `{}`", policy.name())));
    };
    if a.seeds == 0 {
        return Err(Error::Input("--seeds must be at least 1".into()));
    }
    let need = (spec.ar_start + 1) * FRAMES_PER_CHUNK;
    let frames = a.frames.unwrap_or(need);
    if frames < need {
        return Err(Error::Input(format!("--frames {frames}: calibration at AR step {} needs at least {need} frames", spec.ar_start)));
    }
    let model = std::sync::Arc::new(Model::load(&*be, &ckpt, &cfg)?);
    let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
    let mut programs = Vec::new();
    let mut runs = Vec::new();
    for path in &a.context {
        let ctx = read_context(&TensorFile::open(path)?, &cfg)?;
        for seed in a.seed..a.seed + a.seeds {
            let mut s = Session::new(model.clone(), be.clone(), policy.clone(), latent, Some(frames), &ctx.data, ctx.rows, Noise::Seeded(Rng::new(seed)))?;
            s.dummy_mut().expect("dummy policy").set_seed(seed);
            while s.chunk_index() <= spec.ar_start {
                s.next_chunk(&mut |_| {})?;
            }
            let mut p = s.dummy().and_then(|d| d.program().cloned()).expect("calibrated at AR step K");
            p.source = format!("calibration: context {}, seed {seed}", path.display());
            runs.push(serde_json::json!({"context": path.display().to_string(), "seed": seed, "counts": counts_json(&p)}));
            programs.push(p);
        }
    }
    let st = stability(&programs)?;
    if let Some(out) = &a.out {
        st.majority.save(out)?;
    }
    if a.json {
        let j = serde_json::json!({
            "policy": spec.to_string(), "programs": st.programs, "heads": st.heads,
            "keep_vs_first": st.keep_vs_first, "keep_vs_majority": st.keep_vs_majority,
            "mean_keep_vs_first": st.mean_keep_vs_first, "mean_keep_vs_majority": st.mean_keep_vs_majority,
            "unanimous": st.unanimous, "unanimous_heads": (st.unanimous * st.heads as f64).round() as usize,
            "majority_counts": counts_json(&st.majority), "runs": runs,
            "out": a.out.as_ref().map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        let pct = |v: &[f64]| v.iter().map(|x| format!("{:.1}%", 100.0 * x)).collect::<Vec<_>>().join(" ");
        let c = st.majority.assignment().counts();
        println!("dfrt calibrate: {} programs ({} contexts × {} seeds), {} heads, policy {spec}", st.programs, a.context.len(), a.seeds, st.heads);
        println!("  heads keeping their group vs the first program: mean {:.1}% (per program: {})", 100.0 * st.mean_keep_vs_first, pct(&st.keep_vs_first));
        println!("  heads keeping their group vs the majority:      mean {:.1}% (per program: {})", 100.0 * st.mean_keep_vs_majority, pct(&st.keep_vs_majority));
        println!("  unanimous: {} of {} heads ({:.1}%)", (st.unanimous * st.heads as f64).round() as usize, st.heads, 100.0 * st.unanimous);
        println!("  majority program: sink {}, neighbor {}, dummy {}", c.sink, c.neighbor, c.dummy);
        if let Some(out) = &a.out {
            println!("  wrote {}", out.display());
        }
    }
    Ok(())
}

fn counts_json(p: &HeadProgram) -> serde_json::Value {
    let c = p.assignment().counts();
    serde_json::json!({"sink": c.sink, "neighbor": c.neighbor, "dummy": c.dummy})
}
