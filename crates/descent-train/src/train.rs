//! The training loop: epochs of mini-batches (forward, loss, backward, optimizer step), evaluation
//! on the test set after each epoch, termination by epochs or steps.

use std::time::Instant;

use candle_core::Tensor;
use serde_json::Value;

use crate::augment::Affine;
use crate::average::{AverageConfig, AverageKind, Swalr, WeightAverage};
use crate::checkpoint::{AverageState, BestEpoch, Checkpoint, EpochProgress};
use crate::data::Dataset;
use crate::dataset::{BatchSource, EpochSampler};
use crate::error::{Error, Result};
use crate::model::{correct, cross_entropy, mse, Mode, Model};
use crate::optim::{OptimizerConfig, VarOptimizer};
use crate::parallel::{any, broadcast_u64, share, Communicator, Local};
use crate::precision::{Autocast, Precision};
use crate::rng::Rng;

/// The loss a workload trains on.
#[derive(Clone)]
pub enum Loss {
    /// Classification: logits against class indices; accuracy is reported.
    CrossEntropy,
    /// Regression.
    Mse,
    /// A loss of your own (binary cross-entropy, a focal or a sequence loss), made with
    /// [`Loss::custom`]: the model's output and the batch's targets to a scalar, the mean over the
    /// batch's samples as the built-in losses are (the loop weights each batch's loss by its size:
    /// a short last batch, the ranks' shares, accumulated micro-batches). Every feature of the
    /// loop applies; the evaluation reports the loss, no accuracy.
    Custom(LossFn),
}

/// A loss of your own, for [`Loss::Custom`]: `(output, targets)` to a scalar tensor. A closure,
/// so it may hold its own settings (a focal loss's γ, class weights); shared, not copied, by the
/// data-parallel replicas.
pub type LossFn = std::sync::Arc<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

impl Loss {
    /// [`Loss::Custom`] of a function or closure: `Loss::custom(move |out, y| focal(out, y, gamma))`.
    pub fn custom(f: impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static) -> Loss {
        Loss::Custom(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::CrossEntropy => f.write_str("CrossEntropy"),
            Loss::Mse => f.write_str("Mse"),
            Loss::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Two custom losses are equal when they are the same function object (one [`LossFn`] cloned),
/// not when they compute the same thing.
impl PartialEq for Loss {
    fn eq(&self, other: &Loss) -> bool {
        match (self, other) {
            (Loss::CrossEntropy, Loss::CrossEntropy) | (Loss::Mse, Loss::Mse) => true,
            (Loss::Custom(a), Loss::Custom(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Optimizer steps in an epoch of `samples`, batches of `batch_size` accumulated `accumulate` at a
/// time (the last batch short).
pub fn steps_per_epoch(samples: usize, batch_size: usize, accumulate: usize) -> u64 {
    samples.div_ceil((batch_size * accumulate).max(1)) as u64
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Optimizer by descent name (`adam`, `torch.sgd`, `optax.lion`, …).
    pub optimizer: String,
    /// Learning rate (the library's `lr` / `learning_rate`); `None` keeps the library default.
    pub lr: Option<f64>,
    /// Other keyword arguments, in the library's own names.
    pub hparams: Value,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimizer steps (within an epoch too).
    pub max_steps: Option<u64>,
    /// Samples per micro-batch: a step takes `accumulate` of them (its global batch has
    /// `batch_size × accumulate` samples), split across the ranks of a data-parallel run.
    pub batch_size: usize,
    /// Gradient accumulation (PyTorch's `loss / K; loss.backward()` over K micro-batches, then
    /// one `optimizer.step()`): each optimizer step averages the gradients of this many
    /// micro-batches of `batch_size`, each weighted by its share of the step's samples (1/K when
    /// they are full), so a step equals one on a batch of `batch_size × accumulate` up to float
    /// rounding. Clipping sees the accumulated gradient; schedules and `max_steps` count
    /// optimizer steps. 1: no accumulation.
    pub accumulate: usize,
    /// Seed of the batch order, dropout and augmentation (the model comes initialized: its seed is
    /// the caller's).
    pub seed: u64,
    /// The loss minimized.
    pub loss: Loss,
    /// Clip gradients by their global norm (optax `clip_by_global_norm`) before the optimizer.
    pub clip_norm: Option<f64>,
    /// Clip each gradient element to `[−v, v]` (optax `clip`) before the optimizer.
    pub clip_value: Option<f64>,
    /// L1 and L2 penalties added to the loss: `l1·Σ|w| + l2/2·Σw²` over every parameter.
    pub l1: f64,
    /// The L2 penalty's coefficient (see `l1`).
    pub l2: f64,
    /// Stop when the test loss has not improved by `min_delta` for this many epochs, and restore
    /// the best weights (and the model's buffers: batch norm's running statistics). Epochs are
    /// counted from the best one; a test loss that is not a number is never the best.
    pub patience: Option<usize>,
    /// The least decrease of the test loss that counts as an improvement (see `patience`).
    pub min_delta: f64,
    /// Stop once the test accuracy reaches this fraction.
    pub target_accuracy: Option<f64>,
    /// Stop when the epoch's training loss changes by less than this from the previous epoch.
    pub min_loss_change: Option<f64>,
    /// The learning-rate multiplier over the run.
    pub schedule: LrSchedule,
    /// Parameter groups by name: parameters whose name contains the pattern get these keyword
    /// arguments on top of `hparams` (first matching group wins), e.g. `("bias", {"weight_decay": 0})`.
    pub groups: Vec<(String, Value)>,
    /// Evaluations within epochs too, reported to [`Hooks::on_eval`] (which may stop the run
    /// there: a pruned trial of a sweep).
    pub eval_at: EvalAt,
    /// Report each parameter's gradient norm at every step ([`StepMetrics::param_grad_norms`]).
    pub log_grad_norms: bool,
    /// Pruning masks applied after every optimizer step (and once before the first), and gradual
    /// pruning ([`crate::prune::Pruner`]).
    pub pruner: Option<std::sync::Arc<crate::prune::Pruner>>,
    /// Keep an average of the weights (EMA or SWA, see [`crate::average`]), evaluated beside the
    /// trained weights after each epoch ([`EpochMetrics::average`]) and saved in checkpoints.
    pub average: Option<AverageConfig>,
    /// Random rotations and shifts of the training images ([`crate::augment`]), drawn from the
    /// seed, the epoch and the sample's position in it: a resumed run augments as one never
    /// stopped.
    pub augment: Option<Affine>,
    /// The arithmetic of the matrix products (linear layers, convolutions, attention) in the
    /// run's forward and backward passes and evaluations ([`crate::precision`]): bf16 rounds
    /// their operands to bfloat16 and sums in f32, as `torch.autocast("cpu", torch.bfloat16)`;
    /// parameters, gradients, optimizer state and losses stay f32 either way.
    pub precision: Precision,
    /// Shard the optimizer across the ranks of a data-parallel run (ZeRO stage 1, see
    /// [`crate::optim::shard`]): each rank keeps state for its range of the parameters alone.
    /// Refused on one process and for optimizers that are not elementwise.
    pub shard_optimizer: bool,
}

impl TrainConfig {
    /// Optimizer steps in an epoch over `samples` training samples: a step takes
    /// `batch_size × accumulate` of them (the last step of an epoch fewer).
    pub fn steps_per_epoch(&self, samples: usize) -> u64 {
        steps_per_epoch(samples, self.batch_size, self.accumulate)
    }

    /// Refuses settings the loop cannot honour, naming the field: penalties and thresholds that
    /// are negative or not finite, a `min_delta` without `patience` (it is early stopping's), a
    /// target accuracy outside (0, 1] (a fraction, not a percentage), evaluations every 0 steps,
    /// a zero batch size or a step of more samples than a count holds, and a schedule's own
    /// arguments ([`LrSchedule::check`]). [`train_with`] asks it first.
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Param("batch size must be at least 1".into()));
        }
        if self.accumulate == 0 {
            return Err(Error::Param("accumulate must be at least 1 micro-batch per step".into()));
        }
        if self.batch_size.checked_mul(self.accumulate).is_none() {
            return Err(Error::Param(format!(
                "batch size {} × accumulate {}: more samples a step than a count holds",
                self.batch_size, self.accumulate
            )));
        }
        for (field, v) in [
            ("l1", Some(self.l1)),
            ("l2", Some(self.l2)),
            ("min_delta", Some(self.min_delta)),
            ("min_loss_change", self.min_loss_change),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Error::Param(format!("{field} {v}: a finite number of at least 0")));
            }
        }
        if self.patience.is_none() && self.min_delta != 0.0 {
            return Err(Error::Param(format!(
                "min_delta {}: it is early stopping's threshold; set patience too",
                self.min_delta
            )));
        }
        if let Some(t) = self.target_accuracy.filter(|t| !(*t > 0.0 && *t <= 1.0)) {
            return Err(Error::Param(format!("target_accuracy {t}: a fraction in (0, 1] (0.99 for 99%)")));
        }
        if self.pruner.as_ref().is_some_and(|p| p.is_gradual()) {
            let stops = [
                (self.patience.is_some(), "early stopping (patience)"),
                (self.target_accuracy.is_some(), "a target accuracy"),
                (self.min_loss_change.is_some(), "min_loss_change"),
            ];
            if let Some((_, what)) = stops.iter().find(|(on, _)| *on) {
                return Err(Error::Param(format!(
                    "gradual pruning with {what}: a run stopped before the pruning's end would keep a model \
                     less sparse than asked for (and early stopping would restore a less pruned epoch)"
                )));
            }
        }
        if self.eval_at == EvalAt::Every(0) {
            return Err(Error::Param("eval_at Every(0): evaluate every 1 step or more".into()));
        }
        self.schedule.check()
    }

    /// A plain config: no clipping, penalties or early stopping.
    pub fn new(optimizer: &str, lr: Option<f64>, epochs: usize, batch_size: usize, loss: Loss) -> Self {
        TrainConfig {
            optimizer: optimizer.into(),
            lr,
            hparams: Value::Object(Default::default()),
            epochs,
            max_steps: None,
            batch_size,
            accumulate: 1,
            seed: 0,
            loss,
            clip_norm: None,
            clip_value: None,
            l1: 0.0,
            l2: 0.0,
            patience: None,
            min_delta: 0.0,
            target_accuracy: None,
            min_loss_change: None,
            schedule: LrSchedule::Constant,
            groups: vec![],
            eval_at: EvalAt::EpochEnds,
            log_grad_norms: false,
            pruner: None,
            average: None,
            augment: None,
            precision: Precision::F32,
            shard_optimizer: false,
        }
    }
}

/// A torch or optax schedule from the compatibility specs, driving the training loop.
#[derive(Clone)]
pub struct SpecSchedule {
    /// `library.Name`, for display.
    pub name: String,
    /// The learning rate at each step.
    pub schedule: std::sync::Arc<dyn descent_core::schedule::Schedule>,
    /// The optimizer's learning rate: the schedule's value divided by it is the multiplier.
    pub base_lr: f64,
    /// Stepped once per epoch (torch's usual `scheduler.step()` placement) instead of per batch.
    pub per_epoch: bool,
}

impl std::fmt::Debug for SpecSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (per {})", self.name, if self.per_epoch { "epoch" } else { "step" })
    }
}

impl PartialEq for SpecSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.base_lr == other.base_lr && self.per_epoch == other.per_epoch
    }
}

