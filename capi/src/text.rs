//! Prompt in: the umT5 tokenizer and encoder behind `dfrt_session_set_prompt`.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dfrt_core::backend::cpu::CpuBackend;

use crate::errors::{guard, path_arg, precision_arg, text, DfrtError, DfrtStatus, Fail};
use crate::session::{session_mut, DfrtSession};

/// A loaded text encoder (opaque): the umT5 tokenizer and encoder on the CPU. Immutable:
/// share it between threads and sessions freely.
pub struct DfrtTextEncoder {
    pub(crate) be: CpuBackend,
    pub(crate) inner: dfrt_core::text::TextEncoder<CpuBackend>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<DfrtTextEncoder>();
};

/// Loads a text encoder for the CPU: `encoder` is a text-encoder checkpoint (`dfrt-weights
/// convert-t5` of Wan's `models_t5_umt5-xxl-enc-bf16.pth`), `tokenizer` the tokenizer folder
/// (`google/umt5-xxl`, with `tokenizer.json`). `dtype` as in `dfrt_model_load`. The weights
/// stay memory-mapped; each block is widened to f32 only while a prompt is encoded. On
/// success `*out` receives a handle to release with `dfrt_text_encoder_free`; on failure NULL.
///
/// # Safety
/// `encoder`, `tokenizer` and `dtype` are NULL or NUL-terminated strings (`dtype` may be
/// NULL); `out` is NULL or writable; `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_text_encoder_load(
    encoder: *const c_char,
    tokenizer: *const c_char,
    dtype: *const c_char,
    out: *mut *mut DfrtTextEncoder,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            if out.is_null() {
                return Err(Fail::null("out"));
            }
            *out = std::ptr::null_mut();
            let enc = path_arg(encoder)?;
            let tok = path_arg(tokenizer)?;
            let precision = precision_arg(dtype)?;
            let be = CpuBackend::new(precision);
            let inner = dfrt_core::text::TextEncoder::load(&be, &enc, &tok, dfrt_core::text::Residency::Streamed)?;
            *out = Box::into_raw(Box::new(DfrtTextEncoder { be, inner }));
            Ok(())
        })
    }
}

/// Releases a text encoder. NULL is ignored. Contexts already set from it stay.
///
/// # Safety
/// `encoder` is NULL or a handle from `dfrt_text_encoder_load` not freed before, unused by
/// other threads during the call.
#[no_mangle]
pub unsafe extern "C" fn dfrt_text_encoder_free(encoder: *mut DfrtTextEncoder) {
    if encoder.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in dfrt_text_encoder_load and is freed once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(encoder) })));
}

/// Sets the text embedding from a prompt: Wan's cleaning, the tokenizer, the encoder (as
/// `dfrt generate --prompt`), then as `dfrt_session_set_context` with the encoder's
/// `text_len` rows. `prompt` must be UTF-8 (else `DFRT_ERR_INVALID_ARGUMENT`); an encoder
/// whose width is not the model's `text_dim` is `DFRT_ERR_INVALID_ARGUMENT` too. Allowed
/// before the first chunk or after a reset.
///
/// # Safety
/// `prompt` is NULL or a NUL-terminated string; `encoder` NULL or a live text encoder;
/// `session`, `err` as everywhere.
#[no_mangle]
pub unsafe extern "C" fn dfrt_session_set_prompt(
    session: *mut DfrtSession,
    encoder: *const DfrtTextEncoder,
    prompt: *const c_char,
    err: *mut DfrtError,
) -> DfrtStatus {
    // SAFETY: pointer contracts forwarded from this function's.
    unsafe {
        guard(err, || {
            let s = session_mut(session)?;
            let te = encoder.as_ref().ok_or_else(|| Fail::null("encoder"))?;
            let prompt = text(prompt, "prompt")?;
            te.inner.check_for(&s.model.cfg)?;
            s.settable("set the prompt")?;
            let e = te.inner.encode(&te.be, prompt)?;
            s.context = Some((e.context.data, e.context.rows));
            Ok(())
        })
    }
}
