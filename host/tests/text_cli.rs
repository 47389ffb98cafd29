//! Prompt in, through the binary: `dfrt encode` and `dfrt generate --prompt/--prompts` on the
//! official `t2v-tiny` case (the t5-tiny tokenizer and encoder, a tiny DiT, the stored noise,
//! the vae-tiny decoder): the context within 1e-5, and the latents and the decoded video
//! (`--vae`, written as f32 frames to `.safetensors`) within 1e-4 relative L2 (f32) of the
//! official `CausalInferencePipeline.inference` run, on the CPU and on `--device sim`.

use std::path::{Path, PathBuf};

use dfrt::checkpoint::TensorFile;
use dfrt_weights::{convert_file, convert_t5, ConvertOptions, T5Options};

mod common;
use common::{dfrt, golden, rel_l2, tmp};

struct Case {
    dir: PathBuf,
    dit: PathBuf,
    t5: PathBuf,
    vae: PathBuf,
    prompt: String,
}

fn case(scratch: &Path) -> Case {
    let dir = golden().join("t2v-tiny");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let text_len = m["components"]["dit"]["text_len"].as_u64().unwrap() as usize;
    let dit = scratch.join("dit.safetensors");
    convert_file(
        dir.join("dit.safetensors"),
        &dit,
        &ConvertOptions {
            text_len: Some(text_len),
            heads: m["components"]["dit"]["num_heads"].as_u64().map(|h| h as usize),
            ..Default::default()
        },
    )
    .unwrap();
    let t5 = scratch.join("t5.safetensors");
    let tl = m["components"]["text_encoder"]["text_len"].as_u64().unwrap() as usize;
    convert_t5(dir.join("t5.safetensors"), &t5, &T5Options { text_len: Some(tl), dtype: None }).unwrap();
    let vae = scratch.join("vae.safetensors");
    dfrt_weights::vae::convert_vae_files(&[dir.join("vae.safetensors")], &vae, None).unwrap();
    Case { prompt: m["prompt"].as_str().unwrap().to_string(), dir, dit, t5, vae }
}

/// `dfrt generate --prompt … --vae … --out video.safetensors` on `device`: the decoded video
/// (`video`, and `inference()`'s `video_01` = `(video·0.5 + 0.5).clamp(0, 1)`) against the
/// official run's, 1e-4 relative L2 (the README's bound).
fn check_video(s: &Path, c: &Case, device: &str) {
    let out = TensorFile::open(c.dir.join("outputs.safetensors")).unwrap();
    let tok = c.dir.join("tokenizer");
    let o = s.join(format!("video-{device}.safetensors"));
    run(&[
        "generate",
        "--model",
        c.dit.to_str().unwrap(),
        "--text-encoder",
        c.t5.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        &c.prompt,
        "--inputs",
        c.dir.join("inputs.safetensors").to_str().unwrap(),
        "--device",
        device,
        "--vae",
        c.vae.to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
        "-q",
    ]);
    let want = out.info("video").unwrap().shape.clone();
    let got = TensorFile::open(&o).unwrap().f32("video", &want).unwrap();
    let e = rel_l2("video", &got, &out.f32_any("video").unwrap());
    let v01: Vec<f32> = got.iter().map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0)).collect();
    let e01 = rel_l2("video_01", &v01, &out.f32_any("video_01").unwrap());
    println!("t2v-tiny video {want:?} ({device}, --prompt --vae) rel L2 {e:.3e}, video_01 {e01:.3e}");
    assert!(e <= 1e-4 && e01 <= 1e-4, "{device}: video rel L2 {e:.3e}, video_01 {e01:.3e}");
}

fn latents(p: &Path) -> Vec<f32> {
    TensorFile::open(p).unwrap().f32_any("latents").unwrap()
}

fn run(args: &[&str]) {
    let (code, err) = dfrt(args);
    assert_eq!(code, 0, "dfrt {args:?} failed: {err}");
}

