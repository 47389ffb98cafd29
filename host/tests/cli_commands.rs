//! Every command's `--help`, `--json` and error paths, on tiny synthetic models; `info` and
//! `inspect`; log levels.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dfrt::checkpoint::{write_checkpoint, OutTensor, TensorFile};
use dfrt::ModelConfig;
use serde_json::Value;

fn tmp() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("dfrt-cli-polish-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A tiny synthetic model and a context file for it, made once.
fn model() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| common::tiny_model_files(tmp()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (exit code, stdout, stderr)
fn dfrt(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt")).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{out}"))
}

/// A failing command: exit 1, a readable error on stderr, and with --json one error document
/// on stdout.
fn fails(what: &str, args: &[&str], kind: &str, needle: &str) {
    let (code, out, err) = dfrt(args);
    println!("{what}: {}", err.trim());
    assert_eq!(code, 1, "{what}: exit {code}\n{out}{err}");
    assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, _) = dfrt(&a);
    assert_eq!(code, 1);
    let j = json(&out);
    assert_eq!(j["error"]["kind"], kind, "{what}: {j}");
    assert!(j["error"]["message"].as_str().unwrap().contains(needle), "{what}: {j}");
}

#[test]
fn every_command_has_help() {
    for (cmd, needles) in [
        (
            vec!["--help"],
            vec!["generate", "calibrate", "info", "inspect", "--json", "--log-level", "--quiet", "--verbose"],
        ),
        (vec!["generate", "--help"], vec!["--model", "--policy", "--seed", "--json"]),
        (vec!["calibrate", "--help"], vec!["--context", "--seeds", "--json"]),
        (vec!["info", "--help"], vec!["devices", "--json"]),
        (vec!["inspect", "--help"], vec!["head program", "<FILE>", "--json"]),
    ] {
        let (code, out, err) = dfrt(&cmd);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        for n in needles {
            assert!(out.contains(n), "{cmd:?} --help lacks `{n}`:\n{out}");
        }
    }
    let (code, _, err) = dfrt(&["frobnicate"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("unrecognized subcommand"), "{err}");
    let (code, _, err) = dfrt(&["info", "--log-level", "loud"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn info_lists_devices_and_kernels() {
    let (code, out, err) = dfrt(&["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cpu") && out.contains("not probed") && out.contains("sm_90"), "{out}");
    let (code, out, _) = dfrt(&["info", "--json"]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(j["ptx"]["target"], "sm_90");
    assert!(j["ptx"]["isa_version"].as_str().unwrap().contains('.'));
    let names: Vec<&str> =
        j["ptx"]["kernels"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, dfrt_kernels::KERNELS);
    assert!(
        j["ptx"]["kernels"].as_array().unwrap().iter().all(|k| k["in_ptx"] == true),
        "every kernel is in the committed PTX"
    );
    let hot = j["ptx"]["kernels"].as_array().unwrap().iter().filter(|k| k["hot"] == true).count();
    assert_eq!(hot, dfrt_kernels::HOT_KERNELS.len());
    let devs = j["devices"].as_array().unwrap();
    assert_eq!(devs.iter().map(|d| d["name"].as_str().unwrap()).collect::<Vec<_>>(), ["cpu", "sim", "cuda"]);
    assert_eq!(devs[0]["available"], true);
}

#[test]
fn inspect_checkpoints_and_other_safetensors() {
    let (m, ctx) = model();
    let (code, out, err) = dfrt(&["inspect", s(m)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("checkpoint, 69 tensors")
            && out.contains("2 layers × 2 heads")
            && out.contains("tensors match the config"),
        "{out}"
    );
    let (code, out, _) = dfrt(&["inspect", s(m), "--json"]);
    assert_eq!(code, 0);
    let j = json(&out);
    let cfg = ModelConfig::preset("tiny").unwrap();
    assert_eq!(j["kind"], "checkpoint");
    assert_eq!(j["ok"], true);
    assert_eq!(serde_json::from_value::<ModelConfig>(j["config"].clone()).unwrap(), cfg);
    let want = dfrt::names::expected_tensors(&cfg);
    assert_eq!(j["tensor_count"], want.len());
    let t = j["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blocks.1.ffn.0.weight").unwrap();
    assert_eq!(t["shape"], serde_json::json!([512, 256]));
    assert_eq!(j["elements"], want.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>());

    // A checkpoint with a tensor missing and one misshapen: reported, exit 1.
    let f = TensorFile::open(m).unwrap();
    let mut ts: Vec<OutTensor> = f
        .tensors
        .keys()
        .filter(|n| *n != "head.head.bias")
        .map(|n| OutTensor::f32(n.clone(), f.info(n).unwrap().shape.clone(), &f.f32_any(n).unwrap()))
        .collect();
    let i = ts.iter().position(|t| t.name == "blocks.0.self_attn.q.bias").unwrap();
    ts[i] = OutTensor::f32("blocks.0.self_attn.q.bias", vec![255], &vec![0.5; 255]);
    let bad = tmp().join("bad.safetensors");
    write_checkpoint(&bad, &cfg, &ts).unwrap();
    let (code, out, err) = dfrt(&["inspect", s(&bad), "--json"]);
    assert_eq!(code, 1, "{err}");
    let j = json(&out);
    assert_eq!(j["ok"], false);
    assert_eq!(j["missing"], serde_json::json!(["head.head.bias"]));
    assert!(j["misshapen"][0].as_str().unwrap().contains("blocks.0.self_attn.q.bias: [255], expected [256]"), "{j}");
    assert!(err.contains("dfrt-weights"), "the error says what to do: {err}");
    let (code, out, _) = dfrt(&["inspect", s(&bad)]);
    assert_eq!(code, 1);
    assert!(out.contains("do NOT match") && out.contains("missing head.head.bias"), "{out}");

    // A plain safetensors file (a context): tensors, no config.
    let (code, out, _) = dfrt(&["inspect", s(ctx), "--json"]);
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["kind"], "safetensors");
    assert_eq!(j["tensors"][0]["shape"], serde_json::json!([5, 64]));
    assert!(j.get("config").is_none());
}

#[test]
fn generate_json_and_log_levels_then_inspect_the_head_program() {
    let (m, ctx) = model();
    let out = tmp().join("gen.safetensors");
    let heads = tmp().join("heads.json");
    let base = [
        "generate",
        "--model",
        s(m),
        "--context",
        s(ctx),
        "--frames",
        "6",
        "--height",
        "8",
        "--width",
        "8",
        "--seed",
        "3",
        "--out",
        s(&out),
    ];
    let mut a = base.to_vec();
    a.extend(["--policy", "dummy:2", "--save-heads", s(&heads), "--json"]);
    let (code, stdout, err) = dfrt(&a);
    assert_eq!(code, 0, "{err}");
    let j = json(&stdout);
    assert_eq!(j["frames"], 6);
    assert_eq!(j["latent_shape"], serde_json::json!([1, 6, 16, 8, 8]));
    assert_eq!(j["policy"], "dummy:2,chunks:1,ar-start:1,packing:on");
    assert_eq!(j["heads"], "calibrated");
    assert_eq!(j["timings"]["chunk_ms"].as_array().unwrap().len(), 2);
    assert!(err.contains("tokens/s"), "the summary stays on stderr at the default level: {err}");
    let latents = TensorFile::open(&out).unwrap().f32("latents", &[1, 6, 16, 8, 8]).unwrap();
    assert!(latents.iter().all(|x| x.is_finite()));
    // The CLI builds its session through dfrt::api, as the C API does: same latents, bit for bit.
    let lm = dfrt::api::CpuModel::cpu(m, dfrt::backend::Precision::F32).unwrap();
    let mut opts = dfrt::api::SessionOptions::parse("dummy:2", 8, 8, Some(6), &lm.cfg).unwrap();
    opts.seed = 3;
    let c = dfrt::pipeline::inputs::read_context(&TensorFile::open(ctx).unwrap(), &lm.cfg).unwrap();
    let want = lm.session(&opts, &c.data, c.rows, dfrt::pipeline::Noise::seeded(3)).unwrap().run(&mut |_| {}).unwrap();
    assert!(
        latents.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()) && latents.len() == want.len(),
        "CLI vs dfrt::api"
    );
    // The output carries the config but is no checkpoint: inspect describes it, exit 0.
    let (code, stdout, err) = dfrt(&["inspect", s(&out), "--json"]);
    assert_eq!(code, 0, "{err}");
    let o = json(&stdout);
    assert_eq!(o["kind"], "safetensors");
    assert_eq!(o["config"]["num_layers"], 2);
    assert_eq!(o["metadata"]["dfrt.policy"], "dummy:2,chunks:1,ar-start:1,packing:on");
    assert!(o.get("ok").is_none());
    let names: Vec<&str> = o["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["assignment", "latents"]);

    // -q: nothing on stderr; -v and --log-level debug: debug lines; the output is the same.
    for (flags, debug) in [
        (vec!["-q"], None),
        (vec!["-v"], Some(true)),
        (vec!["--log-level", "debug"], Some(true)),
        (vec!["--log-level", "warn"], Some(false)),
    ] {
        let mut a = base.to_vec();
        a.extend(["--policy", "window:6,sink:1"]);
        a.extend(flags.iter());
        let (code, stdout, err) = dfrt(&a);
        assert_eq!(code, 0, "{flags:?}: {err}");
        assert!(stdout.is_empty(), "no --json, no stdout");
        match debug {
            None => assert!(err.is_empty(), "{flags:?}: {err}"),
            Some(true) => {
                assert!(err.contains("dfrt: debug: loaded") && err.contains("debug: chunk 2/2"), "{flags:?}: {err}")
            }
            Some(false) => assert!(err.is_empty(), "warn hides info: {err}"),
        }
    }
    let (code, _, err) = dfrt(&["generate", "-q", "-v", "--model", s(m), "--context", s(ctx), "--out", s(&out)]);
    assert_eq!(code, 2, "-q and -v conflict: {err}");

    let (code, stdout, err) = dfrt(&["inspect", s(&heads)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("heads: sink") && stdout.contains("layer   0:") && stdout.contains("layer   1:"),
        "{stdout}"
    );
    let (code, stdout, _) = dfrt(&["--json", "inspect", s(&heads)]);
    assert_eq!(code, 0);
    let j = json(&stdout);
    assert_eq!(j["kind"], "head-program");
    assert_eq!(j["counts"]["dummy"], 2);
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let n = |k: &str| l[k].as_u64().unwrap();
        assert_eq!(n("sink") + n("neighbor") + n("dummy"), 2);
        assert_eq!(l["groups"].as_array().unwrap().iter().filter(|g| *g == "dummy").count() as u64, n("dummy"));
    }
}

#[test]
fn errors_say_what_to_do_next() {
    let (m, ctx) = model();
    let out = tmp().join("e.safetensors");
    let gen = |model: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model,
            "--context",
            s(ctx),
            "--frames",
            "3",
            "--height",
            "8",
            "--width",
            "8",
            "--out",
            s(&out),
        ];
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |what: &str, args: Vec<String>, kind: &str, needle: &str| {
        fails(what, &args.iter().map(|x| x.as_str()).collect::<Vec<_>>(), kind, needle)
    };
    run("missing model", gen("/nonexistent/m.safetensors", &[]), "checkpoint", "dfrt-weights synth --preset tiny");
    run("context as model", gen(s(ctx), &[]), "checkpoint", "dfrt-weights convert");
    let junk = tmp().join("junk.bin");
    std::fs::write(&junk, [7u8; 64]).unwrap();
    run("junk as model", gen(s(&junk), &[]), "checkpoint", "dfrt-weights");
    run("bad policy", gen(s(m), &["--policy", "dummy:9"]), "policy", "only 4 heads");
    run("no gpu", gen(s(m), &["--device", "cuda"]), "device", "--device cpu");
    fails(
        "calibrate window",
        &["calibrate", "--model", s(m), "--context", s(ctx), "--policy", "window:6"],
        "policy",
        "dummy policy",
    );
    fails(
        "calibrate missing",
        &["calibrate", "--model", "/nonexistent/m.safetensors", "--context", s(ctx)],
        "checkpoint",
        "dfrt-weights synth",
    );
    fails("inspect missing", &["inspect", "/nonexistent/x.safetensors"], "input", "no such file");
    fails("inspect junk", &["inspect", s(&junk)], "checkpoint", "head-program JSON");
    let broken = tmp().join("broken.json");
    std::fs::write(&broken, "{\"format\": \"dfrt.head-program\"}").unwrap();
    fails("inspect bad program", &["inspect", s(&broken)], "input", "head program");
}
