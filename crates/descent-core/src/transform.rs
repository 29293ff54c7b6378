//! Gradient transformations in the manner of optax, and the [`Optimizer`] that drives them.
//!
//! A [`Transform`] turns the incoming updates (at first the gradients) into outgoing updates, in
//! place, keeping its own state. Updates are *added* to the parameters (optax's convention), so a
//! descent step ends with a negative learning-rate scale. Transformations whose update of an element
//! depends on that element alone implement [`Elementwise`]. The [`Optimizer`] runs them through
//! [`Elementwise::step`]: the kernel on L1-sized sub-blocks, added into the parameters in the same
//! pass, with the maps a [`Chain`] has around its kernel (clipping, weight decay, learning rate,
//! sign, Schedule-Free's interpolation) folded in as a [`Fold`]. A step reads and writes each buffer
//! once, not once per link.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::schedule::Schedule;
use crate::sparse::SparseRows;
use crate::state::{StateDict, StateVisitor};

/// Number of elements processed by every link of an elementwise chain before moving on.
pub const BLOCK: usize = 2048;

/// Elements per pass of a kernel's fused step: every buffer's slice of it stays in L1.
pub const SUB_BLOCK: usize = 64;

/// Elements per task when a tensor is split across threads.
pub const CHUNK: usize = 64 * 1024;

/// Tensors smaller than this stay on the calling thread (no pool overhead for a bias).
pub const PARALLEL_MIN: usize = 2 * CHUNK;

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

fn shape_message(e: Error) -> String {
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
        let e = self
            .as_elementwise()
            .ok_or_else(|| Error::Invalid("transformation has neither update nor an elementwise form".into()))?;
        if e.needs_prepare() {
            let inputs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
            e.prepare(&inputs, params);
        }
        e.begin_step();
        let e = self.elementwise().expect("a transformation with as_elementwise has elementwise");
        run_elementwise(e, updates, params);
        Ok(())
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
    /// [`Optimizer::set_learning_rate`]. By default those of its elementwise form; compositions
    /// visit their parts'.
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        if let Some(e) = self.as_elementwise() {
            e.visit_learning_rates(f);
        }
    }

    /// The parameters a user should evaluate or report, when they differ from the ones the
    /// optimizer steps (Lookahead's slow weights). `None`: the stepped parameters themselves.
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

/// A transformation whose update of element `j` reads only element `j` of each buffer.
pub trait Elementwise: Sync {
    /// Called once per step before any `apply`: advance counters, compute per-step scalars.
    fn begin_step(&mut self);
    /// Visits the learning rates this rule holds (see [`Transform::visit_learning_rates`]).
    fn visit_learning_rates(&mut self, _f: &mut dyn FnMut(&mut LearningRate)) {}
    /// Transforms `u` (elements `off..off+u.len()` of parameter `i`) in place; `p` is the same slice
    /// of the parameter. Several threads may call it at once on different ranges. The drivers call
    /// it on blocks of at most [`BLOCK`] elements starting at multiples of [`BLOCK`] (block-wise
    /// quantized state relies on this).
    ///
    /// # Safety
    /// Concurrent calls must cover disjoint element ranges of each parameter, within its bounds.
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]);
    /// Whether the rule needs a reduction of its input (a global norm) before the elementwise pass.
    /// Such a transformation stays fusable only at the head of a chain, where its input is the
    /// gradient itself.
    fn needs_prepare(&self) -> bool {
        false
    }
    /// Reads the input (what `apply` will receive as `u`) before `begin_step`.
    fn prepare(&mut self, _inputs: &[&[f32]], _params: &[&[f32]]) {}
    /// [`Elementwise::prepare`] for the input `heads[i](grads[i])`, a chain's head map of the
    /// gradients: rules override it to read the gradients without materializing the map.
    fn prepare_mapped(&mut self, grads: &[&[f32]], params: &[&[f32]], heads: &[Option<Head>]) {
        let mapped: Vec<Vec<f32>> = grads
            .iter()
            .zip(params)
            .zip(heads)
            .map(|((g, p), h)| {
                let mut u = vec![0.0; g.len()];
                start(&mut u, g, p, *h);
                u
            })
            .collect();
        let inputs: Vec<&[f32]> = mapped.iter().map(|u| u.as_slice()).collect();
        self.prepare(&inputs, params);
    }
    /// For a rule `u ← α·u + β·p` with per-step, per-parameter `α`, `β` (scaling, weight decay,
    /// trust ratios): `(α, β)` for parameter `i` this step, after `begin_step`. A chain folds a run
    /// of such links into one pass.
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        None
    }
    /// The rule as a map of the incoming update alone (`u ← a·u + b·p`, or clipping), which a
    /// chain folds into the copy of the gradient ahead of its kernel. Affine rules by default.
    fn head(&self, i: usize) -> Option<Head> {
        self.affine(i).map(|(a, b)| Head::affine(a, b))
    }
    /// One fused optimizer step on elements `off..off+p.len()` of parameter `i`:
    /// `p ← p + tail(rule(head(g)))`, with `head` and `tail` the maps a chain folds around this
    /// rule (identity when `None`). `off` is a multiple of [`BLOCK`]. The default runs `apply` on
    /// block-sized copies of `g`; kernels override it with a loop that keeps each sub-block in L1.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`]; `g.len() == p.len()`.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        step_via_apply(self, i, off, g, p, fold)
    }
    /// The rule as a pointwise map of the update alone (sign, clipping), which a chain folds
    /// between its kernel and its affine tail.
    fn map(&self, _i: usize) -> Option<Map> {
        None
    }
}

