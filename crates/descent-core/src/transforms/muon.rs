//! Muon's linear algebra and transformations (optax `contrib/_muon.py`): the matrix product,
//! Newton–Schulz orthogonalization in float32 or bfloat16 arithmetic, `scale_by_muon` and
//! `scale_by_shape`.

use super::{state, sum_sq, zeros};
use crate::error::Result;
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

/// Products with at least this many multiply-adds go to the blocked, threaded GEMM.
const GEMM_MIN: usize = 1 << 18;

/// Dense matrix product `C[m×n] = A[m×k]·B[k×n]`, row-major, accumulating in `f32` like the
/// libraries' GEMMs: in order of `k` for small products (the reference problems' sizes, where
/// this order reproduces torch's bfloat16 Newton–Schulz bit for bit), through the `gemm` crate
/// (blocked, vectorized, on rayon's threads) for large ones.
pub(crate) fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(a.len() == m * k && b.len() == k * n, "matmul operand sizes");
    let mut c = vec![0.0f32; m * n];
    if m * k * n >= GEMM_MIN {
        // SAFETY: the strides describe the row-major operands whose sizes are asserted above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        return c;
    }
    for r in 0..m {
        let crow = &mut c[r * n..(r + 1) * n];
        for t in 0..k {
            let av = a[r * k + t];
            let brow = &b[t * n..(t + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
    c
}

pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    if x.is_empty() {
        // No element to move, however long the other axis: no loop over it.
        return vec![];
    }
    let mut t = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// The arithmetic of a Newton–Schulz iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsPrecision {
    /// `f32` throughout, the norm added to `eps` (optax on float32 parameters).
    F32,
    /// As `torch.optim.Muon` (PyTorch 2.15): the matrix cast to bfloat16, the norm clamped at
    /// `eps`, and each of `A = XXᵀ`, `B = bA + c·A·A` and `X = aX + B·X` accumulated in `f32` and
    /// rounded to bfloat16 once (torch's `addmm`). Reproduces torch's result bit for bit.
    TorchBf16,
}

/// Rounds an `f32` to the nearest bfloat16 (ties to even), kept in an `f32`.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// Newton–Schulz orthogonalization of a `rows × cols` matrix (Muon, Jordan et al. 2024): the matrix
/// is transposed to be wide, normalized by its Frobenius norm, then iterated
/// `X ← aX + (bA + cA²)X` with `A = XXᵀ`, in the arithmetic `precision` names.
pub fn newton_schulz(
    x: &[f32],
    rows: usize,
    cols: usize,
    coeffs: [f64; 3],
    steps: usize,
    eps: f64,
    precision: NsPrecision,
) -> Vec<f32> {
    if x.is_empty() {
        return vec![];
    }
    let r: fn(f32) -> f32 = match precision {
        NsPrecision::F32 => |v| v,
        NsPrecision::TorchBf16 => round_bf16,
    };
    let tall = rows > cols;
    let (m, n, mut x) = if tall { (cols, rows, transpose(x, rows, cols)) } else { (rows, cols, x.to_vec()) };
    x.iter_mut().for_each(|v| *v = r(*v));
    let d = match precision {
        NsPrecision::F32 => (sum_sq(&x).sqrt() + eps) as f32,
        NsPrecision::TorchBf16 => r(sum_sq(&x).sqrt() as f32).max(eps as f32),
    };
    x.iter_mut().for_each(|v| *v = r(*v / d));
    let [a, b, c] = coeffs.map(|v| v as f32);
    for _ in 0..steps {
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

/// optax `contrib.scale_by_muon`: momentum (`μ ← βμ + (1−β)g`, bias-corrected, Nesterov by
/// default) orthogonalized by Newton–Schulz; for 2-D parameters.
pub struct ScaleByMuon {
    coeffs: [f64; 3],
    steps: usize,
    beta: f32,
    eps: f64,
    nesterov: bool,
    count: u64,
    shapes: Vec<Vec<usize>>,
    mu: Vec<Vec<f32>>,
}
/// The hyper-parameters of [`ScaleByMuon`], with optax `contrib.scale_by_muon`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByMuonConfig {
    /// Coefficients (a, b, c) of the Newton–Schulz iteration.
    pub ns_coeffs: [f64; 3],
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Decay β of the momentum.
    pub beta: f64,
    /// ε of the normalization before the iteration.
    pub eps: f64,
    /// Nesterov-corrected momentum.
    pub nesterov: bool,
}
impl Default for ScaleByMuonConfig {
    fn default() -> Self {
        ScaleByMuonConfig { ns_coeffs: [3.4445, -4.7750, 2.0315], ns_steps: 5, beta: 0.95, eps: 1e-8, nesterov: true }
    }
}
impl ScaleByMuon {
    /// A `ScaleByMuon` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByMuonConfig) -> Self {
        let ScaleByMuonConfig { ns_coeffs: coeffs, ns_steps: steps, beta, eps, nesterov } = config;
        ScaleByMuon { coeffs, steps, beta: beta as f32, eps, nesterov, count: 0, shapes: vec![], mu: vec![] }
    }
}
impl Transform for ScaleByMuon {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        if let Some(s) = shapes.iter().find(|s| s.len() != 2) {
            return Err(crate::error::invalid(format!("Muon orthogonalizes 2-D parameters only, got shape {s:?}")));
        }
        self.shapes = shapes.to_vec();
        self.mu = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        self.count += 1;
        let b = self.beta as f64;
        let bc = super::bias_correction(b, self.count as f64) as f32;
        let bc_next = super::bias_correction(b, self.count as f64 + 1.0) as f32;
        let beta = self.beta;
        for (i, u) in updates.iter_mut().enumerate() {
            for (g, m) in u.iter_mut().zip(self.mu[i].iter_mut()) {
                *m = (1.0 - beta) * *g + beta * *m;
                *g = if self.nesterov { beta * (*m / bc_next) + (1.0 - beta) * (*g / bc) } else { *m / bc };
            }
            let s = &self.shapes[i];
            *u = newton_schulz(u, s[0], s[1], self.coeffs, self.steps, self.eps, NsPrecision::F32);
        }
        Ok(())
    }
    state!(ScaleByMuon; bufs: [mu]; counters: [count]; scalars: []);
}

/// optax `contrib.scale_by_shape`: scales a 2-D update by `√max(1, fan_out/fan_in)` (fan_in the
/// first axis), Muon's width transfer.
#[derive(Default)]
pub struct ScaleByShape {
    shapes: Vec<Vec<usize>>,
}
impl Transform for ScaleByShape {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        for (u, s) in updates.iter_mut().zip(&self.shapes) {
            let fan_in = s.first().map_or(1.0, |&d| d as f64);
            let fan_out = s.iter().skip(1).map(|&d| d as f64).product::<f64>();
            let scale = (fan_out / fan_in).max(1.0).sqrt() as f32;
            u.iter_mut().for_each(|x| *x *= scale);
        }
        Ok(())
    }
    fn visit_state(&mut self, _v: &mut dyn StateVisitor) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{matmul, round_bf16, GEMM_MIN};

    /// Large products go through the blocked GEMM: the same values as the in-order sum, to `f32`
    /// rounding of the sum of absolute products.
    #[test]
    fn large_products_use_the_gemm_and_agree_with_the_plain_sum() {
        let (m, k, n) = (70, 90, 50);
        assert!(m * k * n >= GEMM_MIN);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
        let c = matmul(&a, &b, m, k, n);
        for r in 0..m {
            for j in 0..n {
                let (mut sum, mut mag) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let p = a[r * k + t] as f64 * b[t * n + j] as f64;
                    sum += p;
                    mag += p.abs();
                }
                let got = c[r * n + j] as f64;
                assert!((got - sum).abs() <= 2.0 * k as f64 * f32::EPSILON as f64 * mag, "{r},{j}: {got} vs {sum}");
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to the even 1.
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7));
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(0.1).to_bits() & 0xffff, 0);
    }
}
