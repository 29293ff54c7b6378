//! Transformations that wrap others: gradient accumulation, Lookahead, `apply_if_finite`, and
//! per-parameter groups (partitions and masks).

use crate::error::{Error, Result};
use crate::kernel::{Elementwise, Fold, Head, Map};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};

use super::zeros;

/// `inner` for exactly `n` parameters: what a uniform mask of [`Partition::split`] leaves, whose
/// length is the only trace of the parameters it was written for. `init` refuses another count;
/// everything else is `inner`'s (its fused form included).
struct ForCount {
    n: usize,
    inner: Box<dyn Transform>,
}

impl Transform for ForCount {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        if shapes.len() != self.n {
            return Err(Error::Shape(format!(
                "the mask has {} entries, one per parameter, for {} parameters",
                self.n,
                shapes.len()
            )));
        }
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.inner.update(updates, params)
    }
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        self.inner.step_buffers(params, grads, updates)
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        self.inner.as_elementwise()
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        self.inner.elementwise()
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.inner.visit_state(v)
    }
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.inner.visit_learning_rates(f)
    }
    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        self.inner.eval_params(params)
    }
    fn supports_sparse(&self) -> bool {
        self.inner.supports_sparse()
    }
    fn step_sparse(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
        rows: &crate::sparse::SparseRows,
    ) -> Result<()> {
        self.inner.step_sparse(params, grads, rows)
    }
}

/// optax `MultiSteps`' `should_skip_update_fn`: which incoming gradients a step skips (no update,
/// no change of state).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SkipUpdate {
    /// Every gradient is accumulated (the default).
    #[default]
    Never,
    /// optax `skip_not_finite`: a gradient with any NaN or infinite entry.
    NotFinite,
    /// optax `skip_large_updates`: unless the sum of the squares of all entries is below the bound
    /// (so a NaN gradient is skipped too).
    LargeUpdates {
        /// The bound on the squared global norm of the gradient.
        max_squared_norm: f64,
    },
}
impl SkipUpdate {
    /// Whether a step with these updates is skipped.
    pub fn skips(&self, updates: &[Vec<f32>]) -> bool {
        match *self {
            SkipUpdate::Never => false,
            SkipUpdate::NotFinite => updates.iter().flatten().any(|x| !x.is_finite()),
            SkipUpdate::LargeUpdates { max_squared_norm } => {
                let views: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
                let sq = crate::kernel::global_sum_sq(&views);
                // Skipped unless below the bound: a NaN sum (no ordering) skips too.
                sq.partial_cmp(&max_squared_norm) != Some(std::cmp::Ordering::Less)
            }
        }
    }
}

