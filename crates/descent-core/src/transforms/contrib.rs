//! optax `contrib` moment methods: AdEMAMix and its simplified form, ADOPT, MADGRAD, ACProp,
//! and the Schedule-Free wrapper.

use super::simd_apply;
use super::{elementwise_transform, zeros, ParamBufs};
use crate::error::Result;
use crate::kernel::{cbrt_f32, Elementwise, Epilogue, Fold};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};

/// optax `contrib.scale_by_ademamix` (Pagliardini et al. 2024): Adam with a second, slow EMA
/// `m₂` (decay `b3`) mixed in with weight `alpha`.
pub struct ScaleByAdemamix {
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
    b3: LearningRate,
    alpha: LearningRate,
    eps: f32,
    eps_root: f32,
    count: u64,
    m1: ParamBufs,
    m2: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
    bc2: f32,
    /// This step's `[β₃, 1 − β₃, alpha]` (`b3` and `alpha` may follow schedules of the count).
    slow: [f32; 3],
}
/// The hyper-parameters of [`ScaleByAdemamix`], with optax `contrib.scale_by_ademamix`'s defaults.
pub struct ScaleByAdemamixConfig {
    /// Decay β₁ of the fast first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Decay β₃ of the slow first moment: a constant or a schedule of the step count.
    pub b3: LearningRate,
    /// Weight α of the slow first moment: a constant or a schedule of the step count.
    pub alpha: LearningRate,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
}
impl Default for ScaleByAdemamixConfig {
    fn default() -> Self {
        ScaleByAdemamixConfig { b1: 0.9, b2: 0.999, b3: 0.9999.into(), alpha: 6.0.into(), eps: 1e-8, eps_root: 0.0 }
    }
}
impl ScaleByAdemamix {
    /// A `ScaleByAdemamix` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdemamixConfig) -> Self {
        let ScaleByAdemamixConfig { b1, b2, b3, alpha, eps, eps_root } = config;
        ScaleByAdemamix {
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
            b3,
            alpha,
            eps: eps as f32,
            eps_root: eps_root as f32,
            count: 0,
            m1: ParamBufs::default(),
            m2: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
            bc2: 1.0,
            slow: [0.0; 3],
        }
    }
}
elementwise_transform!(ScaleByAdemamix, |s, shapes, _p| { s.m1 = zeros(shapes).into(); s.m2 = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [m1, m2, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAdemamix {
    fn begin_step(&mut self) {
        // optax evaluates the schedules at the count before this step (its `count_m2`).
        let (b3, alpha) = (self.b3.at(self.count), self.alpha.at(self.count));
        self.slow = [b3 as f32, (1.0 - b3) as f32, alpha as f32];
        self.count += 1;
        self.bc1 = (1.0 / super::bias_correction(self.b1 as f64, self.count as f64)) as f32;
        self.bc2 = (1.0 / super::bias_correction(self.b2 as f64, self.count as f64)) as f32;
    }
    simd_apply!(ScaleByAdemamix, |this, i, off, u, p| {
        let n = u.len();
        let m1 = this.m1.slice(i, off, n);
        let m2 = this.m2.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        let [b3, c3, alpha] = this.slow;
        for j in 0..n {
            let g = u[j];
            m1[j] = this.one_minus[0] * g + this.b1 * m1[j];
            m2[j] = c3 * g + b3 * m2[j];
            v[j] = this.one_minus[1] * (g * g) + this.b2 * v[j];
            u[j] = (m1[j] * this.bc1 + alpha * m2[j]) / ((v[j] * this.bc2 + this.eps_root).sqrt() + this.eps);
        }
    });
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
                x = crate::kernel::clip(x, -this.clip, this.clip);
            }
            v[j] = (1.0 - b2) * (g * g) + b2 * v[j];
            m[j] = (1.0 - b1) * x + b1 * m[j];
            u[j] = if this.nesterov { (1.0 - b1) * x + b1 * m[j] } else { m[j] };
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
    // Compute-bound (a cube root per value): the AVX-512 build where the CPU has it. The
    // hyper-parameters are read once, as the loop writes through state the compiler cannot tell
    // apart from them, and the cube root is `cbrt_f32` (made odd, as `jnp.cbrt`), which
    // vectorizes where `f32::cbrt` is a call per value.
    simd_apply!(wide ScaleByMadgrad, |this, i, off, u, p| {
        let n = u.len();
        let (gss, s, x0, p) =
            (this.grad_sum_sq.slice(i, off, n), this.s.slice(i, off, n), this.x0.slice(i, off, n), &p[..n]);
        let (lamb, eps, momentum) = (this.lamb, this.eps, this.momentum);
        for j in 0..n {
            let g = u[j];
            gss[j] += lamb * (g * g);
            s[j] += lamb * g;
            // `jnp.cbrt`, odd: a negative sum (a negative rate) has a negative root.
            let sigma = cbrt_f32(gss[j].abs()).copysign(gss[j]) + eps;
            let z = x0[j] - s[j] / sigma;
            let x_new = (1.0 - momentum) * z + momentum * p[j];
            u[j] = x_new - p[j];
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
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
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
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
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
            m[j] = this.one_minus[0] * g + b1 * m[j];
            let v_hat = if initial { 1.0 } else { v[j] / bc };
            v[j] = this.one_minus[1] * (err * err) + b2 * v[j] + eps_root;
            u[j] = g / (v_hat.sqrt() + eps);
        }
    });
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
    /// Reached through `dyn Epilogue` from the base's vector build, so not inlined into it: the
    /// interpolation dispatches to the AVX2 build itself (as the baseline x86-64 build, 4 lanes
    /// and a division each, it held the AdamW base at 80% of its roofline).
    unsafe fn finish(&self, i: usize, off: usize, u: &mut [f32], p: &mut [f32]) {
        #[inline(always)]
        fn kernel(b1: f32, ck: f32, u: &mut [f32], p: &mut [f32], z: &mut [f32]) {
            ScheduleFree::interpolate(b1, ck, u, p, z);
            crate::kernel::finish_inline(p, u, None, None);
        }
        let z = self.z.slice(i, off, u.len());
        let (b1, ck) = (self.b1 as f32, self.ck);
        crate::kernel::dispatch_simd!(kernel(b1: f32, ck: f32, u: &mut [f32], p: &mut [f32], z: &mut [f32]))
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
        base.step(i, off, g, p, Fold { map: None, tail: None, post: Some(self), ..fold })
    }
    unsafe fn apply(&self, i: usize, off: usize, u: &mut [f32], p: &[f32]) {
        self.base.elementwise().expect("elementwise base").apply(i, off, u, p);
        Self::interpolate(self.b1 as f32, self.ck, u, p, self.z.slice(i, off, u.len()));
    }
    fn needs_whole_blocks(&self) -> bool {
        self.base.elementwise().is_none_or(|e| e.needs_whole_blocks())
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