impl SpecSchedule {
    /// Checks the schedule over a run of `n` steps (epochs, [`Self::per_epoch`]): defined that far
    /// (torch `OneCycleLR` refuses to step past its `total_steps`; descent would wrap around its
    /// values), and every learning rate a finite number ≥ 0 (a schedule's arguments can make it NaN,
    /// e.g. a decay over 0 steps, or negative). The error names the schedule and the run's length.
    pub fn check_run(&self, n: u64) -> Result<()> {
        let unit = if self.per_epoch { "epochs (stepped per epoch)" } else { "steps" };
        descent_core::schedule::check_steps(self.schedule.as_ref(), n)
            .map_err(|e| Error::Param(format!("schedule {}: the run takes {n} {unit}: {e}", self.name)))?;
        for t in 0..n.min(10_000_000) {
            let v = self.schedule.value(t);
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::Param(format!(
                    "schedule {}: the learning rate at step {t} would be {v}; check its arguments",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Builds `library.Name` (e.g. `torch.OneCycleLR`, `optax.warmup_cosine_decay_schedule`) with
    /// its keyword arguments; torch schedules get `base_lr` as the optimizer's learning rate.
    pub fn build(name: &str, kwargs: &Value, base_lr: f64, per_epoch: bool) -> Result<SpecSchedule> {
        let (lib, n) = name.split_once('.').ok_or_else(|| {
            Error::Param(format!(
                "schedule `{name}`: expected library.Name (torch.StepLR, optax.cosine_decay_schedule)"
            ))
        })?;
        match descent_core::spec::build_schedule(lib, n, kwargs, Some(base_lr))? {
            descent_core::spec::ScheduleSpec::Function(f) => {
                Ok(SpecSchedule { name: name.to_string(), schedule: std::sync::Arc::from(f), base_lr, per_epoch })
            }
            descent_core::spec::ScheduleSpec::Plateau(_) => {
                Err(Error::Param("ReduceLROnPlateau: use --schedule plateau (it follows the test loss)".into()))
            }
        }
    }
}

/// A learning-rate schedule of the training loop, as a multiplier of the optimizer's learning rate
/// set before each step (torch's scheduler model: it rewrites the group's `lr`).
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// The optimizer's learning rate throughout.
    Constant,
    /// Cosine decay to 0 over the run, per step (CosineAnnealingLR with T_max = all steps).
    Cosine,
    /// Linear warm-up over this fraction of the steps, then cosine decay to 0.
    WarmupCosine {
        /// Fraction of the steps spent warming up.
        warmup: f64,
    },
    /// nanoGPT's `get_lr` as a multiplier: linear warm-up `(t + 1)/(warmup + 1)` for the first
    /// `warmup` steps, then cosine decay from 1 to `min_scale` at step `decay` (the end of the run
    /// when `None`), and `min_scale` after it. Unlike [`LrSchedule::WarmupCosine`] its shape does
    /// not depend on the run's length once `decay` is set, so a run can be continued past it.
    WarmupCosineTo {
        /// Steps of the warm-up.
        warmup: u64,
        /// The step at which the decay ends; `None`: the end of the run.
        decay: Option<u64>,
        /// The multiplier after the decay.
        min_scale: f64,
    },
    /// One cycle over the run (torch OneCycleLR defaults: 30% up, cosine, ÷25 then ÷10⁴).
    OneCycle,
    /// Linear decay to 0, per step.
    Linear,
    /// ×`gamma` after each epoch (ExponentialLR stepped per epoch).
    Exponential {
        /// The factor per epoch.
        gamma: f64,
    },
    /// ×`gamma` every `every` epochs (StepLR stepped per epoch).
    Step {
        /// Epochs between two reductions.
        every: usize,
        /// The factor of each reduction.
        gamma: f64,
    },
    /// ×`factor` after `patience` epochs without test-loss improvement (ReduceLROnPlateau).
    Plateau {
        /// The factor of each reduction.
        factor: f64,
        /// Epochs without improvement before a reduction.
        patience: u64,
    },
    /// A torch or optax schedule by name.
    Spec(SpecSchedule),
}

impl LrSchedule {
    /// The names the command line accepts.
    pub const NAMES: &'static [&'static str] =
        &["constant", "cosine", "warmup_cosine", "onecycle", "linear", "exponential", "step", "plateau"];

    /// By name, with the defaults a user of torch would expect.
    pub fn parse(s: &str) -> Result<LrSchedule> {
        Ok(match s {
            "constant" | "none" => LrSchedule::Constant,
            "cosine" => LrSchedule::Cosine,
            "warmup_cosine" => LrSchedule::WarmupCosine { warmup: 0.05 },
            "onecycle" => LrSchedule::OneCycle,
            "linear" => LrSchedule::Linear,
            "exponential" => LrSchedule::Exponential { gamma: 0.9 },
            "step" => LrSchedule::Step { every: 1, gamma: 0.5 },
            "plateau" => LrSchedule::Plateau { factor: 0.1, patience: 2 },
            other => {
                return Err(Error::Param(format!(
                    "unknown schedule `{other}`; accepted: {}",
                    LrSchedule::NAMES.join(", ")
                )))
            }
        })
    }

    /// Refuses values no schedule can follow, naming the field: a warm-up fraction outside
    /// [0, 1], factors that are negative or not finite, a step of 0 epochs.
    pub fn check(&self) -> Result<()> {
        let factor = |what: &str, x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(())
            } else {
                Err(Error::Param(format!("schedule `{what}` {x}: a finite factor of at least 0")))
            }
        };
        match *self {
            LrSchedule::WarmupCosine { warmup } if !(0.0..=1.0).contains(&warmup) => Err(Error::Param(format!(
                "schedule `warmup` {warmup}: the fraction of the steps spent warming up, in [0, 1]"
            ))),
            LrSchedule::WarmupCosineTo { min_scale, .. } => factor("min_scale", min_scale),
            LrSchedule::Exponential { gamma } => factor("gamma", gamma),
            LrSchedule::Step { every: 0, .. } => Err(Error::Param("schedule `every` 0: at least 1 epoch".into())),
            LrSchedule::Step { gamma, .. } => factor("gamma", gamma),
            LrSchedule::Plateau { factor: f, .. } if !(f.is_finite() && (0.0..1.0).contains(&f)) => {
                Err(Error::Param(format!("schedule `factor` {f}: in [0, 1)")))
            }
            _ => Ok(()),
        }
    }

    /// The multiplier at `step` of `total` steps, in `epoch` (1-based; 0 reads as 1), for per-step and
    /// per-epoch schedules (plateau is driven by the metric instead).
    pub fn multiplier(&self, step: u64, total: u64, epoch: usize) -> f64 {
        let (t, n) = (step as f64, total.max(1) as f64);
        match self {
            LrSchedule::Constant | LrSchedule::Plateau { .. } => 1.0,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t.min(n) / n).cos()),
            &LrSchedule::WarmupCosine { warmup } => {
                let w = (warmup * n).round().max(1.0);
                if t < w {
                    (t + 1.0) / w
                } else {
                    0.5 * (1.0 + (std::f64::consts::PI * ((t - w) / (n - w).max(1.0)).min(1.0)).cos())
                }
            }
            &LrSchedule::WarmupCosineTo { warmup, decay, min_scale } => {
                let decay = decay.unwrap_or(total.max(1)) as f64;
                let w = warmup as f64;
                if t < w {
                    (t + 1.0) / (w + 1.0)
                } else if t > decay {
                    min_scale
                } else {
                    let ratio = if decay > w { (t - w) / (decay - w) } else { 1.0 };
                    min_scale + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (1.0 - min_scale)
                }
            }
            LrSchedule::OneCycle => descent_core::schedule::onecycle_lr(descent_core::schedule::OneCycleLr {
                max_lr: 1.0,
                total_steps: total.max(1),
                pct_start: 0.3,
                anneal_strategy: descent_core::schedule::Anneal::Cos,
                div_factor: 25.0,
                final_div_factor: 1e4,
                three_phase: false,
            })
            .map(|s| s.value(step.min(total.saturating_sub(1))))
            .unwrap_or(1.0),
            LrSchedule::Linear => (1.0 - t / n).max(0.0),
            &LrSchedule::Exponential { gamma } => gamma.powi(epoch.max(1) as i32 - 1),
            &LrSchedule::Step { every, gamma } => gamma.powi((epoch.saturating_sub(1) / every.max(1)) as i32),
            LrSchedule::Spec(ref s) => {
                let t = if s.per_epoch { (epoch as u64).saturating_sub(1) } else { step };
                s.schedule.value(t) / s.base_lr
            }
        }
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every epoch ran.
    Epochs,
    /// The step limit was reached.
    Steps,
    /// No improvement for `patience` epochs; the best epoch's weights were restored.
    EarlyStopping {
        /// The epoch whose weights were restored.
        best_epoch: usize,
    },
    /// The test accuracy reached the target.
    TargetAccuracy,
    /// The training loss changed by less than the threshold.
    Converged,
    /// A hook asked to stop after an evaluation (a pruned trial), at this step.
    Requested {
        /// The step after which the run stopped.
        step: u64,
    },
}

