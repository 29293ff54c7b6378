//! pytorch_optimizer `DAdaptAdam` (Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by
//! D-Adaptation"), version 3 of the method.

use super::common::PoWeightDecay;
use super::common::{betas, check_lr, debias, lerp, maximize_and_foreach, non_negative, py_max, py_min, sum_f32};
use crate::error::Result;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{LearningRate, Shapes, Transform};

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
    d: f64,
    /// `N`, a float32 value.
    numerator_weighted: f64,
    s: Vec<Vec<f32>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
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
            d: c.d0,
            numerator_weighted: 0.0,
            s: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
        })
    }
}

impl Transform for DAdaptAdam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let zeros = || params.iter().map(|p| vec![0.0f32; p.len()]).collect::<Vec<_>>();
        (self.s, self.exp_avg, self.exp_avg_sq) = (zeros(), zeros(), zeros());
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = self.lr.at(self.step);
        let (b1, b2) = (self.b1, self.b2);
        let b2_sq = b2.sqrt();
        let d = self.d;
        let bc = debias(b1, self.step + 1) / debias(b2, self.step + 1).sqrt();
        let d_lr = if self.bias_correction { d * lr / bc } else { d * lr };
        self.step += 1;

        let mut numerator_acc = 0.0f32;
        let mut sk_l1 = 0.0f32;
        let (eps, l2) = (self.eps, if self.decay.decouple { 0.0 } else { self.decay.weight_decay as f32 });
        let (d_lr32, wm, b1f, b2f, w2, b2_sqf, ws) = (
            d_lr as f32,
            (d_lr * (1.0 - b1)) as f32,
            b1 as f32,
            b2 as f32,
            (1.0 - b2) as f32,
            b2_sq as f32,
            (d_lr * (1.0 - b2_sq)) as f32,
        );
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let (m, v, s) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i], &mut self.s[i]);
            for (g, w) in u.iter_mut().zip(p.iter()) {
                if self.maximize {
                    *g = -*g;
                }
                if l2 != 0.0 {
                    *g += l2 * w;
                }
            }
            let dot = sum_f32(u.len(), |j| u[j] * (s[j] / (v[j].sqrt() + eps)));
            numerator_acc += d_lr32 * dot;
            for j in 0..u.len() {
                let g = u[j];
                m[j] = m[j] * b1f + wm * g;
                v[j] = v[j] * b2f + w2 * g * g;
                s[j] = s[j] * b2_sqf + ws * g;
            }
            sk_l1 += sum_f32(s.len(), |j| s[j].abs());
        }
        if sk_l1 == 0.0 {
            updates.iter_mut().for_each(|u| u.fill(0.0));
            return Ok(());
        }
        let nw = lerp(self.numerator_weighted as f32, numerator_acc, (1.0 - b2_sq) as f32);
        self.numerator_weighted = nw as f64;
        if lr > 0.0 {
            let d_hat = nw / (((1.0 - b2_sq) as f32) * sk_l1);
            self.d = py_max(d, py_min(d_hat as f64, d * self.growth_rate));
        }
        let (factor, _) = if self.decay.decouple { self.decay.terms(d_lr, 1.0) } else { (1.0, 0.0) };
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let (m, v) = (&self.exp_avg[i], &self.exp_avg_sq[i]);
            for j in 0..u.len() {
                u[j] = (p[j] * factor + -(m[j] / (v[j].sqrt() + eps))) - p[j];
            }
        }
        Ok(())
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "s", &mut self.s)?;
        crate::state::visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        crate::state::visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        v.scalar("d", &mut self.d)?;
        v.scalar("numerator_weighted", &mut self.numerator_weighted)?;
        v.counter("step", &mut self.step)
    }
}
