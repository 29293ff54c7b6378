//! Second-order closure optimizers: optax `contrib.sophia` (Sophia-H, with Hutchinson's estimate of
//! the Hessian diagonal), which needs Hessian-vector products of the objective.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::rng::SplitMix64;
use crate::spec::Kwargs;
use crate::state::{visit_buffers, StateVisitor};
use crate::transform::{check_init, check_shapes, numel};
use crate::transforms::{decayed_bf16, round_bf16, MomentDtype};

use super::{ClosureOptimizer, Objective};

/// The registry names of this family (`library.name`).
pub const NAMES: &[&str] = &["optax.contrib.sophia"];

/// Builds `library.name` if it belongs to this family (`None` otherwise).
pub fn build(
    library: &str,
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn ClosureOptimizer>>> {
    Some(match (library, name) {
        ("optax", "contrib.sophia") => build_sophia(hparams, shapes).map(|o| Box::new(o) as Box<dyn ClosureOptimizer>),
        _ => return None,
    })
}

/// optax `contrib.sophia`'s arguments, with its defaults (`learning_rate` has none).
pub struct SophiaConfig {
    /// The learning rate, a constant or a schedule of the step.
    pub learning_rate: LearningRate,
    /// Decay of the gradient's moving average.
    pub b1: f64,
    /// Decay of the Hessian diagonal's moving average (updated every `update_interval` steps).
    pub b2: f64,
    /// Floor of the denominator `γ·h`.
    pub eps: f64,
    /// Decoupled weight decay (`add_decayed_weights`).
    pub weight_decay: f64,
    /// Parameters weight decay applies to (`weight_decay_mask`); `None`: all.
    pub weight_decay_mask: Option<Vec<bool>>,
    /// `γ`, the Hessian diagonal's factor in the denominator.
    pub gamma: f64,
    /// Updates are clipped to `[−c, c]`; `None`: not clipped.
    pub clip_threshold: Option<f64>,
    /// The Hessian diagonal is estimated on the steps counted 0, `update_interval`, … (at least 1).
    pub update_interval: u64,
    /// Storage of the gradient average: float32, or bfloat16 (rounded when stored, as optax casts).
    pub mu_dtype: MomentDtype,
    /// Print the share of unclipped updates every `print_win_rate_every_n_steps` steps.
    pub verbose: bool,
    /// See `verbose`.
    pub print_win_rate_every_n_steps: u64,
    /// Seed of the Rademacher vectors (descent's addition: optax takes a jax key,
    /// `PRNGKey(0)` by default, whose draws descent cannot reproduce).
    pub seed: u64,
}

/// optax `contrib.sophia` (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer
/// for Language Model Pre-training", <https://arxiv.org/abs/2305.14342>): `chain(scale_by_sophia,
/// add_decayed_weights(weight_decay, weight_decay_mask), scale_by_learning_rate)`. Per step `t`
/// (from 1), with `g = ∇f(x)`:
///
/// ```text
/// m ← b1·m + (1 − b1)·g ;  m̂ = m / (1 − b1ᵗ)
/// u = clip(m̂ / max(γ·h, ε), −c, c)                 (h: the estimate before this step's update)
/// every update_interval steps (t − 1 ≡ 0):  z ~ Rademacher ;  h ← b2·h + (1 − b2)·z ⊙ (∇²f(x)·z)
/// x ← x − lr·(u + wd·x)
/// ```
///
/// The Hessian-vector product comes from [`Objective::hvp`]: by default a central difference of
/// gradients (see there), exact for a quadratic up to rounding; optax differentiates forward over
/// reverse (`jax.jvp(jax.grad(f))`). A step evaluates the objective once, and on estimate steps
/// twice more for the product. The signs come from descent's generator ([`crate::rng`]) seeded
/// by `seed`, saved with the state.
pub struct Sophia {
    cfg: SophiaConfig,
    shapes: Vec<Vec<usize>>,
    count: u64,
    mu: Vec<Vec<f32>>,
    nu: Vec<Vec<f32>>,
    rng: SplitMix64,
    grads: Vec<Vec<f32>>,
}

fn field_err(key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Field { context: format!("optax.contrib.sophia: `{key}`"), message: msg.to_string() }
}

impl Sophia {
    /// A `Sophia` with these hyper-parameters for parameters of these shapes.
    pub fn new(cfg: SophiaConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        check_shapes(shapes)?;
        if let Some(x) = cfg.learning_rate.constant() {
            if x < 0.0 {
                return Err(field_err("learning_rate", format!("must be non-negative, got {x}")));
            }
        }
        for (key, x) in [("b1", cfg.b1), ("b2", cfg.b2)] {
            if !(0.0..=1.0).contains(&x) {
                return Err(field_err(key, format!("must be in [0, 1], got {x}")));
            }
        }
        for (key, x) in [("eps", cfg.eps), ("gamma", cfg.gamma), ("weight_decay", cfg.weight_decay)] {
            if x < 0.0 {
                return Err(field_err(key, format!("must be non-negative, got {x}")));
            }
        }
        if let Some(c) = cfg.clip_threshold {
            if c < 0.0 {
                return Err(field_err("clip_threshold", format!("must be non-negative, got {c}")));
            }
        }
        if cfg.update_interval == 0 {
            return Err(field_err("update_interval", "must be at least 1"));
        }
        if cfg.verbose && cfg.print_win_rate_every_n_steps == 0 {
            return Err(field_err("print_win_rate_every_n_steps", "must be at least 1 when `verbose` is true"));
        }
        if let Some(m) = &cfg.weight_decay_mask {
            if m.len() != shapes.len() {
                return Err(field_err(
                    "weight_decay_mask",
                    format!("{} entries for {} parameters", m.len(), shapes.len()),
                ));
            }
        }
        let zeros = |shapes: &[Vec<usize>]| shapes.iter().map(|s| vec![0.0f32; numel(s)]).collect::<Vec<_>>();
        Ok(Sophia {
            rng: SplitMix64::new(cfg.seed),
            shapes: shapes.to_vec(),
            count: 0,
            mu: zeros(shapes),
            nu: zeros(shapes),
            grads: zeros(shapes),
            cfg,
        })
    }
}

fn build_sophia(hparams: &Value, shapes: &[Vec<usize>]) -> Result<Sophia> {
    let mut k = Kwargs::new("optax.contrib.sophia", hparams)?;
    let cfg = SophiaConfig {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.965)?,
        b2: k.f64("b2", 0.99)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.f64("weight_decay", 1e-4)?,
        weight_decay_mask: k.mask("weight_decay_mask", shapes.len())?,
        gamma: k.f64("gamma", 0.01)?,
        clip_threshold: k.opt_f64("clip_threshold")?,
        update_interval: k.u64("update_interval", 10)?,
        mu_dtype: k.mu_dtype()?,
        verbose: k.bool("verbose", false)?,
        print_win_rate_every_n_steps: k.u64("print_win_rate_every_n_steps", 0)?,
        seed: k.u64("seed", 0)?,
    };
    // Absent (optax's default, `None` in the signature): Hutchinson's estimator, the only one here.
    if k.value("hessian_diagonal_fn").is_some() {
        return Err(field_err(
            "hessian_diagonal_fn",
            "only the default (Hutchinson's estimator) is implemented; a transformation cannot be given here",
        ));
    }
    k.finish()?;
    // `clip_threshold`'s default is 1.0, `null` turns clipping off.
    let cfg = match hparams.get("clip_threshold") {
        None => SophiaConfig { clip_threshold: Some(1.0), ..cfg },
        Some(_) => cfg,
    };
    Sophia::new(cfg, shapes)
}

