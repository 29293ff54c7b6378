//! The `torch.optim` optimizers, each a single fused elementwise transformation that returns the
//! parameter displacement (`p_new − p`), following PyTorch 2.x's single-tensor code path.
//!
//! Every optimizer takes its learning rate as a [`LearningRate`]: a constant, or a schedule that
//! plays the role of a torch `lr_scheduler` (evaluated at the 0-based step).
//!
//! A typed config with torch's defaults, driven over flat buffers by an [`crate::Optimizer`]:
//!
//! ```
//! use descent_core::torch::{Adam, AdamConfig};
//! use descent_core::Optimizer;
//!
//! // torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
//! let adamw = Adam::new(AdamConfig { lr: 1e-3.into(), weight_decay: 0.1, ..AdamConfig::adamw() })?;
//! let mut weight = vec![1.0f32, -2.0, 0.5, 3.0];
//! let mut opt = Optimizer::new(Box::new(adamw), vec![vec![2, 2]], &[&weight])?;
//! opt.step(&mut [&mut weight], &[&[0.1, -0.1, 0.2, 0.0]])?;
//! assert!(weight[0] < 1.0 && weight[1] > -2.0); // each moved against its gradient
//! opt.set_learning_rate(5e-4)?; // as torch's param_group["lr"] = 5e-4
//! # Ok::<(), descent_core::Error>(())
//! ```

pub use crate::sparse::{SparseAdam, SparseAdamConfig};

use crate::error::{ensure, Result};
use crate::kernel::{global_sum_sq, Elementwise};
use crate::state::StateVisitor;
use crate::transform::{numel, Shapes, Transform};

use crate::learning_rate::LearningRate;
use crate::transforms::{bias_correction, simd_apply};
use crate::transforms::{
    elementwise_transform, full, newton_schulz, sign, state, sum_sq, zeros, NsPrecision, ParamBufs,
};

/// `torch.lerp` on scalars: `start + w·(end − start)`, computed from the nearer end as torch does.
#[inline]
fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

// torch's checks (`0.0 <= x`, which refuses NaN), and finiteness, which the keyword-argument path
// asks of every number: a typed config built in Rust gets the same refusals.
fn check_lr(lr: &LearningRate) -> Result<()> {
    if let Some(x) = lr.constant() {
        ensure((0.0..f64::INFINITY).contains(&x), || format!("Invalid learning rate: {x}"))?;
    }
    Ok(())
}
fn check_eps(eps: f64) -> Result<()> {
    ensure((0.0..f64::INFINITY).contains(&eps), || format!("Invalid epsilon value: {eps}"))
}
fn check_wd(wd: f64) -> Result<()> {
    ensure((0.0..f64::INFINITY).contains(&wd), || format!("Invalid weight_decay value: {wd}"))
}
fn check_beta(i: usize, b: f64) -> Result<()> {
    ensure((0.0..1.0).contains(&b), || format!("Invalid beta parameter at index {i}: {b}"))
}

/// The checks torch's Adam family makes at construction: learning rate, epsilon, both betas and
/// weight decay, with torch's messages.
pub(crate) fn check_adam_like(lr: &LearningRate, betas: (f64, f64), eps: f64, weight_decay: f64) -> Result<()> {
    check_lr(lr)?;
    check_eps(eps)?;
    check_beta(0, betas.0)?;
    check_beta(1, betas.1)?;
    check_wd(weight_decay)
}

/// How weight decay enters a torch optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDecay {
    /// Added to the gradient (`g ← g + λp`), an L2 penalty.
    L2,
    /// Applied to the parameters (`p ← p(1 − lr·λ)`), Loshchilov & Hutter 2019.
    Decoupled,
}

impl WeightDecay {
    /// `(lr·λ, 0)` for decoupled decay (the step's `−lr·λ·p` term), `(0, λ)` for L2 (added to the
    /// gradient).
    fn terms(self, lr: f64, weight_decay: f32) -> (f32, f32) {
        match self {
            WeightDecay::Decoupled => ((lr * weight_decay as f64) as f32, 0.0),
            WeightDecay::L2 => (0.0, weight_decay),
        }
    }
}

/// `torch.optim.SGD`: momentum with dampening, Nesterov, L2 weight decay, maximize.
pub struct Sgd {
    lr: LearningRate,
    momentum: f32,
    /// `1 − dampening` ([`crate::transforms::one_minus`]).
    one_minus_dampening: f32,
    weight_decay: f32,
    nesterov: bool,
    maximize: bool,
    step: u64,
    momentum_buffer: ParamBufs,
    first: bool,
    cur_lr: f32,
}
/// `torch.optim.SGD`'s arguments, with its defaults.
pub struct SgdConfig {
    /// Learning rate (`lr`).
    pub lr: LearningRate,
    /// Momentum factor μ: `b ← μ·b + (1 − dampening)·g`.
    pub momentum: f64,
    /// Dampening of the momentum's new gradient.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum: step along `g + μ·b`.
    pub nesterov: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: LearningRate::Constant(1e-3),
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

impl Sgd {
    /// The optimizer of `config`, checked as torch checks its constructor's arguments.
    pub fn new(config: SgdConfig) -> Result<Self> {
        ensure(!config.nesterov || (config.momentum > 0.0 && config.dampening == 0.0), || {
            "Nesterov momentum requires a momentum and zero dampening".into()
        })?;
        Self::for_group(config)
    }

