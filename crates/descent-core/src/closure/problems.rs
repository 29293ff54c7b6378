//! The objectives of the reference problem cases (`shared/reference-r2`, "Problem cases"):
//! multinomial logistic regression and the Rosenbrock function.
//!
//! Parameters, gradients and the loss handed to an optimizer are `f32`, as the libraries'
//! (torch autograd, `jax.grad`) are. The sums inside are accumulated in `f64`, so each value is
//! the `f32` rounding of the exact one: within the libraries' own rounding of the same formulas.
//! [`Problem::loss_f64`] is the objective in `f64` from the `f32` parameters, as the reference
//! files record it (`expected_loss`).

use crate::error::{Error, Result};

use super::Objective;

/// Multinomial logistic (softmax) regression with an L2 penalty on the weights.
///
/// Parameters, in this order: `W` of shape `[d, k]` (row-major) and `b` of shape `[k]`. With
/// `zᵢ = xᵢ·W + b` and `P` the row-wise softmax of `z`, `Y` the one-hot labels:
///
/// ```text
/// L(W, b) = (1/n) Σᵢ [ log Σ_c exp(zᵢc) − zᵢ,yᵢ ] + (l2/2) Σₐc Wₐc²
/// ∇W L = (1/n) Xᵀ(P − Y) + l2·W        ∇b L = (1/n) Σᵢ (Pᵢ − Yᵢ)
/// ```
#[derive(Debug, Clone)]
pub struct SoftmaxRegression {
    n: usize,
    d: usize,
    k: usize,
    x: Vec<f32>,
    y: Vec<usize>,
    l2: f64,
}

impl SoftmaxRegression {
    /// `n` samples of `d` features (`x`, `n·d` values, row `i` the sample `xᵢ`), their labels `y`
    /// in `[0, k)`, and the penalty `l2 ≥ 0`.
    pub fn new(n: usize, d: usize, k: usize, x: Vec<f32>, y: Vec<usize>, l2: f64) -> Result<Self> {
        let err = |m: String| Error::Field { context: "softmax_regression".into(), message: m };
        if n == 0 || d == 0 || k == 0 {
            return Err(err(format!("n, d and k must be positive, got n = {n}, d = {d}, k = {k}")));
        }
        crate::transform::shape_numel(&[d, k]).map_err(|e| err(e.to_string()))?;
        if n.checked_mul(d) != Some(x.len()) {
            return Err(err(format!("`x` has {} values, n·d = {n}·{d} are needed", x.len())));
        }
        if y.len() != n {
            return Err(err(format!("`y` has {} labels for n = {n} samples", y.len())));
        }
        if let Some((i, c)) = y.iter().enumerate().find(|(_, &c)| c >= k) {
            return Err(err(format!("label y[{i}] = {c} is not in [0, {k})")));
        }
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(err(format!("`l2` must be a non-negative number, got {l2}")));
        }
        if let Some(v) = x.iter().find(|v| !v.is_finite()) {
            return Err(err(format!("`x` holds {v}")));
        }
        Ok(SoftmaxRegression { n, d, k, x, y, l2 })
    }

    /// The parameter shapes: `[[d, k], [k]]`.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.d, self.k], vec![self.k]]
    }

    /// The loss in `f64`, and the gradient (in `f64`) accumulated into `grad` when given. One
    /// sample at a time: no buffer beyond the parameters' size and `k`.
    fn eval(&self, params: &[Vec<f32>], mut grad: Option<&mut [Vec<f64>]>) -> f64 {
        let (d, k) = (self.d, self.k);
        let (w, b) = (&params[0], &params[1]);
        let mut z = vec![0.0f64; k];
        let mut total = 0.0f64;
        for (i, &label) in self.y.iter().enumerate() {
            let xi = &self.x[i * d..(i + 1) * d];
            for (c, zc) in z.iter_mut().enumerate() {
                *zc = b[c] as f64 + xi.iter().enumerate().map(|(a, &xa)| xa as f64 * w[a * k + c] as f64).sum::<f64>();
            }
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|&zc| (zc - m).exp()).sum();
            total += m + s.ln() - z[label];
            if let Some(g) = grad.as_deref_mut() {
                let (gw, gb) = g.split_at_mut(1);
                for c in 0..k {
                    let r = (z[c] - m).exp() / s - if c == label { 1.0 } else { 0.0 };
                    gb[0][c] += r;
                    for (a, &xa) in xi.iter().enumerate() {
                        gw[0][a * k + c] += xa as f64 * r;
                    }
                }
            }
        }
        let n = self.n as f64;
        let sq: f64 = w.iter().map(|&v| v as f64 * v as f64).sum();
        if let Some(g) = grad {
            for (gv, &wv) in g[0].iter_mut().zip(w.iter()) {
                *gv = *gv / n + self.l2 * wv as f64;
            }
            for gv in g[1].iter_mut() {
                *gv /= n;
            }
        }
        total / n + 0.5 * self.l2 * sq
    }
}

