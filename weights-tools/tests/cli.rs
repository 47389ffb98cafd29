//! The `dfrt-weights` binary: convert, synth and inspect, and its errors.

mod common;

use std::process::Command;

use common::*;
use dfrt::checkpoint::TensorFile;
use dfrt::ModelConfig;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt-weights")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_convert_synth_inspect() {
    let dir = scratch("cli");
    let out = dir.join("tiny-full.safetensors");
    let src = golden_dir().join("tiny-full/weights.safetensors");
    let (ok, _, err) =
        run(&["convert", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--text-len", "16", "--dtype", "bf16"]);
    assert!(ok, "{err}");
    assert!(err.contains("wrote") && err.contains("BF16") && err.contains("\"text_len\":16"), "{err}");
    assert_eq!(TensorFile::open(&out).unwrap().config().unwrap(), manifest_config(&golden_dir().join("tiny-full")));

    let (ok, text, err) = run(&["inspect", out.to_str().unwrap(), "--stats"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("config (metadata)") && text.contains("blocks.1.ffn.2.weight") && text.contains("BF16"),
        "{text}"
    );

    let (ok, json, err) = run(&["inspect", out.to_str().unwrap(), "--json", "--stats"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["config"]["dim"], 256);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 69);
    assert!(v["tensors"][0]["stats"]["std"].as_f64().unwrap() > 0.0);

    // Raw files (no config) show the config inferred from shapes; torch files are read too.
    let (ok, text, _) = run(&["inspect", src.to_str().unwrap()]);
    assert!(ok && text.contains("inferred from shapes"), "{text}");
    let pt = fixtures().join("sf_tiny.pt");
    let (ok, json, err) = run(&["inspect", pt.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "torch zip");
    assert_eq!(v["config"]["dim"], 12);

    let (ok, _, err) = run(&[
        "convert",
        pt.to_str().unwrap(),
        "-o",
        dir.join("pt.safetensors").to_str().unwrap(),
        "--heads",
        "2",
        "--no-ema",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("took the `generator` state dict") && err.contains("dropped: generator_ema."), "{err}");

    let s = dir.join("synth.safetensors");
    let (ok, _, err) = run(&[
        "synth",
        "--preset",
        "small",
        "--layers",
        "1",
        "--seed",
        "3",
        "--dtype",
        "bf16",
        "-o",
        s.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let f = TensorFile::open(&s).unwrap();
    assert_eq!(f.config().unwrap(), ModelConfig { num_layers: 1, ..ModelConfig::preset("small").unwrap() });
    assert_aligned(&s);
}

#[test]
fn cli_errors_are_readable() {
    let dir = scratch("cli-err");
    let bad = dir.join("bad.pt");
    std::fs::write(&bad, b"PK\x03\x04 truncated").unwrap();
    let (ok, _, err) = run(&["convert", bad.to_str().unwrap(), "-o", dir.join("o").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.starts_with("dfrt-weights: error:") && err.contains("bad.pt") && err.contains("zip"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (ok, _, err) = run(&["synth", "--preset", "huge", "-o", dir.join("o").to_str().unwrap()]);
    assert!(!ok && err.contains("unknown preset `huge`"), "{err}");
    let (ok, _, err) = run(&["synth", "--preset", "tiny", "--dtype", "f64", "-o", dir.join("o").to_str().unwrap()]);
    assert!(!ok && err.contains("unknown dtype `f64`"), "{err}");
    let (ok, _, err) = run(&["inspect", dir.join("nope.safetensors").to_str().unwrap()]);
    assert!(!ok && err.contains("nope.safetensors"), "{err}");
    let (ok, _, err) = run(&["convert", bad.to_str().unwrap(), "-o", "x", "--ema", "--no-ema"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
