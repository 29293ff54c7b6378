//! Scalable Shampoo (pytorch_optimizer `ScalableShampoo`): Shampoo on blocks of at most
//! `block_size` along each axis, with the step's size taken from a simpler "graft" optimizer.
//! Anil et al., "Scalable Second Order Optimization for Deep Learning" (2020),
//! <https://arxiv.org/abs/2002.09018>.
//!
//! The parameter is reshaped (`shape_interpretation`: small axes merged) and cut into blocks;
//! each block keeps, per preconditioned axis, `Lᵢ ← β2·Lᵢ + (1 − β2)·g₍ᵢ₎g₍ᵢ₎ᵀ` (from `ε·I`, every
//! `statistics_compute_steps`) and `Pᵢ = Lᵢ^(−1/2k)` (`k` axes preconditioned; recomputed every
//! `preconditioning_compute_steps` by SVD or the coupled Schur–Newton iteration). Per step:
//!
//! ```text
//! ĝ ← graft(g)                                  (SGD: g; AdaGrad / RMSProp: g/(√s + ε); SQRTN: sign g)
//! s ← g ×ᵢ Pᵢ,  rescaled to ‖ĝ‖                  (ĝ itself for a tensor with no preconditioner)
//! m ← β1·m + s  (or m + (1 − β1)·(s − m) with moving_average_for_momentum); likewise the graft's
//! p ← p − lr·(m, or the graft's momentum before start_preconditioning_step; Nesterov by default)
//! ```

use super::linalg::{
    inverse_root_schur_newton, inverse_root_svd, lerp, merge_small_dims, mode_product, try_square, try_zeros,
    unfolded_gram, Mat64,
};
use super::{check_betas, check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};

/// `LayerWiseGrafting`: the optimizer whose step size a Shampoo step takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graft {
    /// 0: no rescaling.
    None,
    /// 1: SGD.
    Sgd,
    /// 2: AdaGrad.
    AdaGrad,
    /// 3: RMSProp.
    RmsProp,
    /// 4: the gradient's sign.
    Sqrtn,
}

/// `PreConditionerType`: the axes preconditioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreconditionerType {
    /// 0: every axis.
    All,
    /// 1: every axis but the last.
    Input,
    /// 2: the last axis only.
    Output,
}

