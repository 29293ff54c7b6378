//! pytorch_optimizer `Prodigy` (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive
//! Parameter-Free Learner").

use super::common::{betas, check_betas, check_lr, debias, maximize_and_foreach, non_negative, py_max, py_min};
use super::common::{reduce_f32, PoWeightDecay};
use crate::error::{ensure, Result};
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, zeros, ParamBufs};

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
///
/// Elementwise once `r` and `‖s‖₁` are known: a read-only pass over the gradients, parameters and
/// state ([`Elementwise::prepare`]) precedes the fused step.
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
    s: ParamBufs,
    p0: ParamBufs,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's `r` and `‖s‖₁` (after their updates), from `prepare`.
    next_numerator: f32,
    d_de_nom: f32,
    /// `‖s‖₁ = 0`: the moments move, the parameters do not.
    skip: bool,
    /// This step's [β₁, d(1−β₁), β₂, d²(1−β₂), β₃, weight of g in s, factor, −γ, d·ε].
    k: [f32; 9],
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
            s: ParamBufs::default(),
            p0: ParamBufs::default(),
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            next_numerator: 0.0,
            d_de_nom: 0.0,
            skip: false,
            k: [0.0; 9],
        })
    }

    /// This step's `γ` and the weights of `g` in `r` and `s`.
    fn rates(&self) -> (f64, f32, f32) {
        let lr = self.lr.at(self.step - 1);
        let bc =
            if self.bias_correction { debias(self.b1, self.step) / debias(self.b2, self.step).sqrt() } else { 1.0 };
        let (d, d0) = (self.d, self.d0);
        let d_lr = d * lr / bc;
        let ws = (d / d0) * if self.safeguard_warmup { d } else { d_lr };
        (d_lr, ((d / d0) * d_lr) as f32, ws as f32)
    }
}

impl Transform for Prodigy {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.step, self.d, self.d_max, self.d_numerator) = (1, self.d0, self.d0, 0.0);
        (self.s, self.exp_avg, self.exp_avg_sq) = (zeros(shapes).into(), zeros(shapes).into(), zeros(shapes).into());
        self.p0 = params.iter().map(|p| p.to_vec()).collect::<Vec<_>>().into();
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
        self.p0.visit(v, "p0")?;
        self.exp_avg.visit(v, "exp_avg")?;
        self.exp_avg_sq.visit(v, "exp_avg_sq")?;
        v.scalar("d", &mut self.d)?;
        v.scalar("d_max", &mut self.d_max)?;
        v.scalar("d_numerator", &mut self.d_numerator)?;
        v.counter("step", &mut self.step)
    }
}

crate::transforms::prefetch_state!(Prodigy; s, p0, exp_avg, exp_avg_sq);
impl Elementwise for Prodigy {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        true
    }
    /// `r` and `‖s‖₁` of this step, from the gradients, the parameters and the state before it.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let (_, k_num, ws) = self.rates();
        let b3 = self.beta3 as f32;
        let sign = if self.maximize { -1.0f32 } else { 1.0 };
        let mut d_numerator = self.d_numerator as f32 * b3;
        let mut d_de_nom = 0.0f32;
        for (i, (g, p)) in inputs.iter().zip(params).enumerate() {
            let (p0, s) = (&self.p0.buffers()[i], &self.s.buffers()[i]);
            let dot = reduce_f32(g.len(), |r| r.map(|j| (sign * g[j] * (p0[j] - p[j])) as f64).sum());
            d_numerator += k_num * dot;
            d_de_nom += reduce_f32(g.len(), |r| r.map(|j| (s[j] * b3 + ws * (sign * g[j])).abs() as f64).sum());
        }
        (self.next_numerator, self.d_de_nom) = (d_numerator, d_de_nom);
    }
    fn begin_step(&mut self) {
        let (b1, b2) = (self.b1, self.b2);
        let (d_lr, _, ws) = self.rates();
        let d = self.d;
        self.step += 1;
        self.d_numerator = self.next_numerator as f64;
        self.skip = self.d_de_nom == 0.0;
        if !self.skip {
            let d_hat = ((self.d_coef as f32 * self.next_numerator) / self.d_de_nom) as f64;
            let mut d_new = d;
            if d_new == self.d0 {
                d_new = py_max(d_new, d_hat);
            }
            self.d_max = py_max(self.d_max, d_hat);
            self.d = py_min(self.d_max, d_new * self.growth_rate);
        }
        let (factor, _) = if self.decay.decouple { self.decay.terms(d_lr, 1.0) } else { (1.0, 0.0) };
        self.k = [
            b1 as f32,
            (d * (1.0 - b1)) as f32,
            b2 as f32,
            (d * d * (1.0 - b2)) as f32,
            self.beta3 as f32,
            ws,
            factor,
            (-d_lr) as f32,
            self.eps.map_or(0.0, |e| (self.d * e) as f32),
        ];
    }
    simd_apply!(Prodigy, |this, i, off, u, p| {
        let n = u.len();
        let [b1, wm, b2, wv, b3, ws, factor, step, de] = this.k;
        let m = &mut this.exp_avg.slice(i, off, n)[..n];
        let v = &mut this.exp_avg_sq.slice(i, off, n)[..n];
        let s = &mut this.s.slice(i, off, n)[..n];
        // Read once (the loop writes through the state, which the compiler cannot tell apart
        // from `this`); `atan2`, a call per value, in a loop of its own, so that the usual one
        // (with `eps`) vectorizes.
        let (maximize, skip) = (this.maximize, this.skip);
        if this.eps.is_none() {
            for j in 0..n {
                let g = if maximize { -u[j] } else { u[j] };
                m[j] = m[j] * b1 + wm * g;
                v[j] = v[j] * b2 + wv * g * g;
                s[j] = s[j] * b3 + ws * g;
                u[j] = if skip { 0.0 } else { (p[j] * factor + step * m[j].atan2(v[j].sqrt())) - p[j] };
            }
        } else {
            for j in 0..n {
                let g = if maximize { -u[j] } else { u[j] };
                m[j] = m[j] * b1 + wm * g;
                v[j] = v[j] * b2 + wv * g * g;
                s[j] = s[j] * b3 + ws * g;
                let moved = (p[j] * factor + step * (m[j] / (v[j].sqrt() + de))) - p[j];
                u[j] = if skip { 0.0 } else { moved };
            }
        }
    });
}
