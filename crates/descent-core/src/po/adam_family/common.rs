//! What the Adam-like optimizers of pytorch_optimizer share: its `BaseOptimizer` helpers
//! (`apply_weight_decay`, `debias`, `debias_beta`, `get_rectify_step_size`, `apply_ams_bound`,
//! `apply_cautious`), torch's `lerp`, and the checks and argument parsing of their constructors.

use serde_json::Value;

use crate::error::{invalid, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

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
    let scale = (update.len() as f64 / (agree as f64 + 1.0)) as f32;
    for (u, g) in update.iter_mut().zip(grad) {
        *u *= if *u * *g > 0.0 { scale } else { 0.0 };
    }
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
