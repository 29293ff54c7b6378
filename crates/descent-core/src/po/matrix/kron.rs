//! PSGD Kron (pytorch_optimizer `Kron`): preconditioned SGD with a Kronecker-factored
//! preconditioner `P = Qᵀ·Q`, `Q = Q₁ ⊗ … ⊗ Qₖ` with one factor per tensor axis, each upper
//! triangular or diagonal. Li, "Preconditioned Stochastic Gradient Descent" (2015),
//! <https://arxiv.org/abs/1512.04202>, and "Stochastic Hessian Fitting on Lie Group" (2024),
//! <https://arxiv.org/abs/2402.11858>; the library's version follows Evan Walters' `kron_torch`.
//!
//! For a tensor `p` of order `k` with gradient `g`, per step `t`:
//!
//! ```text
//! g ← g + wd·p                            (coupled decay, order ≥ 2 only)
//! m ← β·m + (1 − β)·g ;  m̂ ← m / (1 − βᵗ)
//! with probability `balance_prob`, on update steps:  Qᵢ ← Qᵢ·(Πⱼ‖Qⱼ‖∞)^(1/k) / ‖Qᵢ‖∞
//! on update steps (see below), with v ~ N(0, 1) of p's shape and h = m̂ (or g):
//!     A = h ×₁ Q₁ … ×ₖ Qₖ ;  B = v ×₁ Q₁⁻ᵀ … ×ₖ Qₖ⁻ᵀ
//!     for each axis i, with Tᵢ(X) the Gram matrix of X unfolded along i (its diagonal when Qᵢ
//!     is diagonal):
//!         triangular:  Qᵢ ← Qᵢ − lrₚ·triu(Tᵢ(A) − Tᵢ(B))·Qᵢ / (‖Tᵢ(A) + Tᵢ(B)‖₂,lower bound + ε)
//!         diagonal:    Qᵢ ← Qᵢ − lrₚ·(Tᵢ(A) − Tᵢ(B))·Qᵢ / (max|Tᵢ(A) + Tᵢ(B)| + ε)
//! u = m̂ ×₁ Q₁ᵀQ₁ … ×ₖ QₖᵀQₖ ;  u ← u·min(1.1 / (rms(u) + 10⁻⁶), 1)
//! u ← u + wd·p                            (decoupled decay, order ≥ 2 only)
//! p ← p − lr·u
//! ```
//!
//! `ε` is bfloat16's smallest normal number, as in the library. The preconditioner is updated
//! on step `t` (counted from 0) when the steps since the last update reach `1 / prob(t)`:
//! `prob` is `pre_conditioner_update_probability`, by default
//! `precondition_update_prob_schedule()`: 1 for the first 500 steps, then `exp(−0.001·(t −
//! 500))`, never below 0.03 (computed in `f32`, as torch does).
//!
//! Axis `i` gets a diagonal factor when its length is 1 or above `max_size_triangular`, when the
//! tensor has fewer than `min_ndim_triangular` axes, or when `memory_save_mode` says so
//! (`one_diag`: the longest axis, the last of equal ones; `smart_one_diag`: the longest axis when
//! it is strictly the longest; `all_diag`: every axis). Factors start at
//! `precondition_init_scale^(1/k)·I`.
//!
//! Random numbers: torch draws `v` with `torch.randn_like` and the balancing decision with
//! `np.random.random()`, which cannot be reproduced outside those libraries. descent draws both
//! from its own generator ([`crate::rng`]) seeded by `seed` (descent's addition, default 0): a
//! seeded run is reproducible bit for bit, and the generator's state is saved with the factors,
//! so a resumed run continues exactly. A uniform number for the balancing decision is drawn every
//! step (as numpy's is), then one normal number per element of each tensor on update steps.
//!
//! The factors are kept in `f32` (`precondition_dtype` float32, the library's default); the
//! products, triangular inverses and norms of a step are computed in `f64` and the factors
//! rounded back to `f32`. Tensors with no elements get no state. Scalars are preconditioned as
//! tensors of one element.

use faer::{Mat, MatRef, Par};
use serde_json::Value;