/// [`Elementwise::step`] through `apply`: block-sized copies of `g`, transformed, added to `p`.
///
/// # Safety
/// As for [`Elementwise::step`].
pub(crate) unsafe fn step_via_apply<E: Elementwise + ?Sized>(
    e: &E,
    i: usize,
    off: usize,
    g: &[f32],
    p: &mut [f32],
    fold: Fold,
) {
    let mut scratch = [0.0f32; BLOCK];
    for (k, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
        let u = &mut scratch[..pb.len()];
        start(u, gb, pb, fold.head);
        e.apply(i, off + k * BLOCK, u, pb);
        finish_fold(pb, u, &fold, i, off + k * BLOCK);
    }
}

/// The composition of affine rules, `u ← a·u + b·p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub a: f32,
    pub b: f32,
}

/// A map of the gradient alone that a chain applies ahead of its kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Head {
    /// `u ← s₂·(s₁·(a·g + b·p))`, in that order (weight decay, then trust ratio and learning
    /// rate: each link rounds as it would alone). A scale of 1 is no scaling.
    Affine { map: Affine, scales: [f32; 2] },
    /// `u ← clamp(g, −δ, δ)` (optax `clip`).
    Clip(f32),
}

impl Head {
    /// `u ← a·g + b·p`.
    pub fn affine(a: f32, b: f32) -> Head {
        Head::Affine { map: Affine { a, b }, scales: [1.0, 1.0] }
    }
    /// This map followed by the link `u ← a·u + b·p`, if it can be written as one head.
    fn then(self, a: f32, b: f32) -> Option<Head> {
        match self {
            Head::Affine { map, scales: [s1, s2] } if b == 0.0 => match (s1 == 1.0, s2 == 1.0) {
                (true, _) => Some(Head::Affine { map, scales: [a, s2] }),
                (false, true) => Some(Head::Affine { map, scales: [s1, a] }),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A pointwise map of the update that a chain applies between its kernel and its tail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Map {
    /// `u ← sign(u)` (optax `scale_by_sign`).
    Sign,
    /// `u ← clamp(u, −δ, δ)` (optax `clip`).
    Clip(f32),
}

/// The maps folded around a rule's fused step: `head` on the gradient, then `map` and `tail` on
/// the update, and `post` in place of the final `p ← p + u`.
#[derive(Clone, Copy, Default)]
pub struct Fold<'a> {
    pub head: Option<Head>,
    pub map: Option<Map>,
    pub tail: Option<Affine>,
    pub post: Option<&'a dyn Epilogue>,
}

/// A rule that ends a fused step in place of `p ← p + u` (Schedule-Free's interpolation between
/// its sequences), called once per sub-block.
pub trait Epilogue: Sync {
    /// Moves elements `off..off+p.len()` of parameter `i` by the final update `u`.
    ///
    /// # Safety
    /// As for [`Elementwise::apply`].
    unsafe fn finish(&self, i: usize, off: usize, u: &mut [f32], p: &mut [f32]);
}

/// The end of a fused step on elements `off..` of parameter `i`: [`finish_inline`], or the map
/// and tail applied to `u` and the fold's epilogue.
///
/// # Safety
/// As for [`Elementwise::apply`].
#[inline(always)]
pub unsafe fn finish_fold(p: &mut [f32], u: &mut [f32], fold: &Fold, i: usize, off: usize) {
    let Some(post) = fold.post else {
        return finish_inline(p, u, fold.map, fold.tail);
    };
    let u = &mut u[..p.len()];
    map_inline(u, fold.map);
    if let Some(Affine { a, b }) = fold.tail {
        affine_inline(u, p, a, b);
    }
    post.finish(i, off, u, p);
}

/// `u ← head(g)`: the first operation of a fused step, vectorized for the CPU at hand.
pub fn start(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>) {
            start_inline(u, g, p, head)
        }
        if crate::transforms::has_avx2() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2(u, g, p, head) };
        }
    }
    start_inline(u, g, p, head)
}

