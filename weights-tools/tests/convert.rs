//! Conversion of safetensors state dicts: the golden weights, diffusers names, config
//! inference, and every error a user can cause.

mod common;

use std::collections::BTreeMap;

use common::*;
use dfrt::checkpoint::{write_safetensors, DType, OutTensor, TensorFile};
use dfrt::ModelConfig;
use dfrt_weights::{convert_file, diffusers_to_native, expected_tensors, native_name, synth_tensors, ConvertOptions};
use half::bf16;

fn opts_text_len(n: usize) -> ConvertOptions {
    ConvertOptions { text_len: Some(n), ..Default::default() }
}

#[test]
fn golden_weights_convert_exactly() {
    let dir = scratch("golden");
    for case in golden_cases() {
        let want_cfg = manifest_config(&case);
        let src_path = case.join("weights.safetensors");
        let out = dir.join(format!("{}.safetensors", case.file_name().unwrap().to_string_lossy()));
        // Head count is not in any tensor's shape: the converter assumes head dim 128 (every
        // released Wan model) unless --heads is given, so cases with other head widths
        // (df-switch: 2 heads of 64) pass it as a user would.
        let mut opts = opts_text_len(want_cfg.text_len);
        if want_cfg.dim / want_cfg.num_heads != 128 {
            opts.heads = Some(want_cfg.num_heads);
        }
        let r = convert_file(&src_path, &out, &opts).unwrap();
        assert_eq!(r.config, want_cfg, "{}: inferred config", case.display());
        let src = TensorFile::open(&src_path).unwrap();
        let dst = TensorFile::open(&out).unwrap();
        assert_eq!(dst.config().unwrap(), want_cfg);
        assert_eq!(dst.tensors.len(), src.tensors.len(), "{}: tensor count", case.display());
        assert_eq!(dst.tensors.len(), expected_tensors(&want_cfg).len());
        for (name, info) in &src.tensors {
            let o = dst.info(name).unwrap();
            // The source dtype (f32, or bf16 for tiny-full-bf16) is kept: bytes are identical.
            assert_eq!(o.dtype, info.dtype, "{name}");
            assert_eq!(o.shape, info.shape, "{name}");
            assert!(dst.bytes(name).unwrap() == src.bytes(name).unwrap(), "{}: {name} differs", case.display());
        }
        assert_aligned(&out);
    }
}

#[test]
fn golden_weights_to_bf16_round_to_nearest() {
    let dir = scratch("golden-bf16");
    let case = golden_dir().join("tiny-full");
    let src_path = case.join("weights.safetensors");
    let out = dir.join("bf16.safetensors");
    let opts = ConvertOptions { dtype: Some(DType::BF16), ..opts_text_len(16) };
    let r = convert_file(&src_path, &out, &opts).unwrap();
    assert_eq!(r.dtype, DType::BF16);
    let src = TensorFile::open(&src_path).unwrap();
    let dst = TensorFile::open(&out).unwrap();
    for (name, info) in &src.tensors {
        assert_eq!(dst.info(name).unwrap().dtype, DType::BF16);
        let a = src.f32(name, &info.shape).unwrap();
        let b = dst.f32(name, &info.shape).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            // Round to nearest even: exactly what bf16::from_f32 gives, within half an ulp (2^-9 relative).
            assert_eq!(*y, bf16::from_f32(*x).to_f32(), "{name}[{i}]: {x} -> {y}");
            assert!((x - y).abs() <= x.abs() * (1.0 / 256.0), "{name}[{i}]: {x} -> {y}");
        }
    }
    assert_aligned(&out);
}

/// Diffusers name of a native key, written out by hand (independently of the converter).
fn to_diffusers(native: &str) -> String {
    let fixed = [
        ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
        ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
        ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
        ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
        ("time_projection.1.", "condition_embedder.time_proj."),
        ("head.head.", "proj_out."),
    ];
    if native == "head.modulation" {
        return "scale_shift_table".into();
    }
    for (n, d) in fixed {
        if let Some(r) = native.strip_prefix(n) {
            return format!("{d}{r}");
        }
    }
    native
        .replace(".self_attn.q.", ".attn1.to_q.")
        .replace(".self_attn.k.", ".attn1.to_k.")
        .replace(".self_attn.v.", ".attn1.to_v.")
        .replace(".self_attn.o.", ".attn1.to_out.0.")
        .replace(".self_attn.norm_", ".attn1.norm_")
        .replace(".cross_attn.q.", ".attn2.to_q.")
        .replace(".cross_attn.k.", ".attn2.to_k.")
        .replace(".cross_attn.v.", ".attn2.to_v.")
        .replace(".cross_attn.o.", ".attn2.to_out.0.")
        .replace(".cross_attn.norm_", ".attn2.norm_")
        .replace(".norm3.", ".norm2.")
        .replace(".ffn.0.", ".ffn.net.0.proj.")
        .replace(".ffn.2.", ".ffn.net.2.")
        .replace(".modulation", ".scale_shift_table")
}

