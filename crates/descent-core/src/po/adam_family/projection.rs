//! AdamP and SGDP (Heo et al. 2021): updates whose radial component is removed for parameters that
//! look scale-invariant, which needs whole tensors (cosine similarities, per-channel norms).

use super::common::{
    adam_debias, adanorm_step, cautious, cautious_step, debias, lerp, per_tensor, rescaled, Decay, NO_RESCALE,
};
use crate::error::Result;
use crate::kernel::{fold_lanes, lane_sums};
use crate::learning_rate::LearningRate;
use crate::transform::{Shapes, Transform};
use crate::transforms::{state, sum_sq, zeros};

/// `|cos(x, y)|` of two rows as `torch.nn.functional.cosine_similarity` computes it: each row
/// divided by its norm (floored at `eps`) before the dot product.
fn abs_cosine(x: &[f32], y: &[f32], eps: f32) -> f32 {
    let nx = (sum_sq(x).sqrt() as f32).max(eps);
    let ny = (sum_sq(y).sqrt() as f32).max(eps);
    (scaled_dot(x, y, nx, ny) as f32).abs()
}

/// `Σ (x/sx)·(y/sy)` in f64, over the eight lanes of `sum_sq` (one serial chain of f64 adds
/// held AdamP's step at 3.4× AdamW's on the GPT parameters), vectorized for the CPU at hand.
fn scaled_dot(x: &[f32], y: &[f32], sx: f32, sy: f32) -> f64 {
    #[inline(always)]
    fn body(x: &[f32], y: &[f32], sx: f32, sy: f32) -> f64 {
        let y = &y[..x.len()];
        let mut lanes = [0.0f64; 8];
        lane_sums(&mut lanes, x, |k| ((x[k] / sx) * (y[k] / sy)) as f64);
        fold_lanes(lanes)
    }
    crate::kernel::dispatch_simd!(body(x: &[f32], y: &[f32], sx: f32, sy: f32) -> f64)
}

/// The library's `projection`: for the channel view (one row per slice along the first axis), then
/// the layer view (one row), the first whose largest `|cos(g, p)|` over its rows is below
/// `delta/√(row length)` has the radial component `p̂·⟨p̂, d⟩` (per row, `p̂ = p/(‖p‖ + eps)`)
/// removed from `perturb`, and the decay ratio becomes `wd_ratio`. Returns the decay ratio.
pub(crate) fn project(
    p: &[f32],
    grad: &[f32],
    perturb: &mut [f32],
    rows: usize,
    delta: f64,
    wd_ratio: f64,
    eps: f32,
) -> f64 {
    let n = p.len();
    if n == 0 {
        return 1.0;
    }
    for rows in [rows, 1] {
        let cols = n / rows;
        let max_cos = (0..rows)
            .map(|r| abs_cosine(&grad[r * cols..(r + 1) * cols], &p[r * cols..(r + 1) * cols], eps))
            .fold(f32::NEG_INFINITY, |a, b| if b > a || b.is_nan() { b } else { a });
        // A NaN maximum compares false, as in torch.
        if (max_cos as f64) < delta / (cols as f64).sqrt() {
            for r in 0..rows {
                let (pr, dr) = (&p[r * cols..(r + 1) * cols], &mut perturb[r * cols..(r + 1) * cols]);
                let norm = sum_sq(pr).sqrt() as f32 + eps;
                let radial = scaled_dot(pr, dr, norm, 1.0) as f32;
                for (d, &w) in dr.iter_mut().zip(pr) {
                    *d -= (w / norm) * radial;
                }
            }
            return wd_ratio;
        }
    }
    1.0
}

/// Rows of the channel view of a tensor of this shape (its first axis; 1 for a vector).
fn channel_rows(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(1).max(1)
}

/// pytorch_optimizer `AdamP` (Heo et al. 2021): Adam (optionally Nesterov) whose update, for
/// parameters with more than one axis that look scale-invariant, loses its radial component,
/// and whose decoupled decay is then scaled by `wd_ratio`.
pub struct AdamP {
    lr: LearningRate,
    betas: [f64; 2],
    decay: Decay,
    delta: f64,
    wd_ratio: f64,
    nesterov: bool,
    eps: f32,
    adam_debias: bool,
    adanorm: Option<f64>,
    cautious: bool,
    maximize: bool,
    step: u64,
    shapes: Vec<Vec<usize>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: Vec<Vec<f32>>,
    /// The step's perturbation, kept between steps (not state): a new vector per tensor and step
    /// was fresh pages the kernel zeroed every time.
    scratch: Vec<f32>,
}

/// `AdamP`'s arguments, with its defaults.
pub struct AdamPConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Weight decay (decoupled by default; as an L2 term the library adds it after the update is
    /// formed, so it does not change the step).
    pub decay: Decay,
    /// Threshold of the cosine similarity below which a tensor counts as scale-invariant.
    pub delta: f64,
    /// The decay's ratio for scale-invariant tensors.
    pub wd_ratio: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Added to the denominator and to the norms.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Drop the momentum's entries whose sign disagrees with the gradient's (`cautious`).
    pub cautious: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdamPConfig {
    fn default() -> Self {
        AdamPConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.999],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov: false,
            eps: 1e-8,
            adam_debias: false,
            adanorm: None,
            cautious: false,
            maximize: false,
        }
    }
}

impl AdamP {
    pub fn new(c: AdamPConfig) -> Self {
        AdamP {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            delta: c.delta,
            wd_ratio: c.wd_ratio,
            nesterov: c.nesterov,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            adanorm: c.adanorm,
            cautious: c.cautious,
            maximize: c.maximize,
            step: 0,
            shapes: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
            exp_grad_adanorm: vec![],
            scratch: vec![],
        }
    }
}