/// [`start`] for inlining into a kernel compiled for a given target. Gives the bits of the rules
/// it stands for (`1·g` is `g`; a zero `b` multiplies nothing by `p`).
#[inline(always)]
pub fn start_inline(u: &mut [f32], g: &[f32], p: &[f32], head: Option<Head>) {
    let (g, p) = (&g[..u.len()], &p[..u.len()]);
    match head {
        None => u.copy_from_slice(g),
        Some(Head::Affine { map: Affine { a, b }, scales }) => {
            if b == 0.0 {
                u.iter_mut().zip(g).for_each(|(x, g)| *x = g * a);
            } else {
                u.iter_mut().zip(g).zip(p).for_each(|((x, g), w)| *x = a * g + b * w);
            }
            for s in scales {
                if s != 1.0 {
                    u.iter_mut().for_each(|x| *x *= s);
                }
            }
        }
        Some(Head::Clip(d)) => u.iter_mut().zip(g).for_each(|(x, g)| *x = g.clamp(-d, d)),
    }
}

/// `p ← p + tail(map(u))`: the last operation of a fused step (identity `map` and `tail` when
/// `None`), inlined into a kernel compiled for a given target. Gives the bits of `u ← map(u)`,
/// `u ← a·u + b·p`, `p ← p + u`.
#[inline(always)]
pub fn finish_inline(p: &mut [f32], u: &mut [f32], map: Option<Map>, tail: Option<Affine>) {
    let u = &mut u[..p.len()];
    map_inline(u, map);
    match tail {
        None => p.iter_mut().zip(u).for_each(|(x, d)| *x += *d),
        // A zero `b` multiplies nothing by `p` (an infinite parameter stays infinite, not NaN).
        Some(Affine { a, b: 0.0 }) => p.iter_mut().zip(u).for_each(|(x, d)| *x += a * *d),
        Some(Affine { a, b }) => p.iter_mut().zip(u).for_each(|(x, d)| *x += a * *d + b * *x),
    }
}

/// `p ← p + tail(map(head(g)))` for a chain of maps alone (plain SGD, sign SGD), in sub-blocks
/// that stay in L1, vectorized for the CPU at hand.
///
/// # Safety
/// As for [`Elementwise::step`].
unsafe fn pointwise_step(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
    #[inline(always)]
    unsafe fn run(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let mut scratch = [0.0f32; SUB_BLOCK];
        for (k, (pb, gb)) in p.chunks_mut(SUB_BLOCK).zip(g.chunks(SUB_BLOCK)).enumerate() {
            let u = &mut scratch[..pb.len()];
            start_inline(u, gb, pb, fold.head);
            finish_fold(pb, u, &fold, i, off + k * SUB_BLOCK);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
            run(i, off, g, p, fold)
        }
        if crate::transforms::has_avx2() {
            return avx2(i, off, g, p, fold);
        }
    }
    run(i, off, g, p, fold)
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

/// `updates ← grads`, split across threads for large tensors.
fn copy_into(updates: &mut [Vec<f32>], grads: &[&[f32]]) {
    for (u, g) in updates.iter_mut().zip(grads) {
        for_blocks(u, |off, b| b.copy_from_slice(&g[off..off + b.len()]));
    }
}

/// `updates ← run(input)` block by block, the input being the gradients (`from_grads`) or the
/// updates themselves.
fn apply_into(run: &dyn Elementwise, updates: &mut [Vec<f32>], grads: &[&[f32]], params: &[&[f32]], from_grads: bool) {
    for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
        let g = grads[i];
        // SAFETY: `for_blocks` hands out disjoint blocks of parameter `i`.
        for_blocks(u, |off, ub| unsafe {
            if from_grads {
                ub.copy_from_slice(&g[off..off + ub.len()]);
            }
            run.apply(i, off, ub, &p[off..off + ub.len()])
        });
    }
}

/// `p += u` for every parameter, split across threads for large ones.
fn add_updates<U: AsRef<[f32]> + Sync>(params: &mut [&mut [f32]], updates: &[U]) {
    for (p, u) in params.iter_mut().zip(updates) {
        let u = u.as_ref();
        for_blocks(p, |off, b| add_assign(b, &u[off..off + b.len()]));
    }
}

/// Runs `f(off, chunk)` over `data` in chunks of [`CHUNK`], across threads when the buffer is
/// large, on the calling thread otherwise.
pub(crate) fn for_chunks<T: Send, F>(data: &mut [T], f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    if data.len() >= PARALLEL_MIN {
        data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| f(c * CHUNK, chunk));
    } else {
        for (c, chunk) in data.chunks_mut(CHUNK).enumerate() {
            f(c * CHUNK, chunk);
        }
    }
}

/// Runs `f(off, block)` over `data` in blocks of [`BLOCK`], splitting large buffers across threads
/// in chunks of [`CHUNK`].
fn for_blocks<T: Send, F>(data: &mut [T], f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    for_chunks(data, |base, chunk| {
        for (k, b) in chunk.chunks_mut(BLOCK).enumerate() {
            f(base + k * BLOCK, b);
        }
    });
}

/// [`global_sum_sq`] of one tensor's `head(g)`, without materializing it (bit for bit the same).
pub fn global_sum_sq_mapped(g: &[f32], p: &[f32], head: Option<Head>) -> f64 {
    chunked_sum(g.len(), |r| crate::transforms::sum_sq_mapped(&g[r.clone()], &p[r], head))
}

