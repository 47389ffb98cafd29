//! The CPU reference pipeline against the official Self-Forcing outputs in `../shared/golden`.
//!
//! Every case folder with a `manifest.json` (public and hidden alike) is run the same way: the
//! config comes from `model_config`, the policy from `local_attn_size`/`sink_size`, the dtype
//! from `dtype`, the weights from `weights.safetensors`, every random draw from
//! `inputs.safetensors`. Dummy Forcing cases (`dummy_forcing` in the manifest) are tested by the
//! Dummy Forcing tests.

mod support;

use std::path::Path;

use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::Precision;
use dfrt::cache::Policy;
use dfrt::checkpoint::TensorFile;
use dfrt::model::Model;
use dfrt::pipeline::inputs::Inputs;
use dfrt::pipeline::Session;
use dfrt::ModelConfig;
use support::{assert_close, golden_dir};

/// f32 end-to-end bound (issue 3).
const F32_TOL: f64 = 1e-4;
/// bf16 bound against the official bf16 run. Two bf16 implementations that round at the same op
/// boundaries still differ in accumulation order and in where rounding ties fall; these
/// differences are of the size of a bf16 ulp (2⁻⁸ ≈ 0.4 %) per op and partly average out. The
/// official bf16 run itself is 0.9 % relative RMS (1.2 % of max|x|) away from the f32 run, so a
/// bf16 reimplementation must land well inside 2 % of the official bf16 outputs; we hold it to
/// 1.5 % relative L2 and, against the f32 golden run, to 2 % (the README's suggestion).
const BF16_VS_BF16_TOL: f64 = 1.5e-2;
const BF16_VS_F32_TOL: f64 = 2e-2;

struct Case {
    cfg: ModelConfig,
    policy: Policy,
    precision: Precision,
    dir: std::path::PathBuf,
    manifest: serde_json::Value,
}

fn load_case(dir: &Path) -> Case {
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mc = &manifest["model_config"];
    let cfg: ModelConfig = serde_json::from_value(mc.clone()).expect("model_config parses as ModelConfig");
    let local = mc["local_attn_size"].as_i64().unwrap_or(-1);
    let policy = if local < 0 { Policy::Full } else { Policy::Window { window: local as usize, sink: mc["sink_size"].as_u64().unwrap_or(0) as usize } };
    let precision = match manifest["dtype"].as_str() {
        Some("bfloat16") => Precision::Bf16,
        _ => Precision::F32,
    };
    Case { cfg, policy, precision, dir: dir.to_path_buf(), manifest }
}

/// Runs a case chunk by chunk; returns the recorded tensors plus the layer-0 cache after
/// every chunk's clean pass (`cache_k.{c}`, `cache_v.{c}`).
fn run_case(case: &Case) -> (dfrt::model::Taps, Vec<(usize, Vec<usize>, Vec<f32>, Vec<f32>)>) {
    let be = std::sync::Arc::new(CpuBackend::new(case.precision));
    let weights = TensorFile::open(case.dir.join("weights.safetensors")).unwrap();
    let model = std::sync::Arc::new(Model::load(&*be, &weights, &case.cfg).unwrap());
    let inputs = Inputs::read(&TensorFile::open(case.dir.join("inputs.safetensors")).unwrap(), &case.cfg).unwrap();
    let frames = inputs.frames;
    let mut s = Session::new(model.clone(), be.clone(), case.policy.clone(), inputs.latent, Some(frames), &inputs.context.data, inputs.context.rows, inputs.noise(frames).unwrap()).unwrap();
    s.record = Some(Default::default());
    let mut latents = Vec::new();
    let mut caches = Vec::new();
    while !s.done() {
        let c = s.chunk_index();
        latents.extend(s.next_chunk(&mut |_| {}).unwrap());
        let (frames, k, v) = s.cache.dump_group(&*be, 0, 0);
        caches.push((c, frames, k, v));
    }
    let mut rec = s.record.take().unwrap();
    rec.insert("latents".into(), latents);
    (rec, caches)
}

