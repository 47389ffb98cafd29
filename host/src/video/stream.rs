//! Latents to pixels to files, chunk by chunk: [`VideoSession`] decodes each chunk the DiT
//! session produces as soon as it is there; [`LatentVideo`] decodes latent chunks straight into
//! a [`VideoWriter`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::{rgb8_from_pixels, VideoWriter};
use crate::backend::Backend;
use crate::pipeline::{Progress, Session};
use crate::vae::{Decoder, Vae};
use crate::{Error, Result};

/// Decoded frames of one chunk.
#[derive(Clone, Debug)]
pub struct Frames {
    /// `[count, 3, height, width]` in [-1, 1].
    pub pixels: Vec<f32>,
    pub count: usize,
    pub height: usize,
    pub width: usize,
    /// The chunk's latents `[3, C, h, w]`, as the DiT gave them.
    pub latents: Vec<f32>,
    /// Milliseconds the decode of this chunk took.
    pub decode_ms: f64,
}

impl Frames {
    /// Frame `i` as interleaved RGB8 `[height, width, 3]`.
    pub fn rgb8(&self, i: usize) -> Vec<u8> {
        let n = 3 * self.height * self.width;
        rgb8_from_pixels(&self.pixels[i * n..(i + 1) * n], self.width, self.height)
    }
}

/// Checks that latents of `channels` channels at `h`×`w` fit the VAE.
pub fn check_latents(vae: &Vae, channels: usize, h: usize, w: usize) -> Result<()> {
    if channels != vae.cfg.z_dim {
        return Err(Error::Input(format!(
            "latents have {channels} channels but the VAE takes {} (z_dim)",
            vae.cfg.z_dim
        )));
    }
    if h == 0 || w == 0 {
        return Err(Error::Input(format!("latents of {h}×{w} pixels")));
    }
    Ok(())
}

/// A DiT session whose chunks come out decoded: the decoder's caches carry over between chunks.
pub struct VideoSession<B: Backend> {
    pub session: Session<B>,
    pub decoder: Decoder,
}

impl<B: Backend + 'static> VideoSession<B> {
    /// Pairs `session` with a fresh decoder of `vae`; the session's latent channels must be the
    /// VAE's z_dim.
    pub fn new(session: Session<B>, vae: Arc<Vae>) -> Result<Self> {
        let l = session.latent();
        check_latents(&vae, l.channels, l.height, l.width)?;
        Ok(VideoSession { session, decoder: Decoder::new(vae) })
    }

    pub fn done(&self) -> bool {
        self.session.done()
    }

    /// Generates the next chunk and decodes it: 1 + 4·2 = 9 frames for the first chunk, 12
    /// after (Wan2.1's VAE).
    pub fn next_frames(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Frames> {
        let latents = self.session.next_chunk(progress)?;
        let l = self.session.latent();
        let n = latents.len() / l.frame_len();
        let t = Instant::now();
        let pixels = self.decoder.decode_chunk(&latents, n, l.height, l.width)?;
        let s = self.decoder.vae().cfg.spatial_scale();
        let (height, width) = (l.height * s, l.width * s);
        let count = pixels.len() / (3 * height * width);
        Ok(Frames { pixels, count, height, width, latents, decode_ms: t.elapsed().as_secs_f64() * 1e3 })
    }
}

/// Decodes latent chunks into a video file, writing each chunk's frames before the next.
pub struct LatentVideo {
    pub decoder: Decoder,
    pub writer: VideoWriter,
    h: usize,
    w: usize,
    /// Decode time of each chunk pushed, in ms.
    pub decode_ms: Vec<f64>,
}

impl LatentVideo {
    /// Opens `path` for latents of `channels`×`h`×`w` (checked against the VAE).
    pub fn create(
        vae: Arc<Vae>,
        path: impl AsRef<Path>,
        channels: usize,
        h: usize,
        w: usize,
        fps: u32,
    ) -> Result<Self> {
        check_latents(&vae, channels, h, w)?;
        let s = vae.cfg.spatial_scale();
        let writer = VideoWriter::create(path, w * s, h * s, fps)?;
        Ok(LatentVideo { decoder: Decoder::new(vae), writer, h, w, decode_ms: Vec::new() })
    }

    /// Decodes `latents` (`[frames, C, h, w]`, the next chunk of the video) and writes the
    /// frames; returns how many were written.
    pub fn push(&mut self, latents: &[f32], frames: usize) -> Result<usize> {
        let t = Instant::now();
        let px = self.decoder.decode_chunk(latents, frames, self.h, self.w)?;
        self.decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let (w, h) = (self.writer.width, self.writer.height);
        let n = px.len() / (3 * w * h);
        for f in px.chunks(3 * w * h) {
            self.writer.push_pixels(f)?;
        }
        Ok(n)
    }

    /// Finishes the file; returns the frame count.
    pub fn finish(self) -> Result<usize> {
        self.writer.finish()
    }
}
