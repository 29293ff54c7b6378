//! Dense `f64` matrices for the matrix-preconditioned optimizers: row-major storage, products,
//! and the decompositions (SVD, symmetric eigendecomposition, QR) through `faer`. The optimizers
//! keep their state in `f32`, as the library does, and do the linear algebra on it in `f64`.

use faer::{Mat, MatRef, Side};

use crate::error::{Error, Result};
use crate::transforms::{matmul, round_bf16, transpose};

/// A dense row-major matrix of `f64`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mat64 {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

/// Products with at least this many multiply-adds go through `faer`'s blocked kernels.
const FAER_MIN: usize = 32 * 32 * 32;

impl Mat64 {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat64 { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// `s·I` of size `n`.
    pub fn scaled_eye(n: usize, s: f64) -> Self {
        let mut m = Mat64::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = s;
        }
        m
    }

    pub fn eye(n: usize) -> Self {
        Mat64::scaled_eye(n, 1.0)
    }

    /// The `rows × cols` matrix whose row-major elements are `x`.
    pub fn from_f32(rows: usize, cols: usize, x: &[f32]) -> Self {
        debug_assert_eq!(x.len(), rows * cols);
        Mat64 { rows, cols, data: x.iter().map(|&v| v as f64).collect() }
    }

    /// The elements rounded to `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn t(&self) -> Mat64 {
        let mut out = Mat64::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }

    /// `self · other`.
    pub fn mm(&self, other: &Mat64) -> Mat64 {
        assert_eq!(
            self.cols, other.rows,
            "matrix product of {}x{} and {}x{}",
            self.rows, self.cols, other.rows, other.cols
        );
        let (m, k, n) = (self.rows, self.cols, other.cols);
        if m.saturating_mul(k).saturating_mul(n) >= FAER_MIN {
            let c = self.view() * other.view();
            return Mat64::from_faer(c.as_ref());
        }
        let mut out = Mat64::zeros(m, n);
        for i in 0..m {
            let row = &mut out.data[i * n..(i + 1) * n];
            for t in 0..k {
                let a = self.data[i * k + t];
                if a == 0.0 {
                    continue;
                }
                for (c, b) in row.iter_mut().zip(&other.data[t * n..(t + 1) * n]) {
                    *c += a * b;
                }
            }
        }
        out
    }

    /// `selfᵀ · other`.
    pub fn tmm(&self, other: &Mat64) -> Mat64 {
        self.t().mm(other)
    }

    /// `self · otherᵀ`.
    pub fn mmt(&self, other: &Mat64) -> Mat64 {
        self.mm(&other.t())
    }

    pub fn scale(mut self, s: f64) -> Mat64 {
        self.data.iter_mut().for_each(|x| *x *= s);
        self
    }

    /// The Frobenius norm.
    pub fn frobenius(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// `max |self − I|` elementwise (torch `dist(·, I, p=inf)`).
    pub fn max_abs_diff_eye(&self) -> f64 {
        let n = self.cols;
        self.data
            .iter()
            .enumerate()
            .map(|(k, &x)| (x - if k / n == k % n { 1.0 } else { 0.0 }).abs())
            .fold(0.0, |a: f64, b| if b.is_nan() || a.is_nan() { f64::NAN } else { a.max(b) })
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }

    fn view(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    fn from_faer(m: MatRef<'_, f64>) -> Mat64 {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut out = Mat64::zeros(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                out.data[i * cols + j] = m[(i, j)];
            }
        }
        out
    }
}

fn non_finite(what: &str) -> Error {
    Error::Numerical(format!("{what}: the matrix holds non-finite values (NaN or infinity)"))
}