    /// The optimizer of one parameter group's arguments: torch checks Nesterov's conditions on
    /// the constructor's arguments only, so here Nesterov without momentum is plain SGD (the
    /// step reads `nesterov` only with a momentum) and Nesterov with dampening steps along
    /// `g + μ·b` with the dampened buffer `b`.
    pub fn for_group(config: SgdConfig) -> Result<Self> {
        let SgdConfig { lr, momentum, dampening, weight_decay, nesterov, maximize } = config;
        check_lr(&lr)?;
        ensure((0.0..f64::INFINITY).contains(&momentum), || format!("Invalid momentum value: {momentum}"))?;
        ensure(dampening.is_finite(), || format!("Invalid dampening value: {dampening}"))?;
        check_wd(weight_decay)?;
        Ok(Sgd {
            lr,
            momentum: momentum as f32,
            one_minus_dampening: crate::transforms::one_minus(dampening),
            weight_decay: weight_decay as f32,
            nesterov,
            maximize,
            step: 0,
            momentum_buffer: ParamBufs::default(),
            first: true,
            cur_lr: 0.0,
        })
    }
}
elementwise_transform!(Sgd, |s, shapes, _p| { s.momentum_buffer = if s.momentum != 0.0 { zeros(shapes).into() } else { ParamBufs::default() }; }; bufs: [momentum_buffer]; counters: [step]; scalars: []);
impl Elementwise for Sgd {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        self.cur_lr = self.lr.at(self.step) as f32;
        self.first = self.step == 0;
        self.step += 1;
    }
    /// One loop over the parameters, the gradients and the momentum buffer: with one or two
    /// buffers besides the gradient, the sub-block scratch's copies are most of the work (plain
    /// SGD on 50 M parameters ran at 60–85% of the roofline through them, 94–100% in one loop).
    /// The same operations in the same order as the kernel below, so the same bits.
    unsafe fn step_plain(&self, i: usize, off: usize, g: &[f32], p: &mut [f32], fold: &crate::kernel::Fold) -> bool {
        if !fold.is_plain() {
            return false;
        }
        #[inline(always)]
        fn plain(p: &mut [f32], g: &[f32], lr: f32, wd: f32, maximize: bool) {
            for (w, &g) in p.iter_mut().zip(g) {
                let mut d = if maximize { -g } else { g };
                d += wd * *w;
                *w += -lr * d;
            }
        }
        #[inline(always)]
        fn with_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], this: &Sgd) {
            let (lr, mom, c, wd) = (this.cur_lr, this.momentum, this.one_minus_dampening, this.weight_decay);
            let (buf, g) = (&mut buf[..p.len()], &g[..p.len()]);
            for ((w, &g), b) in p.iter_mut().zip(g).zip(buf) {
                let mut d = if this.maximize { -g } else { g };
                d += wd * *w;
                *b = if this.first { d } else { mom * *b + c * d };
                let step = if this.nesterov { d + mom * *b } else { *b };
                *w += -lr * step;
            }
        }
        #[inline(never)]
        fn run_plain(p: &mut [f32], g: &[f32], lr: f32, wd: f32, maximize: bool) {
            crate::kernel::dispatch_simd!(plain(p: &mut [f32], g: &[f32], lr: f32, wd: f32, maximize: bool))
        }
        #[inline(never)]
        fn run_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], this: &Sgd) {
            crate::kernel::dispatch_simd!(with_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], this: &Sgd))
        }
        if self.momentum == 0.0 {
            run_plain(p, g, self.cur_lr, self.weight_decay, self.maximize);
        } else {
            run_momentum(p, g, self.momentum_buffer.slice(i, off, p.len()), self);
        }
        true
    }
    simd_apply!(Sgd, |this, i, off, u, p| {
        let (lr, mom, c, wd) = (this.cur_lr, this.momentum, this.one_minus_dampening, this.weight_decay);
        if mom == 0.0 {
            for (g, &w) in u.iter_mut().zip(p) {
                let mut d = if this.maximize { -*g } else { *g };
                d += wd * w;
                *g = -lr * d;
            }
            return;
        }
        let buf = this.momentum_buffer.slice(i, off, u.len());
        for ((g, &w), b) in u.iter_mut().zip(p).zip(buf) {
            let mut d = if this.maximize { -*g } else { *g };
            d += wd * w;
            *b = if this.first { d } else { mom * *b + c * d };
            let step = if this.nesterov { d + mom * *b } else { *b };
            *g = -lr * step;
        }
    });
}

/// `torch.optim.Adam` and `torch.optim.AdamW` (AMSGrad, L2 or decoupled weight decay, maximize).
pub struct Adam {
    lr: LearningRate,
    b1: f32,
    b2: f32,
    eps: f32,
    weight_decay: f32,
    decay: WeightDecay,
    amsgrad: bool,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    max_exp_avg_sq: ParamBufs,
    k: [f32; 4],
}
/// `torch.optim.Adam`'s arguments, with its defaults (Kingma & Ba 2015); [`AdamConfig::adamw`] gives `torch.optim.AdamW`'s (Loshchilov & Hutter 2019).
pub struct AdamConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Weight decay λ, applied as `decay` says.
    pub weight_decay: f64,
    /// L2 (Adam) or decoupled (AdamW) weight decay.
    pub decay: WeightDecay,
    /// Keep the running maximum of the second moment (Reddi et al. 2018).
    pub amsgrad: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decay: WeightDecay::L2,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults: Adam with decoupled weight decay 1e-2.
    pub fn adamw() -> Self {
        AdamConfig { weight_decay: 1e-2, decay: WeightDecay::Decoupled, ..Default::default() }
    }
}

impl Adam {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AdamConfig) -> Result<Self> {
        let AdamConfig { lr, betas, eps, weight_decay, decay, amsgrad, maximize } = config;
        check_adam_like(&lr, betas, eps, weight_decay)?;
        Ok(Adam {
            lr,
            b1: betas.0 as f32,
            b2: betas.1 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            decay,
            amsgrad,
            maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            max_exp_avg_sq: ParamBufs::default(),
            k: [0.0; 4],
        })
    }
}
elementwise_transform!(Adam, |s, shapes, _p| {
    s.exp_avg = zeros(shapes).into();
    s.exp_avg_sq = zeros(shapes).into();
    s.max_exp_avg_sq = if s.amsgrad { zeros(shapes).into() } else { ParamBufs::default() };
}; bufs: [exp_avg, exp_avg_sq, max_exp_avg_sq]; counters: [step]; scalars: []);
impl Elementwise for Adam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let bc1 = bias_correction(self.b1 as f64, t);
        let bc2 = bias_correction(self.b2 as f64, t);
        // [step size, 1/sqrt(bc2), decoupled decay factor, L2 coefficient]
        let (dec, l2) = self.decay.terms(lr, self.weight_decay);
        self.k = [(lr / bc1) as f32, (1.0 / bc2.sqrt()) as f32, dec, l2];
    }
    simd_apply!(Adam, |this, i, off, u, p| {
        let n = u.len();
        let [step_size, inv_sqrt_bc2, dec, l2] = this.k;
        let (b1, b2, eps, maximize) = (this.b1, this.b2, this.eps, this.maximize);
        let m = this.exp_avg.slice(i, off, n);
        let v = this.exp_avg_sq.slice(i, off, n);
        // The moments of one element, then its update from the (maximum) second moment.
        let moments = |g: f32, w: f32, m: &mut f32, v: &mut f32| {
            let mut g = if maximize { -g } else { g };
            g += l2 * w;
            *m += (g - *m) * (1.0 - b1);
            *v = b2 * *v + (1.0 - b2) * g * g;
        };
        let update = |w: f32, m: f32, vv: f32| -dec * w - step_size * (m / (vv.sqrt() * inv_sqrt_bc2 + eps));
        // Separate loops: a branch on AMSGrad inside one loop becomes masked loads and stores.
        if this.amsgrad {
            let vmax = this.max_exp_avg_sq.slice(i, off, n);
            for j in 0..n {
                moments(u[j], p[j], &mut m[j], &mut v[j]);
                vmax[j] = vmax[j].max(v[j]);
                u[j] = update(p[j], m[j], vmax[j]);
            }
        } else {
            for j in 0..n {
                moments(u[j], p[j], &mut m[j], &mut v[j]);
                u[j] = update(p[j], m[j], v[j]);
            }
        }
    });
}

