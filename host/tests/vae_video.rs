//! The VAE decoder streaming and the video files: MP4 checked by a real player (ffprobe and
//! ffmpeg from the distribution), Y4M and PNG frames, the CLI's `generate --vae` and `decode`,
//! and every bad input (wrong tensors, wrong channels, missing folder, unknown extension, a full
//! disk) ending in a clear error with nothing half-written left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use dfrt::backend::Precision;
use dfrt::checkpoint::{write_safetensors, DType, OutTensor, TensorFile};
use dfrt::vae::{Decoder, Vae, VaeConfig};
use dfrt::video::{rgb8_from_pixels, VideoWriter};

fn tmp() -> &'static Path {
    // A static is never dropped: the folder stays for a look after a failure.
    static D: OnceLock<dfrt_testkit::Scratch> = OnceLock::new();
    D.get_or_init(|| common::tmp("vae-video"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A synthetic VAE of width 4 (the Wan2.1 structure), made once.
fn vae_file() -> &'static PathBuf {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let p = tmp().join("vae4.safetensors");
        dfrt_weights::vae::synth_vae(&p, &VaeConfig::with_dim(4), 3, DType::F32).unwrap();
        p
    })
}

/// A tiny DiT and a context for it, made once.
fn model() -> &'static (PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| common::tiny_model_files(tmp()))
}

/// ffprobe/ffmpeg, or a skip with a printed reason outside CI (in CI, `.ci/run` installs them
/// and their absence fails the test).
fn have_ffmpeg() -> bool {
    let ok = Command::new("ffprobe").arg("-version").output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "ffprobe/ffmpeg not found: CI must install Debian's ffmpeg (.ci/run does `apt-get install -y ffmpeg`)"
            );
        }
        println!("SKIPPED: ffprobe/ffmpeg not installed (apt-get install -y ffmpeg); CI runs this check");
    }
    ok
}

/// ffprobe's view of the first video stream, frames counted by decoding.
fn probe(path: &Path) -> serde_json::Value {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,width,height,pix_fmt,r_frame_rate,nb_read_frames")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "ffprobe rejected {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["streams"][0].clone()
}

/// The file decoded back to RGB8 frames by ffmpeg.
fn ffmpeg_rgb(path: &Path) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ffmpeg could not decode {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "decoded size");
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// A smooth moving pattern in [-1, 1], `[3, h, w]` per frame.
fn pattern(t: usize, w: usize, h: usize) -> Vec<f32> {
    let mut v = vec![0f32; 3 * w * h];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (fx, fy, ft) = (x as f32 / w as f32, y as f32 / h as f32, t as f32 * 0.15);
                v[(c * h + y) * w + x] = 0.8 * ((6.0 * fx + 2.0 * c as f32 + ft).sin() * (4.0 * fy - ft).cos());
            }
        }
    }
    v
}

fn assert_clean(dir: &Path, target: &str) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(target))
        .collect();
    assert!(left.is_empty(), "left behind after a failed write: {left:?}");
}

#[test]
fn mp4_is_h264_yuv420p_that_ffmpeg_decodes_back_above_35_db() {
    if !have_ffmpeg() {
        return;
    }
    let (w, h, n) = (96, 64, 21);
    for fps in [16, 24] {
        let path = tmp().join(format!("pattern{fps}.mp4"));
        let mut v = VideoWriter::create(&path, w, h, fps).unwrap();
        let mut ours = Vec::new();
        for t in 0..n {
            let rgb = rgb8_from_pixels(&pattern(t, w, h), w, h);
            v.push(&rgb).unwrap();
            ours.extend(rgb);
        }
        assert_eq!(v.finish().unwrap(), n);
        let st = probe(&path);
        println!("{}: {st}", path.display());
        assert_eq!(st["codec_name"], "h264");
        assert_eq!(st["pix_fmt"], "yuv420p");
        assert_eq!((st["width"].as_u64(), st["height"].as_u64()), (Some(w as u64), Some(h as u64)));
        assert_eq!(st["r_frame_rate"], format!("{fps}/1"));
        assert_eq!(st["nb_read_frames"], n.to_string());
        let back = ffmpeg_rgb(&path);
        let db = psnr(&back, &ours);
        println!("mp4 at {fps} fps: PSNR {db:.2} dB over {n} frames {w}x{h}");
        assert!(db >= 35.0, "PSNR {db:.2} dB < 35 dB");
    }
}