/// The thin SVD `A = U·diag(s)·Vᵀ`: `U` is `m × k`, `s` the `k = min(m, n)` singular values in
/// non-increasing order, `Vt` is `k × n`.
pub(crate) fn svd(a: &Mat64) -> Result<(Mat64, Vec<f64>, Mat64)> {
    if !a.is_finite() {
        return Err(non_finite("SVD"));
    }
    let d = a.view().thin_svd().map_err(|e| Error::Numerical(format!("SVD did not converge: {e:?}")))?;
    let u = Mat64::from_faer(d.U());
    let s: Vec<f64> = (0..u.cols).map(|i| d.S().column_vector()[i]).collect();
    let vt = Mat64::from_faer(d.V().transpose());
    Ok((u, s, vt))
}

/// The eigendecomposition of a symmetric matrix read from its lower triangle (as
/// `torch.linalg.eigh`): eigenvalues in non-decreasing order and the eigenvectors as columns.
pub(crate) fn eigh(a: &Mat64) -> Result<(Vec<f64>, Mat64)> {
    if !a.is_finite() {
        return Err(non_finite("symmetric eigendecomposition"));
    }
    let d = a
        .view()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigendecomposition did not converge: {e:?}")))?;
    let w: Vec<f64> = (0..a.rows).map(|i| d.S().column_vector()[i]).collect();
    Ok((w, Mat64::from_faer(d.U())))
}

/// The `Q` factor of the QR decomposition of `a` (`m × min(m, n)`, Householder).
pub(crate) fn qr_q(a: &Mat64) -> Result<Mat64> {
    if !a.is_finite() {
        return Err(non_finite("QR decomposition"));
    }
    let q: Mat<f64> = a.view().qr().compute_thin_Q();
    Ok(Mat64::from_faer(q.as_ref()))
}

/// `U·diag(s^(−1/power))·Vᵀ` from the SVD of `a` (the library's `compute_power_svd`): the
/// inverse `power`-th root of a positive semi-definite matrix.
pub(crate) fn inverse_root_svd(a: &Mat64, power: f64) -> Result<Mat64> {
    let (mut u, s, vt) = svd(a)?;
    let k = s.len();
    for i in 0..u.rows {
        for (j, sj) in s.iter().enumerate() {
            u.data[i * k + j] *= sj.powf(-1.0 / power);
        }
    }
    Ok(u.mm(&vt))
}

/// The library's `compute_power_schur_newton`: the inverse `p`-th root of a positive
/// semi-definite matrix `g` regularized by `ridge_epsilon` times its largest eigenvalue, by the
/// coupled Newton iteration of Guo and Higham (2006), stopped when the residual `max |M − I|`
/// falls to `error_tolerance` or grows by more than `max_error_ratio` (then the previous iterate
/// is returned).
pub(crate) fn inverse_root_schur_newton(
    g: &Mat64,
    p: u32,
    ridge_epsilon: f64,
    max_iters: usize,
    error_tolerance: f64,
    max_error_ratio: f64,
) -> Result<Mat64> {
    let n = g.rows;
    let alpha = -1.0 / p as f64;
    if n == 1 {
        let x = g.data[0];
        return Ok(Mat64 { rows: 1, cols: 1, data: vec![(x + ridge_epsilon * x.max(1e-16)).powf(alpha)] });
    }
    if !g.is_finite() {
        return Err(non_finite("inverse root"));
    }
    // The largest eigenvalue (the library estimates it by power iteration), at least 1e-16.
    let (w, _) = eigh(g)?;
    let lambda = w.last().copied().unwrap_or(0.0).max(1e-16);
    let mut g = g.clone();
    for i in 0..n {
        g.data[i * n + i] += lambda * ridge_epsilon;
    }
    let z = (1.0 + p as f64) / (2.0 * g.frobenius());
    let mut root = Mat64::scaled_eye(n, z.powf(1.0 / p as f64));
    let mut m = g.scale(z);
    let mut prev_error = m.max_abs_diff_eye();
    for _ in 0..max_iters {
        // M_i = (1 − α)·I + α·M
        let mut mi = m.clone().scale(alpha);
        for i in 0..n {
            mi.data[i * n + i] += 1.0 - alpha;
        }
        let new_root = root.mm(&mi);
        let new_m = matrix_power(&mi, p).mm(&m);
        let error = new_m.max_abs_diff_eye();
        let diverged = error > prev_error * max_error_ratio;
        if diverged || error <= error_tolerance {
            return Ok(if diverged { root } else { new_root });
        }
        root = new_root;
        m = new_m;
        prev_error = error;
    }
    Ok(root)
}

