//! Stateless and momentum-style elementwise transformations.

use super::simd_apply;
use super::{elementwise_transform, full, sign, zeros, ParamBufs};
use crate::error::Result;
use crate::kernel::Elementwise;
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;
use crate::transform::{Shapes, Transform};

/// optax `scale`: `u ← s·u`.
pub struct Scale {
    /// The factor.
    pub step_size: f32,
}
impl Scale {
    /// A `Scale` with these hyper-parameters (`step_size`), as described above.
    pub fn new(step_size: f64) -> Self {
        Scale { step_size: step_size as f32 }
    }
}
elementwise_transform!(Scale, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for Scale {
    fn begin_step(&mut self) {}
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((self.step_size, 0.0))
    }
    simd_apply!(Scale, |this, i, off, u, p| {
        for x in u {
            *x *= this.step_size;
        }
    });
}

/// optax `scale_by_learning_rate`: `u ← −lr(t)·u` (or `+lr(t)·u` without `flip_sign`); the
/// learning rate may be a schedule of the step count.
pub struct ScaleByLearningRate {
    lr: LearningRate,
    sign: f64,
    count: u64,
    current: f32,
}
impl ScaleByLearningRate {
    /// A `ScaleByLearningRate` with these hyper-parameters (`lr`, `flip_sign`), as described above.
    pub fn new(lr: impl Into<LearningRate>, flip_sign: bool) -> Self {
        ScaleByLearningRate { lr: lr.into(), sign: if flip_sign { -1.0 } else { 1.0 }, count: 0, current: 0.0 }
    }
}
elementwise_transform!(ScaleByLearningRate, |_s, _sh, _p| {}; bufs: []; counters: [count]; scalars: []);
impl Elementwise for ScaleByLearningRate {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((self.current, 0.0))
    }
    fn begin_step(&mut self) {
        self.current = (self.sign * self.lr.at(self.count)) as f32;
        self.count += 1;
    }
    simd_apply!(ScaleByLearningRate, |this, i, off, u, p| {
        for x in u {
            *x *= this.current;
        }
    });
}

/// optax `add_decayed_weights`: `u ← u + λ(t)·p` (L2 / decoupled weight decay, depending on where it
/// stands in the chain). Its `mask` is [`crate::transforms::Partition::masked`].
pub struct AddDecayedWeights {
    wd: LearningRate,
    count: u64,
    current: f32,
}
impl AddDecayedWeights {
    /// A `AddDecayedWeights` with these hyper-parameters (`weight_decay`), as described above.
    pub fn new(weight_decay: impl Into<LearningRate>) -> Self {
        AddDecayedWeights { wd: weight_decay.into(), count: 0, current: 0.0 }
    }
}
elementwise_transform!(AddDecayedWeights, |_s, _sh, _p| {}; bufs: []; counters: [count]; scalars: []);
impl Elementwise for AddDecayedWeights {
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((1.0, self.current))
    }
    fn begin_step(&mut self) {
        self.current = self.wd.at(self.count) as f32;
        self.count += 1;
    }
    simd_apply!(AddDecayedWeights, |this, i, off, u, p| {
        if this.current == 0.0 {
            return;
        }
        let wd = this.current;
        for (x, &w) in u.iter_mut().zip(p) {
            *x += wd * w;
        }
    });
}

/// optax `identity`: the updates unchanged (the side of a mask a transformation does not touch).
pub struct Identity;
elementwise_transform!(Identity, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for Identity {
    fn begin_step(&mut self) {}
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((1.0, 0.0))
    }
    unsafe fn apply(&self, _i: usize, _off: usize, _u: &mut [f32], _p: &[f32]) {}
}

/// torch's treatment of a parameter outside every group: never stepped. Its updates are `−0`,
/// which added to any value gives that value back bit for bit (`+0` would turn a `−0` parameter
/// into `+0`); no state.
pub struct Unstepped;
super::prefetch_state!(Unstepped;);
impl Transform for Unstepped {
    super::stateless!();
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    /// A sparse gradient leaves the parameters as they are too (torch `SparseAdam`'s groups).
    fn supports_sparse(&self) -> bool {
        true
    }
    fn step_sparse(&mut self, _: &mut [&mut [f32]], _: &[&[f32]], _: &crate::sparse::SparseRows) -> Result<()> {
        Ok(())
    }
}
impl Elementwise for Unstepped {
    fn begin_step(&mut self) {}
    unsafe fn apply(&self, _i: usize, _off: usize, u: &mut [f32], _p: &[f32]) {
        u.fill(-0.0);
    }
}

