//! Learning-rate schedules: plain functions of the step, as in optax, including the closed forms of
//! the `torch.optim.lr_scheduler` classes (the learning rate in force after `t` calls to
//! `scheduler.step()`), and the stateful [`ReduceLrOnPlateau`].

use std::f64::consts::PI;

use crate::error::{ensure, Error, Result};

/// A learning rate as a function of the 0-based step count.
pub trait Schedule: Send + Sync {
    /// The value at `step` (from 0).
    fn value(&self, step: u64) -> f64;
    /// How many steps a run may take with this schedule: `Some(n)` when only the learning rates
    /// of steps `0..n` are defined, as for torch `OneCycleLR` (`n` its `total_steps`: torch steps
    /// the scheduler after each optimizer step and raises on the step past `total_steps`);
    /// `None` (the default) when every step has one. [`check_steps`] applies it.
    fn max_steps(&self) -> Option<u64> {
        None
    }
    /// The rate torch's `scheduler.step()` sets when it moves to step `t` from the rate `lr` in
    /// force (its chainable form, `get_lr`, which a `ChainedScheduler` runs for each of its
    /// schedulers in turn, each on the rate the one before set); `base` is the optimizer's initial
    /// rate, which this schedule was built with. The default, for a schedule that is its base times
    /// a factor (`LinearLR`, `ConstantLR`, `PolynomialLR`, …): `lr` times the factor's change from
    /// step `t − 1` to `t`, or from 1 to its value at step 0. (`StepLR`, `MultiStepLR` and
    /// `ExponentialLR` multiply by their γ, as torch's chainable forms do.)
    fn chain_step(&self, lr: f64, t: u64, base: f64) -> f64 {
        let (now, before) = (self.value(t), if t == 0 { base } else { self.value(t - 1) });
        if before == 0.0 {
            // A factor of 0 before: torch's step multiplies the 0 it left.
            return if now == 0.0 { lr } else { lr * now / base };
        }
        lr * (now / before)
    }
}

impl<F: Fn(u64) -> f64 + Send + Sync> Schedule for F {
    fn value(&self, step: u64) -> f64 {
        self(step)
    }
}

/// A boxed schedule.
pub type BoxSchedule = Box<dyn Schedule>;

impl Schedule for BoxSchedule {
    fn value(&self, step: u64) -> f64 {
        (**self).value(step)
    }
    fn max_steps(&self) -> Option<u64> {
        (**self).max_steps()
    }
    fn chain_step(&self, lr: f64, t: u64, base: f64) -> f64 {
        (**self).chain_step(lr, t, base)
    }
}

/// A torch scheduler whose step sets the rate from its own parameters whatever the rate in force
/// (`CosineAnnealingWarmRestarts`, `CyclicLR`): in a `ChainedScheduler` it overrides the
/// schedulers before it.
struct Overrides(BoxSchedule);

impl Schedule for Overrides {
    fn value(&self, step: u64) -> f64 {
        self.0.value(step)
    }
    fn max_steps(&self) -> Option<u64> {
        self.0.max_steps()
    }
    fn chain_step(&self, _lr: f64, t: u64, _base: f64) -> f64 {
        self.0.value(t)
    }
}

/// Checks, before a run, that `schedule` supports `steps` steps (the learning rates of steps
/// `0..steps`; see [`Schedule::max_steps`]). Past its end, [`Error::TooManySteps`] with torch's
/// wording.
pub fn check_steps<S: Schedule + ?Sized>(schedule: &S, steps: u64) -> Result<()> {
    match schedule.max_steps() {
        Some(supported) if steps > supported => Err(Error::TooManySteps { requested: steps, supported }),
        _ => Ok(()),
    }
}

/// A schedule defined for its first `max_steps` steps only.
struct Limited {
    inner: BoxSchedule,
    max_steps: u64,
}

impl Schedule for Limited {
    fn value(&self, step: u64) -> f64 {
        self.inner.value(step)
    }
    fn max_steps(&self) -> Option<u64> {
        Some(self.max_steps)
    }
}

/// The learning rate set before each step, from a list: `values[t]` at step `t`, the last value
/// after the list ends (optax `inject_hyperparams` with the rate written into its state before
/// every update).
pub fn per_step(values: Vec<f64>) -> Result<BoxSchedule> {
    ensure(!values.is_empty(), || "a per-step learning rate needs at least one value".into())?;
    Ok(Box::new(move |t: u64| values[usize::try_from(t).unwrap_or(usize::MAX).min(values.len() - 1)]))
}

/// optax `constant_schedule`.
pub fn constant(value: f64) -> BoxSchedule {
    Box::new(move |_| value)
}

/// optax `polynomial_schedule`'s arguments (required: `init_value`, `end_value`, `power`, `transition_steps`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Polynomial {
    /// The rate before `transition_begin`.
    pub init_value: f64,
    /// The rate from `transition_begin + transition_steps` on.
    pub end_value: f64,
    /// The exponent of the polynomial.
    pub power: f64,
    /// Steps from `init_value` to `end_value`; 0: `init_value` throughout.
    pub transition_steps: u64,
    /// Steps before the transition starts (optax's default 0).
    pub transition_begin: u64,
}

/// optax `polynomial_schedule`: from `init` to `end` over `transition_steps` after
/// `transition_begin`, with exponent `power`.
pub fn polynomial(c: Polynomial) -> BoxSchedule {
    Box::new(move |t: u64| polynomial_at(&c, t))
}

/// [`polynomial`]'s value at step `t` (`init_value` throughout for 0 transition steps).
pub(crate) fn polynomial_at(c: &Polynomial, t: u64) -> f64 {
    let &Polynomial { init_value: init, end_value: end, power, transition_steps, transition_begin } = c;
    if transition_steps == 0 {
        return init;
    }
    let c = (t.saturating_sub(transition_begin)).min(transition_steps) as f64;
    let frac = 1.0 - c / transition_steps as f64;
    (init - end) * frac.powf(power) + end
}

/// optax `linear_schedule`'s arguments (required: `init_value`, `end_value`, `transition_steps`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// The rate before `transition_begin`.
    pub init_value: f64,
    /// The rate from `transition_begin + transition_steps` on.
    pub end_value: f64,
    /// Steps from `init_value` to `end_value`; 0: `init_value` throughout.
    pub transition_steps: u64,
    /// Steps before the transition starts (optax's default 0).
    pub transition_begin: u64,
}