use super::linalg::{mode_product, try_zeros, unfolded_gram, Mat64};
use super::{check_lr, lr_of};
use crate::error::{ensure, Error, Result};
use crate::learning_rate::LearningRate;
use crate::rng::SplitMix64;
use crate::spec::Kwargs;
use crate::state::StateVisitor;
use crate::transform::{check_init, numel, Shapes, Transform};
use crate::transforms::{round_bf16, MomentDtype};

/// bfloat16's smallest normal number, `torch.finfo(torch.bfloat16).tiny`.
const BF16_TINY: f64 = 1.1754943508222875e-38;

/// How often the preconditioner is updated (`pre_conditioner_update_probability`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UpdateProbability {
    /// A fixed probability (a number): an update every `⌈1/p⌉` steps; none when `p ≤ 0`.
    Constant(f64),
    /// `precondition_update_prob_schedule(max_prob, min_prob, decay, flat_start)`:
    /// `clamp(max_prob·exp(−decay·(t − flat_start)), min_prob, max_prob)` in `f32`.
    Schedule {
        /// Probability of the first `flat_start` steps.
        max_prob: f64,
        /// The floor the probability decays to.
        min_prob: f64,
        /// Exponential decay rate after the flat start.
        decay: f64,
        /// Steps at `max_prob`.
        flat_start: u64,
    },
}

impl Default for UpdateProbability {
    /// The library's default schedule: `precondition_update_prob_schedule()`.
    fn default() -> Self {
        UpdateProbability::Schedule { max_prob: 1.0, min_prob: 0.03, decay: 0.001, flat_start: 500 }
    }
}

impl UpdateProbability {
    /// `1 / prob(t)` and whether `prob(t) > 0`, computed as the library does (`f64` for a number,
    /// `f32` for the schedule's tensor).
    fn inverse_at(&self, t: u64) -> (bool, f64) {
        match *self {
            UpdateProbability::Constant(p) => (p > 0.0, 1.0 / p),
            UpdateProbability::Schedule { max_prob, min_prob, decay, flat_start } => {
                let x = t as f32 - flat_start as f32;
                let mut prob = max_prob as f32 * ((-decay) as f32 * x).exp();
                // `clamp_(min, max)`: the lower bound first, then the upper one.
                prob = prob.max(min_prob as f32).min(max_prob as f32);
                (prob > 0.0, (1.0f32 / prob) as f64)
            }
        }
    }
}

/// Which axes get a diagonal factor beyond the size rules (`memory_save_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySaveMode {
    /// `"one_diag"`: the longest axis (the last of equally long ones).
    OneDiag,
    /// `"smart_one_diag"`: the longest axis when it is strictly longer than every other.
    SmartOneDiag,
    /// `"all_diag"`: every axis.
    AllDiag,
}

/// `Kron`'s arguments, with the library's defaults.
#[derive(Clone, Copy, Debug)]
pub struct KronConfig {
    /// Momentum `β` of the gradient average, in [0, 1).
    pub momentum: f64,
    /// Weight decay (applied to tensors of order ≥ 2 only).
    pub weight_decay: f64,
    /// Decoupled (added to the preconditioned update) rather than added to the gradient.
    pub weight_decouple: bool,
    /// How often the preconditioner is updated.
    pub pre_conditioner_update_probability: UpdateProbability,
    /// Longest axis that gets a triangular factor.
    pub max_size_triangular: usize,
    /// Fewest axes a tensor needs for triangular factors.
    pub min_ndim_triangular: usize,
    /// Axes given diagonal factors to save memory; `None`: only the size rules apply.
    pub memory_save_mode: Option<MemorySaveMode>,
    /// Fit the preconditioner to the debiased momentum (rather than the gradient).
    pub momentum_into_precondition_update: bool,
    /// The momentum buffer's dtype (`None` in the library: the parameter's, float32).
    pub mu_dtype: MomentDtype,
    /// Step size of the preconditioner fit (the library's group default `precondition_lr`).
    pub precondition_lr: f64,
    /// The factors' product starts at this multiple of the identity (group default
    /// `precondition_init_scale`).
    pub precondition_init_scale: f64,
    /// Probability of balancing the factors' norms on an update step.
    pub balance_prob: f64,
    /// Ascend instead of descend.
    pub maximize: bool,
    /// Seed of descent's generator for the probe vectors and balancing draws (descent's addition).
    pub seed: u64,
}

