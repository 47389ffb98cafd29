//! Errors and the panic guard: the status codes, the caller-owned error report, and the
//! guard every exported function runs its body under (a panic becomes `DFRT_ERR_PANIC`).
//! Also the argument readers shared by every domain (strings, paths, output buffers).

use std::any::Any;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use dfrt_core::error::DeviceError;
use dfrt_core::Error;

/// Bytes in `DfrtError.message`, the terminating NUL included.
pub const DFRT_ERROR_MESSAGE_LEN: usize = 1024;

/// Result of every call. `DFRT_OK` is 0; everything else is an error, explained in the
/// `DfrtError` passed to the call.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum DfrtStatus {
    DFRT_OK = 0,
    /// A required pointer argument was NULL.
    DFRT_ERR_NULL = 1,
    /// An argument is out of range or misshapen (sizes, dtype, text that is not UTF-8).
    DFRT_ERR_INVALID_ARGUMENT = 2,
    /// A file could not be read or written.
    DFRT_ERR_IO = 3,
    /// The file is not a usable dfrt runtime checkpoint (or head program for this model).
    DFRT_ERR_CHECKPOINT = 4,
    /// The cache policy string is malformed or does not fit the model.
    DFRT_ERR_POLICY = 5,
    /// The device is unknown or absent (no CUDA driver or GPU), or a driver call failed.
    DFRT_ERR_DEVICE = 6,
    /// The call is not allowed in the session's current state (no context yet, settings
    /// changed after generation started, a head program asked for before calibration, a
    /// session left broken by an earlier failure: call `dfrt_session_reset`).
    DFRT_ERR_STATE = 7,
    /// Every frame of the session is generated.
    DFRT_ERR_FINISHED = 8,
    /// The caller's buffer is too small; the call says how much it needs.
    DFRT_ERR_BUFFER_TOO_SMALL = 9,
    /// A panic inside the library was caught (a bug: please report it with the message).
    DFRT_ERR_PANIC = 10,
    /// The device has too little memory for the run (the message gives the bytes needed
    /// and free): use a smaller resolution, a bounded policy or bf16.
    DFRT_ERR_OUT_OF_MEMORY = 11,
    /// The device or backend has no kernel for this op, shape or dtype.
    DFRT_ERR_UNSUPPORTED = 12,
    /// A kernel faulted on the device; the session is broken (`dfrt_session_reset`).
    DFRT_ERR_KERNEL_FAULT = 13,
}

use DfrtStatus::*;

/// Error report, owned by the caller (stack or heap). Pass NULL to ignore details. Every
/// call overwrites it: `code` is the call's status, `message` a NUL-terminated UTF-8 text
/// (empty on success, truncated at a character boundary to fit).
#[repr(C)]
pub struct DfrtError {
    pub code: DfrtStatus,
    pub message: [c_char; DFRT_ERROR_MESSAGE_LEN],
}

impl Default for DfrtError {
    fn default() -> Self {
        DfrtError { code: DFRT_OK, message: [0; DFRT_ERROR_MESSAGE_LEN] }
    }
}

impl DfrtError {
    /// The message as Rust text (for Rust callers and tests).
    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// An error on its way to the caller.
pub(crate) struct Fail {
    code: DfrtStatus,
    msg: String,
}

impl Fail {
    pub(crate) fn new(code: DfrtStatus, msg: impl Into<String>) -> Self {
        Fail { code, msg: msg.into() }
    }
    pub(crate) fn null(what: &str) -> Self {
        Fail::new(DFRT_ERR_NULL, format!("`{what}` is NULL"))
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Io { .. } => DFRT_ERR_IO,
            Error::Checkpoint { .. } | Error::Config(_) | Error::Tensor { .. } => DFRT_ERR_CHECKPOINT,
            Error::Policy(_) => DFRT_ERR_POLICY,
            Error::Input(_) => DFRT_ERR_INVALID_ARGUMENT,
            Error::Device(d) => match d {
                DeviceError::OutOfMemory { .. } => DFRT_ERR_OUT_OF_MEMORY,
                DeviceError::Unsupported(_) => DFRT_ERR_UNSUPPORTED,
                DeviceError::KernelFault { .. } => DFRT_ERR_KERNEL_FAULT,
                DeviceError::NotAvailable(_) | DeviceError::Driver { .. } | DeviceError::Invalid(_) => DFRT_ERR_DEVICE,
            },
            Error::Encode(_) => DFRT_ERR_IO,
        };
        Fail::new(code, e.to_string())
    }
}

