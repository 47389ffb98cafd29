//! `convert --lora`: merging a PEFT LoRA into the Linear weights. Each merged weight is
//! checked against an independent f64 `W + s·B·A`, every other tensor must be bit-identical,
//! and each malformed LoRA must give an error naming the tensor.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dfrt::checkpoint::{write_safetensors, DType, OutTensor, TensorFile};
use dfrt::ModelConfig;
use dfrt_weights::lora::{lora_base_name, parse_lora_key};
use dfrt_weights::{convert_file, expected_tensors, synth_tensors, ConvertOptions, LoraOptions, Rng};
use half::bf16;

const RANK: usize = 4;
/// alpha 8 on rank 4: a scaling of 2, so a scaling that is ignored or inverted shows.
const ALPHA: f64 = 8.0;

fn cfg() -> ModelConfig {
    ModelConfig::preset("tiny").unwrap()
}

fn opts(lora: &Path, alpha: Option<f64>, scale: Option<f64>) -> ConvertOptions {
    ConvertOptions {
        heads: Some(2),
        text_len: Some(16),
        lora: Some(LoraOptions { path: lora.to_path_buf(), alpha, scale }),
        ..Default::default()
    }
}

/// The base: tiny's synthetic weights (seeded, no zeros) as a raw f32 state dict.
fn write_base(dir: &Path) -> PathBuf {
    let p = dir.join("base.safetensors");
    let t: Vec<OutTensor> = synth_tensors(&cfg(), 21).iter().map(|t| t.to_out(DType::F32).unwrap()).collect();
    write_safetensors(&p, &t, &BTreeMap::new()).unwrap();
    p
}

/// One adapted Linear: its native weight, the LoRA keys and the (already rounded) values.
struct Pair {
    base: String,
    a_key: String,
    b_key: String,
    a: Vec<f32>,
    b: Vec<f32>,
    /// Whether `a` is stored as bf16 (its values are bf16-exact).
    a_bf16: bool,
    out: usize,
    inputs: usize,
}

/// The adapted Linears and the key style of each: peft's, peft's with the adapter name, a
/// doubly wrapped peft model, diffusers names under a pipeline's `transformer.`, and
/// ComfyUI's `diffusion_model.` with diffusers names. `SIDE` is `A` or `B`.
const ADAPTED: [(&str, &str); 5] = [
    ("blocks.0.self_attn.q.weight", "base_model.model.blocks.0.self_attn.q.lora_SIDE.weight"),
    ("blocks.0.cross_attn.v.weight", "blocks.0.cross_attn.v.lora_SIDE.default.weight"),
    ("blocks.1.ffn.0.weight", "base_model.model.model.blocks.1.ffn.0.lora_SIDE.weight"),
    ("blocks.1.ffn.2.weight", "transformer.blocks.1.ffn.net.2.lora_SIDE.weight"),
    ("blocks.1.self_attn.o.weight", "diffusion_model.blocks.1.attn1.to_out.0.lora_SIDE.weight"),
];

/// N(0, 1) values from their own seeded stream (B is not zero, as peft initialises it,
/// so that every merge changes the weight).
fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}

fn make_pairs(seed: u64) -> Vec<Pair> {
    let shapes: BTreeMap<String, Vec<usize>> = expected_tensors(&cfg()).into_iter().collect();
    ADAPTED
        .iter()
        .enumerate()
        .map(|(i, (base, key))| {
            let [out, inputs] = shapes[*base][..] else { panic!("{base} is not 2-D") };
            let a_bf16 = i == 3;
            let mut a = random(seed * 100 + 2 * i as u64, RANK * inputs);
            if a_bf16 {
                a.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
            }
            Pair {
                base: base.to_string(),
                a_key: key.replace("SIDE", "A"),
                b_key: key.replace("SIDE", "B"),
                a,
                b: random(seed * 100 + 2 * i as u64 + 1, out * RANK),
                a_bf16,
                out,
                inputs,
            }
        })
        .collect()
}

fn lora_tensors(pairs: &[Pair]) -> Vec<OutTensor> {
    let mut t = Vec::new();
    for p in pairs {
        let a_shape = vec![RANK, p.inputs];
        t.push(if p.a_bf16 {
            OutTensor::bf16(&p.a_key, a_shape, &p.a)
        } else {
            OutTensor::f32(&p.a_key, a_shape, &p.a)
        });
        t.push(OutTensor::f32(&p.b_key, vec![p.out, RANK], &p.b));
    }
    t
}

