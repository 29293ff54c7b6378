//! SOAP (pytorch_optimizer `SOAP`): Adam run in the eigenbasis of Shampoo's preconditioner.
//! Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam" (2024),
//! <https://arxiv.org/abs/2409.11321>.
//!
//! For each axis `i` (of at most `max_precondition_dim` entries) a statistic
//! `Gᵢ ← Gᵢ + (1 − shampoo_β)·(g₍ᵢ₎g₍ᵢ₎ᵀ − Gᵢ)` and a basis `Qᵢ`: its eigenvectors (descending)
//! after the first gradient, then every `precondition_frequency` steps one power iteration
//! `Qᵢ ← QR(Gᵢ·Qᵢ)` (columns sorted by their estimated eigenvalue, the second moment's entries
//! permuted with them). The first step only sets these up; from the second on, with `t` the
//! steps taken since:
//!
//! ```text
//! m ← m + (1 − β1)·(g − m)                         (in the parameter's basis)
//! v ← v + (1 − β2)·(ĝ² − v),  ĝ = g ×ᵢ Qᵢᵀ          (in the eigenbasis)
//! u ← (m̂ / (√v + ε)) ×ᵢ Qᵢ,   m̂ = m ×ᵢ Qᵢᵀ
//! p ← p − lr·√(1 − β2^t)/(1 − β1^t)·u ;  p ← p·(1 − lr·wd)
//! ```
//!
//! A 1-D tensor is preconditioned only with `precondition_1d`; an axis longer than
//! `max_precondition_dim` keeps the identity. With `merge_dims`, small axes are merged first.

use super::linalg::{
    eigh, index_select, lerp, merge_small_dims, mode_product, permute_axes, qr_q, try_square, unfolded_gram, Mat64,
};
use super::{check_betas, check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};

/// Tensor layout for `merge_dims` on 4-D tensors (`data_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// NCHW: merged as they are.
    ChannelsFirst,
    /// NHWC: permuted to NCHW before merging.
    ChannelsLast,
}

/// `SOAP`'s arguments, with the library's defaults.
#[derive(Clone, Copy, Debug)]
pub struct SoapConfig {
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Decay of the preconditioner statistics (`None`: β2).
    pub shampoo_beta: Option<f64>,
    /// Decoupled weight decay, after the step.
    pub weight_decay: f64,
    /// Steps between the basis updates.
    pub precondition_frequency: u64,
    /// Longer axes are not preconditioned.
    pub max_precondition_dim: usize,
    /// Merge small axes before preconditioning.
    pub merge_dims: bool,
    /// Precondition 1-D tensors.
    pub precondition_1d: bool,
    /// Adam's bias correction.
    pub correct_bias: bool,
    /// Divide the update by its RMS (+ ε).
    pub normalize_gradient: bool,
    /// Where a convolution's channels are (`channels_first` or `channels_last`), for `merge_dims`.
    pub data_format: DataFormat,
    /// Added to `√v`.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SoapConfig {
    fn default() -> Self {
        SoapConfig {
            betas: (0.95, 0.95),
            shampoo_beta: None,
            weight_decay: 1e-2,
            precondition_frequency: 10,
            max_precondition_dim: 10000,
            merge_dims: false,
            precondition_1d: false,
            correct_bias: true,
            normalize_gradient: false,
            data_format: DataFormat::ChannelsFirst,
            eps: 1e-8,
            maximize: false,
        }
    }
}

/// How one parameter is preconditioned.
#[derive(Clone, Debug)]
struct Layout {
    shape: Vec<usize>,
    /// The shape the axes are preconditioned in (merged, or the parameter's own).
    pshape: Vec<usize>,
    /// NHWC permuted to NCHW before merging.
    channels_last: bool,
    /// Per axis of `pshape`: preconditioned.
    axes: Vec<bool>,
}