/// When the loop evaluates besides each epoch's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalAt {
    /// Only at epoch ends.
    EpochEnds,
    /// Every this many steps too.
    Every(u64),
    /// At these steps too (a sweep's rungs).
    Steps(Vec<u64>),
}

impl EvalAt {
    fn at(&self, step: u64) -> bool {
        match self {
            EvalAt::EpochEnds => false,
            EvalAt::Every(k) => *k > 0 && step.is_multiple_of(*k),
            EvalAt::Steps(s) => s.contains(&step),
        }
    }
}

/// A hook's answer to an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on training.
    Continue,
    /// End the run after this evaluation.
    Stop,
}

/// A mid-epoch evaluation ([`TrainConfig::eval_at`]) on the evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalMetrics {
    /// The epoch (from 1).
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// The loss on the evaluation set.
    pub test_loss: f64,
    /// `None` for regression.
    pub test_accuracy: Option<f64>,
}

/// What one epoch gave.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// The epoch (from 1).
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub steps: u64,
    /// The epoch's mean training loss.
    pub train_loss: f64,
    /// The loss on the test set.
    pub test_loss: f64,
    /// `None` for regression.
    pub test_accuracy: Option<f64>,
    /// Seconds the epoch's training took (its batches, steps and hooks; its evaluations, at its
    /// end and within it, not counted).
    pub seconds: f64,
    /// Training samples per second.
    pub samples_per_s: f64,
    /// The learning-rate multiplier in force at the end of the epoch.
    pub lr_scale: f64,
    /// The learning rate in force at the end of the epoch, read back from the optimizer
    /// ([`VarOptimizer::learning_rate`]; `None` when it holds no constant rate).
    pub lr: Option<f64>,
    /// The averaged weights' evaluation ([`TrainConfig::average`]), once anything is averaged.
    pub average: Option<AverageMetrics>,
}

/// The evaluation of a run's averaged weights at an epoch's end.
#[derive(Debug, Clone, PartialEq)]
pub struct AverageMetrics {
    /// `ema` or `swa`.
    pub label: &'static str,
    /// The loss of the averaged weights on the evaluation set.
    pub test_loss: f64,
    /// `None` for regression.
    pub test_accuracy: Option<f64>,
    /// Updates averaged so far.
    pub n_averaged: u64,
    /// Batches of the training data that recomputed batch norm's running statistics for the
    /// averaged weights before this evaluation ([`crate::average::update_bn`], at the end of the
    /// run); 0 when they were not recomputed.
    pub bn_batches: usize,
}
/// What one optimizer step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// The epoch (from 1).
    pub epoch: usize,
    /// The batch within the epoch (from 0) and the batches per epoch.
    pub batch: usize,
    /// Batches per epoch (see `batch`).
    pub batches: usize,
    /// Optimizer steps taken so far, this one included.
    pub step: u64,
    /// Samples in the batch.
    pub samples: usize,
    /// The batch's loss (with any L1/L2 penalty).
    pub loss: f32,
    /// The learning-rate multiplier the step used.
    pub lr_scale: f64,
    /// The learning rate the step used, read back from the optimizer
    /// ([`VarOptimizer::learning_rate`]; `None` when it holds no constant rate).
    pub lr: Option<f64>,
    /// The global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// With [`TrainConfig::log_grad_norms`], each parameter's gradient L2 norm by name, in the
    /// model's order (input side first): where gradients vanish or explode. Empty otherwise.
    pub param_grad_norms: Vec<(String, f64)>,
}

/// Each parameter's gradient L2 norm (0 for a parameter without gradient), in model order.
pub(crate) fn param_grad_norms_of(
    model: &dyn Model,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<(String, f64)>> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| {
            let norm = match grads.get(v.as_tensor()) {
                Some(g) => (g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt(),
                None => 0.0,
            };
            Ok((n, norm))
        })
        .collect()
}

/// The optimizer settings of a config (without a schedule: the loop sets the multiplier).
pub fn optimizer_config(cfg: &TrainConfig) -> OptimizerConfig {
    OptimizerConfig {
        optimizer: cfg.optimizer.clone(),
        lr: cfg.lr,
        hparams: cfg.hparams.clone(),
        groups: cfg.groups.clone(),
        clip_norm: cfg.clip_norm,
        clip_value: cfg.clip_value,
        schedule: None,
        non_finite: crate::NonFinite::Propagate,
    }
}

/// Whether the config's optimizer has a learning-rate argument of its own, asked on the model's
/// parameters (a composition's per-parameter lists fit them).
fn takes_own_rate(model: &dyn Model, cfg: &TrainConfig) -> bool {
    let shapes: Vec<Vec<usize>> = model.named_vars().iter().map(|(_, v)| v.dims().to_vec()).collect();
    match descent_core::spec::resolve_optimizer(&cfg.optimizer) {
        Ok((lib, name)) => descent_core::spec::takes_learning_rate_for(lib, &name, &cfg.hparams, &shapes),
        Err(_) => true,
    }
}

/// Builds the optimizer of a config over a model's parameters (through [`OptimizerConfig`]:
/// groups by name, clipping). A schedule sets each group's rate to its base times the
/// multiplier before every step ([`VarOptimizer::set_lr_scale`], as torch's `LRScheduler` sets
/// each group's `lr`), so the optimizer reacts as its library does (ASGD's `eta` follows the
/// rate; Adam's moments are not rescaled); one without a rate it can set is refused here.
pub fn optimizer_for(model: &dyn Model, cfg: &TrainConfig) -> Result<VarOptimizer> {
    optimizer_on(model, cfg, &Local)
}

/// [`optimizer_for`] on the ranks of `comm`: sharded across them with
/// [`TrainConfig::shard_optimizer`] (every rank calls it then; refused on one process).
pub fn optimizer_on(model: &dyn Model, cfg: &TrainConfig, comm: &dyn Communicator) -> Result<VarOptimizer> {
    let config = optimizer_config(cfg);
    let mut opt = if cfg.shard_optimizer {
        VarOptimizer::for_vars_sharded(model.named_vars(), &config, comm)?
    } else {
        VarOptimizer::for_vars(model.named_vars(), &config)?
    };
    // Pruning masks the weights the optimizer steps; evaluated weights kept apart (schedule-free's
    // average, Lookahead's slow weights) would stay dense, and the model evaluated, saved and read
    // afterwards with them.
    if cfg.pruner.is_some() && opt.evaluates_other_weights()? {
        return Err(Error::Param(format!(
            "pruning masks the weights `{}` steps, and it evaluates others (schedule-free's average, Lookahead's \
             slow weights), which the masks would not reach: prune with another optimizer",
            cfg.optimizer
        )));
    }
    if let Some(AverageConfig { kind: AverageKind::Swa { .. }, .. }) = cfg.average {
        match cfg.lr {
            None if !takes_own_rate(model, cfg) => {
                return Err(Error::Param(format!(
                    "SWA anneals the run's learning rate towards swa_lr, and `{}` has none of its own (its links \
                     hold their rates): average with EMA, or train with an optimizer that has a learning rate",
                    cfg.optimizer
                )))
            }
            None => {
                return Err(Error::Param(
                    "SWA anneals the run's learning rate towards swa_lr: give the run its rate (lr), which SWALR \
                     starts from"
                        .into(),
                ))
            }
            Some(l) if !(l > 0.0 && l.is_finite()) => {
                return Err(Error::Param(
                    "SWA anneals the learning rate towards swa_lr: the run needs a learning rate above 0".into(),
                ))
            }
            Some(_) => {}
        }
        if !opt.has_scalable_lr() {
            return Err(Error::Param(format!(
                "`{}` has no learning rate that SWA's schedule (SWALR) can set",
                cfg.optimizer
            )));
        }
        opt.set_lr_scale(1.0)?;
    }
    if cfg.schedule != LrSchedule::Constant {
        if !opt.has_scalable_lr() {
            return Err(Error::Param(format!(
                "`{}` has no learning rate a schedule can set (torch Rprop reads lr only for its first step sizes; \
                 a rate given as a schedule, or made one by the optimizer's own warm-up (`warmup_steps`), sets itself)",
                cfg.optimizer
            )));
        }
        // The optimizer's own refusals (a rate it does not take) as they are.
        opt.set_lr_scale(1.0)?;
    }
    Ok(opt)
}

/// The loss plus the L1 and L2 penalties of the config.
pub(crate) fn penalized(loss: Tensor, model: &dyn Model, cfg: &TrainConfig) -> Result<Tensor> {
    let mut loss = loss;
    if cfg.l1 != 0.0 || cfg.l2 != 0.0 {
        for (_, v) in model.named_vars() {
            let t = v.as_tensor();
            if cfg.l1 != 0.0 {
                loss = (loss + (t.abs()?.sum_all()? * cfg.l1)?)?;
            }
            if cfg.l2 != 0.0 {
                loss = (loss + (t.sqr()?.sum_all()? * (cfg.l2 / 2.0))?)?;
            }
        }
    }
    Ok(loss)
}