#[test]
fn diffusers_names_map_to_native() {
    assert_eq!(diffusers_to_native("blocks.3.attn1.to_out.0.weight").unwrap(), "blocks.3.self_attn.o.weight");
    assert_eq!(diffusers_to_native("blocks.0.attn2.norm_k.weight").unwrap(), "blocks.0.cross_attn.norm_k.weight");
    assert_eq!(diffusers_to_native("blocks.7.norm2.bias").unwrap(), "blocks.7.norm3.bias");
    assert_eq!(diffusers_to_native("blocks.1.ffn.net.0.proj.bias").unwrap(), "blocks.1.ffn.0.bias");
    assert_eq!(diffusers_to_native("blocks.1.scale_shift_table").unwrap(), "blocks.1.modulation");
    assert_eq!(diffusers_to_native("scale_shift_table").unwrap(), "head.modulation");
    assert_eq!(diffusers_to_native("condition_embedder.time_proj.weight").unwrap(), "time_projection.1.weight");
    assert_eq!(diffusers_to_native("blocks.0.attn2.add_k_proj.weight"), None, "i2v keys are not mapped");
    assert_eq!(diffusers_to_native("blocks.0.self_attn.q.weight"), None, "native keys are left alone");
    assert_eq!(
        native_name("model._fsdp_wrapped_module.blocks.0._fsdp_wrapped_module.attn1.to_q.weight"),
        "blocks.0.self_attn.q.weight"
    );
    assert_eq!(native_name("module.model.patch_embedding.bias"), "patch_embedding.bias");

    // A whole diffusers-named file (golden weights renamed, in shuffled order, plus a VAE
    // tensor that is not part of the DiT) converts to the golden native file.
    let dir = scratch("diffusers");
    let case = golden_dir().join("tiny-full");
    let src = TensorFile::open(case.join("weights.safetensors")).unwrap();
    let mut out: Vec<OutTensor> = src
        .tensors
        .iter()
        .map(|(n, i)| OutTensor::f32(to_diffusers(n), i.shape.clone(), &src.f32(n, &i.shape).unwrap()))
        .collect();
    out.reverse();
    out.push(OutTensor::f32("vae.decoder.conv.weight", vec![3], &[0.5, -1.0, 2.0]));
    let renamed = dir.join("diffusers.safetensors");
    write_safetensors(&renamed, &out, &BTreeMap::new()).unwrap();
    let conv = dir.join("native.safetensors");
    let r = convert_file(&renamed, &conv, &opts_text_len(16)).unwrap();
    assert_eq!(r.renamed, src.tensors.len() - 2, "all but patch_embedding.{{weight,bias}} are renamed");
    assert_eq!(r.dropped.len(), 1, "{:?}", r.dropped);
    assert_eq!(r.dropped[0].0, "vae.decoder.conv.weight");
    assert_eq!(r.config, manifest_config(&case));
    let dst = TensorFile::open(&conv).unwrap();
    for (n, i) in &src.tensors {
        assert_same(n, &dst.f32(n, &i.shape).unwrap(), &src.f32(n, &i.shape).unwrap());
    }
}

/// Writes `cfg`'s synthetic weights as a raw state dict (no config), optionally edited.
fn raw_state_dict(path: &std::path::Path, cfg: &ModelConfig, edit: impl FnOnce(&mut Vec<OutTensor>)) {
    let mut t: Vec<OutTensor> = synth_tensors(cfg, 11).iter().map(|t| t.to_out(DType::F32).unwrap()).collect();
    edit(&mut t);
    write_safetensors(path, &t, &BTreeMap::new()).unwrap();
}

