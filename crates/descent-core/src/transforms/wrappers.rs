//! Transformations that wrap others: gradient accumulation, Lookahead, per-group partitions.

use crate::error::{Error, Result};
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

use super::zeros;

/// optax `MultiSteps`: accumulates the mean (or sum) of `every_k` gradients and applies the inner
/// optimizer once per `every_k` steps; the steps in between return zero updates.
pub struct MultiSteps {
    inner: Box<dyn Transform>,
    every_k: u64,
    use_grad_mean: bool,
    mini_step: u64,
    gradient_step: u64,
    acc_grads: Vec<Vec<f32>>,
}
impl MultiSteps {
    pub fn new(inner: Box<dyn Transform>, every_k: u64, use_grad_mean: bool) -> Result<Self> {
        if every_k == 0 {
            return Err(Error::Invalid("every_k_schedule must be at least 1".into()));
        }
        Ok(MultiSteps { inner, every_k, use_grad_mean, mini_step: 0, gradient_step: 0, acc_grads: vec![] })
    }
}
impl Transform for MultiSteps {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.acc_grads = zeros(shapes);
        self.mini_step = 0;
        self.gradient_step = 0;
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let n = self.mini_step as f32;
        for (acc, u) in self.acc_grads.iter_mut().zip(updates.iter()) {
            for (a, &g) in acc.iter_mut().zip(u) {
                *a = if self.use_grad_mean { *a + (g - *a) / (n + 1.0) } else { g + *a };
            }
        }
        let emit = self.mini_step == self.every_k - 1;
        if emit {
            for (u, acc) in updates.iter_mut().zip(self.acc_grads.iter_mut()) {
                u.copy_from_slice(acc);
                acc.iter_mut().for_each(|a| *a = 0.0);
            }
            self.inner.update(updates, params)?;
            self.gradient_step += 1;
        } else {
            updates.iter_mut().flatten().for_each(|x| *x = 0.0);
        }
        self.mini_step = (self.mini_step + 1) % self.every_k;
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "acc_grads", &mut self.acc_grads)?;
        v.counter("mini_step", &mut self.mini_step)?;
        v.counter("gradient_step", &mut self.gradient_step)?;
        v.push("inner");
        self.inner.visit_state(v)?;
        v.pop();
        Ok(())
    }
}

/// optax `lookahead` (Zhang et al. 2019): the inner ("fast") optimizer steps the parameters;
/// every `sync_period` steps the slow weights move `slow_step_size` of the way to the fast ones and
/// the fast weights are reset to them. The slow weights are what [`Transform::eval_params`] reports.
pub struct Lookahead {
    inner: Box<dyn Transform>,
    sync_period: u64,
    slow_step_size: f32,
    steps_since_sync: u64,
    slow: Vec<Vec<f32>>,
}
impl Lookahead {
    pub fn new(inner: Box<dyn Transform>, sync_period: u64, slow_step_size: f64) -> Result<Self> {
        if sync_period < 1 {
            return Err(Error::Invalid("Synchronization period must be >= 1.".into()));
        }
        Ok(Lookahead { inner, sync_period, slow_step_size: slow_step_size as f32, steps_since_sync: 0, slow: vec![] })
    }
}
impl Transform for Lookahead {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.slow = params.iter().map(|p| p.to_vec()).collect();
        self.steps_since_sync = 0;
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.inner.update(updates, params)?;
        let sync = self.steps_since_sync == self.sync_period - 1;
        if sync {
            let a = self.slow_step_size;
            for ((u, fast), slow) in updates.iter_mut().zip(params).zip(self.slow.iter_mut()) {
                for j in 0..u.len() {
                    let diff = fast[j] + u[j] - slow[j];
                    slow[j] += a * diff;
                    u[j] -= (1.0 - a) * diff;
                }
            }
        }
        self.steps_since_sync = (self.steps_since_sync + 1) % self.sync_period;
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "slow", &mut self.slow)?;
        v.counter("steps_since_sync", &mut self.steps_since_sync)?;
        v.push("fast");
        self.inner.visit_state(v)?;
        v.pop();
        Ok(())
    }
    fn eval_params(&self, _params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        Some(self.slow.clone())
    }
}

/// Different transformations for disjoint groups of parameters (torch `param_groups`, optax
/// `partition`). Every parameter belongs to exactly one group.
pub struct Partition {
    groups: Vec<(Vec<usize>, Box<dyn Transform>)>,
}
impl Partition {
    /// Groups of parameter indices with their transformation; checked against the parameter count
    /// at `init`.
    pub fn new(groups: Vec<(Vec<usize>, Box<dyn Transform>)>) -> Self {
        Partition { groups }
    }
}
impl Transform for Partition {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let mut seen = vec![false; shapes.len()];
        for (idx, _) in &self.groups {
            for &i in idx {
                if i >= shapes.len() {
                    return Err(Error::Shape(format!("group names parameter {i} but there are {}", shapes.len())));
                }
                if std::mem::replace(&mut seen[i], true) {
                    return Err(Error::Shape(format!("parameter {i} appears in more than one group")));
                }
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::Shape(format!("parameter {i} is in no group")));
        }
        for (idx, tx) in self.groups.iter_mut() {
            let sh: Vec<Vec<usize>> = idx.iter().map(|&i| shapes[i].clone()).collect();
            let ps: Vec<&[f32]> = idx.iter().map(|&i| params[i]).collect();
            tx.init(&sh, &ps)?;
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        for (idx, tx) in self.groups.iter_mut() {
            let mut sub: Vec<Vec<f32>> = idx.iter().map(|&i| std::mem::take(&mut updates[i])).collect();
            let ps: Vec<&[f32]> = idx.iter().map(|&i| params[i]).collect();
            let r = tx.update(&mut sub, &ps);
            for (&i, u) in idx.iter().zip(sub) {
                updates[i] = u;
            }
            r?;
        }
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        for (k, (_, tx)) in self.groups.iter_mut().enumerate() {
            v.push(&format!("group{k}"));
            tx.visit_state(v)?;
            v.pop();
        }
        Ok(())
    }
    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        let mut out: Option<Vec<Vec<f32>>> = None;
        for (idx, tx) in &self.groups {
            let ps: Vec<&[f32]> = idx.iter().map(|&i| params[i]).collect();
            if let Some(e) = tx.eval_params(&ps) {
                let o = out.get_or_insert_with(|| params.iter().map(|p| p.to_vec()).collect());
                for (&i, v) in idx.iter().zip(e) {
                    o[i] = v;
                }
            }
        }
        out
    }
}
