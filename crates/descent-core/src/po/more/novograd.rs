//! pytorch_optimizer `NovoGrad` (Ginsburg et al. 2019, "Stochastic Gradient Methods with
//! Layer-wise Adaptive Moments for Training of Deep Networks").

use super::common::{betas, check_lr, debias, lerp, maximize_and_foreach, non_negative, reduce_f32, PoWeightDecay};
use crate::error::Result;
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};
use crate::transforms::{simd_apply, zeros, ParamBufs};

/// `NovoGrad`'s arguments, with its defaults.
pub struct NovoGradConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Decays of the momentum and of the per-tensor second moment.
    pub betas: (f64, f64),
    /// Weight decay, L2 (added to the normalized gradient) or decoupled.
    pub weight_decay: PoWeightDecay,
    /// Scale the new normalized gradient by `1 − β₁` in the momentum.
    pub grad_averaging: bool,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Scale the step by `√(1 − β₂ᵗ)` (`adam_debias`).
    pub adam_debias: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for NovoGradConfig {
    fn default() -> Self {
        NovoGradConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.95, 0.98),
            weight_decay: PoWeightDecay::NONE,
            grad_averaging: false,
            eps: 1e-8,
            adam_debias: false,
            maximize: false,
        }
    }
}

impl NovoGradConfig {
    /// The class's keyword arguments.
    pub fn parse(k: &mut Kwargs) -> Result<Self> {
        let d = NovoGradConfig::default();
        let b = betas(k, &[d.betas.0, d.betas.1])?;
        Ok(NovoGradConfig {
            lr: k.lr("lr", Some(1e-3))?,
            betas: (b[0], b[1]),
            weight_decay: PoWeightDecay::parse(k, 0.0, false, Some(false))?,
            grad_averaging: k.bool("grad_averaging", d.grad_averaging)?,
            eps: k.f64("eps", d.eps)?,
            adam_debias: k.bool("adam_debias", d.adam_debias)?,
            maximize: maximize_and_foreach(k)?,
        })
    }
}

/// NovoGrad: each tensor's gradient is normalized by the root of a running average of its
/// squared norm, `e ← lerp(e, ‖g‖², 1 − β₂)` (`e = ‖g‖²` at the first step), then averaged into
/// a momentum, `m ← β₁m + g/(√e + ε)` (`m = g/(√e + ε)` at the first step), and
/// `p ← p − lr·m`.
///
/// Elementwise once each tensor's `‖g‖²` is known: a read-only pass over the gradients
/// ([`Elementwise::prepare`]) precedes the fused step.
pub struct NovoGrad {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    decay: PoWeightDecay,
    grad_averaging: bool,
    eps: f32,
    adam_debias: bool,
    maximize: bool,
    step: u64,
    /// The running average of each tensor's squared gradient norm (a float32 scalar each).
    grads_ema: Vec<f32>,
    moments: ParamBufs,
    /// Each tensor's `‖g‖²` this step, from `prepare`.
    sq: Vec<f32>,
    /// Each tensor's `√e + ε` this step.
    de_nom: Vec<f32>,
    first: bool,
    /// This step's [factor, l2, β₁, 1 − β₁, step size].
    k: [f32; 5],
}

impl NovoGrad {
    /// The optimizer of `config`, checked as the class checks its arguments.
    pub fn new(c: NovoGradConfig) -> Result<Self> {
        check_lr(&c.lr)?;
        non_negative(c.eps, "eps")?;
        Ok(NovoGrad {
            lr: c.lr,
            b1: c.betas.0,
            b2: c.betas.1,
            decay: c.weight_decay,
            grad_averaging: c.grad_averaging,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            maximize: c.maximize,
            step: 0,
            grads_ema: vec![],
            moments: ParamBufs::default(),
            sq: vec![],
            de_nom: vec![],
            first: true,
            k: [0.0; 5],
        })
    }
}

impl Transform for NovoGrad {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.grads_ema = vec![0.0; shapes.len()];
        self.sq = vec![0.0; shapes.len()];
        self.de_nom = vec![0.0; shapes.len()];
        self.moments = zeros(shapes).into();
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        for (i, e) in self.grads_ema.iter_mut().enumerate() {
            let mut x = *e as f64;
            v.scalar(&format!("grads_ema.{i}"), &mut x)?;
            *e = x as f32;
        }
        self.moments.visit(v, "moments")?;
        v.counter("step", &mut self.step)
    }
}

crate::transforms::prefetch_state!(NovoGrad; moments);
impl Elementwise for NovoGrad {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        for (sq, g) in self.sq.iter_mut().zip(inputs) {
            *sq = reduce_f32(g.len(), |r| g[r].iter().map(|&x| (x * x) as f64).sum());
        }
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.first = self.step == 0;
        self.step += 1;
        let step_size = if self.adam_debias { lr * debias(self.b2, self.step).sqrt() } else { lr };
        let (factor, l2) = self.decay.terms(lr, 1.0);
        let w2 = (1.0 - self.b2) as f32;
        for ((e, d), &sq) in self.grads_ema.iter_mut().zip(&mut self.de_nom).zip(&self.sq) {
            *e = if self.first { sq } else { lerp(*e, sq, w2) };
            *d = e.sqrt() + self.eps;
        }
        self.k = [factor, l2, self.b1 as f32, (1.0 - self.b1) as f32, step_size as f32];
    }
    simd_apply!(NovoGrad, |this, i, off, u, p| {
        let n = u.len();
        let [factor, l2, b1, averaging, step_size] = this.k;
        let de_nom = this.de_nom[i];
        let m = this.moments.slice(i, off, n);
        for j in 0..n {
            let g = if this.maximize { -u[j] } else { u[j] };
            let mut g = g / de_nom;
            if l2 != 0.0 {
                g += l2 * p[j];
            }
            if this.first {
                m[j] = g;
            } else {
                if this.grad_averaging {
                    g *= averaging;
                }
                m[j] = m[j] * b1 + g;
            }
            u[j] = (p[j] * factor + -step_size * m[j]) - p[j];
        }
    });
}
