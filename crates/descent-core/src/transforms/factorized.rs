//! Factored second moments: Adafactor (optax `factorized.py`, `scale_by_factored_rms` and the
//! fused `adafactor` chain) and SM3's per-axis accumulators.

use super::{rms, rms_of, state, sum_sq, zeros, ClipByBlockRms, ScaleByParamBlockRms};
use crate::error::Result;
use crate::kernel::{prefetch_range, Elementwise, SumSq, CHUNK, PARALLEL_MIN, PREFETCH_AHEAD, PREFETCH_MIN, SUB_BLOCK};
use crate::state::StateVisitor;
use crate::transform::{numel, Shapes, Transform};
use rayon::prelude::*;

/// How a tensor's second moment is kept by Adafactor.
#[derive(Clone, Debug)]
enum Factoring {
    /// Full per-element moment.
    Full,
    /// Row and column moments over the two axes `d1` (kept in `v_row`) and `d0` (kept in `v_col`)
    /// with the other axes as batch.
    Factored { d0: usize, d1: usize },
}

/// Iterates a row-major shape: for each flat index, its multi-index.
fn unravel(mut e: usize, shape: &[usize], out: &mut [usize]) {
    for k in (0..shape.len()).rev() {
        out[k] = e % shape[k];
        e /= shape[k];
    }
}

/// Flat index into `shape` with axis `skip` removed.
fn ravel_without(idx: &[usize], shape: &[usize], skip: usize) -> usize {
    let mut f = 0;
    for k in 0..shape.len() {
        if k != skip {
            f = f * shape[k] + idx[k];
        }
    }
    f
}

/// Calls `f(e, r, c)` for every element `e` of a tensor of shape `s` in order, with `r` its
/// multi-index without axis `d0` and `c` without axis `d1`, flattened. Matrices go by two plain
/// loops; other ranks unravel each index.
fn for_each_row_col(s: &[usize], d0: usize, d1: usize, mut f: impl FnMut(usize, usize, usize)) {
    if let [n0, n1] = *s {
        for a in 0..n0 {
            for b in 0..n1 {
                let pick = |axis: usize| if axis == 0 { a } else { b };
                f(a * n1 + b, pick(d1), pick(d0));
            }
        }
        return;
    }
    let mut idx = vec![0; s.len()];
    for e in 0..numel(s) {
        unravel(e, s, &mut idx);
        f(e, ravel_without(&idx, s, d0), ravel_without(&idx, s, d1));
    }
}

/// optax `scale_by_factored_rms` (Adafactor, Shazeer & Stern 2018): the second moment of tensors
/// whose two largest axes are at least `min_dim_size_to_factor` is kept as row and column means.
pub struct ScaleByFactoredRms {
    factored: bool,
    decay_rate: f64,
    step_offset: u64,
    min_dim_size_to_factor: usize,
    epsilon: f32,
    count: u64,
    shapes: Vec<Vec<usize>>,
    kinds: Vec<Factoring>,
    v_row: Vec<Vec<f32>>,
    v_col: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}
