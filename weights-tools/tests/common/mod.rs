#![allow(dead_code)]
//! Helpers shared by the weights-tools tests.

use std::path::PathBuf;

use dfrt::checkpoint::TensorFile;

/// The golden folder: `$DFRT_GOLDEN_DIR`, else `shared/golden` beside the workspace.
pub fn golden_dir() -> PathBuf {
    let dir = match std::env::var_os("DFRT_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    };
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
    let d = std::env::temp_dir().join(format!("dfrt-weights-test-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// See [`scratch`]; derefs to its path.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Asserts two f32 slices are bit-identical, printing the first difference.
pub fn assert_same(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        panic!("{name}: first difference at {i}: got {} want {} (max abs diff {max})", got[i], want[i]);
    }
}

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
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("manifest.json")).unwrap()).unwrap();
    let c = &m["model_config"];
    let u = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("manifest model_config.{k}")) as usize;
    let ps: Vec<usize> = c["patch_size"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    dfrt::ModelConfig {
        dim: u("dim"),
        ffn_dim: u("ffn_dim"),
        freq_dim: u("freq_dim"),
        text_dim: u("text_dim"),
        text_len: u("text_len"),
        in_dim: u("in_dim"),
        out_dim: u("out_dim"),
        num_heads: u("num_heads"),
        num_layers: u("num_layers"),
        patch_size: [ps[0], ps[1], ps[2]],
        eps: c["eps"].as_f64().unwrap() as f32,
        qk_norm: c["qk_norm"].as_bool().unwrap(),
        cross_attn_norm: c["cross_attn_norm"].as_bool().unwrap(),
    }
}