impl Layout {
    fn new(shape: &[usize], c: &SoapConfig) -> Result<Self> {
        let channels_last = c.merge_dims && c.data_format == DataFormat::ChannelsLast && shape.len() == 4;
        let pshape = if c.merge_dims && shape.len() != 1 {
            let s = if channels_last { vec![shape[0], shape[3], shape[1], shape[2]] } else { shape.to_vec() };
            let merged = merge_small_dims(&s, c.max_precondition_dim);
            if numel(&merged) != numel(shape) {
                return Err(Error::Invalid(format!(
                    "SOAP with merge_dims: shape {shape:?} merges to {merged:?}, which cannot hold its {} elements",
                    numel(shape)
                )));
            }
            merged
        } else {
            shape.to_vec()
        };
        let axes = if shape.len() == 1 {
            vec![c.precondition_1d && shape[0] <= c.max_precondition_dim]
        } else {
            pshape.iter().map(|&n| n <= c.max_precondition_dim).collect()
        };
        Ok(Layout { shape: shape.to_vec(), pshape, channels_last, axes })
    }

    /// The parameter's layout to the preconditioning one.
    fn to_p(&self, x: &[f32]) -> Vec<f32> {
        if self.channels_last {
            permute_axes(x, &self.shape, &[0, 3, 1, 2])
        } else {
            x.to_vec()
        }
    }

    fn to_param<T: Copy>(&self, y: &[T]) -> Vec<T> {
        if self.channels_last {
            let s = &self.shape;
            permute_axes(y, &[s[0], s[3], s[1], s[2]], &[0, 2, 3, 1])
        } else {
            y.to_vec()
        }
    }

    /// `x ×ᵢ Qᵢᵀ` (`forward`) or `x ×ᵢ Qᵢ` over the preconditioned axes, in the parameter's
    /// layout.
    fn project(&self, x: &[f32], q: &[Vec<f32>], forward: bool) -> Vec<f32> {
        let mut y: Vec<f64> = self.to_p(x).iter().map(|&v| v as f64).collect();
        for (axis, &n) in self.pshape.iter().enumerate() {
            if q[axis].is_empty() {
                continue;
            }
            let m = Mat64::from_f32(n, n, &q[axis]);
            let a = if forward { m.t() } else { m };
            y = mode_product(&y, &self.pshape, axis, &a);
        }
        let y: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        self.to_param(&y)
    }
}

/// pytorch_optimizer `SOAP` (one parameter group).
pub struct Soap {
    lr: LearningRate,
    cfg: SoapConfig,
    step: u64,
    layouts: Vec<Layout>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    /// Per parameter, per axis of its preconditioning shape: the statistic and the basis
    /// (empty where the axis is not preconditioned).
    gg: Vec<Vec<Vec<f32>>>,
    q: Vec<Vec<Vec<f32>>>,
}

