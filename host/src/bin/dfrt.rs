//! `dfrt`: generate latent video with a Wan causal DiT.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use dfrt::api::{CpuModel, LoadedModel, SessionOptions};
use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::{Backend, Precision};
use dfrt::cache::Policy;
use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile, CONFIG_KEY};
use dfrt::config::FRAMES_PER_CHUNK;
use dfrt::dummy::{stability, HeadProgram};
use dfrt::gpu::{CudaDevice, Device, GpuBackend, SimDevice};
use dfrt::pipeline::inputs::{read_context, Context, Inputs};
use dfrt::pipeline::{Latent, Noise, Pipeline, PipelineSpec};
use dfrt::{Error, ModelConfig, Result};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "dfrt",
    version,
    about = "Autoregressive video diffusion runtime (Wan causal DiT, Self-Forcing, Dummy Forcing)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    out: Output,
}

/// Output options, accepted before or after the subcommand.
#[derive(clap::Args, Clone, Copy)]
struct Output {
    /// Machine-readable output: one JSON document on stdout (on failure: {"error": …}).
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Errors only: no progress bar, no summary.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log level on stderr (overrides -v/-q).
    #[arg(long, global = true, value_enum)]
    log_level: Option<Level>,
}

/// Log levels, least to most verbose.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Output {
    fn level(&self) -> Level {
        match (self.log_level, self.quiet, self.verbose) {
            (Some(l), _, _) => l,
            (None, true, _) => Level::Error,
            (None, false, 0) => Level::Info,
            (None, false, _) => Level::Debug,
        }
    }
    fn enabled(&self, l: Level) -> bool {
        l <= self.level()
    }
    /// A log line on stderr at level `l`.
    fn log(&self, l: Level, msg: impl std::fmt::Display) {
        if self.enabled(l) {
            let tag = match l {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
                Level::Debug => "debug: ",
            };
            eprintln!("dfrt: {tag}{msg}");
        }
    }
}

// Parsed once per process; boxing the large argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Generate latent frames chunk by chunk (3 latent frames, 4 denoising steps + 1 clean pass each).
    Generate(GenerateArgs),
    /// Dummy Forcing offline calibration: run each context up to and including the calibration
    /// step, report how stable the head groups are across contexts, write the majority program.
    Calibrate(CalibrateArgs),
    /// Decode latents (a `dfrt generate` output) into a video with the Wan VAE, chunk by chunk.
    Decode(DecodeArgs),
    /// Encode a prompt with the umT5 text encoder and write the embedding (`context`
    /// [1, text_len, dim], with `ids` and `mask`): the file `generate --context` reads.
    Encode(EncodeArgs),
    /// Build, devices, PTX target and kernel list.
    Info,
    /// Describe a runtime checkpoint (config, tensors, consistency), a head program (groups
    /// per layer) or any safetensors file (tensors, metadata).
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
struct InspectArgs {
    /// A .safetensors file or a head-program .json file.
    file: PathBuf,
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Latents: safetensors with a tensor `latents` [1, F, C, H, W] or [F, C, H, W].
    latents: PathBuf,
    /// VAE checkpoint (`dfrt-weights convert Wan2.1_VAE.pth`, or `dfrt-weights synth --vae`).
    #[arg(long)]
    vae: PathBuf,
    /// Output video: .mp4 (H.264, yuv420p), .y4m, or a path without extension for a folder of PNG frames.
    #[arg(short = 'o', long)]
    out: PathBuf,
    /// Frames per second of the video.
    #[arg(long, default_value_t = dfrt::video::DEFAULT_FPS)]
    fps: u32,
    /// VAE storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
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
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// Text-encoder checkpoint (`dfrt-weights convert-t5` of models_t5_umt5-xxl-enc-bf16.pth).
    #[arg(long)]
    text_encoder: PathBuf,
    /// Tokenizer folder (google/umt5-xxl, with tokenizer.json).
    #[arg(long)]
    tokenizer: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Compute device of the encoder: cpu | sim | cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Output safetensors file.
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(clap::Args, Clone)]
#[command(group = clap::ArgGroup::new("cond").required(true).multiple(true).args(["context", "inputs", "prompt", "prompts"]))]
struct GenerateArgs {
    /// Runtime checkpoint (safetensors with `dfrt.config` metadata; see `dfrt-weights convert`).
    #[arg(long)]
    model: PathBuf,
    /// Text embedding: safetensors with a tensor `context` of shape [L, text_dim] or [1, L, text_dim].
    /// Noise then comes from --seed.
    #[arg(long, conflicts_with = "inputs")]
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
    /// With --device cuda: synchronise after every kernel and name the kernel that faulted.
    #[arg(long)]
    sync_debug: bool,
    /// GPU devices: run every forward as a recorded graph (a CUDA graph on cuda; a chunk's
    /// denoising forward is recorded once and replayed at its 4 steps), or launch every kernel
    /// directly. Same latents either way.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    graphs: String,
    /// Autoregressive pipeline: self-forcing (also LongLive, Causal-Forcing) | causvid
    /// (3 unwarped steps at shift 8; `full` keeps at most 21 frames) | rolling (Rolling
    /// Forcing: joint windows of 5 chunks, its own anchored cache; policy `full` only).
    #[arg(long, default_value = "self-forcing")]
    pipeline: String,
    /// TeaCache with this threshold (the official value is 0.2): denoising forwards whose
    /// accumulated change of the time modulation stays below it skip the blocks. Composes
    /// with every policy; the skipped forwards are listed in the output metadata.
    #[arg(long)]
    teacache: Option<f64>,
    /// Prompt switches (interactive generation, `dummy` policy): `FRAME:FILE,…`, each FILE a
    /// context file like --context; before the chunk starting at FRAME the prompt changes and
    /// the KV cache is rebuilt (recache). With --inputs holding `context.1`, `context.2`, …,
    /// give the frames alone: `--prompts-at 12,21`.
    #[arg(long)]
    prompts_at: Option<String>,
    /// Frames a prompt switch re-runs at t = 0 (the official `local_attn_size`, 12).
    #[arg(long, default_value_t = dfrt::pipeline::RECACHE_FRAMES)]
    recache_frames: usize,
    /// Output safetensors file (tensor `latents` [1, F, C, H, W], f32); with --vae, the video
    /// (.mp4, .y4m, or a path without extension for a folder of PNG frames); with --prompts, a
    /// folder that receives one output per prompt line, named by index.
    #[arg(long)]
    out: PathBuf,
    /// Wan VAE checkpoint: decode each chunk as soon as it is generated and write a video to
    /// --out instead of latents (the VAE runs on the CPU).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Frames per second of the video (with --vae).
    #[arg(long, default_value_t = dfrt::video::DEFAULT_FPS, requires = "vae")]
    fps: u32,
    /// A prompt, encoded by --text-encoder with --tokenizer (instead of --context; with
    /// --inputs the noise still comes from the file).
    #[arg(long, conflicts_with = "context", requires_all = ["text_encoder", "tokenizer"])]
    prompt: Option<String>,
    /// A file of prompts, one per line: one output per line, named by index (line i uses
    /// seed --seed + i).
    #[arg(long, conflicts_with_all = ["context", "prompt"], requires_all = ["text_encoder", "tokenizer"])]
    prompts: Option<PathBuf>,
    /// Text-encoder checkpoint (`dfrt-weights convert-t5`).
    #[arg(long)]
    text_encoder: Option<PathBuf>,
    /// Tokenizer folder (google/umt5-xxl, with tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Device of the text encoder: cpu | sim | cuda (default: --device). Every prompt is
    /// encoded first and the encoder dropped before the DiT is loaded.
    #[arg(long)]
    text_device: Option<String>,
    /// A prompt's embedding, set by `generate_prompts`.
    #[arg(skip)]
    prompt_context: Option<Arc<Context>>,
}