impl Default for KronConfig {
    fn default() -> Self {
        KronConfig {
            momentum: 0.9,
            weight_decay: 0.0,
            weight_decouple: true,
            pre_conditioner_update_probability: UpdateProbability::default(),
            max_size_triangular: 8192,
            min_ndim_triangular: 2,
            memory_save_mode: None,
            momentum_into_precondition_update: true,
            mu_dtype: MomentDtype::F32,
            precondition_lr: 0.1,
            precondition_init_scale: 1.0,
            balance_prob: 0.01,
            maximize: false,
            seed: 0,
        }
    }
}

/// One Kronecker factor: an upper-triangular `n × n` matrix (row-major) or a diagonal.
#[derive(Clone, Debug, PartialEq)]
pub enum KronFactor {
    /// The diagonal's `n` entries.
    Diagonal(Vec<f32>),
    /// The `n × n` upper-triangular matrix, row-major.
    Triangular(Vec<f32>),
}

impl KronFactor {
    fn data(&self) -> &[f32] {
        match self {
            KronFactor::Diagonal(q) | KronFactor::Triangular(q) => q,
        }
    }
    fn data_mut(&mut self) -> &mut Vec<f32> {
        match self {
            KronFactor::Diagonal(q) | KronFactor::Triangular(q) => q,
        }
    }
}

/// Whether each axis of a tensor of `shape` gets a diagonal factor (`true`) or a triangular one,
/// by `initialize_q_expressions`' rules. A scalar is taken as a tensor of one element.
pub fn diagonal_axes(shape: &[usize], cfg: &KronConfig) -> Vec<bool> {
    let shape: &[usize] = if shape.is_empty() { &[1] } else { shape };
    let k = shape.len();
    let longest = shape.iter().max().copied().unwrap_or(0);
    // numpy's `argsort(shape)[::-1][0]`: the last of the longest axes.
    let last_longest = shape.iter().rposition(|&n| n == longest).unwrap_or(0);
    let mut sorted = shape.to_vec();
    sorted.sort_unstable();
    let mut diag = vec![false; k];
    match cfg.memory_save_mode {
        None => {}
        Some(MemorySaveMode::OneDiag) => diag[last_longest] = true,
        Some(MemorySaveMode::SmartOneDiag) if k >= 2 && sorted[k - 1] > sorted[k - 2] => diag[last_longest] = true,
        Some(MemorySaveMode::SmartOneDiag) => {}
        Some(MemorySaveMode::AllDiag) => diag.iter_mut().for_each(|d| *d = true),
    }
    shape
        .iter()
        .zip(diag)
        .map(|(&n, d)| n == 1 || n > cfg.max_size_triangular || k < cfg.min_ndim_triangular || d)
        .collect()
}

/// The shape a tensor is preconditioned as: a scalar as one element.
fn effective(shape: &[usize]) -> Vec<usize> {
    if shape.is_empty() {
        vec![1]
    } else {
        shape.to_vec()
    }
}

/// `x[…, j, …] *= d[j]` along `axis`.
fn scale_axis(x: &mut [f64], shape: &[usize], axis: usize, d: &[f64]) {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    for (c, chunk) in x.chunks_mut(inner).enumerate() {
        let s = d[c % n];
        chunk.iter_mut().for_each(|v| *v *= s);
    }
}

/// `Σ x[…, j, …]²` over every index but `axis`'s, for each `j`.
fn axis_sum_sq(x: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0.0; n];
    for (c, chunk) in x.chunks(inner).enumerate() {
        out[c % n] += chunk.iter().map(|v| v * v).sum::<f64>();
    }
    out
}

/// The inverse of an upper-triangular matrix (through `faer`).
fn invert_upper(q: &Mat64) -> Mat64 {
    let n = q.rows;
    let src = MatRef::from_row_major_slice(&q.data, n, n);
    let mut dst = Mat::<f64>::zeros(n, n);
    faer::linalg::triangular_inverse::invert_upper_triangular(dst.as_mut(), src, Par::Seq);
    let mut out = Mat64::zeros(n, n);
    for i in 0..n {
        for j in i..n {
            out.data[i * n + j] = dst[(i, j)];
        }
    }
    out
}

