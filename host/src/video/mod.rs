//! Video files from decoded frames: H.264 in MP4 (yuv420p), Y4M, a folder of PNG frames, or
//! the frames as floats in safetensors (tensor `video` `[1, T, 3, H, W]` in [-1, 1], what the
//! official `decode_to_pixel` returns: lossless, for checking against a reference), chosen by
//! the output path (`.mp4`, `.y4m`, `.safetensors`, or no extension / a trailing `/` for a
//! folder).
//!
//! Frames are written as they arrive ([`VideoWriter::push`]), so a long video is never held
//! in memory. Everything goes to a temporary name beside the target (`.NAME.partial`) that is
//! renamed only by [`VideoWriter::finish`]; an error or a dropped writer removes it, so a failed
//! or interrupted write (a full disk) leaves no valid-looking half file behind.
//!
//! ```
//! use dfrt::video::{rgb8_from_pixels, VideoWriter};
//! let dir = std::env::temp_dir().join(format!("dfrt-doc-video-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let (w, h) = (16, 8);
//! let mut v = VideoWriter::create(dir.join("a.y4m"), w, h, 16)?;
//! for t in 0..3 {
//!     // One frame [3, h, w] in [-1, 1], as the VAE decodes it.
//!     let px: Vec<f32> = (0..3 * w * h).map(|i| ((i + t) as f32 * 0.1).sin()).collect();
//!     v.push(&rgb8_from_pixels(&px, w, h))?;
//! }
//! assert_eq!(v.finish()?, 3);
//! assert!(std::fs::read(dir.join("a.y4m")).unwrap().starts_with(b"YUV4MPEG2 W16 H8 F16:1"));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), dfrt::Error>(())
//! ```

pub mod mp4;
pub mod png;
pub mod stream;

pub use stream::{Frames, LatentVideo, VideoSession};

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The official frame rate of Wan2.1 videos.
pub const DEFAULT_FPS: u32 = 16;

/// `[3, h, w]` pixels in [-1, 1] (one decoded frame) to interleaved RGB8 `[h, w, 3]`, with the
/// pipeline's `(x·0.5 + 0.5).clamp(0, 1)` and rounding to the nearest of 0..=255.
pub fn rgb8_from_pixels(px: &[f32], w: usize, h: usize) -> Vec<u8> {
    let hw = w * h;
    let mut out = vec![0u8; 3 * hw];
    for c in 0..3 {
        for i in 0..hw {
            let v = (px[c * hw + i] * 0.5 + 0.5).clamp(0.0, 1.0);
            out[i * 3 + c] = (v * 255.0).round() as u8;
        }
    }
    out
}

/// RGB8 `[h, w, 3]` to planar yuv420p, BT.601 limited range (what players and ffmpeg assume
/// for untagged SD/H.264 video). Chroma is the mean of each 2×2 block. `w`, `h` even.
pub fn yuv420_from_rgb8(rgb: &[u8], w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        (rgb[i] as f32 / 255.0, rgb[i + 1] as f32 / 255.0, rgb[i + 2] as f32 / 255.0)
    };
    let mut yp = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let (r, g, b) = px(x, y);
            yp[y * w + x] = (16.0 + 65.481 * r + 128.553 * g + 24.966 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    let (mut u, mut v) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
    for y in 0..ch {
        for x in 0..cw {
            let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(2 * x + dx, 2 * y + dy);
                r += p.0 / 4.0;
                g += p.1 / 4.0;
                b += p.2 / 4.0;
            }
            u[y * cw + x] = (128.0 - 37.797 * r - 74.203 * g + 112.0 * b).round().clamp(0.0, 255.0) as u8;
            v[y * cw + x] = (128.0 + 112.0 * r - 93.786 * g - 18.214 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    (yp, u, v)
}

/// An I/O error of the muxer, named after the target file.
fn named(e: Error, target: &Path) -> Error {
    match e {
        Error::Io { source, .. } => Error::io(target, source),
        e => e,
    }
}

/// The output kinds, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Mp4,
    Y4m,
    PngFolder,
    /// f32 frames in safetensors (`video` `[1, T, 3, H, W]`, in [-1, 1]).
    Tensor,
}

impl Format {
    /// `.mp4`, `.y4m`, or a path without an extension (or ending in `/`) for a PNG folder;
    /// anything else is an error that lists the choices.
    pub fn of(path: &Path) -> Result<Format> {
        let s = path.to_string_lossy();
        if s.ends_with('/') {
            return Ok(Format::PngFolder);
        }
        match path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()) {
            Some(e) if e == "mp4" => Ok(Format::Mp4),
            Some(e) if e == "y4m" => Ok(Format::Y4m),
            Some(e) if e == "safetensors" => Ok(Format::Tensor),
            None => Ok(Format::PngFolder),
            Some(e) => Err(Error::Input(format!(
                "{}: unknown video extension `.{e}` (use .mp4 for H.264, .y4m, .safetensors for f32 frames, or a path without extension for a folder of PNG frames)",
                path.display()
            ))),
        }
    }
}

