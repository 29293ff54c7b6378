//! The elementwise Adam relatives of pytorch_optimizer, each one fused kernel that returns the
//! parameter displacement: AdaBound, LaProp, QHAdam, Tiger, Lion, Yogi, AdaBelief, diffGrad, Adan.
//!
//! Each kernel computes the new parameter as the library does (decay, then step, in the
//! library's order) and returns its difference from the current one, so that adding it gives the
//! library's parameter to the last bit whenever the two are within a factor of two.

use super::common::{
    adam_debias, adanorm_step, adanorm_steps, cautious, cautious_step, debias, grad_in, lerp, per_tensor, rectify,
    rescaled, AdaNormScale, Decay, RowMeans, NO_RESCALE,
};
use crate::kernel::{exp_neg_f32, global_sum_sq, Elementwise};
use crate::learning_rate::LearningRate;
use crate::transforms::{elementwise_transform, full, sign, simd_apply, zeros, ParamBufs};

use crate::kernel::clip as clamp;

/// AMSBound's running maximum of a second moment `x` at element `j`: with `AMS`,
/// `max[j] ← max(max[j], x)` and that maximum; without, `x` itself (and `max` is not touched: the
/// kernels' loops are compiled once per setting, `max` empty without it).
#[inline(always)]
fn ams_max<const AMS: bool>(max: &mut [f32], j: usize, x: f32) -> f32 {
    if AMS {
        max[j] = max[j].max(x);
        max[j]
    } else {
        x
    }
}

/// How a rectified step (RAdam's variance rectification) moves the parameters this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rect {
    /// The adaptive step `m/denominator`.
    Adaptive,
    /// Below the SMA threshold, degenerated to SGD with momentum: the step `m`.
    Momentum,
    /// Below the threshold, not degenerated: no step.
    Skip,
}

/// pytorch_optimizer `AdaBound` (Luo et al. 2019): Adam whose per-element step size is clipped
/// into bounds that converge to the SGD rate `final_lr`:
/// `p ← p − clamp(α̂/(√v + ε), ηₗ(t), ηᵤ(t))·m` with `α̂ = lr·√(1−β₂ᵗ)/(1−β₁ᵗ)`,
/// `ηₗ = f·(1 − 1/(γt + 1))`, `ηᵤ = f·(1 + 1/(γt))`, `f = final_lr·lr/base_lr`.
pub struct AdaBound {
    lr: LearningRate,
    /// The learning rate the optimizer was built with (`final_lr` scales with `lr/base_lr`).
    base_lr: f64,
    final_lr: f64,
    betas: [f64; 2],
    gamma: f64,
    decay: Decay,
    ams_bound: bool,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    max_exp_avg_sq: ParamBufs,
    /// This step's `[keep, l2, step_size, lower, upper]`.
    k: [f32; 5],
}

/// `AdaBound`'s arguments, with its defaults.
pub struct AdaBoundConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// The SGD learning rate the bounds converge to (`final_lr`).
    pub final_lr: f64,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Convergence speed of the bounds.
    pub gamma: f64,
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Divide by the running maximum of the second moment (AMSBound).
    pub ams_bound: bool,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Leave the step size without the first moment's bias correction (`adam_debias`; the
    /// library's step reads it from a parameter group, its constructor drops it).
    pub adam_debias: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdaBoundConfig {
    fn default() -> Self {
        AdaBoundConfig {
            lr: LearningRate::Constant(1e-3),
            final_lr: 1e-1,
            betas: [0.9, 0.999],
            gamma: 1e-3,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            ams_bound: false,
            eps: 1e-8,
            adam_debias: false,
            maximize: false,
        }
    }
}

impl AdaBound {
    pub fn new(c: AdaBoundConfig) -> Self {
        let base_lr = c.lr.at(0);
        AdaBound {
            lr: c.lr,
            base_lr,
            final_lr: c.final_lr,
            betas: c.betas,
            gamma: c.gamma,
            decay: c.decay,
            ams_bound: c.ams_bound,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            max_exp_avg_sq: ParamBufs::default(),
            k: [0.0; 5],
        }
    }
}
elementwise_transform!(AdaBound, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.max_exp_avg_sq = if s.ams_bound { zeros(shapes).into() } else { ParamBufs::default() };
}; bufs: [exp_avg, exp_avg_sq, max_exp_avg_sq]; counters: [step]; scalars: [base_lr]);
impl Elementwise for AdaBound {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        if self.base_lr == 0.0 && lr > 0.0 {
            self.base_lr = lr;
        }
        let [b1, b2] = self.betas;
        let t = self.step as f64;
        let final_lr = if self.base_lr > 0.0 { self.final_lr * lr / self.base_lr } else { 0.0 };
        let lower = final_lr * (1.0 - 1.0 / (self.gamma * t + 1.0));
        let upper = final_lr * (1.0 + 1.0 / (self.gamma * t));
        let step_size = adam_debias(self.adam_debias, lr * debias(b2, self.step).sqrt(), debias(b1, self.step));
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), step_size as f32, lower as f32, upper as f32];
    }
    simd_apply!(AdaBound, |this, i, off, u, p| {
        let n = u.len();
        let (m, v) = (this.exp_avg.slice(i, off, n), this.exp_avg_sq.slice(i, off, n));
        if this.ams_bound {
            adabound_block::<true>(this, u, p, m, v, this.max_exp_avg_sq.slice(i, off, n));
        } else {
            adabound_block::<false>(this, u, p, m, v, &mut []);
        }
    });
}

