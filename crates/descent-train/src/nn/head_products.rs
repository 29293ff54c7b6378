//! The products of one attention head (`[t, t]` weights against `[t, hs]` blocks), computed only
//! where causality leaves something to compute.
//!
//! Each product is `z[i][0..n] = Σ_k P(i, k) · w[k][0..n]` with `P(i, k) = p[i·prs + k·pcs]` (so a
//! transposed operand is a stride swap) and `w`'s rows `ws` apart. Its [`Triangle`] says which
//! part of `P` can be non-zero or which part of `z` is wanted:
//! - [`Triangle::Lower`]: `P(i, k) = 0` for `k > i` (the weights, the score gradient): row `i` sums
//!   `k ≤ i` only (`P·V`, `dS·K`);
//! - [`Triangle::Upper`]: `P(i, k) = 0` for `k < i` (their transposes): `k ≥ i` only (`Pᵀ·dY`,
//!   `dSᵀ·Q`);
//! - [`Triangle::LowerColumns`]: every `k`, but only the columns `j ≤ i` of `z` are wanted (the
//!   scores `Q·Kᵀ` and `dY·Vᵀ`, masked above the diagonal afterwards): the columns past a row
//!   tile's last diagonal entry are not computed (nor written); those before it but above the
//!   diagonal are, and the caller masks them.
//!
//! Rows go in tiles of `R`: a tile sums over the union of its rows' ranges, which for `Lower` and
//! `Upper` only adds products with the zeros of `P`. On a 64-position sequence this is 56% of the
//! dense products' multiply-adds (tiles of 8 rows), and the operands are read in place: the
//! general GEMM packed them for products of 131 072 multiply-adds.
//!
//! The AVX-512 kernel keeps an `R × V` tile of 16-lane accumulators in registers (up to 16 of
//! them), one broadcast of `P` and `V` loads of `w` per `k`; the plain loops beside it are its
//! reference ([`product_scalar`]). Without AVX-512 ([`has_kernel`]) attention keeps the GEMM.

#[cfg(target_arch = "x86_64")]
use crate::cpu::has_avx512;

/// Which part of a head product's operand or result matters (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Triangle {
    Lower,
    Upper,
    LowerColumns,
}

/// A head product's operands: `P(i, k) = p[i·prs + k·pcs]`, `w[k][j] = w[k·ws + j]`, `z[i][j] =
/// z[i·zs + j]`, for `i < m`, `k < kd`, `j < n`.
#[derive(Clone, Copy)]
pub(crate) struct HeadProduct<'a> {
    pub p: &'a [f32],
    pub prs: usize,
    pub pcs: usize,
    pub w: &'a [f32],
    pub ws: usize,
    pub m: usize,
    pub n: usize,
    pub kd: usize,
    pub triangle: Triangle,
}

impl HeadProduct<'_> {
    /// The rows `k` row `i` of a tile `i0..i1` sums over, and the columns it computes.
    fn ranges(&self, i0: usize, i1: usize) -> (std::ops::Range<usize>, usize) {
        match self.triangle {
            Triangle::Lower => (0..i1.min(self.kd), self.n),
            Triangle::Upper => (i0.min(self.kd)..self.kd, self.n),
            Triangle::LowerColumns => (0..self.kd, i1.min(self.n)),
        }
    }

    /// Panics unless every element the product reads and writes is in its slices.
    fn check(&self, z: &[f32], zs: usize) {
        let (m, n, kd) = (self.m, self.n, self.kd);
        if m == 0 || n == 0 {
            return;
        }
        assert!(zs >= n && z.len() >= (m - 1) * zs + n, "head product: output too short");
        if kd > 0 {
            assert!(self.p.len() > (m - 1) * self.prs + (kd - 1) * self.pcs, "head product: weights too short");
            assert!(self.w.len() >= (kd - 1) * self.ws + n, "head product: values too short");
        }
    }
}

/// Whether the CPU runs the vector kernel: elsewhere the general GEMM is faster than the plain
/// loops, and callers keep it.
pub(crate) fn has_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Computes `product` into `z` (rows `zs` apart) by the fastest kernel the CPU has; entries the
/// triangle leaves out (`LowerColumns` past a tile's diagonal) are not written.
pub(crate) fn product(h: &HeadProduct, z: &mut [f32], zs: usize) {
    h.check(z, zs);
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512 F; `check` bounds every access.
        unsafe { avx512::product(h, z.as_mut_ptr(), zs) };
        return;
    }
    product_scalar(h, z, zs)
}