/// optax `linear_schedule`.
pub fn linear(c: Linear) -> BoxSchedule {
    let Linear { init_value: init, end_value: end, transition_steps, transition_begin } = c;
    polynomial(Polynomial { init_value: init, end_value: end, power: 1.0, transition_steps, transition_begin })
}

/// optax `piecewise_constant_schedule`: multiplies by `scale` from each boundary step on.
pub fn piecewise_constant(init: f64, mut boundaries_and_scales: Vec<(u64, f64)>) -> Result<BoxSchedule> {
    ensure(boundaries_and_scales.iter().all(|(_, s)| *s >= 0.0), || {
        "piecewise_constant_schedule: scales must be non-negative".into()
    })?;
    boundaries_and_scales.sort_by_key(|(b, _)| *b);
    Ok(Box::new(move |t: u64| {
        let mut v = init;
        for &(b, s) in &boundaries_and_scales {
            if t >= b {
                v *= s;
            }
        }
        v
    }))
}

/// optax `exponential_decay`'s arguments (required: `init_value`, `transition_steps`, `decay_rate`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentialDecay {
    /// The rate before `transition_begin`.
    pub init_value: f64,
    /// Steps over which the rate is multiplied by `decay_rate` once; 0: constant.
    pub transition_steps: u64,
    /// The factor of each `transition_steps`; 0: constant.
    pub decay_rate: f64,
    /// Steps before the decay starts (optax's default 0).
    pub transition_begin: u64,
    /// Decay in whole transitions instead of continuously (optax's default `false`).
    pub staircase: bool,
    /// The bound the rate does not pass (below for a decay, above for a growth); `None` (optax's default): none.
    pub end_value: Option<f64>,
}

/// optax `exponential_decay`: `init · rate^((t − begin)/transition_steps)`, floored with
/// `staircase`, clipped at `end_value`.
pub fn exponential_decay(c: ExponentialDecay) -> BoxSchedule {
    let ExponentialDecay { init_value: init, transition_steps, decay_rate, transition_begin, staircase, end_value } = c;
    if transition_steps == 0 || decay_rate == 0.0 {
        return constant(init);
    }
    // In float32, as optax computes it: `decay_rate ** p` of f32(decay_rate) (0.999 is
    // 0.99900001287 there, which 1000 steps make a 1.3e-5 relative difference in the rate).
    let (init32, rate32, end32) = (init as f32, decay_rate as f32, end_value.map(|e| e as f32));
    Box::new(move |t: u64| {
        let dc = t as f64 - transition_begin as f64;
        let mut p = (dc as f32) / transition_steps as f32;
        if staircase {
            p = p.floor();
        }
        let mut v = if dc <= 0.0 { init32 } else { init32 * rate32.powf(p) };
        if let Some(e) = end32 {
            v = if decay_rate < 1.0 { v.max(e) } else { v.min(e) };
        }
        v as f64
    })
}

/// optax `cosine_decay_schedule`'s arguments (required: `init_value`, `decay_steps`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineDecay {
    /// The rate at step 0.
    pub init_value: f64,
    /// Steps of the decay; the rate stays at `α·init_value` after them.
    pub decay_steps: u64,
    /// The final rate as a fraction of `init_value` (optax's default 0).
    pub alpha: f64,
    /// The power of the cosine factor (optax's default 1).
    pub exponent: f64,
}

/// optax `cosine_decay_schedule`: `init · ((1−α)·(½(1 + cos(πt/T)))^exponent + α)`. `decay_steps`
/// must be positive (optax raises on 0).
pub fn cosine_decay(c: CosineDecay) -> Result<BoxSchedule> {
    let CosineDecay { init_value: init, decay_steps, alpha, exponent } = c;
    ensure(decay_steps > 0, || "cosine_decay_schedule: decay_steps must be positive (optax raises on 0)".into())?;
    // In float32, as optax computes it (jax's default precision): near the cosine's bottom,
    // `1 + cos` cancels, and the float32 rounding is what optax's rates carry.
    let (steps, init, decay, alpha, exponent) =
        (decay_steps as f32, init as f32, (1.0 - alpha) as f32, alpha as f32, exponent as f32);
    Ok(Box::new(move |t: u64| {
        let t = (t as f32).min(steps);
        let cos = 0.5f32 * (1.0 + (std::f32::consts::PI * t / steps).cos());
        (init * (decay * cos.powf(exponent) + alpha)) as f64
    }))
}

/// optax `join_schedules`: `schedules[k+1]` takes over (from its own step 0) at `boundaries[k]`.
/// No schedules: NaN at every step.
pub fn join(schedules: Vec<BoxSchedule>, boundaries: Vec<u64>) -> BoxSchedule {
    join_signed(schedules, boundaries.into_iter().map(|b| i64::try_from(b).unwrap_or(i64::MAX)).collect())
}

/// [`join`] as optax computes it for any boundaries: schedule `k+1` is zipped with
/// `boundaries[k]` (what either list has beyond the other is never read), and a negative
/// boundary puts its schedule in force from step 0, that many steps into it.
pub fn join_signed(schedules: Vec<BoxSchedule>, boundaries: Vec<i64>) -> BoxSchedule {
    Box::new(Joined { schedules, boundaries })
}

struct Joined {
    schedules: Vec<BoxSchedule>,
    boundaries: Vec<i64>,
}

impl Joined {
    /// The step from which schedule `k` is in force (`boundaries[k-1]`, 0 for the first).
    fn start(&self, k: usize) -> u64 {
        if k == 0 {
            0
        } else {
            self.boundaries[k - 1].max(0) as u64
        }
    }
}

