//! GPU kernels (placeholder; see issue 2).
