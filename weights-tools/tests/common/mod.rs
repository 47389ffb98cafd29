#![allow(dead_code)]
//! Helpers shared by the weights-tools tests.

use std::path::PathBuf;

use dfrt::checkpoint::TensorFile;
pub use dfrt_testkit::Scratch;

/// The golden folder ([`dfrt_testkit::golden::dir`]), which must exist.
pub fn golden_dir() -> PathBuf {
    let dir = dfrt_testkit::golden::dir();
    assert!(dir.is_dir(), "golden folder {} not found (set DFRT_GOLDEN_DIR)", dir.display());
    dir
}

/// Golden case folders holding a weights file.
pub fn golden_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("weights.safetensors").is_file())
        // DiT cases only (the vae-* cases hold a video VAE; see tests/vae.rs).
        .filter(|p| std::fs::read_to_string(p.join("manifest.json")).is_ok_and(|m| m.contains("\"ffn_dim\"")))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases with weights");
    v
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh, empty scratch folder for one test, removed when the test drops it (its files are
/// checkpoints of up to ~100 MB, which must not pile up in the temp dir run after run).
pub fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("weights-{name}"))
}

/// Bit-for-bit equality, printing the first difference.
#[allow(unused_imports)]
pub use dfrt_testkit::tol::assert_bits_eq as assert_same;

/// Every tensor's data starts on a 256-byte boundary and the reference parser accepts the file.
pub fn assert_aligned(path: &std::path::Path) {
    let f = TensorFile::open(path).unwrap();
    for (n, t) in &f.tensors {
        assert_eq!(t.start % dfrt::checkpoint::ALIGN, 0, "{n} starts at {}", t.start);
    }
    let raw = std::fs::read(path).unwrap();
    safetensors::SafeTensors::deserialize(&raw).expect("the safetensors reference parser accepts the file");
}

/// The golden manifest's model config as our ModelConfig.
pub fn manifest_config(case: &std::path::Path) -> dfrt::ModelConfig {
    let name = case.file_name().and_then(|n| n.to_str()).expect("a case folder");
    serde_json::from_value(dfrt_testkit::golden::model_config(name)).expect("model_config parses as ModelConfig")
}