/// `norm_lower_bound`: a lower bound of the spectral norm of `a` (rescaled in place by its
/// largest magnitude).
fn norm_lower_bound(a: &mut Mat64) -> f64 {
    let n = a.rows;
    let max_abs = a.data.iter().fold(0.0f64, |m, v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
    let div = if max_abs > 0.0 { max_abs } else { 1.0 };
    a.data.iter_mut().for_each(|v| *v /= div);
    let tiny = f32::MIN_POSITIVE as f64;
    let argmax = |sums: &[f64]| {
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, &s) in sums.iter().enumerate() {
            if s > best.0 || (s.is_nan() && !best.0.is_nan()) {
                best = (s, i);
            }
        }
        best
    };
    let col_sums: Vec<f64> = (0..n).map(|j| (0..n).map(|i| a.at(i, j) * a.at(i, j)).sum()).collect();
    let row_sums: Vec<f64> = (0..n).map(|i| (0..n).map(|j| a.at(i, j) * a.at(i, j)).sum()).collect();
    let (value0, i) = argmax(&col_sums);
    let (value1, j) = argmax(&row_sums);
    let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let bound = if value0 > value1 {
        // x0 = a[:, i]ᵀ·a ;  ‖(x0/‖x0‖)·aᵀ‖
        let x0: Vec<f64> = (0..n).map(|k| (0..n).map(|r| a.at(r, i) * a.at(r, k)).sum()).collect();
        let s = norm(&x0).max(tiny);
        let y: Vec<f64> = (0..n).map(|r| (0..n).map(|k| x0[k] / s * a.at(r, k)).sum()).collect();
        norm(&y)
    } else {
        // x1 = a·a[j, :] ;  ‖aᵀ·(x1/‖x1‖)‖
        let x1: Vec<f64> = (0..n).map(|r| (0..n).map(|k| a.at(r, k) * a.at(j, k)).sum()).collect();
        let s = norm(&x1).max(tiny);
        let y: Vec<f64> = (0..n).map(|k| (0..n).map(|r| a.at(r, k) * x1[r] / s).sum()).collect();
        norm(&y)
    };
    max_abs * bound
}

/// The preconditioned gradient `g ×₁ Q₁ᵀQ₁ … ×ₖ QₖᵀQₖ` (`get_precondition_grad`) of a tensor of
/// `shape` (a scalar: `[]`), in `f64`.
pub fn precondition(factors: &[KronFactor], shape: &[usize], g: &[f64]) -> Vec<f64> {
    let shape = effective(shape);
    let mut x = g.to_vec();
    for (axis, f) in factors.iter().enumerate() {
        let n = shape[axis];
        match f {
            KronFactor::Diagonal(q) => {
                let d: Vec<f64> = q.iter().map(|&v| v as f64 * v as f64).collect();
                scale_axis(&mut x, &shape, axis, &d);
            }
            KronFactor::Triangular(q) => {
                let q = Mat64::from_f32(n, n, q);
                x = mode_product(&x, &shape, axis, &q.tmm(&q));
            }
        }
    }
    x
}

