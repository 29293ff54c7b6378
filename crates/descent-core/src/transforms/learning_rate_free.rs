//! Learning-rate-free methods from optax `contrib`: each estimates its own step size from the
//! gradients and the distance travelled — COCOB, D-Adaptation AdamW, Prodigy, DoG, DoWG and
//! Mechanic (`mechanize`).

use super::simd_apply;
use super::{elementwise_transform, state, sum_sq, zeros, ParamBufs};
use crate::error::Result;
use crate::kernel::{chunked_sums_mut, fold_lanes, global_sum_sq, lane_sums, Elementwise, SendPtr};
use crate::learning_rate::LearningRate;
use crate::state::StateVisitor;

use crate::transform::{Shapes, Transform};

/// optax `contrib.scale_by_cocob` (Orabona & Tommasi 2017): coin-betting, learning-rate free.
pub struct ScaleByCocob {
    alpha: f32,
    eps: f32,
    init_particles: ParamBufs,
    cumulative_gradients: ParamBufs,
    scale: ParamBufs,
    subgradients: ParamBufs,
    reward: ParamBufs,
}
impl ScaleByCocob {
    /// A `ScaleByCocob` with these hyper-parameters (`alpha`, `eps`), as described above.
    pub fn new(alpha: f64, eps: f64) -> Self {
        ScaleByCocob {
            alpha: alpha as f32,
            eps: eps as f32,
            init_particles: ParamBufs::default(),
            cumulative_gradients: ParamBufs::default(),
            scale: ParamBufs::default(),
            subgradients: ParamBufs::default(),
            reward: ParamBufs::default(),
        }
    }
}
elementwise_transform!(ScaleByCocob, |s, shapes, params| {
    s.init_particles = params.iter().map(|p| p.to_vec()).collect::<Vec<Vec<f32>>>().into();
    s.cumulative_gradients = zeros(shapes).into();
    s.scale = super::full(shapes, s.eps).into();
    s.subgradients = zeros(shapes).into();
    s.reward = zeros(shapes).into();
}; bufs: [init_particles, cumulative_gradients, scale, subgradients, reward]; counters: []; scalars: []);
impl Elementwise for ScaleByCocob {
    fn begin_step(&mut self) {}
    simd_apply!(ScaleByCocob, |this, i, off, u, p| {
        let n = u.len();
        let p0 = this.init_particles.slice(i, off, n);
        let c = this.cumulative_gradients.slice(i, off, n);
        let l = this.scale.slice(i, off, n);
        let gs = this.subgradients.slice(i, off, n);
        let r = this.reward.slice(i, off, n);
        for j in 0..n {
            let g = u[j];
            l[j] = l[j].max(g.abs());
            gs[j] += g.abs();
            r[j] = (r[j] - g * (p[j] - p0[j])).max(0.0);
            c[j] -= g;
            u[j] = -p[j] + (p0[j] + c[j] / (l[j] * (gs[j] + l[j]).max(this.alpha * l[j])) * (l[j] + r[j]));
        }
    });
}

/// optax `contrib.dadapt_adamw` (Defazio & Mishchenko 2023): AdamW whose step size `d` is
/// estimated from the gradients; returns the full step.
pub struct DadaptAdamw {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    eps: f64,
    weight_decay: f64,
    estim_lr0: f64,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    grad_sum: Vec<Vec<f32>>,
    estim_lr: f64,
    numerator_weighted: f64,
    count: u64,
}
/// The hyper-parameters of [`DadaptAdamw`], with optax `contrib.dadapt_adamw`'s defaults.
pub struct DadaptAdamwConfig {
    /// Learning rate, a multiplier of the estimated step.
    pub learning_rate: LearningRate,
    /// Decays (β₁, β₂) of the moments.
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
    /// The initial estimate of the step size `d`.
    pub estim_lr0: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}
