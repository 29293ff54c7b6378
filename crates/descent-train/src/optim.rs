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
//!         schedule: Some(Arc::new(descent_core::schedule::warmup_cosine_decay(0.0, 1.0, 10, 100, 0.0, 1.0))),
//!         ..Default::default()
//!     },
//! )?;
//! let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
//! let loss = fc.forward(&x)?.sqr()?.mean_all()?;
//! opt.step(&loss.backward()?)?;
//! assert_eq!(opt.steps(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::backprop::GradStore;
use std::path::Path;
use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use candle_nn::VarMap;
use descent_core::schedule::Schedule;
use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer};
use descent_core::transform::{Optimizer, Transform};
use descent_core::transforms::{Clip, ClipByGlobalNorm, Partition};
use serde_json::Value;

use crate::checkpoint::Checkpoint;

use crate::cpu::{f32_slice, storage_f32s};
use crate::error::{Error, Result};

/// An optimizer over a fixed list of named candle variables.
pub struct VarOptimizer {
    names: Vec<String>,
    vars: Vec<Var>,
    opt: Optimizer,
    /// The optimizer's learning rates as built (one per group), which a multiplier scales, for
    /// optimizers built from an [`OptimizerConfig`]; and the multiplier in force.
    base_rates: Option<Vec<f64>>,
    scale: f64,
    /// The multiplier by step that [`VarOptimizer::step`] sets before each step.
    schedule: Option<Arc<dyn Schedule>>,
}

/// How to optimize the parameters of a candle model of your own, for
/// [`VarOptimizer::for_varmap`] and [`VarOptimizer::for_vars`]; build it as candle's
/// `ParamsAdamW`: `OptimizerConfig { lr: Some(1e-3), ..Default::default() }`.
#[derive(Clone)]
pub struct OptimizerConfig {
    /// Optimizer by descent name: `adamw`, `sgd`, `torch.adam`, `optax.lion`, `lamb`, … (a bare
    /// name is torch's when torch has it, else optax's). Default `adamw`.
    pub optimizer: String,
    /// The learning rate (the library's `lr` / `learning_rate`); `None` keeps the library's
    /// default.
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
            .finish()
    }
}

impl OptimizerConfig {
    /// The transformation of this config over parameters with these names and shapes: the
    /// clipping, the optimizer (one per group) and the learning-rate multiplier link last.
    fn transform(&self, names: &[String], shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
        let (lib, name) = resolve_optimizer(&self.optimizer)?;
        let mut h = match &self.hparams {
            Value::Null => Value::Object(Default::default()),
            Value::Object(_) => self.hparams.clone(),
            other => return Err(Error::Param(format!("optimizer arguments must be a JSON object, got {other}"))),
        };
        if let Some(lr) = self.lr {
            h[lr_key(lib)] = serde_json::json!(lr);
        }
        let tx = if self.groups.is_empty() {
            build_optimizer(lib, &name, &h, None, shapes)?
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
            links.push(Box::new(ClipByGlobalNorm::new(n)));
        }
        links.push(tx);
        Ok(descent_core::chain(links))
    }
}

/// One level of the nested in-place ops: takes the write lock of variable `k`, records its slice,
/// and descends; the last level runs the step.
struct Level<'a> {
    k: usize,
    run: &'a std::cell::RefCell<Run<'a>>,
}

struct Run<'a> {
    vars: &'a [Var],
    names: &'a [String],
    grads: Vec<Tensor>,
    /// Raw (pointer, length) of each locked parameter storage, valid while its level is on the stack.
    slots: Vec<(*mut f32, usize)>,
    opt: &'a mut Optimizer,
    result: Option<descent_core::Result<bool>>,
}

impl candle_core::InplaceOp2 for Level<'_> {
    fn name(&self) -> &'static str {
        "descent-optimizer-step"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (vars, name) = {
            let r = self.run.borrow();
            (r.vars, r.names[self.k].clone())
        };
        let CpuStorage::F32(v) = s1 else { candle_core::bail!("{name}: descent optimizes f32 tensors") };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("{name}: parameter is not contiguous")
        };
        let _ = f32_slice(s2, l2, &name)?;
        self.run.borrow_mut().slots.push((v[start..end].as_mut_ptr(), end - start));
        if self.k + 1 < vars.len() {
            let next = Level { k: self.k + 1, run: self.run };
            // The gradient tensor only serves as the op's second operand (never read here).
            let g = self.run.borrow().grads[self.k + 1].clone();
            vars[self.k + 1].as_tensor().inplace_op2(&g, &next)?;
        } else {
            let mut r = self.run.borrow_mut();
            let grads = r.grads.clone();
            let guards: Vec<_> = grads.iter().map(|g| g.storage_and_layout()).collect();
            let mut gslices = Vec::with_capacity(guards.len());
            for (i, (s, l)) in guards.iter().enumerate() {
                gslices.push(storage_f32s(s, l, &r.names[i])?);
            }
            // SAFETY: every slot points into a storage whose write lock is held by an enclosing
            // level of this recursion, and the slots are distinct tensors.
            let mut params: Vec<&mut [f32]> =
                r.slots.iter().map(|&(p, n)| unsafe { std::slice::from_raw_parts_mut(p, n) }).collect();
            let res = r.opt.step(&mut params, &gslices);
            r.result = Some(res);
        }
        Ok(())
    }
}

