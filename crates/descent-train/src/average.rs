//! Weight averaging during training, as torch's `torch.optim.swa_utils`: an exponential moving
//! average of the weights (`AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))`),
//! or stochastic weight averaging (`AveragedModel(model)`, an equal average, with the [`Swalr`]
//! learning rate), and [`update_bn`] to recompute batch norm's running statistics for averaged
//! weights.
//!
//! The averages are flat f32 buffers beside the model's variables; each update is one fused pass
//! over every parameter's storage (read in place, never copied through candle ops), like an
//! optimizer step.

use candle_core::{CpuStorage, Layout, Var};

use crate::cpu::storage_f32s;
use crate::error::{Error, Result};
use crate::model::{Mode, Model};
use crate::rng::Rng;

/// How the averaged weights follow the trained ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AverageKind {
    /// Exponential moving average, updated after every optimizer step:
    /// `ema ← lerp(ema, w, 1 − decay)` (torch `get_ema_multi_avg_fn`), the first update copying.
    /// With `warmup`, the decay of the update after `n` earlier ones is
    /// `min(decay, (1 + n)/(10 + n))`, TensorFlow's `ExponentialMovingAverage(num_updates=n)`
    /// (Keras' and timm's warm-up serve the same purpose with other curves).
    Ema {
        /// The decay.
        decay: f64,
        /// Warm the decay up over the first updates.
        warmup: bool,
    },
    /// Stochastic weight averaging (Izmailov et al. 2018): an equal average of the weights at the
    /// end of each epoch from `start` (1-based) on, `swa ← lerp(swa, w, 1/(n + 1))` (torch
    /// `get_swa_multi_avg_fn`); from the end of epoch `start` the learning rate follows [`Swalr`]
    /// towards `swa_lr` over `anneal_epochs` epochs.
    Swa {
        /// The first epoch averaged (1-based).
        start: usize,
        /// The learning rate SWALR anneals to.
        swa_lr: f64,
        /// Epochs of the annealing.
        anneal_epochs: usize,
        /// The annealing curve.
        anneal: Anneal,
    },
}

/// [`Swalr`]'s annealing curve (torch's `anneal_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anneal {
    /// Cosine annealing (the default).
    Cos,
    /// Linear annealing.
    Linear,
}

impl Anneal {
    /// `cos` or `linear`, torch's names.
    pub fn parse(s: &str) -> Result<Anneal> {
        match s {
            "cos" => Ok(Anneal::Cos),
            "linear" => Ok(Anneal::Linear),
            other => Err(Error::Param(format!("anneal strategy `{other}`: accepted: cos, linear"))),
        }
    }

    /// The name torch gives it.
    pub fn name(self) -> &'static str {
        match self {
            Anneal::Cos => "cos",
            Anneal::Linear => "linear",
        }
    }

    fn at(self, t: f64) -> f64 {
        match self {
            Anneal::Cos => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
            Anneal::Linear => t,
        }
    }
}

/// Weight averaging of a run ([`crate::train::TrainConfig::average`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AverageConfig {
    /// EMA or SWA, with its settings.
    pub kind: AverageKind,
    /// torch's `use_buffers`: average the model's buffers (batch norm's running statistics) too.
    /// Off (torch's default), the averaged model's buffers are copies of the model's at each
    /// update, and at the end of the run [`update_bn`] recomputes them for the averaged weights
    /// (through descent's [`crate::nn::BatchNorm`]: a model with other batch norms takes
    /// `use_buffers`).
    pub use_buffers: bool,
}

impl AverageConfig {
    /// Checks the hyper-parameters, naming each (`decay` in [0, 1] as torch requires).
    pub fn check(&self) -> Result<()> {
        match self.kind {
            AverageKind::Ema { decay, .. } => {
                if !(0.0..=1.0).contains(&decay) {
                    return Err(Error::Param(format!("ema decay {decay}: must be in [0, 1]")));
                }
            }
            AverageKind::Swa { start, swa_lr, .. } => {
                if start == 0 {
                    return Err(Error::Param("swa start epoch 0: epochs count from 1".into()));
                }
                if !(swa_lr.is_finite() && swa_lr >= 0.0) {
                    return Err(Error::Param(format!("swa_lr {swa_lr}: must be a finite number at least 0")));
                }
            }
        }
        Ok(())
    }

