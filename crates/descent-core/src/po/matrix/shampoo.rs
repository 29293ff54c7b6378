//! Shampoo (pytorch_optimizer `Shampoo`): one preconditioner per tensor axis. Gupta, Koren and
//! Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization" (2018),
//! <https://arxiv.org/abs/1802.09568>.
//!
//! For a tensor of order `k` with gradient `g`, per step:
//!
//! ```text
//! g ← g + momentum·(b − g)                  (b: the last preconditioned gradient; the first
//!                                            gradient at step 1)
//! g ← g + wd·p   or   p ← p·(1 − lr·wd)    (coupled or decoupled weight decay)
//! Lᵢ ← Lᵢ + g₍ᵢ₎·g₍ᵢ₎ᵀ                      (g₍ᵢ₎: the unfolding along axis i; Lᵢ starts at ε·I)
//! Pᵢ ← Lᵢ^(−1/2k)                           (by SVD, every `preconditioning_compute_steps`)
//! u ← g ×₁ P₁ ×₂ P₂ … ×ₖ Pₖᵀ ;  b ← u ;  p ← p − lr·u
//! ```
//!
//! Every axis is preconditioned, however long: the statistics take `Σ nᵢ²` elements.

use super::linalg::{inverse_root_svd, lerp, mode_product, try_square, try_zeros, unfolded_gram, Mat64};
use super::{check_lr, lr_of};
use crate::error::{ensure, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};

/// `Shampoo`'s arguments, with the library's defaults.
#[derive(Clone, Copy, Debug)]
pub struct ShampooConfig {
    /// Momentum on the preconditioned gradient, in [0, 1).
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Decoupled (`p ← p·(1 − lr·wd)`) rather than added to the gradient.
    pub weight_decouple: bool,
    /// Decoupled decay not scaled by the learning rate.
    pub fixed_decay: bool,
    /// Recompute the inverse roots every this many steps (at least 1).
    pub preconditioning_compute_steps: u64,
    /// The statistics start at `matrix_eps·I`.
    pub matrix_eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ShampooConfig {
    fn default() -> Self {
        ShampooConfig {
            momentum: 0.0,
            weight_decay: 0.0,
            weight_decouple: false,
            fixed_decay: false,
            preconditioning_compute_steps: 1,
            matrix_eps: 1e-6,
            maximize: false,
        }
    }
}

/// pytorch_optimizer `Shampoo` (one parameter group).
pub struct Shampoo {
    lr: LearningRate,
    cfg: ShampooConfig,
    step: u64,
    shapes: Vec<Vec<usize>>,
    momentum_buffer: Vec<Vec<f32>>,
    /// Per parameter, per axis: the statistic `Lᵢ` and its inverse root `Pᵢ` (row-major).
    pre_cond: Vec<Vec<Vec<f32>>>,
    inv_pre_cond: Vec<Vec<Vec<f32>>>,
}

impl Shampoo {
    /// A `Shampoo` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: ShampooConfig) -> Result<Self> {
        check_lr(&lr)?;
        ensure((0.0..1.0).contains(&cfg.momentum), || "momentum must be in the range [0.0, 1.0)".into())?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        ensure(cfg.preconditioning_compute_steps >= 1, || "preconditioning_compute_steps must be at least 1".into())?;
        ensure(cfg.matrix_eps >= 0.0, || "matrix_eps must be non-negative".into())?;
        Ok(Shampoo {
            lr,
            cfg,
            step: 0,
            shapes: vec![],
            momentum_buffer: vec![],
            pre_cond: vec![],
            inv_pre_cond: vec![],
        })
    }

    /// The configuration from the library's keyword arguments, with its defaults.
    pub fn from_kwargs(k: &mut Kwargs) -> Result<Self> {
        let d = ShampooConfig::default();
        let lr = k.lr("lr", Some(1e-3))?;
        let cfg = ShampooConfig {
            momentum: k.f64("momentum", d.momentum)?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            weight_decouple: k.bool("weight_decouple", d.weight_decouple)?,
            fixed_decay: k.bool("fixed_decay", d.fixed_decay)?,
            preconditioning_compute_steps: k.u64("preconditioning_compute_steps", d.preconditioning_compute_steps)?,
            matrix_eps: k.f64("matrix_eps", d.matrix_eps)?,
            maximize: k.bool("maximize", d.maximize)?,
        };
        Shampoo::new(lr, cfg)
    }
}

