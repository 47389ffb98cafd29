//! C API of the dfrt runtime: `libdfrt.a` / `libdfrt.so` with the header `include/dfrt.h`
//! (generated from this file by cbindgen; `capi/tests/header.rs` fails when it drifts).
//!
//! Sessions are built by `dfrt::api` (crate `dfrt`, here `dfrt_core`), the same path
//! `dfrt generate` takes, so a C program gets the Rust API's latents bit for bit.
//!
//! Conventions (the full rules are in `docs/c-api.md`):
//! - every function returns a `DfrtStatus` and reports into an optional caller-owned
//!   `DfrtError`; there is no global or thread-local error state;
//! - every function runs under a panic guard: a Rust panic becomes `DFRT_ERR_PANIC`, never an
//!   unwind into C;
//! - handles are opaque, made by `*_load`/`*_new` and released by `*_free` (NULL-safe);
//! - a `DfrtModel` is immutable and may be shared by threads; a `DfrtSession` is used by
//!   one thread at a time.
//!
//! The Rust tests of every error path are in `src/tests.rs` (unit tests: the crate builds no
//! rlib, see Cargo.toml); `tests/c_example.rs` compiles and runs `examples/c/generate.c`.

mod errors;
mod model;
mod session;
mod text;
mod video;

pub use errors::*;
pub use model::*;
pub use session::*;
pub use text::*;
pub use video::*;

use std::ffi::{c_char, CStr};

/// Version of this C interface; it changes when a signature or a struct layout changes.
pub const DFRT_API_VERSION: u32 = 1;

/// The library version (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn dfrt_version() -> *const c_char {
    const V: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("version has no NUL"),
    };
    V.as_ptr()
}

#[cfg(test)]
mod tests;
