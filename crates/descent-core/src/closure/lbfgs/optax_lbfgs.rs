//! optax `lbfgs`: `chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(−lr),
//! linesearch)` with `scale_by_zoom_linesearch(…)` (its default) or
//! `scale_by_backtracking_linesearch(…)`, stepped as optax's documentation does with
//! `value_and_grad_from_state`. Everything is float32 as in JAX (scalars included).

use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use super::super::{ClosureOptimizer, Objective};
use super::{alloc, check_history_memory, check_lr, dot, lr_at, Flat};

/// The settings of optax `scale_by_zoom_linesearch` (its arguments; `Default` is what
/// `optax.lbfgs` passes: `max_linesearch_steps=20, initial_guess_strategy="one"`, the others
/// `scale_by_zoom_linesearch`'s defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct ZoomLinesearchConfig {
    /// Maximal number of line-search iterations (evaluations) per step.
    pub max_linesearch_steps: u64,
    /// Maximal step size (`None`: unbounded).
    pub max_learning_rate: Option<f64>,
    /// Tolerance on the decrease and curvature criteria (default 0).
    pub tol: f64,
    /// Factor by which the step size grows while searching for an interval (default 2).
    pub increase_factor: f64,
    /// `c₁` of the sufficient-decrease (Armijo) criterion (default 1e-4).
    pub slope_rtol: f64,
    /// `c₂` of the curvature criterion `|f'(η)| ≤ c₂|f'(0)|` (default 0.9).
    pub curv_rtol: f64,
    /// Relative tolerance of Hager & Zhang's approximate decrease criterion (default 1e-6;
    /// `None`: Armijo alone).
    pub approx_dec_rtol: Option<f64>,
    /// Interval length below which the search takes the best point with sufficient decrease
    /// found so far (default 1e-5).
    pub stepsize_precision: f64,
    /// `initial_guess_strategy="keep"`: start from the previous step's step size rather than 1
    /// (`"one"`, what `lbfgs` passes).
    pub keep_previous_stepsize: bool,
}

impl Default for ZoomLinesearchConfig {
    fn default() -> Self {
        ZoomLinesearchConfig {
            max_linesearch_steps: 20,
            max_learning_rate: None,
            tol: 0.0,
            increase_factor: 2.0,
            slope_rtol: 1e-4,
            curv_rtol: 0.9,
            approx_dec_rtol: Some(1e-6),
            stepsize_precision: 1e-5,
            keep_previous_stepsize: false,
        }
    }
}

impl ZoomLinesearchConfig {
    pub(super) fn validate(&self) -> Result<()> {
        if self.max_linesearch_steps == 0 {
            // optax's loop would still make one step; the maximum would mean nothing.
            return Err(Error::Invalid("max_linesearch_steps must be at least 1".into()));
        }
        if let Some(m) = self.max_learning_rate {
            if m.is_nan() || m <= 0.0 {
                return Err(Error::Invalid(format!("max_learning_rate must be positive, got {m}")));
            }
        }
        let fields = [
            ("tol", self.tol),
            ("increase_factor", self.increase_factor),
            ("slope_rtol", self.slope_rtol),
            ("curv_rtol", self.curv_rtol),
            ("stepsize_precision", self.stepsize_precision),
        ];
        for (name, x) in fields {
            if x.is_nan() || x < 0.0 {
                return Err(Error::Invalid(format!("{name} must be non-negative, got {x}")));
            }
        }
        if self.increase_factor <= 0.0 {
            return Err(Error::Invalid(format!("increase_factor must be positive, got {}", self.increase_factor)));
        }
        if let Some(a) = self.approx_dec_rtol {
            if a.is_nan() || a < 0.0 {
                return Err(Error::Invalid(format!("approx_dec_rtol must be non-negative, got {a}")));
            }
        }
        Ok(())
    }
}

