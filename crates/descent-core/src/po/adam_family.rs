//! Adam-like optimizers of pytorch_optimizer (AdaBound, AdamP, CAME, LaProp, MARS, QHAdam, Ranger,
//! StableAdamW, Tiger, AdaBelief, AdaFactor, Adan, Lamb, Lion, Yogi, diffGrad, SGDP), with the
//! library's argument names and defaults.
//!
//! The elementwise ones are fused kernels ([`crate::kernel::Elementwise`]); Ranger's gradient
//! centralization and StableAdamW's update clipping read a per-tensor reduction first; AdamP, SGDP,
//! CAME, MARS, Lamb and AdaFactor need whole tensors (projections, factored moments, norms).

use serde_json::Value;

use crate::error::Result;
use crate::learning_rate::LearningRate;
use crate::transform::Transform;

pub(super) mod common;
mod elementwise;
mod factored;
mod prepared;
mod projection;
mod tensorwise;

use common::{adanorm_arg, Args};
use elementwise::*;
use factored::*;
use prepared::*;
use projection::*;
use tensorwise::*;

/// The optimizers of this family.
pub const NAMES: &[&str] = &[
    "adabelief",
    "adabound",
    "adafactor",
    "adamp",
    "adan",
    "came",
    "diffgrad",
    "lamb",
    "laprop",
    "lion",
    "mars",
    "qhadam",
    "ranger",
    "sgdp",
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
    // The transformations size their state at `init`; the shapes are checked by the caller.
    let _ = shapes;
    if name == "adabound" && hparams.get("adam_debias").is_some() {
        // The class takes it through `**kwargs` and drops it; only a parameter group's reaches the
        // step (`group.get('adam_debias', False)`).
        return Some(Err(a_err(
            name,
            "adam_debias",
            "is dropped by pytorch_optimizer's AdaBound constructor (it never reaches the step; refused rather than \
             ignored); give it in a parameter group, whose value the step reads",
        )));
    }
    Some(match param_groups {
        None => build_one(name, hparams, false),
        Some(groups) => crate::spec::build_groups(&format!("po.{name}"), hparams, groups, |merged, _| {
            build_one(name, &group_hparams(name, hparams, merged), true)
        }),
    })
}

/// A group's arguments as the library reads them (the keys the class keeps on the optimizer are
/// already out of the groups: `po::constructor_only`): for MARS, `lr_1d` such that the 1-D factor
/// stays the constructor's `lr_1d / lr`.
fn group_hparams(name: &str, outer: &Value, merged: &Value) -> Value {
    let mut merged = merged.clone();
    let Value::Object(m) = &mut merged else { return merged };
    if name == "mars" {
        let num = |v: Option<&Value>, default: f64| v.map_or(Some(default), |v| v.as_f64());
        let factor = num(outer.get("lr_1d"), 3e-3).zip(num(outer.get("lr"), 3e-3)).map(|(a, b)| a / b);
        if let (Some(factor), Some(lr)) = (factor, num(m.get("lr"), 3e-3)) {
            if factor.is_finite() {
                m.insert("lr_1d".into(), Value::from(factor * lr));
            }
        }
    }
    merged
}

