//! Op-by-op checks: each stage of the first forward (chunk 0, step 0, t = 1000) is fed the
//! golden input of that stage, not our own upstream result, so a failure names the stage.

mod support;

use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::{Backend, Precision};
use dfrt::cache::KvCache;
use dfrt::checkpoint::TensorFile;
use dfrt::model::{Model, NoHook, PassInfo, Taps};
use dfrt::policy::Policy;
use dfrt::ModelConfig;
use support::{assert_close, golden_dir};

/// Single ops in f32 agree with the official ones to float rounding; 1e-5 leaves 10× margin
/// over the observed ~1e-6.
const TOL: f64 = 1e-5;

#[test]
fn tiny_full_first_forward_stage_by_stage() {
    let dir = golden_dir().join("tiny-full");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cfg: ModelConfig = serde_json::from_value(m["model_config"].clone()).unwrap();
    let be = CpuBackend::new(Precision::F32);
    let model = Model::load(&be, &TensorFile::open(dir.join("weights.safetensors")).unwrap(), &cfg).unwrap();
    let out = TensorFile::open(dir.join("outputs.safetensors")).unwrap();
    let inp = TensorFile::open(dir.join("inputs.safetensors")).unwrap();
    let g = |n: &str| out.f32_any(n).unwrap();
    let w = &model.w;
    let (nf, d) = (3usize, cfg.dim);
    let xs = out.info("xt.0.0").unwrap().shape.clone(); // [1, 3, C, H, W]
    let grid = [nf, xs[3] / 2, xs[4] / 2];
    let t = grid[0] * grid[1] * grid[2];

    // Patch embedding from the noisy input.
    let x = be.upload(&g("xt.0.0"), &[nf, xs[2], xs[3], xs[4]]);
    let pe = be.linear(&be.patchify(&x, cfg.patch_size), &w.patch.w, Some(&w.patch.b));
    assert_close("patch_embedded", &pe.data, &g("patch_embedded"), TOL);

    // Time sinusoid (f64), time MLP from the golden sinusoid, projection from the golden e.
    let ts = m["schedule"]["denoising_step_list_warped"][0].as_f64().unwrap() as f32;
    assert_close("time_sinusoid", &be.sinusoid(&[ts; 3], cfg.freq_dim).data, &g("time_sinusoid"), TOL);
    let sin = be.upload(&g("time_sinusoid"), &[nf, cfg.freq_dim]);
    let e = be.linear(&be.silu(&be.linear(&sin, &w.time0.w, Some(&w.time0.b))), &w.time2.w, Some(&w.time2.b));
    assert_close("e", &e.data, &g("e"), TOL);
    let e_g = be.upload(&g("e"), &[nf, d]);
    let e0 = be.linear(&be.silu(&e_g), &w.time_proj.w, Some(&w.time_proj.b));
    assert_close("e0", &e0.data, &g("e0"), TOL);

    // Text embedding from the raw context.
    let ctx = inp.f32_any("context").unwrap();
    let text = model.embed_text(&be, &ctx, cfg.text_len).unwrap();
    assert_close("context_embedded", &text.embedded.data, &g("context_embedded"), TOL);

    // Each block from the golden residual stream before it (empty cache: chunk 0).
    let e0_g = be.upload(&g("e0"), &[nf, 6 * d]);
    let pass = PassInfo::denoise(0, 0, 0, nf);
    let groups = Policy::Full.initial_groups(cfg.num_heads, Some(9)).unwrap();
    let mut cache =
        KvCache::new(cfg.num_layers, cfg.num_heads, cfg.head_dim(), grid[1] * grid[2], Precision::F32, &groups)
            .unwrap();
    for l in 0..cfg.num_layers {
        let before = if l == 0 { g("patch_embedded") } else { g(&format!("hidden.{}", l - 1)) };
        let mut taps = Taps::new();
        let h = model
            .block(
                &be,
                l,
                &be.upload(&before, &[t, d]),
                &e0_g,
                grid,
                &pass,
                &mut cache,
                &text,
                &mut NoHook,
                Some(&mut taps),
            )
            .unwrap();
        assert_close(&format!("hidden.{l}"), &h.data, &g(&format!("hidden.{l}")), TOL);
        if l == 0 {
            for k in ["l0.q_roped", "l0.k_roped", "l0.attn_out"] {
                assert_close(k, &taps[k], &g(k), TOL);
            }
        }
    }
    assert_eq!(cache.bytes(), 0, "a denoising pass writes nothing to the cache");
}