/// The settings of optax `scale_by_backtracking_linesearch` (its arguments; every one but
/// `max_backtracking_steps` has the library's default in [`BacktrackingLinesearchConfig::new`]).
/// `store_grad` is not among them: whether the gradient at the accepted point is kept or computed
/// again, the numbers are the same.
#[derive(Clone, Debug, PartialEq)]
pub struct BacktrackingLinesearchConfig {
    /// Trials after the first (`iter_num <= max_backtracking_steps`: one more evaluation).
    pub max_backtracking_steps: u64,
    /// `c` of the sufficient-decrease criterion `f(w+ηu) ≤ (1+rtol)f(w) + η·c·⟨u, ∇f(w)⟩ + atol`
    /// (default 1e-4).
    pub slope_rtol: f64,
    /// Factor of the step size between trials (default 0.8).
    pub decrease_factor: f64,
    /// Factor of the previous step's size for the first trial (default 1.5).
    pub increase_factor: f64,
    /// Cap on the first trial's step size (default 1).
    pub max_learning_rate: f64,
    /// Absolute tolerance of the criterion (default 0).
    pub atol: f64,
    /// Relative tolerance of the criterion (default 0).
    pub rtol: f64,
}

impl BacktrackingLinesearchConfig {
    /// `scale_by_backtracking_linesearch(max_backtracking_steps)` with optax's defaults.
    pub fn new(max_backtracking_steps: u64) -> Self {
        BacktrackingLinesearchConfig {
            max_backtracking_steps,
            slope_rtol: 1e-4,
            decrease_factor: 0.8,
            increase_factor: 1.5,
            max_learning_rate: 1.0,
            atol: 0.0,
            rtol: 0.0,
        }
    }
}

/// The line search of optax `lbfgs`.
#[derive(Clone, Debug, PartialEq)]
pub enum OptaxLinesearch {
    /// `scale_by_zoom_linesearch` (strong Wolfe conditions; `lbfgs`'s default).
    Zoom(ZoomLinesearchConfig),
    /// `scale_by_backtracking_linesearch` (sufficient decrease alone).
    Backtracking(BacktrackingLinesearchConfig),
}

/// The settings of optax `lbfgs` (its arguments).
pub struct OptaxLbfgsConfig {
    /// Global scaling of the direction (optax's default `None` is a rate of 1).
    pub learning_rate: LearningRate,
    /// Number of past differences kept (default 10).
    pub memory_size: usize,
    /// Scale the initial inverse Hessian by `sᵀy / yᵀy` of the newest pair (default true).
    pub scale_init_precond: bool,
    /// The line search (`None`: none, the step is the scaled direction itself).
    pub linesearch: Option<OptaxLinesearch>,
}

impl Default for OptaxLbfgsConfig {
    fn default() -> Self {
        OptaxLbfgsConfig {
            learning_rate: LearningRate::Constant(1.0),
            memory_size: 10,
            scale_init_precond: true,
            linesearch: Some(OptaxLinesearch::Zoom(ZoomLinesearchConfig::default())),
        }
    }
}

/// optax `lbfgs`. One [`ClosureOptimizer::step`] is one iteration:
///
/// 1. `value, g`: those the line search stored for the accepted point (at the first step, or when
///    that value is not finite, an evaluation of `L`);
/// 2. `scale_by_lbfgs`: store `(Δw, Δg)` of the last move with weight `ρ = 1/Δgᵀ Δw` (0 when the
///    product is 0) in a ring of `memory_size` slots; `γ = Δgᵀ Δw / ‖Δg‖²` (1 if `Δg = 0`; at the
///    first step `min(1, 1/‖g‖)`); `u = P g` by the two-loop recursion over all slots;
/// 3. `u ← −lr·u`;
/// 4. the zoom line search along `u` from step size 1 (or the previous one for `"keep"`):
///    bracketing by doubling, then cubic / quadratic / bisection steps until
///    `f(w+ηu) ≤ f(w) + c₁η f'(0)` (or Hager–Zhang's approximate form near the minimum) and
///    `|f'(η)| ≤ c₂|f'(0)|`, falling back on the best point with sufficient decrease; or the
///    backtracking search: `η = min(increase_factor·η_prev, max_learning_rate)`, times
///    `decrease_factor` until `f(w+ηu) ≤ (1+rtol)f(w) + η·c·f'(0) + atol` or the trials run out
///    (the last one taken; `η = 0` where the last decrease error is infinite — a NaN or `+∞`
///    value, or an overflow — and then for every later step, as in optax);
/// 5. `w ← w + η u`.
///
/// Nocedal & Wright, *Numerical Optimization* (2006), Algorithms 7.4, 3.5, 3.6; Hager & Zhang,
/// *Algorithm 851: CG_DESCENT* (2006).
pub struct OptaxLbfgs {
    learning_rate: LearningRate,
    memory_size: usize,
    scale_init_precond: bool,
    linesearch: Option<OptaxLinesearch>,
    flat: Flat,
    allocated: bool,
    // `scale_by_lbfgs` state.
    count: u64,
    params: Vec<f32>,
    updates: Vec<f32>,
    diff_params_memory: Vec<f32>,
    diff_updates_memory: Vec<f32>,
    weights_memory: Vec<f32>,
    // The line search's state: the step size, value and gradient at the accepted point.
    ls_learning_rate: f32,
    ls_value: f32,
    ls_grad: Vec<f32>,
    // Scratch.
    x: Vec<f32>,
}