/// One optimizer (or one parameter group's) from its keyword arguments. `grouped`: part of a
/// `param_groups` run, where a norm over all parameters (Adan's and Lamb's clipping) would span
/// the other groups too, which a group's transformation cannot see.
fn build_one(name: &str, hparams: &Value, grouped: bool) -> Result<Box<dyn Transform>> {
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
            // The step reads `adam_debias` from its group; the constructor's is refused in `build`.
            let adam_debias = if grouped { a.bool("adam_debias", false)? } else { false };
            let maximize = a.maximize()?;
            Box::new(AdaBound::new(AdaBoundConfig {
                lr,
                final_lr,
                betas,
                gamma,
                decay,
                ams_bound,
                eps,
                adam_debias,
                maximize,
            }))
        }
        "laprop" => {
            let lr = a.lr(4e-4)?;
            let betas = a.betas([0.9, 0.999])?;
            let centered = a.bool("centered", false)?;
            let steps_before_using_centered = a.u64("steps_before_using_centered", 10)?;
            let decay = a.decay(0.0, true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-15)?;
            let cautious = a.bool("cautious", false)?;
            let maximize = a.maximize()?;
            Box::new(LaProp::new(LaPropConfig {
                lr,
                betas,
                centered,
                steps_before_using_centered,
                decay,
                ams_bound,
                eps,
                cautious,
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
            let use_gc = a.bool("use_gc", false)?;
            let adanorm = adanorm_arg(&mut a)?;
            let cautious = a.bool("cautious", false)?;
            let maximize = a.maximize()?;
            centralized(use_gc, Box::new(Lion::new(LionConfig { lr, betas, decay, adanorm, cautious, maximize })))
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
            let n_sma_threshold = a.threshold("n_sma_threshold", 5.0)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-16)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let adanorm = adanorm_arg(&mut a)?;
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
                adanorm,
                maximize,
            }))
        }
        "diffgrad" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let decay = a.decay(0.0, true)?;
            let rectify = a.bool("rectify", false)?;
            let n_sma_threshold = a.threshold("n_sma_threshold", 5.0)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", true)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let adanorm = adanorm_arg(&mut a)?;
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
                adanorm,
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
            let use_gc = a.bool("use_gc", false)?;
            let adanorm = adanorm_arg(&mut a)?;
            let maximize = a.maximize()?;
            if grouped && max_grad_norm != 0.0 {
                return Err(a_err(
                    name,
                    "max_grad_norm",
                    "clips to a norm over every group's gradients; not with param_groups",
                ));
            }
            Box::new(Adan::new(AdanConfig {
                lr,
                betas,
                weight_decay,
                weight_decouple,
                max_grad_norm,
                eps,
                use_gc,
                adanorm,
                maximize,
            }))
        }
        "ranger" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.95, 0.999])?;
            let alpha = a.in_range("alpha", 0.5, 0.0, 1.0, true)?;
            let k = a.u64("k", 6)?;
            if k == 0 {
                return Err(a_err(name, "k", "must be positive"));
            }
            let n_sma_threshold = a.threshold("n_sma_threshold", 5.0)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", false)?;
            let decay = a.decay(0.0, true)?;
            let use_gc = a.bool("use_gc", true)?;
            let gc_conv_only = a.bool("gc_conv_only", false)?;
            let eps = a.non_negative("eps", 1e-5)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let adanorm = adanorm_arg(&mut a)?;
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
                adanorm,
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
        "adamp" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let decay = a.decay(0.0, true)?;
            let delta = a.f64("delta", 0.1)?;
            let wd_ratio = a.in_range("wd_ratio", 0.1, 0.0, 1.0, false)?;
            let nesterov = a.bool("nesterov", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let use_gc = a.bool("use_gc", false)?;
            let adanorm = adanorm_arg(&mut a)?;
            let cautious = a.bool("cautious", false)?;
            let maximize = a.maximize()?;
            centralized(
                use_gc,
                Box::new(AdamP::new(AdamPConfig {
                    lr,
                    betas,
                    decay,
                    delta,
                    wd_ratio,
                    nesterov,
                    eps,
                    adam_debias,
                    adanorm,
                    cautious,
                    maximize,
                })),
            )
        }
        "sgdp" => {
            let lr = a.lr(1e-3)?;
            let momentum = a.f64("momentum", 0.0)?;
            if momentum == 1.0 {
                return Err(a_err(name, "momentum", "of 1 divides the decay ratio by zero (ratio / (1 - momentum))"));
            }
            let dampening = a.f64("dampening", 0.0)?;
            let decay = a.decay(0.0, true)?;
            let delta = a.f64("delta", 0.1)?;
            let wd_ratio = a.in_range("wd_ratio", 0.1, 0.0, 1.0, false)?;
            let nesterov = a.bool("nesterov", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            Box::new(Sgdp::new(SgdpConfig { lr, momentum, dampening, decay, delta, wd_ratio, nesterov, eps, maximize }))
        }
        "came" => {
            let lr = a.lr(2e-4)?;
            let betas = a.betas([0.9, 0.999, 0.9999])?;
            let decay = a.decay(0.0, true)?;
            let clip_threshold = a.f64("clip_threshold", 1.0)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let eps1 = a.non_negative("eps1", 1e-30)?;
            let eps2 = a.non_negative("eps2", 1e-16)?;
            let maximize = a.maximize()?;
            Box::new(Came::new(CameConfig { lr, betas, decay, clip_threshold, ams_bound, eps1, eps2, maximize }))
        }
        "adafactor" => {
            let relative_step = a.bool("relative_step", true)?;
            // `lr=None` is the library's way to say the relative step sets the rate; without
            // the relative step it has no rate to take (the library fails multiplying by None).
            let lr = match (a.k.is_null("lr"), relative_step) {
                (true, true) => LearningRate::Constant(1e-3),
                (true, false) => {
                    return Err(a_err(
                        name,
                        "lr",
                        "is None with relative_step = false: the step would have no learning rate",
                    ))
                }
                (false, _) => a.lr(1e-3)?,
            };
            let (beta1, beta2) = adafactor_betas(&mut a)?;
            let decay_rate = a.f64("decay_rate", -0.8)?;
            let decay = a.decay(0.0, true)?;
            let clip_threshold = a.f64("clip_threshold", 1.0)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let scale_parameter = a.bool("scale_parameter", true)?;
            let warmup_init = a.bool("warmup_init", false)?;
            let eps1 = a.non_negative("eps1", 1e-30)?;
            let eps2 = a.non_negative("eps2", 1e-3)?;
            let momentum_dtype = match a.k.str("momentum_dtype", "bfloat16")? {
                "bfloat16" | "torch.bfloat16" | "bf16" => MomentumDtype::Bf16,
                "float32" | "torch.float32" | "f32" => MomentumDtype::F32,
                other => {
                    return Err(a_err(
                        name,
                        "momentum_dtype",
                        format!("`{other}` is not stored; valid: bfloat16, float32"),
                    ))
                }
            };
            let cautious = a.bool("cautious", false)?;
            if cautious && beta1.is_none() {
                return Err(a_err(
                    name,
                    "cautious",
                    "masks the momentum, and betas[0] = None turns it off: the library never reads it then; refused rather than ignored",
                ));
            }
            let maximize = a.maximize()?;
            Box::new(AdaFactor::new(AdaFactorConfig {
                lr,
                beta1,
                beta2,
                decay_rate,
                decay,
                clip_threshold,
                ams_bound,
                scale_parameter,
                relative_step,
                warmup_init,
                eps1,
                eps2,
                momentum_dtype,
                cautious,
                maximize,
            }))
        }
        "mars" => {
            let lr = a.lr(3e-3)?;
            let betas = a.betas([0.95, 0.99])?;
            let gamma = a.non_negative("gamma", 0.025)?;
            let mars_type = match a.k.str("mars_type", "adamw")? {
                "adamw" => MarsType::AdamW,
                "lion" => MarsType::Lion,
                "shampoo" => MarsType::Shampoo,
                other => {
                    return Err(a_err(name, "mars_type", format!("`{other}` must be one of adamw, lion, shampoo")))
                }
            };
            let optimize_1d = a.bool("optimize_1d", false)?;
            let lr_1d = a.lr_named("lr_1d", 3e-3)?;
            let Some(lr_1d) = lr_1d.constant() else {
                return Err(a_err(name, "lr_1d", "must be a number"));
            };
            let betas_1d = a.betas_named("betas_1d", [0.9, 0.95])?;
            let weight_decay = a.non_negative("weight_decay", 0.0)?;
            let weight_decay_1d = a.non_negative("weight_decay_1d", 1e-1)?;
            let weight_decouple = a.bool("weight_decouple", true)?;
            let fixed_decay = a.bool("fixed_decay", false)?;
            let ams_bound = a.bool("ams_bound", false)?;
            let cautious = a.bool("cautious", false)?;
            let eps = a.non_negative("eps", 1e-8)?;
            let maximize = a.maximize()?;
            Box::new(Mars::new(MarsConfig {
                lr,
                lr_1d,
                betas,
                betas_1d,
                gamma,
                mars_type,
                optimize_1d,
                weight_decay,
                weight_decay_1d,
                weight_decouple,
                fixed_decay,
                ams_bound,
                cautious,
                eps,
                maximize,
            })?)
        }
        "lamb" => {
            let lr = a.lr(1e-3)?;
            let betas = a.betas([0.9, 0.999])?;
            let decay = a.decay(0.0, true)?;
            let rectify = a.bool("rectify", false)?;
            let degenerated_to_sgd = a.bool("degenerated_to_sgd", false)?;
            let n_sma_threshold = a.threshold("n_sma_threshold", 5.0)?;
            let grad_averaging = a.bool("grad_averaging", true)?;
            let max_grad_norm = a.non_negative("max_grad_norm", 1.0)?;
            let adam = a.bool("adam", false)?;
            let pre_norm = a.bool("pre_norm", false)?;
            let eps = a.non_negative("eps", 1e-6)?;
            let adam_debias = a.bool("adam_debias", false)?;
            let adanorm = adanorm_arg(&mut a)?;
            let maximize = a.maximize()?;
            if grouped && pre_norm && max_grad_norm != 0.0 {
                return Err(a_err(
                    name,
                    "pre_norm",
                    "scales by a norm over every group's gradients; not with param_groups",
                ));
            }
            Box::new(Lamb::new(LambConfig {
                lr,
                betas,
                decay,
                rectify,
                degenerated_to_sgd,
                n_sma_threshold,
                grad_averaging,
                max_grad_norm,
                adam,
                pre_norm,
                eps,
                adam_debias,
                adanorm,
                maximize,
            }))
        }
        _ => unreachable!("`{name}` is in NAMES"),
    };
    a.finish()?;
    Ok(tx)
}