/// [`AdaBound`]'s step on one sub-block, `vmax` (AMSBound's maximum) read only with `AMS`: one
/// loop per setting, as a loop that may touch a buffer that is not there does not vectorize.
#[inline(always)]
fn adabound_block<const AMS: bool>(
    this: &AdaBound,
    u: &mut [f32],
    p: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: &mut [f32],
) {
    let n = u.len();
    let (p, m, v) = (&p[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMS { &mut vmax[..n] } else { vmax };
    let [keep, l2, step_size, lower, upper] = this.k;
    let (w1, b2, c2) = ((1.0 - this.betas[0]) as f32, this.betas[1] as f32, (1.0 - this.betas[1]) as f32);
    let (eps, maximize) = (this.eps, this.maximize);
    for j in 0..n {
        let w = p[j];
        let g = grad_in(u[j], w, maximize, l2);
        m[j] = lerp(m[j], g, w1);
        v[j] = v[j] * b2 + c2 * g * g;
        let second = ams_max::<AMS>(vmax, j, v[j]);
        let den = (second + 1e-15).sqrt() + eps;
        let upd = clamp(step_size / den, lower, upper) * m[j];
        u[j] = (w * keep - upd) - w;
    }
}

/// pytorch_optimizer `LaProp` (Ziyin et al. 2020): the momentum of the preconditioned gradient,
/// `m ← β₁m + (1−β₁)·lr·g/(√v̂ + ε)`, `p ← p − m/b̂ₜ` with `b̂ₜ` the bias correction of the
/// learning rates' running average; optionally centered and AMSBound; decoupled decay after the
/// step.
pub struct LaProp {
    lr: LearningRate,
    betas: [f64; 2],
    centered: bool,
    steps_before_using_centered: u64,
    decay: Decay,
    ams_bound: bool,
    eps: f32,
    cautious: bool,
    maximize: bool,
    step: u64,
    /// The running average of the learning rates (`exp_avg_lr_1`).
    exp_avg_lr_1: f64,
    /// The running average of 1 (`exp_avg_lr_2`, kept as the library keeps it).
    exp_avg_lr_2: f64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    exp_mean_avg_beta2: ParamBufs,
    max_exp_avg_sq: ParamBufs,
    /// This step's `[keep, (1−β₁)·lr, −1/b̂ₜ, √(1−β₂ᵗ)]`.
    k: [f32; 4],
    use_centered: bool,
    /// This step's cautious factor of each tensor's agreeing entries.
    agree_scales: Vec<f32>,
}

/// `LaProp`'s arguments, with its defaults.
pub struct LaPropConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Subtract the squared running mean of the gradient from the second moment.
    pub centered: bool,
    /// Steps before the centered second moment is used.
    pub steps_before_using_centered: u64,
    /// Weight decay, decoupled by default and applied after the step.
    pub decay: Decay,
    /// Divide by the running maximum of the second moment.
    pub ams_bound: bool,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Drop the momentum's entries whose sign disagrees with the gradient's (`cautious`).
    pub cautious: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for LaPropConfig {
    fn default() -> Self {
        LaPropConfig {
            lr: LearningRate::Constant(4e-4),
            betas: [0.9, 0.999],
            centered: false,
            steps_before_using_centered: 10,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            ams_bound: false,
            eps: 1e-15,
            cautious: false,
            maximize: false,
        }
    }
}

impl LaProp {
    pub fn new(c: LaPropConfig) -> Self {
        LaProp {
            lr: c.lr,
            betas: c.betas,
            centered: c.centered,
            steps_before_using_centered: c.steps_before_using_centered,
            decay: c.decay,
            ams_bound: c.ams_bound,
            eps: c.eps as f32,
            cautious: c.cautious,
            maximize: c.maximize,
            step: 0,
            exp_avg_lr_1: 0.0,
            exp_avg_lr_2: 0.0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            exp_mean_avg_beta2: ParamBufs::default(),
            max_exp_avg_sq: ParamBufs::default(),
            k: [0.0; 4],
            use_centered: false,
            agree_scales: vec![],
        }
    }
}
elementwise_transform!(LaProp, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.exp_mean_avg_beta2 = if s.centered { zeros(shapes).into() } else { ParamBufs::default() };
    s.max_exp_avg_sq = if s.ams_bound { zeros(shapes).into() } else { ParamBufs::default() };
    s.agree_scales = vec![1.0; shapes.len()];
    (s.exp_avg_lr_1, s.exp_avg_lr_2) = (0.0, 0.0);
}; bufs: [exp_avg, exp_avg_sq, exp_mean_avg_beta2, max_exp_avg_sq]; counters: [step]; scalars: [exp_avg_lr_1, exp_avg_lr_2]);
impl Elementwise for LaProp {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.cautious
    }
    /// Cautious: each tensor's count of momentum entries that will agree in sign with the
    /// gradient, the moments computed as the step will compute them.
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        let next = self.next_step();
        let c = LaPropConsts::new(self, next.k, next.use_centered);
        for (i, g) in inputs.iter().enumerate() {
            let (m, v) = (&self.exp_avg.buffers()[i], &self.exp_avg_sq.buffers()[i]);
            let mean = self.exp_mean_avg_beta2.buffers().get(i);
            let vmax = self.max_exp_avg_sq.buffers().get(i);
            let maximize = self.maximize;
            self.agree_scales[i] = cautious_step(g.len(), |j| {
                let x = if maximize { -g[j] } else { g[j] };
                let at = |b: Option<&Vec<f32>>| b.map_or(0.0, |b| b[j]);
                let [_, _, _, mn] =
                    laprop_moments(x, v[j], at(mean), at(vmax), m[j], &c, self.centered, self.ams_bound);
                (mn, x)
            });
        }
    }
    fn begin_step(&mut self) {
        let next = self.next_step();
        self.step += 1;
        (self.k, self.use_centered, self.exp_avg_lr_1, self.exp_avg_lr_2) =
            (next.k, next.use_centered, next.exp_avg_lr_1, next.exp_avg_lr_2);
    }
    simd_apply!(LaProp, |this, i, off, u, p| {
        let n = u.len();
        let (m, v) = (this.exp_avg.slice(i, off, n), this.exp_avg_sq.slice(i, off, n));
        let mean = if this.centered { this.exp_mean_avg_beta2.slice(i, off, n) } else { &mut [][..] };
        let vmax = if this.ams_bound { this.max_exp_avg_sq.slice(i, off, n) } else { &mut [][..] };
        match (this.centered, this.ams_bound) {
            (false, false) => laprop_block::<false, false>(this, u, p, m, v, mean, vmax, this.agree_scales[i]),
            (false, true) => laprop_block::<false, true>(this, u, p, m, v, mean, vmax, this.agree_scales[i]),
            (true, false) => laprop_block::<true, false>(this, u, p, m, v, mean, vmax, this.agree_scales[i]),
            (true, true) => laprop_block::<true, true>(this, u, p, m, v, mean, vmax, this.agree_scales[i]),
        }
    });
}

