//! What the Adam-like optimizers of pytorch_optimizer share: its `BaseOptimizer` helpers
//! (`apply_weight_decay`, `debias`, `debias_beta`, `get_rectify_step_size`, `apply_ams_bound`,
//! `apply_cautious`), torch's `lerp`, and the checks and argument parsing of their constructors.

use serde_json::Value;

use crate::error::{invalid, Result};
use crate::kernel::{CHUNK, PARALLEL_MIN};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

/// The gradient as an update rule reads it: negated to maximize, plus the L2 term
/// (`apply_weight_decay` without `weight_decouple`). The steps and the reductions their
/// `prepare` reads before them compute it here, so that both see the same values.
#[inline(always)]
pub(crate) fn grad_in(g: f32, w: f32, maximize: bool, l2: f32) -> f32 {
    let g = if maximize { -g } else { g };
    if l2 != 0.0 {
        g + l2 * w
    } else {
        g
    }
}

/// `torch.lerp` with a scalar weight, `start + w·(end − start)`, computed from the nearer end as
/// torch does.
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// `BaseOptimizer.debias`: `1 − βᵗ`.
pub(crate) fn debias(beta: f64, step: u64) -> f64 {
    1.0 - beta.powf(step as f64)
}

/// `BaseOptimizer.debias_beta`: the decay of a bias-corrected moving average,
/// `β(1 − βᵗ⁻¹)/(1 − βᵗ)`.
pub(crate) fn debias_beta(beta: f64, step: u64) -> f64 {
    let beta_n = beta.powf(step as f64);
    (beta_n - beta) / (beta_n - 1.0)
}