fn main() {
    let cli = Cli::parse();
    let o = cli.out;
    let r = match cli.cmd {
        Cmd::Generate(a) if a.prompt.is_some() || a.prompts.is_some() => generate_prompts(a, o),
        Cmd::Generate(a) => generate(a, o),
        Cmd::Encode(a) => encode(a, o),
        Cmd::Calibrate(a) => calibrate(a, o),
        Cmd::Decode(a) => decode(a, o),
        Cmd::Info => info(o),
        Cmd::Inspect(a) => inspect(a, o),
    };
    if let Err(e) = r {
        if o.json {
            println!("{}", serde_json::json!({"error": {"kind": error_kind(&e), "message": e.to_string()}}));
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "io",
        Error::Checkpoint { .. } => "checkpoint",
        Error::Tensor { .. } => "tensor",
        Error::Config(_) => "config",
        Error::Policy(_) => "policy",
        Error::Input(_) => "input",
        Error::Device(_) => "device",
    }
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc offers it.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn generate(a: GenerateArgs, o: Output) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    if a.sync_debug && a.device != "cuda" {
        return Err(Error::Input(format!(
            "--sync-debug is for --device cuda (device `{}` runs every op synchronously already)",
            a.device
        )));
    }
    match a.device.as_str() {
        "cpu" => generate_on(a, o, Arc::new(CpuBackend::new(precision)), &|_, _, _, _, _| Ok(())),
        "sim" => gpu_generate(a, o, GpuBackend::new(SimDevice::new(), precision)),
        "cuda" => {
            let dev = CudaDevice::new(0, a.sync_debug)?;
            o.log(Level::Info, format_args!("cuda device {}", dev.describe()));
            gpu_generate(a, o, GpuBackend::new(dev, precision))
        }
        d => Err(Error::Device(format!("unknown device `{d}` (expected cpu, sim or cuda)"))),
    }
}

/// The GPU path: the memory plan is checked and reserved before the model is loaded.
fn gpu_generate<D: Device>(a: GenerateArgs, o: Output, be: GpuBackend<D>) -> Result<()> {
    let be = Arc::new(be);
    let planner = be.clone();
    generate_on(a, o, be, &move |cfg, policy, latent, frames, ckpt| {
        let plan = planner.prepare(cfg, policy, latent, Some(frames), ckpt)?;
        o.log(Level::Debug, format_args!("memory plan: {plan:?}, {} bytes reserved", plan.total()));
        Ok(())
    })
}

/// Runs before the model is loaded, with the run's shape (the GPU memory plan).
type Prepare<'a> = &'a dyn Fn(&ModelConfig, &Policy, Latent, usize, &TensorFile) -> Result<()>;

fn generate_on<B: Backend + 'static>(a: GenerateArgs, o: Output, be: Arc<B>, prepare: Prepare<'_>) -> Result<()> {
    let precision = be.precision();
    let policy = Policy::parse(&a.policy)?;
    let pipeline = PipelineSpec::parse(&a.pipeline, a.teacache)?;
    let spec = match &policy {
        Policy::Dummy(s) => Some(*s),
        _ => None,
    };
    if spec.is_none() && (a.heads.is_some() || a.save_heads.is_some()) {
        return Err(Error::Policy(format!(
            "--heads and --save-heads need a dummy policy (--policy dummy:N), not `{}`",
            a.policy
        )));
    }
    let t_load = Instant::now();
    let (ckpt, cfg) = dfrt::api::open_checkpoint(&a.model)?;
    policy.validate(&cfg)?;
    let program = a.heads.as_ref().map(|p| HeadProgram::load_for(p, &cfg)).transpose()?;

    let mut switch_ctx = Vec::new();
    let (context, latent, frames, noise, source, rows) = if let Some(p) = &a.inputs {
        let f = TensorFile::open(p)?;
        let inp = Inputs::read_with_context(&f, &cfg, a.prompt_context.as_deref().cloned())?;
        let frames = a.frames.unwrap_or(inp.frames);
        let noise = if pipeline.pipeline == Pipeline::Rolling {
            inp.noise_rolling(frames, pipeline.schedule().steps.len())?
        } else {
            inp.noise(frames)?
        };
        switch_ctx = inp.switch_contexts;
        (inp.context, inp.latent, frames, noise, format!("inputs:{}", p.display()), inp.sampled_rows)
    } else {
        let ctx = match (&a.prompt_context, &a.context) {
            (Some(c), _) => (**c).clone(),
            (None, Some(p)) => read_context(&TensorFile::open(p)?, &cfg)?,
            (None, None) => unreachable!("clap requires --context, --inputs or a prompt"),
        };
        let frames = a.frames.unwrap_or(21);
        let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
        (ctx, latent, frames, Noise::seeded(a.seed), format!("seed:{}", a.seed), Default::default())
    };
    let switches = parse_prompts_at(a.prompts_at.as_deref(), switch_ctx, &cfg)?;
    prepare(&cfg, &policy, latent, frames, &ckpt)?;
    drop(ckpt);
    let lm = LoadedModel::load(be.clone(), &a.model)?;
    be.status()?;
    let load_s = t_load.elapsed().as_secs_f64();
    o.log(
        Level::Debug,
        format_args!(
            "loaded {} in {load_s:.2} s: {} layers × {} heads, dim {}, {}",
            a.model.display(),
            cfg.num_layers,
            cfg.num_heads,
            cfg.dim,
            precision.name()
        ),
    );
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
    // The same path as the C API (dfrt::api), so both give the same latents bit for bit.
    let opts = SessionOptions {
        policy: policy.clone(),
        height: latent.height,
        width: latent.width,
        frames: Some(frames),
        seed: a.seed,
        heads: program,
        sampled_rows: rows,
        graphs: a.graphs == "on",
        pipeline,
    };
    let mut session = lm.session(&opts, &context.data, context.rows, noise)?;
    session.set_recache_frames(a.recache_frames)?;
    let mut switches = switches.into_iter().peekable();
    let graphs = if !be.supports_graphs() {
        "n/a"
    } else if session.graphs() {
        "on"
    } else {
        "off"
    };

    let chunks = frames / FRAMES_PER_CHUNK;
    let forwards = session.forwards_for(frames) as u64;
    // With --vae each chunk is decoded and written as it comes; the bar counts decoded frames.
    let mut video = match &a.vae {
        Some(p) => {
            let vae = Arc::new(dfrt::vae::Vae::open(p, precision)?);
            Some(dfrt::video::LatentVideo::create(vae, &a.out, latent.channels, latent.height, latent.width, a.fps)?)
        }
        None => None,
    };
    let pixel_frames = video.as_ref().map(|v| v.decoder.vae().cfg.pixel_frames(frames));
    let (bar_len, unit) = match pixel_frames {
        Some(n) => (n as u64, "frames"),
        None => (forwards, "forwards"),
    };
    let bar = if !o.enabled(Level::Info) || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(bar_len), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(bar_len);
        b.set_style(
            ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}}]"))
                .unwrap(),
        );
        b
    };
    let counts_forwards = video.is_none();
    let t_gen = Instant::now();
    let mut chunk_ms = Vec::new();
    let mut latents = Vec::with_capacity(frames * latent.frame_len());
    while !session.done() {
        while let Some((_, ctx)) = switches.next_if(|(f, _)| *f <= session.frames_done()) {
            session.switch_prompt(&ctx.data, ctx.rows)?;
        }
        let tc = Instant::now();
        let x = session.next_chunk(&mut |p| {
            let what = match p.pass.step {
                Some(s) => format!("step {s}"),
                None => "clean pass".into(),
            };
            bar.set_message(format!("chunk {}/{} {what}", p.pass.chunk + 1, chunks));
            if counts_forwards {
                bar.inc(1);
            }
        })?;
        chunk_ms.push(tc.elapsed().as_secs_f64() * 1e3);
        o.log(Level::Debug, format_args!("chunk {}/{chunks}: {:.1} ms", chunk_ms.len(), chunk_ms[chunk_ms.len() - 1]));
        if let Some(v) = &mut video {
            bar.set_message(format!("chunk {}/{} decoding", chunk_ms.len(), chunks));
            let n = v.push(&x, FRAMES_PER_CHUNK)?;
            bar.inc(n as u64);
        } else {
            latents.extend(x);
        }
    }
    bar.finish_and_clear();
    let decode_ms = video.as_ref().map(|v| v.decode_ms.clone()).unwrap_or_default();
    if let Some(v) = video.take() {
        v.finish()?;
    }
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
    meta.insert("dfrt.graphs".into(), graphs.into());
    meta.insert("dfrt.pipeline".into(), pipeline.pipeline.name().into());
    if session.recaches() > 0 {
        meta.insert("dfrt.recaches".into(), session.recaches().to_string());
    }
    let teacache = session.teacache().map(|p| {
        let skipped = p.skipped(chunks);
        serde_json::json!({"threshold": p.threshold, "skipped": skipped, "skipped_forwards": skipped.len(), "denoising_forwards": chunks * session.schedule.steps.len()})
    });
    if let Some(t) = &teacache {
        meta.insert("dfrt.teacache".into(), t.to_string());
    }
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
    let mut timings = serde_json::json!({
        "load_s": load_s, "generate_s": gen_s, "chunk_ms": chunk_ms,
        "latent_tokens": tokens, "tokens_per_s": tok_s, "peak_rss_bytes": peak, "kv_cache_bytes": kv,
    });
    if let Some(n) = pixel_frames {
        // FPS of the pixel frames: diffusion alone (the chunks' DiT time), and end to end
        // (diffusion, decode and writing the file).
        let diffusion_s = chunk_ms.iter().sum::<f64>() / 1e3;
        timings["video_frames"] = n.into();
        timings["decode_ms"] = decode_ms.clone().into();
        timings["fps_diffusion"] = (n as f64 / diffusion_s).into();
        timings["fps_end_to_end"] = (n as f64 / gen_s).into();
    }
    meta.insert("dfrt.timings".into(), timings.to_string());
    let shape = vec![1, frames, latent.channels, latent.height, latent.width];
    let mut tensors = vec![OutTensor::f32("latents", shape, &latents)];
    if let Some(asg) = &assignment {
        tensors.push(OutTensor::i64("assignment", vec![asg.num_layers, asg.num_heads], &asg.to_i64()));
    }
    if pixel_frames.is_none() {
        write_safetensors(&a.out, &tensors, &meta)?;
    }
    if o.json {
        let j = serde_json::json!({
            "out": a.out.display().to_string(), "frames": frames, "chunks": chunks, "forwards": forwards,
            "latent_shape": [1, frames, latent.channels, latent.height, latent.width],
            "policy": policy.name(), "dtype": precision.name(), "device": be.name(), "source": meta["dfrt.source"],
            "heads": meta.get("dfrt.heads"), "graphs": graphs, "kv_footprint": foot.metadata(), "timings": timings,
            "pipeline": pipeline.pipeline.name(), "teacache": teacache,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    }
    if o.enabled(Level::Info) {
        eprintln!(
            "dfrt: {frames} frames ({tokens} latent tokens, {chunks} chunks, {} forwards) in {gen_s:.2} s: {tok_s:.0} tokens/s, {:.1} ms/chunk; policy {}, {}, graphs {graphs}, KV cache {:.1} MiB, peak memory {}; wrote {}",
            forwards,
            gen_s * 1e3 / chunks as f64,
            policy.name(),
            precision.name(),
            kv as f64 / (1 << 20) as f64,
            peak.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "n/a".into()),
            a.out.display()
        );
        eprintln!("dfrt: {}; allocated {:.2} MB", foot.summary(), kv as f64 / 1e6);
        if let Some(n) = pixel_frames {
            eprintln!(
                "dfrt: video {n} frames, decode {} ms/chunk ({:.1} ms mean), {:.2} FPS diffusion only, {:.2} FPS end to end; wrote {}",
                decode_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
                decode_ms.iter().sum::<f64>() / decode_ms.len().max(1) as f64,
                timings["fps_diffusion"].as_f64().unwrap_or(0.0),
                timings["fps_end_to_end"].as_f64().unwrap_or(0.0),
                a.out.display()
            );
        }
    }
    Ok(())
}

