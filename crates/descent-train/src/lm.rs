//! Language-model training as nanoGPT's `train.py` does it: a run is a number of iterations
//! (optimizer steps), each on a batch of random windows of the training split; every
//! `eval_interval` steps (and before the first and after the last) the loss is estimated on both
//! splits from a fixed number of random batches in evaluation mode (`estimate_loss`). Losses are
//! mean cross-entropies over every position of the windows, in nats per token.
//!
//! The windows and dropout of the training steps come from one generator seeded from the run's
//! seed, whose state goes into every checkpoint; each evaluation draws its windows from a
//! generator of its own, derived from the seed and the step, so evaluating (or not) never moves
//! the training stream. A run continued from a checkpoint therefore takes the same steps, bit for
//! bit, as one never stopped.

use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::dataset::{BatchSource, RandomSampler, TokenWindows};
use crate::error::{Error, Result};
use crate::gpt::Gpt;
use crate::model::{Mode, Model};
use crate::parallel::{any, broadcast_u64, share, Communicator, Local};
use crate::rng::Rng;
use crate::text::{CharCorpus, TextSplit};
use crate::train::{
    closure_step, gradient_step, optimizer_on, penalized, Control, EpochEnd, EpochMetrics, EvalAt, Hooks, LrSchedule,
    Parallel, StepMetrics, Stop, TrainConfig,
};
use crate::VarOptimizer;

/// What a language-model run needs besides the optimizer settings of [`TrainConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextConfig {
    /// Tokens per window: the inputs `x` and the targets `y` (shifted by one) each have this many.
    pub block_size: usize,
    /// Estimate the losses every this many steps (nanoGPT's `eval_interval`), and at the last.
    pub eval_interval: u64,
    /// Batches per split in each estimate (nanoGPT's `eval_iters`), of the run's batch size.
    pub eval_iters: usize,
}

impl TextConfig {
    /// nanoGPT's `eval_interval` (250) and `eval_iters` (200) with this block size.
    pub fn new(block_size: usize) -> Self {
        TextConfig { block_size, eval_interval: 250, eval_iters: 200 }
    }
}

/// Mixed into the seed for the generator of the training windows and dropout (the model's
/// initialization usually draws from the seed itself).
const TRAIN_SALT: u64 = 0x6c6d_2d74_7261_696e;
/// Mixed into the seed for the evaluations' generators.
const EVAL_SALT: u64 = 0x6c6d_2d65_7661_6c73;

/// The generator of the training windows and dropout of a run with this seed, before its first
/// step.
pub fn train_rng(seed: u64) -> Rng {
    Rng::new(seed ^ TRAIN_SALT)
}

/// The generator of the evaluation after `step` steps of a run with this seed: a state of its
/// own for each step (hashed, so the streams of two evaluations do not overlap).
pub fn eval_rng(seed: u64, step: u64) -> Rng {
    Rng::new(Rng::new(seed ^ EVAL_SALT ^ step.rotate_left(32)).next_u64())
}

/// The mean cross-entropy of logits `[b, t, vocab]` against the next tokens `y` `[b, t]` over
/// all `b·t` positions, in nats per token.
pub fn lm_loss(logits: &candle_core::Tensor, y: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    Gpt::loss(logits, y)
}

/// nanoGPT's `estimate_loss` on one split: the mean of the losses of `iters` batches of `batch`
/// random windows of `block` tokens drawn from `rng`, in evaluation mode (no dropout). Batches are
/// computed several at a time (the mean is over equal batches, so the value is the same up to
/// rounding).
pub fn estimate_loss(
    model: &dyn Model,
    corpus: &CharCorpus,
    split: TextSplit,
    batch: usize,
    block: usize,
    iters: usize,
    rng: &mut Rng,
) -> Result<f64> {
    if batch == 0 || iters == 0 {
        return Err(Error::Param("estimate_loss: needs at least one batch of one window".into()));
    }
    const AT_ONCE: usize = 8;
    let mut unused = Rng::new(0);
    let (mut sum, mut done) = (0.0f64, 0usize);
    while done < iters {
        let k = AT_ONCE.min(iters - done);
        let (x, y) = corpus.batch(split, batch * k, block, rng)?;
        let loss = lm_loss(&model.forward(&x, Mode::Eval, &mut unused)?, &y)?;
        sum += loss.to_scalar::<f32>()? as f64 * k as f64;
        done += k;
    }
    Ok(sum / iters as f64)
}