/// What [`LaProp`]'s next step sets: its constants and running rate averages.
struct LaPropStep {
    k: [f32; 4],
    use_centered: bool,
    exp_avg_lr_1: f64,
    exp_avg_lr_2: f64,
}

impl LaProp {
    /// The constants of the step to come (from the count before it).
    fn next_step(&self) -> LaPropStep {
        let lr = self.lr.at(self.step);
        let step = self.step + 1;
        let [b1, b2] = self.betas;
        let exp_avg_lr_1 = self.exp_avg_lr_1 * b1 + (1.0 - b1) * lr;
        let exp_avg_lr_2 = self.exp_avg_lr_2 * b2 + (1.0 - b2);
        let bc1 = if lr != 0.0 { exp_avg_lr_1 / lr } else { 1.0 };
        LaPropStep {
            k: [
                self.decay.keep(lr, 1.0),
                ((1.0 - b1) * lr) as f32,
                (-1.0 / bc1) as f32,
                debias(b2, step).sqrt() as f32,
            ],
            use_centered: step > self.steps_before_using_centered,
            exp_avg_lr_1,
            exp_avg_lr_2,
        }
    }
}

/// The per-element constants of a [`LaProp`] step.
struct LaPropConsts {
    b1: f32,
    b2: f32,
    c2: f32,
    eps: f32,
    mix: f32,
    bc2: f32,
    use_centered: bool,
}

impl LaPropConsts {
    /// From the step's constants `k` (`[keep, mix, step, bc2]`) and whether it centers.
    fn new(this: &LaProp, k: [f32; 4], use_centered: bool) -> Self {
        let [_, mix, _, bc2] = k;
        LaPropConsts {
            b1: this.betas[0] as f32,
            b2: this.betas[1] as f32,
            c2: (1.0 - this.betas[1]) as f32,
            eps: this.eps,
            mix,
            bc2,
            use_centered,
        }
    }
}

/// One element of a [`LaProp`] step: the second moment, the running mean (centered), the
/// AMSBound maximum and the momentum after it, from their values before and the gradient `g`.
/// The step and the cautious count both compute them here.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn laprop_moments(
    g: f32,
    v: f32,
    mean: f32,
    vmax: f32,
    m: f32,
    c: &LaPropConsts,
    centered: bool,
    ams: bool,
) -> [f32; 4] {
    let v = v * c.b2 + c.c2 * g * g;
    let mut second = v;
    let mut mean = mean;
    if centered {
        mean = lerp(mean, g, c.c2);
        if c.use_centered {
            second = v - mean * mean;
        }
    }
    let vmax = if ams { vmax.max(second) } else { vmax };
    if ams {
        second = vmax;
    }
    let den = ((second + 1e-15).sqrt() + c.eps) / c.bc2;
    [v, mean, vmax, m * c.b1 + c.mix * g / den]
}

/// [`LaProp`]'s step on one sub-block, `mean` read only when `CENTERED` and `vmax` only with
/// `AMS` (one loop per setting, as [`adabound_block`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn laprop_block<const CENTERED: bool, const AMS: bool>(
    this: &LaProp,
    u: &mut [f32],
    p: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    mean: &mut [f32],
    vmax: &mut [f32],
    agree_scale: f32,
) {
    let n = u.len();
    let (p, m, v) = (&p[..n], &mut m[..n], &mut v[..n]);
    let mean = if CENTERED { &mut mean[..n] } else { mean };
    let vmax = if AMS { &mut vmax[..n] } else { vmax };
    let [keep, _, step, _] = this.k;
    let c = LaPropConsts::new(this, this.k, this.use_centered);
    let (maximize, cautious_on) = (this.maximize, this.cautious);
    for j in 0..n {
        let w = p[j];
        let g = if maximize { -u[j] } else { u[j] };
        let mean_j = if CENTERED { mean[j] } else { 0.0 };
        let vmax_j = if AMS { vmax[j] } else { 0.0 };
        let [vn, mean_n, vmax_n, mn] = laprop_moments(g, v[j], mean_j, vmax_j, m[j], &c, CENTERED, AMS);
        v[j] = vn;
        if CENTERED {
            mean[j] = mean_n;
        }
        if AMS {
            vmax[j] = vmax_n;
        }
        m[j] = mn;
        let update = if cautious_on { cautious(mn, g, agree_scale) } else { mn };
        u[j] = (w + update * step) * keep - w;
    }
}

/// pytorch_optimizer `QHAdam` (Ma & Yarats 2019): quasi-hyperbolic Adam,
/// `p ← p − lr·(ν₁m̂ + (1−ν₁)g)/(√(ν₂v̂ + (1−ν₂)g²) + ε)`, the moments bias-corrected through
/// their running weights `wₜ = 1 + βwₜ₋₁` (`m ← lerp(m, g, 1/wₜ)`).
pub struct QhAdam {
    lr: LearningRate,
    betas: [f64; 2],
    nus: [f64; 2],
    decay: Decay,
    eps: f32,
    maximize: bool,
    step: u64,
    /// `w₁ₜ`, `w₂ₜ` (`beta1_weight`, `beta2_weight`: float32 values).
    beta1_weight: f64,
    beta2_weight: f64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's `[keep, l2, lr, 1/w₁, 1/w₂]`.
    k: [f32; 5],
}