/// `dfrt decode`: latents file → video, 3 latent frames (one chunk) at a time.
fn decode(a: DecodeArgs, o: Output) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    let t0 = Instant::now();
    let vae = Arc::new(dfrt::vae::Vae::open(&a.vae, precision)?);
    let f = TensorFile::open(&a.latents)?;
    let info = f.info("latents").map_err(|_| {
        Error::Input(format!(
            "{}: no tensor `latents` (expected a `dfrt generate` output, [1, F, C, H, W])",
            a.latents.display()
        ))
    })?;
    let s = info.shape.clone();
    let (frames, c, h, w) = match s.as_slice() {
        [1, f, c, h, w] | [f, c, h, w] => (*f, *c, *h, *w),
        _ => {
            return Err(Error::Input(format!(
                "{}: `latents` has shape {s:?}, expected [1, F, C, H, W]",
                a.latents.display()
            )))
        }
    };
    if frames == 0 {
        return Err(Error::Input(format!("{}: `latents` has no frames", a.latents.display())));
    }
    let data = f.f32_any("latents")?;
    let mut v = dfrt::video::LatentVideo::create(vae.clone(), &a.out, c, h, w, a.fps)?;
    let total = vae.cfg.pixel_frames(frames) as u64;
    let bar = if !o.enabled(Level::Info) || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(total);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} frames  [{elapsed_precise}]").unwrap());
        b
    };
    let fl = c * h * w;
    let t_dec = Instant::now();
    for lo in (0..frames).step_by(FRAMES_PER_CHUNK) {
        let n = FRAMES_PER_CHUNK.min(frames - lo);
        let k = v.push(&data[lo * fl..(lo + n) * fl], n)?;
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    let (width, height, fps) = (v.writer.width, v.writer.height, v.writer.fps);
    let decode_ms = v.decode_ms.clone();
    let written = v.finish()?;
    let dec_s = t_dec.elapsed().as_secs_f64();
    let timings = serde_json::json!({
        "total_s": t0.elapsed().as_secs_f64(), "decode_ms": decode_ms, "decode_write_s": dec_s, "fps": written as f64 / dec_s,
    });
    if o.json {
        let j = serde_json::json!({
            "out": a.out.display().to_string(), "latent_frames": frames, "frames": written, "width": width, "height": height,
            "fps": fps, "dtype": precision.name(), "timings": timings,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    }
    if o.enabled(Level::Info) {
        eprintln!(
            "dfrt: decoded {frames} latent frames into {written} frames {width}×{height} in {dec_s:.2} s ({:.2} FPS), decode {} ms/chunk; wrote {} at {fps} fps",
            written as f64 / dec_s,
            decode_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
            a.out.display()
        );
    }
    Ok(())
}

/// `--prompts-at`: `FRAME:FILE,…` (context files), or `FRAME,…` taking `context.1`, … of the
/// inputs file; frames ascending.
fn parse_prompts_at(
    spec: Option<&str>,
    mut given: Vec<dfrt::pipeline::inputs::Context>,
    cfg: &ModelConfig,
) -> Result<Vec<(usize, dfrt::pipeline::inputs::Context)>> {
    let Some(spec) = spec else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    given.reverse();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (f, file) = match part.split_once(':') {
            Some((f, file)) => (f, Some(file)),
            None => (part, None),
        };
        let f: usize =
            f.parse().map_err(|_| Error::Input(format!("--prompts-at: `{f}` in `{part}` is not a frame number")))?;
        if out.last().is_some_and(|(p, _)| *p >= f) {
            return Err(Error::Input(format!("--prompts-at: frame {f} is not after the previous switch")));
        }
        let ctx = match file {
            Some(file) => read_context(&TensorFile::open(file)?, cfg)?,
            None => given.pop().ok_or_else(|| {
                Error::Input(format!("--prompts-at {f}: no FILE given and the inputs hold no more context.N tensors"))
            })?,
        };
        out.push((f, ctx));
    }
    Ok(out)
}

fn calibrate(a: CalibrateArgs, o: Output) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    let be = std::sync::Arc::new(CpuBackend::new(precision));
    let lm = CpuModel::load(be, &a.model)?;
    let cfg = lm.cfg.clone();
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
        return Err(Error::Input(format!(
            "--frames {frames}: calibration at AR step {} needs at least {need} frames",
            spec.ar_start
        )));
    }
    let mut opts = SessionOptions {
        policy: policy.clone(),
        height: a.height,
        width: a.width,
        frames: Some(frames),
        seed: 0,
        heads: None,
        sampled_rows: Default::default(),
        graphs: true,
        pipeline: Default::default(),
    };
    let mut programs = Vec::new();
    let mut runs = Vec::new();
    for path in &a.context {
        let ctx = read_context(&TensorFile::open(path)?, &cfg)?;
        for seed in a.seed..a.seed + a.seeds {
            opts.seed = seed;
            let mut s = lm.session(&opts, &ctx.data, ctx.rows, Noise::seeded(seed))?;
            while s.chunk_index() <= spec.ar_start {
                s.next_chunk(&mut |_| {})?;
            }
            let mut p = s.dummy().and_then(|d| d.program().cloned()).expect("calibrated at AR step K");
            p.source = format!("calibration: context {}, seed {seed}", path.display());
            runs.push(
                serde_json::json!({"context": path.display().to_string(), "seed": seed, "counts": counts_json(&p)}),
            );
            programs.push(p);
        }
    }
    let st = stability(&programs)?;
    if let Some(out) = &a.out {
        st.majority.save(out)?;
    }
    if o.json {
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
        println!(
            "dfrt calibrate: {} programs ({} contexts × {} seeds), {} heads, policy {spec}",
            st.programs,
            a.context.len(),
            a.seeds,
            st.heads
        );
        println!(
            "  heads keeping their group vs the first program: mean {:.1}% (per program: {})",
            100.0 * st.mean_keep_vs_first,
            pct(&st.keep_vs_first)
        );
        println!(
            "  heads keeping their group vs the majority:      mean {:.1}% (per program: {})",
            100.0 * st.mean_keep_vs_majority,
            pct(&st.keep_vs_majority)
        );
        println!(
            "  unanimous: {} of {} heads ({:.1}%)",
            (st.unanimous * st.heads as f64).round() as usize,
            st.heads,
            100.0 * st.unanimous
        );
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

/// One compute device as `dfrt info` reports it.
struct DeviceInfo {
    name: &'static str,
    available: bool,
    status: &'static str,
}

/// The devices of this build. CUDA is not probed here (that would load the driver): `dfrt
/// generate --device cuda` opens GPU 0 and says clearly when there is none.
fn devices() -> Vec<DeviceInfo> {
    vec![
        DeviceInfo { name: "cpu", available: true, status: "available (reference backend, f32 and bf16)" },
        DeviceInfo { name: "sim", available: true, status: "available (the GPU backend on the SIMT simulator: the PTX kernels' source on the CPU, CPU GEMM; slow, for tests)" },
        DeviceInfo { name: "cuda", available: false, status: "built (cudarc, libcuda loaded at run time), not probed: `generate --device cuda` opens GPU 0" },
    ]
}

/// `.version`, `.target` and the toolchain comment of the committed PTX.
fn ptx_facts(ptx: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let field = |key: &str| ptx.lines().find_map(|l| l.trim().strip_prefix(key).map(str::trim));
    (field(".version "), field(".target "), field("// Toolchain: "))
}

fn info(o: Output) -> Result<()> {
    let ptx = dfrt_kernels::PTX;
    let (version, target, toolchain) = ptx_facts(ptx);
    let kernels: Vec<_> = dfrt_kernels::KERNELS
        .iter()
        .map(|k| (*k, dfrt_kernels::HOT_KERNELS.contains(k), ptx.contains(&format!(".entry {k}("))))
        .collect();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let devs = devices();
    if o.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "build": {"profile": profile, "arch": std::env::consts::ARCH, "os": std::env::consts::OS},
            "devices": devs.iter().map(|d| serde_json::json!({"name": d.name, "available": d.available, "status": d.status})).collect::<Vec<_>>(),
            "ptx": {"target": target, "isa_version": version, "toolchain": toolchain, "bytes": ptx.len(),
                    "kernels": kernels.iter().map(|(k, hot, present)| serde_json::json!({"name": k, "hot": hot, "in_ptx": present})).collect::<Vec<_>>()},
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!(
        "dfrt {} ({profile} build, {}-{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    println!("devices:");
    for d in &devs {
        println!("  {:<5} {}", d.name, d.status);
    }
    println!(
        "PTX: target {}, ISA {}, {} bytes, built by {}",
        target.unwrap_or("?"),
        version.unwrap_or("?"),
        ptx.len(),
        toolchain.unwrap_or("?")
    );
    println!("kernels ({}, hot: no spills or stack allowed):", kernels.len());
    for (k, hot, present) in &kernels {
        println!(
            "  {k}{}{}",
            if *hot { "  [hot]" } else { "" },
            if *present { "" } else { "  MISSING from the PTX: run `cargo xtask ptx`" }
        );
    }
    Ok(())
}

fn inspect(a: InspectArgs, o: Output) -> Result<()> {
    let bytes = std::fs::read(&a.file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!(
            "{}: no such file (inspect takes a checkpoint .safetensors or a head-program .json)",
            a.file.display()
        )),
        _ => Error::io(&a.file, e),
    })?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return inspect_heads(&a.file, o);
    }
    let f = TensorFile::open(&a.file).map_err(|e| match e {
        Error::Checkpoint { path, msg } => Error::Checkpoint {
            path,
            msg: format!(
                "{msg}; inspect takes a safetensors file (checkpoint, inputs, outputs) or a head-program JSON"
            ),
        },
        e => e,
    })?;
    let cfg = match f.metadata.get(CONFIG_KEY) {
        Some(_) => Some(dfrt::api::open_checkpoint(&a.file)?.1),
        None => None,
    };
    // Outputs of `generate` carry the config too; a checkpoint is a file with model tensors.
    let expected = cfg.as_ref().map(dfrt::names::expected_tensors).unwrap_or_default();
    let is_checkpoint = expected.iter().any(|(n, _)| f.tensors.contains_key(n));
    let tensors: Vec<_> = f
        .tensors
        .iter()
        .map(|(n, i)| serde_json::json!({"name": n, "dtype": format!("{:?}", i.dtype), "shape": i.shape}))
        .collect();
    let elements: usize = f.tensors.values().map(|i| i.shape.iter().product::<usize>()).sum();
    let data_bytes: usize = f.tensors.values().map(|i| i.end - i.start).sum();
    let mut dtypes = BTreeMap::new();
    for i in f.tensors.values() {
        *dtypes.entry(format!("{:?}", i.dtype)).or_insert(0usize) += 1;
    }
    let others: BTreeMap<&String, &String> = f.metadata.iter().filter(|(k, _)| k.as_str() != CONFIG_KEY).collect();
    // A checkpoint must hold exactly the tensors its config names, in their shapes.
    let (mut missing, mut misshapen) = (Vec::new(), Vec::new());
    let mut unexpected: Vec<&String> = Vec::new();
    if is_checkpoint {
        let want = &expected;
        for (n, shape) in want {
            match f.tensors.get(n) {
                None => missing.push(n.clone()),
                Some(i) if &i.shape != shape => misshapen.push(format!("{n}: {:?}, expected {shape:?}", i.shape)),
                _ => {}
            }
        }
        unexpected = f.tensors.keys().filter(|n| !want.iter().any(|(w, _)| w == *n)).collect();
    }
    let ok = missing.is_empty() && misshapen.is_empty() && unexpected.is_empty();
    let kind = if is_checkpoint { "checkpoint" } else { "safetensors" };
    if o.json {
        let mut j = serde_json::json!({
            "kind": kind, "path": a.file.display().to_string(), "tensor_count": f.tensors.len(),
            "elements": elements, "data_bytes": data_bytes, "dtypes": dtypes, "tensors": tensors, "metadata": others,
        });
        if let Some(cfg) = &cfg {
            j["config"] = serde_json::to_value(cfg).expect("config serialises");
            j["fingerprint"] = dfrt::dummy::heads::fingerprint(cfg).into();
        }
        if is_checkpoint {
            j["ok"] = ok.into();
            j["missing"] = missing.clone().into();
            j["unexpected"] = serde_json::to_value(&unexpected).expect("names");
            j["misshapen"] = misshapen.clone().into();
        }
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        println!(
            "{}: {kind}, {} tensors, {elements} values, {data_bytes} bytes ({})",
            a.file.display(),
            f.tensors.len(),
            dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
        );
        if let Some(c) = &cfg {
            println!(
                "config: dim {}, ffn {}, {} layers × {} heads (head dim {}), text {}×{}, in/out {}/{} channels, patch {:?}, eps {}, qk_norm {}, cross_attn_norm {}",
                c.dim, c.ffn_dim, c.num_layers, c.num_heads, c.head_dim(), c.text_len, c.text_dim, c.in_dim, c.out_dim, c.patch_size, c.eps, c.qk_norm, c.cross_attn_norm
            );
            println!("fingerprint: {}", dfrt::dummy::heads::fingerprint(c));
        }
        for (k, v) in &others {
            let v: String = if v.chars().count() > 100 {
                v.chars().take(100).chain("…".chars()).collect()
            } else {
                v.to_string()
            };
            println!("metadata {k}: {v}");
        }
        for (n, i) in &f.tensors {
            println!("  {n:<48} {:?} {:?}", i.dtype, i.shape);
        }
        if is_checkpoint {
            if ok {
                println!("tensors match the config");
            } else {
                println!(
                    "tensors do NOT match the config: {} missing, {} unexpected, {} misshapen",
                    missing.len(),
                    unexpected.len(),
                    misshapen.len()
                );
                for m in missing.iter().take(10) {
                    println!("  missing {m}");
                }
                for m in unexpected.iter().take(10) {
                    println!("  unexpected {m}");
                }
                for m in misshapen.iter().take(10) {
                    println!("  misshapen {m}");
                }
            }
        }
    }
    if !ok {
        // The report is the output; the exit status says the checkpoint is not usable.
        o.log(
            Level::Error,
            format_args!("{}: not a usable checkpoint; {}", a.file.display(), dfrt::api::CHECKPOINT_HINT),
        );
        std::process::exit(1);
    }
    Ok(())
}

