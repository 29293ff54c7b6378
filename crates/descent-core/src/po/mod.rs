//! pytorch_optimizer (`po.<name>`): the optimizers PyTorch users get from the `pytorch_optimizer`
//! package (4.1), with that library's class names as `load_optimizer` accepts them, its keyword
//! arguments and its defaults. Like torch optimizers they subtract their update from the
//! parameters.
//!
//! The builders are grouped by family, one file each; [`po_optimizers`] is the union of their
//! name lists, and [`build`] asks each family in turn.

use serde_json::Value;

use crate::error::Result;
use crate::transform::Transform;

mod adam_family;
pub mod matrix;
mod more;

/// The pytorch_optimizer optimizers descent reproduces (registry names `po.<name>`).
pub fn po_optimizers() -> Vec<&'static str> {
    let mut names: Vec<&'static str> =
        adam_family::NAMES.iter().chain(more::NAMES).chain(matrix::NAMES).copied().collect();
    names.sort_unstable();
    names
}

/// pytorch_optimizer's options that many of its optimizers take through `**kwargs` (a given one
/// an optimizer here does not read is refused as not implemented, not as unknown).
const LIBRARY_OPTIONS: &[(&str, &str)] = &[
    ("adanorm", "AdaNorm gradient-norm correction"),
    ("adanorm_r", "AdaNorm gradient-norm correction"),
    ("cautious", "cautious update masking"),
    ("use_gc", "gradient centralization"),
    ("gc_conv_only", "gradient centralization"),
    ("stable_adamw", "StableAdamW update clipping"),
    ("adam_debias", "Adam debiasing switch"),
];

/// Fails on any argument an optimizer did not read: one of the library's shared options
/// ([`LIBRARY_OPTIONS`]) as not implemented, any other as unknown.
pub(crate) fn finish(k: crate::spec::Kwargs) -> Result<()> {
    k.refuse_unimplemented(LIBRARY_OPTIONS)?;
    k.finish()
}

type Family = fn(&str, &Value, Option<&Value>, &[Vec<usize>]) -> Option<Result<Box<dyn Transform>>>;