#[test]
fn config_is_inferred_from_shapes() {
    let dir = scratch("infer");
    // `small` has head_dim 64: the head count must come from the preset, not dim/128.
    let mut want = ModelConfig::preset("small").unwrap();
    want.num_layers = 3;
    want.qk_norm = false; // no norm_q/norm_k tensors
    raw_state_dict(&dir.join("a.safetensors"), &want, |_| {});
    let r = convert_file(dir.join("a.safetensors"), dir.join("b.safetensors"), &ConvertOptions::default()).unwrap();
    assert_eq!(r.config, ModelConfig { text_len: 512, ..want.clone() }, "text_len defaults to 512");
    assert!(r.notes.iter().any(|n| n.contains("text_len 512")), "{:?}", r.notes);
    let r = convert_file(
        dir.join("a.safetensors"),
        dir.join("b.safetensors"),
        &ConvertOptions { heads: Some(4), text_len: Some(32), ..Default::default() },
    )
    .unwrap();
    assert_eq!(r.config, ModelConfig { num_heads: 4, ..want.clone() });
    // A width with no preset: dim/128 heads; non-square patches and other in/out channels.
    let odd = ModelConfig {
        dim: 384,
        ffn_dim: 1000,
        freq_dim: 64,
        text_dim: 48,
        in_dim: 36,
        out_dim: 8,
        patch_size: [1, 1, 2],
        num_layers: 1,
        cross_attn_norm: false,
        ..want
    };
    raw_state_dict(&dir.join("c.safetensors"), &odd, |_| {});
    let r = convert_file(dir.join("c.safetensors"), dir.join("d.safetensors"), &opts_text_len(32)).unwrap();
    assert_eq!(r.config, ModelConfig { num_heads: 3, ..odd });
    assert_eq!(TensorFile::open(dir.join("d.safetensors")).unwrap().config().unwrap().num_heads, 3);
}

/// Wan2.1-T2V-14B (and Krea's RealTime-14B, the same network): dim 5120, ffn 13824, 40 heads
/// of 128, 40 layers, detected from the shapes alone (no tensor data: 14B weights are 28 GB),
/// and likewise a cut of it to 2 blocks (the shape-faithful model the benches and sim use).
#[test]
fn the_14b_config_is_detected_from_its_shapes() {
    let want = ModelConfig::preset("wan-14b").unwrap();
    assert_eq!((want.dim, want.ffn_dim, want.num_heads, want.head_dim(), want.num_layers), (5120, 13824, 40, 128, 40));
    for layers in [40, 2] {
        let cfg = ModelConfig { num_layers: layers, ..want.clone() };
        let shapes: BTreeMap<String, Vec<usize>> = expected_tensors(&cfg).into_iter().collect();
        let got = dfrt_weights::convert::infer_config(&shapes, None, None).unwrap();
        assert_eq!(got, cfg, "{layers} layers");
        // 40 heads come from the 14B preset of that width (5120 / 128 is 40 too).
        assert_eq!(got.num_heads, 40);
    }
    // The 1.3B width next to it: 12 heads.
    let small = ModelConfig::preset("wan-1.3b").unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = expected_tensors(&small).into_iter().collect();
    assert_eq!(dfrt_weights::convert::infer_config(&shapes, None, None).unwrap().num_heads, 12);
}

fn convert_err(path: &std::path::Path, opts: &ConvertOptions) -> String {
    let out = path.with_extension("out.safetensors");
    let e = convert_file(path, &out, opts).expect_err("conversion must fail").to_string();
    assert!(!out.exists(), "no output is left behind on error");
    e
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = scratch("errors");
    let cfg = ModelConfig::preset("tiny").unwrap();
    let o = opts_text_len(16);

    let p = dir.join("missing.safetensors");
    raw_state_dict(&p, &cfg, |t| t.retain(|t| t.name != "blocks.1.ffn.2.bias"));
    let e = convert_err(&p, &o);
    assert!(e.contains("blocks.1.ffn.2.bias") && e.contains("missing"), "{e}");

    let p = dir.join("shape.safetensors");
    raw_state_dict(&p, &cfg, |t| {
        let i = t.iter().position(|t| t.name == "blocks.0.cross_attn.k.weight").unwrap();
        t[i] = OutTensor::f32("blocks.0.cross_attn.k.weight", vec![256, 255], &vec![0.5; 256 * 255]);
    });
    let e = convert_err(&p, &o);
    assert!(e.contains("blocks.0.cross_attn.k.weight") && e.contains("[256, 255]") && e.contains("[256, 256]"), "{e}");

    let p = dir.join("nopatch.safetensors");
    raw_state_dict(&p, &cfg, |t| t.retain(|t| t.name != "patch_embedding.weight"));
    let e = convert_err(&p, &o);
    assert!(e.contains("patch_embedding.weight") && e.contains("missing"), "{e}");

    let p = dir.join("heads.safetensors");
    raw_state_dict(&p, &cfg, |_| {});
    let e = convert_err(&p, &ConvertOptions { heads: Some(3), ..o.clone() });
    assert!(e.contains("not divisible by num_heads 3"), "{e}");

    // An i2v-style extra attention weight is not silently dropped.
    let p = dir.join("i2v.safetensors");
    raw_state_dict(&p, &cfg, |t| t.push(OutTensor::f32("blocks.0.cross_attn.k_img.weight", vec![2], &[1.0, 2.0])));
    let e = convert_err(&p, &o);
    assert!(e.contains("k_img") && e.contains("--drop-unknown"), "{e}");
    let r = convert_file(&p, dir.join("i2v-dropped.safetensors"), &ConvertOptions { drop_unknown: true, ..o.clone() })
        .unwrap();
    assert_eq!(r.dropped.len(), 1);

    let e = convert_err(&p, &ConvertOptions { ema: Some(true), drop_unknown: true, ..o.clone() });
    assert!(e.contains("no `generator_ema`"), "{e}");

    let p = dir.join("int.safetensors");
    raw_state_dict(&p, &cfg, |t| {
        let i = t.iter().position(|t| t.name == "head.head.bias").unwrap();
        t[i] = OutTensor::i64("head.head.bias", vec![64], &[1; 64]);
    });
    let e = convert_err(&p, &o);
    assert!(e.contains("head.head.bias") && e.contains("I64"), "{e}");

    // Truncated and non-safetensors files.
    let good = std::fs::read(golden_dir().join("tiny-full/weights.safetensors")).unwrap();
    for (i, len) in [0, 5, 100, good.len() / 2, good.len() - 1].into_iter().enumerate() {
        let p = dir.join(format!("trunc{i}.safetensors"));
        std::fs::write(&p, &good[..len]).unwrap();
        let e = convert_err(&p, &o);
        assert!(e.contains("too short") || e.contains("not a valid safetensors"), "{len} bytes: {e}");
    }
    let p = dir.join("magic.bin");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00 this is not a weight file at all").unwrap();
    let e = convert_err(&p, &o);
    assert!(e.contains("not a valid safetensors"), "{e}");
    let e = convert_err(&dir.join("does-not-exist.pt"), &o);
    assert!(e.contains("does-not-exist.pt"), "{e}");
}