/// `update_precondition`: one fit of the factors to the pair (`v`, `h`), with step `lr`.
pub fn update_factors(factors: &mut [KronFactor], shape: &[usize], v: &[f64], h: &[f64], lr: f64) {
    let shape = effective(shape);
    // A = h ×ᵢ Qᵢ ; B = v ×ᵢ Qᵢ⁻ᵀ (the library's triangular solves from the right).
    let mut a = h.to_vec();
    let mut b = v.to_vec();
    for (axis, f) in factors.iter().enumerate() {
        let n = shape[axis];
        match f {
            KronFactor::Diagonal(q) => {
                let d: Vec<f64> = q.iter().map(|&x| x as f64).collect();
                scale_axis(&mut a, &shape, axis, &d);
                let inv: Vec<f64> = d.iter().map(|x| 1.0 / x).collect();
                scale_axis(&mut b, &shape, axis, &inv);
            }
            KronFactor::Triangular(q) => {
                let q = Mat64::from_f32(n, n, q);
                a = mode_product(&a, &shape, axis, &q);
                b = mode_product(&b, &shape, axis, &invert_upper(&q).t());
            }
        }
    }
    for (axis, f) in factors.iter_mut().enumerate() {
        let n = shape[axis];
        match f {
            KronFactor::Diagonal(q) => {
                let t1 = axis_sum_sq(&a, &shape, axis);
                let t2 = axis_sum_sq(&b, &shape, axis);
                let norm = t1.iter().zip(&t2).map(|(x, y)| (x + y).abs()).fold(0.0f64, f64::max);
                let denom = norm + BF16_TINY;
                for ((q, x), y) in q.iter_mut().zip(&t1).zip(&t2) {
                    let tmp = (x - y) * lr * *q as f64 / denom;
                    *q = (*q as f64 - tmp) as f32;
                }
            }
            KronFactor::Triangular(q) => {
                let t1 = unfolded_gram(&a, &shape, axis);
                let t2 = unfolded_gram(&b, &shape, axis);
                let mut sum = Mat64::zeros(n, n);
                let mut tmp = Mat64::zeros(n, n);
                for r in 0..n {
                    for c in 0..n {
                        let k = r * n + c;
                        sum.data[k] = t1.data[k] + t2.data[k];
                        if c >= r {
                            tmp.data[k] = (t1.data[k] - t2.data[k]) * lr;
                        }
                    }
                }
                let denom = norm_lower_bound(&mut sum) + BF16_TINY;
                tmp.data.iter_mut().for_each(|x| *x /= denom);
                let qm = Mat64::from_f32(n, n, q);
                let step = tmp.mm(&qm);
                for (q, (old, s)) in q.iter_mut().zip(qm.data.iter().zip(&step.data)) {
                    *q = (old - s) as f32;
                }
            }
        }
    }
}

/// `balance_q`: every factor rescaled to the geometric mean of their largest magnitudes.
pub fn balance(factors: &mut [KronFactor]) {
    let norms: Vec<f64> = factors.iter().map(|f| f.data().iter().fold(0.0f64, |m, v| m.max(v.abs() as f64))).collect();
    let mean = norms.iter().product::<f64>().powf(1.0 / norms.len() as f64);
    for (f, n) in factors.iter_mut().zip(norms) {
        let s = mean / n;
        f.data_mut().iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
    }
}

/// pytorch_optimizer `Kron` (one parameter group).
pub struct Kron {
    lr: LearningRate,
    cfg: KronConfig,
    step: u64,
    update_counter: u64,
    rng: SplitMix64,
    shapes: Vec<Vec<usize>>,
    momentum_buffer: Vec<Vec<f32>>,
    /// Per parameter, one factor per axis (none for a tensor with no elements).
    q: Vec<Vec<KronFactor>>,
}

impl Kron {
    /// A `Kron` with these hyper-parameters (`lr`, `cfg`), as described above.
    pub fn new(lr: LearningRate, cfg: KronConfig) -> Result<Self> {
        check_lr(&lr)?;
        ensure((0.0..1.0).contains(&cfg.momentum), || "momentum must be in the range [0.0, 1.0)".into())?;
        ensure(cfg.weight_decay >= 0.0, || "weight_decay must be non-negative".into())?;
        ensure(cfg.precondition_lr.is_finite(), || "precondition_lr must be finite".into())?;
        ensure(cfg.precondition_init_scale.is_finite(), || "precondition_init_scale must be finite".into())?;
        ensure(cfg.balance_prob.is_finite(), || "balance_prob must be finite".into())?;
        if let UpdateProbability::Schedule { max_prob, min_prob, decay, .. } = cfg.pre_conditioner_update_probability {
            ensure(max_prob.is_finite() && min_prob.is_finite() && decay.is_finite(), || {
                "pre_conditioner_update_probability: the schedule's numbers must be finite".into()
            })?;
        }
        Ok(Kron {
            lr,
            cfg,
            step: 0,
            update_counter: 0,
            rng: SplitMix64::new(cfg.seed),
            shapes: vec![],
            momentum_buffer: vec![],
            q: vec![],
        })
    }

