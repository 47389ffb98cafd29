//! `dfrt info` (build, devices, PTX) and `dfrt inspect` (checkpoints, head programs).

use super::*;

#[derive(clap::Args)]
pub(super) struct InspectArgs {
    /// A .safetensors file or a head-program .json file.
    pub(super) file: PathBuf,
}

/// One compute device as `dfrt info` reports it.
pub(super) struct DeviceInfo {
    pub(super) name: &'static str,
    pub(super) available: bool,
    pub(super) status: &'static str,
}

/// The devices of this build. CUDA is not probed here (that would load the driver): `dfrt
/// generate --device cuda` opens GPU 0 and says clearly when there is none.
pub(super) fn devices() -> Vec<DeviceInfo> {
    vec![
        DeviceInfo { name: "cpu", available: true, status: "available (reference backend, f32 and bf16)" },
        DeviceInfo { name: "sim", available: true, status: "available (the GPU backend on the SIMT simulator: the PTX kernels' source on the CPU, CPU GEMM; slow, for tests)" },
        DeviceInfo { name: "cuda", available: false, status: "built (cudarc, libcuda loaded at run time), not probed: `generate --device cuda` opens GPU 0" },
    ]
}

/// `.version`, `.target` and the toolchain comment of the committed PTX.
pub(super) fn ptx_facts(ptx: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let field = |key: &str| ptx.lines().find_map(|l| l.trim().strip_prefix(key).map(str::trim));
    (field(".version "), field(".target "), field("// Toolchain: "))
}

pub(super) fn info(o: Output) -> Result<()> {
    let ptx = dfrt_kernels::PTX;
    let (version, target, toolchain) = ptx_facts(ptx);
    let kernels: Vec<_> = dfrt_kernels::KERNELS
        .iter()
        .map(|k| (*k, dfrt_kernels::HOT_KERNELS.contains(k), ptx.contains(&format!(".entry {k}("))))
        .collect();
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let devs = devices();
    if o.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "build": {"profile": profile, "arch": std::env::consts::ARCH, "os": std::env::consts::OS},
            "devices": devs.iter().map(|d| serde_json::json!({"name": d.name, "available": d.available, "status": d.status})).collect::<Vec<_>>(),
            "ptx": {"target": target, "isa_version": version, "toolchain": toolchain, "bytes": ptx.len(),
                    "kernels": kernels.iter().map(|(k, hot, present)| serde_json::json!({"name": k, "hot": hot, "in_ptx": present})).collect::<Vec<_>>()},
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!(
        "dfrt {} ({profile} build, {}-{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    println!("devices:");
    for d in &devs {
        println!("  {:<5} {}", d.name, d.status);
    }
    println!(
        "PTX: target {}, ISA {}, {} bytes, built by {}",
        target.unwrap_or("?"),
        version.unwrap_or("?"),
        ptx.len(),
        toolchain.unwrap_or("?")
    );
    println!("kernels ({}, hot: no spills or stack allowed):", kernels.len());
    for (k, hot, present) in &kernels {
        println!(
            "  {k}{}{}",
            if *hot { "  [hot]" } else { "" },
            if *present { "" } else { "  MISSING from the PTX: run `cargo xtask ptx`" }
        );
    }
    Ok(())
}

pub(super) fn inspect(a: InspectArgs, o: Output) -> Result<()> {
    let bytes = std::fs::read(&a.file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!(
            "{}: no such file (inspect takes a checkpoint .safetensors or a head-program .json)",
            a.file.display()
        )),
        _ => Error::io(&a.file, e),
    })?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return inspect_heads(&a.file, o);
    }
    let f = TensorFile::open(&a.file).map_err(|e| match e {
        Error::Checkpoint { path, msg } => Error::Checkpoint {
            path,
            msg: format!(
                "{msg}; inspect takes a safetensors file (checkpoint, inputs, outputs) or a head-program JSON"
            ),
        },
        e => e,
    })?;
    let cfg = match f.metadata.get(CONFIG_KEY) {
        Some(_) => Some(dfrt::api::open_checkpoint(&a.file)?.1),
        None => None,
    };
    // Outputs of `generate` carry the config too; a checkpoint is a file with model tensors.
    let expected = cfg.as_ref().map(dfrt::names::expected_tensors).unwrap_or_default();
    let is_checkpoint = expected.iter().any(|(n, _)| f.tensors.contains_key(n));
    let tensors: Vec<_> = f
        .tensors
        .iter()
        .map(|(n, i)| serde_json::json!({"name": n, "dtype": format!("{:?}", i.dtype), "shape": i.shape}))
        .collect();
    let elements: usize = f.tensors.values().map(|i| i.shape.iter().product::<usize>()).sum();
    let data_bytes: usize = f.tensors.values().map(|i| i.end - i.start).sum();
    let mut dtypes = BTreeMap::new();
    for i in f.tensors.values() {
        *dtypes.entry(format!("{:?}", i.dtype)).or_insert(0usize) += 1;
    }
    let others: BTreeMap<&String, &String> = f.metadata.iter().filter(|(k, _)| k.as_str() != CONFIG_KEY).collect();
    // A checkpoint must hold exactly the tensors its config names, in their shapes.
    let (mut missing, mut misshapen) = (Vec::new(), Vec::new());
    let mut unexpected: Vec<&String> = Vec::new();
    if is_checkpoint {
        let want = &expected;
        for (n, shape) in want {
            match f.tensors.get(n) {
                None => missing.push(n.clone()),
                Some(i) if &i.shape != shape => misshapen.push(format!("{n}: {:?}, expected {shape:?}", i.shape)),
                _ => {}
            }
        }
        unexpected = f.tensors.keys().filter(|n| !want.iter().any(|(w, _)| w == *n)).collect();
    }
    let ok = missing.is_empty() && misshapen.is_empty() && unexpected.is_empty();
    let kind = if is_checkpoint { "checkpoint" } else { "safetensors" };
    if o.json {
        let mut j = serde_json::json!({
            "kind": kind, "path": a.file.display().to_string(), "tensor_count": f.tensors.len(),
            "elements": elements, "data_bytes": data_bytes, "dtypes": dtypes, "tensors": tensors, "metadata": others,
        });
        if let Some(cfg) = &cfg {
            j["config"] = serde_json::to_value(cfg).expect("config serialises");
            j["fingerprint"] = dfrt::dummy::heads::fingerprint(cfg).into();
        }
        if is_checkpoint {
            j["ok"] = ok.into();
            j["missing"] = missing.clone().into();
            j["unexpected"] = serde_json::to_value(&unexpected).expect("names");
            j["misshapen"] = misshapen.clone().into();
        }
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        println!(
            "{}: {kind}, {} tensors, {elements} values, {data_bytes} bytes ({})",
            a.file.display(),
            f.tensors.len(),
            dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
        );
        if let Some(c) = &cfg {
            println!(
                "config: dim {}, ffn {}, {} layers × {} heads (head dim {}), text {}×{}, in/out {}/{} channels, patch {:?}, eps {}, qk_norm {}, cross_attn_norm {}",
                c.dim, c.ffn_dim, c.num_layers, c.num_heads, c.head_dim(), c.text_len, c.text_dim, c.in_dim, c.out_dim, c.patch_size, c.eps, c.qk_norm, c.cross_attn_norm
            );
            println!("fingerprint: {}", dfrt::dummy::heads::fingerprint(c));
        }
        for (k, v) in &others {
            let v: String = if v.chars().count() > 100 {
                v.chars().take(100).chain("…".chars()).collect()
            } else {
                v.to_string()
            };
            println!("metadata {k}: {v}");
        }
        for (n, i) in &f.tensors {
            println!("  {n:<48} {:?} {:?}", i.dtype, i.shape);
        }
        if is_checkpoint {
            if ok {
                println!("tensors match the config");
            } else {
                println!(
                    "tensors do NOT match the config: {} missing, {} unexpected, {} misshapen",
                    missing.len(),
                    unexpected.len(),
                    misshapen.len()
                );
                for m in missing.iter().take(10) {
                    println!("  missing {m}");
                }
                for m in unexpected.iter().take(10) {
                    println!("  unexpected {m}");
                }
                for m in misshapen.iter().take(10) {
                    println!("  misshapen {m}");
                }
            }
        }
    }
    if !ok {
        // The report is the output; the exit status says the checkpoint is not usable.
        o.log(
            Level::Error,
            format_args!("{}: not a usable checkpoint; {}", a.file.display(), dfrt::api::CHECKPOINT_HINT),
        );
        std::process::exit(1);
    }
    Ok(())
}