impl Default for DadaptAdamwConfig {
    fn default() -> Self {
        DadaptAdamwConfig {
            learning_rate: 1.0.into(),
            betas: (0.9, 0.999),
            eps: 1e-8,
            estim_lr0: 1e-6,
            weight_decay: 0.0,
        }
    }
}
impl DadaptAdamw {
    /// A `DadaptAdamw` with the hyper-parameters of `config`, as described above.
    pub fn new(config: DadaptAdamwConfig) -> Self {
        let DadaptAdamwConfig { learning_rate: lr, betas: (b1, b2), eps, estim_lr0, weight_decay } = config;
        DadaptAdamw {
            lr,
            b1,
            b2,
            eps,
            weight_decay,
            estim_lr0,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            grad_sum: vec![],
            estim_lr: estim_lr0,
            numerator_weighted: 0.0,
            count: 0,
        }
    }
}
impl Transform for DadaptAdamw {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.grad_sum = zeros(shapes);
        self.estim_lr = self.estim_lr0;
        self.numerator_weighted = 0.0;
        self.count = 0;
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let (b1, b2, eps) = (self.b1, self.b2, self.eps);
        let sb2 = b2.sqrt();
        let sched = self.lr.at(self.count);
        self.count += 1;
        let t = self.count as f64;
        // optax's `beta ** (count + 1)` of an int32 count: powers of f32(β).
        let bc = super::bias_correction(b2 as f32 as f64, t).sqrt() / super::bias_correction(b1 as f32 as f64, t);
        let dlr = self.estim_lr * sched * bc;
        let (b1f, b2f, sb2f, dlrf, epsf) = (b1 as f32, b2 as f32, sb2 as f32, dlr as f32, eps as f32);
        let wd = (self.weight_decay * dlr) as f32;
        let one_minus = [super::one_minus(b1), super::one_minus(b2), super::one_minus(sb2)];
        // One pass ([`dadapt_chunk`]), each tensor in fixed chunks across threads, as Prodigy's
        // (the same value on any number of threads).
        let k = DadaptStep { b1f, b2f, sb2f, one_minus, dlrf, epsf, wd };
        let (mut numerator_acum, mut l1) = (0.0f64, 0.0f64);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let (m, v, s) = (
                SendPtr::new(&mut self.exp_avg[i]),
                SendPtr::new(&mut self.exp_avg_sq[i]),
                SendPtr::new(&mut self.grad_sum[i]),
            );
            let (num, abs) = chunked_sums_mut(u, |off, u| {
                let n = u.len();
                // SAFETY: the chunks are disjoint ranges of the tensor, and so of its state.
                let (m, v, s) = unsafe { (m.slice(off, n), v.slice(off, n), s.slice(off, n)) };
                dadapt_chunk_dispatch(k, u, &p[off..off + n], m, v, s)
            });
            numerator_acum += num;
            l1 += abs;
        }
        self.numerator_weighted = sb2 * self.numerator_weighted + (1.0 - sb2) * dlr * numerator_acum;
        let d_estimate = self.numerator_weighted / ((1.0 - sb2) * l1);
        self.estim_lr = self.estim_lr.max(d_estimate);
        Ok(())
    }
    state!(DadaptAdamw; bufs: [exp_avg, exp_avg_sq, grad_sum]; counters: [count]; scalars: [estim_lr, numerator_weighted]);
}