/// `torch.optim.Adagrad` (Duchi et al. 2011): learning-rate decay, initial accumulator, L2 decay.
pub struct Adagrad {
    lr: LearningRate,
    lr_decay: f64,
    weight_decay: f32,
    initial: f32,
    eps: f32,
    maximize: bool,
    step: u64,
    sum: ParamBufs,
    clr: f32,
}
/// `torch.optim.Adagrad`'s arguments, with its defaults (Duchi et al. 2011).
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// The step size is `lr / (1 + (t − 1)·lr_decay)`.
    pub lr_decay: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Starting value of the sum of squares.
    pub initial_accumulator_value: f64,
    /// Added to the root of the sum of squares.
    pub eps: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: LearningRate::Constant(1e-2),
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl Adagrad {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AdagradConfig) -> Result<Self> {
        let AdagradConfig { lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize } = config;
        check_lr(&lr)?;
        ensure(lr_decay >= 0.0, || format!("Invalid lr_decay value: {lr_decay}"))?;
        check_wd(weight_decay)?;
        ensure(initial_accumulator_value >= 0.0, || {
            format!("Invalid initial_accumulator_value value: {initial_accumulator_value}")
        })?;
        check_eps(eps)?;
        Ok(Adagrad {
            lr,
            lr_decay,
            weight_decay: weight_decay as f32,
            initial: initial_accumulator_value as f32,
            eps: eps as f32,
            maximize,
            step: 0,
            sum: ParamBufs::default(),
            clr: 0.0,
        })
    }
}
elementwise_transform!(Adagrad, |s, shapes, _p| { s.sum = full(shapes, s.initial).into(); }; bufs: [sum]; counters: [step]; scalars: []);
impl Elementwise for Adagrad {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        self.clr = (lr / (1.0 + (self.step - 1) as f64 * self.lr_decay)) as f32;
    }
    simd_apply!(Adagrad, |this, i, off, u, p| {
        let s = this.sum.slice(i, off, u.len());
        for ((g, &w), s) in u.iter_mut().zip(p).zip(s) {
            let mut d = if this.maximize { -*g } else { *g };
            d += this.weight_decay * w;
            *s += d * d;
            *g = -this.clr * d / (s.sqrt() + this.eps);
        }
    });
}

/// `torch.optim.RMSprop`: smoothing `alpha`, centered, momentum, L2 decay.
pub struct Rmsprop {
    lr: LearningRate,
    alpha: f32,
    /// `1 − alpha` ([`crate::transforms::one_minus`]).
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    centered: bool,
    maximize: bool,
    step: u64,
    square_avg: ParamBufs,
    grad_avg: ParamBufs,
    momentum_buffer: ParamBufs,
    cur_lr: f32,
}
/// `torch.optim.RMSprop`'s arguments, with its defaults (Hinton, lecture 6e).
pub struct RmspropConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decay of the mean square.
    pub alpha: f64,
    /// Added to the root of the mean square.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum of the scaled step.
    pub momentum: f64,
    /// Divide by the variance estimate (mean square minus squared mean).
    pub centered: bool,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        RmspropConfig {
            lr: LearningRate::Constant(1e-2),
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl Rmsprop {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: RmspropConfig) -> Result<Self> {
        let RmspropConfig { lr, alpha, eps, weight_decay, momentum, centered, maximize } = config;
        check_lr(&lr)?;
        check_eps(eps)?;
        ensure(momentum >= 0.0, || format!("Invalid momentum value: {momentum}"))?;
        check_wd(weight_decay)?;
        ensure(alpha >= 0.0, || format!("Invalid alpha value: {alpha}"))?;
        Ok(Rmsprop {
            lr,
            alpha: alpha as f32,
            one_minus_alpha: crate::transforms::one_minus(alpha),
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            momentum: momentum as f32,
            centered,
            maximize,
            step: 0,
            square_avg: ParamBufs::default(),
            grad_avg: ParamBufs::default(),
            momentum_buffer: ParamBufs::default(),
            cur_lr: 0.0,
        })
    }
}
elementwise_transform!(Rmsprop, |s, shapes, _p| {
    s.square_avg = zeros(shapes).into();
    s.grad_avg = if s.centered { zeros(shapes).into() } else { ParamBufs::default() };
    s.momentum_buffer = if s.momentum > 0.0 { zeros(shapes).into() } else { ParamBufs::default() };
}; bufs: [square_avg, grad_avg, momentum_buffer]; counters: [step]; scalars: []);
impl Elementwise for Rmsprop {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        self.cur_lr = self.lr.at(self.step) as f32;
        self.step += 1;
    }
    simd_apply!(Rmsprop, |this, i, off, u, p| {
        /// One loop per combination of options: a branch on them inside the loop would become
        /// masked loads and stores of the unused buffers.
        #[inline(always)]
        fn run<const CENTERED: bool, const MOMENTUM: bool>(
            this: &Rmsprop,
            u: &mut [f32],
            p: &[f32],
            sq: &mut [f32],
            ga: &mut [f32],
            mb: &mut [f32],
        ) {
            let n = u.len();
            let (p, sq) = (&p[..n], &mut sq[..n]);
            let (ga, mb) = (&mut ga[..if CENTERED { n } else { 0 }], &mut mb[..if MOMENTUM { n } else { 0 }]);
            let (a, eps, wd, mom, lr) = (this.alpha, this.eps, this.weight_decay, this.momentum, this.cur_lr);
            let c = this.one_minus_alpha;
            for j in 0..n {
                let mut g = if this.maximize { -u[j] } else { u[j] };
                g += wd * p[j];
                sq[j] = a * sq[j] + c * g * g;
                let avg = if CENTERED {
                    ga[j] += (g - ga[j]) * c;
                    (sq[j] - ga[j] * ga[j]).sqrt() + eps
                } else {
                    sq[j].sqrt() + eps
                };
                u[j] = if MOMENTUM {
                    mb[j] = mom * mb[j] + g / avg;
                    -lr * mb[j]
                } else {
                    -lr * g / avg
                };
            }
        }
        let n = u.len();
        let sq = this.square_avg.slice(i, off, n);
        let ga = if this.centered { this.grad_avg.slice(i, off, n) } else { &mut [][..] };
        let mb = if this.momentum > 0.0 { this.momentum_buffer.slice(i, off, n) } else { &mut [][..] };
        match (this.centered, this.momentum > 0.0) {
            (false, false) => run::<false, false>(this, u, p, sq, ga, mb),
            (false, true) => run::<false, true>(this, u, p, sq, ga, mb),
            (true, false) => run::<true, false>(this, u, p, sq, ga, mb),
            (true, true) => run::<true, true>(this, u, p, sq, ga, mb),
        }
    });
}

/// `torch.optim.Adadelta` (Zeiler 2012).
pub struct Adadelta {
    lr: LearningRate,
    rho: f32,
    /// `1 − rho` ([`crate::transforms::one_minus`]).
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    maximize: bool,
    step: u64,
    square_avg: ParamBufs,
    acc_delta: ParamBufs,
    cur_lr: f32,
}
/// `torch.optim.Adadelta`'s arguments, with its defaults (Zeiler 2012).
pub struct AdadeltaConfig {
    /// Learning rate (scales the delta).
    pub lr: LearningRate,
    /// Decay of the running averages.
    pub rho: f64,
    /// Added inside both roots.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        AdadeltaConfig { lr: LearningRate::Constant(1.0), rho: 0.9, eps: 1e-6, weight_decay: 0.0, maximize: false }
    }
}

