//! The training loop: epochs of mini-batches (forward, loss, backward, optimizer step), evaluation
//! on the test set after each epoch, termination by epochs or steps.

use std::time::Instant;

use candle_core::Tensor;
use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer};
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::data::{epoch_order, Dataset};
use crate::error::{Error, Result};
use crate::model::{correct, cross_entropy, mse, Mode, Model};
use crate::optim::VarOptimizer;
use crate::rng::Rng;

/// The loss a workload trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Classification: logits against class indices; accuracy is reported.
    CrossEntropy,
    /// Regression.
    Mse,
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
    pub epochs: usize,
    /// Stop after this many optimizer steps (within an epoch too).
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub seed: u64,
    pub loss: Loss,
    /// Clip gradients by their global norm (optax `clip_by_global_norm`) before the optimizer.
    pub clip_norm: Option<f64>,
    /// Clip each gradient element to `[−v, v]` (optax `clip`) before the optimizer.
    pub clip_value: Option<f64>,
    /// L1 and L2 penalties added to the loss: `l1·Σ|w| + l2/2·Σw²` over every parameter.
    pub l1: f64,
    pub l2: f64,
    /// Stop when the test loss has not improved by `min_delta` for this many epochs, and restore
    /// the best weights.
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// Stop once the test accuracy reaches this fraction.
    pub target_accuracy: Option<f64>,
}

impl TrainConfig {
    /// A plain config: no clipping, penalties or early stopping.
    pub fn new(optimizer: &str, lr: Option<f64>, epochs: usize, batch_size: usize, loss: Loss) -> Self {
        TrainConfig {
            optimizer: optimizer.into(),
            lr,
            hparams: Value::Object(Default::default()),
            epochs,
            max_steps: None,
            batch_size,
            seed: 0,
            loss,
            clip_norm: None,
            clip_value: None,
            l1: 0.0,
            l2: 0.0,
            patience: None,
            min_delta: 0.0,
            target_accuracy: None,
        }
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Epochs,
    Steps,
    /// No improvement for `patience` epochs; the best epoch's weights were restored.
    EarlyStopping {
        best_epoch: usize,
    },
    TargetAccuracy,
}

/// What one epoch gave.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub steps: u64,
    pub train_loss: f64,
    pub test_loss: f64,
    /// `None` for regression.
    pub test_accuracy: Option<f64>,
    pub seconds: f64,
    pub samples_per_s: f64,
}

/// Builds the optimizer of a config over a model's parameters.
pub fn optimizer_for(model: &dyn Model, cfg: &TrainConfig) -> Result<VarOptimizer> {
    let (lib, name) = resolve_optimizer(&cfg.optimizer)?;
    let mut h = match &cfg.hparams {
        Value::Null => Value::Object(Default::default()),
        Value::Object(_) => cfg.hparams.clone(),
        other => return Err(Error::Param(format!("optimizer arguments must be a JSON object, got {other}"))),
    };
    if let Some(lr) = cfg.lr {
        h[lr_key(lib)] = serde_json::json!(lr);
    }
    let vars = model.named_vars();
    let shapes: Vec<Vec<usize>> = vars.iter().map(|(_, v)| v.dims().to_vec()).collect();
    let mut tx = build_optimizer(lib, &name, &h, None, &shapes)?;
    let mut pre: Vec<Box<dyn descent_core::Transform>> = vec![];
    if let Some(v) = cfg.clip_value {
        pre.push(Box::new(descent_core::transforms::Clip::new(v)));
    }
    if let Some(n) = cfg.clip_norm {
        pre.push(Box::new(descent_core::transforms::ClipByGlobalNorm::new(n)));
    }
    if !pre.is_empty() {
        pre.push(tx);
        tx = descent_core::chain(pre);
    }
    VarOptimizer::new(vars, tx)
}

/// The loss plus the L1 and L2 penalties of the config.
fn penalized(loss: Tensor, model: &dyn Model, cfg: &TrainConfig) -> Result<Tensor> {
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

fn loss_of(loss: Loss, out: &Tensor, y: &Tensor) -> Result<Tensor> {
    match loss {
        Loss::CrossEntropy => cross_entropy(out, y),
        Loss::Mse => mse(out, y),
    }
}

/// Loss and accuracy over a whole dataset, in batches of 1000, without dropout.
pub fn evaluate(model: &dyn Model, data: &Dataset, loss: Loss) -> Result<(f64, Option<f64>)> {
    let (mut total, mut right) = (0.0f64, 0usize);
    let mut rng = Rng::new(0);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = 1000.min(n - start);
        let (x, y) = data.range(start, len)?;
        let out = model.forward(&x, Mode::Eval, &mut rng)?;
        total += loss_of(loss, &out, &y)?.to_scalar::<f32>()? as f64 * len as f64;
        if loss == Loss::CrossEntropy {
            right += correct(&out, &y)?;
        }
        start += len;
    }
    let acc = (loss == Loss::CrossEntropy).then(|| right as f64 / n as f64);
    Ok((total / n as f64, acc))
}