/// `a^p` by repeated squaring.
fn matrix_power(a: &Mat64, mut p: u32) -> Mat64 {
    let mut result = Mat64::eye(a.rows);
    let mut base = a.clone();
    let mut first = true;
    while p > 0 {
        if p & 1 == 1 {
            result = if first { base.clone() } else { result.mm(&base) };
            first = false;
        }
        p >>= 1;
        if p > 0 {
            base = base.mm(&base);
        }
    }
    result
}

/// The library's `zero_power_via_newton_schulz_5` in bfloat16 (its default dtype): the `rows ×
/// cols` matrix, transposed to be wide, cast to bfloat16 and divided by its Frobenius norm
/// (clamped at `eps`), then iterated `X ← aX + (bA + cA²)X` with `A = XXᵀ`, step `i` taking
/// `coeffs[min(i, len − 1)]`. Each product is accumulated in `f32` and rounded to bfloat16 once,
/// as torch's `mm` / `addmm` on bfloat16 do. The result holds bfloat16 values.
pub(crate) fn newton_schulz_bf16(
    x: &[f32],
    rows: usize,
    cols: usize,
    coeffs: &[[f64; 3]],
    steps: usize,
    eps: f64,
) -> Vec<f32> {
    if x.is_empty() {
        return vec![];
    }
    let r = round_bf16;
    let tall = rows > cols;
    let (m, n, mut x) = if tall { (cols, rows, transpose(x, rows, cols)) } else { (rows, cols, x.to_vec()) };
    x.iter_mut().for_each(|v| *v = r(*v));
    let norm = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
    let d = r(r(norm).max(eps as f32));
    x.iter_mut().for_each(|v| *v = r(*v / d));
    for i in 0..steps {
        let [a, b, c] = coeffs[i.min(coeffs.len() - 1)].map(|v| v as f32);
        let xt = transpose(&x, m, n);
        let mut gram = matmul(&x, &xt, m, n, m);
        gram.iter_mut().for_each(|v| *v = r(*v));
        let gram2 = matmul(&gram, &gram, m, m, m);
        let poly: Vec<f32> = gram.iter().zip(&gram2).map(|(g, g2)| r(b * g + c * g2)).collect();
        let px = matmul(&poly, &x, m, m, n);
        x.iter_mut().zip(&px).for_each(|(v, p)| *v = r(a * *v + p));
    }
    if tall {
        transpose(&x, m, n)
    } else {
        x
    }
}

/// The Newton–Schulz coefficient schedules of the library (`NS_COEFFICIENTS`), by preset name.
pub(crate) fn ns_preset(name: &str) -> Option<Vec<[f64; 3]>> {
    Some(match name.to_ascii_lowercase().as_str() {
        "original" => vec![[3.4445, -4.7750, 2.0315]],
        "quintic" => vec![
            [4.0848, -6.8946, 2.9270],
            [3.9505, -6.3029, 2.6377],
            [3.7418, -5.5913, 2.3037],
            [2.8769, -3.1427, 1.2046],
            [2.8366, -3.0525, 1.2012],
        ],
        "polar_express" => vec![
            [8.237312490495555, -23.157747414558198, 16.680568411445915],
            [4.082441999064835, -2.893047735332586, 0.5252849256975648],
            [3.9263479922546582, -2.8547468034765298, 0.5318022422894988],
            [3.2982187133085143, -2.424541981026706, 0.48632008358844075],
            [2.2970369434552573, -1.63662558125903, 0.4002628455953627],
            [1.8763805351440397, -1.2347896577722228, 0.35891887501668385],
            [1.8564423485617974, -1.2132449880935525, 0.3568003487825883],
            [1.8749994008682747, -1.2499988017229169, 0.3749994008546422],
        ],
        "polar_express_safer" => vec![
            [8.156554524902461, -22.48329292557795, 15.878769915207462],
            [4.0429299351667245, -2.808917465908704, 0.5000178451051299],
            [3.8916678022926563, -2.7724841532176825, 0.5060648178503389],
            [3.285753657755658, -2.3681294933425394, 0.46449024233003117],
            [2.3005307116270983, -1.6111665557258408, 0.3833374427545273],
            [1.8631210546382593, -1.2042160621002727, 0.3421879560523383],
            [1.8382572152247512, -1.1779263289537742, 0.3396513038637379],
            [1.8749999923301852, -1.2499999836060613, 0.374999991275876],
        ],
        _ => return None,
    })
}