/// `BaseOptimizer.get_rectify_step_size` (RAdam, Liu et al. 2020): the step size `lr·rₜ` and the
/// length `ρₜ` of the approximated simple moving average. Below `n_sma_threshold`, `rₜ` is 1 when
/// the method degenerates to SGD, else −1 (the callers then skip the step or, for Ranger, take it
/// with that sign).
pub(crate) fn rectify(step: u64, lr: f64, beta2: f64, threshold: f64, degenerated_to_sgd: bool) -> (f64, f64) {
    let n_sma_max = 2.0 / (1.0 - beta2) - 1.0;
    let beta2_t = beta2.powf(step as f64);
    let n_sma = n_sma_max - 2.0 * step as f64 * beta2_t / (1.0 - beta2_t);
    let rt = if n_sma >= threshold {
        ((1.0 - beta2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma * n_sma_max / (n_sma_max - 2.0))
            .sqrt()
    } else if degenerated_to_sgd {
        1.0
    } else {
        -1.0
    };
    (lr * rt, n_sma)
}

/// `BaseOptimizer.apply_adam_debias`: AdamD (only the denominator corrected) keeps the step size,
/// else it is divided by the first moment's bias correction.
pub(crate) fn adam_debias(adam_debias: bool, step_size: f64, bias_correction1: f64) -> f64 {
    if adam_debias {
        step_size
    } else {
        step_size / bias_correction1
    }
}

/// `BaseOptimizer.apply_cautious` on a whole tensor (Liang et al. 2024): the entries of `update`
/// whose sign disagrees with the gradient's are zeroed, the others scaled by
/// `numel / (agreeing + 1)`.
pub(crate) fn apply_cautious(update: &mut [f32], grad: &[f32]) {
    let agree = update.iter().zip(grad).filter(|(u, g)| *u * *g > 0.0).count();
    let scale = cautious_scale(agree, update.len());
    for (u, g) in update.iter_mut().zip(grad) {
        *u = cautious(*u, *g, scale);
    }
}

/// The factor of the agreeing entries in [`apply_cautious`], `numel / (agreeing + 1)`, in float32
/// as torch divides the tensor's element count by the mask's sum plus one.
pub(crate) fn cautious_scale(agree: usize, numel: usize) -> f32 {
    numel as f32 / (agree as f32 + 1.0)
}

/// One entry of a cautious update: scaled by `scale` where it agrees in sign with the gradient,
/// 0 elsewhere.
#[inline(always)]
pub(crate) fn cautious(update: f32, grad: f32, scale: f32) -> f32 {
    update * if update * grad > 0.0 { scale } else { 0.0 }
}

/// pytorch_optimizer's AdaNorm (`adanorm`, `adanorm_r`; Kim et al. 2023) for one tensor:
/// `e ← r·e + (1 − r)·‖g‖`, and how the first moment's gradient is rescaled, `g·e/‖g‖` where
/// `e > ‖g‖` (the gradient's norm below its running average), else `g`: `[e, ‖g‖]` or `[1, 1]`
/// for [`rescaled`]. `e` is the tensor's `exp_grad_adanorm`, 0 before its first step.
pub(crate) fn adanorm_scale(e: &mut f32, norm: f32, r: f64) -> AdaNormScale {
    *e = *e * r as f32 + (1.0 - r) as f32 * norm;
    if norm > 0.0 && *e > norm {
        [*e, norm]
    } else {
        NO_RESCALE
    }
}

/// AdaNorm's rescaling of a tensor's gradient this step, `[numerator, divisor]` ([`adanorm_scale`]).
pub(crate) type AdaNormScale = [f32; 2];

/// No rescaling: `g·1/1` is `g` exactly.
pub(crate) const NO_RESCALE: AdaNormScale = [1.0, 1.0];

/// `g·e/‖g‖` in the library's order (`grad.mul(e).div_(norm)`: two roundings), `g` itself under
/// [`NO_RESCALE`].
#[inline(always)]
pub(crate) fn rescaled(g: f32, [e, norm]: AdaNormScale) -> f32 {
    g * e / norm
}

/// StableAdamW's divisor of one tensor's update (pytorch_optimizer's `get_stable_adamw_rms`):
/// `max(1, √mean(g²/max(v, 1e-16)))`, from `Σ g²/max(v, 1e-16)` over its `n` entries.
pub(crate) fn stable_adamw_rms(sum: f64, n: usize) -> f32 {
    if n == 0 {
        return 1.0;
    }
    ((sum / n as f64).sqrt() as f32).max(1.0)
}

/// The `adanorm`/`adanorm_r` arguments: AdaNorm's `r` when on (the library's default 0.95).
pub(crate) fn adanorm_arg(a: &mut Args) -> Result<Option<f64>> {
    let on = a.bool("adanorm", false)?;
    if !on && a.k.present("adanorm_r")?.is_some() {
        return Err(a.err("adanorm_r", "is read only with adanorm = true; refused rather than ignored"));
    }
    let r = a.k.f64("adanorm_r", 0.95)?;
    Ok(on.then_some(r))
}

/// How `BaseOptimizer.apply_weight_decay` decays the parameters: decoupled (`p ← p(1 − λ·lr·ratio)`,
/// `λ·ratio` with `fixed_decay`) or as an L2 term added to the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decay {
    /// λ (`weight_decay`).
    pub weight_decay: f64,
    /// `weight_decouple`: decay the parameters instead of adding `λp` to the gradient.
    pub decouple: bool,
    /// `fixed_decay`: a decoupled decay that does not scale with the learning rate.
    pub fixed: bool,
}

impl Decay {
    /// The factor the parameters are multiplied by before the step (1 without decoupled decay).
    pub(crate) fn keep(&self, lr: f64, ratio: f64) -> f32 {
        if self.weight_decay == 0.0 || !self.decouple {
            return 1.0;
        }
        (1.0 - self.weight_decay * if self.fixed { 1.0 } else { lr } * ratio) as f32
    }
    /// The coefficient of the L2 term added to the gradient (0 with decoupled decay).
    pub(crate) fn l2(&self) -> f32 {
        if self.weight_decay > 0.0 && !self.decouple {
            self.weight_decay as f32
        } else {
            0.0
        }
    }
}

