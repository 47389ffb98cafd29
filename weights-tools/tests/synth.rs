//! Synthetic weights: determinism, the file layout, the distribution of each tensor, and that
//! the scales keep activations sane through the embedding, modulation and FFN paths.

mod common;

use common::*;
use dfrt::checkpoint::{DType, TensorFile};
use dfrt::ModelConfig;
use dfrt_weights::synth::init_scale;
use dfrt_weights::{expected_tensors, synth_checkpoint, synth_tensor, synth_tensors, Rng};
use half::bf16;

#[test]
fn rng_normals_have_unit_moments() {
    let mut r = Rng::new(42);
    let n = 200_000;
    let v: Vec<f64> = (0..n).map(|_| r.normal() as f64).collect();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    let kurt = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.02, "var {var}");
    assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
    assert!(v.iter().all(|x| x.is_finite()));
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
}

#[test]
fn synth_is_deterministic_and_matches_the_library() {
    let dir = scratch("synth-det");
    let cfg = ModelConfig::preset("tiny").unwrap();
    let (a, b, c) = (dir.join("a.safetensors"), dir.join("b.safetensors"), dir.join("c.safetensors"));
    let bytes = synth_checkpoint(&a, &cfg, 7, DType::F32).unwrap();
    synth_checkpoint(&b, &cfg, 7, DType::F32).unwrap();
    synth_checkpoint(&c, &cfg, 8, DType::F32).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "same seed, same bytes");
    assert_aligned(&a);
    let fa = TensorFile::open(&a).unwrap();
    let fc = TensorFile::open(&c).unwrap();
    assert_eq!(fa.config().unwrap(), cfg);
    assert_eq!(bytes, fa.tensors.values().map(|t| t.end - t.start).sum::<usize>());
    let mem = synth_tensors(&cfg, 7);
    assert_eq!(mem.len(), expected_tensors(&cfg).len());
    for t in &mem {
        assert_same(&t.name, &fa.f32(&t.name, &t.shape).unwrap(), &t.data);
        assert_ne!(fa.bytes(&t.name).unwrap(), fc.bytes(&t.name).unwrap(), "{}: a different seed changes it", t.name);
    }
    // bf16 files hold the rounded f32 values.
    let d = dir.join("d.safetensors");
    synth_checkpoint(&d, &cfg, 7, DType::BF16).unwrap();
    let fd = TensorFile::open(&d).unwrap();
    for t in &mem {
        let want: Vec<f32> = t.data.iter().map(|x| bf16::from_f32(*x).to_f32()).collect();
        assert_same(&t.name, &fd.f32(&t.name, &t.shape).unwrap(), &want);
    }
    // A tensor does not depend on which other tensors exist: a 1-layer model is a prefix of the 2-layer one.
    let one = ModelConfig { num_layers: 1, ..cfg.clone() };
    for t in synth_tensors(&one, 7) {
        assert_same(&t.name, &t.data, &mem.iter().find(|m| m.name == t.name).unwrap().data);
    }
    assert!(synth_checkpoint(dir.join("e"), &cfg, 7, DType::I64).is_err());
}

#[test]
fn synth_tensors_follow_their_scales() {
    let cfg = ModelConfig::preset("small").unwrap();
    for (name, shape) in expected_tensors(&cfg) {
        let v = synth_tensor(&cfg, 3, &name, &shape);
        let n = v.len() as f64;
        assert!(v.iter().all(|x| x.is_finite() && *x != 0.0), "{name}: non-finite or zero entries");
        let (m, s) = init_scale(&cfg, &name, &shape);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let tol = 5.0 / n.sqrt() + 0.01;
        assert!((mean - m as f64).abs() <= 5.0 * s as f64 / n.sqrt(), "{name}: mean {mean}, want {m}");
        assert!((std / s as f64 - 1.0).abs() <= tol, "{name}: std {std}, want {s}");
    }
}

fn linear(w: &[f32], b: &[f32], x: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len();
    (0..out).map(|o| b[o] + (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f32>()).collect()
}
fn silu(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x / (1.0 + (-x).exp())).collect()
}
fn gelu_tanh(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())).collect()
}
fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

