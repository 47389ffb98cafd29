//! Every golden case (public and hidden) end to end as a user runs it: the official
//! `weights.safetensors` through the converter (`dfrt-weights convert`'s library function), then
//! the `dfrt generate --inputs` binary, then the latents against the official ones.
//!
//! Bounds: f32 1e-4 relative L2 (the end-to-end f32 bound). bf16 1.5e-2 relative L2 against the official bf16
//! run: the reasoning is next to `BF16_VS_BF16_TOL` in tests/golden.rs (two bf16 implementations
//! rounding at the same op boundaries differ by accumulation order and rounding ties, a few bf16
//! ulps that partly average out; the official bf16 run itself is 0.9 % from the f32 run).

use std::path::PathBuf;
use std::process::Command;

use dfrt::checkpoint::{DType, TensorFile};
use dfrt::ModelConfig;
use dfrt_weights::{convert_file, ConvertOptions};

mod common;
use common::{golden, rel_l2};

/// The `--policy` and `--dtype` a manifest describes.
fn policy_and_dtype(m: &serde_json::Value) -> (String, &'static str) {
    let mc = &m["model_config"];
    let policy = if let Some(df) = m.get("dummy_forcing") {
        let n = |k: &str| df[k].as_u64().unwrap_or_else(|| panic!("dummy_forcing.{k} missing"));
        format!("dummy:{},chunks:{},ar-start:{}", n("num_dummy"), n("local_context_length"), n("ar_start"))
    } else {
        match mc["local_attn_size"].as_i64().unwrap_or(-1) {
            l if l < 0 => "full".to_string(),
            l => format!("window:{l},sink:{}", mc["sink_size"].as_u64().unwrap_or(0)),
        }
    };
    let dtype = if m["dtype"].as_str() == Some("bfloat16") { "bf16" } else { "f32" };
    (policy, dtype)
}

/// The pipeline flags a manifest describes (CausVid, Rolling Forcing, TeaCache, prompt
/// switches), or None for a case this test cannot run (not a DiT case; LongLive's own window
/// recache, which is not implemented).
fn system_args(m: &serde_json::Value) -> Option<Vec<String>> {
    if m["model_config"].get("patch_size").is_none() || m.get("latent_shape").is_none() {
        return None;
    }
    let mut a = Vec::new();
    if m.get("windows").is_some() {
        a.extend(["--pipeline".into(), "rolling".into()]);
    } else if m["schedule"]["warp_denoising_step"] == serde_json::Value::Bool(false) {
        a.extend(["--pipeline".into(), "causvid".into()]);
    }
    if let Some(df) = m.get("dummy_forcing") {
        if df["teacache_enabled"].as_bool() == Some(true) {
            a.extend(["--teacache".into(), df["teacache_threshold"].as_f64().unwrap().to_string()]);
        }
    }
    if let Some(p) = m.get("prompts") {
        m.get("dummy_forcing")?;
        let f: Vec<String> = p["switch_frame_indices"].as_array().unwrap().iter().map(|x| x.to_string()).collect();
        a.extend(["--prompts-at".into(), f.join(",")]);
    }
    Some(a)
}

#[test]
fn every_golden_case_through_convert_and_generate() {
    let dir = golden();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden dir {dir:?}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").exists())
        // DiT cases only: the VAE and text-encoder cases have their own tests and configs.
        .filter(|p| {
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("manifest.json")).unwrap_or_default())
                    .unwrap_or_default();
            serde_json::from_value::<ModelConfig>(m["model_config"].clone()).is_ok()
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "expected the public golden cases in {dir:?}");
    let tmp = std::env::temp_dir().join(format!("dfrt-convgen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("manifest.json")).unwrap()).unwrap();
        let Some(extra) = system_args(&m) else {
            let why = if m.get("prompts").is_some() && m.get("latent_shape").is_some() {
                "LongLive's window recache is not implemented"
            } else {
                "not a DiT pipeline case"
            };
            println!("{name}: skipped here: {why}");
            continue;
        };
        let want_cfg: ModelConfig = serde_json::from_value(m["model_config"].clone()).unwrap();
        let (policy, dtype) = policy_and_dtype(&m);
        // The text length is not in the weights' shapes; the head count is inferred.
        let ck = tmp.join(format!("{name}.safetensors"));
        let opts = ConvertOptions {
            text_len: Some(want_cfg.text_len),
            // Head width 128 (every Wan2.1 model) is what inference assumes; the small cases
            // of width 64 (df-switch) say their head count.
            heads: (want_cfg.head_dim() != 128).then_some(want_cfg.num_heads),
            dtype: Some(if dtype == "bf16" { DType::BF16 } else { DType::F32 }),
            ..Default::default()
        };
        let rep = convert_file(case.join("weights.safetensors"), &ck, &opts)
            .unwrap_or_else(|e| panic!("{name}: convert: {e}"));
        assert_eq!(rep.config, want_cfg, "{name}: inferred config");
        let out = tmp.join(format!("{name}.out.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_dfrt"))
            .args(["generate", "--quiet", "--model"])
            .arg(&ck)
            .arg("--inputs")
            .arg(case.join("inputs.safetensors"))
            .args(["--policy", &policy, "--dtype", dtype])
            .args(&extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: dfrt generate failed: {err}");
        let want = TensorFile::open(case.join("outputs.safetensors")).unwrap();
        let shape = want.info("latents").unwrap().shape.clone();
        let got = TensorFile::open(&out).unwrap();
        let e = rel_l2(&name, &got.f32("latents", &shape).unwrap(), &want.f32_any("latents").unwrap());
        let tol = if dtype == "bf16" { 1.5e-2 } else { 1e-4 };
        println!(
            "{name}: convert → generate --policy {policy} --dtype {dtype}: latents rel L2 {e:.3e} (bound {tol:.1e})"
        );
        assert!(e <= tol, "{name}: latents rel L2 {e:.3e} > {tol:.1e}");
        if m.get("dummy_forcing").is_some() {
            assert_eq!(got.i64_any("assignment").unwrap(), want.i64_any("assignment").unwrap(), "{name}: assignment");
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}