/// The training and validation losses after `step` steps (nanoGPT's `estimate_loss`), from the
/// evaluation generator of that step.
fn estimate_both(
    model: &dyn Model,
    corpus: &CharCorpus,
    cfg: &TrainConfig,
    text: &TextConfig,
    step: u64,
) -> Result<(f64, f64)> {
    estimate_at(model, corpus, cfg.batch_size, text.block_size, text.eval_iters, cfg.seed, step)
}

/// The training and validation loss estimates of a run of `seed` after `step` steps, as its
/// training recorded them: the training split's batches first, then the validation split's, all
/// drawn from the evaluation generator of that step ([`eval_rng`]). `descent evaluate` repeats
/// them with this.
pub fn estimate_at(
    model: &dyn Model,
    corpus: &CharCorpus,
    batch: usize,
    block: usize,
    iters: usize,
    seed: u64,
    step: u64,
) -> Result<(f64, f64)> {
    let mut rng = eval_rng(seed, step);
    let mut est = |split| estimate_loss(model, corpus, split, batch, block, iters, &mut rng);
    Ok((est(TextSplit::Train)?, est(TextSplit::Val)?))
}

/// Checks that a config is one [`train_text`] runs on this corpus (a step count, no epoch-based
/// settings, both splits longer than a window) and returns its number of steps, before anything
/// is trained.
pub fn check(corpus: &CharCorpus, cfg: &TrainConfig, text: &TextConfig) -> Result<u64> {
    let total = cfg
        .max_steps
        .ok_or_else(|| Error::Param("a language model trains for a number of steps: set max_steps".into()))?;
    let refuse = |what: &str| Err(Error::Param(format!("{what}: not available for language-model training")));
    if cfg.loss != crate::train::Loss::CrossEntropy {
        return refuse("a loss other than the next character's cross-entropy");
    }
    if cfg.patience.is_some() {
        return refuse("early stopping (patience)");
    }
    if cfg.average.is_some() {
        return refuse("weight averaging (EMA, SWA)");
    }
    if cfg.target_accuracy.is_some() {
        return refuse("a target accuracy");
    }
    if cfg.min_loss_change.is_some() {
        return refuse("stopping on a small change of the epoch's loss");
    }
    if cfg.augment.is_some() {
        return refuse("image augmentation");
    }
    if cfg.pruner.is_some() {
        return refuse("pruning");
    }
    if cfg.eval_at != EvalAt::EpochEnds {
        return refuse("evaluations at given steps (use TextConfig::eval_interval)");
    }
    match &cfg.schedule {
        LrSchedule::Plateau { .. } | LrSchedule::Exponential { .. } | LrSchedule::Step { .. } => {
            return refuse("a schedule stepped per epoch")
        }
        LrSchedule::Spec(s) if s.per_epoch => return refuse("a schedule stepped per epoch"),
        LrSchedule::Spec(s) => s.check_run(total)?,
        _ => {}
    }
    cfg.check()?;
    if text.block_size == 0 || text.eval_interval == 0 || text.eval_iters == 0 {
        return Err(Error::Param(format!(
            "block size, evaluation interval and evaluation batches must each be at least 1: {text:?}"
        )));
    }
    for split in [TextSplit::Train, TextSplit::Val] {
        let n = corpus.split(split).len();
        if n <= text.block_size {
            let name = if split == TextSplit::Train { "training (first 90%)" } else { "validation (last 10%)" };
            return Err(Error::Data {
                path: corpus.source.clone(),
                message: format!(
                    "the {name} split has {n} characters, too few for windows of {} (the block size {} + 1)",
                    text.block_size + 1,
                    text.block_size
                ),
            });
        }
    }
    Ok(total)
}