impl Schedule for Joined {
    fn value(&self, t: u64) -> f64 {
        let Some(first) = self.schedules.first() else { return f64::NAN };
        let mut out = first.value(t);
        for (&b, s) in self.boundaries.iter().zip(&self.schedules[1..]) {
            let t = i64::try_from(t).unwrap_or(i64::MAX);
            if t >= b {
                out = s.value(t.saturating_sub(b) as u64);
            }
        }
        out
    }
    /// The first step at which a part in force would be asked for a step past its own end:
    /// part `k` is in force from its start until the earliest start of a later part.
    fn max_steps(&self) -> Option<u64> {
        let parts = self.schedules.len().min(self.boundaries.len() + 1);
        (0..parts)
            .filter_map(|k| {
                let start = self.start(k);
                let end = (k + 1..parts).map(|j| self.start(j)).min();
                let stop = start.saturating_add(self.schedules[k].max_steps()?);
                end.is_none_or(|end| stop < end).then_some(stop)
            })
            .min()
    }
}

/// torch `ChainedScheduler`: at every step each scheduler in turn moves the rate the one before
/// it set ([`Schedule::chain_step`]), from the optimizer's initial rate `base` (each scheduler's
/// construction made its step 0). For schedulers that are factors of the base this is `base · Π
/// sᵢ(t)/base`; `CosineAnnealingLR` with an `eta_min` or past `T_max`, and the schedulers that set
/// the rate outright, differ from that product as torch's do.
pub fn chained(base: f64, schedules: Vec<BoxSchedule>) -> BoxSchedule {
    Box::new(Chained { base, schedules, at: std::sync::Mutex::new((0, base)) })
}

struct Chained {
    base: f64,
    schedules: Vec<BoxSchedule>,
    /// The next step to compute and the rate in force before it: steps asked in order cost one
    /// update each; a step before it is computed again from step 0.
    at: std::sync::Mutex<(u64, f64)>,
}

impl Schedule for Chained {
    fn value(&self, t: u64) -> f64 {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if at.0 > t {
            *at = (0, self.base);
        }
        let mut lr = at.1;
        loop {
            let k = at.0;
            lr = self.schedules.iter().fold(lr, |lr, s| s.chain_step(lr, k, self.base));
            *at = (k + 1, lr);
            if k == t {
                return lr;
            }
        }
    }
    /// Every scheduler steps at every step: the shortest one's.
    fn max_steps(&self) -> Option<u64> {
        self.schedules.iter().filter_map(|s| s.max_steps()).min()
    }
}

/// optax `warmup_constant_schedule`.
pub fn warmup_constant(init: f64, peak: f64, warmup_steps: u64) -> BoxSchedule {
    linear(Linear { init_value: init, end_value: peak, transition_steps: warmup_steps, transition_begin: 0 })
}

/// optax `warmup_cosine_decay_schedule`'s arguments (required: `init_value`, `peak_value`, `warmup_steps`, `decay_steps`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosineDecay {
    /// The rate at step 0, where the linear warm-up starts.
    pub init_value: f64,
    /// The rate at the end of the warm-up, where the cosine decay starts.
    pub peak_value: f64,
    /// Steps of the linear warm-up.
    pub warmup_steps: u64,
    /// The step at which `end_value` is reached, warm-up included.
    pub decay_steps: u64,
    /// The rate after `decay_steps` (optax's default 0).
    pub end_value: f64,
    /// The power of the cosine factor (optax's default 1).
    pub exponent: f64,
}

/// optax `warmup_cosine_decay_schedule`: linear warm-up to `peak`, then cosine decay to `end`
/// reached at `decay_steps` (warm-up included), which must exceed `warmup_steps` (optax decays over
/// their difference).
pub fn warmup_cosine_decay(c: WarmupCosineDecay) -> Result<BoxSchedule> {
    let WarmupCosineDecay { init_value: init, peak_value: peak, warmup_steps, decay_steps, end_value: end, exponent } =
        c;
    ensure(decay_steps > warmup_steps, || {
        format!(
            "warmup_cosine_decay_schedule: decay_steps {decay_steps} must exceed warmup_steps {warmup_steps} \
             (optax decays over decay_steps − warmup_steps steps)"
        )
    })?;
    let alpha = if peak == 0.0 { 0.0 } else { end / peak };
    Ok(join(
        vec![
            linear(Linear { init_value: init, end_value: peak, transition_steps: warmup_steps, transition_begin: 0 }),
            cosine_decay(CosineDecay { init_value: peak, decay_steps: decay_steps - warmup_steps, alpha, exponent })?,
        ],
        vec![warmup_steps],
    ))
}

/// optax `warmup_exponential_decay_schedule`'s arguments (optax requires all but the last three).
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupExponentialDecay {
    /// The rate at step 0, where the linear warm-up starts.
    pub init_value: f64,
    /// The rate at the end of the warm-up, where the decay starts.
    pub peak_value: f64,
    /// Steps of the linear warm-up.
    pub warmup_steps: u64,
    /// Steps over which the rate is multiplied by `decay_rate` once.
    pub transition_steps: u64,
    /// The factor of each `transition_steps`.
    pub decay_rate: f64,
    /// Steps after the warm-up before the decay starts.
    pub transition_begin: u64,
    /// Decay in whole transitions (a staircase) instead of continuously.
    pub staircase: bool,
    /// The bound the rate does not pass (below for a decay, above for a growth); `None`: none.
    pub end_value: Option<f64>,
}

/// optax `warmup_exponential_decay_schedule`: a linear warm-up from `init_value` to `peak_value`
/// over `warmup_steps`, then `peak_value · decay_rate^((t − warmup_steps − transition_begin) /
/// transition_steps)`.
pub fn warmup_exponential_decay(c: WarmupExponentialDecay) -> BoxSchedule {
    join(
        vec![
            linear(Linear {
                init_value: c.init_value,
                end_value: c.peak_value,
                transition_steps: c.warmup_steps,
                transition_begin: 0,
            }),
            exponential_decay(ExponentialDecay {
                init_value: c.peak_value,
                transition_steps: c.transition_steps,
                decay_rate: c.decay_rate,
                transition_begin: c.transition_begin,
                staircase: c.staircase,
                end_value: c.end_value,
            }),
        ],
        vec![c.warmup_steps],
    )
}

/// Interpolation between the knots of [`piecewise_interpolate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Linear.
    Linear,
    /// Cosine.
    Cosine,
}