/// The arguments of optax `contrib.prodigy` (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
/// Parameter-Free Learner", 2023): D-Adaptation whose estimate of the distance to the solution
/// uses the distance travelled from the initial point.
///
/// ```text
/// m ← β₁·m + (1 − β₁)·d·g      v ← β₂·v + (1 − β₂)·d²·g²      s ← β₃·s + (d²/d₀)·α·g
/// r ← β₃·r + (d²/d₀)·α·⟨g, θ₀ − θ⟩      d ← max(d, coef·r/‖s‖₁)
/// u = −α·d·(m/(√v + d·ε) + λ·θ)
/// ```
pub struct ProdigyConfig {
    /// Learning rate α, a multiplier of the estimated step (optax's default 1.0).
    pub learning_rate: LearningRate,
    /// Decays (β₁, β₂) of the moments.
    pub betas: (f64, f64),
    /// Decay β₃ of the distance estimate's sums; `None`: √β₂.
    pub beta3: Option<f64>,
    /// ε, scaled by `d`, added to the denominator.
    pub eps: f64,
    /// The initial estimate `d₀` of the step.
    pub estim_lr0: f64,
    /// Multiplier `coef` of the estimate.
    pub estim_lr_coef: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
    /// Leave the learning rate out of the denominator sum during warm-up.
    pub safeguard_warmup: bool,
}
impl Default for ProdigyConfig {
    fn default() -> Self {
        ProdigyConfig {
            learning_rate: 1.0.into(),
            betas: (0.9, 0.999),
            beta3: None,
            eps: 1e-8,
            estim_lr0: 1e-6,
            estim_lr_coef: 1.0,
            weight_decay: 0.0,
            safeguard_warmup: false,
        }
    }
}
/// optax `contrib.prodigy` (Mishchenko & Defazio 2023): D-Adaptation with the distance to the
/// initial point; returns the full step.
pub struct Prodigy {
    lr: LearningRate,
    b1: f64,
    b2: f64,
    b3: f64,
    eps: f64,
    estim_lr0: f64,
    estim_lr_coef: f64,
    weight_decay: f64,
    safeguard_warmup: bool,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    grad_sum: Vec<Vec<f32>>,
    params0: Vec<Vec<f32>>,
    estim_lr: f64,
    numerator_weighted: f64,
    count: u64,
}
impl Prodigy {
    /// Prodigy with the hyper-parameters of `config`.
    pub fn new(config: ProdigyConfig) -> Self {
        let ProdigyConfig {
            learning_rate,
            betas: (b1, b2),
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
        } = config;
        Prodigy {
            lr: learning_rate,
            b1,
            b2,
            b3: beta3.unwrap_or(b2.sqrt()),
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            grad_sum: vec![],
            params0: vec![],
            estim_lr: estim_lr0,
            numerator_weighted: 0.0,
            count: 0,
        }
    }
}
impl Transform for Prodigy {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        self.exp_avg = zeros(shapes);
        self.exp_avg_sq = zeros(shapes);
        self.grad_sum = zeros(shapes);
        self.params0 = params.iter().map(|p| p.to_vec()).collect();
        self.estim_lr = self.estim_lr0;
        self.numerator_weighted = 0.0;
        self.count = 0;
        Ok(())
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        let (b1, b2, b3) = (self.b1, self.b2, self.b3);
        let sched = self.lr.at(self.count);
        self.count += 1;
        let t = self.count as f64;
        let bc = super::bias_correction(b2, t).sqrt() / super::bias_correction(b1, t);
        let d = self.estim_lr;
        let dlr = d * sched * bc;
        let (b1f, b2f, b3f, df) = (b1 as f32, b2 as f32, b3 as f32, d as f32);
        let gs_scale = if self.safeguard_warmup { d / self.estim_lr0 } else { dlr / self.estim_lr0 } as f32;
        let (dlrf, epsd) = (dlr as f32, (d * self.eps) as f32);
        let wd = (self.weight_decay * dlr) as f32;
        // One pass: the step reads the moments it has just updated and the old `d`; the two sums
        // (`Σ g·(x₀ − x)` and `Σ |s|`, of the updated `s`) only set the next step's `d`. They
        // run in eight f64 lanes per tensor, folded in a fixed order (a serial f64 sum is a
        // chain of dependent additions the loop would wait on).
        //
        // Each tensor runs in fixed chunks of `kernel::CHUNK` elements, across threads for a large
        // one; each chunk folds its own lanes, and the chunks' sums are added in order, so the
        // estimate does not depend on the number of threads.
        let k = ProdigyStep { df, b1f, b2f, b3f, gs_scale, dlrf, epsd, wd };
        let (mut numerator_acum, mut denominator) = (0.0f64, 0.0f64);
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            let x0 = &self.params0[i];
            let (m, v, s) = (
                SendPtr::new(&mut self.exp_avg[i]),
                SendPtr::new(&mut self.exp_avg_sq[i]),
                SendPtr::new(&mut self.grad_sum[i]),
            );
            let (num, den) = chunked_sums_mut(u, |off, u| {
                let n = u.len();
                // SAFETY: the chunks are disjoint ranges of the tensor, and so of its state.
                let (m, v, s) = unsafe { (m.slice(off, n), v.slice(off, n), s.slice(off, n)) };
                prodigy_chunk_dispatch(k, u, &p[off..off + n], &x0[off..off + n], m, v, s)
            });
            numerator_acum += num;
            denominator += den;
        }
        self.numerator_weighted = b3 * self.numerator_weighted + d / self.estim_lr0 * dlr * numerator_acum;
        let estimate = self.estim_lr_coef * self.numerator_weighted / denominator;
        self.estim_lr = self.estim_lr.max(estimate);
        Ok(())
    }
    state!(Prodigy; bufs: [exp_avg, exp_avg_sq, grad_sum, params0]; counters: [count]; scalars: [estim_lr, numerator_weighted]);
}

