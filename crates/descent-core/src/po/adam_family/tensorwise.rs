//! Adam relatives that scale each tensor's update by a norm of that tensor: pytorch_optimizer's
//! MARS (the corrected gradient clipped to unit norm) and Lamb (the trust ratio).

use super::common::{
    adam_debias, adanorm_step, apply_cautious, debias, lerp, per_tensor, rectify, rescaled, AdaNormScale, Decay,
    NO_RESCALE,
};
use crate::error::Result;
use crate::kernel::SumSq;
use crate::learning_rate::LearningRate;
use crate::transform::{Shapes, Transform};
use crate::transforms::{newton_schulz, round_bf16, sign, state, sum_sq, zeros, NsPrecision};

/// The coefficients of the quintic Newton–Schulz iteration (Jordan et al. 2024).
const NS_COEFFICIENTS: [f64; 3] = [3.4445, -4.7750, 2.0315];

/// MARS's update of tensors with at least two axes (or every tensor with `optimize_1d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarsType {
    /// AdamW on the corrected gradient.
    AdamW,
    /// The sign of the corrected gradient's momentum.
    Lion,
    /// The momentum (over `1 − β₁`) orthogonalized by five quintic Newton–Schulz iterations in
    /// bfloat16 (Muon's), the tensor viewed as a matrix of its first axis against the others,
    /// scaled by `√max(1, d₀/d₁)`. Tensors with fewer than two axes (under `optimize_1d`) take
    /// the AdamW update.
    Shampoo,
}

/// pytorch_optimizer `MARS` (Yuan et al. 2024, "make variance reduction shine"): the gradient
/// corrected by its change, `c = g + γ·β₁/(1−β₁)·(g − gₜ₋₁)`, clipped to unit norm per tensor,
/// drives AdamW (or Lion, or Muon's orthogonalized momentum) for tensors with at least two axes; the others get plain AdamW with
/// `lr_1d` (as the factor `lr_1d/lr` of the current rate), `betas_1d` and `weight_decay_1d`.
pub struct Mars {
    lr: LearningRate,
    lr_1d_factor: f64,
    betas: [f64; 2],
    betas_1d: [f64; 2],
    gamma: f64,
    mars_type: MarsType,
    optimize_1d: bool,
    weight_decay: f64,
    weight_decay_1d: f64,
    weight_decouple: bool,
    fixed_decay: bool,
    ams_bound: bool,
    cautious: bool,
    eps: f32,
    maximize: bool,
    step: u64,
    shapes: Vec<Vec<usize>>,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    last_grad: Vec<Vec<f32>>,
    max_exp_avg_sq: Vec<Vec<f32>>,
}

