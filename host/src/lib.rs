//! dfrt: a runtime for autoregressive video diffusion (Wan2.1 causal DiT, Self-Forcing
//! pipeline) with the Dummy Forcing KV-cache policy.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod names;

pub use config::ModelConfig;
pub use error::{Error, Result};
