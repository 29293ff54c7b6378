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
    if rhs.rs == 1 && rhs.cs != 1 && m > 1 && n > 1 && m * n > 16 * 16 {
        // A right operand stored transposed (a layer's weight in `x·Wᵀ`, a head's keys): the
        // crate reads it as the left operand of the transposed product and packs it one float at
        // a time from `k` strided rows. A copy by 8 × 8 blocks costs a fraction of that, and the
        // products are the same sums in the same order (only the operand's layout differs; the
        // crate's small-product and vector paths, which would sum differently, are not reached
        // from either layout past 16 × 16 outputs).
        let mut buf = TRANSPOSED.with(|b| b.take());
        if buf.len() < k * n {
            // Grown only: the copy writes every value it reads.
            buf.resize(k * n, 0.0);
        }
        let copy = &mut buf[..k * n];
        transpose_columns(copy, rhs.s, rhs.cs, k, n);
        // SAFETY: as below; `copy` holds the `k × n` operand, dense.
        unsafe { gemm_into(dst, accumulate, lhs, Strided::rows(copy, n), m, n, k, parallel) };
        TRANSPOSED.with(|b| b.replace(buf));
        return;
    }
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

thread_local! {
    /// The row-major copy of a transposed right operand that [`gemm_into`] multiplies by
    /// (reused: a training step copies every layer's weight).
    static TRANSPOSED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `dst[i·n + j] = src[j·cs + i]` for `i < k`, `j < n`: the `k × n` matrix whose columns lie
/// contiguous in `src`, `cs` apart (a transposed operand), copied row-major into `dst`.
pub(crate) fn transpose_columns(dst: &mut [f32], src: &[f32], cs: usize, k: usize, n: usize) {
    assert!(dst.len() >= k * n && (n == 0 || k == 0 || (n - 1) * cs + k <= src.len()), "transpose operand sizes");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just now); the assert bounds every access.
        return unsafe { transpose_columns_avx2(dst, src, cs, k, n) };
    }
    transpose_columns_tail(dst, src, cs, k, n, 0, 0);
}

/// [`transpose_columns`] of the elements outside the first `k8` rows and `n8` columns of `dst`
/// (all of them when both are 0).
fn transpose_columns_tail(dst: &mut [f32], src: &[f32], cs: usize, k: usize, n: usize, k8: usize, n8: usize) {
    for i in 0..k {
        let from = if i < k8 { n8 } else { 0 };
        for j in from..n {
            dst[i * n + j] = src[j * cs + i];
        }
    }
}

/// [`transpose_columns`] by 8 × 8 blocks in AVX2 registers (the usual unpack, shuffle and
/// lane-permute network), the edges as [`transpose_columns_tail`].
///
/// # Safety
/// The CPU has AVX2; `dst` and `src` hold what [`transpose_columns`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_columns_avx2(dst: &mut [f32], src: &[f32], cs: usize, k: usize, n: usize) {
    use std::arch::x86_64::*;
    let (k8, n8) = (k - k % 8, n - n % 8);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for j in (0..n8).step_by(8) {
        for i in (0..k8).step_by(8) {
            // SAFETY: rows `j..j + 8` of the source hold columns `i..i + 8` (`i + 8 ≤ k`), and
            // rows `i..i + 8` of `dst` hold columns `j..j + 8`.
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|t| _mm256_loadu_ps(s.add((j + t) * cs + i)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let o = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (t, o) in o.into_iter().enumerate() {
                    _mm256_storeu_ps(d.add((i + t) * n + j), o);
                }
            }
        }
    }
    transpose_columns_tail(dst, src, cs, k, n, k8, n8);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0 - 0.5)
            .collect()
    }

    /// The blocked copy against the definition, on shapes with and without 8 × 8 edges, from a
    /// source whose columns lie further apart than their length.
    #[test]
    fn transpose_columns_copies_every_element() {
        for (k, n) in [(1, 1), (8, 8), (9, 17), (33, 40), (64, 7), (3, 24)] {
            let cs = k + 5;
            let src = values((n - 1) * cs + k, 7);
            let mut dst = vec![f32::NAN; k * n];
            transpose_columns(&mut dst, &src, cs, k, n);
            let mut plain = vec![f32::NAN; k * n];
            transpose_columns_tail(&mut plain, &src, cs, k, n, 0, 0);
            for i in 0..k {
                for j in 0..n {
                    assert_eq!(dst[i * n + j].to_bits(), src[j * cs + i].to_bits(), "({i}, {j}) of {k} × {n}");
                }
            }
            assert_eq!(
                dst.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// A product by a transposed right operand (copied row-major first) gives the crate's product
    /// on the strided operand bit for bit, accumulating or not, on one thread or several.
    #[test]
    fn transposed_right_operand_gives_the_strided_products_bits() {
        for (m, n, k) in [(384, 128, 128), (37, 45, 29), (64, 64, 32), (17, 16, 300), (2, 200, 64)] {
            let (lhs, rhs) = (values(m * k, 1), values(n * k, 2));
            for (accumulate, parallel) in [(false, false), (true, false), (false, true)] {
                let start = values(m * n, 3);
                let mut got = start.clone();
                matmul(&mut got, accumulate, &lhs, false, &rhs, true, m, n, k, parallel);
                let mut want = start.clone();
                // SAFETY: `want` holds `m·n` values; the operands are in bounds (as gemm_into asserts).
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        want.as_mut_ptr(),
                        1,
                        n as isize,
                        accumulate,
                        lhs.as_ptr(),
                        1,
                        k as isize,
                        rhs.as_ptr(),
                        k as isize,
                        1,
                        if accumulate { 1.0 } else { 0.0 },
                        1.0,
                        false,
                        false,
                        false,
                        if parallel { gemm::Parallelism::Rayon(2) } else { gemm::Parallelism::None },
                    )
                };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{m} × {n} × {k}, accumulate {accumulate}, parallel {parallel}");
            }
        }
    }
}