/// optax `piecewise_interpolate_schedule`: values `init · Π scales` at the boundaries, interpolated
/// in between. The scales must be non-negative (optax raises otherwise).
pub fn piecewise_interpolate(
    kind: Interpolation,
    init: f64,
    mut boundaries_and_scales: Vec<(u64, f64)>,
) -> Result<BoxSchedule> {
    ensure(boundaries_and_scales.iter().all(|(_, s)| *s >= 0.0), || {
        "piecewise_interpolate_schedule: scales must be non-negative".into()
    })?;
    boundaries_and_scales.sort_by_key(|(b, _)| *b);
    // In float32 throughout, as optax computes it (jax's default precision): the values as
    // float32 running products, the fraction of each interval, both interpolations.
    let mut bounds = vec![0u64];
    let mut values = vec![init as f32];
    for (b, s) in &boundaries_and_scales {
        bounds.push(*b);
        values.push(values.last().unwrap() * *s as f32);
    }
    Ok(Box::new(move |t: u64| {
        for k in 0..bounds.len() - 1 {
            let (lo, hi) = (bounds[k], bounds[k + 1]);
            if lo <= t && t < hi {
                let pct = (t - lo) as f32 / ((hi - lo).max(1)) as f32;
                let (a, b) = (values[k], values[k + 1]);
                return match kind {
                    Interpolation::Linear => (b - a) * pct + a,
                    Interpolation::Cosine => b + (a - b) / 2.0 * ((std::f32::consts::PI * pct).cos() + 1.0),
                } as f64;
            }
        }
        if t >= *bounds.last().unwrap() {
            *values.last().unwrap() as f64
        } else {
            0.0
        }
    }))
}

/// A one-cycle schedule's arguments as optax takes them: a positive length, fractions of 0 or
/// more, factors it can divide by.
fn check_onecycle(name: &str, transition_steps: u64, fractions: &[f64], divisors: &[f64]) -> Result<()> {
    ensure(transition_steps > 0, || format!("{name}: transition_steps must be positive (optax raises on 0)"))?;
    ensure(fractions.iter().all(|f| *f >= 0.0), || format!("{name}: a fraction of the cycle is 0 or more"))?;
    ensure(divisors.iter().all(|d| *d != 0.0), || format!("{name}: div_factor and final_div_factor must not be 0"))
}

/// optax `linear_onecycle_schedule`'s arguments (required: `transition_steps`, `peak_value`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearOnecycle {
    /// Steps of the whole cycle.
    pub transition_steps: u64,
    /// The largest rate, reached at `pct_start · transition_steps`.
    pub peak_value: f64,
    /// Fraction of the cycle spent rising (optax's default 0.3).
    pub pct_start: f64,
    /// Fraction of the cycle at which the rate is back at its start (optax's default 0.85).
    pub pct_final: f64,
    /// The initial rate is `peak_value / div_factor` (optax's default 25).
    pub div_factor: f64,
    /// The final rate is the initial one over this (optax's default 10⁴).
    pub final_div_factor: f64,
}

/// `{step: scale}` pairs as the Python dict literal optax writes holds them: a step given again
/// keeps the later scale.
fn as_python_dict(pairs: Vec<(u64, f64)>) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> = vec![];
    for (b, x) in pairs {
        match out.iter_mut().find(|(k, _)| *k == b) {
            Some(slot) => slot.1 = x,
            None => out.push((b, x)),
        }
    }
    out
}

/// optax `linear_onecycle_schedule` (Smith & Topin 2018).
pub fn linear_onecycle(c: LinearOnecycle) -> Result<BoxSchedule> {
    let LinearOnecycle { transition_steps, peak_value: peak, pct_start, pct_final, div_factor, final_div_factor } = c;
    check_onecycle(
        "linear_onecycle_schedule",
        transition_steps,
        &[pct_start, pct_final],
        &[div_factor, final_div_factor],
    )?;
    let t = transition_steps as f64;
    piecewise_interpolate(
        Interpolation::Linear,
        peak / div_factor,
        as_python_dict(vec![
            ((pct_start * t) as u64, div_factor),
            ((pct_final * t) as u64, 1.0 / div_factor),
            (transition_steps, 1.0 / final_div_factor),
        ]),
    )
}

/// optax `cosine_onecycle_schedule`'s arguments (required: `transition_steps`, `peak_value`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineOnecycle {
    /// Steps of the whole cycle.
    pub transition_steps: u64,
    /// The largest rate, reached at `pct_start · transition_steps`.
    pub peak_value: f64,
    /// Fraction of the cycle spent rising (optax's default 0.3).
    pub pct_start: f64,
    /// The initial rate is `peak_value / div_factor` (optax's default 25).
    pub div_factor: f64,
    /// The final rate is the initial one over this (optax's default 10⁴).
    pub final_div_factor: f64,
}

/// optax `cosine_onecycle_schedule` (Smith & Topin 2018).
pub fn cosine_onecycle(c: CosineOnecycle) -> Result<BoxSchedule> {
    let CosineOnecycle { transition_steps, peak_value: peak, pct_start, div_factor, final_div_factor } = c;
    check_onecycle("cosine_onecycle_schedule", transition_steps, &[pct_start], &[div_factor, final_div_factor])?;
    let t = transition_steps as f64;
    piecewise_interpolate(
        Interpolation::Cosine,
        peak / div_factor,
        as_python_dict(vec![
            ((pct_start * t) as u64, div_factor),
            (transition_steps, 1.0 / (div_factor * final_div_factor)),
        ]),
    )
}

// ---- torch.optim.lr_scheduler, as closed forms of the step count ----

/// `x^n`: by repeated multiplication (`powi`) for exponents that fit an `i32`, `powf` beyond.
fn powu(x: f64, n: u64) -> f64 {
    match i32::try_from(n) {
        Ok(n) => x.powi(n),
        Err(_) => x.powf(n as f64),
    }
}

/// torch `StepLR`: `base · γ^⌊t/step_size⌋`.
pub fn step_lr(base: f64, step_size: u64, gamma: f64) -> Result<BoxSchedule> {
    ensure(step_size > 0, || "StepLR: step_size must be positive".into())?;
    Ok(Box::new(Multiplies {
        value: move |t: u64| base * powu(gamma, t / step_size),
        factor: move |t: u64| if t > 0 && t.is_multiple_of(step_size) { gamma } else { 1.0 },
    }))
}

