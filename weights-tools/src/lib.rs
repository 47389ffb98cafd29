//! Checkpoint converters (placeholder; see issue 3).
