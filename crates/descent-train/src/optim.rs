//! descent's optimizers on candle variables, updated in place.
//!
//! candle hands out mutable access to a tensor's storage one tensor at a time (`inplace_op2`). To
//! run one optimizer step over all parameters together (global norms, trust ratios need them all),
//! the in-place ops are nested: each level holds one variable's write lock, and the innermost level
//! runs the core step on every parameter's storage. No parameter or state is copied.
//!
//! # Your own candle model
//!
//! [`OptimizerConfig`] and [`VarOptimizer::for_varmap`] (or [`VarOptimizer::for_vars`]) give any
//! candle model whose parameters live in a `VarMap` descent's optimizers, with parameter groups by
//! name, gradient clipping, a learning-rate schedule and checkpoints, without descent's models or
//! training loop:
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{linear, VarBuilder, VarMap};
//! use descent_core::schedule;
//! use descent_train::optim::{OptimizerConfig, VarOptimizer};
//! use serde_json::json;
//! use std::sync::Arc;
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let fc = linear(3, 1, vb.pp("fc"))?;
//! let mut opt = VarOptimizer::for_varmap(
//!     &varmap,
//!     &OptimizerConfig {
//!         optimizer: "adamw".into(),
//!         lr: Some(1e-2),
//!         hparams: json!({"weight_decay": 0.1}),
//!         groups: vec![("bias".into(), json!({"weight_decay": 0.0}))],
//!         clip_norm: Some(1.0),
//!         // Multiplier of the learning rate at each step: warm-up then cosine decay.
//!         schedule: Some(Arc::new(schedule::warmup_cosine_decay(schedule::WarmupCosineDecay {
//!             init_value: 0.0,
//!             peak_value: 1.0,
//!             warmup_steps: 10,
//!             decay_steps: 100,
//!             end_value: 0.0,
//!             exponent: 1.0,
//!         })?)),
//!         ..Default::default()
//!     },
//! )?;
//! let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
//! let loss = fc.forward(&x)?.sqr()?.mean_all()?;
//! opt.step(&loss.backward()?)?;
//! assert_eq!(opt.steps(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Optimizers that evaluate the objective
//!
//! The closure-driven optimizers (`torch.lbfgs`, `optax.lbfgs`, `sam` and the other SAMs, Polyak
//! SGD, MoMo; see `descent_core::closure`) take a closure instead of gradients, as torch's
//! `optimizer.step(closure)`: [`VarOptimizer::step_closure`] calls it as often as the algorithm
//! needs (SAM twice, L-BFGS up to `max_eval` times), each time with the variables holding the point
//! to evaluate, and takes the loss tensor it returns through a backward pass. After the step the
//! variables hold the new parameters. A gradient optimizer steps on the closure's gradients too.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{linear, VarBuilder, VarMap};
//! use descent_train::optim::{OptimizerConfig, VarOptimizer};
//! use serde_json::json;
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let fc = linear(3, 1, vb.pp("fc"))?;
//! let mut opt = VarOptimizer::for_varmap(
//!     &varmap,
//!     &OptimizerConfig {
//!         optimizer: "sam".into(),
//!         lr: Some(1e-2),
//!         hparams: json!({"base": "adamw", "rho": 0.05}),
//!         ..Default::default()
//!     },
//! )?;
//! let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
//! let loss = opt.step_closure(|| Ok(fc.forward(&x)?.sqr()?.mean_all()?))?;
//! assert!(loss > 0.0 && opt.steps() == 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::backprop::GradStore;
use std::path::Path;
use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use candle_nn::VarMap;
use descent_core::closure::{build_closure_optimizer, is_closure_optimizer, ClosureOptimizer, Objective};
use descent_core::learning_rate::LearningRate;
pub use descent_core::optimizer::NonFinite;
use descent_core::optimizer::Optimizer;
use descent_core::schedule::Schedule;
use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer, takes_learning_rate_for};
use descent_core::state::StateDict;

use descent_core::transform::Transform;
use descent_core::transforms::{Clip, ClipByGlobalNorm, Identity, Partition};
use serde_json::Value;

use crate::checkpoint::Checkpoint;

pub mod shard;

use crate::cpu::{f32_slice, storage_f32s};
use crate::error::{Error, Result};

/// An optimizer over a fixed list of named candle variables.
pub struct VarOptimizer {
    names: Vec<String>,
    vars: Vec<Var>,
    opt: Engine,
    /// The optimizer's learning rates as built (one per group), which a multiplier scales, for
    /// optimizers built from an [`OptimizerConfig`]; and the multiplier in force.
    base_rates: Option<Vec<f64>>,
    scale: f64,
    /// The multiplier by step that [`VarOptimizer::step`] sets before each step.
    schedule: Option<Arc<dyn Schedule>>,
    /// Which of the optimizer's rates [`VarOptimizer::learning_rate`] reports.
    reported: usize,
}

/// What steps the variables: a gradient optimizer, or one that evaluates the objective itself.
enum Engine {
    Gradient(Optimizer),
    Closure(ClosureEngine),
    /// A gradient optimizer over this rank's range of the parameters (see [`shard`]).
    Sharded(Box<shard::Sharded>),
}

/// A closure-driven optimizer and the parameter values it moves (read from the variables at
/// each step, written back after it).
struct ClosureEngine {
    opt: Box<dyn ClosureOptimizer>,
    /// Its name, for messages (`torch.lbfgs`).
    name: String,
    steps: u64,
    params: Vec<Vec<f32>>,
    /// The parameters the step started from, put back when it fails.
    start: Vec<Vec<f32>>,
}

/// The counter of steps in a closure optimizer's saved state (the name the gradient optimizers'
/// state uses too).
const STEPS_KEY: &str = "optimizer.steps";
/// The key of [`VarOptimizer::set_lr_scale`]'s multiplier in a saved state.
const SCALE_KEY: &str = "optimizer.lr_scale";

impl Engine {
    fn steps(&self) -> u64 {
        match self {
            Engine::Gradient(o) => o.steps(),
            Engine::Closure(c) => c.steps,
            Engine::Sharded(s) => s.opt.steps(),
        }
    }

    fn learning_rates(&mut self) -> Vec<Option<f64>> {
        match self {
            Engine::Gradient(o) => o.learning_rates(),
            Engine::Closure(c) => c.opt.learning_rates(),
            Engine::Sharded(s) => s.opt.learning_rates(),
        }
    }

    fn set_learning_rates(&mut self, lrs: &[f64]) -> Result<()> {
        match self {
            Engine::Gradient(o) => Ok(o.set_learning_rates(lrs)?),
            Engine::Sharded(s) => Ok(s.opt.set_learning_rates(lrs)?),
            Engine::Closure(c) => {
                let mut n = 0;
                c.opt.visit_learning_rates(&mut |_| n += 1);
                if lrs.len() != n {
                    return Err(Error::Param(format!("{} learning rates given, the optimizer has {n}", lrs.len())));
                }
                if let Some(bad) = lrs.iter().find(|x| !x.is_finite() || **x < 0.0) {
                    return Err(Error::Param(format!("Invalid learning rate: {bad}")));
                }
                let mut k = 0;
                c.opt.visit_learning_rates(&mut |r| {
                    *r = LearningRate::Constant(lrs[k]);
                    k += 1;
                });
                Ok(())
            }
        }
    }
}

