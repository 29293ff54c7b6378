//! pytorch_optimizer `MADGRAD` (Defazio & Jelassi 2021, "Adaptivity without Compromise: A
//! Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic Optimization").

use super::common::{check_lr, in_range, lerp, maximize_and_foreach, non_negative, PoWeightDecay};
use crate::error::Result;
use crate::kernel::{cbrt_f32, Elementwise};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::transforms::{elementwise_transform, simd_apply, zeros, ParamBufs};

/// `MADGRAD`'s arguments, with its defaults.
pub struct MadgradConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Interpolation toward the dual-averaging iterate is `1 − momentum` (0: no momentum).
    pub momentum: f64,
    /// Weight decay: an L2 penalty, or with `weight_decouple` the parameters decayed by
    /// `(lr + eps)·λ` after the step (`fixed_decay` is not an argument of this class).
    pub weight_decay: PoWeightDecay,
    /// Added to the cube root of the accumulated squares (and to a non-zero learning rate).
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for MadgradConfig {
    fn default() -> Self {
        MadgradConfig {
            lr: LearningRate::Constant(1e-3),
            momentum: 0.9,
            weight_decay: PoWeightDecay::NONE,
            eps: 1e-6,
            maximize: false,
        }
    }
}

impl MadgradConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = MadgradConfig::default();
        Ok(MadgradConfig {
            lr: k.lr("lr", Some(1e-3))?,
            momentum: k.f64("momentum", d.momentum)?,
            weight_decay: PoWeightDecay::parse(k, 0.0, false, None)?,
            eps: k.f64("eps", d.eps)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// MADGRAD: dual averaging with a cube-root adaptive scale. With `λₖ = (lr + ε)·√(k+1)`:
///
/// `S ← S + λₖg²`, `s ← s + λₖg`, `z = x₀ − s / (∛S + ε)`, `p ← lerp(p, z, 1 − momentum)`,
///
/// `x₀` being the initial parameters (with momentum 0, `x₀ = p + s/(∛S + ε)` from before the step,
/// and `p ← z`).
pub struct Madgrad {
    lr: LearningRate,
    momentum: f32,
    /// `1 − momentum`, the weight of `z` in the interpolation.
    w: f32,
    eps: f32,
    decay: PoWeightDecay,
    maximize: bool,
    k: u64,
    grad_sum_sq: ParamBufs,
    s: ParamBufs,
    x0: ParamBufs,
    /// This step's [λₖ, l2, decoupled decay `(lr + ε)·λ`].
    c: [f32; 3],
}

impl Madgrad {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: MadgradConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.weight_decay.weight_decay, "weight_decay")?;
        in_range(c.momentum, "momentum", 0.0, 1.0, "[)")?;
        non_negative(c.eps, "eps")?;
        Ok(Madgrad {
            lr: c.lr,
            momentum: c.momentum as f32,
            w: (1.0 - c.momentum) as f32,
            eps: c.eps as f32,
            decay: c.weight_decay,
            maximize: c.maximize,
            k: 0,
            grad_sum_sq: ParamBufs::default(),
            s: ParamBufs::default(),
            x0: ParamBufs::default(),
            c: [0.0; 3],
        })
    }

    /// `compute_rms`: `∛S + ε`, a zero denominator (ε = 0) counted infinite.
    #[inline(always)]
    fn rms(sum_sq: f32, eps: f32) -> f32 {
        let r = cbrt_f32(sum_sq) + eps;
        if eps == 0.0 && r == 0.0 {
            f32::INFINITY
        } else {
            r
        }
    }
}

elementwise_transform!(Madgrad, |s, shapes, params| {
    s.grad_sum_sq = zeros(shapes).into();
    s.s = zeros(shapes).into();
    s.x0 = if s.momentum > 0.0 { params.iter().map(|p| p.to_vec()).collect::<Vec<_>>().into() } else { ParamBufs::default() };
}; bufs: [grad_sum_sq, s, x0]; counters: [k]; scalars: []);

impl Elementwise for Madgrad {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.k);
        let lr = if lr != 0.0 { lr + self.eps as f64 } else { 0.0 };
        let lambda = lr * ((self.k + 1) as f64).powf(0.5);
        self.k += 1;
        let wd = self.decay.weight_decay;
        let (l2, decoupled) = match (wd > 0.0, self.decay.decouple) {
            (false, _) => (0.0, 0.0),
            (true, false) => (wd as f32, 0.0),
            (true, true) => (0.0, (-lr * wd) as f32),
        };
        self.c = [lambda as f32, l2, decoupled];
    }
    simd_apply!(wide Madgrad, |this, i, off, u, p| {
        let n = u.len();
        let (sum_sq, s) = (this.grad_sum_sq.slice(i, off, n), this.s.slice(i, off, n));
        if this.momentum > 0.0 {
            madgrad_block::<true>(this, u, p, sum_sq, s, this.x0.slice(i, off, n));
        } else {
            madgrad_block::<false>(this, u, p, sum_sq, s, &mut []);
        }
    });
}

/// [`Madgrad`]'s step on one sub-block, the initial parameters `x0s` read only with `MOMENTUM`:
/// one loop per setting, as a loop that may touch a buffer that is not there does not vectorize
/// (and the cube root is [`cbrt_f32`], which vectorizes where `powf` is a call per value).
#[inline(always)]
fn madgrad_block<const MOMENTUM: bool>(
    this: &Madgrad,
    u: &mut [f32],
    p: &[f32],
    sum_sq: &mut [f32],
    s: &mut [f32],
    x0s: &mut [f32],
) {
    let n = u.len();
    let (p, sum_sq, s) = (&p[..n], &mut sum_sq[..n], &mut s[..n]);
    let x0s = if MOMENTUM { &x0s[..n] } else { &x0s[..] };
    let [lambda, l2, decoupled] = this.c;
    let (eps, maximize, w_z) = (this.eps, this.maximize, this.w);
    for j in 0..n {
        let mut g = if maximize { -u[j] } else { u[j] };
        if l2 != 0.0 {
            g += l2 * p[j];
        }
        let x0 = if MOMENTUM { x0s[j] } else { p[j] + s[j] / Madgrad::rms(sum_sq[j], eps) };
        // `addcmul_(grad, grad, value=λ)`: (λ·g)·g, as torch's kernel multiplies (finite where g² is not).
        sum_sq[j] += lambda * g * g;
        s[j] += lambda * g;
        let z = x0 - s[j] / Madgrad::rms(sum_sq[j], eps);
        let mut w = if MOMENTUM { lerp(p[j], z, w_z) } else { z };
        if decoupled != 0.0 {
            w += decoupled * p[j];
        }
        u[j] = w - p[j];
    }
}
