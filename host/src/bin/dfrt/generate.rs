//! `dfrt generate`: latents (or, with --vae, a video) chunk by chunk, from a context, golden
//! inputs or prompts.

use super::*;

#[derive(clap::Args, Clone)]
#[command(group = clap::ArgGroup::new("cond").required(true).multiple(true).args(["context", "inputs", "prompt", "prompts"]))]
pub(super) struct GenerateArgs {
    /// Runtime checkpoint (safetensors with `dfrt.config` metadata; see `dfrt-weights convert`).
    #[arg(long)]
    pub(super) model: PathBuf,
    /// Text embedding: safetensors with a tensor `context` of shape [L, text_dim] or [1, L, text_dim].
    /// Noise then comes from --seed.
    #[arg(long, conflicts_with = "inputs")]
    pub(super) context: Option<PathBuf>,
    /// All inputs and random draws: `noise`, `context`, `renoise.{c}.{s}` (golden inputs layout).
    #[arg(long)]
    pub(super) inputs: Option<PathBuf>,
    /// Latent frames to generate, a multiple of 3 (default: the noise's frame count, or 21).
    #[arg(long)]
    pub(super) frames: Option<usize>,
    /// Seed of the noise generator (PCG32 + Box–Muller) when no --inputs is given.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Latent height and width (latent pixels) for the seeded path.
    #[arg(long, default_value_t = 16)]
    pub(super) height: usize,
    #[arg(long, default_value_t = 16)]
    pub(super) width: usize,
    /// KV-cache policy: full | window:W,sink:S | dummy:N[,chunks:L][,ar-start:K][,packing:on|off].
    #[arg(long, default_value = "full")]
    pub(super) policy: String,
    /// Dummy Forcing: reuse this head program (JSON) and skip calibration.
    #[arg(long)]
    pub(super) heads: Option<PathBuf>,
    /// Dummy Forcing: write the head program (groups and calibration masses) to this JSON file.
    #[arg(long)]
    pub(super) save_heads: Option<PathBuf>,
    /// Compute device: cpu (reference) | sim (the GPU path in the SIMT simulator) | cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub(super) device: DeviceChoice,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    pub(super) dtype: Precision,
    /// With --device cuda: synchronise after every kernel and name the kernel that faulted.
    #[arg(long)]
    pub(super) sync_debug: bool,
    /// GPU devices: run every forward as a recorded graph (a CUDA graph on cuda; a chunk's
    /// denoising forward is recorded once and replayed at its 4 steps), or launch every kernel
    /// directly. Same latents either way.
    #[arg(long, default_value = "on", value_enum)]
    pub(super) graphs: dfrt::pipeline::Graphs,
    /// Autoregressive pipeline: self-forcing (also LongLive, Causal-Forcing) | causvid
    /// (3 unwarped steps at shift 8; `full` keeps at most 21 frames) | rolling (Rolling
    /// Forcing: joint windows of 5 chunks, its own anchored cache; policy `full` only).
    #[arg(long, default_value = "self-forcing")]
    pub(super) pipeline: String,
    /// TeaCache with this threshold (the official value is 0.2): denoising forwards whose
    /// accumulated change of the time modulation stays below it skip the blocks. Composes
    /// with every policy; the skipped forwards are listed in the output metadata.
    #[arg(long)]
    pub(super) teacache: Option<f64>,
    /// Prompt switches (interactive generation; `window` policy as LongLive, `dummy` as Dummy
    /// Forcing's interactive pipeline): `FRAME:FILE,…`, each FILE a context file like
    /// --context; before the chunk starting at FRAME the prompt changes and the KV cache is
    /// rebuilt (recache). With --inputs holding `context.1`, `context.2`, …, give the frames
    /// alone: `--prompts-at 12,21`.
    #[arg(long)]
    pub(super) prompts_at: Option<String>,
    /// Frames a prompt switch re-runs at t = 0 (the official `local_attn_size`: 12 under
    /// `dummy`; under `window` the policy's window, and only that).
    #[arg(long)]
    pub(super) recache_frames: Option<usize>,
    /// LongLive's `global_sink` (window policy): a prompt switch keeps the sink frames' K/V
    /// from before the switch instead of rebuilding them from the recache window.
    #[arg(long)]
    pub(super) global_sink: bool,
    /// Output safetensors file (tensor `latents` [1, F, C, H, W], f32); with --vae, the video
    /// (.mp4, .y4m, .safetensors for the f32 frames, or a path without extension for a folder of PNG frames); with --prompts, a
    /// folder that receives one output per prompt line, named by index.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Wan VAE checkpoint: decode each chunk as soon as it is generated and write a video to
    /// --out instead of latents (the VAE runs on the CPU).
    #[arg(long)]
    pub(super) vae: Option<PathBuf>,
    /// Frames per second of the video (with --vae).
    #[arg(long, default_value_t = dfrt::video::DEFAULT_FPS, requires = "vae")]
    pub(super) fps: u32,
    /// A prompt, encoded by --text-encoder with --tokenizer (instead of --context; with
    /// --inputs the noise still comes from the file).
    #[arg(long, conflicts_with = "context", requires_all = ["text_encoder", "tokenizer"])]
    pub(super) prompt: Option<String>,
    /// A file of prompts, one per line: one output per line, named by index (line i uses
    /// seed --seed + i).
    #[arg(long, conflicts_with_all = ["context", "prompt"], requires_all = ["text_encoder", "tokenizer"])]
    pub(super) prompts: Option<PathBuf>,
    /// Text-encoder checkpoint (`dfrt-weights convert-t5`).
    #[arg(long)]
    pub(super) text_encoder: Option<PathBuf>,
    /// Tokenizer folder (google/umt5-xxl, with tokenizer.json).
    #[arg(long)]
    pub(super) tokenizer: Option<PathBuf>,
    /// Device of the text encoder: cpu | sim | cuda[:N] (default: --device). Every prompt is
    /// encoded first and the encoder dropped before the DiT is loaded.
    #[arg(long)]
    pub(super) text_device: Option<DeviceChoice>,
    /// A prompt's embedding, set by `generate_prompts`.
    #[arg(skip)]
    pub(super) prompt_context: Option<Arc<Context>>,
    /// The progress display `generate_prompts` opened for the encoding stage: the DiT and the
    /// decoder continue on it, so the three stages share one line.
    #[arg(skip)]
    pub(super) bar: Option<ProgressBar>,
}

