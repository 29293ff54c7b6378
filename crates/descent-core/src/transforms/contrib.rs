//! optax `contrib` algorithms: AdEMAMix, ADOPT, COCOB, MADGRAD, D-Adaptation, Prodigy, DoG,
//! Schedule-Free.

use super::simd_apply;
use super::{elementwise_transform, state, sum_sq, zeros, ParamBufs};
use crate::error::Result;
use crate::kernel::{Elementwise, Epilogue, Fold};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};

/// optax `contrib.scale_by_ademamix` (Pagliardini et al. 2024): Adam with a second, slow EMA
/// `m₂` (decay `b3`) mixed in with weight `alpha`.
pub struct ScaleByAdemamix {
    b1: f32,
    b2: f32,
    b3: f32,
    alpha: f32,
    eps: f32,
    eps_root: f32,
    count: u64,
    m1: ParamBufs,
    m2: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
    bc2: f32,
}
/// The hyper-parameters of [`ScaleByAdemamix`], with optax `contrib.scale_by_ademamix`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdemamixConfig {
    /// Decay β₁ of the fast first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Decay β₃ of the slow first moment.
    pub b3: f64,
    /// Weight α of the slow first moment.
    pub alpha: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
}
impl Default for ScaleByAdemamixConfig {
    fn default() -> Self {
        ScaleByAdemamixConfig { b1: 0.9, b2: 0.999, b3: 0.9999, alpha: 6.0, eps: 1e-8, eps_root: 0.0 }
    }
}
impl ScaleByAdemamix {
    /// A `ScaleByAdemamix` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdemamixConfig) -> Self {
        let ScaleByAdemamixConfig { b1, b2, b3, alpha, eps, eps_root } = config;
        ScaleByAdemamix {
            b1: b1 as f32,
            b2: b2 as f32,
            b3: b3 as f32,
            alpha: alpha as f32,
            eps: eps as f32,
            eps_root: eps_root as f32,
            count: 0,
            m1: ParamBufs::default(),
            m2: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
            bc2: 1.0,
        }
    }
}
elementwise_transform!(ScaleByAdemamix, |s, shapes, _p| { s.m1 = zeros(shapes).into(); s.m2 = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [m1, m2, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAdemamix {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = (1.0 / super::bias_correction(self.b1 as f64, self.count as f64)) as f32;
        self.bc2 = (1.0 / super::bias_correction(self.b2 as f64, self.count as f64)) as f32;
    }
    simd_apply!(ScaleByAdemamix, |this, i, off, u, p| {
        let n = u.len();
        let m1 = this.m1.slice(i, off, n);
        let m2 = this.m2.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            m1[j] = (1.0 - this.b1) * g + this.b1 * m1[j];
            m2[j] = (1.0 - this.b3) * g + this.b3 * m2[j];
            v[j] = (1.0 - this.b2) * g * g + this.b2 * v[j];
            u[j] = (m1[j] * this.bc1 + this.alpha * m2[j]) / ((v[j] * this.bc2 + this.eps_root).sqrt() + this.eps);
        }
    });
}

/// optax `contrib.scale_by_adopt` (Taniguchi et al. 2024): the gradient is normalized by the
/// *previous* second moment (and clipped to `±t^¼`) before it enters the momentum.
pub struct ScaleByAdopt {
    b1: f32,
    b2: f32,
    eps: f32,
    nesterov: bool,
    use_clipping: bool,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    step_b1: f32,
    step_b2: f32,
    clip: f32,
}
/// The hyper-parameters of [`ScaleByAdopt`], with optax `contrib.scale_by_adopt`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdoptConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// The least denominator `√v`.
    pub eps: f64,
    /// Nesterov-corrected first moment.
    pub nesterov: bool,
    /// Clip the normalized gradient to `±t^¼`.
    pub use_clipping: bool,
}
impl Default for ScaleByAdoptConfig {
    fn default() -> Self {
        ScaleByAdoptConfig { b1: 0.9, b2: 0.9999, eps: 1e-6, nesterov: false, use_clipping: true }
    }
}
impl ScaleByAdopt {
    /// A `ScaleByAdopt` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdoptConfig) -> Self {
        let ScaleByAdoptConfig { b1, b2, eps, nesterov, use_clipping } = config;
        ScaleByAdopt {
            b1: b1 as f32,
            b2: b2 as f32,
            eps: eps as f32,
            nesterov,
            use_clipping,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            step_b1: 1.0,
            step_b2: 0.0,
            clip: 0.0,
        }
    }
}
elementwise_transform!(ScaleByAdopt, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAdopt {
    fn begin_step(&mut self) {
        let first = self.count == 0;
        self.step_b1 = if first { 1.0 } else { self.b1 };
        self.step_b2 = if first { 0.0 } else { self.b2 };
        self.clip = (self.count as f32).powf(0.25);
        self.count += 1;
    }
    simd_apply!(ScaleByAdopt, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        let (b1, b2) = (this.step_b1, this.step_b2);
        for j in 0..n {
            let g = u[j];
            let mut x = g / v[j].sqrt().max(this.eps);
            if this.use_clipping {
                x = x.clamp(-this.clip, this.clip);
            }
            v[j] = (1.0 - b2) * g * g + b2 * v[j];
            m[j] = (1.0 - b1) * x + b1 * m[j];
            u[j] = if this.nesterov { (1.0 - b1) * x + b1 * m[j] } else { m[j] };
        }
    });
}

