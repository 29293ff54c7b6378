//! optax's `contrib` optimizers as typed configurations, the way [`crate::optax`] holds the core
//! aliases: one struct per function (`optax.contrib.prodigy` → [`Prodigy`]) with optax's keyword
//! arguments and defaults, and one function composing the transformations.
//!
//! ```
//! use descent_core::{optax::contrib, Optimizer};
//!
//! // Prodigy estimates its own step size: optax's default learning rate 1.0 is the design.
//! let tx = contrib::prodigy(contrib::Prodigy { weight_decay: 0.01, ..Default::default() });
//! let mut params = vec![vec![0.5f32; 4]];
//! let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
//! let mut opt = Optimizer::new(tx, vec![vec![2, 2]], &views).unwrap();
//! opt.step_vecs(&mut params, &[vec![0.1f32, -0.2, 0.3, -0.4]]).unwrap();
//! assert!(params[0][0] < 0.5 && params[0][1] > 0.5);
//! ```

use std::sync::Arc;

use super::{add_decayed_weights, boxed, scale_by_learning_rate, DEFAULT_LEARNING_RATE};
use crate::chain::chain;
use crate::error::{Error, Result};
use crate::learning_rate::{LearningRate, ScalarOrSchedule};
use crate::schedule::{self, Schedule};
use crate::transform::Transform;
use crate::transforms::{
    self as t, AddDecayedWeights, DogInit, MomentDtype, MuonDims, NsCoeffs, NsPreconditioning, Partition,
    ScaleByAcprop, ScaleByAcpropConfig, ScaleByAdam, ScaleByAdamConfig, ScaleByAdemamix, ScaleByAdemamixConfig,
    ScaleByAdopt, ScaleByAdoptConfig, ScaleByCocob, ScaleByDog, ScaleByDowg, ScaleByLearningRate, ScaleByMadgrad,
    ScaleByMadgradConfig, ScaleByMuon, ScaleByMuonConfig, ScaleByRms, ScaleByRmsConfig, ScaleByShape,
    ScaleBySimplifiedAdemamix, ScaleBySimplifiedAdemamixConfig, ScheduleFree, ScheduleFreeConfig,
};

