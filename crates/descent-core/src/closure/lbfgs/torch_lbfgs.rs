//! torch `LBFGS` (`torch.optim.LBFGS`, heavily inspired by minFunc), with its optional
//! strong-Wolfe line search.
//!
//! torch mixes Python floats (f64) and 0-dimensional float32 tensors in its scalar arithmetic:
//! the loss is a Python float, dot products, `ρ`, `H_diag` and the directional derivatives are
//! float32 tensors, and the step length `t` is either, depending on where it came from. An
//! expression with a tensor in it is computed in float32 (the Python float rounded first), one of
//! Python floats alone in f64. [`Num`] follows those rules, so the line search's Armijo and
//! curvature tests compare the same float32 numbers torch does.

use std::cmp::Ordering;
use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use super::super::{ClosureOptimizer, Objective};
use super::{alloc, check_history_memory, check_lr, dot, lr_at, max_abs, Flat};

/// A torch scalar: a Python float or a 0-dimensional float32 tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    /// A Python float.
    Py(f64),
    /// A float32 tensor.
    T(f32),
}

use Num::{Py, T};

impl Num {
    fn f32(self) -> f32 {
        match self {
            Py(x) => x as f32,
            T(x) => x,
        }
    }
    fn binary(self, o: Num, f: impl Fn(f64, f64) -> f64, g: impl Fn(f32, f32) -> f32) -> Num {
        match (self, o) {
            (Py(a), Py(b)) => Py(f(a, b)),
            (a, b) => T(g(a.f32(), b.f32())),
        }
    }
    fn cmp(self, o: Num) -> Option<Ordering> {
        match (self, o) {
            (Py(a), Py(b)) => a.partial_cmp(&b),
            (a, b) => a.f32().partial_cmp(&b.f32()),
        }
    }
    fn lt(self, o: impl Into<Num>) -> bool {
        self.cmp(o.into()) == Some(Ordering::Less)
    }
    fn gt(self, o: impl Into<Num>) -> bool {
        self.cmp(o.into()) == Some(Ordering::Greater)
    }
    fn le(self, o: impl Into<Num>) -> bool {
        matches!(self.cmp(o.into()), Some(Ordering::Less | Ordering::Equal))
    }
    fn ge(self, o: impl Into<Num>) -> bool {
        matches!(self.cmp(o.into()), Some(Ordering::Greater | Ordering::Equal))
    }
    fn abs(self) -> Num {
        match self {
            Py(x) => Py(x.abs()),
            T(x) => T(x.abs()),
        }
    }
    fn sqrt(self) -> Num {
        match self {
            Py(x) => Py(x.sqrt()),
            T(x) => T(x.sqrt()),
        }
    }
    /// `x ** 2`.
    fn square(self) -> Num {
        self * self
    }
}

/// Python's `min(a, b)`: `b` only when `b < a`.
fn py_min(a: Num, b: Num) -> Num {
    if b.lt(a) {
        b
    } else {
        a
    }
}

/// Python's `max(a, b)`: `b` only when `b > a`.
fn py_max(a: Num, b: Num) -> Num {
    if b.gt(a) {
        b
    } else {
        a
    }
}

impl From<f64> for Num {
    fn from(x: f64) -> Num {
        Py(x)
    }
}

macro_rules! num_op {
    ($tr:ident, $m:ident, $op:tt) => {
        impl $tr for Num {
            type Output = Num;
            fn $m(self, o: Num) -> Num {
                self.binary(o, |a, b| a $op b, |a, b| a $op b)
            }
        }
        impl $tr<f64> for Num {
            type Output = Num;
            fn $m(self, o: f64) -> Num {
                self.$m(Py(o))
            }
        }
        impl $tr<Num> for f64 {
            type Output = Num;
            fn $m(self, o: Num) -> Num {
                Py(self).$m(o)
            }
        }
    };
}
num_op!(Add, add, +);
num_op!(Sub, sub, -);
num_op!(Mul, mul, *);
num_op!(Div, div, /);

impl Neg for Num {
    type Output = Num;
    fn neg(self) -> Num {
        match self {
            Py(x) => Py(-x),
            T(x) => T(-x),
        }
    }
}