/// What a step of a closure-driven optimizer reports: the loss the step started from, and the
/// gradient norms of its first evaluation.
pub(crate) struct ClosureStep {
    pub loss: f32,
    pub grad_norm: f64,
    pub param_grad_norms: Vec<(String, f64)>,
}

/// One gradient step on one batch: the penalized loss of the model's output in training mode
/// (`loss_of_output`), its backward pass, the gradient norm before clipping and the optimizer's
/// step. A non-finite loss stops the run before the parameters move.
pub(crate) fn gradient_step(
    model: &dyn Model,
    opt: &mut VarOptimizer,
    cfg: &TrainConfig,
    x: &Tensor,
    rng: &mut Rng,
    loss_of_output: &dyn Fn(&Tensor) -> Result<Tensor>,
    step: u64,
) -> Result<ClosureStep> {
    let out = model.forward(x, Mode::Train, rng)?;
    let loss = penalized(loss_of_output(&out)?, model, cfg)?;
    let l = loss.to_scalar::<f32>()?;
    if !l.is_finite() {
        return Err(Error::Param(format!("loss is {l} at step {step}: training stopped")));
    }
    let grads = loss.backward()?;
    let grad_norm = opt.grad_norm(&grads)?;
    let param_grad_norms = if cfg.log_grad_norms { param_grad_norms_of(model, &grads)? } else { vec![] };
    opt.step(&grads)?;
    Ok(ClosureStep { loss: l, grad_norm, param_grad_norms })
}

/// One step of a closure-driven optimizer on one batch: the objective is the penalized loss of
/// the batch (`loss_of_output` of the model's output in training mode, dropout drawn afresh at
/// each evaluation), evaluated as often as the optimizer needs, always on this batch. A model's
/// buffers (batch norm's running statistics) move with the step's first evaluation only; later
/// ones (SAM's perturbed point, L-BFGS's line search) leave them as the first left them. A
/// non-finite loss at the first evaluation stops the run before the parameters move.
pub(crate) fn closure_step(
    model: &dyn Model,
    opt: &mut VarOptimizer,
    cfg: &TrainConfig,
    x: &Tensor,
    rng: &mut Rng,
    loss_of_output: &dyn Fn(&Tensor) -> Result<Tensor>,
    step: u64,
) -> Result<ClosureStep> {
    let buffers = model.named_buffers();
    let mut kept: Vec<Tensor> = vec![];
    let (mut grad_norm, mut param_grad_norms) = (f64::NAN, vec![]);
    let loss = opt.step_closure_with(
        || {
            let out = model.forward(x, Mode::Train, rng)?;
            penalized(loss_of_output(&out)?, model, cfg)
        },
        |e| {
            if e.index == 0 {
                if !e.loss.is_finite() {
                    return Err(Error::Param(format!("loss is {} at step {step}: training stopped", e.loss)));
                }
                grad_norm = crate::optim::global_norm(e.flat_grads);
                if cfg.log_grad_norms {
                    param_grad_norms = param_grad_norms_of(model, e.grads)?;
                }
                kept = buffers.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
            } else {
                for ((_, v), t) in buffers.iter().zip(&kept) {
                    v.set(t)?;
                }
            }
            Ok(())
        },
    )?;
    if !loss.is_finite() {
        return Err(Error::Param(format!("loss is {loss} at step {step}: training stopped")));
    }
    Ok(ClosureStep { loss, grad_norm, param_grad_norms })
}

fn loss_of(loss: &Loss, out: &Tensor, y: &Tensor) -> Result<Tensor> {
    match loss {
        Loss::CrossEntropy => cross_entropy(out, y),
        Loss::Mse => mse(out, y),
        Loss::Custom(f) => {
            let l = f(out, y)?;
            if l.elem_count() != 1 {
                return Err(Error::Param(format!(
                    "the custom loss gave a tensor of shape {:?}: it must give one value (the batch's mean)",
                    l.dims()
                )));
            }
            Ok(l.reshape(())?.to_dtype(candle_core::DType::F32)?)
        }
    }
}

/// Why an empty evaluation set is refused.
const EMPTY_EVALUATION: &str = "the evaluation set is empty: no loss or accuracy to measure";

/// Loss and accuracy over a whole dataset, in batches of 1000, without dropout.
pub fn evaluate(model: &dyn Model, data: &Dataset, loss: &Loss) -> Result<(f64, Option<f64>)> {
    evaluate_with(model, data, loss, &Local)
}

/// [`evaluate`] shared by the ranks of a data-parallel run: each evaluates its share of the
/// batches of 1000, and the sums are all-reduced, so every rank gets the same numbers.
pub fn evaluate_with(
    model: &dyn Model,
    data: &Dataset,
    loss: &Loss,
    comm: &dyn Communicator,
) -> Result<(f64, Option<f64>)> {
    let (mut total, mut right) = (0.0f64, 0usize);
    let mut rng = Rng::new(0);
    let n = data.len();
    if n == 0 {
        return Err(Error::Param(EMPTY_EVALUATION.into()));
    }
    for k in share(n.div_ceil(1000), comm.rank(), comm.size()) {
        let start = k * 1000;
        let len = 1000.min(n - start);
        let (x, y) = data.range(start, len)?;
        let out = model.forward(&x, Mode::Eval, &mut rng)?;
        total += loss_of(loss, &out, &y)?.to_scalar::<f32>()? as f64 * len as f64;
        if *loss == Loss::CrossEntropy {
            right += correct(&out, &y)?;
        }
    }
    if comm.size() > 1 {
        let mut sums = [total, right as f64];
        comm.all_reduce_sum_f64(&mut sums)?;
        (total, right) = (sums[0], sums[1] as usize);
    }
    let acc = (*loss == Loss::CrossEntropy).then(|| right as f64 / n as f64);
    Ok((total / n as f64, acc))
}

/// What an accumulating or data-parallel run carries from step to step: the ranks, the flat
/// gradient buffer and, on ranks other than 0, their own dropout generator.
pub(crate) struct Parallel<'a> {
    pub comm: &'a dyn Communicator,
    /// The step's gradients in the flat parameter space, then its weighted loss.
    flat: Vec<f32>,
    /// Ranks other than 0 draw dropout from a generator of their own, seeded at every step from
    /// this seed (the run's seed and the rank) and the step, so that a resumed run draws what the
    /// uninterrupted one drew; rank 0 draws from the run's generator, which checkpoints hold (a
    /// run on one rank is the single-process run).
    own_seed: Option<u64>,
}

/// Mixed with the rank into the seed of a rank's own dropout generator.
const RANK_SALT: u64 = 0x7261_6e6b_2d64_726f;
/// Multiplies the step into the seed of a rank's dropout generator for that step.
const STEP_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

impl<'a> Parallel<'a> {
    /// For a run of `cfg` on the ranks of `comm`; refuses what a data-parallel or accumulating
    /// run cannot do.
    pub fn new(comm: &'a dyn Communicator, cfg: &TrainConfig, opt: &VarOptimizer) -> Result<Self> {
        if cfg.accumulate == 0 {
            return Err(Error::Param("accumulate must be at least 1 micro-batch per step".into()));
        }
        if let (Some(name), true) = (opt.closure_optimizer(), cfg.accumulate > 1 || comm.size() > 1) {
            return Err(Error::Param(format!(
                "`{name}` evaluates the objective itself (a closure-driven optimizer) on one batch: gradient \
                 accumulation and data-parallel runs step gradient optimizers"
            )));
        }
        let own_seed =
            (comm.rank() > 0).then(|| Rng::new(cfg.seed ^ RANK_SALT ^ (comm.rank() as u64).rotate_left(17)).next_u64());
        Ok(Parallel { comm, flat: vec![], own_seed })
    }

    /// True when steps go through the flat gradient buffer (accumulation, or several ranks).
    pub fn active(&self, cfg: &TrainConfig) -> bool {
        cfg.accumulate > 1 || self.comm.size() > 1
    }

