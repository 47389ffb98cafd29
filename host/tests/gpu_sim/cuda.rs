//! CUDA.

use super::*;

#[test]
pub(super) fn cuda_ops_match_cpu() {
    for p in [Precision::F32, Precision::Bf16] {
        let dev = match CudaDevice::new(0, true) {
            Ok(d) => d,
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        println!("cuda device: {}", dev.describe());
        compare_ops(&GpuBackend::new(dev, p), None, 21);
    }
}

#[test]
pub(super) fn cuda_golden_cases() {
    if let Err(e) = CudaDevice::new(0, false) {
        println!("skipped: {e}");
        return;
    }
    for (case, policy, dtype, tol) in [
        ("tiny-full", "full", "f32", 1e-4),
        ("tiny-window", "window:6,sink:1", "f32", 1e-4),
        ("df-tiny", "dummy:3", "f32", 1e-4),
        ("tiny-full-bf16", "full", "bf16", 1.5e-2),
    ] {
        let d = tmp(&format!("cuda-{case}"));
        let ck = d.join("model.safetensors");
        checkpoint(case, &ck, |_| {});
        let out = d.join("out.safetensors");
        let inputs = golden().join(case).join("inputs.safetensors");
        let (code, err) = dfrt(&[
            "generate",
            "--device",
            "cuda",
            "--dtype",
            dtype,
            "--model",
            ck.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--policy",
            policy,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        println!("{err}");
        let want = TensorFile::open(golden().join(case).join("outputs.safetensors")).unwrap();
        let shape = want.info("latents").unwrap().shape.clone();
        let e = rel_l2(
            case,
            &TensorFile::open(&out).unwrap().f32("latents", &shape).unwrap(),
            &want.f32_any("latents").unwrap(),
        );
        println!("{case} on cuda: latents rel L2 {e:.3e}");
        assert!(e <= tol, "{case} on cuda: {e:.3e} > {tol:.1e}");
    }
}

#[test]
pub(super) fn cuda_device_without_a_gpu_is_a_clear_error() {
    let d = tmp("nocuda");
    let ck = d.join("model.safetensors");
    checkpoint("tiny-full", &ck, |_| {});
    let inputs = golden().join("tiny-full/inputs.safetensors");
    let out = d.join("out.safetensors");
    let (code, err) = dfrt(&[
        "generate",
        "--device",
        "cuda",
        "--model",
        ck.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--frames",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    if CudaDevice::new(0, false).is_ok() {
        println!("skipped: a GPU is present (the run exited {code})");
        return;
    }
    assert_eq!(code, 1, "exit code; stderr: {err}");
    assert!(err.starts_with("error: device:") && !err.contains("panicked"), "{err}");
    println!("{err}");
    let (code, err) = dfrt(&[
        "generate",
        "--device",
        "tpu",
        "--model",
        ck.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("unknown device `tpu`"), "{err}");
    let (code, err) = dfrt(&[
        "generate",
        "--device",
        "sim",
        "--sync-debug",
        "--model",
        ck.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--sync-debug is for --device cuda"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}