impl Transform for AdamP {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.shapes = shapes.to_vec();
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.exp_grad_adanorm = per_tensor(shapes, self.adanorm.is_some());
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let bc2 = debias(b2, self.step).sqrt() as f32;
        let step_size = adam_debias(self.adam_debias, lr, debias(b1, self.step)) as f32;
        let (w1, b2, c2) = ((1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            if self.maximize {
                u.iter_mut().for_each(|g| *g = -*g);
            }
            let grad = &u[..];
            let norm_scale = match self.adanorm {
                Some(r) => adanorm_step(&mut self.exp_grad_adanorm[i][0], r, grad.len(), |j| grad[j]),
                None => NO_RESCALE,
            };
            for j in 0..grad.len() {
                let g = grad[j];
                m[j] = lerp(m[j], rescaled(g, norm_scale), w1);
                v[j] = v[j] * b2 + c2 * g * g;
            }
            // Cautious: the momentum's entries that disagree with the gradient dropped, the
            // others scaled, before Nesterov's step and the denominator.
            let agree_scale = if self.cautious { cautious_step(grad.len(), |j| (m[j], grad[j])) } else { 1.0 };
            let mut perturb = std::mem::take(&mut self.scratch);
            perturb.clear();
            perturb.extend((0..grad.len()).map(|j| {
                let g = grad[j];
                let inv = 1.0 / (v[j].sqrt() + self.eps) * bc2;
                let mj = if self.cautious { cautious(m[j], g, agree_scale) } else { m[j] };
                if self.nesterov {
                    lerp(mj, g, w1) * inv
                } else {
                    inv * mj
                }
            }));
            let shape = &self.shapes[i];
            let ratio = if shape.len() > 1 {
                project(p, grad, &mut perturb, channel_rows(shape), self.delta, self.wd_ratio, self.eps)
            } else {
                1.0
            };
            let keep = self.decay.keep(lr, ratio);
            for (j, d) in perturb.iter().enumerate() {
                let w = p[j];
                u[j] = (w * keep + -step_size * d) - w;
            }
            self.scratch = perturb;
        }
        Ok(())
    }
    state!(AdamP; bufs: [exp_avg, exp_avg_sq, exp_grad_adanorm]; counters: [step]; scalars: []);
}

/// pytorch_optimizer `SGDP` (Heo et al. 2021): SGD with momentum (optionally Nesterov) whose update
/// loses its radial component for scale-invariant-looking parameters; the decoupled decay is
/// scaled by `ratio/(1 − momentum)`.
pub struct Sgdp {
    lr: LearningRate,
    momentum: f64,
    dampening: f64,
    decay: Decay,
    delta: f64,
    wd_ratio: f64,
    nesterov: bool,
    eps: f32,
    maximize: bool,
    step: u64,
    shapes: Vec<Vec<usize>>,
    momentum_buffer: Vec<Vec<f32>>,
    /// The step's direction, kept between steps (not state), as AdamP's.
    scratch: Vec<f32>,
}

/// `SGDP`'s arguments, with its defaults.
pub struct SgdpConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Momentum factor.
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum.
    pub dampening: f64,
    /// Weight decay (decoupled by default; as an L2 term it does not change the step).
    pub decay: Decay,
    /// Threshold of the cosine similarity below which a tensor counts as scale-invariant.
    pub delta: f64,
    /// The decay's ratio for scale-invariant tensors.
    pub wd_ratio: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Added to the norms.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SgdpConfig {
    fn default() -> Self {
        SgdpConfig {
            lr: LearningRate::Constant(1e-3),
            momentum: 0.0,
            dampening: 0.0,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov: false,
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl Sgdp {
    pub fn new(c: SgdpConfig) -> Self {
        Sgdp {
            lr: c.lr,
            momentum: c.momentum,
            dampening: c.dampening,
            decay: c.decay,
            delta: c.delta,
            wd_ratio: c.wd_ratio,
            nesterov: c.nesterov,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            shapes: vec![],
            momentum_buffer: vec![],
            scratch: vec![],
        }
    }
}

impl Transform for Sgdp {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.shapes = shapes.to_vec();
        self.momentum_buffer = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = self.lr.at(self.step);
        self.step += 1;
        let (mom, damp) = (self.momentum as f32, (1.0 - self.dampening) as f32);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let buf = &mut self.momentum_buffer[i];
            if self.maximize {
                u.iter_mut().for_each(|g| *g = -*g);
            }
            let grad = &u[..];
            let mut d_p = std::mem::take(&mut self.scratch);
            d_p.clear();
            d_p.extend((0..grad.len()).map(|j| {
                buf[j] = buf[j] * mom + damp * grad[j];
                if self.nesterov {
                    buf[j] * mom + grad[j]
                } else {
                    buf[j]
                }
            }));
            let shape = &self.shapes[i];
            let ratio = if shape.len() > 1 {
                project(p, grad, &mut d_p, channel_rows(shape), self.delta, self.wd_ratio, self.eps)
            } else {
                1.0
            };
            let keep = self.decay.keep(lr, ratio / (1.0 - self.momentum));
            let lr = lr as f32;
            for (j, d) in d_p.iter().enumerate() {
                let w = p[j];
                u[j] = (w * keep + -lr * d) - w;
            }
            self.scratch = d_p;
        }
        Ok(())
    }
    state!(Sgdp; bufs: [momentum_buffer]; counters: [step]; scalars: []);
}