/// `MARS`'s arguments, with its defaults.
pub struct MarsConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Learning rate of the AdamW steps of tensors with fewer than two axes (`optimize_1d` off).
    pub lr_1d: f64,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Decays of the AdamW steps of tensors with fewer than two axes.
    pub betas_1d: [f64; 2],
    /// Strength of the gradient correction.
    pub gamma: f64,
    /// The update of the corrected gradient.
    pub mars_type: MarsType,
    /// Apply MARS to tensors with fewer than two axes too.
    pub optimize_1d: bool,
    /// Weight decay of the MARS tensors.
    pub weight_decay: f64,
    /// Weight decay of the tensors with fewer than two axes.
    pub weight_decay_1d: f64,
    /// Decoupled decay (else an L2 term the library adds after the update is formed, so that it
    /// reaches only the stored previous gradient).
    pub weight_decouple: bool,
    /// A decoupled decay that does not scale with the learning rate.
    pub fixed_decay: bool,
    /// Divide by the running maximum of the second moment.
    pub ams_bound: bool,
    /// Mask the momentum where its sign disagrees with the gradient's.
    pub cautious: bool,
    /// Added to the denominator.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for MarsConfig {
    fn default() -> Self {
        MarsConfig {
            lr: LearningRate::Constant(3e-3),
            lr_1d: 3e-3,
            betas: [0.95, 0.99],
            betas_1d: [0.9, 0.95],
            gamma: 0.025,
            mars_type: MarsType::AdamW,
            optimize_1d: false,
            weight_decay: 0.0,
            weight_decay_1d: 1e-1,
            weight_decouple: true,
            fixed_decay: false,
            ams_bound: false,
            cautious: false,
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl Mars {
    /// The optimizer of `c`; the factor `lr_1d/lr` is taken from the initial rate, which must not
    /// be 0.
    pub fn new(c: MarsConfig) -> Result<Self> {
        let lr0 = c.lr.at(0);
        if lr0 == 0.0 {
            return Err(crate::error::invalid("po.mars: `lr` must not be 0 (the 1-D rate is lr_1d / lr of it)"));
        }
        Ok(Mars {
            lr_1d_factor: c.lr_1d / lr0,
            lr: c.lr,
            betas: c.betas,
            betas_1d: c.betas_1d,
            gamma: c.gamma,
            mars_type: c.mars_type,
            optimize_1d: c.optimize_1d,
            weight_decay: c.weight_decay,
            weight_decay_1d: c.weight_decay_1d,
            weight_decouple: c.weight_decouple,
            fixed_decay: c.fixed_decay,
            ams_bound: c.ams_bound,
            cautious: c.cautious,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            shapes: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
            last_grad: vec![],
            max_exp_avg_sq: vec![],
        })
    }
}

impl Transform for Mars {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.shapes = shapes.to_vec();
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.last_grad = zeros(shapes);
        self.max_exp_avg_sq = if self.ams_bound { zeros(shapes) } else { vec![vec![]; shapes.len()] };
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = self.lr.at(self.step);
        self.step += 1;
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            let mixed = self.optimize_1d || self.shapes[i].len() >= 2;
            let ([b1, b2], step_lr, wd) = if mixed {
                (self.betas, lr, self.weight_decay)
            } else {
                (self.betas_1d, lr * self.lr_1d_factor, self.weight_decay_1d)
            };
            if self.maximize {
                g.iter_mut().for_each(|g| *g = -*g);
            }
            let last = &mut self.last_grad[i];
            let c: Vec<f32> = if mixed {
                let k = (self.gamma * b1 / (1.0 - b1)) as f32;
                let mut c: Vec<f32> = g.iter().zip(last.iter()).map(|(&g, &l)| (g - l) * k + g).collect();
                let norm = (sum_sq(&c).sqrt() as f32).max(1.0);
                c.iter_mut().for_each(|x| *x /= norm);
                c
            } else {
                g.clone()
            };
            let m = &mut self.exp_avg[i];
            let w1 = (1.0 - b1) as f32;
            m.iter_mut().zip(&c).for_each(|(m, &c)| *m = lerp(*m, c, w1));
            let mut upd = m.clone();
            if self.cautious {
                apply_cautious(&mut upd, g);
            }
            let shape = &self.shapes[i];
            if mixed && self.mars_type == MarsType::Lion {
                upd.iter_mut().for_each(|u| *u = sign(*u));
            } else if mixed && self.mars_type == MarsType::Shampoo && shape.len() >= 2 {
                if !upd.is_empty() {
                    let (rows, cols) = (shape[0], upd.len() / shape[0]);
                    let scale = (1.0 / (1.0 - b1)) as f32;
                    upd.iter_mut().for_each(|u| *u *= scale);
                    let o =
                        newton_schulz(&upd, rows, cols, NS_COEFFICIENTS, 5, self.eps as f64, NsPrecision::TorchBf16)?;
                    let factor = (shape[0] as f64 / shape[1] as f64).max(1.0).sqrt() as f32;
                    upd.iter_mut().zip(&o).for_each(|(u, &o)| *u = round_bf16(o * factor));
                }
            } else {
                let v = &mut self.exp_avg_sq[i];
                let (b2f, c2) = (b2 as f32, (1.0 - b2) as f32);
                v.iter_mut().zip(&c).for_each(|(v, &c)| *v = *v * b2f + c2 * c * c);
                let (bc1, bc2) = (debias(b1, self.step) as f32, debias(b2, self.step).sqrt() as f32);
                let vmax = &mut self.max_exp_avg_sq[i];
                for (j, u) in upd.iter_mut().enumerate() {
                    let second = if self.ams_bound {
                        vmax[j] = vmax[j].max(v[j]);
                        vmax[j]
                    } else {
                        v[j]
                    };
                    *u /= ((second + 1e-15).sqrt() + self.eps) / bc2 * bc1;
                }
            }
            let decay = Decay { weight_decay: wd, decouple: self.weight_decouple, fixed: self.fixed_decay };
            let (keep, l2) = (decay.keep(step_lr, 1.0), decay.l2());
            let step_lr = step_lr as f32;
            for (j, gj) in g.iter_mut().enumerate() {
                let w = p[j];
                // The L2 term reaches the gradient after the update is formed: only the stored
                // previous gradient sees it.
                last[j] = if l2 != 0.0 { *gj + l2 * w } else { *gj };
                *gj = (w * keep + -step_lr * upd[j]) - w;
            }
        }
        Ok(())
    }
    state!(Mars; bufs: [exp_avg, exp_avg_sq, last_grad, max_exp_avg_sq]; counters: [step]; scalars: [lr_1d_factor]);
}

