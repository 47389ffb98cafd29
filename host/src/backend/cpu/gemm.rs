//! f32 GEMM through the `gemm` crate (the one candle uses: packed AVX2/AVX-512 micro-kernels
//! chosen at run time, rayon threads), behind a bounds-checked safe wrapper.

/// One operand: a slice and the strides of its rows and columns, in elements.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Mat { data, rs, cs }
    }
    /// Panics unless element (rows − 1, cols − 1) is inside the slice: with non-negative
    /// strides that bounds every element the GEMM reads.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "gemm: {what} [{rows}, {cols}] strides ({}, {}) overruns {} values",
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `C[m×n] = beta·A[m×k]·B[k×n]` (+ `C` when `accumulate`), f32 accumulation; `c` has row
/// stride `rsc` and unit column stride. `threads`: whether the GEMM may split over rayon's
/// threads (false inside work that is already parallel).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    accumulate: bool,
    threads: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * rsc..i * rsc + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "lhs");
    b.check(k, n, "rhs");
    assert!((m - 1) * rsc + n - 1 < c.len(), "gemm: dst [{m}, {n}] stride {rsc} overruns {} values", c.len());
    let par = if threads && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the checks above bound every index the GEMM touches (i·rs + j·cs for i < rows,
    // j < cols) inside the slices; `c` is exclusively borrowed, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            rsc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}