impl OptaxLbfgs {
    /// optax `lbfgs(learning_rate, memory_size, scale_init_precond, linesearch)` for parameters of
    /// these shapes.
    pub fn new(cfg: OptaxLbfgsConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        check_lr(&cfg.learning_rate, "learning_rate")?;
        if cfg.memory_size < 1 {
            return Err(Error::Invalid("memory_size must be >= 1".into()));
        }
        if let Some(OptaxLinesearch::Zoom(ls)) = &cfg.linesearch {
            ls.validate()?;
        }
        let flat = Flat::new(shapes, "optax.lbfgs")?;
        if cfg.memory_size.checked_mul(flat.n).is_none_or(|m| m > crate::transform::MAX_NUMEL) {
            return Err(Error::Invalid(format!(
                "memory_size {} times {} parameters is more than can be held",
                cfg.memory_size, flat.n
            )));
        }
        check_history_memory("memory_size", cfg.memory_size, flat.n)?;
        Ok(OptaxLbfgs {
            learning_rate: cfg.learning_rate,
            memory_size: cfg.memory_size,
            scale_init_precond: cfg.scale_init_precond,
            linesearch: cfg.linesearch,
            flat,
            allocated: false,
            count: 0,
            params: vec![],
            updates: vec![],
            diff_params_memory: vec![],
            diff_updates_memory: vec![],
            weights_memory: vec![],
            ls_learning_rate: 1.0,
            ls_value: f32::INFINITY,
            ls_grad: vec![],
            x: vec![],
        })
    }

    fn allocate(&mut self) -> Result<()> {
        if !self.allocated {
            let (n, m) = (self.flat.n, self.memory_size);
            self.params = alloc(n, "L-BFGS parameters")?;
            self.updates = alloc(n, "L-BFGS updates")?;
            self.diff_params_memory = alloc(m * n, "L-BFGS memory")?;
            self.diff_updates_memory = alloc(m * n, "L-BFGS memory")?;
            self.weights_memory = alloc(m, "L-BFGS memory")?;
            self.ls_grad = alloc(n, "line-search gradient")?;
            self.allocated = true;
        }
        Ok(())
    }

