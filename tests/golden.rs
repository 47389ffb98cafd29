//! The CPU reference pipeline against the official Self-Forcing outputs in `../shared/golden`.
//!
//! Every case folder with a `manifest.json` (public and hidden alike) is run the same way: the
//! config comes from `model_config`, the policy from `local_attn_size`/`sink_size`, the dtype
//! from `dtype`, the weights from `weights.safetensors`, every random draw from
//! `inputs.safetensors`. Dummy Forcing cases (`dummy_forcing` in the manifest) take their
//! policy from `num_dummy`, `local_context_length` and `ar_start`, their query rows from
//! `sampled_rows.{layer}`, and are checked by [`check_dummy_case`].

mod support;

use std::path::Path;

use dfrt::api::SessionOptions;
use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::{Backend, Precision};
use dfrt::checkpoint::TensorFile;
use dfrt::dummy::Group;
use dfrt::pipeline::inputs::Inputs;
use dfrt::pipeline::{Pipeline, PipelineSpec, Session};
use dfrt::policy::Policy;
use dfrt::run::ModelSource;
use dfrt::ModelConfig;
use support::{assert_atol, assert_close, case_kind, golden_dir, CaseKind};

/// f32 end-to-end bound: relative L2 of the latents against the official f32 run.
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
    /// The pipeline (CausVid cases: `schedule.warp_denoising_step` false) and TeaCache
    /// (`dummy_forcing.teacache_enabled`, threshold from the `teacache` section).
    spec: PipelineSpec,
    precision: Precision,
    dir: std::path::PathBuf,
    manifest: serde_json::Value,
}

impl Case {
    /// An integer of the manifest's `model_config`.
    fn cfg_json(&self, key: &str) -> Option<usize> {
        self.manifest["model_config"][key].as_u64().map(|x| x as usize)
    }
}