/// Constructor checks and argument parsing, with the library's argument names.
pub(crate) struct Args<'a> {
    pub k: Kwargs<'a>,
    pub ctx: String,
}

impl<'a> Args<'a> {
    pub fn new(name: &str, hparams: &'a Value) -> Result<Self> {
        let ctx = format!("po.{name}");
        Ok(Args { k: Kwargs::new(ctx.clone(), hparams)?, ctx })
    }

    fn err(&self, field: &str, msg: impl std::fmt::Display) -> crate::Error {
        invalid(format!("{}: `{field}` {msg}", self.ctx))
    }

    /// `lr`, a live rate, refused when negative (`validate_learning_rate`).
    pub fn lr(&mut self, default: f64) -> Result<LearningRate> {
        self.lr_named("lr", default)
    }

    /// A learning rate under another name (`lr_1d`).
    pub fn lr_named(&mut self, key: &'static str, default: f64) -> Result<LearningRate> {
        let lr = self.k.lr(key, Some(default))?;
        if let Some(x) = lr.constant() {
            if x < 0.0 {
                return Err(self.err(key, format!("is a negative learning rate: {x}")));
            }
        }
        Ok(lr)
    }

    /// A number with a default.
    pub fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        self.k.f64(key, default)
    }

    /// A number refused when negative (`validate_non_negative`).
    pub fn non_negative(&mut self, key: &'static str, default: f64) -> Result<f64> {
        let x = self.k.f64(key, default)?;
        if x < 0.0 {
            return Err(self.err(key, format!("must be non-negative, got {x}")));
        }
        Ok(x)
    }

    /// A number refused unless positive (`validate_positive`).
    pub fn positive(&mut self, key: &'static str, default: f64) -> Result<f64> {
        let x = self.k.f64(key, default)?;
        if x <= 0.0 {
            return Err(self.err(key, format!("must be positive, got {x}")));
        }
        Ok(x)
    }

    /// A number in `[lo, hi]` (`closed`) or `[lo, hi)`.
    pub fn in_range(&mut self, key: &'static str, default: f64, lo: f64, hi: f64, closed: bool) -> Result<f64> {
        let x = self.k.f64(key, default)?;
        if !(lo <= x && (x < hi || closed && x == hi)) {
            let close = if closed { ']' } else { ')' };
            return Err(self.err(key, format!("must be in the range [{lo}, {hi}{close}, got {x}")));
        }
        Ok(x)
    }

    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        self.k.bool(key, default)
    }

    /// A count (an integral number).
    pub fn u64(&mut self, key: &'static str, default: u64) -> Result<u64> {
        self.k.u64(key, default)
    }

    /// An SMA-length threshold (`n_sma_threshold`; the library compares it with a float).
    /// `n_sma_threshold` (what it lets a rectifying step do is checked on the arguments each
    /// group steps with: `po::check_step_arguments`).
    pub fn threshold(&mut self, key: &'static str, default: f64) -> Result<f64> {
        self.k.f64(key, default)
    }

    /// `betas` with `n` entries, each in `[0, 1)` (`validate_betas`; the third in `[0, 1]`).
    pub fn betas<const N: usize>(&mut self, default: [f64; N]) -> Result<[f64; N]> {
        let Some(v) = self.k.f64s("betas")? else { return Ok(default) };
        let b: [f64; N] =
            v.clone().try_into().map_err(|_| self.err("betas", format!("expects {N} numbers, got {}", v.len())))?;
        self.check_betas("betas", &b)?;
        Ok(b)
    }

    /// A pair of betas under another name (`betas_1d`).
    pub fn betas_named(&mut self, key: &'static str, default: [f64; 2]) -> Result<[f64; 2]> {
        let Some(v) = self.k.f64s(key)? else { return Ok(default) };
        let b: [f64; 2] =
            v.clone().try_into().map_err(|_| self.err(key, format!("expects 2 numbers, got {}", v.len())))?;
        self.check_betas(key, &b)?;
        Ok(b)
    }

    pub fn check_betas(&self, key: &str, b: &[f64]) -> Result<()> {
        for (i, &x) in b.iter().enumerate() {
            let ok = if i == 2 { (0.0..=1.0).contains(&x) } else { (0.0..1.0).contains(&x) };
            if !ok {
                let range = if i == 2 { "[0, 1]" } else { "[0, 1)" };
                return Err(self.err(key, format!("beta{} must be in the range {range}, got {x}", i + 1)));
            }
        }
        Ok(())
    }

    /// `weight_decay`, `weight_decouple` and `fixed_decay`.
    pub fn decay(&mut self, weight_decay: f64, decouple: bool) -> Result<Decay> {
        let weight_decay = self.non_negative("weight_decay", weight_decay)?;
        let decouple = self.bool("weight_decouple", decouple)?;
        let fixed = self.bool("fixed_decay", false)?;
        Ok(Decay { weight_decay, decouple, fixed })
    }

    /// `maximize`, and `foreach` (which chooses torch kernels, not the numbers).
    pub fn maximize(&mut self) -> Result<bool> {
        let _ = self.k.opt_bool("foreach")?;
        self.bool("maximize", false)
    }

    /// Fails on any argument that was never read ([`crate::po::finish`]).
    pub fn finish(self) -> Result<()> {
        crate::po::finish(self.k)
    }
}

