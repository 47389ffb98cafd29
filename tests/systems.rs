//! The other pipelines against the official code's outputs in `../shared/golden`: Rolling
//! Forcing (`rolling-tiny` and every hidden case of its kind). TeaCache and CausVid run in
//! `tests/golden.rs` beside the cases they extend.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use dfrt::api::SessionOptions;
use dfrt::backend::cpu::{CpuBackend, CpuTensor};
use dfrt::backend::{Backend, Precision};
use dfrt::cache::rolling::CallLayout;
use dfrt::cache::KvCache;
use dfrt::checkpoint::TensorFile;
use dfrt::model::{ForwardHook, PassInfo};
use dfrt::pipeline::inputs::Inputs;
use dfrt::pipeline::{Pipeline, PipelineSpec};
use dfrt::policy::Policy;
use dfrt::run::ModelSource;
use dfrt::ModelConfig;
use support::{case_kind, diff, golden_dir, CaseKind};

/// Per tensor, max |Δ| / max |ref| (the tolerance the README gives for these cases).
const MAX_REL: f64 = 1e-4;

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn check_max_rel(name: &str, got: &[f32], want: &[f32]) -> f64 {
    let d = diff(got, want);
    assert!(
        d.max_rel <= MAX_REL,
        "{name}: max|Δ|/max|ref| {:.3e} > {MAX_REL:.0e}; worst index {}: got {} want {}; rel L2 {:.3e}",
        d.max_rel,
        d.worst,
        got[d.worst],
        want[d.worst],
        d.rel_l2
    );
    d.max_rel
}

/// Records, after every forward, layer 0's call layout and the re-roped anchor it attended.
#[derive(Default)]
struct Recorder {
    calls: Vec<(PassInfo, CallLayout, Option<Vec<f32>>)>,
}
struct Hook(Arc<Mutex<Recorder>>);
impl ForwardHook<CpuBackend> for Hook {
    fn after_forward(&mut self, be: &CpuBackend, pass: &PassInfo, cache: &mut KvCache<CpuTensor>) -> dfrt::Result<()> {
        let r = cache.rolling.as_ref().expect("rolling cache");
        let anchor = r.anchor_roped(0).map(|a| be.download(a));
        self.0.lock().unwrap().calls.push((*pass, r.last_call().unwrap().clone(), anchor));
        Ok(())
    }
}

