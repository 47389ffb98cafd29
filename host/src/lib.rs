//! dfrt: a runtime for autoregressive video diffusion (Wan2.1 causal DiT, Self-Forcing
//! pipeline) with the Dummy Forcing KV-cache policy.
//!
//! A session turns a text embedding and noise into video latents three latent frames (one
//! chunk) at a time, exactly as the official Self-Forcing `CausalInferencePipeline` does:
//! four denoising steps per chunk at the warped timesteps, then a clean pass that writes the
//! chunk into the KV cache. Which earlier frames each attention head keeps is the cache
//! policy: `full`, a rolling `window:W,sink:S`, or Dummy Forcing's `dummy:N` (per-head
//! groups chosen by calibration). The model runs on any [`backend::Backend`]; the CPU
//! backend is the reference, a GPU backend runs the kernels of the `dfrt-kernels` crate.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`api`] | the embedding API: [`api::LoadedModel`] (load once), [`api::SessionOptions`], sessions; used by the CLI and the C API |
//! | [`config`] | [`ModelConfig`] and its presets (`tiny`, `tiny4`, `small`, `wan-1.3b`, `wan-14b`) |
//! | [`checkpoint`] | the runtime checkpoint: [`checkpoint::TensorFile`] (mmap'd safetensors reader), [`checkpoint::write_checkpoint`] |
//! | [`names`] | the native Wan tensor names and shapes of a config |
//! | [`model`] | the causal DiT, written once against [`backend::Backend`] ops |
//! | [`backend`] | the op trait and the CPU reference backend [`backend::cpu::CpuBackend`] |
//! | [`policy`] | the cache policies: [`policy::Policy`] (parsed and checked once), Dummy Forcing's [`policy::DummySpec`], head groups, the KV footprint |
//! | [`cache`] | the self-attention KV cache (per-layer head groups of frame slots) |
//! | [`dummy`] | Dummy Forcing: policy spec, calibration, head programming, head programs, KV accounting |
//! | [`pipeline`] | the Self-Forcing loop: [`pipeline::Session`], [`pipeline::Schedule`], noise |
//! | [`run`] | the one owner of a run: [`run::DeviceChoice`], [`run::ModelSource`], [`run::open`] (memory plan, weights, session) |
//! | [`vae`] | the Wan2.1 video VAE: [`vae::Vae`] (CPU reference), the streaming [`vae::Decoder`], the encoder |
//! | [`video`] | video files (H.264 MP4, Y4M, PNG frames) written as chunks decode; [`video::VideoSession`] |
//! | [`text`] | prompt in: Wan's cleaning, the umT5 tokenizer and encoder ([`text::TextEncoder`]) |
//! | [`error`] | [`Error`] and [`Result`]: every user mistake is an error with a message, not a panic |
//!
//! Weights come from the `dfrt-weights` crate and tool (`dfrt-weights convert` for real Wan2.1
//! checkpoints, `dfrt-weights synth` for random weights of any preset); the `dfrt` binary
//! (`dfrt generate`, `dfrt calibrate`, `dfrt inspect`, `dfrt info`) drives this library.
//!
//! # Quick start
//!
//! Synthesise a tiny model, open a session on the CPU and generate two chunks:
//!
//! ```
//! use dfrt::api::{CpuModel, SessionOptions};
//! use dfrt::backend::Precision;
//! use dfrt::checkpoint::DType;
//! use dfrt::pipeline::Noise;
//! use dfrt::ModelConfig;
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-quickstart-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("tiny.safetensors");
//!
//! // Random, well-scaled weights of the `tiny` preset (2 layers, dim 256), seed 7.
//! let cfg = ModelConfig::preset("tiny")?;
//! dfrt_weights::synth_checkpoint(&path, &cfg, 7, DType::F32)?;
//!
//! let model = CpuModel::cpu(&path, Precision::F32)?;
//! assert_eq!(model.cfg, cfg); // the config travels inside the checkpoint
//!
//! // An 8×8 latent (4×4 patches), 6 latent frames = 2 chunks, a rolling window of 6 frames.
//! let opts = SessionOptions::parse("window:6,sink:1", 8, 8, Some(6), &model.cfg)?;
//! // The text embedding [rows, text_dim]; a real one comes from the umT5 encoder.
//! let rows = 3;
//! let context: Vec<f32> = (0..rows * cfg.text_dim).map(|i| (i as f32 * 0.61).cos()).collect();
//!
//! let mut session = model.session(&opts, &context, rows, Noise::seeded(1))?;
//! let mut passes = 0;
//! let latents = session.run(&mut |_| passes += 1)?;
//!
//! // [frames, channels, height, width], finite, and 5 forwards per chunk (4 steps + clean pass).
//! assert_eq!(latents.len(), 6 * cfg.in_dim * 8 * 8);
//! assert!(latents.iter().all(|x| x.is_finite()));
//! assert_eq!((session.frames_done(), passes), (6, 2 * 5));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

pub mod api;
pub mod backend;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dummy;
pub mod error;
pub mod gpu;
pub mod model;
pub mod names;
pub mod pipeline;
pub mod policy;
pub mod profile;
pub mod run;
pub mod text;
pub mod vae;
pub mod video;

pub use config::ModelConfig;
pub use error::{Error, Result};

/// The module layering, checked on the sources: each lower layer names the upper modules it
/// must not import. The device layer (`gpu/`) sits below everything but the backend trait and
/// the errors; the cache policies (`policy/`) below the cache and Dummy Forcing; the cache
/// below Dummy Forcing and the pipeline. Fails naming the file and the line that points up.
#[cfg(test)]
mod layering {
    const RULES: [(&str, &[&str]); 3] = [
        (
            "gpu",
            &[
                "api",
                "cache",
                "checkpoint",
                "dummy",
                "model",
                "names",
                "pipeline",
                "policy",
                "run",
                "text",
                "vae",
                "video",
            ],
        ),
        ("policy", &["api", "backend", "cache", "checkpoint", "dummy", "gpu", "model", "pipeline", "run"]),
        ("cache", &["api", "dummy", "model", "pipeline", "run"]),
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn lower_layers_import_no_upper_module() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        for (layer, upper) in RULES {
            let mut files = Vec::new();
            sources(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no sources under src/{layer}");
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                for (i, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for m in upper {
                        if code.contains(&format!("crate::{m}::")) || code.contains(&format!("crate::{m};")) {
                            bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(bad.is_empty(), "a lower layer imports an upper module:\n{}", bad.join("\n"));
    }
}