/// torch's `_cubic_interpolate` (from minFunc's `polyinterp`): the minimizer of the cubic through
/// `(x1, f1)`, `(x2, f2)` with slopes `g1`, `g2`, clamped to `bounds` (by default the interval
/// between the points); the middle of the bounds when the cubic has no minimizer.
fn cubic_interpolate(x1: Num, f1: Num, g1: Num, x2: Num, f2: Num, g2: Num, bounds: Option<(Num, Num)>) -> Num {
    let (xmin_bound, xmax_bound) = match bounds {
        Some(b) => b,
        None if x1.le(x2) => (x1, x2),
        None => (x2, x1),
    };
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1.square() - g1 * g2;
    if d2_square.ge(0.0) {
        let d2 = d2_square.sqrt();
        let min_pos = if x1.le(x2) {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        py_min(py_max(min_pos, xmin_bound), xmax_bound)
    } else {
        (xmin_bound + xmax_bound) / 2.0
    }
}

/// What the strong-Wolfe search returns: the loss, gradient and step length of the chosen point,
/// and how many evaluations it made.
struct LineSearchResult {
    loss: f64,
    grad: Vec<f32>,
    t: Num,
    evals: u64,
}

/// The constants torch's `_strong_wolfe` is called with (its defaults: `step` passes none of them,
/// so the group's `tolerance_change` does not reach it). Its `max_ls` is not one of them: `step`
/// passes the evaluations left of the step's budget, `max_eval − current_evals`.
const C1: f64 = 1e-4;
const C2: f64 = 0.9;
const LS_TOLERANCE_CHANGE: f64 = 1e-9;

/// The point a line search starts from: the parameters `x`, the loss `f`, gradient `g` and
/// directional derivative `gtd` there.
struct LineStart<'a> {
    x: &'a [f32],
    f: f64,
    g: &'a [f32],
    gtd: Num,
}