/// The Gram matrix of a tensor's unfolding along `axis`: `U·Uᵀ` with `U` the tensor with `axis`
/// moved first and the others flattened (`shape[axis]` rows).
pub(crate) fn unfolded_gram(x: &[f64], shape: &[usize], axis: usize) -> Mat64 {
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if inner == 1 {
        let u = Mat64 { rows: outer, cols: n, data: x.to_vec() };
        return u.tmm(&u);
    }
    let mut g = Mat64::zeros(n, n);
    for o in 0..outer {
        let u = Mat64 { rows: n, cols: inner, data: x[o * n * inner..(o + 1) * n * inner].to_vec() };
        let p = u.mmt(&u);
        g.data.iter_mut().zip(&p.data).for_each(|(a, b)| *a += b);
    }
    g
}

/// The mode product `y = A ×_axis x`: `y[…, i, …] = Σ_j A[i, j]·x[…, j, …]` along `axis`, for a
/// tensor `x` of `shape` (row-major) and a `shape[axis]`-square `A`.
pub(crate) fn mode_product(x: &[f64], shape: &[usize], axis: usize, a: &Mat64) -> Vec<f64> {
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if inner == 1 {
        let u = Mat64 { rows: outer, cols: n, data: x.to_vec() };
        return u.mmt(a).data;
    }
    let mut y = Vec::with_capacity(x.len());
    for o in 0..outer {
        let u = Mat64 { rows: n, cols: inner, data: x[o * n * inner..(o + 1) * n * inner].to_vec() };
        y.extend(a.mm(&u).data);
    }
    y
}

/// A zeroed buffer of `n` elements, or an error (not an abort) when it cannot be allocated.
pub(crate) fn try_zeros<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::Shape(format!("{what}: cannot allocate {n} elements of optimizer state")))?;
    v.resize(n, T::default());
    Ok(v)
}

/// `n × n` of `f32` state (a preconditioner or its statistic), refused when `n²` overflows or
/// cannot be allocated.
pub(crate) fn try_square(n: usize, what: &str) -> Result<Vec<f32>> {
    let len = n
        .checked_mul(n)
        .filter(|&l| l <= crate::transform::MAX_NUMEL)
        .ok_or_else(|| Error::Shape(format!("{what}: a {n}×{n} preconditioner is too large")))?;
    try_zeros(len, what)
}

/// The library's `merge_small_dims`: consecutive axes merged while their product stays at most
/// `max_dim` (an axis that alone exceeds it starts a new merged axis, after a 1 when it comes
/// first); `[1]` when everything merges into one axis.
pub(crate) fn merge_small_dims(shape: &[usize], max_dim: usize) -> Vec<usize> {
    let mut merged = vec![];
    let mut product: usize = 1;
    for &d in shape {
        product = product.saturating_mul(d);
        if product > max_dim {
            merged.push(product.checked_div(d).unwrap_or(0));
            product = d;
        }
    }
    merged.push(product);
    if merged.len() > 1 {
        merged
    } else {
        vec![1]
    }
}

