//! The flow-matching schedule and Self-Forcing's denoising timesteps.

/// Self-Forcing's defaults.
pub const DENOISING_STEPS: [u32; 4] = [1000, 750, 500, 250];

pub const TIMESTEP_SHIFT: f32 = 5.0;

pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// `torch.linspace(start, end, steps)` in f32, with PyTorch's CPU kernel's two-sided formula.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// The flow-matching schedule: `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`
/// with `set_timesteps(1000)`, and the warped denoising steps.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The scheduler's 1000 sigmas and timesteps (f32).
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f32>,
    /// Warped timesteps of the denoising steps, e.g. [1000, 937.5, 833.33, 625].
    pub steps: Vec<f32>,
}

impl Schedule {
    pub fn new(shift: f32, denoising: &[u32]) -> Self {
        let n = NUM_TRAIN_TIMESTEPS;
        let s = linspace_f32(1.0, 0.0, n + 1);
        let sigmas: Vec<f32> = s[..n].iter().map(|&s| shift * s / (1.0 + (shift - 1.0) * s)).collect();
        let timesteps: Vec<f32> = sigmas.iter().map(|&s| s * n as f32).collect();
        // warped = cat(timesteps, [0])[1000 − step]
        let steps = denoising
            .iter()
            .map(|&d| {
                let i = n - d as usize;
                if i < n {
                    timesteps[i]
                } else {
                    0.0
                }
            })
            .collect();
        Schedule { sigmas, timesteps, steps }
    }

    pub fn official() -> Self {
        Schedule::new(TIMESTEP_SHIFT, &DENOISING_STEPS)
    }

    /// The same scheduler with the denoising steps used as given (no warp), as CausVid does:
    /// the model sees exactly these t, and σ(t) comes from the nearest grid point.
    pub fn unwarped(shift: f32, denoising: &[u32]) -> Self {
        let mut s = Schedule::new(shift, &[]);
        s.steps = denoising.iter().map(|&d| d as f32).collect();
        s
    }

    /// The sigma at `argmin |timesteps − t|` (first index on ties, like torch.argmin).
    pub fn sigma(&self, t: f32) -> f32 {
        let mut best = 0;
        for (i, &ti) in self.timesteps.iter().enumerate() {
            if (ti - t).abs() < (self.timesteps[best] - t).abs() {
                best = i;
            }
        }
        self.sigmas[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warped_timesteps_match_the_official_schedule() {
        let s = Schedule::official();
        assert_eq!(s.steps, vec![1000.0, 937.5, 833.333_3, 625.0]);
        let sig: Vec<f32> = s.steps.iter().map(|&t| s.sigma(t)).collect();
        assert_eq!(sig, vec![1.0, 0.9375, 0.833_333_3, 0.625]);
    }
}