/// The squared L2 norm of all buffers together, computed in `f64` over fixed chunks and summed in
/// order, so the result does not depend on the number of threads.
pub fn global_sum_sq(bufs: &[&[f32]]) -> f64 {
    bufs.iter().map(|b| chunked_sum(b.len(), |r| crate::transforms::sum_sq(&b[r]))).sum()
}

/// `Σ part(chunk)` over the [`CHUNK`]-sized ranges of `0..n`, the parts computed across threads
/// for large `n` and added in order.
fn chunked_sum(n: usize, part: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f64 {
    let range = |c: usize| c * CHUNK..n.min((c + 1) * CHUNK);
    let chunks = n.div_ceil(CHUNK);
    let parts: Vec<f64> = if n >= PARALLEL_MIN {
        (0..chunks).into_par_iter().map(|c| part(range(c))).collect()
    } else {
        (0..chunks).map(|c| part(range(c))).collect()
    };
    parts.iter().sum::<f64>()
}

/// Applies an elementwise transformation to all updates: block by block, large tensors split
/// across threads.
pub fn run_elementwise(e: &dyn Elementwise, updates: &mut [Vec<f32>], params: &[&[f32]]) {
    for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
        // SAFETY: `for_blocks` hands out disjoint blocks of parameter `i`.
        for_blocks(u, |off, ub| unsafe { e.apply(i, off, ub, &p[off..off + ub.len()]) });
    }
}

/// One fused pass for an elementwise optimizer: each chunk of each parameter goes through the
/// rule's [`Elementwise::step`], so a step reads the gradient, the state and the parameters once
/// and writes the state and the parameters once.
fn fused_step(e: &dyn Elementwise, params: &mut [&mut [f32]], grads: &[&[f32]]) {
    for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        // SAFETY: chunks are disjoint ranges of parameter `i`, each with its own gradient range.
        for_chunks(p, |base, chunk| unsafe { e.step(i, base, &g[base..base + chunk.len()], chunk, Fold::default()) });
    }
}

/// `p += u`, vectorized for the CPU at hand (the fused step's last operation; benchmarks use it as
/// the roofline's arithmetic).
pub fn add_assign(p: &mut [f32], u: &[f32]) {
    #[inline(always)]
    fn body(p: &mut [f32], u: &[f32]) {
        for (x, d) in p.iter_mut().zip(u) {
            *x += d;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(p: &mut [f32], u: &[f32]) {
            body(p, u)
        }
        if crate::transforms::has_avx2() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2(p, u) };
        }
    }
    body(p, u)
}

/// A learning rate: a constant or a schedule of the step count.
pub enum LearningRate {
    Constant(f64),
    Schedule(Box<dyn Schedule>),
}

impl LearningRate {
    /// The value at step `count` (0-based).
    pub fn at(&self, count: u64) -> f64 {
        match self {
            LearningRate::Constant(x) => *x,
            LearningRate::Schedule(s) => s.value(count),
        }
    }
    /// A constant's value; `None` for a schedule.
    pub fn constant(&self) -> Option<f64> {
        match self {
            LearningRate::Constant(x) => Some(*x),
            LearningRate::Schedule(_) => None,
        }
    }
}

impl From<f64> for LearningRate {
    fn from(x: f64) -> Self {
        LearningRate::Constant(x)
    }
}

impl From<Box<dyn Schedule>> for LearningRate {
    fn from(s: Box<dyn Schedule>) -> Self {
        LearningRate::Schedule(s)
    }
}

/// Applies transformations in sequence (optax `chain`). Runs of elementwise links are fused: each
/// block of each parameter goes through all of them while it is in cache.
pub struct Chain {
    links: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn new(links: Vec<Box<dyn Transform>>) -> Self {
        Chain { links }
    }

    /// One fused elementwise pass covers the whole chain: every link is elementwise and only the
    /// first may need a reduction of its input.
    fn fusable(&self) -> bool {
        self.links.iter().enumerate().all(|(k, l)| l.elementwise().is_some_and(|e| k == 0 || !e.needs_prepare()))
    }
}

/// Shorthand for [`Chain::new`].
pub fn chain(links: Vec<Box<dyn Transform>>) -> Box<dyn Transform> {
    Box::new(Chain::new(links))
}

impl Chain {
    /// The end of the fused run of elementwise links that starts at link `k`: it extends while
    /// the links are elementwise and need no reduction of their input.
    fn run_end(&self, k: usize) -> usize {
        k + 1 + self.links[k + 1..].iter().take_while(|l| l.elementwise().is_some_and(|e| !e.needs_prepare())).count()
    }

    /// Starts the fused run of links `k..end`: the reduction its first link needs of `inputs`
    /// (if any), then every link's `begin_step`.
    fn begin_run(&mut self, k: usize, end: usize, inputs: &[&[f32]], params: &[&[f32]]) {
        let head = self.links[k].as_elementwise().expect("elementwise link");
        if head.needs_prepare() {
            head.prepare(inputs, params);
        }
        for l in self.links[k..end].iter_mut() {
            l.as_elementwise().expect("elementwise link").begin_step();
        }
    }