/// What [`VarOptimizer::step_closure_with`] shows of each evaluation of the objective.
pub struct Evaluation<'a> {
    /// Evaluations before this one in the step (0 for the first).
    pub index: usize,
    /// The loss the closure returned.
    pub loss: f32,
    /// The gradients of its backward pass.
    pub grads: &'a GradStore,
    /// The gradients as the optimizer takes them: one flat buffer per variable, in optimizer
    /// order (zeros for a variable the loss does not use).
    pub flat_grads: &'a [Vec<f32>],
}

/// The global L2 norm of flat gradients, accumulated in f64.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads.iter().map(|g| descent_core::transforms::sum_sq(g)).sum::<f64>().sqrt()
}

/// Writes values into a variable's storage in place: all of them (`at: None`, the lengths must
/// agree), or elements `k..k + values.len()` (`at: Some(k)`, a sharded step's all-gathered ranges).
struct WriteValues<'a> {
    values: &'a [f32],
    at: Option<usize>,
    name: &'a str,
}

impl candle_core::InplaceOp1 for WriteValues<'_> {
    fn name(&self) -> &'static str {
        "descent-write-parameter"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let name = self.name;
        let CpuStorage::F32(v) = s else { candle_core::bail!("{name}: descent optimizes f32 tensors") };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{name}: parameter is not contiguous")
        };
        let n = self.values.len();
        let at = match self.at {
            None if end - start != n => {
                candle_core::bail!("{name}: {n} values for a parameter of {}", end - start)
            }
            None => 0,
            Some(at) if at + n > end - start => {
                candle_core::bail!("{name}: values {at}..{} of a parameter of {}", at + n, end - start)
            }
            Some(at) => at,
        };
        v[start + at..start + at + n].copy_from_slice(self.values);
        Ok(())
    }
}

/// Copies a variable's values into `out`.
fn read_values(var: &Var, name: &str, out: &mut [f32]) -> Result<()> {
    let (storage, layout) = var.as_tensor().storage_and_layout();
    let values = storage_f32s(&storage, layout, name)?;
    if values.len() != out.len() {
        return Err(Error::Param(format!("`{name}` holds {} values, the optimizer {}", values.len(), out.len())));
    }
    out.copy_from_slice(values);
    Ok(())
}

/// The objective a closure optimizer evaluates: the variables set to the point, the closure's loss
/// and its backward pass. A training error is kept whole for the caller (the optimizer sees a
/// core error carrying its message).
struct VarObjective<'a, F, O> {
    names: &'a [String],
    vars: &'a [Var],
    closure: F,
    observe: O,
    evals: usize,
    error: Option<Error>,
}

impl<F, O> VarObjective<'_, F, O>
where
    F: FnMut() -> Result<Tensor>,
    O: FnMut(&Evaluation) -> Result<()>,
{
    fn eval(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
        for ((v, p), n) in self.vars.iter().zip(params).zip(self.names) {
            v.as_tensor().inplace_op1(&WriteValues { values: p, at: None, name: n })?;
        }
        let loss = (self.closure)()?;
        if loss.rank() != 0 || loss.dtype() != DType::F32 {
            return Err(Error::Param(format!(
                "the closure must return the loss as an f32 scalar, got {:?} of shape {:?}",
                loss.dtype(),
                loss.dims()
            )));
        }
        let value = loss.to_scalar::<f32>()?;
        let store = loss.backward()?;
        for ((v, n), g) in self.vars.iter().zip(self.names).zip(grads.iter_mut()) {
            match store.get(v.as_tensor()) {
                None => g.iter_mut().for_each(|x| *x = 0.0),
                Some(t) => {
                    if t.dims() != v.dims() {
                        return Err(Error::Param(format!(
                            "gradient of `{n}` has shape {:?}, parameter {:?}",
                            t.dims(),
                            v.dims()
                        )));
                    }
                    let t = t.contiguous()?;
                    let (storage, layout) = t.storage_and_layout();
                    g.copy_from_slice(storage_f32s(&storage, layout, n)?);
                }
            }
        }
        let index = self.evals;
        self.evals += 1;
        (self.observe)(&Evaluation { index, loss: value, grads: &store, flat_grads: grads })?;
        Ok(value)
    }
}

impl<F, O> Objective for VarObjective<'_, F, O>
where
    F: FnMut() -> Result<Tensor>,
    O: FnMut(&Evaluation) -> Result<()>,
{
    fn value_and_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> descent_core::Result<f32> {
        self.eval(params, grads).map_err(|e| {
            let message = e.to_string();
            self.error = Some(e);
            descent_core::Error::Invalid(message)
        })
    }
}

/// How to optimize the parameters of a candle model of your own, for
/// [`VarOptimizer::for_varmap`] and [`VarOptimizer::for_vars`]; build it as candle's
/// `ParamsAdamW`: `OptimizerConfig { lr: Some(1e-3), ..Default::default() }`.
#[derive(Clone)]
pub struct OptimizerConfig {
    /// Optimizer by descent name: `adamw`, `sgd`, `torch.adam`, `optax.lion`, `lamb`, … (a bare
    /// name is torch's when torch has it, else optax's). Default `adamw`. A closure-driven one
    /// (`lbfgs`, `sam`, `torch.lbfgs`, `optax.contrib.momo`, …) is stepped with
    /// [`VarOptimizer::step_closure`], without groups or clipping.
    pub optimizer: String,
    /// The learning rate (the library's `lr` / `learning_rate`); `None` keeps the library's
    /// default, or the rate in `hparams`. Refused for an optimizer without a learning rate of
    /// its own (`optax.chain`, `po.lookahead`: the rate is a link's argument) and beside a
    /// different rate in `hparams`.
    pub lr: Option<f64>,
    /// Other keyword arguments, in the library's own names (`{"weight_decay": 0.05, "betas":
    /// [0.9, 0.95]}` for torch, `{"b1": 0.9}` for optax). Default: none.
    pub hparams: Value,
    /// Parameter groups by name (torch `param_groups`, optax `partition`): the parameters whose
    /// name contains the pattern get these keyword arguments on top of `hparams`, the first
    /// matching group winning, e.g. `("bias", json!({"weight_decay": 0.0}))`. A pattern that
    /// selects no parameter is an error.
    pub groups: Vec<(String, Value)>,
    /// Clip the gradients by their global L2 norm (torch `clip_grad_norm_`, optax
    /// `clip_by_global_norm`) before the optimizer.
    pub clip_norm: Option<f64>,
    /// Clip each gradient element to `[−v, v]` (optax `clip`) before the optimizer.
    pub clip_value: Option<f64>,
    /// A multiplier of every group's learning rate by step (torch `LambdaLR`): step `t` (from 0)
    /// uses `lr × schedule(t)`. Any `descent_core::schedule` function or closure `|t| …`.
    /// [`VarOptimizer::step`] applies it; without one the multiplier is 1 unless set with
    /// [`VarOptimizer::set_lr_scale`].
    pub schedule: Option<Arc<dyn Schedule>>,
    /// What a step does with gradients holding NaN or infinite values: pass them on, as torch and
    /// optax do (the default), or skip the whole step, parameters and state untouched
    /// ([`VarOptimizer::step`] then returns false). Gradient optimizers on one process only.
    pub non_finite: NonFinite,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            optimizer: "adamw".into(),
            lr: None,
            hparams: Value::Object(Default::default()),
            groups: vec![],
            clip_norm: None,
            clip_value: None,
            schedule: None,
            non_finite: NonFinite::Propagate,
        }
    }
}

