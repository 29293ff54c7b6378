//! What the optimizers of this family share: pytorch_optimizer's weight decay, its argument checks
//! (with its wording), torch's `lerp`, and the parsing of the arguments every one of them takes.

use crate::error::{ensure, invalid, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

/// `torch.lerp(start, end, w)` on scalars: `start + w·(end − start)`, computed from the nearer end
/// as torch does (`end − (end − start)·(1 − w)` for `|w| ≥ ½`).
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// pytorch_optimizer's `apply_weight_decay`: decoupled (`p ← p·(1 − λ·lr·ratio)`, or
/// `p ← p·(1 − λ·ratio)` with `fixed_decay`) or an L2 penalty added to the gradient (`g ← g + λp`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoWeightDecay {
    /// λ (`weight_decay`).
    pub weight_decay: f64,
    /// Decay the parameters instead of adding `λp` to the gradient (`weight_decouple`).
    pub decouple: bool,
    /// With `decouple`: the decay does not scale with the learning rate (`fixed_decay`).
    pub fixed: bool,
}

impl PoWeightDecay {
    /// No weight decay.
    pub const NONE: PoWeightDecay = PoWeightDecay { weight_decay: 0.0, decouple: false, fixed: false };

    /// `(factor, l2)` for a step at learning rate `lr`: the parameters are multiplied by `factor`
    /// before the step (1 without decoupled decay) and `l2·p` is added to the gradient (0 without
    /// an L2 penalty). `ratio` scales decoupled decay (Ranger21's `1/variance_normalized`).
    pub fn terms(&self, lr: f64, ratio: f64) -> (f32, f32) {
        let wd = self.weight_decay;
        if wd == 0.0 {
            (1.0, 0.0)
        } else if self.decouple {
            ((1.0 - wd * (if self.fixed { 1.0 } else { lr }) * ratio) as f32, 0.0)
        } else if wd > 0.0 {
            (1.0, wd as f32)
        } else {
            (1.0, 0.0)
        }
    }

    /// Reads `weight_decay`, `weight_decouple` and (when `fixed` is `Some(default)`) `fixed_decay`,
    /// with the class's defaults, and checks λ ≥ 0.
    pub fn parse(k: &mut Kwargs, wd: f64, decouple: bool, fixed: Option<bool>) -> Result<Self> {
        let weight_decay = k.f64("weight_decay", wd)?;
        non_negative(weight_decay, "weight_decay")?;
        let decouple = k.bool("weight_decouple", decouple)?;
        let fixed = match fixed {
            Some(d) => k.bool("fixed_decay", d)?,
            None => false,
        };
        Ok(PoWeightDecay { weight_decay, decouple, fixed })
    }
}

/// `validate_learning_rate`: a constant rate must not be negative.
pub fn check_lr(lr: &LearningRate) -> Result<()> {
    if let Some(x) = lr.constant() {
        ensure(x >= 0.0, || format!("learning rate must be non-negative, got {x} (`lr`)"))?;
    }
    Ok(())
}

/// `validate_non_negative`.
pub fn non_negative(x: f64, name: &str) -> Result<()> {
    ensure(x >= 0.0, || format!("{name} must be non-negative, got {x}"))
}

/// `validate_positive`.
pub fn positive(x: f64, name: &str) -> Result<()> {
    ensure(x > 0.0, || format!("{name} must be positive, got {x}"))
}

/// `validate_range(x, name, low, high, range_type)` with `range_type` one of `[)`, `[]`, `(]`, `()`.
pub fn in_range(x: f64, name: &str, low: f64, high: f64, kind: &str) -> Result<()> {
    let ok = match kind {
        "[)" => low <= x && x < high,
        "[]" => low <= x && x <= high,
        "(]" => low < x && x <= high,
        _ => low < x && x < high,
    };
    let (l, h) = (&kind[..1], &kind[1..]);
    ensure(ok, || format!("{name} must be in the range {l}{low}, {high}{h}, got {x}"))
}

/// `betas` with exactly as many entries as `default` (the class unpacks them), each checked as
/// `validate_betas` does: β₁, β₂ in [0, 1), a third one in [0, 1].
pub fn betas(k: &mut Kwargs, default: &[f64]) -> Result<Vec<f64>> {
    let b = k.f64s("betas")?.unwrap_or_else(|| default.to_vec());
    if b.len() != default.len() {
        return Err(invalid(format!("`betas` must have {} entries, got {}", default.len(), b.len())));
    }
    check_betas(&b)?;
    Ok(b)
}

/// `validate_betas` on the first three entries of `b` (at least two).
pub fn check_betas(b: &[f64]) -> Result<()> {
    ensure(b.len() >= 2, || format!("`betas` needs at least 2 entries, got {}", b.len()))?;
    in_range(b[0], "beta1", 0.0, 1.0, "[)")?;
    in_range(b[1], "beta2", 0.0, 1.0, "[)")?;
    if let Some(&b3) = b.get(2) {
        in_range(b3, "beta3", 0.0, 1.0, "[]")?;
    }
    Ok(())
}

/// The arguments every optimizer of the family takes besides its own: `maximize` (returned) and
/// `foreach`, which selects an implementation and does not change the update.
pub fn maximize_and_foreach(k: &mut Kwargs) -> Result<bool> {
    k.opt_bool("foreach")?;
    k.bool("maximize", false)
}

/// `1 − βᵗ` (pytorch_optimizer's `debias`).
pub fn debias(beta: f64, step: u64) -> f64 {
    1.0 - beta.powf(step as f64)
}

/// Python's `max(a, b)`: `a` unless `b > a` (so a NaN `b` gives `a`, a NaN `a` stays).
pub fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)`: `a` unless `b < a`.
pub fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// `Σ f(j)` over `0..n`, accumulated in `f64` and rounded once to `f32` (a float32 reduction of
/// torch, to within its own rounding).
#[inline]
pub fn sum_f32(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = 0.0f64;
    for j in 0..n {
        acc += f(j) as f64;
    }
    acc as f32
}

/// `Σ part(range)` over the [`crate::kernel::CHUNK`]-sized ranges of `0..n`, each part an
/// `f64` sum, computed across threads for large `n` and added in order (so the result does not
/// depend on the number of threads), rounded once to `f32`: a float32 reduction of torch over a
/// whole tensor, to within its own rounding.
pub fn reduce_f32(n: usize, part: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f32 {
    use crate::kernel::{CHUNK, PARALLEL_MIN};
    use rayon::prelude::*;
    let range = |c: usize| c * CHUNK..n.min((c + 1) * CHUNK);
    let chunks = n.div_ceil(CHUNK);
    let total: f64 = if n >= PARALLEL_MIN {
        let parts: Vec<f64> = (0..chunks).into_par_iter().map(|c| part(range(c))).collect();
        parts.iter().sum()
    } else {
        (0..chunks).map(|c| part(range(c))).sum()
    };
    total as f32
}