/// The Rosenbrock function of one parameter `x` of shape `[m]`:
///
/// ```text
/// L(x) = Σ_{j=0}^{m−2} [ (1 − x_j)² + 100·(x_{j+1} − x_j²)² ]
/// ```
///
/// with its minimum 0 at `x = (1, …, 1)`.
#[derive(Debug, Clone)]
pub struct Rosenbrock {
    m: usize,
}

impl Rosenbrock {
    /// The function of `m ≥ 1` variables.
    pub fn new(m: usize) -> Result<Self> {
        if m == 0 {
            return Err(Error::Field { context: "rosenbrock".into(), message: "`m` must be positive".into() });
        }
        Ok(Rosenbrock { m })
    }

    /// The parameter shapes: `[[m]]`.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.m]]
    }

    fn eval(&self, params: &[Vec<f32>], grad: Option<&mut [Vec<f64>]>) -> f64 {
        let x: Vec<f64> = params[0].iter().map(|&v| v as f64).collect();
        let mut total = 0.0;
        for j in 0..self.m - 1 {
            let (a, r) = (1.0 - x[j], x[j + 1] - x[j] * x[j]);
            total += a * a + 100.0 * r * r;
        }
        if let Some(g) = grad {
            let g = &mut g[0];
            for j in 0..self.m {
                let mut v = 0.0;
                if j + 1 < self.m {
                    v += -2.0 * (1.0 - x[j]) - 400.0 * x[j] * (x[j + 1] - x[j] * x[j]);
                }
                if j >= 1 {
                    v += 200.0 * (x[j] - x[j - 1] * x[j - 1]);
                }
                g[j] = v;
            }
        }
        total
    }
}

/// One of the reference problems.
#[derive(Debug, Clone)]
pub enum Problem {
    /// Multinomial logistic regression with an L2 penalty on the weights.
    SoftmaxRegression(SoftmaxRegression),
    /// The m-dimensional Rosenbrock function.
    Rosenbrock(Rosenbrock),
}

impl Problem {
    /// The problem's name as the reference files write it (`kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::SoftmaxRegression(_) => "softmax_regression",
            Problem::Rosenbrock(_) => "rosenbrock",
        }
    }

    /// The shapes of the parameters the objective takes, in order.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        match self {
            Problem::SoftmaxRegression(p) => p.shapes(),
            Problem::Rosenbrock(p) => p.shapes(),
        }
    }

    fn check(&self, what: &str, sizes: &[usize]) -> Result<()> {
        let shapes = self.shapes();
        let want: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        if sizes != want.as_slice() {
            return Err(Error::Shape(format!(
                "the {} objective takes {what} of shapes {shapes:?}, got sizes {sizes:?}",
                self.kind()
            )));
        }
        Ok(())
    }

    fn eval(&self, params: &[Vec<f32>], grad: Option<&mut [Vec<f64>]>) -> Result<f64> {
        self.check("parameters", &params.iter().map(Vec::len).collect::<Vec<_>>())?;
        Ok(match self {
            Problem::SoftmaxRegression(p) => p.eval(params, grad),
            Problem::Rosenbrock(p) => p.eval(params, grad),
        })
    }

    /// The objective at `params` computed in `f64` (from their `f32` values).
    pub fn loss_f64(&self, params: &[Vec<f32>]) -> Result<f64> {
        self.eval(params, None)
    }
}