/// optax `MultiSteps`: accumulates the mean (or sum) of `every_k` gradients and applies the inner
/// optimizer once per `every_k` steps; the steps in between return zero updates. A gradient that
/// the skip test refuses gives a zero update and changes no state.
pub struct MultiSteps {
    inner: Box<dyn Transform>,
    every_k: u64,
    use_grad_mean: bool,
    skip: SkipUpdate,
    mini_step: u64,
    gradient_step: u64,
    acc_grads: Vec<Vec<f32>>,
}
impl MultiSteps {
    /// A `MultiSteps` with these hyper-parameters (`inner`, `every_k`, `use_grad_mean`), as described above.
    pub fn new(inner: Box<dyn Transform>, every_k: u64, use_grad_mean: bool) -> Result<Self> {
        if every_k == 0 {
            return Err(Error::Invalid("every_k_schedule must be at least 1".into()));
        }
        Ok(MultiSteps {
            inner,
            every_k,
            use_grad_mean,
            skip: SkipUpdate::Never,
            mini_step: 0,
            gradient_step: 0,
            acc_grads: vec![],
        })
    }
    /// Skips the steps whose gradients `skip` refuses.
    pub fn skip_if(mut self, skip: SkipUpdate) -> Self {
        self.skip = skip;
        self
    }
}
impl Transform for MultiSteps {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.inner.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.acc_grads = zeros(shapes);
        self.mini_step = 0;
        self.gradient_step = 0;
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        if self.skip.skips(updates) {
            updates.iter_mut().flatten().for_each(|x| *x = 0.0);
            return Ok(());
        }
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

/// optax `apply_if_finite`: a step whose updates hold any NaN or infinity gives a zero update and
/// leaves the inner state untouched, unless more than `max_consecutive_errors` steps in a row
/// were refused, when it is applied anyway.
pub struct ApplyIfFinite {
    inner: Box<dyn Transform>,
    max_consecutive_errors: u64,
    notfinite_count: u64,
    last_finite: u64,
    total_notfinite: u64,
}
impl ApplyIfFinite {
    /// A `ApplyIfFinite` with these hyper-parameters (`inner`, `max_consecutive_errors`), as described above.
    pub fn new(inner: Box<dyn Transform>, max_consecutive_errors: u64) -> Self {
        ApplyIfFinite { inner, max_consecutive_errors, notfinite_count: 0, last_finite: 1, total_notfinite: 0 }
    }
}
impl Transform for ApplyIfFinite {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.inner.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.notfinite_count, self.last_finite, self.total_notfinite) = (0, 1, 0);
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let finite = updates.iter().flatten().all(|x| x.is_finite());
        if finite {
            self.notfinite_count = 0;
        } else {
            self.notfinite_count = self.notfinite_count.saturating_add(1);
            self.total_notfinite = self.total_notfinite.saturating_add(1);
        }
        self.last_finite = finite as u64;
        if finite || self.notfinite_count > self.max_consecutive_errors {
            self.inner.update(updates, params)
        } else {
            updates.iter_mut().flatten().for_each(|x| *x = 0.0);
            Ok(())
        }
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("notfinite_count", &mut self.notfinite_count)?;
        v.counter("last_finite", &mut self.last_finite)?;
        v.counter("total_notfinite", &mut self.total_notfinite)?;
        v.push("inner");
        self.inner.visit_state(v)?;
        v.pop();
        Ok(())
    }
}

/// optax `lookahead` (Zhang et al. 2019): the inner ("fast") optimizer steps the parameters;
/// every `sync_period` steps the slow weights move `slow_step_size` of the way to the fast ones and
/// the fast weights are reset to them. The slow weights are what [`Transform::eval_params`] reports.
/// With [`FastState::Reset`] (optax's `reset_state=True`) the fast optimizer's state is also
/// reset at each sync, to its `init` on the parameters before that step.
pub struct Lookahead {
    inner: Box<dyn Transform>,
    sync_period: u64,
    slow_step_size: f32,
    fast_state: FastState,
    steps_since_sync: u64,
    slow: Vec<Vec<f32>>,
    shapes: Vec<Vec<usize>>,
}

/// What [`Lookahead`] does to the fast optimizer's state at a sync (optax's `reset_state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FastState {
    /// The state carries on (optax's default, `reset_state=False`).
    #[default]
    Keep,
    /// The state is set to the fast optimizer's `init` on the parameters before the sync's step,
    /// as optax's `(1 − sync)·state + sync·init`: an entry that was not finite becomes NaN. (optax
    /// adds `0 × init` on the steps between syncs too, NaN where a fresh `init` is not finite —
    /// one that copies parameters that are not; descent leaves the state alone there.)
    Reset,
}

impl Lookahead {
    /// A `Lookahead` with these hyper-parameters (`inner`, `sync_period`, `slow_step_size`), as described above.
    pub fn new(inner: Box<dyn Transform>, sync_period: u64, slow_step_size: f64) -> Result<Self> {
        if sync_period < 1 {
            return Err(Error::Invalid("Synchronization period must be >= 1.".into()));
        }
        Ok(Lookahead {
            inner,
            sync_period,
            slow_step_size: slow_step_size as f32,
            fast_state: FastState::Keep,
            steps_since_sync: 0,
            slow: vec![],
            shapes: vec![],
        })
    }
    /// This `Lookahead` with the fast optimizer's state kept or reset at each sync.
    pub fn fast_state(mut self, fast_state: FastState) -> Self {
        self.fast_state = fast_state;
        self
    }

