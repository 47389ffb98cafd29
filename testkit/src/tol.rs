//! The tolerance rules. Each check prints its evidence, and a NaN anywhere fails.

/// Error statistics of `got` against `want`.
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    /// ‖got − want‖₂ / ‖want‖₂
    pub rel_l2: f64,
    pub max_abs: f64,
    /// max |got − want| / max |want|
    pub max_rel: f64,
    /// Index of the largest absolute error.
    pub worst: usize,
}

/// The error statistics; panics on a length mismatch or a non-finite `got`.
pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    assert_eq!(got.len(), want.len(), "length mismatch: got {} want {}", got.len(), want.len());
    let (mut num, mut den, mut max_abs, mut max_ref, mut worst) = (0f64, 0f64, 0f64, 0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        if !g.is_finite() {
            panic!("non-finite value at index {i}: got {g}, want {w}");
        }
        let e = (g - w).abs();
        num += e * e;
        den += w * w;
        if e > max_abs {
            max_abs = e;
            worst = i;
        }
        max_ref = max_ref.max(w.abs());
    }
    Diff { rel_l2: (num / den.max(1e-300)).sqrt(), max_abs, max_rel: max_abs / max_ref.max(1e-300), worst }
}

/// ‖got − want‖₂ / ‖want‖₂; fails on a non-finite value, naming `name`.
pub fn rel_l2(name: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{name}: non-finite value at {i}: got {} want {}", got[i], want[i]);
    }
    diff(got, want).rel_l2
}

/// Asserts relative L2 ≤ `tol`, printing the evidence either way.
///
/// ```
/// let want = [1.0f32, 2.0, 3.0];
/// dfrt_testkit::tol::assert_rel_l2("ok", &[1.0, 2.0, 3.001], &want, 1e-3);
/// assert!(std::panic::catch_unwind(|| dfrt_testkit::tol::assert_rel_l2("nan", &[1.0, f32::NAN, 3.0], &want, 1.0)).is_err());
/// ```
pub fn assert_rel_l2(name: &str, got: &[f32], want: &[f32], tol: f64) -> Diff {
    let d = diff(got, want);
    println!(
        "{name:<24} rel_l2 {:.3e}  max_abs {:.3e}  max_rel {:.3e}  (n = {})",
        d.rel_l2,
        d.max_abs,
        d.max_rel,
        got.len()
    );
    if !(d.rel_l2 <= tol) {
        let first = got
            .iter()
            .zip(want)
            .position(|(g, w)| ((g - w).abs() as f64) > tol * w.abs().max(1e-3) as f64)
            .unwrap_or(d.worst);
        panic!(
            "{name}: rel L2 {:.3e} > {tol:.1e}; first bad index {first}: got {} want {}; worst index {}: got {} want {}; max abs {:.3e}",
            d.rel_l2, got[first], want[first], d.worst, got[d.worst], want[d.worst], d.max_abs
        );
    }
    d
}

/// Asserts max |got − want| ≤ `atol`; returns the max abs error.
pub fn assert_atol(name: &str, got: &[f32], want: &[f32], atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: length mismatch: got {} want {}", got.len(), want.len());
    if got.is_empty() {
        return 0.0;
    }
    let d = diff(got, want);
    if !(d.max_abs <= atol) {
        let first = got.iter().zip(want).position(|(g, w)| ((g - w).abs() as f64) > atol).unwrap_or(d.worst);
        panic!(
            "{name}: max abs {:.3e} > {atol:.1e}; first bad index {first}: got {} want {}; worst index {}: got {} want {}; rel L2 {:.3e}",
            d.max_abs, got[first], want[first], d.worst, got[d.worst], want[d.worst], d.rel_l2
        );
    }
    d.max_abs
}

