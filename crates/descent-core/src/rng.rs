//! descent's own random numbers, for the optimizers that draw them (PSGD Kron's probe vectors and
//! balancing draws, Sophia's Hutchinson signs).
//!
//! The libraries draw from torch's, numpy's or jax's generators, which cannot be reproduced here;
//! these optimizers take a `seed` (descent's addition, default 0) instead, and a run is then
//! reproducible bit for bit. The generator is SplitMix64 (Steele, Lea and Flood, "Fast Splittable
//! Pseudorandom Number Generators", 2014): its whole state is one `u64`, saved as a counter with
//! the optimizer's state, so a resumed run draws the numbers the uninterrupted one would.

use crate::error::Result;
use crate::state::StateVisitor;

/// A SplitMix64 generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)` (53 random bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal number (Box–Muller on two uniforms; the second value is not kept).
    pub fn normal(&mut self) -> f64 {
        // 1 − u lies in (0, 1]: its logarithm is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `+1` or `−1` with equal probability (a Rademacher draw).
    pub fn sign(&mut self) -> f32 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Visits the generator's state as the counter `name`.
    pub fn visit(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()> {
        v.counter(name, &mut self.state)
    }
}