    /// optax's `(1 − sync)·state + sync·init` at a sync: the fast optimizer initialized again on
    /// `params` (the parameters before this step), each entry plus `0 ×` its value before.
    fn reset_fast_state(&mut self, params: &[&[f32]]) -> Result<()> {
        let mut before = crate::state::Saver::default();
        self.inner.visit_state(&mut before)?;
        self.inner.init(&self.shapes, params)?;
        self.inner.visit_state(&mut crate::state::AddZeroTimes::new(before.dict))
    }
}

impl Transform for Lookahead {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.inner.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.slow = params.iter().map(|p| p.to_vec()).collect();
        self.shapes = shapes.to_vec();
        self.steps_since_sync = 0;
        self.inner.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.inner.update(updates, params)?;
        let sync = self.steps_since_sync == self.sync_period - 1;
        if sync && self.fast_state == FastState::Reset {
            self.reset_fast_state(params)?;
        }
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

/// Different transformations for disjoint groups of parameters: torch `param_groups`, and the one
/// mechanism behind optax's per-parameter masks and labels (`partition` / `multi_transform`,
/// `masked`, `freeze`, `selective_transform`, the `mask` / `weight_decay_mask` arguments of the
/// aliases). Every parameter belongs to exactly one group; a group's transformation sees only its
/// parameters and keeps state for them alone. When every group is elementwise, so is the
/// partition, and a chain fuses it like any other elementwise link.
pub struct Partition {
    groups: Vec<(Vec<usize>, Box<dyn Transform>)>,
    /// `(group, index within the group)` of each parameter, set by `init`.
    slot: Vec<(usize, usize)>,
    /// The group of a parameter (by its index and shape), for groups chosen at `init`
    /// ([`Partition::by_param`]).
    group_of: Option<GroupOf>,
    /// The group that takes, at `init`, every parameter no other group names
    /// ([`Partition::torch_groups`]).
    unlisted: Option<usize>,
}

/// The group of parameter `i` of the parameters of these shapes.
type GroupOf = Box<dyn Fn(usize, &Shapes) -> Result<usize> + Send + Sync>;
impl Partition {
    /// Groups of parameter indices with their transformation; checked against the parameter count
    /// at `init`.
    pub fn new(groups: Vec<(Vec<usize>, Box<dyn Transform>)>) -> Self {
        Partition { groups, slot: vec![], group_of: None, unlisted: None }
    }

    /// torch's `param_groups`: the groups as [`Partition::new`], and a parameter that no group
    /// names is never stepped, as torch leaves a tensor outside its optimizer's groups (a group of
    /// [`super::Unstepped`] takes them at `init`).
    pub fn torch_groups(mut groups: Vec<(Vec<usize>, Box<dyn Transform>)>) -> Self {
        groups.push((vec![], Box::new(super::Unstepped)));
        let unlisted = Some(groups.len() - 1);
        Partition { groups, slot: vec![], group_of: None, unlisted }
    }

    /// Groups chosen at `init`: parameter `i` goes to `transforms[group_of(i, shapes)]`, chosen
    /// from its index and all the parameters' shapes, and an error of `group_of` fails `init`
    /// (optax `contrib.muon` sends the matrices, or those with dimension numbers, to Muon and the
    /// other parameters to Adam). Every transformation keeps its state, with or without
    /// parameters.
    pub fn by_param(
        transforms: Vec<Box<dyn Transform>>,
        group_of: impl Fn(usize, &Shapes) -> Result<usize> + Send + Sync + 'static,
    ) -> Self {
        Partition {
            groups: transforms.into_iter().map(|tx| (vec![], tx)).collect(),
            slot: vec![],
            group_of: Some(Box::new(group_of)),
            unlisted: None,
        }
    }