/// optax `contrib.scale_by_cocob` (Orabona & Tommasi 2017): coin-betting, learning-rate free.
pub struct ScaleByCocob {
    alpha: f32,
    eps: f32,
    init_particles: ParamBufs,
    cumulative_gradients: ParamBufs,
    scale: ParamBufs,
    subgradients: ParamBufs,
    reward: ParamBufs,
}
impl ScaleByCocob {
    /// A `ScaleByCocob` with these hyper-parameters (`alpha`, `eps`), as described above.
    pub fn new(alpha: f64, eps: f64) -> Self {
        ScaleByCocob {
            alpha: alpha as f32,
            eps: eps as f32,
            init_particles: ParamBufs::default(),
            cumulative_gradients: ParamBufs::default(),
            scale: ParamBufs::default(),
            subgradients: ParamBufs::default(),
            reward: ParamBufs::default(),
        }
    }
}
elementwise_transform!(ScaleByCocob, |s, shapes, params| {
    s.init_particles = params.iter().map(|p| p.to_vec()).collect::<Vec<Vec<f32>>>().into();
    s.cumulative_gradients = zeros(shapes).into();
    s.scale = super::full(shapes, s.eps).into();
    s.subgradients = zeros(shapes).into();
    s.reward = zeros(shapes).into();
}; bufs: [init_particles, cumulative_gradients, scale, subgradients, reward]; counters: []; scalars: []);
impl Elementwise for ScaleByCocob {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByCocob, |this, i, off, u, p| {
        let n = u.len();
        let p0 = this.init_particles.slice(i, off, n);
        let c = this.cumulative_gradients.slice(i, off, n);
        let l = this.scale.slice(i, off, n);
        let gs = this.subgradients.slice(i, off, n);
        let r = this.reward.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            l[j] = l[j].max(g.abs());
            gs[j] += g.abs();
            r[j] = (r[j] - g * (p[j] - p0[j])).max(0.0);
            c[j] -= g;
            u[j] = -p[j] + (p0[j] + c[j] / (l[j] * (gs[j] + l[j]).max(this.alpha * l[j])) * (l[j] + r[j]));
        }
    });
}