/// optax `contrib.acprop` (Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive
/// Gradient Methods", NeurIPS 2021): AdaBelief's centred second moment, used one step late so that
/// it does not depend on the current gradient.
///
/// ```text
/// s ← β₂·s + (1 − β₂)·(g − m)² + ε_root      m ← β₁·m + (1 − β₁)·g
/// u = −α·(g / (√(s₋₁/(1 − β₂ᵗ⁻¹)) + ε) + λ·θ)      (the first step divides by 1)
/// ```
pub struct Acprop {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the first moment.
    pub b1: f64,
    /// Decay β₂ of the centred second moment.
    pub b2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// ε_root added to the centred second moment.
    pub eps_root: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Acprop {
    fn default() -> Self {
        Acprop {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-16,
            eps_root: 1e-16,
            weight_decay: 0.0.into(),
            mask: None,
        }
    }
}
/// optax `contrib.acprop`: `scale_by_acprop → add_decayed_weights → scale_by_learning_rate`.
pub fn acprop(c: Acprop) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAcprop::new(ScaleByAcpropConfig { b1: c.b1, b2: c.b2, eps: c.eps, eps_root: c.eps_root })),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `contrib.ademamix` (Pagliardini et al., "The AdEMAMix Optimizer: Better, Faster, Older",
/// 2024): Adam with a second, slow momentum mixed into the numerator.
///
/// ```text
/// m₁ ← β₁·m₁ + (1 − β₁)·g      m₂ ← β₃·m₂ + (1 − β₃)·g      v ← β₂·v + (1 − β₂)·g²
/// u = −α·((m₁/(1 − β₁ᵗ) + a·m₂) / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λ·θ)
/// ```
pub struct Ademamix {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the fast momentum.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Decay β₃ of the slow momentum (not debiased).
    pub b3: ScalarOrSchedule,
    /// Weight `a` of the slow momentum.
    pub alpha: ScalarOrSchedule,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Ademamix {
    fn default() -> Self {
        Ademamix {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.999,
            b3: 0.9999.into(),
            alpha: 5.0.into(),
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: 0.0.into(),
            mask: None,
        }
    }
}
/// optax `contrib.ademamix`: `scale_by_ademamix → add_decayed_weights → scale_by_learning_rate`.
pub fn ademamix(c: Ademamix) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdemamix::new(ScaleByAdemamixConfig {
            b1: c.b1,
            b2: c.b2,
            b3: c.b3,
            alpha: c.alpha,
            eps: c.eps,
            eps_root: c.eps_root,
        })),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `contrib.simplified_ademamix` (Morwani et al., "Connections between Schedule-Free
/// Optimizers, AdEMAMix, and Accelerated SGD Variants", 2025): an undamped momentum plus a
/// weighted current gradient, over Adam's second moment.
///
/// ```text
/// m ← β₁·m + g      v ← β₂·v + (1 − β₂)·g²
/// u = −α·((m + a(t)·g) / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λ·θ)
/// ```
pub struct SimplifiedAdemamix {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the momentum.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Weight `a` of the current gradient, a constant or a schedule.
    pub alpha: LearningRate,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// ε_root added inside the square root.
    pub eps_root: f64,
    /// Weight decay λ, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for SimplifiedAdemamix {
    fn default() -> Self {
        SimplifiedAdemamix {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.99,
            b2: 0.95,
            alpha: 0.0.into(),
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: 0.0.into(),
            mask: None,
        }
    }
}
/// optax `contrib.simplified_ademamix`: `scale_by_simplified_ademamix → add_decayed_weights →
/// scale_by_learning_rate`.
pub fn simplified_ademamix(c: SimplifiedAdemamix) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleBySimplifiedAdemamix::new(ScaleBySimplifiedAdemamixConfig {
            b1: c.b1,
            b2: c.b2,
            alpha: c.alpha,
            eps: c.eps,
            eps_root: c.eps_root,
        })),
        add_decayed_weights(c.weight_decay, c.mask),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `contrib.adopt` (Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β₂ with the
/// Optimal Rate", NeurIPS 2024): the gradient normalized by the previous second moment before it
/// enters the momentum.
///
/// ```text
/// n = g / max(√v₋₁, ε),  clipped to ±t^¼      m ← β₁·m + (1 − β₁)·n      v ← β₂·v + (1 − β₂)·g²
/// u = −α·m      (the first step only sets v = g²)
/// ```
pub struct Adopt {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Decay β₁ of the momentum.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// Floor ε of the denominator.
    pub eps: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Clip the normalized gradient to `±t^¼`.
    pub use_clipping: bool,
}
impl Default for Adopt {
    fn default() -> Self {
        Adopt {
            learning_rate: DEFAULT_LEARNING_RATE.into(),
            b1: 0.9,
            b2: 0.9999,
            eps: 1e-6,
            nesterov: false,
            use_clipping: true,
        }
    }
}
/// optax `contrib.adopt`: `scale_by_adopt → scale_by_learning_rate`.
pub fn adopt(c: Adopt) -> Box<dyn Transform> {
    chain(vec![
        boxed(ScaleByAdopt::new(ScaleByAdoptConfig {
            b1: c.b1,
            b2: c.b2,
            eps: c.eps,
            nesterov: c.nesterov,
            use_clipping: c.use_clipping,
        })),
        scale_by_learning_rate(c.learning_rate),
    ])
}

/// optax `contrib.cocob` (Orabona & Tommasi, "Training Deep Networks without Learning Rates Through
/// Coin Betting", NeurIPS 2017): each coordinate bets a fraction of its accumulated reward on the
/// direction of its gradients.
///
/// ```text
/// with g' = α_lr·(g + λ·θ):  L ← max(L, |g'|),  G ← G + |g'|,  R ← max(R − g'·(θ − θ₀), 0),
/// S ← S + g'      θ = θ₀ − S/(L·max(G + L, a·L))·(L + R)
/// ```
pub struct Cocob {
    /// Scale α_lr of the gradient (optax's default 1.0: the method needs no learning rate).
    pub learning_rate: LearningRate,
    /// Bound `a` on the bet fraction at the start.
    pub alpha: f64,
    /// ε, the starting value of the largest gradient seen.
    pub eps: f64,
    /// Weight decay λ added to the gradient.
    pub weight_decay: ScalarOrSchedule,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Cocob {
    fn default() -> Self {
        Cocob { learning_rate: 1.0.into(), alpha: 100.0, eps: 1e-8, weight_decay: 0.0.into(), mask: None }
    }
}
/// optax `contrib.cocob`: `add_decayed_weights → scale_by_learning_rate(flip_sign=False) →
/// scale_by_cocob`.
pub fn cocob(c: Cocob) -> Box<dyn Transform> {
    chain(vec![
        add_decayed_weights(c.weight_decay, c.mask),
        boxed(ScaleByLearningRate::new(c.learning_rate, false)),
        boxed(ScaleByCocob::new(c.alpha, c.eps)),
    ])
}

/// optax `contrib.dadapt_adamw` (Defazio & Mishchenko, "Learning-Rate-Free Learning by
/// D-Adaptation", ICML 2023): AdamW whose step size `d` is estimated from the gradients, a lower
/// bound on the distance to the solution.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·d·α·g      v ← β₂·v + (1 − β₂)·g²      s ← √β₂·s + (1 − √β₂)·d·α·g
/// d ← max(d, (Σ weighted ⟨g, s⟩ / (1 − √β₂)) / ‖s‖₁)
/// u = −m/(√v + d·ε) − λ·d·α·θ
/// ```
pub struct DadaptAdamW {
    /// Learning rate α, a multiplier of the estimated step (optax's default 1.0).
    pub learning_rate: LearningRate,
    /// Decays (β₁, β₂) of the moments.
    pub betas: (f64, f64),
    /// ε, scaled by `d`, added to the denominator.
    pub eps: f64,
    /// The initial estimate of `d`.
    pub estim_lr0: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
}
impl Default for DadaptAdamW {
    fn default() -> Self {
        DadaptAdamW { learning_rate: 1.0.into(), betas: (0.9, 0.999), eps: 1e-8, estim_lr0: 1e-6, weight_decay: 0.0 }
    }
}
/// optax `contrib.dadapt_adamw`, one transformation that returns the whole step.
pub fn dadapt_adamw(c: DadaptAdamW) -> Box<dyn Transform> {
    let (b1, b2) = c.betas;
    boxed(t::DadaptAdamw::new(t::DadaptAdamwConfig {
        learning_rate: c.learning_rate,
        betas: (b1, b2),
        eps: c.eps,
        estim_lr0: c.estim_lr0,
        weight_decay: c.weight_decay,
    }))
}

#[doc(inline)]
pub use crate::transforms::ProdigyConfig as Prodigy;

/// optax `contrib.prodigy`, one transformation that returns the whole step.
pub fn prodigy(c: Prodigy) -> Box<dyn Transform> {
    boxed(t::Prodigy::new(c))
}

/// optax `contrib.dog` (Ivgi et al., "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
/// Schedule", ICML 2023): SGD whose step is the largest distance travelled from the initial point
/// over the root of the summed squared gradient norms.
///
/// ```text
/// r̄ ← max(r̄, ‖θ − θ₀‖)      G ← G + ‖g‖²      u = −α·(r̄/√(G + ε))·(g + λ·θ)
/// ```
pub struct Dog {
    /// Learning rate α, a multiplier of the step (optax's default 1.0).
    pub learning_rate: LearningRate,
    /// How the first step's distance `r̄` is chosen.
    pub init_step: DogInit,
    /// ε added under the root.
    pub eps: f64,
    /// Weight decay λ added to the gradient; `None`: none.
    pub weight_decay: Option<ScalarOrSchedule>,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Dog {
    fn default() -> Self {
        Dog {
            learning_rate: 1.0.into(),
            init_step: DogInit::Heuristic(1e-6),
            eps: 1e-8,
            weight_decay: None,
            mask: None,
        }
    }
}
/// optax `contrib.dog`: `[add_decayed_weights] → scale_by_dog → scale_by_learning_rate`.
pub fn dog(c: Dog) -> Box<dyn Transform> {
    let mut links = vec![];
    if let Some(wd) = c.weight_decay {
        links.push(add_decayed_weights(wd, c.mask));
    }
    links.push(boxed(ScaleByDog::new(c.init_step, c.eps)));
    links.push(scale_by_learning_rate(c.learning_rate));
    chain(links)
}

/// optax `contrib.dowg` (Khaled et al., "DoWG Unleashed: An Efficient Universal Parameter-Free
/// Gradient Descent Method", NeurIPS 2023): DoG with the squared gradient norms weighted by the
/// squared distance.
///
/// ```text
/// r̄² ← max(r̄², ‖θ − θ₀‖²)      G ← G + r̄²·‖g‖²      u = −α·(r̄²/(√G + ε))·(g + λ·θ)
/// ```
pub struct Dowg {
    /// Learning rate α, a multiplier of the step (optax's default 1.0).
    pub learning_rate: LearningRate,
    /// The initial guess of the squared distance to the solution; `None`: from the parameters.
    pub init_estim_sq_dist: Option<f64>,
    /// ε added to the denominator.
    pub eps: f64,
    /// Weight decay λ added to the gradient; `None`: none.
    pub weight_decay: Option<ScalarOrSchedule>,
    /// The parameters weight decay applies to; `None`: all.
    pub mask: Option<Vec<bool>>,
}
impl Default for Dowg {
    fn default() -> Self {
        Dowg { learning_rate: 1.0.into(), init_estim_sq_dist: None, eps: 1e-4, weight_decay: None, mask: None }
    }
}
/// optax `contrib.dowg`: `[add_decayed_weights] → scale_by_dowg → scale_by_learning_rate`.
pub fn dowg(c: Dowg) -> Box<dyn Transform> {
    let mut links = vec![];
    if let Some(wd) = c.weight_decay {
        links.push(add_decayed_weights(wd, c.mask));
    }
    links.push(boxed(ScaleByDowg::new(c.init_estim_sq_dist, c.eps)));
    links.push(scale_by_learning_rate(c.learning_rate));
    chain(links)
}

/// optax `contrib.madgrad` (Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized,
/// Adaptive, Dual Averaged Gradient Method for Stochastic Optimization", JMLR 2022): dual
/// averaging with a cube-root denominator and momentum toward the dual iterate.
///
/// ```text
/// λₜ = α·√(t + 1)      s ← s + λₜ·g      ν ← ν + λₜ·g²      z = θ₀ − s/(∛ν + ε)
/// θ ← μ·θ + (1 − μ)·z    (with g + λ·θ in place of g for weight decay)
/// ```
pub struct Madgrad {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 1e-3.
    pub learning_rate: LearningRate,
    /// Momentum μ.
    pub momentum: f64,
    /// Weight decay λ added to the gradient.
    pub weight_decay: ScalarOrSchedule,
    /// ε added to the denominator.
    pub eps: f64,
}
impl Default for Madgrad {
    fn default() -> Self {
        Madgrad { learning_rate: DEFAULT_LEARNING_RATE.into(), momentum: 0.9, weight_decay: 0.0.into(), eps: 1e-6 }
    }
}
/// optax `contrib.madgrad`: `add_decayed_weights → scale_by_madgrad`.
pub fn madgrad(c: Madgrad) -> Box<dyn Transform> {
    chain(vec![
        boxed(AddDecayedWeights::new(c.weight_decay)),
        boxed(ScaleByMadgrad::new(c.learning_rate, ScaleByMadgradConfig { momentum: c.momentum, eps: c.eps })),
    ])
}

/// optax `contrib.mechanize` (Cutkosky et al., "Mechanic: A Learning Rate Tuner", NeurIPS 2023):
/// learns the scale of a base optimizer's steps online.
///
/// ```text
/// Δ ← Δ + base(g)        (Δ = (θ − θ₀)/Σs before the step)
/// h = −⟨g + λ·Σs·‖g‖/‖θ‖·θ, Δ₋₁⟩
/// for each βᵢ = 1 − 10⁻ⁱ:  rᵢ ← βᵢ·rᵢ + clip(h, ±mᵢ)·sᵢ,  mᵢ ← max(βᵢ·mᵢ, |h| + ε),  vᵢ ← βᵢ²·vᵢ + h²,
///                          sᵢ ← (s_init/n·mᵢ + max(rᵢ, 0)) / (√vᵢ + ε)
/// θ = θ₀ + (Σs)·Δ
/// ```
pub struct Mechanize {
    /// The optimizer whose steps are scaled (optax requires it).
    pub base_optimizer: Box<dyn Transform>,
    /// Weight decay λ of the scale's objective.
    pub weight_decay: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// The initial scale, shared among the betas.
    pub s_init: f64,
    /// How many decays βᵢ = 1 − 10⁻ⁱ are tuned (1 to 64).
    pub num_betas: usize,
}
impl Mechanize {
    /// `base_optimizer` with optax's defaults for the rest.
    pub fn new(base_optimizer: Box<dyn Transform>) -> Self {
        Mechanize { base_optimizer, weight_decay: 1e-2, eps: 1e-8, s_init: 1e-6, num_betas: 6 }
    }
}
/// optax `contrib.mechanize`; `num_betas` outside 1..=64 is an error (βᵢ rounds to 1 in `f32`
/// from i = 8 on: more add nothing).
pub fn mechanize(c: Mechanize) -> Result<Box<dyn Transform>> {
    if !(1..=64).contains(&c.num_betas) {
        return Err(Error::Field {
            context: "optax.contrib.mechanize: `num_betas`".into(),
            message: format!("must be between 1 and 64, got {}", c.num_betas),
        });
    }
    Ok(boxed(t::Mechanize::new(
        c.base_optimizer,
        t::MechanizeConfig { weight_decay: c.weight_decay, eps: c.eps, s_init: c.s_init, num_betas: c.num_betas },
    )))
}

/// optax `contrib.muon` (Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024;
/// Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024): momentum orthogonalized by
/// Newton–Schulz iterations for the matrices, Adam for the other parameters.
///
/// ```text
/// matrices:  m ← β·m + (1 − β)·g,  m̂ Nesterov-debiased,  O = NS(m̂)  (X ← aX + (bA + cA²)X, A = XXᵀ)
///            (adaptive: O ← ⟨m̂, O⟩·O)
///            u = −α·(s·O + λ·θ),  s = √max(1, fan_out/fan_in)  or  consistent_rms·√max(fan_in, fan_out)
/// others:    u = −α_adam·(Adam(g; adam_b1, adam_b2, eps, adam_eps_root) + λ_adam·θ)
/// ```
pub struct Muon {
    /// Learning rate α, a constant or a schedule. optax requires it; the default here is 0.02, the
    /// rate of Jordan's reference runs.
    pub learning_rate: LearningRate,
    /// Newton–Schulz coefficients: one triple (a, b, c) for every iteration, or one per iteration.
    pub ns_coeffs: NsCoeffs,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Decay β of the momentum.
    pub beta: f64,
    /// ε of the normalization before Newton–Schulz (and Adam's ε).
    pub eps: f64,
    /// Weight decay λ of the matrices, multiplied by the learning rate.
    pub weight_decay: ScalarOrSchedule,
    /// Which parameters the matrices' weight decay applies to, one entry per parameter (`None`:
    /// all; the entries of parameters Adam updates do not matter).
    pub weight_decay_mask: Option<Vec<bool>>,
    /// The type both momenta are stored in between steps.
    pub mu_dtype: MomentDtype,
    /// Nesterov momentum (both parts).
    pub nesterov: bool,
    /// Scale the orthogonalized update by its inner product with the momentum.
    pub adaptive: bool,
    /// How the Newton–Schulz input is scaled.
    pub preconditioning: NsPreconditioning,
    /// Adam's β₁ for the parameters that are not matrices.
    pub adam_b1: f64,
    /// Adam's β₂.
    pub adam_b2: f64,
    /// Adam's ε_root.
    pub adam_eps_root: f64,
    /// Adam's weight decay.
    pub adam_weight_decay: ScalarOrSchedule,
    /// Adam's learning rate; `None`: `learning_rate`.
    pub adam_learning_rate: Option<LearningRate>,
    /// One entry per parameter: the axes Muon orthogonalizes over, or `None` for a parameter
    /// Adam updates. Without it (`None`) the 2-D parameters go to Muon, the others to Adam.
    pub muon_weight_dimension_numbers: Option<Vec<Option<MuonDims>>>,
    /// Scale updates to this RMS (`Some(0.2)` matches AdamW's) instead of the width transfer.
    pub consistent_rms: Option<f64>,
}
impl Default for Muon {
    fn default() -> Self {
        Muon {
            learning_rate: 0.02.into(),
            ns_coeffs: NsCoeffs::default(),
            ns_steps: 5,
            beta: 0.95,
            eps: 1e-8,
            weight_decay: 0.0.into(),
            weight_decay_mask: None,
            mu_dtype: MomentDtype::F32,
            nesterov: true,
            adaptive: false,
            preconditioning: NsPreconditioning::Frobenius,
            adam_b1: 0.9,
            adam_b2: 0.999,
            adam_eps_root: 0.0,
            adam_weight_decay: 0.0.into(),
            adam_learning_rate: None,
            muon_weight_dimension_numbers: None,
            consistent_rms: None,
        }
    }
}

/// The group of each parameter of [`muon`]: Muon with weight decay, Muon without, Adam.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MuonGroup {
    Decayed = 0,
    Undecayed = 1,
    Adam = 2,
}

/// The list argument `what` of [`muon`] checked against the parameter count.
fn per_param<'a, T>(what: &str, list: &'a Option<Vec<T>>, shapes: &[Vec<usize>]) -> Result<Option<&'a [T]>> {
    match list {
        Some(l) if l.len() != shapes.len() => Err(Error::Invalid(format!(
            "optax.contrib.muon: {what} has {} entries for {} parameters (one per parameter)",
            l.len(),
            shapes.len()
        ))),
        l => Ok(l.as_deref()),
    }
}

/// optax `contrib.muon`: a partition, `scale_by_muon → scale_by_shape → add_decayed_weights →
/// scale_by_learning_rate` for the Muon parameters (the 2-D ones, or those with dimension
/// numbers) and `scale_by_adam → add_decayed_weights → scale_by_learning_rate` for the others.
/// With a weight-decay mask, the Muon parameters with and without decay are two groups (each with
/// its own Muon state).
pub fn muon(c: Muon) -> Box<dyn Transform> {
    let masked = c.weight_decay_mask.is_some();
    let (dims, mask) = (c.muon_weight_dimension_numbers, c.weight_decay_mask);
    let (group_dims, group_mask) = (dims.clone(), mask.clone());
    let group = move |i: usize, shapes: &[Vec<usize>]| -> Result<MuonGroup> {
        let is_muon = match per_param("muon_weight_dimension_numbers", &group_dims, shapes)? {
            Some(d) => {
                if let Some(dims) = &d[i] {
                    dims.check(&shapes[i]).map_err(|e| {
                        let why = match e {
                            Error::Invalid(m) => m,
                            other => other.to_string(),
                        };
                        Error::Invalid(format!("optax.contrib.muon: parameter {i} (shape {:?}): {why}", shapes[i]))
                    })?;
                }
                d[i].is_some()
            }
            None => shapes[i].len() == 2,
        };
        let decayed = per_param("weight_decay_mask", &group_mask, shapes)?.is_none_or(|m| m[i]);
        Ok(match (is_muon, decayed) {
            (false, _) => MuonGroup::Adam,
            (true, true) => MuonGroup::Decayed,
            (true, false) => MuonGroup::Undecayed,
        })
    };
    // Every Muon group and Adam (unless it has its own rate) share the rate.
    let muon_groups: &[MuonGroup] =
        if masked { &[MuonGroup::Decayed, MuonGroup::Undecayed] } else { &[MuonGroup::Decayed] };
    let muon_count = muon_groups.len();
    let mut lrs = share_n(c.learning_rate, muon_count + usize::from(c.adam_learning_rate.is_none()));
    let adam_lr = match c.adam_learning_rate {
        Some(adam_lr) => adam_lr,
        None => lrs.pop().expect("a rate shared with Adam"),
    };
    let mut weight_decay = Some(c.weight_decay);
    let mut transforms: Vec<Box<dyn Transform>> = vec![];
    for (&g, lr) in muon_groups.iter().zip(lrs) {
        // With dimension numbers the groups follow from the lists alone: each Muon group's
        // members take theirs in order (a list of the wrong length fails `init` in `group`).
        let member_dims = dims.as_ref().map(|d| {
            let in_group = |i: usize| {
                !masked || mask.as_ref().and_then(|m| m.get(i)).copied().unwrap_or(true) == (g == MuonGroup::Decayed)
            };
            d.iter()
                .enumerate()
                .filter(|&(i, x)| x.is_some() && in_group(i))
                .filter_map(|(_, x)| x.clone())
                .collect::<Vec<_>>()
        });
        let mut links = vec![
            boxed(ScaleByMuon::new(ScaleByMuonConfig {
                ns_coeffs: c.ns_coeffs.clone(),
                ns_steps: c.ns_steps,
                beta: c.beta,
                eps: c.eps,
                nesterov: c.nesterov,
                adaptive: c.adaptive,
                preconditioning: c.preconditioning,
                mu_dtype: c.mu_dtype,
                weight_dimension_numbers: member_dims.clone(),
            })),
            boxed(ScaleByShape::new(c.consistent_rms, member_dims)),
        ];
        if g == MuonGroup::Decayed {
            // One group decays (the loop's other group, with a mask, does not).
            let wd = weight_decay.take().expect("a single decayed Muon group");
            links.push(boxed(AddDecayedWeights::new(wd)));
        }
        links.push(scale_by_learning_rate(lr));
        transforms.push(chain(links));
    }
    transforms.push(chain(vec![
        boxed(
            ScaleByAdam::new(ScaleByAdamConfig {
                b1: c.adam_b1,
                b2: c.adam_b2,
                eps: c.eps,
                eps_root: c.adam_eps_root,
                nesterov: c.nesterov,
            })
            .mu_dtype(c.mu_dtype),
        ),
        boxed(AddDecayedWeights::new(c.adam_weight_decay)),
        scale_by_learning_rate(adam_lr),
    ]));
    // Unmasked, the groups are Muon and Adam, numbered 0 and 1 as ever.
    boxed(Partition::by_param(transforms, move |i, shapes| {
        group(i, shapes).map(|g| if g == MuonGroup::Adam { muon_count } else { g as usize })
    }))
}

/// `lr` shared by `n` learning rates (a schedule is a pure function of the step, so all see the
/// same values); a constant is copied.
fn share_n(lr: LearningRate, n: usize) -> Vec<LearningRate> {
    struct Shared(Arc<dyn Schedule>);
    impl Schedule for Shared {
        fn value(&self, step: u64) -> f64 {
            self.0.value(step)
        }
        fn max_steps(&self) -> Option<u64> {
            self.0.max_steps()
        }
    }
    match lr {
        LearningRate::Constant(x) => (0..n).map(|_| LearningRate::Constant(x)).collect(),
        LearningRate::Schedule(s) => {
            let s: Arc<dyn Schedule> = Arc::from(s);
            (0..n).map(|_| LearningRate::Schedule(Box::new(Shared(s.clone())))).collect()
        }
    }
}

/// Where an optimizer's learning rate comes from, which decides when it is read: its own argument,
/// or optax's `inject_hyperparams` around it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateSource {
    /// The optimizer's own argument, read where its library reads it (a Schedule-Free alias's
    /// averaging reads a schedule at its own step count, which starts at 1, its base optimizer at
    /// its count from 0, so the two read consecutive values).
    #[default]
    Argument,
    /// `inject_hyperparams`: the rate of the step (a schedule at the step count from 0), set
    /// before each update (for a Schedule-Free alias, the peak of its warm-up when it has one).
    Injected,
}