/// torch `MultiStepLR`: multiplied by `γ` at each milestone.
pub fn multistep_lr(base: f64, milestones: Vec<u64>, gamma: f64) -> BoxSchedule {
    let at = milestones.clone();
    Box::new(Multiplies {
        value: move |t: u64| base * gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32),
        factor: move |t: u64| gamma.powi(at.iter().filter(|&&m| m == t).count() as i32),
    })
}

/// torch `ExponentialLR`: `base · γᵗ`.
pub fn exponential_lr(base: f64, gamma: f64) -> BoxSchedule {
    Box::new(Multiplies {
        value: move |t: u64| base * powu(gamma, t),
        factor: move |t: u64| if t > 0 { gamma } else { 1.0 },
    })
}

/// A torch scheduler whose chainable step multiplies the rate in force by a factor of the step
/// (`StepLR`, `MultiStepLR`, `ExponentialLR`): in a `ChainedScheduler` it applies that factor, as
/// torch does, where the ratio of its closed form at two steps would be rounded, or 0/0 once a
/// factor of 0 has struck.
struct Multiplies<V, M> {
    value: V,
    factor: M,
}

impl<V: Fn(u64) -> f64 + Send + Sync, M: Fn(u64) -> f64 + Send + Sync> Schedule for Multiplies<V, M> {
    fn value(&self, t: u64) -> f64 {
        (self.value)(t)
    }
    fn chain_step(&self, lr: f64, t: u64, _base: f64) -> f64 {
        lr * (self.factor)(t)
    }
}

/// torch `CosineAnnealingLR` (Loshchilov & Hutter 2017, without restarts).
pub fn cosine_annealing_lr(base: f64, t_max: u64, eta_min: f64) -> Result<BoxSchedule> {
    ensure(t_max > 0, || "CosineAnnealingLR: T_max must be positive".into())?;
    Ok(Box::new(CosineAnnealing { base, t_max, eta_min }))
}

struct CosineAnnealing {
    base: f64,
    t_max: u64,
    eta_min: f64,
}

impl Schedule for CosineAnnealing {
    fn value(&self, t: u64) -> f64 {
        let CosineAnnealing { base, t_max, eta_min } = *self;
        eta_min + (base - eta_min) * (1.0 + (PI * t as f64 / t_max as f64).cos()) / 2.0
    }
    /// torch's recursive form: the distance to `eta_min` scaled by the cosine's change, and at
    /// the steps where that change is 0/0 (`t = T_max + 1 + 2k·T_max`) a step up by the base.
    fn chain_step(&self, lr: f64, t: u64, base: f64) -> f64 {
        let (tm, eta) = (self.t_max, self.eta_min);
        if t == 0 {
            lr
        } else if t > tm && (t - 1 - tm).is_multiple_of(2 * tm) {
            lr + (base - eta) * (1.0 - (PI / tm as f64).cos()) / 2.0
        } else {
            let c = |k: u64| 1.0 + (PI * k as f64 / tm as f64).cos();
            c(t) / c(t - 1) * (lr - eta) + eta
        }
    }
}

/// torch `CosineAnnealingWarmRestarts` (the optimizer's rate is the first argument of the function)'s arguments (required: `t_0`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealingWarmRestarts {
    /// Steps of the first period (torch `T_0`).
    pub t_0: u64,
    /// Factor of each period over the one before (torch `T_mult`, default 1).
    pub t_mult: u64,
    /// The least rate (torch's default 0).
    pub eta_min: f64,
}

/// torch `CosineAnnealingWarmRestarts` (SGDR): periods `T_0, T_0·T_mult, …`.
pub fn cosine_annealing_warm_restarts(base: f64, c: CosineAnnealingWarmRestarts) -> Result<BoxSchedule> {
    let CosineAnnealingWarmRestarts { t_0, t_mult, eta_min } = c;
    ensure(t_0 > 0, || format!("CosineAnnealingWarmRestarts: Expected positive integer T_0, but got {t_0}"))?;
    ensure(t_mult >= 1, || format!("CosineAnnealingWarmRestarts: Expected integer T_mult >= 1, but got {t_mult}"))?;
    Ok(Box::new(Overrides(Box::new(move |t: u64| {
        let (mut cur, mut ti) = (t, t_0);
        if t_mult == 1 {
            cur %= t_0;
        } else {
            // Periods grow geometrically: at most 64 of them fit in a u64 step count, and a
            // period past u64::MAX is the one in force.
            while cur >= ti {
                cur -= ti;
                match ti.checked_mul(t_mult) {
                    Some(next) => ti = next,
                    None => break,
                }
            }
        }
        eta_min + (base - eta_min) * (1.0 + (PI * cur as f64 / ti as f64).cos()) / 2.0
    }))))
}

/// torch `LinearLR` (the optimizer's rate is the first argument of the function)'s arguments, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearLr {
    /// The factor of the rate at step 0, in (0, 1] (torch's default 1/3).
    pub start_factor: f64,
    /// The factor from `total_iters` on, in [0, 1] (torch's default 1).
    pub end_factor: f64,
    /// Steps over which the factor moves (torch's default 5).
    pub total_iters: u64,
}
impl Default for LinearLr {
    fn default() -> Self {
        LinearLr { start_factor: 1.0 / 3.0, end_factor: 1.0, total_iters: 5 }
    }
}

/// torch `LinearLR`: factor moves linearly from `start` to `end` over `total_iters` (with
/// `total_iters` 0, `start` throughout, as torch's steps give).
pub fn linear_lr(base: f64, c: LinearLr) -> Result<BoxSchedule> {
    let LinearLr { start_factor, end_factor, total_iters } = c;
    ensure(start_factor > 0.0 && start_factor <= 1.0, || {
        "LinearLR: Starting multiplicative factor expected to be greater than 0 and less or equal to 1.".into()
    })?;
    ensure((0.0..=1.0).contains(&end_factor), || {
        "LinearLR: Ending multiplicative factor expected to be between 0 and 1.".into()
    })?;
    Ok(Box::new(move |t: u64| {
        // With no iterations torch's step applies the start factor at step 0 and never moves
        // again (its closed form would give the end factor).
        let f = if total_iters == 0 {
            start_factor
        } else {
            start_factor + (end_factor - start_factor) * t.min(total_iters) as f64 / total_iters as f64
        };
        base * f
    }))
}

