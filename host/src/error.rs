//! One error type for the runtime. Every failure a user can cause (bad files, bad shapes,
//! bad policies, no GPU) maps to a variant with a message that says what was wrong.
//!
//! ```
//! use dfrt::{Error, ModelConfig};
//!
//! let e = dfrt::cache::Policy::parse("window:2").unwrap_err();
//! assert!(matches!(e, Error::Policy(_)));
//! // Display prefixes the kind: "policy: window:2,sink:0: the window counts ...".
//! assert!(e.to_string().starts_with("policy: "), "{e}");
//! assert!(matches!(ModelConfig::preset("huge"), Err(Error::Config(_))));
//! ```

/// What went wrong; `Display` gives a one-line message for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The file at `path` is not a usable checkpoint (bad header, missing config, truncated).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    /// A tensor is missing or has the wrong shape or dtype.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    /// An invalid or unknown model configuration.
    #[error("config: {0}")]
    Config(String),
    /// An invalid cache policy, or one that does not fit the model or the run.
    #[error("policy: {0}")]
    Policy(String),
    /// Bad caller input: shapes, frame counts, noise, head programs, calling out of order.
    #[error("input: {0}")]
    Input(String),
    /// The GPU or its driver failed, or is not there.
    #[error("device: {0}")]
    Device(String),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    /// An [`Error::Tensor`] for tensor `name`.
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
}