    /// Gives every rank rank 0's weights and buffers (a run starts from identical weights).
    pub fn broadcast_weights(&self, model: &dyn Model, opt: &VarOptimizer) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        let mut w = opt.read_flat()?;
        self.comm.broadcast_f32(&mut w, 0)?;
        opt.write_flat(&w)?;
        self.broadcast_buffers(model)
    }

    /// Rank 0's model buffers (batch norm's running statistics) on every rank, as PyTorch's
    /// `DistributedDataParallel` broadcasts them by default.
    fn broadcast_buffers(&self, model: &dyn Model) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        for (_, v) in model.named_buffers() {
            let mut b = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            self.comm.broadcast_f32(&mut b, 0)?;
            v.set(&Tensor::from_vec(b, v.dims(), v.device())?)?;
        }
        Ok(())
    }

    /// One optimizer step on this rank's parts `(x, y, weight)` of the step's micro-batches (the
    /// weight of each its samples over the step's global batch): forward and backward of each,
    /// gradients accumulated weighted into the flat buffer with the weighted loss, one
    /// all-reduce of buffer and loss over the ranks, and the optimizer's step on the sum (the
    /// gradient of the global batch's mean loss). A non-finite loss on any rank stops every rank
    /// before the weights move. Returns the global batch's loss, the gradient norm before
    /// clipping and, with [`TrainConfig::log_grad_norms`], each parameter's.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model: &dyn Model,
        opt: &mut VarOptimizer,
        cfg: &TrainConfig,
        parts: Vec<(Tensor, Tensor, f32)>,
        rng: &mut Rng,
        loss_of_output: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        step: u64,
    ) -> Result<ClosureStep> {
        let n = opt.flat_len();
        // The first micro-batch writes the buffer and the others add to it: no pass of zeros.
        self.flat.resize(n + 1, 0.0);
        let mut written = false;
        let mut local = 0.0f32;
        let mut own;
        let dropout: &mut Rng = match self.own_seed {
            Some(seed) => {
                own = Rng::new(Rng::new(seed ^ step.wrapping_mul(STEP_SALT)).next_u64());
                &mut own
            }
            None => rng,
        };
        for (x, y, w) in parts {
            let out = model.forward(&x, Mode::Train, dropout)?;
            let loss = penalized(loss_of_output(&out, &y)?, model, cfg)?;
            let l = loss.to_scalar::<f32>()?;
            local += w * l;
            if !l.is_finite() {
                // Stops the run after the all-reduce, on every rank.
                local = l;
                break;
            }
            let grads = loss.backward()?;
            if written {
                opt.accumulate_grads(&grads, w, &mut self.flat)?;
            } else {
                opt.write_grads(&grads, w, &mut self.flat)?;
                written = true;
            }
        }
        if !written {
            self.flat.fill(0.0);
        }
        if let Some(bounds) = opt.shard_bounds().map(|b| b.to_vec()) {
            return self.step_sharded(model, opt, cfg, local, &bounds, step);
        }
        self.flat[n] = local;
        self.comm.all_reduce_sum(&mut self.flat)?;
        let l = self.flat[n];
        if !l.is_finite() {
            return Err(Error::Param(format!("loss is {l} at step {step}: training stopped")));
        }
        let grads = &self.flat[..n];
        let grad_norm = descent_core::transforms::sum_sq(grads).sqrt();
        let param_grad_norms = if cfg.log_grad_norms {
            let mut at = 0;
            opt.vars()
                .into_iter()
                .map(|(name, v)| {
                    let len = v.elem_count();
                    at += len;
                    (name, descent_core::transforms::sum_sq(&grads[at - len..at]).sqrt())
                })
                .collect()
        } else {
            vec![]
        };
        opt.step_flat(grads)?;
        self.broadcast_buffers(model)?;
        Ok(ClosureStep { loss: l, grad_norm, param_grad_norms })
    }
}

impl Parallel<'_> {
    /// The end of [`Parallel::step`] with a sharded optimizer: the gradients reduce-scattered
    /// (this rank receives the sum over the ranks of its range), the ranks' sums of squares of
    /// each variable's part and their losses all-reduced in one call, the step on this rank's
    /// range clipped by the global norm, and the parameters all-gathered.
    fn step_sharded(
        &mut self,
        model: &dyn Model,
        opt: &mut VarOptimizer,
        cfg: &TrainConfig,
        local: f32,
        bounds: &[std::ops::Range<usize>],
        step: u64,
    ) -> Result<ClosureStep> {
        let n = opt.flat_len();
        let mine = bounds[self.comm.rank()].clone();
        let mut shard = vec![0.0f32; mine.len()];
        self.comm.reduce_scatter_sum(&self.flat[..n], bounds, &mut shard)?;
        let mut sums = opt.shard_sums_of_squares(&shard)?;
        sums.push(local as f64);
        self.comm.all_reduce_sum_f64(&mut sums)?;
        let l = sums.pop().expect("the loss was pushed") as f32;
        if !l.is_finite() {
            return Err(Error::Param(format!("loss is {l} at step {step}: training stopped")));
        }
        let grad_norm = sums.iter().sum::<f64>().sqrt();
        let param_grad_norms = if cfg.log_grad_norms {
            opt.names().iter().cloned().zip(sums.iter().map(|s| s.sqrt())).collect()
        } else {
            vec![]
        };
        opt.step_shard(self.comm, &mut shard, grad_norm)?;
        self.broadcast_buffers(model)?;
        Ok(ClosureStep { loss: l, grad_norm, param_grad_norms })
    }
}

/// Trains `model` on `train`, evaluating on `test` after each epoch; `on_epoch` sees each epoch's
/// metrics as they come. Stops after the epochs or steps, on early stopping (restoring the best
/// weights) or at the target accuracy. A NaN or infinite loss stops the run with the step number.
pub fn train(
    model: &dyn Model,
    train: &dyn BatchSource,
    test: &Dataset,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochMetrics),
) -> Result<(Vec<EpochMetrics>, Stop)> {
    train_from(model, train, test, cfg, None, |m: &EpochMetrics, _: &mut EpochEnd| {
        on_epoch(m);
        Ok(())
    })
}

/// The end of an epoch, or of the run inside an epoch (a step limit), where a checkpoint can be
/// taken.
pub struct EpochEnd<'a> {
    pub(crate) model: &'a dyn Model,
    pub(crate) opt: &'a mut VarOptimizer,
    /// Epochs completed.
    pub(crate) epoch: usize,
    pub(crate) steps: u64,
    pub(crate) rng: u64,
    pub(crate) scheduler: Option<String>,
    pub(crate) progress: Option<EpochProgress>,
    pub(crate) average: Option<&'a WeightAverage>,
    /// Early stopping's best epoch so far (a run with a patience).
    pub(crate) best: Option<&'a BestEpoch>,
    /// The training loss of the last whole epoch (a run with `min_loss_change`).
    pub(crate) last_epoch_train_loss: Option<f64>,
}

impl EpochEnd<'_> {
    /// Weights, optimizer state, position (inside the epoch too) and generator state now: what
    /// `train_from` needs to continue exactly as if never stopped.
    ///
    /// Weights that are no longer finite are an error: the run's last step diverged (a loss
    /// stays finite until the step after), and a checkpoint of them could not be used.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        let mut ck = Checkpoint::capture(self.model, self.opt, self.epoch, self.steps, self.rng)?;
        for (name, _, v) in &ck.weights {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Param(format!(
                    "weight `{name}` holds {} at index {i} after step {}: the step diverged; training stopped",
                    v[i], self.steps
                )));
            }
        }
        ck.scheduler = self.scheduler.clone();
        ck.progress = self.progress.clone();
        ck.average = self.average.map(|a| AverageState::capture(a, self.model));
        ck.best = self.best.cloned();
        ck.last_epoch_train_loss = self.last_epoch_train_loss;
        Ok(ck)
    }

    /// True when the run stopped inside the epoch (a step limit) rather than at its end.
    pub fn mid_epoch(&self) -> bool {
        self.progress.is_some()
    }

    /// Bytes of optimizer state as stored (quantized buffers at their packed size).
    pub fn state_bytes(&mut self) -> usize {
        self.opt.stored_state_bytes()
    }
}

/// What a caller sees of a run: every step, and the end of every epoch (where checkpoints go).
/// A closure `|metrics, end| -> Result<()>` is an epoch hook.
pub trait Hooks {
    /// Once before the first step, after the settings and the checkpoint a run resumes from have
    /// been checked and applied: a hook that writes files starts them here, so that a run refused
    /// before it trains leaves them as they were.
    fn on_start(&mut self) -> Result<()> {
        Ok(())
    }
    /// After each optimizer step: [`Control::Stop`] ends the run there (a learning-rate range
    /// test that has diverged).
    fn on_step(&mut self, _s: &StepMetrics) -> Control {
        Control::Continue
    }
    /// After each evaluation within an epoch ([`TrainConfig::eval_at`]; not at epoch ends, which
    /// [`Hooks::on_epoch`] sees): [`Control::Stop`] ends the run there.
    fn on_eval(&mut self, _e: &EvalMetrics) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After each epoch, with its metrics; `end` lets the hook save a checkpoint or stop.
    fn on_epoch(&mut self, m: &EpochMetrics, end: &mut EpochEnd) -> Result<()>;
}

impl<F: FnMut(&EpochMetrics, &mut EpochEnd) -> Result<()>> Hooks for F {
    fn on_epoch(&mut self, m: &EpochMetrics, end: &mut EpochEnd) -> Result<()> {
        self(m, end)
    }
}

/// [`train`], optionally continuing from a checkpoint, with access to each epoch's end for
/// checkpoints. From a checkpoint taken at an epoch's end, or inside an epoch by a step limit, the
/// run goes on bit for bit as an uninterrupted one with the new limits: the same weights, and the
/// same metrics for the epoch that was cut (its order and running loss are in the checkpoint). A
/// checkpoint that already reached `max_steps` or `epochs` returns at once with no epochs and
/// [`Stop::Steps`] or [`Stop::Epochs`], the model holding its weights.
pub fn train_from(
    model: &dyn Model,
    train: &dyn BatchSource,
    test: &Dataset,
    cfg: &TrainConfig,
    resume: Option<&Checkpoint>,
    hooks: impl Hooks,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    train_with(model, train, test, cfg, resume, None, hooks, &Local)
}

/// Knowledge distillation (Hinton, Vinyals & Dean 2015): the student trains on
///
/// ```text
/// α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(y, z_s)
/// ```
///
/// with `z_t` the teachers' logits on the batch, computed on the fly in evaluation mode (several
/// teachers: the mean of their softmax at `T`), the KL divergence summed over the classes and
/// averaged over the batch (torch's `KLDivLoss(reduction="batchmean")`, Keras' `KLDivergence`).
/// `α` weighs the teachers' term: Keras' Distiller example, whose `alpha` weighs the labels' term,
/// has `alpha = 0.1` and `temperature = 3` by default, i.e. `α = 0.9`, `T = 3` here.
#[derive(Clone, Copy)]
pub struct Distillation<'a> {
    /// The teacher models (their probabilities are averaged).
    pub teachers: &'a [Box<dyn Model>],
    /// The weight `α` of the teachers' term.
    pub alpha: f64,
    /// The temperature `T`.
    pub temperature: f64,
}