    /// `ema` or `swa`: the prefix of the averaged weights' metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            AverageKind::Ema { .. } => "ema",
            AverageKind::Swa { .. } => "swa",
        }
    }
}

/// torch's `SWALR` on one learning rate: constructed at the end of the epoch where averaging
/// starts (torch's constructor step, which leaves the rate), then stepped once per epoch, each
/// step rebuilding the rate the annealing started from out of the current one, as torch does:
///
/// ```text
/// step ← max(1, step) if anneal_epochs = 0
/// prev_α = f(clamp((step − 1)/max(1, anneal_epochs), 0, 1)),  α = f(clamp(step/max(1, anneal_epochs), 0, 1))
/// lr₀ = swa_lr if prev_α = 1 else (lr − prev_α·swa_lr)/(1 − prev_α)
/// lr ← swa_lr·α + lr₀·(1 − α)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Swalr {
    /// The learning rate annealed to.
    pub swa_lr: f64,
    /// Epochs of the annealing (0: at once).
    pub anneal_epochs: usize,
    #[serde(with = "anneal_name")]
    /// The annealing curve.
    pub anneal: Anneal,
    /// torch's `_step_count`: steps taken, the constructor's included.
    pub step_count: u64,
    /// The group's learning rate now.
    pub lr: f64,
}

mod anneal_name {
    use super::Anneal;
    pub fn serialize<S: serde::Serializer>(a: &Anneal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Anneal, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        Anneal::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Swalr {
    /// `SWALR(optimizer, swa_lr, anneal_epochs, anneal_strategy)` over a group whose rate is `lr`:
    /// the constructor's step included.
    pub fn new(lr: f64, swa_lr: f64, anneal_epochs: usize, anneal: Anneal) -> Swalr {
        let mut s = Swalr { swa_lr, anneal_epochs, anneal, step_count: 0, lr };
        s.step();
        s
    }

    /// `scheduler.step()`: the next rate, from the current one.
    pub fn step(&mut self) -> f64 {
        self.step_count += 1;
        let mut step = self.step_count as f64 - 1.0;
        if self.anneal_epochs == 0 {
            step = step.max(1.0);
        }
        let n = self.anneal_epochs.max(1) as f64;
        let prev_alpha = self.anneal.at(((step - 1.0) / n).clamp(0.0, 1.0));
        let lr0 =
            if prev_alpha == 1.0 { self.swa_lr } else { (self.lr - prev_alpha * self.swa_lr) / (1.0 - prev_alpha) };
        let alpha = self.anneal.at((step / n).clamp(0.0, 1.0));
        self.lr = self.swa_lr * alpha + lr0 * (1.0 - alpha);
        self.lr
    }
}

/// torch's `lerp` on f32 (`at::native::lerp`): `a + w·(b − a)` for `|w| < 0.5`, else
/// `b − (b − a)·(1 − w)`.
#[inline(always)]
pub fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// The averaged weights (and buffers) of a model: flat f32 buffers in the model's variable
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightAverage {
    /// What is averaged, and how.
    pub config: AverageConfig,
    /// torch's `n_averaged`: updates so far (0: nothing averaged yet, the buffers empty).
    pub n_averaged: u64,
    /// One buffer per parameter of [`Model::named_vars`], in its order.
    pub params: Vec<Vec<f32>>,
    /// One buffer per buffer of [`Model::named_buffers`], in its order.
    pub buffers: Vec<Vec<f32>>,
    /// SWA's learning rate once it has started.
    pub swalr: Option<Swalr>,
}

/// Reads a variable's storage in place and runs `f` on its values.
fn with_values<T>(var: &Var, name: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = var.as_tensor().storage_and_layout();
    let values = storage_f32s(&storage, layout, name)?;
    Ok(f(values))
}

/// Swaps a variable's values with a buffer of the same length, in place.
struct Swap<'a> {
    values: std::cell::RefCell<&'a mut [f32]>,
    name: &'a str,
}

impl candle_core::InplaceOp1 for Swap<'_> {
    fn name(&self) -> &'static str {
        "descent-swap-average"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let name = self.name;
        let CpuStorage::F32(v) = s else { candle_core::bail!("{name}: must be an f32 tensor") };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{name}: must be contiguous") };
        let mut values = self.values.borrow_mut();
        if b - a != values.len() {
            candle_core::bail!("{name}: {} averaged values for a tensor of {}", values.len(), b - a);
        }
        v[a..b].swap_with_slice(&mut values);
        Ok(())
    }
}