/// The hyper-parameters of [`ScaleByFactoredRms`], with optax `scale_by_factored_rms`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByFactoredRmsConfig {
    /// Keep the second moment of large matrices factored.
    pub factored: bool,
    /// Exponent of the step-dependent decay `1 − t^(−decay_rate)`.
    pub decay_rate: f64,
    /// Subtracted from the step count in the decay.
    pub step_offset: u64,
    /// Factor only tensors whose two largest axes are at least this long.
    pub min_dim_size_to_factor: usize,
    /// ε added to the squared gradient.
    pub epsilon: f64,
}
impl Default for ScaleByFactoredRmsConfig {
    fn default() -> Self {
        ScaleByFactoredRmsConfig {
            factored: true,
            decay_rate: 0.8,
            step_offset: 0,
            min_dim_size_to_factor: 128,
            epsilon: 1e-30,
        }
    }
}
impl ScaleByFactoredRms {
    /// A `ScaleByFactoredRms` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByFactoredRmsConfig) -> Self {
        let ScaleByFactoredRmsConfig { factored, decay_rate, step_offset, min_dim_size_to_factor, epsilon } = config;
        ScaleByFactoredRms {
            factored,
            decay_rate,
            step_offset,
            min_dim_size_to_factor,
            epsilon: epsilon as f32,
            count: 0,
            shapes: vec![],
            kinds: vec![],
            v_row: vec![],
            v_col: vec![],
            v: vec![],
        }
    }
}
impl Transform for ScaleByFactoredRms {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.count = 0;
        self.shapes = shapes.to_vec();
        self.kinds.clear();
        self.v_row.clear();
        self.v_col.clear();
        self.v.clear();
        for s in shapes {
            // An empty tensor keeps a full (empty) moment: no per-axis state for axes that may be
            // long, and no division by a zero axis.
            let kind = if !self.factored || s.len() < 2 || numel(s) == 0 {
                Factoring::Full
            } else {
                // numpy argsort is stable: ties keep axis order.
                let mut order: Vec<usize> = (0..s.len()).collect();
                order.sort_by_key(|&k| s[k]);
                let (d1, d0) = (order[s.len() - 2], order[s.len() - 1]);
                if s[d1] < self.min_dim_size_to_factor {
                    Factoring::Full
                } else {
                    Factoring::Factored { d0, d1 }
                }
            };
            match kind {
                Factoring::Full => {
                    self.v_row.push(vec![0.0]);
                    self.v_col.push(vec![0.0]);
                    self.v.push(vec![0.0; numel(s)]);
                }
                Factoring::Factored { d0, d1 } => {
                    self.v_row.push(vec![0.0; numel(s) / s[d0]]);
                    self.v_col.push(vec![0.0; numel(s) / s[d1]]);
                    self.v.push(vec![0.0]);
                }
            }
            self.kinds.push(kind);
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        let decay = self.decay();
        for (i, u) in updates.iter_mut().enumerate() {
            match self.kinds[i].clone() {
                Factoring::Full => {
                    full_moment(&mut self.v[i], u, None, None, decay, self.epsilon);
                }
                Factoring::Factored { d0, d1 } => self.factored(i, u, decay, d0, d1),
            }
        }
        self.count += 1;
        Ok(())
    }
    state!(ScaleByFactoredRms; bufs: [v_row, v_col, v]; counters: [count]; scalars: []);
}

impl ScaleByFactoredRms {
    /// This step's decay `1 − t^(−decay_rate)` (`t` counted from `step_offset`).
    fn decay(&self) -> f32 {
        let t = (self.count as f64 - self.step_offset as f64 + 1.0) as f32;
        1.0 - t.powf(-(self.decay_rate as f32))
    }

    /// A factored tensor's step in place: the row and column means of `u² + eps` update the row
    /// and column moments, and `u` is divided by their rank-one estimate of `√v`.
    fn factored(&mut self, i: usize, u: &mut [f32], decay: f32, d0: usize, d1: usize) {
        factored_moment(&self.shapes[i], &mut self.v_row[i], &mut self.v_col[i], u, decay, self.epsilon, (d0, d1));
    }

    /// [`Transform::update`] reading the gradients from `grads` into `updates`; the moment of a
    /// full tensor in one threaded pass, which also gives its `(Σu², Σp²)` (`None` for factored
    /// ones). A full tensor's update `g/√v` is not written: `updates[i]` is left as it was, and
    /// the last pass recomputes it from `g` and the new `v` (the same bits).
    fn update_from(
        &mut self,
        grads: &[&[f32]],
        updates: &mut [Vec<f32>],
        params: &[&[f32]],
    ) -> Vec<Option<(f64, f64)>> {
        let decay = self.decay();
        let (eps, shapes, kinds) = (self.epsilon, &self.shapes, &self.kinds);
        // Tensor by tensor across threads (each tensor's numbers are its own, so the same bits):
        // a model's many small tensors, each too small to split, step in parallel.
        let sums = updates
            .par_iter_mut()
            .zip(self.v.par_iter_mut())
            .zip(self.v_row.par_iter_mut())
            .zip(self.v_col.par_iter_mut())
            .enumerate()
            .map(|(i, (((u, v), v_row), v_col))| match kinds[i] {
                Factoring::Full => Some(full_moment_sums(v, grads[i], params[i], decay, eps)),
                Factoring::Factored { d0, d1 } => {
                    u.copy_from_slice(grads[i]);
                    factored_moment(&shapes[i], v_row, v_col, u, decay, eps, (d0, d1));
                    None
                }
            })
            .collect();
        self.count += 1;
        sums
    }
}

