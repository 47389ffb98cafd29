//! The text path against the official Wan2.1 code (`../shared/golden/t5-tiny`): Wan's cleaning
//! and the umT5 tokenizer (ids and masks exact), the converter (.pth, Hugging Face names, zip64)
//! and the encoder on the CPU in f32 and bf16 (`context.*` and `p0.*` within 1e-5 relative L2
//! in f32), plus the bad-input paths.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dfrt::backend::cpu::CpuBackend;
use dfrt::backend::Precision;
use dfrt::checkpoint::{write_safetensors, OutTensor, TensorFile};
use dfrt::text::clean::{html_unescape, py_strip, whitespace_clean, Cleaned};
use dfrt::text::t5::{open_t5, rel_buckets};
use dfrt::text::{Residency, T5Encoder, TextEncoder, TextTokenizer};
use support::{assert_close, golden_dir};

/// f32 bound on contexts and per-layer states: the golden README's suggestion (the official
/// run is 4.3e-7 from float64; 1e-5 still catches an erf-for-tanh GELU, 1.8e-4).
const F32_TOL: f64 = 1e-5;

fn case() -> PathBuf {
    golden_dir().join("t5-tiny")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(case().join("manifest.json")).unwrap()).unwrap()
}

/// A scratch folder that removes itself.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dfrt-text-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn ints(f: &TensorFile, name: &str) -> Vec<i64> {
    f.i64_any(name).unwrap()
}

