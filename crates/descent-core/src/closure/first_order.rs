//! First-order closure optimizers: optax `polyak_sgd`, `contrib.momo`, `contrib.momo_adam`, `contrib.sam`, pytorch_optimizer `SAM` (with ASAM) and descent's `sam` (the same two passes around any registry optimizer).
//!
//! Polyak SGD and MoMo need the loss value beside the gradient; SAM needs a second gradient at a
//! perturbed point (pytorch_optimizer), or moves the parameters through the perturbed point on
//! alternate steps (optax). Each step evaluates the objective as the library's documented loop
//! does (see each type). Elementwise arithmetic is `f32` in the library's order; the reductions
//! (norms, inner products) are accumulated in `f64` and rounded to `f32`.

use serde_json::Value;

use crate::error::{ensure, Error, Result};
use crate::kernel::vdot;
use crate::learning_rate::LearningRate;
use crate::spec::{build_optimizer, Kwargs};
use crate::state::{visit_buffers, StateVisitor};
use crate::transform::{check_init, check_shapes, numel, Transform};

use super::{ClosureOptimizer, Objective};

/// The registry names of this family (`library.name`).
pub const NAMES: &[&str] = &[
    "descent.sam",
    "optax.contrib.momo",
    "optax.contrib.momo_adam",
    "optax.contrib.sam",
    "optax.polyak_sgd",
    "po.sam",
];

