//! pytorch_optimizer `ADOPT` (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any
//! β₂ with the Optimal Rate").

use super::common::{betas, check_lr, lerp, maximize_and_foreach, non_negative, PoWeightDecay};
use crate::error::{Error, Result};
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::po::adam_family::common::{cautious, cautious_step, grad_in, stable_adamw_rms, tensor_sum};
use crate::spec::Kwargs;
use crate::transforms::{elementwise_transform, simd_apply, zeros, ParamBufs};

/// `ADOPT`'s arguments, with its defaults.
pub struct AdoptConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Clip the normalized gradient to `±t^¼` (the class's default `clip_lambda`); `false` for
    /// `clip_lambda=None`.
    pub clip: bool,
    /// Weight decay, L2 or decoupled.
    pub weight_decay: PoWeightDecay,
    /// Lower bound of the root of the second moment.
    pub eps: f64,
    /// Drop the momentum's entries whose sign disagrees with the normalized gradient's
    /// (`cautious`).
    pub cautious: bool,
    /// Divide the update by `max(1, RMS(g/√v))`, `v` before the step (`stable_adamw`).
    pub stable_adamw: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdoptConfig {
    fn default() -> Self {
        AdoptConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.9, 0.9999),
            clip: true,
            weight_decay: PoWeightDecay::NONE,
            eps: 1e-6,
            cautious: false,
            stable_adamw: false,
            maximize: false,
        }
    }
}

impl AdoptConfig {
    /// The class's keyword arguments `hparams`, read through `k`. `clip_lambda` is a function in
    /// the library: only its default (absent) and `None` (`null`, no clipping) can be given here.
    pub fn parse(k: &mut Kwargs, hparams: &serde_json::Value) -> Result<Self> {
        let d = AdoptConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        let clip = match (hparams.get("clip_lambda"), k.value("clip_lambda")) {
            (None, _) => true,
            (Some(_), None) => false,
            (_, Some(v)) => {
                return Err(Error::Field {
                    context: "po.adopt: `clip_lambda`".into(),
                    message: format!(
                        "is a function in the library; only null (no clipping) or its default (absent) can be given, got {v}"
                    ),
                })
            }
        };
        Ok(AdoptConfig {
            lr: k.lr("lr", Some(1e-3))?,
            betas: (b[0], b[1]),
            clip,
            weight_decay: PoWeightDecay::parse(k, 0.0, false, Some(false))?,
            eps: k.f64("eps", d.eps)?,
            cautious: k.bool("cautious", false)?,
            stable_adamw: k.bool("stable_adamw", false)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// ADOPT: the gradient is normalized by the second moment of the steps *before* it, clipped, and
/// only then averaged into the momentum; the first step only initializes the second moment.
///
/// `t = 1`: `v ← g²` (no move). `t > 1`: `n ← clamp(g / max(√v, ε), ±t^¼)`,
/// `m ← lerp(m, n, 1−β₁)`, `p ← p − lr·m`, then `v ← β₂v + (1−β₂)g²`.
pub struct Adopt {
    lr: LearningRate,
    /// `1 − β₁`, `β₂`, `1 − β₂`.
    w1: f32,
    b2: f32,
    w2: f32,
    clip: bool,
    eps: f32,
    decay: PoWeightDecay,
    cautious: bool,
    stable_adamw: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's [factor, l2, lr, clip bound].
    k: [f32; 4],
    /// This step's cautious factor of each tensor's agreeing entries, and its StableAdamW
    /// divisor.
    scales: Vec<[f32; 2]>,
}

impl Adopt {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: AdoptConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.eps, "eps")?;
        Ok(Adopt {
            lr: c.lr,
            w1: (1.0 - c.betas.0) as f32,
            b2: c.betas.1 as f32,
            w2: (1.0 - c.betas.1) as f32,
            clip: c.clip,
            eps: c.eps as f32,
            decay: c.weight_decay,
            cautious: c.cautious,
            stable_adamw: c.stable_adamw,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 4],
            scales: vec![],
        })
    }
}

elementwise_transform!(Adopt, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.scales = vec![[1.0; 2]; shapes.len()];
}; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);

impl Elementwise for Adopt {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.cautious || self.stable_adamw
    }
    /// Each tensor's count of momentum entries that will agree in sign with the normalized
    /// gradient (cautious) and its `Σ g²/max(v, 1e-16)` with the second moment before the step
    /// (StableAdamW); nothing on the first step, which does not move.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        if self.step == 0 {
            return;
        }
        let [_, l2, _, clip] = self.constants(self.step + 1);
        let (w1, eps, maximize, clipped) = (self.w1, self.eps, self.maximize, self.clip);
        for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
            let v = &self.exp_avg_sq.buffers()[i];
            let grad = |j: usize| grad_in(g[j], w[j], maximize, l2);
            if self.cautious {
                let m = &self.exp_avg.buffers()[i];
                self.scales[i][0] = cautious_step(g.len(), |j| {
                    let normed = adopt_normed(grad(j), v[j], eps, clipped, clip);
                    (lerp(m[j], normed, w1), normed)
                });
            }
            if self.stable_adamw {
                let sum = tensor_sum(g.len(), |range| {
                    range
                        .map(|j| {
                            let x = grad(j);
                            (x * x / v[j].max(1e-16)) as f64
                        })
                        .sum()
                });
                self.scales[i][1] = stable_adamw_rms(sum, g.len());
            }
        }
    }
    fn begin_step(&mut self) {
        self.step += 1;
        self.k = self.constants(self.step);
    }
    simd_apply!(Adopt, |this, i, off, u, p| {
        let n = u.len();
        let [factor, l2, lr, clip] = this.k;
        let (w1, b2, w2, eps) = (this.w1, this.b2, this.w2, this.eps);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        let first = this.step == 1;
        let [agree_scale, rms] = this.scales[i];
        for j in 0..n {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            if l2 != 0.0 {
                g += l2 * p[j];
            }
            let w = p[j] * factor;
            if first {
                v[j] += g * g;
                u[j] = w - p[j];
                continue;
            }
            let normed = adopt_normed(g, v[j], eps, this.clip, clip);
            m[j] = lerp(m[j], normed, w1);
            let mut update = if this.cautious { cautious(m[j], normed, agree_scale) } else { m[j] };
            if this.stable_adamw {
                update /= rms;
            }
            u[j] = (w + -lr * update) - p[j];
            v[j] = v[j] * b2 + w2 * g * g;
        }
    });
}

impl Adopt {
    /// The [factor, l2, lr, clip bound] of step `t` (from 1).
    fn constants(&self, t: u64) -> [f32; 4] {
        let lr = self.lr.at(t - 1);
        let (factor, l2) = self.decay.terms(lr, 1.0);
        let clip = if self.clip { (t as f64).powf(0.25) as f32 } else { f32::INFINITY };
        [factor, l2, lr as f32, clip]
    }
}

/// ADOPT's normalized gradient: `g / max(√v, ε)` (`clamp_(min=eps)`, which keeps a NaN), clipped
/// to `±clip` when `clipped`.
#[inline(always)]
fn adopt_normed(g: f32, v: f32, eps: f32, clipped: bool, clip: f32) -> f32 {
    let root = v.sqrt();
    let normed = g / if root < eps { eps } else { root };
    if clipped {
        crate::kernel::clip(normed, -clip, clip)
    } else {
        normed
    }
}
