//! dfrt: a runtime for autoregressive video diffusion (Wan2.1 causal DiT, Self-Forcing
//! pipeline) with the Dummy Forcing KV-cache policy.

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
pub mod profile;

pub use config::ModelConfig;
pub use error::{Error, Result};