    /// The configuration from the library's keyword arguments, with its defaults.
    /// `pre_conditioner_update_probability` is a number, `null` (the default schedule) or
    /// `{"max_prob", "min_prob", "decay", "flat_start"}` (the schedule with those arguments, the
    /// others at their defaults); `precondition_lr` and `precondition_init_scale` are read here
    /// as the library reads them from a parameter group (its constructor drops them; see
    /// `po::matrix`); `seed` is descent's addition.
    pub fn from_kwargs(k: &mut Kwargs) -> Result<Self> {
        let d = KronConfig::default();
        let lr = k.lr("lr", Some(1e-3))?;
        let pre_conditioner_update_probability = match k.value("pre_conditioner_update_probability") {
            None => d.pre_conditioner_update_probability,
            Some(v) => update_probability(v)?,
        };
        let memory_save_mode = match k.opt_str("memory_save_mode")? {
            None => None,
            Some("one_diag") => Some(MemorySaveMode::OneDiag),
            Some("smart_one_diag") => Some(MemorySaveMode::SmartOneDiag),
            Some("all_diag") => Some(MemorySaveMode::AllDiag),
            Some(other) => {
                return Err(Error::Field {
                    context: "po.kron: `memory_save_mode`".into(),
                    message: format!(
                        "invalid memory_save_mode {other}; it must be one of null, one_diag, smart_one_diag, all_diag"
                    ),
                })
            }
        };
        let cfg = KronConfig {
            momentum: k.f64("momentum", d.momentum)?,
            weight_decay: k.f64("weight_decay", d.weight_decay)?,
            weight_decouple: k.bool("weight_decouple", d.weight_decouple)?,
            pre_conditioner_update_probability,
            max_size_triangular: k.u64("max_size_triangular", d.max_size_triangular as u64)?.min(usize::MAX as u64)
                as usize,
            min_ndim_triangular: k.u64("min_ndim_triangular", d.min_ndim_triangular as u64)?.min(usize::MAX as u64)
                as usize,
            memory_save_mode,
            momentum_into_precondition_update: k
                .bool("momentum_into_precondition_update", d.momentum_into_precondition_update)?,
            mu_dtype: k.mu_dtype()?,
            precondition_lr: k.f64("precondition_lr", d.precondition_lr)?,
            precondition_init_scale: k.f64("precondition_init_scale", d.precondition_init_scale)?,
            balance_prob: k.f64("balance_prob", d.balance_prob)?,
            maximize: k.bool("maximize", d.maximize)?,
            seed: k.u64("seed", d.seed)?,
        };
        match k.opt_str("precondition_dtype")?.unwrap_or("float32") {
            "float32" | "f32" => {}
            other => {
                return Err(Error::Field {
                    context: "po.kron: `precondition_dtype`".into(),
                    message: format!("only float32 preconditioners are implemented, got `{other}`"),
                })
            }
        }
        Kron::new(lr, cfg)
    }

    /// The factors of parameter `i` (empty for a tensor with no elements).
    pub fn factors(&self, i: usize) -> &[KronFactor] {
        &self.q[i]
    }
}

fn update_probability(v: &Value) -> Result<UpdateProbability> {
    let err = |m: String| Error::Field { context: "po.kron: `pre_conditioner_update_probability`".into(), message: m };
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(UpdateProbability::Constant(x)),
            _ => Err(err(format!("must be finite, got {n}"))),
        },
        Value::Object(o) => {
            let UpdateProbability::Schedule { mut max_prob, mut min_prob, mut decay, mut flat_start } =
                UpdateProbability::default()
            else {
                unreachable!("the default is a schedule")
            };
            for (key, x) in o {
                let num = x.as_f64().filter(|x| x.is_finite());
                match (key.as_str(), num) {
                    ("max_prob", Some(x)) => max_prob = x,
                    ("min_prob", Some(x)) => min_prob = x,
                    ("decay", Some(x)) => decay = x,
                    ("flat_start", _) => {
                        flat_start = x.as_u64().ok_or_else(|| err(format!("flat_start must be a count, got {x}")))?
                    }
                    ("max_prob" | "min_prob" | "decay", None) => {
                        return Err(err(format!("{key} must be a finite number, got {x}")))
                    }
                    _ => {
                        return Err(err(format!(
                            "unknown schedule argument `{key}`; accepted: max_prob, min_prob, decay, flat_start"
                        )))
                    }
                }
            }
            Ok(UpdateProbability::Schedule { max_prob, min_prob, decay, flat_start })
        }
        other => Err(err(format!(
            "expected a number, null or a schedule object {{max_prob, min_prob, decay, flat_start}}, got {other}"
        ))),
    }
}