/// optax `set_to_zero`: every update is 0, whatever it was (NaN included); `freeze` applies it
/// where its mask is `true`.
pub struct SetToZero;
elementwise_transform!(SetToZero, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for SetToZero {
    fn begin_step(&mut self) {}
    unsafe fn apply(&self, _i: usize, _off: usize, u: &mut [f32], _p: &[f32]) {
        u.fill(0.0);
    }
}

/// optax `zero_nans`: NaN entries of the update become 0 (infinities stay).
pub struct ZeroNans;
elementwise_transform!(ZeroNans, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for ZeroNans {
    fn begin_step(&mut self) {}
    simd_apply!(ZeroNans, |this, i, off, u, p| {
        for x in u {
            if x.is_nan() {
                *x = 0.0;
            }
        }
    });
}

/// optax `keep_params_nonnegative`, last in a chain: where `p + u < 0` the update becomes `−p`,
/// so the entry lands on 0.
pub struct KeepParamsNonnegative;
elementwise_transform!(KeepParamsNonnegative, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for KeepParamsNonnegative {
    fn begin_step(&mut self) {}
    simd_apply!(KeepParamsNonnegative, |this, i, off, u, p| {
        for (x, &w) in u.iter_mut().zip(p) {
            if w + *x < 0.0 {
                *x = -w;
            }
        }
    });
}

/// optax `trace`: momentum `t ← u + decay·t`, output `t` (or `u + decay·t` with Nesterov).
pub struct Trace {
    decay: f32,
    nesterov: bool,
    trace: ParamBufs,
}
impl Trace {
    /// A `Trace` with these hyper-parameters (`decay`, `nesterov`), as described above.
    pub fn new(decay: f64, nesterov: bool) -> Self {
        Trace { decay: decay as f32, nesterov, trace: ParamBufs::default() }
    }
}
elementwise_transform!(Trace, |s, shapes, _p| { s.trace = zeros(shapes).into(); }; bufs: [trace]; counters: []; scalars: []);
impl Elementwise for Trace {
    fn begin_step(&mut self) {}
    /// One loop over the gradient, the parameters and the trace for the folds of optax's SGD
    /// (an affine tail: the learning rate) and LARS (an affine head: weight decay, the trust
    /// ratio and the learning rate): the sub-block scratch's three extra passes over L1 were most
    /// of the work (optax SGD with momentum at 85% of the roofline where torch's single loop ran
    /// at 110%). The operations of `start_inline`, the kernel and `finish_inline` in their order;
    /// a scale of 1 multiplies exactly.
    unsafe fn step_plain(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: &crate::kernel::Fold) -> bool {
        use crate::kernel::AffineFold;
        let Some(a) = AffineFold::of(fold) else { return false };
        #[inline(always)]
        fn run<const HEAD_P: bool, const TAIL_P: bool, const NESTEROV: bool>(
            p: &mut [f32],
            g: &[f32],
            t: &mut [f32],
            a: AffineFold,
            d: f32,
        ) {
            let (g, t) = (&g[..p.len()], &mut t[..p.len()]);
            for ((w, &g), t) in p.iter_mut().zip(g).zip(t) {
                let u = a.start::<HEAD_P>(g, *w);
                *t = u + d * *t;
                let o = if NESTEROV { u + d * *t } else { *t };
                *w += a.tail_of::<TAIL_P>(o, *w);
            }
        }
        macro_rules! variant {
            ($hp:literal, $tp:literal, $n:literal) => {{
                #[inline(never)]
                fn go(p: &mut [f32], g: &[f32], t: &mut [f32], a: AffineFold, d: f32) {
                    #[inline(always)]
                    fn body(p: &mut [f32], g: &[f32], t: &mut [f32], a: AffineFold, d: f32) {
                        run::<$hp, $tp, $n>(p, g, t, a, d)
                    }
                    crate::kernel::dispatch_simd!(body(p: &mut [f32], g: &[f32], t: &mut [f32], a: AffineFold, d: f32))
                }
                go
            }};
        }
        type Loop = fn(&mut [f32], &[f32], &mut [f32], AffineFold, f32);
        let f: Loop = match (a.head.b != 0.0, a.tail.b != 0.0, self.nesterov) {
            (false, false, false) => variant!(false, false, false),
            (false, false, true) => variant!(false, false, true),
            (false, true, false) => variant!(false, true, false),
            (false, true, true) => variant!(false, true, true),
            (true, false, false) => variant!(true, false, false),
            (true, false, true) => variant!(true, false, true),
            (true, true, false) => variant!(true, true, false),
            (true, true, true) => variant!(true, true, true),
        };
        f(p, g, self.trace.slice(i, off, p.len()), a, self.decay);
        true
    }
    simd_apply!(Trace, |this, i, off, u, p| {
        let t = this.trace.slice(i, off, u.len());
        let d = this.decay;
        for (g, t) in u.iter_mut().zip(t) {
            *t = *g + d * *t;
            *g = if this.nesterov { *g + d * *t } else { *t };
        }
    });
}

/// optax `ema`: `e ← (1−decay)·u + decay·e`, output `e`, divided by `1 − decayᵗ` with `debias`.
pub struct Ema {
    decay: f32,
    debias: bool,
    count: u64,
    ema: ParamBufs,
    inv_bc: f32,
}
impl Ema {
    /// A `Ema` with these hyper-parameters (`decay`, `debias`), as described above.
    pub fn new(decay: f64, debias: bool) -> Self {
        Ema { decay: decay as f32, debias, count: 0, ema: ParamBufs::default(), inv_bc: 1.0 }
    }
}
elementwise_transform!(Ema, |s, shapes, _p| { s.ema = zeros(shapes).into(); }; bufs: [ema]; counters: [count]; scalars: []);
impl Elementwise for Ema {
    fn begin_step(&mut self) {
        self.count += 1;
        self.inv_bc =
            if self.debias { (1.0 / super::bias_correction(self.decay as f64, self.count as f64)) as f32 } else { 1.0 };
    }
    simd_apply!(Ema, |this, i, off, u, p| {
        let e = this.ema.slice(i, off, u.len());
        let d = this.decay;
        for (g, e) in u.iter_mut().zip(e) {
            *e = (1.0 - d) * *g + d * *e;
            *g = *e * this.inv_bc;
        }
    });
}

/// optax `scale_by_sign`: `u ← sign(u)`.
#[derive(Default)]
pub struct ScaleBySign;
elementwise_transform!(ScaleBySign, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for ScaleBySign {
    fn begin_step(&mut self) {}
    fn map(&self, _i: usize) -> Option<crate::kernel::Map> {
        Some(crate::kernel::Map::Sign)
    }
    simd_apply!(ScaleBySign, |this, i, off, u, p| {
        for x in u {
            *x = sign(*x);
        }
    });
}

/// optax `clip`: each element clipped to `[−max_delta, max_delta]`.
pub struct Clip {
    max_delta: f32,
}
impl Clip {
    /// A `Clip` with these hyper-parameters (`max_delta`), as described above.
    pub fn new(max_delta: f64) -> Self {
        Clip { max_delta: max_delta as f32 }
    }
}
elementwise_transform!(Clip, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for Clip {
    fn begin_step(&mut self) {}
    fn head(&self, _i: usize) -> Option<crate::kernel::Head> {
        Some(crate::kernel::Head::Clip(self.max_delta))
    }
    fn map(&self, _i: usize) -> Option<crate::kernel::Map> {
        Some(crate::kernel::Map::Clip(self.max_delta))
    }
    simd_apply!(Clip, |this, i, off, u, p| {
        for x in u {
            *x = crate::kernel::clip(*x, -this.max_delta, this.max_delta);
        }
    });
}

/// The step and the shrink of optax `fromage` after its trust ratio, from one learning rate α
/// (a constant or a schedule): `u ← −α·m·u + (m − 1)·θ` with `m = 1/√(1 + α²)`, as its
/// `scale(−α·m)` and `add_decayed_weights(m − 1)` links give it. One rate, so a rate set between
/// steps moves both (optax's `inject_hyperparams(fromage)`).
pub(crate) struct ScaleByFromage {
    lr: LearningRate,
    count: u64,
    /// `−α·m` and `m − 1` of the step.
    step: f32,
    decay: f32,
}
impl ScaleByFromage {
    pub(crate) fn new(lr: LearningRate) -> Self {
        ScaleByFromage { lr, count: 0, step: 0.0, decay: 0.0 }
    }
}
elementwise_transform!(ScaleByFromage, |_s, _sh, _p| {}; bufs: []; counters: [count]; scalars: []);
impl Elementwise for ScaleByFromage {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((self.step, self.decay))
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.count);
        let mult = 1.0 / (1.0 + lr * lr).sqrt();
        (self.step, self.decay) = ((-(lr * mult)) as f32, (mult - 1.0) as f32);
        self.count += 1;
    }
    simd_apply!(ScaleByFromage, |this, i, off, u, p| {
        crate::kernel::affine_inline(u, p, this.step, this.decay);
    });
}

/// optax `scale_by_optimistic_gradient`: `u ← (α+β)·g − β·g_prev` (optimistic gradient descent,
/// Daskalakis et al. 2018); the first step uses `g_prev = g`.
pub struct ScaleByOptimisticGradient {
    /// α, a constant.
    alpha: LearningRate,
    /// β; `None`: α's value (optax `optimistic_adam`'s `optimism=None`).
    optimism: Option<f64>,
    /// Whether α is the optimizer's learning rate (in `optimistic_adam`), visited by
    /// [`crate::Optimizer::set_learning_rate`] as optax's `inject_hyperparams` sets it.
    alpha_is_learning_rate: bool,
    /// `α + β` and `β` of the step.
    ab: f32,
    beta: f32,
    first: bool,
    initial: u64,
    prev: ParamBufs,
}
impl ScaleByOptimisticGradient {
    /// A `ScaleByOptimisticGradient` with these hyper-parameters (`alpha`, `beta`), as described above.
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self::with(alpha, Some(beta), false)
    }
    /// The rule of optax `optimistic_adam`, whose learning rate is α and whose optimism
    /// (`None`: the learning rate) follows a rate set between steps.
    pub(crate) fn learning_rate(alpha: f64, optimism: Option<f64>) -> Self {
        Self::with(alpha, optimism, true)
    }
    fn with(alpha: f64, optimism: Option<f64>, alpha_is_learning_rate: bool) -> Self {
        ScaleByOptimisticGradient {
            alpha: LearningRate::Constant(alpha),
            optimism,
            alpha_is_learning_rate,
            ab: 0.0,
            beta: 0.0,
            first: true,
            initial: 1,
            prev: ParamBufs::default(),
        }
    }
}
elementwise_transform!(ScaleByOptimisticGradient, |s, shapes, _p| { s.prev = zeros(shapes).into(); s.initial = 1; }; bufs: [prev]; counters: [initial]; scalars: []);
impl Elementwise for ScaleByOptimisticGradient {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        if self.alpha_is_learning_rate {
            f(&mut self.alpha);
        }
    }
    fn begin_step(&mut self) {
        self.first = self.initial == 1;
        self.initial = 0;
        // α is a constant (a rate set between steps is one too).
        let alpha = self.alpha.at(0);
        let beta = self.optimism.unwrap_or(alpha);
        (self.ab, self.beta) = ((alpha as f32) + (beta as f32), beta as f32);
    }
    simd_apply!(ScaleByOptimisticGradient, |this, i, off, u, p| {
        // The hyper-parameters read once: the loop writes through `prev`, which the compiler
        // cannot tell apart from `this`, and reloading them each time kept it scalar.
        let n = u.len();
        let prev = &mut this.prev.slice(i, off, n)[..n];
        let (first, ab, beta) = (this.first, this.ab, this.beta);
        for j in 0..n {
            let g = u[j];
            let gp = if first { g } else { prev[j] };
            prev[j] = g;
            u[j] = ab * g - beta * gp;
        }
    });
}

/// optax `scale_by_rss` (AdaGrad): `s ← s + u²`, `u ← u / √(s + eps)` where `s > 0`.
pub struct ScaleByRss {
    initial: f32,
    eps: f32,
    sum_of_squares: ParamBufs,
}
impl ScaleByRss {
    /// A `ScaleByRss` with these hyper-parameters (`initial_accumulator_value`, `eps`), as described above.
    pub fn new(initial_accumulator_value: f64, eps: f64) -> Self {
        ScaleByRss { initial: initial_accumulator_value as f32, eps: eps as f32, sum_of_squares: ParamBufs::default() }
    }
}
elementwise_transform!(ScaleByRss, |s, shapes, _p| { s.sum_of_squares = full(shapes, s.initial).into(); }; bufs: [sum_of_squares]; counters: []; scalars: []);
impl Elementwise for ScaleByRss {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByRss, |this, i, off, u, p| {
        let s = this.sum_of_squares.slice(i, off, u.len());
        for (g, s) in u.iter_mut().zip(s) {
            *s += *g * *g;
            *g = if *s > 0.0 { *g / (*s + this.eps).sqrt() } else { 0.0 };
        }
    });
}