/// optax `contrib.scale_by_madgrad` (Defazio & Jelassi 2021): dual averaging with a cube-root
/// denominator and momentum toward the dual iterate; returns the full step (learning rate inside).
pub struct ScaleByMadgrad {
    lr: LearningRate,
    momentum: f32,
    eps: f32,
    count: u64,
    grad_sum_sq: ParamBufs,
    s: ParamBufs,
    x0: ParamBufs,
    lamb: f32,
}
/// The hyper-parameters of [`ScaleByMadgrad`], with optax `contrib.scale_by_madgrad` (its `learning_rate` is the first argument of `new`)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByMadgradConfig {
    /// Momentum of the dual averaging.
    pub momentum: f64,
    /// ε added to the cube root and to the learning rate.
    pub eps: f64,
}
impl Default for ScaleByMadgradConfig {
    fn default() -> Self {
        ScaleByMadgradConfig { momentum: 0.9, eps: 1e-6 }
    }
}
impl ScaleByMadgrad {
    /// A `ScaleByMadgrad` with the hyper-parameters of `config` and the arguments before it, as described above.
    pub fn new(lr: impl Into<LearningRate>, config: ScaleByMadgradConfig) -> Self {
        let ScaleByMadgradConfig { momentum, eps } = config;
        ScaleByMadgrad {
            lr: lr.into(),
            momentum: momentum as f32,
            eps: eps as f32,
            count: 0,
            grad_sum_sq: ParamBufs::default(),
            s: ParamBufs::default(),
            x0: ParamBufs::default(),
            lamb: 0.0,
        }
    }
}
elementwise_transform!(ScaleByMadgrad, |st, shapes, params| {
    st.grad_sum_sq = zeros(shapes).into();
    st.s = zeros(shapes).into();
    st.x0 = params.iter().map(|p| p.to_vec()).collect::<Vec<Vec<f32>>>().into();
}; bufs: [grad_sum_sq, s, x0]; counters: [count]; scalars: []);
impl Elementwise for ScaleByMadgrad {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.count) as f32 + self.eps;
        self.lamb = lr * ((self.count + 1) as f32).sqrt();
        self.count += 1;
    }
    simd_apply!(ScaleByMadgrad, |this, i, off, u, p| {
        let n = u.len();
        let gss = this.grad_sum_sq.slice(i, off, n);
        let s = this.s.slice(i, off, n);
        let x0 = this.x0.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            gss[j] += this.lamb * g * g;
            s[j] += this.lamb * g;
            let sigma = gss[j].cbrt() + this.eps;
            let z = x0[j] - s[j] / sigma;
            let x_new = (1.0 - this.momentum) * z + this.momentum * p[j];
            u[j] = x_new - p[j];
        }
    });
}

fn vdot(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>()).sum()
}

/// optax `contrib.dadapt_adamw` (Defazio & Mishchenko 2023): AdamW whose step size `d` is
/// estimated from the gradients; returns the full step.
pub struct DadaptAdamw {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    eps: f64,
    weight_decay: f64,
    estim_lr0: f64,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    grad_sum: Vec<Vec<f32>>,
    estim_lr: f64,
    numerator_weighted: f64,
    count: u64,
}
/// The hyper-parameters of [`DadaptAdamw`], with optax `contrib.dadapt_adamw`'s defaults.
pub struct DadaptAdamwConfig {
    /// Learning rate, a multiplier of the estimated step.
    pub learning_rate: LearningRate,
    /// Decays (β₁, β₂) of the moments.
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
    /// The initial estimate of the step size `d`.
    pub estim_lr0: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}