/// The constants of one [`DadaptAdamw`] step in f32.
#[derive(Clone, Copy)]
struct DadaptStep {
    b1f: f32,
    b2f: f32,
    sb2f: f32,
    /// `1 − β₁`, `1 − β₂`, `1 − √β₂`, as optax computes them ([`crate::transforms::one_minus`]).
    one_minus: [f32; 3],
    dlrf: f32,
    epsf: f32,
    wd: f32,
}

/// [`dadapt_chunk`] compiled for AVX2 and FMA where the CPU has them (the same bits).
fn dadapt_chunk_dispatch(
    k: DadaptStep,
    u: &mut [f32],
    p: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &mut [f32],
) -> (f64, f64) {
    crate::kernel::dispatch_simd!(dadapt_chunk(
        k: DadaptStep,
        u: &mut [f32],
        p: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        s: &mut [f32]
    ) -> (f64, f64))
}

/// One chunk of [`DadaptAdamw`]'s pass, block by block (in L1): `Σ g·s/(√v + ε)` over the state
/// before the step, the step, then `Σ |s|` over the updated `s`, each in eight f64 lanes (see
/// `lane_sums`) folded at the end. The step needs neither: they set the next step's estimate.
#[inline(always)]
fn dadapt_chunk(k: DadaptStep, u: &mut [f32], p: &[f32], m: &mut [f32], v: &mut [f32], s: &mut [f32]) -> (f64, f64) {
    let DadaptStep { b1f, b2f, sb2f, one_minus: [c1, c2, cs], dlrf, epsf, wd } = k;
    let (mut num, mut abs) = ([0.0f64; 8], [0.0f64; 8]);
    let blocks =
        u.chunks_mut(1024).zip(p.chunks(1024)).zip(m.chunks_mut(1024)).zip(v.chunks_mut(1024)).zip(s.chunks_mut(1024));
    for ((((u, p), m), v), s) in blocks {
        lane_sums(&mut num, u, |k| u[k] as f64 * (s[k] / (v[k].sqrt() + epsf)) as f64);
        for k in 0..u.len() {
            let g = u[k];
            m[k] = b1f * m[k] + c1 * dlrf * g;
            v[k] = b2f * v[k] + c2 * g * g;
            s[k] = sb2f * s[k] + cs * dlrf * g;
            u[k] = -wd * p[k] - m[k] / (v[k].sqrt() + epsf);
        }
        lane_sums(&mut abs, s, |k| s[k].abs() as f64);
    }
    (fold_lanes(num), fold_lanes(abs))
}

/// The constants of one [`Prodigy`] step in f32.
#[derive(Clone, Copy)]
struct ProdigyStep {
    df: f32,
    b1f: f32,
    b2f: f32,
    b3f: f32,
    gs_scale: f32,
    dlrf: f32,
    epsd: f32,
    wd: f32,
}

/// [`prodigy_chunk`] compiled for AVX2 and FMA where the CPU has them (the same operations, so the
/// same bits: Rust fuses no multiply-add on its own), the portable build otherwise.
fn prodigy_chunk_dispatch(
    k: ProdigyStep,
    u: &mut [f32],
    p: &[f32],
    x0: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &mut [f32],
) -> (f64, f64) {
    crate::kernel::dispatch_simd!(prodigy_chunk(
        k: ProdigyStep,
        u: &mut [f32],
        p: &[f32],
        x0: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        s: &mut [f32]
    ) -> (f64, f64))
}