impl Transform for Kron {
    fn visit_learning_rates(&mut self, f: &mut dyn FnMut(&mut LearningRate)) {
        f(&mut self.lr);
    }

    fn init(&mut self, shapes: &Shapes, params: &[&[f32]]) -> Result<()> {
        check_init(shapes, params)?;
        let (mut q, mut buf) = (vec![], vec![]);
        for (i, s) in shapes.iter().enumerate() {
            let what = format!("Kron parameter {i}");
            if numel(s) == 0 {
                q.push(vec![]);
                buf.push(vec![]);
                continue;
            }
            if s.len() > 13 {
                return Err(Error::Shape(format!(
                    "{what}: got tensor with dim {}. Einstein runs out of letters!",
                    s.len()
                )));
            }
            let eff = effective(s);
            let scale = if s.is_empty() {
                self.cfg.precondition_init_scale
            } else {
                self.cfg.precondition_init_scale.powf(1.0 / s.len() as f64)
            };
            let scale = scale as f32;
            let mut factors = vec![];
            for (&n, diag) in eff.iter().zip(diagonal_axes(s, &self.cfg)) {
                if diag {
                    let mut d = try_zeros::<f32>(n, &what)?;
                    d.iter_mut().for_each(|x| *x = scale);
                    factors.push(KronFactor::Diagonal(d));
                } else {
                    let nn = n.checked_mul(n).ok_or_else(|| Error::Shape(format!("{what}: axis of {n} too long")))?;
                    let mut m = try_zeros::<f32>(nn, &what)?;
                    for j in 0..n {
                        m[j * n + j] = scale;
                    }
                    factors.push(KronFactor::Triangular(m));
                }
            }
            q.push(factors);
            buf.push(try_zeros(numel(s), &what)?);
        }
        self.shapes = shapes.to_vec();
        self.q = q;
        self.momentum_buffer = buf;
        self.step = 0;
        self.update_counter = 0;
        self.rng = SplitMix64::new(self.cfg.seed);
        Ok(())
    }

