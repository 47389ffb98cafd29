//! Reading `torch.save` zip archives: the fixtures made by tests/fixtures/make_pt_fixture.py
//! (torch.save's exact layout, written with the Python standard library), and robustness
//! against truncated or garbled archives and pickles.

mod common;

use common::*;
use dfrt::checkpoint::{DType, TensorFile};
use dfrt::ModelConfig;
use dfrt_weights::pickle::{unpickle_flat, Leaf};
use dfrt_weights::{convert_file, ConvertOptions, Rng, Source};
use half::bf16;

fn fixture_config() -> ModelConfig {
    ModelConfig {
        dim: 12,
        ffn_dim: 20,
        freq_dim: 8,
        text_dim: 10,
        text_len: 7,
        in_dim: 4,
        out_dim: 4,
        num_heads: 2,
        num_layers: 2,
        patch_size: [1, 2, 2],
        eps: 1e-6,
        qk_norm: true,
        cross_attn_norm: true,
    }
}

fn opts() -> ConvertOptions {
    ConvertOptions { heads: Some(2), text_len: Some(7), ..Default::default() }
}

/// Checks every tensor of a converted file against `prefix.*` of the expected values.
fn check_against_expected(out: &std::path::Path, prefix: &str, round_bf16: bool) {
    let exp = TensorFile::open(fixtures().join("sf_tiny_expected.safetensors")).unwrap();
    let got = TensorFile::open(out).unwrap();
    assert_eq!(got.config().unwrap(), fixture_config());
    let mut n = 0;
    for (name, info) in &exp.tensors {
        let Some(native) = name.strip_prefix(prefix) else { continue };
        let mut want = exp.f32(name, &info.shape).unwrap();
        if round_bf16 {
            want.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
        }
        assert_same(native, &got.f32(native, &info.shape).unwrap(), &want);
        n += 1;
    }
    assert_eq!(n, got.tensors.len());
    assert_eq!(n, 12 + 2 * 27 + 3);
    assert_aligned(out);
}

#[test]
fn self_forcing_checkpoint_takes_ema_by_default() {
    let dir = scratch("pt-ema");
    let out = dir.join("ema.safetensors");
    let r = convert_file(fixtures().join("sf_tiny.pt"), &out, &opts()).unwrap();
    assert_eq!(r.group.as_deref(), Some("generator_ema"));
    // Mixed f32/bf16/f16 storages: written as f32, exactly.
    assert_eq!(r.dtype, DType::F32);
    assert!(r.notes.iter().any(|n| n.contains("not uniformly")), "{:?}", r.notes);
    // The `generator` tensors are dropped, the non-tensor entries are noted.
    assert_eq!(r.dropped.len(), 12 + 2 * 27 + 3);
    assert!(r.dropped.iter().all(|(n, _)| n.starts_with("generator.")));
    check_against_expected(&out, "ema.", false);
    // --ema says the same explicitly.
    let r = convert_file(fixtures().join("sf_tiny.pt"), &out, &ConvertOptions { ema: Some(true), ..opts() }).unwrap();
    assert_eq!(r.group.as_deref(), Some("generator_ema"));
}

#[test]
fn self_forcing_checkpoint_no_ema_and_bf16() {
    let dir = scratch("pt-gen");
    let out = dir.join("gen.safetensors");
    let r = convert_file(fixtures().join("sf_tiny.pt"), &out, &ConvertOptions { ema: Some(false), ..opts() }).unwrap();
    assert_eq!(r.group.as_deref(), Some("generator"));
    assert_eq!(r.dtype, DType::F32, "all-f32 source stays f32");
    check_against_expected(&out, "gen.", false);
    let out = dir.join("ema-bf16.safetensors");
    let r = convert_file(fixtures().join("sf_tiny.pt"), &out, &ConvertOptions { dtype: Some(DType::BF16), ..opts() })
        .unwrap();
    assert_eq!(r.dtype, DType::BF16);
    check_against_expected(&out, "ema.", true);
}

