//! More optax algorithms: `normalize_by_update_norm`, and from `contrib` ACProp, DoWG, Mechanic
//! (`mechanize`) and simplified AdEMAMix.

use super::simd_apply;
use super::{elementwise_transform, state, zeros, ParamBufs};
use crate::error::Result;
use crate::kernel::{global_sum_sq, Elementwise};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};

/// optax `normalize_by_update_norm`: `u ← u / ((‖u‖ + eps) / scale_factor)`, the norm taken
/// over all parameters together.
pub struct NormalizeByUpdateNorm {
    scale_factor: f64,
    eps: f64,
    divisor: f32,
}
impl NormalizeByUpdateNorm {
    /// A `NormalizeByUpdateNorm` with these hyper-parameters (`scale_factor`, `eps`), as described above.
    pub fn new(scale_factor: f64, eps: f64) -> Self {
        NormalizeByUpdateNorm { scale_factor, eps, divisor: 1.0 }
    }
}
elementwise_transform!(NormalizeByUpdateNorm, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for NormalizeByUpdateNorm {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        let norm = global_sum_sq(inputs).sqrt();
        self.divisor = ((norm + self.eps) / self.scale_factor) as f32;
    }
    simd_apply!(NormalizeByUpdateNorm, |this, i, off, u, p| {
        let d = this.divisor;
        for x in u.iter_mut() {
            *x /= d;
        }
    });
}

/// optax `contrib.scale_by_acprop` (Zhuang et al. 2021, ACProp): AdaBelief's centred second
/// moment `s ← b2·s + (1−b2)·(g − m_prev)² + eps_root`, used asynchronously: the update is
/// `g / (√ŝ_prev + eps)`, with the bias-corrected second moment of the *previous* step (1 on the
/// first step). The first moment only feeds the prediction error.
pub struct ScaleByAcprop {
    b1: f32,
    b2: f32,
    eps: f32,
    eps_root: f32,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    /// `1 − b2^t`, the bias correction of the previous step's second moment (unused on the
    /// first step, whose denominator is 1).
    bc_prev: f32,
    initial: bool,
}
/// The hyper-parameters of [`ScaleByAcprop`], with optax `contrib.scale_by_acprop`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAcpropConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the centred second moment.
    pub b2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// ε added to the second moment at each step.
    pub eps_root: f64,
}
impl Default for ScaleByAcpropConfig {
    fn default() -> Self {
        ScaleByAcpropConfig { b1: 0.9, b2: 0.999, eps: 1e-16, eps_root: 1e-16 }
    }
}
impl ScaleByAcprop {
    /// A `ScaleByAcprop` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAcpropConfig) -> Self {
        let ScaleByAcpropConfig { b1, b2, eps, eps_root } = config;
        ScaleByAcprop {
            b1: b1 as f32,
            b2: b2 as f32,
            eps: eps as f32,
            eps_root: eps_root as f32,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc_prev: 1.0,
            initial: true,
        }
    }
}
elementwise_transform!(ScaleByAcprop, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAcprop {
    fn begin_step(&mut self) {
        self.initial = self.count == 0;
        let t = self.count.max(1);
        self.bc_prev = super::bias_correction(self.b2 as f64, t as f64) as f32;
        self.count += 1;
    }
    simd_apply!(ScaleByAcprop, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        let (b1, b2, eps, eps_root, bc, initial) =
            (this.b1, this.b2, this.eps, this.eps_root, this.bc_prev, this.initial);
        for j in 0..n {
            let g = u[j];
            let err = g - m[j];
            m[j] = (1.0 - b1) * g + b1 * m[j];
            let v_hat = if initial { 1.0 } else { v[j] / bc };
            v[j] = (1.0 - b2) * (err * err) + b2 * v[j] + eps_root;
            u[j] = g / (v_hat.sqrt() + eps);
        }
    });
}