/// [`ScaleByFactoredRms`]'s step of one factored tensor of shape `s` (its largest axes `d0`,
/// `d1`) in place, with its row and column moments.
fn factored_moment(
    s: &[usize],
    v_row: &mut [f32],
    v_col: &mut [f32],
    u: &mut [f32],
    decay: f32,
    eps: f32,
    (d0, d1): (usize, usize),
) {
    // Row index of an element: its multi-index without axis d0; column index:
    // without axis d1. A matrix needs no index arithmetic per element.
    // Means of g² + eps over axis d0 (rows) and axis d1 (columns).
    let mut row = vec![0.0f64; v_row.len()];
    let mut col = vec![0.0f64; v_col.len()];
    for_each_row_col(s, d0, d1, |e, r, c| {
        let g = u[e];
        let g2 = (g * g + eps) as f64;
        row[r] += g2;
        col[c] += g2;
    });
    for (v, r) in v_row.iter_mut().zip(&row) {
        *v = decay * *v + (1.0 - decay) * (*r / s[d0] as f64) as f32;
    }
    for (v, c) in v_col.iter_mut().zip(&col) {
        *v = decay * *v + (1.0 - decay) * (*c / s[d1] as f64) as f32;
    }
    // Mean of v_row over its axis d1 (d1 shifted when d0 was removed before it).
    let row_shape: Vec<usize> = (0..s.len()).filter(|&k| k != d0).map(|k| s[k]).collect();
    let rd1 = if d1 > d0 { d1 - 1 } else { d1 };
    let mut rmean = vec![0.0f64; v_row.len() / row_shape[rd1]];
    let mut ridx = vec![0; row_shape.len()];
    for (e, v) in v_row.iter().enumerate() {
        unravel(e, &row_shape, &mut ridx);
        rmean[ravel_without(&ridx, &row_shape, rd1)] += *v as f64 / row_shape[rd1] as f64;
    }
    // The factors of each row and each column, once.
    let row_factor: Vec<f32> = (0..v_row.len())
        .map(|r| {
            unravel(r, &row_shape, &mut ridx);
            let rm = rmean[ravel_without(&ridx, &row_shape, rd1)] as f32;
            1.0 / (v_row[r] / rm).sqrt()
        })
        .collect();
    let col_factor: Vec<f32> = v_col.iter().map(|v| 1.0 / v.sqrt()).collect();
    for_each_row_col(s, d0, d1, |e, r, c| u[e] = u[e] * row_factor[r] * col_factor[c]);
}