impl Default for DadaptAdamwConfig {
    fn default() -> Self {
        DadaptAdamwConfig {
            learning_rate: 1.0.into(),
            betas: (0.9, 0.999),
            eps: 1e-8,
            estim_lr0: 1e-6,
            weight_decay: 0.0,
        }
    }
}
impl DadaptAdamw {
    /// A `DadaptAdamw` with the hyper-parameters of `config`, as described above.
    pub fn new(config: DadaptAdamwConfig) -> Self {
        let DadaptAdamwConfig { learning_rate: lr, betas: (b1, b2), eps, estim_lr0, weight_decay } = config;
        DadaptAdamw {
            lr,
            b1,
            b2,
            eps,
            weight_decay,
            estim_lr0,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            grad_sum: vec![],
            estim_lr: estim_lr0,
            numerator_weighted: 0.0,
            count: 0,
        }
    }
}
impl Transform for DadaptAdamw {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.grad_sum = zeros(shapes);
        self.estim_lr = self.estim_lr0;
        self.numerator_weighted = 0.0;
        self.count = 0;
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let (b1, b2, eps) = (self.b1, self.b2, self.eps);
        let sb2 = b2.sqrt();
        let sched = self.lr.at(self.count);
        self.count += 1;
        let t = self.count as f64;
        let bc = super::bias_correction(b2, t).sqrt() / super::bias_correction(b1, t);
        let dlr = self.estim_lr * sched * bc;
        let weighted: Vec<Vec<f32>> = self
            .grad_sum
            .iter()
            .zip(&self.exp_avg_sq)
            .map(|(s, v)| s.iter().zip(v).map(|(&s, &v)| s / (v.sqrt() + eps as f32)).collect())
            .collect();
        let numerator_acum = vdot(updates, &weighted);
        let (b1f, b2f, sb2f, dlrf) = (b1 as f32, b2 as f32, sb2 as f32, dlr as f32);
        for (i, u) in updates.iter().enumerate() {
            let (m, v, s) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i], &mut self.grad_sum[i]);
            for (j, &g) in u.iter().enumerate() {
                m[j] = b1f * m[j] + (1.0 - b1f) * dlrf * g;
                v[j] = b2f * v[j] + (1.0 - b2f) * g * g;
                s[j] = sb2f * s[j] + (1.0 - sb2f) * dlrf * g;
            }
        }
        let l1: f64 = self.grad_sum.iter().flatten().map(|x| x.abs() as f64).sum();
        self.numerator_weighted = sb2 * self.numerator_weighted + (1.0 - sb2) * dlr * numerator_acum;
        let d_estimate = self.numerator_weighted / ((1.0 - sb2) * l1);
        self.estim_lr = self.estim_lr.max(d_estimate);
        let wd = (self.weight_decay * dlr) as f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            for (j, x) in u.iter_mut().enumerate() {
                *x = -wd * p[j] - self.exp_avg[i][j] / (self.exp_avg_sq[i][j].sqrt() + eps as f32);
            }
        }
        Ok(())
    }
    state!(DadaptAdamw; bufs: [exp_avg, exp_avg_sq, grad_sum]; counters: [count]; scalars: [estim_lr, numerator_weighted]);
}