/// Builds `library.name` if it belongs to this family (`None` otherwise).
pub fn build(
    library: &str,
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn ClosureOptimizer>>> {
    fn boxed<T: ClosureOptimizer + 'static>(r: Result<T>) -> Result<Box<dyn ClosureOptimizer>> {
        r.map(|o| Box::new(o) as Box<dyn ClosureOptimizer>)
    }
    Some(match (library, name) {
        ("optax", "polyak_sgd") => boxed(build_polyak(hparams, shapes)),
        ("optax", "contrib.momo") => boxed(build_momo(hparams, shapes)),
        ("optax", "contrib.momo_adam") => boxed(build_momo_adam(hparams, shapes)),
        ("optax", "contrib.sam") => boxed(build_optax_sam(hparams, shapes)),
        ("po", "sam") => boxed(build_po_sam(hparams, shapes)),
        ("descent", "sam") => boxed(build_descent_sam(hparams, shapes)),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The parameters handed to a step must have the shapes the optimizer was built for.
fn check_params(shapes: &[Vec<usize>], params: &[Vec<f32>]) -> Result<()> {
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    check_init(shapes, &views)
}

fn zeros(shapes: &[Vec<usize>]) -> Vec<Vec<f32>> {
    shapes.iter().map(|s| vec![0.0; numel(s)]).collect()
}

fn views(bufs: &[Vec<f32>]) -> Vec<&[f32]> {
    bufs.iter().map(|b| b.as_slice()).collect()
}

/// `jnp.minimum`: NaN when either is NaN.
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// `jnp.maximum`: NaN when either is NaN.
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Machine epsilon of `f64` (`jnp.finfo(float).eps`), the threshold below which optax takes a
/// squared norm for zero, compared in `f32`.
const TINY: f32 = f64::EPSILON as f32;

fn field_err(ctx: &str, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Field { context: format!("{ctx}: `{key}`"), message: msg.to_string() }
}

fn check_rate(ctx: &str, key: &str, lr: &LearningRate) -> Result<()> {
    match lr.constant() {
        Some(x) if x < 0.0 => Err(field_err(ctx, key, format!("must be non-negative, got {x}"))),
        _ => Ok(()),
    }
}

fn check_non_negative(ctx: &str, key: &str, x: f64) -> Result<()> {
    if x >= 0.0 {
        Ok(())
    } else {
        Err(field_err(ctx, key, format!("must be non-negative, got {x}")))
    }
}

fn check_unit(ctx: &str, key: &str, x: f64) -> Result<()> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(field_err(ctx, key, format!("must be in [0, 1], got {x}")))
    }
}

fn visit_f32(v: &mut dyn StateVisitor, name: &str, x: &mut f32) -> Result<()> {
    let mut y = *x as f64;
    v.scalar(name, &mut y)?;
    *x = y as f32;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Polyak SGD

/// How Polyak SGD measures the suboptimality gap `f(x) − f*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolyakVariant {
    /// `"sps"`: the gap as it is (Loizou et al. 2021).
    Sps,
    /// `"sps+"`: its non-negative part (Garrigos et al. 2023).
    SpsPlus,
}

/// optax `polyak_sgd`'s arguments, with its defaults.
pub struct PolyakSgdConfig {
    /// The largest step size γ_max (`max_learning_rate`).
    pub max_learning_rate: f64,
    /// The global factor s (`scaling`), a constant or a schedule of the step; optax passes it to
    /// `sgd` as its learning rate, so it is this optimizer's learning rate.
    pub scaling: LearningRate,
    /// The guess f* of the objective's minimum (`f_min`).
    pub f_min: f64,
    /// Added to the squared norm in the denominator (`eps`).
    pub eps: f64,
    /// `variant`: `"sps"` or `"sps+"`.
    pub variant: PolyakVariant,
}

impl Default for PolyakSgdConfig {
    fn default() -> Self {
        PolyakSgdConfig {
            max_learning_rate: 1.0,
            scaling: LearningRate::Constant(1.0),
            f_min: 0.0,
            eps: 0.0,
            variant: PolyakVariant::Sps,
        }
    }
}

/// optax `polyak_sgd` (Loizou et al. 2021, "Stochastic Polyak step-size for SGD"): optax's
/// `chain(sgd(scaling), scale_by_polyak(…))`. With `u = −s·∇f(x)`,
///
/// ```text
/// γ = min((f(x) − f*) / (‖u‖² + ε), γ_max)     (0 when ‖u‖² + ε ≤ machine epsilon)
/// x ← x + γ·u
/// ```
///
/// One step evaluates the objective once, at the current parameters.
pub struct PolyakSgd {
    cfg: PolyakSgdConfig,
    shapes: Vec<Vec<usize>>,
    count: u64,
    grads: Vec<Vec<f32>>,
}

impl PolyakSgd {
    /// A `PolyakSgd` with these hyper-parameters (`cfg`, `shapes`), as described above.
    pub fn new(cfg: PolyakSgdConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let ctx = "optax.polyak_sgd";
        check_shapes(shapes)?;
        check_non_negative(ctx, "max_learning_rate", cfg.max_learning_rate)?;
        check_non_negative(ctx, "eps", cfg.eps)?;
        check_rate(ctx, "scaling", &cfg.scaling)?;
        Ok(PolyakSgd { cfg, shapes: shapes.to_vec(), count: 0, grads: zeros(shapes) })
    }
}

fn build_polyak(hparams: &Value, shapes: &[Vec<usize>]) -> Result<PolyakSgd> {
    let mut k = Kwargs::new("optax.polyak_sgd", hparams)?;
    let variant = match k.str("variant", "sps")? {
        "sps" => PolyakVariant::Sps,
        "sps+" => PolyakVariant::SpsPlus,
        other => {
            return Err(field_err("optax.polyak_sgd", "variant", format!("`{other}` is not one of \"sps\", \"sps+\"")))
        }
    };
    let cfg = PolyakSgdConfig {
        max_learning_rate: k.f64("max_learning_rate", 1.0)?,
        scaling: k.lr("scaling", Some(1.0))?,
        f_min: k.f64("f_min", 0.0)?,
        eps: k.f64("eps", 0.0)?,
        variant,
    };
    k.finish()?;
    PolyakSgd::new(cfg, shapes)
}

impl ClosureOptimizer for PolyakSgd {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        check_params(&self.shapes, params)?;
        let value = objective.value_and_grad(params, &mut self.grads)?;
        let neg = (-self.cfg.scaling.at(self.count)) as f32;
        self.count += 1;
        let mut sq = 0.0f64;
        for g in self.grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= neg;
                sq += *x as f64 * *x as f64;
            }
        }
        let mut gap = value - self.cfg.f_min as f32;
        if self.cfg.variant == PolyakVariant::SpsPlus {
            gap = nan_max(gap, 0.0);
        }
        let den = sq as f32 + self.cfg.eps as f32;
        let step = if den <= TINY { 0.0 } else { nan_min(gap / den, self.cfg.max_learning_rate as f32) };
        for (p, u) in params.iter_mut().zip(&self.grads) {
            for (p, &u) in p.iter_mut().zip(u) {
                *p += step * u;
            }
        }
        Ok(value)
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.cfg.scaling);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("count", &mut self.count)
    }
}

// ---------------------------------------------------------------------------------------------
// MoMo

/// optax `contrib.momo`'s arguments, with its defaults.
pub struct MomoConfig {
    /// The largest step size α (`learning_rate`), a constant or a schedule of the step.
    pub learning_rate: LearningRate,
    /// Momentum β of the averages of losses, gradients and `⟨g, x⟩` (`beta`).
    pub beta: f64,
    /// Lower bound of the loss (`lower_bound`).
    pub lower_bound: f64,
    /// Decoupled weight decay λ (`weight_decay`).
    pub weight_decay: f64,
    /// Estimate the lower bound on the fly (`adapt_lower_bound`).
    pub adapt_lower_bound: bool,
}

impl Default for MomoConfig {
    fn default() -> Self {
        MomoConfig {
            learning_rate: LearningRate::Constant(1.0),
            beta: 0.9,
            lower_bound: 0.0,
            weight_decay: 0.0,
            adapt_lower_bound: false,
        }
    }
}