impl std::fmt::Debug for OptimizerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptimizerConfig")
            .field("optimizer", &self.optimizer)
            .field("lr", &self.lr)
            .field("hparams", &self.hparams)
            .field("groups", &self.groups)
            .field("clip_norm", &self.clip_norm)
            .field("clip_value", &self.clip_value)
            .field("schedule", &self.schedule.as_ref().map(|_| "…"))
            .field("non_finite", &self.non_finite)
            .finish()
    }
}

impl OptimizerConfig {
    /// Candle's gradients are dense, which torch's SparseAdam refuses: refused whether it is the
    /// optimizer or one a wrapper steps (SAM's `base`, Lookahead's `optimizer`).
    fn refuse_sparse_only(&self) -> Result<()> {
        let sparse_only = |n: &str| resolve_optimizer(n).is_ok_and(|(l, n)| l == "torch" && n == "sparseadam");
        fn names_any(v: &Value, f: &dyn Fn(&str) -> bool) -> bool {
            match v {
                Value::String(s) => f(s),
                Value::Array(a) => a.iter().any(|v| names_any(v, f)),
                Value::Object(o) => o.values().any(|v| names_any(v, f)),
                _ => false,
            }
        }
        if sparse_only(&self.optimizer) || names_any(&self.hparams, &sparse_only) {
            return Err(Error::Param(format!(
                "torch.sparseadam (in `{}`) steps sparse gradients only (torch raises on a dense one: \"SparseAdam \
                 does not support dense gradients\"), and a candle model's gradients are dense; use torch.adam",
                self.optimizer
            )));
        }
        Ok(())
    }

    /// The transformation of this config over parameters with these names and shapes: the
    /// clipping, the optimizer (one per group) and the learning-rate multiplier link last.
    fn transform(&self, names: &[String], shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
        self.transform_clipping(names, shapes, true)
    }

    /// [`OptimizerConfig::transform`]; without `norm_clip`, an identity link stands where the
    /// clipping by the global norm would (its caller clips), so that the state keeps its names.
    fn transform_clipping(
        &self,
        names: &[String],
        shapes: &[Vec<usize>],
        norm_clip: bool,
    ) -> Result<Box<dyn Transform>> {
        let (lib, name) = resolve_optimizer(&self.optimizer)?;
        self.refuse_sparse_only()?;
        let mut h = match &self.hparams {
            Value::Null => Value::Object(Default::default()),
            Value::Object(_) => self.hparams.clone(),
            other => return Err(Error::Param(format!("optimizer arguments must be a JSON object, got {other}"))),
        };
        // The run's rate goes to the optimizer's own argument; a composition without one
        // (`optax.chain`, `po.lookahead`, a bare transformation such as `scale_by_adam`) has its
        // rate in a link, and a rate given to it is refused (the libraries raise a TypeError), as
        // is a second, different rate in `hparams`.
        if let Some(lr) = self.lr {
            let key = lr_key(lib);
            if !takes_learning_rate_for(lib, &name, &h, shapes) {
                return Err(Error::Param(format!(
                    "`{lib}.{name}` takes no learning rate of its own (lr {lr} given): give it to a link of its \
                     arguments, and no lr"
                )));
            }
            if !rate_given_once(&format!("{lib}.{name}"), lr, key, h.get(key))? {
                h[key] = serde_json::json!(lr);
            }
        }
        let tx = if self.groups.is_empty() {
            build_optimizer(lib, &name, &h, None, shapes)?
        } else if lib == "po" && name == "kron" {
            // pytorch_optimizer's Kron shares one preconditioner update schedule among its groups
            // and reads `precondition_lr` / `precondition_init_scale` from its group only: one
            // --group selecting every parameter is its one library group.
            match self.groups.as_slice() {
                [(pat, over)] if names.iter().all(|n| n.contains(pat.as_str())) => {
                    let groups = serde_json::json!([{"params": (0..names.len()).collect::<Vec<_>>(), "hparams": over}]);
                    build_optimizer(lib, &name, &h, Some(&groups), shapes)?
                }
                _ => {
                    return Err(Error::Param(
                        "po.kron: one --group, selecting every parameter (the library shares one preconditioner \
                         update schedule among its groups)"
                            .into(),
                    ))
                }
            }
        } else {
            let mut member: Vec<usize> = vec![self.groups.len(); names.len()];
            for (i, n) in names.iter().enumerate() {
                if let Some(g) = self.groups.iter().position(|(pat, _)| n.contains(pat.as_str())) {
                    member[i] = g;
                }
            }
            let mut parts = vec![];
            for g in 0..=self.groups.len() {
                let idx: Vec<usize> = (0..names.len()).filter(|&i| member[i] == g).collect();
                if let Some((pat, _)) = self.groups.get(g).filter(|_| idx.is_empty()) {
                    return Err(Error::Param(match names.iter().position(|n| n.contains(pat.as_str())) {
                        None => format!("group `{pat}` matches no parameter; the parameters are: {}", names.join(", ")),
                        Some(i) => format!(
                            "group `{pat}` selects no parameter: `{}` and every other name containing it belong to \
                             the earlier group `{}`",
                            names[i], self.groups[member[i]].0
                        ),
                    }));
                }
                if idx.is_empty() {
                    continue;
                }
                let mut gh = h.clone();
                if let Some((pat, over)) = self.groups.get(g) {
                    let over = over.as_object().ok_or_else(|| {
                        Error::Param(format!("group `{pat}`: arguments must be a JSON object, got {over}"))
                    })?;
                    for (k, v) in over {
                        gh[k] = v.clone();
                    }
                }
                let sub: Vec<Vec<usize>> = idx.iter().map(|&i| shapes[i].clone()).collect();
                parts.push((idx, build_optimizer(lib, &name, &gh, None, &sub)?));
            }
            Box::new(Partition::new(parts))
        };
        let mut links: Vec<Box<dyn Transform>> = vec![];
        if let Some(v) = self.clip_value {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Param(format!("clip_value must be a positive number, got {v}")));
            }
            links.push(Box::new(Clip::new(v)));
        }
        if let Some(n) = self.clip_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::Param(format!("clip_norm must be a positive number, got {n}")));
            }
            if norm_clip {
                links.push(Box::new(ClipByGlobalNorm::new(n)));
            } else {
                links.push(Box::new(Identity));
            }
        }
        links.push(tx);
        Ok(descent_core::chain(links))
    }
}

/// The run's rate `lr` and the optimizer's own argument `key` (`given`, if any) are one setting:
/// given once, or twice with the same value. Whether the argument was given (a null is not).
fn rate_given_once(optimizer: &str, lr: f64, key: &str, given: Option<&Value>) -> Result<bool> {
    match given.filter(|v| !v.is_null()) {
        None => Ok(false),
        Some(v) if v.as_f64() == Some(lr) => Ok(true),
        Some(v) => Err(Error::Param(format!(
            "`{optimizer}`: lr {lr} and its argument `{key}` = {v} are the same setting; give one"
        ))),
    }
}

/// Which of `rates` learning rates (those of a config with these `groups` over parameters with
/// these `names`) is the run's own, the one it reports: that of the parameters outside every
/// group, which the partition steps last (each part holding as many rates); the first group's
/// when every parameter is in a group.
pub(crate) fn own_rate_index(names: &[String], groups: &[(String, Value)], rates: usize) -> usize {
    let rest = names.iter().any(|n| !groups.iter().any(|(pat, _)| n.contains(pat.as_str())));
    if groups.is_empty() || !rest {
        return 0;
    }
    rates - rates / (groups.len() + 1)
}

/// One level of the nested in-place ops: takes the write lock of variable `k`, records its slice,
/// and descends; the last level runs the step.
struct Level<'a> {
    k: usize,
    run: &'a std::cell::RefCell<Run<'a>>,
}