    fn update(&mut self, updates: &mut [Vec<f32>], params: &[&[f32]]) -> Result<()> {
        crate::transform::check_against_init(&self.shapes, updates, params)?;
        let c = self.cfg;
        let lr = lr_of(&self.lr, self.step);
        let (positive, inverse) = c.pre_conditioner_update_probability.inverse_at(self.step);
        let counter = self.update_counter + 1;
        let do_update = positive && counter as f64 >= inverse;
        self.update_counter = if do_update { 0 } else { counter };
        let do_balance = self.rng.uniform() < c.balance_prob && do_update;
        self.step += 1;
        let bias_correction1 = 1.0 - c.momentum.powf(self.step as f64);
        let beta = c.momentum as f32;
        let one_minus = (1.0 - c.momentum) as f32;
        let bf16 = c.mu_dtype == MomentDtype::Bf16;
        for (i, (u, p)) in updates.iter_mut().zip(params).enumerate() {
            if u.is_empty() {
                continue;
            }
            let order = self.shapes[i].len();
            let mb = &mut self.momentum_buffer[i];
            for ((g, m), &x) in u.iter_mut().zip(mb.iter_mut()).zip(p.iter()) {
                if c.maximize {
                    *g = -*g;
                }
                if order >= 2 && !c.weight_decouple && c.weight_decay > 0.0 {
                    *g += c.weight_decay as f32 * x;
                }
                if bf16 {
                    *m = round_bf16(round_bf16(*m * beta) + one_minus * *g);
                } else {
                    *m = *m * beta + one_minus * *g;
                }
            }
            let debiased: Vec<f64> = mb
                .iter()
                .map(|&m| {
                    let x = (m as f64 / bias_correction1) as f32;
                    (if bf16 { round_bf16(x) } else { x }) as f64
                })
                .collect();
            let factors = &mut self.q[i];
            if order > 1 && do_balance {
                balance(factors);
            }
            if do_update {
                let v: Vec<f64> = (0..u.len()).map(|_| self.rng.normal() as f32 as f64).collect();
                let h: Vec<f64> = if c.momentum_into_precondition_update {
                    debiased.clone()
                } else {
                    u.iter().map(|&g| g as f64).collect()
                };
                update_factors(factors, &self.shapes[i], &v, &h, c.precondition_lr);
            }
            let pre: Vec<f32> = precondition(factors, &self.shapes[i], &debiased).iter().map(|&x| x as f32).collect();
            let rms = (pre.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / pre.len() as f64).sqrt() as f32;
            let factor = (1.1f32 / (rms + 1e-6)).min(1.0);
            let decay = order >= 2 && c.weight_decouple && c.weight_decay != 0.0;
            for ((out, x), &w) in u.iter_mut().zip(pre).zip(p.iter()) {
                let mut x = x * factor;
                if decay {
                    x += c.weight_decay as f32 * w;
                }
                *out = -(lr as f32) * x;
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, v: &mut dyn StateVisitor) -> Result<()> {
        for (i, b) in self.momentum_buffer.iter_mut().enumerate() {
            let name = format!("momentum_buffer.{i}");
            if self.cfg.mu_dtype == MomentDtype::Bf16 {
                v.bf16_buffer(&name, b)?;
            } else {
                v.buffer(&name, b)?;
            }
        }
        for (i, factors) in self.q.iter_mut().enumerate() {
            for (a, f) in factors.iter_mut().enumerate() {
                v.buffer(&format!("Q.{i}.{a}"), f.data_mut())?;
            }
        }
        v.counter("step", &mut self.step)?;
        v.counter("update_counter", &mut self.update_counter)?;
        self.rng.visit(v, "rng")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Back substitution, column by column: the plain-loop inverse `faer`'s is measured against.
    fn invert_upper_plain(q: &Mat64) -> Mat64 {
        let n = q.rows;
        let mut inv = Mat64::zeros(n, n);
        for j in 0..n {
            for i in (0..=j).rev() {
                let mut s = if i == j { 1.0 } else { 0.0 };
                for k in i + 1..=j {
                    s -= q.at(i, k) * inv.at(k, j);
                }
                inv.data[i * n + j] = s / q.at(i, i);
            }
        }
        inv
    }

    fn upper(n: usize) -> Mat64 {
        let mut q = Mat64::zeros(n, n);
        for i in 0..n {
            for j in i..n {
                q.data[i * n + j] = if i == j {
                    1.0 + (i % 7) as f64 * 0.1
                } else {
                    0.3 * (((i * 31 + j * 17) % 13) as f64 / 13.0 - 0.5) / (n as f64).sqrt()
                };
            }
        }
        q
    }

    #[test]
    fn the_triangular_inverse_is_the_inverse() {
        for n in [1, 2, 5, 33, 70] {
            let q = upper(n);
            let inv = invert_upper(&q);
            let plain = invert_upper_plain(&q);
            assert!(q.mm(&inv).max_abs_diff_eye() < 1e-12, "{n}");
            for (a, b) in inv.data.iter().zip(&plain.data) {
                assert!((a - b).abs() < 1e-12, "{n}: {a} vs {b}");
            }
        }
    }

    /// `cargo test --release -p descent-core --lib kron -- --ignored --nocapture`: the inverse by
    /// `faer` against plain back substitution, for the sizes a model's axes have.
    #[test]
    #[ignore]
    fn time_the_triangular_inverse() {
        for n in [16, 64, 128, 512] {
            let q = upper(n);
            let reps = (1 << 22) / (n * n * n / 6 + 1) + 1;
            let time = |f: &dyn Fn(&Mat64) -> Mat64| {
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        std::hint::black_box(f(std::hint::black_box(&q)));
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                best
            };
            let (tf, tp) = (time(&invert_upper), time(&invert_upper_plain));
            eprintln!("n = {n}: faer {:.1} µs, plain loops {:.1} µs", tf * 1e6, tp * 1e6);
        }
    }
}