/// `tx` after gradient centralization when `use_gc` (the library centralizes the gradient first
/// thing in the step, before any decay).
fn centralized(use_gc: bool, tx: Box<dyn Transform>) -> Box<dyn Transform> {
    if use_gc {
        crate::chain::chain(vec![Box::new(crate::transforms::Centralize::default()), tx])
    } else {
        tx
    }
}

/// An invalid argument of `po.<name>`, named.
fn a_err(name: &str, field: &str, msg: impl std::fmt::Display) -> crate::Error {
    crate::error::invalid(format!("po.{name}: `{field}` {msg}"))
}

/// AdaFactor's `betas`: `[beta1 or null, beta2]`, a null `beta1` turning the momentum off.
fn adafactor_betas(a: &mut Args) -> Result<(Option<f64>, f64)> {
    let finite = |x: &Value| x.as_f64().filter(|x| x.is_finite());
    let (b1, b2) = match a.k.present("betas")? {
        None => (Some(0.9), 0.999),
        Some(Value::Array(v))
            if v.len() == 2 && (v[0].is_null() || finite(&v[0]).is_some()) && finite(&v[1]).is_some() =>
        {
            (finite(&v[0]), finite(&v[1]).unwrap_or(0.999))
        }
        Some(v) => return Err(a_err("adafactor", "betas", format!("expects [beta1 or null, beta2], got {v}"))),
    };
    match b1 {
        Some(b1) => a.check_betas("betas", &[b1, b2])?,
        None => a.check_betas("betas", &[0.0, b2])?,
    }
    Ok((b1, b2))
}
