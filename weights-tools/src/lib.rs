//! Weight tools for dfrt: convert Wan2.1-family checkpoints (safetensors or torch `.pt`
//! archives, native or diffusers names, Self-Forcing `generator`/`generator_ema` dicts) to
//! the runtime checkpoint, synthesise well-scaled random weights of any config, inspect files.

pub mod convert;
pub mod inspect;
pub mod pickle;
pub mod source;
pub mod synth;
pub mod writer;
pub mod zip;

pub use convert::{convert_file, convert_files, expand_inputs, diffusers_to_native, infer_config, native_name, strip_prefixes, validate_shapes, ConvertOptions, ConvertReport};
pub use dfrt::names::expected_tensors;
pub use inspect::inspect;
pub use source::Source;
pub use synth::{synth_checkpoint, synth_context, synth_tensor, synth_tensors, NamedTensor, Rng};

/// Parses a dtype flag value: `f32` or `bf16`.
pub fn parse_dtype(s: &str) -> dfrt::Result<dfrt::checkpoint::DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(dfrt::checkpoint::DType::F32),
        "bf16" | "bfloat16" => Ok(dfrt::checkpoint::DType::BF16),
        _ => Err(dfrt::Error::Config(format!("unknown dtype `{s}` (f32 or bf16)"))),
    }
}