/// A full (unfactored) Adafactor moment: `v ← decay·v + (1 − decay)·(g² + eps)`, `u ← g/√v`,
/// split across threads for large tensors; `g: None` reads the gradient from `u` (in place).
/// With the parameters `p`, also returns `(Σu², Σp²)`, summed chunk by chunk while each chunk is
/// in cache: the parts and their order of `global_sum_sq`, so the same bits as the root mean
/// squares taken afterwards.
fn full_moment(
    v: &mut [f32],
    u: &mut [f32],
    g: Option<&[f32]>,
    p: Option<&[f32]>,
    decay: f32,
    eps: f32,
) -> Option<(f64, f64)> {
    #[inline(always)]
    fn kernel(v: &mut [f32], g: Option<&[f32]>, u: &mut [f32], decay: f32, eps: f32) {
        let moment = |v: &mut f32, g: f32| {
            *v = decay * *v + (1.0 - decay) * (g * g + eps);
            g / v.sqrt()
        };
        match g {
            Some(g) => v.iter_mut().zip(g).zip(u.iter_mut()).for_each(|((v, &g), u)| *u = moment(v, g)),
            None => v.iter_mut().zip(u.iter_mut()).for_each(|(v, u)| *u = moment(v, *u)),
        }
    }
    fn moments(v: &mut [f32], g: Option<&[f32]>, u: &mut [f32], decay: f32, eps: f32) {
        crate::kernel::dispatch_simd!(kernel(v: &mut [f32], g: Option<&[f32]>, u: &mut [f32], decay: f32, eps: f32))
    }
    fn chunk(x: &[f32], k: usize) -> &[f32] {
        &x[k * CHUNK..x.len().min((k + 1) * CHUNK)]
    }
    let run = |k: usize, v: &mut [f32], u: &mut [f32]| {
        let g = g.map(|g| chunk(g, k));
        moments(v, g, u, decay, eps);
        p.map(|p| (sum_sq(u), sum_sq(chunk(p, k))))
    };
    let parts: Vec<Option<(f64, f64)>> = if v.len() >= PARALLEL_MIN {
        v.par_chunks_mut(CHUNK).zip(u.par_chunks_mut(CHUNK)).enumerate().map(|(k, (v, u))| run(k, v, u)).collect()
    } else {
        v.chunks_mut(CHUNK).zip(u.chunks_mut(CHUNK)).enumerate().map(|(k, (v, u))| run(k, v, u)).collect()
    };
    let parts: Vec<(f64, f64)> = parts.into_iter().collect::<Option<_>>()?;
    Some((parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>()))
}

/// The moment of a full tensor, `v ← decay·v + (1 − decay)·(g² + eps)`, and `(Σu², Σp²)` of its
/// update `u = g/√v` and parameters, without writing `u`: each sub-block's update is summed while
/// in L1, chunk by chunk, the parts of [`full_moment`]'s sums, so the same bits.
fn full_moment_sums(v: &mut [f32], g: &[f32], p: &[f32], decay: f32, eps: f32) -> (f64, f64) {
    #[inline(always)]
    fn kernel(v: &mut [f32], g: &[f32], p: &[f32], decay: f32, eps: f32, prefetch: bool) -> (f64, f64) {
        let (mut su, mut sp) = (SumSq::default(), SumSq::default());
        let mut u = [0.0f32; SUB_BLOCK];
        let (vp, n) = (v.as_ptr(), v.len());
        // Sub-blocks, so that the three buffers stream at once.
        for (k, ((vb, gb), pb)) in v.chunks_mut(SUB_BLOCK).zip(g.chunks(SUB_BLOCK)).zip(p.chunks(SUB_BLOCK)).enumerate()
        {
            if prefetch {
                let ahead = k * SUB_BLOCK + PREFETCH_AHEAD;
                crate::kernel::prefetch_raw(vp, n, ahead, SUB_BLOCK);
                prefetch_range(g, ahead, SUB_BLOCK);
                prefetch_range(p, ahead, SUB_BLOCK);
            }
            let u = &mut u[..vb.len()];
            for ((v, &g), u) in vb.iter_mut().zip(gb).zip(u.iter_mut()) {
                *v = decay * *v + (1.0 - decay) * (g * g + eps);
                *u = g / v.sqrt();
            }
            su.add(u);
            sp.add(pb);
        }
        (su.total(), sp.total())
    }
    fn moments(v: &mut [f32], g: &[f32], p: &[f32], decay: f32, eps: f32, prefetch: bool) -> (f64, f64) {
        crate::kernel::dispatch_simd!(kernel(v: &mut [f32], g: &[f32], p: &[f32], decay: f32, eps: f32, prefetch: bool) -> (f64, f64))
    }
    let prefetch = v.len() >= PREFETCH_MIN;
    let run = |k: usize, v: &mut [f32]| {
        let r = k * CHUNK..k * CHUNK + v.len();
        moments(v, &g[r.clone()], &p[r], decay, eps, prefetch)
    };
    let parts: Vec<(f64, f64)> = if v.len() >= PARALLEL_MIN {
        v.par_chunks_mut(CHUNK).enumerate().map(|(k, v)| run(k, v)).collect()
    } else {
        v.chunks_mut(CHUNK).enumerate().map(|(k, v)| run(k, v)).collect()
    };
    (parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>())
}