    /// `scale_by_lbfgs`: updates the memory with the move to `params` (gradient `grad`) and
    /// returns the preconditioned `P·grad`.
    fn scale_by_lbfgs(&mut self, params: &[f32], grad: &[f32]) -> Vec<f32> {
        let (n, m) = (self.flat.n, self.memory_size);
        let memory_idx = (self.count % m as u64) as usize;
        let prev_memory_idx = (memory_idx + m - 1) % m;

        // 1. The memory, given fresh parameters and gradients.
        let mut diff_params: Vec<f32> = params.iter().zip(&self.params).map(|(&a, &b)| a - b).collect();
        let mut diff_updates: Vec<f32> = grad.iter().zip(&self.updates).map(|(&a, &b)| a - b).collect();
        let vdot_diff = dot(&diff_updates, &diff_params);
        let mut weight = if vdot_diff == 0.0 { 0.0 } else { 1.0 / vdot_diff };
        if self.count == 0 {
            diff_params.iter_mut().for_each(|v| *v = 0.0);
            diff_updates.iter_mut().for_each(|v| *v = 0.0);
            weight = 0.0;
        }
        let slot = prev_memory_idx * n..(prev_memory_idx + 1) * n;
        self.diff_params_memory[slot.clone()].copy_from_slice(&diff_params);
        self.diff_updates_memory[slot].copy_from_slice(&diff_updates);
        self.weights_memory[prev_memory_idx] = weight;

        // 2. The scale of the initial inverse Hessian.
        let identity_scale = if self.scale_init_precond {
            if self.count > 0 {
                let numerator = dot(&diff_updates, &diff_params);
                let denominator = dot(&diff_updates, &diff_updates);
                if denominator > 0.0 {
                    numerator / denominator
                } else {
                    1.0
                }
            } else {
                let update_norm = dot(grad, grad).sqrt();
                nan_min(1.0, 1.0 / update_norm)
            }
        } else {
            1.0
        };

        // 3. P·g by the two-loop recursion over every slot, newest first.
        let mut vec = grad.to_vec();
        let mut alphas = vec![0.0f32; m];
        let indices: Vec<usize> = (0..m).map(|i| (memory_idx + i) % m).collect();
        for (a, &idx) in alphas.iter_mut().zip(&indices).rev() {
            let r = idx * n..(idx + 1) * n;
            let alpha = self.weights_memory[idx] * dot(&self.diff_params_memory[r.clone()], &vec);
            for (v, &du) in vec.iter_mut().zip(&self.diff_updates_memory[r]) {
                *v += -alpha * du;
            }
            *a = alpha;
        }
        vec.iter_mut().for_each(|v| *v *= identity_scale);
        for (&alpha, &idx) in alphas.iter().zip(&indices) {
            let r = idx * n..(idx + 1) * n;
            let beta = self.weights_memory[idx] * dot(&self.diff_updates_memory[r.clone()], &vec);
            for (v, &dw) in vec.iter_mut().zip(&self.diff_params_memory[r]) {
                *v += (alpha - beta) * dw;
            }
        }

        self.count += 1;
        self.params.copy_from_slice(params);
        self.updates.copy_from_slice(grad);
        vec
    }
}

/// `jnp.minimum` / `jnp.maximum`: NaN if either is NaN.
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// optax `_cubicmin`: the critical point of the cubic through `(a, fa)`, `(b, fb)`, `(c, fc)` with
/// slope `fpa` at `a` (NaN when there is none; the caller then ignores it).
fn cubicmin((a, fa, fpa): (f32, f32, f32), (b, fb): (f32, f32), (c, fc): (f32, f32)) -> f32 {
    let cc = fpa;
    let db = b - a;
    let dc = c - a;
    let denom = (db * dc) * (db * dc) * (db - dc);
    let (u, v) = (fb - fa - cc * db, fc - fa - cc * dc);
    let aa = (dc * dc * u + -(db * db) * v) / denom;
    let bb = (-(dc * dc * dc) * u + db * db * db * v) / denom;
    let radical = bb * bb - 3.0 * aa * cc;
    a + (-bb + radical.sqrt()) / (3.0 * aa)
}

/// optax `_quadmin`: the critical point of the parabola through `(a, fa)`, `(b, fb)` with slope
/// `fpa` at `a`.
fn quadmin(a: f32, fa: f32, fpa: f32, b: f32, fb: f32) -> f32 {
    let db = b - a;
    let bb = (fb - fa - fpa * db) / (db * db);
    a - fpa / (2.0 * bb)
}

