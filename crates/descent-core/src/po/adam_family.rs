//! Adam-like optimizers of pytorch_optimizer (AdaBound, AdamP, CAME, LaProp, MARS, QHAdam, Ranger,
//! StableAdamW, Tiger, AdaBelief, AdaFactor, Adan, Lamb, Lion, Yogi, diffGrad, SGDP), with the
//! library's argument names and defaults.
//!
//! The elementwise ones are fused kernels ([`crate::transform::Elementwise`]); Ranger's gradient
//! centralization and StableAdamW's update clipping read a per-tensor reduction first; AdamP, SGDP,
//! CAME, MARS, Lamb and AdaFactor need whole tensors (projections, factored moments, norms).

use serde_json::Value;

use crate::error::Result;
use crate::transform::Transform;

mod common;
mod elementwise;
mod prepared;

use common::Args;
use elementwise::*;
use prepared::*;

/// The optimizers of this family.
pub const NAMES: &[&str] = &[
    "adabelief",
    "adabound",
    "adan",
    "diffgrad",
    "laprop",
    "lion",
    "qhadam",
    "ranger",
    "stableadamw",
    "tiger",
    "yogi",
];

/// Builds `name` if it belongs to this family (`None` otherwise).
pub fn build(
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn Transform>>> {
    if !NAMES.contains(&name) {
        return None;
    }
    Some(match param_groups {
        None => build_one(name, hparams, shapes, false),
        Some(groups) => crate::spec::build_groups(&format!("po.{name}"), hparams, groups, |merged, idx| {
            let sub: Vec<Vec<usize>> = idx.iter().filter_map(|&i| shapes.get(i).cloned()).collect();
            build_one(name, merged, &sub, true)
        }),
    })
}

/// One optimizer (or one parameter group's) from its keyword arguments. `grouped`: part of a
/// `param_groups` run, where a norm over all parameters (Adan's and Lamb's clipping) would span
/// the other groups too, which a group's transformation cannot see.
fn build_one(name: &str, hparams: &Value, shapes: &[Vec<usize>], grouped: bool) -> Result<Box<dyn Transform>> {
    let _ = shapes;
    let mut a = Args::new(name, hparams)?;
    let tx: Box<dyn Transform> = match name {
        "adabound" => {
            let lr = a.lr(1e-3)?;
            let final_lr = a.f64("final_lr", 1e-1)?;
            let betas = a.betas([0.9, 0.999])?;
            let gamma = a.positive("gamma", 1e-3)?;
            let decay = a.decay(0.0, true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            Box::new(AdaBound::new(AdaBoundConfig { lr, final_lr, betas, gamma, decay, ams_bound, eps, maximize }))
        }
        "laprop" => {
            let lr = a.lr(4e-4)?;
            let betas = a.betas([0.9, 0.999])?;
            let centered = a.bool("centered", false)?;
            let steps_before_using_centered = a.u64("steps_before_using_centered", 10)?;
            let decay = a.decay(0.0, true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-15)?;
            let maximize = a.maximize()?;
            Box::new(LaProp::new(LaPropConfig {
                lr,
                betas,
                centered,
                steps_before_using_centered,
                decay,
                ams_bound,
                eps,
                maximize,
            }))
        }
        "qhadam" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let nus = match a.k.f64s("nus")? {
                None => [1.0, 1.0],
                Some(v) if v.len() == 2 => [v[0], v[1]],
                Some(v) => return Err(a_err(name, "nus", format!("expects 2 numbers, got {}", v.len()))),
            };
            for (i, nu) in nus.iter().enumerate() {
                if !(0.0..=1.0).contains(nu) {
                    return Err(a_err(name, "nus", format!("nu{} must be in the range [0, 1], got {nu}", i + 1)));
                }
            }
            let decay = a.decay(0.0, false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            Box::new(QhAdam::new(QhAdamConfig { lr, betas, nus, decay, eps, maximize }))
        }
        "tiger" => {
            let lr = a.lr(1e-3)?;
            let beta = a.in_range("beta", 0.965, 0.0, 1.0, false)?;
            let decay = a.decay(0.01, true)?;
            let maximize = a.maximize()?;
            Box::new(Tiger::new(TigerConfig { lr, beta, decay, maximize }))
        }
        "lion" => {
            let lr = a.lr(1e-4)?;
            let betas = a.betas([0.9, 0.99])?;
            let decay = a.decay(0.0, true)?;
            let maximize = a.maximize()?;
            Box::new(Lion::new(LionConfig { lr, betas, decay, maximize }))
        }
        "yogi" => {
            let lr = a.lr(1e-2)?;
            let betas = a.betas([0.9, 0.999])?;
            let initial_accumulator = a.f64("initial_accumulator", 1e-6)?;
            let decay = a.decay(0.0, true)?;
            let eps = a.non_negative("eps", 1e-3)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let maximize = a.maximize()?;
            Box::new(Yogi::new(YogiConfig { lr, betas, initial_accumulator, decay, eps, adam_debias, maximize }))
        }
        "adabelief" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let decay = a.decay(0.0, true)?;
            let rectify = a.bool("rectify", false)?;
            let n_sma_threshold = a.int("n_sma_threshold", 5)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-16)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let maximize = a.maximize()?;
            Box::new(AdaBelief::new(AdaBeliefConfig {
                lr,
                betas,
                decay,
                rectify,
                n_sma_threshold,
                degenerated_to_sgd,
                ams_bound,
                eps,
                adam_debias,
                maximize,
            }))
        }
        "diffgrad" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let decay = a.decay(0.0, true)?;
            let rectify = a.bool("rectify", false)?;
            let n_sma_threshold = a.int("n_sma_threshold", 5)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let maximize = a.maximize()?;
            Box::new(DiffGrad::new(DiffGradConfig {
                lr,
                betas,
                decay,
                rectify,
                n_sma_threshold,
                degenerated_to_sgd,
                ams_bound,
                eps,
                adam_debias,
                maximize,
            }))
        }
        "adan" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.98, 0.92, 0.99])?;
            let weight_decay = a.non_negative("weight_decay", 0.0)?;
            let weight_decouple = a.bool("weight_decouple", false)?;
            let max_grad_norm = a.non_negative("max_grad_norm", 0.0)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            if grouped && max_grad_norm != 0.0 {
                return Err(a_err(
                    name,
                    "max_grad_norm",
                    "clips to a norm over every group's gradients; not with param_groups",
                ));
            }
            Box::new(Adan::new(AdanConfig { lr, betas, weight_decay, weight_decouple, max_grad_norm, eps, maximize }))
        }
        "ranger" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.95, 0.999])?;
            let alpha = a.in_range("alpha", 0.5, 0.0, 1.0, true)?;
            let k = a.u64("k", 6)?;
            if k == 0 {
                return Err(a_err(name, "k", "must be positive"));
            }
            let n_sma_threshold = a.int("n_sma_threshold", 5)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", false)?;
            let decay = a.decay(0.0, true)?;
            let use_gc = a.bool("use_gc", true)?;
            let gc_conv_only = a.bool("gc_conv_only", false)?;
            let eps = a.non_negative("eps", 1e-5)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let maximize = a.maximize()?;
            Box::new(Ranger::new(RangerConfig {
                lr,
                betas,
                alpha,
                k,
                n_sma_threshold,
                degenerated_to_sgd,
                decay,
                use_gc,
                gc_conv_only,
                eps,
                adam_debias,
                maximize,
            }))
        }
        "stableadamw" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.99])?;
            // Kahan summation applies to float16 and bfloat16 parameters only: no effect in float32.
            let _ = a.bool("kahan_sum", true)?;
            let weight_decay = a.non_negative("weight_decay", 1e-2)?;
            let weight_decouple = a.bool("weight_decouple", true)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            Box::new(StableAdamW::new(StableAdamWConfig { lr, betas, weight_decay, weight_decouple, eps, maximize }))
        }
        _ => unreachable!("`{name}` is in NAMES"),
    };
    a.finish()?;
    Ok(tx)
}

/// An invalid argument of `po.<name>`, named.
fn a_err(name: &str, field: &str, msg: impl std::fmt::Display) -> crate::Error {
    crate::error::invalid(format!("po.{name}: `{field}` {msg}"))
}
