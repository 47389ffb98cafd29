//! The golden cases: outputs of the official PyTorch code, one folder per case with a
//! `manifest.json`.

use std::path::PathBuf;

/// `$DFRT_GOLDEN_DIR`, else `shared/golden` beside the checkout (`../shared/golden` from the
/// workspace root).
pub fn dir() -> PathBuf {
    match std::env::var_os("DFRT_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

/// The folder of case `name`.
pub fn case(name: &str) -> PathBuf {
    dir().join(name)
}

/// Case `name`'s `manifest.json`.
pub fn manifest(name: &str) -> serde_json::Value {
    let p = case(name).join("manifest.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Case `name`'s `model_config` object (a `dfrt::ModelConfig` as JSON).
pub fn model_config(name: &str) -> serde_json::Value {
    manifest(name)["model_config"].clone()
}