/// `ScalableShampoo`'s arguments, with the library's defaults.
#[derive(Clone, Copy, Debug)]
pub struct ScalableShampooConfig {
    /// `(β1, β2)`: momentum, and the decay of the statistics (and of RMSProp's graft).
    pub betas: (f64, f64),
    /// Momentum as a moving average (weight `1 − β1` on the new term).
    pub moving_average_for_momentum: bool,
    /// Weight decay (added to the gradient, as the library does).
    pub weight_decay: f64,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)`); else added to both directions.
    pub decoupled_weight_decay: bool,
    /// The learning rate multiplies the momentum (else the directions before it).
    pub decoupled_learning_rate: bool,
    /// The root's order when positive (else twice the number of preconditioned axes).
    pub inverse_exponent_override: u32,
    /// From this step on, the Shampoo momentum is applied (before it, the graft's).
    pub start_preconditioning_step: u64,
    /// Steps between inverse-root computations.
    pub preconditioning_compute_steps: u64,
    /// Steps between statistics updates.
    pub statistics_compute_steps: u64,
    /// Largest block along an axis (≤ 0: no blocks).
    pub block_size: i64,
    /// Tensors of fewer dimensions are not preconditioned.
    pub skip_preconditioning_rank_lt: usize,
    /// Tensors with a longer axis are not preconditioned.
    pub no_preconditioning_for_layers_with_dim_gt: usize,
    /// Merge small axes (`merge_small_dims` up to `block_size`).
    pub shape_interpretation: bool,
    /// The optimizer whose step size the preconditioned direction is grafted onto.
    pub graft_type: Graft,
    /// Which sides of each block are preconditioned.
    pub pre_conditioner_type: PreconditionerType,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Added to the graft's root.
    pub diagonal_eps: f64,
    /// Statistics start at `matrix_eps·I`; also the Schur–Newton ridge.
    pub matrix_eps: f64,
    /// Inverse roots by SVD (else the coupled Schur–Newton iteration).
    pub use_svd: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for ScalableShampooConfig {
    fn default() -> Self {
        ScalableShampooConfig {
            betas: (0.9, 0.999),
            moving_average_for_momentum: false,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            decoupled_learning_rate: true,
            inverse_exponent_override: 0,
            start_preconditioning_step: 25,
            preconditioning_compute_steps: 1000,
            statistics_compute_steps: 1,
            block_size: 512,
            skip_preconditioning_rank_lt: 1,
            no_preconditioning_for_layers_with_dim_gt: 8192,
            shape_interpretation: true,
            graft_type: Graft::Sgd,
            pre_conditioner_type: PreconditionerType::All,
            nesterov: true,
            diagonal_eps: 1e-10,
            matrix_eps: 1e-6,
            use_svd: false,
            maximize: false,
        }
    }
}

/// One block of a parameter (in its transformed shape): where it starts and its size per axis.
#[derive(Clone, Debug)]
struct Block {
    start: Vec<usize>,
    size: Vec<usize>,
}

/// A parameter's `PreConditioner`.
#[derive(Clone, Debug, Default)]
struct Preconditioner {
    /// The shape the blocks are cut from.
    shape: Vec<usize>,
    /// Per axis: preconditioned.
    dims: Vec<bool>,
    exponent: u32,
    blocks: Vec<Block>,
}

impl Preconditioner {
    /// The preconditioning of a parameter of `shape`: `None` where the library keeps none.
    fn new(shape: &[usize], c: &ScalableShampooConfig) -> Option<Preconditioner> {
        let bs = c.block_size;
        let transformed = if c.shape_interpretation {
            merge_small_dims(shape, if bs <= 0 { 0 } else { bs as usize })
        } else {
            shape.to_vec()
        };
        let nd = transformed.len();
        let dims: Vec<bool> = match c.pre_conditioner_type {
            _ if nd <= 1 => vec![true; nd],
            PreconditionerType::All => vec![true; nd],
            PreconditionerType::Input => (0..nd).map(|k| k + 1 < nd).collect(),
            PreconditionerType::Output => (0..nd).map(|k| k + 1 == nd).collect(),
        };
        let rank = dims.iter().filter(|&&d| d).count() as u32;
        let exponent = if c.inverse_exponent_override > 0 { c.inverse_exponent_override } else { 2 * rank };
        let skip = shape.len() < c.skip_preconditioning_rank_lt
            || shape.iter().any(|&d| d > c.no_preconditioning_for_layers_with_dim_gt);
        if nd <= 1 || skip {
            return None;
        }
        // `BlockPartitioner`: each axis cut into pieces of `block_size` (the last one shorter).
        let splits: Vec<Vec<usize>> = transformed
            .iter()
            .map(|&d| {
                if bs <= 0 || bs as usize >= d {
                    vec![d]
                } else {
                    let b = bs as usize;
                    let n = (d - 1) / b;
                    let mut v = vec![b; n];
                    v.push(d - n * b);
                    v
                }
            })
            .collect();
        let mut blocks = vec![Block { start: vec![], size: vec![] }];
        for sizes in &splits {
            let mut next = vec![];
            for b in &blocks {
                let mut off = 0;
                for &s in sizes {
                    let mut nb = b.clone();
                    nb.start.push(off);
                    nb.size.push(s);
                    next.push(nb);
                    off += s;
                }
            }
            blocks = next;
        }
        Some(Preconditioner { shape: transformed, dims, exponent, blocks })
    }

    /// Row-major strides of the transformed shape.
    fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for k in (0..self.shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * self.shape[k + 1];
        }
        s
    }

    /// The indices (into the flat tensor) of a block's elements, row-major within the block.
    fn block_index(&self, b: &Block) -> Vec<usize> {
        let strides = self.strides();
        let n: usize = b.size.iter().product();
        let mut idx = vec![0usize; b.size.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(idx.iter().zip(&b.start).zip(&strides).map(|((i, s), st)| (i + s) * st).sum());
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < b.size[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        out
    }
}

/// Per-parameter state.
#[derive(Default)]
struct ParamState {
    pre: Option<Preconditioner>,
    /// Per block, per preconditioned axis (in order): statistic and inverse root, row-major.
    statistics: Vec<Vec<f32>>,
    roots: Vec<Vec<f32>>,
}

/// pytorch_optimizer `ScalableShampoo` (one parameter group).
pub struct ScalableShampoo {
    lr: LearningRate,
    cfg: ScalableShampooConfig,
    step: u64,
    shapes: Vec<Vec<usize>>,
    params: Vec<ParamState>,
    momentum: Vec<Vec<f32>>,
    graft_momentum: Vec<Vec<f32>>,
    graft_statistics: Vec<Vec<f32>>,
}

impl ScalableShampoo {
    /// A `ScalableShampoo` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: ScalableShampooConfig) -> Result<Self> {
        check_lr(&lr)?;
        check_betas(cfg.betas)?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        for (v, name) in [
            (cfg.start_preconditioning_step, "start_preconditioning_step"),
            (cfg.preconditioning_compute_steps, "preconditioning_compute_steps"),
            (cfg.statistics_compute_steps, "statistics_compute_steps"),
        ] {
            ensure(v >= 1, || format!("{name} must be at least 1, got {v}"))?;
        }
        ensure(cfg.diagonal_eps >= 0.0, || "diagonal_eps must be non-negative".into())?;
        ensure(cfg.matrix_eps >= 0.0, || "matrix_eps must be non-negative".into())?;
        Ok(ScalableShampoo {
            lr,
            cfg,
            step: 0,
            shapes: vec![],
            params: vec![],
            momentum: vec![],
            graft_momentum: vec![],
            graft_statistics: vec![],
        })
    }

    /// The configuration from the library's keyword arguments, with its defaults.
    pub fn from_kwargs(k: &mut Kwargs) -> Result<Self> {
        let d = ScalableShampooConfig::default();
        let lr = k.lr("lr", Some(1e-3))?;
        let graft_type = match k.u64("graft_type", 1)? {
            0 => Graft::None,
            1 => Graft::Sgd,
            2 => Graft::AdaGrad,
            3 => Graft::RmsProp,
            4 => Graft::Sqrtn,
            other => {
                return Err(Error::Field {
                    context: "po.scalableshampoo: `graft_type`".into(),
                    message: format!(
                        "unknown LayerWiseGrafting value {other}; valid: 0 NONE, 1 SGD, 2 ADAGRAD, 3 RMSPROP, 4 SQRTN"
                    ),
                })
            }
        };
        let pre_conditioner_type = match k.u64("pre_conditioner_type", 0)? {
            0 => PreconditionerType::All,
            1 => PreconditionerType::Input,
            2 => PreconditionerType::Output,
            other => {
                return Err(Error::Field {
                    context: "po.scalableshampoo: `pre_conditioner_type`".into(),
                    message: format!("unknown PreConditionerType value {other}; valid: 0 ALL, 1 INPUT, 2 OUTPUT"),
                })
            }
        };
        let block_size = match k.present("block_size")? {
            None => d.block_size,
            Some(v) => v.as_i64().ok_or_else(|| Error::Field {
                context: "po.scalableshampoo: `block_size`".into(),
                message: format!("expected an integer, got {v}"),
            })?,
        };
        let cfg = ScalableShampooConfig {
            betas: k.pair("betas", d.betas)?,
            moving_average_for_momentum: k.bool("moving_average_for_momentum", d.moving_average_for_momentum)?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            decoupled_weight_decay: k.bool("decoupled_weight_decay", d.decoupled_weight_decay)?,
            decoupled_learning_rate: k.bool("decoupled_learning_rate", d.decoupled_learning_rate)?,
            inverse_exponent_override: {
                let v = k.u64("inverse_exponent_override", 0)?;
                u32::try_from(v).map_err(|_| Error::Invalid(format!("inverse_exponent_override {v} is too large")))?
            },
            start_preconditioning_step: k.u64("start_preconditioning_step", d.start_preconditioning_step)?,
            preconditioning_compute_steps: k.u64("preconditioning_compute_steps", d.preconditioning_compute_steps)?,
            statistics_compute_steps: k.u64("statistics_compute_steps", d.statistics_compute_steps)?,
            block_size,
            skip_preconditioning_rank_lt: k.u64("skip_preconditioning_rank_lt", 1)? as usize,
            no_preconditioning_for_layers_with_dim_gt: k.u64("no_preconditioning_for_layers_with_dim_gt", 8192)?
                as usize,
            shape_interpretation: k.bool("shape_interpretation", d.shape_interpretation)?,
            graft_type,
            pre_conditioner_type,
            nesterov: k.bool("nesterov", d.nesterov)?,
            diagonal_eps: k.f64("diagonal_eps", d.diagonal_eps)?,
            matrix_eps: k.f64("matrix_eps", d.matrix_eps)?,
            use_svd: k.bool("use_svd", d.use_svd)?,
            maximize: k.bool("maximize", d.maximize)?,
        };
        ScalableShampoo::new(lr, cfg)
    }

    /// `s = g ×ᵢ Pᵢᵀ` block by block (the gradient itself where there is no preconditioner).
    fn preconditioned(&self, i: usize, g: &[f32]) -> Option<Vec<f32>> {
        let st = &self.params[i];
        let pre = st.pre.as_ref()?;
        let per_block = pre.dims.iter().filter(|&&d| d).count();
        let mut out = vec![0.0f32; g.len()];
        for (bi, b) in pre.blocks.iter().enumerate() {
            let index = pre.block_index(b);
            let mut x: Vec<f64> = index.iter().map(|&j| g[j] as f64).collect();
            let mut k = 0;
            for (axis, &on) in pre.dims.iter().enumerate() {
                if !on {
                    continue;
                }
                let n = b.size[axis];
                let p = Mat64::from_f32(n, n, &st.roots[bi * per_block + k]);
                x = mode_product(&x, &b.size, axis, &p.t());
                k += 1;
            }
            for (&j, v) in index.iter().zip(&x) {
                out[j] = *v as f32;
            }
        }
        Some(out)
    }
}

impl Transform for ScalableShampoo {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        let mut states = vec![];
        for (i, s) in shapes.iter().enumerate() {
            let what = format!("ScalableShampoo parameter {i}");
            let mut st = ParamState::default();
            if numel(s) > 0 {
                if let Some(pre) = Preconditioner::new(s, &self.cfg) {
                    for b in &pre.blocks {
                        for (axis, &on) in pre.dims.iter().enumerate() {
                            if !on {
                                continue;
                            }
                            let n = b.size[axis];
                            let mut l = try_square(n, &what)?;
                            let mut r = try_square(n, &what)?;
                            for j in 0..n {
                                l[j * n + j] = self.cfg.matrix_eps as f32;
                                r[j * n + j] = 1.0;
                            }
                            st.statistics.push(l);
                            st.roots.push(r);
                        }
                    }
                    st.pre = Some(pre);
                }
            }
            states.push(st);
        }
        let graft_stats = matches!(self.cfg.graft_type, Graft::AdaGrad | Graft::RmsProp);
        self.momentum = shapes.iter().map(|s| try_zeros(numel(s), "ScalableShampoo")).collect::<Result<_>>()?;
        self.graft_momentum = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        self.graft_statistics = shapes.iter().map(|s| vec![0.0; if graft_stats { numel(s) } else { 0 }]).collect();
        self.shapes = shapes.to_vec();
        self.params = states;
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = lr_of(&self.lr, self.step);
        self.step += 1;
        let c = self.cfg;
        let (b1, b2) = c.betas;
        let step = self.step;
        let precondition = step >= c.start_preconditioning_step;
        let pre_mult = if c.decoupled_learning_rate { 1.0 } else { lr } as f32;
        let mom_mult = if c.decoupled_learning_rate { lr } else { 1.0 } as f32;
        let w = if c.moving_average_for_momentum { 1.0 - b1 } else { 1.0 } as f32;
        let (b1f, b2f, w2) = (b1 as f32, b2 as f32, (1.0 - b2) as f32);
        for i in 0..updates.len() {
            if updates[i].is_empty() {
                continue;
            }
            if c.maximize {
                updates[i].iter_mut().for_each(|g| *g = -*g);
            }
            let g = std::mem::take(&mut updates[i]);
            // The graft's statistics.
            match c.graft_type {
                Graft::RmsProp => {
                    for (s, g) in self.graft_statistics[i].iter_mut().zip(&g) {
                        *s = *s * b2f + w2 * g * g;
                    }
                }
                Graft::AdaGrad => {
                    for (s, g) in self.graft_statistics[i].iter_mut().zip(&g) {
                        *s += g * g;
                    }
                }
                _ => {}
            }
            // The preconditioner's statistics and roots.
            let st = &mut self.params[i];
            if let Some(pre) = &st.pre {
                let per_block = pre.dims.iter().filter(|&&d| d).count();
                if step.is_multiple_of(c.statistics_compute_steps) {
                    for (bi, b) in pre.blocks.iter().enumerate() {
                        let x: Vec<f64> = pre.block_index(b).iter().map(|&j| g[j] as f64).collect();
                        let mut k = 0;
                        for (axis, &on) in pre.dims.iter().enumerate() {
                            if !on {
                                continue;
                            }
                            let gram = unfolded_gram(&x, &b.size, axis);
                            for (s, a) in st.statistics[bi * per_block + k].iter_mut().zip(&gram.data) {
                                *s = (b2 * *s as f64 + (1.0 - b2) * a) as f32;
                            }
                            k += 1;
                        }
                    }
                }
                if step.is_multiple_of(c.preconditioning_compute_steps) {
                    for (s, r) in st.statistics.iter().zip(st.roots.iter_mut()) {
                        let n = (s.len() as f64).sqrt().round() as usize;
                        let m = Mat64::from_f32(n, n, s);
                        let root = if c.use_svd {
                            inverse_root_svd(&m, pre.exponent as f64)?
                        } else {
                            inverse_root_schur_newton(&m, pre.exponent, c.matrix_eps, 100, 1e-3, 1.2)?
                        };
                        *r = root.to_f32();
                    }
                }
            }
            // The two directions.
            let mut graft_grad: Vec<f32> = match c.graft_type {
                Graft::AdaGrad | Graft::RmsProp => g
                    .iter()
                    .zip(&self.graft_statistics[i])
                    .map(|(g, s)| g / (s.sqrt() + c.diagonal_eps as f32) * pre_mult)
                    .collect(),
                Graft::Sqrtn => g.iter().map(|&x| sign(x) * pre_mult).collect(),
                Graft::None | Graft::Sgd => g.iter().map(|&x| x * pre_mult).collect(),
            };
            let mut shampoo_grad = match self.preconditioned(i, &g) {
                Some(s) => s.into_iter().map(|x| x * pre_mult).collect(),
                None => graft_grad.clone(),
            };
            if c.graft_type != Graft::None {
                let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
                let ratio = norm(&graft_grad) / (norm(&shampoo_grad) + 1e-16);
                shampoo_grad.iter_mut().for_each(|x| *x *= ratio);
            }
            let p = params[i];
            let mut q = p.to_vec();
            if c.weight_decay != 0.0 {
                if c.decoupled_weight_decay {
                    let f = (1.0 - c.weight_decay * lr) as f32;
                    q.iter_mut().for_each(|x| *x *= f);
                } else if c.weight_decay > 0.0 {
                    let wd = c.weight_decay as f32;
                    for ((a, b), p) in graft_grad.iter_mut().zip(shampoo_grad.iter_mut()).zip(p) {
                        *a += wd * p;
                        *b += wd * p;
                    }
                }
            }
            let mut out = g;
            for j in 0..out.len() {
                let (s, gg) = (shampoo_grad[j], graft_grad[j]);
                let m = &mut self.momentum[i][j];
                *m = if c.moving_average_for_momentum { lerp(*m, s, w) } else { *m * b1f + s };
                let gm = &mut self.graft_momentum[i][j];
                *gm = *gm * b1f + w * gg;
                let mut mu = if precondition { *m } else { *gm };
                if c.nesterov {
                    let wdu = if precondition { s } else { gg };
                    mu = if c.moving_average_for_momentum { lerp(mu, wdu, w) } else { mu * b1f + wdu };
                }
                q[j] += -mom_mult * mu;
                out[j] = q[j] - p[j];
            }
            updates[i] = out;
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "momentum", &mut self.momentum)?;
        crate::state::visit_buffers(v, "graft_momentum", &mut self.graft_momentum)?;
        crate::state::visit_buffers(v, "graft_statistics", &mut self.graft_statistics)?;
        for (i, st) in self.params.iter_mut().enumerate() {
            crate::state::visit_buffers(v, &format!("statistics.{i}"), &mut st.statistics)?;
            crate::state::visit_buffers(v, &format!("pre_conditioners.{i}"), &mut st.roots)?;
        }
        v.counter("step", &mut self.step)
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_partitioner() {
        let c = ScalableShampooConfig { block_size: 4, ..Default::default() };
        // (8, 5) merges to (1, 8, 5): blocks of 1 × {4, 4} × {4, 1}.
        let p = Preconditioner::new(&[8, 5], &c).unwrap();
        assert_eq!(p.shape, vec![1, 8, 5]);
        assert_eq!(p.exponent, 6);
        let sizes: Vec<Vec<usize>> = p.blocks.iter().map(|b| b.size.clone()).collect();
        assert_eq!(sizes, vec![vec![1, 4, 4], vec![1, 4, 1], vec![1, 4, 4], vec![1, 4, 1]]);
        assert_eq!(p.blocks[3].start, vec![0, 4, 4]);
        assert_eq!(p.block_index(&p.blocks[1]), vec![4, 9, 14, 19]);
        // A matrix of at most `block_size` entries merges to one axis: no preconditioner.
        assert!(Preconditioner::new(&[2, 2], &c).is_none());
        // Too long an axis, or too few dimensions: none either.
        let c2 =
            ScalableShampooConfig { no_preconditioning_for_layers_with_dim_gt: 6, shape_interpretation: false, ..c };
        assert!(Preconditioner::new(&[8, 5], &c2).is_none());
        assert!(Preconditioner::new(&[5, 5], &c2).is_some());
        let c3 = ScalableShampooConfig {
            pre_conditioner_type: PreconditionerType::Output,
            shape_interpretation: false,
            ..Default::default()
        };
        let p = Preconditioner::new(&[3, 4, 5], &c3).unwrap();
        assert_eq!((p.dims.clone(), p.exponent), (vec![false, false, true], 2));
    }
}