/// One chunk of [`Prodigy`]'s pass: block by block (in L1), the sum `Σ g·(x₀ − x)` over the
/// gradient before the step overwrites it, the step, then `Σ |s|` over the updated `s`, each in
/// eight f64 lanes folded at the end.
#[inline(always)]
fn prodigy_chunk(
    k: ProdigyStep,
    u: &mut [f32],
    p: &[f32],
    x0: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &mut [f32],
) -> (f64, f64) {
    let ProdigyStep { df, b1f, b2f, b3f, gs_scale, dlrf, epsd, wd } = k;
    let (mut num, mut den) = ([0.0f64; 8], [0.0f64; 8]);
    let blocks = u
        .chunks_mut(1024)
        .zip(p.chunks(1024))
        .zip(x0.chunks(1024))
        .zip(m.chunks_mut(1024))
        .zip(v.chunks_mut(1024))
        .zip(s.chunks_mut(1024));
    for (((((u, p), x0), m), v), s) in blocks {
        lane_sums(&mut num, u, |k| u[k] as f64 * (x0[k] - p[k]) as f64);
        for k in 0..u.len() {
            let dg = df * u[k];
            m[k] = b1f * m[k] + (1.0 - b1f) * dg;
            v[k] = b2f * v[k] + (1.0 - b2f) * dg * dg;
            s[k] = b3f * s[k] + gs_scale * dg;
            u[k] = -dlrf * m[k] / (v[k].sqrt() + epsd) - wd * p[k];
        }
        lane_sums(&mut den, s, |k| s[k].abs() as f64);
    }
    (fold_lanes(num), fold_lanes(den))
}

/// How DoG chooses its first step (optax `init_step`).
#[derive(Clone, Copy, Debug)]
pub enum DogInit {
    /// `r_ε` given directly.
    Distance(f64),
    /// `r_ε = value · (1 + ‖x₀‖)`.
    Heuristic(f64),
    /// The first step uses this learning rate.
    LearningRate(f64),
}

/// optax `contrib.scale_by_dog` (Ivgi et al. 2023, "Distance over Gradients"): step size
/// `max distance from x₀ / √(Σ‖g‖²)`.
pub struct ScaleByDog {
    init_step: DogInit,
    eps: f64,
    is_init_step: u64,
    init_params: Vec<Vec<f32>>,
    max_dist: f64,
    sum_sq_norm_grads: f64,
    /// This step's rate (set in `prepare`; not state).
    lr: f32,
}
impl ScaleByDog {
    /// A `ScaleByDog` with these hyper-parameters (`init_step`, `eps`), as described above.
    pub fn new(init_step: DogInit, eps: f64) -> Self {
        ScaleByDog {
            init_step,
            eps,
            is_init_step: 1,
            init_params: vec![],
            max_dist: 0.0,
            sum_sq_norm_grads: 0.0,
            lr: 0.0,
        }
    }
}
// The step reads no state (the distance to `init_params` is taken in `prepare`): nothing to
// prefetch.
crate::transforms::elementwise_transform!(@transform ScaleByDog, |s, shapes, params| {
    s.init_params = params.iter().map(|p| p.to_vec()).collect();
    let norm = params.iter().map(|p| sum_sq(p)).sum::<f64>().sqrt();
    s.max_dist = match s.init_step {
        DogInit::Distance(v) => v,
        DogInit::Heuristic(v) => v * (1.0 + norm),
        DogInit::LearningRate(_) => 0.0,
    };
    s.is_init_step = 1;
    s.sum_sq_norm_grads = 0.0;
}; bufs: [init_params]; counters: [is_init_step]; scalars: [max_dist, sum_sq_norm_grads]);
crate::transforms::prefetch_state!(ScaleByDog;);
/// The step is `u ← lr·g`, an affine map folded into the fused step; its rate comes from the
/// distance travelled and the gradients' norms, both summed before it (in `prepare`, in f64 lanes
/// where one serial chain of f64 adds set the pace of the whole step).
impl Elementwise for ScaleByDog {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let dist = distance_sq(&self.init_params, params);
        self.max_dist = self.max_dist.max(dist.sqrt());
        self.sum_sq_norm_grads += global_sum_sq(inputs);
        let mut lr = self.max_dist / (self.sum_sq_norm_grads + self.eps).sqrt();
        if let DogInit::LearningRate(v) = self.init_step {
            if self.is_init_step == 1 {
                lr = v;
            }
        }
        self.is_init_step = 0;
        self.lr = lr as f32;
    }
    fn head(&self, _i: usize) -> Option<crate::kernel::Head> {
        Some(crate::kernel::Head::affine(self.lr, 0.0))
    }
    simd_apply!(ScaleByDog, |this, i, off, u, p| {
        let lr = this.lr;
        for x in u.iter_mut() {
            *x *= lr;
        }
    });
}