/// optax `contrib.momo` (Schaipp et al. 2023, "MoMo: Momentum Models for Adaptive Learning
/// Rates"): SGD with momentum and a Polyak-type step size from a model of the loss. With β_t = 0
/// at the first step and β after,
///
/// ```text
/// f̄ ← β_t·f̄ + (1−β_t)·f(x)      d ← β_t·d + (1−β_t)·g      γ ← β_t·γ + (1−β_t)·⟨g, x⟩
/// τ = min(α, max((1+αλ)(f̄ − lb − γ) + ⟨d, x⟩, 0) / ‖d‖²)     (0 when ‖d‖² ≤ machine epsilon)
/// x ← x − αλ/(1+αλ)·x − τ·d
/// ```
///
/// With `adapt_lower_bound` the bound `lb` follows the paper's online estimate. One step
/// evaluates the objective once, at the current parameters.
pub struct Momo {
    cfg: MomoConfig,
    shapes: Vec<Vec<usize>>,
    exp_avg: Vec<Vec<f32>>,
    barf: f32,
    gamma: f32,
    lb: f32,
    count: u64,
    grads: Vec<Vec<f32>>,
}

impl Momo {
    /// A `Momo` with these hyper-parameters (`cfg`, `shapes`), as described above.
    pub fn new(cfg: MomoConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let ctx = "optax.contrib.momo";
        check_shapes(shapes)?;
        check_rate(ctx, "learning_rate", &cfg.learning_rate)?;
        check_unit(ctx, "beta", cfg.beta)?;
        check_non_negative(ctx, "weight_decay", cfg.weight_decay)?;
        let lb = cfg.lower_bound as f32;
        Ok(Momo {
            cfg,
            shapes: shapes.to_vec(),
            exp_avg: zeros(shapes),
            barf: 0.0,
            gamma: 0.0,
            lb,
            count: 0,
            grads: zeros(shapes),
        })
    }
}

fn build_momo(hparams: &Value, shapes: &[Vec<usize>]) -> Result<Momo> {
    let mut k = Kwargs::new("optax.contrib.momo", hparams)?;
    let cfg = MomoConfig {
        learning_rate: k.lr("learning_rate", Some(1.0))?,
        beta: k.f64("beta", 0.9)?,
        lower_bound: k.f64("lower_bound", 0.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        adapt_lower_bound: k.bool("adapt_lower_bound", false)?,
    };
    k.finish()?;
    Momo::new(cfg, shapes)
}

impl ClosureOptimizer for Momo {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        check_params(&self.shapes, params)?;
        let value = objective.value_and_grad(params, &mut self.grads)?;
        let bt: f32 = if self.count == 0 { 0.0 } else { self.cfg.beta as f32 };
        let omb = 1.0 - bt;
        self.barf = bt * self.barf + omb * value;
        let gp = vdot(&self.grads, params) as f32;
        let (mut norm, mut iprod) = (0.0f64, 0.0f64);
        for ((d, g), p) in self.exp_avg.iter_mut().zip(&self.grads).zip(params.iter()) {
            for ((d, &g), &p) in d.iter_mut().zip(g).zip(p) {
                *d = bt * *d + omb * g;
                norm += *d as f64 * *d as f64;
                iprod += *d as f64 * p as f64;
            }
        }
        let (norm, iprod) = (norm as f32, iprod as f32);
        self.gamma = bt * self.gamma + omb * gp;
        let alpha = self.cfg.learning_rate.at(self.count);
        let awd = alpha * self.cfg.weight_decay;
        let factor = (1.0 + awd) as f32;
        let lower = self.cfg.lower_bound as f32;
        let lb = if self.cfg.adapt_lower_bound {
            let cap = factor * (self.barf - self.gamma) + iprod;
            if cap < factor * self.lb {
                nan_max(cap / (2.0 * (1.0 + awd)) as f32, lower)
            } else {
                self.lb
            }
        } else {
            self.lb
        };
        let t1 = if norm <= TINY { 0.0 } else { nan_max(factor * (self.barf - lb - self.gamma) + iprod, 0.0) / norm };
        let tau = nan_min(alpha as f32, t1);
        let decay = (-awd / (1.0 + awd)) as f32;
        for (p, d) in params.iter_mut().zip(&self.exp_avg) {
            for (p, &d) in p.iter_mut().zip(d) {
                *p += decay * *p - tau * d;
            }
        }
        if self.cfg.adapt_lower_bound {
            self.lb = nan_max((self.barf + iprod - self.gamma) - 0.5 * tau * norm, lower);
        }
        self.count += 1;
        Ok(value)
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.cfg.learning_rate);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        visit_f32(v, "barf", &mut self.barf)?;
        visit_f32(v, "gamma", &mut self.gamma)?;
        visit_f32(v, "lb", &mut self.lb)?;
        v.counter("count", &mut self.count)
    }
}

/// optax `contrib.momo_adam`'s arguments, with its defaults.
pub struct MomoAdamConfig {
    /// The largest step size α (`learning_rate`), a constant or a schedule of the step.
    pub learning_rate: LearningRate,
    /// Decay of the first moment and of the averages of losses and `⟨g, x⟩` (`b1`).
    pub b1: f64,
    /// Decay of the second moment (`b2`).
    pub b2: f64,
    /// Added to the root of the second moment (`eps`).
    pub eps: f64,
    /// Lower bound of the loss (`lower_bound`).
    pub lower_bound: f64,
    /// Decoupled weight decay λ, as AdamW's (`weight_decay`).
    pub weight_decay: f64,
    /// Estimate the lower bound on the fly (`adapt_lower_bound`).
    pub adapt_lower_bound: bool,
}