impl Soap {
    /// A `Soap` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: SoapConfig) -> Result<Self> {
        check_lr(&lr)?;
        check_betas(cfg.betas)?;
        if let Some(b) = cfg.shampoo_beta {
            ensure(b >= 0.0, || "shampoo_beta must be non-negative".into())?;
        }
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        ensure(cfg.precondition_frequency > 0, || "precondition_frequency must be positive".into())?;
        ensure(cfg.max_precondition_dim > 0, || "max_precondition_dim must be positive".into())?;
        ensure(cfg.eps >= 0.0, || "eps must be non-negative".into())?;
        Ok(Soap { lr, cfg, step: 0, layouts: vec![], exp_avg: vec![], exp_avg_sq: vec![], gg: vec![], q: vec![] })
    }

    /// The configuration from the library's keyword arguments, with its defaults.
    pub fn from_kwargs(k: &mut Kwargs) -> Result<Self> {
        let d = SoapConfig::default();
        let lr = k.lr("lr", Some(3e-3))?;
        let data_format = match k.str("data_format", "channels_first")? {
            "channels_first" => DataFormat::ChannelsFirst,
            "channels_last" => DataFormat::ChannelsLast,
            other => {
                return Err(Error::Unknown {
                    kind: "SOAP data_format",
                    name: other.into(),
                    accepted: "channels_first, channels_last".into(),
                })
            }
        };
        let cfg = SoapConfig {
            betas: k.pair("betas", d.betas)?,
            shampoo_beta: k.opt_f64("shampoo_beta")?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            precondition_frequency: k.u64("precondition_frequency", d.precondition_frequency)?,
            max_precondition_dim: k.u64("max_precondition_dim", d.max_precondition_dim as u64)? as usize,
            merge_dims: k.bool("merge_dims", d.merge_dims)?,
            precondition_1d: k.bool("precondition_1d", d.precondition_1d)?,
            correct_bias: k.bool("correct_bias", d.correct_bias)?,
            normalize_gradient: k.bool("normalize_gradient", d.normalize_gradient)?,
            data_format,
            eps: k.f64("eps", d.eps)?,
            maximize: k.bool("maximize", d.maximize)?,
        };
        Soap::new(lr, cfg)
    }

    /// `update_pre_conditioner`: the statistics take gradient `g` in; the basis is the
    /// eigenbasis at the first call, refreshed by a power iteration at the multiples of the
    /// frequency.
    fn update_preconditioner(&mut self, i: usize, g: &[f32], step: u64) -> Result<()> {
        let lay = &self.layouts[i];
        let w = (1.0 - self.cfg.shampoo_beta.unwrap_or(self.cfg.betas.1)) as f32;
        let gp: Vec<f64> = lay.to_p(g).iter().map(|&v| v as f64).collect();
        for (axis, present) in lay.axes.iter().enumerate() {
            if !present {
                continue;
            }
            let outer = unfolded_gram(&gp, &lay.pshape, axis);
            for (s, o) in self.gg[i][axis].iter_mut().zip(&outer.data) {
                *s = lerp(*s, *o as f32, w);
            }
        }
        if step == 0 {
            // `get_orthogonal_matrix`: eigenvectors of G + 1e-30·I, by descending eigenvalue.
            for (axis, &n) in lay.pshape.iter().enumerate() {
                if !lay.axes[axis] {
                    continue;
                }
                let mut m = Mat64::from_f32(n, n, &self.gg[i][axis]);
                for j in 0..n {
                    m.data[j * n + j] += 1e-30;
                }
                let (_, v) = eigh(&m)?;
                self.q[i][axis] =
                    (0..n).flat_map(|r| (0..n).map(move |c| (r, c))).map(|(r, c)| v.at(r, n - 1 - c) as f32).collect();
            }
        } else if step.is_multiple_of(self.cfg.precondition_frequency) {
            // `get_orthogonal_matrix_qr`: one power iteration, the columns sorted by the
            // estimated eigenvalues, and the second moment permuted along with them.
            let mut sq = lay.to_p(&self.exp_avg_sq[i]);
            for (axis, &n) in lay.pshape.iter().enumerate() {
                if !lay.axes[axis] {
                    continue;
                }
                let m = Mat64::from_f32(n, n, &self.gg[i][axis]);
                let o = Mat64::from_f32(n, n, &self.q[i][axis]);
                let mp = m.mm(&o);
                let est: Vec<f64> = (0..n).map(|c| (0..n).map(|r| o.at(r, c) * mp.at(r, c)).sum()).collect();
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| est[b].partial_cmp(&est[a]).unwrap_or(std::cmp::Ordering::Equal));
                sq = index_select(&sq, &lay.pshape, axis, &order);
                let mut power = Mat64::zeros(n, n);
                for r in 0..n {
                    for (c, &k) in order.iter().enumerate() {
                        power.data[r * n + c] = mp.at(r, k);
                    }
                }
                self.q[i][axis] = qr_q(&power)?.to_f32();
            }
            self.exp_avg_sq[i] = lay.to_param(&sq);
        }
        Ok(())
    }
}