impl Objective for Problem {
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
        self.check("gradients", &grads.iter().map(Vec::len).collect::<Vec<_>>())?;
        let mut acc: Vec<Vec<f64>> = grads.iter().map(|g| vec![0.0; g.len()]).collect();
        let loss = self.eval(params, Some(&mut acc))?;
        for (g, a) in grads.iter_mut().zip(&acc) {
            for (gv, &av) in g.iter_mut().zip(a) {
                *gv = av as f32;
            }
        }
        Ok(loss as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences in f64 of the f64 loss against the returned gradient.
    fn check_gradient(mut p: Problem, params: Vec<Vec<f32>>) {
        let mut grads: Vec<Vec<f32>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
        let loss = p.value_and_grad(&params, &mut grads).unwrap();
        let exact = p.loss_f64(&params).unwrap();
        assert!((loss as f64 - exact).abs() <= 1e-6 * exact.abs(), "{loss} vs {exact}");
        for i in 0..params.len() {
            for j in 0..params[i].len() {
                let h = 1e-3f64;
                let mut up = params.clone();
                let mut down = params.clone();
                // The f32 parameter moves by the f32 rounding of h; divide by the step taken.
                up[i][j] = (params[i][j] as f64 + h) as f32;
                down[i][j] = (params[i][j] as f64 - h) as f32;
                let step = up[i][j] as f64 - down[i][j] as f64;
                let fd = (p.loss_f64(&up).unwrap() - p.loss_f64(&down).unwrap()) / step;
                let g = grads[i][j] as f64;
                assert!((fd - g).abs() <= 1e-3 * g.abs().max(1e-2), "param {i}[{j}]: {g} vs {fd}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, d, k) = (5, 3, 4);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let y = vec![0, 3, 1, 2, 3];
        let p = SoftmaxRegression::new(n, d, k, x, y, 0.01).unwrap();
        let w: Vec<f32> = (0..d * k).map(|i| ((i * 5 % 7) as f32 - 3.0) / 10.0).collect();
        check_gradient(Problem::SoftmaxRegression(p), vec![w, vec![0.1, -0.2, 0.05, 0.0]]);
        let r = Rosenbrock::new(5).unwrap();
        check_gradient(Problem::Rosenbrock(r), vec![vec![0.3, -0.5, 1.2, 0.9, 1.1]]);
    }

    #[test]
    fn rosenbrock_is_zero_at_its_minimum_and_sizes_are_checked() {
        let mut r = Problem::Rosenbrock(Rosenbrock::new(4).unwrap());
        let mut g = vec![vec![1.0f32; 4]];
        assert_eq!(r.value_and_grad(&[vec![1.0; 4]], &mut g).unwrap(), 0.0);
        assert_eq!(g, vec![vec![0.0f32; 4]]);
        assert!(r.value_and_grad(&[vec![1.0; 3]], &mut g).is_err());
        assert!(r.value_and_grad(&[vec![1.0; 4]], &mut [vec![0.0; 5]]).is_err());
        assert!(SoftmaxRegression::new(2, 1, 2, vec![1.0, 2.0], vec![0, 2], 0.0).is_err());
        assert!(SoftmaxRegression::new(2, 1, 2, vec![1.0], vec![0, 1], 0.0).is_err());
        assert!(Rosenbrock::new(0).is_err());
    }
}