impl Adadelta {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AdadeltaConfig) -> Result<Self> {
        let AdadeltaConfig { lr, rho, eps, weight_decay, maximize } = config;
        check_lr(&lr)?;
        ensure((0.0..=1.0).contains(&rho), || format!("Invalid rho value: {rho}"))?;
        check_eps(eps)?;
        check_wd(weight_decay)?;
        Ok(Adadelta {
            lr,
            rho: rho as f32,
            one_minus_rho: crate::transforms::one_minus(rho),
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            maximize,
            step: 0,
            square_avg: ParamBufs::default(),
            acc_delta: ParamBufs::default(),
            cur_lr: 0.0,
        })
    }
}
elementwise_transform!(Adadelta, |s, shapes, _p| { s.square_avg = zeros(shapes).into(); s.acc_delta = zeros(shapes).into(); }; bufs: [square_avg, acc_delta]; counters: [step]; scalars: []);
impl Elementwise for Adadelta {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        self.cur_lr = self.lr.at(self.step) as f32;
        self.step += 1;
    }
    simd_apply!(Adadelta, |this, i, off, u, p| {
        let square_avg_s = this.square_avg.slice(i, off, u.len());
        let acc_delta_s = this.acc_delta.slice(i, off, u.len());
        let (r, c) = (this.rho, this.one_minus_rho);
        for j in 0..u.len() {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            g += this.weight_decay * p[j];
            let sq = &mut square_avg_s[j];
            *sq = r * *sq + c * g * g;
            let std = (*sq + this.eps).sqrt();
            let acc = &mut acc_delta_s[j];
            let delta = (*acc + this.eps).sqrt() / std * g;
            *acc = r * *acc + c * delta * delta;
            u[j] = -this.cur_lr * delta;
        }
    });
}

/// `torch.optim.Adamax` (Kingma & Ba 2015, §7).
pub struct Adamax {
    lr: LearningRate,
    b1: f32,
    b2: f32,
    eps: f32,
    weight_decay: f32,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_inf: ParamBufs,
    clr: f32,
}
/// `torch.optim.Adamax`'s arguments, with its defaults (Kingma & Ba 2015, section 7).
pub struct AdamaxConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first moment and of the infinity norm.
    pub betas: (f64, f64),
    /// Added to the infinity norm.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdamaxConfig {
    fn default() -> Self {
        AdamaxConfig {
            lr: LearningRate::Constant(2e-3),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Adamax {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AdamaxConfig) -> Result<Self> {
        let AdamaxConfig { lr, betas, eps, weight_decay, maximize } = config;
        check_adam_like(&lr, betas, eps, weight_decay)?;
        Ok(Adamax {
            lr,
            b1: betas.0 as f32,
            b2: betas.1 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_inf: ParamBufs::default(),
            clr: 0.0,
        })
    }
}
elementwise_transform!(Adamax, |s, shapes, _p| { s.exp_avg = zeros(shapes).into(); s.exp_inf = zeros(shapes).into(); }; bufs: [exp_avg, exp_inf]; counters: [step]; scalars: []);
impl Elementwise for Adamax {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        self.clr = (lr / bias_correction(self.b1 as f64, self.step as f64)) as f32;
    }
    simd_apply!(Adamax, |this, i, off, u, p| {
        let exp_avg_s = this.exp_avg.slice(i, off, u.len());
        let exp_inf_s = this.exp_inf.slice(i, off, u.len());
        for j in 0..u.len() {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            g += this.weight_decay * p[j];
            let m = &mut exp_avg_s[j];
            *m += (g - *m) * (1.0 - this.b1);
            let e = &mut exp_inf_s[j];
            *e = (*e * this.b2).max(g.abs() + this.eps);
            u[j] = -this.clr * *m / *e;
        }
    });
}

/// `torch.optim.NAdam` (Dozat 2016) with the momentum-decay schedule, L2 or decoupled decay.
pub struct Nadam {
    lr: LearningRate,
    b1: f64,
    b2: f32,
    eps: f32,
    weight_decay: f32,
    decay: WeightDecay,
    momentum_decay: f64,
    maximize: bool,
    step: u64,
    mu_product: f64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    k: [f32; 5],
}
/// `torch.optim.NAdam`'s arguments, with its defaults (Dozat 2016).
pub struct NadamConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Weight decay λ.
    pub weight_decay: f64,
    /// ψ of the momentum schedule `β1·(1 − ½·0.96^(tψ))`.
    pub momentum_decay: f64,
    /// L2 or decoupled (NAdamW) weight decay.
    pub decay: WeightDecay,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for NadamConfig {
    fn default() -> Self {
        NadamConfig {
            lr: LearningRate::Constant(2e-3),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decay: WeightDecay::L2,
            maximize: false,
        }
    }
}

impl Nadam {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: NadamConfig) -> Result<Self> {
        let NadamConfig { lr, betas, eps, weight_decay, momentum_decay, decay, maximize } = config;
        check_adam_like(&lr, betas, eps, weight_decay)?;
        ensure(momentum_decay >= 0.0, || format!("Invalid momentum_decay value: {momentum_decay}"))?;
        Ok(Nadam {
            lr,
            b1: betas.0,
            b2: betas.1 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            decay,
            momentum_decay,
            maximize,
            step: 0,
            mu_product: 1.0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 5],
        })
    }
}
impl Transform for Nadam {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.exp_avg = zeros(shapes).into();
        self.exp_avg_sq = zeros(shapes).into();
        self.mu_product = 1.0;
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.exp_avg.visit(v, "exp_avg")?;
        self.exp_avg_sq.visit(v, "exp_avg_sq")?;
        v.counter("step", &mut self.step)?;
        v.scalar("mu_product", &mut self.mu_product)
    }
}
crate::transforms::prefetch_state!(Nadam; exp_avg, exp_avg_sq);
impl Elementwise for Nadam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let bc2 = bias_correction(self.b2 as f64, t);
        let mu = self.b1 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay));
        let mu_next = self.b1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * self.momentum_decay));
        self.mu_product *= mu;
        let mu_product_next = self.mu_product * mu_next;
        let (dec, l2) = self.decay.terms(lr, self.weight_decay);
        self.k = [
            (lr * (1.0 - mu) / (1.0 - self.mu_product)) as f32,
            (lr * mu_next / (1.0 - mu_product_next)) as f32,
            bc2 as f32,
            dec,
            l2,
        ];
    }
    simd_apply!(Nadam, |this, i, off, u, p| {
        let exp_avg_s = this.exp_avg.slice(i, off, u.len());
        let exp_avg_sq_s = this.exp_avg_sq.slice(i, off, u.len());
        let [cg, cm, bc2, dec, l2] = this.k;
        let b1 = this.b1 as f32;
        for j in 0..u.len() {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            g += l2 * p[j];
            let m = &mut exp_avg_s[j];
            *m += (g - *m) * (1.0 - b1);
            let v = &mut exp_avg_sq_s[j];
            *v = this.b2 * *v + (1.0 - this.b2) * g * g;
            let denom = (*v / bc2).sqrt() + this.eps;
            u[j] = -dec * p[j] - cg * g / denom - cm * *m / denom;
        }
    });
}

