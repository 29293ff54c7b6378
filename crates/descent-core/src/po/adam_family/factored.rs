//! Optimizers with factored second moments (row and column means over the last two axes of every
//! tensor with at least two): pytorch_optimizer's CAME and AdaFactor.

use super::common::{cautious, cautious_step, lerp, Decay};
use crate::error::Result;
use crate::learning_rate::LearningRate;
use crate::transform::{numel, Shapes, Transform};
use crate::transforms::{bf16_to_f32, f32_to_bf16, state, sum_sq, zeros};

/// The `(batch, rows, cols)` view of a tensor factored over its last two axes, or `None` for a
/// tensor with fewer than two axes (or no elements: it keeps no per-axis state).
fn factored_dims(shape: &[usize]) -> Option<(usize, usize, usize)> {
    if shape.len() < 2 {
        return None;
    }
    let n = numel(shape);
    if n == 0 {
        return Some((0, 0, 0));
    }
    let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    Some((n / (r * c), r, c))
}

/// Means of `x` (a `b × r × c` tensor) over its last axis (`b × r`) and over its second-to-last
/// (`b × c`).
fn row_col_means(x: &[f32], (b, r, c): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let mut rows = Vec::with_capacity(b * r);
    let mut cols = Vec::with_capacity(b * c);
    for m in x.chunks_exact(r * c).take(b) {
        rows.extend(m.chunks_exact(c).map(|row| (row.iter().map(|&v| v as f64).sum::<f64>() / c as f64) as f32));
        let mut acc = vec![0.0f64; c];
        for row in m.chunks_exact(c) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
        }
        cols.extend(acc.iter().map(|a| (a / r as f64) as f32));
    }
    (rows, cols)
}

/// `BaseOptimizer.approximate_sq_grad`: `out[q][k] = 1/√(row[q]/mean(row)) · 1/√col[k]` per
/// matrix of the batch.
fn approximate_sq_grad(row: &[f32], col: &[f32], out: &mut [f32], (b, r, c): (usize, usize, usize)) {
    for k in 0..b {
        let (row, col) = (&row[k * r..(k + 1) * r], &col[k * c..(k + 1) * c]);
        let mean = (row.iter().map(|&v| v as f64).sum::<f64>() / r as f64) as f32;
        let cf: Vec<f32> = col.iter().map(|&v| 1.0 / v.sqrt()).collect();
        for (q, out_row) in out[k * r * c..(k + 1) * r * c].chunks_exact_mut(c).enumerate() {
            let rf = 1.0 / (row[q] / mean).sqrt();
            out_row.iter_mut().zip(&cf).for_each(|(o, &cf)| *o = rf * cf);
        }
    }
}

/// `‖x‖/√n`, the root mean square.
fn rms(x: &[f32]) -> f32 {
    (sum_sq(x).sqrt() / (x.len() as f64).sqrt()) as f32
}

/// `x ← β·x + (1−β)·y` (a moment's `mul_(β).add_(y, alpha=1−β)`, `1−β` rounded from `f64`).
fn ema(x: &mut [f32], y: &[f32], beta: f64) {
    let (b, c) = (beta as f32, (1.0 - beta) as f32);
    x.iter_mut().zip(y).for_each(|(x, &y)| *x = *x * b + c * y);
}

/// pytorch_optimizer `CAME` (Luo et al. 2023, confidence-guided adaptive memory efficient
/// optimization): AdaFactor's factored second moment, update clipping and momentum, the momentum
/// then weighted by the factored inverse root of its own squared residual (the confidence).
pub struct Came {
    lr: LearningRate,
    betas: [f64; 3],
    decay: Decay,
    clip_threshold: f64,
    ams_bound: bool,
    eps1: f32,
    eps2: f32,
    maximize: bool,
    step: u64,
    dims: Vec<Option<(usize, usize, usize)>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    exp_avg_sq_row: Vec<Vec<f32>>,
    exp_avg_sq_col: Vec<Vec<f32>>,
    exp_avg_res_row: Vec<Vec<f32>>,
    exp_avg_res_col: Vec<Vec<f32>>,
    exp_avg_sq_hat: Vec<Vec<f32>>,
}