#[test]
fn protocol4_flat_state_dict_with_ddp_prefix() {
    let dir = scratch("pt-p4");
    let out = dir.join("p4.safetensors");
    let r = convert_file(fixtures().join("sf_tiny_p4.pt"), &out, &opts()).unwrap();
    assert_eq!(r.group, None);
    assert!(r.dropped.is_empty());
    check_against_expected(&out, "gen.", false);
}

#[test]
fn zip64_archive() {
    let dir = scratch("pt-zip64");
    let out = dir.join("z.safetensors");
    convert_file(fixtures().join("sf_tiny_zip64.pt"), &out, &opts()).unwrap();
    check_against_expected(&out, "gen.", false);
}

#[test]
fn torch_source_exposes_views_dtypes_and_other_entries() {
    let src = Source::open(fixtures().join("sf_tiny.pt")).unwrap();
    let get = |n: &str| src.get(n).unwrap_or_else(|| panic!("{n} missing"));
    let ema = "generator_ema.model._fsdp_wrapped_module.";
    assert_eq!(get(&format!("{ema}blocks.1._fsdp_wrapped_module.ffn.0.weight")).dtype, Some(DType::BF16));
    assert_eq!(get(&format!("{ema}head.modulation")).dtype, Some(DType::F16));
    assert_eq!(get(&format!("{ema}head.modulation")).shape, vec![1, 2, 12]);
    assert_eq!(get("generator.model.patch_embedding.weight").shape, vec![12, 4, 1, 2, 2]);
    let others: std::collections::BTreeMap<_, _> = src.others.iter().cloned().collect();
    assert_eq!(others["step"], "int 600");
    assert_eq!(others["config.name"], "str \"self_forcing_dmd\"");
    assert_eq!(others["config.flags.0"], "bool true");
    assert_eq!(others["config.flags.2"], "None");
    assert_eq!(others["config.pair.1"], "float 2.5");
    assert_eq!(others["config.lr"], "float 0.000002");
    // The inspect text shows both groups and the non-tensor entries.
    let text = dfrt_weights::inspect(fixtures().join("sf_tiny.pt"), true, false).unwrap();
    assert!(text.contains("torch zip") && text.contains("step: int 600") && text.contains("inferred"), "{text}");
}

/// Every prefix of a valid archive and many garbled copies fail with an error, never a panic.
#[test]
fn truncated_and_garbled_archives_are_errors() {
    let dir = scratch("pt-fuzz");
    let good = std::fs::read(fixtures().join("sf_tiny.pt")).unwrap();
    let p = dir.join("bad.pt");
    let mut lens: Vec<usize> = (0..good.len()).step_by(997).collect();
    lens.extend([1, 3, 4, 22, good.len() - 22, good.len() - 1]);
    for len in lens {
        std::fs::write(&p, &good[..len]).unwrap();
        let e = convert_file(&p, dir.join("o.safetensors"), &opts()).expect_err("truncated file must fail").to_string();
        assert!(e.contains("bad.pt"), "{len} bytes: error does not name the file: {e}");
    }
    let mut rng = Rng::new(5);
    let mut ok = 0;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let i = (rng.next_u64() % b.len() as u64) as usize;
            b[i] ^= 1 << (rng.next_u64() % 8);
        }
        std::fs::write(&p, &b).unwrap();
        // A flip in tensor data is undetectable and converts; anything else must be an error.
        if convert_file(&p, dir.join("o.safetensors"), &opts()).is_ok() {
            ok += 1;
        }
    }
    assert!(ok < 300, "garbling never caused an error");

    // A zip that is not a torch archive, and a legacy (pre-zip) torch pickle.
    std::fs::write(&p, &good[..4]).unwrap();
    let e = convert_file(&p, dir.join("o.safetensors"), &opts()).unwrap_err().to_string();
    assert!(e.contains("zip"), "{e}");
    std::fs::write(&p, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let e = convert_file(&p, dir.join("o.safetensors"), &opts()).unwrap_err().to_string();
    assert!(e.contains("legacy"), "{e}");
}