/// `torch.optim.RAdam` (Liu et al. 2020), L2 or decoupled decay.
pub struct Radam {
    lr: LearningRate,
    b1: f32,
    b2: f32,
    eps: f32,
    weight_decay: f32,
    decay: WeightDecay,
    maximize: bool,
    step: u64,
    exp_avg: ParamBufs,
    exp_avg_sq: ParamBufs,
    k: [f32; 5],
    rectified: bool,
}
/// `torch.optim.RAdam`'s arguments, with its defaults (Liu et al. 2020).
pub struct RadamConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decays of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Weight decay λ.
    pub weight_decay: f64,
    /// L2 or decoupled weight decay.
    pub decay: WeightDecay,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for RadamConfig {
    fn default() -> Self {
        RadamConfig {
            lr: LearningRate::Constant(1e-3),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decay: WeightDecay::L2,
            maximize: false,
        }
    }
}

impl Radam {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: RadamConfig) -> Result<Self> {
        let RadamConfig { lr, betas, eps, weight_decay, decay, maximize } = config;
        check_adam_like(&lr, betas, eps, weight_decay)?;
        Ok(Radam {
            lr,
            b1: betas.0 as f32,
            b2: betas.1 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            decay,
            maximize,
            step: 0,
            exp_avg: ParamBufs::default(),
            exp_avg_sq: ParamBufs::default(),
            k: [0.0; 5],
            rectified: false,
        })
    }
}
elementwise_transform!(Radam, |s, shapes, _p| { s.exp_avg = zeros(shapes).into(); s.exp_avg_sq = zeros(shapes).into(); }; bufs: [exp_avg, exp_avg_sq]; counters: [step]; scalars: []);
impl Elementwise for Radam {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        let lr = self.lr.at(self.step);
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.b1 as f64, self.b2 as f64);
        let bc1 = bias_correction(b1, t);
        let bc2 = bias_correction(b2, t);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bc2;
        self.rectified = rho_t > 5.0;
        let rect = if self.rectified {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).sqrt()
        } else {
            0.0
        };
        let (dec, l2) = self.decay.terms(lr, self.weight_decay);
        self.k = [(lr / bc1) as f32, (lr / bc1 * rect) as f32, bc2.sqrt() as f32, dec, l2];
    }
    simd_apply!(Radam, |this, i, off, u, p| {
        let exp_avg_s = this.exp_avg.slice(i, off, u.len());
        let exp_avg_sq_s = this.exp_avg_sq.slice(i, off, u.len());
        let [plain, rect, sqrt_bc2, dec, l2] = this.k;
        for j in 0..u.len() {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            g += l2 * p[j];
            let m = &mut exp_avg_s[j];
            *m += (g - *m) * (1.0 - this.b1);
            let v = &mut exp_avg_sq_s[j];
            *v = this.b2 * *v + (1.0 - this.b2) * g * g;
            let step = if this.rectified { rect * *m * (sqrt_bc2 / (v.sqrt() + this.eps)) } else { plain * *m };
            u[j] = -dec * p[j] - step;
        }
    });
}

/// `torch.optim.Rprop` (Riedmiller & Braun 1993): sign-based steps with per-element step sizes.
pub struct Rprop {
    lr: f32,
    eta_minus: f32,
    eta_plus: f32,
    step_min: f32,
    step_max: f32,
    maximize: bool,
    step: u64,
    prev: ParamBufs,
    step_size: ParamBufs,
}
/// `torch.optim.Rprop`'s arguments, with its defaults (Riedmiller & Braun 1993).
pub struct RpropConfig {
    /// The initial step size of every entry.
    pub lr: f64,
    /// Factors of the step size on a sign change and on agreement.
    pub etas: (f64, f64),
    /// Bounds of the step size.
    pub step_sizes: (f64, f64),
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for RpropConfig {
    fn default() -> Self {
        RpropConfig { lr: 1e-2, etas: (0.5, 1.2), step_sizes: (1e-6, 50.0), maximize: false }
    }
}

impl Rprop {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: RpropConfig) -> Result<Self> {
        let RpropConfig { lr, etas, step_sizes, maximize } = config;
        ensure(lr >= 0.0, || format!("Invalid learning rate: {lr}"))?;
        ensure(0.0 < etas.0 && etas.0 < 1.0 && 1.0 < etas.1, || format!("Invalid eta values: {}, {}", etas.0, etas.1))?;
        Ok(Rprop {
            lr: lr as f32,
            eta_minus: etas.0 as f32,
            eta_plus: etas.1 as f32,
            step_min: step_sizes.0 as f32,
            step_max: step_sizes.1 as f32,
            maximize,
            step: 0,
            prev: ParamBufs::default(),
            step_size: ParamBufs::default(),
        })
    }
}
elementwise_transform!(Rprop, |s, shapes, _p| { s.prev = zeros(shapes).into(); s.step_size = full(shapes, s.lr).into(); }; bufs: [prev, step_size]; counters: [step]; scalars: []);
impl Elementwise for Rprop {
    fn begin_step(&mut self) {
        self.step += 1;
    }
    simd_apply!(Rprop, |this, i, off, u, p| {
        let n = u.len();
        let prevs = this.prev.slice(i, off, n);
        let sizes = this.step_size.slice(i, off, n);
        for ((x, prev), ss) in u.iter_mut().zip(prevs).zip(sizes) {
            let mut g = if this.maximize { -*x } else { *x };
            let s = sign(g * *prev);
            let factor = if s > 0.0 {
                this.eta_plus
            } else if s < 0.0 {
                this.eta_minus
            } else {
                1.0
            };
            *ss = crate::kernel::clip(*ss * factor, this.step_min, this.step_max);
            if s < 0.0 {
                g = 0.0;
            }
            *x = -sign(g) * *ss;
            *prev = g;
        }
    });
}