/// [`scaled_add`] of the update `g/√v` of a full tensor, recomputed from the gradient and the
/// new moment as [`full_moment`] computes it.
/// With `prefetch`, it walks sub-blocks and prefetches the three buffers ahead of each (a tensor
/// streaming from memory, see [`PREFETCH_MIN`]).
#[inline(always)]
fn recomputed_add(p: &mut [f32], g: &[f32], v: &[f32], f: [Option<f32>; 3], flip: f32, prefetch: bool) {
    let add = |p: &mut [f32], g: &[f32], v: &[f32]| {
        for ((p, &g), &v) in p.iter_mut().zip(g).zip(v) {
            *p += scaled(g / v.sqrt(), f, flip);
        }
    };
    if !prefetch {
        return add(p, g, v);
    }
    let (pp, n) = (p.as_ptr(), p.len());
    for (k, ((pb, gb), vb)) in p.chunks_mut(SUB_BLOCK).zip(g.chunks(SUB_BLOCK)).zip(v.chunks(SUB_BLOCK)).enumerate() {
        let ahead = k * SUB_BLOCK + PREFETCH_AHEAD;
        crate::kernel::prefetch_raw(pp, n, ahead, SUB_BLOCK);
        prefetch_range(g, ahead, SUB_BLOCK);
        prefetch_range(v, ahead, SUB_BLOCK);
        add(pb, gb, vb);
    }
}

/// [`recomputed_add`], vectorized for the CPU at hand.
fn recomputed_add_simd(p: &mut [f32], g: &[f32], v: &[f32], f: [Option<f32>; 3], flip: f32, prefetch: bool) {
    crate::kernel::dispatch_simd!(recomputed_add(p: &mut [f32], g: &[f32], v: &[f32], f: [Option<f32>; 3], flip: f32, prefetch: bool))
}

/// `(((u / d)·lr)·s)·flip`, each factor present or not: the update of Adafactor's links after its
/// moments, with their operations in their order.
#[inline(always)]
fn scaled(u: f32, [d, lr, s]: [Option<f32>; 3], flip: f32) -> f32 {
    let mut x = u;
    if let Some(d) = d {
        x /= d;
    }
    if let Some(lr) = lr {
        x *= lr;
    }
    if let Some(s) = s {
        x *= s;
    }
    x * flip
}

/// `p ← p + (((u / d)·lr)·s)·flip` ([`scaled`]): Adafactor's last pass.
#[inline(always)]
fn scaled_add(p: &mut [f32], u: &[f32], f: [Option<f32>; 3], flip: f32) {
    for (p, &u) in p.iter_mut().zip(u) {
        *p += scaled(u, f, flip);
    }
}

/// [`scaled_add`], vectorized for the CPU at hand.
fn scaled_add_simd(p: &mut [f32], u: &[f32], f: [Option<f32>; 3], flip: f32) {
    crate::kernel::dispatch_simd!(scaled_add(p: &mut [f32], u: &[f32], f: [Option<f32>; 3], flip: f32))
}

/// optax `adafactor` without momentum or weight decay (its defaults): `scale_by_factored_rms →
/// clip_by_block_rms → scale_by_learning_rate → scale_by_param_block_rms → scale(−1)`, as one
/// transformation whose step is two passes over an unfactored tensor: the moments, writing the
/// update and summing `u²` and `p²` while each chunk is in cache, then `p ← p − ((u/d)·lr)·s`
/// (a factored tensor takes its row and column sums, and the root mean squares in read passes
/// of their own). `update` runs the links one by one (the reference path), with the same
/// operations in the same order, and the state carries the chain's names.
pub struct FusedAdafactor {
    rms: ScaleByFactoredRms,
    clip: Option<ClipByBlockRms>,
    lr: Option<crate::transforms::ScaleByLearningRate>,
    param_scale: Option<ScaleByParamBlockRms>,
    flip: crate::transforms::Scale,
}

