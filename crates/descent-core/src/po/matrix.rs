//! Matrix-preconditioned optimizers of pytorch_optimizer (Shampoo, ScalableShampoo, SOAP, SCION,
//! AdaMuon, GaLore, PSGD Kron), and optax's `contrib.galore`.
//!
//! They keep their state in `f32`, as the library does, and do their linear algebra (products,
//! SVD, eigendecompositions, inverse roots) in `f64` through `linalg`. Tensors with no elements
//! are left as they are and get no state.

use serde_json::Value;

use crate::error::{ensure, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;
use crate::transform::Transform;

pub mod adamuon;
pub mod galore;
pub mod kron;
pub(crate) mod linalg;
pub mod scalable_shampoo;
pub mod scion;
pub mod shampoo;
pub mod soap;

/// The optimizers of this family.
pub const NAMES: &[&str] = &["adamuon", "galore", "kron", "scalableshampoo", "scion", "shampoo", "soap"];

/// Builds `name` if it belongs to this family (`None` otherwise).
pub fn build(
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn Transform>>> {
    let _ = shapes;
    let one = |f: fn(&mut Kwargs) -> Result<Box<dyn Transform>>| -> Result<Box<dyn Transform>> {
        let context = format!("po.{name}");
        match param_groups {
            None => built(&context, hparams, f),
            Some(groups) => crate::spec::build_groups(&context, hparams, groups, |h, _| built(&context, h, f)),
        }
    };
    Some(match name {
        "adamuon" => adamuon::build(hparams, param_groups),
        "scion" => one(|k| Ok(Box::new(scion::Scion::from_kwargs(k)?))),
        "shampoo" => one(|k| Ok(Box::new(shampoo::Shampoo::from_kwargs(k)?))),
        "soap" => one(|k| Ok(Box::new(soap::Soap::from_kwargs(k)?))),
        "galore" => galore::build(hparams, param_groups),
        "kron" => kron(hparams, param_groups, shapes.len()),
        "scalableshampoo" => one(|k| Ok(Box::new(scalable_shampoo::ScalableShampoo::from_kwargs(k)?))),
        _ => return None,
    })
}

/// PSGD Kron. The library's constructor takes `precondition_lr` and `precondition_init_scale`
/// through `**kwargs` and drops them (its defaults hold 0.1 and 1.0 for every group): refused
/// there, as ignoring them would be a silent substitution; a parameter group's are read. The
/// preconditioner's update schedule and balancing draw are shared by all groups in the library
/// (the first group's): here one group, holding every parameter, whose values replace the
/// constructor's.
fn kron(hparams: &Value, param_groups: Option<&Value>, n_params: usize) -> Result<Box<dyn Transform>> {
    use crate::error::Error;
    for key in ["precondition_lr", "precondition_init_scale"] {
        if hparams.get(key).is_some() {
            return Err(Error::Field {
                context: format!("po.kron: `{key}`"),
                message: "is dropped by pytorch_optimizer's Kron constructor (taken by **kwargs and never read: the \
                          step reads its parameter group's); refused rather than ignored: give it in a parameter group \
                          holding every parameter"
                    .into(),
            });
        }
    }
    let build = |h: &Value| built("po.kron", h, |k| Ok(Box::new(kron::Kron::from_kwargs(k)?)));
    let Some(groups) = param_groups else { return build(hparams) };
    let refuse = |why: &str| Error::Field { context: "po.kron: param_groups".into(), message: why.to_string() };
    let one_of_all = |g: &Value| {
        let Some(params) = g.get("params").and_then(Value::as_array) else { return false };
        let mut at: Vec<u64> = params.iter().filter_map(Value::as_u64).collect();
        at.sort_unstable();
        at.len() == params.len() && at.iter().copied().eq(0..n_params as u64)
    };
    let group =
        match groups.as_array().map(Vec::as_slice) {
            Some([g]) if one_of_all(g) => g,
            _ => return Err(refuse(
                "Kron takes one parameter group here, holding every parameter (the library shares its first group's \
                 preconditioner update schedule among all groups)",
            )),
        };
    if let Some(key) = group.as_object().and_then(|g| g.keys().find(|k| *k != "params" && *k != "hparams")) {
        return Err(refuse(&format!("a group holds `params` and `hparams`, not `{key}`")));
    }
    let mut merged = hparams.as_object().cloned().unwrap_or_default();
    match group.get("hparams") {
        None => {}
        Some(Value::Object(h)) => merged.extend(h.iter().map(|(k, v)| (k.clone(), v.clone()))),
        Some(other) => return Err(refuse(&format!("a group's `hparams` is an object of arguments, not {other}"))),
    }
    build(&Value::Object(merged))
}

/// One optimizer from its keyword arguments, every one of them read.
fn built(
    context: &str,
    hparams: &Value,
    f: fn(&mut Kwargs) -> Result<Box<dyn Transform>>,
) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new(context, hparams)?;
    let tx = f(&mut k)?;
    crate::po::finish(k)?;
    Ok(tx)
}

/// A learning rate as the library checks it (`validate_learning_rate`: not negative).
pub(crate) fn check_lr(lr: &LearningRate) -> Result<()> {
    if let Some(x) = lr.constant() {
        ensure(x >= 0.0, || format!("learning rate must be non-negative, got {x}"))?;
    }
    Ok(())
}

/// `validate_betas`: both in [0, 1).
pub(crate) fn check_betas((b1, b2): (f64, f64)) -> Result<()> {
    ensure((0.0..1.0).contains(&b1), || "beta1 must be in the range [0.0, 1.0)".into())?;
    ensure((0.0..1.0).contains(&b2), || "beta2 must be in the range [0.0, 1.0)".into())
}

/// The rate of the step counted `step` (from 0).
pub(crate) fn lr_of(lr: &LearningRate, step: u64) -> f64 {
    lr.at(step)
}
