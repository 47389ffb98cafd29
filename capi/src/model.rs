//! Models: `dfrt_model_load` checks a runtime checkpoint once ([`ModelSource`]); sessions
//! share it (CPU sessions share its CPU weights; a GPU session loads its own copy).

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use dfrt_core::backend::Precision;
use dfrt_core::run::ModelSource;

use crate::errors::{guard, path_arg, precision_arg, DfrtError, DfrtStatus, Fail};
use crate::session::DfrtSession;

/// Facts about a loaded model that a caller needs to size its inputs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfrtModelInfo {
    /// Latent channels.
    pub in_dim: usize,
    /// Width of a text-embedding row (`cols` of `dfrt_session_set_context`).
    pub text_dim: usize,
    /// Most text-embedding rows the model takes.
    pub text_len: usize,
    pub dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Latent height and width must be multiples of these.
    pub patch_height: usize,
    pub patch_width: usize,
}

/// A loaded model (opaque). Immutable: share it between threads freely.
pub struct DfrtModel {
    pub(crate) inner: Arc<ModelSource>,
    pub(crate) precision: Precision,
}

// The thread-safety rules of docs/c-api.md, checked by the compiler: a model may be shared
// between threads, a session may move between threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shareable::<DfrtModel>();
    movable::<DfrtSession>();
};

/// Loads a dfrt runtime checkpoint (safetensors with `dfrt.config` metadata, as written by
/// `dfrt-weights convert` or `dfrt-weights synth`) for the CPU.
///
/// `dtype`: storage precision, `"f32"` or `"bf16"`; NULL means `"f32"`. On success `*out`
/// receives a model to release with `dfrt_model_free`; on failure it is set to NULL.
///
/// # Safety
/// `path` and `dtype` are NULL or NUL-terminated strings; `out` is NULL or writable; `err`
/// is NULL or points to a writable `DfrtError`.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_load(
    path: *const c_char,
    dtype: *const c_char,
    out: *mut *mut DfrtModel,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            *out = std::ptr::null_mut();
            let path = path_arg(path)?;
            let precision = precision_arg(dtype)?;
            // Checked (config, every tensor's name, shape and dtype) but not loaded: CPU
            // sessions load and share the CPU weights at their first chunk, GPU sessions load
            // their own copy onto the device, straight from the file.
            let m = ModelSource::open(&path)?;
            *out = Box::into_raw(Box::new(DfrtModel { inner: Arc::new(m), precision }));
            Ok(())
        })
    }
}

/// Releases a model. NULL is ignored. Sessions made from it stay valid (they share the
/// weights), so a model may be freed before its sessions.
///
/// # Safety
/// `model` is NULL or a model from `dfrt_model_load` not freed before, and no other thread
/// is using this handle during the call.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_free(model: *mut DfrtModel) {
    if model.is_null() {
        return;
    }
    // A panic in a destructor must not unwind into C; there is nobody to report it to.
    // SAFETY: the pointer came from Box::into_raw in dfrt_model_load and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
}

/// Fills `*out` with the model's dimensions.
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable; `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_model_info(
    model: *const DfrtModel,
    out: *mut DfrtModelInfo,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let m = model.as_ref().ok_or_else(|| Fail::null("model"))?;
            let out = out.as_mut().ok_or_else(|| Fail::null("out"))?;
            let c = &m.inner.cfg;
            *out = DfrtModelInfo {
                in_dim: c.in_dim,
                text_dim: c.text_dim,
                text_len: c.text_len,
                dim: c.dim,
                num_layers: c.num_layers,
                num_heads: c.num_heads,
                patch_height: c.patch_size[1],
                patch_width: c.patch_size[2],
            };
            Ok(())
        })
    }
}