/// `QHAdam`'s arguments, with its defaults.
pub struct QhAdamConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Weights `ν₁`, `ν₂` of the averages against the current gradient and its square.
    pub nus: [f64; 2],
    /// Weight decay (an L2 term by default).
    pub decay: Decay,
    /// Added to the denominator.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for QhAdamConfig {
    fn default() -> Self {
        QhAdamConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.999],
            nus: [1.0, 1.0],
            decay: Decay { weight_decay: 0.0, decouple: false, fixed: false },
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl QhAdam {
    pub fn new(c: QhAdamConfig) -> Self {
        QhAdam {
            lr: c.lr,
            betas: c.betas,
            nus: c.nus,
            decay: c.decay,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            beta1_weight: 0.0,
            beta2_weight: 0.0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 5],
        }
    }
}
elementwise_transform!(QhAdam, |s, shapes, _p| {
    (s.beta1_weight, s.beta2_weight) = (0.0, 0.0);
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
}; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: [beta1_weight, beta2_weight]);
impl Elementwise for QhAdam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        // float32 running weights, as the library keeps them.
        let w1 = self.beta1_weight as f32 * self.betas[0] as f32 + 1.0;
        let w2 = self.beta2_weight as f32 * self.betas[1] as f32 + 1.0;
        (self.beta1_weight, self.beta2_weight) = (w1 as f64, w2 as f64);
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), lr as f32, 1.0 / w1, 1.0 / w2];
    }
    simd_apply!(QhAdam, |this, i, off, u, p| {
        let n = u.len();
        let [keep, l2, lr, wt1, wt2] = this.k;
        let (nu1, nu2) = (this.nus[0] as f32, this.nus[1] as f32);
        let (c1, c2) = ((1.0 - this.nus[0]) as f32, (1.0 - this.nus[1]) as f32);
        let (mix1, mix2) = (this.nus[0] != 1.0, this.nus[1] != 1.0);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        for j in 0..n {
            let w = p[j];
            let g = grad_in(u[j], w, this.maximize, l2);
            let g2 = g * g;
            m[j] = lerp(m[j], g, wt1);
            v[j] = lerp(v[j], g2, wt2);
            let avg = if mix1 { m[j] * nu1 + c1 * g } else { m[j] };
            let mut rms = v[j] * nu2;
            if mix2 {
                rms += c2 * g2;
            }
            let rms = rms.sqrt() + this.eps;
            u[j] = (w * keep + -lr * avg / rms) - w;
        }
    });
}

/// pytorch_optimizer `Tiger` (Su 2023, "Tight-fisted Optimizer"): sign descent on the gradient's
/// running mean, `m ← lerp(m, g, 1−β)`, `p ← p − lr·sign(m)`, decoupled decay.
pub struct Tiger {
    lr: LearningRate,
    beta: f64,
    decay: Decay,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    /// This step's `[keep, l2, lr]`.
    k: [f32; 3],
}

/// `Tiger`'s arguments, with its defaults.
pub struct TigerConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decay of the gradient's running mean.
    pub beta: f64,
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for TigerConfig {
    fn default() -> Self {
        TigerConfig {
            lr: LearningRate::Constant(1e-3),
            beta: 0.965,
            decay: Decay { weight_decay: 0.01, decouple: true, fixed: false },
            maximize: false,
        }
    }
}

impl Tiger {
    pub fn new(c: TigerConfig) -> Self {
        Tiger {
            lr: c.lr,
            beta: c.beta,
            decay: c.decay,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            k: [0.0; 3],
        }
    }
}
elementwise_transform!(Tiger, |s, shapes, _p| { s.exp_avg = zeros(shapes).into(); }; bufs: [exp_avg]; counters: [step]; scalars: []);
impl Elementwise for Tiger {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), lr as f32];
    }
    simd_apply!(Tiger, |this, i, off, u, p| {
        let n = u.len();
        let [keep, l2, lr] = this.k;
        let w1 = (1.0 - this.beta) as f32;
        let m = this.exp_avg.slice(i, off, n);
        for j in 0..n {
            let w = p[j];
            let g = grad_in(u[j], w, this.maximize, l2);
            m[j] = lerp(m[j], g, w1);
            u[j] = (w * keep + -lr * sign(m[j])) - w;
        }
    });
}

/// pytorch_optimizer `Lion` (Chen et al. 2023): `p ← p − lr·sign(lerp(m, g, 1−β₁))`, then
/// `m ← lerp(m, g, 1−β₂)`; decoupled decay. With `adanorm` the momentum takes the gradient
/// rescaled by AdaNorm ([`super::common::adanorm_scale`]); with `cautious` the signs that disagree
/// with the gradient's are dropped and the others scaled ([`cautious`]). (`use_gc` centralizes the
/// gradient ahead of it: [`crate::transforms::Centralize`] in a chain.)
pub struct Lion {
    lr: LearningRate,
    betas: [f64; 2],
    decay: Decay,
    adanorm: Option<f64>,
    cautious: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    /// AdaNorm's running gradient norm of each tensor (one entry each; empty without AdaNorm).
    exp_grad_adanorm: ParamBufs,
    /// This step's AdaNorm rescaling of each tensor's gradient in the momentum.
    norm_scales: Vec<AdaNormScale>,
    /// This step's cautious factor of each tensor's agreeing signs.
    agree_scales: Vec<f32>,
    /// This step's `[keep, l2, lr]`.
    k: [f32; 3],
}

/// `Lion`'s arguments, with its defaults.
pub struct LionConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Interpolation of the update and decay of the momentum.
    pub betas: [f64; 2],
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on.
    pub adanorm: Option<f64>,
    /// Drop the update's signs that disagree with the gradient's (`cautious`).
    pub cautious: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig {
            lr: LearningRate::Constant(1e-4),
            betas: [0.9, 0.99],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            adanorm: None,
            cautious: false,
            maximize: false,
        }
    }
}