/// torch's `_strong_wolfe` (from minFunc's `WolfeLineSearch`): bracketing, then zoom by cubic
/// interpolation, along `d` from `start` with initial step `t`, at most `max_ls` iterations after
/// the first evaluation. When the budget runs out while bracketing, the bracket is `[0, t]` and the
/// search returns the lower of its ends — possibly `t = 0`, no move.
fn strong_wolfe(
    flat: &mut Flat,
    obj: &mut dyn Objective,
    start: LineStart,
    mut t: Num,
    d: &[f32],
    max_ls: u64,
) -> Result<LineSearchResult> {
    let LineStart { x, f, g, gtd } = start;
    let d_norm = T(max_abs(d));
    let g = g.to_vec();
    let mut eval = |t: Num| -> Result<(f64, Vec<f32>, Num)> {
        let mut grad = Vec::with_capacity(d.len());
        let loss = flat.eval_along(obj, x, t.f32(), d, &mut grad)? as f64;
        let gtd = T(dot(&grad, d));
        Ok((loss, grad, gtd))
    };
    let (mut f_new, mut g_new, mut gtd_new) = eval(t)?;
    let mut ls_func_evals = 1;

    // Bracket an interval containing a point satisfying the Wolfe criteria.
    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (Py(0.0), f, g.clone(), gtd);
    let mut done = false;
    let mut ls_iter = 0;
    let mut bracket: Vec<Num> = vec![];
    let mut bracket_f: Vec<f64> = vec![];
    let mut bracket_g: Vec<Vec<f32>> = vec![];
    let mut bracket_gtd: Vec<Num> = vec![T(0.0), T(0.0)];
    while ls_iter < max_ls {
        if Py(f_new).gt(f + C1 * t * gtd) || (ls_iter > 1 && f_new >= f_prev) {
            bracket = vec![t_prev, t];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.clone(), g_new.clone()];
            bracket_gtd = vec![gtd_prev, gtd_new];
            break;
        }
        if gtd_new.abs().le(-C2 * gtd) {
            bracket = vec![t];
            bracket_f = vec![f_new];
            bracket_g = vec![g_new.clone()];
            done = true;
            break;
        }
        if gtd_new.ge(0.0) {
            bracket = vec![t_prev, t];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev.clone(), g_new.clone()];
            bracket_gtd = vec![gtd_prev, gtd_new];
            break;
        }
        // Interpolate.
        let min_step = t + 0.01 * (t - t_prev);
        let max_step = t * 10.0;
        let tmp = t;
        t = cubic_interpolate(t_prev, Py(f_prev), gtd_prev, t, Py(f_new), gtd_new, Some((min_step, max_step)));
        // Next step.
        t_prev = tmp;
        f_prev = f_new;
        g_prev = g_new;
        gtd_prev = gtd_new;
        (f_new, g_new, gtd_new) = eval(t)?;
        ls_func_evals += 1;
        ls_iter += 1;
    }
    // Reached the maximum number of iterations?
    if ls_iter == max_ls {
        bracket = vec![Py(0.0), t];
        bracket_f = vec![f, f_new];
        bracket_g = vec![g.clone(), g_new];
    }

    // Zoom phase: a point satisfying the criteria, or a bracket around it, is refined until the
    // point is found.
    let mut insuf_progress = false;
    let (mut low_pos, mut high_pos) = if bracket_f[0] <= bracket_f[bracket_f.len() - 1] { (0, 1) } else { (1, 0) };
    while !done && ls_iter < max_ls {
        // The bracket is too small.
        if ((bracket[1] - bracket[0]).abs() * d_norm).lt(LS_TOLERANCE_CHANGE) {
            break;
        }
        // Compute a new trial value.
        t = cubic_interpolate(
            bracket[0],
            Py(bracket_f[0]),
            bracket_gtd[0],
            bracket[1],
            Py(bracket_f[1]),
            bracket_gtd[1],
            None,
        );
        // Test that we are making sufficient progress: when `t` is close to the boundary of the
        // bracket, and either the last step made insufficient progress too or `t` is at the
        // boundary, move `t` to 0.1·(bracket length) from the nearest end.
        let bmax = py_max(bracket[0], bracket[1]);
        let bmin = py_min(bracket[0], bracket[1]);
        let eps = 0.1 * (bmax - bmin);
        if py_min(bmax - t, t - bmin).lt(eps) {
            if insuf_progress || t.ge(bmax) || t.le(bmin) {
                t = if (t - bmax).abs().lt((t - bmin).abs()) { bmax - eps } else { bmin + eps };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        // Evaluate the new point.
        (f_new, g_new, gtd_new) = eval(t)?;
        ls_func_evals += 1;
        ls_iter += 1;

        if Py(f_new).gt(f + C1 * t * gtd) || f_new >= bracket_f[low_pos] {
            // Armijo condition not satisfied or not lower than the lowest point.
            bracket[high_pos] = t;
            bracket_f[high_pos] = f_new;
            bracket_g[high_pos] = g_new;
            bracket_gtd[high_pos] = gtd_new;
            (low_pos, high_pos) = if bracket_f[0] <= bracket_f[1] { (0, 1) } else { (1, 0) };
        } else {
            if gtd_new.abs().le(-C2 * gtd) {
                // Wolfe conditions satisfied.
                done = true;
            } else if (gtd_new * (bracket[high_pos] - bracket[low_pos])).ge(0.0) {
                // The old high becomes the new low.
                bracket[high_pos] = bracket[low_pos];
                bracket_f[high_pos] = bracket_f[low_pos];
                bracket_g[high_pos] = bracket_g[low_pos].clone();
                bracket_gtd[high_pos] = bracket_gtd[low_pos];
            }
            // The new point becomes the new low.
            bracket[low_pos] = t;
            bracket_f[low_pos] = f_new;
            bracket_g[low_pos] = g_new;
            bracket_gtd[low_pos] = gtd_new;
        }
    }
    let t = bracket[low_pos];
    let loss = bracket_f[low_pos];
    let grad = std::mem::take(&mut bracket_g[low_pos]);
    Ok(LineSearchResult { loss, grad, t, evals: ls_func_evals })
}

/// The settings of torch `LBFGS` (its constructor's arguments).
pub struct TorchLbfgsConfig {
    /// Learning rate, the step length of every iteration but the very first (default 1).
    pub lr: LearningRate,
    /// Maximal number of iterations per `step` (default 20).
    pub max_iter: u64,
    /// Maximal number of evaluations per `step` (default `max_iter * 5 / 4`); the strong-Wolfe
    /// search may use what is left of it, `max_eval −` the evaluations the step has made.
    pub max_eval: Option<u64>,
    /// Termination tolerance on first-order optimality, `max |g| ≤ tolerance_grad` (default 1e-7).
    pub tolerance_grad: f64,
    /// Termination tolerance on function value / parameter changes (default 1e-9).
    pub tolerance_change: f64,
    /// Update history size (default 100).
    pub history_size: usize,
    /// `line_search_fn="strong_wolfe"` (default `None`: fixed steps of `lr`).
    pub strong_wolfe: bool,
    /// Maximize the objective: minimize its negation (the loss and gradients negated where torch
    /// reads them); the step returns the objective's own value.
    pub maximize: bool,
}

impl Default for TorchLbfgsConfig {
    fn default() -> Self {
        TorchLbfgsConfig {
            lr: LearningRate::Constant(1.0),
            max_iter: 20,
            max_eval: None,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            strong_wolfe: false,
            maximize: false,
        }
    }
}

/// torch `LBFGS`. One [`ClosureOptimizer::step`] is one `optimizer.step(closure)`:
///
/// 1. evaluate `L` and `g = ∇L` at the parameters; stop if `max |g| ≤ tolerance_grad`;
/// 2. up to `max_iter` times: the direction `d = −H g` by the two-loop recursion over the
///    history of `(y, s)` pairs (a pair is stored only when `yᵀs > 1e-10`; `H₀ = sᵀy / yᵀy` of the
///    newest pair); the step length `t = lr` (the very first iteration of the run:
///    `min(1, 1/‖g‖₁)·lr`); stop if `gᵀd > −tolerance_change`; move by `t·d`, with `t` from the
///    strong-Wolfe search if asked; then stop on `max_iter`, `max_eval` evaluations,
///    `max |g| ≤ tolerance_grad`, `max |t·d| ≤ tolerance_change` or
///    `|L − L_prev| < tolerance_change`.
///
/// The history, direction, step length and previous gradient and loss carry over to the next
/// step. Nocedal & Wright, *Numerical Optimization* (2006), Algorithms 7.4–7.5 and 3.5–3.6.
pub struct TorchLbfgs {
    lr: LearningRate,
    max_iter: u64,
    max_eval: u64,
    tolerance_grad: f64,
    tolerance_change: f64,
    history_size: usize,
    strong_wolfe: bool,
    maximize: bool,
    flat: Flat,
    /// Every buffer below is allocated on first use (the history is `history_size` pairs).
    allocated: bool,
    // State (torch's `state[...]`).
    func_evals: u64,
    n_iter: u64,
    /// `step` calls made (the index of the learning rate of a schedule).
    steps: u64,
    d: Vec<f32>,
    t: Num,
    /// `old_dirs` (the `y`) and `old_stps` (the `s`), a ring of `history_size` slots each of the
    /// parameters' size; the oldest pair is at slot `hist_start`, `hist_len` pairs are held.
    old_dirs: Vec<f32>,
    old_stps: Vec<f32>,
    ro: Vec<f32>,
    hist_start: usize,
    hist_len: usize,
    h_diag: f32,
    prev_flat_grad: Vec<f32>,
    prev_loss: f64,
    // Scratch.
    x: Vec<f32>,
    flat_grad: Vec<f32>,
    al: Vec<f32>,
}

impl TorchLbfgs {
    /// torch `LBFGS(params, lr, max_iter, max_eval, tolerance_grad, tolerance_change,
    /// history_size, line_search_fn)` for parameters of these shapes.
    pub fn new(cfg: TorchLbfgsConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        check_lr(&cfg.lr, "lr")?;
        for (name, x) in [("tolerance_grad", cfg.tolerance_grad), ("tolerance_change", cfg.tolerance_change)] {
            if !x.is_finite() {
                return Err(Error::Invalid(format!("{name} must be finite, got {x}")));
            }
        }
        if cfg.history_size == 0 {
            // torch would fail on its first history update (popping from an empty list).
            return Err(Error::Invalid("history_size must be at least 1, got 0".into()));
        }
        let flat = Flat::new(shapes, "torch.lbfgs")?;
        if cfg.history_size.checked_mul(flat.n).is_none_or(|m| m > crate::transform::MAX_NUMEL) {
            return Err(Error::Invalid(format!(
                "history_size {} times {} parameters is more than can be held",
                cfg.history_size, flat.n
            )));
        }
        check_history_memory("history_size", cfg.history_size, flat.n)?;
        let max_eval = cfg.max_eval.unwrap_or_else(|| cfg.max_iter.saturating_mul(5) / 4);
        if cfg.strong_wolfe && max_eval == 0 && cfg.max_iter > 0 {
            // torch hands the line search `max_eval − 1` trials, here −1, and fails on its unset
            // bracket (`max_iter * 5 // 4` is 0 for `max_iter = 0` alone, which runs no iteration).
            return Err(Error::Invalid(
                "max_eval must be at least 1 with line_search_fn=\"strong_wolfe\" (the line search gets max_eval - 1 trials after the step's first evaluation), got 0".into(),
            ));
        }
        Ok(TorchLbfgs {
            lr: cfg.lr,
            max_iter: cfg.max_iter,
            max_eval,
            tolerance_grad: cfg.tolerance_grad,
            tolerance_change: cfg.tolerance_change,
            history_size: cfg.history_size,
            strong_wolfe: cfg.strong_wolfe,
            maximize: cfg.maximize,
            flat,
            allocated: false,
            func_evals: 0,
            n_iter: 0,
            steps: 0,
            d: vec![],
            t: Py(0.0),
            old_dirs: vec![],
            old_stps: vec![],
            ro: vec![],
            hist_start: 0,
            hist_len: 0,
            h_diag: 1.0,
            prev_flat_grad: vec![],
            prev_loss: 0.0,
            x: vec![],
            flat_grad: vec![],
            al: vec![],
        })
    }

    fn allocate(&mut self) -> Result<()> {
        if !self.allocated {
            let (n, m) = (self.flat.n, self.history_size);
            self.d = alloc(n, "L-BFGS direction")?;
            self.prev_flat_grad = alloc(n, "L-BFGS previous gradient")?;
            self.old_dirs = alloc(m * n, "L-BFGS history")?;
            self.old_stps = alloc(m * n, "L-BFGS history")?;
            self.ro = alloc(m, "L-BFGS history")?;
            self.al = alloc(m, "L-BFGS history")?;
            self.allocated = true;
        }
        Ok(())
    }

    fn slot(&self, i: usize) -> std::ops::Range<usize> {
        let n = self.flat.n;
        let k = (self.hist_start + i) % self.history_size;
        k * n..(k + 1) * n
    }

    /// Appends the pair `(y, s)` with `ρ = 1/ys`, dropping the oldest when the history is full.
    fn push_history(&mut self, y: &[f32], s: &[f32], ro: f32) {
        if self.hist_len == self.history_size {
            self.hist_start = (self.hist_start + 1) % self.history_size;
            self.hist_len -= 1;
        }
        let r = self.slot(self.hist_len);
        self.old_dirs[r.clone()].copy_from_slice(y);
        self.old_stps[r].copy_from_slice(s);
        let k = (self.hist_start + self.hist_len) % self.history_size;
        self.ro[k] = ro;
        self.hist_len += 1;
    }

    /// `d = −H·g` by the two-loop recursion (torch's collapsed single-buffer form).
    fn direction(&mut self) {
        let num_old = self.hist_len;
        let mut q: Vec<f32> = self.flat_grad.iter().map(|&g| -g).collect();
        for i in (0..num_old).rev() {
            let r = self.slot(i);
            let k = (self.hist_start + i) % self.history_size;
            let al = dot(&self.old_stps[r.clone()], &q) * self.ro[k];
            self.al[i] = al;
            for (qj, &yj) in q.iter_mut().zip(&self.old_dirs[r.clone()]) {
                *qj += -al * yj;
            }
        }
        let h = self.h_diag;
        for (dj, &qj) in self.d.iter_mut().zip(&q) {
            *dj = qj * h;
        }
        for i in 0..num_old {
            let r = self.slot(i);
            let k = (self.hist_start + i) % self.history_size;
            let be_i = dot(&self.old_dirs[r.clone()], &self.d) * self.ro[k];
            let alpha = self.al[i] - be_i;
            for (dj, &sj) in self.d.iter_mut().zip(&self.old_stps[r]) {
                *dj += alpha * sj;
            }
        }
    }

    fn add_step(&mut self, t: Num) {
        let t = t.f32();
        for (xj, &dj) in self.x.iter_mut().zip(&self.d) {
            *xj += t * dj;
        }
    }
}

impl TorchLbfgs {
    /// One step minimizing `objective` (the torch step; [`ClosureOptimizer::step`] negates the
    /// objective first to maximize).
    fn minimize_step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        let lr = lr_at(&self.lr, self.steps, "lr")?;
        self.flat.gather(params, &mut self.x)?;
        self.allocate()?;
        self.steps += 1;
        let tol_grad = self.tolerance_grad as f32;
        let tol_change = self.tolerance_change;

        // Evaluate the initial f(x) and df/dx.
        let mut flat_grad = std::mem::take(&mut self.flat_grad);
        let x = std::mem::take(&mut self.x);
        let orig_loss = self.flat.eval(objective, &x, &mut flat_grad);
        self.x = x;
        let orig_loss = orig_loss?;
        let mut loss = orig_loss as f64;
        let mut current_evals = 1;
        self.func_evals += 1;
        let mut opt_cond = max_abs(&flat_grad) <= tol_grad;
        if opt_cond {
            self.flat_grad = flat_grad;
            return Ok(orig_loss);
        }

        let n = self.flat.n;
        let mut y = vec![0.0f32; n];
        let mut s = vec![0.0f32; n];
        let mut n_iter = 0;
        while n_iter < self.max_iter {
            n_iter += 1;
            self.n_iter += 1;

            // Compute the descent direction.
            if self.n_iter == 1 {
                for (dj, &gj) in self.d.iter_mut().zip(&flat_grad) {
                    *dj = -gj;
                }
                self.hist_start = 0;
                self.hist_len = 0;
                self.h_diag = 1.0;
            } else {
                // Update the memory.
                let t = self.t.f32();
                for j in 0..n {
                    y[j] = flat_grad[j] - self.prev_flat_grad[j];
                    s[j] = self.d[j] * t;
                }
                let ys = dot(&y, &s);
                if ys > 1e-10f32 {
                    self.push_history(&y, &s, 1.0 / ys);
                    self.h_diag = ys / dot(&y, &y);
                }
                self.flat_grad = flat_grad;
                self.direction();
                flat_grad = std::mem::take(&mut self.flat_grad);
            }
            self.prev_flat_grad.copy_from_slice(&flat_grad);
            self.prev_loss = loss;

            // Compute the step length: reset the initial guess.
            self.t = if self.n_iter == 1 {
                let abs_sum = flat_grad.iter().map(|&g| (g as f64).abs()).sum::<f64>() as f32;
                py_min(Py(1.0), T(1.0 / abs_sum)) * lr
            } else {
                Py(lr)
            };

            // The directional derivative.
            let gtd = T(dot(&flat_grad, &self.d));
            // The directional derivative is below tolerance.
            if gtd.gt(-tol_change) {
                break;
            }

            let mut ls_func_evals = 0;
            if self.strong_wolfe {
                let d = std::mem::take(&mut self.d);
                let x = std::mem::take(&mut self.x);
                let r = strong_wolfe(
                    &mut self.flat,
                    objective,
                    LineStart { x: &x, f: loss, g: &flat_grad, gtd },
                    self.t,
                    &d,
                    self.max_eval - current_evals,
                );
                self.d = d;
                self.x = x;
                let r = r?;
                loss = r.loss;
                flat_grad = r.grad;
                self.t = r.t;
                ls_func_evals = r.evals;
                self.add_step(self.t);
                opt_cond = max_abs(&flat_grad) <= tol_grad;
            } else {
                // No line search: a fixed step.
                self.add_step(self.t);
                if n_iter != self.max_iter {
                    // Re-evaluate only if this is not the last iteration (in a stochastic
                    // setting there is no use evaluating the function here).
                    let x = std::mem::take(&mut self.x);
                    let l = self.flat.eval(objective, &x, &mut flat_grad);
                    self.x = x;
                    loss = l? as f64;
                    opt_cond = max_abs(&flat_grad) <= tol_grad;
                    ls_func_evals = 1;
                }
            }
            current_evals += ls_func_evals;
            self.func_evals += ls_func_evals;

            // Check the conditions.
            if n_iter == self.max_iter || current_evals >= self.max_eval || opt_cond {
                break;
            }
            // Lack of progress.
            let t = self.t.f32();
            s.iter_mut().zip(&self.d).for_each(|(sj, &dj)| *sj = dj * t);
            if max_abs(&s) <= tol_change as f32 {
                break;
            }
            if (loss - self.prev_loss).abs() < tol_change {
                break;
            }
        }
        self.flat_grad = flat_grad;
        self.flat.scatter(&self.x, params);
        Ok(orig_loss)
    }
}

