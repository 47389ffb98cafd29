//! A profiling target: runs N chunks of generation so `ncu` (or any CUDA profiler) has a
//! short, representative workload. Build with the `nvtx` feature to get NVTX ranges per block
//! and op (`dit.block07.self_attn`, ...); see docs/profiling.md for the ncu command lines.
//!
//!   cargo build --release -p dfrt --features nvtx --example profile
//!   target/release/examples/profile --device cuda --preset wan-1.3b --chunks 2 --policy dummy:180
//!
//! `--preset` synthesises bf16 weights for a preset into the temp dir (reused by later runs);
//! `--model FILE` uses a runtime checkpoint instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::{Backend, Precision};
use dfrt::cache::Policy;
use dfrt::checkpoint::{DType, TensorFile};
use dfrt::config::FRAMES_PER_CHUNK;
use dfrt::gpu::{CudaDevice, Device, GpuBackend, SimDevice};
use dfrt::model::Model;
use dfrt::pipeline::{Latent, Noise, Rng, Session};
use dfrt::{Error, ModelConfig, Result};

#[derive(Parser)]
#[command(about = "Run N chunks of generation for a profiler (ncu --nvtx ...)")]
struct Args {
    /// cpu | sim | cuda
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Chunks to generate (3 latent frames each).
    #[arg(long, default_value_t = 2)]
    chunks: usize,
    /// Synthesise weights for this preset (tiny, small, wan-1.3b, ...).
    #[arg(long, default_value = "wan-1.3b", conflicts_with = "model")]
    preset: String,
    /// A runtime checkpoint (.safetensors) instead of a preset.
    #[arg(long)]
    model: Option<PathBuf>,
    /// full | window:W,sink:S | dummy:N
    #[arg(long, default_value = "full")]
    policy: String,
    /// Latent height and width (video / 8); 60x104 is 480p.
    #[arg(long, default_value_t = 60)]
    height: usize,
    #[arg(long, default_value_t = 104)]
    width: usize,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Replay the forwards from recorded graphs (as `dfrt generate` does).
    /// Off by default here: kernels replayed from a graph carry only the NVTX ranges open at
    /// the replay, so per-block ranges need direct launches.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    graphs: String,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("profile: error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let a = Args::parse();
    let precision = Precision::parse(&a.dtype)?;
    let path = match &a.model {
        Some(p) => p.clone(),
        None => synth(&a.preset)?,
    };
    let ckpt = TensorFile::open(&path)?;
    eprintln!(
        "profile: NVTX ranges {}",
        if dfrt::profile::active() { "on" } else { "off (build with --features nvtx, and libnvToolsExt must load)" }
    );
    match a.device.as_str() {
        "cpu" => run(&a, &ckpt, Arc::new(CpuBackend::new(precision)), &|_, _, _, _| Ok(())),
        "sim" => gpu(&a, &ckpt, GpuBackend::new(SimDevice::new(), precision)),
        "cuda" => {
            let dev = CudaDevice::new(0, false)?;
            eprintln!("profile: {}", dev.describe());
            gpu(&a, &ckpt, GpuBackend::new(dev, precision))
        }
        d => Err(Error::Input(format!("unknown device `{d}` (cpu, sim or cuda)"))),
    }
}

/// Synthetic bf16 weights for `preset`, written once into the temp dir.
fn synth(preset: &str) -> Result<PathBuf> {
    let cfg = ModelConfig::preset(preset)?;
    let path = std::env::temp_dir().join(format!("dfrt-bench-{preset}-bf16.safetensors"));
    if TensorFile::open(&path).ok().and_then(|f| f.config().ok()).is_some_and(|c| c == cfg) {
        return Ok(path);
    }
    eprintln!("profile: synthesising {preset} weights into {}", path.display());
    let tmp = path.with_extension("partial");
    dfrt_weights::synth_checkpoint(&tmp, &cfg, 1, DType::BF16)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

type Prepare<'a> = &'a dyn Fn(&ModelConfig, &Policy, Latent, usize) -> Result<()>;

fn gpu<D: Device>(a: &Args, ckpt: &TensorFile, be: GpuBackend<D>) -> Result<()> {
    let be = Arc::new(be);
    let planner = be.clone();
    run(a, ckpt, be, &move |cfg, policy, latent, frames| {
        planner.prepare(cfg, policy, latent, Some(frames), ckpt).map(|_| ())
    })
}

fn run<B: Backend + 'static>(a: &Args, ckpt: &TensorFile, be: Arc<B>, prepare: Prepare<'_>) -> Result<()> {
    let cfg = ckpt.config()?;
    let policy = Policy::parse_for(&a.policy, &cfg)?;
    if a.chunks == 0 {
        return Err(Error::Input("--chunks must be at least 1".into()));
    }
    let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
    let frames = a.chunks * FRAMES_PER_CHUNK;
    prepare(&cfg, &policy, latent, frames)?;
    let model = Arc::new(Model::load(&*be, ckpt, &cfg)?);
    be.status()?;
    let context = Rng::new(7).normals(cfg.text_len * cfg.text_dim);
    let mut s = Session::new(
        model,
        be.clone(),
        policy,
        latent,
        Some(frames),
        &context,
        cfg.text_len,
        Noise::Seeded(Rng::new(1)),
    )?;
    s.set_graphs(a.graphs == "on");
    while !s.done() {
        let c = s.chunk_index();
        let _r = dfrt::nvtx_range!("chunk{c:02}");
        let t = Instant::now();
        s.next_chunk(&mut |_| {})?;
        eprintln!("profile: chunk {c}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    be.status()
}