/// optax `contrib.scale_by_dowg` (Khaled et al. 2023, "Distance over Weighted Gradients"):
/// `r̄² ← max(r̄², ‖x − x₀‖²)`, `G ← G + r̄²·‖g‖²`, `u ← (r̄² / (√G + eps))·g`.
pub struct ScaleByDowg {
    init_estim_sq_dist: Option<f64>,
    eps: f64,
    init_params: Vec<Vec<f32>>,
    estim_sq_dist: f64,
    weighted_sq_norm_grads: f64,
    lr: f32,
}
impl ScaleByDowg {
    /// `init_estim_sq_dist`: the first distance estimate (optax's default, `None`, takes `eps`).
    pub fn new(init_estim_sq_dist: Option<f64>, eps: f64) -> Self {
        ScaleByDowg {
            init_estim_sq_dist,
            eps,
            init_params: vec![],
            estim_sq_dist: 0.0,
            weighted_sq_norm_grads: 0.0,
            lr: 0.0,
        }
    }
}
impl Transform for ScaleByDowg {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.init_params = params.iter().map(|p| p.to_vec()).collect();
        self.estim_sq_dist = self.init_estim_sq_dist.unwrap_or(self.eps);
        self.weighted_sq_norm_grads = 0.0;
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    state!(ScaleByDowg; bufs: [init_params]; counters: []; scalars: [estim_sq_dist, weighted_sq_norm_grads]);
}
impl Elementwise for ScaleByDowg {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let dist: f64 = self
            .init_params
            .iter()
            .zip(params)
            .map(|(x0, x)| x0.iter().zip(x.iter()).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum::<f64>())
            .sum();
        self.estim_sq_dist = self.estim_sq_dist.max(dist);
        self.weighted_sq_norm_grads += self.estim_sq_dist * global_sum_sq(inputs);
        self.lr = (self.estim_sq_dist / (self.weighted_sq_norm_grads.sqrt() + self.eps)) as f32;
    }
    fn head(&self, _i: usize) -> Option<crate::kernel::Head> {
        Some(crate::kernel::Head::affine(self.lr, 0.0))
    }
    simd_apply!(ScaleByDowg, |this, i, off, u, p| {
        let lr = this.lr;
        for x in u.iter_mut() {
            *x *= lr;
        }
    });
}

/// optax `contrib.mechanize` (Cutkosky et al. 2023, Mechanic): learns a scale `s` for a base
/// optimizer's steps. With `Δ` the base optimizer's accumulated steps and `x₀` the first
/// parameters, the parameters become `x₀ + (Σs)·Δ`; each of `num_betas` scales is tuned online from
/// `h = ⟨g + λ·Σs·‖g‖/‖x‖·x, Δ⟩` with decay `βᵢ = 1 − 10⁻ⁱ`.
pub struct Mechanize {
    base: Box<dyn Transform>,
    weight_decay: f32,
    eps: f32,
    s_init: f32,
    betas: Vec<f32>,
    count: u64,
    r: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    x0: Vec<Vec<f32>>,
}
/// The hyper-parameters of [`Mechanize`], with optax `contrib.mechanize` (its base optimizer is the first argument of `new`)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MechanizeConfig {
    /// Weight decay λ in the scale's gradient.
    pub weight_decay: f64,
    /// ε of the divisions.
    pub eps: f64,
    /// The initial scale.
    pub s_init: f64,
    /// Number of scales, with decays `1 − 10⁻ⁱ`.
    pub num_betas: usize,
}
impl Default for MechanizeConfig {
    fn default() -> Self {
        MechanizeConfig { weight_decay: 1e-2, eps: 1e-8, s_init: 1e-6, num_betas: 6 }
    }
}
impl Mechanize {
    /// A `Mechanize` with the hyper-parameters of `config` and the arguments before it, as described above.
    pub fn new(base: Box<dyn Transform>, config: MechanizeConfig) -> Self {
        let MechanizeConfig { weight_decay, eps, s_init, num_betas } = config;
        let betas = (1..=num_betas).map(|i| (1.0 - 0.1f64.powi(i as i32)) as f32).collect();
        Mechanize {
            base,
            weight_decay: weight_decay as f32,
            eps: eps as f32,
            s_init: s_init as f32,
            betas,
            count: 0,
            r: vec![],
            m: vec![],
            v: vec![],
            s: vec![],
            x0: vec![],
        }
    }
}
impl Transform for Mechanize {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.base.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let n = self.betas.len();
        self.count = 0;
        self.r = vec![0.0; n];
        self.m = vec![0.0; n];
        self.v = vec![0.0; n];
        self.s = vec![self.s_init; n];
        self.x0 = params.iter().map(|p| p.to_vec()).collect();
        self.base.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        if self.count == 0 {
            for (x0, p) in self.x0.iter_mut().zip(params) {
                x0.copy_from_slice(p);
            }
        }
        let eps = self.eps;
        let s_sum: f32 = self.s.iter().sum();
        let grads: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
        let grad_norm = global_sum_sq(&grads).sqrt() as f32;
        let param_norm = global_sum_sq(params).sqrt() as f32;
        let c = self.weight_decay * s_sum * grad_norm / (param_norm + eps);
        // h = ⟨g + c·x, (x₀ − x)/(Σs + eps)⟩, from the gradients before the base optimizer runs.
        let mut h = 0.0f64;
        for ((g, x), x0) in updates.iter().zip(params).zip(&self.x0) {
            for ((&g, &x), &x0) in g.iter().zip(x.iter()).zip(x0) {
                h += ((g + c * x) * ((x0 - x) / (s_sum + eps))) as f64;
            }
        }
        let h = h as f32;
        self.base.update(updates, params)?;
        for k in 0..self.betas.len() {
            let b = self.betas[k];
            let clipped = h.clamp(-self.m[k], self.m[k]);
            self.m[k] = (b * self.m[k]).max(h.abs() + eps);
            self.v[k] = b * b * self.v[k] + h * h;
            self.r[k] = b * self.r[k] + clipped * self.s[k];
            let wealth = (self.s_init / self.betas.len() as f32) * self.m[k] + self.r[k].max(0.0);
            self.s[k] = wealth / (self.v[k].sqrt() + eps);
        }
        let scale: f32 = self.s.iter().sum();
        for ((u, x), x0) in updates.iter_mut().zip(params).zip(&self.x0) {
            for ((u, &x), &x0) in u.iter_mut().zip(x.iter()).zip(x0) {
                let delta = (x0 - x) / (s_sum + eps) - *u;
                *u = (x0 - scale * delta) - x;
            }
        }
        self.count += 1;
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("count", &mut self.count)?;
        v.buffer("r", &mut self.r)?;
        v.buffer("m", &mut self.m)?;
        v.buffer("v", &mut self.v)?;
        v.buffer("s", &mut self.s)?;
        crate::state::visit_buffers(v, "x0", &mut self.x0)?;
        v.push("base");
        self.base.visit_state(v)?;
        v.pop();
        Ok(())
    }
}

