//! Runs the built `dfrt` binary: the golden cases through `generate --inputs`, the seeded path,
//! and every bad input the issue lists, each with a readable error.

use std::path::Path;
use std::process::Command;

use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile};
use dfrt::ModelConfig;

mod common;
use common::{case_config, checkpoint, dfrt, golden, rel_l2, tmp};

#[test]
fn golden_cases_through_the_cli() {
    for (case, policy) in [("tiny-full", "full"), ("tiny-window", "window:6,sink:1")] {
        let d = tmp(case);
        let ck = d.join("model.safetensors");
        checkpoint(case, &ck, |_| {});
        let out = d.join("out.safetensors");
        let inputs = golden().join(case).join("inputs.safetensors");
        let (code, err) = dfrt(&[
            "generate",
            "--model",
            ck.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--policy",
            policy,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("tokens/s") && err.contains("peak memory"), "summary line: {err}");
        let o = TensorFile::open(&out).unwrap();
        let want = TensorFile::open(golden().join(case).join("outputs.safetensors")).unwrap();
        let shape = want.info("latents").unwrap().shape.clone();
        let got = o.f32("latents", &shape).unwrap();
        let e = rel_l2(case, &got, &want.f32_any("latents").unwrap());
        println!("{case} via CLI: latents rel L2 {e:.3e}");
        assert!(e <= 1e-4, "{case}: rel L2 {e}");
        assert_eq!(o.metadata["dfrt.policy"], policy);
        assert!(o.metadata["dfrt.timings"].contains("tokens_per_s"));
        assert_eq!(o.metadata["dfrt.graphs"], "n/a", "the CPU backend has no graphs");
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
        let (code, err) = dfrt(&[
            "generate",
            "--model",
            ck.to_str().unwrap(),
            "--context",
            ctx.to_str().unwrap(),
            "--frames",
            "6",
            "--seed",
            seed,
            "--height",
            "8",
            "--width",
            "12",
            "--policy",
            "window:6,sink:1",
            "--dtype",
            "bf16",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(err.is_empty(), "--quiet prints nothing: {err}");
        TensorFile::open(&out).unwrap().f32("latents", &[1, 6, 16, 8, 12]).unwrap()
    };
    let a = run("3", "a.safetensors");
    let b = run("3", "b.safetensors");
    let c = run("4", "c.safetensors");
    assert_eq!(a, b);
    assert!(rel_l2("seed 0 vs seed 1", &a, &c) > 0.1);
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
        if !extra.contains(&"--context") {
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
    write_safetensors(&ctx, &[OutTensor::f32("context", vec![1, 4, 32], &vec![0.5; 128])], &Default::default())
        .unwrap();
    expect(
        "context width",
        gen(&good, &["--context", ctx.to_str().unwrap()]),
        "has width 32, but the model's text_dim is 64",
    );

    expect("frames", gen(&good, &["--frames", "4"]), "not a positive multiple of the chunk");
    expect("too many frames", gen(&good, &["--frames", "12"]), "inputs hold noise for 9");
    expect("policy", gen(&good, &["--policy", "sliding"]), "unknown policy `sliding`");
    expect("window", gen(&good, &["--policy", "window:3,sink:1"]), "at least sink + 3");
    // Device and dtype are parsed with the arguments: a usage error (exit code 2) that names
    // the flag and the accepted values.
    let usage = |what: &str, (code, err): (i32, String), needle: &str| {
        println!("{what}: {}", err.trim());
        assert_eq!(code, 2, "{what}: exit code {code}, stderr {err}");
        assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
    };
    usage("dtype", gen(&good, &["--dtype", "fp8"]), "unknown dtype `fp8`");
    usage("device", gen(&good, &["--device", "tpu"]), "unknown device `tpu` (known: cpu, sim, cuda");
    expect("no file", gen(&d.join("nope.safetensors"), &[]), "nope.safetensors");
    std::fs::remove_dir_all(&d).ok();
}

fn dfrt_out(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// df-tiny through `generate --policy dummy:3`: latents and assignment as the official run, the
/// KV accounting in the metadata agrees with the allocated bytes; the saved head program
/// reused with `--heads` gives bit-identical latents, and an edited program is obeyed
/// (calibration is skipped).
#[test]
fn dummy_golden_and_head_program_round_trip() {
    let d = tmp("dummy");
    let ck = d.join("model.safetensors");
    checkpoint("df-tiny", &ck, |_| {});
    let inputs = golden().join("df-tiny/inputs.safetensors");
    let (ck_s, in_s) = (ck.to_str().unwrap(), inputs.to_str().unwrap());
    let heads = d.join("heads.json");
    let out1 = d.join("a.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        ck_s,
        "--inputs",
        in_s,
        "--policy",
        "dummy:3",
        "--save-heads",
        heads.to_str().unwrap(),
        "--out",
        out1.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    println!("{err}");
    assert!(err.contains("kv cache: sink 3 heads × 1 frame") && err.contains("% of full"), "summary: {err}");
    let want = TensorFile::open(golden().join("df-tiny/outputs.safetensors")).unwrap();
    let o1 = TensorFile::open(&out1).unwrap();
    let lat1 = o1.f32("latents", &[1, 15, 16, 16, 16]).unwrap();
    let e = rel_l2("df-tiny", &lat1, &want.f32_any("latents").unwrap());
    println!("df-tiny via CLI: latents rel L2 {e:.3e}");
    assert!(e <= 1e-4, "rel L2 {e}");
    assert_eq!(o1.info("assignment").unwrap().shape, vec![4, 2]);
    assert_eq!(o1.i64_any("assignment").unwrap(), want.i64_any("assignment").unwrap());
    let m = &o1.metadata;
    assert_eq!(m["dfrt.policy"], "dummy:3,chunks:1,ar-start:1,packing:on");
    assert_eq!(m["dfrt.heads"], "calibrated");
    // 64 tokens × 128 × 4 B × (K, V) per head-frame: sink 3, neighbor 2 × 3, dummy 3 head-frames.
    let hf = 64 * 128 * 4 * 2;
    assert_eq!(m["dfrt.kv_bytes.sink"], (3 * hf).to_string());
    assert_eq!(m["dfrt.kv_bytes.neighbor"], (6 * hf).to_string());
    assert_eq!(m["dfrt.kv_bytes.dummy"], (3 * hf).to_string());
    assert_eq!(m["dfrt.kv_bytes.total"], m["dfrt.kv_bytes.allocated"]);
    assert_eq!(m["dfrt.kv_bytes.full"], (8 * 15 * hf).to_string());
    assert_eq!(m["dfrt.kv_ratio_vs_full"], format!("{:.6}", 12.0 / 120.0));

    // Reuse: bit-identical.
    let out2 = d.join("b.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        ck_s,
        "--inputs",
        in_s,
        "--policy",
        "dummy:3",
        "--heads",
        heads.to_str().unwrap(),
        "--quiet",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let o2 = TensorFile::open(&out2).unwrap();
    assert_eq!(
        o2.f32("latents", &[1, 15, 16, 16, 16]).unwrap(),
        lat1,
        "--heads reproduces the calibrated run bit for bit"
    );
    assert_eq!(o2.i64_any("assignment").unwrap(), o1.i64_any("assignment").unwrap());
    assert!(o2.metadata["dfrt.heads"].starts_with("given:"));

    // An edited program (dummy heads moved to head 0 of layers 0, 1, 3) is used as given.
    let mut p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&heads).unwrap()).unwrap();
    for l in [0, 1, 3] {
        p["layers"][l][0]["group"] = "dummy".into();
        p["layers"][l][1]["group"] = "sink".into();
    }
    let edited = d.join("edited.json");
    std::fs::write(&edited, p.to_string()).unwrap();
    let out3 = d.join("c.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        ck_s,
        "--inputs",
        in_s,
        "--frames",
        "9",
        "--policy",
        "dummy:3",
        "--heads",
        edited.to_str().unwrap(),
        "--quiet",
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let o3 = TensorFile::open(&out3).unwrap();
    assert_eq!(o3.i64_any("assignment").unwrap(), vec![2, 0, 2, 0, 1, 1, 2, 0]);
    let lat3 = o3.f32("latents", &[1, 9, 16, 16, 16]).unwrap();
    let n6 = 6 * 16 * 16 * 16;
    assert_eq!(lat3[..n6], lat1[..n6], "chunks 0–1 precede the regrouping");
    assert!(rel_l2("edited program, chunk 2", &lat3[n6..], &lat1[n6..9 * 4096]) > 1e-3, "other groups change chunk 2");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn dummy_policy_errors_are_readable() {
    let d = tmp("dummy-errors");
    let ck = d.join("model.safetensors");
    checkpoint("df-tiny", &ck, |_| {});
    let inputs = golden().join("df-tiny/inputs.safetensors");
    let out = d.join("o.safetensors");
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            ck.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        a.extend(extra);
        dfrt(&a)
    };
    let expect = |what: &str, (code, err): (i32, String), needle: &str| {
        println!("{what}: {}", err.trim());
        assert_eq!(code, 1, "{what}: exit code {code}, stderr {err}");
        assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    };
    expect(
        "N too large",
        gen(&["--policy", "dummy:9"]),
        "asks for 9 dummy heads, but the model has only 8 heads (4 layers × 2 heads)",
    );
    expect("ar-start 0", gen(&["--policy", "dummy:3,ar-start:0"]), "ar-start must be at least 1");
    expect("chunks 0", gen(&["--policy", "dummy:3,chunks:0"]), "chunks must be at least 1");
    expect("bad option", gen(&["--policy", "dummy:3,window:2"]), "unknown option `window`");
    expect("heads without dummy", gen(&["--policy", "full", "--heads", "x.json"]), "need a dummy policy");
    expect(
        "save-heads too short",
        gen(&["--policy", "dummy:3,ar-start:2", "--frames", "6", "--save-heads", "x.json"]),
        "end before the calibration step",
    );

    // A program for another model (the 2-layer `tiny` config).
    let other = ModelConfig::preset("tiny").unwrap();
    let scores: Vec<dfrt::dummy::LayerScores> =
        (0..2).map(|l| [vec![0.2, 0.3 + 0.1 * l as f32], vec![0.5, 0.1], vec![0.3, 0.6 - 0.1 * l as f32]]).collect();
    let spec = dfrt::dummy::DummySpec::new(1);
    let p = dfrt::dummy::HeadProgram::from_calibration(&other, spec, &scores).unwrap();
    let wrong = d.join("wrong.json");
    p.save(&wrong).unwrap();
    expect("program for another model", gen(&["--policy", "dummy:1", "--heads", wrong.to_str().unwrap()]), "head program is for a different model (2 layers × 2 heads, dim 256) than the one loaded (4 layers × 2 heads, dim 256)");
    // The right model, another budget.
    let cfg = case_config("df-tiny");
    let scores4: Vec<dfrt::dummy::LayerScores> =
        (0..4).map(|l| [vec![0.2, 0.1 * l as f32], vec![0.5, 0.1], vec![0.3, 0.9 - 0.1 * l as f32]]).collect();
    let p = dfrt::dummy::HeadProgram::from_calibration(&cfg, dfrt::dummy::DummySpec::new(2), &scores4).unwrap();
    let two = d.join("two.json");
    p.save(&two).unwrap();
    expect(
        "budget mismatch",
        gen(&["--policy", "dummy:3", "--heads", two.to_str().unwrap()]),
        "the head program has 2 dummy heads, but the policy asks for 3",
    );
    std::fs::write(&two, "{ not json").unwrap();
    expect(
        "broken program",
        gen(&["--policy", "dummy:3", "--heads", two.to_str().unwrap()]),
        "head program is not valid JSON",
    );
    std::fs::remove_dir_all(&d).ok();
}

/// `dfrt calibrate` over two prompts: the stability report and a majority program that
/// `generate --heads` accepts.
#[test]
fn calibrate_reports_stability_and_writes_the_majority() {
    let d = tmp("calibrate");
    let ck = d.join("model.safetensors");
    checkpoint("df-tiny", &ck, |_| {});
    let c = TensorFile::open(golden().join("df-tiny/inputs.safetensors")).unwrap().f32_any("context").unwrap();
    let (c1, c2) = (d.join("c1.safetensors"), d.join("c2.safetensors"));
    write_safetensors(&c1, &[OutTensor::f32("context", vec![16, 64], &c)], &Default::default()).unwrap();
    let rev: Vec<f32> = c.iter().rev().map(|x| -0.5 * x).collect();
    write_safetensors(&c2, &[OutTensor::f32("context", vec![16, 64], &rev)], &Default::default()).unwrap();
    let prog = d.join("majority.json");
    let base = [
        "calibrate",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        c1.to_str().unwrap(),
        "--context",
        c2.to_str().unwrap(),
        "--policy",
        "dummy:3",
        "--height",
        "8",
        "--width",
        "8",
    ];
    let mut args = base.to_vec();
    args.extend(["--seeds", "2", "--json", "--out", prog.to_str().unwrap()]);
    let (code, stdout, err) = dfrt_out(&args);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("{stdout}");
    assert_eq!(j["programs"], 4);
    assert_eq!(j["heads"], 8);
    assert_eq!(j["keep_vs_first"][0], 1.0);
    let u = j["unanimous"].as_f64().unwrap();
    let k = j["mean_keep_vs_majority"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&u) && u <= k + 1e-12, "unanimous {u}, keep vs majority {k}");
    assert_eq!(j["majority_counts"]["dummy"], 3);
    let p = dfrt::dummy::HeadProgram::load_for(&prog, &case_config("df-tiny")).unwrap();
    assert!(p.source.starts_with("majority of 4"));
    // Text report.
    let (code, stdout, err) = dfrt_out(&base);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("unanimous:") && stdout.contains("keeping their group vs the first"), "{stdout}");
    // The program drives a generation.
    let out = d.join("o.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        c1.to_str().unwrap(),
        "--height",
        "8",
        "--width",
        "8",
        "--frames",
        "9",
        "--policy",
        "dummy:3",
        "--heads",
        prog.to_str().unwrap(),
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(TensorFile::open(&out).unwrap().i64_any("assignment").unwrap(), p.assignment().to_i64());
    // Errors.
    let (code, _, err) = dfrt_out(&[
        "calibrate",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        c1.to_str().unwrap(),
        "--policy",
        "window:6,sink:1",
    ]);
    assert!(code == 1 && err.contains("calibrate needs a dummy policy"), "{err}");
    let (code, _, err) = dfrt_out(&[
        "calibrate",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        c1.to_str().unwrap(),
        "--policy",
        "dummy:2",
        "--frames",
        "3",
    ]);
    assert!(code == 1 && err.contains("needs at least 6 frames"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// A long seeded video under `dummy` through the CLI, in bf16: 120 latent frames on a 4×4
/// latent (the 240-frame memory checks are in `long_video.rs`).
#[test]
fn long_dummy_video_through_the_cli() {
    let d = tmp("long");
    let ck = d.join("model.safetensors");
    checkpoint("df-tiny", &ck, |_| {});
    let c = TensorFile::open(golden().join("df-tiny/inputs.safetensors")).unwrap().f32_any("context").unwrap();
    let ctx = d.join("c.safetensors");
    write_safetensors(&ctx, &[OutTensor::f32("context", vec![16, 64], &c)], &Default::default()).unwrap();
    let out = d.join("o.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        ck.to_str().unwrap(),
        "--context",
        ctx.to_str().unwrap(),
        "--height",
        "4",
        "--width",
        "4",
        "--frames",
        "120",
        "--policy",
        "dummy:4,packing:off",
        "--dtype",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    println!("{err}");
    let o = TensorFile::open(&out).unwrap();
    let m = &o.metadata;
    assert_eq!(m["dfrt.kv_bytes.total"], m["dfrt.kv_bytes.allocated"]);
    assert_eq!(m["dfrt.kv_bytes.dummy"], "0", "packing off: dummy heads cache nothing");
    let hf = 4 * 128 * 2 * 2; // tokens × head_dim × bf16 × (K, V)
    assert_eq!(m["dfrt.kv_bytes.full"], (8 * 120 * hf).to_string());
    let total: usize = m["dfrt.kv_bytes.total"].parse().unwrap();
    assert!(total <= 4 * 3 * hf, "at most 4 non-dummy heads × 3 frames: {total}");
    let lat = o.f32("latents", &[1, 120, 16, 4, 4]).unwrap();
    assert!(lat.iter().all(|x| x.is_finite()));
    std::fs::remove_dir_all(&d).ok();
}
