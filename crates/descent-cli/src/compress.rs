//! `descent prune`, `descent quantize` and `descent compress-report`: smaller models from a
//! finished run (see `descent_train::prune`, `descent_train::quant`, `descent_train::compress`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use descent_train::checkpoint::Checkpoint;
use descent_train::compress::{self as dc, CompressInfo};
use descent_train::data::{epoch_order, Dataset};
use descent_train::model::{Init, Mode, Model};
use descent_train::prune::{self, Amount, Norm, Pruner};
use descent_train::quant::{Calibration, QuantModel};
use descent_train::rng::Rng;
use descent_train::train::{evaluate, Loss};

use crate::evaluate::{accuracy_line, EvalSet};
use crate::folder;
use crate::train::{self, Arch, RunOptions, StartFrom, TrainArgs};

/// `descent prune`.
#[derive(clap::Args, Debug, Clone)]
pub struct PruneArgs {
    /// A run folder of `descent train` (mlp, lenet, resnet, plain or linear).
    pub run: PathBuf,
    /// l1_unstructured (each Linear/Conv weight on its own), global_unstructured (the smallest
    /// magnitudes over all of them together) or ln_structured (whole output units or channels of
    /// every Linear/Conv layer but the classifier, by their --n norm along --dim).
    #[arg(long, value_parser = ["l1_unstructured", "global_unstructured", "ln_structured"])]
    pub method: String,
    /// A fraction in [0, 1] of the weights (channels for ln_structured), rounded as Python's
    /// round(), or an integer count.
    #[arg(long)]
    pub amount: String,
    /// ln_structured: the norm's order (2, 1, inf, -inf, fro) [default: 2].
    #[arg(long, allow_hyphen_values = true)]
    pub n: Option<String>,
    /// ln_structured: the dimension of the channels (0: output units/channels) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub dim: Option<isize>,
    /// The folder of the pruned model.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing folder of descent's.
    #[arg(long)]
    pub force: bool,
    /// Fine-tune the pruned model for this many epochs with its masks (the pruned weights stay
    /// zero), with the run's settings unless the flags below say otherwise; it trains all of them
    /// (the run's stopping rules, --patience, --target-accuracy and --min-loss-change, and its
    /// gradual pruning do not carry over).
    #[arg(long, default_value_t = 0)]
    pub finetune_epochs: usize,
    /// Fine-tuning: stop after this many optimizer steps (within the epochs).
    #[arg(long)]
    pub finetune_steps: Option<u64>,
    /// Fine-tuning: learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fine-tuning: optimizer.
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Fine-tuning: optimizer arguments as JSON, over the run's key by key (with another
    /// --optimizer than the run's, the run's are dropped).
    #[arg(long)]
    pub hparams: Option<String>,
    /// Fine-tuning: batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Fine-tuning: seed of the batch order.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl PruneArgs {
    /// `--n`, or its default.
    fn norm(&self) -> &str {
        self.n.as_deref().unwrap_or("2")
    }
    /// `--dim`, or its default.
    fn dim(&self) -> isize {
        self.dim.unwrap_or(0)
    }
}

