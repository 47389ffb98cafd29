//! Compiles `examples/c/generate.c` with the system C compiler against the static library,
//! runs it on a tiny synthetic model, and checks its latents against the Rust API's for the
//! same seed, bit for bit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dfrt_core::api::{CpuModel, SessionOptions};
use dfrt_core::backend::Precision;
use dfrt_core::checkpoint::DType;
use dfrt_core::pipeline::Noise;
use dfrt_core::ModelConfig;
use dfrt_testkit::tol::assert_bits_eq;
use dfrt_testkit::Scratch;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("capi/ is in the workspace").to_path_buf()
}

fn tmp(name: &str) -> Scratch {
    Scratch::new(&format!("capi-{name}"))
}

/// `libdfrt.a`: Cargo builds the package's C libraries next to this test binary (in
/// `deps/`) before it runs integration tests; a release or debug build in the target
/// directory is the fallback, and as a last resort it is built into a separate target
/// directory (the outer `cargo test` holds the lock on the main one).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let mut candidates = vec![deps.join("libdfrt.a"), deps.parent().unwrap().join("libdfrt.a")];
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    for p in ["debug", "release"] {
        candidates.push(target.join(p).join("libdfrt.a"));
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return p.clone();
    }
    let own = root().join("target/capi-c-example");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--release", "-p", "dfrt-capi", "--target-dir"])
        .arg(&own)
        .status()
        .expect("run cargo");
    assert!(st.success(), "cargo build -p dfrt-capi failed; looked for libdfrt.a in {candidates:?}");
    own.join("release/libdfrt.a")
}

/// The example's built-in context (exact values, see generate.c).
fn synthetic_context(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| (((i * 37 + 11) % 129) as i64 - 64) as f32 / 64.0).collect()
}

/// The example, compiled once per test run with warnings as errors.
fn example_exe() -> &'static Path {
    // The scratch dir lives as long as the process (a static is never dropped).
    static EXE: OnceLock<(Scratch, PathBuf)> = OnceLock::new();
    &EXE.get_or_init(|| {
        let lib = static_lib();
        let dir = tmp("exe");
        let exe = dir.join("generate");
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let mut build = Command::new(&cc);
        build
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
            .arg(root().join("examples/c/generate.c"))
            .arg("-I")
            .arg(root().join("capi/include"))
            .arg("-o")
            .arg(&exe)
            .arg(&lib);
        // The Rust standard library's system dependencies (`--print native-static-libs`).
        build.args(if cfg!(target_os = "macos") {
            &["-lSystem", "-lc", "-lm"][..]
        } else {
            &["-lstdc++", "-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"][..]
        });
        let o = build.output().unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
        assert!(o.status.success(), "compiling examples/c/generate.c failed:\n{}", String::from_utf8_lossy(&o.stderr));
        (dir, exe)
    })
    .1
}

#[test]
fn c_example_matches_the_rust_api_bit_for_bit() {
    let t0 = std::time::Instant::now();
    let d = tmp("example");
    let model = d.join("tiny.safetensors");
    let cfg = ModelConfig::preset("tiny").unwrap();
    dfrt_weights::synth_checkpoint(&model, &cfg, 5, DType::F32).unwrap();

    let exe = example_exe();

    // Dummy Forcing with calibration at chunk 1 and a packed phase 2 (chunk 2): every part of
    // the session path runs. Plus a plain window run with another seed.
    for (policy, seed, frames) in [("dummy:2", 11u64, 9usize), ("window:6,sink:1", 12, 6)] {
        let out = d.join("latents.f32");
        let heads = d.join("heads.json");
        let o = Command::new(exe)
            .arg(&model)
            .arg(&out)
            .args([
                "--policy",
                policy,
                "--seed",
                &seed.to_string(),
                "--frames",
                &frames.to_string(),
                "--height",
                "8",
                "--width",
                "12",
                "--heads-out",
            ])
            .arg(&heads)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let dummy = policy.starts_with("dummy");
        if dummy {
            assert!(o.status.success(), "C example failed ({}):\n{stdout}{stderr}", o.status);
        } else {
            // A window run has no head program: the example reports the API's error and fails.
            assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
            assert!(stderr.contains("DFRT_ERR_STATE") && stderr.contains("has no head program"), "{stderr}");
        }
        assert!(stdout.contains(&format!("latents [{frames}, 16, 8, 12]")), "{stdout}");
        assert!(stderr.contains(&format!("chunk {}/{} done", frames / 3, frames / 3)), "progress: {stderr}");
        let bytes = std::fs::read(&out).unwrap();
        let c: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

        let m = CpuModel::cpu(&model, Precision::F32).unwrap();
        let mut opts = SessionOptions::parse(policy, 8, 12, Some(frames), &cfg).unwrap();
        opts.seed = seed;
        let ctx = synthetic_context(4, cfg.text_dim);
        let mut s = m.session(&opts, &ctx, 4, Noise::seeded(seed)).unwrap();
        let r = s.run(&mut |_| {}).unwrap();
        assert!(r.iter().all(|x| x.is_finite()));
        assert_bits_eq(&format!("{policy}: C example vs Rust API"), &c, &r);
        if dummy {
            let json = std::fs::read_to_string(&heads).unwrap();
            assert_eq!(json, s.dummy().unwrap().program().unwrap().to_json(), "head program");
        }
        println!("{policy}: {} latents equal bit for bit", c.len());
    }
    println!("c example test: {:.1} s", t0.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&d).ok();
}

/// The same example linked against the shared library gives the same bytes.
#[test]
fn c_example_links_the_shared_library_too() {
    let d = tmp("shared");
    let lib = static_lib();
    let dir = lib.parent().unwrap();
    let so = if cfg!(target_os = "macos") { "libdfrt.dylib" } else { "libdfrt.so" };
    assert!(dir.join(so).is_file(), "{so} next to {}", lib.display());
    let exe = d.join("generate-shared");
    let o = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
        .args(["-std=c11", "-Wall", "-Werror"])
        .arg(root().join("examples/c/generate.c"))
        .arg("-I")
        .arg(root().join("capi/include"))
        .arg("-L")
        .arg(dir)
        .arg("-ldfrt")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = d.join("tiny.safetensors");
    dfrt_weights::synth_checkpoint(&model, &ModelConfig::preset("tiny").unwrap(), 8, DType::F32).unwrap();
    let run = |exe: &Path, out: &Path| {
        let o = Command::new(exe)
            .arg(&model)
            .arg(out)
            .args(["--policy", "window:6,sink:1", "--seed", "4", "--frames", "6", "--quiet"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty(), "--quiet: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    let a = run(&exe, &d.join("shared.f32"));
    let b = run(example_exe(), &d.join("static.f32"));
    assert_eq!(a.len(), 6 * 16 * 8 * 8 * 4);
    assert!(a == b, "shared and static builds disagree");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn c_example_reports_a_missing_model() {
    let d = tmp("missing");
    let o = Command::new(example_exe()).arg(d.join("nope.safetensors")).arg(d.join("o.f32")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("DFRT_ERR_CHECKPOINT") && err.contains("dfrt-weights synth"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}
