//! pytorch_optimizer `Prodigy` (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive
//! Parameter-Free Learner").

use super::common::{betas, PoWeightDecay};
use super::common::{check_betas, check_lr, debias, maximize_and_foreach, non_negative, py_max, py_min, sum_f32};
use crate::error::{ensure, Result};
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{LearningRate, Shapes, Transform};

/// `Prodigy`'s arguments, with its defaults.
pub struct ProdigyConfig {
    /// Multiplier of the adapted step size (`lr`, 1 unless training is unstable).
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Decay of the distance estimate's sums (`None`: `√β₂`).
    pub beta3: Option<f64>,
    /// Initial estimate `d₀` of the distance to the solution.
    pub d0: f64,
    /// Factor of the estimate `d̂`.
    pub d_coef: f64,
    /// Largest factor by which `d` may grow in one step.
    pub growth_rate: f64,
    /// Weight decay: decoupled, scaled by `d·lr` (or not, with `fixed_decay`). The class's L2 form
    /// (`weight_decouple=False`) adds `λp` to the gradient only after the step has used it, so it
    /// changes nothing, here as there.
    pub weight_decay: PoWeightDecay,
    /// Divide the step by Adam's bias correction `(1−β₁ᵗ)/√(1−β₂ᵗ)`.
    pub bias_correction: bool,
    /// Weight the gradients of `s` by `d` rather than `d·lr` (warm-up safeguard).
    pub safeguard_warmup: bool,
    /// Added to the root of the second moment (times `d`); `None`: the step is
    /// `atan2(m, √v)` instead of the quotient.
    pub eps: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        ProdigyConfig {
            lr: LearningRate::Constant(1.0),
            betas: (0.9, 0.999),
            beta3: None,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
            weight_decay: PoWeightDecay { weight_decay: 0.0, decouple: true, fixed: false },
            bias_correction: false,
            safeguard_warmup: false,
            eps: Some(1e-8),
            maximize: false,
        }
    }
}

