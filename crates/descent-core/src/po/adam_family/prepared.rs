//! Elementwise rules that first read a per-tensor reduction of the gradient
//! ([`Elementwise::prepare`]), then run as one fused pass: Ranger (gradient centralization) and
//! StableAdamW (update clipping by the RMS of `g/√v`).

use super::common::{
    adam_debias, adanorm_step, debias, debias_beta, grad_in, lerp, per_tensor, rectify, rescaled, AdaNormScale, Decay,
    RowMeans, NO_RESCALE,
};
use rayon::prelude::*;

use crate::kernel::{Elementwise, CHUNK, PARALLEL_MIN};
use crate::learning_rate::LearningRate;
use crate::transforms::{elementwise_transform, simd_apply, zeros, ParamBufs};

/// pytorch_optimizer `Ranger` (Wright 2019): RAdam (Liu et al. 2020) with Lookahead (Zhang et al.
/// 2019) and gradient centralization (Yong et al. 2020). The gradient loses the mean of each slice
/// along its first axis; RAdam steps (below the SMA threshold, `p ← p − lr·rₜ/(1−β₁ᵗ)·m` with the
/// library's `rₜ = −1` unless `degenerated_to_sgd`); every `k` steps the slow weights move
/// `alpha` of the way to the parameters, which are then reset to them.
pub struct Ranger {
    lr: LearningRate,
    betas: [f64; 2],
    alpha: f64,
    k: u64,
    n_sma_threshold: f64,
    degenerated_to_sgd: bool,
    decay: Decay,
    use_gc: bool,
    gc_conv_only: bool,
    eps: f32,
    adam_debias: bool,
    adanorm: Option<f64>,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    slow_buffer: ParamBufs,
    /// AdaNorm's running gradient norm of each tensor (empty without AdaNorm).
    exp_grad_adanorm: ParamBufs,
    /// This step's AdaNorm factor of each tensor's gradient in the first moment.
    norm_scales: Vec<AdaNormScale>,
    /// Gradient centralization.
    rows: RowMeans,
    /// This step's `[keep, l2, step_size]`.
    c: [f32; 3],
    adaptive: bool,
    lookahead: bool,
}

/// `Ranger`'s arguments, with its defaults.
pub struct RangerConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Lookahead's step from the slow weights towards the fast ones.
    pub alpha: f64,
    /// Steps between Lookahead's synchronizations.
    pub k: u64,
    /// SMA length from which the rectified step is adaptive.
    pub n_sma_threshold: f64,
    /// Below the threshold, step along the momentum (else the library's `rₜ = −1`).
    pub degenerated_to_sgd: bool,
    /// Weight decay (decoupled by default).
    pub decay: Decay,
    /// Centralize the gradients of tensors with more than one axis.
    pub use_gc: bool,
    /// Centralize only tensors with more than three axes (convolutions).
    pub gc_conv_only: bool,
    /// Added to the denominator.
    pub eps: f64,
    /// AdamD: no bias correction of the step size.
    pub adam_debias: bool,
    /// AdaNorm's `r` (`adanorm_r`) when `adanorm` is on: the first moment takes the gradient
    /// rescaled when its norm falls below its running average.
    pub adanorm: Option<f64>,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for RangerConfig {
    fn default() -> Self {
        RangerConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.95, 0.999],
            alpha: 0.5,
            k: 6,
            n_sma_threshold: 5.0,
            degenerated_to_sgd: false,
            decay: Decay { weight_decay: 0.0, decouple: true, fixed: false },
            use_gc: true,
            gc_conv_only: false,
            eps: 1e-5,
            adam_debias: false,
            adanorm: None,
            maximize: false,
        }
    }
}

