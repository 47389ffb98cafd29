//! `dfrt`: generate latent video with a Wan causal DiT.

use std::collections::BTreeMap;

use std::io::IsTerminal;

use std::path::PathBuf;

use std::time::Instant;

use clap::{Parser, Subcommand};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use dfrt::api::{CpuModel, SessionOptions};

use dfrt::backend::cpu::CpuBackend;

use dfrt::backend::Precision;

use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile, CONFIG_KEY};

use dfrt::config::FRAMES_PER_CHUNK;

use dfrt::dummy::{stability, HeadProgram};

use dfrt::pipeline::inputs::{read_context, Context, Inputs};

use dfrt::pipeline::{Latent, Noise, Pipeline, PipelineSpec};

use dfrt::policy::Policy;

use dfrt::run::{DeviceChoice, ModelSource, Target};

use dfrt::{Error, ModelConfig, Result};

use std::sync::Arc;

mod calibrate;
mod decode;
mod encode;
mod generate;
mod inspect;

use calibrate::{calibrate, CalibrateArgs};
use decode::{decode, DecodeArgs};
use encode::{encode, EncodeArgs};
use generate::{generate, generate_prompts, GenerateArgs};
use inspect::{info, inspect, InspectArgs};

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
        Error::Encode(_) => "encode",
    }
}
