//! `dfrt-weights`: convert, synthesise and inspect dfrt weight files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfrt::ModelConfig;
use dfrt_weights::{convert_files, inspect, parse_dtype, synth_checkpoint, ConvertOptions, LoraOptions};

#[derive(Parser)]
#[command(name = "dfrt-weights", version, about = "Convert, synthesise and inspect dfrt weight files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a Wan2.1-family DiT checkpoint (.safetensors or torch .pt/.pth; native or
    /// diffusers names; Self-Forcing generator/generator_ema dicts) to a runtime checkpoint.
    /// A video VAE (`Wan2.1_VAE.pth`, or diffusers `AutoencoderKLWan`) becomes a runtime VAE
    /// checkpoint.
    Convert {
        /// One file, the shards of one state dict, or a sharded checkpoint's `*.index.json`.
        #[arg(required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
        /// Attention heads (default: a preset of the same width, else dim/128).
        #[arg(long)]
        heads: Option<usize>,
        /// Context length the model pads text to; the weights do not fix it (default 512).
        #[arg(long)]
        text_len: Option<usize>,
        /// Output dtype: f32 or bf16 (default: the source dtype if uniformly f32/bf16, else f32).
        #[arg(long)]
        dtype: Option<String>,
        /// Take the `generator_ema` weights (the default when present).
        #[arg(long, conflicts_with = "no_ema")]
        ema: bool,
        /// Take the raw `generator` weights.
        #[arg(long)]
        no_ema: bool,
        /// Drop DiT tensors the native layout lacks (e.g. i2v image attention) instead of failing.
        #[arg(long)]
        drop_unknown: bool,
        /// Merge this PEFT LoRA (.safetensors or .pt, e.g. LongLive's `generator_lora`) into
        /// the Linear weights: W + alpha/r · B·A.
        #[arg(long)]
        lora: Option<PathBuf>,
        /// The LoRA's alpha (peft's `lora_alpha`); default: its rank, i.e. scaling 1.
        #[arg(long, requires = "lora")]
        lora_alpha: Option<f64>,
        /// The LoRA scaling itself, instead of alpha/r (e.g. alpha/√r for rsLoRA).
        #[arg(long, requires = "lora", conflicts_with = "lora_alpha")]
        lora_scale: Option<f64>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Convert umT5 text-encoder weights (Wan's models_t5_umt5-xxl-enc-bf16.pth, or a Hugging
    /// Face UMT5EncoderModel safetensors) to a runtime text-encoder checkpoint.
    ConvertT5 {
        input: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        /// Tokens per prompt (default 512, Wan's).
        #[arg(long)]
        text_len: Option<usize>,
        /// Output dtype: f32 or bf16 (default: the source's if uniformly bf16, else f32).
        #[arg(long)]
        dtype: Option<String>,
    },
    /// Write random, well-scaled weights of a preset config (or, with --vae, of a video VAE).
    Synth {
        /// tiny, tiny4, small, wan-1.3b or wan-14b.
        #[arg(long, required_unless_present = "vae")]
        preset: Option<String>,
        /// Write a synthetic Wan2.1 video VAE instead of a DiT.
        #[arg(long, conflicts_with_all = ["preset", "layers", "context_out"])]
        vae: bool,
        /// With --vae: the base width (the released VAE has 96).
        #[arg(long, default_value_t = 96, requires = "vae")]
        vae_dim: usize,
        /// Override the number of blocks.
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(short, long)]
        out: PathBuf,
        /// Also write a synthetic text embedding `context` [text_len, text_dim] for
        /// `dfrt generate --context`.
        #[arg(long)]
        context_out: Option<PathBuf>,
    },
    /// Print the config and the tensors of a runtime checkpoint, safetensors or torch file.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Add mean/std/min/max per tensor (reads all data).
        #[arg(long)]
        stats: bool,
    },
}