/// torch `ConstantLR`: `base · factor` until `total_iters`, then `base` (with `total_iters` 0,
/// `base · factor` throughout, as torch's steps give).
pub fn constant_lr(base: f64, factor: f64, total_iters: u64) -> Result<BoxSchedule> {
    ensure((0.0..=1.0).contains(&factor), || {
        "ConstantLR: Constant multiplicative factor expected to be between 0 and 1.".into()
    })?;
    // With no iterations torch's step applies the factor at step 0 and never removes it (its
    // closed form would give `base`).
    Ok(Box::new(move |t: u64| if total_iters == 0 || t < total_iters { base * factor } else { base }))
}

/// torch `PolynomialLR`: `base · (1 − min(t, T)/T)^power`.
pub fn polynomial_lr(base: f64, total_iters: u64, power: f64) -> BoxSchedule {
    Box::new(move |t: u64| {
        if total_iters == 0 {
            return base;
        }
        base * (1.0 - t.min(total_iters) as f64 / total_iters as f64).powf(power)
    })
}

/// How torch `OneCycleLR` anneals between phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// Cosine.
    Cos,
    /// Linear.
    Linear,
}

/// torch `OneCycleLR`'s arguments (required: `max_lr`, `total_steps`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleLr {
    /// The largest rate.
    pub max_lr: f64,
    /// Steps of the cycle; the schedule ends there.
    pub total_steps: u64,
    /// Fraction of the cycle spent rising (torch's default 0.3).
    pub pct_start: f64,
    /// How the rate moves between phases (torch's default cosine).
    pub anneal_strategy: Anneal,
    /// The initial rate is `max_lr / div_factor` (torch's default 25).
    pub div_factor: f64,
    /// The final rate is the initial one over this (torch's default 10⁴).
    pub final_div_factor: f64,
    /// Come back down to the initial rate before the final annealing (torch's default `false`).
    pub three_phase: bool,
}

/// torch `OneCycleLR` (Smith & Topin 2018): warm-up from `max_lr/div_factor` to `max_lr`, then
/// annealing to `initial/final_div_factor` (three phases with `three_phase`).
pub fn onecycle_lr(c: OneCycleLr) -> Result<BoxSchedule> {
    let OneCycleLr {
        max_lr,
        total_steps,
        pct_start,
        anneal_strategy: anneal,
        div_factor,
        final_div_factor,
        three_phase,
    } = c;
    ensure(total_steps > 0, || format!("OneCycleLR: Expected positive integer total_steps, but got {total_steps}"))?;
    ensure((0.0..=1.0).contains(&pct_start), || {
        format!("OneCycleLR: Expected float between 0 and 1 pct_start, but got {pct_start}")
    })?;
    let initial = max_lr / div_factor;
    let min_lr = initial / final_div_factor;
    let total = total_steps as f64;
    let phases: Vec<(f64, f64, f64)> = if three_phase {
        vec![
            (pct_start * total - 1.0, initial, max_lr),
            (2.0 * pct_start * total - 2.0, max_lr, initial),
            (total - 1.0, initial, min_lr),
        ]
    } else {
        vec![(pct_start * total - 1.0, initial, max_lr), (total - 1.0, max_lr, min_lr)]
    };
    let f = move |t: u64| {
        let t = t as f64;
        let mut start_step = 0.0;
        for (k, &(end_step, start, end)) in phases.iter().enumerate() {
            if t <= end_step || k == phases.len() - 1 {
                let pct = (t - start_step) / (end_step - start_step);
                return match anneal {
                    Anneal::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
                    Anneal::Linear => (end - start) * pct + start,
                };
            }
            start_step = end_step;
        }
        min_lr
    };
    Ok(Box::new(Limited { inner: Box::new(f), max_steps: total_steps }))
}

/// torch `CyclicLR` modes (Smith 2017).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CyclicMode {
    /// A triangle of constant height.
    Triangular,
    /// A triangle whose height halves each cycle.
    Triangular2,
    /// A triangle whose height is multiplied by `gamma` each step.
    ExpRange {
        /// The height's factor per step.
        gamma: f64,
    },
}

/// torch `CyclicLR`'s arguments (required: `base_lr`, `max_lr`; the others carry the library's defaults in their docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CyclicLr {
    /// The bottom of each cycle.
    pub base_lr: f64,
    /// The top of each cycle (scaled by the mode).
    pub max_lr: f64,
    /// Steps rising (torch's default 2000).
    pub step_size_up: u64,
    /// Steps falling; `None` (torch's default): `step_size_up`.
    pub step_size_down: Option<u64>,
    /// How the height changes from cycle to cycle (torch's default triangular).
    pub mode: CyclicMode,
}

/// torch `CyclicLR`: triangular cycles between `base_lr` and `max_lr`.
pub fn cyclic_lr(c: CyclicLr) -> Result<BoxSchedule> {
    let CyclicLr { base_lr, max_lr, step_size_up, step_size_down, mode } = c;
    let down = step_size_down.unwrap_or(step_size_up);
    let total = step_size_up as f64 + down as f64;
    ensure(total > 0.0, || "CyclicLR: step sizes must be positive".into())?;
    let ratio = step_size_up as f64 / total;
    Ok(Box::new(Overrides(Box::new(move |t: u64| {
        let tf = t as f64;
        let cycle = (1.0 + tf / total).floor();
        let x = 1.0 + tf / total - cycle;
        let scale = if x <= ratio { x / ratio } else { (x - 1.0) / (ratio - 1.0) };
        let height = (max_lr - base_lr) * scale;
        let f = match mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
            CyclicMode::ExpRange { gamma } => gamma.powf(tf),
        };
        base_lr + height * f
    }))))
}

/// Whether a metric should go down or up (torch `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PlateauMode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// torch `threshold_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ThresholdMode {
    /// A relative threshold.
    Rel,
    /// An absolute threshold.
    Abs,
}