/// The base optimizer's and the averaging's learning rates of a Schedule-Free alias: the given
/// rate through optax's linear warm-up from 0 when there is one, the averaging's read one step
/// back when the rate is injected (its count starts at 1).
fn schedule_free_rates(
    learning_rate: LearningRate,
    warmup_steps: Option<u64>,
    source: RateSource,
) -> (LearningRate, LearningRate) {
    /// The rate read `lag` steps back, as the peak of the warm-up when there is one.
    struct Lagged {
        rate: Arc<dyn Schedule>,
        lag: u64,
        warmup_steps: Option<u64>,
    }
    impl Schedule for Lagged {
        fn value(&self, step: u64) -> f64 {
            let peak = self.rate.value(step.saturating_sub(self.lag));
            match self.warmup_steps {
                // `warmup_constant_schedule(0, peak, w)`: optax's linear schedule.
                Some(w) => schedule::polynomial_at(
                    &schedule::Polynomial {
                        init_value: 0.0,
                        end_value: peak,
                        power: 1.0,
                        transition_steps: w,
                        transition_begin: 0,
                    },
                    step,
                ),
                None => peak,
            }
        }
    }
    match learning_rate {
        LearningRate::Constant(x) => {
            let rate = || match warmup_steps {
                Some(w) => LearningRate::Schedule(schedule::warmup_constant(0.0, x, w)),
                None => LearningRate::Constant(x),
            };
            (rate(), rate())
        }
        LearningRate::Schedule(s) => {
            let rate: Arc<dyn Schedule> = Arc::from(s);
            let lag = match source {
                RateSource::Argument => 0,
                RateSource::Injected => 1,
            };
            let part = |lag| LearningRate::Schedule(Box::new(Lagged { rate: rate.clone(), lag, warmup_steps }));
            (part(0), part(lag))
        }
    }
}