impl Ranger {
    pub fn new(c: RangerConfig) -> Self {
        Ranger {
            lr: c.lr,
            betas: c.betas,
            alpha: c.alpha,
            k: c.k.max(1),
            n_sma_threshold: c.n_sma_threshold,
            degenerated_to_sgd: c.degenerated_to_sgd,
            decay: c.decay,
            use_gc: c.use_gc,
            gc_conv_only: c.gc_conv_only,
            eps: c.eps as f32,
            adam_debias: c.adam_debias,
            adanorm: c.adanorm,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            slow_buffer: ParamBufs::default(),
            exp_grad_adanorm: ParamBufs::default(),
            norm_scales: vec![],
            rows: RowMeans::default(),
            c: [0.0; 3],
            adaptive: false,
            lookahead: false,
        }
    }
}
elementwise_transform!(Ranger, |s, shapes, params| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.slow_buffer = params.iter().map(|p| p.to_vec()).collect::<Vec<_>>().into();
    s.exp_grad_adanorm = per_tensor(shapes, s.adanorm.is_some()).into();
    s.norm_scales = vec![NO_RESCALE; shapes.len()];
    s.rows = RowMeans::new(shapes, s.use_gc, s.gc_conv_only);
}; bufs: [exp_avg, exp_avg_sq, slow_buffer, exp_grad_adanorm]; counters: [step]; scalars: []);
impl Elementwise for Ranger {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        self.rows.active() || self.adanorm.is_some()
    }
    /// The slice means of the gradients (centralization), then AdaNorm's norms of the gradients
    /// as the step reads them (centralized, with the L2 term).
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        self.rows.read(inputs, 1.0);
        let Some(r) = self.adanorm else { return };
        let (maximize, l2, rows) = (self.maximize, self.decay.l2(), &self.rows);
        let scales = &mut self.norm_scales;
        self.exp_grad_adanorm.with_buffers(|e| {
            for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
                scales[i] =
                    adanorm_step(&mut e[i][0], r, g.len(), |j| grad_in(g[j] - rows.mean_at(i, j), w[j], maximize, l2));
            }
        });
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let [b1, b2] = self.betas;
        let (step_size, n_sma) = rectify(self.step, lr, b2, self.n_sma_threshold, self.degenerated_to_sgd);
        let step_size = adam_debias(self.adam_debias, step_size, debias(b1, self.step));
        self.adaptive = n_sma >= self.n_sma_threshold;
        self.lookahead = self.step.is_multiple_of(self.k);
        self.c = [self.decay.keep(lr, 1.0), self.decay.l2(), step_size as f32];
    }
    simd_apply!(Ranger, |this, i, off, u, p| {
        let n = u.len();
        let [keep, l2, step_size] = this.c;
        let (w1, b2, eps) = ((1.0 - this.betas[0]) as f32, this.betas[1] as f32, this.eps);
        let c2 = (1.0 - this.betas[1]) as f32;
        let alpha = this.alpha as f32;
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        let slow = this.slow_buffer.slice(i, off, n);
        let mut rows = this.rows.cursor(i, off);
        let norm_scale = this.norm_scales[i];
        for j in 0..n {
            let w = p[j];
            let g = grad_in(u[j] - rows.next_mean(), w, this.maximize, l2);
            m[j] = lerp(m[j], rescaled(g, norm_scale), w1);
            v[j] = v[j] * b2 + c2 * g * g;
            let stepped = w * keep;
            let mut new = if this.adaptive {
                stepped + -step_size * m[j] / (v[j].sqrt() + eps)
            } else {
                stepped + -step_size * m[j]
            };
            if this.lookahead {
                slow[j] = lerp(slow[j], new, alpha);
                new = slow[j];
            }
            u[j] = new - w;
        }
    });
}

/// pytorch_optimizer `StableAdamW` (Wortsman et al. 2023): AdamW with bias-corrected decays
/// (`β̂ₜ = β(1−βᵗ⁻¹)/(1−βᵗ)`, so no separate bias correction) whose learning rate is divided, per
/// tensor, by `max(1, RMS(g/√v))` (AdaFactor's update clipping), the decay scaled alike.
pub struct StableAdamW {
    lr: LearningRate,
    betas: [f64; 2],
    weight_decay: f64,
    weight_decouple: bool,
    eps: f32,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    /// This step's `−lr/max(1, RMS)` of each tensor.
    step_sizes: Vec<f32>,
    /// This step's `[1 − β̂₁, β̂₂, 1 − β̂₂]`.
    c: [f32; 3],
}