fn swap_into(vars: &[(String, Var)], bufs: &mut [Vec<f32>]) -> Result<()> {
    for ((n, v), b) in vars.iter().zip(bufs.iter_mut()) {
        v.as_tensor().inplace_op1(&Swap { values: std::cell::RefCell::new(b.as_mut_slice()), name: n })?;
    }
    Ok(())
}

impl WeightAverage {
    /// An empty average (nothing averaged yet).
    pub fn new(config: AverageConfig) -> Result<WeightAverage> {
        config.check()?;
        Ok(WeightAverage { config, n_averaged: 0, params: vec![], buffers: vec![], swalr: None })
    }

    /// The decay of the next EMA update (with the warm-up, after `n_averaged` updates).
    pub fn ema_decay(&self) -> Option<f64> {
        match self.config.kind {
            AverageKind::Ema { decay, warmup: false } => Some(decay),
            AverageKind::Ema { decay, warmup: true } => {
                let n = self.n_averaged as f64;
                Some(decay.min((1.0 + n) / (10.0 + n)))
            }
            AverageKind::Swa { .. } => None,
        }
    }

    /// torch's `update_parameters(model)`: the first update copies the model's parameters (and
    /// buffers), later ones average them in, one pass per tensor; buffers are averaged with
    /// `use_buffers`, else copied.
    pub fn update(&mut self, model: &dyn Model) -> Result<()> {
        let vars = model.named_vars();
        let buffers = model.named_buffers();
        let w = match self.config.kind {
            AverageKind::Ema { .. } => (1.0 - self.ema_decay().unwrap_or(0.0)) as f32,
            AverageKind::Swa { .. } => (1.0 / (self.n_averaged as f64 + 1.0)) as f32,
        };
        if self.n_averaged == 0 {
            self.params = vars.iter().map(|(n, v)| with_values(v, n, |x| x.to_vec())).collect::<Result<_>>()?;
            self.buffers = buffers.iter().map(|(n, v)| with_values(v, n, |x| x.to_vec())).collect::<Result<_>>()?;
        } else {
            if self.params.len() != vars.len() || self.buffers.len() != buffers.len() {
                return Err(Error::Param(format!(
                    "the average holds {} parameters and {} buffers, the model {} and {}",
                    self.params.len(),
                    self.buffers.len(),
                    vars.len(),
                    buffers.len()
                )));
            }
            let average = |bufs: &mut [Vec<f32>], vars: &[(String, Var)]| -> Result<()> {
                for ((n, v), avg) in vars.iter().zip(bufs.iter_mut()) {
                    with_values(v, n, |x| {
                        if x.len() != avg.len() {
                            return Err(Error::Param(format!(
                                "`{n}`: {} averaged values, the model's {}",
                                avg.len(),
                                x.len()
                            )));
                        }
                        for (a, &p) in avg.iter_mut().zip(x) {
                            *a = lerp(*a, p, w);
                        }
                        Ok(())
                    })??;
                }
                Ok(())
            };
            average(&mut self.params, &vars)?;
            if self.config.use_buffers {
                average(&mut self.buffers, &buffers)?;
            } else {
                for ((n, v), b) in buffers.iter().zip(self.buffers.iter_mut()) {
                    with_values(v, n, |x| {
                        if x.len() != b.len() {
                            return Err(Error::Param(format!(
                                "`{n}`: {} averaged values, the model's {}",
                                b.len(),
                                x.len()
                            )));
                        }
                        b.copy_from_slice(x);
                        Ok(())
                    })??;
                }
            }
        }
        self.n_averaged += 1;
        Ok(())
    }