/// How [`VarOptimizer::flat_grads`] puts gradients into the flat parameter space.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Into {
    Write,
    Add,
}

/// Where a step's gradients are: one contiguous tensor per variable (each the second operand of
/// its variable's level), or the flat parameter space read in place (one-operand levels).
enum StepGrads<'a> {
    Tensors(Vec<Tensor>),
    Flat(&'a [f32]),
}

struct Run<'a> {
    vars: &'a [Var],
    names: &'a [String],
    grads: StepGrads<'a>,
    /// Raw (pointer, length) of each locked parameter storage, valid while its level is on the stack.
    slots: Vec<(*mut f32, usize)>,
    /// The part of each variable the optimizer steps (a sharded optimizer's pieces, in the
    /// variable's own indices); the whole variables when `None`.
    pieces: Option<&'a [std::ops::Range<usize>]>,
    opt: &'a mut Optimizer,
    result: Option<descent_core::Result<bool>>,
}

impl Level<'_> {
    /// Takes variable `k`'s storage (its write lock held by the caller) and either descends to
    /// the next variable or, at the last one, runs the optimizer's step on all of them.
    fn enter(&self, s1: &mut CpuStorage, l1: &Layout) -> candle_core::Result<()> {
        let (vars, name) = {
            let r = self.run.borrow();
            (r.vars, r.names[self.k].clone())
        };
        let CpuStorage::F32(v) = s1 else { candle_core::bail!("{name}: descent optimizes f32 tensors") };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("{name}: parameter is not contiguous")
        };
        self.run.borrow_mut().slots.push((v[start..end].as_mut_ptr(), end - start));
        if self.k + 1 < vars.len() {
            let next = Level { k: self.k + 1, run: self.run };
            let var = vars[self.k + 1].as_tensor();
            // The gradient tensor only serves as the op's second operand (never read there).
            let g = match &self.run.borrow().grads {
                StepGrads::Tensors(gs) => Some(gs[self.k + 1].clone()),
                StepGrads::Flat(_) => None,
            };
            match g {
                Some(g) => var.inplace_op2(&g, &next)?,
                None => var.inplace_op1(&next)?,
            }
        } else {
            let mut r = self.run.borrow_mut();
            let r = &mut *r;
            let tensors = match &r.grads {
                StepGrads::Tensors(gs) => gs.clone(),
                StepGrads::Flat(_) => vec![],
            };
            let guards: Vec<_> = tensors.iter().map(|g| g.storage_and_layout()).collect();
            // SAFETY: every slot points into a storage whose write lock is held by an enclosing
            // level of this recursion, and the slots are distinct tensors.
            let mut params: Vec<&mut [f32]> = r
                .slots
                .iter()
                .enumerate()
                .map(|(i, &(p, n))| {
                    let whole = unsafe { std::slice::from_raw_parts_mut(p, n) };
                    match r.pieces {
                        Some(pieces) => &mut whole[pieces[i].clone()],
                        None => whole,
                    }
                })
                .collect();
            let mut gslices = Vec::with_capacity(r.vars.len());
            match r.grads {
                StepGrads::Tensors(_) => {
                    for (i, (s, l)) in guards.iter().enumerate() {
                        gslices.push(storage_f32s(s, l, &r.names[i])?);
                    }
                }
                StepGrads::Flat(flat) => {
                    let mut at = 0;
                    for p in &params {
                        gslices.push(&flat[at..at + p.len()]);
                        at += p.len();
                    }
                }
            }
            let res = r.opt.step(&mut params, &gslices);
            r.result = Some(res);
        }
        Ok(())
    }
}

impl candle_core::InplaceOp2 for Level<'_> {
    fn name(&self) -> &'static str {
        "descent-optimizer-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let name = self.run.borrow().names[self.k].clone();
        let _ = f32_slice(s2, l2, &name)?;
        self.enter(s1, l1)
    }
}

impl candle_core::InplaceOp1 for Level<'_> {
    fn name(&self) -> &'static str {
        "descent-optimizer-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout) -> candle_core::Result<()> {
        self.enter(s1, l1)
    }
}

impl VarOptimizer {
    /// The values of named variables, which must be f32 on the CPU, each variable given once (a
    /// tied weight under two names would be stepped twice, its one gradient applied twice).
    fn checked_values(named: &[(String, Var)]) -> Result<Vec<Vec<f32>>> {
        let mut init = vec![];
        let mut seen = std::collections::HashMap::new();
        for (n, v) in named {
            if let Some(first) = seen.insert(v.as_tensor().id(), n) {
                return Err(Error::Param(format!(
                    "parameters `{first}` and `{n}` are one variable (tied weights): give it once"
                )));
            }
            if v.dtype() != DType::F32 {
                return Err(Error::Param(format!("parameter `{n}` is {:?}; descent optimizes f32", v.dtype())));
            }
            if !matches!(v.device(), Device::Cpu) {
                return Err(Error::Param(format!("parameter `{n}` is not on the CPU")));
            }
            init.push(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(init)
    }

    /// Builds an optimizer for named variables (kept in the given order).
    pub fn new(named: Vec<(String, Var)>, tx: Box<dyn Transform>) -> Result<Self> {
        let init = Self::checked_values(&named)?;
        let shapes = named.iter().map(|(_, v)| v.dims().to_vec()).collect();
        let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let opt = Engine::Gradient(Optimizer::new(tx, shapes, &views)?);
        let (names, vars) = named.into_iter().unzip();
        Ok(VarOptimizer { names, vars, opt, base_rates: None, scale: 1.0, schedule: None, reported: 0 })
    }

    /// A closure-driven optimizer (built with `descent_core::closure::build_closure_optimizer`
    /// for the variables' shapes) over named variables, kept in the given order; `name` names it
    /// in messages. It steps with [`VarOptimizer::step_closure`].
    pub fn with_closure_optimizer(
        named: Vec<(String, Var)>,
        opt: Box<dyn ClosureOptimizer>,
        name: &str,
    ) -> Result<Self> {
        let params = Self::checked_values(&named)?;
        let start = params.clone();
        let opt = Engine::Closure(ClosureEngine { opt, name: name.to_string(), steps: 0, params, start });
        let (names, vars) = named.into_iter().unzip();
        Ok(VarOptimizer { names, vars, opt, base_rates: None, scale: 1.0, schedule: None, reported: 0 })
    }

    /// The closure-driven optimizer's name (`torch.lbfgs`) when it is one: then it steps with
    /// [`VarOptimizer::step_closure`], not [`VarOptimizer::step`].
    pub fn closure_optimizer(&self) -> Option<&str> {
        match &self.opt {
            Engine::Gradient(_) | Engine::Sharded(_) => None,
            Engine::Closure(c) => Some(&c.name),
        }
    }

    /// The optimizer of `cfg` over every variable of a `VarMap`, in the order of their names.
    pub fn for_varmap(varmap: &VarMap, cfg: &OptimizerConfig) -> Result<Self> {
        Self::for_vars(Self::named_vars(varmap), cfg)
    }

    /// The optimizer of `cfg` over named variables, kept in the given order (which a checkpoint
    /// of the optimizer state depends on; names must be distinct).
    pub fn for_vars(named: Vec<(String, Var)>, cfg: &OptimizerConfig) -> Result<Self> {
        let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::Param(format!("two parameters are named `{dup}`")));
        }
        let shapes: Vec<Vec<usize>> = named.iter().map(|(_, v)| v.dims().to_vec()).collect();
        let (lib, name) = resolve_optimizer(&cfg.optimizer)?;
        let mut opt = if is_closure_optimizer(lib, &name) {
            // (The others are checked where their transformation is built.)
            cfg.refuse_sparse_only()?;
            let full = format!("{lib}.{name}");
            let refuse = |what: &str| {
                Err(Error::Param(format!(
                    "{what}: `{full}` evaluates the objective itself (a closure-driven optimizer); it takes no {what}"
                )))
            };
            if !cfg.groups.is_empty() {
                return refuse("parameter groups");
            }
            if cfg.clip_norm.is_some() || cfg.clip_value.is_some() {
                return refuse("gradient clipping");
            }
            let mut h = match &cfg.hparams {
                Value::Null => Value::Object(Default::default()),
                Value::Object(_) => cfg.hparams.clone(),
                other => return Err(Error::Param(format!("optimizer arguments must be a JSON object, got {other}"))),
            };
            // The run's rate as the optimizer's own argument where the library requires one
            // (optax's `contrib.sophia(learning_rate, …)`); otherwise set after the build.
            let key = lr_key(lib);
            let missing_rate = |e: &descent_core::Error| {
                matches!(e, descent_core::Error::Field { context, message }
                    if message == "missing required argument" && context.ends_with(&format!("`{key}`")))
            };
            let mut closure = match (build_closure_optimizer(lib, &name, &h, &shapes), cfg.lr) {
                (Err(e), Some(lr)) if missing_rate(&e) => {
                    h[key] = serde_json::json!(lr);
                    build_closure_optimizer(lib, &name, &h, &shapes)?
                }
                (built, _) => built?,
            };
            // SAM's base may carry its own rate: the same setting too.
            let base = descent_core::closure::sam_base_lr(lib, &name, &cfg.hparams).map(Value::from);
            if let Some(lr) = cfg.lr {
                rate_given_once(&full, lr, key, cfg.hparams.get(key).filter(|v| !v.is_null()).or(base.as_ref()))?;
            }
            if let Some(lr) = cfg.lr {
                // As `param_group["lr"] = lr`: every rate the optimizer holds (SAM's are its base's).
                closure.set_learning_rate(lr).map_err(|e| Error::Param(format!("`{full}`: {e}")))?;
            }
            Self::with_closure_optimizer(named, closure, &full)?
        } else {
            Self::new(named, cfg.transform(&names, &shapes)?)?
        };
        // The rates a multiplier scales; an optimizer without a settable rate (torch Rprop) or
        // whose rate is a schedule already has none.
        let rates: Option<Vec<f64>> = opt.opt.learning_rates().into_iter().collect();
        opt.base_rates = rates.filter(|r| !r.is_empty());
        if cfg.schedule.is_some() && opt.base_rates.is_none() {
            return Err(Error::Param(format!(
                "`{}` has no constant learning rate a schedule can scale (torch Rprop has none; a schedule given as its rate already sets it)",
                cfg.optimizer
            )));
        }
        opt.schedule = cfg.schedule.clone();
        opt.reported = own_rate_index(&names, &cfg.groups, opt.opt.learning_rates().len());
        match &mut opt.opt {
            Engine::Gradient(o) => o.set_non_finite(cfg.non_finite),
            _ if cfg.non_finite == NonFinite::Skip => {
                return Err(Error::Param(format!(
                    "non_finite Skip: `{}` is not a gradient optimizer on one process, whose steps can be skipped",
                    cfg.optimizer
                )))
            }
            _ => {}
        }
        Ok(opt)
    }

