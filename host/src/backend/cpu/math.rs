//! Vectorised elementwise math for the CPU backend: exp, tanh, GELU-tanh, SiLU and bf16
//! rounding over slices.
//!
//! On x86-64 with AVX2 and FMA (checked once at run time) eight lanes at a time with
//! `std::arch`; elsewhere the scalar `std` functions. Tails shorter than eight lanes go through
//! the same vector code on a padded copy, so every element of a slice gets the same formula.
//!
//! Accuracy (tested against f64 on random inputs below): exp ≤ 2 ulp, tanh ≤ 4 ulp,
//! GELU-tanh and SiLU ≤ 4 ulp where the result is not tiny; all far inside the 1e-4 contract.
//! exp saturates: arguments are clamped to [-87.34, 88.38], so results lie in
//! [2⁻¹²⁶, 2.4e38] (no denormals, no inf); NaN stays NaN.

/// Whether the AVX2+FMA paths run on this machine (checked once; `is_x86_feature_detected!`
/// caches).
#[inline]
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args)` whose body is compiled twice: once for the baseline target and
/// once with AVX2+FMA enabled (so LLVM vectorises plain loops over 8 lanes); the second runs when
/// the CPU has them.
macro_rules! multiversion {
    ($(#[$m:meta])* $v:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])* $v fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($a: $t),*) $(-> $r)? { body($($a),*) }
                if $crate::backend::cpu::math::simd_available() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { fast($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// Round-to-nearest-even to bf16, kept in an f32 (NaN becomes a quiet NaN, as `half` does).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = if x.is_nan() { b | 0x0040_0000 } else { b.wrapping_add(0x7fff + ((b >> 16) & 1)) };
    f32::from_bits(r & 0xffff_0000)
}

multiversion! {
    /// Rounds every element to bf16 in place.
    pub fn round_bf16_slice(v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = round_bf16(*x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    // Cephes' expf: e^x = 2^n · e^r, r = x − n·ln2 in [−ln2/2, ln2/2], degree-7 polynomial.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

    /// e^x on 8 lanes (see the module doc for the clamp).
    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        // min/max return their second operand when either is NaN: NaN passes through.
        let x = _mm256_min_ps(_mm256_set1_ps(88.376_26), x);
        let x = _mm256_max_ps(_mm256_set1_ps(-87.336_54), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &p in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(y, r2, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// tanh on 8 lanes: the Taylor series to x¹¹ below |x| = 0.25, (1 − e)/(1 + e) with
    /// e = exp(−2|x|) above (1 − e is exact there: e ≥ 0.6), the sign of x copied back.
    #[inline(always)]
    pub unsafe fn tanh8(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let ax = _mm256_andnot_ps(sign, x);
        let x2 = _mm256_mul_ps(x, x);
        let c = [-1382.0 / 155925.0, 62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0];
        let mut p = _mm256_set1_ps(c[0] as f32);
        for &ci in &c[1..] {
            p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(ci as f32));
        }
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, x2), x, x);
        let e = exp8(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0)));
        let one = _mm256_set1_ps(1.0);
        let big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
        let big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(0.25));
        _mm256_blendv_ps(big, small, is_small)
    }

    /// x / (1 + e^(−k·u(x))) on 8 lanes: SiLU with u(x) = x, GELU-tanh with
    /// u(x) = √(2/π)(x + 0.044715x³) and k = 2 (0.5(1 + tanh(u)) = 1/(1 + e^(−2u))).
    #[inline(always)]
    pub unsafe fn sigmoid_gate8(x: __m256, gelu: bool) -> __m256 {
        let t = if gelu {
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let u = _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044715), x);
            _mm256_mul_ps(u, _mm256_set1_ps(-2.0 * 0.797_884_6))
        } else {
            _mm256_sub_ps(_mm256_setzero_ps(), x)
        };
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp8(t)))
    }

    /// Applies `f` to `src` 8 lanes at a time into `dst` (same length); the tail through a
    /// padded copy.
    #[inline(always)]
    pub unsafe fn map8(src: &[f32], dst: &mut [f32], f: impl Fn(__m256) -> __m256) {
        assert_eq!(src.len(), dst.len());
        let n8 = src.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), f(_mm256_loadu_ps(src.as_ptr().add(i))));
        }
        if n8 < src.len() {
            let mut buf = [0f32; 8];
            buf[..src.len() - n8].copy_from_slice(&src[n8..]);
            _mm256_storeu_ps(buf.as_mut_ptr(), f(_mm256_loadu_ps(buf.as_ptr())));
            dst[n8..].copy_from_slice(&buf[..src.len() - n8]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let n8 = v.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            let p = v.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), s));
            acc = _mm256_add_ps(acc, e);
            _mm256_storeu_ps(p, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut total =
            ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        let len = v.len();
        if n8 < len {
            let mut buf = [0f32; 8];
            buf[..len - n8].copy_from_slice(&v[n8..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), s));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            v[n8..].copy_from_slice(&buf[..len - n8]);
            total += v[n8..].iter().sum::<f32>();
        }
        total
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp(src: &[f32], dst: &mut [f32]) {
        map8(src, dst, |x| exp8(x))
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tanh(src: &[f32], dst: &mut [f32]) {
        map8(src, dst, |x| tanh8(x))
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_tanh(src: &[f32], dst: &mut [f32]) {
        map8(src, dst, |x| sigmoid_gate8(x, true))
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu(src: &[f32], dst: &mut [f32]) {
        map8(src, dst, |x| sigmoid_gate8(x, false))
    }
}

/// GELU, tanh approximation (`torch.nn.GELU(approximate="tanh")`), scalar f32 (the fallback).
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// SiLU `x·sigmoid(x)`, scalar f32 (the fallback).
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

macro_rules! dispatch {
    ($(#[$m:meta])* $name:ident, $scalar:expr) => {
        $(#[$m])*
        pub fn $name(src: &[f32], dst: &mut [f32]) {
            assert_eq!(src.len(), dst.len(), concat!(stringify!($name), ": lengths differ"));
            #[cfg(target_arch = "x86_64")]
            if simd_available() {
                // SAFETY: AVX2 and FMA are present (checked just above).
                return unsafe { avx2::$name(src, dst) };
            }
            let f: fn(f32) -> f32 = $scalar;
            src.iter().zip(dst).for_each(|(s, d)| *d = f(*s));
        }
    };
}

dispatch!(
    /// `dst[i] = e^src[i]`.
    exp, f32::exp
);
dispatch!(
    /// `dst[i] = tanh(src[i])`.
    tanh, f32::tanh
);
dispatch!(
    /// `dst[i] = gelu_tanh(src[i])`.
    gelu_tanh, gelu_tanh_f32
);
dispatch!(
    /// `dst[i] = silu(src[i])`.
    silu, silu_f32
);

/// `v[i] = e^(v[i] − shift)` in place; returns the sum of the new values (the softmax step).
pub fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: AVX2 and FMA are present (checked just above).
        return unsafe { avx2::exp_shifted_sum(v, shift) };
    }
    v.iter_mut().for_each(|x| *x = (*x - shift).exp());
    sum(v)
}

/// Sum with 8 independent partial sums: vectorises, and the order is fixed (deterministic).
#[inline(always)]
pub fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum of squares, same order rules as [`sum`].
#[inline(always)]
pub fn sum_sq(v: &[f32], center: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            let x = c[j] - center;
            acc[j] += x * x;
        }
    }
    let tail: f32 = it.remainder().iter().map(|&x| (x - center) * (x - center)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

multiversion! {
    /// The largest element (−inf for an empty slice; NaN elements are skipped, and then
    /// propagate through the softmax's exp instead).
    pub fn max(v: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 8];
        let mut it = v.chunks_exact(8);
        for c in &mut it {
            for j in 0..8 {
                acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
            }
        }
        let m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        it.remainder().iter().fold(m, |a, &b| if b > a { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 and an f64 reference (rounded).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if got == w {
            return 0.0;
        }
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    fn inputs(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }

    /// Runs `f` on fresh random inputs (odd length, so the tail path runs too) and checks the
    /// worst ulp distance to `want`, divided by `cond(x)` (≥ 1: how much the problem itself
    /// amplifies a one-ulp error in the f32 argument), over results of magnitude at least
    /// `tiny`.
    #[allow(clippy::too_many_arguments)]
    fn check(
        name: &str,
        f: fn(&[f32], &mut [f32]),
        want: fn(f64) -> f64,
        cond: fn(f64) -> f64,
        lo: f32,
        hi: f32,
        max_ulps: f64,
        tiny: f64,
    ) {
        let x = inputs(100_003, lo, hi, 7);
        let mut y = vec![f32::NAN; x.len()];
        f(&x, &mut y);
        let mut worst = (0.0, 0usize);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let w = want(a as f64);
            assert!(b.is_finite(), "{name}({a}) = {b} (index {i}), want {w}");
            let u = if w.abs() < tiny { 0.0 } else { ulps(b, w) / cond(a as f64).max(1.0) };
            if u > worst.0 {
                worst = (u, i);
            }
        }
        let (u, i) = worst;
        assert!(
            u <= max_ulps,
            "{name}: {u:.2} ulp (scaled) at index {i}: x = {}, got {}, want {}",
            x[i],
            y[i],
            want(x[i] as f64)
        );
        eprintln!("{name} on [{lo}, {hi}]: worst {u:.2} ulp (scaled by the condition) at x = {}", x[i]);
    }

    fn one(_: f64) -> f64 {
        1.0
    }

    /// GELU-tanh's sensitivity to its f32 argument for x < 0: the result is ≈ x·e^(2u), so one
    /// ulp of u = √(2/π)(x + 0.044715x³) becomes |2u| ulps (any f32 GELU has this, PyTorch's
    /// included).
    fn gelu_cond(x: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        if u < 0.0 {
            -2.0 * u
        } else {
            1.0
        }
    }

    /// GELU-tanh in f64 as x·σ(2u) (= 0.5x(1 + tanh u); the tanh form cancels to nothing in
    /// f64 itself once x < −7).
    fn gelu64(x: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        x / (1.0 + (-2.0 * u).exp())
    }

    #[test]
    fn exp_within_2_ulp_of_f64() {
        check("exp", exp, f64::exp, one, -87.0, 88.0, 2.0, 0.0);
        check("exp", exp, f64::exp, one, -1.0, 1.0, 2.0, 0.0);
    }

    #[test]
    fn tanh_within_4_ulp_of_f64() {
        check("tanh", tanh, f64::tanh, one, -0.3, 0.3, 4.0, 0.0);
        check("tanh", tanh, f64::tanh, one, -12.0, 12.0, 4.0, 0.0);
    }

    #[test]
    fn gelu_and_silu_within_4_ulp_of_f64() {
        // Below ~1e-30 in magnitude (x ≲ −9 for GELU) the result is far under any tolerance
        // and rounds through exp's clamp; those lanes are only checked to be finite.
        check("gelu_tanh", gelu_tanh, gelu64, gelu_cond, -6.0, 6.0, 4.0, 1e-30);
        check("gelu_tanh", gelu_tanh, gelu64, gelu_cond, -30.0, 30.0, 4.0, 1e-30);
        check("silu", silu, |x| x / (1.0 + (-x).exp()), one, -20.0, 20.0, 4.0, 1e-30);
        check("silu", silu, |x| x / (1.0 + (-x).exp()), one, -80.0, 80.0, 4.0, 1e-30);
    }

    #[test]
    fn nan_stays_nan_and_extremes_saturate() {
        let x = [f32::NAN, 1000.0, -1000.0, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, 2.0];
        let mut y = [0f32; 9];
        exp(&x, &mut y);
        assert!(y[0].is_nan() && y[1].is_finite() && y[1] > 1e38 && y[2] > 0.0 && y[2] < 1.2e-38, "{y:?}");
        tanh(&x, &mut y);
        assert!(y[0].is_nan() && y[1] == 1.0 && y[2] == -1.0 && y[3] == 1.0 && y[4] == -1.0 && y[5] == 0.0, "{y:?}");
        gelu_tanh(&x, &mut y);
        assert!(y[0].is_nan() && y[1] == 1000.0 && y[2] <= 0.0 && y[2] > -1e-30 && y[5] == 0.0, "{y:?}");
        silu(&x, &mut y);
        assert!(y[0].is_nan() && y[1] == 1000.0 && y[2] <= 0.0 && y[2] > -1e-30, "{y:?}");
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut x = inputs(10_001, -3.0, 3.0, 9);
        x.extend([f32::NAN, f32::INFINITY, -0.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, 1e-40]);
        let mut y = x.clone();
        round_bf16_slice(&mut y);
        for (a, b) in x.iter().zip(&y) {
            let w = half::bf16::from_f32(*a).to_f32();
            assert!(w.to_bits() == b.to_bits() || (w.is_nan() && b.is_nan()), "{a}: {b} vs half {w}");
        }
    }
}