impl Default for MomoAdamConfig {
    fn default() -> Self {
        MomoAdamConfig {
            learning_rate: LearningRate::Constant(1e-2),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            lower_bound: 0.0,
            weight_decay: 0.0,
            adapt_lower_bound: false,
        }
    }
}

/// optax `contrib.momo_adam` (Schaipp et al. 2023): MoMo's step size on Adam's preconditioned
/// direction. With `t` the step (from 1), `bc_i = 1 − b_i^t`:
///
/// ```text
/// f̄ ← b1·f̄ + (1−b1)·f(x)     m ← b1·m + (1−b1)·g     v ← b2·v + (1−b2)·g²     γ ← b1·γ + (1−b1)·⟨g, x⟩
/// D = ε + √(v / bc2)
/// τ = min(α / bc1, max((1+αλ)(f̄ − bc1·lb − γ) + ⟨m, x⟩, 0) / ⟨m, m/D⟩)
/// x ← x − αλ/(1+αλ)·x − τ·m/D
/// ```
///
/// One step evaluates the objective once, at the current parameters.
pub struct MomoAdam {
    cfg: MomoAdamConfig,
    shapes: Vec<Vec<usize>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    barf: f32,
    gamma: f32,
    lb: f32,
    count: u64,
    grads: Vec<Vec<f32>>,
}

impl MomoAdam {
    /// A `MomoAdam` with these hyper-parameters (`cfg`, `shapes`), as described above.
    pub fn new(cfg: MomoAdamConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let ctx = "optax.contrib.momo_adam";
        check_shapes(shapes)?;
        check_rate(ctx, "learning_rate", &cfg.learning_rate)?;
        check_unit(ctx, "b1", cfg.b1)?;
        check_unit(ctx, "b2", cfg.b2)?;
        check_non_negative(ctx, "eps", cfg.eps)?;
        check_non_negative(ctx, "weight_decay", cfg.weight_decay)?;
        let lb = cfg.lower_bound as f32;
        Ok(MomoAdam {
            cfg,
            shapes: shapes.to_vec(),
            exp_avg: zeros(shapes),
            exp_avg_sq: zeros(shapes),
            barf: 0.0,
            gamma: 0.0,
            lb,
            count: 0,
            grads: zeros(shapes),
        })
    }
}

fn build_momo_adam(hparams: &Value, shapes: &[Vec<usize>]) -> Result<MomoAdam> {
    let mut k = Kwargs::new("optax.contrib.momo_adam", hparams)?;
    let cfg = MomoAdamConfig {
        learning_rate: k.lr("learning_rate", Some(1e-2))?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        lower_bound: k.f64("lower_bound", 0.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        adapt_lower_bound: k.bool("adapt_lower_bound", false)?,
    };
    k.finish()?;
    MomoAdam::new(cfg, shapes)
}

impl ClosureOptimizer for MomoAdam {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        check_params(&self.shapes, params)?;
        let value = objective.value_and_grad(params, &mut self.grads)?;
        // The step from 1 as an f32 exponent (optax's int32 count, promoted).
        let t = self.count.saturating_add(1) as f32;
        let (b1, b2) = (self.cfg.b1 as f32, self.cfg.b2 as f32);
        let (omb1, omb2) = ((1.0 - self.cfg.b1) as f32, (1.0 - self.cfg.b2) as f32);
        let eps = self.cfg.eps as f32;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        self.barf = b1 * self.barf + omb1 * value;
        let gp = vdot(&self.grads, params) as f32;
        let (mut norm, mut iprod) = (0.0f64, 0.0f64);
        for (((m, v), g), p) in
            self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()).zip(&self.grads).zip(params.iter())
        {
            for (((m, v), &g), &p) in m.iter_mut().zip(v.iter_mut()).zip(g).zip(p) {
                *m = b1 * *m + omb1 * g;
                *v = b2 * *v + omb2 * g * g;
                let precond = eps + (*v / bc2).sqrt();
                norm += *m as f64 * (*m / precond) as f64;
                iprod += *m as f64 * p as f64;
            }
        }
        let (norm, iprod) = (norm as f32, iprod as f32);
        self.gamma = b1 * self.gamma + omb1 * gp;
        let alpha = self.cfg.learning_rate.at(self.count);
        let awd = alpha * self.cfg.weight_decay;
        let factor = (1.0 + awd) as f32;
        let lower = self.cfg.lower_bound as f32;
        let lb = if self.cfg.adapt_lower_bound {
            let cap = factor * (self.barf - self.gamma) + iprod;
            if cap < factor * bc1 * self.lb {
                nan_max(cap / (2.0 * bc1 * factor), lower)
            } else {
                self.lb
            }
        } else {
            self.lb
        };
        let t1 =
            if norm <= TINY { 0.0 } else { nan_max(factor * (self.barf - bc1 * lb - self.gamma) + iprod, 0.0) / norm };
        let tau = nan_min(alpha as f32 / bc1, t1);
        let decay = (-awd / (1.0 + awd)) as f32;
        for ((p, m), v) in params.iter_mut().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let precond = eps + (v / bc2).sqrt();
                *p += decay * *p - tau * m / precond;
            }
        }
        if self.cfg.adapt_lower_bound {
            self.lb = nan_max(((self.barf + iprod - self.gamma) - 0.5 * tau * norm) / bc1, lower);
        }
        self.count += 1;
        Ok(value)
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.cfg.learning_rate);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        visit_f32(v, "barf", &mut self.barf)?;
        visit_f32(v, "gamma", &mut self.gamma)?;
        visit_f32(v, "lb", &mut self.lb)?;
        v.counter("count", &mut self.count)
    }
}