/// `CAME`'s arguments, with its defaults.
pub struct CameConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the momentum, the squared gradient and the squared residual.
    pub betas: [f64; 3],
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Largest root mean square of the preconditioned update.
    pub clip_threshold: f64,
    /// Bound the preconditioner by its running maximum.
    pub ams_bound: bool,
    /// Added to the squared gradient.
    pub eps1: f64,
    /// Added to the squared residual.
    pub eps2: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for CameConfig {
    fn default() -> Self {
        CameConfig {
            lr: LearningRate::Constant(2e-4),
            betas: [0.9, 0.999, 0.9999],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            clip_threshold: 1.0,
            ams_bound: false,
            eps1: 1e-30,
            eps2: 1e-16,
            maximize: false,
        }
    }
}

impl Came {
    pub fn new(c: CameConfig) -> Self {
        Came {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            clip_threshold: c.clip_threshold,
            ams_bound: c.ams_bound,
            eps1: c.eps1 as f32,
            eps2: c.eps2 as f32,
            maximize: c.maximize,
            step: 0,
            dims: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
            exp_avg_sq_row: vec![],
            exp_avg_sq_col: vec![],
            exp_avg_res_row: vec![],
            exp_avg_res_col: vec![],
            exp_avg_sq_hat: vec![],
        }
    }
}

impl Transform for Came {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.dims = shapes.iter().map(|s| factored_dims(s)).collect();
        self.exp_avg = zeros(shapes);
        let per = |f: &dyn Fn(usize, (usize, usize, usize)) -> usize| -> Vec<Vec<f32>> {
            shapes
                .iter()
                .zip(&self.dims)
                .map(|(s, d)| vec![0.0; d.map_or_else(|| f(numel(s), (0, 0, 0)), |d| f(0, d))])
                .collect()
        };
        self.exp_avg_sq = per(&|n, _| n);
        self.exp_avg_sq_row = per(&|_, (b, r, _)| b * r);
        self.exp_avg_sq_col = per(&|_, (b, _, c)| b * c);
        self.exp_avg_res_row = per(&|_, (b, r, _)| b * r);
        self.exp_avg_res_col = per(&|_, (b, _, c)| b * c);
        self.exp_avg_sq_hat = if self.ams_bound { zeros(shapes) } else { vec![vec![]; shapes.len()] };
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [_, b2, b3] = self.betas;
        let w1 = (1.0 - self.betas[0]) as f32;
        let (keep, l2) = (self.decay.keep(lr, 1.0), self.decay.l2());
        let lr = lr as f32;
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            if g.is_empty() {
                continue;
            }
            for (g, &w) in g.iter_mut().zip(p.iter()) {
                *g = if self.maximize { -*g } else { *g };
                if l2 != 0.0 {
                    *g += l2 * w;
                }
            }
            let mut upd: Vec<f32> = g.iter().map(|&g| g * g + self.eps1).collect();
            match self.dims[i] {
                Some(d) => {
                    let (rows, cols) = row_col_means(&upd, d);
                    ema(&mut self.exp_avg_sq_row[i], &rows, b2);
                    ema(&mut self.exp_avg_sq_col[i], &cols, b2);
                    approximate_sq_grad(&self.exp_avg_sq_row[i], &self.exp_avg_sq_col[i], &mut upd, d);
                }
                None => {
                    let v = &mut self.exp_avg_sq[i];
                    ema(v, &upd, b2);
                    upd.iter_mut().zip(v.iter()).for_each(|(u, &v)| *u = 1.0 / v.sqrt());
                }
            }
            if self.ams_bound {
                let hat = &mut self.exp_avg_sq_hat[i];
                for (u, h) in upd.iter_mut().zip(hat.iter_mut()) {
                    *h = h.max(1.0 / *u);
                    *u = 1.0 / (*h / b2 as f32).sqrt();
                }
            }
            upd.iter_mut().zip(g.iter()).for_each(|(u, &g)| *u *= g);
            let clip = (rms(&upd) / self.clip_threshold as f32).max(1.0);
            upd.iter_mut().for_each(|u| *u /= clip);
            let m = &mut self.exp_avg[i];
            m.iter_mut().zip(&upd).for_each(|(m, &u)| *m = lerp(*m, u, w1));
            if let Some(d) = self.dims[i] {
                let res: Vec<f32> = upd
                    .iter()
                    .zip(m.iter())
                    .map(|(&u, &m)| {
                        let r = u - m;
                        r * r + self.eps2
                    })
                    .collect();
                let (rows, cols) = row_col_means(&res, d);
                ema(&mut self.exp_avg_res_row[i], &rows, b3);
                ema(&mut self.exp_avg_res_col[i], &cols, b3);
                approximate_sq_grad(&self.exp_avg_res_row[i], &self.exp_avg_res_col[i], &mut upd, d);
                upd.iter_mut().zip(m.iter()).for_each(|(u, &m)| *u *= m);
            } else {
                upd.copy_from_slice(m);
            }
            for (j, g) in g.iter_mut().enumerate() {
                let w = p[j];
                *g = (w * keep + -lr * upd[j]) - w;
            }
        }
        Ok(())
    }
    state!(Came; bufs: [exp_avg, exp_avg_sq, exp_avg_sq_row, exp_avg_sq_col, exp_avg_res_row, exp_avg_res_col, exp_avg_sq_hat]; counters: [step]; scalars: []);
}

