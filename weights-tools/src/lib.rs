//! Weight tools for dfrt: convert Wan2.1-family checkpoints (safetensors or torch `.pt`
//! archives, native or diffusers names, Self-Forcing `generator`/`generator_ema` dicts) to
//! the runtime checkpoint, synthesise well-scaled random weights of any config, inspect files.
//!
//! | module | what it holds |
//! |---|---|
//! | [`convert`] | [`convert_file`] / [`convert_files`]: pick the state dict, normalise names ([`native_name`]), infer the config ([`infer_config`]), check shapes, write |
//! | [`synth`] | [`synth_checkpoint`], [`synth_tensors`], [`synth_context`]: deterministic random weights and text embeddings |
//! | [`lora`] | [`LoraOptions`]: merging a PEFT LoRA (LongLive's) into the Linear weights while converting |
//! | [`inspect`](mod@inspect) | [`inspect()`]: a table (or JSON) of a file's config and tensors |
//! | [`source`], [`pickle`], [`zip`] | readers for safetensors and torch `.pt` archives |
//! | [`vae`](mod@vae) | the Wan2.1 video VAE: [`vae::convert_vae_files`] (`Wan2.1_VAE.pth` or diffusers `AutoencoderKLWan` names), [`vae::synth_vae`] |
//! | [`t5`](mod@t5) | [`convert_t5`]: umT5 encoder weights (Wan `.pth` or Hugging Face names) → runtime text-encoder checkpoint |
//! | [`writer`] | the streaming checkpoint writer (one tensor in memory at a time) |
//!
//! The same operations are the `dfrt-weights` binary's `convert`, `synth` and `inspect`.
//!
//! # Synthesising weights
//!
//! ```
//! use dfrt::ModelConfig;
//! use dfrt_weights::{expected_tensors, synth_tensors};
//!
//! let cfg = ModelConfig::preset("tiny")?;
//! let a = synth_tensors(&cfg, 11);
//! // Exactly the tensors a runtime checkpoint of this config holds, in the official order.
//! let names: Vec<_> = a.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
//! assert_eq!(names, expected_tensors(&cfg));
//! // Deterministic in the seed, different across seeds, never degenerate.
//! assert_eq!(synth_tensors(&cfg, 11)[3].data, a[3].data);
//! assert_ne!(synth_tensors(&cfg, 12)[3].data, a[3].data);
//! assert!(a.iter().all(|t| t.data.iter().all(|x| x.is_finite())));
//! # Ok::<(), dfrt::Error>(())
//! ```
//!
//! # Converting a checkpoint
//!
//! A training checkpoint with wrapper prefixes (`model.` from `WanDiffusionWrapper`) becomes a
//! runtime checkpoint with native names and the config in its metadata. Only `num_heads`,
//! `text_len` and `eps` are not fixed by the weights; `tiny` has 2 heads and 16 context rows.
//!
//! ```
//! use std::collections::BTreeMap;
//! use dfrt::checkpoint::{write_safetensors, DType, TensorFile};
//! use dfrt::ModelConfig;
//! use dfrt_weights::{convert_file, synth_tensors, ConvertOptions};
//!
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-convert-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let (src, dst) = (dir.join("train.safetensors"), dir.join("runtime.safetensors"));
//!
//! let cfg = ModelConfig::preset("tiny")?;
//! let tensors = synth_tensors(&cfg, 5);
//! let wrapped = tensors
//!     .iter()
//!     .map(|t| {
//!         let mut o = t.to_out(DType::BF16)?;
//!         o.name = format!("model.{}", t.name);
//!         Ok(o)
//!     })
//!     .collect::<dfrt::Result<Vec<_>>>()?;
//! write_safetensors(&src, &wrapped, &BTreeMap::new())?;
//!
//! let opts = ConvertOptions { heads: Some(2), text_len: Some(16), ..Default::default() };
//! let report = convert_file(&src, &dst, &opts)?;
//! assert_eq!(report.config, cfg);
//! assert_eq!(report.dtype, DType::BF16); // the source dtype is kept
//! assert_eq!(report.tensors, tensors.len());
//!
//! let f = TensorFile::open(&dst)?;
//! assert_eq!(f.config()?, cfg);
//! let bias = &tensors.iter().find(|t| t.name == "head.head.bias").unwrap();
//! let back = f.f32("head.head.bias", &bias.shape)?;
//! assert!(back.iter().zip(&bias.data).all(|(b, x)| (b - x).abs() <= x.abs() / 128.0));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

pub mod convert;
pub mod inspect;
pub mod lora;
pub mod pickle;
pub mod source;
pub mod synth;
pub mod t5;
pub mod vae;
pub mod writer;
pub mod zip;

pub use convert::{
    convert_file, convert_files, diffusers_to_native, expand_inputs, infer_config, native_name, strip_prefixes,
    validate_shapes, ConvertOptions, ConvertReport,
};
pub use dfrt::names::expected_tensors;
pub use inspect::inspect;
pub use lora::{LoraOptions, LoraReport};
pub use source::Source;
pub use synth::{synth_checkpoint, synth_context, synth_tensor, synth_tensors, NamedTensor, Rng};
pub use t5::{convert_t5, T5Options, T5Report};

/// Parses a dtype flag value: `f32` or `bf16`.
///
/// ```
/// use dfrt::checkpoint::DType;
/// assert_eq!(dfrt_weights::parse_dtype("BF16")?, DType::BF16);
/// assert!(dfrt_weights::parse_dtype("f16").is_err());
/// # Ok::<(), dfrt::Error>(())
/// ```
pub fn parse_dtype(s: &str) -> dfrt::Result<dfrt::checkpoint::DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(dfrt::checkpoint::DType::F32),
        "bf16" | "bfloat16" => Ok(dfrt::checkpoint::DType::BF16),
        _ => Err(dfrt::Error::Config(format!("unknown dtype `{s}` (f32 or bf16)"))),
    }
}