// ---------------------------------------------------------------------------------------------
// SAM (optax)

/// optax `contrib.sam`'s arguments besides its two optimizers, with its defaults.
#[derive(Debug, Clone, Copy)]
pub struct OptaxSamConfig {
    /// Steps per outer update: `sync_period − 1` adversarial steps, then one outer step.
    pub sync_period: u64,
    /// Reset the adversarial optimizer's state after each outer step (`reset_state`).
    pub reset_state: bool,
    /// Run the adversarial steps inside one step, evaluating the objective at each perturbed
    /// point (`opaque_mode`), instead of one step each.
    pub opaque_mode: bool,
}

impl Default for OptaxSamConfig {
    fn default() -> Self {
        OptaxSamConfig { sync_period: 2, reset_state: true, opaque_mode: false }
    }
}

/// Builds a fresh adversarial optimizer (its reset state).
pub type TransformFactory = Box<dyn Fn() -> Result<Box<dyn Transform>> + Send>;

/// optax `contrib.sam` (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently
/// Improving Generalization"): an adversarial optimizer (typically `chain(contrib.normalize(),
/// sgd(ρ))`, the ascent `+ρ·g/‖g‖`) and an outer optimizer.
///
/// Transparent mode (the default): one step evaluates `g = ∇L` at the parameters, once. With
/// `k` = step mod `sync_period`: at `k = 0` the parameters are stored as `w`; for
/// `k < sync_period − 1` they move by the negated adversarial update; at `k = sync_period − 1`
/// they become `w + u` (the library adds `(w − params) + u`), `u` being the outer optimizer's
/// update for `g` at `w`, and the adversarial state is reset (`reset_state`).
///
/// Opaque mode: one step runs the `sync_period − 1` adversarial steps itself, evaluating the
/// gradient at each perturbed point, then applies the outer update of the last gradient.
pub struct OptaxSam {
    cfg: OptaxSamConfig,
    shapes: Vec<Vec<usize>>,
    optimizer: Box<dyn Transform>,
    adv: Box<dyn Transform>,
    new_adv: TransformFactory,
    /// Steps taken (the first one initializes both optimizers with the parameters).
    steps: u64,
    steps_since_sync: u64,
    /// `w`, the parameters of the last synchronization (transparent mode).
    cache: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

impl OptaxSam {
    /// SAM of an outer `optimizer` and the adversarial optimizer `adv_optimizer` builds, for
    /// parameters of these shapes.
    pub fn new(
        optimizer: Box<dyn Transform>,
        adv_optimizer: TransformFactory,
        cfg: OptaxSamConfig,
        shapes: &[Vec<usize>],
    ) -> Result<Self> {
        check_shapes(shapes)?;
        // optax keeps the count since the last synchronization in an int32.
        if cfg.sync_period < 1 || cfg.sync_period > i32::MAX as u64 {
            return Err(field_err(
                "optax.contrib.sam",
                "sync_period",
                format!("Synchronization period must be >= 1 (and fit an int32), got {}", cfg.sync_period),
            ));
        }
        let mut optimizer = optimizer;
        let mut adv = adv_optimizer()?;
        // State of the right shapes from the start (a saved state can be loaded before the first
        // step); the first step initializes both again from the parameters.
        let z = zeros(shapes);
        optimizer.init(shapes, &views(&z))?;
        adv.init(shapes, &views(&z))?;
        let cache = if cfg.opaque_mode { vec![] } else { z };
        Ok(OptaxSam {
            cfg,
            shapes: shapes.to_vec(),
            optimizer,
            adv,
            new_adv: adv_optimizer,
            steps: 0,
            steps_since_sync: 0,
            cache,
            grads: zeros(shapes),
        })
    }

    fn init(&mut self, params: &[Vec<f32>]) -> Result<()> {
        let v = views(params);
        self.optimizer.init(&self.shapes, &v)?;
        self.reset_adv(params)?;
        if !self.cfg.opaque_mode {
            self.cache = params.to_vec();
        }
        Ok(())
    }

    fn reset_adv(&mut self, params: &[Vec<f32>]) -> Result<()> {
        let mut adv = (self.new_adv)()?;
        adv.init(&self.shapes, &views(params))?;
        self.adv = adv;
        Ok(())
    }