/// Trains a language model (`model` maps token ids `[b, t]` to logits `[b, t, vocab]`) on
/// `corpus` for `cfg.max_steps` steps, optionally continuing from a checkpoint. Each step draws
/// `cfg.batch_size` random windows of the training split, and takes the optimizer of `cfg` (its
/// groups, clipping and schedule, the schedule's multiplier at step `t` of `max_steps`). The
/// losses are estimated before the first step (a fresh run only), every `text.eval_interval`
/// steps and after the last; each estimate goes to [`Hooks::on_epoch`] as an [`EpochMetrics`]
/// (`epoch` the number of the estimate, 0 the one before training; `train_loss` and `test_loss`
/// the estimates on the training and validation splits; `seconds` and `samples_per_s` of the
/// training steps since the previous estimate, windows counted as samples), where a checkpoint
/// The evaluation interval (from 1) that step `steps` (from 1) falls in: the number of the
/// estimate that ends it.
fn interval_of(steps: u64, eval_interval: u64) -> usize {
    steps.div_ceil(eval_interval) as usize
}

/// Hands an estimate to the hooks as an epoch end at `(estimates done, steps, generator state)`
/// (a language model has no scheduler state, cut epoch, average or best epoch) and records it.
fn hand_estimate(
    hooks: &mut impl Hooks,
    m: EpochMetrics,
    model: &dyn Model,
    opt: &mut VarOptimizer,
    (epoch, steps, rng): (usize, u64, u64),
    comm: &dyn Communicator,
    history: &mut Vec<EpochMetrics>,
) -> Result<()> {
    // A sharded optimizer's state, whole on rank 0 for the checkpoint its hook takes.
    opt.gather_state(comm)?;
    let end = &mut EpochEnd {
        model,
        opt,
        epoch,
        steps,
        rng,
        scheduler: None,
        progress: None,
        average: None,
        best: None,
        last_epoch_train_loss: None,
    };
    let ended = hooks.on_epoch(&m, end);
    end.opt.release_gathered();
    ended?;
    history.push(m);
    Ok(())
}

/// can be taken. A NaN or infinite loss stops the run with the step number.
pub fn train_text(
    model: &dyn Model,
    corpus: &CharCorpus,
    cfg: &TrainConfig,
    text: &TextConfig,
    resume: Option<&Checkpoint>,
    hooks: impl Hooks,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    train_text_with(model, corpus, cfg, text, resume, hooks, &Local)
}