    /// One transformation per label, each parameter updated by the transformation of its label
    /// (optax `partition`). A label without a transformation is an error naming it; a
    /// transformation whose label no parameter carries is dropped (it would see no parameters).
    pub fn labelled(transforms: Vec<(String, Box<dyn Transform>)>, labels: &[String]) -> Result<Self> {
        if let Some(l) = labels.iter().find(|l| !transforms.iter().any(|(k, _)| k == *l)) {
            let mut keys: Vec<&str> = transforms.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort();
            return Err(Error::Invalid(format!(
                "parameter label `{l}` has no transformation (transformations: {})",
                keys.join(", ")
            )));
        }
        let groups = transforms
            .into_iter()
            .filter_map(|(k, tx)| {
                let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == k).collect();
                (!idx.is_empty()).then_some((idx, tx))
            })
            .collect();
        Ok(Partition::new(groups))
    }

    /// `inner` for the parameters whose mask entry is `true`, the updates of the others passed
    /// through unchanged (optax `masked`). An all-`true` mask gives `inner` itself (checked at
    /// `init` to have one entry per parameter).
    pub fn masked(inner: Box<dyn Transform>, mask: &[bool]) -> Box<dyn Transform> {
        Self::split(mask, inner, Box::new(super::Identity))
    }

    /// `on` for the parameters whose mask entry is `true`, `off` for the others; a side that no
    /// parameter takes is dropped. The mask has one entry per parameter: `init` refuses other
    /// parameter counts, a uniform mask's too.
    pub fn split(mask: &[bool], on: Box<dyn Transform>, off: Box<dyn Transform>) -> Box<dyn Transform> {
        let yes: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
        let no: Vec<usize> = (0..mask.len()).filter(|&i| !mask[i]).collect();
        if no.is_empty() {
            Box::new(ForCount { n: mask.len(), inner: on })
        } else if yes.is_empty() {
            Box::new(ForCount { n: mask.len(), inner: off })
        } else {
            Box::new(Partition::new(vec![(yes, on), (no, off)]))
        }
    }

    fn fusable(&self) -> bool {
        self.groups.iter().all(|(_, tx)| tx.elementwise().is_some())
    }

    /// The group of each parameter's entry in `items`, as one list per group.
    fn per_group<T: Copy>(&self, items: &[T]) -> Vec<Vec<T>> {
        self.groups.iter().map(|(idx, _)| idx.iter().map(|&i| items[i]).collect()).collect()
    }