/// optax `contrib.schedule_free_sgd` (Defazio et al., "The Road Less Scheduled", NeurIPS 2024):
/// SGD on a sequence `z` whose weighted average `x` is the model, evaluated at their
/// interpolation `y`.
///
/// ```text
/// z ← z − γₜ·(g(y) + λ·y)      cₜ = γₜ^p / Σ γᵢ^p      x ← (1 − cₜ)·x + cₜ·z
/// y = (1 − β₁)·z + β₁·x          (γₜ: the rate, warmed up linearly; p = weight_lr_power)
/// ```
pub struct ScheduleFreeSgd {
    /// Learning rate γ (optax's default 1.0), or a schedule read as `rate_source` says.
    pub learning_rate: LearningRate,
    /// Where `learning_rate` comes from, which decides the counts a schedule is read at.
    pub rate_source: RateSource,
    /// Steps of a linear warm-up of the rate from 0; `None`: none. With a schedule, the
    /// warm-up's peak is the schedule's value (optax's alias takes both only through
    /// `inject_hyperparams`).
    pub warmup_steps: Option<u64>,
    /// Interpolation β₁ between the average and the sequence.
    pub b1: f64,
    /// Weight decay λ added to the gradient; `None`: none.
    pub weight_decay: Option<ScalarOrSchedule>,
    /// Exponent `p` of the rate in the averaging weights.
    pub weight_lr_power: f64,
}
impl Default for ScheduleFreeSgd {
    fn default() -> Self {
        ScheduleFreeSgd {
            learning_rate: 1.0.into(),
            rate_source: RateSource::Argument,
            warmup_steps: None,
            b1: 0.9,
            weight_decay: None,
            weight_lr_power: 2.0,
        }
    }
}
/// optax `contrib.schedule_free_sgd`: `schedule_free` around `[add_decayed_weights] →
/// scale_by_learning_rate`.
pub fn schedule_free_sgd(c: ScheduleFreeSgd) -> Box<dyn Transform> {
    let (base_lr, averaging_lr) = schedule_free_rates(c.learning_rate, c.warmup_steps, c.rate_source);
    let mut links = vec![];
    if let Some(wd) = c.weight_decay {
        links.push(boxed(AddDecayedWeights::new(wd)));
    }
    links.push(scale_by_learning_rate(base_lr));
    boxed(ScheduleFree::new(
        chain(links),
        averaging_lr,
        ScheduleFreeConfig { b1: c.b1, weight_lr_power: c.weight_lr_power },
    ))
}