/// Trains `model` on `train`, evaluating on `test` after each epoch; `on_epoch` sees each epoch's
/// metrics as they come. Stops after the epochs or steps, on early stopping (restoring the best
/// weights) or at the target accuracy. A NaN or infinite loss stops the run with the step number.
pub fn train(
    model: &dyn Model,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochMetrics),
) -> Result<(Vec<EpochMetrics>, Stop)> {
    train_from(model, train, test, cfg, None, |m, _| {
        on_epoch(m);
        Ok(())
    })
}

/// The end of an epoch, where a checkpoint can be taken.
pub struct EpochEnd<'a> {
    model: &'a dyn Model,
    opt: &'a mut VarOptimizer,
    epoch: usize,
    steps: u64,
    rng: u64,
}

impl EpochEnd<'_> {
    /// Weights, optimizer state, position and generator state now: what `train_from` needs to
    /// continue exactly as if never stopped.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        Checkpoint::capture(self.model, self.opt, self.epoch, self.steps, self.rng)
    }
}

/// [`train`], optionally continuing from a checkpoint taken at the end of an epoch (the run then
/// goes on bit for bit as an uninterrupted one), with access to each epoch's end for checkpoints.
pub fn train_from(
    model: &dyn Model,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    resume: Option<&Checkpoint>,
    mut on_epoch: impl FnMut(&EpochMetrics, &mut EpochEnd) -> Result<()>,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    if cfg.batch_size == 0 {
        return Err(Error::Param("batch size must be at least 1".into()));
    }
    let mut opt = optimizer_for(model, cfg)?;
    let mut rng = Rng::new(cfg.seed);
    let mut steps = 0u64;
    let mut first_epoch = 1;
    if let Some(ck) = resume {
        ck.apply(model, &mut opt)?;
        rng = Rng::new(ck.rng);
        steps = ck.steps;
        first_epoch = ck.epoch + 1;
    }
    let mut history = vec![];
    let mut stop = Stop::Epochs;
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    'epochs: for epoch in first_epoch..=cfg.epochs {
        let t0 = Instant::now();
        let order = epoch_order(train.len(), &mut rng);
        let (mut sum, mut seen) = (0.0f64, 0usize);
        for idx in order.chunks(cfg.batch_size) {
            if cfg.max_steps.is_some_and(|m| steps >= m) {
                break;
            }
            let (x, y) = train.batch(idx)?;
            let out = model.forward(&x, Mode::Train, &mut rng)?;
            let loss = penalized(loss_of(cfg.loss, &out, &y)?, model, cfg)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(Error::Param(format!("loss is {l} at step {}: training stopped", steps + 1)));
            }
            opt.backward_step(&loss)?;
            steps += 1;
            sum += l as f64 * idx.len() as f64;
            seen += idx.len();
        }
        let seconds = t0.elapsed().as_secs_f64();
        let (test_loss, test_accuracy) = evaluate(model, test, cfg.loss)?;
        let m = EpochMetrics {
            epoch,
            steps,
            train_loss: sum / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            seconds,
            samples_per_s: seen as f64 / seconds,
        };
        on_epoch(&m, &mut EpochEnd { model, opt: &mut opt, epoch, steps, rng: rng.state() })?;
        let improved = best.as_ref().is_none_or(|(l, _, _)| m.test_loss < l - cfg.min_delta);
        if improved && cfg.patience.is_some() {
            let snapshot: Vec<Tensor> =
                model.named_vars().iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
            best = Some((m.test_loss, epoch, snapshot));
        }
        let reached = cfg.target_accuracy.is_some_and(|t| m.test_accuracy.is_some_and(|a| a >= t));
        history.push(m);
        if reached {
            stop = Stop::TargetAccuracy;
            break 'epochs;
        }
        if cfg.max_steps.is_some_and(|m| steps >= m) {
            stop = Stop::Steps;
            break 'epochs;
        }
        if let (Some(p), Some((_, best_epoch, _))) = (cfg.patience, &best) {
            if epoch - best_epoch >= p {
                stop = Stop::EarlyStopping { best_epoch: *best_epoch };
                break 'epochs;
            }
        }
    }
    if let (Stop::EarlyStopping { .. }, Some((_, _, snapshot))) = (stop, &best) {
        for ((_, v), t) in model.named_vars().iter().zip(snapshot) {
            v.set(t)?;
        }
    }
    Ok((history, stop))
}