/// The arguments of optax `contrib.prodigy` (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
/// Parameter-Free Learner", 2023): D-Adaptation whose estimate of the distance to the solution
/// uses the distance travelled from the initial point.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·d·g      v ← β₂·v + (1 − β₂)·d²·g²      s ← β₃·s + (d²/d₀)·α·g
/// r ← β₃·r + (d²/d₀)·α·⟨g, θ₀ − θ⟩      d ← max(d, coef·r/‖s‖₁)
/// u = −α·d·(m/(√v + d·ε) + λ·θ)
/// ```
pub struct ProdigyConfig {
    /// Learning rate α, a multiplier of the estimated step (optax's default 1.0).
    pub learning_rate: LearningRate,
    /// Decays (β₁, β₂) of the moments.
    pub betas: (f64, f64),
    /// Decay β₃ of the distance estimate's sums; `None`: √β₂.
    pub beta3: Option<f64>,
    /// ε, scaled by `d`, added to the denominator.
    pub eps: f64,
    /// The initial estimate `d₀` of the step.
    pub estim_lr0: f64,
    /// Multiplier `coef` of the estimate.
    pub estim_lr_coef: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
    /// Leave the learning rate out of the denominator sum during warm-up.
    pub safeguard_warmup: bool,
}
impl Default for ProdigyConfig {
    fn default() -> Self {
        ProdigyConfig {
            learning_rate: 1.0.into(),
            betas: (0.9, 0.999),
            beta3: None,
            eps: 1e-8,
            estim_lr0: 1e-6,
            estim_lr_coef: 1.0,
            weight_decay: 0.0,
            safeguard_warmup: false,
        }
    }
}
/// optax `contrib.prodigy` (Mishchenko & Defazio 2023): D-Adaptation with the distance to the
/// initial point; returns the full step.
pub struct Prodigy {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    b3: f64,
    eps: f64,
    estim_lr0: f64,
    estim_lr_coef: f64,
    weight_decay: f64,
    safeguard_warmup: bool,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    grad_sum: Vec<Vec<f32>>,
    params0: Vec<Vec<f32>>,
    estim_lr: f64,
    numerator_weighted: f64,
    count: u64,
}
impl Prodigy {
    /// Prodigy with the hyper-parameters of `config`.
    pub fn new(config: ProdigyConfig) -> Self {
        let ProdigyConfig {
            learning_rate,
            betas: (b1, b2),
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
        } = config;
        Prodigy {
            lr: learning_rate,
            b1,
            b2,
            b3: beta3.unwrap_or(b2.sqrt()),
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            grad_sum: vec![],
            params0: vec![],
            estim_lr: estim_lr0,
            numerator_weighted: 0.0,
            count: 0,
        }
    }
}
impl Transform for Prodigy {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.grad_sum = zeros(shapes);
        self.params0 = params.iter().map(|p| p.to_vec()).collect();
        self.estim_lr = self.estim_lr0;
        self.numerator_weighted = 0.0;
        self.count = 0;
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let (b1, b2, b3) = (self.b1, self.b2, self.b3);
        let sched = self.lr.at(self.count);
        self.count += 1;
        let t = self.count as f64;
        let bc = super::bias_correction(b2, t).sqrt() / super::bias_correction(b1, t);
        let d = self.estim_lr;
        let dlr = d * sched * bc;
        let mut numerator_acum = 0.0f64;
        for (i, u) in updates.iter().enumerate() {
            for (j, &g) in u.iter().enumerate() {
                numerator_acum += g as f64 * (self.params0[i][j] - params[i][j]) as f64;
            }
        }
        let (b1f, b2f, b3f, df) = (b1 as f32, b2 as f32, b3 as f32, d as f32);
        let gs_scale = if self.safeguard_warmup { d / self.estim_lr0 } else { dlr / self.estim_lr0 } as f32;
        for (i, u) in updates.iter().enumerate() {
            let (m, v, s) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i], &mut self.grad_sum[i]);
            for (j, &g) in u.iter().enumerate() {
                let dg = df * g;
                m[j] = b1f * m[j] + (1.0 - b1f) * dg;
                v[j] = b2f * v[j] + (1.0 - b2f) * dg * dg;
                s[j] = b3f * s[j] + gs_scale * dg;
            }
        }
        self.numerator_weighted = b3 * self.numerator_weighted + d / self.estim_lr0 * dlr * numerator_acum;
        let denominator: f64 = self.grad_sum.iter().flatten().map(|x| x.abs() as f64).sum();
        let estimate = self.estim_lr_coef * self.numerator_weighted / denominator;
        self.estim_lr = self.estim_lr.max(estimate);
        let (dlrf, epsd) = (dlr as f32, (d * self.eps) as f32);
        let wd = (self.weight_decay * dlr) as f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            for (j, x) in u.iter_mut().enumerate() {
                *x = -dlrf * self.exp_avg[i][j] / (self.exp_avg_sq[i][j].sqrt() + epsd) - wd * p[j];
            }
        }
        Ok(())
    }
    state!(Prodigy; bufs: [exp_avg, exp_avg_sq, grad_sum, params0]; counters: [count]; scalars: [estim_lr, numerator_weighted]);
}

/// How DoG chooses its first step (optax `init_step`).
#[derive(Clone, Copy, Debug)]
pub enum DogInit {
    /// `r_ε` given directly.
    Distance(f64),
    /// `r_ε = value · (1 + ‖x₀‖)`.
    Heuristic(f64),
    /// The first step uses this learning rate.
    LearningRate(f64),
}