    /// The rest of a step whose first link is the map `heads[i]` of the gradients (begun
    /// already): the second link's reduction reads the mapped gradients on the fly, then the
    /// remaining links run as one fused step with the map as their head.
    fn step_after_head(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], heads: &[Option<Head>]) -> Result<()> {
        {
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            let e = self.links[1].as_elementwise().expect("elementwise link");
            e.prepare_mapped(grads, &views, heads);
        }
        for l in self.links[1..].iter_mut() {
            l.as_elementwise().expect("elementwise link").begin_step();
        }
        let run = ChainRun(&self.links[1..]);
        for (i, p) in params.iter_mut().enumerate() {
            let g = grads[i];
            let fold = Fold { head: heads[i], ..Fold::default() };
            // SAFETY: chunks are disjoint ranges of parameter `i`.
            for_chunks(p, |base, chunk| unsafe { run.step(i, base, &g[base..base + chunk.len()], chunk, fold) });
        }
        Ok(())
    }
}

impl Transform for Chain {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        for l in &mut self.links {
            l.visit_learning_rates(f);
        }
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.links.iter_mut().try_for_each(|l| l.init(shapes, params))
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let mut k = 0;
        while k < self.links.len() {
            if self.links[k].elementwise().is_none() {
                self.links[k].update(updates, params)?;
                k += 1;
                continue;
            }
            let end = self.run_end(k);
            let inputs: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
            self.begin_run(k, end, &inputs, params);
            run_elementwise(&ChainRun(&self.links[k..end]), updates, params);
            k = end;
        }
        Ok(())
    }

    /// The runs of [`Chain::update`], with the traffic of the first and last cut: the first
    /// elementwise run reads the gradients themselves (no copy into `updates` first), and a last
    /// elementwise run adds into the parameters in its fused step (no separate add pass).
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        // Whether `updates` holds the current updates yet; before that they are the gradients.
        let mut materialized = false;
        let mut k = 0;
        while k < self.links.len() {
            if self.links[k].elementwise().is_none() {
                if !materialized {
                    copy_into(updates, grads);
                    materialized = true;
                }
                let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                self.links[k].update(updates, &views)?;
                k += 1;
                continue;
            }
            let end = self.run_end(k);
            // A lone map of the gradient (weight decay in LARS) ahead of a run that needs a
            // reduction of its output and ends the chain: not materialized, but folded into the
            // reduction's read and the last run's step as their head.
            if k == 0
                && end == 1
                && self.links.len() > 1
                && !self.links[0].elementwise().is_some_and(|e| e.needs_prepare())
            {
                let rest = &self.links[1..];
                let last_run = rest.iter().all(|l| l.elementwise().is_some())
                    && rest.iter().skip(1).all(|l| l.elementwise().is_some_and(|e| !e.needs_prepare()));
                if last_run && rest[0].elementwise().is_some_and(|e| e.needs_prepare()) {
                    self.links[0].as_elementwise().expect("elementwise link").begin_step();
                    let first = link(self.links[0].as_ref());
                    let heads: Vec<Option<Head>> = (0..params.len()).map(|i| first.head(i)).collect();
                    if heads.iter().all(|h| h.is_some()) {
                        return self.step_after_head(params, grads, &heads);
                    }
                    // Some parameter has no head form: the link (already begun) runs into `updates`.
                    let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                    apply_into(first, updates, grads, &views, true);
                    materialized = true;
                    k = 1;
                    continue;
                }
            }
            {
                let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
                let inputs: Vec<&[f32]> =
                    if materialized { updates.iter().map(|u| u.as_slice()).collect() } else { grads.to_vec() };
                self.begin_run(k, end, &inputs, &views);
            }
            let run = ChainRun(&self.links[k..end]);
            if end == self.links.len() {
                for (i, p) in params.iter_mut().enumerate() {
                    let input: &[f32] = if materialized { &updates[i] } else { grads[i] };
                    // SAFETY: chunks are disjoint ranges of parameter `i`.
                    for_chunks(p, |base, chunk| unsafe {
                        run.step(i, base, &input[base..base + chunk.len()], chunk, Fold::default())
                    });
                }
                return Ok(());
            }
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            apply_into(&run, updates, grads, &views, !materialized);
            materialized = true;
            k = end;
        }
        if materialized {
            add_updates(params, updates);
        } else {
            add_updates(params, grads);
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
        for (k, l) in self.links.iter_mut().enumerate() {
            v.push(&k.to_string());
            l.visit_state(v)?;
            v.pop();
        }
        Ok(())
    }

    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        self.links.iter().rev().find_map(|l| l.eval_params(params))
    }
}