impl Lion {
    pub fn new(c: LionConfig) -> Self {
        Lion {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            adanorm: c.adanorm,
            cautious: c.cautious,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_grad_adanorm: ParamBufs::default(),
            norm_scales: vec![],
            agree_scales: vec![],
            k: [0.0; 3],
        }
    }
}
elementwise_transform!(Lion, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_grad_adanorm = per_tensor(shapes, s.adanorm.is_some()).into();
    s.norm_scales = vec![NO_RESCALE; shapes.len()];
    s.agree_scales = vec![1.0; shapes.len()];
}; bufs: [exp_avg, exp_grad_adanorm]; counters: [step]; scalars: []);
impl Elementwise for Lion {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.adanorm.is_some() || self.cautious
    }
    /// Each tensor's gradient norm (AdaNorm) and the count of update signs that agree with the
    /// gradient's (cautious), from the momentum before this step.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let (maximize, l2, w1) = (self.maximize, self.decay.l2(), (1.0 - self.betas[0]) as f32);
        if let Some(r) = self.adanorm {
            adanorm_steps(&mut self.exp_grad_adanorm, &mut self.norm_scales, r, (inputs, params), (maximize, l2));
        }
        for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
            if self.cautious {
                let m = &self.exp_avg.buffers()[i];
                self.agree_scales[i] = cautious_step(g.len(), |j| {
                    let x = grad_in(g[j], w[j], maximize, l2);
                    (sign(lerp(m[j], x, w1)), x)
                });
            }
        }
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), lr as f32];
    }
    simd_apply!(Lion, |this, i, off, u, p| {
        let n = u.len();
        let [keep, l2, lr] = this.k;
        let (w1, w2) = ((1.0 - this.betas[0]) as f32, (1.0 - this.betas[1]) as f32);
        let (norm_scale, agree_scale) = (this.norm_scales[i], this.agree_scales[i]);
        let m = this.exp_avg.slice(i, off, n);
        for j in 0..n {
            let w = p[j];
            let g = grad_in(u[j], w, this.maximize, l2);
            let mut upd = sign(lerp(m[j], g, w1));
            m[j] = lerp(m[j], rescaled(g, norm_scale), w2);
            if this.cautious {
                upd = cautious(upd, g, agree_scale);
            }
            u[j] = (w * keep + -lr * upd) - w;
        }
    });
}

/// pytorch_optimizer `Yogi` (Zaheer et al. 2018): Adam whose second moment moves additively,
/// `v ← v − (1−β₂)·sign(v − g²)·g²`, both moments starting at `initial_accumulator`.
pub struct Yogi {
    lr: LearningRate,
    betas: [f64; 2],
    initial_accumulator: f32,
    decay: Decay,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's `[keep, l2, step_size, √(1−β₂ᵗ)]`.
    k: [f32; 4],
}

/// `Yogi`'s arguments, with its defaults.
pub struct YogiConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// The initial value of both moments.
    pub initial_accumulator: f64,
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Added to the denominator.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for YogiConfig {
    fn default() -> Self {
        YogiConfig {
            lr: LearningRate::Constant(1e-2),
            betas: [0.9, 0.999],
            initial_accumulator: 1e-6,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            eps: 1e-3,
            adam_debias: false,
            maximize: false,
        }
    }
}

impl Yogi {
    pub fn new(c: YogiConfig) -> Self {
        Yogi {
            lr: c.lr,
            betas: c.betas,
            initial_accumulator: c.initial_accumulator as f32,
            decay: c.decay,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 4],
        }
    }
}
elementwise_transform!(Yogi, |s, shapes, _p| {
    s.exp_avg = full(shapes, s.initial_accumulator).into();
    s.exp_avg_sq = full(shapes, s.initial_accumulator).into();
}; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);
impl Elementwise for Yogi {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let step_size = adam_debias(self.adam_debias, lr, debias(b1, self.step));
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), step_size as f32, debias(b2, self.step).sqrt() as f32];
    }
    simd_apply!(Yogi, |this, i, off, u, p| {
        let n = u.len();
        let [keep, l2, step_size, bc2] = this.k;
        let w1 = (1.0 - this.betas[0]) as f32;
        let c2 = -((1.0 - this.betas[1]) as f32);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        for j in 0..n {
            let w = p[j];
            let g = grad_in(u[j], w, this.maximize, l2);
            m[j] = lerp(m[j], g, w1);
            let g2 = g * g;
            v[j] += c2 * sign(v[j] - g2) * g2;
            let den = v[j].sqrt() / bc2 + this.eps;
            u[j] = (w * keep + -step_size * m[j] / den) - w;
        }
    });
}

/// pytorch_optimizer `AdaBelief` (Zhuang et al. 2020): Adam with the second moment of the
/// gradient's deviation from its mean, `s ← β₂s + (1−β₂)(g − m)² + ε`; optionally rectified
/// (RAdam) and AMSBound; decoupled decay.
pub struct AdaBelief {
    lr: LearningRate,
    betas: [f64; 2],
    decay: Decay,
    rectify: bool,
    n_sma_threshold: f64,
    degenerated_to_sgd: bool,
    ams_bound: bool,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    adanorm: Option<f64>,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: ParamBufs,
    /// This step's AdaNorm factor of each tensor's gradient in the first moment.
    norm_scales: Vec<AdaNormScale>,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_var: ParamBufs,
    max_exp_avg_var: ParamBufs,
    /// This step's `[keep, l2, step_size, √(1−β₂ᵗ)]`.
    k: [f32; 4],
    mode: Rect,
}

/// `AdaBelief`'s arguments, with its defaults.
pub struct AdaBeliefConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the mean and of the squared deviation.
    pub betas: [f64; 2],
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// RAdam's rectified step.
    pub rectify: bool,
    /// SMA length from which the rectified step is adaptive.
    pub n_sma_threshold: f64,
    /// Below the threshold, step along the momentum (else skip the step).
    pub degenerated_to_sgd: bool,
    /// Divide by the running maximum of the second moment.
    pub ams_bound: bool,
    /// Added to the second moment at each step and to the denominator.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdaBeliefConfig {
    fn default() -> Self {
        AdaBeliefConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.999],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            rectify: false,
            n_sma_threshold: 5.0,
            degenerated_to_sgd: true,
            ams_bound: false,
            eps: 1e-16,
            adam_debias: false,
            adanorm: None,
            maximize: false,
        }
    }
}