    /// Exchanges the model's parameters and buffers with the averaged ones, in place: called
    /// twice, everything is back where it was. Refused before the first update.
    pub fn swap(&mut self, model: &dyn Model) -> Result<()> {
        if self.n_averaged == 0 {
            return Err(Error::Param("nothing averaged yet".into()));
        }
        swap_into(&model.named_vars(), &mut self.params)?;
        swap_into(&model.named_buffers(), &mut self.buffers)
    }

    /// Multiplies the averaged weights by pruning masks (by parameter name): where the weights
    /// are pruned, so is their average. Called where the masks change; in between, the pruned
    /// weights are zero, and so their average stays zero.
    pub fn apply_masks(&mut self, model: &dyn Model, masks: &std::collections::HashMap<String, Vec<f32>>) {
        if self.n_averaged == 0 {
            return;
        }
        for ((n, _), avg) in model.named_vars().iter().zip(self.params.iter_mut()) {
            if let Some(m) = masks.get(n).filter(|m| m.len() == avg.len()) {
                avg.iter_mut().zip(m).for_each(|(x, &k)| *x *= k);
            }
        }
    }

    /// Runs `f` with the averaged weights in the model, then puts the model's own back (also when
    /// `f` fails).
    pub fn with_averaged<T>(&mut self, model: &dyn Model, f: impl FnOnce(&dyn Model) -> Result<T>) -> Result<T> {
        self.swap(model)?;
        let out = f(model);
        self.swap(model)?;
        out
    }
}