fn inspect_heads(path: &std::path::Path, o: Output) -> Result<()> {
    let p = HeadProgram::load(path)?;
    let a = p.assignment();
    let c = a.counts();
    let layers: Vec<_> = (0..a.num_layers)
        .map(|l| {
            let g = a.layer(l);
            let n = |x: dfrt::dummy::Group| g.iter().filter(|&&y| y == x).count();
            (n(dfrt::dummy::Group::Sink), n(dfrt::dummy::Group::Neighbor), n(dfrt::dummy::Group::Dummy), g)
        })
        .collect();
    if o.json {
        let j = serde_json::json!({
            "kind": "head-program", "path": path.display().to_string(), "source": p.source,
            "model": {"dim": p.model.dim, "num_layers": p.model.num_layers, "num_heads": p.model.num_heads, "head_dim": p.model.head_dim, "fingerprint": p.model.fingerprint},
            "spec": p.spec, "counts": {"sink": c.sink, "neighbor": c.neighbor, "dummy": c.dummy},
            "layers": layers.iter().enumerate().map(|(l, (s, nb, d, g))| serde_json::json!({
                "layer": l, "sink": s, "neighbor": nb, "dummy": d, "groups": g.iter().map(|x| x.name()).collect::<Vec<_>>()
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!("{}: head program ({}), policy {}", path.display(), p.source, p.spec);
    println!(
        "model: {} layers × {} heads, dim {}, {}",
        p.model.num_layers, p.model.num_heads, p.model.dim, p.model.fingerprint
    );
    println!("heads: sink {}, neighbor {}, dummy {} (S sink, N neighbor, D dummy)", c.sink, c.neighbor, c.dummy);
    for (l, (s, nb, d, g)) in layers.iter().enumerate() {
        let letters: String = g.iter().map(|x| x.name()[..1].to_uppercase()).collect();
        println!("  layer {l:>3}: sink {s:>3}  neighbor {nb:>3}  dummy {d:>3}  {letters}");
    }
    Ok(())
}

/// `generate --prompt/--prompts`: every prompt is encoded first (the encoder then dropped),
/// then each runs as `generate --context` would, with its own output.
fn generate_prompts(a: GenerateArgs, o: Output) -> Result<()> {
    let prompts: Vec<String> = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?.lines().map(str::to_string).collect()
        }
        (None, None) => unreachable!("called with a prompt"),
    };
    if prompts.is_empty() {
        return Err(Error::Input("the prompts file has no lines".into()));
    }
    let (_, cfg) = dfrt::api::open_checkpoint(&a.model)?;
    let (te, tok) = (a.text_encoder.clone().expect("clap requires it"), a.tokenizer.clone().expect("clap requires it"));
    let device = a.text_device.clone().unwrap_or_else(|| a.device.clone());
    let precision = Precision::parse(&a.dtype)?;
    // The width check before any encoding work: the encoder's config is in its header.
    let (_, tcfg) = dfrt::text::t5::open_t5(&te)?;
    if tcfg.dim != cfg.text_dim || tcfg.text_len > cfg.text_len {
        return Err(Error::Input(format!(
            "the text encoder gives [{}, {}] contexts, the DiT takes text_dim {} and at most {} rows: this encoder does not belong to this model",
            tcfg.text_len, tcfg.dim, cfg.text_dim, cfg.text_len
        )));
    }
    let t = Instant::now();
    let encoded = dfrt::text::encode_prompts(&device, precision, &te, &tok, &prompts, &mut |i, e| {
        for n in &e.tokens.cleaned.notes {
            let l = if n.may_differ() { Level::Warn } else { Level::Debug };
            o.log(l, format_args!("prompt {i}: {n}"));
        }
        o.log(Level::Info, format_args!("prompt {i}: {} tokens encoded on {device}", e.tokens.len));
    })?;
    o.log(Level::Info, format_args!("{} prompts encoded in {:.2} s", prompts.len(), t.elapsed().as_secs_f64()));
    if prompts.len() > 1 || a.prompts.is_some() {
        std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    }
    for (i, e) in encoded.into_iter().enumerate() {
        let mut ai = a.clone();
        ai.prompt_context = Some(Arc::new(e.context));
        if a.prompts.is_some() {
            // With --vae each line is a video; without, its latents.
            let ext = if a.vae.is_some() { "mp4" } else { "safetensors" };
            ai.out = a.out.join(format!("{i}.{ext}"));
            ai.seed = a.seed + i as u64;
        }
        generate(ai, o)?;
    }
    Ok(())
}

/// `dfrt encode`: one prompt to a context file.
fn encode(a: EncodeArgs, o: Output) -> Result<()> {
    let precision = Precision::parse(&a.dtype)?;
    let t = Instant::now();
    let e = dfrt::text::encode_prompts(
        &a.device,
        precision,
        &a.text_encoder,
        &a.tokenizer,
        std::slice::from_ref(&a.prompt),
        &mut |_, _| {},
    )?;
    let e = &e[0];
    let secs = t.elapsed().as_secs_f64();
    for n in &e.tokens.cleaned.notes {
        o.log(if n.may_differ() { Level::Warn } else { Level::Debug }, n);
    }
    let (rows, dim) = (e.context.rows, e.context.data.len() / e.context.rows);
    let ids: Vec<i64> = e.tokens.ids.iter().map(|&x| x as i64).collect();
    let mask: Vec<i64> = e.tokens.mask.iter().map(|&x| x as i64).collect();
    let mut meta = BTreeMap::new();
    meta.insert("dfrt.prompt".to_string(), a.prompt.clone());
    meta.insert("dfrt.prompt_cleaned".to_string(), e.tokens.cleaned.text.clone());
    meta.insert("dfrt.seq_len".to_string(), e.tokens.len.to_string());
    meta.insert("dfrt.text_encoder".to_string(), a.text_encoder.display().to_string());
    write_safetensors(
        &a.out,
        &[
            OutTensor::f32("context", vec![1, rows, dim], &e.context.data),
            OutTensor::i64("ids", vec![rows], &ids),
            OutTensor::i64("mask", vec![rows], &mask),
        ],
        &meta,
    )?;
    if o.json {
        let j = serde_json::json!({"out": a.out.display().to_string(), "rows": rows, "dim": dim, "seq_len": e.tokens.len,
            "cleaned": e.tokens.cleaned.text, "notes": e.tokens.cleaned.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "encode_s": secs});
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        o.log(
            Level::Info,
            format_args!(
                "{} tokens → context [{rows}, {dim}] in {secs:.2} s on {}; wrote {}",
                e.tokens.len,
                a.device,
                a.out.display()
            ),
        );
    }
    Ok(())
}
