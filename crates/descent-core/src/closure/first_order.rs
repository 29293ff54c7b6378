//! First-order closure optimizers: optax `polyak_sgd`, `contrib.momo`, `contrib.momo_adam`, `contrib.sam` and pytorch_optimizer `SAM` (with ASAM).

use serde_json::Value;

use crate::error::Result;

use super::ClosureOptimizer;

/// The registry names of this family (`library.name`).
pub const NAMES: &[&str] = &[];

/// Builds `library.name` if it belongs to this family (`None` otherwise).
pub fn build(
    library: &str,
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn ClosureOptimizer>>> {
    let _ = (library, name, hparams, shapes);
    None
}