/// `‖x − x₀‖²` over all parameters (DoG's and DoWG's), as [`global_sum_sq`] sums: each tensor in
/// fixed chunks ([`crate::kernel::sq_distance`]'s eight f64 lanes in each), across threads for a
/// large one, the chunks' and then the tensors' sums added in order, so the value does not depend
/// on the number of threads.
fn distance_sq(init: &[Vec<f32>], params: &[&[f32]]) -> f64 {
    init.iter()
        .zip(params)
        .map(|(x0, x)| crate::kernel::chunked_sum(x.len(), |r| crate::kernel::sq_distance(&x[r.clone()], &x0[r])))
        .sum()
}

/// optax `contrib.scale_by_dowg` (Khaled et al. 2023, "Distance over Weighted Gradients"):
/// `r̄² ← max(r̄², ‖x − x₀‖²)`, `G ← G + r̄²·‖g‖²`, `u ← (r̄² / (√G + eps))·g`.
pub struct ScaleByDowg {
    init_estim_sq_dist: Option<f64>,
    eps: f64,
    init_params: Vec<Vec<f32>>,
    estim_sq_dist: f64,
    weighted_sq_norm_grads: f64,
    lr: f32,
}
impl ScaleByDowg {
    /// `init_estim_sq_dist`: the first distance estimate (optax's default, `None`, takes `eps`).
    pub fn new(init_estim_sq_dist: Option<f64>, eps: f64) -> Self {
        ScaleByDowg {
            init_estim_sq_dist,
            eps,
            init_params: vec![],
            estim_sq_dist: 0.0,
            weighted_sq_norm_grads: 0.0,
            lr: 0.0,
        }
    }
}
// As DoG: the step reads no state, so nothing to prefetch (it had prefetched `init_params`).
crate::transforms::elementwise_transform!(@transform ScaleByDowg, |s, shapes, params| {
    s.init_params = params.iter().map(|p| p.to_vec()).collect();
    s.estim_sq_dist = s.init_estim_sq_dist.unwrap_or(s.eps);
    s.weighted_sq_norm_grads = 0.0;
}; bufs: [init_params]; counters: []; scalars: [estim_sq_dist, weighted_sq_norm_grads]);
crate::transforms::prefetch_state!(ScaleByDowg;);
impl Elementwise for ScaleByDowg {
    fn begin_step(&mut self) {}
    fn needs_prepare(&self) -> bool {
        true
    }
    fn prepare(&mut self, inputs: &[&[f32]], params: &[&[f32]]) {
        let dist = distance_sq(&self.init_params, params);
        self.estim_sq_dist = self.estim_sq_dist.max(dist);
        self.weighted_sq_norm_grads += self.estim_sq_dist * global_sum_sq(inputs);
        self.lr = (self.estim_sq_dist / (self.weighted_sq_norm_grads.sqrt() + self.eps)) as f32;
    }
    fn head(&self, _i: usize) -> Option<crate::kernel::Head> {
        Some(crate::kernel::Head::affine(self.lr, 0.0))
    }
    simd_apply!(ScaleByDowg, |this, i, off, u, p| {
        let lr = this.lr;
        for x in u.iter_mut() {
            *x *= lr;
        }
    });
}