/// The running state of one zoom line search (optax `ZoomLinesearchState`, without the fixed
/// parameters and direction).
struct Zoom {
    count: u64,
    stepsize: f32,
    value: f32,
    grad: Vec<f32>,
    slope: f32,
    value_init: f32,
    slope_init: f32,
    decrease_error: f32,
    interval_found: bool,
    done: bool,
    failed: bool,
    low: f32,
    value_low: f32,
    slope_low: f32,
    high: f32,
    value_high: f32,
    slope_high: f32,
    cubic_ref: f32,
    value_cubic_ref: f32,
    safe_stepsize: f32,
    safe_value: f32,
    safe_grad: Vec<f32>,
}

/// One zoom line search from `params` along `updates`; returns the accepted step size, value and
/// gradient.
struct ZoomSearch<'a> {
    cfg: &'a ZoomLinesearchConfig,
    flat: &'a mut Flat,
    obj: &'a mut dyn Objective,
    params: &'a [f32],
    updates: &'a [f32],
    stepsize_guess: f32,
}

impl ZoomSearch<'_> {
    fn value_and_slope(&mut self, stepsize: f32) -> Result<(f32, Vec<f32>, f32)> {
        let mut grad = Vec::with_capacity(self.updates.len());
        let value = self.flat.eval_along(self.obj, self.params, stepsize, self.updates, &mut grad)?;
        let slope = dot(&grad, self.updates);
        Ok((value, grad, slope))
    }

    fn decrease_error(&self, stepsize: f32, value_step: f32, slope_step: f32, value_init: f32, slope_init: f32) -> f32 {
        let c = self.cfg;
        let mut decrease_error = value_step - value_init - c.slope_rtol as f32 * stepsize * slope_init;
        if let Some(approx) = c.approx_dec_rtol {
            let approx_decrease_error = slope_step - (2.0 * c.slope_rtol - 1.0) as f32 * slope_init;
            let delta_values = value_step - value_init - approx as f32 * value_init.abs();
            let approx_decrease_error = nan_max(approx_decrease_error, delta_values);
            decrease_error = nan_min(approx_decrease_error, decrease_error);
        }
        let e = nan_max(decrease_error, 0.0);
        if e.is_nan() {
            f32::INFINITY
        } else {
            e
        }
    }

    fn curvature_error(&self, slope_step: f32, slope_init: f32) -> f32 {
        let e = nan_max(slope_step.abs() - self.cfg.curv_rtol as f32 * slope_init.abs(), 0.0);
        if e.is_nan() {
            f32::INFINITY
        } else {
            e
        }
    }

    fn run(&mut self, value: f32, grad: &[f32]) -> Result<(f32, f32, Vec<f32>)> {
        let slope = dot(self.updates, grad);
        let mut s = Zoom {
            count: 0,
            stepsize: 0.0,
            value,
            grad: grad.to_vec(),
            slope,
            value_init: value,
            slope_init: slope,
            decrease_error: f32::INFINITY,
            interval_found: false,
            done: false,
            failed: false,
            low: 0.0,
            value_low: value,
            slope_low: slope,
            high: 0.0,
            value_high: value,
            slope_high: slope,
            cubic_ref: 0.0,
            value_cubic_ref: value,
            safe_stepsize: 0.0,
            safe_value: value,
            safe_grad: grad.to_vec(),
        };
        while !(s.done || s.failed) {
            if s.interval_found {
                self.zoom_into_interval(&mut s)?;
            } else {
                self.search_interval(&mut s)?;
            }
            if s.failed {
                // Try a step ensuring at least sufficient decrease.
                let outside_domain = s.decrease_error.is_infinite();
                if s.safe_stepsize > 0.0 || outside_domain {
                    s.stepsize = s.safe_stepsize;
                    s.value = s.safe_value;
                    s.grad = s.safe_grad.clone();
                }
            }
        }
        Ok((s.stepsize, s.value, s.grad))
    }

    /// The search for an interval containing a valid step size (Nocedal & Wright Algorithm 3.5).
    fn search_interval(&mut self, s: &mut Zoom) -> Result<()> {
        let c = self.cfg;
        let iter_num = s.count;
        let (prev_stepsize, prev_value_step, prev_slope_step) = (s.stepsize, s.value, s.slope);
        let larger_stepsize = c.increase_factor as f32 * prev_stepsize;
        let mut new_stepsize = if iter_num == 0 { self.stepsize_guess } else { larger_stepsize };
        let max_stepsize_reached = match c.max_learning_rate {
            Some(m) => {
                let m = m as f32;
                let reached = new_stepsize >= m;
                new_stepsize = nan_min(new_stepsize, m);
                reached
            }
            None => false,
        };
        let (new_value_step, new_grad_step, new_slope_step) = self.value_and_slope(new_stepsize)?;
        let decrease_error =
            self.decrease_error(new_stepsize, new_value_step, new_slope_step, s.value_init, s.slope_init);
        let curvature_error = self.curvature_error(new_slope_step, s.slope_init);
        let new_error = nan_max(decrease_error, curvature_error);

        // A point with sufficient decrease is kept in case the curvature criterion cannot be met.
        if decrease_error <= c.tol as f32 {
            s.safe_stepsize = new_stepsize;
            s.safe_value = new_value_step;
            s.safe_grad = new_grad_step.clone();
        }
        let set_high_to_new = decrease_error > 0.0 || (new_value_step >= prev_value_step && iter_num > 0);
        let set_low_to_new = new_slope_step >= 0.0 && !set_high_to_new;
        if set_low_to_new {
            (s.low, s.value_low, s.slope_low) = (new_stepsize, new_value_step, new_slope_step);
            (s.high, s.value_high, s.slope_high) = (prev_stepsize, prev_value_step, prev_slope_step);
        } else {
            (s.low, s.value_low, s.slope_low) = (prev_stepsize, prev_value_step, prev_slope_step);
            (s.high, s.value_high, s.slope_high) = (new_stepsize, new_value_step, new_slope_step);
        }
        let interval_found = set_high_to_new || set_low_to_new || new_error <= c.tol as f32;
        let done = new_error <= c.tol as f32 || (max_stepsize_reached && !interval_found);
        s.failed = iter_num + 1 >= c.max_linesearch_steps && !done;
        s.count = iter_num + 1;
        s.stepsize = new_stepsize;
        s.value = new_value_step;
        s.grad = new_grad_step;
        s.slope = new_slope_step;
        s.decrease_error = decrease_error;
        s.interval_found = interval_found;
        s.done = done;
        s.cubic_ref = s.low;
        s.value_cubic_ref = s.value_low;
        Ok(())
    }

    /// The zoom into the interval found (Nocedal & Wright Algorithm 3.6).
    fn zoom_into_interval(&mut self, s: &mut Zoom) -> Result<()> {
        let c = self.cfg;
        let iter_num = s.count;
        let (low, value_low, slope_low) = (s.low, s.value_low, s.slope_low);
        let (high, value_high) = (s.high, s.value_high);
        let delta = (high - low).abs();
        let left = nan_min(high, low);
        let right = nan_max(high, low);
        let cubic_chk = 0.2 * delta;
        let quad_chk = 0.1 * delta;
        let too_small_int = delta <= c.stepsize_precision as f32;

        // A new point by interpolation.
        let middle_cubic = cubicmin((low, value_low, slope_low), (high, value_high), (s.cubic_ref, s.value_cubic_ref));
        let use_cubic = middle_cubic > left + cubic_chk && middle_cubic < right - cubic_chk;
        let middle_quad = quadmin(low, value_low, slope_low, high, value_high);
        let use_quad = !use_cubic && middle_quad > left + quad_chk && middle_quad < right - quad_chk;
        let middle = if use_cubic {
            middle_cubic
        } else if use_quad {
            middle_quad
        } else {
            (low + high) / 2.0
        };

        let (value_middle, grad_middle, slope_middle) = self.value_and_slope(middle)?;
        let decrease_error = self.decrease_error(middle, value_middle, slope_middle, s.value_init, s.slope_init);
        let curvature_error = self.curvature_error(slope_middle, s.slope_init);
        let new_error = nan_max(decrease_error, curvature_error);

        // The point with sufficient decrease and the smallest value is kept.
        if decrease_error <= c.tol as f32 && value_middle < s.safe_value {
            s.safe_stepsize = middle;
            s.safe_value = value_middle;
            s.safe_grad = grad_middle.clone();
        }
        let done = new_error <= c.tol as f32;

        let set_high_to_middle = decrease_error > 0.0 || value_middle >= value_low;
        let secant_interval = slope_middle * (high - low);
        let set_high_to_low = secant_interval >= 0.0 && !set_high_to_middle;
        let set_low_to_middle = !set_high_to_middle;
        if set_high_to_middle {
            (s.high, s.value_high, s.slope_high) = (middle, value_middle, slope_middle);
        }
        if set_high_to_low {
            (s.high, s.value_high, s.slope_high) = (low, value_low, slope_low);
        }
        if set_low_to_middle {
            (s.low, s.value_low, s.slope_low) = (middle, value_middle, slope_middle);
        }
        // The cubic's reference point: the old high if high changed, otherwise the old low.
        (s.cubic_ref, s.value_cubic_ref) =
            if set_high_to_middle || set_high_to_low { (high, value_high) } else { (low, value_low) };

        let max_iter_reached = iter_num + 1 >= c.max_linesearch_steps;
        let presumably_failed = max_iter_reached || (too_small_int && s.safe_stepsize > 0.0);
        s.failed = presumably_failed && !done;
        s.count = iter_num + 1;
        s.stepsize = middle;
        s.value = value_middle;
        s.grad = grad_middle;
        s.slope = slope_middle;
        s.decrease_error = decrease_error;
        s.done = done;
        Ok(())
    }
}