fn write_lora(path: &Path, tensors: &[OutTensor]) {
    write_safetensors(path, tensors, &BTreeMap::new()).unwrap();
}

/// `W + scale·B·A` in f64 for `W [out, in]`, `A [r, in]`, `B [out, r]`, written out
/// independently of the converter.
fn reference(w: &[f32], a: &[f32], b: &[f32], inputs: usize, scale: f64) -> Vec<f64> {
    let (out, r) = (w.len() / inputs, a.len() / inputs);
    let mut m = Vec::with_capacity(w.len());
    for o in 0..out {
        for i in 0..inputs {
            let ba: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * inputs + i] as f64).sum();
            m.push(w[o * inputs + i] as f64 + scale * ba);
        }
    }
    m
}

/// Checks the merged weights of `out` against [`reference`] (within `rel` of each value,
/// plus f32 rounding) and that every other tensor has the bytes of `base`.
fn check_merged(base: &Path, out: &Path, pairs: &[Pair], scale: f64, rel: f64) {
    let (src, dst) = (TensorFile::open(base).unwrap(), TensorFile::open(out).unwrap());
    assert_eq!(dst.config().unwrap(), cfg());
    assert_eq!(dst.tensors.len(), src.tensors.len());
    for (name, info) in &src.tensors {
        let Some(p) = pairs.iter().find(|p| &p.base == name) else {
            assert!(src.bytes(name).unwrap() == dst.bytes(name).unwrap(), "{name}: untouched tensor changed");
            continue;
        };
        let w = src.f32(name, &info.shape).unwrap();
        let got = dst.f32(name, &info.shape).unwrap();
        let want = reference(&w, &p.a, &p.b, p.inputs, scale);
        let (mut err, mut delta) = (0f64, 0f64);
        for ((&g, &x), &r) in got.iter().zip(&want).zip(&w) {
            let e = (g as f64 - x).abs();
            assert!(e <= rel * x.abs() + 1e-6, "{name}: got {g}, want {x}");
            err = err.max(e);
            delta = delta.max((g - r).abs() as f64);
        }
        println!("{name}: max abs error {err:.3e}, max change {delta:.3}");
        // The inputs are not degenerate: the merge moved the weight by far more than the tolerance.
        assert!(delta > 0.5, "{name}: the LoRA barely changed the weight (max {delta})");
    }
    assert_aligned(out);
}

#[test]
fn lora_merges_into_each_adapted_linear() {
    let dir = scratch("lora-merge");
    let base = write_base(&dir);
    let pairs = make_pairs(1);
    // Fresh random inputs: seeded, so reproducible, and different per seed.
    assert_eq!(make_pairs(1)[0].b, pairs[0].b);
    assert_ne!(make_pairs(2)[0].b, pairs[0].b);
    let lora = dir.join("lora.safetensors");
    write_lora(&lora, &lora_tensors(&pairs));

    let out = dir.join("merged.safetensors");
    let r = convert_file(&base, &out, &opts(&lora, Some(ALPHA), None)).unwrap();
    assert_eq!(r.dtype, DType::F32);
    let l = r.lora.as_ref().expect("a LoRA report");
    assert_eq!((l.merged, l.ranks.clone(), l.scales.clone(), l.group.clone()), (5, vec![RANK], vec![2.0], None));
    assert!(l.summary().contains("into 5 Linear weights: rank 4, scaling 2 (alpha 8 / rank)"), "{}", l.summary());
    check_merged(&base, &out, &pairs, 2.0, 1e-6);

    // bf16 output: the merge is rounded once, to within half a bf16 ulp of the exact value.
    let out16 = dir.join("merged-bf16.safetensors");
    let o = ConvertOptions { dtype: Some(DType::BF16), ..opts(&lora, Some(ALPHA), None) };
    convert_file(&base, &out16, &o).unwrap();
    let (src, dst) = (TensorFile::open(&base).unwrap(), TensorFile::open(&out16).unwrap());
    for p in &pairs {
        let shape = [p.out, p.inputs];
        let want = reference(&src.f32(&p.base, &shape).unwrap(), &p.a, &p.b, p.inputs, 2.0);
        for (&g, &x) in dst.f32(&p.base, &shape).unwrap().iter().zip(&want) {
            assert!((g as f64 - x).abs() <= x.abs() / 256.0 + 1e-6, "{}: bf16 {g}, want {x}", p.base);
        }
    }
}

