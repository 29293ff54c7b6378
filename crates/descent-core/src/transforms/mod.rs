//! The gradient transformations, named as in optax (`scale_by_*`, `add_*`, `clip_*`, …).
//!
//! Each one is small: a struct holding its hyper-parameters and state, an `init` that allocates
//! state per parameter, and an update rule. The docs give the rule and the optax function matched.

mod adaptive;
mod basic;
mod contrib;
mod reduce;
mod wrappers;

pub use adaptive::*;
pub use basic::*;
pub use contrib::*;
pub use reduce::*;
pub use wrappers::*;

use crate::transform::{numel, Shapes};

/// One zero-filled buffer per parameter.
pub(crate) fn zeros(shapes: &Shapes) -> Vec<Vec<f32>> {
    full(shapes, 0.0)
}

/// One buffer per parameter filled with `v`.
pub(crate) fn full(shapes: &Shapes, v: f32) -> Vec<Vec<f32>> {
    shapes.iter().map(|s| vec![v; numel(s)]).collect()
}

/// `jnp.sign` / `torch.sign`: 0 at 0 (unlike `f32::signum`), NaN stays NaN.
#[inline(always)]
pub(crate) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Sum of squares in `f64`, for norms.
pub(crate) fn sum_sq(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// Implements `visit_state` from a list of per-parameter buffer fields and counter fields.
macro_rules! state {
    ($t:ty; bufs: [$($b:ident),*]; counters: [$($c:ident),*]; scalars: [$($s:ident),*]) => {
        fn visit_state(&mut self, v: &mut dyn $crate::state::StateVisitor) -> $crate::error::Result<()> {
            let _ = &v;
            $( $crate::state::visit_buffers(v, stringify!($b), &mut self.$b)?; )*
            $( v.counter(stringify!($c), &mut self.$c)?; )*
            $( v.scalar(stringify!($s), &mut self.$s)?; )*
            Ok(())
        }
    };
}
pub(crate) use state;

/// Implements `Transform` for an elementwise transformation whose `init` is given as a closure
/// body over `shapes` and `params`.
macro_rules! elementwise_transform {
    ($t:ty, |$this:ident, $shapes:ident, $params:ident| $init:block; $($st:tt)*) => {
        impl $crate::transform::Transform for $t {
            fn init(&mut self, $shapes: &$crate::transform::Shapes, $params: &[&[f32]]) -> $crate::error::Result<()> {
                let $this = self;
                let _ = &$params;
                let _ = &$shapes;
                $init
                Ok(())
            }
            fn as_elementwise(&mut self) -> Option<&mut dyn $crate::transform::Elementwise> {
                Some(self)
            }
            $crate::transforms::state!($t; $($st)*);
        }
    };
}
pub(crate) use elementwise_transform;