/// A file (or folder) written under a temporary name and renamed into place at the end.
struct Staged {
    target: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl Staged {
    fn new(target: &Path) -> Result<Self> {
        let target = PathBuf::from(target.to_string_lossy().trim_end_matches('/'));
        let name = target.file_name().ok_or_else(|| Error::Input(format!("{}: not a file name", target.display())))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::Input(format!(
                "{}: the output folder {} does not exist",
                target.display(),
                parent.display()
            )));
        }
        let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
        Ok(Staged { target, tmp, done: false })
    }
    fn commit(&mut self) -> Result<()> {
        if self.target.is_dir() {
            std::fs::remove_dir_all(&self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            if self.tmp.is_dir() {
                std::fs::remove_dir_all(&self.tmp).ok();
            } else {
                std::fs::remove_file(&self.tmp).ok();
            }
        }
    }
}

/// A file sink that can fail like a full disk after `limit` bytes (tests only).
pub(crate) struct Sink {
    f: std::io::BufWriter<std::fs::File>,
    written: u64,
    limit: Option<u64>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(l) = self.limit {
            if self.written + buf.len() as u64 > l {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device (simulated)",
                ));
            }
        }
        let n = self.f.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.flush()
    }
}

impl Seek for Sink {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.f.seek(pos)
    }
}

impl Sink {
    fn create(path: &Path, limit: Option<u64>) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Sink { f: std::io::BufWriter::with_capacity(1 << 20, f), written: 0, limit })
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.f.flush()?;
        self.f.get_ref().sync_all()
    }
}

enum Kind {
    Mp4(Box<mp4::Mp4Writer<Sink>>),
    Y4m(Sink),
    Png {
        dir: PathBuf,
        written: u64,
        limit: Option<u64>,
    },
    /// The frames follow a header of [`TENSOR_HEADER`] bytes, written by `finish` once the
    /// frame count is known (safetensors allows the header's JSON to be padded with spaces).
    Tensor(Sink),
}

/// Bytes reserved for the safetensors header of a [`Format::Tensor`] video (8-byte length +
/// JSON): the data starts 256-byte aligned, as in every dfrt checkpoint.
const TENSOR_HEADER: usize = crate::checkpoint::ALIGN;

fn write_f32(s: &mut Sink, px: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
    s.write_all(&bytes)
}