/// The type pytorch_optimizer's AdaFactor keeps its momentum in (`momentum_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MomentumDtype {
    /// bfloat16 (the library's default): the update is rounded to bfloat16, interpolated in
    /// `f32` and stored rounded again, and the parameters move by the stored momentum.
    Bf16,
    /// float32.
    F32,
}

/// pytorch_optimizer `AdaFactor` (Shazeer & Stern 2018, BigVision variant): factored second
/// moments with decay `β₂ₜ = min(β₂, 1 − t^decay_rate)`, relative step `min(1e-2, 1/√t)` scaled by
/// `max(eps2, RMS(p))`, update clipping, momentum (kept in bfloat16 by default), decoupled decay.
pub struct AdaFactor {
    lr: LearningRate,
    beta1: Option<f64>,
    beta2: f64,
    decay_rate: f64,
    decay: Decay,
    clip_threshold: f64,
    ams_bound: bool,
    scale_parameter: bool,
    relative_step: bool,
    warmup_init: bool,
    eps1: f32,
    eps2: f64,
    momentum_dtype: MomentumDtype,
    cautious: bool,
    maximize: bool,
    step: u64,
    dims: Vec<Option<(usize, usize, usize)>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    exp_avg_sq_row: Vec<Vec<f32>>,
    exp_avg_sq_col: Vec<Vec<f32>>,
    exp_avg_sq_hat: Vec<Vec<f32>>,
    /// The step's preconditioned gradient, kept between steps (not state).
    scratch: Vec<f32>,
}