impl FusedAdafactor {
    /// A `Adafactor` with these hyper-parameters (`rms`, `clip`, `lr`, `crate`, `transforms`, `param_scale`), as described above.
    pub fn new(
        rms: ScaleByFactoredRms,
        clip: Option<ClipByBlockRms>,
        lr: Option<crate::transforms::ScaleByLearningRate>,
        param_scale: Option<ScaleByParamBlockRms>,
    ) -> Self {
        FusedAdafactor { rms, clip, lr, param_scale, flip: crate::transforms::Scale::new(-1.0) }
    }
}

impl Transform for FusedAdafactor {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut crate::learning_rate::LearningRate)) {
        if let Some(l) = &mut self.lr {
            Transform::visit_learning_rates(l, f);
        }
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.rms.init(shapes, params)?;
        if let Some(l) = &mut self.lr {
            l.init(shapes, params)?;
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.rms.update(updates, params)?;
        if let Some(c) = &mut self.clip {
            c.update(updates, params)?;
        }
        if let Some(l) = &mut self.lr {
            l.update(updates, params)?;
        }
        if let Some(s) = &mut self.param_scale {
            s.update(updates, params)?;
        }
        self.flip.update(updates, params)
    }
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        let sums = {
            let views: Vec<&[f32]> = params.iter().map(|p| &**p).collect();
            self.rms.update_from(grads, updates, &views)
        };
        let lr = self.lr.as_mut().map(|l| {
            l.begin_step();
            l.affine(0).expect("a learning rate is affine").0
        });
        let flip = self.flip.step_size;
        let (moments, clip, param_scale) = (&self.rms, &self.clip, &self.param_scale);
        let tensors: Vec<_> = updates.iter().zip(params.iter_mut()).zip(sums).enumerate().collect();
        tensors.into_par_iter().for_each(|(i, ((u, p), sum))| {
            // `rms(u)` and `rms(p)`, from the moment pass's sums where it gave them.
            let d = clip.as_ref().map(|c| c.divisor(sum.map_or_else(|| rms(u), |s| rms_of(s.0, u.len()))));
            let s = param_scale.as_ref().map(|m| m.factor(sum.map_or_else(|| rms(p), |s| rms_of(s.1, p.len()))));
            let f = [d, lr, s];
            match moments.kinds[i] {
                // The update was not stored: `g/√v` again, from the gradient and the new moment.
                Factoring::Full => {
                    let (g, v) = (grads[i], &moments.v[i]);
                    let prefetch = p.len() >= PREFETCH_MIN;
                    crate::kernel::for_chunks(p, |off, p| {
                        let r = off..off + p.len();
                        recomputed_add_simd(p, &g[r.clone()], &v[r], f, flip, prefetch)
                    });
                }
                Factoring::Factored { .. } => {
                    crate::kernel::for_chunks(p, |off, p| scaled_add_simd(p, &u[off..off + p.len()], f, flip))
                }
            }
        });
        Ok(())
    }
    /// The chain's names: link 0 the moments, the learning rate at its index among the links.
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.push("0");
        self.rms.visit_state(v)?;
        v.pop();
        if let Some(l) = &mut self.lr {
            v.push(&(1 + self.clip.is_some() as usize).to_string());
            l.visit_state(v)?;
            v.pop();
        }
        Ok(())
    }
}

