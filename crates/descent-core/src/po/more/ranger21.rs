//! pytorch_optimizer `Ranger21` (Wright & Demeure 2021, "Ranger21: a synergistic deep learning
//! optimizer").

use super::common::PoWeightDecay;
use super::common::{betas, check_lr, debias, in_range, lerp, maximize_and_foreach, non_negative, sum_f32};
use crate::error::{ensure, invalid, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{numel, Shapes, Transform};

/// `Ranger21`'s arguments, with its defaults.
pub struct Ranger21Config {
    /// Total training steps, for the built-in warm-up and warm-down (required).
    pub num_iterations: u64,
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Amplitude of the positive-negative momentum's noise.
    pub beta0: f64,
    /// β₁ (its square decays the two momenta) and β₂ (the second moment's decay).
    pub betas: (f64, f64),
    /// Smooth the denominator with a softplus.
    pub use_softplus: bool,
    /// The softplus's β.
    pub beta_softplus: f64,
    /// Use the learning rate as given, without warm-up or warm-down.
    pub disable_lr_scheduler: bool,
    /// Steps of linear warm-up (`None`: from β₂ and `num_iterations`).
    pub num_warm_up_iterations: Option<u64>,
    /// Steps of linear warm-down at the end (`None`: 28% of `num_iterations`).
    pub num_warm_down_iterations: Option<u64>,
    /// The learning rate at the end of the warm-down.
    pub warm_down_min_lr: f64,
    /// Adaptive gradient clipping: the largest ratio of a gradient's unit norm to its parameter's.
    pub agc_clipping_value: f64,
    /// Adaptive gradient clipping: the smallest parameter unit norm.
    pub agc_eps: f64,
    /// Subtract from each gradient its mean over all axes but the first (tensors of 2+ axes).
    pub centralize_gradients: bool,
    /// Divide each gradient of more than 2 entries by its standard deviation.
    pub normalize_gradients: bool,
    /// Steps between Lookahead's slow updates.
    pub lookahead_merge_time: u64,
    /// Weight of the fast weights in Lookahead's slow update.
    pub lookahead_blending_alpha: f64,
    /// Weight decay: decoupled, scaled by `1/√(mean v̂)` (the L2 form does nothing in the class,
    /// nor here).
    pub weight_decay: PoWeightDecay,
    /// Factor of the norm loss, which pulls each unit norm toward 1.
    pub norm_loss_factor: f64,
    /// Added to the denominator and to the unit norms.
    pub eps: f64,
    /// Step by `lr` instead of `lr/(1−β₁ᵗ)` (`adam_debias`).
    pub adam_debias: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Ranger21Config {
    /// The class's defaults for a run of `num_iterations` steps.
    pub fn new(num_iterations: u64) -> Self {
        Ranger21Config {
            num_iterations,
            lr: LearningRate::Constant(1e-3),
            beta0: 0.9,
            betas: (0.9, 0.999),
            use_softplus: true,
            beta_softplus: 50.0,
            disable_lr_scheduler: false,
            num_warm_up_iterations: None,
            num_warm_down_iterations: None,
            warm_down_min_lr: 3e-5,
            agc_clipping_value: 1e-2,
            agc_eps: 1e-3,
            centralize_gradients: true,
            normalize_gradients: true,
            lookahead_merge_time: 5,
            lookahead_blending_alpha: 0.5,
            weight_decay: PoWeightDecay { weight_decay: 1e-4, decouple: true, fixed: false },
            norm_loss_factor: 1e-4,
            eps: 1e-8,
            adam_debias: false,
            maximize: false,
        }
    }

    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = Ranger21Config::new(k.req_u64("num_iterations")?);
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        Ok(Ranger21Config {
            num_iterations: d.num_iterations,
            lr: k.lr("lr", Some(1e-3))?,
            beta0: k.f64("beta0", d.beta0)?,
            betas: (b[0], b[1]),
            use_softplus: k.bool("use_softplus", d.use_softplus)?,
            beta_softplus: k.f64("beta_softplus", d.beta_softplus)?,
            disable_lr_scheduler: k.bool("disable_lr_scheduler", d.disable_lr_scheduler)?,
            num_warm_up_iterations: k.opt_u64("num_warm_up_iterations")?,
            num_warm_down_iterations: k.opt_u64("num_warm_down_iterations")?,
            warm_down_min_lr: k.f64("warm_down_min_lr", d.warm_down_min_lr)?,
            agc_clipping_value: k.f64("agc_clipping_value", d.agc_clipping_value)?,
            agc_eps: k.f64("agc_eps", d.agc_eps)?,
            centralize_gradients: k.bool("centralize_gradients", d.centralize_gradients)?,
            normalize_gradients: k.bool("normalize_gradients", d.normalize_gradients)?,
            lookahead_merge_time: k.u64("lookahead_merge_time", d.lookahead_merge_time)?,
            lookahead_blending_alpha: k.f64("lookahead_blending_alpha", d.lookahead_blending_alpha)?,
            weight_decay: PoWeightDecay::parse(k, 1e-4, true, Some(false))?,
            norm_loss_factor: k.f64("norm_loss_factor", d.norm_loss_factor)?,
            eps: k.f64("eps", d.eps)?,
            adam_debias: k.bool("adam_debias", d.adam_debias)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// How a tensor's entries fall into the groups of pytorch_optimizer's `unit_norm`: the whole
/// tensor (up to one axis), each `(i, ·, k)` fibre along axis 1 (two or three axes), or each slice
/// along the first axis (four or more).
#[derive(Clone, Copy, Debug)]
enum UnitNorm {
    Whole,
    /// Fibres along axis 1 of a `[a, b, c]` tensor (`c = 1` for a matrix).
    Axis1 {
        b: usize,
        c: usize,
    },
    /// Slices of `inner` entries along the first axis.
    Rows {
        inner: usize,
    },
}

impl UnitNorm {
    fn of(shape: &[usize]) -> Self {
        match shape.len() {
            0 | 1 => UnitNorm::Whole,
            2 => UnitNorm::Axis1 { b: shape[1], c: 1 },
            3 => UnitNorm::Axis1 { b: shape[1], c: shape[2] },
            _ => UnitNorm::Rows { inner: shape[1..].iter().product() },
        }
    }
    /// Number of groups of a tensor of `n` entries.
    fn groups(self, n: usize) -> usize {
        match self {
            UnitNorm::Whole => 1,
            UnitNorm::Axis1 { b, c } => (n / (b * c).max(1)) * c,
            UnitNorm::Rows { inner } => n / inner.max(1),
        }
    }
    /// The group of entry `j`.
    #[inline(always)]
    fn group(self, j: usize) -> usize {
        match self {
            UnitNorm::Whole => 0,
            UnitNorm::Axis1 { b, c } => (j / (b * c)) * c + j % c,
            UnitNorm::Rows { inner } => j / inner,
        }
    }
    /// The L2 norm of each group of `x`, in `f32`.
    fn norms(self, x: &[f32]) -> Vec<f32> {
        let mut acc = vec![0.0f64; self.groups(x.len())];
        for (j, &v) in x.iter().enumerate() {
            acc[self.group(j)] += (v as f64) * (v as f64);
        }
        acc.iter().map(|s| s.sqrt() as f32).collect()
    }
}

/// Ranger21: AdamW with positive-negative momentum, AMSGrad's maximum and a softplus in the
/// denominator, adaptive gradient clipping, gradient centralization and normalization, a norm
/// loss, decoupled decay scaled by the mean second moment, a linear warm-up and warm-down of the
/// learning rate, and Lookahead.
///
/// Step t: `g ← normalize(centralize(agc(g)))`, `v ← β₂v + (1−β₂)g²`, `V = √((1 + Σv/(1−β₂ᵗ))/N)`;
/// `p ← p(1 − lr·λ/V)`, `p ← p(1 − lr·2·nlf·(1 − 1/(‖p‖ᵤ + ε)))`; `v̄ ← max(v̄, v)`,
/// `δ = softplus(√v̄/√(1−β₂ᵗ) + ε)`; `g ← normalize(centralize(g))` (a second time, as the class
/// does); with `m, m′` the two momenta (exchanging roles every step), `m ← lerp(m, g, 1−β₁²)`,
/// `p ← p − lr/(1−β₁ᵗ) · ((1+β₀)m − β₀m′)/√((1+β₀)² + β₀²) / δ`; every `k` steps Lookahead's
/// slow update.
pub struct Ranger21 {
    lr: LearningRate,
    starting_lr: f64,
    min_lr: f64,
    beta0: f64,
    b1: f64,
    b2: f64,
    use_softplus: bool,
    beta_softplus: f32,
    disable_lr_scheduler: bool,
    num_warm_up_iterations: u64,
    num_warm_down_iterations: u64,
    start_warm_down: i128,
    agc_clipping_value: f32,
    agc_eps: f32,
    centralize_gradients: bool,
    normalize_gradients: bool,
    lookahead_merge_time: u64,
    lookahead_blending_alpha: f32,
    decay: PoWeightDecay,
    norm_loss_factor: f32,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    shapes: Vec<Vec<usize>>,
    step: u64,
    lookahead_step: u64,
    grad_ma: Vec<Vec<f32>>,
    variance_ma: Vec<Vec<f32>>,
    lookahead_params: Vec<Vec<f32>>,
    neg_grad_ma: Vec<Vec<f32>>,
    max_variance_ma: Vec<Vec<f32>>,
}

impl Ranger21 {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: Ranger21Config) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.warm_down_min_lr, "learning rate (`warm_down_min_lr`)")?;
        in_range(c.beta0, "beta0", 0.0, 1.0, "[)")?;
        non_negative(c.agc_clipping_value, "agc_clipping_value")?;
        non_negative(c.eps, "eps")?;
        non_negative(c.agc_eps, "agc_eps")?;
        let n = c.num_iterations;
        let warm_up = match c.num_warm_up_iterations {
            Some(w) => w,
            None => {
                ensure(n > 0, || "num_iterations must be positive to derive the warm-up".into())?;
                // `build_warm_up_iterations`.
                let w = (2.0 / (1.0 - c.betas.1)).ceil();
                if w / n as f64 > 0.45 {
                    (0.22 * n as f64) as u64
                } else {
                    w as u64
                }
            }
        };
        // `build_warm_down_iterations`.
        let warm_down = c.num_warm_down_iterations.unwrap_or_else(|| n - (0.72 * n as f64) as u64);
        let starting_lr = c.lr.at(0);
        Ok(Ranger21 {
            lr: c.lr,
            starting_lr,
            min_lr: c.warm_down_min_lr,
            beta0: c.beta0,
            b1: c.betas.0,
            b2: c.betas.1,
            use_softplus: c.use_softplus,
            beta_softplus: c.beta_softplus as f32,
            disable_lr_scheduler: c.disable_lr_scheduler,
            num_warm_up_iterations: warm_up,
            num_warm_down_iterations: warm_down,
            start_warm_down: n as i128 - warm_down as i128,
            agc_clipping_value: c.agc_clipping_value as f32,
            agc_eps: c.agc_eps as f32,
            centralize_gradients: c.centralize_gradients,
            normalize_gradients: c.normalize_gradients,
            lookahead_merge_time: c.lookahead_merge_time,
            lookahead_blending_alpha: c.lookahead_blending_alpha as f32,
            decay: c.weight_decay,
            norm_loss_factor: c.norm_loss_factor as f32,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            shapes: vec![],
            step: 0,
            lookahead_step: 0,
            grad_ma: vec![],
            variance_ma: vec![],
            lookahead_params: vec![],
            neg_grad_ma: vec![],
            max_variance_ma: vec![],
        })
    }

    /// The learning rate of step `step` (1-based) from the group's rate: `warm_up_dampening`,
    /// then `warm_down`.
    fn scheduled_lr(&self, lr: f64, step: u64) -> f64 {
        if self.disable_lr_scheduler {
            return lr;
        }
        let mut lr = lr;
        if step <= self.num_warm_up_iterations {
            lr *= (step as f64 / self.num_warm_up_iterations as f64).min(1.0);
        }
        if (step as i128) < self.start_warm_down {
            return lr;
        }
        let iteration = ((step as i128 + 1) - self.start_warm_down).max(1) as f64;
        let pct = (iteration / (self.num_warm_down_iterations + 1) as f64).min(1.0);
        (self.starting_lr - (self.starting_lr - self.min_lr) * pct).max(self.min_lr)
    }

    /// `centralize_gradient` (all axes but the first, tensors of 2+ axes) then
    /// `normalize_gradient` (by the unbiased standard deviation + 1e-8, more than 2 entries), as
    /// enabled.
    fn preprocess(&self, g: &mut [f32], shape: &[usize]) {
        let n = g.len();
        if self.centralize_gradients && shape.len() > 1 && n > 0 {
            let inner = n / shape[0].max(1);
            if inner > 0 {
                for row in g.chunks_mut(inner) {
                    let mean = (sum_f32(row.len(), |j| row[j]) as f64 / inner as f64) as f32;
                    row.iter_mut().for_each(|x| *x += -mean);
                }
            }
        }
        if self.normalize_gradients && n > 2 {
            let mean = g.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let var = g.iter().map(|&x| (x as f64 - mean) * (x as f64 - mean)).sum::<f64>() / (n - 1) as f64;
            let s = var.sqrt() as f32 + 1e-8;
            g.iter_mut().for_each(|x| *x /= s);
        }
    }

    /// `agc`: where a group's gradient norm exceeds `clip·max(‖p‖, agc_eps)`, the gradient is
    /// scaled down to it.
    fn agc(&self, p: &[f32], g: &mut [f32], un: UnitNorm) {
        let pn = un.norms(p);
        let gn = un.norms(g);
        for (j, x) in g.iter_mut().enumerate() {
            let k = un.group(j);
            let max_norm = clamp_min(pn[k], self.agc_eps) * self.agc_clipping_value;
            let g_norm = clamp_min(gn[k], 1e-6);
            if g_norm > max_norm {
                *x *= max_norm / g_norm;
            }
        }
    }
}

/// torch's `clamp_min`, which keeps a NaN.
#[inline]
fn clamp_min(x: f32, low: f32) -> f32 {
    if x < low {
        low
    } else {
        x
    }
}

/// torch's `softplus(x, beta)` (threshold 20): `x` where `βx > 20`, else `log(1 + exp(βx))/β`.
#[inline]
fn softplus(x: f32, beta: f32) -> f32 {
    if x * beta > 20.0 {
        x
    } else {
        (x * beta).exp().ln_1p() / beta
    }
}

impl Transform for Ranger21 {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.step, self.lookahead_step) = (0, 0);
        self.shapes = shapes.to_vec();
        let zeros = || shapes.iter().map(|s| vec![0.0f32; numel(s)]).collect::<Vec<_>>();
        (self.grad_ma, self.variance_ma, self.neg_grad_ma, self.max_variance_ma) = (zeros(), zeros(), zeros(), zeros());
        self.lookahead_params = params.iter().map(|p| p.to_vec()).collect();
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let param_size: usize = updates.iter().map(|u| u.len()).sum();
        if param_size == 0 {
            return Err(invalid("Ranger21 needs parameters with at least one element"));
        }
        let group_lr = self.lr.at(self.step);
        self.step += 1;
        let (b1, b2) = (self.b1, self.b2);
        let bc2 = debias(b2, self.step) as f32;
        let (b2f, w2) = (b2 as f32, (1.0 - b2) as f32);

        // Clipping, centralization, normalization; the second moments and their mean.
        let mut variance_ma_sum = 1.0f32;
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            if self.maximize {
                g.iter_mut().for_each(|x| *x = -*x);
            }
            let shape = &self.shapes[i];
            self.agc(p, g, UnitNorm::of(shape));
            self.preprocess(g, shape);
            let v = &mut self.variance_ma[i];
            for (v, &x) in v.iter_mut().zip(g.iter()) {
                *v = *v * b2f + w2 * x * x;
            }
            variance_ma_sum += sum_f32(v.len(), |j| v[j] / bc2);
        }
        let variance_normalized = ((variance_ma_sum / param_size as f32) as f64).sqrt();

        let bc1 = debias(b1, self.step);
        let bc2_sq = debias(b2, self.step).sqrt() as f32;
        let lr = self.scheduled_lr(group_lr, self.step);
        let step_size = (if self.adam_debias { lr } else { lr / bc1 }) as f32;
        let (factor, _) =
            if self.decay.decouple { self.decay.terms(lr, 1.0 / variance_normalized) } else { (1.0, 0.0) };
        let (lr32, eps) = (lr as f32, self.eps);
        let noise_norm = ((1.0 + self.beta0).powi(2) + self.beta0.powi(2)).sqrt();
        let (pos, neg, inv_noise) = ((1.0 + self.beta0) as f32, (-self.beta0) as f32, (1.0 / noise_norm) as f32);
        let w1 = (1.0 - b1 * b1) as f32;
        let swap = self.step.is_multiple_of(2);
        let nlf2 = 2.0 * self.norm_loss_factor;
        self.lookahead_step += 1;
        let merge = self.lookahead_step >= self.lookahead_merge_time;
        if merge {
            self.lookahead_step = 0;
        }
        let blend = 1.0 - self.lookahead_blending_alpha;
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            let shape = self.shapes[i].clone();
            let un = UnitNorm::of(&shape);
            let mut w: Vec<f32> = p.iter().map(|&x| x * factor).collect();
            let norms = un.norms(&w);
            let shrink: Vec<f32> = norms.iter().map(|&n| 1.0 - lr32 * (nlf2 * (1.0 - 1.0 / (n + eps)))).collect();
            for (j, x) in w.iter_mut().enumerate() {
                *x *= shrink[un.group(j)];
            }
            self.preprocess(g, &shape);
            let (ma, neg_ma) = if swap {
                (&mut self.neg_grad_ma[i], &self.grad_ma[i])
            } else {
                (&mut self.grad_ma[i], &self.neg_grad_ma[i])
            };
            let (v, vmax) = (&self.variance_ma[i], &mut self.max_variance_ma[i]);
            for j in 0..g.len() {
                vmax[j] = if v[j] > vmax[j] || v[j].is_nan() { v[j] } else { vmax[j] };
                let mut de_nom = vmax[j].sqrt() / bc2_sq + eps;
                if self.use_softplus {
                    de_nom = softplus(de_nom, self.beta_softplus);
                }
                ma[j] = lerp(ma[j], g[j], w1);
                let pn = (ma[j] * pos + neg * neg_ma[j]) * inv_noise;
                w[j] += -step_size * (pn / de_nom);
            }
            if merge {
                let slow = &mut self.lookahead_params[i];
                for (x, s) in w.iter_mut().zip(slow.iter_mut()) {
                    *x = lerp(*x, *s, blend);
                    *s = *x;
                }
            }
            for ((u, &x), &y) in g.iter_mut().zip(p.iter()).zip(&w) {
                *u = y - x;
            }
        }
        Ok(())
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "grad_ma", &mut self.grad_ma)?;
        crate::state::visit_buffers(v, "variance_ma", &mut self.variance_ma)?;
        crate::state::visit_buffers(v, "lookahead_params", &mut self.lookahead_params)?;
        crate::state::visit_buffers(v, "neg_grad_ma", &mut self.neg_grad_ma)?;
        crate::state::visit_buffers(v, "max_variance_ma", &mut self.max_variance_ma)?;
        v.counter("step", &mut self.step)?;
        v.counter("lookahead_step", &mut self.lookahead_step)
    }
}