#[test]
fn lora_alpha_defaults_to_rank_and_scale_overrides_it() {
    let dir = scratch("lora-alpha");
    let base = write_base(&dir);
    let pairs = make_pairs(3);
    let lora = dir.join("lora.safetensors");
    write_lora(&lora, &lora_tensors(&pairs));
    let out = dir.join("a.safetensors");
    // No alpha: alpha = r, scaling 1 (LongLive's rank 256 / alpha 256).
    let r = convert_file(&base, &out, &opts(&lora, None, None)).unwrap();
    assert_eq!(r.lora.as_ref().unwrap().scales, vec![1.0]);
    assert!(r.lora.unwrap().summary().contains("alpha = rank"));
    check_merged(&base, &out, &pairs, 1.0, 1e-6);
    // --lora-scale wins over alpha/r.
    let r = convert_file(&base, &out, &opts(&lora, None, Some(-0.75))).unwrap();
    assert_eq!(r.lora.unwrap().scales, vec![-0.75]);
    check_merged(&base, &out, &pairs, -0.75, 1e-6);
}

#[test]
fn lora_key_names_map_to_native_weights() {
    assert_eq!(
        parse_lora_key("base_model.model.blocks.0.ffn.0.lora_A.weight"),
        Some(("base_model.model.blocks.0.ffn.0", false))
    );
    assert_eq!(parse_lora_key("blocks.0.self_attn.q.lora_B.default.weight"), Some(("blocks.0.self_attn.q", true)));
    assert_eq!(parse_lora_key("blocks.0.self_attn.q.lora_A.weight.x"), None);
    assert_eq!(parse_lora_key("blocks.0.self_attn.q.weight"), None);
    assert_eq!(parse_lora_key("blocks.0.self_attn.q.lora_down.weight"), None, "kohya names are not peft's");
    for (native, key) in ADAPTED {
        let key = key.replace("SIDE", "A");
        let (module, _) = parse_lora_key(&key).unwrap();
        assert_eq!(lora_base_name(module), native, "{key}");
    }
    assert_eq!(lora_base_name("_orig_mod.base_model.model.blocks.3.attn2.to_k"), "blocks.3.cross_attn.k.weight");
}

#[test]
fn lora_is_taken_from_the_generator_lora_dict() {
    let dir = scratch("lora-group");
    let base = write_base(&dir);
    let pairs = make_pairs(4);
    // Flat safetensors names with the dict in front, as torch's nested dicts flatten; the
    // critic's LoRA adapts other weights and must be left alone.
    let mut t = lora_tensors(&pairs);
    let critic = lora_tensors(&make_pairs(5)[..1]);
    for x in &mut t {
        x.name = format!("generator_lora.{}", x.name);
    }
    for mut x in critic {
        x.name = format!("critic_lora.{}", x.name).replace("self_attn.q", "self_attn.k");
        t.push(x);
    }
    let lora = dir.join("lora.safetensors");
    write_lora(&lora, &t);
    let out = dir.join("o.safetensors");
    let r = convert_file(&base, &out, &opts(&lora, Some(ALPHA), None)).unwrap();
    assert_eq!(r.lora.as_ref().unwrap().group.as_deref(), Some("generator_lora"));
    assert!(r.notes.iter().any(|n| n.contains("ignored 2 tensors in `critic_lora`")), "{:?}", r.notes);
    check_merged(&base, &out, &pairs, 2.0, 1e-6);
}

