//! pytorch_optimizer `AdEMAMix` (Pagliardini et al. 2024, "The AdEMAMix Optimizer: Better, Faster,
//! Older").

use super::common::{betas, check_lr, debias, lerp, maximize_and_foreach, non_negative, PoWeightDecay};
use crate::error::{ensure, Result};
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::po::adam_family::common::{cautious, cautious_step, grad_in, stable_adamw_rms, tensor_sum};
use crate::spec::Kwargs;
use crate::transforms::{elementwise_transform, simd_apply, zeros, ParamBufs};

/// `AdEMAMix`'s arguments, with its defaults.
pub struct AdEMAMixConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Decays of the fast moment, the second moment and the slow moment.
    pub betas: (f64, f64, f64),
    /// Weight decay, L2 or decoupled.
    pub weight_decay: PoWeightDecay,
    /// Weight α of the slow moment in the update.
    pub alpha: f64,
    /// Steps over which α and β₃ warm up (`None`: no warm-up).
    pub t_alpha_beta3: Option<f64>,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Drop the fast moment's entries whose sign disagrees with the gradient's (`cautious`).
    pub cautious: bool,
    /// Divide the update by `max(1, RMS(g/√v))` (`stable_adamw`, StableAdamW's update clipping).
    pub stable_adamw: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdEMAMixConfig {
    fn default() -> Self {
        AdEMAMixConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.9, 0.999, 0.9999),
            weight_decay: PoWeightDecay::NONE,
            alpha: 5.0,
            t_alpha_beta3: None,
            eps: 1e-8,
            cautious: false,
            stable_adamw: false,
            maximize: false,
        }
    }
}

impl AdEMAMixConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = AdEMAMixConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1, d.betas.2])?;
        let c = AdEMAMixConfig {
            lr: k.lr("lr", Some(1e-3))?,
            betas: (b[0], b[1], b[2]),
            weight_decay: PoWeightDecay::parse(k, 0.0, false, Some(false))?,
            alpha: k.f64("alpha", d.alpha)?,
            t_alpha_beta3: k.opt_f64("t_alpha_beta3")?,
            eps: k.f64("eps", d.eps)?,
            cautious: k.bool("cautious", false)?,
            stable_adamw: k.bool("stable_adamw", false)?,
            maximize: maximize_and_foreach(k)?,
        };
        Ok(c)
    }
}

/// AdEMAMix: Adam whose numerator mixes the bias-corrected fast moment `m₁` with a slow moment
/// `m₂` (decay β₃, not bias-corrected):
///
/// `m₁ ← lerp(m₁, g, 1−β₁)`, `v ← β₂v + (1−β₂)g²`, `m₂ ← lerp(m₂, g, 1−β₃(t))`,
/// `p ← p − lr·(m₁/(1−β₁ᵗ) + α(t)·m₂) / (√v/√(1−β₂ᵗ) + ε)`.
///
/// With `t_alpha_beta3 = T`, `α(t) = min(tα/T, α)` and β₃ rises from β₁ to β₃ along the paper's
/// half-life schedule.
pub struct AdEMAMix {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    b3: f64,
    alpha: f64,
    t_alpha_beta3: Option<f64>,
    eps: f32,
    decay: PoWeightDecay,
    cautious: bool,
    stable_adamw: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    exp_avg_slow: ParamBufs,
    /// This step's [factor, l2, 1−β₁, 1−β₂, 1−β₃(t), bc1, √bc2, α(t), lr].
    k: [f32; 9],
    /// This step's cautious factor of each tensor's agreeing entries, and its StableAdamW
    /// divisor.
    scales: Vec<[f32; 2]>,
}

