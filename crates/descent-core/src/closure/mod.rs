//! Optimizers that evaluate the objective themselves: torch's `step(closure)` (L-BFGS), optax's
//! `lbfgs` with its zoom line search, sharpness-aware minimization (a second gradient at a
//! perturbed point), the step sizes that need the loss value (Polyak SGD, MoMo), and Sophia, which
//! needs Hessian-vector products.
//!
//! A gradient-only [`crate::Optimizer`] is handed gradients; a [`ClosureOptimizer`] is handed an
//! [`Objective`] and calls it wherever its algorithm needs the loss and gradient.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::state::{StateDict, StateVisitor};

mod first_order;
mod lbfgs;
pub mod problems;
mod sophia;

pub use first_order::{
    Momo, MomoAdam, MomoAdamConfig, MomoConfig, OptaxSam, OptaxSamConfig, PoSam, PoSamConfig, PolyakSgd,
    PolyakSgdConfig, PolyakVariant, TransformFactory,
};
pub use lbfgs::{
    BacktrackingLinesearchConfig, OptaxLbfgs, OptaxLbfgsConfig, OptaxLinesearch, TorchLbfgs, TorchLbfgsConfig,
    ZoomLinesearchConfig,
};
pub use problems::{Problem, Rosenbrock, SoftmaxRegression};
pub use sophia::{Sophia, SophiaConfig};

/// The objective a closure-driven optimizer evaluates.
pub trait Objective {
    /// The loss `L(params)`; writes `∇L(params)` into `grads` (one buffer per parameter, the
    /// parameters' sizes).
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32>;

    /// The Hessian-vector product `∇²L(params)·v`, written into `out`. By default (descent's
    /// choice: the objective gives gradients only, and candle has no forward-over-reverse
    /// differentiation) a central difference of gradients,
    /// `(∇L(w + εv) − ∇L(w − εv)) / 2ε` with `ε = √ε_f32·(1 + ‖w‖∞) / ‖v‖∞`, exact for a
    /// quadratic up to rounding; two gradient evaluations. An objective that knows its Hessian
    /// may give it exactly.
    fn hvp(&mut self, params: &[Vec<f32>], v: &[Vec<f32>], out: &mut [Vec<f32>]) -> Result<()> {
        finite_difference_hvp(self, params, v, out)
    }
}

/// The central difference of gradients [`Objective::hvp`] computes by default.
pub fn finite_difference_hvp<O: Objective + ?Sized>(
    objective: &mut O,
    params: &[Vec<f32>],
    v: &[Vec<f32>],
    out: &mut [Vec<f32>],
) -> Result<()> {
    let inf = |x: &[Vec<f32>]| x.iter().flatten().fold(0.0f64, |m, &a| m.max((a as f64).abs()));
    let v_max = inf(v);
    if v_max == 0.0 || !v_max.is_finite() {
        for (o, v) in out.iter_mut().zip(v) {
            o.iter_mut().zip(v).for_each(|(o, &v)| *o = v * 0.0);
        }
        return Ok(());
    }
    let eps = (f32::EPSILON as f64).sqrt() * (1.0 + inf(params)) / v_max;
    let shifted = |sign: f64| -> Vec<Vec<f32>> {
        params
            .iter()
            .zip(v)
            .map(|(p, v)| p.iter().zip(v).map(|(&p, &v)| (p as f64 + sign * eps * v as f64) as f32).collect())
            .collect()
    };
    let mut plus: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut minus = plus.clone();
    objective.value_and_grad(&shifted(1.0), &mut plus)?;
    objective.value_and_grad(&shifted(-1.0), &mut minus)?;
    for ((o, a), b) in out.iter_mut().zip(&plus).zip(&minus) {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = ((a as f64 - b as f64) / (2.0 * eps)) as f32;
        }
    }
    Ok(())
}

impl<F: FnMut(&[Vec<f32>], &mut [Vec<f32>]) -> Result<f32>> Objective for F {
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
        self(params, grads)
    }
}

/// The objective negated, `−L` and `−∇L`: what an optimizer asked to maximize `L` minimizes
/// (torch's `maximize`).
pub(crate) struct Negated<'a>(pub(crate) &'a mut dyn Objective);

impl Objective for Negated<'_> {
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
        let loss = self.0.value_and_grad(params, grads)?;
        grads.iter_mut().flatten().for_each(|g| *g = -*g);
        Ok(-loss)
    }
}

/// An optimizer that evaluates the objective where its algorithm chooses.
pub trait ClosureOptimizer: Send {
    /// One step (as the library defines one: see each optimizer): moves `params` in place and
    /// returns the loss at the parameters the step started from.
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32>;

