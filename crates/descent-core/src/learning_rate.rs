//! The learning rate of an optimizer: a constant or a schedule of the step count, held by the
//! transformation that scales by it and set live through [`crate::Optimizer::set_learning_rate`].

use crate::schedule::Schedule;

/// A learning rate: a constant or a schedule of the step count.
pub enum LearningRate {
    /// The same rate at every step.
    Constant(f64),
    /// The rate at step `t` is `schedule(t)` (an optax schedule as `learning_rate`).
    Schedule(Box<dyn Schedule>),
}

/// optax's `ScalarOrSchedule` for a hyper-parameter other than the learning rate (a weight
/// decay, AdEMAMix's `b3` and `alpha`): a constant or a schedule of the transformation's own step
/// count, `0.1.into()` for a constant.
pub type ScalarOrSchedule = LearningRate;

impl LearningRate {
    /// The value at step `count` (0-based).
    pub fn at(&self, count: u64) -> f64 {
        match self {
            LearningRate::Constant(x) => *x,
            LearningRate::Schedule(s) => s.value(count),
        }
    }
    /// A constant's value; `None` for a schedule.
    pub fn constant(&self) -> Option<f64> {
        match self {
            LearningRate::Constant(x) => Some(*x),
            LearningRate::Schedule(_) => None,
        }
    }
}

impl From<f64> for LearningRate {
    fn from(x: f64) -> Self {
        LearningRate::Constant(x)
    }
}

impl From<Box<dyn Schedule>> for LearningRate {
    fn from(s: Box<dyn Schedule>) -> Self {
        LearningRate::Schedule(s)
    }
}