    /// Runs `evaluate` with the variables holding the weights to evaluate where the optimizer keeps
    /// them apart from the ones it steps — schedule-free's average `x` (pytorch_optimizer's
    /// `optimizer.eval()`, optax's `schedule_free_eval_params`), Lookahead's slow weights — and
    /// puts the training weights back exactly afterwards, also when `evaluate` fails. With any
    /// other optimizer, `evaluate` runs on the variables as they are.
    pub fn with_eval_weights<T>(&mut self, evaluate: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some((train, eval)) = self.eval_values()? else { return evaluate() };
        self.set_values(eval)?;
        let out = evaluate();
        self.set_values(train)?;
        out
    }

    /// Moves the variables to the weights the optimizer evaluates, where it keeps them apart from
    /// those it steps (as [`VarOptimizer::with_eval_weights`], for good: a run's model as its
    /// evaluations saw it); returns whether they moved. The optimizer is not to be stepped after.
    pub fn apply_eval_weights(&mut self) -> Result<bool> {
        let Some((_, eval)) = self.eval_values()? else { return Ok(false) };
        self.set_values(eval)?;
        Ok(true)
    }

    /// Whether the optimizer evaluates other weights than those it steps (schedule-free, Lookahead):
    /// [`VarOptimizer::with_eval_weights`] swaps weights in for evaluations.
    pub fn evaluates_other_weights(&self) -> Result<bool> {
        Ok(self.eval_values()?.is_some())
    }

    /// The variables' values and the weights to evaluate, where the optimizer keeps those apart.
    #[allow(clippy::type_complexity)]
    fn eval_values(&self) -> Result<Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>> {
        // A sharded optimizer evaluates the stepped weights (others are refused when built).
        let Engine::Gradient(opt) = &self.opt else { return Ok(None) };
        let train: Vec<Vec<f32>> = self
            .vars
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        Ok(opt.eval_params(&train)?.map(|eval| (train, eval)))
    }

    fn set_values(&self, values: Vec<Vec<f32>>) -> Result<()> {
        for (v, w) in self.vars.iter().zip(values) {
            v.set(&Tensor::from_vec(w, v.dims(), v.device())?)?;
        }
        Ok(())
    }

