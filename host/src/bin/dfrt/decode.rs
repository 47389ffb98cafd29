//! `dfrt decode`: a latents file to a video with the Wan VAE.

use super::*;

#[derive(clap::Args)]
pub(super) struct DecodeArgs {
    /// Latents: safetensors with a tensor `latents` [1, F, C, H, W] or [F, C, H, W].
    pub(super) latents: PathBuf,
    /// VAE checkpoint (`dfrt-weights convert Wan2.1_VAE.pth`, or `dfrt-weights synth --vae`).
    #[arg(long)]
    pub(super) vae: PathBuf,
    /// Output video: .mp4 (H.264, yuv420p), .y4m, .safetensors (the f32 frames, tensor `video`), or a path without extension for a folder of PNG frames.
    #[arg(short = 'o', long)]
    pub(super) out: PathBuf,
    /// Frames per second of the video.
    #[arg(long, default_value_t = dfrt::video::DEFAULT_FPS)]
    pub(super) fps: u32,
    /// VAE storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    pub(super) dtype: Precision,
}

/// `dfrt decode`: latents file → video, 3 latent frames (one chunk) at a time.
pub(super) fn decode(a: DecodeArgs, o: Output) -> Result<()> {
    let precision = a.dtype;
    let t0 = Instant::now();
    let f = TensorFile::open(&a.latents)?;
    let info = f.info("latents").map_err(|_| {
        Error::Input(format!(
            "{}: no tensor `latents` (expected a `dfrt generate` output, [1, F, C, H, W])",
            a.latents.display()
        ))
    })?;
    let s = info.shape.clone();
    let (frames, c, h, w) = match s.as_slice() {
        [1, f, c, h, w] | [f, c, h, w] => (*f, *c, *h, *w),
        _ => {
            return Err(Error::Input(format!(
                "{}: `latents` has shape {s:?}, expected [1, F, C, H, W]",
                a.latents.display()
            )))
        }
    };
    if frames == 0 {
        return Err(Error::Input(format!("{}: `latents` has no frames", a.latents.display())));
    }
    let vae = dfrt::run::open_vae(&a.vae, precision, Latent { channels: c, height: h, width: w })?;
    let data = f.f32_any("latents")?;
    let mut v = dfrt::video::LatentVideo::create(vae.clone(), &a.out, c, h, w, a.fps)?;
    let total = vae.cfg.pixel_frames(frames) as u64;
    let bar = if !o.enabled(Level::Info) || !std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    } else {
        let b = ProgressBar::new(total);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} frames  [{elapsed_precise}]").unwrap());
        b
    };
    let fl = c * h * w;
    let t_dec = Instant::now();
    for lo in (0..frames).step_by(FRAMES_PER_CHUNK) {
        let n = FRAMES_PER_CHUNK.min(frames - lo);
        let k = v.push(&data[lo * fl..(lo + n) * fl], n)?;
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    let (width, height, fps) = (v.writer.width, v.writer.height, v.writer.fps);
    let decode_ms = v.decode_ms.clone();
    let written = v.finish()?;
    let dec_s = t_dec.elapsed().as_secs_f64();
    let timings = serde_json::json!({
        "total_s": t0.elapsed().as_secs_f64(), "decode_ms": decode_ms, "decode_write_s": dec_s, "fps": written as f64 / dec_s,
    });
    if o.json {
        let j = serde_json::json!({
            "out": a.out.display().to_string(), "latent_frames": frames, "frames": written, "width": width, "height": height,
            "fps": fps, "dtype": precision.name(), "timings": timings,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    }
    if o.enabled(Level::Info) {
        eprintln!(
            "dfrt: decoded {frames} latent frames into {written} frames {width}×{height} in {dec_s:.2} s ({:.2} FPS), decode {} ms/chunk; wrote {} at {fps} fps",
            written as f64 / dec_s,
            decode_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
            a.out.display()
        );
    }
    Ok(())
}