/// pytorch_optimizer `Lamb` (You et al. 2019, without the second moment's bias correction): the
/// Adam direction (plus the L2 term) scaled per tensor by the trust ratio
/// `min(‖p‖, 10)/(‖u‖ + ε)`; optionally rectified (RAdam), and with gradients pre-scaled to the
/// global norm `max_grad_norm` (`pre_norm`).
pub struct Lamb {
    lr: LearningRate,
    betas: [f64; 2],
    decay: Decay,
    rectify: bool,
    degenerated_to_sgd: bool,
    n_sma_threshold: f64,
    grad_averaging: bool,
    max_grad_norm: f64,
    adam: bool,
    pre_norm: bool,
    eps: f32,
    adam_debias: bool,
    adanorm: Option<f64>,
    maximize: bool,
    step: u64,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: Vec<Vec<f32>>,
}

/// `Lamb`'s arguments, with its defaults.
pub struct LambConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Weight decay (decoupled by default; else an L2 term added to the update).
    pub decay: Decay,
    /// RAdam's rectified step.
    pub rectify: bool,
    /// Below the SMA threshold, step along the momentum (else skip the step).
    pub degenerated_to_sgd: bool,
    /// SMA length from which the rectified step is adaptive.
    pub n_sma_threshold: f64,
    /// Weight the new gradient in the momentum by `1 − β₁` (else 1).
    pub grad_averaging: bool,
    /// The global gradient norm of `pre_norm`.
    pub max_grad_norm: f64,
    /// A trust ratio of 1 (Adam).
    pub adam: bool,
    /// Scale the gradients by `min(1, max_grad_norm/(‖g‖ + ε))` over all parameters.
    pub pre_norm: bool,
    /// Added to the denominator and to the update's norm.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for LambConfig {
    fn default() -> Self {
        LambConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.999],
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            rectify: false,
            degenerated_to_sgd: false,
            n_sma_threshold: 5.0,
            grad_averaging: true,
            max_grad_norm: 1.0,
            adam: false,
            pre_norm: false,
            eps: 1e-6,
            adam_debias: false,
            adanorm: None,
            maximize: false,
        }
    }
}

impl Lamb {
    /// The largest weight norm of the trust ratio.
    const CLAMP: f32 = 10.0;

    pub fn new(c: LambConfig) -> Self {
        Lamb {
            lr: c.lr,
            betas: c.betas,
            decay: c.decay,
            rectify: c.rectify,
            degenerated_to_sgd: c.degenerated_to_sgd,
            n_sma_threshold: c.n_sma_threshold,
            grad_averaging: c.grad_averaging,
            max_grad_norm: c.max_grad_norm,
            adam: c.adam,
            pre_norm: c.pre_norm,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            adanorm: c.adanorm,
            maximize: c.maximize,
            step: 0,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            exp_grad_adanorm: vec![],
        }
    }