/// Pickles written by hand, opcode by opcode.
#[test]
fn unpickler_reads_state_dict_opcodes_and_rejects_garbage() {
    // {'a': OrderedDict(w=tensor view), 'n': [1, -2, 3.5, None, True], 's': 'x'} with memo reuse.
    let mut p: Vec<u8> = vec![0x80, 2, b'}', b'q', 0, b'('];
    let s = |p: &mut Vec<u8>, t: &str| {
        p.push(b'X');
        p.extend((t.len() as u32).to_le_bytes());
        p.extend(t.as_bytes());
    };
    s(&mut p, "a");
    p.extend(b"ccollections\nOrderedDict\nq\x01)R");
    p.extend(b"(");
    s(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    s(&mut p, "storage");
    p.extend(b"ctorch\nBFloat16Storage\n");
    s(&mut p, "7");
    s(&mut p, "cpu");
    p.extend(b"M\x2c\x01tQ"); // numel 300 -> BINPERSID
    p.extend(b"K\x05"); // offset 5
    p.extend(b"K\x03K\x04\x86"); // size (3, 4)
    p.extend(b"K\x01K\x03\x86"); // stride (1, 3): transposed
    p.extend(b"\x89h\x01)Rt"); // requires_grad False, OrderedDict() via BINGET 1
    p.extend(b"R"); // rebuild
    p.extend(b"u"); // SETITEMS into the OrderedDict
    p.extend(b"}b"); // BUILD with an empty state
    s(&mut p, "n");
    p.extend(b"](K\x01J\xfe\xff\xff\xffG\x40\x0c\x00\x00\x00\x00\x00\x00N\x88e");
    s(&mut p, "s");
    p.extend(b"\x8c\x01x");
    p.extend(b"u.");
    let flat = unpickle_flat(&p).unwrap();
    let names: Vec<&str> = flat.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a.w", "n.0", "n.1", "n.2", "n.3", "n.4", "s"]);
    match &flat[0].1 {
        Leaf::Tensor(t) => {
            assert_eq!(t.storage.kind, "BFloat16Storage");
            assert_eq!(t.storage.key, "7");
            assert_eq!(t.storage.numel, 300);
            assert_eq!((t.offset, t.shape.clone(), t.stride.clone()), (5, vec![3, 4], vec![1, 3]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(flat[2].1, Leaf::Other("int -2".into()));
    assert_eq!(flat[3].1, Leaf::Other("float 3.5".into()));
    assert_eq!(flat[6].1, Leaf::Other("str \"x\"".into()));

    // Every truncation is an error.
    for n in 0..p.len() - 1 {
        assert!(unpickle_flat(&p[..n]).is_err(), "prefix of {n} bytes parsed");
    }
    // Unsupported content says what it is.
    let e = unpickle_flat(b"\x80\x02I42\n.").unwrap_err();
    assert!(e.contains("unsupported opcode 0x49"), "{e}");
    let e = unpickle_flat(b"\x80\x02ctorch._utils\n_rebuild_qtensor\n)R.").unwrap_err();
    assert!(e.contains("_rebuild_qtensor"), "{e}");
    let e = unpickle_flat(b"\x80\x02h\x07.").unwrap_err();
    assert!(e.contains("memo key 7"), "{e}");
    let e = unpickle_flat(b"\x80\x02K\x00K\x01K\x02s.").unwrap_err();
    assert!(e.contains("not a dict"), "{e}");
    // A self-referencing list is cut off, not followed forever.
    let e = unpickle_flat(b"\x80\x02]q\x00h\x00a.").unwrap_err();
    assert!(e.contains("nesting"), "{e}");
    // Deeply nested tuples are refused (dropping them would overflow the stack).
    let mut deep = vec![0x80, 2, b'N'];
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    let e = unpickle_flat(&deep).unwrap_err();
    assert!(e.contains("nested deeper"), "{e}");
    // Random bytes never panic.
    let mut rng = Rng::new(9);
    for _ in 0..2000 {
        let len = (rng.next_u64() % 64) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if rng.next_u64() & 1 == 0 {
            b.splice(0..0, [0x80, 2]);
        }
        let _ = unpickle_flat(&b);
    }
    // Garbled copies of the good pickle never panic either.
    for _ in 0..2000 {
        let mut b = p.clone();
        let i = (rng.next_u64() % b.len() as u64) as usize;
        b[i] = rng.next_u64() as u8;
        let _ = unpickle_flat(&b);
    }
}