/// `torch.optim.ASGD` (Polyak & Juditsky 1992): SGD with a decaying step and an averaged iterate
/// `ax` kept in the state.
pub struct Asgd {
    lr: LearningRate,
    lambd: f64,
    alpha: f64,
    t0: f64,
    weight_decay: f32,
    maximize: bool,
    step: u64,
    eta: f64,
    mu: f64,
    ax: ParamBufs,
    k: [f32; 3],
}
/// `torch.optim.ASGD`'s arguments, with its defaults (Polyak & Juditsky 1992).
pub struct AsgdConfig {
    /// Learning rate: the one in force at a step also sets the next step's `eta`, as torch's
    /// `param_group["lr"]` does.
    pub lr: LearningRate,
    /// Decay term.
    pub lambd: f64,
    /// Power of the eta update.
    pub alpha: f64,
    /// The step from which averaging starts.
    pub t0: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AsgdConfig {
    fn default() -> Self {
        AsgdConfig {
            lr: LearningRate::Constant(1e-2),
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Asgd {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AsgdConfig) -> Result<Self> {
        let AsgdConfig { lr, lambd, alpha, t0, weight_decay, maximize } = config;
        check_lr(&lr)?;
        let eta = lr.at(0);
        ensure((0.0..f64::INFINITY).contains(&lambd), || format!("Invalid lambd value: {lambd}"))?;
        ensure((0.0..f64::INFINITY).contains(&alpha), || format!("Invalid alpha value: {alpha}"))?;
        check_wd(weight_decay)?;
        Ok(Asgd {
            lr,
            lambd,
            alpha,
            t0,
            weight_decay: weight_decay as f32,
            maximize,
            step: 0,
            eta,
            mu: 1.0,
            ax: ParamBufs::default(),
            k: [0.0; 3],
        })
    }
}
impl Transform for Asgd {
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.ax = zeros(shapes).into();
        self.eta = self.lr.at(0);
        self.mu = 1.0;
        Ok(())
    }
    fn as_elementwise(&mut self) -> Option<&mut dyn Elementwise> {
        Some(self)
    }
    fn elementwise(&self) -> Option<&dyn Elementwise> {
        Some(self)
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        self.ax.visit(v, "ax")?;
        v.counter("step", &mut self.step)?;
        v.scalar("eta", &mut self.eta)?;
        v.scalar("mu", &mut self.mu)
    }
}
crate::transforms::prefetch_state!(Asgd; ax);
impl Elementwise for Asgd {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn begin_step(&mut self) {
        if self.step == 0 {
            // torch creates `eta` at the first step, from the learning rate in force then.
            self.eta = self.lr.at(0);
        }
        self.step += 1;
        self.k = [self.eta as f32, (1.0 - self.lambd * self.eta) as f32, self.mu as f32];
        let t = self.step as f64;
        // torch: after the step, eta from the group's lr now in force (the step just taken).
        let lr = self.lr.at(self.step - 1);
        self.eta = lr / (1.0 + self.lambd * lr * t).powf(self.alpha);
        self.mu = 1.0 / (t - self.t0).max(1.0);
    }
    simd_apply!(Asgd, |this, i, off, u, p| {
        let ax_s = this.ax.slice(i, off, u.len());
        let [eta, shrink, mu] = this.k;
        for j in 0..u.len() {
            let mut g = if this.maximize { -u[j] } else { u[j] };
            g += this.weight_decay * p[j];
            let new_p = p[j] * shrink - eta * g;
            let ax = &mut ax_s[j];
            *ax = if mu != 1.0 { *ax + (new_p - *ax) * mu } else { new_p };
            u[j] = new_p - p[j];
        }
    });
}

/// `torch.optim.Adafactor` (Shazeer & Stern 2018, as PyTorch implements it): row/column second
/// moments over the last two axes, relative step `min(lr, 1/√t)` scaled by the parameter RMS,
/// update clipping `d`, decoupled weight decay.
pub struct Adafactor {
    lr: LearningRate,
    beta2_decay: f64,
    eps1: Option<f64>,
    eps2: f64,
    d: f64,
    weight_decay: f64,
    maximize: bool,
    step: u64,
    shapes: Vec<Vec<usize>>,
    row_var: Vec<Vec<f32>>,
    col_var: Vec<Vec<f32>>,
    variance: Vec<Vec<f32>>,
}
/// `torch.optim.Adafactor`'s arguments, with its defaults (Shazeer & Stern 2018).
pub struct AdafactorConfig {
    /// Learning rate (relative to the parameters' RMS).
    pub lr: LearningRate,
    /// The second moment's decay is `1 − t^beta2_decay`.
    pub beta2_decay: f64,
    /// `eps1` (added to the second moment; `None`: the float's machine epsilon, `torch.finfo(float32).eps`
    /// ≈ 1.19e-7, as torch takes it) and `eps2` (floor of the parameter RMS).
    pub eps: (Option<f64>, f64),
    /// Clipping threshold of the update's RMS.
    pub d: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            lr: LearningRate::Constant(1e-2),
            beta2_decay: -0.8,
            eps: (None, 1e-3),
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl Adafactor {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: AdafactorConfig) -> Result<Self> {
        let AdafactorConfig { lr, beta2_decay, eps, d, weight_decay, maximize } = config;
        if let Some(x) = lr.constant() {
            ensure(x >= 0.0, || format!("Learning rate should be >= 0 but is: {x}"))?;
        }
        ensure(beta2_decay <= 0.0, || format!("beta2_decay should be <= 0 but is: {beta2_decay}"))?;
        ensure(eps.0.is_none_or(|e| e >= 0.0), || format!("epsilon1 should be >= 0 but is: {:?}", eps.0))?;
        ensure(eps.1 >= 0.0, || format!("epsilon2 should be >= 0 but is: {}", eps.1))?;
        ensure(d >= 1.0, || format!("Clipping threshold d should be >= 1 but is: {d}"))?;
        check_wd(weight_decay)?;
        Ok(Adafactor {
            lr,
            beta2_decay,
            eps1: eps.0,
            eps2: eps.1,
            d,
            weight_decay,
            maximize,
            step: 0,
            shapes: vec![],
            row_var: vec![],
            col_var: vec![],
            variance: vec![],
        })
    }
}
/// torch Adafactor's scaled update of an unfactored parameter: `g/√max(v, eps1²)` from its
/// gradient and its new second moment (`floor` = eps1²).
#[inline(always)]
fn unfactored_update(g: f32, v: f32, floor: f32) -> f32 {
    g / v.max(floor).sqrt()
}

/// torch Adafactor's update of one parameter `p` with scaled update `x`:
/// `(p·(1 − decay) − step·x) − p`, the decayed and stepped parameter less the current one.
#[inline(always)]
fn adafactor_update(p: f32, x: f32, step: f32, decay: f32) -> f32 {
    p * (1.0 - decay) - step * x - p
}

impl Adafactor {
    /// Advances the step: `(1 − β₂,t, eps1)`.
    fn begin_step(&mut self) -> (f32, f32) {
        self.step += 1;
        let w = (self.step as f64).powf(self.beta2_decay) as f32; // 1 − β₂,t
        (w, self.eps1.unwrap_or(f32::EPSILON as f64) as f32)
    }

    /// Updates the factored (2-D or more) tensor `i`'s row and column moments from its gradient
    /// `g` and writes `g / √v̂` to `upd`. Unfactored tensors go through
    /// [`Adafactor::unfactored_sums`].
    fn scaled(&mut self, i: usize, g: &[f32], upd: &mut [f32], w: f32, eps1: f32) {
        let n = g.len();
        let s = &self.shapes[i];
        if n == 0 {
            return;
        }
        let u = g;
        let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
        for b in 0..n / (r * c) {
            let g = &u[b * r * c..(b + 1) * r * c];
            let rv = &mut self.row_var[i][b * r..(b + 1) * r];
            for (k, v) in rv.iter_mut().enumerate() {
                let mean = (sum_sq(&g[k * c..(k + 1) * c]) / c as f64) as f32;
                *v += (mean - *v) * w;
            }
            // Column sums row by row (the same order of terms per column as summing down
            // each column, without striding across the matrix).
            let mut col_sq = vec![0.0f64; c];
            for row in g.chunks_exact(c) {
                col_sq.iter_mut().zip(row).for_each(|(acc, &x)| *acc += (x as f64).powi(2));
            }
            let cv = &mut self.col_var[i][b * c..(b + 1) * c];
            for (v, sq) in cv.iter_mut().zip(&col_sq) {
                let mean = (sq / r as f64) as f32;
                *v += (mean - *v) * w;
            }
            let row_mean = (rv.iter().map(|&x| x as f64).sum::<f64>() / r as f64).max(eps1 as f64) as f32;
            for q in 0..r {
                for k in 0..c {
                    let est = (rv[q] * cv[k] / row_mean).max(eps1 * eps1);
                    upd[b * r * c + q * c + k] = g[q * c + k] / est.sqrt();
                }
            }
        }
    }

    /// An unfactored (1-D) tensor's moments without writing its update: the second moments of
    /// tensor `i` updated from `g`, and `(Σupd², Σp²)` of the update `g/√max(v, eps1²)` and the
    /// parameters `p`. Each chunk's update is made in an L1 scratch, block by block, and summed
    /// in order: the parts and the order of [`global_sum_sq`], the same bits as summing a written
    /// update afterwards. The update is made again from `g` and the new moments where it is
    /// used ([`unfactored_update`]).
    fn unfactored_sums(&mut self, i: usize, g: &[f32], p: &[f32], w: f32, eps1: f32) -> (f64, f64) {
        #[inline(always)]
        fn moments(g: &[f32], v: &mut [f32], p: &[f32], w: f32, floor: f32) -> (f64, f64) {
            let (mut sp, mut su) = (crate::kernel::SumSq::default(), crate::kernel::SumSq::default());
            let mut scratch = [0.0f32; crate::kernel::BLOCK];
            for ((g, v), p) in g
                .chunks(crate::kernel::BLOCK)
                .zip(v.chunks_mut(crate::kernel::BLOCK))
                .zip(p.chunks(crate::kernel::BLOCK))
            {
                let u = &mut scratch[..g.len()];
                for ((g, v), u) in g.iter().zip(v.iter_mut()).zip(u.iter_mut()) {
                    *v += (g * g - *v) * w;
                    *u = unfactored_update(*g, *v, floor);
                }
                crate::kernel::add_sum_sq2(&mut sp, &mut su, p, u);
            }
            (su.total(), sp.total())
        }
        fn moments_simd(g: &[f32], v: &mut [f32], p: &[f32], w: f32, floor: f32) -> (f64, f64) {
            crate::kernel::dispatch_simd!(moments(g: &[f32], v: &mut [f32], p: &[f32], w: f32, floor: f32) -> (f64, f64))
        }
        let k = crate::kernel::CHUNK;
        let body = |c: usize, v: &mut [f32]| {
            let r = c * k..c * k + v.len();
            moments_simd(&g[r.clone()], v, &p[r], w, eps1 * eps1)
        };
        let v = &mut self.variance[i];
        let parts: Vec<(f64, f64)> = if g.len() >= crate::kernel::PARALLEL_MIN {
            use rayon::prelude::*;
            v.par_chunks_mut(k).enumerate().map(|(c, v)| body(c, v)).collect()
        } else {
            v.chunks_mut(k).enumerate().map(|(c, v)| body(c, v)).collect()
        };
        (parts.iter().map(|x| x.0).sum::<f64>(), parts.iter().map(|x| x.1).sum::<f64>())
    }

    /// The step of an unfactored tensor `i` after [`Adafactor::unfactored_sums`]: each update
    /// made again from the gradient and the new moments and added as [`adafactor_update`] says,
    /// one pass over `g`, `v` and `p`.
    fn recomputed_step(&self, i: usize, g: &[f32], p: &mut [f32], step: f32, decay: f32, eps1: f32) {
        #[inline(always)]
        fn body(g: &[f32], v: &[f32], p: &mut [f32], step: f32, decay: f32, floor: f32) {
            for ((g, v), p) in g.iter().zip(v).zip(p.iter_mut()) {
                *p += adafactor_update(*p, unfactored_update(*g, *v, floor), step, decay);
            }
        }
        fn body_simd(g: &[f32], v: &[f32], p: &mut [f32], step: f32, decay: f32, floor: f32) {
            crate::kernel::dispatch_simd!(body(g: &[f32], v: &[f32], p: &mut [f32], step: f32, decay: f32, floor: f32))
        }
        let v = &self.variance[i];
        crate::kernel::for_chunks(p, |off, p| {
            let r = off..off + p.len();
            body_simd(&g[r.clone()], &v[r], p, step, decay, eps1 * eps1)
        });
    }

    /// The step `α/max(1, rms(upd)/d)` and the decoupled decay `lr·λ` for a tensor of `n`
    /// parameters whose scaled update and parameters have the sums of squares `(su, sp)`.
    fn step_size(&self, n: usize, (su, sp): (f64, f64)) -> (f32, f32) {
        let n = (n as f64).sqrt();
        // The group's lr in force at this step (the step counter has advanced already).
        let lr = self.lr.at(self.step.saturating_sub(1));
        let rho = lr.min(1.0 / (self.step as f64).sqrt());
        let alpha = (self.eps2.max(sp.sqrt() / n) * rho) as f32;
        let denom = (su.sqrt() / (n * self.d)).max(1.0);
        (alpha / denom as f32, (lr * self.weight_decay) as f32)
    }
}

impl Transform for Adafactor {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        self.shapes = shapes.to_vec();
        self.row_var.clear();
        self.col_var.clear();
        self.variance.clear();
        for s in shapes {
            let n = numel(s);
            if s.len() > 1 {
                // An empty tensor keeps no row or column moments: there is nothing to scale, and
                // its other axes may be long (torch would allocate them).
                let (r, c) = if n == 0 { (0, 0) } else { (s[s.len() - 2], s[s.len() - 1]) };
                let batch = if n == 0 { 0 } else { n / (r * c) };
                self.row_var.push(vec![0.0; batch * r]);
                self.col_var.push(vec![0.0; batch * c]);
                self.variance.push(vec![]);
            } else {
                self.row_var.push(vec![]);
                self.col_var.push(vec![]);
                self.variance.push(vec![0.0; n]);
            }
        }
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let (w, eps1) = self.begin_step();
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if self.maximize {
                u.iter_mut().for_each(|g| *g = -*g);
            }
            if self.shapes[i].len() <= 1 {
                let sums = self.unfactored_sums(i, u, p, w, eps1);
                let (step, decay) = self.step_size(p.len(), sums);
                let floor = eps1 * eps1;
                // `u` holds the gradient: each update made again from it, as in the fused step.
                for ((u, &pj), &v) in u.iter_mut().zip(p.iter()).zip(&self.variance[i]) {
                    *u = adafactor_update(pj, unfactored_update(*u, v, floor), step, decay);
                }
                continue;
            }
            let mut upd = vec![0.0f32; u.len()];
            self.scaled(i, u, &mut upd, w, eps1);
            let (step, decay) = self.step_size(p.len(), (global_sum_sq(&[&upd]), global_sum_sq(&[p])));
            for j in 0..u.len() {
                u[j] = adafactor_update(p[j], upd[j], step, decay);
            }
        }
        Ok(())
    }
    /// The same step with `updates` as the scaled updates' scratch, then one pass into the
    /// parameters (`maximize` goes through the plain path).
    fn step_buffers(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], updates: &mut [Vec<f32>]) -> Result<()> {
        if self.maximize {
            return crate::transform::step_through_updates(self, params, grads, updates);
        }
        let (w, eps1) = self.begin_step();
        for (i, (p, upd)) in params.iter_mut().zip(updates.iter_mut()).enumerate() {
            if self.shapes[i].len() <= 1 {
                // Unfactored: the update is made twice instead of written out and read back
                // (32 bytes a parameter in two passes instead of 40).
                let sums = self.unfactored_sums(i, grads[i], p, w, eps1);
                let (step, decay) = self.step_size(p.len(), sums);
                self.recomputed_step(i, grads[i], p, step, decay, eps1);
                continue;
            }
            self.scaled(i, grads[i], upd, w, eps1);
            let (step, decay) = self.step_size(p.len(), (global_sum_sq(&[upd]), global_sum_sq(&[p])));
            // The update of `update`, added.
            let body = |p: &mut [f32], upd: &[f32]| {
                for (p, &x) in p.iter_mut().zip(upd) {
                    *p += adafactor_update(*p, x, step, decay);
                }
            };
            crate::kernel::for_chunks(p, |off, p| body(p, &upd[off..off + p.len()]));
        }
        Ok(())
    }
    state!(Adafactor; bufs: [row_var, col_var, variance]; counters: [step]; scalars: []);
}

