//! One error type for the runtime. Every failure a user can cause (bad files, bad shapes,
//! bad policies, no GPU) maps to a variant with a message that says what was wrong.
//!
//! ```
//! use dfrt::{Error, ModelConfig};
//!
//! let e = dfrt::policy::Policy::parse("window:2").unwrap_err();
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
    /// The GPU or its driver failed, or is not there ([`DeviceError`] says which).
    #[error("device: {0}")]
    Device(DeviceError),
    /// The video encoder failed.
    #[error("video encoder: {0}")]
    Encode(String),
}

/// What went wrong on a device, by kind, so that a front end (the C API's status codes, the
/// CLI's error kinds) can tell running out of memory from a kernel fault without reading
/// the message. `Display` is the message alone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No such device, no driver, no GPU, or a library that did not load.
    #[error("{0}")]
    NotAvailable(String),
    /// Too little device memory: `needed` bytes asked for, `free` bytes free.
    #[error("{detail}")]
    OutOfMemory { needed: usize, free: usize, detail: String },
    /// An op, shape or dtype the device or backend has no kernel for.
    #[error("{0}")]
    Unsupported(String),
    /// A driver or library call failed.
    #[error("{device}: {call}: {msg}")]
    Driver { device: &'static str, call: String, msg: String },
    /// A kernel faulted (a trap, an illegal address, a detected race or divergence).
    #[error("{msg}")]
    KernelFault { kernel: String, msg: String },
    /// A backend (GPU or CPU) or the device layer was asked for something impossible:
    /// operands whose shapes or ranges do not fit, a call that a graph capture forbids, an
    /// unknown graph. A bug in the caller, reported instead of run.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    /// A [`DeviceError::NotAvailable`].
    pub fn not_available(msg: impl Into<String>) -> Self {
        Error::Device(DeviceError::NotAvailable(msg.into()))
    }
    /// A [`DeviceError::OutOfMemory`]; `detail` is the whole message.
    pub fn out_of_memory(needed: usize, free: usize, detail: impl Into<String>) -> Self {
        Error::Device(DeviceError::OutOfMemory { needed, free, detail: detail.into() })
    }
    /// A [`DeviceError::Unsupported`].
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::Device(DeviceError::Unsupported(msg.into()))
    }
    /// A [`DeviceError::Driver`]: `call` on `device` failed with `msg`.
    pub fn driver(device: &'static str, call: impl Into<String>, msg: impl ToString) -> Self {
        Error::Device(DeviceError::Driver { device, call: call.into(), msg: msg.to_string() })
    }
    /// A [`DeviceError::KernelFault`] of `kernel`; `msg` is the whole message.
    pub fn kernel_fault(kernel: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Device(DeviceError::KernelFault { kernel: kernel.into(), msg: msg.into() })
    }
    /// A [`DeviceError::Invalid`].
    pub fn invalid_op(msg: impl Into<String>) -> Self {
        Error::Device(DeviceError::Invalid(msg.into()))
    }
    /// An [`Error::Tensor`] for tensor `name`.
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
}