impl AdaBelief {
    pub fn new(c: AdaBeliefConfig) -> Self {
        AdaBelief {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            rectify: c.rectify,
            n_sma_threshold: c.n_sma_threshold,
            degenerated_to_sgd: c.degenerated_to_sgd,
            ams_bound: c.ams_bound,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            adanorm: c.adanorm,
            exp_grad_adanorm: ParamBufs::default(),
            norm_scales: vec![],
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_var: ParamBufs::default(),
            max_exp_avg_var: ParamBufs::default(),
            k: [0.0; 4],
            mode: Rect::Adaptive,
        }
    }
}
elementwise_transform!(AdaBelief, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_var = zeros(shapes).into();
    s.max_exp_avg_var = if s.ams_bound { zeros(shapes).into() } else { ParamBufs::default() };
    s.exp_grad_adanorm = per_tensor(shapes, s.adanorm.is_some()).into();
    s.norm_scales = vec![NO_RESCALE; shapes.len()];
}; bufs: [exp_avg, exp_avg_var, max_exp_avg_var, exp_grad_adanorm]; counters: [step]; scalars: []);
impl Elementwise for AdaBelief {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.adanorm.is_some()
    }
    /// AdaNorm: each tensor's gradient norm, as the step reads the gradient.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if let Some(r) = self.adanorm {
            let how = (self.maximize, self.decay.l2());
            adanorm_steps(&mut self.exp_grad_adanorm, &mut self.norm_scales, r, (inputs, params), how);
        }
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let (step_size, n_sma) = if self.rectify {
            rectify(self.step, lr, b2, self.n_sma_threshold, self.degenerated_to_sgd)
        } else {
            (lr, 0.0)
        };
        let step_size = adam_debias(self.adam_debias, step_size, debias(b1, self.step));
        self.mode = if !self.rectify || n_sma >= self.n_sma_threshold {
            Rect::Adaptive
        } else if step_size > 0.0 {
            Rect::Momentum
        } else {
            Rect::Skip
        };
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), step_size as f32, debias(b2, self.step).sqrt() as f32];
    }
    simd_apply!(AdaBelief, |this, i, off, u, p| {
        let n = u.len();
        let (m, s) = (this.exp_avg.slice(i, off, n), this.exp_avg_var.slice(i, off, n));
        if this.ams_bound {
            adabelief_block::<true>(this, u, p, m, s, this.max_exp_avg_var.slice(i, off, n), this.norm_scales[i]);
        } else {
            adabelief_block::<false>(this, u, p, m, s, &mut [], this.norm_scales[i]);
        }
    });
}

/// [`AdaBelief`]'s step on one sub-block, `smax` (AMSBound's maximum) read only with `AMS` (one
/// loop per setting, as [`adabound_block`]).
#[inline(always)]
fn adabelief_block<const AMS: bool>(
    this: &AdaBelief,
    u: &mut [f32],
    p: &[f32],
    m: &mut [f32],
    s: &mut [f32],
    smax: &mut [f32],
    norm_scale: AdaNormScale,
) {
    let n = u.len();
    let (p, m, s) = (&p[..n], &mut m[..n], &mut s[..n]);
    let smax = if AMS { &mut smax[..n] } else { smax };
    let [keep, l2, step_size, bc2] = this.k;
    let (w1, b2, eps) = ((1.0 - this.betas[0]) as f32, this.betas[1] as f32, this.eps);
    let c2 = (1.0 - this.betas[1]) as f32;
    // The rectified adaptive step divides by `root + ε`, the plain one by `root/b̂₂ + ε`: the same
    // expression with a divisor of 1 (exact). The momentum step divides by nothing (by 1, exact).
    let maximize = this.maximize;
    let (root_div, momentum, skip) = match (this.rectify, this.mode) {
        (false, _) => (bc2, false, false),
        (true, Rect::Adaptive) => (1.0, false, false),
        (true, Rect::Momentum) => (1.0, true, false),
        (true, Rect::Skip) => (1.0, false, true),
    };
    for j in 0..n {
        let w = p[j];
        let g = grad_in(u[j], w, maximize, l2);
        m[j] = lerp(m[j], rescaled(g, norm_scale), w1);
        let r = g - m[j];
        s[j] = s[j] * b2 + c2 * r * r + eps;
        let root = ams_max::<AMS>(smax, j, s[j]).sqrt();
        let stepped = w * keep;
        let den = if momentum { 1.0 } else { root / root_div + eps };
        let new = if skip { stepped } else { stepped + -step_size * m[j] / den };
        u[j] = new - w;
    }
}

/// pytorch_optimizer `DiffGrad` (Dubey et al. 2019): Adam whose first moment is scaled by the
/// friction `σ(|gₜ₋₁ − gₜ|)`; optionally rectified (RAdam) and AMSBound.
pub struct DiffGrad {
    lr: LearningRate,
    betas: [f64; 2],
    decay: Decay,
    rectify: bool,
    n_sma_threshold: f64,
    degenerated_to_sgd: bool,
    ams_bound: bool,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    adanorm: Option<f64>,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: ParamBufs,
    /// This step's AdaNorm factor of each tensor's gradient in the first moment.
    norm_scales: Vec<AdaNormScale>,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    previous_grad: ParamBufs,
    max_exp_avg_sq: ParamBufs,
    /// This step's `[keep, l2, step_size]`.
    k: [f32; 3],
    mode: Rect,
}

/// `DiffGrad`'s arguments, with its defaults.
pub struct DiffGradConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// RAdam's rectified step.
    pub rectify: bool,
    /// SMA length from which the rectified step is adaptive.
    pub n_sma_threshold: f64,
    /// Below the threshold, step along the momentum (else skip the step).
    pub degenerated_to_sgd: bool,
    /// Divide by the running maximum of the second moment.
    pub ams_bound: bool,
    /// Added to the denominator.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for DiffGradConfig {
    fn default() -> Self {
        DiffGradConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.999],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            rectify: false,
            n_sma_threshold: 5.0,
            degenerated_to_sgd: true,
            ams_bound: false,
            eps: 1e-8,
            adam_debias: false,
            adanorm: None,
            maximize: false,
        }
    }
}

