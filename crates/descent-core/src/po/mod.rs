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
        if let Some(tx) = f(name, hparams, param_groups, shapes) {
            return tx;
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

/// The arguments a class keeps on the optimizer (`self.x = x` in its constructor, not in its
/// `defaults`) and its step reads from there: a group's value for them is never read. (The Adam
/// family's classes are listed in `adam_family`, where a few more keep group keys of their own.)
fn constructor_only(name: &str) -> &'static [&'static str] {
    match name {
        "adopt" => &["maximize", "clip_lambda"],
        "spam" => &["maximize", "density", "grad_accu_steps", "threshold", "update_proj_gap", "warmup_epoch"],
        "shampoo" => &["maximize", "preconditioning_compute_steps"],
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