thread_local! {
    /// The momentum every batch norm of this thread uses instead of its own while set
    /// ([`update_bn`]'s cumulative average).
    static BN_MOMENTUM: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
    /// How many batch-norm forward passes took that momentum (whether a model's batch norms are
    /// descent's, which honour it).
    static BN_OVERRIDDEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The batch-norm momentum override of this thread, if any (read by [`crate::nn::BatchNorm`]).
pub(crate) fn bn_momentum_override() -> Option<f64> {
    let m = BN_MOMENTUM.with(|c| c.get());
    if m.is_some() {
        BN_OVERRIDDEN.with(|c| c.set(c.get() + 1));
    }
    m
}

/// Whether a buffer is batch normalization's running statistics, by torch's names.
fn is_running_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Every buffer of a model copied, to be put back: a training-mode forward pass moves not only
/// the running statistics but others too (quantization-aware training's observers, counters).
struct BufferSnapshot(Vec<(candle_core::Var, candle_core::Tensor)>);

impl BufferSnapshot {
    fn take(model: &dyn Model) -> Result<Self> {
        let saved = model
            .named_buffers()
            .into_iter()
            .map(|(_, v)| {
                let copy = v.as_tensor().copy()?;
                Ok((v, copy))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self(saved))
    }

    fn restore(&self) -> Result<()> {
        for (v, saved) in &self.0 {
            v.set(saved)?;
        }
        Ok(())
    }
}

struct MomentumGuard;
impl Drop for MomentumGuard {
    fn drop(&mut self) {
        BN_MOMENTUM.with(|c| c.set(None));
    }
}

/// Whether [`update_bn`] can recompute `model`'s running statistics, asked before a run that will
/// need it at its end: one forward pass in training mode over its first batch of `data` (of
/// `batch_size` samples) with the cumulative momentum set, every buffer put back exactly
/// afterwards. Refused as `update_bn`
/// refuses (no batch norm took the momentum); nothing to check without running statistics.
pub fn check_update_bn(model: &dyn Model, data: &dyn crate::dataset::BatchSource, batch_size: usize) -> Result<()> {
    let Some(first) = model.named_buffers().into_iter().map(|(n, _)| n).find(|n| is_running_statistic(n)) else {
        return Ok(());
    };
    if data.is_empty() {
        return Ok(());
    }
    let before = BufferSnapshot::take(model)?;
    let probe = || -> Result<bool> {
        let _guard = MomentumGuard;
        BN_MOMENTUM.with(|c| c.set(Some(1.0)));
        let taken = BN_OVERRIDDEN.with(|c| c.get());
        let indices: Vec<u32> = (0..data.len().min(batch_size.max(1)) as u32).collect();
        let (x, _) = data.batch(&indices)?;
        model.forward(&x, Mode::Train, &mut Rng::new(0))?;
        Ok(BN_OVERRIDDEN.with(|c| c.get()) > taken)
    };
    let taken = probe();
    before.restore()?;
    if !taken? {
        return Err(Error::Param(format!(
            "the model's running statistics ({first}, …) are not those of descent's nn::BatchNorm, so update_bn \
             cannot recompute them for the averaged weights at the run's end: average them too (use_buffers)"
        )));
    }
    Ok(())
}

/// torch's `update_bn(loader, model)`: resets every batch norm's running statistics (buffers
/// named `…running_mean` to 0, `…running_var` to 1; other buffers are left alone) and recomputes
/// them in one pass over `data` in batches of `batch_size` (in order), the model in training mode
/// with momentum `None`, i.e. the cumulative average of the batches' statistics (factor `1/k` at
/// the `k`-th batch). The batch norms must be [`crate::nn::BatchNorm`]s, which take that
/// momentum: a model whose running statistics are another layer's (the functional
/// [`crate::nn::batch_norm`], candle-nn's) is refused with its buffers as they were. A model
/// without running statistics is left as it is. Returns the number of batches.
pub fn update_bn(
    model: &dyn Model,
    data: &dyn crate::dataset::BatchSource,
    batch_size: usize,
    seed: u64,
) -> Result<usize> {
    let buffers: Vec<(String, candle_core::Var)> =
        model.named_buffers().into_iter().filter(|(n, _)| is_running_statistic(n)).collect();
    if buffers.is_empty() {
        return Ok(0);
    }
    if batch_size == 0 {
        return Err(Error::Param("update_bn: batch size must be at least 1".into()));
    }
    let before = BufferSnapshot::take(model)?;
    let recompute = || -> Result<usize> {
        for (n, v) in &buffers {
            let reset = if n.ends_with("running_var") { 1.0 } else { 0.0 };
            v.set(&v.as_tensor().ones_like()?.affine(reset, 0.0)?)?;
        }
        let _guard = MomentumGuard;
        // Dropout draws (none in the batch-norm models) from a generator of their own.
        let mut rng = Rng::new(seed ^ 0x5741_5f62_6e5f_7570);
        let (n, mut start, mut k) = (data.len(), 0, 0usize);
        while start < n {
            let len = batch_size.min(n - start);
            let indices: Vec<u32> = (start as u32..(start + len) as u32).collect();
            let (x, _) = data.batch(&indices)?;
            k += 1;
            BN_MOMENTUM.with(|c| c.set(Some(1.0 / k as f64)));
            let taken = BN_OVERRIDDEN.with(|c| c.get());
            model.forward(&x, Mode::Train, &mut rng)?;
            if BN_OVERRIDDEN.with(|c| c.get()) == taken {
                return Err(Error::Param(format!(
                    "update_bn: the model's running statistics ({}, …) are not those of descent's nn::BatchNorm, \
                     which alone recomputes them as a cumulative average",
                    buffers[0].0
                )));
            }
            start += len;
        }
        Ok(k)
    };
    let out = recompute();
    if out.is_err() {
        before.restore()?;
    }
    out
}
