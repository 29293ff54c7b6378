//! The [`Transform`] trait: a gradient transformation in the manner of optax, and the parameter
//! shapes it is initialized for.
//!
//! A [`Transform`] turns the incoming updates (at first the gradients) into outgoing updates, in
//! place, keeping its own state. Updates are *added* to the parameters (optax's convention), so a
//! descent step ends with a negative learning-rate scale. Transformations whose update of an element
//! depends on that element alone also implement [`Elementwise`] ([`crate::kernel`]): the
//! [`Optimizer`](crate::Optimizer) ([`crate::optimizer`]) then runs them through [`Elementwise::step`], the kernel on
//! L1-sized sub-blocks added into the parameters in the same pass, with the maps a [`Chain`](crate::chain::Chain)
//! ([`mod@crate::chain`]) has around its kernel (clipping, weight decay, learning rate, sign,
//! Schedule-Free's interpolation) folded in as a [`Fold`](crate::kernel::Fold). A step reads and writes each buffer
//! once, not once per link.
//!
//! The layers, each using only those above it: [`crate::learning_rate`] → [`crate::kernel`] →
//! this module → [`mod@crate::chain`] → [`crate::optimizer`]. Each item is imported from the module
//! that owns it (the most used ones also from the crate root).

use crate::error::{Error, Result};
use crate::kernel::{add_updates, copy_into, run_elementwise, Elementwise};
use crate::learning_rate::LearningRate;
use crate::sparse::SparseRows;
use crate::state::StateVisitor;

/// The shape of each parameter, row-major.
pub type Shapes = [Vec<usize>];

/// Number of elements of a shape; `usize::MAX` for a shape whose product does not fit (which no
/// buffer can match). [`shape_numel`] is the checked form.
pub fn numel(shape: &[usize]) -> usize {
    checked_numel(shape).unwrap_or(usize::MAX)
}

/// Number of elements of a shape, `None` when the product of its dimensions overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The most elements a parameter may have: its `f64` scratch must be addressable.
pub const MAX_NUMEL: usize = isize::MAX as usize / std::mem::size_of::<f64>();

/// The element count of a shape descent can hold. Refused: a product of the dimensions above
/// [`MAX_NUMEL`], and likewise the product with zero dimensions counted as 1 (torch's strides,
/// which bound what per-axis state an empty tensor could ask for), so that no shape, even one
/// with no elements, names an extent that cannot be addressed.
pub fn shape_numel(shape: &[usize]) -> Result<usize> {
    let extent = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1)));
    match (checked_numel(shape), extent) {
        (Some(n), Some(e)) if n <= MAX_NUMEL && e <= MAX_NUMEL => Ok(n),
        _ => Err(Error::Shape(format!(
            "shape {shape:?} is too large: its dimensions (zeros counted as 1) multiply to more than {MAX_NUMEL}"
        ))),
    }
}

/// Checks parameter shapes before anything is built or allocated for them: each one within
/// [`shape_numel`]'s bounds. Returns their element counts.
pub fn check_shapes(shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| shape_numel(s).map_err(|e| Error::Shape(format!("parameter {i}: {}", shape_message(e)))))
        .collect()
}

pub(crate) fn shape_message(e: Error) -> String {
    match e {
        Error::Shape(m) => m,
        other => other.to_string(),
    }
}

/// What [`Transform::init`] may rely on: valid shapes ([`check_shapes`]) and one parameter buffer
/// per shape, of its element count. Transformations check it before allocating any state, so
/// that state is never out of proportion to the parameters given.
pub fn check_init(shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
    check_sizes("parameter", shapes, params)
}

/// A gradient transformation: `init` allocates state for a list of parameters, `update` rewrites
/// the updates in place.
pub trait Transform: Send + Sync {
    /// Allocates state for parameters of these shapes with these initial values. Shapes and
    /// values that fail [`check_init`] are an error, before anything is allocated.
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()>;