impl ClosureOptimizer for TorchLbfgs {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        if self.maximize {
            Ok(-self.minimize_step(params, &mut super::super::Negated(objective))?)
        } else {
            self.minimize_step(params, objective)
        }
    }
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.allocate()?;
        v.counter("func_evals", &mut self.func_evals)?;
        v.counter("n_iter", &mut self.n_iter)?;
        v.counter("steps", &mut self.steps)?;
        v.buffer("d", &mut self.d)?;
        let (mut t, mut t_tensor) = match self.t {
            Py(x) => (x, 0),
            T(x) => (x as f64, 1),
        };
        v.scalar("t", &mut t)?;
        v.counter("t_is_tensor", &mut t_tensor)?;
        v.buffer("old_dirs", &mut self.old_dirs)?;
        v.buffer("old_stps", &mut self.old_stps)?;
        v.buffer("ro", &mut self.ro)?;
        let (mut start, mut len) = (self.hist_start as u64, self.hist_len as u64);
        v.counter("history_start", &mut start)?;
        v.counter("history_len", &mut len)?;
        let mut h_diag = self.h_diag as f64;
        v.scalar("H_diag", &mut h_diag)?;
        v.buffer("prev_flat_grad", &mut self.prev_flat_grad)?;
        v.scalar("prev_loss", &mut self.prev_loss)?;
        // Check what a loader wrote before taking it.
        let m = self.history_size as u64;
        if start >= m || len > m || t_tensor > 1 {
            return Err(Error::State(format!(
                "torch.lbfgs: history_start {start}, history_len {len} (history_size {m}), t_is_tensor {t_tensor}"
            )));
        }
        let n = self.flat.n;
        let sizes_ok = self.d.len() == n
            && self.prev_flat_grad.len() == n
            && self.old_dirs.len() == self.history_size * n
            && self.old_stps.len() == self.history_size * n
            && self.ro.len() == self.history_size;
        if !sizes_ok {
            return Err(Error::State("torch.lbfgs: buffers of the wrong size".into()));
        }
        self.t = if t_tensor == 1 { T(t as f32) } else { Py(t) };
        self.hist_start = start as usize;
        self.hist_len = len as usize;
        self.h_diag = h_diag as f32;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_follows_torch_promotion() {
        // A tensor in the expression: float32 arithmetic and comparison.
        let a = T(0.1f32);
        assert!(!a.gt(0.1), "0.1 as a float32 tensor equals the Python float 0.1 rounded");
        assert!(Py(0.1f32 as f64).gt(0.1), "as Python floats they differ");
        assert_eq!(Py(1.0) + T(1e-8), T(1.0));
        assert_eq!(Py(1.0) + Py(1e-8), Py(1.0 + 1e-8));
        // Python min/max keep the first of equal values.
        assert_eq!(py_min(Py(1.0), T(1.0)), Py(1.0));
        assert_eq!(py_max(T(2.0), Py(2.0)), T(2.0));
        assert_eq!(py_min(Py(1.0), T(0.5)), T(0.5));
    }

    #[test]
    fn cubic_interpolation_finds_the_minimizer_of_a_cubic() {
        // f(x) = (x - 1)^2 on [0, 3]: the cubic through the endpoints is the parabola itself.
        let t = cubic_interpolate(Py(0.0), Py(1.0), T(-2.0), Py(3.0), Py(4.0), T(4.0), None);
        assert!((t.f32() - 1.0).abs() < 1e-6, "{t:?}");
        // Clamped to the bounds.
        let t = cubic_interpolate(Py(0.0), Py(1.0), T(-2.0), Py(3.0), Py(4.0), T(4.0), Some((Py(2.0), Py(5.0))));
        assert_eq!(t, Py(2.0));
    }
}