/// optax `contrib.scale_by_dog` (Ivgi et al. 2023, "Distance over Gradients"): step size
/// `max distance from x₀ / √(Σ‖g‖²)`.
pub struct ScaleByDog {
    init_step: DogInit,
    eps: f64,
    is_init_step: u64,
    init_params: Vec<Vec<f32>>,
    max_dist: f64,
    sum_sq_norm_grads: f64,
}
impl ScaleByDog {
    /// A `ScaleByDog` with these hyper-parameters (`init_step`, `eps`), as described above.
    pub fn new(init_step: DogInit, eps: f64) -> Self {
        ScaleByDog { init_step, eps, is_init_step: 1, init_params: vec![], max_dist: 0.0, sum_sq_norm_grads: 0.0 }
    }
}
impl Transform for ScaleByDog {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.init_params = params.iter().map(|p| p.to_vec()).collect();
        let norm = params.iter().map(|p| sum_sq(p)).sum::<f64>().sqrt();
        self.max_dist = match self.init_step {
            DogInit::Distance(v) => v,
            DogInit::Heuristic(v) => v * (1.0 + norm),
            DogInit::LearningRate(_) => 0.0,
        };
        self.is_init_step = 1;
        self.sum_sq_norm_grads = 0.0;
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let mut dist = 0.0f64;
        for (p0, p) in self.init_params.iter().zip(params) {
            dist += p0.iter().zip(p.iter()).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum::<f64>();
        }
        self.max_dist = self.max_dist.max(dist.sqrt());
        self.sum_sq_norm_grads += updates.iter().map(|u| sum_sq(u)).sum::<f64>();
        let mut lr = self.max_dist / (self.sum_sq_norm_grads + self.eps).sqrt();
        if let DogInit::LearningRate(v) = self.init_step {
            if self.is_init_step == 1 {
                lr = v;
            }
        }
        self.is_init_step = 0;
        let lr = lr as f32;
        updates.iter_mut().flatten().for_each(|x| *x *= lr);
        Ok(())
    }
    state!(ScaleByDog; bufs: [init_params]; counters: [is_init_step]; scalars: [max_dist, sum_sq_norm_grads]);
}

/// optax `contrib.schedule_free` (Defazio et al. 2024, "The Road Less Scheduled"): wraps a base
/// optimizer whose steps move the sequence `z`; the parameters are the interpolation
/// `y = b1·x + (1−b1)·z` of `z` and its weighted average `x`.
pub struct ScheduleFree {
    base: Box<dyn Transform>,
    lr: LearningRate,
    b1: f64,
    weight_lr_power: f64,
    weight_sum: f64,
    step_count: u64,
    max_lr: f64,
    z: ParamBufs,
    ck: f32,
}
/// The hyper-parameters of [`ScheduleFree`], with optax `contrib.schedule_free` (its base optimizer and `learning_rate` are the first arguments of `new`)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleFreeConfig {
    /// Interpolation β between the average `x` and the sequence `z`.
    pub b1: f64,
    /// Power of the largest learning rate so far in the averaging weights.
    pub weight_lr_power: f64,
}
impl Default for ScheduleFreeConfig {
    fn default() -> Self {
        ScheduleFreeConfig { b1: 0.9, weight_lr_power: 2.0 }
    }
}
impl ScheduleFree {
    /// A `ScheduleFree` with the hyper-parameters of `config` and the arguments before it, as described above.
    pub fn new(base: Box<dyn Transform>, lr: impl Into<LearningRate>, config: ScheduleFreeConfig) -> Self {
        let ScheduleFreeConfig { b1, weight_lr_power } = config;
        ScheduleFree {
            base,
            lr: lr.into(),
            b1,
            weight_lr_power,
            weight_sum: 0.0,
            step_count: 1,
            max_lr: 0.0,
            z: ParamBufs::default(),
            ck: 0.0,
        }
    }
}
impl ScheduleFree {
    /// Advances the weight sum and returns `c_k`, the weight of the new `z` in the average `x`.
    fn next_ck(&mut self) -> f32 {
        let lr = self.lr.at(self.step_count);
        self.max_lr = self.max_lr.max(lr);
        self.step_count += 1;
        let weight = self.max_lr.powf(self.weight_lr_power);
        let next_total = self.weight_sum + weight;
        self.weight_sum = next_total;
        (if next_total == 0.0 { 0.0 } else { weight / next_total }) as f32
    }

