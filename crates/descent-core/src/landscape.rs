//! Two-dimensional test functions of optimization and the path an optimizer takes on them: the
//! classic pictures of why momentum and adaptive methods behave as they do.
//!
//! The functions are the standard ones (Rosenbrock 1960; Beale 1958; Himmelblau 1972; Rastrigin
//! 1974), with their analytic gradients; the starting points are the usual ones of the literature
//! and of optimizer visualizations.

use crate::error::{Error, Result};
use crate::optimizer::Optimizer;

/// A test function of two variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFunction {
    /// `(1 − x)² + 100 (y − x²)²`: a curved, flat-bottomed valley; minimum 0 at (1, 1).
    Rosenbrock,
    /// `(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²`: minimum 0 at (3, 0.5).
    Beale,
    /// `(x² + y − 11)² + (x + y² − 7)²`: four minima of value 0.
    Himmelblau,
    /// `(x² + 25 y²) / 2`: a quadratic with condition number 25, minimum 0 at the origin.
    IllConditioned,
    /// `x² − y²`: a saddle at the origin, unbounded below along y.
    Saddle,
    /// `20 + Σ (v² − 10 cos 2πv)`: a grid of local minima around the global one, 0 at the origin.
    Rastrigin,
}

impl TestFunction {
    /// Every test function, in the order `descent landscape` draws them.
    pub const ALL: [TestFunction; 6] = [
        TestFunction::Rosenbrock,
        TestFunction::Beale,
        TestFunction::Himmelblau,
        TestFunction::IllConditioned,
        TestFunction::Saddle,
        TestFunction::Rastrigin,
    ];