#[test]
fn y4m_and_png_frames_read_back_through_ffmpeg() {
    if !have_ffmpeg() {
        return;
    }
    let (w, h, n) = (96, 64, 5);
    let frames: Vec<Vec<u8>> = (0..n).map(|t| rgb8_from_pixels(&pattern(t, w, h), w, h)).collect();
    let y4m = tmp().join("p.y4m");
    let png = tmp().join("p_frames");
    for path in [&y4m, &png] {
        let mut v = VideoWriter::create(path, w, h, 16).unwrap();
        frames.iter().for_each(|f| v.push(f).unwrap());
        v.finish().unwrap();
    }
    let st = probe(&y4m);
    assert_eq!(st["nb_read_frames"], n.to_string());
    assert_eq!(st["width"].as_u64(), Some(w as u64));
    let db = psnr(&ffmpeg_rgb(&y4m), &frames.concat());
    println!("y4m: PSNR {db:.2} dB (chroma subsampling only)");
    assert!(db >= 35.0, "y4m PSNR {db:.2}");
    // PNG is lossless: ffmpeg reads back exactly our bytes.
    let names: Vec<_> = (0..n).map(|i| png.join(format!("frame_{i:05}.png"))).collect();
    assert!(names.iter().all(|p| p.is_file()), "PNG frames missing");
    for (i, p) in names.iter().enumerate() {
        assert!(ffmpeg_rgb(p) == frames[i], "PNG frame {i} differs after decoding");
    }
}

/// `.safetensors` keeps the decoded floats: tensor `video` `[1, T, 3, H, W]`, bit for bit what
/// was pushed (odd sizes are fine: no chroma subsampling), the fps in the metadata; RGB8 frames
/// pushed to it become `v / 127.5 − 1`.
#[test]
fn safetensors_video_keeps_the_float_frames_bit_for_bit() {
    let (w, h, n) = (10, 6, 4);
    let mut rng = dfrt_testkit::Rng::new("tensor-video");
    let frames: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(3 * w * h, -1.0, 1.0)).collect();
    let p = tmp().join("frames.safetensors");
    let mut v = VideoWriter::create(&p, w, h, 24).unwrap();
    frames.iter().for_each(|f| v.push_pixels(f).unwrap());
    let rgb = rgb8_from_pixels(&frames[0], w, h);
    v.push(&rgb).unwrap();
    assert_eq!(v.finish().unwrap(), n + 1);
    let f = TensorFile::open(&p).unwrap();
    assert_eq!(f.metadata.get("fps").map(String::as_str), Some("24"));
    let got = f.f32("video", &[1, n + 1, 3, h, w]).unwrap();
    dfrt_testkit::tol::assert_bits_eq("float frames", &got[..n * 3 * w * h], &frames.concat());
    let rgb = &rgb;
    let back: Vec<f32> = (0..3).flat_map(|c| (0..w * h).map(move |i| rgb[3 * i + c] as f32 / 127.5 - 1.0)).collect();
    dfrt_testkit::tol::assert_bits_eq("rgb8 frame", &got[n * 3 * w * h..], &back);
    assert!(!tmp().join(".frames.safetensors.partial").exists(), "the staging file is renamed");
}