impl DiffGrad {
    pub fn new(c: DiffGradConfig) -> Self {
        DiffGrad {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            rectify: c.rectify,
            n_sma_threshold: c.n_sma_threshold,
            degenerated_to_sgd: c.degenerated_to_sgd,
            ams_bound: c.ams_bound,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            adanorm: c.adanorm,
            exp_grad_adanorm: ParamBufs::default(),
            norm_scales: vec![],
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            previous_grad: ParamBufs::default(),
            max_exp_avg_sq: ParamBufs::default(),
            k: [0.0; 3],
            mode: Rect::Adaptive,
        }
    }
}
elementwise_transform!(DiffGrad, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.previous_grad = zeros(shapes).into();
    s.max_exp_avg_sq = if s.ams_bound { zeros(shapes).into() } else { ParamBufs::default() };
    s.exp_grad_adanorm = per_tensor(shapes, s.adanorm.is_some()).into();
    s.norm_scales = vec![NO_RESCALE; shapes.len()];
}; bufs: [exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq, exp_grad_adanorm]; counters: [step]; scalars: []);
impl Elementwise for DiffGrad {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.adanorm.is_some()
    }
    /// AdaNorm: each tensor's gradient norm, as the step reads the gradient.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if let Some(r) = self.adanorm {
            let how = (self.maximize, self.decay.l2());
            adanorm_steps(&mut self.exp_grad_adanorm, &mut self.norm_scales, r, (inputs, params), how);
        }
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let (mut step_size, n_sma) = if self.rectify {
            rectify(self.step, lr, b2, self.n_sma_threshold, self.degenerated_to_sgd)
        } else {
            (lr, 0.0)
        };
        if !self.rectify {
            step_size *= debias(b2, self.step).sqrt();
        }
        let step_size = adam_debias(self.adam_debias, step_size, debias(b1, self.step));
        self.mode = if !self.rectify || n_sma >= self.n_sma_threshold {
            Rect::Adaptive
        } else if step_size > 0.0 {
            Rect::Momentum
        } else {
            Rect::Skip
        };
        self.k = [self.decay.keep(lr, 1.0), self.decay.l2(), step_size as f32];
    }
    simd_apply!(wide DiffGrad, |this, i, off, u, p| {
        let n = u.len();
        let (m, v) = (this.exp_avg.slice(i, off, n), this.exp_avg_sq.slice(i, off, n));
        let prev = this.previous_grad.slice(i, off, n);
        if this.ams_bound {
            diffgrad_block::<true>(this, u, p, m, v, prev, this.max_exp_avg_sq.slice(i, off, n), this.norm_scales[i]);
        } else {
            diffgrad_block::<false>(this, u, p, m, v, prev, &mut [], this.norm_scales[i]);
        }
    });
}

/// [`DiffGrad`]'s step on one sub-block, `vmax` (AMSBound's maximum) read only with `AMS` (one
/// loop per setting, as [`adabound_block`]). The friction's `exp` is [`exp_neg_f32`] (its
/// argument is never positive), which vectorizes where `f32::exp` is a call per value.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn diffgrad_block<const AMS: bool>(
    this: &DiffGrad,
    u: &mut [f32],
    p: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    prev: &mut [f32],
    vmax: &mut [f32],
    norm_scale: AdaNormScale,
) {
    let n = u.len();
    let (p, m, v, prev) = (&p[..n], &mut m[..n], &mut v[..n], &mut prev[..n]);
    let vmax = if AMS { &mut vmax[..n] } else { vmax };
    let [keep, l2, step_size] = this.k;
    let (w1, b2, eps) = ((1.0 - this.betas[0]) as f32, this.betas[1] as f32, this.eps);
    let c2 = (1.0 - this.betas[1]) as f32;
    let maximize = this.maximize;
    // The momentum step is the adaptive one with friction and denominator 1 (exact).
    let (momentum, skip) = (this.mode == Rect::Momentum, this.mode == Rect::Skip);
    for j in 0..n {
        let w = p[j];
        let g = grad_in(u[j], w, maximize, l2);
        m[j] = lerp(m[j], rescaled(g, norm_scale), w1);
        v[j] = v[j] * b2 + c2 * g * g;
        let second = ams_max::<AMS>(vmax, j, v[j]);
        let stepped = w * keep;
        let den = if momentum { 1.0 } else { (second + 1e-15).sqrt() + eps };
        let friction = if momentum { 1.0 } else { 1.0 / (1.0 + exp_neg_f32(-(prev[j] - g).abs())) };
        let new = if skip { stepped } else { stepped + -step_size * (friction * m[j]) / den };
        prev[j] = g;
        u[j] = new - w;
    }
}

/// pytorch_optimizer `Adan` (Xie et al. 2022): moments of the gradient, of its difference to the
/// previous one and of the squared Nesterov-corrected gradient,
/// `p ← p − lr·(m̂ + β₂·d̂)/(√n̂ + ε)` (the library weights `d̂` by β₂); decay as an L2 proximal
/// step `p/(1 + lr·λ)` by default, or decoupled; gradients clipped to a global norm with
/// `max_grad_norm`.
pub struct Adan {
    lr: LearningRate,
    betas: [f64; 3],
    weight_decay: f64,
    weight_decouple: bool,
    max_grad_norm: f64,
    eps: f32,
    use_gc: bool,
    adanorm: Option<f64>,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    exp_avg_diff: ParamBufs,
    previous_grad: ParamBufs,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: ParamBufs,
    /// This step's AdaNorm factor of each tensor's gradient in the first moment.
    norm_scales: Vec<AdaNormScale>,
    /// Gradient centralization (after the clipping scale, as the library does it).
    rows: RowMeans,
    /// This step's gradient scale `min(1, max_grad_norm/(‖g‖ + ε))` (1 without clipping).
    clip: f32,
    first: bool,
    /// This step's `[keep, lr/(1−β₁ᵗ), lr·β₂/(1−β₂ᵗ), √(1−β₃ᵗ), 1 + lr·λ]`.
    k: [f32; 5],
}