/// The one progress line of a run: hidden below `info` or off a terminal.
fn progress_bar(o: Output, bar: Option<ProgressBar>, len: u64, unit: &str) -> ProgressBar {
    if !o.enabled(Level::Info) || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let b = bar.unwrap_or_else(|| ProgressBar::new(len));
    // The new stage's style and length first, so the reset redraws the line as the new stage.
    b.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}}]"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_length(len);
    b.set_message("");
    b.reset();
    b
}

/// Peak resident memory of this process (VmHWM), in bytes, where /proc offers it.
pub(super) fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(super) fn generate(a: GenerateArgs, o: Output) -> Result<()> {
    let device = a.device.with_sync_debug(a.sync_debug)?;
    let precision = a.dtype;
    let policy = Policy::parse(&a.policy)?;
    let pipeline = PipelineSpec::parse(&a.pipeline, a.teacache)?;
    let spec = match &policy {
        Policy::Dummy(s) => Some(*s),
        _ => None,
    };
    if spec.is_none() && (a.heads.is_some() || a.save_heads.is_some()) {
        return Err(Error::Policy(format!(
            "--heads and --save-heads need a dummy policy (--policy dummy:N), not `{}`",
            a.policy
        )));
    }
    let t_load = Instant::now();
    let model = ModelSource::open(&a.model)?;
    let cfg = model.cfg.clone();
    policy.validate(&cfg)?;
    let program = a.heads.as_ref().map(|p| HeadProgram::load_for(p, &cfg)).transpose()?;

    let mut switch_ctx = Vec::new();
    let (context, latent, frames, noise, source, rows) = if let Some(p) = &a.inputs {
        let f = TensorFile::open(p)?;
        let inp = Inputs::read_with_context(&f, &cfg, a.prompt_context.as_deref().cloned())?;
        let frames = a.frames.unwrap_or(inp.frames);
        let noise = if pipeline.pipeline == Pipeline::Rolling {
            inp.noise_rolling(frames, pipeline.schedule().steps.len())?
        } else {
            inp.noise(frames)?
        };
        switch_ctx = inp.switch_contexts;
        (inp.context, inp.latent, frames, noise, format!("inputs:{}", p.display()), inp.sampled_rows)
    } else {
        let ctx = match (&a.prompt_context, &a.context) {
            (Some(c), _) => (**c).clone(),
            (None, Some(p)) => read_context(&TensorFile::open(p)?, &cfg)?,
            (None, None) => unreachable!("clap requires --context, --inputs or a prompt"),
        };
        let frames = a.frames.unwrap_or(21);
        let latent = Latent { channels: cfg.in_dim, height: a.height, width: a.width };
        (ctx, latent, frames, Noise::seeded(a.seed), format!("seed:{}", a.seed), Default::default())
    };
    let switches = parse_prompts_at(a.prompts_at.as_deref(), switch_ctx, &cfg)?;
    if let (Some(s), Some(_)) = (spec, &a.save_heads) {
        if frames <= s.ar_start * FRAMES_PER_CHUNK {
            return Err(Error::Policy(format!(
                "--save-heads: {frames} frames end before the calibration step (AR step {}, frames {}..{}); generate at least {} frames",
                s.ar_start,
                s.ar_start * FRAMES_PER_CHUNK,
                (s.ar_start + 1) * FRAMES_PER_CHUNK,
                (s.ar_start + 1) * FRAMES_PER_CHUNK
            )));
        }
    }
    // The same path as the C API (dfrt::api), so both give the same latents bit for bit.
    let opts = SessionOptions {
        policy: policy.clone(),
        height: latent.height,
        width: latent.width,
        frames: Some(frames),
        seed: a.seed,
        heads: program,
        sampled_rows: rows,
        graphs: a.graphs,
        pipeline,
        recache_frames: a.recache_frames,
        global_sink: a.global_sink,
    };
    // `run::open` computes the plan itself; this copy is only for the debug log.
    if device.is_gpu() && o.enabled(Level::Debug) {
        let plan = dfrt::run::plan(&model, precision, &opts)?;
        o.log(Level::Debug, format_args!("memory plan: {plan:?}, {} bytes reserved", plan.total()));
    }
    let target = Target::new(device, precision);
    let mut session = dfrt::run::open(&target, &model, &opts, &context.data, context.rows, noise)?;
    let load_s = t_load.elapsed().as_secs_f64();
    o.log(
        Level::Debug,
        format_args!(
            "loaded {} in {load_s:.2} s: {} layers × {} heads, dim {}, {}",
            a.model.display(),
            cfg.num_layers,
            cfg.num_heads,
            cfg.dim,
            precision.name()
        ),
    );
    let mut switches = switches.into_iter().peekable();
    let graphs = if !session.supports_graphs() {
        "n/a"
    } else if session.graphs() {
        "on"
    } else {
        "off"
    };

    let chunks = frames / FRAMES_PER_CHUNK;
    let forwards = session.forwards_for(frames) as u64;
    // With --vae each chunk is decoded and written as it comes; the bar counts decoded frames.
    let mut video = match &a.vae {
        Some(p) => {
            let vae = dfrt::run::open_vae(p, precision, latent)?;
            Some(dfrt::video::LatentVideo::create(vae, &a.out, latent.channels, latent.height, latent.width, a.fps)?)
        }
        None => None,
    };
    let pixel_frames = video.as_ref().map(|v| v.decoder.vae().cfg.pixel_frames(frames));
    let (bar_len, unit) = match pixel_frames {
        Some(n) => (n as u64, "frames"),
        None => (forwards, "forwards"),
    };
    let bar = progress_bar(o, a.bar.clone(), bar_len, unit);
    let counts_forwards = video.is_none();
    let t_gen = Instant::now();
    let mut chunk_ms = Vec::new();
    let mut latents = Vec::with_capacity(frames * latent.frame_len());
    while !session.done() {
        while let Some((_, ctx)) = switches.next_if(|(f, _)| *f <= session.frames_done()) {
            session.switch_prompt(&ctx.data, ctx.rows)?;
        }
        let tc = Instant::now();
        let x = session.next_chunk(&mut |p| {
            let what = match p.pass.step() {
                Some(s) => format!("step {s}"),
                None => "clean pass".into(),
            };
            bar.set_message(format!("chunk {}/{} {what}", p.pass.chunk + 1, chunks));
            if counts_forwards {
                bar.inc(1);
            }
        })?;
        chunk_ms.push(tc.elapsed().as_secs_f64() * 1e3);
        o.log(Level::Debug, format_args!("chunk {}/{chunks}: {:.1} ms", chunk_ms.len(), chunk_ms[chunk_ms.len() - 1]));
        if let Some(v) = &mut video {
            bar.set_message(format!("chunk {}/{} decoding", chunk_ms.len(), chunks));
            let n = v.push(&x, FRAMES_PER_CHUNK)?;
            bar.inc(n as u64);
        } else {
            latents.extend(x);
        }
    }
    bar.finish_and_clear();
    let decode_ms = video.as_ref().map(|v| v.decode_ms.clone()).unwrap_or_default();
    if let Some(v) = video.take() {
        v.finish()?;
    }
    let gen_s = t_gen.elapsed().as_secs_f64();
    let tpf = (latent.height / cfg.patch_size[1]) * (latent.width / cfg.patch_size[2]);
    let tokens = frames * tpf;
    let tok_s = tokens as f64 / gen_s;
    let peak = peak_rss();
    let kv = session.kv_bytes();
    let foot = session.kv_footprint()?;
    let assignment = session.dummy().and_then(|d| d.assignment());
    if let (Some(path), Some(d)) = (&a.save_heads, session.dummy()) {
        d.program().expect("the run passed the calibration step").save(path)?;
    }

    let mut meta = BTreeMap::new();
    meta.insert(CONFIG_KEY.to_string(), cfg.to_json());
    meta.insert("dfrt.policy".into(), policy.name());
    meta.insert("dfrt.dtype".into(), precision.name().into());
    meta.insert("dfrt.device".into(), session.device_name().into());
    meta.insert("dfrt.source".into(), source);
    meta.insert("dfrt.graphs".into(), graphs.into());
    meta.insert("dfrt.pipeline".into(), pipeline.pipeline.name().into());
    if session.recaches() > 0 {
        meta.insert("dfrt.recaches".into(), session.recaches().to_string());
    }
    let teacache = session.teacache().map(|p| {
        let skipped = p.skipped(chunks);
        serde_json::json!({"threshold": p.threshold, "skipped": skipped, "skipped_forwards": skipped.len(), "denoising_forwards": chunks * session.steps()})
    });
    if let Some(t) = &teacache {
        meta.insert("dfrt.teacache".into(), t.to_string());
    }
    meta.extend(foot.metadata());
    meta.insert("dfrt.kv_bytes.allocated".into(), kv.to_string());
    if let Some(d) = session.dummy() {
        let how = match &a.heads {
            Some(p) => format!("given:{}", p.display()),
            None if d.program().is_some() => "calibrated".into(),
            None => "not reached".into(),
        };
        meta.insert("dfrt.heads".into(), how);
    }
    let mut timings = serde_json::json!({
        "load_s": load_s, "generate_s": gen_s, "chunk_ms": chunk_ms,
        "latent_tokens": tokens, "tokens_per_s": tok_s, "peak_rss_bytes": peak, "kv_cache_bytes": kv,
    });
    if let Some(n) = pixel_frames {
        // FPS of the pixel frames: diffusion alone (the chunks' DiT time), and end to end
        // (diffusion, decode and writing the file).
        let diffusion_s = chunk_ms.iter().sum::<f64>() / 1e3;
        timings["video_frames"] = n.into();
        timings["decode_ms"] = decode_ms.clone().into();
        timings["fps_diffusion"] = (n as f64 / diffusion_s).into();
        timings["fps_end_to_end"] = (n as f64 / gen_s).into();
    }
    meta.insert("dfrt.timings".into(), timings.to_string());
    let shape = vec![1, frames, latent.channels, latent.height, latent.width];
    let mut tensors = vec![OutTensor::f32("latents", shape, &latents)];
    if let Some(asg) = &assignment {
        tensors.push(OutTensor::i64("assignment", vec![asg.num_layers, asg.num_heads], &asg.to_i64()));
    }
    if pixel_frames.is_none() {
        write_safetensors(&a.out, &tensors, &meta)?;
    }
    if o.json {
        let j = serde_json::json!({
            "out": a.out.display().to_string(), "frames": frames, "chunks": chunks, "forwards": forwards,
            "latent_shape": [1, frames, latent.channels, latent.height, latent.width],
            "policy": policy.name(), "dtype": precision.name(), "device": session.device_name(), "source": meta["dfrt.source"],
            "heads": meta.get("dfrt.heads"), "graphs": graphs, "kv_footprint": foot.metadata(), "timings": timings,
            "pipeline": pipeline.pipeline.name(), "teacache": teacache,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    }
    if o.enabled(Level::Info) {
        eprintln!(
            "dfrt: {frames} frames ({tokens} latent tokens, {chunks} chunks, {} forwards) in {gen_s:.2} s: {tok_s:.0} tokens/s, {:.1} ms/chunk; policy {}, {}, graphs {graphs}, KV cache {:.1} MiB, peak memory {}; wrote {}",
            forwards,
            gen_s * 1e3 / chunks as f64,
            policy.name(),
            precision.name(),
            kv as f64 / (1 << 20) as f64,
            peak.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "n/a".into()),
            a.out.display()
        );
        eprintln!("dfrt: {}; allocated {:.2} MB", foot.summary(), kv as f64 / 1e6);
        if let Some(n) = pixel_frames {
            eprintln!(
                "dfrt: video {n} frames, decode {} ms/chunk ({:.1} ms mean), {:.2} FPS diffusion only, {:.2} FPS end to end; wrote {}",
                decode_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
                decode_ms.iter().sum::<f64>() / decode_ms.len().max(1) as f64,
                timings["fps_diffusion"].as_f64().unwrap_or(0.0),
                timings["fps_end_to_end"].as_f64().unwrap_or(0.0),
                a.out.display()
            );
        }
    }
    Ok(())
}

/// `--prompts-at`: `FRAME:FILE,…` (context files), or `FRAME,…` taking `context.1`, … of the
/// inputs file; frames ascending.
pub(super) fn parse_prompts_at(
    spec: Option<&str>,
    mut given: Vec<dfrt::pipeline::inputs::Context>,
    cfg: &ModelConfig,
) -> Result<Vec<(usize, dfrt::pipeline::inputs::Context)>> {
    let Some(spec) = spec else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    given.reverse();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (f, file) = match part.split_once(':') {
            Some((f, file)) => (f, Some(file)),
            None => (part, None),
        };
        let f: usize =
            f.parse().map_err(|_| Error::Input(format!("--prompts-at: `{f}` in `{part}` is not a frame number")))?;
        if out.last().is_some_and(|(p, _)| *p >= f) {
            return Err(Error::Input(format!("--prompts-at: frame {f} is not after the previous switch")));
        }
        let ctx = match file {
            Some(file) => read_context(&TensorFile::open(file)?, cfg)?,
            None => given.pop().ok_or_else(|| {
                Error::Input(format!("--prompts-at {f}: no FILE given and the inputs hold no more context.N tensors"))
            })?,
        };
        out.push((f, ctx));
    }
    Ok(out)
}