/// Builds the pytorch_optimizer optimizer `name` with its keyword arguments, optional
/// `param_groups` (`[{"params": [indices], "hparams": {…}}]`, the constructor's arguments applying
/// where a group says nothing) and the parameter shapes.
pub fn build(
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Result<Box<dyn Transform>> {
    // The library keeps `maximize` (and some classes a few more arguments) on the optimizer
    // (`self.maximize`, the constructor's): a group's is never read. (Lookahead's groups are its
    // inner optimizer's, torch's or this library's, which read them as their own library does.)
    let stripped = param_groups.filter(|_| name != "lookahead").map(|g| without_group_keys(g, constructor_only(name)));
    let param_groups = stripped.as_ref().or(param_groups);
    let families: [Family; 3] = [adam_family::build, more::build, matrix::build];
    for f in families {
        // The library checks the constructor's arguments whatever the groups then give: built
        // alone first (AdaMuon checks its own, as without groups it needs `use_muon`).
        if param_groups.is_some() && name != "adamuon" {
            match f(name, hparams, None, shapes) {
                Some(alone) => drop(alone?),
                None => continue,
            }
        }
        if let Some(tx) = f(name, hparams, param_groups, shapes) {
            let tx = tx?;
            check_step_arguments(name, hparams, param_groups)?;
            return Ok(tx);
        }
    }
    let all: Vec<String> = po_optimizers().iter().map(|n| n.to_string()).collect();
    Err(crate::spec::unknown_among_many(
        "pytorch_optimizer optimizer",
        name,
        &all,
        ("pytorch_optimizer names", " as po.NAME", ""),
    ))
}

/// What the library accepts at construction and then fails on at a step that always comes (an
/// exception where descent would step into NaN), judged on the arguments each group steps with
/// (the constructor's alone without groups):
/// - the RAdam rectification (Ranger always; AdaBelief, DiffGrad and LAMB with `rectify`) at a
///   step whose SMA length `ρₜ` reaches `n_sma_threshold` where `rₜ²` is negative or divides by
///   zero ([`rectification_fails`]);
/// - Schedule-Free RAdam's negative `weight_lr_power` with `silent_sgd_phase`: the warm-up's rate is
///   0, and so the largest so far, whose power divides by zero.
fn check_step_arguments(name: &str, hparams: &Value, param_groups: Option<&Value>) -> Result<()> {
    let sets: Vec<Value> = match param_groups.and_then(Value::as_array) {
        None => vec![hparams.clone()],
        Some(groups) => groups
            .iter()
            .map(|g| {
                let mut merged = hparams.as_object().cloned().unwrap_or_default();
                if let Some(h) = g.get("hparams").and_then(Value::as_object) {
                    merged.extend(h.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Value::Object(merged)
            })
            .collect(),
    };
    let num = |h: &Value, key: &str, default: f64| h.get(key).and_then(Value::as_f64).unwrap_or(default);
    let flag = |h: &Value, key: &str, default: bool| h.get(key).and_then(Value::as_bool).unwrap_or(default);
    for (k, h) in sets.iter().enumerate() {
        let whose = if param_groups.is_some() { format!(" (param group {k})") } else { String::new() };
        let rectify = match name {
            "ranger" => true,
            "adabelief" | "diffgrad" | "lamb" => flag(h, "rectify", false),
            _ => false,
        };
        if rectify {
            let threshold = num(h, "n_sma_threshold", 5.0);
            let beta2 = h.get("betas").and_then(|b| b.get(1)).and_then(Value::as_f64).unwrap_or(0.999);
            if let Some(step) = rectification_fails(threshold, beta2) {
                return Err(crate::error::Error::Field {
                    context: format!("po.{name}: `n_sma_threshold`{whose}"),
                    message: format!(
                        "{threshold} with beta2 {beta2}: at step {step} the SMA length reaches it where the \
                         rectification's square root is of a negative number or divides by zero (pytorch_optimizer \
                         raises there); the RAdam paper's 4 or more avoids it"
                    ),
                });
            }
        }
        if name == "schedulefreeradam" && num(h, "weight_lr_power", 2.0) < 0.0 && flag(h, "silent_sgd_phase", true) {
            return Err(crate::error::Error::Field {
                context: format!("po.schedulefreeradam: `weight_lr_power`{whose}"),
                message: format!(
                    "{}: with silent_sgd_phase the warm-up's rate is 0, and a negative power of it divides by zero \
                     (pytorch_optimizer raises at step 1)",
                    num(h, "weight_lr_power", 2.0)
                ),
            });
        }
    }
    Ok(())
}

/// The first step at which pytorch_optimizer's `get_rectify_step_size` fails with `n_sma_threshold`
/// `threshold` and `beta2` (a math domain error or a division by zero, in Python floats): `ρₜ ≥
/// threshold` where `rₜ² = (1 − β₂ᵗ)(ρₜ − 4)/(ρ∞ − 4)·(ρₜ − 2)/ρₜ·ρ∞/(ρ∞ − 2)` is negative or
/// divides by zero. `ρₜ` grows from 1 towards `ρ∞ = 2/(1 − β₂) − 1`; past 4 (when `ρ∞ > 4`) every
/// factor stays positive, and once `β₂ᵗ` is 0 nothing changes.
pub(crate) fn rectification_fails(threshold: f64, beta2: f64) -> Option<u64> {
    let n_sma_max = 2.0 / (1.0 - beta2) - 1.0;
    for step in 1..=100_000u64 {
        let beta2_t = beta2.powf(step as f64);
        let n_sma = n_sma_max - 2.0 * step as f64 * beta2_t / (1.0 - beta2_t);
        if n_sma >= threshold {
            let divides_by_zero = n_sma_max == 4.0 || n_sma_max == 2.0 || n_sma == 0.0;
            let r2 = (1.0 - beta2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma * n_sma_max
                / (n_sma_max - 2.0);
            if divides_by_zero || r2 < 0.0 {
                return Some(step);
            }
        }
        if (n_sma >= 4.0 && n_sma_max > 4.0) || beta2_t == 0.0 {
            return None;
        }
    }
    None
}

/// The arguments a class keeps on the optimizer (`self.x = x` in its constructor, not in its
/// `defaults`) and its step reads from there: a group's value for them is never read.
fn constructor_only(name: &str) -> &'static [&'static str] {
    match name {
        "came" => &["maximize", "clip_threshold", "eps1", "eps2"],
        "laprop" => &["maximize", "steps_before_using_centered"],
        "ranger" => &["maximize", "n_sma_threshold", "degenerated_to_sgd", "use_gc", "gc_conv_only"],
        "adabelief" | "diffgrad" => &["maximize", "n_sma_threshold", "degenerated_to_sgd"],
        "adafactor" => &["maximize", "decay_rate", "clip_threshold", "eps1", "eps2", "momentum_dtype"],
        "adan" => &["maximize", "max_grad_norm"],
        "lamb" => &["maximize", "degenerated_to_sgd", "n_sma_threshold", "pre_norm", "max_grad_norm"],
        "adopt" => &["maximize", "clip_lambda"],
        "spam" => &["maximize", "density", "grad_accu_steps", "threshold", "update_proj_gap", "warmup_epoch"],
        "shampoo" => &["maximize", "preconditioning_compute_steps"],
        "kron" => &["maximize", "balance_prob"],
        "soap" => &["maximize", "data_format"],
        "scalableshampoo" => &[
            "maximize",
            "block_size",
            "diagonal_eps",
            "graft_type",
            "inverse_exponent_override",
            "matrix_eps",
            "no_preconditioning_for_layers_with_dim_gt",
            "pre_conditioner_type",
            "preconditioning_compute_steps",
            "shape_interpretation",
            "skip_preconditioning_rank_lt",
            "start_preconditioning_step",
            "statistics_compute_steps",
            "use_svd",
        ],
        _ => &["maximize"],
    }
}

/// `param_groups` with `keys` taken out of every group's `hparams` (anything else as it is: the
/// builders check the groups' form).
fn without_group_keys(groups: &Value, keys: &[&str]) -> Value {
    let mut groups = groups.clone();
    if let Some(arr) = groups.as_array_mut() {
        for g in arr {
            if let Some(h) = g.get_mut("hparams").and_then(Value::as_object_mut) {
                for key in keys {
                    h.remove(*key);
                }
            }
        }
    }
    groups
}
