//! Helpers shared by the host's integration tests: the golden folder, scratch directories,
//! golden weights as a runtime checkpoint, the `dfrt` binary, and the relative L2 error.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use dfrt::checkpoint::{write_checkpoint, OutTensor, TensorFile};
use dfrt::ModelConfig;

/// `$DFRT_GOLDEN_DIR`, else `../shared/golden` beside the checkout.
pub fn golden() -> PathBuf {
    match std::env::var_os("DFRT_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

/// A scratch directory unique to this test process.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dfrt-host-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A golden case's `model_config`.
pub fn case_config(case: &str) -> ModelConfig {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().join(case).join("manifest.json")).unwrap()).unwrap();
    serde_json::from_value(m["model_config"].clone()).unwrap()
}

/// The golden weights as a runtime checkpoint (f32, config in the metadata), with `edit`
/// applied to the tensor list.
pub fn checkpoint(case: &str, out: &Path, edit: impl FnOnce(&mut Vec<OutTensor>)) {
    let f = TensorFile::open(golden().join(case).join("weights.safetensors")).unwrap();
    let mut ts: Vec<OutTensor> =
        f.tensors.iter().map(|(n, i)| OutTensor::f32(n.clone(), i.shape.clone(), &f.f32_any(n).unwrap())).collect();
    edit(&mut ts);
    write_checkpoint(out, &case_config(case), &ts).unwrap();
}

/// Runs the CLI under test: `$DFRT_BIN` (a binary carried to a GPU machine), else the one
/// cargo built. Returns the exit code and stderr.
pub fn dfrt(args: &[&str]) -> (i32, String) {
    let bin =
        std::env::var_os("DFRT_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dfrt")));
    let o = Command::new(bin).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Relative L2 error of `got` against `want`; fails on any non-finite value, printing the
/// evidence.
pub fn rel_l2(name: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{name}: non-finite value at {i}: got {} want {}", got[i], want[i]);
    }
    let n: f64 = got.iter().zip(want).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = want.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d.max(1e-300)).sqrt()
}

/// A synthetic `tiny` DiT (seed 9) and a 5-row context for it (seed 4), written into `dir`:
/// the model the CLI tests drive.
pub fn tiny_model_files(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let m = dir.join("tiny.safetensors");
    dfrt_weights::synth_checkpoint(&m, &cfg, 9, dfrt::checkpoint::DType::F32).unwrap();
    let c = dir.join("ctx.safetensors");
    let ctx = dfrt::pipeline::Rng::new(4).normals(5 * cfg.text_dim);
    let t = [OutTensor::f32("context", vec![5, cfg.text_dim], &ctx)];
    dfrt::checkpoint::write_safetensors(&c, &t, &Default::default()).unwrap();
    (m, c)
}