/// Permutes the slices of a row-major tensor along `axis`: slice `j` of the result is slice
/// `order[j]` of `x` (torch `index_select`).
pub(crate) fn index_select(x: &[f32], shape: &[usize], axis: usize, order: &[usize]) -> Vec<f32> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = Vec::with_capacity(x.len());
    for o in 0..outer {
        for &j in order {
            let start = (o * n + j) * inner;
            out.extend_from_slice(&x[start..start + inner]);
        }
    }
    out
}

/// Permutes the axes of a row-major tensor: axis `k` of the result is axis `perm[k]` of `x`.
pub(crate) fn permute_axes<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let nd = shape.len();
    let mut strides = vec![1usize; nd];
    for k in (0..nd.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let mut idx = vec![0usize; nd];
    let mut out = Vec::with_capacity(x.len());
    for _ in 0..x.len() {
        out.push(x[idx.iter().zip(perm).map(|(&i, &a)| i * strides[a]).sum::<usize>()]);
        for k in (0..nd).rev() {
            idx[k] += 1;
            if idx[k] < out_shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// torch's `lerp(start, end, w)` on `f32`: `start + w·(end − start)` for `|w| < 0.5`, else
/// `end − (end − start)·(1 − w)`, each with one rounding (the vectorized kernel's fused form).
#[inline]
pub(crate) fn lerp(start: f32, end: f32, w: f32) -> f32 {
    let (s, e, w) = (start as f64, end as f64, w as f64);
    let diff = (end - start) as f64;
    if w.abs() < 0.5 {
        (s + w * diff) as f32
    } else {
        (e + (w - 1.0) * diff) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Mat64, b: &Mat64, tol: f64) -> bool {
        a.rows == b.rows && a.cols == b.cols && a.data.iter().zip(&b.data).all(|(x, y)| (x - y).abs() <= tol)
    }

    fn spd(n: usize) -> Mat64 {
        let g = Mat64 {
            rows: n,
            cols: n + 2,
            data: (0..n * (n + 2)).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect(),
        };
        let mut a = g.mmt(&g);
        for i in 0..n {
            a.data[i * n + i] += 0.5;
        }
        a
    }

    #[test]
    fn products_small_and_large_agree_with_the_definition() {
        for (m, k, n) in [(3, 4, 5), (40, 33, 37)] {
            let a = Mat64 { rows: m, cols: k, data: (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect() };
            let b = Mat64 { rows: k, cols: n, data: (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect() };
            let c = a.mm(&b);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| a.at(i, t) * b.at(t, j)).sum();
                    assert!((c.at(i, j) - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn decompositions_reconstruct_their_matrix() {
        let a = Mat64 { rows: 5, cols: 3, data: (0..15).map(|i| (i as f64 * 0.7).sin()).collect() };
        let (u, s, vt) = svd(&a).unwrap();
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        let mut us = u.clone();
        for (k, x) in us.data.iter_mut().enumerate() {
            *x *= s[k % 3];
        }
        assert!(close(&us.mm(&vt), &a, 1e-12));
        let a = spd(4);
        let (w, v) = eigh(&a).unwrap();
        assert!(w.windows(2).all(|x| x[0] <= x[1]));
        let mut vw = v.clone();
        for (k, x) in vw.data.iter_mut().enumerate() {
            *x *= w[k % 4];
        }
        assert!(close(&vw.mmt(&v), &a, 1e-10));
        let q = qr_q(&a).unwrap();
        assert!(close(&q.tmm(&q), &Mat64::eye(4), 1e-12));
    }

    #[test]
    fn inverse_roots_agree() {
        let a = spd(5);
        for p in [2u32, 4, 6] {
            let x = inverse_root_svd(&a, p as f64).unwrap();
            // x^p · a = I
            let back = matrix_power(&x, p).mm(&a);
            assert!(close(&back, &Mat64::eye(5), 1e-9), "p = {p}");
            // The coupled Newton iteration stops at a residual of 1e-3: close, not exact.
            let y = inverse_root_schur_newton(&a, p, 0.0, 100, 1e-3, 1.2).unwrap();
            let scale = x.frobenius();
            assert!(close(&y, &x, 2e-3 * scale), "p = {p}");
        }
        assert_eq!(matrix_power(&spd(3), 0), Mat64::eye(3));
    }

    #[test]
    fn gram_and_mode_product_follow_their_axis() {
        // A 2×3×2 tensor; along axis 1 the unfolding is 3 × (2·2).
        let shape = [2, 3, 2];
        let x: Vec<f64> = (0..12).map(|i| i as f64 - 4.0).collect();
        let at = |a: usize, b: usize, c: usize| x[a * 6 + b * 2 + c];
        for axis in 0..3 {
            let g = unfolded_gram(&x, &shape, axis);
            let n = shape[axis];
            for i in 0..n {
                for j in 0..n {
                    let mut want = 0.0;
                    for a in 0..2 {
                        for b in 0..3 {
                            for c in 0..2 {
                                let idx = [a, b, c];
                                if idx[axis] != i {
                                    continue;
                                }
                                let mut jdx = idx;
                                jdx[axis] = j;
                                want += at(idx[0], idx[1], idx[2]) * at(jdx[0], jdx[1], jdx[2]);
                            }
                        }
                    }
                    assert_eq!(g.at(i, j), want, "axis {axis}");
                }
            }
            let m = Mat64 { rows: n, cols: n, data: (0..n * n).map(|k| (k as f64 * 0.3).cos()).collect() };
            let y = mode_product(&x, &shape, axis, &m);
            for a in 0..2 {
                for b in 0..3 {
                    for c in 0..2 {
                        let idx = [a, b, c];
                        let want: f64 = (0..n)
                            .map(|j| {
                                let mut jdx = idx;
                                jdx[axis] = j;
                                m.at(idx[axis], j) * at(jdx[0], jdx[1], jdx[2])
                            })
                            .sum();
                        assert!((y[a * 6 + b * 2 + c] - want).abs() < 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn merge_small_dims_follows_the_library() {
        assert_eq!(merge_small_dims(&[1, 2, 512, 1, 2048, 1, 3, 4], 1024), vec![1024, 2048, 12]);
        assert_eq!(merge_small_dims(&[1, 2, 768, 1, 2048], 1024), vec![2, 768, 2048]);
        assert_eq!(merge_small_dims(&[8, 5], 4), vec![1, 8, 5]);
        assert_eq!(merge_small_dims(&[8, 5], 512), vec![1]);
    }

    #[test]
    fn axes_permute_and_slices_select() {
        // (2, 3) transposed.
        let x = [0, 1, 2, 3, 4, 5];
        assert_eq!(permute_axes(&x, &[2, 3], &[1, 0]), vec![0, 3, 1, 4, 2, 5]);
        // (1, 2, 2, 3) channels last to first: (0, 3, 1, 2).
        let y: Vec<i32> = (0..12).collect();
        let p = permute_axes(&y, &[1, 2, 2, 3], &[0, 3, 1, 2]);
        assert_eq!(&p[..4], &[0, 3, 6, 9]);
        assert_eq!(permute_axes(&p, &[1, 3, 2, 2], &[0, 2, 3, 1]), y);
        let z = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(index_select(&z, &[3, 2], 0, &[2, 0, 1]), vec![5.0, 6.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(index_select(&z, &[3, 2], 1, &[1, 0]), vec![2.0, 1.0, 4.0, 3.0, 6.0, 5.0]);
    }

    #[test]
    fn lerp_matches_torch_on_both_branches() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 0.75), 2.5);
        assert_eq!(lerp(2.0, 2.0, 0.9), 2.0);
    }
}