impl AdEMAMix {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: AdEMAMixConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.alpha, "alpha")?;
        if let Some(t) = c.t_alpha_beta3 {
            non_negative(t, "t_alpha_beta3")?;
            // The schedules divide by T and take the logarithms of β₁ and β₃ (the class fails at
            // its first step otherwise).
            ensure(t > 0.0, || "t_alpha_beta3 must be positive (its schedules divide by it)".into())?;
            ensure(c.betas.0 > 0.0 && c.betas.2 > 0.0, || {
                "beta1 and beta3 must be positive with t_alpha_beta3 (the schedule takes their logarithms)".into()
            })?;
        }
        non_negative(c.eps, "eps")?;
        Ok(AdEMAMix {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            b3: c.betas.2,
            alpha: c.alpha,
            t_alpha_beta3: c.t_alpha_beta3,
            eps: c.eps as f32,
            decay: c.weight_decay,
            cautious: c.cautious,
            stable_adamw: c.stable_adamw,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            exp_avg_slow: ParamBufs::default(),
            k: [0.0; 9],
            scales: vec![],
        })
    }

    /// `schedule_alpha`.
    fn alpha_at(&self, step: f64) -> f64 {
        match self.t_alpha_beta3 {
            None => self.alpha,
            Some(t) => (step * self.alpha / t).min(self.alpha),
        }
    }

    /// `schedule_beta3`.
    fn beta3_at(&self, step: f64) -> f64 {
        let Some(t) = self.t_alpha_beta3 else { return self.b3 };
        let (l1, l3) = (self.b1.ln(), self.b3.ln());
        let x = step / t;
        ((l1 * l3 / ((1.0 - x) * l3 + x * l1)).exp()).min(self.b3)
    }
}

elementwise_transform!(AdEMAMix, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.exp_avg_slow = zeros(shapes).into();
    s.scales = vec![[1.0; 2]; shapes.len()];
}; bufs: [exp_avg, exp_avg_sq, exp_avg_slow]; counters: [step]; scalars: []);

impl Elementwise for AdEMAMix {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.cautious || self.stable_adamw
    }
    /// Each tensor's count of fast-moment entries that will agree in sign with the gradient
    /// (cautious) and its `Σ g²/max(v, 1e-16)` with the second moment as the step leaves it
    /// (StableAdamW), the moments computed as the step will compute them.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let (_, l2) = self.decay.terms(self.lr.at(self.step), 1.0);
        let (w1, b2, w2) = ((1.0 - self.b1) as f32, self.b2 as f32, (1.0 - self.b2) as f32);
        let maximize = self.maximize;
        for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
            let grad = |j: usize| grad_in(g[j], w[j], maximize, l2);
            if self.cautious {
                let m = &self.exp_avg.buffers()[i];
                self.scales[i][0] = cautious_step(g.len(), |j| (lerp(m[j], grad(j), w1), grad(j)));
            }
            if self.stable_adamw {
                let v = &self.exp_avg_sq.buffers()[i];
                let sum = tensor_sum(g.len(), |range| {
                    range
                        .map(|j| {
                            let x = grad(j);
                            let vn = v[j] * b2 + w2 * x * x;
                            (x * x / vn.max(1e-16)) as f64
                        })
                        .sum()
                });
                self.scales[i][1] = stable_adamw_rms(sum, g.len());
            }
        }
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let (factor, l2) = self.decay.terms(lr, 1.0);
        self.k = [
            factor,
            l2,
            (1.0 - self.b1) as f32,
            (1.0 - self.b2) as f32,
            (1.0 - self.beta3_at(t)) as f32,
            debias(self.b1, self.step) as f32,
            debias(self.b2, self.step).sqrt() as f32,
            self.alpha_at(t) as f32,
            lr as f32,
        ];
    }
    simd_apply!(AdEMAMix, |this, i, off, u, p| {
        let n = u.len();
        let [factor, l2, w1, w2, w3, bc1, bc2_sq, alpha, lr] = this.k;
        let b2 = this.b2 as f32;
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        let s = this.exp_avg_slow.slice(i, off, n);
        let [agree_scale, rms] = this.scales[i];
        for j in 0..n {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            if l2 != 0.0 {
                g += l2 * p[j];
            }
            let w = p[j] * factor;
            m[j] = lerp(m[j], g, w1);
            v[j] = v[j] * b2 + w2 * g * g;
            s[j] = lerp(s[j], g, w3);
            let de_nom = v[j].sqrt() / bc2_sq + this.eps;
            let fast = if this.cautious { cautious(m[j], g, agree_scale) } else { m[j] };
            let update = fast / bc1 + alpha * s[j];
            let step = if this.stable_adamw { update / de_nom / rms } else { update / de_nom };
            u[j] = (w + -lr * step) - p[j];
        }
    });
}
