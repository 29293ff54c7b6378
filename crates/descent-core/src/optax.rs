//! optax's optimizers as typed configurations: one struct per alias, named after optax's function
//! (`optax.adamw` → [`AdamW`]), whose fields are the function's keyword arguments with optax's
//! defaults in [`Default`], and one function that builds the optimizer as the chain of
//! transformations optax's `alias.py` composes ([`adamw`] is `scale_by_adam → add_decayed_weights →
//! scale_by_learning_rate`). The less established ones are in [`contrib`], as in optax.
//!
//! Where optax requires the learning rate, the `Default` here takes [`DEFAULT_LEARNING_RATE`]
//! (1e-3; Muon 0.02) and the field's documentation says so. Per-parameter masks (`mask`, `weight_decay_mask`) hold one boolean per
//! parameter, in the order the parameters are given to the [`crate::Optimizer`]; `None` selects
//! them all.
//!
//! ```
//! use descent_core::{optax, Optimizer};
//!
//! let tx = optax::adamw(optax::AdamW { learning_rate: 1e-3.into(), weight_decay: 0.05.into(), ..Default::default() });
//! let mut params = vec![vec![0.5f32; 6], vec![0.0f32; 3]];
//! let shapes = vec![vec![2, 3], vec![3]];
//! let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
//! let mut opt = Optimizer::new(tx, shapes, &views).unwrap();
//! let grads = vec![vec![0.1f32; 6], vec![-0.2f32; 3]];
//! opt.step_vecs(&mut params, &grads).unwrap();
//! // Adam's first step moves each parameter by about the learning rate, against its gradient,
//! // and decoupled weight decay pulls the non-zero ones a little more.
//! assert!((params[0][0] - (0.5 - 1e-3 * (1.0 + 0.05 * 0.5))).abs() < 1e-6);
//! assert!((params[1][0] - 1e-3).abs() < 1e-6);
//! assert_eq!(opt.steps(), 1);
//! ```
//!
//! The registry ([`crate::spec`]) reads an optax recipe's keyword arguments into these structs, so
//! `optax.adamw` given as a name and keyword arguments and [`adamw`] given its struct build the
//! same optimizer.

pub mod contrib;

use crate::chain::chain;
use crate::learning_rate::{LearningRate, ScalarOrSchedule};
use crate::transform::Transform;
use crate::transforms::{
    AddDecayedWeights, ClipByBlockRms, Ema, MomentDtype, Partition, Scale, ScaleByAdadelta, ScaleByAdam,
    ScaleByAdamConfig, ScaleByAdamax, ScaleByAdamaxConfig, ScaleByAdan, ScaleByAdanConfig, ScaleByBelief,
    ScaleByBeliefConfig, ScaleByFactoredRms, ScaleByFactoredRmsConfig, ScaleByLearningRate, ScaleByLion,
    ScaleByNovograd, ScaleByNovogradConfig, ScaleByOptimisticGradient, ScaleByParamBlockRms, ScaleByRadam,
    ScaleByRadamConfig, ScaleByRms, ScaleByRmsConfig, ScaleByRprop, ScaleByRpropConfig, ScaleByRss, ScaleBySign,
    ScaleBySm3, ScaleBySm3Config, ScaleByStddev, ScaleByStddevConfig, ScaleByTrustRatio, ScaleByTrustRatioConfig,
    ScaleByYogi, ScaleByYogiConfig, Trace,
};

/// The learning rate the `Default` of an alias takes where optax requires one.
pub const DEFAULT_LEARNING_RATE: f64 = 1e-3;

pub(crate) fn boxed<T: Transform + 'static>(t: T) -> Box<dyn Transform> {
    Box::new(t)
}

/// optax `scale_by_learning_rate(learning_rate)`: `u ← −α(t)·u`.
pub(crate) fn scale_by_learning_rate(learning_rate: LearningRate) -> Box<dyn Transform> {
    boxed(ScaleByLearningRate::new(learning_rate, true))
}

/// optax `masked(inner, mask)`: `inner` for the parameters the mask selects, the others' updates
/// unchanged; `inner` itself without a mask.
pub(crate) fn masked(inner: Box<dyn Transform>, mask: Option<Vec<bool>>) -> Box<dyn Transform> {
    match mask {
        Some(m) => Partition::masked(inner, &m),
        None => inner,
    }
}

/// optax `add_decayed_weights(weight_decay, mask)`: `u ← u + λ·θ` on the parameters `mask`
/// selects.
pub(crate) fn add_decayed_weights(weight_decay: ScalarOrSchedule, mask: Option<Vec<bool>>) -> Box<dyn Transform> {
    masked(boxed(AddDecayedWeights::new(weight_decay)), mask)
}

