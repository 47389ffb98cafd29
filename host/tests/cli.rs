//! Runs the built `dfrt` binary: the golden cases through `generate --inputs`, the seeded path,
//! and every bad input the issue lists, each with a readable error.

use std::path::{Path, PathBuf};
use std::process::Command;

use dfrt::checkpoint::{write_checkpoint, write_safetensors, OutTensor, TensorFile};
use dfrt::ModelConfig;

fn golden() -> PathBuf {
    match std::env::var_os("DFRT_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dfrt-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn case_config(case: &str) -> ModelConfig {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden().join(case).join("manifest.json")).unwrap()).unwrap();
    serde_json::from_value(m["model_config"].clone()).unwrap()
}

/// The golden weights as a runtime checkpoint, with `edit` applied to the tensor list.
fn checkpoint(case: &str, out: &Path, edit: impl FnOnce(&mut Vec<OutTensor>)) {
    let f = TensorFile::open(golden().join(case).join("weights.safetensors")).unwrap();
    let mut ts: Vec<OutTensor> = f.tensors.iter().map(|(n, i)| OutTensor::f32(n.clone(), i.shape.clone(), &f.f32_any(n).unwrap())).collect();
    edit(&mut ts);
    write_checkpoint(out, &case_config(case), &ts).unwrap();
}

fn dfrt(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "non-finite output");
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d).sqrt()
}

#[test]
fn golden_cases_through_the_cli() {
    for (case, policy) in [("tiny-full", "full"), ("tiny-window", "window:6,sink:1")] {
        let d = tmp(case);
        let ck = d.join("model.safetensors");
        checkpoint(case, &ck, |_| {});
        let out = d.join("out.safetensors");
        let inputs = golden().join(case).join("inputs.safetensors");
        let (code, err) = dfrt(&["generate", "--model", ck.to_str().unwrap(), "--inputs", inputs.to_str().unwrap(), "--policy", policy, "--out", out.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("tokens/s") && err.contains("peak memory"), "summary line: {err}");
        let o = TensorFile::open(&out).unwrap();
        let want = TensorFile::open(golden().join(case).join("outputs.safetensors")).unwrap();
        let shape = want.info("latents").unwrap().shape.clone();
        let got = o.f32("latents", &shape).unwrap();
        let e = rel_l2(&got, &want.f32_any("latents").unwrap());
        println!("{case} via CLI: latents rel L2 {e:.3e}");
        assert!(e <= 1e-4, "{case}: rel L2 {e}");
        assert_eq!(o.metadata["dfrt.policy"], policy);
        assert!(o.metadata["dfrt.timings"].contains("tokens_per_s"));
        assert_eq!(o.config().unwrap(), case_config(case));
        std::fs::remove_dir_all(&d).ok();
    }
}

#[test]
fn seeded_generation_is_deterministic() {
    let d = tmp("seeded");
    let ck = d.join("model.safetensors");
    checkpoint("tiny-full", &ck, |_| {});
    let inp = TensorFile::open(golden().join("tiny-full/inputs.safetensors")).unwrap();
    let ctx = d.join("ctx.safetensors");
    // [L, text_dim] form: 11 rows (shorter than text_len, zero padded by the model).
    let c = inp.f32_any("context").unwrap();
    write_safetensors(&ctx, &[OutTensor::f32("context", vec![11, 64], &c[..11 * 64])], &Default::default()).unwrap();
    let run = |seed: &str, out: &str| {
        let out = d.join(out);
        let (code, err) = dfrt(&["generate", "--model", ck.to_str().unwrap(), "--context", ctx.to_str().unwrap(), "--frames", "6", "--seed", seed, "--height", "8", "--width", "12", "--policy", "window:6,sink:1", "--dtype", "bf16", "--quiet", "--out", out.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(err.is_empty(), "--quiet prints nothing: {err}");
        TensorFile::open(&out).unwrap().f32("latents", &[1, 6, 16, 8, 12]).unwrap()
    };
    let a = run("3", "a.safetensors");
    let b = run("3", "b.safetensors");
    let c = run("4", "c.safetensors");
    assert_eq!(a, b);
    assert!(rel_l2(&a, &c) > 0.1);
    let std = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
    assert!(std > 0.1 && std < 10.0, "latent std {std}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_inputs_give_readable_errors() {
    let d = tmp("errors");
    let good = d.join("good.safetensors");
    checkpoint("tiny-full", &good, |_| {});
    let inputs = golden().join("tiny-full/inputs.safetensors");
    let out = d.join("o.safetensors");
    let gen = |model: &Path, extra: &[&str]| {
        let mut a = vec!["generate", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
        if !extra.iter().any(|x| *x == "--context") {
            a.extend(["--inputs", inputs.to_str().unwrap()]);
        }
        a.extend(extra);
        dfrt(&a)
    };
    let expect = |what: &str, (code, err): (i32, String), needle: &str| {
        println!("{what}: {}", err.trim());
        assert_eq!(code, 1, "{what}: exit code {code}, stderr {err}");
        assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    };

    let raw = std::fs::read(&good).unwrap();
    let truncated = d.join("truncated.safetensors");
    std::fs::write(&truncated, &raw[..raw.len() / 3]).unwrap();
    expect("truncated", gen(&truncated, &[]), "not a valid safetensors");

    let magic = d.join("magic.safetensors");
    let mut m = raw.clone();
    m[..8].copy_from_slice(b"PK\x03\x04zzzz");
    std::fs::write(&magic, &m).unwrap();
    expect("wrong magic", gen(&magic, &[]), "not a valid safetensors");

    let short = d.join("short.safetensors");
    std::fs::write(&short, b"abc").unwrap();
    expect("too short", gen(&short, &[]), "too short");

    let missing = d.join("missing.safetensors");
    checkpoint("tiny-full", &missing, |ts| ts.retain(|t| t.name != "blocks.1.ffn.2.weight"));
    expect("missing tensor", gen(&missing, &[]), "`blocks.1.ffn.2.weight`: missing");

    let shape = d.join("shape.safetensors");
    checkpoint("tiny-full", &shape, |ts| {
        for t in ts.iter_mut().filter(|t| t.name == "blocks.0.self_attn.q.weight") {
            t.shape = vec![128, 512];
        }
    });
    expect("wrong shape", gen(&shape, &[]), "has shape [128, 512], expected [256, 256]");

    let noconf = d.join("noconf.safetensors");
    std::fs::copy(golden().join("tiny-full/weights.safetensors"), &noconf).unwrap();
    expect("no config", gen(&noconf, &[]), "not a dfrt runtime checkpoint");

    let ctx = d.join("ctx.safetensors");
    write_safetensors(&ctx, &[OutTensor::f32("context", vec![1, 4, 32], &vec![0.5; 128])], &Default::default()).unwrap();
    expect("context width", gen(&good, &["--context", ctx.to_str().unwrap()]), "has width 32, but the model's text_dim is 64");

    expect("frames", gen(&good, &["--frames", "4"]), "not a positive multiple of the chunk");
    expect("too many frames", gen(&good, &["--frames", "12"]), "inputs hold noise for 9");
    expect("policy", gen(&good, &["--policy", "sliding"]), "unknown policy `sliding`");
    expect("window", gen(&good, &["--policy", "window:3,sink:1"]), "at least sink + 3");
    expect("dtype", gen(&good, &["--dtype", "fp8"]), "unknown dtype");
    expect("device", gen(&good, &["--device", "cuda"]), "not available yet");
    expect("no file", gen(&d.join("nope.safetensors"), &[]), "nope.safetensors");
    std::fs::remove_dir_all(&d).ok();
}
