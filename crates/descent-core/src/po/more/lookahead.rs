//! pytorch_optimizer `Lookahead` (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step
//! back") around another optimizer.

use super::common::{in_range, lerp};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

/// What happens to the inner optimizer's momentum (its `momentum_buffer`s, as torch's SGD and
/// RMSprop keep them) when the slow weights are updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullbackMomentum {
    /// Left as it is.
    None,
    /// Zeroed.
    Reset,
    /// Interpolated toward a slow momentum like the weights, which then takes its value.
    Pullback,
}

impl PullbackMomentum {
    /// The class's option names: `none`, `reset`, `pullback`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(PullbackMomentum::None),
            "reset" => Ok(PullbackMomentum::Reset),
            "pullback" => Ok(PullbackMomentum::Pullback),
            other => Err(Error::Invalid(format!(
                "pullback_momentum {other} must be one of ('none' or 'reset' or 'pullback')"
            ))),
        }
    }
}

/// Lookahead: the inner optimizer moves the (fast) parameters; every `k` steps they are pulled
/// toward the slow weights, `p ← lerp(p, slow, 1 − α)`, and the slow weights take their value.
///
/// The parameters are the fast weights throughout, as the class leaves them in the model.
pub struct Lookahead {
    inner: Box<dyn Transform>,
    k: u64,
    alpha: f32,
    pullback: PullbackMomentum,
    counter: u64,
    slow_params: Vec<Vec<f32>>,
    /// One per momentum buffer of the inner optimizer, in the order its state lists them.
    slow_momentum: Vec<Vec<f32>>,
    /// Parameters in none of the inner optimizer's groups: the class syncs only its groups'
    /// parameters, so these are never moved.
    left_out: Vec<usize>,
}

/// The arguments of pytorch_optimizer's `Lookahead` besides the inner optimizer, with its
/// defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LookaheadConfig {
    /// Inner steps between two syncs with the slow weights.
    pub k: u64,
    /// How far the slow weights move toward the fast ones at a sync, in `[0, 1)`.
    pub alpha: f64,
    /// What happens to the inner optimizer's momentum at a sync.
    pub pullback_momentum: PullbackMomentum,
}

impl Default for LookaheadConfig {
    fn default() -> Self {
        LookaheadConfig { k: 5, alpha: 0.5, pullback_momentum: PullbackMomentum::None }
    }
}

impl Lookahead {
    /// Wraps `inner`, checked as the class checks its arguments (`k > 0`, `α ∈ [0, 1)`).
    pub fn new(inner: Box<dyn Transform>, config: LookaheadConfig) -> Result<Self> {
        let LookaheadConfig { k, alpha, pullback_momentum: pullback } = config;
        ensure(k > 0, || "k must be positive".into())?;
        in_range(alpha, "alpha", 0.0, 1.0, "[)")?;
        Ok(Lookahead {
            inner,
            k,
            alpha: alpha as f32,
            pullback,
            counter: 0,
            slow_params: vec![],
            slow_momentum: vec![],
            left_out: vec![],
        })
    }

    /// The same, leaving the parameters `left_out` (in none of the inner optimizer's groups) as
    /// they are at every sync, as the class does.
    pub fn leaving_out(mut self, left_out: Vec<usize>) -> Self {
        self.left_out = left_out;
        self
    }

    /// Runs `f(k, buffer)` over the inner optimizer's momentum buffers, numbered in order.
    fn momentum_buffers(&mut self, f: &mut dyn FnMut(usize, &mut Vec<f32>)) -> Result<()> {
        struct Momenta<'a> {
            f: &'a mut dyn FnMut(usize, &mut Vec<f32>),
            count: usize,
        }
        impl StateVisitor for Momenta<'_> {
            fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
                let is_momentum = name
                    .strip_prefix("momentum_buffer.")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
                if is_momentum {
                    (self.f)(self.count, buf);
                    self.count += 1;
                }
                Ok(())
            }
            fn scalar(&mut self, _: &str, _: &mut f64) -> Result<()> {
                Ok(())
            }
            fn counter(&mut self, _: &str, _: &mut u64) -> Result<()> {
                Ok(())
            }
            fn push(&mut self, _: &str) {}
            fn pop(&mut self) {}
        }
        self.inner.visit_state(&mut Momenta { f, count: 0 })
    }

    /// The slow update, on the parameters as the inner step left them.
    fn sync(&mut self, params: &mut [&mut [f32]]) -> Result<()> {
        let w = 1.0 - self.alpha;
        for (i, (p, slow)) in params.iter_mut().zip(&mut self.slow_params).enumerate() {
            if self.left_out.contains(&i) {
                continue;
            }
            for (x, s) in p.iter_mut().zip(slow.iter_mut()) {
                *x = lerp(*x, *s, w);
                *s = *x;
            }
        }
        match self.pullback {
            PullbackMomentum::None => Ok(()),
            PullbackMomentum::Reset => self.momentum_buffers(&mut |_, b| b.fill(0.0)),
            PullbackMomentum::Pullback => {
                let mut slow = std::mem::take(&mut self.slow_momentum);
                let r = self.momentum_buffers(&mut |k, b| {
                    if let Some(s) = slow.get_mut(k) {
                        for (x, y) in b.iter_mut().zip(s.iter_mut()) {
                            *x = lerp(*x, *y, w);
                            *y = *x;
                        }
                    }
                });
                self.slow_momentum = slow;
                r
            }
        }
    }
}

impl Transform for Lookahead {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.inner.init(shapes, params)?;
        self.slow_params = params.iter().map(|p| p.to_vec()).collect();
        self.counter = 0;
        self.slow_momentum = vec![];
        if self.pullback == PullbackMomentum::Pullback {
            let mut lens = vec![];
            self.momentum_buffers(&mut |_, b| lens.push(b.len()))?;
            self.slow_momentum = lens.into_iter().map(|n| vec![0.0; n]).collect();
        }
        Ok(())
    }

    /// The inner update, with the slow update folded in on every `k`-th step (up to the rounding
    /// of `p + (p′ − p)`; [`Transform::step_buffers`] writes the parameters exactly).
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        self.inner.update(updates, params)?;
        self.counter += 1;
        if self.counter >= self.k {
            self.counter = 0;
            let mut moved: Vec<Vec<f32>> =
                params.iter().zip(updates.iter()).map(|(p, u)| p.iter().zip(u).map(|(x, d)| x + d).collect()).collect();
            let mut views: Vec<&mut [f32]> = moved.iter_mut().map(|v| v.as_mut_slice()).collect();
            self.sync(&mut views)?;
            for (i, ((u, p), m)) in updates.iter_mut().zip(params).zip(&moved).enumerate() {
                if self.left_out.contains(&i) {
                    // The inner update as it is: `y − x` would turn its −0 into +0.
                    continue;
                }
                for ((d, x), y) in u.iter_mut().zip(p.iter()).zip(m) {
                    *d = y - x;
                }
            }
        }
        Ok(())
    }

    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        self.inner.step_buffers(params, grads, updates)?;
        self.counter += 1;
        if self.counter >= self.k {
            self.counter = 0;
            self.sync(params)?;
        }
        Ok(())
    }

    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.inner.visit_learning_rates(f);
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        crate::state::visit_buffers(v, "slow_params", &mut self.slow_params)?;
        crate::state::visit_buffers(v, "slow_momentum", &mut self.slow_momentum)?;
        v.counter("counter", &mut self.counter)?;
        v.push("inner");
        self.inner.visit_state(v)?;
        v.pop();
        Ok(())
    }
}
