//! The [`Optimizer`]: drives a transformation over a fixed list of parameters (shapes checked,
//! update buffers owned, steps counted), with its learning rates set live and its state saved and
//! restored as a [`StateDict`].

use crate::error::{Error, Result};
use crate::kernel::*;
use crate::learning_rate::LearningRate;
use crate::sparse::SparseRows;
use crate::state::{StateDict, StateVisitor};
use crate::transform::{check_init, check_sizes, numel, step_through_updates, Transform};

/// What to do with a step whose gradients hold NaN or infinite values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Pass them on, as torch and optax do.
    #[default]
    Propagate,
    /// Skip the whole step, leave parameters and state untouched, and count it (optax
    /// `apply_if_finite`).
    Skip,
}

/// Drives a transformation over a fixed list of parameters: checks shapes, owns the update buffers,
/// applies the updates, counts steps.
pub struct Optimizer {
    tx: Box<dyn Transform>,
    shapes: Vec<Vec<usize>>,
    updates: Vec<Vec<f32>>,
    steps: u64,
    skipped: u64,
    non_finite: NonFinite,
}

impl Optimizer {
    /// Sets the learning rate of every part of the optimizer that has one (torch's
    /// `param_group["lr"] = lr`, optax's `inject_hyperparams`): from the next step on, the rate is
    /// `lr`, replacing a constant or a schedule. Each optimizer reacts as its library does: Adam's
    /// moments are not rescaled, torch ASGD's next `eta` follows the new rate, torch Rprop (whose
    /// `lr` only sets the initial step sizes) has none to set. An error when no part has a
    /// learning rate.
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid(format!("Invalid learning rate: {lr}")));
        }
        let mut found = 0;
        self.tx.visit_learning_rates(&mut |r| {
            *r = LearningRate::Constant(lr);
            found += 1;
        });
        if found == 0 {
            return Err(Error::Invalid("this optimizer has no learning rate to set".into()));
        }
        Ok(())
    }

    /// Every learning rate of the optimizer in a fixed order (one per torch param group or
    /// partition group, say): its value when constant, `None` for a schedule.
    pub fn learning_rates(&mut self) -> Vec<Option<f64>> {
        let mut rates = vec![];
        self.tx.visit_learning_rates(&mut |r| rates.push(r.constant()));
        rates
    }

    /// Sets each learning rate, in the order of [`Optimizer::learning_rates`] (a scheduler that
    /// scales each group's base rate, as torch's `LRScheduler` does). `lrs` must have one value
    /// per rate.
    pub fn set_learning_rates(&mut self, lrs: &[f64]) -> Result<()> {
        let mut n = 0;
        self.tx.visit_learning_rates(&mut |_| n += 1);
        if lrs.len() != n {
            return Err(Error::Invalid(format!("{} learning rates given, the optimizer has {n}", lrs.len())));
        }
        if let Some(bad) = lrs.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(Error::Invalid(format!("Invalid learning rate: {bad}")));
        }
        let mut k = 0;
        self.tx.visit_learning_rates(&mut |r| {
            *r = LearningRate::Constant(lrs[k]);
            k += 1;
        });
        Ok(())
    }

    /// The learning rate in force, when it is one constant (after [`Optimizer::set_learning_rate`],
    /// or as built); `None` for a schedule, several different rates, or none.
    pub fn learning_rate(&mut self) -> Option<f64> {
        let mut rates = vec![];
        self.tx.visit_learning_rates(&mut |r| rates.push(r.constant()));
        let first = (*rates.first()?)?;
        rates.iter().all(|r| *r == Some(first)).then_some(first)
    }

    /// Builds the optimizer and initializes its state for these parameters.
    pub fn new(mut tx: Box<dyn Transform>, shapes: Vec<Vec<usize>>, params: &[&[f32]]) -> Result<Self> {
        check_init(&shapes, params)?;
        tx.init(&shapes, params)?;
        // Full-size update buffers only for transformations that need them (reductions, wrappers);
        // elementwise ones run fused through a block-sized scratch.
        Ok(Optimizer { tx, shapes, updates: vec![], steps: 0, skipped: 0, non_finite: NonFinite::Propagate })
    }

    /// Initializes the state again for these parameters: the optimizer is then as freshly built
    /// (optax's `init` called anew), its learning rates as they are now, its step counts at 0 —
    /// so a schedule given as a rate starts again from its step 0, as optax's count does (torch's
    /// `optimizer.state.clear()` leaves its scheduler where it was).
    pub fn reset(&mut self, params: &[&[f32]]) -> Result<()> {
        check_sizes("parameter", &self.shapes, params)?;
        (self.steps, self.skipped) = (0, 0);
        self.tx.init(&self.shapes, params)
    }

    /// Sets the policy for non-finite gradients of the steps to come.
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// Sets the policy for non-finite gradients.
    pub fn with_non_finite(mut self, policy: NonFinite) -> Self {
        self.non_finite = policy;
        self
    }

    /// Whether the step is elementwise: each element's update reads only that element of the
    /// gradients, parameters and state, and scalars of the step (counters, learning rates) that
    /// do not depend on them, with no reduction over a tensor or all of them (norms, trust
    /// ratios, factored or matrix statistics). Such a step gives the same values on any part of
    /// the parameters, cut on the kernels' block boundaries: what a sharded optimizer runs.
    pub fn is_elementwise(&mut self) -> bool {
        self.tx.as_elementwise().is_some_and(|e| !e.needs_prepare())
    }

    /// The parameter shapes this optimizer was built for.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// Steps taken (skipped steps not counted).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Steps skipped for non-finite gradients.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// One optimization step: parameters move by the transformed gradients. Returns `false` when
    /// the step was skipped for non-finite gradients.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<bool> {
        check_sizes("parameter", &self.shapes, params)?;
        check_sizes("gradient", &self.shapes, grads)?;
        if self.non_finite == NonFinite::Skip && grads.iter().any(|g| g.iter().any(|x| !x.is_finite())) {
            self.skipped += 1;
            return Ok(false);
        }
        if let Some(e) = self.tx.as_elementwise() {
            if e.needs_prepare() {
                e.prepare(grads, &params.iter().map(|p| &**p).collect::<Vec<_>>());
            }
            e.begin_step();
            fused_step(self.tx.elementwise().expect("elementwise form"), params, grads);
            self.steps += 1;
            return Ok(true);
        }
        if self.updates.is_empty() {
            self.updates = self.shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        }
        self.tx.step_buffers(params, grads, &mut self.updates)?;
        self.steps += 1;
        Ok(true)
    }

    /// One optimization step with sparse gradients: only the rows `rows` marks present hold
    /// gradient values (see [`crate::sparse`]). An optimizer that does not support sparse
    /// gradients refuses them before anything changes. Returns `false` when the step was skipped
    /// for non-finite gradients (in the present rows).
    pub fn step_sparse(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], rows: &SparseRows) -> Result<bool> {
        check_sizes("parameter", &self.shapes, params)?;
        check_sizes("gradient", &self.shapes, grads)?;
        rows.check(&self.shapes)?;
        if !self.tx.supports_sparse() {
            return Err(Error::Invalid(
                "this optimizer does not support sparse gradients (torch SparseAdam does)".into(),
            ));
        }
        if self.non_finite == NonFinite::Skip {
            let finite = (0..grads.len()).all(|i| {
                rows.ranges(i, &self.shapes[i]).into_iter().all(|r| grads[i][r].iter().all(|x| x.is_finite()))
            });
            if !finite {
                self.skipped += 1;
                return Ok(false);
            }
        }
        self.tx.step_sparse(params, grads, rows)?;
        self.steps += 1;
        Ok(true)
    }

    /// [`Optimizer::step_sparse`] on owned buffers.
    pub fn step_sparse_vecs(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], rows: &SparseRows) -> Result<bool> {
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
        let g: Vec<&[f32]> = grads.iter().map(|v| v.as_slice()).collect();
        self.step_sparse(&mut p, &g, rows)
    }

    /// The link-by-link path: the gradients copied into full-size update buffers, each
    /// transformation (or fused run of elementwise links) applied over whole buffers, then added
    /// to the parameters. The path of transformations that need whole tensors (reductions,
    /// wrappers); for elementwise ones, the reference their fused step is tested against. Does
    /// not count the step.
    pub fn step_unfused(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        check_sizes("parameter", &self.shapes, params)?;
        check_sizes("gradient", &self.shapes, grads)?;
        if self.updates.is_empty() {
            self.updates = self.shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        }
        step_through_updates(self.tx.as_mut(), params, grads, &mut self.updates)?;
        Ok(())
    }

    /// [`Optimizer::step`] on owned buffers.
    pub fn step_vecs(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<bool> {
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
        let g: Vec<&[f32]> = grads.iter().map(|v| v.as_slice()).collect();
        self.step(&mut p, &g)
    }

    /// The parameters to evaluate when they differ from the stepped ones `params`: Lookahead's
    /// slow weights, schedule-free's average `x` (optax `schedule_free_eval_params`,
    /// pytorch_optimizer's `optimizer.eval()`); `None` when `params` themselves are evaluated.
    /// An error when `params` are not the optimizer's (their number or sizes).
    pub fn eval_params(&self, params: &[Vec<f32>]) -> Result<Option<Vec<Vec<f32>>>> {
        check_sizes("parameter", &self.shapes, params)?;
        let views: Vec<&[f32]> = params.iter().map(|v| v.as_slice()).collect();
        Ok(self.tx.eval_params(&views))
    }

    /// Bytes of optimizer state as stored, from the visited buffers: `f32` buffers count 4 bytes
    /// an element, bfloat16 ones 2, quantized ones 1.
    pub fn stored_state_bytes(&mut self) -> usize {
        struct Count(usize);
        impl StateVisitor for Count {
            fn buffer(&mut self, _: &str, buf: &mut Vec<f32>) -> Result<()> {
                self.0 += buf.len() * 4;
                Ok(())
            }
            fn scalar(&mut self, _: &str, _: &mut f64) -> Result<()> {
                Ok(())
            }
            fn counter(&mut self, _: &str, _: &mut u64) -> Result<()> {
                Ok(())
            }
            fn quantized_buffer(&mut self, _: &str, buf: &mut Vec<f32>) -> Result<()> {
                self.0 += buf.len();
                Ok(())
            }
            fn bf16_buffer(&mut self, _: &str, buf: &mut Vec<f32>) -> Result<()> {
                self.0 += buf.len() * 2;
                Ok(())
            }
            fn push(&mut self, _: &str) {}
            fn pop(&mut self) {}
        }
        let mut c = Count(0);
        let _ = self.tx.visit_state(&mut c);
        c.0
    }

    /// Bytes of optimizer state (every buffer, not the parameters or scratch).
    pub fn state_bytes(&mut self) -> Result<usize> {
        let mut s = crate::state::Saver::default();
        self.tx.visit_state(&mut s)?;
        Ok(s.dict.buffers.values().map(|b| b.len() * std::mem::size_of::<f32>()).sum())
    }

    /// The whole state, for saving: every buffer and counter, and the learning rates in force
    /// (as torch's `state_dict` holds each param group's `lr`).
    pub fn state_dict(&mut self) -> Result<StateDict> {
        let mut s = crate::state::Saver::default();
        self.tx.visit_state(&mut s)?;
        s.dict.counters.insert("optimizer.steps".into(), self.steps);
        s.dict.counters.insert("optimizer.skipped".into(), self.skipped);
        crate::state::learning_rates::save(&self.learning_rates(), &mut s.dict);
        Ok(s.dict)
    }

    /// Restores a state saved by [`Optimizer::state_dict`], its learning rates included; refuses
    /// a mismatched one whole.
    pub fn load_state_dict(&mut self, dict: &StateDict) -> Result<()> {
        let mut inner = dict.clone();
        let steps = inner.counters.remove("optimizer.steps");
        let skipped = inner.counters.remove("optimizer.skipped");
        let (Some(steps), Some(skipped)) = (steps, skipped) else {
            return Err(Error::State("missing counters `optimizer.steps`/`optimizer.skipped`".into()));
        };
        let count = self.learning_rates().len();
        let rates = crate::state::learning_rates::take(&mut inner, count)?;
        crate::state::load_whole(&mut |v| self.tx.visit_state(v), &inner)?;
        crate::state::learning_rates::restore(|f| self.tx.visit_learning_rates(f), &rates);
        self.steps = steps;
        self.skipped = skipped;
        Ok(())
    }
}