#[test]
fn t5_tiny_token_ids_and_masks_are_exact() {
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let tok = TextTokenizer::load(case().join("tokenizer"), text_len).unwrap();
    let out = TensorFile::open(case().join("outputs.safetensors")).unwrap();
    let prompts = m["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 11);
    for p in prompts {
        let i = p["index"].as_u64().unwrap();
        let raw = p["prompt"].as_str().unwrap();
        let t = tok.encode(raw).unwrap();
        assert_eq!(t.cleaned.text, p["cleaned"].as_str().unwrap(), "prompt {i} ({}): cleaned text", p["name"]);
        let ids: Vec<i64> = t.ids.iter().map(|&x| x as i64).collect();
        let mask: Vec<i64> = t.mask.iter().map(|&x| x as i64).collect();
        assert_eq!(ids, ints(&out, &format!("ids.{i}")), "prompt {i} ({}): ids", p["name"]);
        assert_eq!(mask, ints(&out, &format!("mask.{i}")), "prompt {i} ({}): mask", p["name"]);
        assert_eq!(t.len as u64, p["seq_len"].as_u64().unwrap(), "prompt {i}: seq_len");
        // Truncation keeps EOS (id 1) last.
        assert_eq!(t.ids[t.len - 1], 1, "prompt {i}: the last token is </s>");
        // No golden prompt needs an ftfy part this cleaner lacks.
        assert!(t.cleaned.notes.iter().all(|n| !n.may_differ()), "prompt {i}: {:?}", t.cleaned.notes);
        // A prompt ftfy leaves alone gets no ftfy note at all: ordinary prompts are unaffected.
        if !p["ftfy_changes_input"].as_bool().unwrap() {
            assert!(t.cleaned.notes.is_empty(), "prompt {i}: {:?}", t.cleaned.notes);
        } else {
            assert!(!t.cleaned.notes.is_empty(), "prompt {i}: ftfy changed it, so a reproduced step must have");
        }
    }
}

/// What ftfy contributes, made visible: cleaning without it (html.unescape twice plus the
/// whitespace rules) gives other ids exactly where the official run says it would (curly
/// quotes, mojibake), and mixed-line mojibake this cleaner does not repair is reported.
#[test]
fn cleaning_without_ftfy_differs_exactly_where_the_golden_says() {
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let tok = TextTokenizer::load(case().join("tokenizer"), text_len).unwrap();
    let mut differing = Vec::new();
    for p in m["prompts"].as_array().unwrap() {
        let raw = p["prompt"].as_str().unwrap();
        let no_ftfy = whitespace_clean(py_strip(&html_unescape(&html_unescape(raw))));
        assert_eq!(no_ftfy, p["cleaned_without_ftfy"].as_str().unwrap(), "prompt {}", p["index"]);
        let with = tok.encode(raw).unwrap();
        let without = tok.encode_cleaned(Cleaned { text: no_ftfy.clone(), notes: Vec::new() }).unwrap();
        let same = with.ids == without.ids;
        if p["without_ftfy_same_ids"].as_bool().unwrap() {
            assert!(same, "prompt {}: ids differ without ftfy, the golden says they do not", p["index"]);
        }
        if !same {
            differing.push(p["name"].as_str().unwrap().to_string());
        }
    }
    let want: Vec<String> = m["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["without_ftfy_same_ids"].as_bool().unwrap())
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(differing, want);
    assert!(!want.is_empty());
    // Mojibake mixed with correct text on one line: ftfy 6.3.1 gives "café and café"; this
    // cleaner keeps the text and says so.
    let t = tok.encode("café and cafÃ©").unwrap();
    assert_eq!(t.cleaned.text, "café and cafÃ©");
    assert!(
        t.cleaned.notes.iter().any(|n| n.may_differ() && n.to_string().contains("mojibake")),
        "{:?}",
        t.cleaned.notes
    );
}

fn convert(src: &Path, dst: &Path, text_len: usize, dtype: Option<dfrt::checkpoint::DType>) {
    dfrt_weights::convert_t5(src, dst, &dfrt_weights::T5Options { text_len: Some(text_len), dtype }).unwrap();
}

fn golden_ids(out: &TensorFile, i: usize) -> (Vec<u32>, Vec<u8>) {
    let ids = ints(out, &format!("ids.{i}")).iter().map(|&x| x as u32).collect();
    let mask = ints(out, &format!("mask.{i}")).iter().map(|&x| x as u8).collect();
    (ids, mask)
}

#[test]
fn t5_tiny_encoder_f32_matches_official() {
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let dir = Scratch::new("f32");
    let ckpt = dir.0.join("t5.safetensors");
    convert(&case().join("weights.pth"), &ckpt, text_len, None);
    let out = TensorFile::open(case().join("outputs.safetensors")).unwrap();
    let be = CpuBackend::new(Precision::F32);
    for residency in [Residency::Resident, Residency::Streamed] {
        let enc = T5Encoder::load(&be, &ckpt, residency).unwrap();
        assert_eq!(
            rel_buckets(text_len, text_len, 32, 128).iter().map(|&b| b as i64).collect::<Vec<_>>(),
            ints(&out, "rel_buckets")
        );
        for p in m["prompts"].as_array().unwrap() {
            let i = p["index"].as_u64().unwrap() as usize;
            let (ids, mask) = golden_ids(&out, i);
            let mut taps = BTreeMap::new();
            let got = enc.encode(&be, &ids, &mask, Some(&mut taps)).unwrap();
            let want = out.f32_any(&format!("context.{i}")).unwrap();
            assert_close(&format!("context.{i}"), &got, &want, F32_TOL);
            // Padded rows are exactly zero, the others are not.
            let len = mask.iter().filter(|&&x| x == 1).count();
            let dim = enc.cfg.dim;
            assert!(got[len * dim..].iter().all(|&x| x == 0.0), "prompt {i}: padded rows not zero");
            assert!(
                got[..len * dim].chunks(dim).all(|r| r.iter().any(|&x| x != 0.0)),
                "prompt {i}: a token row is zero"
            );
            if i == 0 {
                for (tap, name) in [
                    ("embed", "p0.embed"),
                    ("hidden.0", "p0.hidden.0"),
                    ("hidden.1", "p0.hidden.1"),
                    ("final_norm", "p0.final_norm"),
                    ("pos_bias.0", "p0.pos_bias.0"),
                ] {
                    assert_close(name, &taps[tap], &out.f32_any(name).unwrap(), F32_TOL);
                }
            }
        }
    }
}

/// bf16 storage (weights and every op result rounded as the official bf16 run rounds)
/// against the f32 golden: the official bf16 text encoder is not in the golden set, so the
/// bound is the project's bf16-vs-f32 one, 2e-2. Every weight is rounded to bf16 (2⁻⁹
/// relative) and so is every op's result (~10 per block); the relative bias enters the
/// logits unscaled, so logit errors reach the softmax at full size. Measured: 0.6–1.4 %
/// over the 11 prompts (the official bf16 DiT run is 0.9 % from its f32 run).
#[test]
fn t5_tiny_encoder_bf16_is_within_the_bf16_bound() {
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let dir = Scratch::new("bf16");
    let ckpt = dir.0.join("t5.safetensors");
    convert(&case().join("weights.pth"), &ckpt, text_len, Some(dfrt::checkpoint::DType::BF16));
    let out = TensorFile::open(case().join("outputs.safetensors")).unwrap();
    let be = CpuBackend::new(Precision::Bf16);
    let enc = T5Encoder::load(&be, &ckpt, Residency::Resident).unwrap();
    for p in m["prompts"].as_array().unwrap() {
        let i = p["index"].as_u64().unwrap() as usize;
        let (ids, mask) = golden_ids(&out, i);
        let got = enc.encode(&be, &ids, &mask, None).unwrap();
        assert!(got.iter().all(|x| x.to_bits() & 0xFFFF == 0), "bf16 storage holds bf16 values");
        assert_close(&format!("bf16 context.{i}"), &got, &out.f32_any(&format!("context.{i}")).unwrap(), 2e-2);
    }
}

/// The Hugging Face `UMT5EncoderModel` names and a zip64 `.pth` convert to the same checkpoint
/// bytes as Wan's `.pth`.
#[test]
fn hf_names_and_zip64_pth_convert_to_the_same_checkpoint() {
    let dir = Scratch::new("names");
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let from_pth = dir.0.join("pth.safetensors");
    convert(&case().join("weights.pth"), &from_pth, text_len, None);
    // The same state dict under HF names (and the tied `shared.weight` copy HF checkpoints have).
    let f = TensorFile::open(case().join("weights.safetensors")).unwrap();
    let mut hf = Vec::new();
    for (name, info) in &f.tensors {
        let v = f.f32_any(name).unwrap();
        let hn = wan_to_hf(name);
        if hn == "encoder.embed_tokens.weight" {
            hf.push(OutTensor::f32("shared.weight", info.shape.clone(), &v));
        }
        hf.push(OutTensor::f32(hn, info.shape.clone(), &v));
    }
    let hf_path = dir.0.join("hf.safetensors");
    write_safetensors(&hf_path, &hf, &BTreeMap::new()).unwrap();
    let from_hf = dir.0.join("hf-conv.safetensors");
    let r = dfrt_weights::convert_t5(
        &hf_path,
        &from_hf,
        &dfrt_weights::T5Options { text_len: Some(text_len), dtype: None },
    )
    .unwrap();
    assert!(r.from_hf);
    assert_eq!(r.dropped.len(), 1, "{:?}", r.dropped);
    // A zip64 repack of the .pth (every size and offset in the zip64 extra fields).
    let zip64 = dir.0.join("zip64.pth");
    std::fs::write(&zip64, repack_zip64(&std::fs::read(case().join("weights.pth")).unwrap())).unwrap();
    let from_zip64 = dir.0.join("zip64.safetensors");
    convert(&zip64, &from_zip64, text_len, None);
    let a = TensorFile::open(&from_pth).unwrap();
    for other in [&from_hf, &from_zip64] {
        let b = TensorFile::open(other).unwrap();
        assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
        for n in a.tensors.keys() {
            assert_eq!(a.bytes(n).unwrap(), b.bytes(n).unwrap(), "{n} differs in {}", other.display());
        }
        assert_eq!(open_t5(other).unwrap().1, open_t5(&from_pth).unwrap().1);
    }
}

fn wan_to_hf(n: &str) -> String {
    match n {
        "token_embedding.weight" => return "encoder.embed_tokens.weight".into(),
        "norm.weight" => return "encoder.final_layer_norm.weight".into(),
        _ => {}
    }
    let rest = n.strip_prefix("blocks.").unwrap();
    let (i, tail) = rest.split_once('.').unwrap();
    let t = match tail {
        "norm1.weight" => "layer.0.layer_norm.weight".to_string(),
        "norm2.weight" => "layer.1.layer_norm.weight".to_string(),
        "pos_embedding.embedding.weight" => "layer.0.SelfAttention.relative_attention_bias.weight".to_string(),
        "ffn.gate.0.weight" => "layer.1.DenseReluDense.wi_0.weight".to_string(),
        "ffn.fc1.weight" => "layer.1.DenseReluDense.wi_1.weight".to_string(),
        "ffn.fc2.weight" => "layer.1.DenseReluDense.wo.weight".to_string(),
        t => format!("layer.0.SelfAttention.{}", t.strip_prefix("attn.").unwrap()),
    };
    format!("encoder.block.{i}.{t}")
}

/// Rewrites a zip archive as zip64: every size and offset goes in a zip64 extra field (the
/// 32-bit fields hold 0xFFFFFFFF), with a zip64 end record and locator, as an archive over
/// 4 GiB has.
fn repack_zip64(src: &[u8]) -> Vec<u8> {
    let entries = dfrt_weights::zip::entries(src).unwrap();
    let mut out = Vec::new();
    let mut central = Vec::new();
    let (u16le, u32le, u64le) = (
        |v: &mut Vec<u8>, x: u16| v.extend(x.to_le_bytes()),
        |v: &mut Vec<u8>, x: u32| v.extend(x.to_le_bytes()),
        |v: &mut Vec<u8>, x: u64| v.extend(x.to_le_bytes()),
    );
    for e in &entries {
        let data = &src[e.start..e.end];
        let off = out.len() as u64;
        let crc = dfrt_weights::zip::crc32(data);
        u32le(&mut out, 0x0403_4b50);
        for x in [45u16, 0, 0, 0, 0] {
            u16le(&mut out, x);
        }
        u32le(&mut out, crc);
        u32le(&mut out, u32::MAX);
        u32le(&mut out, u32::MAX);
        u16le(&mut out, e.name.len() as u16);
        u16le(&mut out, 20);
        out.extend(e.name.as_bytes());
        u16le(&mut out, 1);
        u16le(&mut out, 16);
        u64le(&mut out, data.len() as u64);
        u64le(&mut out, data.len() as u64);
        out.extend(data);
        u32le(&mut central, 0x0201_4b50);
        for x in [45u16, 45, 0, 0, 0, 0] {
            u16le(&mut central, x);
        }
        u32le(&mut central, crc);
        u32le(&mut central, u32::MAX);
        u32le(&mut central, u32::MAX);
        u16le(&mut central, e.name.len() as u16);
        u16le(&mut central, 28);
        for x in [0u16, 0, 0] {
            u16le(&mut central, x);
        }
        u32le(&mut central, 0);
        u32le(&mut central, u32::MAX);
        central.extend(e.name.as_bytes());
        u16le(&mut central, 1);
        u16le(&mut central, 24);
        u64le(&mut central, data.len() as u64);
        u64le(&mut central, data.len() as u64);
        u64le(&mut central, off);
    }
    let cd_off = out.len() as u64;
    out.extend(&central);
    let rec = out.len() as u64;
    u32le(&mut out, 0x0606_4b50);
    u64le(&mut out, 44);
    u16le(&mut out, 45);
    u16le(&mut out, 45);
    u32le(&mut out, 0);
    u32le(&mut out, 0);
    u64le(&mut out, entries.len() as u64);
    u64le(&mut out, entries.len() as u64);
    u64le(&mut out, central.len() as u64);
    u64le(&mut out, cd_off);
    u32le(&mut out, 0x0706_4b50);
    u32le(&mut out, 0);
    u64le(&mut out, rec);
    u32le(&mut out, 1);
    u32le(&mut out, 0x0605_4b50);
    for x in [0u16, 0, u16::MAX, u16::MAX] {
        u16le(&mut out, x);
    }
    u32le(&mut out, u32::MAX);
    u32le(&mut out, u32::MAX);
    u16le(&mut out, 0);
    out
}

#[test]
fn text_bad_inputs_are_clear_errors() {
    let dir = Scratch::new("bad");
    // A tokenizer folder without tokenizer.json.
    std::fs::write(dir.0.join("spiece.model"), b"x").unwrap();
    let e = TextTokenizer::load(&dir.0, 32).err().unwrap().to_string();
    assert!(e.contains("has no tokenizer.json"), "{e}");
    let e = TextTokenizer::load(dir.0.join("nope"), 32).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
    // A DiT checkpoint given as the text encoder, to the converter and to the loader.
    let cfg = dfrt::ModelConfig::preset("tiny").unwrap();
    let dit = dir.0.join("dit.safetensors");
    dfrt_weights::synth_checkpoint(&dit, &cfg, 1, dfrt::checkpoint::DType::F32).unwrap();
    let e = dfrt_weights::convert_t5(&dit, dir.0.join("x.safetensors"), &Default::default()).err().unwrap().to_string();
    assert!(e.contains("DiT checkpoint"), "{e}");
    let be = CpuBackend::new(Precision::F32);
    let e = T5Encoder::load(&be, &dit, Residency::Resident).err().unwrap().to_string();
    assert!(e.contains("is a DiT checkpoint") && e.contains("convert-t5"), "{e}");
    // A text encoder given as the DiT.
    let t5 = dir.0.join("t5.safetensors");
    convert(&case().join("weights.pth"), &t5, 32, None);
    let e = dfrt::api::CpuModel::cpu(&t5, Precision::F32).err().unwrap().to_string();
    assert!(e.contains("is a umT5 text-encoder checkpoint, not a DiT"), "{e}");
    let e = dfrt_weights::convert_file(case().join("weights.pth"), dir.0.join("y.safetensors"), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("convert-t5"), "{e}");
    // An encoder whose width is not the DiT's text_dim, and one that pads past text_len.
    let te = TextEncoder::load(&be, &t5, case().join("tokenizer"), Residency::Streamed).unwrap();
    let fits = dfrt::ModelConfig { text_dim: 64, text_len: 32, ..cfg.clone() };
    te.check_for(&fits).unwrap();
    let e = te.check_for(&dfrt::ModelConfig { text_dim: 96, ..fits.clone() }).err().unwrap().to_string();
    assert!(e.contains("output width is 64") && e.contains("text_dim is 96"), "{e}");
    let e = te.check_for(&dfrt::ModelConfig { text_len: 16, ..fits }).err().unwrap().to_string();
    assert!(e.contains("text_len 16"), "{e}");
    // A truncated encoder checkpoint.
    let bytes = std::fs::read(&t5).unwrap();
    let cut = dir.0.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(T5Encoder::load(&be, &cut, Residency::Resident).is_err());
    // Ids and masks of the wrong length, an id outside the vocabulary, an empty mask.
    let enc = T5Encoder::load(&be, &t5, Residency::Resident).unwrap();
    assert!(enc.encode(&be, &[1; 31], &[1; 31], None).is_err());
    let mut ids = vec![0u32; 32];
    ids[0] = 9999;
    let mut mask = vec![0u8; 32];
    mask[0] = 1;
    assert!(enc.encode(&be, &ids, &mask, None).err().unwrap().to_string().contains("vocabulary"));
    assert!(enc.encode(&be, &[0; 32], &[0; 32], None).is_err());
}

/// The GPU path: the same encoder on the GPU backend in the SIMT simulator (the linears,
/// norms, GELU and residual kernels, and the biased attention on `attn_bias_f32`), every
/// prompt within the f32 bound.
#[test]
fn t5_tiny_encoder_on_sim_matches_official() {
    let m = manifest();
    let text_len = m["text_len"].as_u64().unwrap() as usize;
    let dir = Scratch::new("sim");
    let ckpt = dir.0.join("t5.safetensors");
    convert(&case().join("weights.pth"), &ckpt, text_len, None);
    let out = TensorFile::open(case().join("outputs.safetensors")).unwrap();
    let be = dfrt::backend::gpu::GpuBackend::new(dfrt::gpu::SimDevice::new(), Precision::F32);
    let enc = T5Encoder::load(&be, &ckpt, Residency::Resident).unwrap();
    for p in m["prompts"].as_array().unwrap() {
        let i = p["index"].as_u64().unwrap() as usize;
        let (ids, mask) = golden_ids(&out, i);
        let got = enc.encode(&be, &ids, &mask, None).unwrap();
        assert_close(&format!("sim context.{i}"), &got, &out.f32_any(&format!("context.{i}")).unwrap(), F32_TOL);
    }
}