/// The header of a `video` tensor of `frames` frames, padded with spaces to [`TENSOR_HEADER`].
fn tensor_header(frames: usize, w: usize, h: usize, fps: u32) -> Result<Vec<u8>> {
    let bytes = frames * 3 * h * w * 4;
    let json = format!(
        r#"{{"__metadata__":{{"fps":"{fps}"}},"video":{{"dtype":"F32","shape":[1,{frames},3,{h},{w}],"data_offsets":[0,{bytes}]}}}}"#
    );
    if json.len() > TENSOR_HEADER - 8 {
        return Err(Error::Input(format!("a {frames}-frame {w}×{h} video does not fit a {TENSOR_HEADER}-byte header")));
    }
    let mut out = ((TENSOR_HEADER - 8) as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(TENSOR_HEADER, b' ');
    Ok(out)
}

/// Writes RGB8 frames of one size to a video file as they come.
pub struct VideoWriter {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub format: Format,
    frames: usize,
    staged: Staged,
    kind: Kind,
}

impl VideoWriter {
    /// Opens `path` for a `width`×`height` video at `fps`; the format follows the path
    /// ([`Format::of`]). The output folder must exist.
    pub fn create(path: impl AsRef<Path>, width: usize, height: usize, fps: u32) -> Result<Self> {
        Self::create_limited(path, width, height, fps, None)
    }

    /// As [`VideoWriter::create`], but writes fail as on a full disk once `limit` bytes are
    /// written: for testing the clean-up.
    #[doc(hidden)]
    pub fn create_limited(
        path: impl AsRef<Path>,
        width: usize,
        height: usize,
        fps: u32,
        limit: Option<u64>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let format = Format::of(path)?;
        if width == 0 || height == 0 || fps == 0 {
            return Err(Error::Input(format!("{}: a {width}×{height} video at {fps} fps", path.display())));
        }
        if matches!(format, Format::Mp4 | Format::Y4m) && (!width.is_multiple_of(2) || !height.is_multiple_of(2)) {
            return Err(Error::Input(format!(
                "{}: yuv420p needs an even width and height, not {width}×{height}",
                path.display()
            )));
        }
        let staged = Staged::new(path)?;
        if staged.tmp.exists() {
            if staged.tmp.is_dir() {
                std::fs::remove_dir_all(&staged.tmp).ok();
            } else {
                std::fs::remove_file(&staged.tmp).ok();
            }
        }
        let kind = match format {
            Format::Mp4 => {
                Kind::Mp4(Box::new(mp4::Mp4Writer::new(Sink::create(&staged.tmp, limit)?, width, height, fps)?))
            }
            Format::Y4m => {
                let mut s = Sink::create(&staged.tmp, limit)?;
                writeln!(s, "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg")
                    .map_err(|e| Error::io(path, e))?;
                Kind::Y4m(s)
            }
            Format::PngFolder => {
                std::fs::create_dir(&staged.tmp).map_err(|e| Error::io(&staged.tmp, e))?;
                Kind::Png { dir: staged.tmp.clone(), written: 0, limit }
            }
            Format::Tensor => {
                let mut s = Sink::create(&staged.tmp, limit)?;
                s.write_all(&[b' '; TENSOR_HEADER]).map_err(|e| Error::io(path, e))?;
                Kind::Tensor(s)
            }
        };
        Ok(VideoWriter { width, height, fps, format, frames: 0, staged, kind })
    }

    /// Frames written so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Appends one decoded frame `[3, height, width]` in [-1, 1]: as floats to a
    /// [`Format::Tensor`] file, as RGB8 ([`rgb8_from_pixels`]) to the others.
    pub fn push_pixels(&mut self, px: &[f32]) -> Result<()> {
        let (w, h) = (self.width, self.height);
        if px.len() != 3 * w * h {
            return Err(Error::Input(format!("video frame of {} values, expected 3×{h}×{w}", px.len())));
        }
        let Kind::Tensor(s) = &mut self.kind else {
            return self.push(&rgb8_from_pixels(px, w, h));
        };
        write_f32(s, px).map_err(|e| Error::io(&self.staged.target, e))?;
        self.frames += 1;
        Ok(())
    }

    /// Appends one RGB8 frame `[height, width, 3]` (to a [`Format::Tensor`] file as the
    /// floats `v / 127.5 − 1`, planar).
    pub fn push(&mut self, rgb: &[u8]) -> Result<()> {
        let (w, h) = (self.width, self.height);
        if rgb.len() != w * h * 3 {
            return Err(Error::Input(format!("video frame of {} bytes, expected {w}×{h}×3", rgb.len())));
        }
        let target = self.staged.target.clone();
        let io = |e| Error::io(&target, e);
        match &mut self.kind {
            Kind::Mp4(m) => m.push(rgb).map_err(|e| named(e, &target))?,
            Kind::Y4m(s) => {
                let (y, u, v) = yuv420_from_rgb8(rgb, w, h);
                s.write_all(b"FRAME\n").map_err(io)?;
                s.write_all(&y).map_err(io)?;
                s.write_all(&u).map_err(io)?;
                s.write_all(&v).map_err(io)?;
            }
            Kind::Png { dir, written, limit } => {
                let data = png::encode_rgb8(rgb, w, h);
                *written += data.len() as u64;
                if limit.is_some_and(|l| *written > l) {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device (simulated)",
                    )));
                }
                let p = dir.join(format!("frame_{:05}.png", self.frames));
                std::fs::write(&p, data).map_err(io)?;
            }
            Kind::Tensor(s) => {
                let px: Vec<f32> =
                    (0..3).flat_map(|c| (0..w * h).map(move |i| rgb[3 * i + c] as f32 / 127.5 - 1.0)).collect();
                write_f32(s, &px).map_err(io)?;
            }
        }
        self.frames += 1;
        Ok(())
    }

    /// Completes the file (the MP4 index), syncs it and renames it into place; returns the
    /// frame count. Without this call nothing appears at the target path.
    pub fn finish(mut self) -> Result<usize> {
        let target = self.staged.target.clone();
        let io = |e| Error::io(&target, e);
        if self.frames == 0 {
            return Err(Error::Input(format!("{}: no frames to write", target.display())));
        }
        match &mut self.kind {
            Kind::Mp4(m) => m.finish().map_err(|e| named(e, &target))?.sync().map_err(io)?,
            Kind::Y4m(s) => s.sync().map_err(io)?,
            Kind::Png { .. } => {}
            Kind::Tensor(s) => {
                use std::io::SeekFrom;
                let header = tensor_header(self.frames, self.width, self.height, self.fps)?;
                s.seek(SeekFrom::Start(0)).and_then(|_| s.write_all(&header)).and_then(|_| s.sync()).map_err(io)?;
            }
        }
        self.staged.commit()?;
        Ok(self.frames)
    }

    /// Where the finished video will be.
    pub fn path(&self) -> &Path {
        &self.staged.target
    }
}
