//! pytorch_optimizer `SPAM` (Huang et al. 2025, "SPAM: Spike-Aware Adam with Momentum Reset for
//! Stable LLM Training").

use super::common::{betas, check_lr, debias, lerp, maximize_and_foreach, non_negative, positive};
use crate::error::{ensure, Result};
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, state, zeros, ParamBufs};

/// `SPAM`'s arguments, with its defaults.
pub struct SpamConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Fraction of the entries of each matrix that are updated. The library draws them at random;
    /// only the deterministic cases are accepted: `density ≥ 1` (every entry) and `0` (matrices
    /// never move).
    pub density: f64,
    /// Decoupled weight decay `p ← p(1 − lr·λ)`, applied after the step.
    pub weight_decay: f64,
    /// Steps of the cosine warm-up of the step size after each momentum reset.
    pub warmup_epoch: u64,
    /// A squared gradient above `threshold` times the second moment is clipped to it (0: never).
    pub threshold: f64,
    /// Steps after a reset before spikes are clipped.
    pub grad_accu_steps: u64,
    /// The moments are reset every `update_proj_gap` steps.
    pub update_proj_gap: u64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SpamConfig {
    fn default() -> Self {
        SpamConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.9, 0.999),
            density: 1.0,
            weight_decay: 0.0,
            warmup_epoch: 50,
            threshold: 5000.0,
            grad_accu_steps: 20,
            update_proj_gap: 500,
            eps: 1e-6,
            maximize: false,
        }
    }
}

impl SpamConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = SpamConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        Ok(SpamConfig {
            lr: k.lr("lr", Some(1e-3))?,
            betas: (b[0], b[1]),
            density: k.f64("density", d.density)?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            warmup_epoch: k.u64("warmup_epoch", d.warmup_epoch)?,
            threshold: k.f64("threshold", d.threshold)?,
            grad_accu_steps: k.u64("grad_accu_steps", d.grad_accu_steps)?,
            update_proj_gap: k.u64("update_proj_gap", d.update_proj_gap)?,
            eps: k.f64("eps", d.eps)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// SPAM: Adam whose moments are reset every `update_proj_gap` steps, with gradient spikes
/// clipped and the step size warmed up again after each reset.
///
/// At step t (1-based): moments zeroed when `t ≡ 0 (mod gap)`; for `t ≥ accu` and
/// `t mod gap ≥ accu`, `g ← sign(g)·√(θv)` where `g² > θv`; then Adam's moments and
/// `p ← p − s·lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε)`, `p ← p(1 − lr·λ)`. The scale `s = 1 − r(c)` follows
/// the library's `CosineDecay(0.99, warmup_epoch)`: `r(c) = 0.99·(1 + cos(π(c+1)/(E+1)))/2` for
/// `c < E` steps since the last reset, 0 after (and before the first reset).
pub struct Spam {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    /// Matrices never move (`density` 0).
    frozen_matrices: bool,
    weight_decay: f64,
    warmup_epoch: u64,
    threshold: f32,
    grad_accu_steps: u64,
    update_proj_gap: u64,
    eps: f32,
    maximize: bool,
    /// Whether each parameter is a matrix.
    matrix: Vec<bool>,
    step: u64,
    total_step: u64,
    current_step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    clip: bool,
    /// This step's [1−β₁, β₂, 1−β₂, −step size, decay factor].
    k: [f32; 5],
}

impl Spam {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: SpamConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.weight_decay, "weight_decay")?;
        non_negative(c.density, "density")?;
        non_negative(c.threshold, "threshold")?;
        positive(c.update_proj_gap as f64, "update_proj_gap")?;
        non_negative(c.eps, "eps")?;
        ensure(c.density >= 1.0 || c.density == 0.0, || {
            format!(
                "density {} selects a random subset of each matrix's entries, which descent does not reproduce; \
                 use a density of 1 (all entries) or 0",
                c.density
            )
        })?;
        Ok(Spam {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            frozen_matrices: c.density == 0.0,
            weight_decay: c.weight_decay,
            warmup_epoch: c.warmup_epoch,
            threshold: c.threshold as f32,
            grad_accu_steps: c.grad_accu_steps,
            update_proj_gap: c.update_proj_gap,
            eps: c.eps as f32,
            maximize: c.maximize,
            matrix: vec![],
            step: 0,
            total_step: 0,
            current_step: c.warmup_epoch + 1,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            clip: false,
            k: [0.0; 5],
        })
    }

    /// The library's `CosineDecay(0.99, E).get_death_rate(c)`.
    fn death_rate(&self, c: u64) -> f64 {
        if c >= self.warmup_epoch {
            return 0.0;
        }
        let t_max = (self.warmup_epoch + 1) as f64;
        0.99 * (1.0 + (std::f64::consts::PI * (c + 1) as f64 / t_max).cos()) / 2.0
    }
}

impl Transform for Spam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        (self.step, self.total_step, self.current_step) = (0, 0, self.warmup_epoch + 1);
        self.matrix = shapes.iter().map(|s| s.len() == 2).collect();
        self.exp_avg = zeros(shapes).into();
        self.exp_avg_sq = zeros(shapes).into();
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    state!(Spam; bufs: [exp_avg, exp_avg_sq]; counters: [step, total_step, current_step]; scalars: []);
}

crate::transforms::prefetch_state!(Spam; exp_avg, exp_avg_sq);
impl Elementwise for Spam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let scale = 1.0 - self.death_rate(self.current_step);
        let lr = self.lr.at(self.step);
        self.step += 1;
        let step_size = lr * debias(self.b2, self.step).sqrt() / debias(self.b1, self.step);
        let t = self.total_step + 1;
        if t.is_multiple_of(self.update_proj_gap) {
            for b in [&mut self.exp_avg, &mut self.exp_avg_sq] {
                b.with_buffers(|d| d.iter_mut().for_each(|v| v.fill(0.0)));
            }
        }
        self.clip =
            self.threshold != 0.0 && t >= self.grad_accu_steps && t % self.update_proj_gap >= self.grad_accu_steps;
        let factor = if self.weight_decay != 0.0 { (1.0 - self.weight_decay * lr) as f32 } else { 1.0 };
        self.k = [(1.0 - self.b1) as f32, self.b2 as f32, (1.0 - self.b2) as f32, (-step_size * scale) as f32, factor];
        self.total_step += 1;
        self.current_step += 1;
        if (self.total_step + 1).is_multiple_of(self.update_proj_gap) {
            self.current_step = 0;
        }
    }
    simd_apply!(Spam, |this, i, off, u, p| {
        let n = u.len();
        if this.frozen_matrices && this.matrix[i] {
            u.fill(0.0);
            return;
        }
        let [w1, b2, w2, step, factor] = this.k;
        let (eps, theta) = (this.eps, this.threshold);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        for j in 0..n {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            if this.clip && g * g > theta * v[j] {
                g = crate::transforms::sign(g) * (v[j] * theta).sqrt();
            }
            m[j] = lerp(m[j], g, w1);
            v[j] = v[j] * b2 + w2 * g * g;
            let mut w = p[j] + step * (m[j] / (v[j].sqrt() + eps));
            if factor != 1.0 {
                w *= factor;
            }
            u[j] = w - p[j];
        }
    });
}