/// LongLive's layout in a torch file: `{"generator_lora": {peft keys}, "critic_lora": ..., "step": 7}`
/// (tests/fixtures/make_pt_fixture.py), merged into the Self-Forcing fixture's EMA weights.
#[test]
fn longlive_style_torch_lora_merges() {
    let dir = scratch("lora-pt");
    let out = dir.join("o.safetensors");
    let o = ConvertOptions {
        heads: Some(2),
        text_len: Some(7),
        lora: Some(LoraOptions { path: fixtures().join("sf_tiny_lora.pt"), alpha: Some(6.0), scale: None }),
        ..Default::default()
    };
    let r = convert_file(fixtures().join("sf_tiny.pt"), &out, &o).unwrap();
    let l = r.lora.as_ref().unwrap();
    assert_eq!((l.merged, l.ranks.clone(), l.scales.clone()), (3, vec![3], vec![2.0]));
    assert_eq!(l.group.as_deref(), Some("generator_lora"));
    assert_eq!(r.dtype, DType::F32, "the fixture mixes f32, bf16 and f16: written as f32");

    let exp = TensorFile::open(fixtures().join("sf_tiny_expected.safetensors")).unwrap();
    let lexp = TensorFile::open(fixtures().join("sf_tiny_lora_expected.safetensors")).unwrap();
    let got = TensorFile::open(&out).unwrap();
    let adapted = ["blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.ffn.2"];
    for (name, info) in &got.tensors {
        let w = exp.f32(&format!("ema.{name}"), &info.shape).unwrap();
        let g = got.f32(name, &info.shape).unwrap();
        let Some(m) = adapted.iter().find(|m| format!("{m}.weight") == *name) else {
            // The critic's LoRA on self_attn.k is not merged: every other tensor is as stored.
            assert_same(name, &g, &w);
            continue;
        };
        let ab = |s: &str| lexp.f32_any(&format!("base_model.model.{m}.lora_{s}.weight")).unwrap();
        let want = reference(&w, &ab("A"), &ab("B"), info.shape[1], 2.0);
        let err = g.iter().zip(&want).map(|(&g, &x)| (g as f64 - x).abs()).fold(0f64, f64::max);
        let delta = g.iter().zip(&w).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        println!("{name}: max abs error {err:.3e}, max change {delta:.3}");
        assert!(delta > 0.5, "{name}: the LoRA barely changed the weight");
        assert!(err < 1e-5, "{name}: max abs error {err}");
    }
}

/// The error a conversion with the LoRA `tensors` gives; no output may be left behind.
fn lora_err(tensors: &[OutTensor]) -> String {
    let dir = scratch("lora-err");
    let base = write_base(&dir);
    let lora = dir.join("lora.safetensors");
    write_lora(&lora, tensors);
    let out = dir.join("o.safetensors");
    let e = convert_file(&base, &out, &opts(&lora, Some(ALPHA), None)).expect_err("the conversion fails").to_string();
    assert!(!out.exists(), "{e}: an output was written");
    e
}