impl ClosureOptimizer for OptaxLbfgs {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        let lr = lr_at(&self.learning_rate, self.count, "learning_rate")?;
        let mut x = std::mem::take(&mut self.x);
        let r = self.step_flat(&mut x, params, objective, lr);
        self.x = x;
        r
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.learning_rate);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.allocate()?;
        v.counter("count", &mut self.count)?;
        v.buffer("params", &mut self.params)?;
        v.buffer("updates", &mut self.updates)?;
        v.buffer("diff_params_memory", &mut self.diff_params_memory)?;
        v.buffer("diff_updates_memory", &mut self.diff_updates_memory)?;
        v.buffer("weights_memory", &mut self.weights_memory)?;
        v.push("linesearch");
        let mut lr = self.ls_learning_rate as f64;
        v.scalar("learning_rate", &mut lr)?;
        // A value that is not finite means "none stored" (the next step evaluates); it travels as
        // a flag, since JSON holds no infinities.
        let mut has_value = self.ls_value.is_finite() as u64;
        let mut value = if self.ls_value.is_finite() { self.ls_value as f64 } else { 0.0 };
        v.counter("has_value", &mut has_value)?;
        v.scalar("value", &mut value)?;
        v.buffer("grad", &mut self.ls_grad)?;
        v.pop();
        let (n, m) = (self.flat.n, self.memory_size);
        let sizes_ok = self.params.len() == n
            && self.updates.len() == n
            && self.ls_grad.len() == n
            && self.diff_params_memory.len() == m * n
            && self.diff_updates_memory.len() == m * n
            && self.weights_memory.len() == m;
        if !sizes_ok {
            return Err(Error::State("optax.lbfgs: state of the wrong size".into()));
        }
        if has_value > 1 {
            return Err(Error::State(format!("optax.lbfgs: linesearch.has_value {has_value}: 0 or 1")));
        }
        self.ls_learning_rate = lr as f32;
        self.ls_value = if has_value == 1 { value as f32 } else { f32::INFINITY };
        Ok(())
    }
}