/// How torch `Muon` adjusts the learning rate to the matrix shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuonLrAdjust {
    /// `√max(1, rows/cols)` (Keller Jordan's original).
    Original,
    /// `0.2·√max(rows, cols)`, matching AdamW's update RMS (Moonshot, Liu et al. 2025).
    MatchRmsAdamw,
    /// `√(rows/cols)`, unclamped (Bernstein, "Deriving Muon"): below 1 for wide matrices.
    SpectralUnclamped,
}

/// `torch.optim.Muon`: EMA momentum (Nesterov by default), Newton–Schulz orthogonalization in
/// torch's bfloat16 arithmetic ([`NsPrecision::TorchBf16`]), shape-adjusted learning rate,
/// decoupled weight decay; 2-D parameters only.
pub struct Muon {
    lr: LearningRate,
    weight_decay: f64,
    momentum: f32,
    /// `1 − momentum` ([`crate::transforms::one_minus`]), the weight of `buf.lerp_(grad, 1 − momentum)`.
    one_minus_momentum: f32,
    nesterov: bool,
    coeffs: [f64; 3],
    eps: f64,
    ns_steps: usize,
    adjust: MuonLrAdjust,
    step: u64,
    shapes: Vec<Vec<usize>>,
    momentum_buffer: Vec<Vec<f32>>,
}
/// `torch.optim.Muon`'s arguments, with its defaults (Jordan et al. 2024).
pub struct MuonConfig {
    /// Learning rate.
    pub lr: LearningRate,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Momentum of the gradient.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Coefficients of the quintic Newton–Schulz iteration.
    pub coeffs: [f64; 3],
    /// Added to the norm before the iteration.
    pub eps: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// How the learning rate is scaled by the matrix shape.
    pub adjust: MuonLrAdjust,
}