pub(crate) fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Writes `code` and `msg` into `err` (if not NULL): truncated at a UTF-8 character boundary
/// to fit, always NUL-terminated.
///
/// # Safety
/// `err` is NULL or points to a writable `DfrtError`.
pub(crate) unsafe fn report(err: *mut DfrtError, code: DfrtStatus, msg: &str) {
    if err.is_null() {
        return;
    }
    let mut n = msg.len().min(DFRT_ERROR_MESSAGE_LEN - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller guarantees `err` points to a writable DfrtError; `n + 1` bytes fit
    // in its message array (n < DFRT_ERROR_MESSAGE_LEN), and the source is a live &str.
    unsafe {
        (*err).code = code;
        let dst = std::ptr::addr_of_mut!((*err).message) as *mut u8;
        std::ptr::copy_nonoverlapping(msg.as_ptr(), dst, n);
        *dst.add(n) = 0;
    }
}

/// The panic guard every exported function runs its body under.
///
/// # Safety
/// `err` is NULL or points to a writable `DfrtError`.
pub(crate) unsafe fn guard(err: *mut DfrtError, f: impl FnOnce() -> Result<(), Fail>) -> DfrtStatus {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Fail::new(DFRT_ERR_PANIC, format!("internal panic (a dfrt bug): {}", panic_text(&*p))))
    });
    let (code, msg) = match r {
        Ok(()) => (DFRT_OK, String::new()),
        Err(f) => (f.code, f.msg),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { report(err, code, &msg) };
    code
}

/// Reads a NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| Fail::new(DFRT_ERR_INVALID_ARGUMENT, format!("`{what}` is not valid UTF-8")))
}

/// A `dtype` argument: `"f32"` or `"bf16"`, NULL meaning f32.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn precision_arg(p: *const c_char) -> Result<dfrt_core::backend::Precision, Fail> {
    if p.is_null() {
        return Ok(dfrt_core::backend::Precision::F32);
    }
    // SAFETY: forwarded contract.
    Ok(dfrt_core::backend::Precision::parse(unsafe { text(p, "dtype") }?)?)
}

/// Copies `v` to the caller's `out` (capacity `cap` elements).
///
/// # Safety
/// `out` is NULL or valid for `cap` writes of `T`.
pub(crate) unsafe fn copy_out<T: Copy>(v: &[T], out: *mut T, cap: usize, what: &str, unit: &str) -> Result<(), Fail> {
    if out.is_null() {
        return Err(Fail::null(what));
    }
    if cap < v.len() {
        return Err(Fail::new(
            DFRT_ERR_BUFFER_TOO_SMALL,
            format!("`{what}` holds {cap} {unit}, {} are needed", v.len()),
        ));
    }
    // SAFETY: `out` is valid for `cap >= v.len()` writes (contract); the source is a live slice
    // that cannot overlap a caller-owned buffer.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) };
    Ok(())
}

/// A path argument: raw bytes on Unix (any file name), UTF-8 elsewhere.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn path_arg(p: *const c_char) -> Result<PathBuf, Fail> {
    if p.is_null() {
        return Err(Fail::null("path"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: non-null and NUL-terminated by contract.
        let c = unsafe { CStr::from_ptr(p) };
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        // SAFETY: forwarded contract.
        Ok(PathBuf::from(unsafe { text(p, "path") }?))
    }
}

/// The name of a status code (`"DFRT_ERR_POLICY"`), or `"DFRT_UNKNOWN"`. The string is
/// static: do not free it.
#[no_mangle]
pub extern "C" fn dfrt_status_name(code: i32) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"DFRT_OK",
        1 => c"DFRT_ERR_NULL",
        2 => c"DFRT_ERR_INVALID_ARGUMENT",
        3 => c"DFRT_ERR_IO",
        4 => c"DFRT_ERR_CHECKPOINT",
        5 => c"DFRT_ERR_POLICY",
        6 => c"DFRT_ERR_DEVICE",
        7 => c"DFRT_ERR_STATE",
        8 => c"DFRT_ERR_FINISHED",
        9 => c"DFRT_ERR_BUFFER_TOO_SMALL",
        10 => c"DFRT_ERR_PANIC",
        11 => c"DFRT_ERR_OUT_OF_MEMORY",
        12 => c"DFRT_ERR_UNSUPPORTED",
        13 => c"DFRT_ERR_KERNEL_FAULT",
        _ => c"DFRT_UNKNOWN",
    };
    s.as_ptr()
}