/// A learning-rate multiplier set from outside between steps (by a training loop's scheduler, as
/// torch schedulers rewrite a group's `lr`). Shared between the loop and the optimizer.
#[derive(Debug, Default)]
pub struct SharedScale(std::sync::atomic::AtomicU64);

impl SharedScale {
    /// A `SharedScale` with these hyper-parameters (`v`), as described above.
    pub fn new(v: f64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(SharedScale(std::sync::atomic::AtomicU64::new(v.to_bits())))
    }
    /// Sets the factor, for every transformation sharing it.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), std::sync::atomic::Ordering::Relaxed)
    }
    /// The factor.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// `u ← s·u` with `s` read from a [`SharedScale`] at the start of each step. For optimizers whose
/// step is proportional to the learning rate (SGD, Adam, AdamW, RMSprop, Lion, …), scaling by
/// `lr_t / lr` is the same as changing the learning rate to `lr_t`.
pub struct ScaleByShared {
    scale: std::sync::Arc<SharedScale>,
    current: f32,
}
impl ScaleByShared {
    /// A `ScaleByShared` with these hyper-parameters (`scale`, `std`, `sync`), as described above.
    pub fn new(scale: std::sync::Arc<SharedScale>) -> Self {
        ScaleByShared { scale, current: 1.0 }
    }
}
elementwise_transform!(ScaleByShared, |_s, _sh, _p| {}; bufs: []; counters: []; scalars: []);
impl Elementwise for ScaleByShared {
    fn begin_step(&mut self) {
        self.current = self.scale.get() as f32;
    }
    fn affine(&self, _i: usize) -> Option<(f32, f32)> {
        Some((self.current, 0.0))
    }
    simd_apply!(ScaleByShared, |this, i, off, u, p| {
        for x in u.iter_mut() {
            *x *= this.current;
        }
    });
}

