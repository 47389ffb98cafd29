//! The seeded noise generator: PCG32 (PCG-XSH-RR 64/32, O'Neill 2014) for uniform bits and the
//! Box–Muller transform for standard normals.
//!
//! Exact definition, so other implementations (the C API, a GPU path) can reproduce it:
//! - state update `state = state · 6364136223846793005 + inc` (wrapping u64), with
//!   `inc = (stream << 1) | 1`, `stream = 0xda3e39cb94b95bdb`;
//! - seeding: `state = 0; step; state += seed; step`;
//! - output of a step (computed from the old state): `xorshifted = ((old >> 18) ^ old) >> 27`,
//!   `rot = old >> 59`, `out = xorshifted.rotate_right(rot)` (u32);
//! - a uniform in (0, 1] is `(u + 1) / 2^32` for a 32-bit `u`;
//! - normals come in pairs from two uniforms `u1, u2`: `r = sqrt(−2 ln u1)`,
//!   `z0 = r cos(2π u2)`, `z1 = r sin(2π u2)` (in f64, then cast to f32); an odd count drops z1.
//!
//! ```
//! use dfrt::pipeline::Rng;
//!
//! let mut r = Rng::new(42);
//! let all = r.clone().normals(6);
//! // Draws come in pairs, so even-sized pieces continue the same stream.
//! let mut parts = r.normals(2);
//! parts.extend(r.normals(4));
//! assert_eq!(parts, all);
//! assert_ne!(Rng::new(43).normals(6), all);
//! let u = Rng::new(1).uniform();
//! assert!(u > 0.0 && u <= 1.0);
//! ```

/// The seeded generator behind [`crate::pipeline::Noise::Seeded`] (PCG32 + Box–Muller).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    inc: u64,
}

const MUL: u64 = 6364136223846793005;
const STREAM: u64 = 0xda3e39cb94b95bdb;

impl Rng {
    /// A generator seeded as described in the [module docs](self).
    pub fn new(seed: u64) -> Self {
        let mut r = Rng { state: 0, inc: (STREAM << 1) | 1 };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    /// The next 32 random bits (one PCG32 step).
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MUL).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        (self.next_u32() as f64 + 1.0) / 4294967296.0
    }

    /// `n` standard normal draws.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            v.push((r * a.cos()) as f32);
            v.push((r * a.sin()) as f32);
        }
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcg32_reference_values() {
        // Reference output of pcg32_srandom(42, 54) from the PCG paper's demo program.
        let mut r = Rng { state: 0, inc: (54u64 << 1) | 1 };
        r.next_u32();
        r.state = r.state.wrapping_add(42);
        r.next_u32();
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, vec![0xa15c02b7, 0x7b47f409, 0xba1d3330]);
    }

    #[test]
    fn normals_have_unit_moments() {
        let v = Rng::new(7).normals(200_001);
        assert_eq!(v.len(), 200_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean} var {var}");
        assert_ne!(Rng::new(1).normals(4), Rng::new(2).normals(4));
        assert_eq!(Rng::new(3).normals(5), Rng::new(3).normals(5));
    }
}