/// optax `contrib.scale_by_simplified_ademamix` (Morwani et al. 2024): an undamped momentum
/// `m ← b1·m + g` and `u = (m + α·g) / (√(n̂ + eps_root) + eps)`, `n` Adam's second moment
/// (bias-corrected). `alpha` may follow a schedule of the step count.
pub struct ScaleBySimplifiedAdemamix {
    b1: f32,
    b2: f32,
    alpha: LearningRate,
    eps: f32,
    eps_root: f32,
    count: u64,
    m: ParamBufs,
    n: ParamBufs,
    alpha_t: f32,
    bc2: f32,
}
/// The hyper-parameters of [`ScaleBySimplifiedAdemamix`], with optax `contrib.scale_by_simplified_ademamix`'s defaults.
pub struct ScaleBySimplifiedAdemamixConfig {
    /// Decay β₁ of the undamped momentum.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Weight α of the gradient, a constant or a schedule of the step count.
    pub alpha: LearningRate,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
}
impl Default for ScaleBySimplifiedAdemamixConfig {
    fn default() -> Self {
        ScaleBySimplifiedAdemamixConfig { b1: 0.99, b2: 0.95, alpha: 0.0.into(), eps: 1e-8, eps_root: 0.0 }
    }
}
impl ScaleBySimplifiedAdemamix {
    /// A `ScaleBySimplifiedAdemamix` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleBySimplifiedAdemamixConfig) -> Self {
        let ScaleBySimplifiedAdemamixConfig { b1, b2, alpha, eps, eps_root } = config;
        ScaleBySimplifiedAdemamix {
            b1: b1 as f32,
            b2: b2 as f32,
            alpha,
            eps: eps as f32,
            eps_root: eps_root as f32,
            count: 0,
            m: ParamBufs::default(),
            n: ParamBufs::default(),
            alpha_t: 0.0,
            bc2: 1.0,
        }
    }
}
elementwise_transform!(ScaleBySimplifiedAdemamix, |s, shapes, _p| { s.m = zeros(shapes).into(); s.n = zeros(shapes).into(); }; bufs: [m, n]; counters: [count]; scalars: []);
impl Elementwise for ScaleBySimplifiedAdemamix {
    fn begin_step(&mut self) {
        self.alpha_t = self.alpha.at(self.count) as f32;
        self.count += 1;
        self.bc2 = super::bias_correction(self.b2 as f64, self.count as f64) as f32;
    }
    simd_apply!(ScaleBySimplifiedAdemamix, |this, i, off, u, p| {
        let len = u.len();
        let m = this.m.slice(i, off, len);
        let n = this.n.slice(i, off, len);
        let (b1, b2, alpha, eps, eps_root, bc2) = (this.b1, this.b2, this.alpha_t, this.eps, this.eps_root, this.bc2);
        for j in 0..len {
            let g = u[j];
            m[j] = g + b1 * m[j];
            let g2 = g * g;
            n[j] = g2 + b2 * (n[j] - g2);
            u[j] = (m[j] + alpha * g) / ((n[j] / bc2 + eps_root).sqrt() + eps);
        }
    });
}
