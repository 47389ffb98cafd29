//! Rolling Forcing's loop (official `CausalInferencePipeline.inference_rolling_forcing`,
//! TencentARC/RollingForcing @ a1477d0).
//!
//! With S = the number of denoising steps (5) and B blocks (chunks of 3 frames), window
//! `w = 0 .. B + S − 1` spans blocks `max(0, w − S + 1) ..= min(B − 1, w)`. Block `b` is at
//! step `w − b` in window `w`: it enters as fresh noise at step 0 and is final (its x0 is the
//! output) in window `b + S − 1`, where it is the oldest block. Each window is one forward over
//! all its frames, each frame at its block's timestep; then every block not at its last step
//! is re-noised to its next timestep, and a cache pass at t = 0 over the oldest block writes
//! its clean K/V ([`crate::cache::rolling`]).

use super::{Progress, Session};
use crate::backend::Backend;
use crate::config::FRAMES_PER_CHUNK;
use crate::model::PassInfo;
use crate::Result;

/// The loop's state between windows.
pub(super) struct RollingRun {
    /// Next window.
    pub window: usize,
    /// Per block: its current noisy latents (the next window's input), once it entered.
    pub noisy: Vec<Option<Vec<f32>>>,
}

/// Blocks of window `w` (inclusive range) for `blocks` blocks and `steps` steps.
pub fn window_blocks(w: usize, blocks: usize, steps: usize) -> (usize, usize) {
    (w.saturating_sub(steps - 1), w.min(blocks - 1))
}

impl<B: Backend + 'static> Session<B> {
    /// Runs windows until block `self.chunk` is final; returns its latents.
    pub(super) fn next_chunk_rolling(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<Vec<f32>> {
        let nf = FRAMES_PER_CHUNK;
        let blocks = self.frames.expect("rolling needs a frame count (checked at open)") / nf;
        let steps = self.schedule.steps.clone();
        let sn = steps.len();
        let flen = nf * self.latent.frame_len();
        let lat = self.latent;
        let target = self.chunk;
        loop {
            let w = self.rolling.as_ref().expect("rolling state").window;
            let (b0, b1) = window_blocks(w, blocks, sn);
            // Input: the blocks' noisy latents; a block entering now takes fresh noise.
            let mut xt = Vec::with_capacity((b1 - b0 + 1) * flen);
            let mut ts = Vec::new();
            for b in b0..=b1 {
                let step = w - b;
                if step == 0 {
                    let n: Vec<f32> = self.draw(b, None).into_iter().map(|x| self.store_f32(x)).collect();
                    self.rolling.as_mut().unwrap().noisy[b] = Some(n);
                }
                xt.extend_from_slice(self.rolling.as_ref().unwrap().noisy[b].as_ref().expect("entered"));
                ts.extend(std::iter::repeat_n(steps[step], nf));
            }
            let frames = (b1 - b0 + 1) * nf;
            let pass = PassInfo::denoise(w, 0, b0 * nf, frames);
            let x = self.be.upload(&xt, &[frames, lat.channels, lat.height, lat.width]);
            let temb = self.model.time_embedding_frames(&self.be, &ts, None);
            let flow = {
                let (model, be, cache, text, hook) = self.parts();
                let f = model.forward_embedded(be, &x, &temb, &pass, cache, text, hook, None)?;
                hook.after_forward(be, &pass, cache)?;
                be.download(&f)
            };
            self.be.status()?;
            // flow → x0 per frame in f64, each frame at its own σ.
            let per = lat.frame_len();
            let mut x0 = Vec::with_capacity(xt.len());
            for (f, t) in ts.iter().enumerate() {
                let sigma = self.schedule.sigma(*t) as f64;
                for i in f * per..(f + 1) * per {
                    x0.push(self.store_f64(xt[i] as f64 - sigma * flow[i] as f64));
                }
            }
            if let Some(rec) = &mut self.record {
                rec.insert(format!("xt.{w}"), xt.clone());
                rec.insert(format!("x0.{w}"), x0.clone());
            }
            progress(Progress { pass, chunks: Some(blocks) });
            // Re-noise every block not at its last step, oldest first (one draw per block).
            for b in b0..=b1 {
                let step = w - b;
                if step + 1 < sn {
                    let s_next = self.schedule.sigma(steps[step + 1]);
                    let eps = self.draw(b, Some(step));
                    let xb = &x0[(b - b0) * flen..(b - b0 + 1) * flen];
                    let n =
                        xb.iter().zip(&eps).map(|(&a, &e)| self.store_f32((1.0 - s_next) * a + s_next * e)).collect();
                    self.rolling.as_mut().unwrap().noisy[b] = Some(n);
                }
            }
            // The cache pass: the oldest block's x0 at t = 0.
            let first = &x0[..flen];
            let cpass = PassInfo::clean(w, b0 * nf, nf);
            let xc = self.be.upload(first, &[nf, lat.channels, lat.height, lat.width]);
            let want_flow = self.record.is_some();
            let cflow = {
                let (model, be, cache, text, hook) = self.parts();
                let f = model.forward(be, &xc, 0.0, &cpass, cache, text, hook, None)?;
                want_flow.then(|| be.download(&f))
            };
            self.be.status()?;
            if let (Some(rec), Some(f)) = (&mut self.record, cflow) {
                rec.insert(format!("cachepass_flow.{w}"), f);
            }
            progress(Progress { pass: cpass, chunks: Some(blocks) });
            self.rolling.as_mut().unwrap().window += 1;
            if w - b0 + 1 == sn {
                // Block b0 reached its last step: its x0 is final.
                debug_assert_eq!(b0, target);
                self.chunk += 1;
                return Ok(first.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_match_the_official_ranges() {
        // rolling-tiny: 10 blocks, 5 steps → 14 windows; warm-up 0–3, full 4–9, tail 10–13.
        let got: Vec<_> = (0..14).map(|w| window_blocks(w, 10, 5)).collect();
        assert_eq!(got[0], (0, 0));
        assert_eq!(got[3], (0, 3));
        assert_eq!(got[4], (0, 4));
        assert_eq!(got[9], (5, 9));
        assert_eq!(got[12], (8, 9));
        assert_eq!(got[13], (9, 9));
    }
}