    /// The named variables, in optimizer order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.names.iter().cloned().zip(self.vars.iter().cloned()).collect()
    }

    /// Optimizer steps taken (steps skipped for non-finite gradients not counted).
    pub fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// The optimizer's whole state, as a checkpoint stores it: with the learning rates in force,
    /// and a multiplier set by [`VarOptimizer::set_lr_scale`] other than 1.
    pub fn state_dict(&mut self) -> Result<StateDict> {
        let mut dict = match &mut self.opt {
            Engine::Gradient(o) => o.state_dict()?,
            Engine::Closure(c) => {
                let mut dict = c.opt.state_dict()?;
                dict.counters.insert(STEPS_KEY.into(), c.steps);
                dict
            }
            Engine::Sharded(s) => Self::gathered_state(s)?,
        };
        // A config's schedule sets the multiplier before each step: only one set by hand is kept.
        if self.schedule.is_none() && self.scale != 1.0 {
            dict.scalars.insert(SCALE_KEY.into(), self.scale);
        }
        Ok(dict)
    }

    /// Restores a state saved by [`VarOptimizer::state_dict`], its learning rates and multiplier
    /// included; refuses a mismatched one whole.
    pub fn load_state_dict(&mut self, dict: &StateDict) -> Result<()> {
        let scale = dict.scalars.get(SCALE_KEY).copied();
        // A state saved before the rates were saved with it (no `optimizer.lr.K`) leaves the
        // rates, and so the multiplier, as they are.
        let with_rates = dict.scalars.keys().any(|k| k.starts_with("optimizer.lr."));
        if let Some(x) = scale {
            if !x.is_finite() || x < 0.0 || !self.has_scalable_lr() {
                return Err(descent_core::Error::State(format!(
                    "`{SCALE_KEY}` = {x}: a finite, non-negative multiplier, of an optimizer with learning rates \
                     and no schedule"
                ))
                .into());
            }
            let mut inner = dict.clone();
            inner.scalars.remove(SCALE_KEY);
            self.load_engine_state(&inner)?;
            self.scale = x;
            return Ok(());
        }
        self.load_engine_state(dict)?;
        if with_rates {
            self.scale = 1.0;
        }
        Ok(())
    }

    fn load_engine_state(&mut self, dict: &StateDict) -> Result<()> {
        match &mut self.opt {
            Engine::Gradient(o) => Ok(o.load_state_dict(dict)?),
            Engine::Closure(c) => {
                let mut inner = dict.clone();
                let steps = inner.counters.remove(STEPS_KEY).ok_or_else(|| {
                    descent_core::Error::State(format!("missing counter `{STEPS_KEY}` (the state of `{}`)", c.name))
                })?;
                c.opt.load_state_dict(&inner)?;
                c.steps = steps;
                Ok(())
            }
            Engine::Sharded(s) => {
                let mine = Self::shard_state(s, dict)?;
                Ok(s.opt.load_state_dict(&mine)?)
            }
        }
    }

    /// Bytes of optimizer state as stored (quantized buffers at their packed size).
    pub fn stored_state_bytes(&mut self) -> usize {
        match &mut self.opt {
            Engine::Gradient(o) => o.stored_state_bytes(),
            Engine::Sharded(s) => s.opt.stored_state_bytes(),
            Engine::Closure(c) => {
                c.opt.state_dict().map(|d| d.buffers.values().map(|b| b.len() * 4).sum()).unwrap_or(0)
            }
        }
    }

    /// The learning-rate multiplier of the next step: the config's schedule at the current step
    /// when it has one, else the value last set (1 at first).
    pub fn lr_scale(&self) -> f64 {
        match &self.schedule {
            Some(s) => s.value(self.opt.steps()),
            None => self.scale,
        }
    }

    /// Sets the multiplier of every group's learning rate for the following steps (as a torch
    /// scheduler rewrites `lr`): for a schedule driven by your own loop. Refused when the
    /// config has a schedule (which sets it at each step) or the optimizer was built with
    /// [`VarOptimizer::new`] (which has no multiplier).
    pub fn set_lr_scale(&mut self, scale: f64) -> Result<()> {
        if !scale.is_finite() || scale < 0.0 {
            return Err(Error::Param(format!("learning-rate multiplier must be finite and non-negative, got {scale}")));
        }
        if self.schedule.is_some() {
            return Err(Error::Param(
                "the optimizer's config has a schedule, which sets the multiplier at each step".into(),
            ));
        }
        self.apply_scale(scale)
    }

    /// Whether a learning-rate multiplier can be set ([`Self::set_lr_scale`]): the optimizer holds
    /// its rates (not torch Rprop, not a rate given as a schedule) and its config has no schedule.
    pub fn has_scalable_lr(&self) -> bool {
        self.base_rates.is_some() && self.schedule.is_none()
    }

    /// The learning rate the next step uses, read back from the optimizer: with parameter groups,
    /// that of the parameters in no group (the run's own rate; the first group's when every
    /// parameter is in one); `None` when the optimizer holds no constant rate (torch Rprop, a rate
    /// given as a schedule).
    pub fn learning_rate(&mut self) -> Option<f64> {
        if self.schedule.is_some() {
            // The config's schedule sets the rate before each step: the next step's.
            let scale = self.lr_scale();
            return self.base_rates.as_ref().and_then(|b| b.get(self.reported)).map(|b| b * scale);
        }
        self.opt.learning_rates().into_iter().nth(self.reported).flatten()
    }

    /// Sets every learning rate to its base value times `scale` (the optimizer reacts as its
    /// library does to a new `lr`).
    fn apply_scale(&mut self, scale: f64) -> Result<()> {
        let Some(base) = &self.base_rates else {
            return Err(Error::Param(
                "this optimizer has no learning rate to scale: build it with VarOptimizer::for_vars (torch Rprop has none)"
                    .into(),
            ));
        };
        let lrs: Vec<f64> = base.iter().map(|b| b * scale).collect();
        self.opt.set_learning_rates(&lrs)?;
        self.scale = scale;
        Ok(())
    }

    /// The variables' weights and the optimizer's whole state now, as a [`Checkpoint`] (epoch 0,
    /// `steps` the optimizer's).
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        let vars = self.vars();
        let steps = self.steps();
        Checkpoint::capture_vars(&vars, self, 0, steps, 0)
    }

    /// Restores the variables' weights and the optimizer state from a checkpoint, after checking
    /// that it has exactly these parameters with their shapes and a fitting state; on a mismatch
    /// nothing changes.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let vars = self.vars();
        ck.apply_vars(&vars, self)
    }

    /// Writes weights and optimizer state to a checkpoint file (safetensors, with a checksum,
    /// atomically); tensors are named `model/<name>` and `optimizer/<state>`.
    pub fn save_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.checkpoint()?.save(path.as_ref())
    }

    /// Reads a checkpoint file, verifies it whole and restores it (see [`VarOptimizer::restore`]);
    /// returns it for its metadata.
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<Checkpoint> {
        let ck = Checkpoint::load(path.as_ref())?;
        self.restore(&ck)?;
        Ok(ck)
    }

    /// Every variable of a `VarMap`, sorted by name (its `HashMap` order is unspecified).
    pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
        let data = varmap.data().lock().expect("VarMap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The variables' names, in optimizer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The core gradient optimizer (state, step counts); `None` for a closure-driven one.
    pub fn core(&mut self) -> Option<&mut Optimizer> {
        match &mut self.opt {
            Engine::Gradient(o) => Some(o),
            Engine::Closure(_) | Engine::Sharded(_) => None,
        }
    }

    /// The core closure-driven optimizer; `None` for a gradient one.
    pub fn closure_core(&mut self) -> Option<&mut dyn ClosureOptimizer> {
        match &mut self.opt {
            Engine::Gradient(_) | Engine::Sharded(_) => None,
            Engine::Closure(c) => Some(c.opt.as_mut()),
        }
    }

    /// With a schedule in the config, sets the learning-rate multiplier to its value at the
    /// current step.
    fn apply_schedule(&mut self) -> Result<()> {
        if let Some(schedule) = self.schedule.clone() {
            let t = self.opt.steps();
            descent_core::schedule::check_steps(schedule.as_ref(), t + 1)?;
            let m = schedule.value(t);
            if !m.is_finite() {
                return Err(Error::Param(format!("the schedule's multiplier at step {t} is {m}")));
            }
            self.apply_scale(m)?;
        }
        Ok(())
    }

    /// One step that evaluates the objective through `closure` (torch's `optimizer.step(closure)`):
    /// the closure computes the loss of the model as its variables stand (the forward pass and
    /// the loss, without `backward`), and is called as often as the optimizer needs, the
    /// variables holding each point to evaluate; after the step they hold the new parameters.
    /// A gradient optimizer calls it once and steps on its gradients. Returns the loss at the
    /// parameters the step started from (for optax's L-BFGS, the value its line search found
    /// there). With a schedule in the config, sets the learning-rate multiplier first.
    pub fn step_closure(&mut self, closure: impl FnMut() -> Result<Tensor>) -> Result<f32> {
        self.step_closure_with(closure, |_| Ok(()))
    }

    /// [`VarOptimizer::step_closure`], with `observe` seeing every evaluation (its loss and
    /// gradients) after its backward pass: gradient norms to log, or a model's buffers to put back
    /// after an evaluation that is not the step's first. An error from either closure ends the
    /// step with that error, the variables back at the parameters the step started from (for a
    /// closure-driven optimizer; a gradient optimizer fails before it moves them).
    pub fn step_closure_with(
        &mut self,
        closure: impl FnMut() -> Result<Tensor>,
        observe: impl FnMut(&Evaluation) -> Result<()>,
    ) -> Result<f32> {
        if matches!(self.opt, Engine::Sharded(_)) {
            return Err(Self::sharded_refusal());
        }
        self.apply_schedule()?;
        let mut objective =
            VarObjective { names: &self.names, vars: &self.vars, closure, observe, evals: 0, error: None };
        match &mut self.opt {
            Engine::Gradient(o) => {
                let mut params = vec![];
                let mut grads: Vec<Vec<f32>> = self.vars.iter().map(|v| vec![0.0; v.elem_count()]).collect();
                for (v, n) in self.vars.iter().zip(&self.names) {
                    let mut p = vec![0.0; v.elem_count()];
                    read_values(v, n, &mut p)?;
                    params.push(p);
                }
                let loss = objective.eval(&params, &mut grads)?;
                // In place, as [`VarOptimizer::step`] (the variables already hold `params`).
                let g: Vec<Tensor> = grads
                    .into_iter()
                    .zip(&self.vars)
                    .map(|(g, v)| Tensor::from_vec(g, v.dims(), v.device()))
                    .collect::<candle_core::Result<_>>()?;
                let (vars, names) = (&self.vars, &self.names);
                drop(objective);
                Self::step_grads(vars, names, o, StepGrads::Tensors(g))?;
                Ok(loss)
            }
            Engine::Closure(c) => {
                for ((v, n), (p, s)) in self.vars.iter().zip(&self.names).zip(c.params.iter_mut().zip(&mut c.start)) {
                    read_values(v, n, p)?;
                    s.copy_from_slice(p);
                }
                let result = c.opt.step(&mut c.params, &mut objective);
                let kept = objective.error.take();
                drop(objective);
                let (values, outcome) = match (result, kept) {
                    (Ok(loss), _) => (&c.params, Ok(loss)),
                    (Err(_), Some(e)) => (&c.start, Err(e)),
                    (Err(e), None) => (&c.start, Err(e.into())),
                };
                for ((v, n), p) in self.vars.iter().zip(&self.names).zip(values) {
                    v.as_tensor().inplace_op1(&WriteValues { values: p, at: None, name: n })?;
                }
                let loss = outcome?;
                c.steps += 1;
                Ok(loss)
            }
            Engine::Sharded(_) => unreachable!("refused above"),
        }
    }

    /// One step from the gradients of a backward pass. A variable without gradient (unused in the
    /// loss) gets a zero gradient, as `jax.grad` gives optax; torch's optimizers skip a parameter
    /// whose `grad` is `None` instead (no state update, no weight decay), so under momentum or
    /// decoupled weight decay such a variable moves here and not in torch: leave it out of the
    /// optimizer's variables to keep it still.
    ///
    /// With a schedule in the config, sets the learning-rate multiplier to its value at the
    /// current step first. Returns false when the step was skipped (non-finite gradients under
    /// a skipping policy).
    pub fn step(&mut self, grads: &GradStore) -> Result<bool> {
        if let Engine::Closure(c) = &self.opt {
            return Err(Error::Param(format!(
                "`{}` evaluates the objective itself: step it with VarOptimizer::step_closure, not gradients",
                c.name
            )));
        }
        if matches!(self.opt, Engine::Sharded(_)) {
            return Err(Self::sharded_refusal());
        }
        self.apply_schedule()?;
        if self.vars.is_empty() {
            return Ok(true);
        }
        let mut gs = Vec::with_capacity(self.vars.len());
        for (n, v) in self.names.iter().zip(&self.vars) {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => g.contiguous()?,
                None => v.as_tensor().zeros_like()?,
            };
            if g.dims() != v.dims() {
                return Err(Error::Param(format!(
                    "gradient of `{n}` has shape {:?}, parameter {:?}",
                    g.dims(),
                    v.dims()
                )));
            }
            gs.push(g);
        }
        let Engine::Gradient(opt) = &mut self.opt else { unreachable!("closure optimizers returned above") };
        Self::step_grads(&self.vars, &self.names, opt, StepGrads::Tensors(gs))
    }

    /// The gradient optimizer's step on the variables' storage in place (nested in-place ops, see
    /// the module's notes), with one contiguous gradient tensor per variable.
    fn step_grads(vars: &[Var], names: &[String], opt: &mut Optimizer, grads: StepGrads) -> Result<bool> {
        Self::step_pieces(vars, names, opt, grads, None)
    }

    /// [`VarOptimizer::step_grads`] on the `pieces` of the variables (each in the variable's own
    /// indices; empty for a variable the optimizer does not step), the variables' other values
    /// untouched; on the whole variables when `None`.
    fn step_pieces(
        vars: &[Var],
        names: &[String],
        opt: &mut Optimizer,
        grads: StepGrads,
        pieces: Option<&[std::ops::Range<usize>]>,
    ) -> Result<bool> {
        if vars.is_empty() {
            return Ok(true);
        }
        let first = match &grads {
            StepGrads::Tensors(gs) => Some(gs[0].clone()),
            StepGrads::Flat(_) => None,
        };
        let run = std::cell::RefCell::new(Run {
            vars,
            names,
            grads,
            slots: Vec::with_capacity(vars.len()),
            pieces,
            opt,
            result: None,
        });
        let level = Level { k: 0, run: &run };
        match first {
            Some(g0) => vars[0].as_tensor().inplace_op2(&g0, &level)?,
            None => vars[0].as_tensor().inplace_op1(&level)?,
        }
        let result = run.borrow_mut().result.take();
        Ok(result.ok_or_else(|| Error::Param("optimizer step did not run".into()))??)
    }

    fn sharded_refusal() -> Error {
        Error::Param(
            "the optimizer is sharded across ranks: step it with VarOptimizer::step_shard on every rank".into(),
        )
    }

    /// The global L2 norm of the variables' gradients (before any clipping), accumulated in f64
    /// over eight lanes (one serial chain of f64 adds cost a fifth of a small model's step).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0f64;
        for (n, v) in self.names.iter().zip(&self.vars) {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            // The gradients `step` would take: of the variable's shape, f32.
            if g.dims() != v.dims() || g.dtype() != DType::F32 {
                return Err(Error::Param(format!(
                    "gradient of `{n}`: {:?} {:?}, the parameter is f32 {:?}",
                    g.dtype(),
                    g.dims(),
                    v.dims()
                )));
            }
            let (storage, layout) = g.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(s)), Some((a, b))) => {
                    sum += descent_core::transforms::sum_sq(&s[a..b]);
                }
                _ => {
                    drop(storage);
                    sum += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                }
            }
        }
        Ok(sum.sqrt())
    }

    /// The number of parameter values: the length of the flat parameter space (every variable
    /// end to end in optimizer order) of [`VarOptimizer::accumulate_grads`] and
    /// [`VarOptimizer::step_flat`].
    pub fn flat_len(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Adds `scale` times the variables' gradients of a backward pass to `flat` (the flat
    /// parameter space; a variable without gradient adds nothing): gradient accumulation over
    /// micro-batches, each weighted by its share of the step's samples.
    pub fn accumulate_grads(&self, grads: &GradStore, scale: f32, flat: &mut [f32]) -> Result<()> {
        self.flat_grads(grads, scale, flat, Into::Add)
    }

    /// Writes `scale` times the variables' gradients of a backward pass into `flat` (zeros for a
    /// variable without gradient): the first micro-batch of a step, which
    /// [`VarOptimizer::accumulate_grads`] would add to zeros.
    pub fn write_grads(&self, grads: &GradStore, scale: f32, flat: &mut [f32]) -> Result<()> {
        self.flat_grads(grads, scale, flat, Into::Write)
    }

    fn flat_grads(&self, grads: &GradStore, scale: f32, flat: &mut [f32], into: Into) -> Result<()> {
        if flat.len() < self.flat_len() {
            return Err(Error::Param(format!(
                "{} flat gradients for {} parameter values",
                flat.len(),
                self.flat_len()
            )));
        }
        let mut at = 0;
        for (n, v) in self.names.iter().zip(&self.vars) {
            let len = v.elem_count();
            let dst = &mut flat[at..at + len];
            at += len;
            let Some(g) = grads.get(v.as_tensor()) else {
                if into == Into::Write {
                    dst.fill(0.0);
                }
                continue;
            };
            if g.dims() != v.dims() {
                return Err(Error::Param(format!(
                    "gradient of `{n}` has shape {:?}, parameter {:?}",
                    g.dims(),
                    v.dims()
                )));
            }
            let g = g.contiguous()?;
            let (storage, layout) = g.storage_and_layout();
            let src = storage_f32s(&storage, layout, n)?;
            match into {
                Into::Add => dst.iter_mut().zip(src).for_each(|(d, s)| *d += scale * s),
                Into::Write => dst.iter_mut().zip(src).for_each(|(d, s)| *d = scale * s),
            }
        }
        Ok(())
    }

    /// One step from gradients in the flat parameter space ([`VarOptimizer::step`] otherwise):
    /// the accumulated, all-reduced gradients of a data-parallel step. Values past
    /// [`VarOptimizer::flat_len`] are ignored.
    pub fn step_flat(&mut self, flat: &[f32]) -> Result<bool> {
        if let Engine::Closure(c) = &self.opt {
            return Err(Error::Param(format!(
                "`{}` evaluates the objective itself: step it with VarOptimizer::step_closure, not gradients",
                c.name
            )));
        }
        if matches!(self.opt, Engine::Sharded(_)) {
            return Err(Self::sharded_refusal());
        }
        if flat.len() < self.flat_len() {
            return Err(Error::Param(format!(
                "{} flat gradients for {} parameter values",
                flat.len(),
                self.flat_len()
            )));
        }
        self.apply_schedule()?;
        if self.vars.is_empty() {
            return Ok(true);
        }
        // Read in place: each variable's gradient is its range of `flat`.
        let Engine::Gradient(opt) = &mut self.opt else { unreachable!("closure optimizers returned above") };
        Self::step_grads(&self.vars, &self.names, opt, StepGrads::Flat(flat))
    }

    /// The variables' values, end to end in optimizer order (the flat parameter space).
    pub fn read_flat(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.flat_len()];
        let mut at = 0;
        for (v, n) in self.vars.iter().zip(&self.names) {
            let len = v.elem_count();
            read_values(v, n, &mut out[at..at + len])?;
            at += len;
        }
        Ok(out)
    }

    /// Writes values in the flat parameter space into the variables, in place.
    pub fn write_flat(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.flat_len() {
            return Err(Error::Param(format!("{} values for {} parameter values", values.len(), self.flat_len())));
        }
        let mut at = 0;
        for (v, n) in self.vars.iter().zip(&self.names) {
            let len = v.elem_count();
            v.as_tensor().inplace_op1(&WriteValues { values: &values[at..at + len], at: None, name: n })?;
            at += len;
        }
        Ok(())
    }

    /// `loss.backward()` then [`VarOptimizer::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<bool> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use descent_core::spec::build_optimizer;
    use serde_json::json;

    /// With parameter groups the run reports its own rate, that of the parameters in no group
    /// (not the first group's), scaled by the schedule; the first group's when every parameter is
    /// in a group.
    #[test]
    fn the_reported_rate_is_the_runs_own_with_groups() {
        let var = |n: usize| Var::from_vec(vec![0.5f32; n], n, &Device::Cpu).unwrap();
        let named = || vec![("fc.weight".to_string(), var(6)), ("fc.bias".to_string(), var(2))];
        for optimizer in ["adamw", "sgd"] {
            let cfg = |groups: Vec<(String, Value)>, schedule: Option<Arc<dyn Schedule>>| OptimizerConfig {
                optimizer: optimizer.into(),
                lr: Some(0.01),
                groups,
                schedule,
                ..Default::default()
            };
            let bias = || vec![("bias".to_string(), json!({"lr": 0.5}))];
            let mut o = VarOptimizer::for_vars(named(), &cfg(bias(), None)).unwrap();
            assert_eq!(o.learning_rate(), Some(0.01), "{optimizer}");
            let half: Arc<dyn Schedule> = Arc::from(descent_core::schedule::constant(0.5));
            let mut o = VarOptimizer::for_vars(named(), &cfg(bias(), Some(half))).unwrap();
            assert_eq!(o.learning_rate(), Some(0.005), "{optimizer}");
            let all = vec![("bias".to_string(), json!({"lr": 0.5})), ("weight".to_string(), json!({"lr": 0.2}))];
            let mut o = VarOptimizer::for_vars(named(), &cfg(all, None)).unwrap();
            assert_eq!(o.learning_rate(), Some(0.5), "{optimizer}");
        }
    }

    /// The same optimizer on candle variables and on plain buffers gives the same numbers, bit for
    /// bit, and the variables are updated in place (same storage).
    #[test]
    fn candle_step_equals_core_step() {
        let dev = Device::Cpu;
        let shapes = vec![vec![3, 4], vec![4]];
        let init: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s: &Vec<usize>| (0..s.iter().product::<usize>()).map(|i| (i as f32 * 0.7).sin()).collect())
            .collect();
        let vars: Vec<(String, Var)> = init
            .iter()
            .zip(&shapes)
            .enumerate()
            .map(|(i, (v, s))| {
                (format!("p{i}"), Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), &dev).unwrap()).unwrap())
            })
            .collect();
        let h = json!({"lr": 0.05, "weight_decay": 0.1});
        let mut vo =
            VarOptimizer::new(vars.clone(), build_optimizer("torch", "adamw", &h, None, &shapes).unwrap()).unwrap();
        let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let mut core =
            Optimizer::new(build_optimizer("torch", "adamw", &h, None, &shapes).unwrap(), shapes.clone(), &views)
                .unwrap();
        let mut plain = init.clone();
        for step in 0..3 {
            // loss = Σ w ⊙ p² with fixed weights: gradient 2 w ⊙ p.
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            let mut grads = vec![];
            for (k, (_, v)) in vars.iter().enumerate() {
                let w: Vec<f32> =
                    (0..shapes[k].iter().product::<usize>()).map(|i| 1.0 + (i + step) as f32 * 0.1).collect();
                let wt = Tensor::from_vec(w.clone(), shapes[k].as_slice(), &dev).unwrap();
                loss = (loss + (v.as_tensor().sqr().unwrap() * &wt).unwrap().sum_all().unwrap()).unwrap();
                grads.push(plain[k].iter().zip(&w).map(|(p, w)| 2.0 * w * p).collect::<Vec<f32>>());
            }
            vo.backward_step(&loss).unwrap();
            core.step_vecs(&mut plain, &grads).unwrap();
        }
        for (k, (_, v)) in vars.iter().enumerate() {
            let got = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in got.iter().zip(&plain[k]) {
                assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
            }
        }
    }
}