    fn transparent_step(&mut self, params: &mut [Vec<f32>]) -> Result<()> {
        let k = self.steps_since_sync;
        let (first, last) = (k == 0, k + 1 == self.cfg.sync_period);
        let mut u = self.grads.clone();
        if last {
            self.optimizer.update(&mut u, &views(&self.cache))?;
            for ((u, c), p) in u.iter_mut().zip(&self.cache).zip(params.iter()) {
                for ((u, &c), &p) in u.iter_mut().zip(c).zip(p) {
                    *u += c - p;
                }
            }
            if self.cfg.reset_state {
                self.reset_adv(params)?;
            }
        } else {
            self.adv.update(&mut u, &views(params))?;
            u.iter_mut().flatten().for_each(|x| *x = -*x);
        }
        if first {
            self.cache.clone_from_slice(params);
        }
        for (p, u) in params.iter_mut().zip(&u) {
            for (p, &u) in p.iter_mut().zip(u) {
                *p += u;
            }
        }
        self.steps_since_sync = (k + 1) % self.cfg.sync_period;
        Ok(())
    }

    fn opaque_step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<()> {
        let mut adv_params = params.to_vec();
        let mut g = self.grads.clone();
        for _ in 1..self.cfg.sync_period {
            self.adv.update(&mut g, &views(&adv_params))?;
            for (p, u) in adv_params.iter_mut().zip(&g) {
                for (p, &u) in p.iter_mut().zip(u) {
                    *p += -u;
                }
            }
            objective.value_and_grad(&adv_params, &mut g)?;
        }
        if self.cfg.reset_state {
            self.reset_adv(params)?;
        }
        self.optimizer.update(&mut g, &views(params))?;
        for (p, u) in params.iter_mut().zip(&g) {
            for (p, &u) in p.iter_mut().zip(u) {
                *p += u;
            }
        }
        self.steps_since_sync = 0;
        Ok(())
    }
}

/// An optax optimizer given as `[name, kwargs]` (or a chain) in argument `key`.
fn optax_link(k: &mut Kwargs, ctx: &str, key: &'static str) -> Result<(String, Value)> {
    let v = k.present(key)?.ok_or_else(|| field_err(ctx, key, "missing required argument"))?;
    crate::spec::link(v, &format!("{ctx}: `{key}`"))
}

fn build_optax_sam(hparams: &Value, shapes: &[Vec<usize>]) -> Result<OptaxSam> {
    let ctx = "optax.contrib.sam";
    let mut k = Kwargs::new(ctx, hparams)?;
    let (name, kwargs) = optax_link(&mut k, ctx, "optimizer")?;
    let optimizer = build_optimizer("optax", &name, &kwargs, None, shapes)?;
    let (adv_name, adv_kwargs) = optax_link(&mut k, ctx, "adv_optimizer")?;
    let adv_shapes = shapes.to_vec();
    let adv: TransformFactory = Box::new(move || build_optimizer("optax", &adv_name, &adv_kwargs, None, &adv_shapes));
    let cfg = OptaxSamConfig {
        sync_period: k.u64("sync_period", 2)?,
        reset_state: k.bool("reset_state", true)?,
        opaque_mode: k.bool("opaque_mode", false)?,
    };
    if let Some(axis) = k.value("batch_axis_name") {
        return Err(field_err(
            ctx,
            "batch_axis_name",
            format!("{axis}: descent steps on one device, without an axis to average over"),
        ));
    }
    k.finish()?;
    OptaxSam::new(optimizer, adv, cfg, shapes)
}

impl ClosureOptimizer for OptaxSam {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        check_params(&self.shapes, params)?;
        if self.steps == 0 {
            self.init(params)?;
        }
        let value = objective.value_and_grad(params, &mut self.grads)?;
        if self.cfg.opaque_mode {
            self.opaque_step(params, objective)?;
        } else {
            self.transparent_step(params)?;
        }
        self.steps += 1;
        Ok(value)
    }

