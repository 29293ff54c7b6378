//! pytorch_optimizer `ScheduleFreeRAdam` (Defazio et al. 2024, "The Road Less Scheduled", on
//! RAdam's rectified step).

use super::common::{betas, check_lr, debias, in_range, lerp, maximize_and_foreach, non_negative};
use crate::error::Result;
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, state, zeros, ParamBufs};

/// `ScheduleFreeRAdam`'s arguments, with its defaults.
pub struct ScheduleFreeRAdamConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// β₁ interpolates between the average `x` and `z`; β₂ is the second moment's decay.
    pub betas: (f64, f64),
    /// L2 penalty added to the normalized gradient.
    pub weight_decay: f64,
    /// Exponent of the step in the averaging weights.
    pub r: f64,
    /// Exponent of the largest learning rate so far in the averaging weights.
    pub weight_lr_power: f64,
    /// While RAdam's variance is intractable, do not move (`true`) or take plain SGD steps with a
    /// rate of 1 (`false`).
    pub silent_sgd_phase: bool,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ScheduleFreeRAdamConfig {
    fn default() -> Self {
        ScheduleFreeRAdamConfig {
            lr: LearningRate::Constant(2.5e-3),
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            r: 0.0,
            weight_lr_power: 2.0,
            silent_sgd_phase: true,
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl ScheduleFreeRAdamConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = ScheduleFreeRAdamConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        Ok(ScheduleFreeRAdamConfig {
            lr: k.lr("lr", Some(2.5e-3))?,
            betas: (b[0], b[1]),
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            r: k.f64("r", d.r)?,
            weight_lr_power: k.f64("weight_lr_power", d.weight_lr_power)?,
            silent_sgd_phase: k.bool("silent_sgd_phase", d.silent_sgd_phase)?,
            eps: k.f64("eps", d.eps)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// Schedule-free RAdam: the training parameters `y` interpolate between `z`, which takes the
/// rectified Adam steps, and `x`, the weighted average of the `z`s. With RAdam's rectified rate
/// `γₜ = lr·ρₜ/√(1−β₂ᵗ)` (0, or 1 without `silent_sgd_phase`, while the variance is intractable),
/// `wₜ = t^r · max(γ)^power`, `cₜ = wₜ/Σw`:
///
/// `d = g/(√v/√(1−β₂ᵗ) + ε) + λy`, `y ← lerp(y, z, cₜ) + γₜ(β₁(1−cₜ) − 1)·d`, `z ← z − γₜd`.
pub struct ScheduleFreeRAdam {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    weight_decay: f32,
    r: f64,
    weight_lr_power: f64,
    silent_sgd_phase: bool,
    eps: f32,
    maximize: bool,
    step: u64,
    lr_max: f64,
    weight_sum: f64,
    z: ParamBufs,
    exp_avg_sq: ParamBufs,
    rectified: bool,
    /// This step's [β₂, 1−β₂, √(1−β₂ᵗ), lr, checkpoint, y's step factor].
    k: [f32; 6],
}

impl ScheduleFreeRAdam {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: ScheduleFreeRAdamConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        in_range(c.betas.0, "beta1", 0.0, 1.0, "()")?;
        non_negative(c.weight_decay, "weight_decay")?;
        non_negative(c.eps, "eps")?;
        Ok(ScheduleFreeRAdam {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            weight_decay: c.weight_decay as f32,
            r: c.r,
            weight_lr_power: c.weight_lr_power,
            silent_sgd_phase: c.silent_sgd_phase,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            lr_max: -1.0,
            weight_sum: 0.0,
            z: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            rectified: false,
            k: [0.0; 6],
        })
    }
}

impl Transform for ScheduleFreeRAdam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.step, self.lr_max, self.weight_sum) = (0, -1.0, 0.0);
        self.z = params.iter().map(|p| p.to_vec()).collect::<Vec<_>>().into();
        self.exp_avg_sq = zeros(shapes).into();
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    /// pytorch_optimizer's `optimizer.eval()`: `y.lerp(z, 1 − 1/β₁)`, the average `x`.
    fn eval_params(&self, params: &[&[f32]]) -> Option<Vec<Vec<f32>>> {
        if self.z.is_empty() {
            return None; // not initialized: nothing stepped yet
        }
        let w = (1.0 - 1.0 / self.b1) as f32;
        let out = params
            .iter()
            .zip(self.z.buffers())
            .map(|(y, z)| y.iter().zip(z.iter()).map(|(&y, &z)| lerp(y, z, w)).collect())
            .collect();
        Some(out)
    }
    state!(ScheduleFreeRAdam; bufs: [z, exp_avg_sq]; counters: [step]; scalars: [lr_max, weight_sum]);
}

crate::transforms::prefetch_state!(ScheduleFreeRAdam; z, exp_avg_sq);
impl Elementwise for ScheduleFreeRAdam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let group_lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let b2 = self.b2;
        let bc2_sq = debias(b2, self.step).sqrt();
        // `get_rectify_step_size(is_rectify=True, n_sma_threshold=4, degenerated_to_sgd=False)`.
        let n_sma_max = 2.0 / (1.0 - b2) - 1.0;
        let b2_t = b2.powf(t);
        let n_sma = n_sma_max - 2.0 * t * b2_t / (1.0 - b2_t);
        let rt = if n_sma >= 4.0 {
            ((1.0 - b2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma * n_sma_max / (n_sma_max - 2.0))
                .sqrt()
        } else {
            -1.0
        };
        let mut lr = group_lr * rt;
        if lr < 0.0 {
            lr = if self.silent_sgd_phase { 0.0 } else { 1.0 };
        } else if n_sma > 4.0 {
            lr /= bc2_sq;
        }
        self.rectified = n_sma > 4.0;
        self.lr_max = lr.max(self.lr_max);
        let weight = t.powf(self.r) * self.lr_max.powf(self.weight_lr_power);
        self.weight_sum += weight;
        let checkpoint = if self.weight_sum != 0.0 { weight / self.weight_sum } else { 0.0 };
        self.k = [
            b2 as f32,
            (1.0 - b2) as f32,
            bc2_sq as f32,
            lr as f32,
            checkpoint as f32,
            (lr * (self.b1 * (1.0 - checkpoint) - 1.0)) as f32,
        ];
    }
    simd_apply!(ScheduleFreeRAdam, |this, i, off, u, p| {
        let n = u.len();
        let [b2, w2, bc2_sq, lr, checkpoint, y_step] = this.k;
        let (eps, wd) = (this.eps, this.weight_decay);
        let z = this.z.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        for j in 0..n {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            v[j] = v[j] * b2 + w2 * g * g;
            if this.rectified {
                g /= v[j].sqrt() / bc2_sq + eps;
            }
            if wd != 0.0 {
                g += wd * p[j];
            }
            let y = lerp(p[j], z[j], checkpoint) + y_step * g;
            z[j] += -lr * g;
            u[j] = y - p[j];
        }
    });
}