impl Elementwise for Chain {
    fn begin_step(&mut self) {
        for l in self.links.iter_mut() {
            l.as_elementwise().expect("all links are elementwise").begin_step();
        }
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        ChainRun(&self.links).apply(i, off, u, p)
    }
    fn needs_prepare(&self) -> bool {
        self.links.first().and_then(|l| l.elementwise()).is_some_and(|e| e.needs_prepare())
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if let Some(e) = self.links.first_mut().and_then(|l| l.as_elementwise()) {
            e.prepare(inputs, params);
        }
    }
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        ChainRun(&self.links).step(i, off, g, p, fold)
    }
}

/// The elementwise form of a link of a run known to be elementwise.
fn link(l: &dyn Transform) -> &dyn Elementwise {
    l.elementwise().expect("elementwise link")
}

/// A run of elementwise links applied one after the other to each block; a tail of affine links
/// (`u ← α·u + β·p`) is composed into one `(α, β)` and applied in a single loop.
struct ChainRun<'a>(&'a [Box<dyn Transform>]);

impl Elementwise for ChainRun<'_> {
    fn begin_step(&mut self) {}
    /// The chain as `prologue → kernel → map → affine tail`: the tail and a pointwise map before
    /// it (sign, clipping) fold into the kernel's fused step, and so does a prologue of maps of
    /// the gradient alone (affine links, or one clip). Any other prologue runs first on
    /// block-sized copies of the gradient.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let n = self.0.len();
        let k = self.0.iter().rev().take_while(|l| link(l.as_ref()).affine(i).is_some()).count();
        if fold.map.is_some() && k > 0 {
            // The caller's map comes after this chain's tail: no single fold expresses that.
            return step_via_apply(self, i, off, g, p, fold);
        }
        // The chain's tail composed with the caller's: u ← a₂(a₁u + b₁p) + b₂p.
        let own = self.0[n - k..].iter().fold(None, |t: Option<Affine>, l| {
            let (a2, b2) = link(l.as_ref()).affine(i).expect("affine link");
            let (a, b) = t.map_or((1.0, 0.0), |t| (t.a, t.b));
            Some(Affine { a: a2 * a, b: a2 * b + b2 })
        });
        let tail = match (own, fold.tail) {
            (Some(t), Some(o)) => Some(Affine { a: o.a * t.a, b: o.a * t.b + o.b }),
            (t, None) | (None, t) => t,
        };
        let mut end = n - k;
        let mut map = fold.map;
        if map.is_none() && end > 0 {
            map = link(self.0[end - 1].as_ref()).map(i);
            if map.is_some() {
                end -= 1;
            }
        }
        let (kernel, prologue) = match end {
            0 => (None, &self.0[..0]),
            m => (Some(link(self.0[m - 1].as_ref())), &self.0[..m - 1]),
        };
        // The prologue as one head map: an affine link and up to two scalings after it, or one
        // clip; anything else leaves `None` (the block path).
        let head: Option<Option<Head>> = prologue.iter().try_fold(fold.head, |h, l| {
            let e = link(l.as_ref());
            match (h, e.affine(i)) {
                (None, Some((a, b))) => Some(Some(Head::affine(a, b))),
                (Some(head), Some((a, b))) => head.then(a, b).map(Some),
                (None, None) => e.head(i).map(Some),
                _ => None,
            }
        });
        match (kernel, head) {
            (Some(kernel), Some(head)) => return kernel.step(i, off, g, p, Fold { head, map, tail, post: fold.post }),
            (None, _) => return pointwise_step(i, off, g, p, Fold { head: fold.head, map, tail, post: fold.post }),
            _ => {}
        }
        let mut scratch = [0.0f32; BLOCK];
        for (b, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
            let u = &mut scratch[..pb.len()];
            start(u, gb, pb, fold.head);
            for l in prologue {
                link(l.as_ref()).apply(i, off + b * BLOCK, u, pb);
            }
            if let Some(kernel) = kernel {
                kernel.step(i, off + b * BLOCK, u, pb, Fold { head: None, map, tail, post: fold.post });
            }
        }
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        let n = self.0.len();
        let tail = self.0.iter().rev().take_while(|l| link(l.as_ref()).affine(i).is_some()).count();
        let head = if tail < 2 { n } else { n - tail };
        for l in &self.0[..head] {
            link(l.as_ref()).apply(i, off, u, p);
        }
        if head < n {
            // (α, β) of the composition: u ← α₂(α₁u + β₁p) + β₂p.
            let (a, b) = self.0[head..].iter().fold((1.0f32, 0.0f32), |(a, b), l| {
                let (a2, b2) = link(l.as_ref()).affine(i).expect("affine link");
                (a2 * a, a2 * b + b2)
            });
            affine_pass(u, p, a, b);
        }
    }
}

/// `u ← a·u + b·p`, vectorized for the CPU at hand.
fn affine_pass(u: &mut [f32], p: &[f32], a: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(u: &mut [f32], p: &[f32], a: f32, b: f32) {
            affine_inline(u, p, a, b)
        }
        if crate::transforms::has_avx2() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2(u, p, a, b) };
        }
    }
    affine_inline(u, p, a, b)
}