/// |got − want| ≤ atol + rtol·|want| everywhere, against an f64 reference; NaN fails.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // Written so that a NaN error counts as bad.
        let ok = err <= atol + rtol * w.abs();
        if !ok && first_bad.is_none() {
            first_bad = Some(i);
        }
        if err.is_finite() {
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / w.abs().max(1e-30));
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: mismatch at index {i}: got {} want {} (max abs err {max_abs:e}, max rel err {max_rel:e}, atol {atol:e}, rtol {rtol:e})",
            got[i], want[i]
        );
    }
}

/// FlashAttention's rule: the kernel's max error against an exact (f64) reference may be at
/// most `factor` (2 in FlashAttention's tests) times the error of a naive implementation in
/// the kernel's own precision, plus `atol` for outputs the naive one gets exactly right.
///
/// ```
/// let exact = [1.0f64, 2.0];
/// dfrt_testkit::tol::assert_fa_rule("fa", &[1.001, 2.0], &[1.0008, 2.0], &exact, 2.0, 1e-6);
/// ```
pub fn assert_fa_rule(what: &str, got: &[f32], naive: &[f32], exact: &[f64], factor: f64, atol: f64) {
    assert_eq!((got.len(), naive.len()), (exact.len(), exact.len()), "{what}: lengths");
    let err = |v: &[f32]| -> f64 {
        v.iter()
            .zip(exact)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, |a, e| if e.is_nan() { f64::NAN } else { a.max(e) })
    };
    let (e, en) = (err(got), err(naive));
    println!("{what:<24} max err {e:.3e}, naive same-precision {en:.3e} (bound {factor}× + {atol:.0e})");
    assert!(e <= factor * en + atol, "{what}: max error {e:.3e} > {factor} × naive {en:.3e} + {atol:.1e}");
}

/// Distance in bf16 units in the last place between two values (as bf16 bit patterns
/// ordered on the number line); NaN is `u32::MAX`.
///
/// ```
/// use dfrt_testkit::tol::bf16_ulps;
/// assert_eq!(bf16_ulps(1.0, 1.0), 0);
/// assert_eq!(bf16_ulps(1.0, f32::from_bits(0x3f81_0000)), 1); // the next bf16 above 1
/// assert_eq!(bf16_ulps(1.0, f32::NAN), u32::MAX);
/// ```
pub fn bf16_ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() || b.is_nan() {
        return u32::MAX;
    }
    let key = |x: f32| {
        let h = (x.to_bits() >> 16) as i32;
        if h & 0x8000 != 0 {
            -(h & 0x7fff)
        } else {
            h
        }
    };
    key(a).abs_diff(key(b))
}

/// Asserts every element is within `max_ulps` bf16 ulps of `want`.
pub fn assert_bf16_ulps(what: &str, got: &[f32], want: &[f32], max_ulps: u32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, u) =
        got.iter().zip(want).map(|(&g, &w)| bf16_ulps(g, w)).enumerate().max_by_key(|&(_, u)| u).unwrap_or((0, 0));
    println!("{what:<24} max {u} bf16 ulps (at {i}; bound {max_ulps})");
    assert!(u <= max_ulps, "{what}: {u} bf16 ulps at index {i}: got {} want {} (bound {max_ulps})", got[i], want[i]);
}

/// Asserts `got` equals `want` bit for bit (the rule where a result must not change at all:
/// a converted checkpoint, a graph replay, the C API against the Rust API), printing the
/// first difference and the largest absolute one.
///
/// ```
/// dfrt_testkit::tol::assert_bits_eq("same", &[1.0, -0.0], &[1.0, -0.0]);
/// let r = std::panic::catch_unwind(|| dfrt_testkit::tol::assert_bits_eq("sign", &[0.0], &[-0.0]));
/// assert!(r.is_err(), "0.0 and -0.0 differ in their bits");
/// ```
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ: got {} want {}", got.len(), want.len());
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        panic!("{what}: first difference at {i}: got {} want {} (max abs diff {max})", got[i], want[i]);
    }
}