pub(super) fn inspect_heads(path: &std::path::Path, o: Output) -> Result<()> {
    let p = HeadProgram::load(path)?;
    let a = p.assignment();
    let c = a.counts();
    let layers: Vec<_> = (0..a.num_layers)
        .map(|l| {
            let g = a.layer(l);
            let n = |x: dfrt::dummy::Group| g.iter().filter(|&&y| y == x).count();
            (n(dfrt::dummy::Group::Sink), n(dfrt::dummy::Group::Neighbor), n(dfrt::dummy::Group::Dummy), g)
        })
        .collect();
    if o.json {
        let j = serde_json::json!({
            "kind": "head-program", "path": path.display().to_string(), "source": p.source,
            "model": {"dim": p.model.dim, "num_layers": p.model.num_layers, "num_heads": p.model.num_heads, "head_dim": p.model.head_dim, "fingerprint": p.model.fingerprint},
            "spec": p.spec, "counts": {"sink": c.sink, "neighbor": c.neighbor, "dummy": c.dummy},
            "layers": layers.iter().enumerate().map(|(l, (s, nb, d, g))| serde_json::json!({
                "layer": l, "sink": s, "neighbor": nb, "dummy": d, "groups": g.iter().map(|x| x.name()).collect::<Vec<_>>()
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!("{}: head program ({}), policy {}", path.display(), p.source, p.spec);
    println!(
        "model: {} layers × {} heads, dim {}, {}",
        p.model.num_layers, p.model.num_heads, p.model.dim, p.model.fingerprint
    );
    println!("heads: sink {}, neighbor {}, dummy {} (S sink, N neighbor, D dummy)", c.sink, c.neighbor, c.dummy);
    for (l, (s, nb, d, g)) in layers.iter().enumerate() {
        let letters: String = g.iter().map(|x| x.name()[..1].to_uppercase()).collect();
        println!("  layer {l:>3}: sink {s:>3}  neighbor {nb:>3}  dummy {d:>3}  {letters}");
    }
    Ok(())
}