/// The temperatures a distillation honours. Below, `T²`, which scales the loss, is no normal
/// f32; above, the softened distributions differ by less than float64 resolves in their
/// divergence (it shrinks as `1/T²`: at `T = 10⁴` and logits of order 10 it is about 10⁻⁶, a
/// hundred million times the rounding of its terms), and the loss printed would be noise.
pub const TEMPERATURE_RANGE: (f64, f64) = (1.1e-19, 1e4);

/// Whether a distillation temperature is in [`TEMPERATURE_RANGE`].
pub fn temperature_in_range(t: f64) -> bool {
    (TEMPERATURE_RANGE.0..=TEMPERATURE_RANGE.1).contains(&t)
}

impl Distillation<'_> {
    /// α in [0, 1], T finite and above 0, at least one teacher.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Param(format!("distillation alpha {}: must be in [0, 1]", self.alpha)));
        }
        if !temperature_in_range(self.temperature) {
            return Err(Error::Param(format!(
                "distillation temperature {:e}: between {:e} and {:e} (T² scales the loss, a normal f32; above, the softened distributions differ by less than float64 resolves)",
                self.temperature, TEMPERATURE_RANGE.0, TEMPERATURE_RANGE.1
            )));
        }
        if self.teachers.is_empty() {
            return Err(Error::Param("distillation needs at least one teacher".into()));
        }
        Ok(())
    }

    /// The teachers' mean class probabilities at temperature T for a batch, without gradient, in
    /// f64 (at a high temperature they differ from the uniform distribution by less than f32
    /// resolves).
    pub fn teacher_probabilities(&self, x: &Tensor) -> Result<Tensor> {
        let mut rng = Rng::new(0);
        let mut sum: Option<Tensor> = None;
        for t in self.teachers {
            let z = t.forward(x, Mode::Eval, &mut rng)?.detach().to_dtype(candle_core::DType::F64)?;
            let p = candle_nn::ops::softmax_last_dim(&(z / self.temperature)?.contiguous()?)?;
            sum = Some(match sum {
                None => p,
                Some(s) => (s + p)?,
            });
        }
        let sum = sum.ok_or_else(|| Error::Param("distillation needs at least one teacher".into()))?;
        Ok((sum / self.teachers.len() as f64)?.detach())
    }

    /// The distillation loss of the student's logits against the teachers' probabilities (of
    /// [`Distillation::teacher_probabilities`]) and the labels. The divergence is computed in f64,
    /// where its terms, which cancel to order `1/T²`, keep their digits; the loss is f32.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor, y: &Tensor) -> Result<Tensor> {
        use candle_core::DType;
        let t = self.temperature;
        let log_q = candle_nn::ops::log_softmax(&(student.to_dtype(DType::F64)? / t)?, candle_core::D::Minus1)?;
        let teacher = teacher.to_dtype(DType::F64)?;
        let log_p = teacher.clamp(1e-30f64, 1f64)?.log()?;
        let kl = (&teacher * (log_p - log_q)?)?.sum(1)?.mean_all()?;
        let soft = (kl * (self.alpha * t * t))?.to_dtype(DType::F32)?;
        let hard = cross_entropy(student, y)?;
        Ok((soft + (hard * (1.0 - self.alpha))?)?)
    }
}

/// [`train_from`], the student of a [`Distillation`] when given one (a classifier: its loss
/// replaces the cross-entropy; evaluation stays on the labels).
pub fn train_from_with(
    model: &dyn Model,
    train: &dyn BatchSource,
    test: &Dataset,
    cfg: &TrainConfig,
    resume: Option<&Checkpoint>,
    distill: Option<&Distillation>,
    hooks: impl Hooks,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    train_with(model, train, test, cfg, resume, distill, hooks, &Local)
}