impl OptaxLbfgs {
    fn step_flat(
        &mut self,
        x: &mut Vec<f32>,
        params: &mut [Vec<f32>],
        obj: &mut dyn Objective,
        lr: f64,
    ) -> Result<f32> {
        self.flat.gather(params, x)?;
        self.allocate()?;
        // `value_and_grad_from_state`: the line search's value and gradient at the accepted point,
        // or an evaluation when there is none (first step, no line search, a non-finite value).
        let (value, grad) = if self.linesearch.is_some() && self.ls_value.is_finite() {
            (self.ls_value, self.ls_grad.clone())
        } else {
            let mut g = Vec::with_capacity(self.flat.n);
            let v = self.flat.eval(obj, x, &mut g)?;
            (v, g)
        };
        let mut updates = self.scale_by_lbfgs(x, &grad);
        // `scale(-1.0)` or `scale_by_learning_rate(lr)`: `-lr` rounded to float32.
        let m = -(lr as f32);
        updates.iter_mut().for_each(|u| *u *= m);
        if let Some(ls) = &self.linesearch {
            let (stepsize, new_value, new_grad) = match ls {
                OptaxLinesearch::Zoom(cfg) => {
                    let stepsize_guess = if cfg.keep_previous_stepsize { self.ls_learning_rate } else { 1.0 };
                    let mut search =
                        ZoomSearch { cfg, flat: &mut self.flat, obj, params: x, updates: &updates, stepsize_guess };
                    search.run(value, &grad)?
                }
                OptaxLinesearch::Backtracking(cfg) => {
                    let start = LineStart { params: x, updates: &updates, value, grad: &grad };
                    backtracking(cfg, &mut self.flat, obj, start, self.ls_learning_rate)?
                }
            };
            updates.iter_mut().for_each(|u| *u *= stepsize);
            self.ls_learning_rate = stepsize;
            self.ls_value = new_value;
            self.ls_grad = new_grad;
        }
        for (xj, &u) in x.iter_mut().zip(&updates) {
            *xj += u;
        }
        self.flat.scatter(x, params);
        Ok(value)
    }
}