#[test]
fn sharded_checkpoints_convert_like_one_file() {
    let dir = scratch("shards");
    let case = golden_dir().join("tiny-full");
    let src = TensorFile::open(case.join("weights.safetensors")).unwrap();
    // Two shards with `model.` prefixes, and the index that names them.
    let mut shards: [Vec<OutTensor>; 2] = [Vec::new(), Vec::new()];
    let mut map = serde_json::Map::new();
    for (k, (n, i)) in src.tensors.iter().enumerate() {
        let name = format!("model.{n}");
        let file = format!("part-{}.safetensors", k % 2);
        map.insert(name.clone(), serde_json::Value::String(file));
        shards[k % 2].push(OutTensor::f32(name, i.shape.clone(), &src.f32(n, &i.shape).unwrap()));
    }
    for (k, s) in shards.iter().enumerate() {
        write_safetensors(dir.join(format!("part-{k}.safetensors")), s, &BTreeMap::new()).unwrap();
    }
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
    let single = dir.join("single.safetensors");
    convert_file(case.join("weights.safetensors"), &single, &opts_text_len(16)).unwrap();
    let from_index = dir.join("index.safetensors");
    dfrt_weights::convert_files(std::slice::from_ref(&index), &from_index, &opts_text_len(16)).unwrap();
    assert!(std::fs::read(&single).unwrap() == std::fs::read(&from_index).unwrap(), "index conversion differs");
    let from_parts = dir.join("parts.safetensors");
    dfrt_weights::convert_files(
        &[dir.join("part-1.safetensors"), dir.join("part-0.safetensors")],
        &from_parts,
        &opts_text_len(16),
    )
    .unwrap();
    assert!(std::fs::read(&single).unwrap() == std::fs::read(&from_parts).unwrap(), "shard conversion differs");
    // One shard alone lacks tensors; the same shard twice has duplicates.
    let e = convert_file(dir.join("part-0.safetensors"), dir.join("x.safetensors"), &opts_text_len(16))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    let p0 = dir.join("part-0.safetensors");
    let p0b = dir.join("part-0-copy.safetensors");
    std::fs::copy(&p0, &p0b).unwrap();
    let e =
        dfrt_weights::convert_files(&[p0, p0b], dir.join("x.safetensors"), &opts_text_len(16)).unwrap_err().to_string();
    assert!(e.contains("map to it"), "{e}");
}

/// A raw safetensors file whose header length starts with bytes that look like a pickle
/// (0x80 0x02) is still read as safetensors.
#[test]
fn safetensors_header_length_is_not_mistaken_for_a_pickle() {
    let dir = scratch("hdr");
    let mut header = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    header.resize(0x280, b' ');
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(&b[..2], &[0x80, 0x02]);
    b.extend(&header);
    b.extend(1.5f32.to_le_bytes());
    b.extend((-2.0f32).to_le_bytes());
    let p = dir.join("x.safetensors");
    std::fs::write(&p, &b).unwrap();
    let src = dfrt_weights::Source::open(&p).unwrap();
    assert_eq!(src.f32(src.get("x").unwrap()).unwrap(), vec![1.5, -2.0]);
}