    /// Transforms `updates` in place; `params` are the current parameters.
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        check_updates(updates, params)?;
        update_elementwise(self, updates, params)
    }

    /// A whole step `p ← p + update(g)` for a transformation that does not run as one fused
    /// pass, with `updates` as full-size scratch: by default the gradients are copied into it,
    /// transformed by `update`, and added to the parameters.
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        step_through_updates(self, params, grads, updates)
    }

    /// The elementwise form of this transformation, for `begin_step`.
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        None
    }

    /// The elementwise form of this transformation, for `apply`.
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        None
    }

    /// Visits every buffer, scalar and counter of the state.
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()>;

    /// Visits the learning rates this transformation holds (its `lr` / `learning_rate`), for
    /// [`Optimizer::set_learning_rate`](crate::Optimizer::set_learning_rate). By default those of its elementwise form; compositions
    /// visit their parts'.
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        if let Some(e) = self.as_elementwise() {
            e.visit_learning_rates(f);
        }
    }

    /// The parameters a user should evaluate or report, when they differ from the ones the
    /// optimizer steps (Lookahead's slow weights, schedule-free's average `x`). `None`: the
    /// stepped parameters themselves.
    fn eval_params(&self, _params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        None
    }

    /// Whether [`Transform::step_sparse`] takes sparse gradients (torch SparseAdam does; the
    /// others refuse them, as torch's dense optimizers do).
    fn supports_sparse(&self) -> bool {
        false
    }

    /// A whole step `p ← p + update(g)` with a sparse gradient: `grads` hold values only in the
    /// rows `rows` marks present, the others are absent (see [`crate::sparse`]).
    fn step_sparse(&mut self, _params: &mut [&mut [f32]], _grads: &[&[f32]], _rows: &SparseRows) -> Result<()> {
        Err(Error::Invalid("this optimizer does not support sparse gradients (torch SparseAdam does)".into()))
    }
}

/// [`Transform::update`] of a transformation with an elementwise form: its kernels over the
/// updates (checked against the parameters and its state by the caller).
pub(crate) fn update_elementwise<T: Transform + ?Sized>(
    tx: &mut T,
    updates: &mut [Vec<f32>],
    params: &[&[f32]],
) -> Result<()> {
    let e = tx
        .as_elementwise()
        .ok_or_else(|| Error::Invalid("transformation has neither update nor an elementwise form".into()))?;
    if e.needs_prepare() {
        let inputs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
        e.prepare(&inputs, params);
    }
    e.begin_step();
    let e = tx.elementwise().expect("a transformation with as_elementwise has elementwise");
    run_elementwise(e, updates, params);
    Ok(())
}

/// The plain step: gradients copied into `updates`, `tx.update`, updates added to the parameters.
pub(crate) fn step_through_updates<T: Transform + ?Sized>(
    tx: &mut T,
    params: &mut [&mut [f32]],
    grads: &[&[f32]],
    updates: &mut [Vec<f32>],
) -> Result<()> {
    copy_into(updates, grads);
    {
        let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
        tx.update(updates, &views)?;
    }
    add_updates(params, updates);
    Ok(())
}

/// Updates that match the parameters one for one, as a transformation stepped directly (without
/// [`crate::Optimizer`], which checks them against the shapes) needs.
pub(crate) fn check_updates(updates: &[Vec<f32>], params: &[&[f32]]) -> Result<()> {
    if updates.len() != params.len() {
        return Err(Error::Shape(format!("{} update tensors for {} parameters", updates.len(), params.len())));
    }
    match updates.iter().zip(params).position(|(u, p)| u.len() != p.len()) {
        Some(i) => Err(Error::Shape(format!(
            "update {i} has {} elements, its parameter {}",
            updates[i].len(),
            params[i].len()
        ))),
        None => Ok(()),
    }
}

/// What an `update` of a transformation that keeps the shapes `init` was given checks first:
/// updates matching the parameters, and both the shapes (an update before `init`, or of other
/// parameters, is an error instead of an index out of its state's range).
pub(crate) fn check_against_init(shapes: &Shapes, updates: &[Vec<f32>], params: &[&[f32]]) -> Result<()> {
    check_updates(updates, params)?;
    if shapes.is_empty() && !updates.is_empty() {
        return Err(Error::Invalid("update before init: the transformation's state was never set up".into()));
    }
    check_sizes("update", shapes, updates)
}

pub(crate) fn check_sizes<T: AsRef<[f32]>>(what: &str, shapes: &[Vec<usize>], bufs: &[T]) -> Result<()> {
    if bufs.len() != shapes.len() {
        return Err(Error::Shape(format!("expected {} {what} tensors, got {}", shapes.len(), bufs.len())));
    }
    for (i, (s, b)) in shapes.iter().zip(bufs).enumerate() {
        let n = shape_numel(s).map_err(|e| Error::Shape(format!("{what} {i}: {}", shape_message(e))))?;
        if b.as_ref().len() != n {
            return Err(Error::Shape(format!(
                "{what} {i} has {} elements, expected {n} (shape {s:?})",
                b.as_ref().len()
            )));
        }
    }
    Ok(())
}