/// `descent quantize`.
#[derive(clap::Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// A run folder of an mlp or lenet (or a folder of `descent prune` of one).
    pub run: PathBuf,
    /// The folder of the int8 model.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing folder of descent's.
    #[arg(long)]
    pub force: bool,
    /// Training batches (of the run's batch size, in its seeded order) the activation ranges are
    /// calibrated on (default 10).
    #[arg(long)]
    pub calibration_batches: Option<usize>,
    /// minmax (the observed range), percentile (clipping outliers at --percentile), or observers:
    /// the ranges of the moving-average observers of a `train --qat` run, which its fake
    /// quantization trained with (the default for such a run; minmax for others).
    #[arg(long, value_parser = ["minmax", "percentile", "observers"])]
    pub calibration: Option<String>,
    /// The percentile of --calibration percentile, in (50, 100] [default: 99.99].
    #[arg(long)]
    pub percentile: Option<f64>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `descent compress-report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Run folders and folders of `descent prune` / `descent quantize`.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Timing rounds (each times every model at batch 1 and 256, alternately); the median is shown.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A run folder's settings and trained model, with its test set.
struct Source {
    args: TrainArgs,
    /// The run's id (its checkpoint's), recorded in what is made from it.
    run_id: String,
    model: Box<dyn Model>,
    train_set: Dataset,
    test_set: Dataset,
    loss: Loss,
}

fn read_run(dir: &Path) -> Result<Source> {
    folder::require_dir(dir, "the folder of a `descent train` run")?;
    if dir.join(folder::run::COMPRESS_JSON).exists() {
        bail!(
            "{}: the output of descent prune or quantize, not a training run; prune and quantize start from the folder of a `descent train` run (to prune further, prune that run with a larger amount)",
            dir.display()
        );
    }
    let cfg_path = dir.join(folder::run::CONFIG_JSON);
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: not a run folder of descent train (no config.json)", dir.display()))?;
    let args: TrainArgs = serde_json::from_str(&text).with_context(|| format!("{}: malformed", cfg_path.display()))?;
    if args.model == "gpt" {
        bail!(
            "{}: a gpt run; pruning handles the mlp, lenet, resnet, plain and linear models, int8 quantization the mlp and lenet",
            dir.display()
        );
    }
    let ck_path = dir.join(folder::run::CHECKPOINT);
    if !ck_path.exists() {
        return Err(crate::train::missing_checkpoint(dir, "the run stopped before the end of its first epoch"));
    }
    let ck = Checkpoint::load(&ck_path)?;
    crate::train::check_checkpoint_of_folder(&ck, dir, Some(&args))?;
    let mut rng = Rng::new(args.seed);
    let (model, train_set, test_set, loss) = train::workload(
        &args.model,
        Arch::of(&args),
        Init::parse(&args.init)?,
        args.dropout(),
        args.normalize,
        &args.data,
        &mut rng,
    )?;
    train::check_data_of_checkpoint(&ck, &args)?;
    // A run with --validation trained on all but its last samples: the calibration's training
    // batches are the run's own (the held-out ones are not trained on); compressed models are
    // evaluated on the test set, as `descent evaluate` and `compress-report` evaluate them.
    let (train_set, _) = train::hold_out(train_set, test_set.clone(), args.validation)?;
    // The weights the run evaluated (schedule-free's average, Lookahead's slow weights).
    ck.apply_evaluated_weights(model.as_ref(), &train::config(&args, loss.clone())?)
        .with_context(|| dir.join(folder::run::CHECKPOINT).display().to_string())?;
    Ok(Source { args, run_id: ck.run_id, model, train_set, test_set, loss })
}

fn info_of(a: &TrainArgs, run_id: &str, kind: &str, source: &Path, method: String) -> CompressInfo {
    CompressInfo {
        kind: kind.into(),
        model: a.model.clone(),
        depth: a.depth,
        width: a.width,
        normalize: a.normalize,
        data: a.data.clone(),
        // The run's data was read (and checked against its checkpoint) before any model is made.
        data_digest: train::mnist_digest(&a.data),
        source: source.to_path_buf(),
        source_run_id: Some(run_id.to_string()).filter(|id| !id.is_empty()),
        method,
    }
}

/// The output folder of a prune or quantize of `run`: never the run itself, and never a training
/// run's folder (its config.json without a compress.json), which `--force` would otherwise replace
/// as a folder of the same kind: it replaces only an earlier prune's or quantize's output.
fn check_out(run: &Path, out: &Path) -> Result<()> {
    if run.to_str().is_none() {
        bail!(
            "{}: not a UTF-8 path, and the output's compress.json records the run's path, which JSON holds only in UTF-8: \
             rename the run folder, or link it under a UTF-8 name",
            run.display()
        );
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(run, out) {
        bail!("--out {}: the run being compressed; choose another folder", out.display());
    }
    // Inside it (the output would go stale when the run is replaced, and be taken for the run's).
    let inside = run.canonicalize().ok().zip(folder::resolved(out)).is_some_and(|(run, out)| out.starts_with(run));
    if inside {
        bail!(
            "--out {}: inside the run being compressed, {}; choose a folder outside it",
            out.display(),
            run.display()
        );
    }
    if out.join(folder::run::CONFIG_JSON).exists() && !out.join(folder::run::COMPRESS_JSON).exists() {
        bail!(
            "--out {}: a training run's folder; --force replaces only the output of an earlier prune or quantize: choose another --out",
            out.display()
        );
    }
    Ok(())
}

fn write_info(dir: &Path, info: &CompressInfo) -> Result<()> {
    folder::write_atomic(&dir.join(folder::run::COMPRESS_JSON), serde_json::to_string_pretty(info)?.as_bytes())
}

/// The masks of a method over the model's Linear/Conv weights (ln_structured: all but the last,
/// the classifier, whose output units are the classes).
fn masks(s: &PruneArgs, model: &dyn Model) -> Result<Vec<(String, Vec<f32>)>> {
    let amount = Amount::parse("--amount", &s.amount)?;
    let mut targets = prune::prunable(model);
    let values = |v: &candle_core::Var| v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
    let out = match s.method.as_str() {
        "l1_unstructured" => targets
            .iter()
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    prune::l1_unstructured(&values(v)?, amount)
                        .map_err(|e| anyhow::anyhow!("--amount {}: {e} (in `{n}`)", s.amount))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?,
        "global_unstructured" => {
            let ws = targets.iter().map(|(_, v)| values(v)).collect::<candle_core::Result<Vec<_>>>()?;
            let refs: Vec<&[f32]> = ws.iter().map(|w| w.as_slice()).collect();
            let m =
                prune::global_unstructured(&refs, amount).map_err(|e| anyhow::anyhow!("--amount {}: {e}", s.amount))?;
            targets.iter().map(|(n, _)| n.clone()).zip(m).collect()
        }
        _ => {
            let n = Norm::parse(s.norm())?;
            targets.pop();
            if targets.is_empty() {
                bail!("--method ln_structured: the model has no layer before its output layer to remove units from");
            }
            targets
                .iter()
                .map(|(name, v)| {
                    let m = prune::ln_structured(&values(v)?, v.dims(), amount, n, s.dim())
                        .map_err(|e| anyhow::anyhow!("--amount {} / --dim {}: {e} (in `{name}`)", s.amount, s.dim()))?;
                    Ok((name.clone(), m))
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(out)
}

/// Prunable weights and those zero, over the masks' tensors.
fn sparsity(model: &dyn Model) -> Result<(usize, usize)> {
    let (mut all, mut zero) = (0, 0);
    for (_, v) in prune::prunable(model) {
        let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        all += w.len();
        zero += w.iter().filter(|&&x| x == 0.0).count();
    }
    Ok((all, zero))
}

/// The training settings of `descent prune`'s fine-tuning: the pruned run's, for
/// `--finetune-epochs` (and `--finetune-steps`) in this one process, with the fine-tuning flags
/// given.
fn finetune_args(s: &PruneArgs, src: &TrainArgs) -> Result<TrainArgs> {
    let mut a = src.clone();
    a.epochs = Some(s.finetune_epochs);
    a.steps = s.finetune_steps;
    a.out = Some(s.out.clone());
    a.force = s.force;
    a.resume = None;
    a.config = None;
    a.given = vec![];
    a.patience = None;
    a.min_delta = 0.0;
    a.target_accuracy = None;
    a.min_loss_change = None;
    (a.prune_to, a.prune_schedule, a.prune_start, a.prune_end, a.prune_frequency) = (None, None, None, None, None);
    // The source run's rate was filled in from its defaults, where it is set elsewhere.
    if train::rate_set_elsewhere(&a).is_some() {
        a.lr = None;
    }
    if let Some(o) = &s.optimizer {
        // Another optimizer starts from its own defaults; the run's own (by any of its names,
        // `adamw` or `torch.adamw`) keeps the run's arguments.
        let resolved = |name: &str| descent_core::spec::resolve_optimizer(name).ok();
        if resolved(o) != resolved(a.optimizer()) {
            a.lr = None;
            a.hparams = serde_json::json!({});
        }
        a.optimizer = Some(o.clone());
    }
    if let Some(lr) = s.lr {
        a.lr = Some(lr);
    }
    if let Some(h) = &s.hparams {
        // Key by key over the run's arguments, as `train --config` merges them.
        let given = crate::train::parse_json(h).map_err(|e| anyhow::anyhow!("--hparams {h}: {e}"))?;
        // A rate in --hparams replaces the run's (unless --lr gives one too, which is checked).
        let key = descent_core::spec::resolve_optimizer(a.optimizer()).map(|(lib, _)| descent_core::spec::lr_key(lib));
        if s.lr.is_none() && key.is_ok_and(|k| given.get(k).is_some()) {
            a.lr = None;
        }
        match (a.hparams.as_object_mut(), given.as_object()) {
            (Some(run), Some(new)) => run.extend(new.clone()),
            _ => a.hparams = given,
        }
    }
    if let Some(b) = s.batch_size {
        a.batch_size = Some(b);
    }
    if let Some(seed) = s.seed {
        a.seed = seed;
    }
    a.threads = s.threads;
    // How the run was spread (replicas, a sharded state) is its computation, not its
    // settings: the fine-tuning trains in this one process.
    (a.data_parallel, a.shard_optimizer) = (None, false);
    Ok(a)
}

pub fn prune_cmd(s: PruneArgs) -> Result<()> {
    if s.finetune_epochs == 0 {
        for (flag, given) in [
            ("--lr", s.lr.is_some()),
            ("--optimizer", s.optimizer.is_some()),
            ("--hparams", s.hparams.is_some()),
            ("--batch-size", s.batch_size.is_some()),
            ("--seed", s.seed.is_some()),
            ("--finetune-steps", s.finetune_steps.is_some()),
        ] {
            if given {
                bail!("{flag}: a fine-tuning setting; give --finetune-epochs N (at least 1) too");
            }
        }
    }
    Amount::parse("--amount", &s.amount)?;
    if s.method == "ln_structured" {
        Norm::parse(s.norm())?;
    } else if s.n.is_some() || s.dim.is_some() {
        bail!("--n / --dim: only --method ln_structured takes them");
    }
    check_out(&s.run, &s.out)?;
    let src = read_run(&s.run)?;
    // The fine-tuning's settings are checked before anything is pruned, its flags named as given.
    let finetune = if s.finetune_epochs > 0 {
        let a = finetune_args(&s, &src.args)?;
        train::validate(&a).map_err(|e| {
            let m =
                e.to_string().replace("(--epochs ", "(--finetune-epochs ").replace("(--steps ", "(--finetune-steps ");
            let renamed = [("--epochs ", "--finetune-epochs "), ("--steps ", "--finetune-steps ")]
                .iter()
                .find_map(|(from, to)| m.strip_prefix(from).map(|rest| format!("{to}{rest}")));
            // The run's own averaging goes on in the fine-tuning, which must reach its start.
            let averaging = m
                .starts_with("--swa-start")
                .then(|| format!("the run's {m}; give --finetune-epochs of at least its --swa-start"));
            anyhow::anyhow!(renamed.or(averaging).unwrap_or(m))
        })?;
        // The masks reach the weights the optimizer steps: one that evaluates others would
        // fine-tune a model evaluated dense (the run's training refuses it; asked here, before
        // anything is pruned).
        let mut settled = a.clone();
        train::unify_lr(&mut settled)?;
        train::resolve_defaults(&mut settled)?;
        let opt = descent_train::train::optimizer_for(src.model.as_ref(), &train::config(&settled, src.loss.clone())?)?;
        if opt.evaluates_other_weights()? {
            bail!(
                "--finetune-epochs: the fine-tuning keeps the masks on the weights `{}` steps, and it evaluates others \
                 (schedule-free's average, Lookahead's slow weights), which the masks would not reach; give --optimizer another",
                a.optimizer()
            );
        }
        Some(a)
    } else {
        None
    };
    let masks = masks(&s, src.model.as_ref())?;
    for (n, m) in &masks {
        let v = src.model.named_vars().into_iter().find(|(k, _)| k == n).map(|(_, v)| v).expect("a mask's weight");
        prune::apply_mask(&v, m)?;
    }
    // The compact model is possible (no layer lost every unit) before anything is written or
    // fine-tuned: the masks stay through fine-tuning.
    // The output units' axis of every pruned weight: 0, or counted from the end (-2 of a Linear).
    let on_units = masks.iter().all(|(n, _)| {
        let rank = src.model.named_vars().iter().find(|(k, _)| k == n).map_or(0, |(_, v)| v.rank()) as isize;
        s.dim() == 0 || s.dim() == -rank
    });
    let compact = s.method == "ln_structured" && on_units && matches!(src.args.model.as_str(), "mlp" | "lenet");
    if compact {
        dc::shrink(&src.args.model, src.model.as_ref())?;
    }
    // Without fine-tuning the folder is claimed here (fine-tuning's run claims it itself).
    let _claimed = if s.finetune_epochs == 0 {
        Some(folder::claim_new(&s.out, folder::Kind::Run, s.force, false, None)?)
    } else {
        folder::check_new(&s.out, folder::Kind::Run, s.force, false, None)?;
        None
    };
    let method = format!(
        "{} amount {}{}",
        s.method,
        s.amount,
        if s.method == "ln_structured" { format!(" n {} dim {}", s.norm(), s.dim()) } else { String::new() }
    );
    let (all, zero) = sparsity(src.model.as_ref())?;
    println!(
        "pruned {} of {} ({}): {zero} of {all} Linear/Conv weights are zero ({:.2}%)",
        src.args.model,
        s.run.display(),
        method,
        100.0 * zero as f64 / all.max(1) as f64
    );
    let model: Box<dyn Model> = if s.finetune_epochs > 0 {
        let a = finetune.clone().expect("fine-tuning settings, checked before pruning");
        let weights = values_of(&src.model.named_vars())?;
        let buffers = values_of(&src.model.named_buffers())?;
        let info = info_of(&src.args, &src.run_id, "pruned", &s.run, method.clone());
        let start =
            StartFrom { weights, buffers, pruner: std::sync::Arc::new(Pruner::fixed(masks.clone())), info: Some(info) };
        println!("fine-tuning with the masks for {} epoch(s)", s.finetune_epochs);
        let out = train::execute(a, RunOptions { start: Some(start), ..Default::default() })?;
        let ck = Checkpoint::load(&out.dir.join(folder::run::CHECKPOINT))?;
        dc::set_values(src.model.as_ref(), &ck.weights, &ck.buffers)
            .with_context(|| out.dir.join(folder::run::CHECKPOINT).display().to_string())?;
        let (_, zero_after) = sparsity(src.model.as_ref())?;
        if zero_after < zero {
            bail!("fine-tuning left {zero_after} zero weights of the {zero} pruned: the masks were not kept");
        }
        src.model
    } else {
        src.model
    };
    let info = info_of(&src.args, &src.run_id, "pruned", &s.run, method);
    write_info(&s.out, &info)?;
    dc::save_model(&s.out.join(folder::run::MODEL_F32), &info, model.as_ref())?;
    if compact {
        let small = dc::shrink(&src.args.model, model.as_ref())?;
        dc::save_model(&s.out.join(folder::run::COMPACT), &info, small.as_ref())?;
        let count = |m: &dyn Model| m.named_vars().iter().map(|(_, v)| v.elem_count()).sum::<usize>();
        let shapes: Vec<String> = small
            .named_vars()
            .iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .map(|(n, v)| format!("{n} {:?}", v.dims()))
            .collect();
        println!(
            "compact model without the pruned units: {} parameters (of {}): {}",
            count(small.as_ref()),
            count(model.as_ref()),
            shapes.join(", ")
        );
    }
    println!("model folder: {}", s.out.display());
    let loaded = dc::load_compressed(&s.out)?;
    let (_, acc) = evaluate(loaded.model.as_ref(), &src.test_set, &src.loss)?;
    match acc {
        Some(acc) => println!("{}", accuracy_line(EvalSet::Test, acc)),
        None => println!("test loss: {:.5}", evaluate(loaded.model.as_ref(), &src.test_set, &src.loss)?.0),
    }
    Ok(())
}

/// `(name, shape, values)` of a tensor.
type Stored = (String, Vec<usize>, Vec<f32>);

fn values_of(vars: &[(String, candle_core::Var)]) -> Result<Vec<Stored>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.dims().to_vec(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

pub fn quantize_cmd(q: QuantizeArgs) -> Result<()> {
    if q.calibration_batches == Some(0) {
        bail!("--calibration-batches 0: calibration needs at least one batch");
    }
    let percentile = q.percentile.unwrap_or(99.99);
    if !(percentile > 50.0 && percentile <= 100.0) {
        bail!("--percentile {percentile}: a percentile in (50, 100]");
    }
    if q.calibration.as_deref() != Some("percentile") && q.percentile.is_some() {
        bail!("--percentile: only --calibration percentile takes it");
    }
    let src = read_run_or_pruned(&q.run)?;
    if !matches!(src.args.model.as_str(), "mlp" | "lenet") {
        bail!(
            "{}: a {} run; int8 quantization (descent quantize) handles the mlp and lenet models",
            q.run.display(),
            src.args.model
        );
    }
    let observed = descent_train::qat::observed_ranges(&src.args.model, src.model.as_ref())?;
    let calibration =
        q.calibration.clone().unwrap_or_else(|| if observed.is_some() { "observers" } else { "minmax" }.to_string());
    let batch = src.args.batch_size.unwrap_or(train::defaults(&src.args.model).1);
    let (qm, method) = if calibration == "observers" {
        let Some(ranges) = observed else {
            bail!(
                "--calibration observers: {} was not trained with --qat, so it has no observers; accepted: minmax, percentile",
                q.run.display()
            );
        };
        if let Some(n) = q.calibration_batches {
            bail!(
                "--calibration-batches {n}: the ranges come from the QAT run's observers; give --calibration minmax or percentile to calibrate afresh"
            );
        }
        let qm = QuantModel::from_ranges(&src.args.model, src.model.as_ref(), &ranges)?;
        let method = "int8 (weights per output channel, symmetric; activations per tensor, the ranges of the QAT run's moving-average min/max observers)".to_string();
        (qm, method)
    } else {
        let available = src.train_set.len().div_ceil(batch.max(1));
        if let Some(n) = q.calibration_batches.filter(|&n| n > available) {
            bail!("--calibration-batches {n}: the run's training set has {available} batches of {batch}; give at most {available}");
        }
        // The default, 10, takes what there is of a smaller set (and says how many it took).
        let calibration_batches = q.calibration_batches.unwrap_or(10);
        let order = epoch_order(src.train_set.len(), &mut Rng::new(src.args.seed));
        let batches: Vec<Tensor> = order
            .chunks(batch)
            .take(calibration_batches)
            .map(|idx| Ok(src.train_set.batch(idx)?.0))
            .collect::<Result<_>>()?;
        let cal = if calibration == "percentile" { Calibration::Percentile(percentile) } else { Calibration::MinMax };
        let qm = QuantModel::quantize(&src.args.model, src.model.as_ref(), &batches, cal)?;
        let method = format!(
            "int8 (weights per output channel, symmetric; activations per tensor, {} over {} batches of {batch}{})",
            if calibration == "percentile" { format!("percentile {percentile}") } else { "minmax".into() },
            batches.len(),
            if observed.is_some() { ", not the QAT run's observers" } else { "" }
        );
        (qm, method)
    };
    check_out(&q.run, &q.out)?;
    let _claimed = folder::claim_new(&q.out, folder::Kind::Run, q.force, false, None)?;
    let info = info_of(&src.args, &src.run_id, "int8", &q.run, method.clone());
    write_info(&q.out, &info)?;
    qm.save(&q.out.join(folder::run::MODEL_INT8), &info)?;
    // The same weights in each (the biases stay f32 in both).
    let int8_bytes: usize = qm.layers().iter().map(|l| l.weight.n * l.weight.k).sum();
    let f32_bytes = 4 * int8_bytes;
    println!(
        "quantized {} of {} to {method}; kernel {}; weights {} bytes (f32: {f32_bytes}), file {} bytes",
        src.args.model,
        q.run.display(),
        qm.kernel.name(),
        int8_bytes,
        std::fs::metadata(q.out.join(folder::run::MODEL_INT8)).map(|m| m.len()).unwrap_or(0)
    );
    let (_, f32_acc) = evaluate(src.model.as_ref(), &src.test_set, &src.loss)?;
    let set = EvalSet::Test;
    if let Some(a) = f32_acc {
        if src.args.qat {
            println!("QAT model (fake-quantized f32) {}", accuracy_line(set, a));
        } else {
            println!("f32 {}", accuracy_line(set, a));
        }
    }
    println!("model folder: {}", q.out.display());
    let loaded = dc::load_compressed(&q.out)?;
    let (_, acc) = evaluate(loaded.model.as_ref(), &src.test_set, &src.loss)?;
    if let Some(acc) = acc {
        println!("{}", accuracy_line(set, acc));
    }
    Ok(())
}

/// A folder of `descent prune --finetune-epochs` holds its compress.json and the fine-tuning's run
/// from the start, and its model only once the fine-tuning has finished: refused before then by
/// name, not with the missing file's error.
fn require_finished(dir: &Path) -> Result<()> {
    let has = |f: &str| dir.join(f).exists();
    if has(folder::run::COMPRESS_JSON) && has(folder::run::CONFIG_JSON) && !has(folder::run::MODEL_F32) {
        bail!(
            "{}: a pruned model whose fine-tuning has not finished (it was stopped, or is still running): \
             `descent train --resume {}` finishes it",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A run folder, or a folder of `descent prune` (its f32 model, with the source run's data).
fn read_run_or_pruned(dir: &Path) -> Result<Source> {
    if !dir.join(folder::run::COMPRESS_JSON).exists() {
        return read_run(dir);
    }
    require_finished(dir)?;
    let loaded = dc::load_compressed(dir)?;
    if loaded.info.kind != "pruned" {
        bail!("{}: already an {} model; quantize a run folder or a pruned one", dir.display(), loaded.info.kind);
    }
    let src = read_run(&loaded.info.source).with_context(|| format!("the run {} was made from", dir.display()))?;
    check_source_run(dir, &loaded.info, &src.run_id)?;
    Ok(Source { model: loaded.model, ..src })
}

/// That the run folder a compressed model's `info` names still holds the run it was made from
/// (id `run_id` now): a run trained anew there (`train --force`) has other settings (its batch
/// size, its input standardization) that would calibrate and evaluate the model wrongly.
pub(crate) fn check_source_run(dir: &Path, info: &CompressInfo, run_id: &str) -> Result<()> {
    match &info.source_run_id {
        Some(id) if id != run_id => bail!(
            "{}: made from run {id} in {}, which now holds another run ({}); make it again from that run",
            dir.display(),
            info.source.display(),
            if run_id.is_empty() { "without an id" } else { run_id }
        ),
        _ => Ok(()),
    }
}

/// The test set of a model folder's run.
pub(crate) fn test_set(info: &CompressInfo) -> Result<Dataset> {
    if info.model == "linear" {
        bail!("the linear model's test set is synthetic: nothing to report");
    }
    let m = descent_train::mnist::load(&info.data)
        .with_context(|| format!("loading MNIST from {}", info.data.display()))?;
    train::check_mnist_digest(&info.data, info.data_digest.as_deref(), &m.digest(), "the model was made from")?;
    Ok(Dataset::mnist(&m.test, info.normalize)?)
}

/// One row of the report.
struct Row {
    name: String,
    model: Box<dyn Model>,
    accuracy: f64,
    params: usize,
    nonzeros: usize,
    bytes: u64,
    test: std::rc::Rc<Dataset>,
    b1: Vec<f64>,
    b256: Vec<f64>,
}

/// Samples per second of inference on `n`-sample batches, for about `budget` seconds.
fn speed(model: &dyn Model, data: &Dataset, n: usize, budget: f64) -> Result<f64> {
    let mut rng = Rng::new(0);
    let len = data.len();
    if len == 0 {
        bail!("the test set is empty: no inference to time");
    }
    // Eight batches from across the test set; a test set smaller than a batch repeats its samples
    // to fill one (the time of a batch of `n` does not depend on which images are in it).
    let batch = |k: usize| -> Result<Tensor> {
        if len >= n {
            return Ok(data.range((k * n) % (len - n + 1), n)?.0);
        }
        let parts: Vec<Tensor> =
            (0..n.div_ceil(len)).map(|r| Ok(data.range(0, len.min(n - r * len))?.0)).collect::<Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    };
    let batches: Vec<Tensor> = (0..8).map(batch).collect::<Result<_>>()?;
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut k = 0;
    while done == 0 || t0.elapsed().as_secs_f64() < budget {
        let y = model.forward(&batches[k % batches.len()], Mode::Eval, &mut rng)?;
        std::hint::black_box(y);
        done += n;
        k += 1;
    }
    Ok(done as f64 / t0.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

pub fn report_cmd(r: ReportArgs) -> Result<()> {
    if r.rounds == 0 {
        bail!("--rounds 0: at least one timing round");
    }
    // Each folder once: a folder given twice would be a second, identical row.
    let mut seen: Vec<PathBuf> = vec![];
    for dir in &r.dirs {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if let Some(k) = seen.iter().position(|s| *s == canonical) {
            bail!("{}: the same folder as {}, given twice", dir.display(), r.dirs[k].display());
        }
        seen.push(canonical);
    }
    let mut rows: Vec<Row> = vec![];
    let mut sets: Vec<(CompressInfo, std::rc::Rc<Dataset>)> = vec![];
    let mut set_for = |info: &CompressInfo| -> Result<std::rc::Rc<Dataset>> {
        let same = |i: &CompressInfo| {
            i.data == info.data && i.normalize == info.normalize && i.data_digest == info.data_digest
        };
        if let Some((_, d)) = sets.iter().find(|(i, _)| same(i)) {
            return Ok(d.clone());
        }
        let d = std::rc::Rc::new(test_set(info)?);
        sets.push((info.clone(), d.clone()));
        Ok(d)
    };
    for dir in &r.dirs {
        let mut loaded: Vec<(String, dc::Loaded)> = vec![];
        if dir.join(folder::run::COMPRESS_JSON).exists() {
            require_finished(dir)?;
            loaded.push((dir.display().to_string(), dc::load_compressed(dir)?));
            if let Some(c) = dc::load_compact(dir)? {
                loaded.push((format!("{} (compact)", dir.display()), c));
            }
        } else {
            let src = read_run(dir)?;
            // A QAT run evaluates through its fake quantization: not a plain f32 model.
            let kind = if src.args.qat { "f32-qat" } else { "f32" };
            let info = info_of(&src.args, &src.run_id, kind, dir, "trained".into());
            let tmp = std::env::temp_dir().join(format!("descent-report-{}.safetensors", std::process::id()));
            dc::save_model(&tmp, &info, src.model.as_ref())?;
            let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&tmp).ok();
            let (mut params, mut nonzeros) = (0, 0);
            for (_, v) in src.model.named_vars() {
                let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                params += w.len();
                nonzeros += w.iter().filter(|&&x| x != 0.0).count();
            }
            loaded.push((
                dir.display().to_string(),
                dc::Loaded { model: src.model, info, params, nonzeros, file_bytes: bytes, file: PathBuf::new() },
            ));
        }
        for (name, l) in loaded {
            // Before the test sets (one folder's MNIST set would be taken for another's).
            if l.info.model == "linear" {
                bail!("{name}: the linear model's test set is synthetic: nothing to report");
            }
            let test = set_for(&l.info)?;
            let (_, acc) = evaluate(l.model.as_ref(), &test, &Loss::CrossEntropy)?;
            rows.push(Row {
                name: format!("{name} [{} {}]", l.info.model, l.info.kind),
                model: l.model,
                accuracy: acc.unwrap_or(f64::NAN),
                params: l.params,
                nonzeros: l.nonzeros,
                bytes: l.file_bytes,
                test,
                b1: vec![],
                b256: vec![],
            });
        }
    }
    // Timing: every model at batch 1 then 256 in each round, alternately, so that the machine's
    // load falls on all of them alike.
    for _ in 0..r.rounds {
        for row in rows.iter_mut() {
            row.b1.push(speed(row.model.as_ref(), &row.test, 1, 0.3)?);
            row.b256.push(speed(row.model.as_ref(), &row.test, 256, 0.6)?);
        }
    }
    println!(
        "{:<48} {:>9} {:>9} {:>9} {:>10} {:>12} {:>12}",
        "model", "accuracy", "params", "nonzeros", "file KiB", "b1 samp/s", "b256 samp/s"
    );
    for row in &rows {
        println!(
            "{:<48} {:>8.2}% {:>9} {:>9} {:>10.1} {:>12.0} {:>12.0}",
            row.name,
            100.0 * row.accuracy,
            row.params,
            row.nonzeros,
            row.bytes as f64 / 1024.0,
            median(&row.b1),
            median(&row.b256)
        );
    }
    println!("(samples/s: median of {} alternating rounds, {} thread(s))", r.rounds, rayon::current_num_threads());
    Ok(())
}
