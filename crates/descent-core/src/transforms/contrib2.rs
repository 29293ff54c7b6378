//! More optax algorithms: `normalize_by_update_norm`.

use super::elementwise_transform;
use super::simd_apply;
use crate::transform::{global_sum_sq, Elementwise};

/// optax `normalize_by_update_norm`: `u ← u / ((‖u‖ + eps) / scale_factor)`, the norm taken
/// over all parameters together.
pub struct NormalizeByUpdateNorm {
    scale_factor: f64,
    eps: f64,
    divisor: f32,
}
impl NormalizeByUpdateNorm {
    pub fn new(scale_factor: f64, eps: f64) -> Self {
        NormalizeByUpdateNorm { scale_factor, eps, divisor: 1.0 }
    }
}
elementwise_transform!(NormalizeByUpdateNorm, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for NormalizeByUpdateNorm {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], _params: &[&[f32]]) {
        let norm = global_sum_sq(inputs).sqrt();
        self.divisor = ((norm + self.eps) / self.scale_factor) as f32;
    }
    simd_apply!(NormalizeByUpdateNorm, |this, i, off, u, p| {
        let d = this.divisor;
        for x in u.iter_mut() {
            *x /= d;
        }
    });
}