/// `Σ part(range)` over `0..n` in fixed chunks of [`CHUNK`] entries, summed in order (across
/// threads from [`PARALLEL_MIN`] entries): the same value whatever the number of threads. The
/// per-tensor reductions of `prepare` (norms, counts, RMS) go through it.
pub(crate) fn tensor_sum(n: usize, part: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    let range = |c: usize| c * CHUNK..((c + 1) * CHUNK).min(n);
    let chunks = n.div_ceil(CHUNK);
    if n >= PARALLEL_MIN {
        let parts: Vec<f64> = (0..chunks).into_par_iter().map(|c| part(range(c))).collect();
        parts.iter().sum()
    } else {
        (0..chunks).map(|c| part(range(c))).sum()
    }
}

/// One zero per tensor (a running scalar such as AdaNorm's norm, kept with the state), or
/// nothing when `on` is false.
pub(crate) fn per_tensor(shapes: &[Vec<usize>], on: bool) -> Vec<Vec<f32>> {
    if on {
        vec![vec![0.0f32]; shapes.len()]
    } else {
        vec![]
    }
}

/// AdaNorm's step ([`adanorm_scale`]) for a tensor whose gradient as the rule reads it has the `n`
/// entries `grad(j)`: its norm updates the tensor's running norm `e`; how its gradient is
/// rescaled in the first moment.
pub(crate) fn adanorm_step(e: &mut f32, r: f64, n: usize, grad: impl Fn(usize) -> f32 + Sync) -> AdaNormScale {
    let sum = tensor_sum(n, |range| range.map(|j| (grad(j) as f64).powi(2)).sum());
    adanorm_scale(e, sum.sqrt() as f32, r)
}

/// [`adanorm_step`] for every tensor of a fused step whose gradient is [`grad_in`] of its input:
/// each tensor's running norm in `norms` updated, its rescaling into `scales`.
pub(crate) fn adanorm_steps(
    norms: &mut crate::transforms::ParamBufs,
    scales: &mut [AdaNormScale],
    r: f64,
    (inputs, params): (&[&[f32]], &[&[f32]]),
    (maximize, l2): (bool, f32),
) {
    norms.with_buffers(|e| {
        for (i, (g, w)) in inputs.iter().zip(params).enumerate() {
            scales[i] = adanorm_step(&mut e[i][0], r, g.len(), |j| grad_in(g[j], w[j], maximize, l2));
        }
    });
}