/// [`product`] in plain loops: the reference of the vector kernel (tiles of one row).
pub(crate) fn product_scalar(h: &HeadProduct, z: &mut [f32], zs: usize) {
    h.check(z, zs);
    for i in 0..h.m {
        let (ks, cols) = h.ranges(i, i + 1);
        for j in 0..cols {
            let mut acc = 0.0f32;
            for k in ks.clone() {
                acc += h.p[i * h.prs + k * h.pcs] * h.w[k * h.ws + j];
            }
            z[i * zs + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::HeadProduct;

    /// Columns per pass: up to four 16-lane vectors.
    const COLS: usize = 64;

    /// Row tiles of 8 (of 4 when a pass has more than two vectors of columns: at most 16
    /// accumulators), the last rows one at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(h: &HeadProduct, z: *mut f32, zs: usize) {
        let mut i0 = 0;
        while i0 < h.m {
            let full = h.m - i0;
            // The widest pass of this tile decides its height.
            let (_, cols) = h.ranges(i0, (i0 + 8).min(h.m));
            let tall = if cols.min(COLS).div_ceil(16) > 2 { 4 } else { 8 };
            let rows = if full >= tall { tall } else { 1 };
            let (ks, cols) = h.ranges(i0, i0 + rows);
            let mut c0 = 0;
            while c0 < cols {
                let width = (cols - c0).min(COLS);
                let vectors = width.div_ceil(16);
                let rem = width - 16 * (vectors - 1);
                let last: __mmask16 = if rem == 16 { 0xffff } else { (1u16 << rem) - 1 };
                let p = h.p.as_ptr().add(i0 * h.prs);
                let w = h.w.as_ptr().add(c0);
                let zt = z.add(i0 * zs + c0);
                let args = (p, h.prs, h.pcs, w, h.ws, ks.clone(), zt, zs, last);
                match (rows, vectors) {
                    (8, 1) => tile::<8, 1>(args),
                    (8, 2) => tile::<8, 2>(args),
                    (4, 1) => tile::<4, 1>(args),
                    (4, 2) => tile::<4, 2>(args),
                    (4, 3) => tile::<4, 3>(args),
                    (4, 4) => tile::<4, 4>(args),
                    (1, 1) => tile::<1, 1>(args),
                    (1, 2) => tile::<1, 2>(args),
                    (1, 3) => tile::<1, 3>(args),
                    (1, 4) => tile::<1, 4>(args),
                    _ => unreachable!("a tile of {rows} rows and {vectors} vectors"),
                }
                c0 += width;
            }
            i0 += rows;
        }
    }

    type TileArgs = (*const f32, usize, usize, *const f32, usize, std::ops::Range<usize>, *mut f32, usize, __mmask16);

    /// `R` rows × `V` vectors of `z` (the last vector's lanes under `last`): the sums over `ks`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const V: usize>((p, prs, pcs, w, ws, ks, z, zs, last): TileArgs) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for k in ks {
            let wr = w.add(k * ws);
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, x) in wv.iter_mut().enumerate() {
                *x = if v + 1 == V {
                    _mm512_maskz_loadu_ps(last, wr.add(16 * v))
                } else {
                    _mm512_loadu_ps(wr.add(16 * v))
                };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*p.add(r * prs + k * pcs));
                for (a, &x) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(pv, x, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                let dst = z.add(r * zs + 16 * v);
                if v + 1 == V {
                    _mm512_mask_storeu_ps(dst, last, a);
                } else {
                    _mm512_storeu_ps(dst, a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The kernel the CPU runs against the plain loops, and both against the dense sums on the
    /// entries each triangle keeps, over sizes around the tiles and vectors (and past 64 columns).
    #[test]
    fn the_kernel_matches_the_plain_loops_and_the_dense_product() {
        let mut rng = Rng::new(3);
        for (m, n, kd) in
            [(64, 32, 64), (64, 64, 32), (1, 1, 1), (7, 5, 7), (13, 16, 13), (33, 70, 33), (70, 17, 70), (9, 48, 9)]
        {
            for triangle in [Triangle::Lower, Triangle::Upper, Triangle::LowerColumns] {
                // `P` zero where its triangle says (for LowerColumns a dense `[m, kd]` operand).
                let (prs, pcs) = if triangle == Triangle::Upper { (1, m + 3) } else { (kd + 3, 1) };
                let mut p = vec![0.0f32; m.max(kd) * (m.max(kd) + 3)];
                for i in 0..m {
                    for k in 0..kd {
                        let keep = match triangle {
                            Triangle::Lower => k <= i,
                            Triangle::Upper => k >= i,
                            Triangle::LowerColumns => true,
                        };
                        if keep {
                            p[i * prs + k * pcs] = rng.normal();
                        }
                    }
                }
                let ws = n + 5;
                let w: Vec<f32> = (0..kd * ws).map(|_| rng.normal()).collect();
                let h = HeadProduct { p: &p, prs, pcs, w: &w, ws, m, n, kd, triangle };
                let zs = n + 2;
                let (mut fast, mut plain) = (vec![f32::NAN; m * zs], vec![f32::NAN; m * zs]);
                product(&h, &mut fast, zs);
                product_scalar(&h, &mut plain, zs);
                for i in 0..m {
                    let wanted = if triangle == Triangle::LowerColumns { (i + 1).min(n) } else { n };
                    for j in 0..wanted {
                        let dense: f64 = (0..kd).map(|k| p[i * prs + k * pcs] as f64 * w[k * ws + j] as f64).sum();
                        let mag: f64 =
                            (0..kd).map(|k| (p[i * prs + k * pcs] as f64 * w[k * ws + j] as f64).abs()).sum();
                        for (what, z) in [("kernel", &fast), ("plain", &plain)] {
                            let got = z[i * zs + j] as f64;
                            assert!(
                                (got - dense).abs() <= 1e-6 * mag + 1e-7,
                                "{what} {triangle:?} {m}x{n}x{kd} at ({i}, {j}): {got} against {dense}"
                            );
                        }
                    }
                }
            }
        }
    }
}