/// optax `adabelief` (Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
/// Observed Gradients", NeurIPS 2020): Adam whose second moment tracks the gradient's deviation
/// from its mean, the "belief" in the current direction.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          s ← β₂·s + (1 − β₂)·(g − m)² + ε_root
/// u = −α·(m/(1 − β₁ᵗ)) / (√(s/(1 − β₂ᵗ)) + ε)
/// ```
pub struct Adabelief {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment of the prediction error `g − m`.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added to the second moment of the prediction error.
    pub eps_root: f64,
    /// Nesterov momentum: `m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ)`.
    pub nesterov: bool,
    /// Decoupled weight decay λ (`u ← u + λ·θ` before the learning rate), as newer optax versions
    /// take it; `None`: none.
    pub weight_decay: Option<f64>,
    /// The parameters weight decay applies to; `None`: all.
    pub weight_decay_mask: Option<Vec<bool>>,
}
impl Default for Adabelief {
    fn default() -> Self {
        Adabelief {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-16,
            eps_root: 1e-16,
            nesterov: false,
            weight_decay: None,
            weight_decay_mask: None,
        }
    }
}
/// optax `adabelief`: `scale_by_belief → [add_decayed_weights] → scale_by_learning_rate`.
pub fn adabelief(c: Adabelief) -> Box<dyn Transform> {
    let mut links = vec![boxed(ScaleByBelief::new(ScaleByBeliefConfig {
        b1: c.b1,
        b2: c.b2,
        eps: c.eps,
        eps_root: c.eps_root,
        nesterov: c.nesterov,
    }))];
    if let Some(wd) = c.weight_decay {
        links.push(add_decayed_weights(wd.into(), c.weight_decay_mask));
    }
    links.push(scale_by_learning_rate(c.learning_rate));
    chain(links)
}

/// optax `adadelta` (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012): the step's scale
/// is the ratio of running root mean squares of past steps and of gradients.
///
/// ```text
/// E[g²] ← ρ·E[g²] + (1 − ρ)·g²      Δ = √(E[Δ²] + ε) / √(E[g²] + ε) · g
/// E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²      u = −α·Δ
/// ```
pub struct Adadelta {
    /// Learning rate α; `None` (optax's default): no scaling at all, so the rescaled gradient is
    /// added as it is, a step up the gradient, as in optax. Zeiler's method is `Some(1.0)`.
    pub learning_rate: Option<LearningRate>,
    /// Decay ρ of both running averages.
    pub rho: f64,
    /// ε inside both square roots.
    pub eps: f64,
    /// Weight decay λ added to the gradient before the rescaling.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub weight_decay_mask: Option<Vec<bool>>,
}
impl Default for Adadelta {
    fn default() -> Self {
        Adadelta { learning_rate: None, rho: 0.9, eps: 1e-6, weight_decay: 0.0.into(), weight_decay_mask: None }
    }
}
/// optax `adadelta`: `add_decayed_weights → scale_by_adadelta → scale_by_learning_rate`.
pub fn adadelta(c: Adadelta) -> Box<dyn Transform> {
    let mut links =
        vec![add_decayed_weights(c.weight_decay, c.weight_decay_mask), boxed(ScaleByAdadelta::new(c.rho, c.eps))];
    links.extend(c.learning_rate.map(scale_by_learning_rate));
    chain(links)
}

/// optax `adafactor` (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
/// Cost", ICML 2018): the second moment of a matrix kept as its row and column sums, the update
/// clipped by its root mean square and scaled by the parameter's.
///
/// ```text
/// β₂ₜ = 1 − t^(−decay_rate)      R ← β₂ₜ·R + (1 − β₂ₜ)·rowmean(g² + ε)   (C likewise)
/// v̂ = R·Cᵀ / mean(R)             u = g / √v̂,   u ← u / max(1, rms(u)/clip)
/// u ← −α·max(rms(θ), 1e-3)·u
/// ```
pub struct Adafactor {
    /// Learning rate α; `None`: no learning-rate scaling (optax's default).
    pub learning_rate: Option<LearningRate>,
    /// Factor the second moment only of tensors with two dimensions at least this large.
    pub min_dim_size_to_factor: usize,
    /// Exponent of the second moment's decay schedule `1 − t^(−decay_rate)`.
    pub decay_rate: f64,
    /// Step count the decay schedule starts from (fine-tuning).
    pub decay_offset: u64,
    /// Scale the step by the parameter's root mean square (at least 1e-3).
    pub multiply_by_parameter_scale: bool,
    /// Clip the update's root mean square to this; `None`: no clipping.
    pub clipping_threshold: Option<f64>,
    /// Decay of a momentum of the updates (not debiased); `None`: no momentum.
    pub momentum: Option<f64>,
    /// Weight decay rate, added to the update after the parameter scale; `None`: none.
    pub weight_decay_rate: Option<ScalarOrSchedule>,
    /// ε added to the squared gradient.
    pub eps: f64,
    /// Factor the second moment of matrices (else keep it whole, as Adam).
    pub factored: bool,
    /// The parameters weight decay applies to; `None`: all.
    pub weight_decay_mask: Option<Vec<bool>>,
}
impl Default for Adafactor {
    fn default() -> Self {
        Adafactor {
            learning_rate: None,
            min_dim_size_to_factor: 128,
            decay_rate: 0.8,
            decay_offset: 0,
            multiply_by_parameter_scale: true,
            clipping_threshold: Some(1.0),
            momentum: None,
            weight_decay_rate: None,
            eps: 1e-30,
            factored: true,
            weight_decay_mask: None,
        }
    }
}
/// optax `adafactor`: `scale_by_factored_rms → [clip_by_block_rms] → [scale_by_learning_rate] →
/// [scale_by_param_block_rms] → [ema] → [add_decayed_weights] → scale(−1)`; without momentum and
/// weight decay (the defaults) as one transformation with a fused step.
pub fn adafactor(c: Adafactor) -> Box<dyn Transform> {
    let rms = ScaleByFactoredRms::new(ScaleByFactoredRmsConfig {
        factored: c.factored,
        decay_rate: c.decay_rate,
        step_offset: c.decay_offset,
        min_dim_size_to_factor: c.min_dim_size_to_factor,
        epsilon: c.eps,
    });
    let clip = c.clipping_threshold.map(ClipByBlockRms::new);
    let lr = c.learning_rate.map(|lr| ScaleByLearningRate::new(lr, false));
    let param_scale = c.multiply_by_parameter_scale.then(|| ScaleByParamBlockRms::new(1e-3));
    if c.momentum.is_none() && c.weight_decay_rate.is_none() {
        return boxed(crate::transforms::FusedAdafactor::new(rms, clip, lr, param_scale));
    }
    let mut links = vec![boxed(rms)];
    links.extend(clip.map(boxed));
    links.extend(lr.map(boxed));
    links.extend(param_scale.map(boxed));
    links.extend(c.momentum.map(|m| boxed(Ema::new(m, false))));
    if let Some(w) = c.weight_decay_rate {
        links.push(add_decayed_weights(w, c.weight_decay_mask));
    }
    links.push(boxed(Scale::new(-1.0)));
    chain(links)
}