    /// Visits the learning rates this optimizer holds, as [`crate::Transform::visit_learning_rates`].
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        let _ = f;
    }

    /// Visits every buffer, scalar and counter of the state (checkpoints, resume).
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()>;

    /// Sets every learning rate the optimizer holds to `lr` from the next step on (as
    /// [`crate::Optimizer::set_learning_rate`]); an error when it holds none.
    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid(format!("Invalid learning rate: {lr}")));
        }
        let mut found = 0;
        self.visit_learning_rates(&mut |r| {
            *r = LearningRate::Constant(lr);
            found += 1;
        });
        if found == 0 {
            return Err(Error::Invalid("this optimizer has no learning rate to set".into()));
        }
        Ok(())
    }

    /// Every learning rate in a fixed order: its value when constant, `None` for a schedule.
    fn learning_rates(&mut self) -> Vec<Option<f64>> {
        let mut rates = vec![];
        self.visit_learning_rates(&mut |r| rates.push(r.constant()));
        rates
    }

    /// The whole state, for saving, with the learning rates in force (as
    /// [`crate::Optimizer::state_dict`]).
    fn state_dict(&mut self) -> Result<StateDict> {
        let mut s = crate::state::Saver::default();
        self.visit_state(&mut s)?;
        let rates = self.learning_rates();
        crate::state::learning_rates::save(&rates, &mut s.dict);
        Ok(s.dict)
    }

    /// Restores a state saved by [`ClosureOptimizer::state_dict`], its learning rates included;
    /// refuses a mismatched one whole.
    fn load_state_dict(&mut self, dict: &StateDict) -> Result<()> {
        let mut inner = dict.clone();
        let count = self.learning_rates().len();
        let rates = crate::state::learning_rates::take(&mut inner, count)?;
        crate::state::load_whole(&mut |v| self.visit_state(v), &inner)?;
        crate::state::learning_rates::restore(|f| self.visit_learning_rates(f), &rates);
        Ok(())
    }
}

type Family = fn(&str, &str, &Value, &[Vec<usize>]) -> Option<Result<Box<dyn ClosureOptimizer>>>;

/// The closure-driven optimizers, as registry names (`torch.lbfgs`, `optax.contrib.sam`,
/// `descent.sam`, …).
pub fn closure_optimizers() -> Vec<String> {
    let mut names: Vec<String> =
        first_order::NAMES.iter().chain(lbfgs::NAMES).chain(sophia::NAMES).map(|s| s.to_string()).collect();
    names.sort_unstable();
    names
}

/// Whether `library.name` is a closure-driven optimizer (it cannot step on gradients alone).
pub fn is_closure_optimizer(library: &str, name: &str) -> bool {
    let full = format!("{library}.{name}");
    [first_order::NAMES, lbfgs::NAMES, sophia::NAMES].iter().any(|names| names.contains(&full.as_str()))
}

/// The learning rate given to the base optimizer of `descent.sam` in its `base` pair
/// (`["adamw", {"lr": …}]`) or `base_hparams`, if any: the run's rate is the same setting.
pub fn sam_base_lr(library: &str, name: &str, hparams: &Value) -> Option<f64> {
    if (library, name) != ("descent", "sam") {
        return None;
    }
    let (base_name, kwargs) = match hparams.get("base")? {
        Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?),
        Value::String(n) => (n.as_str(), hparams.get("base_hparams")?),
        _ => return None,
    };
    let (base_lib, _) = crate::spec::resolve_optimizer(base_name).ok()?;
    kwargs.get(crate::spec::lr_key(base_lib))?.as_f64()
}

/// The learning rate the closure-driven optimizer `library.name` takes from these keyword
/// arguments: its library's default when they set none (torch `LBFGS` 1.0, optax
/// `contrib.momo_adam` 1e-2), the base optimizer's for SAM. `None` when they do not build, or
/// the optimizer holds no constant rate or several different ones.
pub fn default_learning_rate(library: &str, name: &str, hparams: &Value) -> Option<f64> {
    let mut opt = build_closure_optimizer(library, name, hparams, &[vec![1]]).ok()?;
    let rates = opt.learning_rates();
    let first = (*rates.first()?)?;
    rates.iter().all(|r| *r == Some(first)).then_some(first)
}

/// Builds the closure-driven optimizer `name` of `library` for parameters of these shapes.
pub fn build_closure_optimizer(
    library: &str,
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
) -> Result<Box<dyn ClosureOptimizer>> {
    crate::transform::check_shapes(shapes)?;
    let families: [Family; 3] = [first_order::build, lbfgs::build, sophia::build];
    for f in families {
        if let Some(opt) = f(library, name, hparams, shapes) {
            return opt;
        }
    }
    Err(Error::Unknown {
        kind: "closure-driven optimizer",
        name: format!("{library}.{name}"),
        accepted: closure_optimizers().join(", "),
    })
}
