//! Shared helpers for the integration tests: locating the golden files and comparing tensors
//! with printed evidence.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

pub use dfrt_testkit::golden::dir as golden_dir;
pub use dfrt_testkit::tol::{assert_atol, assert_rel_l2 as assert_close, diff, Diff};

/// What a golden case exercises, from its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseKind {
    /// Self-Forcing with `full` or `window` (tiny-full, tiny-window, tiny-full-bf16).
    Reference,
    /// Dummy Forcing (df-tiny), with TeaCache when the manifest enables it (df-teacache).
    Dummy,
    /// CausVid's pipeline (causvid-tiny).
    CausVid,
    /// Rolling Forcing (rolling-tiny).
    Rolling,
    /// Prompt switches with KV recache (df-switch, longlive-switch).
    Switch,
    /// Not a DiT pipeline case (VAE, text encoder, end to end).
    Other,
}

pub fn case_kind(m: &serde_json::Value) -> CaseKind {
    if m["model_config"].get("patch_size").is_none() || m.get("latent_shape").is_none() {
        return CaseKind::Other;
    }
    if m.get("prompts").is_some() || m.get("recache_events").is_some() {
        CaseKind::Switch
    } else if m.get("windows").is_some() {
        CaseKind::Rolling
    } else if m["schedule"]["warp_denoising_step"] == serde_json::Value::Bool(false) {
        CaseKind::CausVid
    } else if m.get("dummy_forcing").is_some() {
        CaseKind::Dummy
    } else {
        CaseKind::Reference
    }
}