fn check_rolling(name: &str) {
    let dir = golden_dir().join(name);
    let m = manifest(&dir);
    let cfg: ModelConfig = serde_json::from_value(m["model_config"].clone()).unwrap();
    let spec = PipelineSpec { pipeline: Pipeline::Rolling, teacache: None };
    let sched = spec.schedule();
    let warped: Vec<f32> = m["schedule"]["denoising_step_list_warped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(sched.steps, warped, "{name}: warped steps");
    let model = ModelSource::with_config(dir.join("weights.safetensors"), cfg.clone())
        .unwrap()
        .cpu_model(Precision::F32)
        .unwrap();
    let be = model.be.clone();
    let inputs = Inputs::read(&TensorFile::open(dir.join("inputs.safetensors")).unwrap(), &cfg).unwrap();
    let frames = inputs.frames;
    let noise = inputs.noise_rolling(frames, sched.steps.len()).unwrap();
    let mut opts = SessionOptions::new(Policy::Full, inputs.latent.height, inputs.latent.width, Some(frames));
    opts.pipeline = spec;
    let mut s = model.session(&opts, &inputs.context.data, inputs.context.rows, noise).unwrap();
    let rec = Arc::new(Mutex::new(Recorder::default()));
    s.set_hook(Box::new(Hook(rec.clone()))).unwrap();
    s.record_taps();
    let t0 = std::time::Instant::now();
    let latents = s.run(&mut |_| {}).unwrap();
    println!("{name}: {frames} frames in {:.2?}", t0.elapsed());

    let out = TensorFile::open(dir.join("outputs.safetensors")).unwrap();
    let got = s.take_taps().unwrap();
    let mut worst = 0f64;
    let mut compared = 0;
    for key in
        out.tensors.keys().filter(|k| k.starts_with("xt.") || k.starts_with("x0.") || k.starts_with("cachepass_flow."))
    {
        let g = got.get(key).unwrap_or_else(|| panic!("{name}: {key} not recorded"));
        worst = worst.max(check_max_rel(&format!("{name}/{key}"), g, &out.f32_any(key).unwrap()));
        compared += 1;
    }
    worst = worst.max(check_max_rel(&format!("{name}/latents"), &latents, &out.f32_any("latents").unwrap()));

    // The bookkeeping, call by call: write slot, anchor RoPE start, attended blocks (exact).
    let tpb = m["kv_cache"]["block_length_tokens"].as_u64().unwrap() as usize;
    let calls = &rec.lock().unwrap().calls;
    let windows = m["windows"].as_array().unwrap();
    assert_eq!(calls.len(), 2 * windows.len(), "{name}: one forward and one cache pass per window");
    for (w, win) in windows.iter().enumerate() {
        let (dp, dl, anchor) = &calls[2 * w];
        let (cp, cl, _) = &calls[2 * w + 1];
        assert!(!dp.commits() && cp.commits() && dp.chunk == w);
        let fr: Vec<usize> = win["frames"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!((dp.start_frame, dp.start_frame + dp.frames), (fr[0], fr[1]), "{name}: window {w} frames");
        let da = &win["denoise_layer0_self_attention"];
        assert_eq!(
            dl.anchor_rope_start,
            da["anchor_rope_start_frame"].as_u64().map(|x| x as usize),
            "{name}: window {w} anchor RoPE start"
        );
        let blocks = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array().map(|a| a.iter().map(|x| x.as_u64().unwrap() as usize).collect()).unwrap_or_default()
        };
        assert_eq!(dl.working_blocks, blocks(&da["working_cache_blocks"]), "{name}: window {w} working cache");
        let ws = blocks(&win["layer0_cache_after_denoise"]["write_slot_tokens"]);
        assert_eq!(dl.written_slot, ws[0] / tpb, "{name}: window {w} write slot");
        assert_eq!(dl.evicted, !win["layer0_cache_after_denoise"]["eviction"].is_null(), "{name}: window {w} eviction");
        let ca = &win["cache_pass"];
        assert_eq!(cl.written_slot, blocks(&ca["writes_slot_tokens"])[0] / tpb, "{name}: window {w} cache-pass slot");
        assert_eq!(
            ca["key_tokens"].as_u64().unwrap() as usize,
            tpb * (cl.working_blocks.len().max(1) + cl.anchor_rope_start.map_or(0, |_| 1)),
            "{name}: window {w} cache-pass keys"
        );
        let mut want = blocks(&ca["working_cache_blocks"]);
        want.retain(|&x| x != 0);
        assert_eq!(cl.working_blocks, want, "{name}: window {w} cache-pass blocks");
        assert_eq!(
            cl.anchor_rope_start.is_some(),
            ca["anchor_included"].as_bool().unwrap_or(false),
            "{name}: window {w} cache-pass anchor"
        );
        if let Ok(want) = out.f32_any(&format!("l0.anchor_k.{w}")) {
            worst = worst.max(check_max_rel(
                &format!("{name}/l0.anchor_k.{w}"),
                anchor.as_ref().expect("anchor attended"),
                &want,
            ));
            compared += 1;
        }
    }
    // The final buffer: slot → block map, then every slot's K/V (the anchor un-roped).
    let r = s.cache().rolling.as_ref().unwrap();
    let want_blocks: Vec<usize> =
        m["kv_cache"]["final_slot_blocks"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(r.slot_blocks(0), want_blocks, "{name}: final slots");
    for (kind, i) in [("k", 0), ("v", 1)] {
        let mut g = Vec::new();
        for slot in 0..want_blocks.len() {
            let (k, v) = r.slot(0, slot).unwrap();
            g.extend(be.download([k, v][i]));
        }
        worst = worst.max(check_max_rel(
            &format!("{name}/cache_{kind}.final"),
            &g,
            &out.f32_any(&format!("cache_{kind}.final")).unwrap(),
        ));
        compared += 1;
    }
    println!(
        "{name}: {compared} tensors + latents within max rel {worst:.2e}; {} windows' bookkeeping exact",
        windows.len()
    );
    assert!(compared >= 2 * windows.len());
}

#[test]
fn rolling_tiny() {
    check_rolling("rolling-tiny");
}

/// Hidden Rolling Forcing cases run the same checks.
#[test]
fn every_rolling_case() {
    for e in std::fs::read_dir(golden_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != "rolling-tiny"
            && e.path().join("manifest.json").exists()
            && case_kind(&manifest(&e.path())) == CaseKind::Rolling
        {
            check_rolling(&name);
        }
    }
}