/// `Adan`'s arguments, with its defaults.
pub struct AdanConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the gradient, its difference and the squared corrected gradient.
    pub betas: [f64; 3],
    /// Weight decay λ.
    pub weight_decay: f64,
    /// Decoupled decay `p(1 − lr·λ)` instead of the proximal `p/(1 + lr·λ)`.
    pub weight_decouple: bool,
    /// Global gradient norm to clip to (0: no clipping).
    pub max_grad_norm: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Centralize the gradients of tensors with more than one axis (`use_gc`), after clipping.
    pub use_gc: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdanConfig {
    fn default() -> Self {
        AdanConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.98, 0.92, 0.99],
            weight_decay: 0.0,
            weight_decouple: false,
            max_grad_norm: 0.0,
            eps: 1e-8,
            use_gc: false,
            adanorm: None,
            maximize: false,
        }
    }
}

impl Adan {
    pub fn new(c: AdanConfig) -> Self {
        Adan {
            lr: c.lr,
            betas: c.betas,
            weight_decay: c.weight_decay,
            weight_decouple: c.weight_decouple,
            max_grad_norm: c.max_grad_norm,
            eps: c.eps as f32,
            use_gc: c.use_gc,
            adanorm: c.adanorm,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            exp_avg_diff: ParamBufs::default(),
            previous_grad: ParamBufs::default(),
            exp_grad_adanorm: ParamBufs::default(),
            norm_scales: vec![],
            rows: RowMeans::default(),
            clip: 1.0,
            first: true,
            k: [0.0; 5],
        }
    }
}
elementwise_transform!(Adan, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.exp_avg_diff = zeros(shapes).into();
    s.previous_grad = zeros(shapes).into();
    s.exp_grad_adanorm = per_tensor(shapes, s.adanorm.is_some()).into();
    s.norm_scales = vec![NO_RESCALE; shapes.len()];
    s.rows = RowMeans::new(shapes, s.use_gc, false);
}; bufs: [exp_avg, exp_avg_sq, exp_avg_diff, previous_grad, exp_grad_adanorm]; counters: [step]; scalars: []);
impl Elementwise for Adan {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.max_grad_norm != 0.0 || self.rows.active() || self.adanorm.is_some()
    }
    /// The clipping scale from the global norm of the raw gradients, the slice means
    /// (centralization), then AdaNorm's norms of the gradients as the step reads them.
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        self.clip = if self.max_grad_norm != 0.0 {
            let norm = global_sum_sq(inputs).sqrt() as f32 + self.eps;
            (self.max_grad_norm as f32 / norm).min(1.0)
        } else {
            1.0
        };
        self.rows.read(inputs, self.clip);
        let Some(r) = self.adanorm else { return };
        let (maximize, clip, rows) = (self.maximize, self.clip, &self.rows);
        let scales = &mut self.norm_scales;
        self.exp_grad_adanorm.with_buffers(|e| {
            for (i, g) in inputs.iter().enumerate() {
                scales[i] =
                    adanorm_step(&mut e[i][0], r, g.len(), |j| adan_grad(g[j], rows.mean_at(i, j), maximize, clip));
            }
        });
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.first = self.step == 0;
        self.step += 1;
        if self.max_grad_norm == 0.0 {
            self.clip = 1.0;
        }
        let [b1, b2, b3] = self.betas;
        let wd = self.weight_decay;
        let keep = if wd != 0.0 && self.weight_decouple { (1.0 - lr * wd) as f32 } else { 1.0 };
        let shrink = if wd != 0.0 && !self.weight_decouple { (1.0 + lr * wd) as f32 } else { 1.0 };
        self.k = [
            keep,
            (lr / debias(b1, self.step)) as f32,
            (lr * b2 / debias(b2, self.step)) as f32,
            debias(b3, self.step).sqrt() as f32,
            shrink,
        ];
    }
    simd_apply!(Adan, |this, i, off, u, p| {
        let len = u.len();
        let [keep, step_size, diff_step_size, bc3, shrink] = this.k;
        let (b2, b3) = (this.betas[1] as f32, this.betas[2] as f32);
        let (w1, w2, c3) = ((1.0 - this.betas[0]) as f32, (1.0 - this.betas[1]) as f32, (1.0 - this.betas[2]) as f32);
        let (clip, eps) = (this.clip, this.eps);
        let m = this.exp_avg.slice(i, off, len);
        let v = this.exp_avg_sq.slice(i, off, len);
        let d = this.exp_avg_diff.slice(i, off, len);
        let prev = this.previous_grad.slice(i, off, len);
        let mut rows = this.rows.cursor(i, off);
        let norm_scale = this.norm_scales[i];
        for j in 0..len {
            let w = p[j];
            let raw = u[j];
            if this.first {
                // The state starts from the raw gradient, scaled by −clip, before `maximize`
                // and centralization.
                prev[j] = raw * -clip;
            }
            let g = adan_grad(raw, rows.next_mean(), this.maximize, clip);
            let diff = prev[j] + g;
            m[j] = lerp(m[j], rescaled(g, norm_scale), w1);
            d[j] = lerp(d[j], diff, w2);
            let corrected = diff * b2 + g;
            v[j] = v[j] * b3 + c3 * corrected * corrected;
            let den = v[j].sqrt() / bc3 + eps;
            let mut new = w * keep;
            new += -step_size * m[j] / den;
            new += -diff_step_size * d[j] / den;
            if shrink != 1.0 {
                new /= shrink;
            }
            prev[j] = -g;
            u[j] = new - w;
        }
    });
}

/// Adan's gradient as its step reads it: scaled by the clipping factor, less its slice's mean
/// (`mean`, of the scaled gradient: the library centralizes after clipping; 0 without
/// centralization), negated to maximize (exact, so the order of the negation is immaterial).
#[inline(always)]
fn adan_grad(raw: f32, mean: f32, maximize: bool, clip: f32) -> f32 {
    let centered = raw * clip - mean;
    if maximize {
        -centered
    } else {
        centered
    }
}
