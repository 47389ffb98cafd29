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
use dfrt::model::Model;
use dfrt::pipeline::inputs::{read_context, Inputs};
use dfrt::pipeline::{Latent, Noise, Rng, Session};
use dfrt::{Error, Result};

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
    /// KV-cache policy: full | window:W,sink:S.
    #[arg(long, default_value = "full")]
    policy: String,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// No progress bar and no summary line.
    #[arg(long)]
    quiet: bool,
    /// Output safetensors file (tensor `latents` [1, F, C, H, W], f32).
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Generate(a) => generate(a),
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
    let policy = Policy::parse(&a.policy)?;
    if a.device != "cpu" {
        return Err(Error::Device(format!("device `{}` is not available yet (use --device cpu)", a.device)));
    }
    let be = std::sync::Arc::new(CpuBackend::new(precision));
    let t_load = Instant::now();
    let ckpt = TensorFile::open(&a.model)?;
    let cfg = ckpt.config()?;
    let model = std::sync::Arc::new(Model::load(&*be, &ckpt, &cfg)?);
    let load_s = t_load.elapsed().as_secs_f64();

    let (context, latent, frames, noise, source) = if let Some(p) = &a.inputs {
        let f = TensorFile::open(p)?;
        let inp = Inputs::read(&f, &cfg)?;
        let frames = a.frames.unwrap_or(inp.frames);
        let noise = inp.noise(frames)?;
        (inp.context, inp.latent, frames, noise, format!("inputs:{}", p.display()))
    } else {
        let p = a.context.as_ref().expect("clap requires --context or --inputs");
        let ctx = read_context(&TensorFile::open(p)?, &cfg)?;
        let frames = a.frames.unwrap_or(21);
        let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
        (ctx, latent, frames, Noise::Seeded(Rng::new(a.seed)), format!("seed:{}", a.seed))
    };
    let mut session = Session::new(model.clone(), be.clone(), policy.clone(), latent, Some(frames), &context.data, context.rows, noise)?;

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

    let mut meta = BTreeMap::new();
    meta.insert(CONFIG_KEY.to_string(), cfg.to_json());
    meta.insert("dfrt.policy".into(), policy.name());
    meta.insert("dfrt.dtype".into(), precision.name().into());
    meta.insert("dfrt.device".into(), be.name().into());
    meta.insert("dfrt.source".into(), source);
    meta.insert(
        "dfrt.timings".into(),
        serde_json::json!({
            "load_s": load_s, "generate_s": gen_s, "chunk_ms": chunk_ms,
            "latent_tokens": tokens, "tokens_per_s": tok_s, "peak_rss_bytes": peak, "kv_cache_bytes": kv,
        })
        .to_string(),
    );
    let shape = vec![1, frames, latent.channels, latent.height, latent.width];
    write_safetensors(&a.out, &[OutTensor::f32("latents", shape, &latents)], &meta)?;
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
    }
    Ok(())
}