/// [`affine_pass`] for inlining into a kernel compiled for a given target (a zero `b`
/// multiplies nothing by `p`).
#[inline(always)]
fn affine_inline(u: &mut [f32], p: &[f32], a: f32, b: f32) {
    let p = &p[..u.len()];
    if b == 0.0 {
        u.iter_mut().for_each(|x| *x *= a);
    } else {
        u.iter_mut().zip(p).for_each(|(x, w)| *x = a * *x + b * w);
    }
}

/// `u ← map(u)` (identity when `None`), for inlining into a kernel.
#[inline(always)]
fn map_inline(u: &mut [f32], map: Option<Map>) {
    match map {
        None => {}
        Some(Map::Sign) => u.iter_mut().for_each(|x| *x = crate::transforms::sign(*x)),
        Some(Map::Clip(d)) => u.iter_mut().for_each(|x| *x = x.clamp(-d, d)),
    }
}

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

    /// Sets the policy for non-finite gradients.
    pub fn with_non_finite(mut self, policy: NonFinite) -> Self {
        self.non_finite = policy;
        self
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

    /// The parameters to evaluate (Lookahead's slow weights), or a copy of `params`.
    pub fn eval_params(&self, params: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let views: Vec<&[f32]> = params.iter().map(|v| v.as_slice()).collect();
        self.tx.eval_params(&views).unwrap_or_else(|| params.to_vec())
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

    /// The whole state, for saving.
    pub fn state_dict(&mut self) -> Result<StateDict> {
        let mut s = crate::state::Saver::default();
        self.tx.visit_state(&mut s)?;
        s.dict.counters.insert("optimizer.steps".into(), self.steps);
        s.dict.counters.insert("optimizer.skipped".into(), self.skipped);
        Ok(s.dict)
    }

    /// Restores a state saved by [`Optimizer::state_dict`]; refuses a mismatched one whole.
    pub fn load_state_dict(&mut self, dict: &StateDict) -> Result<()> {
        let mut inner = dict.clone();
        let steps = inner.counters.remove("optimizer.steps");
        let skipped = inner.counters.remove("optimizer.skipped");
        let (Some(steps), Some(skipped)) = (steps, skipped) else {
            return Err(Error::State("missing counters `optimizer.steps`/`optimizer.skipped`".into()));
        };
        let mut check = crate::state::Checker::new(&inner);
        self.tx.visit_state(&mut check)?;
        check.finish()?;
        self.tx.visit_state(&mut crate::state::Loader::new(&inner))?;
        self.steps = steps;
        self.skipped = skipped;
        Ok(())
    }
}

fn check_sizes<T: AsRef<[f32]>>(what: &str, shapes: &[Vec<usize>], bufs: &[T]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::{AddDecayedWeights, Clip, ClipByGlobalNorm, ScaleByAdam, ScaleByLearningRate, Trace};

    fn links() -> Vec<Box<dyn Transform>> {
        vec![
            Box::new(Clip::new(0.8)),
            Box::new(ScaleByAdam::new(0.9, 0.999, 1e-8, 0.0, true)),
            Box::new(AddDecayedWeights::new(0.01)),
            Box::new(ClipByGlobalNorm::new(3.0)),
            Box::new(Trace::new(0.5, false)),
            Box::new(ScaleByLearningRate::new(0.1, true)),
        ]
    }

    /// A fused chain (block by block, large tensors across threads) gives exactly what running each
    /// link over whole buffers gives, for sizes that are not multiples of the block or chunk and a
    /// reduction in the middle.
    #[test]
    fn fused_chain_equals_link_by_link() {
        let shapes = vec![vec![3 * BLOCK + 17], vec![5], vec![BLOCK], vec![PARALLEL_MIN + 3 * CHUNK / 2 + 7]];
        let params: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()).collect();
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut fused = Chain::new(links());
        let mut separate = links();
        fused.init(&shapes, &views).unwrap();
        for l in separate.iter_mut() {
            l.init(&shapes, &views).unwrap();
        }
        for step in 0..4 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| {
                    p.iter().enumerate().map(|(i, x)| (x * (step + 1) as f32 + (i % 13) as f32 * 0.1).sin()).collect()
                })
                .collect();
            let mut a = grads.clone();
            fused.update(&mut a, &views).unwrap();
            let mut b = grads.clone();
            for l in separate.iter_mut() {
                l.update(&mut b, &views).unwrap();
            }
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert_eq!(x.to_bits(), y.to_bits(), "step {step}: {x} vs {y}");
            }
        }
    }

    /// The optimizer's single fused pass (copy, transform, add per block, across threads) equals
    /// the unfused path that materializes full update buffers.
    #[test]
    fn fused_optimizer_step_equals_unfused() {
        let shapes = vec![vec![PARALLEL_MIN + CHUNK + 5], vec![7], vec![BLOCK + 1]];
        let init: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 31) % 97) as f32 / 48.0 - 1.0).collect()).collect();
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let make = |fused: bool| {
            let mut l: Vec<Box<dyn Transform>> = vec![
                Box::new(ScaleByAdam::new(0.9, 0.999, 1e-8, 0.0, false)),
                Box::new(AddDecayedWeights::new(0.01)),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ];
            if !fused {
                // A no-op whole-tensor transformation (centralizing 1-D tensors) forces the full-buffer path.
                l.insert(0, Box::new(crate::transforms::Centralize::default()));
            }
            let mut c = Chain::new(l);
            assert_eq!(c.as_elementwise().is_some(), fused);
            Optimizer::new(Box::new(c), shapes.clone(), &views).unwrap()
        };
        let (mut a, mut b) = (make(true), make(false));
        let (mut pa, mut pb) = (init.clone(), init.clone());
        for step in 0..3 {
            let g: Vec<Vec<f32>> =
                init.iter().map(|p| p.iter().map(|x| (x * (step + 2) as f32).cos()).collect()).collect();
            a.step_vecs(&mut pa, &g).unwrap();
            b.step_vecs(&mut pb, &g).unwrap();
        }
        for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    /// Global-norm clipping at the head of a chain runs fused (a read-only norm pass, then one
    /// pass) and gives exactly what the link-by-link path gives; elsewhere in a chain it splits
    /// the fused runs.
    #[test]
    fn global_norm_clip_fuses_at_the_head_of_a_chain() {
        let shapes = vec![vec![PARALLEL_MIN + 11], vec![3]];
        let init: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..numel(s)).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect()).collect();
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let links = || -> Vec<Box<dyn Transform>> {
            vec![
                Box::new(ClipByGlobalNorm::new(1.0)),
                Box::new(ScaleByAdam::new(0.9, 0.999, 1e-8, 0.0, false)),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ]
        };
        let mut head = Chain::new(links());
        assert!(head.as_elementwise().is_some());
        let mut tail = links();
        tail.rotate_left(1);
        assert!(Chain::new(tail).as_elementwise().is_none());

        let mut fused = Optimizer::new(Box::new(head), shapes.clone(), &views).unwrap();
        let mut separate = links();
        for l in separate.iter_mut() {
            l.init(&shapes, &views).unwrap();
        }
        let (mut pa, mut pb) = (init.clone(), init.clone());
        for step in 0..3 {
            let g: Vec<Vec<f32>> =
                init.iter().map(|p| p.iter().map(|x| (x * (step + 3) as f32).sin()).collect()).collect();
            fused.step_vecs(&mut pa, &g).unwrap();
            let mut u = g.clone();
            let pv: Vec<&[f32]> = pb.iter().map(|p| p.as_slice()).collect();
            for l in separate.iter_mut() {
                l.update(&mut u, &pv).unwrap();
            }
            for (p, d) in pb.iter_mut().zip(&u) {
                p.iter_mut().zip(d).for_each(|(x, d)| *x += d);
            }
        }
        for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    /// A tail of affine links (weight decay, learning rate) is folded into one pass; the result
    /// equals applying them one by one up to rounding (a few ulps).
    #[test]
    fn folded_affine_tail_matches_link_by_link() {
        let shapes = vec![vec![BLOCK * 2 + 3]];
        let init: Vec<Vec<f32>> = vec![(0..numel(&shapes[0])).map(|i| (i as f32 * 0.37).sin()).collect()];
        let views: Vec<&[f32]> = init.iter().map(|p| p.as_slice()).collect();
        let links = || -> Vec<Box<dyn Transform>> {
            vec![
                Box::new(ScaleByAdam::new(0.9, 0.999, 1e-8, 0.0, false)),
                Box::new(AddDecayedWeights::new(0.05)),
                Box::new(ScaleByLearningRate::new(0.01, true)),
            ]
        };
        let mut folded = Chain::new(links());
        let mut separate = links();
        folded.init(&shapes, &views).unwrap();
        separate.iter_mut().for_each(|l| l.init(&shapes, &views).unwrap());
        let g: Vec<Vec<f32>> = init.iter().map(|p| p.iter().map(|x| x.cos()).collect()).collect();
        let (mut a, mut b) = (g.clone(), g.clone());
        folded.update(&mut a, &views).unwrap();
        separate.iter_mut().for_each(|l| l.update(&mut b, &views).unwrap());
        for (x, y) in a[0].iter().zip(&b[0]) {
            assert!((x - y).abs() <= 4.0 * f32::EPSILON * y.abs().max(1e-30), "{x} vs {y}");
        }
    }

    #[test]
    fn an_all_elementwise_chain_is_itself_elementwise() {
        let mut c = Chain::new(vec![Box::new(Clip::new(1.0)), Box::new(ScaleByLearningRate::new(0.1, true))]);
        assert!(c.as_elementwise().is_some());
        let mut c = Chain::new(links());
        assert!(c.as_elementwise().is_none());
    }
}
