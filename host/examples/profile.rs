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
use std::time::Instant;

use clap::Parser;
use dfrt::api::SessionOptions;
use dfrt::backend::Precision;
use dfrt::checkpoint::{DType, TensorFile};
use dfrt::config::FRAMES_PER_CHUNK;
use dfrt::pipeline::{Graphs, Noise, Rng};
use dfrt::run::{DeviceChoice, ModelSource, Target};
use dfrt::{Error, ModelConfig, Result};

#[derive(Parser)]
#[command(about = "Run N chunks of generation for a profiler (ncu --nvtx ...)")]
struct Args {
    /// cpu | sim | cuda[:N]
    #[arg(long, default_value = "cuda")]
    device: DeviceChoice,
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
    dtype: Precision,
    /// Replay the forwards from recorded graphs (as `dfrt generate` does).
    /// Off by default here: kernels replayed from a graph carry only the NVTX ranges open at
    /// the replay, so per-block ranges need direct launches.
    #[arg(long, value_enum, default_value_t = Graphs::Off)]
    graphs: Graphs,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("profile: error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let a = Args::parse();
    let path = match &a.model {
        Some(p) => p.clone(),
        None => synth(&a.preset)?,
    };
    eprintln!(
        "profile: NVTX ranges {}",
        if dfrt::profile::active() { "on" } else { "off (build with --features nvtx, and libnvToolsExt must load)" }
    );
    if a.chunks == 0 {
        return Err(Error::Input("--chunks must be at least 1".into()));
    }
    let model = ModelSource::open(&path)?;
    let cfg = &model.cfg;
    let frames = a.chunks * FRAMES_PER_CHUNK;
    let mut opts = SessionOptions::parse(&a.policy, a.height, a.width, Some(frames), cfg)?;
    opts.graphs = a.graphs;
    let context = Rng::new(7).normals(cfg.text_len * cfg.text_dim);
    let target = Target::new(a.device, a.dtype);
    let mut s = dfrt::run::open(&target, &model, &opts, &context, cfg.text_len, Noise::Seeded(Rng::new(1)))?;
    eprintln!("profile: {} on {}", model.path.display(), a.device);
    while !s.done() {
        let c = s.chunk_index();
        let _r = dfrt::nvtx_range!("chunk{c:02}");
        let t = Instant::now();
        s.next_chunk(&mut |_| {})?;
        eprintln!("profile: chunk {c}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
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
