//! Adam-like elementwise optimizers of pytorch_optimizer (AdaBound, AdamP, CAME, LaProp, MARS, QHAdam, Ranger, StableAdamW, Tiger, …).

use serde_json::Value;

use crate::error::Result;
use crate::transform::Transform;

/// The optimizers of this family.
pub const NAMES: &[&str] = &[];

/// Builds `name` if it belongs to this family (`None` otherwise).
pub fn build(
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn Transform>>> {
    let _ = (name, hparams, param_groups, shapes);
    None
}