#[test]
fn bad_outputs_are_clear_errors_and_leave_nothing_behind() {
    let e = VideoWriter::create(tmp().join("x.avi"), 16, 16, 16).err().unwrap().to_string();
    assert!(e.contains("unknown video extension") && e.contains(".mp4"), "{e}");
    let e = VideoWriter::create(tmp().join("no/such/dir/x.mp4"), 16, 16, 16).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = VideoWriter::create(tmp().join("odd.mp4"), 15, 16, 16).err().unwrap().to_string();
    assert!(e.contains("even"), "{e}");
    // A disk that fills up mid-video: the error is an I/O error and no file (not even the
    // temporary one) stays.
    let (w, h) = (64, 64);
    for name in ["full.mp4", "full.y4m", "full_png", "full.safetensors"] {
        let dir = tmp().join("diskfull");
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = VideoWriter::create_limited(dir.join(name), w, h, 16, Some(1_000)).unwrap();
        let mut err = None;
        for t in 0..40 {
            if let Err(e) = v.push(&rgb8_from_pixels(&pattern(t, w, h), w, h)) {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => {
                drop(v); // what a caller does with a writer that failed
                e
            }
            None => v.finish().expect_err("a 1 kB disk cannot hold 40 frames"),
        };
        println!("{name}: {e}");
        assert!(e.to_string().contains("No space left"), "{name}: {e}");
        assert_clean(&dir, name.split('.').next().unwrap());
    }
    // A writer dropped before finish leaves nothing either.
    let v = VideoWriter::create(tmp().join("dropped.mp4"), w, h, 16).unwrap();
    drop(v);
    assert_clean(tmp(), "dropped");
}

#[test]
fn streaming_decode_equals_one_shot_for_any_chunking() {
    let vae = Arc::new(Vae::open(vae_file(), Precision::F32).unwrap());
    let (f, h, w) = (7, 3, 5);
    let z = vae.cfg.z_dim;
    let lat = dfrt::pipeline::Rng::new(17).normals(f * z * h * w);
    let one = vae.decode(&lat, f, h, w).unwrap();
    assert_eq!(one.len(), (1 + 4 * (f - 1)) * 3 * 64 * h * w);
    assert!(one.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
    let std = (one.iter().map(|x| x * x).sum::<f32>() / one.len() as f32).sqrt();
    assert!(std > 0.05, "degenerate decode (rms {std})");
    for sizes in [vec![3, 3, 1], vec![1; 7], vec![2, 5]] {
        let mut dec = Decoder::new(vae.clone());
        let mut got = Vec::new();
        let mut lo = 0;
        for n in sizes.iter().copied() {
            got.extend(dec.decode_chunk(&lat[lo * z * h * w..(lo + n) * z * h * w], n, h, w).unwrap());
            lo += n;
        }
        assert!(got == one, "chunks {sizes:?}: streaming differs from one-shot");
        // A reset starts a new video: the same latents decode to the same frames again.
        dec.reset();
        assert!(dec.decode_chunk(&lat, f, h, w).unwrap() == one, "after reset");
    }
    // Caches matter: decoding the second half alone differs from its streamed frames.
    let alone = Decoder::new(vae.clone()).decode_chunk(&lat[3 * z * h * w..], f - 3, h, w).unwrap();
    let streamed = &one[(1 + 4 * 2) * 3 * 64 * h * w..];
    assert_ne!(alone.len(), streamed.len(), "a fresh decoder treats its first frame as frame 0");
}

#[test]
fn bad_vae_checkpoints_and_latents_are_clear_errors() {
    let f = TensorFile::open(vae_file()).unwrap();
    let all: Vec<(String, Vec<usize>, Vec<f32>)> =
        f.tensors.iter().map(|(n, i)| (n.clone(), i.shape.clone(), f.f32_any(n).unwrap())).collect();
    let meta = f.metadata.clone();
    let write = |name: &str, edit: &dyn Fn(&mut Vec<OutTensor>)| {
        let mut ts: Vec<OutTensor> = all.iter().map(|(n, s, d)| OutTensor::f32(n.clone(), s.clone(), d)).collect();
        edit(&mut ts);
        let p = tmp().join(name);
        write_safetensors(&p, &ts, &meta).unwrap();
        p
    };
    let missing = write("missing.safetensors", &|ts| ts.retain(|t| t.name != "decoder.middle.1.proj.weight"));
    let e = Vae::open(&missing, Precision::F32).err().unwrap().to_string();
    assert!(e.contains("decoder.middle.1.proj.weight") && e.contains("missing"), "{e}");
    let wrong = write("wrong.safetensors", &|ts| {
        let t = ts.iter_mut().find(|t| t.name == "decoder.head.2.weight").unwrap();
        t.shape = vec![3, 4, 3, 9];
    });
    let e = Vae::open(&wrong, Precision::F32).err().unwrap().to_string();
    assert!(e.contains("decoder.head.2.weight") && e.contains("expected"), "{e}");
    let nan = write("nan.safetensors", &|ts| {
        let t = ts.iter_mut().find(|t| t.name == "conv2.bias").unwrap();
        t.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(Vae::open(&nan, Precision::F32).err().unwrap().to_string().contains("NaN"));
    // A DiT checkpoint is not a VAE.
    let e = Vae::open(&model().0, Precision::F32).err().unwrap().to_string();
    assert!(e.contains("DiT checkpoint, not a VAE"), "{e}");
    let e = Vae::open(tmp().join("nope.safetensors"), Precision::F32).err().unwrap().to_string();
    assert!(e.contains("dfrt-weights synth --vae"), "{e}");
    // Latents with the wrong channel count.
    let vae = Arc::new(Vae::open(vae_file(), Precision::F32).unwrap());
    let e = Decoder::new(vae.clone()).decode_chunk(&vec![0.5; 3 * 8 * 4 * 4], 3, 4, 4).err().unwrap().to_string();
    assert!(e.contains("16 latent channels"), "{e}");
    let e = dfrt::video::LatentVideo::create(vae, tmp().join("c.mp4"), 8, 4, 4, 16).err().unwrap().to_string();
    assert!(e.contains("8 channels") && e.contains("z_dim"), "{e}");
}

/// (exit code, stdout, stderr)
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn generate_with_vae_writes_the_video_that_decode_makes_from_its_latents() {
    let (m, c) = model();
    let dfrt = env!("CARGO_BIN_EXE_dfrt");
    let base = [
        "generate",
        "--model",
        s(m),
        "--context",
        s(c),
        "--frames",
        "6",
        "--height",
        "8",
        "--width",
        "8",
        "--seed",
        "5",
    ];
    let lat = tmp().join("gen.safetensors");
    let (code, _, err) = run(dfrt, &[&base[..], &["--out", s(&lat)]].concat());
    assert_eq!(code, 0, "{err}");
    let y4m = tmp().join("gen.y4m");
    let (code, out, err) = run(dfrt, &[&base[..], &["--vae", s(vae_file()), "--out", s(&y4m), "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &j["timings"];
    assert_eq!(t["video_frames"], 21);
    assert_eq!(t["decode_ms"].as_array().map(|a| a.len()), Some(2), "{t}");
    assert!(t["fps_diffusion"].as_f64().unwrap() > t["fps_end_to_end"].as_f64().unwrap(), "{t}");
    // The same latents through `dfrt decode` give the same file, byte for byte.
    let y4m2 = tmp().join("dec.y4m");
    let (code, out, err) = run(dfrt, &["decode", s(&lat), "--vae", s(vae_file()), "-o", s(&y4m2), "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((j["frames"].as_u64(), j["width"].as_u64(), j["height"].as_u64()), (Some(21), Some(64), Some(64)));
    assert!(std::fs::read(&y4m).unwrap() == std::fs::read(&y4m2).unwrap(), "generate --vae and decode disagree");
    let (code, _, err) = run(dfrt, &["decode", s(&lat), "--vae", s(vae_file()), "-o", s(&tmp().join("dec.mp4"))]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("FPS") && err.contains("ms/chunk"), "summary line: {err}");
    if have_ffmpeg() {
        let st = probe(&tmp().join("dec.mp4"));
        assert_eq!((st["codec_name"].as_str(), st["nb_read_frames"].as_str()), (Some("h264"), Some("21")));
    }
    // Bad inputs through the CLI: clear errors, exit 1, no panic, nothing written.
    let bad = tmp().join("bad8.safetensors");
    write_safetensors(
        &bad,
        &[OutTensor::f32("latents", vec![1, 3, 8, 4, 4], &vec![0.1; 3 * 8 * 16])],
        &Default::default(),
    )
    .unwrap();
    for (args, needle) in [
        (vec!["decode", s(&bad), "--vae", s(vae_file()), "-o", s(&tmp().join("b.mp4"))], "8 channels"),
        (vec!["decode", s(&lat), "--vae", s(vae_file()), "-o", s(&tmp().join("b.avi"))], "unknown video extension"),
        (vec!["decode", s(&lat), "--vae", s(vae_file()), "-o", "/nonexistent-dir/b.mp4"], "does not exist"),
        (vec!["decode", s(&lat), "--vae", s(m), "-o", s(&tmp().join("b.mp4"))], "not a VAE"),
    ] {
        let (code, _, err) = run(dfrt, &args);
        println!("{needle}: {}", err.trim());
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "`{needle}` not in {err}");
    }
    assert_clean(tmp(), "b.");
}

#[test]
fn video_session_hands_out_each_chunk_decoded() {
    use dfrt::api::{CpuModel, SessionOptions};
    use dfrt::pipeline::Noise;
    let (m, _) = model();
    let lm = CpuModel::cpu(m, Precision::F32).unwrap();
    let opts = SessionOptions::parse("full", 8, 8, Some(9), &lm.cfg).unwrap();
    let ctx = dfrt::pipeline::Rng::new(8).normals(4 * lm.cfg.text_dim);
    let vae = Arc::new(Vae::open(vae_file(), Precision::F32).unwrap());
    let mut vs =
        dfrt::video::VideoSession::new(lm.session(&opts, &ctx, 4, Noise::seeded(3)).unwrap(), vae.clone()).unwrap();
    let mut frames = Vec::new();
    let mut latents = Vec::new();
    let mut counts = Vec::new();
    while !vs.done() {
        let f = vs.next_frames(&mut |_| {}).unwrap();
        assert_eq!((f.width, f.height), (64, 64));
        assert_eq!(f.rgb8(0).len(), 64 * 64 * 3);
        counts.push(f.count);
        frames.extend(f.pixels);
        latents.extend(f.latents);
    }
    assert_eq!(counts, vec![9, 12, 12]);
    // The same as decoding the whole video's latents at once.
    assert!(frames == vae.decode(&latents, 9, 8, 8).unwrap(), "per-chunk frames differ from a one-shot decode");
    // A VAE of other channels than the model's latents is refused.
    let cfg8 = VaeConfig { z_dim: 8, mean: vec![0.0; 8], std: vec![1.0; 8], ..VaeConfig::with_dim(4) };
    let p8 = tmp().join("vae_z8.safetensors");
    dfrt_weights::vae::synth_vae(&p8, &cfg8, 1, DType::F32).unwrap();
    let v8 = Arc::new(Vae::open(&p8, Precision::F32).unwrap());
    let e = dfrt::video::VideoSession::new(lm.session(&opts, &ctx, 4, Noise::seeded(3)).unwrap(), v8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("16 channels") && e.contains("takes 8"), "{e}");
}