impl ClosureOptimizer for Sophia {
    fn step(&mut self, params: &mut [Vec<f32>], objective: &mut dyn Objective) -> Result<f32> {
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        check_init(&self.shapes, &views)?;
        let c = &self.cfg;
        let value = objective.value_and_grad(params, &mut self.grads)?;
        let lr = c.learning_rate.at(self.count) as f32;
        let estimate = self.count.is_multiple_of(c.update_interval);
        // `safe_int32_increment`: the count stops at the largest int32.
        let count_inc = (self.count + 1).min(i32::MAX as u64);
        let (b1, b2) = (c.b1 as f32, c.b2 as f32);
        // `1 − β₁` in double precision, then f32, as optax computes it from the Python float.
        let one_minus_b1 = (1.0 - c.b1) as f32;
        let bias_correction = 1.0 - b1.powi(count_inc.min(i32::MAX as u64) as i32);
        let (gamma, eps) = (c.gamma as f32, c.eps as f32);
        let bf16 = c.mu_dtype == MomentDtype::Bf16;
        let mut updates: Vec<Vec<f32>> = Vec::with_capacity(params.len());
        let mut not_clipped = 0u64;
        let mut total = 0u64;
        for ((g, m), h) in self.grads.iter().zip(self.mu.iter_mut()).zip(&self.nu) {
            let mut u = Vec::with_capacity(g.len());
            for ((&g, m), &h) in g.iter().zip(m.iter_mut()).zip(h) {
                let mu = one_minus_b1 * g + if bf16 { decayed_bf16(b1, *m) } else { b1 * *m };
                let mut x = (mu / bias_correction) / (gamma * h).max(eps);
                if let Some(t) = c.clip_threshold {
                    let t = t as f32;
                    not_clipped += (x.abs() < t) as u64;
                    x = crate::kernel::clip(x, -t, t);
                }
                *m = if bf16 { round_bf16(mu) } else { mu };
                u.push(x);
            }
            total += g.len() as u64;
            updates.push(u);
        }
        if c.verbose && c.clip_threshold.is_some() && count_inc.is_multiple_of(c.print_win_rate_every_n_steps) {
            eprintln!("Sophia optimizer win rate: {}", not_clipped as f64 / total.max(1) as f64);
        }
        if estimate {
            let signs: Vec<Vec<f32>> =
                self.shapes.iter().map(|s| (0..numel(s)).map(|_| self.rng.sign()).collect()).collect();
            let mut hvp: Vec<Vec<f32>> = signs.iter().map(|s| vec![0.0; s.len()]).collect();
            objective.hvp(params, &signs, &mut hvp)?;
            for ((h, z), hv) in self.nu.iter_mut().zip(&signs).zip(&hvp) {
                for ((h, &z), &hv) in h.iter_mut().zip(z).zip(hv) {
                    *h = (1.0 - b2) * (hv * z) + b2 * *h;
                }
            }
        }
        self.count = count_inc;
        let wd = self.cfg.weight_decay as f32;
        for (i, (p, u)) in params.iter_mut().zip(&updates).enumerate() {
            let decay = wd != 0.0 && self.cfg.weight_decay_mask.as_ref().is_none_or(|m| m[i]);
            for (p, &u) in p.iter_mut().zip(u) {
                let u = if decay { u + wd * *p } else { u };
                *p += -lr * u;
            }
        }
        Ok(value)
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.cfg.learning_rate);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("count", &mut self.count)?;
        if self.cfg.mu_dtype == MomentDtype::Bf16 {
            for (i, b) in self.mu.iter_mut().enumerate() {
                v.bf16_buffer(&format!("mu.{i}"), b)?;
            }
        } else {
            visit_buffers(v, "mu", &mut self.mu)?;
        }
        visit_buffers(v, "nu", &mut self.nu)?;
        self.rng.visit(v, "hessian_fn_state.key")
    }
}
