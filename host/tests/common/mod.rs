//! Helpers shared by the host's integration tests: the golden folder, scratch directories,
//! golden weights as a runtime checkpoint, the `dfrt` binary, and the relative L2 error.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use dfrt::checkpoint::{write_checkpoint, OutTensor, TensorFile};
use dfrt::ModelConfig;

pub use dfrt_testkit::golden::dir as golden;
pub use dfrt_testkit::tol::rel_l2;

/// A scratch directory unique to this test process; removed when dropped.
pub fn tmp(name: &str) -> dfrt_testkit::Scratch {
    dfrt_testkit::Scratch::new(&format!("host-{name}"))
}

/// A golden case's `model_config`.
pub fn case_config(case: &str) -> ModelConfig {
    serde_json::from_value(dfrt_testkit::golden::model_config(case)).unwrap()
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