#[test]
fn malformed_loras_give_errors_naming_the_tensor() {
    let pairs = make_pairs(6);
    let good = || lora_tensors(&pairs);
    let (a0, b0) = (pairs[0].a_key.as_str(), pairs[0].b_key.as_str());
    let has = |e: &str, parts: &[&str]| assert!(parts.iter().all(|p| e.contains(p)), "{e}\nshould contain {parts:?}");
    let without = |name: &str| good().into_iter().filter(|t| t.name != name).collect::<Vec<_>>();
    let replaced = |name: &str, shape: Vec<usize>| {
        let mut t = without(name);
        let n = shape.iter().product::<usize>();
        t.push(OutTensor::f32(name, shape, &random(9, n)));
        t
    };
    let with = |extra: Vec<OutTensor>| good().into_iter().chain(extra).collect::<Vec<_>>();
    let d = cfg().dim;

    has(&lora_err(&without(b0)), &[a0, "no matching lora_B"]);
    has(&lora_err(&without(&pairs[1].a_key)), &[&pairs[1].b_key, "no matching lora_A"]);
    let k = "base_model.model.blocks.5.self_attn.q.lora_A.weight";
    let extra = with(vec![
        OutTensor::f32(k, vec![RANK, d], &random(10, RANK * d)),
        OutTensor::f32(k.replace("lora_A", "lora_B"), vec![d, RANK], &random(11, RANK * d)),
    ]);
    has(&lora_err(&extra), &[k, "`blocks.5.self_attn.q.weight`", "not a weight of the checkpoint"]);
    let k = "base_model.model.patch_embedding.lora_A.weight";
    let conv = with(vec![
        OutTensor::f32(k, vec![RANK, 16], &random(12, RANK * 16)),
        OutTensor::f32(k.replace("lora_A", "lora_B"), vec![d, RANK], &random(13, RANK * d)),
    ]);
    has(&lora_err(&conv), &[k, "not a Linear weight"]);
    has(&lora_err(&replaced(a0, vec![RANK, d - 1])), &[a0, "255 inputs", "has 256"]);
    let ffn_b = &pairs[2].b_key;
    has(&lora_err(&replaced(ffn_b, vec![511, RANK])), &[ffn_b, "511 outputs", "has 512"]);
    has(&lora_err(&replaced(b0, vec![d, RANK - 1])), &[b0, "rank 3", "rank 4"]);
    has(&lora_err(&replaced(a0, vec![RANK, d, 1])), &[a0, "expected [rank, in]"]);
    let mut zero = without(a0).into_iter().filter(|t| t.name != b0).collect::<Vec<_>>();
    zero.push(OutTensor::f32(a0, vec![0, d], &[]));
    zero.push(OutTensor::f32(b0, vec![d, 0], &[]));
    has(&lora_err(&zero), &[a0, "rank 0"]);
    let seen = [OutTensor::f32("foo.weight", vec![2], &[0.5, 1.5]), OutTensor::f32("bar.bias", vec![1], &[2.5])];
    has(&lora_err(&seen), &["no LoRA found", "`foo.weight`", "`bar.bias`"]);
    let bias = "base_model.model.blocks.0.self_attn.q.bias";
    has(&lora_err(&with(vec![OutTensor::f32(bias, vec![d], &random(14, d))])), &[bias, "not a lora_A/lora_B weight"]);
    // The same weight under its native and its diffusers name.
    let dup = "transformer.blocks.0.attn1.to_q.lora_SIDE.weight";
    let twice = with(vec![
        OutTensor::f32(dup.replace("SIDE", "A"), vec![RANK, d], &random(15, RANK * d)),
        OutTensor::f32(dup.replace("SIDE", "B"), vec![d, RANK], &random(16, RANK * d)),
    ]);
    has(&lora_err(&twice), &["blocks.0.self_attn.q.weight", "adapted twice"]);
    let mut groups = good();
    for (i, t) in groups.iter_mut().enumerate() {
        t.name = format!("{}.{}", if i % 2 == 0 { "x" } else { "y" }, t.name);
    }
    has(&lora_err(&groups), &["several dicts", "`x`", "`y`"]);
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt-weights")).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn cli_convert_with_lora() {
    let dir = scratch("lora-cli");
    let base = write_base(&dir);
    let pairs = make_pairs(7);
    let lora = dir.join("lora.safetensors");
    write_lora(&lora, &lora_tensors(&pairs));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (out, lib_out) = (dir.join("cli.safetensors"), dir.join("lib.safetensors"));
    let common = ["convert", &s(&base), "-o", &s(&out), "--heads", "2", "--text-len", "16", "--lora", &s(&lora)];
    let (ok, err) = run(&[&common[..], &["--lora-alpha", "8"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("merged the LoRA") && err.contains("into 5 Linear weights: rank 4, scaling 2"), "{err}");
    check_merged(&base, &out, &pairs, 2.0, 1e-6);
    // The binary writes exactly what the library does.
    convert_file(&base, &lib_out, &opts(&lora, Some(ALPHA), None)).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&lib_out).unwrap(), "binary and library outputs differ");

    let (ok, err) = run(&[&common[..], &["--lora-scale", "2"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("scaling 2 (from --lora-scale)"), "{err}");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&lib_out).unwrap(), "--lora-scale 2 ≠ --lora-alpha 8");

    let broken = dir.join("broken.safetensors");
    write_lora(&broken, &lora_tensors(&pairs)[1..]);
    let (ok, err) = run(&["convert", &s(&base), "-o", &s(&out), "--heads", "2", "--lora", &s(&broken)]);
    assert!(!ok && err.starts_with("dfrt-weights: error:") && !err.contains("panicked"), "{err}");
    assert!(err.contains(&pairs[0].b_key) && err.contains("no matching lora_A"), "{err}");
    let (ok, err) = run(&["convert", &s(&base), "-o", &s(&out), "--lora-alpha", "8"]);
    assert!(!ok && err.contains("--lora"), "{err}");
    let (ok, err) = run(&[&common[..], &["--lora-alpha", "8", "--lora-scale", "2"]].concat());
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    // A LoRA passed as the checkpoint itself says what to do instead.
    let (ok, err) = run(&["convert", &s(&base), &s(&lora), "-o", &s(&out), "--heads", "2"]);
    assert!(!ok && err.contains("--lora"), "{err}");
}