/// optax `contrib.schedule_free_adamw` (Defazio et al., "The Road Less Scheduled", NeurIPS 2024):
/// Schedule-Free averaging around AdamW without momentum (an RMS-scaled step).
///
/// ```text
/// v ← β₂·v + (1 − β₂)·g(y)²      z ← z − γₜ·(g(y)/(√(v/(1 − β₂ᵗ)) + ε) + λ·y)
/// cₜ = γₜ^p / Σ γᵢ^p      x ← (1 − cₜ)·x + cₜ·z      y = (1 − β₁)·z + β₁·x
/// ```
pub struct ScheduleFreeAdamW {
    /// Learning rate γ (optax's default 0.0025), or a schedule read as `rate_source` says.
    pub learning_rate: LearningRate,
    /// Where `learning_rate` comes from, which decides the counts a schedule is read at.
    pub rate_source: RateSource,
    /// Steps of a linear warm-up of the rate from 0; `None`: none. With a schedule, the
    /// warm-up's peak is the schedule's value (optax's alias takes both only through
    /// `inject_hyperparams`).
    pub warmup_steps: Option<u64>,
    /// Interpolation β₁ between the average and the sequence.
    pub b1: f64,
    /// Decay β₂ of the second moment.
    pub b2: f64,
    /// ε added to the denominator, outside the square root.
    pub eps: f64,
    /// Weight decay λ, multiplied by the rate.
    pub weight_decay: ScalarOrSchedule,
    /// Exponent `p` of the rate in the averaging weights.
    pub weight_lr_power: f64,
}
impl Default for ScheduleFreeAdamW {
    fn default() -> Self {
        ScheduleFreeAdamW {
            learning_rate: 0.0025.into(),
            rate_source: RateSource::Argument,
            warmup_steps: None,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0.into(),
            weight_lr_power: 2.0,
        }
    }
}
/// optax `contrib.schedule_free_adamw`: `schedule_free` around `scale_by_rms(bias_correction) →
/// add_decayed_weights → scale_by_learning_rate`.
pub fn schedule_free_adamw(c: ScheduleFreeAdamW) -> Box<dyn Transform> {
    let (base_lr, averaging_lr) = schedule_free_rates(c.learning_rate, c.warmup_steps, c.rate_source);
    let base = chain(vec![
        boxed(ScaleByRms::new(ScaleByRmsConfig {
            decay: c.b2,
            eps: c.eps,
            eps_in_sqrt: false,
            bias_correction: true,
            ..Default::default()
        })),
        boxed(AddDecayedWeights::new(c.weight_decay)),
        scale_by_learning_rate(base_lr),
    ]);
    boxed(ScheduleFree::new(base, averaging_lr, ScheduleFreeConfig { b1: c.b1, weight_lr_power: c.weight_lr_power }))
}