/// `generate --prompt/--prompts`: every prompt is encoded first (the encoder then dropped),
/// then each runs as `generate --context` would, with its own output.
pub(super) fn generate_prompts(a: GenerateArgs, o: Output) -> Result<()> {
    let prompts: Vec<String> = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?.lines().map(str::to_string).collect()
        }
        (None, None) => unreachable!("called with a prompt"),
    };
    if prompts.is_empty() {
        return Err(Error::Input("the prompts file has no lines".into()));
    }
    let (_, cfg) = dfrt::api::open_checkpoint(&a.model)?;
    let (te, tok) = (a.text_encoder.clone().expect("clap requires it"), a.tokenizer.clone().expect("clap requires it"));
    let device = a.text_device.unwrap_or(a.device);
    let precision = a.dtype;
    // The width check before any encoding work: the encoder's config is in its header.
    let (_, tcfg) = dfrt::text::t5::open_t5(&te)?;
    if tcfg.dim != cfg.text_dim || tcfg.text_len > cfg.text_len {
        return Err(Error::Input(format!(
            "the text encoder gives [{}, {}] contexts, the DiT takes text_dim {} and at most {} rows: this encoder does not belong to this model",
            tcfg.text_len, tcfg.dim, cfg.text_dim, cfg.text_len
        )));
    }
    let t = Instant::now();
    // One progress line for the three stages: prompts encoded here, then each video's
    // forwards (or decoded frames) in `generate`.
    let bar = progress_bar(o, None, prompts.len() as u64, "prompts");
    bar.set_message(format!("encoding on {device}"));
    let encoded = dfrt::text::encode_prompts(&device, precision, &te, &tok, &prompts, &mut |i, e| {
        for n in &e.tokens.cleaned.notes {
            let l = if n.may_differ() { Level::Warn } else { Level::Debug };
            bar.suspend(|| o.log(l, format_args!("prompt {i}: {n}")));
        }
        bar.suspend(|| o.log(Level::Info, format_args!("prompt {i}: {} tokens encoded on {device}", e.tokens.len)));
        bar.inc(1);
    })?;
    o.log(Level::Info, format_args!("{} prompts encoded in {:.2} s", prompts.len(), t.elapsed().as_secs_f64()));
    if prompts.len() > 1 || a.prompts.is_some() {
        std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    }
    for (i, e) in encoded.into_iter().enumerate() {
        let mut ai = a.clone();
        ai.prompt_context = Some(Arc::new(e.context));
        ai.bar = Some(bar.clone());
        if a.prompts.is_some() {
            // With --vae each line is a video; without, its latents.
            let ext = if a.vae.is_some() { "mp4" } else { "safetensors" };
            ai.out = a.out.join(format!("{i}.{ext}"));
            ai.seed = a.seed + i as u64;
        }
        generate(ai, o)?;
    }
    Ok(())
}