    /// The trust ratio of a decayed parameter and its update, from their sums of squares.
    fn trust_ratio(&self, (w2, u2): (f64, f64)) -> f32 {
        let wn = (w2.sqrt() as f32).min(Self::CLAMP);
        let un = u2.sqrt() as f32;
        if self.adam || wn == 0.0 || un == 0.0 {
            1.0
        } else {
            wn / (un + self.eps)
        }
    }
}

/// The constants of one [`Lamb`] step, for its two passes over a tensor.
#[derive(Clone, Copy)]
struct LambStep {
    /// The global-norm factor of `pre_norm` (applied when `pre_norm`).
    grad_scale: Option<f32>,
    maximize: bool,
    b1: f32,
    /// The new gradient's weight in the first moment.
    beta3: f32,
    b2: f32,
    c2: f32,
    eps: f32,
    /// The decoupled decay's factor of the parameters.
    keep: f32,
    /// The L2 term added to the (unrectified) update.
    l2: f32,
    /// With `rectify`: whether the SMA makes the step adaptive, and the step size.
    rectified: Option<(bool, f32)>,
    /// AdaNorm's rescaling of this tensor's gradient in the first moment.
    norm_scale: AdaNormScale,
}

/// The elements of a sub-block of [`lamb_first_pass`], a multiple of the 8 lanes of its sums.
const LAMB_SUB_BLOCK: usize = 1024;

/// [`Lamb`]'s first pass over one tensor: the moments updated from the gradient `g`, and `g`
/// replaced by the direction (`m/(√v + ε)` plus the L2 term; rectified, the RAdam direction);
/// returns the sums of squares of the decayed parameters `w = keep·p` and of the vector the trust
/// ratio compares them with (the direction, or rectified, the stepped parameters
/// `w − step_size·d`). The same operations per element, and the same lanes for the sums, as
/// whole-tensor vectors: the same bits, without them.
fn lamb_first_pass(g: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], c: LambStep) -> (f64, f64) {
    #[inline(always)]
    fn body(g: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], c: LambStep) -> (f64, f64) {
        let (mut sw, mut su) = (SumSq::default(), SumSq::default());
        let (mut w, mut other) = ([0.0f32; LAMB_SUB_BLOCK], [0.0f32; LAMB_SUB_BLOCK]);
        for (((g, m), v), p) in g
            .chunks_mut(LAMB_SUB_BLOCK)
            .zip(m.chunks_mut(LAMB_SUB_BLOCK))
            .zip(v.chunks_mut(LAMB_SUB_BLOCK))
            .zip(p.chunks(LAMB_SUB_BLOCK))
        {
            let n = g.len();
            let (m, v, p, w, other) = (&mut m[..n], &mut v[..n], &p[..n], &mut w[..n], &mut other[..n]);
            for j in 0..n {
                let mut gj = g[j];
                if let Some(scale) = c.grad_scale {
                    gj *= scale;
                }
                if c.maximize {
                    gj = -gj;
                }
                m[j] = m[j] * c.b1 + c.beta3 * rescaled(gj, c.norm_scale);
                v[j] = v[j] * c.b2 + c.c2 * gj * gj;
                w[j] = p[j] * c.keep;
                match c.rectified {
                    None => {
                        let u = m[j] * (1.0 / (v[j].sqrt() + c.eps));
                        g[j] = if c.l2 != 0.0 { u + c.l2 * w[j] } else { u };
                    }
                    Some((adaptive, step_size)) => {
                        let d = if adaptive { m[j] / (v[j].sqrt() + c.eps) } else { m[j] };
                        g[j] = d;
                        other[j] = w[j] + -step_size * d;
                    }
                }
            }
            sw.add(w);
            su.add(if c.rectified.is_some() { other } else { g });
        }
        (sw.total(), su.total())
    }
    crate::kernel::dispatch_simd!(body(g: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], c: LambStep) -> (f64, f64))
}

