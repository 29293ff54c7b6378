//! pytorch_optimizer `ADOPT` (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any
//! β₂ with the Optimal Rate").

use super::common::{betas, check_lr, lerp, maximize_and_foreach, non_negative, PoWeightDecay};
use crate::error::{Error, Result};
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
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
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's [factor, l2, lr, clip bound].
    k: [f32; 4],
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
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 4],
        })
    }
}

elementwise_transform!(Adopt, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
}; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);

impl Elementwise for Adopt {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let (factor, l2) = self.decay.terms(lr, 1.0);
        let clip = if self.clip { (self.step as f64).powf(0.25) as f32 } else { f32::INFINITY };
        self.k = [factor, l2, lr as f32, clip];
    }
    simd_apply!(Adopt, |this, i, off, u, p| {
        let n = u.len();
        let [factor, l2, lr, clip] = this.k;
        let (w1, b2, w2, eps) = (this.w1, this.b2, this.w2, this.eps);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        let first = this.step == 1;
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
            // `clamp_(min=eps)`, which keeps a NaN.
            let root = v[j].sqrt();
            let mut normed = g / if root < eps { eps } else { root };
            if this.clip {
                normed = crate::kernel::clip(normed, -clip, clip);
            }
            m[j] = lerp(m[j], normed, w1);
            u[j] = (w + -lr * m[j]) - p[j];
            v[j] = v[j] * b2 + w2 * g * g;
        }
    });
}