fn run(cli: Cli) -> dfrt::Result<()> {
    match cli.cmd {
        Cmd::Convert { input, out, dtype, quiet, lora, .. } if dfrt_weights::vae::is_vae_source(&input)? => {
            if lora.is_some() {
                return Err(dfrt::Error::Input("--lora applies to DiT checkpoints, not to a VAE".into()));
            }
            let r = dfrt_weights::vae::convert_vae_files(&input, &out, dtype.as_deref().map(parse_dtype).transpose()?)?;
            if !quiet {
                if r.renamed > 0 {
                    eprintln!("note: mapped {} diffusers tensor names to the official names", r.renamed);
                }
                for (name, why) in &r.dropped {
                    eprintln!("dropped: {name} ({why})");
                }
                eprintln!("vae config: {}", r.config.to_json());
                eprintln!("wrote {}: VAE, {} tensors, {} bytes of {:?}", out.display(), r.tensors, r.bytes, r.dtype);
            }
        }
        Cmd::Convert {
            input,
            out,
            heads,
            text_len,
            dtype,
            ema,
            no_ema,
            drop_unknown,
            lora,
            lora_alpha,
            lora_scale,
            quiet,
        } => {
            let opts = ConvertOptions {
                heads,
                text_len,
                dtype: dtype.as_deref().map(parse_dtype).transpose()?,
                ema: if ema {
                    Some(true)
                } else if no_ema {
                    Some(false)
                } else {
                    None
                },
                drop_unknown,
                lora: lora.map(|path| LoraOptions { path, alpha: lora_alpha, scale: lora_scale }),
            };
            let r = convert_files(&input, &out, &opts)?;
            if !quiet {
                for n in &r.notes {
                    eprintln!("note: {n}");
                }
                let shown = 20;
                for (name, why) in r.dropped.iter().take(shown) {
                    eprintln!("dropped: {name} ({why})");
                }
                if r.dropped.len() > shown {
                    eprintln!("dropped: ... and {} more", r.dropped.len() - shown);
                }
                if let Some(l) = &r.lora {
                    eprintln!("{}", l.summary());
                }
                eprintln!("config: {}", r.config.to_json());
                eprintln!("wrote {}: {} tensors, {} bytes of {:?}", out.display(), r.tensors, r.bytes, r.dtype);
            }
        }
        Cmd::ConvertT5 { input, out, text_len, dtype } => {
            let opts = dfrt_weights::T5Options { text_len, dtype: dtype.as_deref().map(parse_dtype).transpose()? };
            let r = dfrt_weights::convert_t5(&input, &out, &opts)?;
            for (name, why) in r.dropped.iter().take(10) {
                eprintln!("dropped: {name} ({why})");
            }
            eprintln!("config: {}", r.config.to_json());
            eprintln!(
                "wrote {}: {} tensors, {} bytes of {:?}{}",
                out.display(),
                r.tensors,
                r.bytes,
                r.dtype,
                if r.from_hf { " (from Hugging Face names)" } else { "" }
            );
        }
        Cmd::Synth { vae: true, vae_dim, seed, dtype, out, .. } => {
            let cfg = dfrt::vae::VaeConfig::with_dim(vae_dim);
            let dtype = parse_dtype(&dtype)?;
            let bytes = dfrt_weights::vae::synth_vae(&out, &cfg, seed, dtype)?;
            eprintln!("wrote {}: VAE dim {vae_dim}, seed {seed}, {bytes} bytes of {dtype:?}", out.display());
        }
        Cmd::Synth { preset, layers, seed, dtype, out, context_out, .. } => {
            let preset = preset.expect("clap requires --preset without --vae");
            let mut cfg = ModelConfig::preset(&preset)?;
            if let Some(l) = layers {
                cfg.num_layers = l;
            }
            let dtype = parse_dtype(&dtype)?;
            let t = std::time::Instant::now();
            let bytes = synth_checkpoint(&out, &cfg, seed, dtype)?;
            eprintln!(
                "wrote {}: preset {preset}, {} layers, seed {seed}, {bytes} bytes of {dtype:?} in {:.1} s",
                out.display(),
                cfg.num_layers,
                t.elapsed().as_secs_f64()
            );
            if let Some(c) = context_out {
                dfrt_weights::synth::synth_context(&c, &cfg, seed)?;
                eprintln!("wrote {}: context [{}, {}]", c.display(), cfg.text_len, cfg.text_dim);
            }
        }
        Cmd::Inspect { file, json, stats } => {
            let text = inspect(&file, stats, json)?;
            // A closed pipe (`| head`) is not an error worth a panic.
            use std::io::Write;
            match std::io::stdout().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(dfrt::Error::io("<stdout>", e)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfrt-weights: error: {e}");
            ExitCode::FAILURE
        }
    }
}