/// `AdaFactor`'s arguments, with its defaults.
pub struct AdaFactorConfig {
    /// Learning rate (used only without `relative_step`).
    pub lr: LearningRate,
    /// Momentum decay (`None`: no momentum).
    pub beta1: Option<f64>,
    /// Cap of the second moment's decay.
    pub beta2: f64,
    /// Exponent of the step in the second moment's decay `1 − t^decay_rate`.
    pub decay_rate: f64,
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Largest root mean square of the preconditioned update.
    pub clip_threshold: f64,
    /// Bound the preconditioner by its running maximum.
    pub ams_bound: bool,
    /// Scale the step by the parameters' root mean square.
    pub scale_parameter: bool,
    /// The time-dependent step `min(1e-2, 1/√t)` instead of `lr`.
    pub relative_step: bool,
    /// Warm the relative step up as `1e-6·t`.
    pub warmup_init: bool,
    /// Added to the squared gradient.
    pub eps1: f64,
    /// Floor of the parameters' root mean square.
    pub eps2: f64,
    /// The momentum's storage type.
    pub momentum_dtype: MomentumDtype,
    /// Drop the momentum's entries whose sign disagrees with the gradient's (`cautious`; with
    /// momentum only, as the library).
    pub cautious: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdaFactorConfig {
    fn default() -> Self {
        AdaFactorConfig {
            lr: LearningRate::Constant(1e-3),
            beta1: Some(0.9),
            beta2: 0.999,
            decay_rate: -0.8,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            clip_threshold: 1.0,
            ams_bound: false,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
            eps1: 1e-30,
            eps2: 1e-3,
            momentum_dtype: MomentumDtype::Bf16,
            cautious: false,
            maximize: false,
        }
    }
}

impl AdaFactor {
    pub fn new(c: AdaFactorConfig) -> Self {
        AdaFactor {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            decay_rate: c.decay_rate,
            decay: c.decay,
            clip_threshold: c.clip_threshold,
            ams_bound: c.ams_bound,
            scale_parameter: c.scale_parameter,
            relative_step: c.relative_step,
            warmup_init: c.warmup_init,
            eps1: c.eps1 as f32,
            eps2: c.eps2,
            momentum_dtype: c.momentum_dtype,
            cautious: c.cautious,
            maximize: c.maximize,
            step: 0,
            dims: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
            exp_avg_sq_row: vec![],
            exp_avg_sq_col: vec![],
            exp_avg_sq_hat: vec![],
            scratch: vec![],
        }
    }
}

impl Transform for AdaFactor {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.dims = shapes.iter().map(|s| factored_dims(s)).collect();
        self.exp_avg = if self.beta1.is_some() { zeros(shapes) } else { vec![vec![]; shapes.len()] };
        let per = |f: &dyn Fn(usize, (usize, usize, usize)) -> usize| -> Vec<Vec<f32>> {
            shapes
                .iter()
                .zip(&self.dims)
                .map(|(s, d)| vec![0.0; d.map_or_else(|| f(numel(s), (0, 0, 0)), |d| f(0, d))])
                .collect()
        };
        self.exp_avg_sq = per(&|n, _| n);
        self.exp_avg_sq_row = per(&|_, (b, r, _)| b * r);
        self.exp_avg_sq_col = per(&|_, (b, _, c)| b * c);
        self.exp_avg_sq_hat = if self.ams_bound { zeros(shapes) } else { vec![vec![]; shapes.len()] };
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let beta2_t = self.beta2.min(1.0 - t.powf(self.decay_rate));
        let w2 = (1.0 - beta2_t) as f32;
        let rel = if self.relative_step {
            let min_step = if self.warmup_init { 1e-6 * t } else { 1e-2 };
            min_step.min(1.0 / t.sqrt())
        } else {
            lr
        };
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            if g.is_empty() {
                continue;
            }
            if self.maximize {
                g.iter_mut().for_each(|g| *g = -*g);
            }
            let step_lr =
                if self.scale_parameter { (rms(p).max(self.eps2 as f32) as f64 * rel) as f32 } else { rel as f32 };
            let keep = self.decay.keep(step_lr as f64, 1.0);
            let l2 = self.decay.l2();
            if l2 != 0.0 {
                g.iter_mut().zip(p.iter()).for_each(|(g, &w)| *g += l2 * w);
            }
            // The preconditioned gradient in a buffer kept between steps (a new one per tensor
            // and step was fresh pages to zero), and the elementwise passes fused between the
            // reductions: the same operations per element, in the library's order.
            let mut upd = std::mem::take(&mut self.scratch);
            upd.clear();
            let eps1 = self.eps1;
            match self.dims[i] {
                Some(d) => {
                    upd.extend(g.iter().map(|&g| g * g + eps1));
                    let (rows, cols) = row_col_means(&upd, d);
                    let row = &mut self.exp_avg_sq_row[i];
                    row.iter_mut().zip(&rows).for_each(|(x, &y)| *x = lerp(*x, y, w2));
                    let col = &mut self.exp_avg_sq_col[i];
                    col.iter_mut().zip(&cols).for_each(|(x, &y)| *x = lerp(*x, y, w2));
                    approximate_sq_grad(&self.exp_avg_sq_row[i], &self.exp_avg_sq_col[i], &mut upd, d);
                }
                None => {
                    let v = &mut self.exp_avg_sq[i];
                    upd.extend(g.iter().zip(v.iter_mut()).map(|(&g, v)| {
                        *v = lerp(*v, g * g + eps1, w2);
                        1.0 / v.sqrt()
                    }));
                }
            }
            if self.ams_bound {
                let hat = &mut self.exp_avg_sq_hat[i];
                for ((u, h), &g) in upd.iter_mut().zip(hat.iter_mut()).zip(g.iter()) {
                    *h = h.max(1.0 / *u);
                    *u = 1.0 / (*h / w2).sqrt() * g;
                }
            } else {
                upd.iter_mut().zip(g.iter()).for_each(|(u, &g)| *u *= g);
            }
            let clip = (rms(&upd) / self.clip_threshold as f32).max(1.0);
            let scaled = |u: f32| u / clip * step_lr;
            match self.beta1 {
                None => {
                    for ((g, &u), &w) in g.iter_mut().zip(&upd).zip(p.iter()) {
                        *g = (w * keep - scaled(u)) - w;
                    }
                }
                Some(b1) => {
                    let w1 = (1.0 - b1) as f32;
                    let m = &mut self.exp_avg[i];
                    let bf16 = self.momentum_dtype == MomentumDtype::Bf16;
                    for (&u, m) in upd.iter().zip(m.iter_mut()) {
                        *m = if bf16 {
                            let end = bf16_to_f32(f32_to_bf16(scaled(u)));
                            bf16_to_f32(f32_to_bf16(lerp(*m, end, w1)))
                        } else {
                            lerp(*m, scaled(u), w1)
                        };
                    }
                    // Cautious: the momentum's entries that disagree with the gradient dropped,
                    // the others scaled.
                    let agree_scale = if self.cautious { cautious_step(g.len(), |j| (m[j], g[j])) } else { 1.0 };
                    for ((g, &w), &m) in g.iter_mut().zip(p.iter()).zip(m.iter()) {
                        let update = if self.cautious { cautious(m, *g, agree_scale) } else { m };
                        *g = (w * keep - update) - w;
                    }
                }
            }
            self.scratch = upd;
        }
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn crate::state::StateVisitor) -> Result<()> {
        for (i, b) in self.exp_avg.iter_mut().enumerate() {
            let name = format!("exp_avg.{i}");
            match self.momentum_dtype {
                MomentumDtype::Bf16 => {
                    v.bf16_buffer(&name, b)?;
                    // A loaded momentum is cast to the momentum type, as the library's
                    // `load_state_dict` does.
                    b.iter_mut().for_each(|x| *x = bf16_to_f32(f32_to_bf16(*x)));
                }
                MomentumDtype::F32 => v.buffer(&name, b)?,
            }
        }
        crate::state::visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        crate::state::visit_buffers(v, "exp_avg_sq_row", &mut self.exp_avg_sq_row)?;
        crate::state::visit_buffers(v, "exp_avg_sq_col", &mut self.exp_avg_sq_col)?;
        crate::state::visit_buffers(v, "exp_avg_sq_hat", &mut self.exp_avg_sq_hat)?;
        v.counter("step", &mut self.step)
    }
}