/// torch `ReduceLROnPlateau`: multiplies the learning rate by `factor` after `patience` steps
/// without improvement of the metric. Its whole state serializes, for checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReduceLrOnPlateau {
    /// The current learning rate.
    pub lr: f64,
    mode: PlateauMode,
    factor: f64,
    patience: u64,
    threshold: f64,
    threshold_mode: ThresholdMode,
    cooldown: u64,
    min_lr: f64,
    eps: f64,
    /// ±∞ until a first metric improves on it (written `"inf"`, `"-inf"`).
    #[serde(with = "crate::state::exact_float")]
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
}

/// torch `ReduceLROnPlateau`'s arguments, with torch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLrOnPlateauConfig {
    /// Whether the metric should go down (`Min`, a loss) or up (`Max`, an accuracy).
    pub mode: PlateauMode,
    /// The learning rate is multiplied by this on a plateau; below 1.
    pub factor: f64,
    /// Epochs without improvement tolerated before the rate is reduced.
    pub patience: u64,
    /// The least change of the metric that counts as an improvement.
    pub threshold: f64,
    /// Whether `threshold` is relative to the best value (`Rel`) or absolute (`Abs`).
    pub threshold_mode: ThresholdMode,
    /// Epochs after a reduction during which bad epochs are not counted.
    pub cooldown: u64,
    /// The learning rate is never reduced below this.
    pub min_lr: f64,
    /// A reduction smaller than this is skipped.
    pub eps: f64,
}

