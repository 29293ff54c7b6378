//! pytorch_optimizer `DAdaptAdam` (Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by
//! D-Adaptation"), version 3 of the method.

use super::common::{betas, check_lr, debias, lerp, maximize_and_foreach, non_negative, py_max, py_min};
use super::common::{reduce_f32, PoWeightDecay};
use crate::error::Result;
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, zeros, ParamBufs};

/// `DAdaptAdam`'s arguments, with its defaults.
pub struct DAdaptAdamConfig {
    /// Multiplier of the adapted step size (`lr`, 1 unless training is unstable).
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Initial estimate `d₀` of the distance to the solution.
    pub d0: f64,
    /// Largest factor by which `d` may grow in one step.
    pub growth_rate: f64,
    /// Weight decay, L2 or decoupled (both scaled by `d·lr`).
    pub weight_decay: PoWeightDecay,
    /// Divide the step by Adam's bias correction `(1−β₁ᵗ)/√(1−β₂ᵗ)`.
    pub bias_correction: bool,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for DAdaptAdamConfig {
    fn default() -> Self {
        DAdaptAdamConfig {
            lr: LearningRate::Constant(1.0),
            betas: (0.9, 0.999),
            d0: 1e-6,
            growth_rate: f64::INFINITY,
            weight_decay: PoWeightDecay::NONE,
            bias_correction: false,
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl DAdaptAdamConfig {
    /// The class's keyword arguments (`growth_rate` may be a number or absent for infinity).
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = DAdaptAdamConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        Ok(DAdaptAdamConfig {
            lr: k.lr("lr", Some(1.0))?,
            betas: (b[0], b[1]),
            d0: k.f64("d0", d.d0)?,
            growth_rate: k.f64("growth_rate", d.growth_rate)?,
            weight_decay: PoWeightDecay::parse(k, 0.0, false, Some(false))?,
            bias_correction: k.bool("bias_correction", d.bias_correction)?,
            eps: k.f64("eps", d.eps)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// D-Adapt Adam: Adam whose step size `d·lr` is learned. With `γ = d·lr` this step,
///
/// `A ← A + γ·⟨g, s/(√v + ε)⟩`, `m ← β₁m + γ(1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `s ← √β₂·s + γ(1−√β₂)g`, `N ← lerp(N, A, 1−√β₂)`,
/// `d ← max(d, min(N / ((1−√β₂)‖s‖₁), d·growth))`, `p ← p − m/(√v + ε)`
///
/// (A the sum over all parameters this step; nothing moves while `s` is all zero).
///
/// The new `d` only sizes the next step, so a step is elementwise once `A` and `‖s‖₁` are known:
/// a read-only pass over the gradients and state ([`Elementwise::prepare`]) precedes the fused
/// step.
pub struct DAdaptAdam {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    growth_rate: f64,
    decay: PoWeightDecay,
    bias_correction: bool,
    eps: f32,
    maximize: bool,
    step: u64,
    /// The initial estimate `d₀`, where `init` starts `d`.
    d0: f64,
    d: f64,
    /// `N`, a float32 value.
    numerator_weighted: f64,
    s: ParamBufs,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's `A` and `‖s‖₁` (after the update of `s`), from `prepare`.
    numerator_acc: f32,
    sk_l1: f32,
    /// `‖s‖₁ = 0`: the moments move, the parameters do not.
    skip: bool,
    /// This step's [β₁, γ(1−β₁), β₂, 1−β₂, √β₂, γ(1−√β₂), l2, factor].
    k: [f32; 8],
}

impl DAdaptAdam {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: DAdaptAdamConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.eps, "eps")?;
        Ok(DAdaptAdam {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            growth_rate: c.growth_rate,
            decay: c.weight_decay,
            bias_correction: c.bias_correction,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            d0: c.d0,
            d: c.d0,
            numerator_weighted: 0.0,
            s: ParamBufs::default(),
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            numerator_acc: 0.0,
            sk_l1: 0.0,
            skip: false,
            k: [0.0; 8],
        })
    }

    /// This step's `γ = d·lr` (divided by the bias correction when asked) and the constants of
    /// the moment updates.
    fn constants(&self) -> (f64, [f32; 8]) {
        let lr = self.lr.at(self.step);
        let (b1, b2) = (self.b1, self.b2);
        let b2_sq = b2.sqrt();
        let bc = debias(b1, self.step + 1) / debias(b2, self.step + 1).sqrt();
        let d_lr = if self.bias_correction { self.d * lr / bc } else { self.d * lr };
        let l2 = if self.decay.decouple { 0.0 } else { self.decay.weight_decay as f32 };
        let (factor, _) = if self.decay.decouple { self.decay.terms(d_lr, 1.0) } else { (1.0, 0.0) };
        let k = [
            b1 as f32,
            (d_lr * (1.0 - b1)) as f32,
            b2 as f32,
            (1.0 - b2) as f32,
            b2_sq as f32,
            (d_lr * (1.0 - b2_sq)) as f32,
            l2,
            factor,
        ];
        (d_lr, k)
    }

    /// The gradient as the moments see it: negated to maximize, with the L2 penalty.
    #[inline(always)]
    fn grad(&self, g: f32, p: f32, l2: f32) -> f32 {
        let g = if self.maximize { -g } else { g };
        if l2 != 0.0 {
            g + l2 * p
        } else {
            g
        }
    }
}

impl Transform for DAdaptAdam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.step, self.d, self.numerator_weighted) = (0, self.d0, 0.0);
        (self.s, self.exp_avg, self.exp_avg_sq) = (zeros(shapes).into(), zeros(shapes).into(), zeros(shapes).into());
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.s.visit(v, "s")?;
        self.exp_avg.visit(v, "exp_avg")?;
        self.exp_avg_sq.visit(v, "exp_avg_sq")?;
        v.scalar("d", &mut self.d)?;
        v.scalar("numerator_weighted", &mut self.numerator_weighted)?;
        v.counter("step", &mut self.step)
    }
}

crate::transforms::prefetch_state!(DAdaptAdam; s, exp_avg, exp_avg_sq);
impl Elementwise for DAdaptAdam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        true
    }
    /// `A` and `‖s‖₁` of this step, from the gradients and the state before it.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let (d_lr, k) = self.constants();
        let [_, _, _, _, b2_sq, ws, l2, _] = k;
        let (mut numerator_acc, mut sk_l1) = (0.0f32, 0.0f32);
        for (i, (g, p)) in inputs.iter().zip(params).enumerate() {
            let (s, v) = (&self.s.buffers()[i], &self.exp_avg_sq.buffers()[i]);
            let dot = reduce_f32(g.len(), |r| {
                r.map(|j| (self.grad(g[j], p[j], l2) * (s[j] / (v[j].sqrt() + self.eps))) as f64).sum()
            });
            numerator_acc += d_lr as f32 * dot;
            sk_l1 +=
                reduce_f32(g.len(), |r| r.map(|j| (s[j] * b2_sq + ws * self.grad(g[j], p[j], l2)).abs() as f64).sum());
        }
        (self.numerator_acc, self.sk_l1) = (numerator_acc, sk_l1);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        let d = self.d;
        self.k = self.constants().1;
        self.step += 1;
        self.skip = self.sk_l1 == 0.0;
        if self.skip {
            return;
        }
        let b2_sq = self.b2.sqrt();
        let nw = lerp(self.numerator_weighted as f32, self.numerator_acc, (1.0 - b2_sq) as f32);
        self.numerator_weighted = nw as f64;
        if lr > 0.0 {
            let d_hat = nw / (((1.0 - b2_sq) as f32) * self.sk_l1);
            self.d = py_max(d, py_min(d_hat as f64, d * self.growth_rate));
        }
    }
    simd_apply!(DAdaptAdam, |this, i, off, u, p| {
        let n = u.len();
        let [b1, wm, b2, w2, b2_sq, ws, l2, factor] = this.k;
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        let s = this.s.slice(i, off, n);
        for j in 0..n {
            let g = this.grad(u[j], p[j], l2);
            m[j] = m[j] * b1 + wm * g;
            v[j] = v[j] * b2 + w2 * g * g;
            s[j] = s[j] * b2_sq + ws * g;
            u[j] = if this.skip { 0.0 } else { (p[j] * factor + -(m[j] / (v[j].sqrt() + this.eps))) - p[j] };
        }
    });
}
