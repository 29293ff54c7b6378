//! Adaptive elementwise transformations: Adam and its relatives.

use super::simd_apply;
use super::{elementwise_transform, full, round_bf16, sign, zeros, ParamBufs};
use crate::kernel::Elementwise;
use crate::transform::numel;

/// `1 / (1 − decayᵗ)`: bias corrections are applied as products, so a kernel divides once.
fn bc(decay: f32, t: u64) -> f32 {
    (1.0 / super::bias_correction(decay as f64, t as f64)) as f32
}

/// optax `scale_by_adam` (Kingma & Ba 2015): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `u ← m̂ / (√(v̂ + eps_root) + eps)`; with `nesterov`, NAdam's `m̂` (Dozat 2016); with `amsgrad`,
/// optax `scale_by_amsgrad` (the running maximum of `v̂`, Reddi et al. 2018).
pub struct ScaleByAdam {
    correct_mu: bool,
    correct_nu: bool,
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂` as optax computes them: in double precision from the Python
    /// floats, then rounded to f32 (`1 − f32(β)` differs: 0.00099998713 for β = 0.999).
    one_minus_b1: f32,
    one_minus_b2: f32,
    eps: f32,
    eps_root: f32,
    nesterov: bool,
    amsgrad: bool,
    mu_dtype: MomentDtype,
    count: u64,
    mu: ParamBufs,
    /// The first moment as bfloat16 bits, when `mu_dtype` is [`MomentDtype::Bf16`] (`mu` is
    /// then empty).
    mu_bf16: ParamBufs<u16>,
    nu: ParamBufs,
    nu_max: ParamBufs,
    bc1: f32,
    bc1_next: f32,
    bc2: f32,
}
/// The hyper-parameters of [`ScaleByAdam`], with optax `scale_by_adam`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdamConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
    /// NAdam's Nesterov-corrected first moment (Dozat 2016).
    pub nesterov: bool,
}
impl Default for ScaleByAdamConfig {
    fn default() -> Self {
        ScaleByAdamConfig { b1: 0.9, b2: 0.999, eps: 1e-8, eps_root: 0.0, nesterov: false }
    }
}
impl ScaleByAdam {
    /// A `ScaleByAdam` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdamConfig) -> Self {
        let ScaleByAdamConfig { b1, b2, eps, eps_root, nesterov } = config;
        ScaleByAdam {
            correct_mu: true,
            correct_nu: true,
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus_b1: crate::transforms::one_minus(b1),
            one_minus_b2: crate::transforms::one_minus(b2),
            eps: eps as f32,
            eps_root: eps_root as f32,
            nesterov,
            amsgrad: false,
            mu_dtype: MomentDtype::F32,
            count: 0,
            mu: ParamBufs::default(),
            mu_bf16: ParamBufs::default(),
            nu: ParamBufs::default(),
            nu_max: ParamBufs::default(),
            bc1: 1.0,
            bc1_next: 1.0,
            bc2: 1.0,
        }
    }
    /// AMSGrad: divide by the running maximum of the bias-corrected second moment.
    pub fn amsgrad(mut self) -> Self {
        self.amsgrad = true;
        self
    }
    /// optax's `mu_dtype`: the type the first moment is stored in between steps (computed in
    /// `f32`, rounded to nearest even on store, as optax's `tree_cast`).
    pub fn mu_dtype(mut self, dtype: MomentDtype) -> Self {
        self.mu_dtype = dtype;
        self
    }
    /// optax `scale_by_amsgrad`'s `bias_correction_mu` / `bias_correction_nu` switches.
    pub fn bias_correction(mut self, mu: bool, nu: bool) -> Self {
        self.correct_mu = mu;
        self.correct_nu = nu;
        self
    }
}
elementwise_transform!(ScaleByAdam, |s, shapes, _p| {
    match s.mu_dtype {
        MomentDtype::F32 => s.mu = zeros(shapes).into(),
        MomentDtype::Bf16 => s.mu_bf16 = shapes.iter().map(|sh| vec![0u16; numel(sh)]).collect::<Vec<_>>().into(),
    }
    s.nu = zeros(shapes).into();
    s.nu_max = if s.amsgrad { zeros(shapes).into() } else { ParamBufs::default() };
}; bufs: [mu, mu_bf16, nu, nu_max]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAdam {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = if self.correct_mu { bc(self.b1, self.count) } else { 1.0 };
        self.bc1_next = bc(self.b1, self.count + 1);
        self.bc2 = if self.correct_nu { bc(self.b2, self.count) } else { 1.0 };
    }
    simd_apply!(ScaleByAdam, |this, i, off, u, p| {
        /// The loops, for a first moment stored as `f32` or as bfloat16.
        #[inline(always)]
        fn run<M: Moment>(this: &ScaleByAdam, u: &mut [f32], mut m: M, v: &mut [f32], vm: &mut [f32]) {
            let n = u.len();
            let v = &mut v[..n];
            let (b1, b2, eps, eps_root) = (this.b1, this.b2, this.eps, this.eps_root);
            let (c1, c2) = (this.one_minus_b1, this.one_minus_b2);
            let (bc1, bc1n, bc2) = (this.bc1, this.bc1_next, this.bc2);
            if this.amsgrad {
                let vm = &mut vm[..n];
                for j in 0..n {
                    let g = u[j];
                    let mj = c1 * g + m.decayed(j, b1);
                    m.set(j, mj);
                    v[j] = c2 * (g * g) + b2 * v[j];
                    vm[j] = vm[j].max(v[j] * bc2);
                    u[j] = (mj * bc1) / ((vm[j] + eps_root).sqrt() + eps);
                }
            } else if this.nesterov {
                for j in 0..n {
                    let g = u[j];
                    let mj = c1 * g + m.decayed(j, b1);
                    m.set(j, mj);
                    v[j] = c2 * (g * g) + b2 * v[j];
                    let m_hat = b1 * (mj * bc1n) + c1 * (g * bc1);
                    u[j] = m_hat / ((v[j] * bc2 + eps_root).sqrt() + eps);
                }
            } else {
                for j in 0..n {
                    let g = u[j];
                    let mj = c1 * g + m.decayed(j, b1);
                    m.set(j, mj);
                    v[j] = c2 * (g * g) + b2 * v[j];
                    u[j] = (mj * bc1) / ((v[j] * bc2 + eps_root).sqrt() + eps);
                }
            }
        }
        let n = u.len();
        let v = this.nu.slice(i, off, n);
        let vm = if this.amsgrad { this.nu_max.slice(i, off, n) } else { &mut [][..] };
        match this.mu_dtype {
            MomentDtype::F32 => run(this, u, &mut this.mu.slice(i, off, n)[..n], v, vm),
            MomentDtype::Bf16 => run(this, u, Bf16::new(&mut this.mu_bf16.slice(i, off, n)[..n], this.b1), v, vm),
        }
    });
}

/// The type a moment is stored in between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MomentDtype {
    /// 4 bytes an element.
    F32,
    /// bfloat16, 2 bytes an element: `f32`'s range with 8 bits of precision.
    Bf16,
}

/// A moment buffer as the kernels read and write it: `f32` values, whatever the storage.
trait Moment {
    fn get(&self, j: usize) -> f32;
    fn set(&mut self, j: usize, x: f32);
    /// `decay · m[j]`, in the stored type's arithmetic (see [`decayed_bf16`]).
    fn decayed(&self, j: usize, decay: f32) -> f32;
}
impl Moment for &mut [f32] {
    #[inline(always)]
    fn get(&self, j: usize) -> f32 {
        self[j]
    }
    #[inline(always)]
    fn set(&mut self, j: usize, x: f32) {
        self[j] = x;
    }
    #[inline(always)]
    fn decayed(&self, j: usize, decay: f32) -> f32 {
        decay * self[j]
    }
}
/// bfloat16 storage (the upper half of an `f32`'s bits) of a moment decayed by a rate, kept
/// rounded to bfloat16 (see [`decayed_bf16`]).
struct Bf16<'a>(&'a mut [u16], f32);
impl<'a> Bf16<'a> {
    fn new(bits: &'a mut [u16], decay: f32) -> Self {
        Bf16(bits, round_bf16(decay))
    }
}
impl Moment for Bf16<'_> {
    #[inline(always)]
    fn get(&self, j: usize) -> f32 {
        bf16_to_f32(self.0[j])
    }
    #[inline(always)]
    fn set(&mut self, j: usize, x: f32) {
        self.0[j] = f32_to_bf16(x);
    }
    #[inline(always)]
    fn decayed(&self, j: usize, decay: f32) -> f32 {
        debug_assert_eq!(self.1, round_bf16(decay), "the decay the moment was made for");
        // The product of two bfloat16 values is exact in f32: one rounding.
        round_bf16(self.1 * self.get(j))
    }
}

/// `decay · m` for a moment `m` stored as bfloat16, as optax's `update_moment`
/// (`(1 − decay)·g + decay·m`) computes it: jax keeps the product of a Python float and a bfloat16
/// array in bfloat16, so the decay is rounded to bfloat16 and so is the product; the sum with the
/// `f32` gradient term is then `f32`.
#[inline(always)]
pub fn decayed_bf16(decay: f32, m: f32) -> f32 {
    round_bf16(round_bf16(decay) * m)
}

/// The `f32` value of bfloat16 bits (exact).
#[inline(always)]
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// `x` rounded to the nearest bfloat16, ties to even (as `jnp.astype(bfloat16)`); NaN stays NaN.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    // A NaN whose payload sits in the low half would round to infinity: keep it a quiet NaN.
    if x.is_nan() {
        ((b >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

/// optax `scale_by_rms` (RMSProp, Tieleman & Hinton 2012): `ν ← decay·ν + (1−decay)g²`,
/// `u ← g/√(ν̂ + eps)` (or `g/(√ν̂ + eps)`), `ν̂` bias-corrected on request.
pub struct ScaleByRms {
    decay: f32,
    /// `1 − decay`, as optax computes it ([`crate::transforms::one_minus`]).
    one_minus_decay: f32,
    eps: f32,
    initial_scale: f32,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: u64,
    nu: ParamBufs,
    bc: f32,
}
/// The hyper-parameters of [`ScaleByRms`], with optax `scale_by_rms`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByRmsConfig {
    /// Decay of the second moment ν.
    pub decay: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// The value ν starts at.
    pub initial_scale: f64,
    /// Add ε inside the square root (`g/√(ν̂ + ε)`) instead of outside it.
    pub eps_in_sqrt: bool,
    /// Bias-correct ν.
    pub bias_correction: bool,
}
impl Default for ScaleByRmsConfig {
    fn default() -> Self {
        ScaleByRmsConfig { decay: 0.9, eps: 1e-8, initial_scale: 0.0, eps_in_sqrt: true, bias_correction: false }
    }
}
impl ScaleByRms {
    /// A `ScaleByRms` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByRmsConfig) -> Self {
        let ScaleByRmsConfig { decay, eps, initial_scale, eps_in_sqrt, bias_correction } = config;
        ScaleByRms {
            decay: decay as f32,
            one_minus_decay: crate::transforms::one_minus(decay),
            eps: eps as f32,
            initial_scale: initial_scale as f32,
            eps_in_sqrt,
            bias_correction,
            count: 0,
            nu: ParamBufs::default(),
            bc: 1.0,
        }
    }
}
elementwise_transform!(ScaleByRms, |s, shapes, _p| { s.nu = full(shapes, s.initial_scale).into(); }; bufs: [nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByRms {
    fn begin_step(&mut self) {
        if self.bias_correction {
            self.count += 1;
            self.bc = bc(self.decay, self.count);
        }
    }
    simd_apply!(ScaleByRms, |this, i, off, u, p| {
        let v = this.nu.slice(i, off, u.len());
        let (d, c) = (this.decay, this.one_minus_decay);
        for (g, v) in u.iter_mut().zip(v) {
            *v = c * (*g * *g) + d * *v;
            let vh = *v * this.bc;
            *g *= if this.eps_in_sqrt { 1.0 / (vh + this.eps).sqrt() } else { 1.0 / (vh.sqrt() + this.eps) };
        }
    });
}

/// optax `scale_by_stddev` (centered RMSProp, Graves 2013): divides by `√(ν − μ² + eps)`.
pub struct ScaleByStddev {
    decay: f32,
    /// `1 − decay`, as optax computes it ([`crate::transforms::one_minus`]).
    one_minus_decay: f32,
    eps: f32,
    initial_scale: f32,
    eps_in_sqrt: bool,
    bias_correction: bool,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    bc: f32,
}
/// The hyper-parameters of [`ScaleByStddev`], with optax `scale_by_stddev`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByStddevConfig {
    /// Decay of the moments μ and ν.
    pub decay: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// The value ν starts at.
    pub initial_scale: f64,
    /// Add ε inside the square root instead of outside it.
    pub eps_in_sqrt: bool,
    /// Bias-correct μ and ν.
    pub bias_correction: bool,
}
impl Default for ScaleByStddevConfig {
    fn default() -> Self {
        ScaleByStddevConfig { decay: 0.9, eps: 1e-8, initial_scale: 0.0, eps_in_sqrt: true, bias_correction: false }
    }
}
impl ScaleByStddev {
    /// A `ScaleByStddev` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByStddevConfig) -> Self {
        let ScaleByStddevConfig { decay, eps, initial_scale, eps_in_sqrt, bias_correction } = config;
        ScaleByStddev {
            decay: decay as f32,
            one_minus_decay: crate::transforms::one_minus(decay),
            eps: eps as f32,
            initial_scale: initial_scale as f32,
            eps_in_sqrt,
            bias_correction,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc: 1.0,
        }
    }
}
elementwise_transform!(ScaleByStddev, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = full(shapes, s.initial_scale).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByStddev {
    fn begin_step(&mut self) {
        if self.bias_correction {
            self.count += 1;
            self.bc = bc(self.decay, self.count);
        }
    }
    simd_apply!(ScaleByStddev, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        let (d, c) = (this.decay, this.one_minus_decay);
        for j in 0..n {
            let g = u[j];
            m[j] = c * g + d * m[j];
            v[j] = c * (g * g) + d * v[j];
            let (mh, vh) = (m[j] * this.bc, v[j] * this.bc);
            let var = vh - mh * mh;
            u[j] = g * if this.eps_in_sqrt { 1.0 / (var + this.eps).sqrt() } else { 1.0 / (var.sqrt() + this.eps) };
        }
    });
}

/// optax `scale_by_adamax` (Kingma & Ba 2015, §7): `ν ← max(|g| + eps, β₂ν)`, `u ← m̂/ν`.
pub struct ScaleByAdamax {
    b1: f32,
    /// `1 − β₁`, as optax computes it ([`crate::transforms::one_minus`]).
    one_minus_b1: f32,
    b2: f32,
    eps: f32,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
}
/// The hyper-parameters of [`ScaleByAdamax`], with optax `scale_by_adamax`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdamaxConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the infinity norm.
    pub b2: f64,
    /// ε added to `|g|`.
    pub eps: f64,
}
impl Default for ScaleByAdamaxConfig {
    fn default() -> Self {
        ScaleByAdamaxConfig { b1: 0.9, b2: 0.999, eps: 1e-8 }
    }
}
impl ScaleByAdamax {
    /// A `ScaleByAdamax` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdamaxConfig) -> Self {
        let ScaleByAdamaxConfig { b1, b2, eps } = config;
        ScaleByAdamax {
            b1: b1 as f32,
            one_minus_b1: crate::transforms::one_minus(b1),
            b2: b2 as f32,
            eps: eps as f32,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
        }
    }
}
elementwise_transform!(ScaleByAdamax, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByAdamax {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = bc(self.b1, self.count);
    }
    simd_apply!(ScaleByAdamax, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            m[j] = this.one_minus_b1 * g + this.b1 * m[j];
            v[j] = (g.abs() + this.eps).max(this.b2 * v[j]);
            u[j] = (m[j] * this.bc1) / v[j];
        }
    });
}

/// optax `scale_by_lion` (Chen et al. 2023): `u ← sign((1−β₁)g + β₁m)`, then `m ← (1−β₂)g + β₂m`;
/// the sign, or the smoother forms of its `mode` ([`LionMode`]).
pub struct ScaleByLion {
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
    mode: LionMode,
    count: u64,
    mu: ParamBufs,
}

/// optax `scale_by_lion`'s `mode`: what the interpolated momentum `x` becomes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum LionMode {
    /// `sign(x)` (optax's default `"hard"`).
    #[default]
    Hard,
    /// `tanh(smooth_beta·x)` (`"smooth"`).
    Smooth {
        /// `smooth_beta` (optax's default 1).
        beta: f32,
    },
    /// `x` where `|x| < 1`, `sign(x)` beyond (`"refined"`).
    Refined,
}

impl ScaleByLion {
    /// A `ScaleByLion` with these hyper-parameters (`b1`, `b2`), as described above.
    pub fn new(b1: f64, b2: f64) -> Self {
        ScaleByLion {
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
            mode: LionMode::Hard,
            count: 0,
            mu: ParamBufs::default(),
        }
    }

    /// The same with another sign variant.
    pub fn with_mode(mut self, mode: LionMode) -> Self {
        self.mode = mode;
        self
    }
}
elementwise_transform!(ScaleByLion, |s, shapes, _p| { s.mu = zeros(shapes).into(); }; bufs: [mu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByLion {
    fn begin_step(&mut self) {
        self.count += 1;
    }
    simd_apply!(ScaleByLion, |this, i, off, u, p| {
        let m = this.mu.slice(i, off, u.len());
        // One loop per mode, the mode's test out of the loop.
        match this.mode {
            LionMode::Hard => {
                for (g, m) in u.iter_mut().zip(m) {
                    let x = this.one_minus[0] * *g + this.b1 * *m;
                    *m = this.one_minus[1] * *g + this.b2 * *m;
                    *g = sign(x);
                }
            }
            LionMode::Smooth { beta } => {
                for (g, m) in u.iter_mut().zip(m) {
                    let x = this.one_minus[0] * *g + this.b1 * *m;
                    *m = this.one_minus[1] * *g + this.b2 * *m;
                    *g = (beta * x).tanh();
                }
            }
            LionMode::Refined => {
                for (g, m) in u.iter_mut().zip(m) {
                    let x = this.one_minus[0] * *g + this.b1 * *m;
                    *m = this.one_minus[1] * *g + this.b2 * *m;
                    *g = if x.abs() < 1.0 { x } else { sign(x) };
                }
            }
        }
    });
}

/// optax `scale_by_adadelta` (Zeiler 2012): `u ← √(E[Δx²] + eps)/√(E[g²] + eps)·g`.
pub struct ScaleByAdadelta {
    rho: f32,
    /// `1 − ρ`, as optax computes it ([`crate::transforms::one_minus`]).
    one_minus_rho: f32,
    eps: f32,
    e_g: ParamBufs,
    e_x: ParamBufs,
}
impl ScaleByAdadelta {
    /// A `ScaleByAdadelta` with these hyper-parameters (`rho`, `eps`), as described above.
    pub fn new(rho: f64, eps: f64) -> Self {
        ScaleByAdadelta {
            rho: rho as f32,
            one_minus_rho: crate::transforms::one_minus(rho),
            eps: eps as f32,
            e_g: ParamBufs::default(),
            e_x: ParamBufs::default(),
        }
    }
}
elementwise_transform!(ScaleByAdadelta, |s, shapes, _p| { s.e_g = zeros(shapes).into(); s.e_x = zeros(shapes).into(); }; bufs: [e_g, e_x]; counters: []; scalars: []);
impl Elementwise for ScaleByAdadelta {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByAdadelta, |this, i, off, u, p| {
        let n = u.len();
        let eg = this.e_g.slice(i, off, n);
        let ex = this.e_x.slice(i, off, n);
        let (r, c) = (this.rho, this.one_minus_rho);
        for j in 0..n {
            let g = u[j];
            eg[j] = c * (g * g) + r * eg[j];
            let d = (ex[j] + this.eps).sqrt() / (eg[j] + this.eps).sqrt() * g;
            ex[j] = c * (d * d) + r * ex[j];
            u[j] = d;
        }
    });
}

/// optax `scale_by_adan` (Xie et al. 2022, Algorithm 1): moments of the gradient, of its
/// difference and of the squared Nesterov-corrected gradient.
pub struct ScaleByAdan {
    b1: f32,
    b2: f32,
    b3: f32,
    /// `1 − β₁`, `1 − β₂`, `1 − β₃`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 3],
    eps: f32,
    eps_root: f32,
    t: u64,
    m: ParamBufs,
    v: ParamBufs,
    n: ParamBufs,
    g: ParamBufs,
    first: bool,
    bcs: [f32; 3],
}
/// The hyper-parameters of [`ScaleByAdan`], with optax `scale_by_adan`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByAdanConfig {
    /// Decay of the gradient EMA.
    pub b1: f64,
    /// Decay of the gradient-difference EMA.
    pub b2: f64,
    /// Decay of the second moment.
    pub b3: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
}
impl Default for ScaleByAdanConfig {
    fn default() -> Self {
        ScaleByAdanConfig { b1: 0.98, b2: 0.92, b3: 0.99, eps: 1e-8, eps_root: 0.0 }
    }
}
impl ScaleByAdan {
    /// A `ScaleByAdan` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByAdanConfig) -> Self {
        let ScaleByAdanConfig { b1, b2, b3, eps, eps_root } = config;
        ScaleByAdan {
            b1: b1 as f32,
            b2: b2 as f32,
            b3: b3 as f32,
            one_minus: [
                crate::transforms::one_minus(b1),
                crate::transforms::one_minus(b2),
                crate::transforms::one_minus(b3),
            ],
            eps: eps as f32,
            eps_root: eps_root as f32,
            t: 0,
            m: ParamBufs::default(),
            v: ParamBufs::default(),
            n: ParamBufs::default(),
            g: ParamBufs::default(),
            first: true,
            bcs: [1.0; 3],
        }
    }
}
elementwise_transform!(ScaleByAdan, |s, shapes, _p| {
    s.m = zeros(shapes).into();
    s.v = zeros(shapes).into();
    s.n = zeros(shapes).into();
    s.g = zeros(shapes).into();
}; bufs: [m, v, n, g]; counters: [t]; scalars: []);
impl Elementwise for ScaleByAdan {
    fn begin_step(&mut self) {
        self.first = self.t == 0;
        self.t += 1;
        self.bcs = [bc(self.b1, self.t), bc(self.b2, self.t), bc(self.b3, self.t)];
    }
    simd_apply!(ScaleByAdan, |this, i, off, u, p| {
        let len = u.len();
        let (b1, b2, b3) = (this.b1, this.b2, this.b3);
        let [c1, c2, c3] = this.one_minus;
        let m = this.m.slice(i, off, len);
        let v = this.v.slice(i, off, len);
        let n = this.n.slice(i, off, len);
        let pg = this.g.slice(i, off, len);
        for j in 0..len {
            let g = u[j];
            let diff = if this.first { 0.0 } else { g - pg[j] };
            m[j] = c1 * g + b1 * m[j];
            v[j] = c2 * diff + b2 * v[j];
            let sq = g + c2 * diff;
            n[j] = c3 * (sq * sq) + b3 * n[j];
            let num = m[j] * this.bcs[0] + c2 * (v[j] * this.bcs[1]);
            u[j] = num / ((n[j] * this.bcs[2] + this.eps_root).sqrt() + this.eps);
            pg[j] = g;
        }
    });
}

/// optax `scale_by_belief` (AdaBelief, Zhuang et al. 2020): the second moment of `g − m`.
pub struct ScaleByBelief {
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
    eps: f32,
    eps_root: f32,
    nesterov: bool,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
    bc1_next: f32,
    bc2: f32,
}
/// The hyper-parameters of [`ScaleByBelief`], with optax `scale_by_belief`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByBeliefConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment of `g − m`.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment at each step.
    pub eps_root: f64,
    /// Nesterov-corrected first moment.
    pub nesterov: bool,
}
impl Default for ScaleByBeliefConfig {
    fn default() -> Self {
        ScaleByBeliefConfig { b1: 0.9, b2: 0.999, eps: 1e-16, eps_root: 1e-16, nesterov: false }
    }
}
impl ScaleByBelief {
    /// A `ScaleByBelief` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByBeliefConfig) -> Self {
        let ScaleByBeliefConfig { b1, b2, eps, eps_root, nesterov } = config;
        ScaleByBelief {
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
            eps: eps as f32,
            eps_root: eps_root as f32,
            nesterov,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
            bc1_next: 1.0,
            bc2: 1.0,
        }
    }
}
elementwise_transform!(ScaleByBelief, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByBelief {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = bc(self.b1, self.count);
        self.bc1_next = bc(self.b1, self.count + 1);
        self.bc2 = bc(self.b2, self.count);
    }
    simd_apply!(ScaleByBelief, |this, i, off, u, p| {
        let n = u.len();
        let (b1, b2) = (this.b1, this.b2);
        let [c1, c2] = this.one_minus;
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            m[j] = c1 * g + b1 * m[j];
            let e = g - m[j];
            v[j] = c2 * (e * e) + b2 * v[j] + this.eps_root;
            let m_hat = if this.nesterov { b1 * (m[j] * this.bc1_next) + c1 * (g * this.bc1) } else { m[j] * this.bc1 };
            u[j] = m_hat / ((v[j] * this.bc2).sqrt() + this.eps);
        }
    });
}

/// optax `scale_by_yogi` (Zaheer et al. 2018): `ν ← ν − (1−β₂)·sign(ν − g²)·g²`.
pub struct ScaleByYogi {
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
    eps: f32,
    eps_root: f32,
    initial: f32,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
    bc2: f32,
}
/// The hyper-parameters of [`ScaleByYogi`], with optax `scale_by_yogi`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByYogiConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Rate β₂ of the additive second-moment update.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
    /// The value both moments start at.
    pub initial_accumulator_value: f64,
}
impl Default for ScaleByYogiConfig {
    fn default() -> Self {
        ScaleByYogiConfig { b1: 0.9, b2: 0.999, eps: 1e-3, eps_root: 0.0, initial_accumulator_value: 1e-6 }
    }
}
impl ScaleByYogi {
    /// A `ScaleByYogi` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByYogiConfig) -> Self {
        let ScaleByYogiConfig { b1, b2, eps, eps_root, initial_accumulator_value } = config;
        ScaleByYogi {
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
            eps: eps as f32,
            eps_root: eps_root as f32,
            initial: initial_accumulator_value as f32,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
            bc2: 1.0,
        }
    }
}
elementwise_transform!(ScaleByYogi, |s, shapes, _p| { s.mu = full(shapes, s.initial).into(); s.nu = full(shapes, s.initial).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl Elementwise for ScaleByYogi {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = bc(self.b1, self.count);
        self.bc2 = bc(self.b2, self.count);
    }
    simd_apply!(ScaleByYogi, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            let g2 = g * g;
            m[j] = this.one_minus[0] * g + this.b1 * m[j];
            v[j] -= this.one_minus[1] * sign(v[j] - g2) * g2;
            u[j] = (m[j] * this.bc1) / ((v[j] * this.bc2 + this.eps_root).sqrt() + this.eps);
        }
    });
}

/// optax `scale_by_radam` (Liu et al. 2020): Adam with the variance rectification `r_t` once the
/// SMA length `ρ_t` passes `threshold`, plain momentum before.
pub struct ScaleByRadam {
    nesterov: bool,
    bc1_next: f32,
    b1: f32,
    b2: f32,
    /// `1 − β₁` and `1 − β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 2],
    /// `ρ∞ = 2/(1 − β₂) − 1`, in double precision from the β₂ given, as optax computes it.
    ro_inf: f64,
    eps: f32,
    eps_root: f32,
    threshold: f64,
    count: u64,
    mu: ParamBufs,
    nu: ParamBufs,
    bc1: f32,
    bc2: f32,
    rect: Option<f32>,
}
/// The hyper-parameters of [`ScaleByRadam`], with optax `scale_by_radam`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByRadamConfig {
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε added to the second moment inside the square root.
    pub eps_root: f64,
    /// The SMA length ρ_t from which the rectified step is taken.
    pub threshold: f64,
}
impl Default for ScaleByRadamConfig {
    fn default() -> Self {
        ScaleByRadamConfig { b1: 0.9, b2: 0.999, eps: 1e-8, eps_root: 0.0, threshold: 5.0 }
    }
}
impl ScaleByRadam {
    /// A `ScaleByRadam` with the hyper-parameters of `config`, as described above.
    pub fn new(config: ScaleByRadamConfig) -> Self {
        let ScaleByRadamConfig { b1, b2, eps, eps_root, threshold } = config;
        ScaleByRadam {
            nesterov: false,
            bc1_next: 1.0,
            b1: b1 as f32,
            b2: b2 as f32,
            one_minus: [crate::transforms::one_minus(b1), crate::transforms::one_minus(b2)],
            ro_inf: 2.0 / (1.0 - b2) - 1.0,
            eps: eps as f32,
            eps_root: eps_root as f32,
            threshold,
            count: 0,
            mu: ParamBufs::default(),
            nu: ParamBufs::default(),
            bc1: 1.0,
            bc2: 1.0,
            rect: None,
        }
    }
}
elementwise_transform!(ScaleByRadam, |s, shapes, _p| { s.mu = zeros(shapes).into(); s.nu = zeros(shapes).into(); }; bufs: [mu, nu]; counters: [count]; scalars: []);
impl ScaleByRadam {
    /// NAdam-style first moment, as optax `scale_by_radam(nesterov=True)`.
    pub fn nesterov(mut self) -> Self {
        self.nesterov = true;
        self
    }
}