/// optax `scale_by_rprop` (Riedmiller & Braun 1993): per-element step sizes grow by `eta_plus` while
/// the gradient keeps its sign and shrink by `eta_minus` when it flips (the step is then skipped).
/// As optax 0.2.8 writes it, the update emitted at a step is the one computed at the step before
/// (zeroed where the sign flipped), so the first step does not move; `rprop` negates it.
pub struct ScaleByRprop {
    lr: f32,
    eta_minus: f32,
    eta_plus: f32,
    min_step: f32,
    max_step: f32,
    step_sizes: ParamBufs,
    prev_updates: ParamBufs,
}
/// The hyper-parameters of [`ScaleByRprop`], with optax `scale_by_rprop` (its `learning_rate` is the first argument of `new`)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleByRpropConfig {
    /// Factor of a step size where the gradient flips sign.
    pub eta_minus: f64,
    /// Factor of a step size where the gradient keeps its sign.
    pub eta_plus: f64,
    /// The least step size.
    pub min_step_size: f64,
    /// The largest step size.
    pub max_step_size: f64,
}
impl Default for ScaleByRpropConfig {
    fn default() -> Self {
        ScaleByRpropConfig { eta_minus: 0.5, eta_plus: 1.2, min_step_size: 1e-6, max_step_size: 50.0 }
    }
}
impl ScaleByRprop {
    /// A `ScaleByRprop` with the hyper-parameters of `config` and the arguments before it, as described above.
    pub fn new(lr: f64, config: ScaleByRpropConfig) -> Self {
        let ScaleByRpropConfig { eta_minus, eta_plus, min_step_size: min_step, max_step_size: max_step } = config;
        ScaleByRprop {
            lr: lr as f32,
            eta_minus: eta_minus as f32,
            eta_plus: eta_plus as f32,
            min_step: min_step as f32,
            max_step: max_step as f32,
            step_sizes: ParamBufs::default(),
            prev_updates: ParamBufs::default(),
        }
    }
}
elementwise_transform!(ScaleByRprop, |s, shapes, _p| {
    s.step_sizes = full(shapes, s.lr).into();
    s.prev_updates = zeros(shapes).into();
}; bufs: [step_sizes, prev_updates]; counters: []; scalars: []);
impl Elementwise for ScaleByRprop {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByRprop, |this, i, off, u, p| {
        let n = u.len();
        let ss = &mut this.step_sizes.slice(i, off, n)[..n];
        let prev = &mut this.prev_updates.slice(i, off, n)[..n];
        // Read once (the loop writes through the state, which the compiler cannot tell apart
        // from `this`), and the step size stored whatever the sign (a conditional store kept the
        // loop scalar).
        let (eta_plus, eta_minus, lo, hi) = (this.eta_plus, this.eta_minus, this.min_step, this.max_step);
        for j in 0..n {
            let g = u[j];
            let s = g * prev[j];
            let f = if s > 0.0 { eta_plus } else { eta_minus };
            let moved = crate::kernel::clip(ss[j] * f, lo, hi);
            ss[j] = if s != 0.0 { moved } else { ss[j] };
            let old = prev[j];
            prev[j] = if s < 0.0 { 0.0 } else { ss[j] * sign(g) };
            u[j] = if s < 0.0 { 0.0 } else { old };
        }
    });
}