fn load_case(dir: &Path) -> Case {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mc = &manifest["model_config"];
    let cfg: ModelConfig = serde_json::from_value(mc.clone()).expect("model_config parses as ModelConfig");
    let local = mc["local_attn_size"].as_i64().unwrap_or(-1);
    let policy = if let Some(df) = manifest.get("dummy_forcing") {
        let n = |k: &str| df[k].as_u64().unwrap_or_else(|| panic!("dummy_forcing.{k} missing"));
        let s = format!("dummy:{},chunks:{},ar-start:{}", n("num_dummy"), n("local_context_length"), n("ar_start"));
        Policy::parse_for(&s, &cfg).unwrap()
    } else if local < 0 {
        Policy::Full
    } else {
        Policy::Window { window: local as usize, sink: mc["sink_size"].as_u64().unwrap_or(0) as usize }
    };
    let precision = match manifest["dtype"].as_str() {
        Some("bfloat16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let pipeline = if case_kind(&manifest) == CaseKind::CausVid { Pipeline::CausVid } else { Pipeline::SelfForcing };
    let teacache = match manifest.get("dummy_forcing") {
        Some(df) if df["teacache_enabled"].as_bool() == Some(true) => Some(
            manifest["teacache"]["threshold"]
                .as_f64()
                .or(df["teacache_threshold"].as_f64())
                .expect("teacache threshold"),
        ),
        _ => None,
    };
    let spec = PipelineSpec { pipeline, teacache };
    if pipeline == Pipeline::CausVid {
        // The schedule the case used must be our preset's, value for value.
        let used: Vec<f32> = manifest["schedule"]["denoising_step_list_used"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(spec.schedule().steps, used, "{dir:?}: CausVid steps");
        assert_eq!(manifest["schedule"]["timestep_shift"].as_f64(), Some(8.0), "{dir:?}: CausVid shift");
    }
    Case { cfg, policy, spec, precision, dir: dir.to_path_buf(), manifest }
}

/// A CPU session for a case, opened the way every front end opens one (a checked
/// [`ModelSource`], its shared CPU model, [`SessionOptions`]): its weights, and every input,
/// stored query row and random draw from its inputs file.
fn open_session(case: &Case) -> (std::sync::Arc<CpuBackend>, Inputs, Session<CpuBackend>) {
    let source = ModelSource::with_config(case.dir.join("weights.safetensors"), case.cfg.clone()).unwrap();
    let model = source.cpu_model(case.precision).unwrap();
    let inputs = Inputs::read(&TensorFile::open(case.dir.join("inputs.safetensors")).unwrap(), &case.cfg).unwrap();
    let frames = inputs.frames;
    let mut opts = SessionOptions::new(case.policy.clone(), inputs.latent.height, inputs.latent.width, Some(frames));
    opts.pipeline = case.spec;
    opts.sampled_rows = inputs.sampled_rows.clone();
    let s = model.session(&opts, &inputs.context.data, inputs.context.rows, inputs.noise(frames).unwrap()).unwrap();
    (model.be.clone(), inputs, s)
}

/// The layer-0 cache after one chunk's clean pass: (chunk, shape, k, v).
type CacheSnap = (usize, Vec<usize>, Vec<f32>, Vec<f32>);

/// Runs a case chunk by chunk; returns the recorded tensors plus the layer-0 cache after
/// every chunk's clean pass (`cache_k.{c}`, `cache_v.{c}`).
fn run_case(case: &Case) -> (dfrt::model::Taps, Vec<CacheSnap>) {
    let (be, _, mut s) = open_session(case);
    s.record_taps();
    let mut latents = Vec::new();
    let mut caches = Vec::new();
    while !s.done() {
        let c = s.chunk_index();
        latents.extend(s.next_chunk(&mut |_| {}).unwrap());
        let (frames, k, v) = s.cache().dump_group(&*be, 0, 0);
        caches.push((c, frames, k, v));
    }
    let mut rec = s.take_taps().unwrap();
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
    if case_kind(&case.manifest) == CaseKind::Switch {
        check_switch_case(name, &case);
        return;
    }
    if case.manifest.get("dummy_forcing").is_some() {
        check_dummy_case(name, &case);
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
    let sink = match case.policy {
        Policy::Window { sink, .. } => sink,
        _ => 0,
    };
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
                let j = off
                    .iter()
                    .position(|x| x == f)
                    .unwrap_or_else(|| panic!("{key}: frame {f} not in the official cache {off:?}"));
                g.extend_from_slice(&mine[i * fl..(i + 1) * fl]);
                w.extend_from_slice(&want[j * fl..(j + 1) * fl]);
            }
            assert_close(&format!("{name}/{key} {frames:?}"), &g, &w, tol);
            compared += 1;
        }
    }
    // A single final snapshot (CausVid's fixed cache, `[1, frames·tpf, heads, d]`, frame order).
    if let (Ok(_), Some((_, frames, k, v))) = (out.info("cache_k.final"), caches.last()) {
        assert_eq!(*frames, (0..frames.len()).collect::<Vec<_>>(), "{name}: the full cache holds every frame in order");
        assert_close(&format!("{name}/cache_k.final"), k, &out.f32_any("cache_k.final").unwrap(), tol);
        assert_close(&format!("{name}/cache_v.final"), v, &out.f32_any("cache_v.final").unwrap(), tol);
        compared += 2;
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

/// A layer's caches in the official packed layout `[tokens, heads_in_cache, d]`: sink =
/// `[A ascending…, C ascending…]` heads (frame 0 for A, the newest frame for C), local = B heads.
fn official_layer_cache(
    be: &CpuBackend,
    cache: &dfrt::cache::KvCache<dfrt::backend::cpu::CpuTensor>,
    a: &dfrt::dummy::Assignment,
    l: usize,
) -> [(String, Vec<f32>); 4] {
    let d = cache.head_dim;
    let mut dumps: Vec<(Group, usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for (gi, g) in cache.layers[l].groups.iter().enumerate() {
        let (frames, k, v) = cache.dump_group(be, l, gi);
        assert!(!g.heads.is_empty());
        let grp = a.get(l, g.heads[0]);
        assert!(g.heads.iter().all(|&h| a.get(l, h) == grp), "layer {l}: group {gi} mixes head groups");
        if grp != Group::Neighbor {
            assert_eq!(frames.len(), 1, "layer {l} {grp:?}: {frames:?}");
        }
        dumps.push((grp, g.heads.len(), k, v));
    }
    let find = |grp: Group| dumps.iter().find(|x| x.0 == grp);
    // Sink: token-major, per token the A heads then the C heads.
    let (mut sk, mut sv) = (Vec::new(), Vec::new());
    let tpf = cache.tokens_per_frame;
    for t in 0..tpf {
        for grp in [Group::Sink, Group::Dummy] {
            if let Some((_, gh, k, v)) = find(grp) {
                sk.extend_from_slice(&k[t * gh * d..(t + 1) * gh * d]);
                sv.extend_from_slice(&v[t * gh * d..(t + 1) * gh * d]);
            }
        }
    }
    let (lk, lv) = find(Group::Neighbor).map(|x| (x.2.clone(), x.3.clone())).unwrap_or_default();
    [("sink_k".into(), sk), ("sink_v".into(), sv), ("local_k".into(), lk), ("local_v".into(), lv)]
}

/// Dummy Forcing cases: assignment exact; calibration scores atol 1e-5; x0, latents and every
/// layer's caches after HMA and at the end atol 1e-4 (latents also rel L2 ≤ 1e-4).
fn check_dummy_case(name: &str, case: &Case) {
    let Policy::Dummy(spec) = case.policy else { unreachable!() };
    assert_eq!(case.precision, Precision::F32, "{name}: Dummy Forcing golden cases are f32");
    let t0 = std::time::Instant::now();
    let (be, inputs, mut s) = open_session(case);
    let frames = inputs.frames;
    assert!(!inputs.sampled_rows.is_empty(), "{name}: inputs have no sampled_rows");
    s.record_taps();
    let mut latents = Vec::new();
    let mut caches = Vec::new();
    while !s.done() {
        let c = s.chunk_index();
        latents.extend(s.next_chunk(&mut |_| {}).unwrap());
        if c == spec.ar_start || s.done() {
            let a = s.dummy().unwrap().assignment().expect("regrouped");
            let tag = if c == spec.ar_start { "after_hma" } else { "final" };
            for l in 0..case.cfg.num_layers {
                caches.push((tag, l, official_layer_cache(&be, s.cache(), &a, l)));
            }
        }
    }
    println!("{name}: {} ran in {:.2?}", spec, t0.elapsed());
    let out = TensorFile::open(case.dir.join("outputs.safetensors")).unwrap();
    let d = s.dummy().unwrap();
    let a = d.assignment().unwrap();
    assert_eq!(a.to_i64(), out.i64_any("assignment").unwrap(), "{name}: assignment");
    let scores = d.calibration_scores().unwrap();
    let mut worst = [0f64; 3];
    for (l, sc) in scores.iter().enumerate() {
        let got: Vec<f32> = sc.iter().flatten().copied().collect();
        worst[0] = worst[0].max(assert_atol(
            &format!("{name}/scores.{l}"),
            &got,
            &out.f32_any(&format!("scores.{l}")).unwrap(),
            1e-5,
        ));
    }
    if case.spec.teacache.is_some() {
        check_teacache(name, case, &s, frames / 3);
    }
    let rec = s.take_taps().unwrap();
    let mut compared = 0;
    for key in out.tensors.keys().filter(|k| k.starts_with("x0.")) {
        let got = rec.get(key).unwrap_or_else(|| panic!("{name}: no {key} recorded"));
        worst[1] = worst[1].max(assert_atol(&format!("{name}/{key}"), got, &out.f32_any(key).unwrap(), 1e-4));
        compared += 1;
    }
    let want = out.f32_any("latents").unwrap();
    assert_atol(&format!("{name}/latents"), &latents, &want, 1e-4);
    let dl = assert_close(&format!("{name}/latents"), &latents, &want, F32_TOL);
    for (tag, l, parts) in &caches {
        for (kind, got) in parts {
            let key = if *l == 0 { format!("{kind}.{tag}") } else { format!("cache.{l}.{kind}.{tag}") };
            let Ok(w) = out.f32_any(&key) else { panic!("{name}: golden has no {key}") };
            // Under TeaCache the bound scales with the tensor (max|Δ| ≤ 1e-4·max|ref|, the
            // rolling/CausVid cases' rule): skipped forwards carry another input's residual, and
            // f32 noise of a few 1e-6 relative reaches 1.1e-4 on keys of magnitude ~10 there.
            let scale =
                if case.spec.teacache.is_some() { w.iter().fold(1f32, |m, x| m.max(x.abs())) as f64 } else { 1.0 };
            worst[2] = worst[2].max(assert_atol(&format!("{name}/{key}"), got, &w, 1e-4 * scale));
            compared += 1;
        }
    }
    println!("{name}: assignment {:?} exact; scores max abs {:.2e}; x0 max abs {:.2e}; latents rel L2 {:.2e}; caches max abs {:.2e} ({compared} tensors)", a.to_i64(), worst[0], worst[1], dl.rel_l2, worst[2]);
    // Every chunk's 4 x0 plus 2 snapshots × 4 caches per layer.
    assert_eq!(compared, 4 * frames / 3 + 8 * case.cfg.num_layers, "{name}: tensors compared");
}

/// TeaCache: the skip decisions exact; rel-L1, rescaled and accumulated values rtol 1e-5;
/// the measured tensor e0 at every timestep atol 1e-6.
fn check_teacache(name: &str, case: &Case, s: &Session<CpuBackend>, chunks: usize) {
    let out = TensorFile::open(case.dir.join("outputs.safetensors")).unwrap();
    let plan = s.teacache().expect("TeaCache on");
    let steps = s.schedule().steps.len();
    let skipped = out.bool_any("teacache.skipped").unwrap();
    let got: Vec<bool> =
        (0..chunks).flat_map(|c| (0..steps).map(move |p| (c, p))).map(|(c, p)| plan.get(c, p).skip).collect();
    assert_eq!(got, skipped, "{name}: teacache.skipped (chunk-major, {steps} steps)");
    assert!(!plan.get(0, steps).skip && !plan.get(1, steps).skip, "clean passes are always computed");
    for (key, f) in [("rel_l1", 0usize), ("rescaled", 1), ("accumulated", 2)] {
        let want = out.f64_any(&format!("teacache.{key}")).unwrap();
        for (i, w) in want.iter().enumerate() {
            let d = plan.get(i / steps, i % steps);
            let g = [d.rel_l1, d.rescaled, d.accumulated][f];
            assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-12, "{name}: teacache.{key}[{i}] = {g}, want {w}");
        }
    }
    for key in out.tensors.keys().filter(|k| k.starts_with("teacache.residual.")) {
        let got = s.taps().and_then(|r| r.get(key)).unwrap_or_else(|| panic!("{name}: {key} not recorded"));
        assert_close(&format!("{name}/{key}"), got, &out.f32_any(key).unwrap(), F32_TOL);
    }
    let model = s.model().clone();
    let ts = s
        .schedule()
        .steps
        .iter()
        .enumerate()
        .map(|(i, &t)| (format!("teacache.e0.{i}"), t))
        .chain([("teacache.e0.ctx".to_string(), 0.0)]);
    for (key, t) in ts {
        let e0 = s.backend().download(&model.time_embedding(&**s.backend(), t, 3, None).e0);
        assert_atol(&format!("{name}/{key}"), &e0, &out.f32_any(&key).unwrap(), 1e-6);
    }
    println!("{name}: TeaCache skipped {:?} of {} denoising forwards", plan.skipped(chunks).len(), chunks * steps);
}

/// Every layer's caches in the official packed layout, named as the golden file names them
/// (`{kind}{suffix}` for layer 0, `cache.{l}.{kind}{suffix}` for the others).
fn packed_caches(be: &CpuBackend, s: &Session<CpuBackend>, prefix: &str, suffix: &str) -> Vec<(String, Vec<f32>)> {
    let a = s.dummy().unwrap().assignment().expect("calibrated");
    let mut v = Vec::new();
    for l in 0..s.cache().layers.len() {
        for (kind, t) in official_layer_cache(be, s.cache(), &a, l) {
            let key =
                if l == 0 { format!("{prefix}{kind}{suffix}") } else { format!("cache.{l}.{prefix}{kind}{suffix}") };
            v.push((key, t));
        }
    }
    v
}

/// Dummy Forcing with prompt switches (df-switch): at each switch frame the prompt changes
/// and the cache is rebuilt by a recache pass and re-packed. Assignment exact, scores atol
/// 1e-5, x0 / latents / every cache snapshot (after HMA, before and after each recache, final)
/// atol 1e-4.
fn check_switch_case(name: &str, case: &Case) {
    if case.manifest.get("dummy_forcing").is_none() {
        check_window_switch_case(name, case);
        return;
    }
    let Policy::Dummy(spec) = case.policy else { unreachable!() };
    let (be, inputs, mut s) = open_session(case);
    let pr = &case.manifest["prompts"];
    assert_eq!(pr["global_sink"].as_bool(), Some(false), "{name}: only global_sink false runs in the official DF code");
    let switches: Vec<usize> =
        pr["switch_frame_indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(inputs.switch_contexts.len(), switches.len(), "{name}: one context per switch");
    let window = case.cfg_json("local_attn_size").unwrap_or(12);
    s.set_recache_frames(window).unwrap();
    s.record_taps();
    let mut snaps: Vec<(String, Vec<f32>)> = Vec::new();
    let mut latents = Vec::new();
    let mut next = 0;
    while !s.done() {
        if next < switches.len() && s.frames_done() >= switches[next] {
            snaps.extend(packed_caches(&be, &s, &format!("recache.{next}.before."), ""));
            let ctx = &inputs.switch_contexts[next];
            s.switch_prompt(&ctx.data, ctx.rows).unwrap();
            snaps.extend(packed_caches(&be, &s, &format!("recache.{next}.after."), ""));
            next += 1;
        }
        let c = s.chunk_index();
        latents.extend(s.next_chunk(&mut |_| {}).unwrap());
        if c == spec.ar_start {
            snaps.extend(packed_caches(&be, &s, "", ".after_hma"));
        }
    }
    snaps.extend(packed_caches(&be, &s, "", ".final"));
    assert_eq!((next, s.recaches()), (switches.len(), switches.len()), "{name}: every switch ran");
    let out = TensorFile::open(case.dir.join("outputs.safetensors")).unwrap();
    let d = s.dummy().unwrap();
    assert_eq!(d.assignment().unwrap().to_i64(), out.i64_any("assignment").unwrap(), "{name}: assignment");
    for (l, sc) in d.calibration_scores().unwrap().iter().enumerate() {
        let got: Vec<f32> = sc.iter().flatten().copied().collect();
        assert_atol(&format!("{name}/scores.{l}"), &got, &out.f32_any(&format!("scores.{l}")).unwrap(), 1e-5);
    }
    let rec = s.take_taps().unwrap();
    let mut worst = [0f64; 2];
    let mut compared = 0;
    for key in out.tensors.keys().filter(|k| k.starts_with("x0.")) {
        let got = rec.get(key).unwrap_or_else(|| panic!("{name}: no {key} recorded"));
        worst[0] = worst[0].max(assert_atol(&format!("{name}/{key}"), got, &out.f32_any(key).unwrap(), 1e-4));
        compared += 1;
    }
    let want = out.f32_any("latents").unwrap();
    assert_atol(&format!("{name}/latents"), &latents, &want, 1e-4);
    let dl = assert_close(&format!("{name}/latents"), &latents, &want, F32_TOL);
    for (key, got) in &snaps {
        let w = out.f32_any(key).unwrap_or_else(|_| panic!("{name}: golden has no {key}"));
        worst[1] = worst[1].max(assert_atol(&format!("{name}/{key}"), got, &w, 1e-4));
        compared += 1;
    }
    println!("{name}: {} switches at {switches:?}, assignment exact; x0 max abs {:.2e}; latents rel L2 {:.2e}; caches max abs {:.2e} ({compared} tensors)", switches.len(), worst[0], dl.rel_l2, worst[1]);
}

/// The frames of a manifest slot list (`f<frame>/p<prompt>/<pass>`, or `zero`), in slot order.
fn slot_frames(labels: &serde_json::Value) -> Vec<Option<usize>> {
    labels
        .as_array()
        .expect("slot list")
        .iter()
        .map(|l| {
            let l = l.as_str().unwrap();
            l.strip_prefix('f').and_then(|r| r.split('/').next()).map(|f| f.parse().expect("frame number"))
        })
        .collect()
}

/// One layer's window cache against an official snapshot of its slots: every frame we hold
/// must be the official slot holding it, value for value, and the frames we hold must be the
/// official sink slots plus the newest `ring_cap` of the others: the official cache also still
/// holds the frames its next step-0 eviction drops (never attended again), our ring does not.
#[allow(clippy::too_many_arguments)]
fn check_window_snapshot(
    what: &str,
    be: &CpuBackend,
    s: &Session<CpuBackend>,
    layer: usize,
    labels: &serde_json::Value,
    (want_k, want_v): (&[f32], &[f32]),
    sink: usize,
) -> f64 {
    let official = slot_frames(labels);
    let (frames, k, v) = s.cache().dump_group(be, layer, 0);
    let ring_cap = s.cache().layers[layer].groups[0].ring_cap;
    let rest: Vec<usize> = official.iter().skip(sink).flatten().copied().collect();
    let mut expect: Vec<usize> = official.iter().take(sink).flatten().copied().collect();
    expect.extend(&rest[rest.len().saturating_sub(ring_cap)..]);
    assert_eq!(frames, expect, "{what}: frames held (official slots {official:?}, ring {ring_cap})");
    let fl = k.len() / frames.len().max(1);
    assert_eq!(want_k.len(), official.len() * fl, "{what}: official snapshot size");
    let mut worst = 0f64;
    for (i, f) in frames.iter().enumerate() {
        let j = official.iter().position(|x| *x == Some(*f)).unwrap();
        for (kind, mine, want) in [("k", &k, want_k), ("v", &v, want_v)] {
            let e = assert_atol(
                &format!("{what}.{kind} frame {f} (slot {j})"),
                &mine[i * fl..(i + 1) * fl],
                &want[j * fl..(j + 1) * fl],
                1e-4,
            );
            worst = worst.max(e);
        }
    }
    worst
}

/// LongLive's interactive pipeline (longlive-switch): the window cache with sink, prompt
/// switches rebuilt by a recache pass, `global_sink` as the case sets it. x0 / latents and
/// every cache snapshot (layer 0 after each chunk, layer 0 and the last layer around each
/// recache) atol 1e-4; the slot bookkeeping exact (frames held per snapshot).
fn check_window_switch_case(name: &str, case: &Case) {
    let Policy::Window { window, sink } = case.policy else {
        panic!("{name}: a switch case without dummy_forcing must have a window policy (local_attn_size)")
    };
    let (be, inputs, mut s) = open_session(case);
    let m = &case.manifest;
    let pr = &m["prompts"];
    let global_sink = pr["global_sink"].as_bool().expect("prompts.global_sink");
    s.set_global_sink(global_sink).unwrap();
    s.set_recache_frames(window).unwrap();
    let switches: Vec<usize> =
        pr["switch_frame_indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(inputs.switch_contexts.len(), switches.len(), "{name}: one context per switch");
    let slots = &m["window_cache"]["slot_contents"];
    let out = TensorFile::open(case.dir.join("outputs.safetensors")).unwrap();
    let last = case.cfg.num_layers - 1;
    let snap = |s: &Session<CpuBackend>, what: &str, layer: usize, key: &str, labels: &serde_json::Value| -> f64 {
        let (k, v) = (key.to_string(), key.replace("cache_k", "cache_v"));
        let (wk, wv) = (out.f32_any(&k).unwrap(), out.f32_any(&v).unwrap());
        check_window_snapshot(&format!("{name}/{what}"), &be, s, layer, labels, (&wk, &wv), sink)
    };
    s.record_taps();
    let (mut latents, mut worst, mut compared, mut next) = (Vec::new(), 0f64, 0, 0);
    while !s.done() {
        if next < switches.len() && s.frames_done() >= switches[next] {
            let ev = &slots["around_recache"][next];
            let keys = [(0, format!("recache.{next}.cache_k")), (last, format!("cache.{last}.recache.{next}.cache_k"))];
            for (l, key) in &keys {
                if *l == 0 {
                    worst =
                        worst.max(snap(&s, &format!("{key}.before"), 0, &format!("{key}.before"), &ev["slots_before"]));
                    compared += 1;
                }
            }
            let ctx = &inputs.switch_contexts[next];
            s.switch_prompt(&ctx.data, ctx.rows).unwrap();
            for (l, key) in &keys {
                worst = worst.max(snap(&s, &format!("{key}.after"), *l, &format!("{key}.after"), &ev["slots_after"]));
                compared += 1;
            }
            next += 1;
        }
        let c = s.chunk_index();
        latents.extend(s.next_chunk(&mut |_| {}).unwrap());
        let labels = &slots["after_context_pass"][c]["slots"];
        worst = worst.max(snap(&s, &format!("cache_k.{c}"), 0, &format!("cache_k.{c}"), labels));
        compared += 1;
    }
    assert_eq!((next, s.recaches()), (switches.len(), switches.len()), "{name}: every switch ran");
    let rec = s.take_taps().unwrap();
    let mut worst_x0 = 0f64;
    for key in out.tensors.keys().filter(|k| k.starts_with("x0.")) {
        let got = rec.get(key).unwrap_or_else(|| panic!("{name}: no {key} recorded"));
        worst_x0 = worst_x0.max(assert_atol(&format!("{name}/{key}"), got, &out.f32_any(key).unwrap(), 1e-4));
        compared += 1;
    }
    let want = out.f32_any("latents").unwrap();
    assert_atol(&format!("{name}/latents"), &latents, &want, 1e-4);
    let dl = assert_close(&format!("{name}/latents"), &latents, &want, F32_TOL);
    println!(
        "{name}: window {window} sink {sink}, global_sink {global_sink}, switches at {switches:?}; x0 max abs {worst_x0:.2e}; latents rel L2 {:.2e}; caches max abs {worst:.2e} ({compared} snapshots/tensors)",
        dl.rel_l2
    );
}

#[test]
fn longlive_switch() {
    check_case("longlive-switch");
}

#[test]
fn df_switch() {
    check_case("df-switch");
}

#[test]
fn df_teacache() {
    check_case("df-teacache");
}

#[test]
fn causvid_tiny() {
    check_case("causvid-tiny");
}

#[test]
fn df_tiny() {
    check_case("df-tiny");
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
    let known = [
        "tiny-full",
        "tiny-window",
        "tiny-full-bf16",
        "df-tiny",
        "df-teacache",
        "causvid-tiny",
        "df-switch",
        "longlive-switch",
    ];
    let Ok(rd) = std::fs::read_dir(golden_dir()) else { panic!("golden dir {:?} missing", golden_dir()) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().join("manifest.json").exists() && !known.contains(&name.as_str()) {
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path().join("manifest.json")).unwrap()).unwrap();
            match case_kind(&m) {
                CaseKind::Reference | CaseKind::Dummy | CaseKind::CausVid => check_case(&name),
                CaseKind::Switch => check_case(&name),
                // Checked by their own test files (tests/systems.rs; the VAE / text encoder tests).
                k => println!("{name}: {k:?} case, not a case of this file"),
            }
        }
    }
}