    /// The name on the command line and in charts.
    pub fn name(self) -> &'static str {
        match self {
            TestFunction::Rosenbrock => "rosenbrock",
            TestFunction::Beale => "beale",
            TestFunction::Himmelblau => "himmelblau",
            TestFunction::IllConditioned => "ill_conditioned",
            TestFunction::Saddle => "saddle",
            TestFunction::Rastrigin => "rastrigin",
        }
    }

    /// By name, or an error listing the names.
    pub fn parse(name: &str) -> Result<TestFunction> {
        Self::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| Error::Unknown {
            kind: "test function",
            name: name.into(),
            accepted: Self::ALL.map(|f| f.name()).join(", "),
        })
    }

    /// The formula, for titles.
    pub fn formula(self) -> &'static str {
        match self {
            TestFunction::Rosenbrock => "(1 − x)² + 100 (y − x²)²",
            TestFunction::Beale => "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²",
            TestFunction::Himmelblau => "(x² + y − 11)² + (x + y² − 7)²",
            TestFunction::IllConditioned => "(x² + 25 y²) / 2",
            TestFunction::Saddle => "x² − y²",
            TestFunction::Rastrigin => "20 + x² − 10 cos 2πx + y² − 10 cos 2πy",
        }
    }

    /// The function's value at `(x, y)`.
    pub fn value(self, x: f64, y: f64) -> f64 {
        use std::f64::consts::TAU;
        match self {
            TestFunction::Rosenbrock => (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2),
            TestFunction::Beale => {
                (1.5 - x + x * y).powi(2) + (2.25 - x + x * y * y).powi(2) + (2.625 - x + x * y.powi(3)).powi(2)
            }
            TestFunction::Himmelblau => (x * x + y - 11.0).powi(2) + (x + y * y - 7.0).powi(2),
            TestFunction::IllConditioned => 0.5 * (x * x + 25.0 * y * y),
            TestFunction::Saddle => x * x - y * y,
            TestFunction::Rastrigin => 20.0 + x * x - 10.0 * (TAU * x).cos() + y * y - 10.0 * (TAU * y).cos(),
        }
    }

    /// The analytic gradient `(∂f/∂x, ∂f/∂y)`.
    pub fn grad(self, x: f64, y: f64) -> (f64, f64) {
        use std::f64::consts::TAU;
        match self {
            TestFunction::Rosenbrock => (-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)),
            TestFunction::Beale => {
                let (a, b, c) = (1.5 - x + x * y, 2.25 - x + x * y * y, 2.625 - x + x * y.powi(3));
                (
                    2.0 * a * (y - 1.0) + 2.0 * b * (y * y - 1.0) + 2.0 * c * (y.powi(3) - 1.0),
                    2.0 * a * x + 2.0 * b * 2.0 * x * y + 2.0 * c * 3.0 * x * y * y,
                )
            }
            TestFunction::Himmelblau => {
                let (a, b) = (x * x + y - 11.0, x + y * y - 7.0);
                (4.0 * a * x + 2.0 * b, 2.0 * a + 4.0 * b * y)
            }
            TestFunction::IllConditioned => (x, 25.0 * y),
            TestFunction::Saddle => (2.0 * x, -2.0 * y),
            TestFunction::Rastrigin => (2.0 * x + 10.0 * TAU * (TAU * x).sin(), 2.0 * y + 10.0 * TAU * (TAU * y).sin()),
        }
    }

    /// Where optimizers start.
    pub fn start(self) -> (f64, f64) {
        match self {
            TestFunction::Rosenbrock => (-1.5, 2.0),
            TestFunction::Beale => (1.0, 1.5),
            TestFunction::Himmelblau => (-0.5, -0.5),
            TestFunction::IllConditioned => (-4.5, 1.5),
            TestFunction::Saddle => (-1.8, 0.01),
            TestFunction::Rastrigin => (-2.3, 2.6),
        }
    }

    /// The region drawn: `(x_min, x_max, y_min, y_max)`.
    pub fn domain(self) -> (f64, f64, f64, f64) {
        match self {
            TestFunction::Rosenbrock => (-2.0, 2.0, -1.0, 3.0),
            TestFunction::Beale => (-4.5, 4.5, -4.5, 4.5),
            TestFunction::Himmelblau => (-5.0, 5.0, -5.0, 5.0),
            TestFunction::IllConditioned => (-5.0, 5.0, -2.0, 2.0),
            TestFunction::Saddle => (-2.0, 2.0, -2.0, 2.0),
            TestFunction::Rastrigin => (-5.12, 5.12, -5.12, 5.12),
        }
    }

    /// The global minima (none for the saddle).
    pub fn minima(self) -> Vec<(f64, f64)> {
        match self {
            TestFunction::Rosenbrock => vec![(1.0, 1.0)],
            TestFunction::Beale => vec![(3.0, 0.5)],
            TestFunction::Himmelblau => {
                vec![(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
            }
            TestFunction::IllConditioned | TestFunction::Rastrigin => vec![(0.0, 0.0)],
            TestFunction::Saddle => vec![],
        }
    }

    /// The value at the global minima (`None` when unbounded below).
    pub fn min_value(self) -> Option<f64> {
        match self {
            TestFunction::Saddle => None,
            _ => Some(0.0),
        }
    }
}

/// Runs `steps` optimizer steps from `start` on `f`'s analytic gradient: the optimizer must hold
/// one parameter of shape `[2]`. `before_step(opt, t)` runs before step `t` (0-based; a schedule
/// sets the optimizer's learning rate there). Returns the points visited, the start first; stops
/// early at a non-finite point (which ends the path).
pub fn descend(
    opt: &mut Optimizer,
    f: TestFunction,
    start: (f64, f64),
    steps: usize,
    mut before_step: impl FnMut(&mut Optimizer, u64) -> Result<()>,
) -> Result<Vec<(f64, f64)>> {
    let mut p = vec![vec![start.0 as f32, start.1 as f32]];
    let mut path = Vec::with_capacity(steps + 1);
    path.push((p[0][0] as f64, p[0][1] as f64));
    for t in 0..steps {
        let (gx, gy) = f.grad(p[0][0] as f64, p[0][1] as f64);
        before_step(opt, t as u64)?;
        opt.step_vecs(&mut p, &[vec![gx as f32, gy as f32]])?;
        let q = (p[0][0] as f64, p[0][1] as f64);
        path.push(q);
        if !q.0.is_finite() || !q.1.is_finite() {
            break;
        }
    }
    Ok(path)
}

/// The first step at which `f` is within `tol` of its minimum value (`None` if never, or if `f`
/// has no minimum).
pub fn steps_to_tolerance(f: TestFunction, path: &[(f64, f64)], tol: f64) -> Option<usize> {
    let min = f.min_value()?;
    path.iter().position(|&(x, y)| f.value(x, y) - min <= tol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build_optimizer;
    use serde_json::json;

    /// Every analytic gradient agrees with central differences of the value.
    #[test]
    fn gradients_match_finite_differences() {
        for f in TestFunction::ALL {
            let (x0, x1, y0, y1) = f.domain();
            for k in 0..25 {
                let (x, y) =
                    (x0 + (x1 - x0) * ((k * 7 % 25) as f64 + 0.37) / 25.0, y0 + (y1 - y0) * (k as f64 + 0.61) / 25.0);
                let h = 1e-6;
                let fd = (
                    (f.value(x + h, y) - f.value(x - h, y)) / (2.0 * h),
                    (f.value(x, y + h) - f.value(x, y - h)) / (2.0 * h),
                );
                let g = f.grad(x, y);
                for (a, b) in [(g.0, fd.0), (g.1, fd.1)] {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{}: at ({x}, {y}) {a} vs {b}", f.name());
                }
            }
            for (x, y) in f.minima() {
                assert!(f.value(x, y).abs() < 1e-9, "{} at its minimum", f.name());
            }
        }
    }

    /// A path is the optimizer's own updates on the analytic gradient: plain SGD is
    /// `p ← p − η ∇f(p)` in f32, and Adam's path equals stepping a second Adam by hand.
    #[test]
    fn paths_are_the_optimizers_own_updates() {
        let f = TestFunction::Rosenbrock;
        let shapes = vec![vec![2]];
        let (sx, sy) = f.start();
        let mut sgd = Optimizer::new(
            build_optimizer("torch", "sgd", &json!({"lr": 1e-3}), None, &shapes).unwrap(),
            shapes.clone(),
            &[&[sx as f32, sy as f32]],
        )
        .unwrap();
        let path = descend(&mut sgd, f, f.start(), 50, |_, _| Ok(())).unwrap();
        let mut p = [sx as f32, sy as f32];
        for &(x, y) in &path[1..] {
            let (gx, gy) = f.grad(p[0] as f64, p[1] as f64);
            p = [p[0] - 1e-3 * gx as f32, p[1] - 1e-3 * gy as f32];
            assert_eq!((x as f32, y as f32), (p[0], p[1]));
        }
        let adam = || {
            let tx = build_optimizer("optax", "adam", &json!({"learning_rate": 0.05}), None, &shapes).unwrap();
            Optimizer::new(tx, shapes.clone(), &[&[sx as f32, sy as f32]]).unwrap()
        };
        let path = descend(&mut adam(), f, f.start(), 200, |_, _| Ok(())).unwrap();
        let (mut by_hand, mut q) = (adam(), vec![vec![sx as f32, sy as f32]]);
        for &(x, y) in &path[1..] {
            let (gx, gy) = f.grad(q[0][0] as f64, q[0][1] as f64);
            by_hand.step_vecs(&mut q, &[vec![gx as f32, gy as f32]]).unwrap();
            assert_eq!((x as f32, y as f32), (q[0][0], q[0][1]));
        }
        let end = f.value(path[200].0, path[200].1);
        assert!(end < f.value(sx, sy) / 2.0, "Adam descends: {end}");
        assert_eq!(steps_to_tolerance(f, &[(0.0, 0.0), (1.0, 1.0)], 1e-6), Some(1));
        assert_eq!(steps_to_tolerance(TestFunction::Saddle, &[(0.0, 0.0)], 1.0), None);
    }

    #[test]
    fn unknown_functions_are_named() {
        let e = TestFunction::parse("sphere").unwrap_err().to_string();
        assert!(e.contains("sphere") && e.contains("rosenbrock") && e.contains("rastrigin"), "{e}");
    }
}