/// [`train_from`] on the ranks of `comm` (data parallelism; [`Local`] is one process). Every rank
/// calls it with the same settings, data and checkpoint. Each step's global batch of
/// `batch_size × accumulate` samples (the same seeded order on every rank) is cut into
/// micro-batches of `batch_size`, each split across the ranks; the gradients are summed over
/// micro-batches and ranks (one all-reduce per step), and every rank applies the same step to
/// the same weights (rank 0's at the start). Evaluations are shared out and all-reduced, so every
/// rank sees the same metrics and takes the same stop decisions; a stop asked for by a hook on
/// any rank stops all. Only rank 0's hooks should write files. With a [`Distillation`], the
/// model is its student (one process without accumulation only).
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    model: &dyn Model,
    train: &dyn BatchSource,
    test: &Dataset,
    cfg: &TrainConfig,
    resume: Option<&Checkpoint>,
    distill: Option<&Distillation>,
    mut hooks: impl Hooks,
    comm: &dyn Communicator,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    let _autocast = Autocast::enter(cfg.precision);
    if let Some(d) = distill {
        d.check()?;
        if cfg.loss != Loss::CrossEntropy {
            return Err(Error::Param("distillation trains a classifier (cross-entropy loss)".into()));
        }
    }
    cfg.check()?;
    train.check().map_err(|e| Error::Param(format!("training set: {e}")))?;
    test.check().map_err(|e| Error::Param(format!("evaluation set: {e}")))?;
    if train.is_empty() {
        return Err(Error::Param("the training set is empty".into()));
    }
    if test.is_empty() {
        return Err(Error::Param(EMPTY_EVALUATION.into()));
    }
    for (name, b) in model.named_buffers() {
        crate::checkpoint::f32_var(&name, &b)?;
    }
    crate::checkpoint::check_unique_names(model)?;
    let mut opt = optimizer_on(model, cfg, comm)?;
    // An average without its own buffers recomputes the running statistics at the run's end:
    // asked now, not after the whole run.
    if cfg.average.as_ref().is_some_and(|a| !a.use_buffers) {
        crate::average::check_update_bn(model, train, cfg.batch_size)?;
    }
    if cfg.target_accuracy.is_some() && cfg.loss != Loss::CrossEntropy {
        return Err(Error::Param(
            "a target accuracy: the run's loss is not a classifier's (no accuracy is measured)".into(),
        ));
    }
    let mut par = Parallel::new(comm, cfg, &opt)?;
    if distill.is_some() && par.active(cfg) {
        return Err(Error::Param(
            "distillation trains in one process without gradient accumulation (--accumulate 1, no --data-parallel or mpirun)".into(),
        ));
    }
    let mut rng = Rng::new(cfg.seed);
    let global = cfg.batch_size * cfg.accumulate;
    let per_epoch = cfg.steps_per_epoch(train.len());
    let total = cfg.max_steps.unwrap_or(u64::MAX).min(per_epoch.saturating_mul(cfg.epochs as u64));
    if let LrSchedule::Spec(s) = &cfg.schedule {
        s.check_run(if s.per_epoch { cfg.epochs as u64 } else { total })?;
    }
    let mut plateau = match &cfg.schedule {
        &LrSchedule::Plateau { factor, patience } => Some(descent_core::schedule::ReduceLrOnPlateau::new(
            1.0,
            descent_core::schedule::ReduceLrOnPlateauConfig { factor, patience, ..Default::default() },
        )?),
        _ => None,
    };
    let mut steps = 0u64;
    let mut first_epoch = 1;
    let mut progress: Option<EpochProgress> = None;
    let mut avg = cfg.average.map(WeightAverage::new).transpose()?;
    let mut best: Option<BestEpoch> = None;
    // The training loss of the last whole epoch, for `min_loss_change` (kept in checkpoints, so a
    // resumed run compares its next epoch with it as the uninterrupted run does).
    let mut last_epoch_train_loss: Option<f64> = None;
    if let Some(p) = &cfg.pruner {
        p.begin_run();
    }
    if let Some(ck) = resume {
        match (avg.as_mut(), &ck.average) {
            (Some(a), Some(s)) => s.restore(a, model)?,
            (Some(a), None) => {
                return Err(Error::Param(format!(
                    "the checkpoint holds no weight average: the run was not started with {} averaging",
                    a.config.label()
                )))
            }
            (None, Some(s)) => {
                return Err(Error::Param(format!(
                    "the checkpoint holds an {} weight average: resume the run with its averaging",
                    s.kind
                )))
            }
            (None, None) => {}
        }
        ck.apply(model, &mut opt)?;
        if cfg.patience.is_some() {
            // The best epoch so far, checked against the model now rather than when the run
            // stops. (A checkpoint without one was taken with no patience: the settings hash
            // refuses it before.)
            if let Some(b) = &ck.best {
                b.check(model)?;
            }
            best = ck.best.clone();
        }
        if cfg.min_loss_change.is_some() {
            last_epoch_train_loss = ck.last_epoch_train_loss;
        }
        if let Some(p) = &cfg.pruner {
            // Pruning is permanent in checkpoints: the masks are the zeros.
            p.from_zeros(model)?;
        }
        rng = Rng::new(ck.rng);
        steps = ck.steps;
        first_epoch = ck.epoch + 1;
        progress = ck.progress.clone();
        if let (Some(p), Some(text)) = (plateau.as_mut(), &ck.scheduler) {
            *p = serde_json::from_str(text).map_err(|e| Error::Param(format!("checkpoint scheduler state: {e}")))?;
        }
        if cfg.max_steps.is_some_and(|m| steps >= m) {
            return Ok((vec![], Stop::Steps));
        }
        if ck.epoch >= cfg.epochs {
            return Ok((vec![], Stop::Epochs));
        }
    }
    let batches = train.len().div_ceil(global);
    if let Some(p) = &progress {
        if p.batch >= batches || p.samples != p.batch * global {
            return Err(Error::Param(format!(
                "the checkpoint was taken after batch {} ({} samples) of epoch {first_epoch}, which has {batches} \
                 batches of {global}: the training set or batch size is not the run's",
                p.batch, p.samples
            )));
        }
    }
    par.broadcast_weights(model, &opt)?;
    if let Some(p) = &cfg.pruner {
        // A fresh run prunes at step 0 where gradual pruning starts there (its initial sparsity,
        // or the whole target when it also ends there); a resumed one applies its masks.
        if steps == 0 {
            p.after_step(model, 0)?;
        } else {
            p.apply(model)?;
        }
    }
    hooks.on_start()?;
    let mut history: Vec<EpochMetrics> = vec![];
    let mut stop = Stop::Epochs;
    'epochs: for epoch in first_epoch..=cfg.epochs {
        let t0 = Instant::now();
        // Mid-epoch evaluations are not training: their time is taken off the epoch's.
        let mut evaluating = std::time::Duration::ZERO;
        // A resumed epoch draws its order again from the generator state at its start and goes on
        // at its batch (checked above); `rng` then holds the state after the batches done (dropout
        // draws).
        let (order, epoch_rng, first_batch, mut sum, mut seen, seconds_before) = match progress.take() {
            Some(p) => (
                EpochSampler::at_state(train.len(), global, p.epoch_rng)?,
                p.epoch_rng,
                p.batch,
                p.loss_sum,
                p.samples,
                p.seconds,
            ),
            None => {
                // Every rank draws rank 0's order (rank 0's generator also drew its dropout).
                rng = Rng::new(broadcast_u64(comm, rng.state(), 0)?);
                let epoch_rng = rng.state();
                (EpochSampler::new(train.len(), global, &mut rng)?, epoch_rng, 0, 0.0f64, 0usize, 0.0)
            }
        };
        let mut done = first_batch;
        for (bi, idx) in order.iter().enumerate().skip(first_batch) {
            if cfg.max_steps.is_some_and(|m| steps >= m) {
                break;
            }
            let swalr = avg.as_ref().and_then(|a| a.swalr);
            let m = match (&swalr, &plateau) {
                // SWA's annealing replaces the run's schedule from the end of its first epoch.
                (Some(s), _) => s.lr / cfg.lr.unwrap_or(1.0),
                (None, Some(p)) => p.lr,
                (None, None) => cfg.schedule.multiplier(steps, total, epoch),
            };
            if cfg.schedule != LrSchedule::Constant || swalr.is_some() {
                opt.set_lr_scale(m)?;
            }
            let lr = opt.learning_rate();
            // The step's batch on one process (augmented; the teachers' probabilities when
            // distilling); under accumulation or data parallelism each part is made below.
            let single = if par.active(cfg) {
                None
            } else {
                let (x, y) = train.batch(idx)?;
                let x = match &cfg.augment {
                    Some(a) => a.apply(&x, cfg.seed, epoch_rng, bi * global)?,
                    None => x,
                };
                let teacher = distill.map(|d| d.teacher_probabilities(&x)).transpose()?;
                Some((x, y, teacher))
            };
            let of_single = |out: &Tensor| -> Result<Tensor> {
                let (_, y, teacher) = single.as_ref().expect("one process");
                match (distill, teacher) {
                    (Some(d), Some(p)) => d.loss(out, p, y),
                    _ => loss_of(&cfg.loss, out, y),
                }
            };
            let (l, grad_norm, param_grad_norms) = if par.active(cfg) {
                // This rank's part of each micro-batch, weighted by its share of the step.
                let mut parts = vec![];
                for (mi, micro) in idx.chunks(cfg.batch_size).enumerate() {
                    let part = share(micro.len(), comm.rank(), comm.size());
                    let position = bi * global + mi * cfg.batch_size + part.start;
                    let mine = &micro[part];
                    if !mine.is_empty() {
                        let (x, y) = train.batch(mine)?;
                        let x = match &cfg.augment {
                            Some(a) => a.apply(&x, cfg.seed, epoch_rng, position)?,
                            None => x,
                        };
                        parts.push((x, y, mine.len() as f32 / idx.len() as f32));
                    }
                }
                let of = |out: &Tensor, y: &Tensor| loss_of(&cfg.loss, out, y);
                let s = par.step(model, &mut opt, cfg, parts, &mut rng, &of, steps + 1)?;
                (s.loss, s.grad_norm, s.param_grad_norms)
            } else if opt.closure_optimizer().is_some() {
                let (x, _, _) = single.as_ref().expect("one process");
                let of_output = of_single;
                let s = closure_step(model, &mut opt, cfg, x, &mut rng, &of_output, steps + 1)?;
                (s.loss, s.grad_norm, s.param_grad_norms)
            } else {
                let (x, _, _) = single.as_ref().expect("one process");
                let s = gradient_step(model, &mut opt, cfg, x, &mut rng, &of_single, steps + 1)?;
                (s.loss, s.grad_norm, s.param_grad_norms)
            };
            steps += 1;
            if let Some(p) = &cfg.pruner {
                p.after_step(model, steps)?;
                // An average (EMA, SWA) of weights now pruned is pruned with them.
                if let Some(a) = avg.as_mut().filter(|_| p.prunes_at(steps)) {
                    a.apply_masks(model, &p.masks());
                }
            }
            if let Some(a) = avg.as_mut().filter(|a| matches!(a.config.kind, AverageKind::Ema { .. })) {
                a.update(model)?;
            }
            let control = hooks.on_step(&StepMetrics {
                epoch,
                batch: bi,
                batches,
                step: steps,
                samples: idx.len(),
                loss: l,
                lr_scale: m,
                lr,
                grad_norm,
                param_grad_norms,
            });
            sum += l as f64 * idx.len() as f64;
            seen += idx.len();
            done = bi + 1;
            if any(comm, control == Control::Stop)? {
                stop = Stop::Requested { step: steps };
                break 'epochs;
            }
            let epoch_end = bi + 1 == batches || cfg.max_steps.is_some_and(|m| steps >= m);
            if cfg.eval_at.at(steps) && !epoch_end {
                let te = Instant::now();
                let (test_loss, test_accuracy) =
                    opt.with_eval_weights(|| evaluate_with(model, test, &cfg.loss, comm))?;
                evaluating += te.elapsed();
                let control = hooks.on_eval(&EvalMetrics { epoch, step: steps, test_loss, test_accuracy })?;
                if any(comm, control == Control::Stop)? {
                    stop = Stop::Requested { step: steps };
                    break 'epochs;
                }
            }
        }
        let seconds = seconds_before + t0.elapsed().saturating_sub(evaluating).as_secs_f64();
        // Cut by the step limit: the checkpoint records where, and the epoch's scheduler step is
        // left to the end of the epoch as in a run never stopped.
        let cut =
            (done < batches).then_some(EpochProgress { batch: done, epoch_rng, loss_sum: sum, samples: seen, seconds });
        let (test_loss, test_accuracy) = opt.with_eval_weights(|| evaluate_with(model, test, &cfg.loss, comm))?;
        if let (Some(p), None) = (plateau.as_mut(), &cut) {
            p.step(test_loss);
        }
        let run_ends = (cut.is_none() && epoch == cfg.epochs) || cfg.max_steps.is_some_and(|m| steps >= m);
        let average = match avg.as_mut() {
            Some(a) => average_epoch(a, model, train, test, cfg, epoch, cut.is_none(), run_ends, opt.lr_scale())?,
            None => None,
        };
        let m = EpochMetrics {
            epoch,
            steps,
            train_loss: sum / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            seconds,
            samples_per_s: seen as f64 / seconds,
            lr_scale: opt.lr_scale(),
            lr: opt.learning_rate(),
            average,
        };
        let scheduler = plateau.as_ref().map(|p| serde_json::to_string(p).expect("plateau state serializes"));
        let completed = if cut.is_some() { epoch - 1 } else { epoch };
        // The stopping rules judge whole epochs: an evaluation where a step limit cut the epoch
        // (which a resumed run finishes) is no epoch to keep as the best, to stop at, or to
        // compare the next one with.
        let whole = cut.is_none();
        // The best epoch is known before the epoch's checkpoint, which records it.
        // A loss that is not a number is never the best epoch (its weights would be restored
        // under NaN figures, and a checkpoint cannot record them). Early stopping counts epochs
        // since the best one: a run without a finite test loss yet is not stopped by it, having
        // no epoch to restore (Keras would stop it after `patience` epochs, restoring nothing).
        let improved =
            m.test_loss.is_finite() && best.as_ref().is_none_or(|b| m.test_loss < b.test_loss - cfg.min_delta);
        if whole && cfg.patience.is_some() && improved {
            // The weights this epoch evaluated (schedule-free's `x`, Lookahead's slow weights),
            // which early stopping restores.
            best = Some(opt.with_eval_weights(|| BestEpoch::capture(model, m.test_loss, epoch, steps))?);
        }
        let reached = whole && cfg.target_accuracy.is_some_and(|t| m.test_accuracy.is_some_and(|a| a >= t));
        let converged = match (cfg.min_loss_change, last_epoch_train_loss) {
            (Some(th), Some(prev)) => whole && (m.train_loss - prev).abs() < th,
            _ => false,
        };
        if whole && cfg.min_loss_change.is_some() {
            last_epoch_train_loss = Some(m.train_loss);
        }
        // A sharded optimizer's state, whole on rank 0 for the checkpoint its hook takes.
        opt.gather_state(comm)?;
        let ended = hooks.on_epoch(
            &m,
            &mut EpochEnd {
                model,
                opt: &mut opt,
                epoch: completed,
                steps,
                rng: rng.state(),
                scheduler,
                progress: cut,
                average: avg.as_ref(),
                best: best.as_ref(),
                last_epoch_train_loss,
            },
        );
        opt.release_gathered();
        ended?;
        history.push(m);
        if reached {
            stop = Stop::TargetAccuracy;
            break 'epochs;
        }
        if converged {
            stop = Stop::Converged;
            break 'epochs;
        }
        if cfg.max_steps.is_some_and(|m| steps >= m) {
            stop = Stop::Steps;
            break 'epochs;
        }
        if let (Some(p), Some(b)) = (cfg.patience, &best) {
            // As Keras counts: epochs without improvement since the best, stopping at `p` of them
            // and never in an epoch that improved (`patience` 0 stops at the first that does not).
            if epoch - b.epoch >= p.max(1) {
                stop = Stop::EarlyStopping { best_epoch: b.epoch };
                break 'epochs;
            }
        }
    }
    if let (Stop::EarlyStopping { .. }, Some(b)) = (stop, &best) {
        b.apply(model)?;
    }
    Ok((history, stop))
}

