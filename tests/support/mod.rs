//! Shared helpers for the integration tests: locating the golden files and comparing tensors
//! with printed evidence.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/golden` beside the workspace, or `$DFRT_GOLDEN_DIR`.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("DFRT_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"),
    }
}

/// Error statistics of `got` against `want`.
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    /// ‖got − want‖₂ / ‖want‖₂
    pub rel_l2: f64,
    pub max_abs: f64,
    /// max |got − want| / max |want|
    pub max_rel: f64,
    pub worst: usize,
}

pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    assert_eq!(got.len(), want.len(), "length mismatch: got {} want {}", got.len(), want.len());
    let (mut num, mut den, mut max_abs, mut max_ref, mut worst) = (0f64, 0f64, 0f64, 0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let e = (g - w).abs();
        if !g.is_finite() {
            panic!("non-finite value at index {i}: got {g}, want {w}");
        }
        num += e * e;
        den += w * w;
        if e > max_abs {
            max_abs = e;
            worst = i;
        }
        max_ref = max_ref.max(w.abs());
    }
    Diff { rel_l2: (num / den.max(1e-300)).sqrt(), max_abs, max_rel: max_abs / max_ref.max(1e-300), worst }
}

/// Asserts relative L2 ≤ `tol`, printing the evidence either way.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) -> Diff {
    let d = diff(got, want);
    println!(
        "{name:<24} rel_l2 {:.3e}  max_abs {:.3e}  max_rel {:.3e}  (n = {})",
        d.rel_l2,
        d.max_abs,
        d.max_rel,
        got.len()
    );
    if !(d.rel_l2 <= tol) {
        let first = got
            .iter()
            .zip(want)
            .position(|(g, w)| ((g - w).abs() as f64) > tol * w.abs().max(1e-3) as f64)
            .unwrap_or(d.worst);
        panic!(
            "{name}: rel L2 {:.3e} > {tol:.1e}; first bad index {first}: got {} want {}; worst index {}: got {} want {}; max abs {:.3e}",
            d.rel_l2, got[first], want[first], d.worst, got[d.worst], want[d.worst], d.max_abs
        );
    }
    d
}

/// Asserts max |got − want| ≤ `atol` (shapes must agree); returns the max abs error.
pub fn assert_atol(name: &str, got: &[f32], want: &[f32], atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length mismatch: got {} want {}", got.len(), want.len());
    if got.is_empty() {
        return 0.0;
    }
    let d = diff(got, want);
    if !(d.max_abs <= atol) {
        let first = got.iter().zip(want).position(|(g, w)| ((g - w).abs() as f64) > atol).unwrap_or(d.worst);
        panic!(
            "{name}: max abs {:.3e} > {atol:.1e}; first bad index {first}: got {} want {}; worst index {}: got {} want {}; rel L2 {:.3e}",
            d.max_abs, got[first], want[first], d.worst, got[d.worst], want[d.worst], d.rel_l2
        );
    }
    d.max_abs
}

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
