//! The other pipelines through `dfrt generate` on the CPU: prompt switches, TeaCache's
//! metadata, and the errors of impossible combinations.

mod common;

use common::{checkpoint, dfrt, golden, rel_l2, tmp};
use dfrt::checkpoint::TensorFile;

/// Runs `dfrt generate` on golden case `case`'s weights and inputs with `args`; returns the
/// output file (or the exit code and stderr on failure).
fn generate(case: &str, tag: &str, args: &[&str]) -> Result<TensorFile, (i32, String)> {
    let d = tmp(&format!("{case}-{tag}"));
    let ck = d.join("model.safetensors");
    checkpoint(case, &ck, |_| {});
    let out = d.join("out.safetensors");
    let inputs = golden().join(case).join("inputs.safetensors");
    let mut a = vec![
        "generate",
        "--model",
        ck.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    let (code, err) = dfrt(&a);
    if code != 0 {
        return Err((code, err));
    }
    Ok(TensorFile::open(&out).unwrap())
}

#[test]
fn prompt_switches_from_the_cli_match_df_switch() {
    // context.1 and context.2 of the inputs at frames 12 and 21 (the case's switch frames).
    let o =
        generate("df-switch", "cli", &["--policy", "dummy:3,chunks:2,ar-start:2", "--prompts-at", "12,21"]).unwrap();
    let want = TensorFile::open(golden().join("df-switch/outputs.safetensors")).unwrap();
    let e = rel_l2("df-switch", &o.f32_any("latents").unwrap(), &want.f32_any("latents").unwrap());
    println!("df-switch through the CLI: latents rel L2 {e:.3e}");
    assert!(e <= 1e-4, "rel L2 {e:.3e}");
    assert_eq!(o.metadata["dfrt.recaches"], "2");
    assert_eq!(o.i64_any("assignment").unwrap(), want.i64_any("assignment").unwrap());
}

#[test]
fn longlive_prompt_switches_from_the_cli_match_longlive_switch() {
    // LongLive's window (9 frames, sink 3) with global sink, switches at the case's frames.
    let args = ["--policy", "window:9,sink:3", "--global-sink", "--prompts-at", "6,15,21"];
    let o = generate("longlive-switch", "cli", &args).unwrap();
    let want = TensorFile::open(golden().join("longlive-switch/outputs.safetensors")).unwrap();
    let e = rel_l2("longlive-switch", &o.f32_any("latents").unwrap(), &want.f32_any("latents").unwrap());
    println!("longlive-switch through the CLI: latents rel L2 {e:.3e}");
    assert!(e <= 1e-4, "rel L2 {e:.3e}");
    assert_eq!(o.metadata["dfrt.recaches"], "3");
    // Without the global sink the sink is rebuilt from the second switch's window (frames
    // 6–8), which the case's planted-bug table puts at 6.1e-2 relative L2 of the latents.
    let args = ["--policy", "window:9,sink:3", "--prompts-at", "6,15,21"];
    let o = generate("longlive-switch", "rebuilt", &args).unwrap();
    let e = rel_l2("longlive-switch, sink rebuilt", &o.f32_any("latents").unwrap(), &want.f32_any("latents").unwrap());
    println!("longlive-switch without the global sink: latents rel L2 {e:.3e}");
    assert!(e > 1e-2, "rebuilding the sink must change the video (rel L2 {e:.3e})");
}

#[test]
fn teacache_lists_its_skipped_forwards_in_the_metadata() {
    let o = generate("df-teacache", "cli", &["--policy", "dummy:3", "--teacache", "0.2", "--frames", "6"]).unwrap();
    let m: serde_json::Value = serde_json::from_str(&o.metadata["dfrt.teacache"]).unwrap();
    assert_eq!(m["skipped"], serde_json::json!([[0, 1], [0, 3], [1, 1], [1, 3]]));
    assert_eq!(
        (m["skipped_forwards"].as_u64(), m["denoising_forwards"].as_u64(), m["threshold"].as_f64()),
        (Some(4), Some(8), Some(0.2))
    );
    let want = TensorFile::open(golden().join("df-teacache/outputs.safetensors")).unwrap().f32_any("latents").unwrap();
    let got = o.f32_any("latents").unwrap();
    assert!(rel_l2("df-teacache prefix", &got, &want[..got.len()]) <= 1e-4);
}

#[test]
fn impossible_combinations_are_clear_errors() {
    for (case, args, says) in [
        ("rolling-tiny", &["--pipeline", "rolling", "--teacache", "0.2"][..], "does not compose"),
        ("rolling-tiny", &["--pipeline", "rolling", "--policy", "window:9,sink:3"][..], "policy `full`"),
        ("causvid-tiny", &["--pipeline", "causvid", "--teacache", "0"][..], "positive"),
        ("causvid-tiny", &["--pipeline", "lcm"][..], "unknown pipeline"),
        ("df-switch", &["--policy", "full", "--prompts-at", "12"][..], "window (LongLive) and dummy policies"),
        ("df-switch", &["--policy", "dummy:3,chunks:2,ar-start:2", "--global-sink"][..], "window policy"),
        ("longlive-switch", &["--policy", "window:9,sink:3", "--recache-frames", "6"][..], "policy's window"),
        // Chunk 1 is before the calibration chunk (AR step 2): the groups do not exist yet.
        ("df-switch", &["--policy", "dummy:3,chunks:2,ar-start:2", "--prompts-at", "3"][..], "calibrated at AR step 2"),
        ("df-switch", &["--policy", "dummy:3,chunks:2,ar-start:2", "--prompts-at", "12,21,24"][..], "no more context"),
    ] {
        let (code, err) = generate(case, "err", args).err().unwrap_or_else(|| panic!("{args:?} succeeded"));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