impl Elementwise for ScaleByRadam {
    fn begin_step(&mut self) {
        self.count += 1;
        self.bc1 = bc(self.b1, self.count);
        self.bc1_next = bc(self.b1, self.count + 1);
        self.bc2 = bc(self.b2, self.count);
        // As optax computes it: ρ∞ in double from the β₂ given, the rest in f32 from f32(β₂)
        // (`b2**count` of an int32 count), so that for β₂ near 1 the two disagree as optax's do.
        let ro_inf = self.ro_inf as f32;
        let b2t = self.b2.powf(self.count as f32);
        let ro = ro_inf - (2.0 * self.count as f32) * b2t / (1.0 - b2t);
        self.rect = (ro >= self.threshold as f32)
            .then(|| ((ro - 4.0) * (ro - 2.0) * ro_inf / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro)).sqrt());
    }
    simd_apply!(ScaleByRadam, |this, i, off, u, p| {
        let n = u.len();
        let m = this.mu.slice(i, off, n);
        let v = this.nu.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            let [c1, c2] = this.one_minus;
            m[j] = c1 * g + this.b1 * m[j];
            v[j] = c2 * (g * g) + this.b2 * v[j];
            let mh =
                if this.nesterov { this.b1 * (m[j] * this.bc1_next) + c1 * (g * this.bc1) } else { m[j] * this.bc1 };
            u[j] = match this.rect {
                Some(r) => r * mh / ((v[j] * this.bc2 + this.eps_root).sqrt() + this.eps),
                None => mh,
            };
        }
    });
}