impl VarOptimizer {
    /// Builds an optimizer for named variables (kept in the given order).
    pub fn new(named: Vec<(String, Var)>, tx: Box<dyn Transform>) -> Result<Self> {
        let mut shapes = vec![];
        let mut init = vec![];
        for (n, v) in &named {
            if v.dtype() != DType::F32 {
                return Err(Error::Param(format!("parameter `{n}` is {:?}; descent optimizes f32", v.dtype())));
            }
            if !matches!(v.device(), Device::Cpu) {
                return Err(Error::Param(format!("parameter `{n}` is not on the CPU")));
            }
            shapes.push(v.dims().to_vec());
            init.push(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
        let opt = Optimizer::new(tx, shapes, &views)?;
        let (names, vars) = named.into_iter().unzip();
        Ok(VarOptimizer { names, vars, opt, base_rates: None, scale: 1.0, schedule: None })
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
        let tx = cfg.transform(&names, &shapes)?;
        let mut opt = Self::new(named, tx)?;
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
        Ok(opt)
    }

    /// The named variables, in optimizer order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.names.iter().cloned().zip(self.vars.iter().cloned()).collect()
    }

    /// Optimizer steps taken (steps skipped for non-finite gradients not counted).
    pub fn steps(&self) -> u64 {
        self.opt.steps()
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

    /// Sets every learning rate to its base value times `scale` (the optimizer reacts as its
    /// library does to a new `lr`).
    /// The learning rate the next step uses, read back from the optimizer (torch's
    /// `param_groups[0]["lr"]`): the first group's when groups differ; `None` when the optimizer
    /// holds no constant rate (torch Rprop, a rate given as a schedule).
    pub fn learning_rate(&mut self) -> Option<f64> {
        if self.schedule.is_some() {
            // The config's schedule sets the rate before each step: the next step's.
            let scale = self.lr_scale();
            return self.base_rates.as_ref().and_then(|b| b.first()).map(|b| b * scale);
        }
        self.opt.learning_rates().into_iter().next().flatten()
    }

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
        let steps = self.opt.steps();
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

    /// The core optimizer (state, step counts).
    pub fn core(&mut self) -> &mut Optimizer {
        &mut self.opt
    }

    /// One step from the gradients of a backward pass. A variable without gradient (unused in the
    /// loss) gets a zero gradient, as torch skips nothing in its state either.
    ///
    /// With a schedule in the config, sets the learning-rate multiplier to its value at the
    /// current step first. Returns false when the step was skipped (non-finite gradients under
    /// a skipping policy).
    pub fn step(&mut self, grads: &GradStore) -> Result<bool> {
        if let Some(schedule) = self.schedule.clone() {
            let t = self.opt.steps();
            descent_core::schedule::check_steps(schedule.as_ref(), t + 1)?;
            let m = schedule.value(t);
            if !m.is_finite() {
                return Err(Error::Param(format!("the schedule's multiplier at step {t} is {m}")));
            }
            self.apply_scale(m)?;
        }
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
        let run = std::cell::RefCell::new(Run {
            vars: &self.vars,
            names: &self.names,
            grads: gs,
            slots: Vec::with_capacity(self.vars.len()),
            opt: &mut self.opt,
            result: None,
        });
        let first = Level { k: 0, run: &run };
        let g0 = run.borrow().grads[0].clone();
        self.vars[0].as_tensor().inplace_op2(&g0, &first)?;
        let result = run.borrow_mut().result.take();
        Ok(result.ok_or_else(|| Error::Param("optimizer step did not run".into()))??)
    }

    /// The global L2 norm of the variables' gradients (before any clipping), accumulated in f64
    /// over eight lanes (one serial chain of f64 adds cost a fifth of a small model's step).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0f64;
        for v in &self.vars {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
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