/// The averaging at an epoch's end: SWA's update and learning-rate step (a whole epoch from its
/// start on), batch norm's statistics recomputed for the averaged weights at the run's end (unless
/// the buffers are averaged too), and the averaged weights' evaluation.
#[allow(clippy::too_many_arguments)]
fn average_epoch(
    a: &mut WeightAverage,
    model: &dyn Model,
    train: &dyn BatchSource,
    test: &Dataset,
    cfg: &TrainConfig,
    epoch: usize,
    whole: bool,
    run_ends: bool,
    lr_scale: f64,
) -> Result<Option<AverageMetrics>> {
    if let AverageKind::Swa { start, swa_lr, anneal_epochs, anneal } = a.config.kind {
        if whole && epoch >= start {
            a.update(model)?;
            let base = cfg.lr.unwrap_or(1.0);
            match a.swalr.as_mut() {
                Some(s) => {
                    s.step();
                }
                None => {
                    let mut s = Swalr::new(base * lr_scale, swa_lr, anneal_epochs, anneal);
                    s.step();
                    a.swalr = Some(s);
                }
            }
        }
    }
    if a.n_averaged == 0 {
        return Ok(None);
    }
    let refresh_bn = run_ends && !a.config.use_buffers && !model.named_buffers().is_empty();
    let label = a.config.label();
    let n_averaged = a.n_averaged;
    let (bn_batches, (test_loss, test_accuracy)) = a.with_averaged(model, |m| {
        let k = if refresh_bn { crate::average::update_bn(m, train, cfg.batch_size, cfg.seed)? } else { 0 };
        Ok((k, evaluate(m, test, &cfg.loss)?))
    })?;
    Ok(Some(AverageMetrics { label, test_loss, test_accuracy, n_averaged, bn_batches }))
}

/// Timings of [`bench()`]: throughput and the seconds spent in each phase.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchTimes {
    /// Training samples per second over the whole step.
    pub samples_per_s: f64,
    /// Assembling the batch from the dataset (index selection of the shuffled samples, and the
    /// augmentation when the config has one).
    pub data_s: f64,
    /// The forward pass.
    pub forward_s: f64,
    /// The backward pass.
    pub backward_s: f64,
    /// The optimizer step.
    pub step_s: f64,
    /// Summing the gradients over the ranks (the all-reduce of a data-parallel run; 0 on one).
    pub comm_s: f64,
}

/// Training throughput: `warmup` untimed steps, then `batches` timed steps of batch assembly,
/// forward (with the loss), backward and optimizer step, each phase timed separately.
pub fn bench(
    model: &dyn Model,
    data: &dyn BatchSource,
    cfg: &TrainConfig,
    warmup: usize,
    batches: usize,
) -> Result<BenchTimes> {
    bench_with(model, data, cfg, warmup, batches, &Local)
}

/// A benchmark times forward, backward and the step apart: a closure-driven optimizer, which
/// evaluates the objective inside its step, is refused.
pub(crate) fn refuse_closure_in_bench(opt: &VarOptimizer) -> Result<()> {
    match opt.closure_optimizer() {
        Some(name) => Err(Error::Param(format!(
            "`{name}` evaluates the objective inside its step (a closure-driven optimizer): the benchmark times \
             forward, backward and a gradient step apart; time it with `descent train`"
        ))),
        None => Ok(()),
    }
}

/// The end of a benchmark's step after the backward pass, as a training step does it. On one
/// process: the optimizer's step on the gradients. On several ranks: this rank's gradients,
/// weighted by its share of the global batch, into a flat buffer (counted as backward), then
/// unsharded one all-reduce of the buffer (communication) and the step on the sum; sharded
/// (ZeRO-1, [`TrainConfig::shard_optimizer`]) the reduce-scatter of the buffer and the
/// all-reduce of the ranks' sums of squares and losses (communication), the step on this rank's
/// range, clipped by the global norm, and the all-gather of the parameters (communication)
/// written into the variables.
pub(crate) struct BenchUpdate<'a> {
    comm: &'a dyn Communicator,
    flat: Vec<f32>,
    shard: Vec<f32>,
}

impl<'a> BenchUpdate<'a> {
    pub(crate) fn new(comm: &'a dyn Communicator, opt: &VarOptimizer) -> Self {
        let parallel = comm.size() > 1;
        let flat = vec![0.0f32; if parallel { opt.flat_len() } else { 0 }];
        let shard = match opt.shard_bounds() {
            Some(b) => vec![0.0f32; b[comm.rank()].len()],
            None => vec![],
        };
        BenchUpdate { comm, flat, shard }
    }

    /// The update from `grads` of this rank's part of the batch, `weight` its share of the
    /// global batch and `loss` its weighted loss; returns the seconds of communication and of
    /// the optimizer step.
    pub(crate) fn run(
        &mut self,
        opt: &mut VarOptimizer,
        grads: &candle_core::backprop::GradStore,
        weight: f32,
        loss: f32,
    ) -> Result<(f64, f64)> {
        if self.comm.size() == 1 {
            let t0 = Instant::now();
            opt.step(grads)?;
            return Ok((0.0, t0.elapsed().as_secs_f64()));
        }
        opt.write_grads(grads, weight, &mut self.flat)?;
        let t0 = Instant::now();
        let Some(bounds) = opt.shard_bounds().map(|b| b.to_vec()) else {
            self.comm.all_reduce_sum(&mut self.flat)?;
            let t1 = Instant::now();
            opt.step_flat(&self.flat)?;
            return Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()));
        };
        self.comm.reduce_scatter_sum(&self.flat, &bounds, &mut self.shard)?;
        let t1 = Instant::now();
        let mut sums = opt.shard_sums_of_squares(&self.shard)?;
        sums.push(loss as f64);
        let t2 = Instant::now();
        self.comm.all_reduce_sum_f64(&mut sums)?;
        let t3 = Instant::now();
        sums.pop();
        let norm = sums.iter().sum::<f64>().sqrt();
        let params = opt.step_shard_local(&mut self.shard, norm)?;
        let t4 = Instant::now();
        self.comm.all_gather(params, &bounds)?;
        let t5 = Instant::now();
        opt.write_gathered()?;
        let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
        let comm_s = secs(t0, t1) + secs(t2, t3) + secs(t4, t5);
        Ok((comm_s, secs(t1, t2) + secs(t3, t4) + t5.elapsed().as_secs_f64()))
    }
}

/// [`bench()`] on the ranks of `comm`: each timed step takes a global batch of `batch_size`
/// samples, each rank its share, and sums the gradients over the ranks (timed apart as
/// [`BenchTimes::comm_s`]; with [`TrainConfig::shard_optimizer`] the ZeRO-1 step); `samples_per_s` counts the global batch.
pub fn bench_with(
    model: &dyn Model,
    data: &dyn BatchSource,
    cfg: &TrainConfig,
    warmup: usize,
    batches: usize,
    comm: &dyn Communicator,
) -> Result<BenchTimes> {
    let _autocast = Autocast::enter(cfg.precision);
    if cfg.batch_size < comm.size() {
        return Err(Error::Param(format!(
            "a batch of {} samples split across {} ranks leaves some without one",
            cfg.batch_size,
            comm.size()
        )));
    }
    let mut opt = optimizer_on(model, cfg, comm)?;
    refuse_closure_in_bench(&opt)?;
    let mut rng = Rng::new(cfg.seed);
    let epoch_rng = rng.state();
    let order = EpochSampler::new(data.len(), cfg.batch_size, &mut rng)?;
    let mut batches_iter = order.iter().enumerate().cycle();
    let (mut d, mut f, mut b, mut s, mut c, mut samples) = (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
    let mut update = BenchUpdate::new(comm, &opt);
    Parallel::new(comm, cfg, &opt)?.broadcast_weights(model, &opt)?;
    for k in 0..warmup + batches {
        let (bi, global) = batches_iter.next().ok_or_else(|| Error::Param("empty dataset".into()))?;
        let part = share(global.len(), comm.rank(), comm.size());
        let position = bi * cfg.batch_size + part.start;
        let idx = &global[part];
        let td = Instant::now();
        let (x, y) = data.batch(idx)?;
        let x = match &cfg.augment {
            Some(a) => a.apply(&x, cfg.seed, epoch_rng, position)?,
            None => x,
        };
        let t0 = Instant::now();
        let out = model.forward(&x, Mode::Train, &mut rng)?;
        let loss = penalized(loss_of(&cfg.loss, &out, &y)?, model, cfg)?;
        let l = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let share = idx.len() as f32 / global.len() as f32;
        let (comm_s, step_s) = update.run(&mut opt, &grads, share, l * share)?;
        let t2 = Instant::now();
        if k >= warmup {
            d += (t0 - td).as_secs_f64();
            f += (t1 - t0).as_secs_f64();
            b += (t2 - t1).as_secs_f64() - comm_s - step_s;
            c += comm_s;
            s += step_s;
            samples += global.len();
        }
    }
    Ok(BenchTimes {
        samples_per_s: samples as f64 / (d + f + b + s + c),
        data_s: d,
        forward_s: f,
        backward_s: b,
        step_s: s,
        comm_s: c,
    })
}
