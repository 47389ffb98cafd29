//! VAE weights: `dfrt-weights synth --vae`, and `convert` of official (`Wan2.1_VAE.pth`) and
//! diffusers (`AutoencoderKLWan`) names to the same runtime VAE checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use dfrt::checkpoint::{write_safetensors, DType, OutTensor, TensorFile};
use dfrt::vae::{VaeConfig, VAE_CONFIG_KEY};
use dfrt_weights::vae::{convert_vae_files, synth_vae};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dfrt-wt-vae-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dfrt-weights")).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The official name → diffusers name, as the diffusers conversion script lays them out.
fn to_diffusers(n: &str, nrb: usize) -> String {
    let res = |t: &str| {
        t.replace("residual.0.", "norm1.")
            .replace("residual.2.", "conv1.")
            .replace("residual.3.", "norm2.")
            .replace("residual.6.", "conv2.")
            .replace("shortcut.", "conv_shortcut.")
    };
    if let Some(r) = n.strip_prefix("conv1.") {
        return format!("quant_conv.{r}");
    }
    if let Some(r) = n.strip_prefix("conv2.") {
        return format!("post_quant_conv.{r}");
    }
    let (part, rest) = n.split_once('.').unwrap();
    let tail = if let Some(r) = rest.strip_prefix("conv1.") {
        format!("conv_in.{r}")
    } else if let Some(r) = rest.strip_prefix("head.0.") {
        format!("norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("head.2.") {
        format!("conv_out.{r}")
    } else if let Some(r) = rest.strip_prefix("middle.1.") {
        format!("mid_block.attentions.0.{r}")
    } else if let Some(r) = rest.strip_prefix("middle.") {
        let (j, t) = r.split_once('.').unwrap();
        format!("mid_block.resnets.{}.{}", j.parse::<usize>().unwrap() / 2, res(t))
    } else if let Some(r) = rest.strip_prefix("downsamples.") {
        format!("down_blocks.{}", res(r))
    } else {
        let (i, t) = rest.strip_prefix("upsamples.").unwrap().split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        let (s, j) = (i / (nrb + 2), i % (nrb + 2));
        if j == nrb + 1 {
            format!("up_blocks.{s}.upsamplers.0.{t}")
        } else {
            format!("up_blocks.{s}.resnets.{j}.{}", res(t))
        }
    };
    format!("{part}.{tail}")
}

#[test]
fn synth_and_convert_official_and_diffusers_names_agree() {
    let d = tmp("conv");
    let (ok, err) =
        run(&["synth", "--vae", "--vae-dim", "4", "--seed", "2", "-o", d.join("v.safetensors").to_str().unwrap()]);
    assert!(ok, "{err}");
    let f = TensorFile::open(d.join("v.safetensors")).unwrap();
    let cfg = VaeConfig::from_json(&f.metadata[VAE_CONFIG_KEY]).unwrap();
    assert_eq!(cfg, VaeConfig::with_dim(4));
    let names: Vec<(String, Vec<usize>)> = f.tensors.iter().map(|(n, i)| (n.clone(), i.shape.clone())).collect();
    let mut want = cfg.expected_tensors();
    want.sort();
    assert_eq!(names, want);
    // No parameter is exactly zero (the official init's zero attention proj would hide bugs).
    for (n, _) in &names {
        assert!(f.f32_any(n).unwrap().iter().all(|x| *x != 0.0 && x.is_finite()), "{n}");
    }
    // The same tensors under diffusers names (and bf16) convert back to the same checkpoint.
    let nrb = cfg.num_res_blocks;
    let diff: Vec<OutTensor> =
        names.iter().map(|(n, s)| OutTensor::bf16(to_diffusers(n, nrb), s.clone(), &f.f32_any(n).unwrap())).collect();
    write_safetensors(d.join("diffusers.safetensors"), &diff, &BTreeMap::new()).unwrap();
    let out = d.join("back.safetensors");
    let (ok, err) = run(&[
        "convert",
        d.join("diffusers.safetensors").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("diffusers") && err.contains("VAE"), "{err}");
    let g = TensorFile::open(&out).unwrap();
    assert_eq!(VaeConfig::from_json(&g.metadata[VAE_CONFIG_KEY]).unwrap(), cfg);
    for (n, _) in &names {
        let (a, b) = (f.f32_any(n).unwrap(), g.f32_any(n).unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= x.abs() / 128.0), "{n}");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn vae_conversion_errors_name_the_tensor() {
    let d = tmp("bad");
    let cfg = VaeConfig::with_dim(4);
    let all = cfg.expected_tensors();
    let mk = |skip: &str, reshape: &str| -> Vec<OutTensor> {
        all.iter()
            .filter(|(n, _)| n != skip)
            .map(|(n, s)| {
                let s = if n == reshape { vec![s[0] + 1; s.len()] } else { s.clone() };
                let k: usize = s.iter().product();
                OutTensor::f32(n.clone(), s, &vec![0.25; k])
            })
            .collect()
    };
    let p = d.join("missing.safetensors");
    write_safetensors(&p, &mk("decoder.upsamples.3.time_conv.weight", ""), &BTreeMap::new()).unwrap();
    let e = convert_vae_files(&[p], d.join("o.safetensors"), None).err().unwrap().to_string();
    assert!(e.contains("decoder.upsamples.3.time_conv.weight") && e.contains("missing"), "{e}");
    let p = d.join("shape.safetensors");
    write_safetensors(&p, &mk("", "decoder.head.2.weight"), &BTreeMap::new()).unwrap();
    let e = convert_vae_files(&[p], d.join("o.safetensors"), None).err().unwrap().to_string();
    assert!(e.contains("decoder.head.2.weight") && e.contains("expected"), "{e}");
    assert!(!d.join("o.safetensors").exists(), "a failed conversion wrote its output");
    let _ = synth_vae(d.join("ok.safetensors"), &cfg, 1, DType::BF16).unwrap();
    std::fs::remove_dir_all(&d).ok();
}