/// Frames held by the official layer-0 cache snapshot of `rows` tokens after chunk `c`: the
/// sink frames, then the newest frames up to the end of chunk `c` (the official cache may
/// still hold frames our ring already dropped; they are never attended again).
fn official_frames(c: usize, n: usize, sink: usize) -> Vec<usize> {
    let end = (c + 1) * 3;
    (0..n).map(|i| if i < sink { i } else { end - (n - i) }).collect()
}

fn check_case(name: &str) {
    let case = load_case(&golden_dir().join(name));
    if case.manifest.get("dummy_forcing").is_some() {
        println!("{name}: Dummy Forcing case, skipped here");
        return;
    }
    let t0 = std::time::Instant::now();
    let (got, caches) = run_case(&case);
    println!("{name}: {} policy, {:?}, ran in {:.2?}", case.policy.name(), case.precision, t0.elapsed());
    let out = TensorFile::open(case.dir.join("outputs.safetensors")).unwrap();
    let tol = if case.precision == Precision::F32 { F32_TOL } else { BF16_VS_BF16_TOL };
    // Everything the golden file has that we record: latents, per-step xt/flow/x0, first-call
    // intermediates, layer-0 caches.
    let mut compared = 0;
    for (key, want) in out.tensors.keys().map(|k| (k.clone(), out.f32_any(k).unwrap())) {
        if let Some(g) = got.get(&key) {
            assert_close(&format!("{name}/{key}"), g, &want, tol);
            compared += 1;
        }
    }
    // Layer-0 caches: every frame we keep must equal the official slot holding that frame.
    let sink = match case.policy { Policy::Window { sink, .. } => sink, _ => 0 };
    let (heads, d) = (case.cfg.num_heads, case.cfg.head_dim());
    for (c, frames, k, v) in &caches {
        for (kind, mine) in [("k", k), ("v", v)] {
            let key = format!("cache_{kind}.{c}");
            let Ok(info) = out.info(&key) else { continue };
            let tpf = k.len() / frames.len() / heads / d;
            let n = info.shape[1] / tpf;
            let want = out.f32_any(&key).unwrap();
            let off = official_frames(*c, n, sink);
            let fl = tpf * heads * d;
            let (mut g, mut w) = (Vec::new(), Vec::new());
            for (i, f) in frames.iter().enumerate() {
                let j = off.iter().position(|x| x == f).unwrap_or_else(|| panic!("{key}: frame {f} not in the official cache {off:?}"));
                g.extend_from_slice(&mine[i * fl..(i + 1) * fl]);
                w.extend_from_slice(&want[j * fl..(j + 1) * fl]);
            }
            assert_close(&format!("{name}/{key} {frames:?}"), &g, &w, tol);
            compared += 1;
        }
    }
    assert!(got.contains_key("latents") && out.tensors.contains_key("latents"));
    assert!(compared >= 20, "only {compared} tensors compared");
    if case.precision == Precision::Bf16 {
        // The bf16 run also stays within 2 % of the f32 golden run of the same model.
        let f32_out = golden_dir().join(name.trim_end_matches("-bf16")).join("outputs.safetensors");
        if f32_out.exists() {
            let want = TensorFile::open(f32_out).unwrap().f32_any("latents").unwrap();
            assert_close(&format!("{name}/latents vs f32"), &got["latents"], &want, BF16_VS_F32_TOL);
        }
    }
}

#[test]
fn tiny_full() {
    check_case("tiny-full");
}

#[test]
fn tiny_window() {
    check_case("tiny-window");
}

#[test]
fn tiny_full_bf16() {
    check_case("tiny-full-bf16");
}

/// Hidden cases of the same kind: every other case folder runs the same checks.
#[test]
fn every_other_case() {
    let known = ["tiny-full", "tiny-window", "tiny-full-bf16", "df-tiny"];
    let Ok(rd) = std::fs::read_dir(golden_dir()) else { panic!("golden dir {:?} missing", golden_dir()) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().join("manifest.json").exists() && !known.contains(&name.as_str()) {
            check_case(&name);
        }
    }
}
