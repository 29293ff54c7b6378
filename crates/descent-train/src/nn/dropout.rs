//! Dropout drawn from descent's seeded generator, so that a run is reproducible from its seed.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::Mode;
use crate::rng::Rng;

/// `torch.nn.Dropout(p)`: in [`Mode::Train`], each element is zeroed with probability `p` and the
/// others scaled by `1/(1 − p)` (the mask from `rng`, one draw per element in row-major order); in
/// [`Mode::Eval`] the input passes unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability that an element is zeroed in training.
    pub p: f32,
}

impl Dropout {
    /// `p` must lie in `[0, 1]`.
    pub fn new(p: f32) -> Result<Self> {
        check_probability(p)?;
        Ok(Dropout { p })
    }
    /// In [`Mode::Train`], `x` with each element zeroed with probability `p` and the others scaled by `1/(1 − p)`; `x` itself in [`Mode::Eval`].
    pub fn forward(&self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        match mode {
            Mode::Train => crate::model::dropout(x, self.p, rng),
            Mode::Eval => Ok(x.clone()),
        }
    }
}

/// A dropout probability, as torch's `Dropout` checks it: in `[0, 1]` (not NaN).
pub(crate) fn check_probability(p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Param(format!("dropout: probability {p} is not in [0, 1]")));
    }
    Ok(())
}