/// optax `adagrad` (Duchi et al., "Adaptive Subgradient Methods for Online Learning and
/// Stochastic Optimization", JMLR 2011): each coordinate's step divided by the root of its summed
/// squared gradients.
///
/// ```text
/// G ← G + g²      u = −α·g / √(G + ε)      (G starts at initial_accumulator_value)
/// ```
pub struct Adagrad {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// The sum's starting value.
    pub initial_accumulator_value: f64,
    /// ε inside the square root.
    pub eps: f64,
}
impl Default for Adagrad {
    fn default() -> Self {
        Adagrad { learning_rate: DEFAULT_LEARNING_RATE.into(), initial_accumulator_value: 0.1, eps: 1e-7 }
    }
}
/// optax `adagrad`: `scale_by_rss → scale_by_learning_rate`.
pub fn adagrad(c: Adagrad) -> Box<dyn Transform> {
    chain(vec![boxed(ScaleByRss::new(c.initial_accumulator_value, c.eps)), scale_by_learning_rate(c.learning_rate)])
}

/// optax `adam` (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015; with
/// `nesterov`, Dozat, "Incorporating Nesterov Momentum into Adam", 2016).
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
/// u = −α·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ) + ε_root) + ε)
/// ```
pub struct Adam {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Nesterov momentum: `m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ)` (NAdam).
    pub nesterov: bool,
}
impl Default for Adam {
    fn default() -> Self {
        Adam {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            mu_dtype: MomentDtype::F32,
            nesterov: false,
        }
    }
}
/// optax `adam`: `scale_by_adam → scale_by_learning_rate`.
pub fn adam(c: Adam) -> Box<dyn Transform> {
    chain(vec![
        boxed(
            ScaleByAdam::new(ScaleByAdamConfig {
                b1: c.b1,
                b2: c.b2,
                eps: c.eps,
                eps_root: c.eps_root,
                nesterov: c.nesterov,
            })
            .mu_dtype(c.mu_dtype),
        ),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `nadam`: [`Adam`] with Nesterov momentum by default (Dozat, "Incorporating Nesterov
/// Momentum into Adam", 2016).
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
/// m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ)
/// u = −α·m̂ / (√(v/(1 − β₂ᵗ) + ε_root) + ε)
/// ```
pub struct Nadam {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Nesterov momentum (on by default; off gives Adam).
    pub nesterov: bool,
}
impl Default for Nadam {
    fn default() -> Self {
        let Adam { learning_rate, b1, b2, eps, eps_root, mu_dtype, .. } = Adam::default();
        Nadam { learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov: true }
    }
}
/// optax `nadam`: `adam(nesterov=True)`.
pub fn nadam(c: Nadam) -> Box<dyn Transform> {
    let Nadam { learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov } = c;
    adam(Adam { learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov })
}

/// optax `adamw` (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019): Adam
/// with the weight decay added to the update, not to the gradient.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
/// u = −α·((m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λ·θ)
/// ```
pub struct AdamW {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Weight decay λ, multiplied by the learning rate (as torch's AdamW).
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
    /// Nesterov momentum (NAdamW).
    pub nesterov: bool,
}
impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            mu_dtype: MomentDtype::F32,
            weight_decay: 1e-4.into(),
            mask: None,
            nesterov: false,
        }
    }
}
/// optax `adamw`: `scale_by_adam → add_decayed_weights → scale_by_learning_rate`.
pub fn adamw(c: AdamW) -> Box<dyn Transform> {
    chain(vec![
        boxed(
            ScaleByAdam::new(ScaleByAdamConfig {
                b1: c.b1,
                b2: c.b2,
                eps: c.eps,
                eps_root: c.eps_root,
                nesterov: c.nesterov,
            })
            .mu_dtype(c.mu_dtype),
        ),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `nadamw`: [`AdamW`] with Nesterov momentum by default (Loshchilov & Hutter 2019; Dozat
/// 2016).
///
/// ```text
/// m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ)
/// u = −α·(m̂ / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λ·θ)
/// ```
pub struct NadamW {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
    /// Nesterov momentum (on by default; off gives AdamW).
    pub nesterov: bool,
}
impl Default for NadamW {
    fn default() -> Self {
        let AdamW { learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, .. } = AdamW::default();
        NadamW { learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov: true }
    }
}
/// optax `nadamw`: `adamw(nesterov=True)`.
pub fn nadamw(c: NadamW) -> Box<dyn Transform> {
    let NadamW { learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov } = c;
    adamw(AdamW { learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov })
}

/// optax `adamax` (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1):
/// Adam with the infinity norm in place of the second moment.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← max(β₂·v, |g| + ε)
/// u = −α·(m/(1 − β₁ᵗ)) / v
/// ```
pub struct Adamax {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the infinity norm.
    pub b2: f64,
    /// ε added to `|g|`.
    pub eps: f64,
}
impl Default for Adamax {
    fn default() -> Self {
        Adamax { learning_rate: DEFAULT_LEARNING_RATE.into(), b1: 0.9, b2: 0.999, eps: 1e-8 }
    }
}
/// optax `adamax`: `scale_by_adamax → scale_by_learning_rate`.
pub fn adamax(c: Adamax) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdamax::new(ScaleByAdamaxConfig { b1: c.b1, b2: c.b2, eps: c.eps })),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `adamaxw`: [`Adamax`] with decoupled weight decay (Loshchilov & Hutter, "Decoupled
/// Weight Decay Regularization", ICLR 2019).
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← max(β₂·v, |g| + ε)
/// u = −α·((m/(1 − β₁ᵗ)) / v + λ·θ)
/// ```
pub struct AdamaxW {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the infinity norm.
    pub b2: f64,
    /// ε added to `|g|`.
    pub eps: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for AdamaxW {
    fn default() -> Self {
        AdamaxW {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4.into(),
            mask: None,
        }
    }
}
/// optax `adamaxw`: `scale_by_adamax → add_decayed_weights → scale_by_learning_rate`.
pub fn adamaxw(c: AdamaxW) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdamax::new(ScaleByAdamaxConfig { b1: c.b1, b2: c.b2, eps: c.eps })),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `adan` (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
/// Deep Models", 2022): moments of the gradient, of its difference from the last one, and of the
/// squared Nesterov-corrected gradient.
///
/// ```text
/// m ← (1 − β₁)·m + β₁·g        d ← (1 − β₂)·d + β₂·(g − g₋₁)
/// n ← (1 − β₃)·n + β₃·(g + (1 − β₂)·(g − g₋₁))²
/// u = −α·((m + (1 − β₂)·d) / (√(n + ε_root) + ε) + λ·θ)    (moments debiased)
/// ```
pub struct Adan {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay rate of the gradients' average.
    pub b1: f64,
    /// Decay rate of the gradient differences' average.
    pub b2: f64,
    /// Decay rate of the squared term's average.
    pub b3: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Adan {
    fn default() -> Self {
        Adan {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.98,
            b2: 0.92,
            b3: 0.99,
            eps: 1e-8,
            eps_root: 1e-8,
            weight_decay: 0.0.into(),
            mask: None,
        }
    }
}
/// optax `adan`: `scale_by_adan → add_decayed_weights → scale_by_learning_rate`.
pub fn adan(c: Adan) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdan::new(ScaleByAdanConfig { b1: c.b1, b2: c.b2, b3: c.b3, eps: c.eps, eps_root: c.eps_root })),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `amsgrad` (Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018): Adam
/// dividing by the running maximum of its second moment.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g     v ← β₂·v + (1 − β₂)·g²     v̂ ← max(v̂, v/(1 − β₂ᵗ))
/// u = −α·(m/(1 − β₁ᵗ)) / (√(v̂ + ε_root) + ε)
/// ```
pub struct Amsgrad {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Debias the first moment (off in the original paper).
    pub bias_correction_mu: bool,
    /// Debias the second moment before the maximum (off in the original paper).
    pub bias_correction_nu: bool,
}
impl Default for Amsgrad {
    fn default() -> Self {
        Amsgrad {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            mu_dtype: MomentDtype::F32,
            bias_correction_mu: true,
            bias_correction_nu: true,
        }
    }
}
/// optax `amsgrad`: `scale_by_amsgrad → scale_by_learning_rate`.
pub fn amsgrad(c: Amsgrad) -> Box<dyn Transform> {
    let t = ScaleByAdam::new(ScaleByAdamConfig {
        b1: c.b1,
        b2: c.b2,
        eps: c.eps,
        eps_root: c.eps_root,
        ..Default::default()
    })
    .amsgrad()
    .bias_correction(c.bias_correction_mu, c.bias_correction_nu)
    .mu_dtype(c.mu_dtype);
    chain(vec![boxed(t), scale_by_learning_rate(c.learning_rate)])
}

/// optax `fromage` (Bernstein et al., "On the distance between two neural networks and the
/// stability of learning", NeurIPS 2020): each tensor's step scaled to its norm, then the weights
/// shrunk to keep their norm from growing.
///
/// ```text
/// u = −α/√(1 + α²) · ‖θ‖/‖g‖ · g  −  (1 − 1/√(1 + α²))·θ      (norms floored at min_norm)
/// ```
pub struct Fromage {
    /// Learning rate α, a constant or a schedule (then the shrink factor `1/√(1 + α²)` follows
    /// it step by step, as optax's). optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Floor of the norms of the trust ratio.
    pub min_norm: f64,
}
impl Default for Fromage {
    fn default() -> Self {
        Fromage { learning_rate: DEFAULT_LEARNING_RATE.into(), min_norm: 1e-6 }
    }
}
/// optax `fromage`: `scale_by_trust_ratio → scale(−α·mult) → add_decayed_weights(mult − 1)`.
pub fn fromage(c: Fromage) -> Box<dyn Transform> {
    let trust = boxed(ScaleByTrustRatio::new(ScaleByTrustRatioConfig { min_norm: c.min_norm, ..Default::default() }));
    // The step `α·mult` and the decay `mult − 1` (mult = 1/√(1 + α²)) from the one rate, at
    // the step's count for a schedule (optax's callable branch), and from a rate set between
    // steps.
    chain(vec![trust, boxed(crate::transforms::ScaleByFromage::new(c.learning_rate))])
}

/// optax `lamb` (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
/// minutes", ICLR 2020): AdamW's update rescaled per tensor by the trust ratio `‖θ‖/‖u‖`.
///
/// ```text
/// r = (m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λ·θ
/// u = −α·(‖θ‖/‖r‖)·r        (ratio 1 when a norm is 0)
/// ```
pub struct Lamb {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// Weight decay λ, added before the trust ratio.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-6,
            eps_root: 0.0,
            weight_decay: 0.0.into(),
            mask: None,
        }
    }
}
/// optax `lamb`: `scale_by_adam → add_decayed_weights → scale_by_trust_ratio →
/// scale_by_learning_rate`.
pub fn lamb(c: Lamb) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdam::new(ScaleByAdamConfig {
            b1: c.b1,
            b2: c.b2,
            eps: c.eps,
            eps_root: c.eps_root,
            ..Default::default()
        })),
        add_decayed_weights(c.weight_decay, c.mask),
        boxed(ScaleByTrustRatio::new(ScaleByTrustRatioConfig::default())),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `lars` (You et al., "Large Batch Training of Convolutional Networks", 2017): SGD with
/// momentum whose step is rescaled per tensor by the trust ratio.
///
/// ```text
/// r = g + λ·θ      r ← η·‖θ‖/(‖r‖ + ε)·r      b ← μ·b − α·r      u = b (Nesterov: μ·b − α·r)
/// ```
pub struct Lars {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Weight decay λ, added to the gradient.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub weight_decay_mask: Option<Vec<bool>>,
    /// Trust coefficient η.
    pub trust_coefficient: f64,
    /// ε added to the update's norm.
    pub eps: f64,
    /// The parameters the trust ratio applies to; `None`: all.
    pub trust_ratio_mask: Option<Vec<bool>>,
    /// Momentum μ.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}
impl Default for Lars {
    fn default() -> Self {
        Lars {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            weight_decay: 0.0.into(),
            weight_decay_mask: None,
            trust_coefficient: 0.001,
            eps: 0.0,
            trust_ratio_mask: None,
            momentum: 0.9,
            nesterov: false,
        }
    }
}
/// optax `lars`: `add_decayed_weights → scale_by_trust_ratio → scale_by_learning_rate → trace`.
pub fn lars(c: Lars) -> Box<dyn Transform> {
    chain(vec![
        add_decayed_weights(c.weight_decay, c.weight_decay_mask),
        masked(
            boxed(ScaleByTrustRatio::new(ScaleByTrustRatioConfig {
                trust_coefficient: c.trust_coefficient,
                eps: c.eps,
                ..Default::default()
            })),
            c.trust_ratio_mask,
        ),
        scale_by_learning_rate(c.learning_rate),
        boxed(Trace::new(c.momentum, c.nesterov)),
    ])
}

/// optax `lion` (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023): the
/// sign of an interpolation of momentum and gradient.
///
/// ```text
/// c = β₁·m + (1 − β₁)·g      u = −α·(sign(c) + λ·θ)      m ← β₂·m + (1 − β₂)·g
/// ```
pub struct Lion {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Interpolation β₁ between momentum and gradient.
    pub b1: f64,
    /// Decay β₂ of the momentum.
    pub b2: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Lion {
    fn default() -> Self {
        Lion { learning_rate: DEFAULT_LEARNING_RATE.into(), b1: 0.9, b2: 0.99, weight_decay: 1e-3.into(), mask: None }
    }
}
/// optax `lion`: `scale_by_lion → add_decayed_weights → scale_by_learning_rate`.
pub fn lion(c: Lion) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByLion::new(c.b1, c.b2)),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `novograd` (Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
/// Moments for Training of Deep Networks", 2019): a second moment per tensor, of the squared
/// gradient norm.
///
/// ```text
/// v ← β₂·v + (1 − β₂)·‖g‖²        (v = ‖g‖² at the first step)
/// m ← β₁·m + (g/(√(v + ε_root) + ε) + λ·θ)        u = −α·m
/// ```
pub struct Novograd {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the momentum.
    pub b1: f64,
    /// Decay β₂ of the per-tensor second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// Weight decay λ, added to the normalized gradient.
    pub weight_decay: f64,
}
impl Default for Novograd {
    fn default() -> Self {
        Novograd {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.25,
            eps: 1e-6,
            eps_root: 0.0,
            weight_decay: 0.0,
        }
    }
}
/// optax `novograd`: `scale_by_novograd → scale_by_learning_rate`.
pub fn novograd(c: Novograd) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByNovograd::new(ScaleByNovogradConfig {
            b1: c.b1,
            b2: c.b2,
            eps: c.eps,
            eps_root: c.eps_root,
            weight_decay: c.weight_decay,
        })),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `optimistic_gradient_descent` (Mokhtari et al., "A Unified Analysis of Extra-gradient and
/// Optimistic Gradient Methods for Saddle Point Problems: Proximal Point Approach", AISTATS
/// 2020): the step extrapolated with the last gradient.
///
/// ```text
/// u = −α·((a + b)·g − b·g₋₁)
/// ```
pub struct OptimisticGradientDescent {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Weight `a` of the current gradient.
    pub alpha: f64,
    /// Weight `b` of the optimism, the gradient's change.
    pub beta: f64,
}
impl Default for OptimisticGradientDescent {
    fn default() -> Self {
        OptimisticGradientDescent { learning_rate: DEFAULT_LEARNING_RATE.into(), alpha: 1.0, beta: 1.0 }
    }
}
/// optax `optimistic_gradient_descent`: `scale_by_optimistic_gradient → scale_by_learning_rate`.
pub fn optimistic_gradient_descent(c: OptimisticGradientDescent) -> Box<dyn Transform> {
    chain(vec![boxed(ScaleByOptimisticGradient::new(c.alpha, c.beta)), scale_by_learning_rate(c.learning_rate)])
}

/// optax `optimistic_adam` (Daskalakis et al., "Training GANs with Optimism", ICLR 2018): Adam's
/// direction, extrapolated with the last one.
///
/// ```text
/// a = Adam's direction (Nesterov by default)      u = −((α + o)·a − o·a₋₁)
/// ```
pub struct OptimisticAdam {
    /// Learning rate α, a constant (optax's first version takes no schedule; see
    /// [`OptimisticAdamV2`]). optax requires it; the default here is 1e-3.
    pub learning_rate: f64,
    /// Optimism `o`, the weight of the direction's change; `None`: the learning rate.
    pub optimism: Option<f64>,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Nesterov momentum in Adam's direction.
    pub nesterov: bool,
}
impl Default for OptimisticAdam {
    fn default() -> Self {
        OptimisticAdam {
            learning_rate: DEFAULT_LEARNING_RATE,
            optimism: None,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            mu_dtype: MomentDtype::F32,
            nesterov: true,
        }
    }
}
/// optax `optimistic_adam`: `scale_by_adam → scale_by_optimistic_gradient(α, o) → scale(−1)`.
pub fn optimistic_adam(c: OptimisticAdam) -> Box<dyn Transform> {
    // The learning rate and the optimism weight the optimistic gradient (a rate set between
    // steps is α, and the optimism when it follows the rate); the last link only flips the sign.
    chain(vec![
        boxed(
            ScaleByAdam::new(ScaleByAdamConfig {
                b1: c.b1,
                b2: c.b2,
                eps: c.eps,
                eps_root: c.eps_root,
                nesterov: c.nesterov,
            })
            .mu_dtype(c.mu_dtype),
        ),
        boxed(ScaleByOptimisticGradient::learning_rate(c.learning_rate, c.optimism)),
        boxed(Scale::new(-1.0)),
    ])
}

/// optax `optimistic_adam_v2` (Daskalakis et al., "Training GANs with Optimism", ICLR 2018): Adam's
/// direction extrapolated with the last one, then scaled by a learning rate that may be a
/// schedule.
///
/// ```text
/// a = Adam's direction (Nesterov by default)      u = −α·((a' + b')·a − b'·a₋₁)
/// ```
pub struct OptimisticAdamV2 {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Weight `a'` of the current direction.
    pub alpha: f64,
    /// Weight `b'` of the direction's change.
    pub beta: f64,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The type the first moment is stored in (`mu_dtype`).
    pub mu_dtype: MomentDtype,
    /// Nesterov momentum in Adam's direction.
    pub nesterov: bool,
}
impl Default for OptimisticAdamV2 {
    fn default() -> Self {
        OptimisticAdamV2 {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            alpha: 1.0,
            beta: 1.0,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            mu_dtype: MomentDtype::F32,
            nesterov: true,
        }
    }
}
/// optax `optimistic_adam_v2`: `scale_by_adam → scale_by_optimistic_gradient →
/// scale_by_learning_rate`.
pub fn optimistic_adam_v2(c: OptimisticAdamV2) -> Box<dyn Transform> {
    chain(vec![
        boxed(
            ScaleByAdam::new(ScaleByAdamConfig {
                b1: c.b1,
                b2: c.b2,
                eps: c.eps,
                eps_root: c.eps_root,
                nesterov: c.nesterov,
            })
            .mu_dtype(c.mu_dtype),
        ),
        boxed(ScaleByOptimisticGradient::new(c.alpha, c.beta)),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `radam` (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR
/// 2020): Adam whose adaptive step is switched on, with a variance rectification, once the
/// second moment's approximate degrees of freedom ρₜ exceed a threshold.
///
/// ```text
/// ρ∞ = 2/(1 − β₂) − 1      ρₜ = ρ∞ − 2t·β₂ᵗ/(1 − β₂ᵗ)
/// u = −α·m̂·rₜ/(√(v̂ + ε_root) + ε)  if ρₜ ≥ threshold,  else −α·m̂
/// rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))
/// ```
pub struct Radam {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// The degrees of freedom from which the adaptive step is used.
    pub threshold: f64,
    /// Nesterov momentum in the first moment.
    pub nesterov: bool,
}
impl Default for Radam {
    fn default() -> Self {
        Radam {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            threshold: 5.0,
            nesterov: false,
        }
    }
}
/// optax `radam`: `scale_by_radam → scale_by_learning_rate`.
pub fn radam(c: Radam) -> Box<dyn Transform> {
    let mut t = ScaleByRadam::new(ScaleByRadamConfig {
        b1: c.b1,
        b2: c.b2,
        eps: c.eps,
        eps_root: c.eps_root,
        threshold: c.threshold,
    });
    if c.nesterov {
        t = t.nesterov();
    }
    chain(vec![boxed(t), scale_by_learning_rate(c.learning_rate)])
}

/// optax `rmsprop` (Hinton, "Neural Networks for Machine Learning", lecture 6e, 2012; centered:
/// Graves, "Generating Sequences With Recurrent Neural Networks", 2013): the gradient divided by
/// the root of its running mean square (centered: its running variance).
///
/// ```text
/// v ← d·v + (1 − d)·g²     (centered: also m ← d·m + (1 − d)·g, v − m² in place of v)
/// r = g / √(v + ε)   (eps_in_sqrt)   or   g / (√v + ε)
/// u = −α·r,  then with momentum μ: b ← μ·b + u, u = b (Nesterov: μ·b + u)
/// ```
pub struct Rmsprop {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay `d` of the running averages.
    pub decay: f64,
    /// ε added to the mean square (or to its root).
    pub eps: f64,
    /// Starting value of the running mean square.
    pub initial_scale: f64,
    /// ε inside the square root (else outside).
    pub eps_in_sqrt: bool,
    /// Divide by the running standard deviation instead of the root mean square.
    pub centered: bool,
    /// Momentum μ of the scaled step; `None`: none.
    pub momentum: Option<f64>,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Debias the running averages.
    pub bias_correction: bool,
}
impl Default for Rmsprop {
    fn default() -> Self {
        Rmsprop {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            decay: 0.9,
            eps: 1e-8,
            initial_scale: 0.0,
            eps_in_sqrt: true,
            centered: false,
            momentum: None,
            nesterov: false,
            bias_correction: false,
        }
    }
}
/// optax `rmsprop`: `scale_by_rms` (or `scale_by_stddev`) `→ scale_by_learning_rate → [trace]`.
pub fn rmsprop(c: Rmsprop) -> Box<dyn Transform> {
    let scale = if c.centered {
        boxed(ScaleByStddev::new(ScaleByStddevConfig {
            decay: c.decay,
            eps: c.eps,
            initial_scale: c.initial_scale,
            eps_in_sqrt: c.eps_in_sqrt,
            bias_correction: c.bias_correction,
        }))
    } else {
        boxed(ScaleByRms::new(ScaleByRmsConfig {
            decay: c.decay,
            eps: c.eps,
            initial_scale: c.initial_scale,
            eps_in_sqrt: c.eps_in_sqrt,
            bias_correction: c.bias_correction,
        }))
    };
    let mut links = vec![scale, scale_by_learning_rate(c.learning_rate)];
    if let Some(m) = c.momentum {
        links.push(boxed(Trace::new(m, c.nesterov)));
    }
    chain(links)
}

/// optax `rprop` (Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
/// Learning: The RPROP Algorithm", ICNN 1993; Igel & Hüsken 2003): a step size per coordinate,
/// grown while the gradient keeps its sign and shrunk when it flips.
///
/// ```text
/// s ← clip(s·η₊, ·, max) if g·g₋₁ > 0;  clip(s·η₋, min, ·) and g ← 0 if g·g₋₁ < 0
/// u = −s·sign(g)
/// ```
pub struct Rprop {
    /// The initial step size, a constant (read once, at the start). optax requires it; the
    /// default here is 1e-3.
    pub learning_rate: f64,
    /// Shrink factor η₋ on a sign change.
    pub eta_minus: f64,
    /// Growth factor η₊ while the sign holds.
    pub eta_plus: f64,
    /// Smallest step size.
    pub min_step_size: f64,
    /// Largest step size.
    pub max_step_size: f64,
}
impl Default for Rprop {
    fn default() -> Self {
        Rprop {
            learning_rate: DEFAULT_LEARNING_RATE,
            eta_minus: 0.5,
            eta_plus: 1.2,
            min_step_size: 1e-6,
            max_step_size: 50.0,
        }
    }
}
/// optax `rprop`: `scale_by_rprop → scale(−1)`.
pub fn rprop(c: Rprop) -> Box<dyn Transform> {
    let t = ScaleByRprop::new(
        c.learning_rate,
        ScaleByRpropConfig {
            eta_minus: c.eta_minus,
            eta_plus: c.eta_plus,
            min_step_size: c.min_step_size,
            max_step_size: c.max_step_size,
        },
    );
    chain(vec![boxed(t), boxed(Scale::new(-1.0))])
}

/// optax `sgd` (with momentum: Sutskever et al., "On the importance of initialization and momentum
/// in deep learning", ICML 2013).
///
/// ```text
/// b ← μ·b + g      u = −α·b   (Nesterov: −α·(g + μ·b));   without momentum u = −α·g
/// ```
pub struct Sgd {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Momentum μ; `None`: plain gradient descent.
    pub momentum: Option<f64>,
    /// Nesterov momentum.
    pub nesterov: bool,
}
impl Default for Sgd {
    fn default() -> Self {
        Sgd { learning_rate: DEFAULT_LEARNING_RATE.into(), momentum: None, nesterov: false }
    }
}
/// optax `sgd`: `[trace] → scale_by_learning_rate`.
pub fn sgd(c: Sgd) -> Box<dyn Transform> {
    match c.momentum {
        Some(m) => chain(vec![boxed(Trace::new(m, c.nesterov)), scale_by_learning_rate(c.learning_rate)]),
        None => chain(vec![scale_by_learning_rate(c.learning_rate)]),
    }
}

/// optax `sign_sgd` (Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
/// ICML 2018): the sign of the gradient.
///
/// ```text
/// u = −α·sign(g)
/// ```
pub struct SignSgd {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
}
impl Default for SignSgd {
    fn default() -> Self {
        SignSgd { learning_rate: DEFAULT_LEARNING_RATE.into() }
    }
}
/// optax `sign_sgd`: `scale_by_sign → scale_by_learning_rate`.
pub fn sign_sgd(c: SignSgd) -> Box<dyn Transform> {
    chain(vec![boxed(ScaleBySign), scale_by_learning_rate(c.learning_rate)])
}

/// optax `signum` (Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
/// ICML 2018): the sign of a momentum of the gradient.
///
/// ```text
/// m ← β·m + (1 − β)·g      u = −α·sign(m)
/// ```
pub struct Signum {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β of the momentum.
    pub beta: f64,
}
impl Default for Signum {
    fn default() -> Self {
        Signum { learning_rate: DEFAULT_LEARNING_RATE.into(), beta: 0.9 }
    }
}
/// optax `signum`: `ema → scale_by_sign → scale_by_learning_rate`.
pub fn signum(c: Signum) -> Box<dyn Transform> {
    chain(vec![boxed(Ema::new(c.beta, false)), boxed(ScaleBySign), scale_by_learning_rate(c.learning_rate)])
}

/// optax `sm3` (Anil et al., "Memory-Efficient Adaptive Optimization", NeurIPS 2019): Adagrad
/// whose accumulator is a cover of maxima along each axis, with momentum.
///
/// ```text
/// ν = min over axes of the axis accumulators + g²      (each axis accumulator ← max of ν along it)
/// m ← μ·m + (1 − μ)·g/√ν      u = −α·m
/// ```
pub struct Sm3 {
    /// Learning rate α. optax requires it (a float: a schedule only through
    /// `inject_hyperparams`); the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Momentum μ.
    pub momentum: f64,
}
impl Default for Sm3 {
    fn default() -> Self {
        Sm3 { learning_rate: DEFAULT_LEARNING_RATE.into(), momentum: 0.9 }
    }
}
/// optax `sm3`: `scale_by_sm3 → scale(−α)`, the rate one that can be set.
pub fn sm3(c: Sm3) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleBySm3::new(ScaleBySm3Config { b1: c.momentum, ..Default::default() })),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `yogi` (Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018): Adam
/// whose second moment moves additively, by at most `(1 − β₂)·g²` a step.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g      v ← v − (1 − β₂)·sign(v − g²)·g²      (v starts at 1e-6)
/// u = −α·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ)) + ε)
/// ```
pub struct Yogi {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Rate β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator.
    pub eps: f64,
}
impl Default for Yogi {
    fn default() -> Self {
        Yogi { learning_rate: DEFAULT_LEARNING_RATE.into(), b1: 0.9, b2: 0.999, eps: 1e-3 }
    }
}
/// optax `yogi`: `scale_by_yogi → scale_by_learning_rate`.
pub fn yogi(c: Yogi) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByYogi::new(ScaleByYogiConfig { b1: c.b1, b2: c.b2, eps: c.eps, ..Default::default() })),
        scale_by_learning_rate(c.learning_rate),
    ])
}
