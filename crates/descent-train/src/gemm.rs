//! Row-major matrix products on slices through the `gemm` crate (the GEMM candle itself uses).

/// A matrix read in place: element `(i, j)` at `s[i·rs + j·cs]` (a block of a larger matrix, or
/// a transposed one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub s: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    /// A `rows × cols` operand stored row-major, or, `transposed`, stored as its `cols × rows`
    /// transpose (BLAS's `N` and `T`).
    pub(crate) fn of(s: &'a [f32], transposed: bool, rows: usize, cols: usize) -> Self {
        if transposed {
            Strided { s, rs: 1, cs: rows }
        } else {
            Strided::rows(s, cols)
        }
    }
    /// A dense row-major matrix with `cols` columns.
    pub(crate) fn rows(s: &'a [f32], cols: usize) -> Self {
        Strided { s, rs: cols, cs: 1 }
    }
    /// The transpose of this view.
    pub(crate) fn t(self) -> Self {
        Strided { s: self.s, rs: self.cs, cs: self.rs }
    }
    /// Whether every element of a `rows × cols` matrix lies in `s`, and one stride is 1 (which the
    /// bfloat16 packing needs).
    pub(crate) fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (self.rs == 1 || self.cs == 1) && (rows - 1) * self.rs + (cols - 1) * self.cs < self.s.len()
    }
}

/// `dst[m×n] (= or +=) lhs[m×k] · rhs[k×n]`, all row-major; `lhs_t` / `rhs_t` read the operand
/// transposed (its storage is `[k×m]` / `[n×k]`); `parallel` splits the product across rayon threads.
// BLAS's argument list, kept flat: the convolution and attention kernels call this in their inner
// loops with operands that change every call, and a struct built per call would hide which
// operand is transposed where it matters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(dst.len() >= m * n, "matmul operand sizes");
    let (lhs, rhs) = (Strided::of(lhs, lhs_t, m, k), Strided::of(rhs, rhs_t, k, n));
    // SAFETY: `dst` holds `m·n` values.
    unsafe { gemm_into(dst.as_mut_ptr(), accumulate, lhs, rhs, m, n, k, parallel) }
}

/// `lhs[m×k] · rhs[k×n]` (operands as [`matmul`] takes them) into a new vector of `m·n` values
/// in `precision`. In f32 the product writes every value of a vector that was never
/// zero-filled: a gradient of a few megabytes no longer costs a `memset` before its GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_new(
    precision: crate::precision::Precision,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) -> Vec<f32> {
    if precision != crate::precision::Precision::F32 || k == 0 || m * n == 0 {
        let mut dst = vec![0.0f32; m * n];
        matmul_in(precision, &mut dst, false, lhs, lhs_t, rhs, rhs_t, m, n, k, parallel);
        return dst;
    }
    gemm_new(Strided::of(lhs, lhs_t, m, k), Strided::of(rhs, rhs_t, k, n), m, n, k, parallel)
}

/// The f32 product `lhs · rhs` into a vector that was never zero-filled, for [`matmul_new`] and
/// [`matmul_strided_new`] (`k ≥ 1`).
fn gemm_new(lhs: Strided, rhs: Strided, m: usize, n: usize, k: usize, parallel: bool) -> Vec<f32> {
    debug_assert!(k >= 1);
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `dst` has room for `m·n` values, which the product writes without reading them
    // (not accumulating, `k ≥ 1`), so every one is initialized before the length is set.
    unsafe {
        gemm_into(dst.as_mut_ptr(), false, lhs, rhs, m, n, k, parallel);
        dst.set_len(m * n);
    }
    dst
}

/// The `gemm` crate's call behind [`matmul`], [`matmul_new`] and [`matmul_strided`]: the operands
/// read through their strides, their reach checked; `dst` (dense, `m × n`) read only when
/// `accumulate`.
///
/// # Safety
/// `dst` must be valid for writes of `m·n` values (and reads, when `accumulate`).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert!(lhs.holds(m, k) && rhs.holds(k, n), "matmul operand sizes");
    // SAFETY: the assert bounds every read of the operands under their strides; the caller
    // vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.s.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.s.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None },
        )
    }
}

/// [`matmul`] in `precision`: f32, or bfloat16 operands summed in f32 by the best kernel the CPU
/// has ([`crate::precision::matmul_bf16_with`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_in(
    precision: crate::precision::Precision,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    match precision {
        crate::precision::Precision::F32 => matmul(dst, accumulate, lhs, lhs_t, rhs, rhs_t, m, n, k, parallel),
        crate::precision::Precision::Bf16 => {
            use crate::precision::{matmul_bf16_with, Kernel};
            matmul_bf16_with(Kernel::best(), dst, accumulate, lhs, lhs_t, rhs, rhs_t, m, n, k, parallel)
        }
    }
}

/// [`matmul_strided`] into a new vector of `m·n` values, which in f32 the product writes without
/// a zero fill first (as [`matmul_new`]).
pub(crate) fn matmul_strided_new(
    precision: crate::precision::Precision,
    lhs: Strided,
    rhs: Strided,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    if precision != crate::precision::Precision::F32 || k == 0 || m * n == 0 {
        let mut dst = vec![0.0f32; m * n];
        matmul_strided(precision, &mut dst, lhs, rhs, m, n, k);
        return dst;
    }
    gemm_new(lhs, rhs, m, n, k, false)
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]` (`dst` dense, row-major) in `precision`, the operands read
/// in place through their strides: no copy of a head's block of a wider matrix (attention).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided(
    precision: crate::precision::Precision,
    dst: &mut [f32],
    lhs: Strided,
    rhs: Strided,
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(dst.len() >= m * n && lhs.holds(m, k) && rhs.holds(k, n), "matmul operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    match precision {
        crate::precision::Precision::F32 => {
            if k == 0 {
                dst[..m * n].fill(0.0);
                return;
            }
            // SAFETY: `dst` holds `m·n` values.
            unsafe { gemm_into(dst.as_mut_ptr(), false, lhs, rhs, m, n, k, false) }
        }
        crate::precision::Precision::Bf16 => {
            use crate::precision::{matmul_bf16_strided, Kernel};
            matmul_bf16_strided(Kernel::best(), dst, false, lhs, rhs, m, n, k, false)
        }
    }
}