/// optax `contrib.mechanize` (Cutkosky et al. 2023, Mechanic): learns a scale `s` for a base
/// optimizer's steps. With `Δ` the base optimizer's accumulated steps and `x₀` the first
/// parameters, the parameters become `x₀ + (Σs)·Δ`; each of `num_betas` scales is tuned online from
/// `h = ⟨g + λ·Σs·‖g‖/‖x‖·x, Δ⟩` with decay `βᵢ = 1 − 10⁻ⁱ`.
pub struct Mechanize {
    base: Box<dyn Transform>,
    weight_decay: f32,
    eps: f32,
    s_init: f32,
    betas: Vec<f32>,
    count: u64,
    r: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    x0: Vec<Vec<f32>>,
}
/// The hyper-parameters of [`Mechanize`], with optax `contrib.mechanize` (its base optimizer is the first argument of `new`)'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MechanizeConfig {
    /// Weight decay λ in the scale's gradient.
    pub weight_decay: f64,
    /// ε of the divisions.
    pub eps: f64,
    /// The initial scale.
    pub s_init: f64,
    /// Number of scales, with decays `1 − 10⁻ⁱ`.
    pub num_betas: usize,
}
impl Default for MechanizeConfig {
    fn default() -> Self {
        MechanizeConfig { weight_decay: 1e-2, eps: 1e-8, s_init: 1e-6, num_betas: 6 }
    }
}
impl Mechanize {
    /// A `Mechanize` with the hyper-parameters of `config` and the arguments before it, as described above.
    pub fn new(base: Box<dyn Transform>, config: MechanizeConfig) -> Self {
        let MechanizeConfig { weight_decay, eps, s_init, num_betas } = config;
        let betas = (1..=num_betas).map(|i| (1.0 - 0.1f64.powi(i as i32)) as f32).collect();
        Mechanize {
            base,
            weight_decay: weight_decay as f32,
            eps: eps as f32,
            s_init: s_init as f32,
            betas,
            count: 0,
            r: vec![],
            m: vec![],
            v: vec![],
            s: vec![],
            x0: vec![],
        }
    }
}
impl Transform for Mechanize {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        self.base.visit_learning_rates(f);
    }
    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        crate::transform::check_init(shapes, params)?;
        let n = self.betas.len();
        self.count = 0;
        self.r = vec![0.0; n];
        self.m = vec![0.0; n];
        self.v = vec![0.0; n];
        self.s = vec![self.s_init; n];
        self.x0 = params.iter().map(|p| p.to_vec()).collect();
        self.base.init(shapes, params)
    }
    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        if self.count == 0 {
            for (x0, p) in self.x0.iter_mut().zip(params) {
                x0.copy_from_slice(p);
            }
        }
        let eps = self.eps;
        let s_sum: f32 = self.s.iter().sum();
        let grads: Vec<&[f32]> = updates.iter().map(|u| u.as_slice()).collect();
        let grad_norm = global_sum_sq(&grads).sqrt() as f32;
        let param_norm = global_sum_sq(params).sqrt() as f32;
        let c = self.weight_decay * s_sum * grad_norm / (param_norm + eps);
        // h = ⟨g + c·x, (x₀ − x)/(Σs + eps)⟩, from the gradients before the base optimizer runs.
        let mut h = 0.0f64;
        for ((g, x), x0) in updates.iter().zip(params).zip(&self.x0) {
            for ((&g, &x), &x0) in g.iter().zip(x.iter()).zip(x0) {
                h += ((g + c * x) * ((x0 - x) / (s_sum + eps))) as f64;
            }
        }
        let h = h as f32;
        self.base.update(updates, params)?;
        for k in 0..self.betas.len() {
            let b = self.betas[k];
            let clipped = crate::kernel::clip(h, -self.m[k], self.m[k]);
            self.m[k] = (b * self.m[k]).max(h.abs() + eps);
            self.v[k] = b * b * self.v[k] + h * h;
            self.r[k] = b * self.r[k] + clipped * self.s[k];
            let wealth = (self.s_init / self.betas.len() as f32) * self.m[k] + self.r[k].max(0.0);
            self.s[k] = wealth / (self.v[k].sqrt() + eps);
        }
        let scale: f32 = self.s.iter().sum();
        for ((u, x), x0) in updates.iter_mut().zip(params).zip(&self.x0) {
            for ((u, &x), &x0) in u.iter_mut().zip(x.iter()).zip(x0) {
                let delta = (x0 - x) / (s_sum + eps) - *u;
                *u = (x0 - scale * delta) - x;
            }
        }
        self.count += 1;
        Ok(())
    }
    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        v.counter("count", &mut self.count)?;
        v.buffer("r", &mut self.r)?;
        v.buffer("m", &mut self.m)?;
        v.buffer("v", &mut self.v)?;
        v.buffer("s", &mut self.s)?;
        crate::state::visit_buffers(v, "x0", &mut self.x0)?;
        v.push("base");
        self.base.visit_state(v)?;
        v.pop();
        Ok(())
    }
}