/// optax `scale_by_sm3` (Anil et al. 2019): memory-efficient AdaGrad with one accumulator per
/// index of each axis, followed by momentum.
pub struct ScaleBySm3 {
    b1: f32,
    b2: f32,
    eps: f32,
    shapes: Vec<Vec<usize>>,
    /// Per parameter, the accumulators of each axis concatenated.
    mu: Vec<Vec<f32>>,
    nu: Vec<Vec<f32>>,
}
/// The hyper-parameters of [`ScaleBySm3`], with optax `scale_by_sm3`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleBySm3Config {
    /// Decay of the momentum.
    pub b1: f64,
    /// Decay of the accumulators (1: plain sums).
    pub b2: f64,
    /// ε added to the denominator.
    pub eps: f64,
}
impl Default for ScaleBySm3Config {
    fn default() -> Self {
        ScaleBySm3Config { b1: 0.9, b2: 1.0, eps: 1e-8 }
    }
}
impl ScaleBySm3 {
    /// A `ScaleBySm3` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleBySm3Config) -> Self {
        let ScaleBySm3Config { b1, b2, eps } = config;
        ScaleBySm3 { b1: b1 as f32, b2: b2 as f32, eps: eps as f32, shapes: vec![], mu: vec![], nu: vec![] }
    }
}
impl Transform for ScaleBySm3 {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.shapes = shapes.to_vec();
        // One accumulator per index of each axis; an empty tensor needs none of them (its axes
        // may be long).
        self.mu =
            shapes.iter().map(|s| vec![0.0; if numel(s) == 0 { 1 } else { s.iter().sum::<usize>().max(1) }]).collect();
        self.nu = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], _params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, _params)?;
        let (c0, c1) = (if self.b2 != 1.0 { 1.0 - self.b2 } else { 1.0 }, self.b2);
        for (i, u) in updates.iter_mut().enumerate() {
            if u.is_empty() {
                // An empty tensor's accumulator stays as it is (no maximum over no element).
                continue;
            }
            let s = &self.shapes[i];
            let offsets: Vec<usize> = s
                .iter()
                .scan(0, |acc, &d| {
                    let o = *acc;
                    *acc += d;
                    Some(o)
                })
                .collect();
            let mut idx = vec![0; s.len()];
            let mut new_mu = vec![f32::NEG_INFINITY; self.mu[i].len()];
            if s.len() == 2 && !u.is_empty() {
                // A matrix, the common case, row by row: the loop below without an index
                // unravelled (two divisions) per element; the same operations in the same order.
                let (rows, cols) = (s[0], s[1]);
                let (mu_row, mu_col) = self.mu[i].split_at(rows);
                let (new_row, new_col) = new_mu.split_at_mut(rows);
                let (b1, eps) = (self.b1, self.eps);
                for (r, (gs, nus)) in u.chunks_mut(cols).zip(self.nu[i].chunks_mut(cols)).enumerate() {
                    let (mu_col, new_col) = (&mu_col[..cols], &mut new_col[..cols]);
                    let mut row_max = new_row[r];
                    for c in 0..cols {
                        let g = gs[c];
                        let accum = c0 * (g * g) + c1 * f32::INFINITY.min(mu_row[r]).min(mu_col[c]);
                        row_max = row_max.max(accum);
                        new_col[c] = new_col[c].max(accum);
                        let inv = if accum > 0.0 { 1.0 / (accum + eps).sqrt() } else { 0.0 };
                        nus[c] = (1.0 - b1) * (g * inv) + b1 * nus[c];
                        gs[c] = nus[c];
                    }
                    new_row[r] = row_max;
                }
                self.mu[i] = new_mu;
                continue;
            }
            for (e, g) in u.iter_mut().enumerate() {
                let accum = if s.len() < 2 {
                    c0 * (*g * *g) + c1 * self.mu[i][e.min(self.mu[i].len() - 1)]
                } else {
                    unravel(e, s, &mut idx);
                    let m = (0..s.len()).map(|k| self.mu[i][offsets[k] + idx[k]]).fold(f32::INFINITY, f32::min);
                    c0 * (*g * *g) + c1 * m
                };
                if s.len() < 2 {
                    let last = new_mu.len() - 1;
                    new_mu[e.min(last)] = accum;
                } else {
                    for k in 0..s.len() {
                        let slot = &mut new_mu[offsets[k] + idx[k]];
                        *slot = slot.max(accum);
                    }
                }
                let inv = if accum > 0.0 { 1.0 / (accum + self.eps).sqrt() } else { 0.0 };
                let up = *g * inv;
                let nu = &mut self.nu[i][e];
                *nu = (1.0 - self.b1) * up + self.b1 * *nu;
                *g = *nu;
            }
            self.mu[i] = new_mu;
        }
        Ok(())
    }
    state!(ScaleBySm3; bufs: [mu, nu]; counters: []; scalars: []);
}