impl ProdigyConfig {
    /// The class's keyword arguments `hparams`, read through `k` (`beta3` and `eps` may be
    /// null).
    pub fn parse(k: &mut Kwargs, hparams: &serde_json::Value) -> Result<Self> {
        let d = ProdigyConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        let eps = if hparams.get("eps").is_some_and(|v| v.is_null()) {
            k.value("eps");
            None
        } else {
            Some(k.f64("eps", 1e-8)?)
        };
        Ok(ProdigyConfig {
            lr: k.lr("lr", Some(1.0))?,
            betas: (b[0], b[1]),
            beta3: k.opt_f64("beta3")?,
            d0: k.f64("d0", d.d0)?,
            d_coef: k.f64("d_coef", d.d_coef)?,
            growth_rate: k.f64("growth_rate", d.growth_rate)?,
            weight_decay: PoWeightDecay::parse(k, 0.0, true, Some(false))?,
            bias_correction: k.bool("bias_correction", d.bias_correction)?,
            safeguard_warmup: k.bool("safeguard_warmup", d.safeguard_warmup)?,
            eps,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// Prodigy: Adam on `d`-scaled gradients with a distance estimate `d` that only grows. With
/// `γ = d·lr` this step (`/` the bias correction when asked),
///
/// `r ← β₃r + (d/d₀)γ·⟨g, p₀ − p⟩`, `m ← β₁m + d(1−β₁)g`, `v ← β₂v + d²(1−β₂)g²`,
/// `s ← β₃s + (d/d₀)γ·g`, `d̂ = d_coef·r/‖s‖₁`, `d ← min(max(d̂) so far, d·growth)`,
/// `p ← p − γ·m/(√v + d·ε)` (with the new `d` in the denominator).
pub struct Prodigy {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    beta3: f64,
    d0: f64,
    d_coef: f64,
    growth_rate: f64,
    decay: PoWeightDecay,
    bias_correction: bool,
    safeguard_warmup: bool,
    eps: Option<f64>,
    maximize: bool,
    /// The class's group `step`, which starts at 1.
    step: u64,
    d: f64,
    d_max: f64,
    /// `r`, a float32 value.
    d_numerator: f64,
    s: Vec<Vec<f32>>,
    p0: Vec<Vec<f32>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
}

impl Prodigy {
    /// The optimizer of `config`, checked as the class checks its arguments (and `d₀ > 0`, which
    /// the class divides by).
    pub fn new(c: ProdigyConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        let beta3 = c.beta3.unwrap_or(c.betas.1.sqrt());
        check_betas(&[c.betas.0, c.betas.1, beta3])?;
        non_negative(c.weight_decay.weight_decay, "weight_decay")?;
        if let Some(eps) = c.eps {
            non_negative(eps, "eps")?;
        }
        ensure(c.d0 > 0.0, || format!("d0 must be positive (the distance estimate divides by it), got {}", c.d0))?;
        Ok(Prodigy {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            beta3,
            d0: c.d0,
            d_coef: c.d_coef,
            growth_rate: c.growth_rate,
            decay: c.weight_decay,
            bias_correction: c.bias_correction,
            safeguard_warmup: c.safeguard_warmup,
            eps: c.eps,
            maximize: c.maximize,
            step: 1,
            d: c.d0,
            d_max: c.d0,
            d_numerator: 0.0,
            s: vec![],
            p0: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
        })
    }
}

impl Transform for Prodigy {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let zeros = || params.iter().map(|p| vec![0.0f32; p.len()]).collect::<Vec<_>>();
        (self.s, self.exp_avg, self.exp_avg_sq) = (zeros(), zeros(), zeros());
        self.p0 = params.iter().map(|p| p.to_vec()).collect();
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = self.lr.at(self.step - 1);
        let (b1, b2, beta3) = (self.b1, self.b2, self.beta3);
        let bc = if self.bias_correction { debias(b1, self.step) / debias(b2, self.step).sqrt() } else { 1.0 };
        let (d, d0) = (self.d, self.d0);
        let d_lr = d * lr / bc;
        let mut d_numerator = self.d_numerator as f32 * beta3 as f32;
        self.step += 1;

        let k_num = ((d / d0) * d_lr) as f32;
        let (b1f, wm, b2f, wv, b3f) =
            (b1 as f32, (d * (1.0 - b1)) as f32, b2 as f32, (d * d * (1.0 - b2)) as f32, beta3 as f32);
        let ws = ((d / d0) * if self.safeguard_warmup { d } else { d_lr }) as f32;
        let mut d_de_nom = 0.0f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if self.maximize {
                u.iter_mut().for_each(|g| *g = -*g);
            }
            let p0 = &self.p0[i];
            let dot = sum_f32(u.len(), |j| u[j] * (p0[j] - p[j]));
            d_numerator += k_num * dot;
            let (m, v, s) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i], &mut self.s[i]);
            for j in 0..u.len() {
                let g = u[j];
                m[j] = m[j] * b1f + wm * g;
                v[j] = v[j] * b2f + wv * g * g;
                s[j] = s[j] * b3f + ws * g;
            }
            d_de_nom += sum_f32(s.len(), |j| s[j].abs());
        }
        self.d_numerator = d_numerator as f64;
        if d_de_nom == 0.0 {
            updates.iter_mut().for_each(|u| u.fill(0.0));
            return Ok(());
        }
        let d_hat = ((self.d_coef as f32 * d_numerator) / d_de_nom) as f64;
        let mut d = d;
        if d == d0 {
            d = py_max(d, d_hat);
        }
        self.d_max = py_max(self.d_max, d_hat);
        self.d = py_min(self.d_max, d * self.growth_rate);

        let (factor, _) = if self.decay.decouple { self.decay.terms(d_lr, 1.0) } else { (1.0, 0.0) };
        let step = (-d_lr) as f32;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let (m, v) = (&self.exp_avg[i], &self.exp_avg_sq[i]);
            match self.eps {
                Some(eps) => {
                    let de = (self.d * eps) as f32;
                    for j in 0..u.len() {
                        u[j] = (p[j] * factor + step * (m[j] / (v[j].sqrt() + de))) - p[j];
                    }
                }
                None => {
                    for j in 0..u.len() {
                        u[j] = (p[j] * factor + step * m[j].atan2(v[j].sqrt())) - p[j];
                    }
                }
            }
        }
        Ok(())
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "s", &mut self.s)?;
        crate::state::visit_buffers(v, "p0", &mut self.p0)?;
        crate::state::visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        crate::state::visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        v.scalar("d", &mut self.d)?;
        v.scalar("d_max", &mut self.d_max)?;
        v.scalar("d_numerator", &mut self.d_numerator)?;
        v.counter("step", &mut self.step)
    }
}