/// [`lamb_first_pass`] of a large tensor in fixed chunks of [`crate::kernel::CHUNK`] across
/// threads, the chunks' sums added in order (the same value on any number of threads); a tensor
/// under [`crate::kernel::PARALLEL_MIN`] in one piece, as before.
fn lamb_first_pass_chunked(g: &mut [f32], m: &mut [f32], v: &mut [f32], p: &[f32], c: LambStep) -> (f64, f64) {
    use crate::kernel::{chunked_sums_mut, SendPtr, PARALLEL_MIN};
    if g.len() < PARALLEL_MIN {
        return lamb_first_pass(g, m, v, p, c);
    }
    let (m, v) = (SendPtr::new(m), SendPtr::new(v));
    chunked_sums_mut(g, |off, g| {
        let n = g.len();
        // SAFETY: the chunks are disjoint ranges of the tensor, and so of its moments.
        let (m, v) = unsafe { (m.slice(off, n), v.slice(off, n)) };
        lamb_first_pass(g, m, v, &p[off..off + n], c)
    })
}

/// [`Lamb`]'s second pass: the direction `d` (in `g`) becomes the update `(keep·p + s·d) − p`,
/// or without a step (`s` is `None`), `keep·p − p`.
fn lamb_second_pass(g: &mut [f32], p: &[f32], keep: f32, s: Option<f32>) {
    #[inline(always)]
    fn body(g: &mut [f32], p: &[f32], keep: f32, s: Option<f32>) {
        let p = &p[..g.len()];
        match s {
            Some(s) => g.iter_mut().zip(p).for_each(|(d, &x)| *d = (x * keep + s * *d) - x),
            None => g.iter_mut().zip(p).for_each(|(d, &x)| *d = x * keep - x),
        }
    }
    crate::kernel::dispatch_simd!(body(g: &mut [f32], p: &[f32], keep: f32, s: Option<f32>))
}

impl Transform for Lamb {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.exp_grad_adanorm = per_tensor(shapes, self.adanorm.is_some());
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let grad_scale = if self.pre_norm && self.max_grad_norm != 0.0 {
            let views: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
            let norm = crate::kernel::global_sum_sq(&views).sqrt() as f32 + self.eps;
            (self.max_grad_norm as f32 / norm).min(1.0)
        } else {
            1.0
        };
        let beta3 = if self.grad_averaging { (1.0 - b1) as f32 } else { 1.0 };
        let (step_size, n_sma) = if self.rectify {
            rectify(self.step, lr, b2, self.n_sma_threshold, self.degenerated_to_sgd)
        } else {
            (lr, 0.0)
        };
        let step_size = adam_debias(self.adam_debias, step_size, debias(b1, self.step));
        let keep = self.decay.keep(lr, 1.0);
        let step = LambStep {
            grad_scale: self.pre_norm.then_some(grad_scale),
            maximize: self.maximize,
            b1: b1 as f32,
            beta3,
            b2: b2 as f32,
            c2: (1.0 - b2) as f32,
            eps: self.eps,
            keep,
            l2: self.decay.l2(),
            rectified: self.rectify.then_some((n_sma >= self.n_sma_threshold, step_size as f32)),
            norm_scale: NO_RESCALE,
        };
        for (i, (g, p)) in updates.iter_mut().zip(params).enumerate() {
            let mut step = step;
            if let Some(r) = self.adanorm {
                // The norm of the gradient as the moments read it (after `pre_norm`'s factor).
                let scale = step.grad_scale.unwrap_or(1.0);
                step.norm_scale = adanorm_step(&mut self.exp_grad_adanorm[i][0], r, g.len(), |j| g[j] * scale);
            }
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            let sums = lamb_first_pass_chunked(g, m, v, p, step);
            let s = if !self.rectify {
                Some(-(step_size as f32) * self.trust_ratio(sums))
            } else if step_size <= 0.0 {
                // No step: the parameters are only decayed.
                None
            } else {
                // The library's trust ratio here compares ‖p‖ with the norm of the stepped parameter.
                Some(-(step_size as f32 * self.trust_ratio(sums)))
            };
            crate::kernel::for_chunks(g, |off, chunk| lamb_second_pass(chunk, &p[off..off + chunk.len()], keep, s));
        }
        Ok(())
    }
    state!(Lamb; bufs: [exp_avg, exp_avg_sq, exp_grad_adanorm]; counters: [step]; scalars: []);
}