    fn member(&self, i: usize) -> (&dyn Elementwise, usize) {
        let (g, j) = self.slot[i];
        (self.groups[g].1.elementwise().expect("every group is elementwise"), j)
    }
}
impl Transform for Partition {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        for (_, g) in &mut self.groups {
            g.visit_learning_rates(f);
        }
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        if let Some(group_of) = &self.group_of {
            // A parameter sent to a group that does not exist is in none: refused below.
            let of = (0..shapes.len()).map(|i| group_of(i, shapes)).collect::<Result<Vec<usize>>>()?;
            for (g, (idx, _)) in self.groups.iter_mut().enumerate() {
                *idx = (0..shapes.len()).filter(|&i| of[i] == g).collect();
            }
        }
        if let Some(r) = self.unlisted {
            let mut listed = vec![false; shapes.len()];
            for (g, (idx, _)) in self.groups.iter().enumerate() {
                for &i in idx.iter().filter(|_| g != r) {
                    if let Some(l) = listed.get_mut(i) {
                        *l = true;
                    }
                }
            }
            self.groups[r].0 = (0..shapes.len()).filter(|&i| !listed[i]).collect();
        }
        let mut slot = vec![None; shapes.len()];
        for (g, (idx, _)) in self.groups.iter().enumerate() {
            for (j, &i) in idx.iter().enumerate() {
                if i >= shapes.len() {
                    return Err(Error::Invalid(format!(
                        "parameter groups: a group (or a mask or label list) names parameter {i} but there are {}",
                        shapes.len()
                    )));
                }
                if slot[i].replace((g, j)).is_some() {
                    return Err(Error::Invalid(format!(
                        "parameter groups: parameter {i} appears in more than one group"
                    )));
                }
            }
        }
        if let Some(i) = slot.iter().position(|s| s.is_none()) {
            return Err(Error::Invalid(format!(
                "parameter groups: parameter {i} is in no group (a mask or label list shorter than the parameters?)"
            )));
        }
        self.slot = slot.into_iter().flatten().collect();
        for (idx, tx) in self.groups.iter_mut() {
            let sh: Vec<Vec<usize>> = idx.iter().map(|&i| shapes[i].clone()).collect();
            let ps: Vec<&[f32]> = idx.iter().map(|&i| params[i]).collect();
            tx.init(&sh, &ps)?;
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_updates(updates, params)?;
        if updates.len() != self.slot.len() {
            return Err(Error::Shape(format!(
                "{} update tensors for {} parameters at init",
                updates.len(),
                self.slot.len()
            )));
        }
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
    fn supports_sparse(&self) -> bool {
        self.groups.iter().all(|(_, tx)| tx.supports_sparse())
    }
    /// Each group's sparse step on its parameters (torch `param_groups` of SparseAdam).
    fn step_sparse(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
        rows: &crate::sparse::SparseRows,
    ) -> Result<()> {
        let mut slots: Vec<Option<&mut [f32]>> = params.iter_mut().map(|p| Some(&mut **p)).collect();
        for (idx, tx) in self.groups.iter_mut() {
            let mut ps: Vec<&mut [f32]> =
                idx.iter().map(|&i| slots[i].take().expect("each parameter is in one group")).collect();
            let gs: Vec<&[f32]> = idx.iter().map(|&i| grads[i]).collect();
            tx.step_sparse(&mut ps, &gs, &rows.select(idx))?;
        }
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        if self.fusable() {
            Some(self)
        } else {
            None
        }
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        if self.fusable() {
            Some(self)
        } else {
            None
        }
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

/// Each parameter goes through its group's rule, with its index within the group.
impl Elementwise for Partition {
    fn begin_step(&mut self) {
        for (_, tx) in self.groups.iter_mut() {
            tx.as_elementwise().expect("every group is elementwise").begin_step();
        }
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        let (e, j) = self.member(i);
        e.apply(j, off, u, p)
    }
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let (e, j) = self.member(i);
        e.step(j, off, g, p, fold)
    }
    fn needs_whole_blocks(&self) -> bool {
        self.groups.iter().any(|(_, tx)| tx.elementwise().is_none_or(|e| e.needs_whole_blocks()))
    }
    fn needs_prepare(&self) -> bool {
        self.groups.iter().any(|(_, tx)| tx.elementwise().is_some_and(|e| e.needs_prepare()))
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let (inputs, params) = (self.per_group(inputs), self.per_group(params));
        for (k, (_, tx)) in self.groups.iter_mut().enumerate() {
            let e = tx.as_elementwise().expect("every group is elementwise");
            if e.needs_prepare() {
                e.prepare(&inputs[k], &params[k]);
            }
        }
    }
    fn prepare_mapped(&mut self, grads: &[&[f32]], params: &[&[f32]], heads: &[Option<Head>]) {
        let (grads, params, heads) = (self.per_group(grads), self.per_group(params), self.per_group(heads));
        for (k, (_, tx)) in self.groups.iter_mut().enumerate() {
            let e = tx.as_elementwise().expect("every group is elementwise");
            if e.needs_prepare() {
                e.prepare_mapped(&grads[k], &params[k], &heads[k]);
            }
        }
    }
    fn affine(&self, i: usize) -> Option<(f32, f32)> {
        let (e, j) = self.member(i);
        e.affine(j)
    }
    fn head(&self, i: usize) -> Option<Head> {
        let (e, j) = self.member(i);
        e.head(j)
    }
    fn map(&self, i: usize) -> Option<Map> {
        let (e, j) = self.member(i);
        e.map(j)
    }
}
