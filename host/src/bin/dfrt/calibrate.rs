//! `dfrt calibrate`: Dummy Forcing's offline head calibration over several contexts and seeds.

use super::*;

#[derive(clap::Args)]
pub(super) struct CalibrateArgs {
    /// Runtime checkpoint.
    #[arg(long)]
    pub(super) model: PathBuf,
    /// Text embedding file (tensor `context`); give several to compare prompts.
    #[arg(long, required = true)]
    pub(super) context: Vec<PathBuf>,
    /// Dummy Forcing policy: dummy:N[,chunks:L][,ar-start:K][,packing:on|off]
    /// (default: half of all heads dummy, as the official 180 of 360).
    #[arg(long)]
    pub(super) policy: Option<String>,
    /// Seed of the noise and of the query-row sampler (the first seed with --seeds).
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Seeds per context: seed, seed+1, ….
    #[arg(long, default_value_t = 1)]
    pub(super) seeds: u64,
    /// Latent frames of the video being calibrated for (default and minimum: 3·(K+1));
    /// generation stops after AR step K.
    #[arg(long)]
    pub(super) frames: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub(super) height: usize,
    #[arg(long, default_value_t = 16)]
    pub(super) width: usize,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    pub(super) dtype: Precision,
    /// Where to write the majority head program (JSON, usable with `generate --heads`).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}

pub(super) fn calibrate(a: CalibrateArgs, o: Output) -> Result<()> {
    let precision = a.dtype;
    let be = std::sync::Arc::new(CpuBackend::new(precision));
    let lm = CpuModel::load(be, &a.model)?;
    let cfg = lm.cfg.clone();
    let policy = match &a.policy {
        Some(p) => Policy::parse_for(p, &cfg)?,
        None => Policy::parse_for(&format!("dummy:{}", cfg.num_layers * cfg.num_heads / 2), &cfg)?,
    };
    let Policy::Dummy(spec) = policy else {
        return Err(Error::Policy(format!("calibrate needs a dummy policy (dummy:N[,…]), not `{}`", policy.name())));
    };
    if a.seeds == 0 {
        return Err(Error::Input("--seeds must be at least 1".into()));
    }
    let need = (spec.ar_start + 1) * FRAMES_PER_CHUNK;
    let frames = a.frames.unwrap_or(need);
    if frames < need {
        return Err(Error::Input(format!(
            "--frames {frames}: calibration at AR step {} needs at least {need} frames",
            spec.ar_start
        )));
    }
    let mut opts = SessionOptions::new(policy.clone(), a.height, a.width, Some(frames));
    let mut programs = Vec::new();
    let mut runs = Vec::new();
    for path in &a.context {
        let ctx = read_context(&TensorFile::open(path)?, &cfg)?;
        for seed in a.seed..a.seed + a.seeds {
            opts.seed = seed;
            let mut s = lm.session(&opts, &ctx.data, ctx.rows, Noise::seeded(seed))?;
            while s.chunk_index() <= spec.ar_start {
                s.next_chunk(&mut |_| {})?;
            }
            let mut p = s.dummy().and_then(|d| d.program().cloned()).expect("calibrated at AR step K");
            p.source = format!("calibration: context {}, seed {seed}", path.display());
            runs.push(
                serde_json::json!({"context": path.display().to_string(), "seed": seed, "counts": counts_json(&p)}),
            );
            programs.push(p);
        }
    }
    let st = stability(&programs)?;
    if let Some(out) = &a.out {
        st.majority.save(out)?;
    }
    if o.json {
        let j = serde_json::json!({
            "policy": spec.to_string(), "programs": st.programs, "heads": st.heads,
            "keep_vs_first": st.keep_vs_first, "keep_vs_majority": st.keep_vs_majority,
            "mean_keep_vs_first": st.mean_keep_vs_first, "mean_keep_vs_majority": st.mean_keep_vs_majority,
            "unanimous": st.unanimous, "unanimous_heads": (st.unanimous * st.heads as f64).round() as usize,
            "majority_counts": counts_json(&st.majority), "runs": runs,
            "out": a.out.as_ref().map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        let pct = |v: &[f64]| v.iter().map(|x| format!("{:.1}%", 100.0 * x)).collect::<Vec<_>>().join(" ");
        let c = st.majority.assignment().counts();
        println!(
            "dfrt calibrate: {} programs ({} contexts × {} seeds), {} heads, policy {spec}",
            st.programs,
            a.context.len(),
            a.seeds,
            st.heads
        );
        println!(
            "  heads keeping their group vs the first program: mean {:.1}% (per program: {})",
            100.0 * st.mean_keep_vs_first,
            pct(&st.keep_vs_first)
        );
        println!(
            "  heads keeping their group vs the majority:      mean {:.1}% (per program: {})",
            100.0 * st.mean_keep_vs_majority,
            pct(&st.keep_vs_majority)
        );
        println!(
            "  unanimous: {} of {} heads ({:.1}%)",
            (st.unanimous * st.heads as f64).round() as usize,
            st.heads,
            100.0 * st.unanimous
        );
        println!("  majority program: sink {}, neighbor {}, dummy {}", c.sink, c.neighbor, c.dummy);
        if let Some(out) = &a.out {
            println!("  wrote {}", out.display());
        }
    }
    Ok(())
}

pub(super) fn counts_json(p: &HeadProgram) -> serde_json::Value {
    let c = p.assignment().counts();
    serde_json::json!({"sink": c.sink, "neighbor": c.neighbor, "dummy": c.dummy})
}