/// [`train_text`] on the ranks of `comm` (data parallelism, see
/// [`crate::train::train_with`]): each step draws `batch_size × accumulate` windows from rank 0's
/// generator on every rank, cuts them into micro-batches of `batch_size` windows and splits each
/// across the ranks; gradients are summed in one all-reduce and every rank takes the same step.
/// Every rank computes the loss estimates (the same numbers, from the same weights).
pub fn train_text_with(
    model: &dyn Model,
    corpus: &CharCorpus,
    cfg: &TrainConfig,
    text: &TextConfig,
    resume: Option<&Checkpoint>,
    mut hooks: impl Hooks,
    comm: &dyn Communicator,
) -> Result<(Vec<EpochMetrics>, Stop)> {
    let _autocast = crate::precision::Autocast::enter(cfg.precision);
    let total = check(corpus, cfg, text)?;
    crate::checkpoint::check_unique_names(model)?;
    let mut opt = optimizer_on(model, cfg, comm)?;
    let mut par = Parallel::new(comm, cfg, &opt)?;
    let global = cfg.batch_size * cfg.accumulate;
    let mut rng = train_rng(cfg.seed);
    let (mut steps, mut evals) = (0u64, 0usize);
    let mut history = vec![];
    if let Some(ck) = resume {
        if ck.progress.is_some() {
            return Err(Error::Param(
                "the checkpoint was taken inside an epoch of an epoch-based run, not by language-model training".into(),
            ));
        }
        ck.apply(model, &mut opt)?;
        (rng, steps, evals) = (Rng::new(ck.rng), ck.steps, ck.epoch);
        if steps >= total {
            return Ok((vec![], Stop::Steps));
        }
    }
    par.broadcast_weights(model, &opt)?;
    hooks.on_start()?;
    if resume.is_none() {
        // nanoGPT's estimate at step 0: where training starts from.
        let (train_loss, test_loss) = estimate_both(model, corpus, cfg, text, 0)?;
        let first = cfg.schedule.multiplier(0, total, 1);
        if cfg.schedule != LrSchedule::Constant {
            opt.set_lr_scale(first)?;
        }
        let m = EpochMetrics {
            epoch: 0,
            steps: 0,
            train_loss,
            test_loss,
            test_accuracy: None,
            seconds: 0.0,
            samples_per_s: 0.0,
            lr_scale: first,
            lr: opt.learning_rate(),
            average: None,
        };
        hand_estimate(&mut hooks, m, model, &mut opt, (0, 0, rng.state()), comm, &mut history)?;
    }
    let boundary = |from: u64| ((from / text.eval_interval + 1) * text.eval_interval).min(total);
    let (mut start, mut next) = (steps, boundary(steps));
    let (mut seconds, mut seen) = (0.0f64, 0usize);
    let block = text.block_size;
    let windows = TokenWindows::new(corpus.split(TextSplit::Train), block)?;
    let sampler = RandomSampler::new(windows.len(), global)?;
    while steps < total {
        let period = evals + 1;
        let m = cfg.schedule.multiplier(steps, total, period);
        if cfg.schedule != LrSchedule::Constant {
            opt.set_lr_scale(m)?;
        }
        let t0 = Instant::now();
        if comm.size() > 1 {
            // Every rank draws rank 0's windows (rank 0's generator also drew its dropout).
            rng = Rng::new(broadcast_u64(comm, rng.state(), 0)?);
        }
        let (x, y) = windows.batch(&sampler.draw(&mut rng))?;
        let lr = opt.learning_rate();
        let (l, grad_norm, param_grad_norms) = if par.active(cfg) {
            let mut parts = vec![];
            for start in (0..global).step_by(cfg.batch_size) {
                let micro = cfg.batch_size.min(global - start);
                let mine = share(micro, comm.rank(), comm.size());
                if !mine.is_empty() {
                    let at = start + mine.start;
                    parts.push((
                        x.narrow(0, at, mine.len())?,
                        y.narrow(0, at, mine.len())?,
                        mine.len() as f32 / global as f32,
                    ));
                }
            }
            let of = |out: &candle_core::Tensor, y: &candle_core::Tensor| lm_loss(out, y);
            let s = par.step(model, &mut opt, cfg, parts, &mut rng, &of, steps + 1)?;
            (s.loss, s.grad_norm, s.param_grad_norms)
        } else {
            let of_output = |out: &candle_core::Tensor| lm_loss(out, &y);
            let step = if opt.closure_optimizer().is_some() { closure_step } else { gradient_step };
            let s = step(model, &mut opt, cfg, &x, &mut rng, &of_output, steps + 1)?;
            (s.loss, s.grad_norm, s.param_grad_norms)
        };
        steps += 1;
        seconds += t0.elapsed().as_secs_f64();
        seen += global;
        let control = hooks.on_step(&StepMetrics {
            // The evaluation interval the step falls in, by its number: a resumed run, which
            // also estimated where it had stopped, numbers its steps as the uninterrupted one.
            epoch: interval_of(steps, text.eval_interval),
            batch: (steps - 1 - start) as usize,
            batches: (next - start) as usize,
            step: steps,
            samples: global,
            loss: l,
            lr_scale: m,
            lr,
            grad_norm,
            param_grad_norms,
        });
        if any(comm, control == Control::Stop)? {
            return Ok((history, Stop::Requested { step: steps }));
        }
        if steps == next {
            let (train_loss, test_loss) = opt.with_eval_weights(|| estimate_both(model, corpus, cfg, text, steps))?;
            // An estimate is numbered by the evaluation interval it ends (a run's last, at a step
            // limit inside an interval, by the interval it falls in); the checkpoint counts the
            // whole intervals done, so that a run cut there and resumed numbers its estimates as
            // the run never cut, whose estimate at the interval's end replaces the cut's.
            evals = (steps / text.eval_interval) as usize;
            let m = EpochMetrics {
                epoch: interval_of(steps, text.eval_interval),
                steps,
                train_loss,
                test_loss,
                test_accuracy: None,
                seconds,
                samples_per_s: seen as f64 / seconds.max(1e-12),
                lr_scale: opt.lr_scale(),
                lr: opt.learning_rate(),
                average: None,
            };
            hand_estimate(&mut hooks, m, model, &mut opt, (evals, steps, rng.state()), comm, &mut history)?;
            (start, next, seconds, seen) = (steps, boundary(steps), 0.0, 0);
        }
    }
    Ok((history, Stop::Steps))
}

