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
        // The preconditioner's update schedule and balancing draw are shared by all groups in
        // the library: one group only.
        "kron" => match param_groups {
            None => built("po.kron", hparams, |k| Ok(Box::new(kron::Kron::from_kwargs(k)?))),
            Some(_) => Err(crate::error::Error::Field {
                context: "po.kron: param_groups".into(),
                message: "Kron takes one parameter group here (its update schedule is shared)".into(),
            }),
        },
        "scalableshampoo" => one(|k| Ok(Box::new(scalable_shampoo::ScalableShampoo::from_kwargs(k)?))),
        _ => return None,
    })
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