/// Where a line search starts: the parameters, the direction, and the value and gradient there.
struct LineStart<'a> {
    params: &'a [f32],
    updates: &'a [f32],
    value: f32,
    grad: &'a [f32],
}

/// optax `scale_by_backtracking_linesearch`'s search from `start` along its direction, after a
/// step of size `previous`: the step size (0 where the last decrease error is infinite), and the
/// value and gradient at the last point tried.
fn backtracking(
    cfg: &BacktrackingLinesearchConfig,
    flat: &mut Flat,
    obj: &mut dyn Objective,
    start: LineStart,
    previous: f32,
) -> Result<(f32, f32, Vec<f32>)> {
    let LineStart { params, updates, value, grad } = start;
    // Python floats meet float32 arrays: each rounded to float32 first (`1.0 + rtol` in f64).
    let (slope_rtol, decrease_factor, atol) = (cfg.slope_rtol as f32, cfg.decrease_factor as f32, cfg.atol as f32);
    let one_plus_rtol = (1.0 + cfg.rtol) as f32;
    let slope = dot(updates, grad);
    // `jnp.minimum`: NaN wins (a step size of 0 times an infinite factor).
    let guess = cfg.increase_factor as f32 * previous;
    let max = cfg.max_learning_rate as f32;
    let mut learning_rate = if guess.is_nan() || max.is_nan() { f32::NAN } else { guess.min(max) };
    let (mut new_value, mut new_grad) = (value, vec![0.0; updates.len()]);
    let mut decrease_error = f32::INFINITY;
    let mut iter_num = 0u64;
    // optax's `~(decrease_error <= atol)`: the error is never NaN (a NaN one is infinite).
    while decrease_error > atol && iter_num <= cfg.max_backtracking_steps {
        if iter_num > 0 {
            learning_rate *= decrease_factor;
        }
        let mut g = Vec::with_capacity(updates.len());
        new_value = flat.eval_along(obj, params, learning_rate, updates, &mut g)?;
        new_grad = g;
        let e = new_value - one_plus_rtol * value - learning_rate * slope_rtol * slope;
        decrease_error = if e.is_nan() { f32::INFINITY } else { e.max(0.0) };
        iter_num += 1;
    }
    let stepsize = if decrease_error.is_infinite() { 0.0 } else { learning_rate };
    Ok((stepsize, new_value, new_grad))
}