/// The weights are meant to be run: the time path gives modest modulation (|gate|, |scale|
/// well below 1), the FFN keeps the residual stream's scale, the patch embedding maps unit
/// noise to unit-scale tokens, and the head maps unit tokens to unit-scale flow.
#[test]
fn synth_weights_keep_activations_sane() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let w: std::collections::HashMap<String, Vec<f32>> =
        synth_tensors(&cfg, 1).into_iter().map(|t| (t.name, t.data)).collect();
    let d = cfg.dim;
    for t in [1000.0f64, 625.0, 0.0] {
        let half = cfg.freq_dim / 2;
        let mut s = vec![0f32; cfg.freq_dim];
        for i in 0..half {
            let f = t * 10000f64.powf(-(i as f64) / half as f64);
            s[i] = f.cos() as f32;
            s[half + i] = f.sin() as f32;
        }
        let e = linear(
            &w["time_embedding.2.weight"],
            &w["time_embedding.2.bias"],
            &silu(&linear(&w["time_embedding.0.weight"], &w["time_embedding.0.bias"], &s, d)),
            d,
        );
        let e0 = linear(&w["time_projection.1.weight"], &w["time_projection.1.bias"], &silu(&e), 6 * d);
        let (re, re0) = (rms(&e), rms(&e0));
        eprintln!("t={t}: rms(e) {re:.3}, rms(e0) {re0:.3}");
        assert!(re.is_finite() && (0.1..3.0).contains(&re), "t={t}: rms(e) = {re}");
        assert!((0.03..0.5).contains(&re0), "t={t}: rms(e0) = {re0}: modulation should be modest");
    }
    let mut rng = Rng::new(2);
    let x: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
    let h = gelu_tanh(&linear(&w["blocks.0.ffn.0.weight"], &w["blocks.0.ffn.0.bias"], &x, cfg.ffn_dim));
    let y = linear(&w["blocks.0.ffn.2.weight"], &w["blocks.0.ffn.2.bias"], &h, d);
    let ratio = rms(&y) / rms(&x);
    eprintln!("ffn out/in rms {ratio:.3}");
    assert!((0.2..1.5).contains(&ratio), "FFN output/input rms {ratio}");
    let pin = cfg.in_dim * 4;
    let noise: Vec<f32> = (0..pin).map(|_| rng.normal()).collect();
    let tok = linear(&w["patch_embedding.weight"], &w["patch_embedding.bias"], &noise, d);
    assert!((0.5..2.0).contains(&rms(&tok)), "patch embedding rms {}", rms(&tok));
    let out = linear(&w["head.head.weight"], &w["head.head.bias"], &x, cfg.patch_features());
    assert!((0.5..2.0).contains(&rms(&out)), "head rms {}", rms(&out));
}

/// The README's main job feeds `synth --context-out` to `dfrt generate --context`: the
/// embedding has the config's shape, random valid rows and zero padding rows, and depends on
/// the seed.
#[test]
fn synth_context_has_the_config_shape_and_padding() {
    let cfg = dfrt::ModelConfig::preset("tiny").unwrap();
    let dir = scratch("synth-ctx");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    dfrt_weights::synth_context(&a, &cfg, 1).unwrap();
    dfrt_weights::synth_context(&b, &cfg, 2).unwrap();
    let fa = dfrt::checkpoint::TensorFile::open(&a).unwrap();
    let ca = fa.f32("context", &[cfg.text_len, cfg.text_dim]).unwrap();
    let cb = dfrt::checkpoint::TensorFile::open(&b).unwrap().f32("context", &[cfg.text_len, cfg.text_dim]).unwrap();
    let valid: usize = fa.metadata["dfrt.context_valid_len"].parse().unwrap();
    assert!(valid > 0 && valid < cfg.text_len);
    let w = cfg.text_dim;
    assert!(ca[..valid * w].iter().all(|x| x.is_finite() && *x != 0.0), "valid rows are random");
    assert!(ca[valid * w..].iter().all(|x| *x == 0.0), "padding rows are zero");
    let std = (ca[..valid * w].iter().map(|x| x * x).sum::<f32>() / (valid * w) as f32).sqrt();
    assert!((0.8..1.2).contains(&std), "std {std}");
    assert_ne!(ca, cb, "the seed changes the context");
    std::fs::remove_dir_all(&dir).ok();
}