/// The cautious factor ([`cautious_scale`]) of a tensor of `n` entries whose update and
/// gradient at `j` are `pair(j)`, computed as the step will compute them.
pub(crate) fn cautious_step(n: usize, pair: impl Fn(usize) -> (f32, f32) + Sync) -> f32 {
    let agree = tensor_sum(n, |range| {
        range
            .filter(|&j| {
                let (u, g) = pair(j);
                u * g > 0.0
            })
            .count() as f64
    });
    cautious_scale(agree as usize, n)
}

/// Gradient centralization inside a fused step (pytorch_optimizer's `centralize_gradient`, for
/// optimizers that centralize after scaling the gradient or keep the raw one too): the mean of
/// each slice of a tensor along its first axis, read in `prepare` and subtracted entry by entry
/// ([`RowMeans::cursor`]).
#[derive(Default)]
pub(crate) struct RowMeans {
    /// Entries per slice of each centralized tensor (0: not centralized).
    len: Vec<usize>,
    /// This step's mean of each slice of each centralized tensor.
    means: Vec<Vec<f32>>,
}

impl RowMeans {
    /// For tensors of these shapes: with `on`, those of rank above 1 (above 3 with `conv_only`,
    /// the library's `gc_conv_only`) are centralized.
    pub(crate) fn new(shapes: &[Vec<usize>], on: bool, conv_only: bool) -> Self {
        let threshold = if conv_only { 3 } else { 1 };
        let len = shapes
            .iter()
            .map(|sh| {
                let n = crate::transform::numel(sh);
                if on && sh.len() > threshold && n > 0 {
                    n / sh[0]
                } else {
                    0
                }
            })
            .collect();
        RowMeans { len, means: vec![vec![]; shapes.len()] }
    }
    /// Whether any tensor is centralized.
    pub(crate) fn active(&self) -> bool {
        self.len.iter().any(|&l| l > 0)
    }
    /// Reads this step's slice means of the gradients, each scaled by `scale` first (Adan
    /// centralizes its gradient after its clipping factor; 1 leaves them as they are).
    pub(crate) fn read(&mut self, inputs: &[&[f32]], scale: f32) {
        use rayon::prelude::*;
        for ((means, &len), g) in self.means.iter_mut().zip(&self.len).zip(inputs) {
            means.clear();
            let mean = |row: &[f32]| crate::transforms::slice_mean(row, scale);
            if len > 0 && g.len() >= PARALLEL_MIN {
                means.par_extend(g.par_chunks(len).map(mean));
            } else if len > 0 {
                means.extend(g.chunks(len).map(mean));
            }
        }
    }
    /// The mean of the slice of entry `j` of tensor `i` (0 for a tensor not centralized).
    #[inline(always)]
    pub(crate) fn mean_at(&self, i: usize, j: usize) -> f32 {
        match self.len[i] {
            0 => 0.0,
            len => self.means[i][j / len],
        }
    }
    /// The means to subtract from entries `off, off + 1, …` of tensor `i`, in turn (0 for a tensor
    /// not centralized).
    pub(crate) fn cursor(&self, i: usize, off: usize) -> RowCursor<'_> {
        let len = self.len[i];
        RowCursor {
            means: &self.means[i],
            len,
            row: off.checked_div(len).unwrap_or(0),
            pos: off.checked_rem(len).unwrap_or(0),
        }
    }
}

/// The slice means of one tensor from an offset on ([`RowMeans::cursor`]).
pub(crate) struct RowCursor<'a> {
    means: &'a [f32],
    len: usize,
    row: usize,
    pos: usize,
}

impl RowCursor<'_> {
    /// The mean of the next entry's slice (0 when the tensor is not centralized).
    #[inline(always)]
    pub(crate) fn next_mean(&mut self) -> f32 {
        if self.len == 0 {
            return 0.0;
        }
        let m = self.means[self.row];
        self.pos += 1;
        if self.pos == self.len {
            (self.row, self.pos) = (self.row + 1, 0);
        }
        m
    }
}