/// Training throughput of a language model: `warmup` untimed steps, then `batches` timed steps,
/// each on `cfg.batch_size` random windows of `text.block_size` tokens of the training split
/// (drawn as [`train_text`] draws them), with the optimizer of `cfg` (its groups and clipping).
/// `samples_per_s` counts windows: tokens/s is it times the block size.
pub fn bench(
    model: &dyn Model,
    corpus: &CharCorpus,
    cfg: &TrainConfig,
    text: &TextConfig,
    warmup: usize,
    batches: usize,
) -> Result<crate::train::BenchTimes> {
    bench_with(model, corpus, cfg, text, warmup, batches, &Local)
}

/// [`bench()`] on the ranks of `comm`: every step's `cfg.batch_size` windows (the same on every
/// rank) are split across the ranks as [`train_text_with`] splits a micro-batch, each rank's
/// gradient weighted by its share, and the gradients summed over the ranks (timed apart as
/// [`crate::train::BenchTimes::comm_s`]; with [`TrainConfig::shard_optimizer`] reduce-scattered,
/// the step taken on each rank's range and the parameters all-gathered). `samples_per_s`
/// counts the global batch's windows.
pub fn bench_with(
    model: &dyn Model,
    corpus: &CharCorpus,
    cfg: &TrainConfig,
    text: &TextConfig,
    warmup: usize,
    batches: usize,
    comm: &dyn Communicator,
) -> Result<crate::train::BenchTimes> {
    let _autocast = crate::precision::Autocast::enter(cfg.precision);
    let mut opt = optimizer_on(model, cfg, comm)?;
    crate::train::refuse_closure_in_bench(&opt)?;
    Parallel::new(comm, cfg, &opt)?.broadcast_weights(model, &opt)?;
    let mut update = crate::train::BenchUpdate::new(comm, &opt);
    let windows = TokenWindows::new(corpus.split(TextSplit::Train), text.block_size)?;
    let global = cfg.batch_size;
    if global < comm.size() {
        return Err(Error::Param(format!(
            "a batch of {global} windows split across {} ranks leaves some without one",
            comm.size()
        )));
    }
    let sampler = RandomSampler::new(windows.len(), global)?;
    // The windows from one generator, the same on every rank; dropout from each rank's own (rank
    // 0's the windows' one, as on one process).
    let mut rng = train_rng(cfg.seed);
    let mut own = (comm.rank() > 0).then(|| Rng::new(cfg.seed ^ (comm.rank() as u64).rotate_left(17)));
    let mine = share(global, comm.rank(), comm.size());
    let (mut d, mut f, mut b, mut s, mut c, mut samples) = (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
    for k in 0..warmup + batches {
        let td = Instant::now();
        let (x, y) = windows.batch(&sampler.draw(&mut rng))?;
        let (x, y) = if comm.size() > 1 {
            (x.narrow(0, mine.start, mine.len())?, y.narrow(0, mine.start, mine.len())?)
        } else {
            (x, y)
        };
        let t0 = Instant::now();
        let dropout = own.as_mut().unwrap_or(&mut rng);
        let out = model.forward(&x, Mode::Train, dropout)?;
        let loss = penalized(lm_loss(&out, &y)?, model, cfg)?;
        let l = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let weight = mine.len() as f32 / global as f32;
        let (comm_s, step_s) = update.run(&mut opt, &grads, weight, l * weight)?;
        let t2 = Instant::now();
        if k >= warmup {
            d += (t0 - td).as_secs_f64();
            f += (t1 - t0).as_secs_f64();
            b += (t2 - t1).as_secs_f64() - comm_s - step_s;
            c += comm_s;
            s += step_s;
            samples += global;
        }
    }
    Ok(crate::train::BenchTimes {
        samples_per_s: samples as f64 / (d + f + b + s + c),
        data_s: d,
        forward_s: f,
        backward_s: b,
        step_s: s,
        comm_s: c,
    })
}