    /// Turns the base optimizer's step `d` of `z` into the step of `y`, in place.
    #[inline(always)]
    fn interpolate(b1: f32, ck: f32, u: &mut [f32], y: &[f32], z: &mut [f32]) {
        let y = &y[..u.len()];
        let z = &mut z[..u.len()];
        for j in 0..u.len() {
            let z_old = z[j];
            let z_new = z_old + u[j];
            let prev_x = (y[j] - (1.0 - b1) * z_old) / b1;
            let x = (1.0 - ck) * prev_x + ck * z_new;
            let new_y = b1 * x + (1.0 - b1) * z_new;
            z[j] = z_new;
            u[j] = new_y - y[j];
        }
    }
}

impl Epilogue for ScheduleFree {
    unsafe fn finish(&self, i: usize, off: usize, u: &mut [f32], p: &mut [f32]) {
        Self::interpolate(self.b1 as f32, self.ck, u, p, self.z.slice(i, off, u.len()));
        crate::kernel::finish_inline(p, u, None, None);
    }
}

impl Transform for ScheduleFree {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
        self.base.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.z = params.iter().map(|p| p.to_vec()).collect::<Vec<_>>().into();
        self.weight_sum = 0.0;
        self.step_count = 1;
        self.max_lr = 0.0;
        self.ck = 0.0;
        self.base.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        if self.as_elementwise().is_some() {
            // Elementwise base: one fused pass (the default `update` runs it block by block).
            self.as_elementwise().expect("checked").begin_step();
            crate::kernel::run_elementwise(self.elementwise().expect("checked"), updates, params);
            return Ok(());
        }
        let ck = self.next_ck();
        self.base.update(updates, params)?;
        let b1 = self.b1 as f32;
        for (i, (u, y)) in updates.iter_mut().zip(params).enumerate() {
            // SAFETY: `&mut self` excludes any concurrent access.
            let z = unsafe { self.z.slice(i, 0, u.len()) };
            Self::interpolate(b1, ck, u, y, z);
        }
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        if self.base.elementwise().is_some() {
            Some(self)
        } else {
            None
        }
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        if self.base.elementwise().is_some() {
            Some(self)
        } else {
            None
        }
    }
    /// optax `schedule_free_eval_params`: `x = (y − (1−b1)·z) / b1`.
    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        if self.z.is_empty() {
            return None; // not initialized: nothing stepped yet
        }
        let b1 = self.b1 as f32;
        let out = params
            .iter()
            .zip(self.z.buffers())
            .map(|(y, z)| y.iter().zip(z.iter()).map(|(&y, &z)| (y - (1.0 - b1) * z) / b1).collect())
            .collect();
        Some(out)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.z.visit(v, "z")?;
        v.scalar("weight_sum", &mut self.weight_sum)?;
        v.scalar("max_lr", &mut self.max_lr)?;
        v.counter("step_count", &mut self.step_count)?;
        v.push("base");
        self.base.visit_state(v)?;
        v.pop();
        Ok(())
    }
}

impl Elementwise for ScheduleFree {
    fn begin_step(&mut self) {
        self.ck = self.next_ck();
        self.base.as_elementwise().expect("elementwise base").begin_step();
    }
    /// The base optimizer's fused step, ending in the interpolation instead of the plain add.
    unsafe fn step(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: Fold) {
        let base = self.base.elementwise().expect("elementwise base");
        if fold.map.is_some() || fold.tail.is_some() || fold.post.is_some() {
            // Maps after the interpolation (a chain around Schedule-Free): the general path.
            return crate::kernel::step_via_apply(self, i, off, g, p, fold);
        }
        base.step(i, off, g, p, Fold { head: fold.head, map: None, tail: None, post: Some(self) })
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        self.base.elementwise().expect("elementwise base").apply(i, off, u, p);
        Self::interpolate(self.b1 as f32, self.ck, u, p, self.z.slice(i, off, u.len()));
    }
    fn needs_prepare(&self) -> bool {
        self.base.elementwise().is_some_and(|e| e.needs_prepare())
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if let Some(e) = self.base.as_elementwise() {
            e.prepare(inputs, params);
        }
    }
}