impl Default for ReduceLrOnPlateauConfig {
    fn default() -> Self {
        ReduceLrOnPlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

impl ReduceLrOnPlateau {
    /// The scheduler of an optimizer whose learning rate is `lr` now, with torch's check of
    /// `factor`.
    pub fn new(lr: f64, config: ReduceLrOnPlateauConfig) -> Result<Self> {
        let ReduceLrOnPlateauConfig { mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps } =
            config;
        ensure(factor < 1.0, || "ReduceLROnPlateau: Factor should be < 1.0.".into())?;
        Ok(ReduceLrOnPlateau {
            lr,
            mode,
            factor,
            patience,
            threshold,
            threshold_mode,
            cooldown,
            min_lr,
            eps,
            best: match mode {
                PlateauMode::Min => f64::INFINITY,
                PlateauMode::Max => f64::NEG_INFINITY,
            },
            num_bad_epochs: 0,
            cooldown_counter: 0,
        })
    }

    fn is_better(&self, a: f64) -> bool {
        let best = self.best;
        match (self.mode, self.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - self.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (1.0 + self.threshold),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + self.threshold,
        }
    }

    /// Feeds one metric value; returns the learning rate in force afterwards.
    pub fn step(&mut self, metric: f64) -> f64 {
        if self.is_better(metric) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.patience {
            let new_lr = (self.lr * self.factor).max(self.min_lr);
            if self.lr - new_lr > self.eps {
                self.lr = new_lr;
            }
            self.cooldown_counter = self.cooldown;
            self.num_bad_epochs = 0;
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{build_schedule, ScheduleSpec};
    use serde_json::json;

    fn f(lib: &str, name: &str, kw: serde_json::Value, base: Option<f64>) -> BoxSchedule {
        match build_schedule(lib, name, &kw, base).unwrap() {
            ScheduleSpec::Function(s) => s,
            ScheduleSpec::Plateau(_) => panic!("not a function"),
        }
    }

    #[test]
    fn sequential_warmup_then_cosine() {
        let s = f(
            "torch",
            "SequentialLR",
            json!({"schedulers": [["LinearLR", {"start_factor": 0.1, "total_iters": 5}], ["CosineAnnealingLR", {"T_max": 10}]], "milestones": [5]}),
            Some(1.0),
        );
        assert!((s.value(0) - 0.1).abs() < 1e-12);
        assert!((s.value(4) - 0.82).abs() < 1e-12);
        assert!((s.value(5) - 1.0).abs() < 1e-12, "the cosine starts from its own step 0");
        assert!((s.value(10) - 0.5).abs() < 1e-12);
        assert!(s.value(15).abs() < 1e-12);
    }

    /// torch's ChainedScheduler runs each scheduler's step on the rate the one before set:
    /// `CosineAnnealingLR` with an `eta_min` or past `T_max`, and a scheduler that sets the rate
    /// outright, are no factor of the base (values from torch 2.15, base 0.1).
    #[test]
    fn chained_follows_torchs_steps() {
        let chain =
            |parts: serde_json::Value| f("torch", "ChainedScheduler", json!({ "schedulers": parts }), Some(0.1));
        let check = |s: BoxSchedule, want: &[f64]| {
            for (t, w) in want.iter().enumerate() {
                assert!((s.value(t as u64) - w).abs() < 1e-12, "step {t}: {} vs {w}", s.value(t as u64));
            }
        };
        let eta = chain(
            json!([["ConstantLR", {"factor": 0.5, "total_iters": 3}], ["CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}]]),
        );
        check(eta, &[0.05, 0.04902113032590308, 0.04618033988749895, 0.08228847109902841, 0.06959674775249769]);
        let past = chain(json!([["CosineAnnealingLR", {"T_max": 2}], ["ExponentialLR", {"gamma": 0.5}]]));
        check(past, &[0.1, 0.025, 0.0, 0.025, 0.025, 0.00625]);
        let restarts = chain(
            json!([["LinearLR", {"start_factor": 0.5, "total_iters": 2}], ["CosineAnnealingWarmRestarts", {"T_0": 4}]]),
        );
        check(restarts, &[0.1, 0.08535533905932738, 0.05, 0.014644660940672627, 0.1, 0.08535533905932738]);
        // Asked out of order, a step is computed again.
        let s = chain(json!([["CosineAnnealingLR", {"T_max": 2}], ["ExponentialLR", {"gamma": 0.5}]]));
        assert!((s.value(5) - 0.00625).abs() < 1e-12 && (s.value(1) - 0.025).abs() < 1e-12);
        let e = build_schedule("torch", "SequentialLR", &json!({"schedulers": [["ConstantLR", {}], ["OneCycleLR", {"max_lr": 0.5, "total_steps": 40}]], "milestones": [5]}), Some(0.1)).err().unwrap();
        assert!(e.to_string().contains("OneCycleLR in a composition"), "{e}");
        // Nestings torch steps otherwise than their parts are refused, naming what.
        let seq = json!(["SequentialLR", {"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 2}]], "milestones": [3]}]);
        let chain = json!(["ChainedScheduler", {"schedulers": [["ExponentialLR", {"gamma": 0.9}]]}]);
        for (name, kw, what) in [
            (
                "ChainedScheduler",
                json!({"schedulers": [seq.clone(), ["ExponentialLR", {"gamma": 0.9}]]}),
                "SequentialLR inside",
            ),
            (
                "SequentialLR",
                json!({"schedulers": [seq, ["ExponentialLR", {"gamma": 0.9}]], "milestones": [4]}),
                "SequentialLR inside",
            ),
            (
                "SequentialLR",
                json!({"schedulers": [chain, ["ExponentialLR", {"gamma": 0.9}]], "milestones": [4]}),
                "ChainedScheduler inside",
            ),
            (
                "ChainedScheduler",
                json!({"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1}]]}),
                "CyclicLR after",
            ),
            (
                "SequentialLR",
                json!({"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["LinearLR", {"total_iters": 0}]], "milestones": [4]}),
                "divides by zero",
            ),
        ] {
            let e = build_schedule("torch", name, &kw, Some(0.1)).err().expect("refused").to_string();
            assert!(e.contains(what), "{name}: {e}");
        }
    }

    /// Every torch scheduler's `last_epoch` (its default -1 only) and `verbose` are accepted.
    #[test]
    fn torch_common_arguments() {
        let s = f("torch", "ExponentialLR", json!({"gamma": 0.5, "last_epoch": -1}), Some(0.1));
        assert_eq!(s.value(1), 0.05);
        // torch 2.15's schedulers no longer take `verbose` (a TypeError there).
        let e = build_schedule("torch", "ExponentialLR", &json!({"gamma": 0.5, "verbose": false}), Some(0.1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("verbose"), "{e}");
        let e =
            build_schedule("torch", "ExponentialLR", &json!({"gamma": 0.5, "last_epoch": 3}), Some(0.1)).err().unwrap();
        assert!(e.to_string().contains("last_epoch") && e.to_string().contains("step 0"), "{e}");
    }

    /// With `total_iters` 0 torch's steps keep the start factor (ConstantLR, LinearLR).
    #[test]
    fn no_iterations_keep_the_factor() {
        for (name, kw) in [
            ("ConstantLR", json!({"factor": 0.5, "total_iters": 0})),
            ("LinearLR", json!({"start_factor": 0.5, "total_iters": 0})),
        ] {
            let s = f("torch", name, kw, Some(0.1));
            assert!([0, 1, 7].iter().all(|&t| (s.value(t) - 0.05).abs() < 1e-15), "{name}");
        }
    }

    #[test]
    fn chained_multiplies_factors() {
        let s = f(
            "torch",
            "ChainedScheduler",
            json!({"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 2}], ["ExponentialLR", {"gamma": 0.9}]]}),
            Some(2.0),
        );
        assert!((s.value(0) - 1.0).abs() < 1e-12);
        assert!((s.value(1) - 0.9).abs() < 1e-12);
        assert!((s.value(2) - 2.0 * 0.81).abs() < 1e-12);
    }

    #[test]
    fn join_schedules_restarts_each_piece() {
        let s = f(
            "optax",
            "join_schedules",
            json!({"schedules": [["constant_schedule", {"value": 1.0}], ["linear_schedule", {"init_value": 0.5, "end_value": 0.0, "transition_steps": 10}]], "boundaries": [3]}),
            None,
        );
        assert_eq!(s.value(2), 1.0);
        assert_eq!(s.value(3), 0.5);
        assert!((s.value(8) - 0.25).abs() < 1e-12);
        // optax zips the later schedules with the boundaries: a boundary without a schedule is
        // never read, and a negative one starts its schedule that many steps in.
        let s = f(
            "optax",
            "join_schedules",
            json!({"schedules": [["constant_schedule", {"value": 1.0}]], "boundaries": [3]}),
            None,
        );
        assert_eq!(s.value(5), 1.0);
        let s = f(
            "optax",
            "join_schedules",
            json!({"schedules": [["constant_schedule", {"value": 1.0}], ["linear_schedule", {"init_value": 0.5, "end_value": 0.0, "transition_steps": 10}]], "boundaries": [-2]}),
            None,
        );
        assert!((s.value(0) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn plateau_reduces_after_patience_and_respects_cooldown_and_min_lr() {
        let config = ReduceLrOnPlateauConfig {
            factor: 0.5,
            patience: 1,
            threshold: 0.0,
            threshold_mode: ThresholdMode::Abs,
            cooldown: 1,
            min_lr: 0.3,
            ..Default::default()
        };
        let mut p = ReduceLrOnPlateau::new(1.0, config).unwrap();
        assert_eq!(p.step(1.0), 1.0); // best
        assert_eq!(p.step(1.0), 1.0); // 1 bad
        assert_eq!(p.step(1.0), 0.5); // 2 bad > patience: reduce, cooldown 1
        assert_eq!(p.step(1.0), 0.5); // cooldown swallows it
        assert_eq!(p.step(1.0), 0.5); // 1 bad
        assert_eq!(p.step(1.0), 0.3); // reduce, clipped at min_lr
        assert_eq!(p.step(0.1), 0.3); // improvement
    }

    /// A plateau scheduler saved before any metric improved on its start (`best` = ±∞: a
    /// checkpoint inside the first epoch, or only NaN metrics seen) reads back the same state
    /// (serde_json writes a non-finite float as `null` and refuses it on reading).
    #[test]
    fn plateau_state_with_an_infinite_best_round_trips_through_json() {
        for mode in [PlateauMode::Min, PlateauMode::Max] {
            let mut p = ReduceLrOnPlateau::new(0.1, ReduceLrOnPlateauConfig { mode, ..Default::default() }).unwrap();
            p.step(f64::NAN);
            let text = serde_json::to_string(&p).unwrap();
            assert!(text.contains("inf"), "{text}");
            let back: ReduceLrOnPlateau = serde_json::from_str(&text).unwrap();
            assert_eq!(back, p);
            p.step(2.0);
            let back: ReduceLrOnPlateau = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(back, p);
        }
    }
}