impl Transform for Soap {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        self.step = 0;
        let (mut layouts, mut gg, mut q) = (vec![], vec![], vec![]);
        for (i, s) in shapes.iter().enumerate() {
            let what = format!("SOAP parameter {i}");
            if numel(s) == 0 {
                layouts.push(Layout { shape: s.clone(), pshape: vec![], channels_last: false, axes: vec![] });
                gg.push(vec![]);
                q.push(vec![]);
                continue;
            }
            let lay = Layout::new(s, &self.cfg).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
            let mut g = vec![];
            let mut b = vec![];
            for (axis, &n) in lay.pshape.iter().enumerate() {
                if lay.axes[axis] {
                    g.push(try_square(n, &what)?);
                    b.push(try_square(n, &what)?);
                } else {
                    g.push(vec![]);
                    b.push(vec![]);
                }
            }
            layouts.push(lay);
            gg.push(g);
            q.push(b);
        }
        self.exp_avg = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        self.exp_avg_sq = shapes.iter().map(|s| vec![0.0; numel(s)]).collect();
        self.layouts = layouts;
        self.gg = gg;
        self.q = q;
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = lr_of(&self.lr, self.step);
        self.step += 1;
        if self.step == 1 {
            // The first gradient only sets the preconditioners up (as given, not maximized).
            for (i, u) in updates.iter_mut().enumerate() {
                if !u.is_empty() {
                    self.update_preconditioner(i, u, 0)?;
                }
                u.iter_mut().for_each(|x| *x = 0.0);
            }
            return Ok(());
        }
        let c = self.cfg;
        let (b1, b2) = c.betas;
        let step = self.step - 1;
        let mut step_size = lr;
        if c.correct_bias {
            let t = step as f64;
            step_size *= (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
        }
        let (w1, w2, eps) = ((1.0 - b1) as f32, (1.0 - b2) as f32, c.eps as f32);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if u.is_empty() {
                continue;
            }
            if c.maximize {
                u.iter_mut().for_each(|g| *g = -*g);
            }
            let lay = &self.layouts[i];
            let gp = lay.project(u, &self.q[i], true);
            for ((m, v), (g, gp)) in
                self.exp_avg[i].iter_mut().zip(self.exp_avg_sq[i].iter_mut()).zip(u.iter().zip(&gp))
            {
                *m = lerp(*m, *g, w1);
                *v = lerp(*v, gp * gp, w2);
            }
            let mp = lay.project(&self.exp_avg[i], &self.q[i], true);
            let ratio: Vec<f32> = mp.iter().zip(&self.exp_avg_sq[i]).map(|(m, v)| m / (v.sqrt() + eps)).collect();
            let mut norm = lay.project(&ratio, &self.q[i], false);
            if c.normalize_gradient {
                let ms = norm.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / norm.len() as f64;
                let den = ms.sqrt() as f32 + eps;
                norm.iter_mut().for_each(|x| *x /= den);
            }
            let alpha = -step_size as f32;
            let decay = (1.0 - lr * c.weight_decay) as f32;
            let g = u.clone();
            for ((out, &p), n) in u.iter_mut().zip(p.iter()).zip(&norm) {
                let mut q = p + alpha * n;
                if c.weight_decay != 0.0 {
                    q *= decay;
                }
                *out = q - p;
            }
            self.update_preconditioner(i, &g, step)?;
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "exp_avg", &mut self.exp_avg)?;
        crate::state::visit_buffers(v, "exp_avg_sq", &mut self.exp_avg_sq)?;
        for (i, (g, q)) in self.gg.iter_mut().zip(self.q.iter_mut()).enumerate() {
            crate::state::visit_buffers(v, &format!("GG.{i}"), g)?;
            crate::state::visit_buffers(v, &format!("Q.{i}"), q)?;
        }
        v.counter("step", &mut self.step)
    }
}