impl Default for MuonConfig {
    fn default() -> Self {
        MuonConfig {
            lr: LearningRate::Constant(1e-3),
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            coeffs: [3.4445, -4.7750, 2.0315],
            eps: 1e-7,
            ns_steps: 5,
            adjust: MuonLrAdjust::Original,
        }
    }
}

impl Muon {
    /// The optimizer of `config`, checked as torch checks its arguments.
    pub fn new(config: MuonConfig) -> Result<Self> {
        let MuonConfig { lr, weight_decay, momentum, nesterov, coeffs, eps, ns_steps, adjust } = config;
        check_lr(&lr)?;
        ensure(momentum >= 0.0, || format!("momentum should be >= 0 but is: {momentum}"))?;
        check_wd(weight_decay)?;
        ensure(ns_steps < 100, || "Number of steps must be less than 100 for computational efficiency".into())?;
        Ok(Muon {
            lr,
            weight_decay,
            momentum: momentum as f32,
            one_minus_momentum: crate::transforms::one_minus(momentum),
            nesterov,
            coeffs,
            eps,
            ns_steps,
            adjust,
            step: 0,
            shapes: vec![],
            momentum_buffer: vec![],
        })
    }
}
impl Transform for Muon {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.step = 0;
        if let Some(s) = shapes.iter().find(|s| s.len() != 2) {
            return Err(crate::error::invalid(format!(
                "Muon only supports 2D parameters whereas we found a parameter with size: {s:?} \
                 (torch pairs it with another optimizer for the rest; optax.contrib.muon and po.adamuon \
                 take AdamW on them)"
            )));
        }
        self.shapes = shapes.to_vec();
        self.momentum_buffer = zeros(shapes);
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let lr = self.lr.at(self.step);
        self.step += 1;
        let (m, c) = (self.momentum, self.one_minus_momentum);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            for (g, b) in u.iter_mut().zip(self.momentum_buffer[i].iter_mut()) {
                *b = lerp(*b, *g, c);
                *g = if self.nesterov { lerp(*g, *b, m) } else { *b };
            }
            let (rows, cols) = (self.shapes[i][0], self.shapes[i][1]);
            let o = newton_schulz(u, rows, cols, self.coeffs, self.ns_steps, self.eps, NsPrecision::TorchBf16)?;
            let ratio = match self.adjust {
                MuonLrAdjust::Original => (rows as f64 / cols as f64).max(1.0).sqrt(),
                MuonLrAdjust::MatchRmsAdamw => 0.2 * (rows.max(cols) as f64).sqrt(),
                MuonLrAdjust::SpectralUnclamped => (rows as f64 / cols as f64).sqrt(),
            };
            let (adj, decay) = ((lr * ratio) as f32, (1.0 - lr * self.weight_decay) as f32);
            for j in 0..u.len() {
                u[j] = p[j] * decay - adj * o[j] - p[j];
            }
        }
        Ok(())
    }
    state!(Muon; bufs: [momentum_buffer]; counters: [step]; scalars: []);
}