#[test]
fn t2v_tiny_prompt_to_latents_on_cpu() {
    let s = tmp("t2v-cpu");
    let c = case(&s);
    let out = TensorFile::open(c.dir.join("outputs.safetensors")).unwrap();
    let tok = c.dir.join("tokenizer");
    let (dit, t5, tok, inputs) =
        (c.dit.to_str().unwrap(), c.t5.to_str().unwrap(), tok.to_str().unwrap(), c.dir.join("inputs.safetensors"));
    let inputs = inputs.to_str().unwrap();

    // dfrt encode: the context and the ids.
    let ctx = s.join("ctx.safetensors");
    run(&[
        "encode",
        "--text-encoder",
        t5,
        "--tokenizer",
        tok,
        "--prompt",
        &c.prompt,
        "-o",
        ctx.to_str().unwrap(),
        "-q",
    ]);
    let f = TensorFile::open(&ctx).unwrap();
    assert_eq!(f.i64_any("ids").unwrap(), out.i64_any("ids").unwrap());
    assert_eq!(f.i64_any("mask").unwrap(), out.i64_any("mask").unwrap());
    let e = rel_l2("context", &f.f32_any("context").unwrap(), &out.f32_any("context").unwrap());
    println!("t2v-tiny context rel L2 {e:.3e}");
    assert!(e <= 1e-5, "context rel L2 {e:.3e}");

    // dfrt generate --prompt with the stored noise: the latents.
    let one = s.join("one.safetensors");
    run(&[
        "generate",
        "--model",
        dit,
        "--text-encoder",
        t5,
        "--tokenizer",
        tok,
        "--prompt",
        &c.prompt,
        "--inputs",
        inputs,
        "--out",
        one.to_str().unwrap(),
        "-q",
    ]);
    let want = out.f32_any("latents").unwrap();
    let e = rel_l2("latents", &latents(&one), &want);
    println!("t2v-tiny latents (cpu, --prompt) rel L2 {e:.3e}");
    assert!(e <= 1e-4, "latents rel L2 {e:.3e}");

    // --context keeps working with the cached embedding (noise from a seed here).
    let seeded = s.join("seeded.safetensors");
    run(&[
        "generate",
        "--model",
        dit,
        "--context",
        ctx.to_str().unwrap(),
        "--frames",
        "3",
        "--height",
        "4",
        "--width",
        "6",
        "--out",
        seeded.to_str().unwrap(),
        "-q",
    ]);
    assert!(latents(&seeded).iter().all(|x| x.is_finite()));

    // --prompts: one output per line, named by index; line 0 is the golden prompt.
    let list = s.join("prompts.txt");
    std::fs::write(&list, format!("{}\nA red fox runs through a snowy forest at dawn.\n", c.prompt)).unwrap();
    let dir = s.join("many");
    run(&[
        "generate",
        "--model",
        dit,
        "--text-encoder",
        t5,
        "--tokenizer",
        tok,
        "--prompts",
        list.to_str().unwrap(),
        "--inputs",
        inputs,
        "--out",
        dir.to_str().unwrap(),
        "-q",
    ]);
    let (a, b) = (latents(&dir.join("0.safetensors")), latents(&dir.join("1.safetensors")));
    assert_eq!(a, latents(&one), "line 0 = the single-prompt run, bit for bit");
    assert!(rel_l2("other prompt", &b, &a) > 1e-2, "another prompt gives another video");

    check_video(&s, &c, "cpu");
    std::fs::remove_dir_all(&s).ok();
}

#[test]
fn t2v_tiny_prompt_to_latents_on_sim() {
    let s = tmp("t2v-sim");
    let c = case(&s);
    let out = TensorFile::open(c.dir.join("outputs.safetensors")).unwrap();
    let tok = c.dir.join("tokenizer");
    let o = s.join("sim.safetensors");
    let inputs = c.dir.join("inputs.safetensors");
    run(&[
        "generate",
        "--model",
        c.dit.to_str().unwrap(),
        "--text-encoder",
        c.t5.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        &c.prompt,
        "--inputs",
        inputs.to_str().unwrap(),
        "--device",
        "sim",
        "--out",
        o.to_str().unwrap(),
        "-q",
    ]);
    let e = rel_l2("latents", &latents(&o), &out.f32_any("latents").unwrap());
    println!("t2v-tiny latents (sim: encoder and DiT on the GPU backend) rel L2 {e:.3e}");
    assert!(e <= 1e-4, "latents rel L2 {e:.3e}");
    check_video(&s, &c, "sim");
    std::fs::remove_dir_all(&s).ok();
}

#[test]
fn prompt_cli_bad_inputs_are_clear_errors() {
    let s = tmp("t2v-bad");
    let c = case(&s);
    let tok = c.dir.join("tokenizer");
    // A DiT whose text_dim is not the encoder's width.
    let tiny = s.join("tiny.safetensors");
    let cfg = dfrt::ModelConfig { text_dim: 96, text_len: 32, ..dfrt::ModelConfig::preset("tiny").unwrap() };
    dfrt_weights::synth_checkpoint(&tiny, &cfg, 0, dfrt::checkpoint::DType::F32).unwrap();
    let o = s.join("o.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--model",
        tiny.to_str().unwrap(),
        "--text-encoder",
        c.t5.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("text_dim"), "{err}");
    // The DiT given as the text encoder.
    let (code, err) = dfrt(&[
        "encode",
        "--text-encoder",
        c.dit.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "x",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("is a DiT checkpoint"), "{err}");
    // A tokenizer folder without tokenizer.json.
    let (code, err) = dfrt(&[
        "encode",
        "--text-encoder",
        c.t5.to_str().unwrap(),
        "--tokenizer",
        s.to_str().unwrap(),
        "--prompt",
        "x",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert!(code != 0 && err.contains("tokenizer.json"), "{err}");
    // A prompt without an encoder.
    let (code, err) =
        dfrt(&["generate", "--model", c.dit.to_str().unwrap(), "--prompt", "x", "--out", o.to_str().unwrap()]);
    assert!(code != 0 && err.contains("--text-encoder"), "{err}");
    assert!(!o.exists());
    std::fs::remove_dir_all(&s).ok();
}