    /// The outer optimizer's learning rates (the adversarial one's is the radius ρ).
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.optimizer.visit_learning_rates(f);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("steps", &mut self.steps)?;
        v.counter("steps_since_sync", &mut self.steps_since_sync)?;
        if !self.cfg.opaque_mode {
            visit_buffers(v, "cache", &mut self.cache)?;
        }
        v.push("optimizer");
        self.optimizer.visit_state(v)?;
        v.pop();
        v.push("adv_optimizer");
        self.adv.visit_state(v)?;
        v.pop();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SAM (pytorch_optimizer)

/// pytorch_optimizer `SAM`'s arguments besides its base optimizer, with its defaults.
#[derive(Debug, Clone, Copy)]
pub struct PoSamConfig {
    /// Radius ρ of the neighbourhood (`rho`).
    pub rho: f64,
    /// ASAM (Kwon et al. 2021): the perturbation scaled by the parameters (`adaptive`).
    pub adaptive: bool,
    /// Centralize the gradient of each multi-dimensional parameter before perturbing (`use_gc`).
    pub use_gc: bool,
    /// Added to the perturbation's norm (`perturb_eps`).
    pub perturb_eps: f64,
}

impl Default for PoSamConfig {
    fn default() -> Self {
        PoSamConfig { rho: 0.05, adaptive: false, use_gc: false, perturb_eps: 1e-12 }
    }
}

/// pytorch_optimizer `SAM` (Foret et al. 2021), the two-pass formulation; with `adaptive`, ASAM
/// (Kwon et al. 2021). One step:
///
/// ```text
/// g = ∇L(w);   s = ‖a ⊙ g‖ + perturb_eps   (a = |w| if adaptive else 1; norm over all parameters)
/// e = c ⊙ g · ρ / s                          (c = w² if adaptive else 1)
/// g′ = ∇L(w + e);  the base optimizer steps from w with g′
/// ```
///
/// The objective is evaluated twice; the loss returned is `L(w)`.
pub struct PoSam {
    cfg: PoSamConfig,
    shapes: Vec<Vec<usize>>,
    base: Box<dyn Transform>,
    /// Steps taken (the first one initializes the base optimizer with the parameters).
    steps: u64,
    grads: Vec<Vec<f32>>,
    updates: Vec<Vec<f32>>,
    old: Vec<Vec<f32>>,
}

impl PoSam {
    /// SAM around the `base` optimizer (a torch-style optimizer: it subtracts its step), for
    /// parameters of these shapes.
    pub fn new(base: Box<dyn Transform>, cfg: PoSamConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        check_shapes(shapes)?;
        // pytorch_optimizer's validate_non_negative.
        ensure(cfg.rho >= 0.0, || format!("rho must be non-negative, got {}", cfg.rho))?;
        ensure(cfg.perturb_eps >= 0.0, || format!("perturb_eps must be non-negative, got {}", cfg.perturb_eps))?;
        let mut base = base;
        let z = zeros(shapes);
        base.init(shapes, &views(&z))?;
        Ok(PoSam {
            cfg,
            shapes: shapes.to_vec(),
            base,
            steps: 0,
            grads: zeros(shapes),
            updates: zeros(shapes),
            old: zeros(shapes),
        })
    }
}

/// `g ← g − mean(g)` over all axes but the first, for a parameter of more than one axis
/// (pytorch_optimizer's `centralize_gradient`).
fn centralize(g: &mut [f32], shape: &[usize]) {
    if shape.len() < 2 || g.is_empty() {
        return;
    }
    let row = g.len() / shape[0];
    for r in g.chunks_mut(row) {
        let mean = (r.iter().map(|&x| x as f64).sum::<f64>() / row as f64) as f32;
        r.iter_mut().for_each(|x| *x += -mean);
    }
}

/// The base optimizer of pytorch_optimizer SAM: `[class, kwargs]` with a torch class
/// (`"torch.optim.SGD"`), a registry name (`"torch.sgd"`) or a pytorch_optimizer one (`"po.adamp"`).
fn build_po_base(v: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let ctx = "po.sam: `base_optimizer`";
    let (name, kwargs) = crate::spec::link(v, ctx)?;
    let (lib, n) = if let Some(class) = name.strip_prefix("torch.optim.") {
        ("torch", class.to_lowercase())
    } else if let Some(n) = name.strip_prefix("torch.") {
        ("torch", n.to_string())
    } else if let Some(n) = name.strip_prefix("po.") {
        ("po", n.to_string())
    } else {
        return Err(Error::Field {
            context: ctx.into(),
            message: format!(
                "`{name}` is not an optimizer class; give a torch class (\"torch.optim.SGD\") or a registry name \
                 (\"torch.sgd\", \"po.adamp\")"
            ),
        });
    };
    build_optimizer(lib, &n, &kwargs, None, shapes)
}

fn build_po_sam(hparams: &Value, shapes: &[Vec<usize>]) -> Result<PoSam> {
    let ctx = "po.sam";
    let mut k = Kwargs::new(ctx, hparams)?;
    let base =
        k.present("base_optimizer")?.ok_or_else(|| field_err(ctx, "base_optimizer", "missing required argument"))?;
    let base = build_po_base(base, shapes)?;
    let cfg = PoSamConfig {
        rho: k.f64("rho", 0.05)?,
        adaptive: k.bool("adaptive", false)?,
        use_gc: k.bool("use_gc", false)?,
        perturb_eps: k.f64("perturb_eps", 1e-12)?,
    };
    // Selects batched kernels; the numbers are the same.
    let _ = k.opt_bool("foreach")?;
    k.finish()?;
    PoSam::new(base, cfg, shapes)
}

/// descent's `sam`: pytorch_optimizer's two-pass SAM ([`PoSam`]) around any gradient optimizer
/// of the registry, given by its descent name as `descent train --optimizer` takes it:
///
/// - `base`: the optimizer, `"adamw"`, `"torch.sgd"`, `"optax.lion"`, `"po.adamp"`, … or
///   `[name, {kwargs}]` (required);
/// - `base_hparams`: its keyword arguments, in its library's names (or in `base`'s pair, not both);
/// - `lr`: its learning rate (the library's `lr` / `learning_rate`), when not in its arguments;
/// - `rho` (0.05), `adaptive` (false: ASAM when true), `perturb_eps` (1e-12): as [`PoSamConfig`].
///
/// The learning rates the optimizer exposes are the base's.
fn build_descent_sam(hparams: &Value, shapes: &[Vec<usize>]) -> Result<PoSam> {
    let ctx = "descent.sam";
    let mut k = Kwargs::new(ctx, hparams)?;
    let base = k.present("base")?.ok_or_else(|| {
        field_err(
            ctx,
            "base",
            "missing required argument: the optimizer that steps, e.g. \"adamw\" or [\"sgd\", {\"momentum\": 0.9}]",
        )
    })?;
    let (name, mut kwargs) = crate::spec::link(base, &format!("{ctx}: `base`"))?;
    if let Some(extra) = k.value("base_hparams") {
        if !kwargs.is_null() {
            return Err(field_err(
                ctx,
                "base_hparams",
                "the base's arguments are already in `base` ([name, kwargs]); give them once",
            ));
        }
        kwargs = extra.clone();
    }
    if kwargs.is_null() {
        kwargs = Value::Object(Default::default());
    }
    let Value::Object(map) = &mut kwargs else {
        return Err(field_err(
            ctx,
            "base_hparams",
            format!("expected a JSON object of the base's arguments, got {kwargs}"),
        ));
    };
    let (lib, base_name) = crate::spec::resolve_optimizer(&name).map_err(|e| field_err(ctx, "base", e))?;
    if super::is_closure_optimizer(lib, &base_name) {
        return Err(field_err(
            ctx,
            "base",
            format!("`{lib}.{base_name}` evaluates the objective itself; the base steps on the gradient at the perturbed point"),
        ));
    }
    if let Some(lr) = k.opt_f64("lr")? {
        let key = crate::spec::lr_key(lib);
        match map.get(key) {
            Some(v) if v.as_f64() != Some(lr) => {
                return Err(field_err(
                    ctx,
                    "lr",
                    format!("{lr}, and the base's `{key}` is {v}: the same setting; give it once"),
                ))
            }
            _ => {
                map.insert(key.to_string(), serde_json::json!(lr));
            }
        }
    }
    let base = build_optimizer(lib, &base_name, &kwargs, None, shapes)
        .map_err(|e| field_err(ctx, "base", format!("{lib}.{base_name}: {e}")))?;
    let cfg = PoSamConfig {
        rho: k.f64("rho", 0.05)?,
        adaptive: k.bool("adaptive", false)?,
        use_gc: false,
        perturb_eps: k.f64("perturb_eps", 1e-12)?,
    };
    k.finish()?;
    PoSam::new(base, cfg, shapes)
}

impl ClosureOptimizer for PoSam {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        check_params(&self.shapes, params)?;
        if self.steps == 0 {
            self.base.init(&self.shapes, &views(params))?;
        }
        let value = objective.value_and_grad(params, &mut self.grads)?;
        // The norm of each tensor in f32, squared and summed in f32, as torch stacks them.
        let mut sum_sq = 0.0f32;
        for (g, p) in self.grads.iter().zip(params.iter()) {
            let sq: f64 = if self.cfg.adaptive {
                g.iter().zip(p).map(|(&g, &p)| (g * p.abs()) as f64).map(|x| x * x).sum()
            } else {
                g.iter().map(|&g| g as f64 * g as f64).sum()
            };
            let norm = sq.sqrt() as f32;
            sum_sq += norm * norm;
        }
        let grad_norm = sum_sq.sqrt() + self.cfg.perturb_eps as f32;
        // torch's `rho / tensor` is `reciprocal(tensor) * rho`.
        let scale = (1.0 / grad_norm) * self.cfg.rho as f32;
        for (i, ((p, g), old)) in params.iter_mut().zip(self.grads.iter_mut()).zip(self.old.iter_mut()).enumerate() {
            if self.cfg.use_gc {
                centralize(g, &self.shapes[i]);
            }
            old.copy_from_slice(p);
            for (p, &g) in p.iter_mut().zip(g.iter()) {
                let e = if self.cfg.adaptive { *p * *p * g * scale } else { g * scale };
                *p += e;
            }
        }
        let perturbed = objective.value_and_grad(params, &mut self.grads);
        // Back to w, also when the objective failed there.
        for (p, old) in params.iter_mut().zip(&self.old) {
            p.copy_from_slice(old);
        }
        perturbed?;
        let mut ps: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
        self.base.step_buffers(&mut ps, &views(&self.grads), &mut self.updates)?;
        self.steps += 1;
        Ok(value)
    }

    /// The base optimizer's learning rates.
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.base.visit_learning_rates(f);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("steps", &mut self.steps)?;
        v.push("base_optimizer");
        self.base.visit_state(v)?;
        v.pop();
        Ok(())
    }
}