impl Transform for Shampoo {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        let (mut pre, mut inv, mut buf) = (vec![], vec![], vec![]);
        for (i, s) in shapes.iter().enumerate() {
            let what = format!("Shampoo parameter {i}");
            if numel(s) == 0 {
                pre.push(vec![]);
                inv.push(vec![]);
                buf.push(vec![]);
                continue;
            }
            let mut p = vec![];
            let mut q = vec![];
            for &n in s {
                let mut l = try_square(n, &what)?;
                for j in 0..n {
                    l[j * n + j] = self.cfg.matrix_eps as f32;
                }
                p.push(l);
                q.push(try_square(n, &what)?);
            }
            pre.push(p);
            inv.push(q);
            buf.push(try_zeros(numel(s), &what)?);
        }
        self.shapes = shapes.to_vec();
        self.pre_cond = pre;
        self.inv_pre_cond = inv;
        self.momentum_buffer = buf;
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = lr_of(&self.lr, self.step);
        let first = self.step == 0;
        self.step += 1;
        let c = self.cfg;
        let recompute = self.step.is_multiple_of(c.preconditioning_compute_steps);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if u.is_empty() {
                continue;
            }
            // The momentum buffer starts as the first gradient (as given, before maximization).
            if first {
                self.momentum_buffer[i].copy_from_slice(u);
            }
            let mut q = p.to_vec();
            for ((g, b), q) in u.iter_mut().zip(&self.momentum_buffer[i]).zip(q.iter_mut()) {
                if c.maximize {
                    *g = -*g;
                }
                if c.momentum > 0.0 {
                    *g = lerp(*g, *b, c.momentum as f32);
                }
                if c.weight_decay != 0.0 {
                    if c.weight_decouple {
                        let rate = if c.fixed_decay { 1.0 } else { lr };
                        *q *= (1.0 - c.weight_decay * rate) as f32;
                    } else if c.weight_decay > 0.0 {
                        *g += c.weight_decay as f32 * *q;
                    }
                }
            }
            let shape = &self.shapes[i];
            let order = shape.len();
            let g: Vec<f64> = u.iter().map(|&x| x as f64).collect();
            let mut x = g.clone();
            for (axis, &n) in shape.iter().enumerate() {
                let stat = &mut self.pre_cond[i][axis];
                let gram = unfolded_gram(&g, shape, axis);
                for (s, a) in stat.iter_mut().zip(&gram.data) {
                    *s = (*s as f64 + a) as f32;
                }
                if recompute {
                    let root = inverse_root_svd(&Mat64::from_f32(n, n, stat), 2.0 * order as f64)?;
                    self.inv_pre_cond[i][axis] = root.to_f32();
                }
                let inv = Mat64::from_f32(n, n, &self.inv_pre_cond[i][axis]);
                // The last axis is multiplied from the right (`gᵀ·P`), the others from the left.
                let a = if axis + 1 == order { inv.t() } else { inv };
                x = mode_product(&x, shape, axis, &a);
            }
            let alpha = -lr as f32;
            for (((out, q), p), (b, x)) in
                u.iter_mut().zip(q.iter_mut()).zip(p.iter()).zip(self.momentum_buffer[i].iter_mut().zip(&x))
            {
                *b = *x as f32;
                *q += alpha * *b;
                *out = *q - p;
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "momentum_buffer", &mut self.momentum_buffer)?;
        for (i, (pre, inv)) in self.pre_cond.iter_mut().zip(self.inv_pre_cond.iter_mut()).enumerate() {
            crate::state::visit_buffers(v, &format!("pre_cond.{i}"), pre)?;
            crate::state::visit_buffers(v, &format!("inv_pre_cond.{i}"), inv)?;
        }
        v.counter("step", &mut self.step)
    }
}