/// optax `apply_every`: sums the incoming updates and emits the sum at steps `k−1, 2k−1, …`
/// (zero-based), zeros in between; the sum restarts after each emission.
pub struct ApplyEvery {
    k: u64,
    count: u64,
    grad_acc: ParamBufs,
    accumulate: bool,
    emit: bool,
}
impl ApplyEvery {
    /// A `ApplyEvery` with these hyper-parameters (`k`), as described above.
    pub fn new(k: u64) -> crate::error::Result<Self> {
        crate::error::ensure(k >= 1, || format!("apply_every needs k >= 1, got {k}"))?;
        Ok(ApplyEvery { k, count: 0, grad_acc: ParamBufs::default(), accumulate: false, emit: false })
    }
}
elementwise_transform!(ApplyEvery, |s, shapes, _p| { s.grad_acc = zeros(shapes).into(); s.count = 0; }; bufs: [grad_acc]; counters: [count]; scalars: []);
impl Elementwise for ApplyEvery {
    fn begin_step(&mut self) {
        let c = self.count % self.k;
        self.accumulate = c != 0;
        self.emit = c == self.k - 1;
        self.count = (self.count + 1) % self.k;
    }
    simd_apply!(ApplyEvery, |this, i, off, u, p| {
        let acc = this.grad_acc.slice(i, off, u.len());
        for (x, a) in u.iter_mut().zip(acc) {
            *a = if this.accumulate { *a + *x } else { *x };
            // optax multiplies by the emit flag: a non-finite sum stays NaN when not emitted.
            *x = if this.emit { *a } else { 0.0 * *a };
        }
    });
}