/// `StableAdamW`'s arguments, with its defaults.
pub struct StableAdamWConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: [f64; 2],
    /// Weight decay λ.
    pub weight_decay: f64,
    /// Decoupled decay `p(1 − λ·lr/RMS)` instead of an L2 term in the gradient.
    pub weight_decouple: bool,
    /// Added to the denominator (its square floors the second moment in the RMS).
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for StableAdamWConfig {
    fn default() -> Self {
        StableAdamWConfig {
            lr: LearningRate::Constant(1e-3),
            betas: [0.9, 0.99],
            weight_decay: 1e-2,
            weight_decouple: true,
            eps: 1e-8,
            maximize: false,
        }
    }
}

impl StableAdamW {
    pub fn new(c: StableAdamWConfig) -> Self {
        StableAdamW {
            lr: c.lr,
            betas: c.betas,
            weight_decay: c.weight_decay,
            weight_decouple: c.weight_decouple,
            eps: c.eps as f32,
            maximize: c.maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            step_sizes: vec![],
            c: [0.0; 3],
        }
    }

    /// `1 − β̂₁`, `β̂₂` and `1 − β̂₂` of step `t`.
    fn decays(&self, t: u64) -> [f32; 3] {
        let b2 = debias_beta(self.betas[1], t);
        [(1.0 - debias_beta(self.betas[0], t)) as f32, b2 as f32, (1.0 - b2) as f32]
    }

    /// The L2 coefficient added to the gradient (coupled decay only).
    fn l2(&self) -> f32 {
        if self.weight_decouple {
            0.0
        } else {
            self.weight_decay as f32
        }
    }
}
elementwise_transform!(StableAdamW, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.step_sizes = vec![0.0; shapes.len()];
}; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);
impl Elementwise for StableAdamW {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn needs_prepare(&self) -> bool {
        true
    }
    /// The RMS of `g/√max(v, ε²)` of each tensor, with `v` as this step will leave it.
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let [_, b2, c2] = self.decays(self.step + 1);
        let lr = self.lr.at(self.step) as f32;
        let (l2, floor) = (self.l2(), self.eps * self.eps);
        let maximize = self.maximize;
        // Σ x²/max(v', ε²) over one range, x the gradient as the step reads it and v' the
        // second moment as the step leaves it.
        let part = |g: &[f32], w: &[f32], v: &[f32]| -> f64 {
            let mut sum = 0.0f64;
            for j in 0..g.len() {
                let mut x = if maximize { -g[j] } else { g[j] };
                if l2 != 0.0 {
                    x += l2 * w[j];
                }
                let vn = v[j] * b2 + c2 * x * x;
                sum += (x * x / vn.max(floor)) as f64;
            }
            sum
        };
        let vs = self.exp_avg_sq.buffers();
        for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
            let v = &vs[i][..];
            // Fixed chunks summed in order: the same value whatever the number of threads.
            let sum: f64 = if g.len() >= PARALLEL_MIN {
                let parts: Vec<f64> = g
                    .par_chunks(CHUNK)
                    .zip(w.par_chunks(CHUNK))
                    .zip(v.par_chunks(CHUNK))
                    .map(|((g, w), v)| part(g, w, v))
                    .collect();
                parts.iter().sum()
            } else {
                g.chunks(CHUNK).zip(w.chunks(CHUNK)).zip(v.chunks(CHUNK)).map(|((g, w), v)| part(g, w, v)).sum()
            };
            let rms = if g.is_empty() { 1.0 } else { ((sum / g.len() as f64).sqrt() as f32).max(1.0) };
            self.step_sizes[i] = -lr / rms;
        }
    }
    fn begin_step(&mut self) {
        self.step += 1;
        self.c = self.decays(self.step);
    }
    simd_apply!(StableAdamW, |this, i, off, u, p| {
        let n = u.len();
        let [w1, b2, c2] = this.c;
        let s = this.step_sizes[i];
        let keep =
            if this.weight_decay != 0.0 && this.weight_decouple { 1.0 + this.weight_decay as f32 * s } else { 1.0 };
        let l2 = this.l2();
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        for j in 0..n {
            let w = p[j];
            let mut g = if this.maximize { -u[j] } else { u[j] };
            if l2 != 0.0 {
                g += l2 * w;
            }
            m[j] = lerp(m[j], g, w1);
            v[j] = v[j] * b2 + c2 * g * g;
            let den = (v[j].sqrt() + this.eps) / s;
            u[j] = (w * keep + m[j] / den) - w;
        }
    });
}
