//! `descent evaluate`: a run folder's checkpoint on the run's evaluation set (the test set, or
//! the held-out samples of a `--validation` run), with its trained or averaged weights; and the
//! reading of run folders that `ensemble` and `distill` share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::model::{Init, Model};
use descent_train::rng::Rng;
use descent_train::train::{evaluate, Loss};

use crate::folder;
use crate::train::{corpus_of, gpt_of, hold_out, settings_from_value, workload, Arch, TrainArgs};

/// The flags of `descent evaluate`.
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// The folder of a `descent train` run, or of `descent quantize` / `descent prune`.
    pub dir: PathBuf,
    /// Which weights of the checkpoint: raw (the trained ones), ema (`train --ema`) or swa
    /// (`train --swa-start`).
    #[arg(long, default_value = "raw", value_parser = ["raw", "ema", "swa"])]
    pub weights: String,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The samples a classifier is evaluated on, named in every line that reports on them: MNIST's
/// test set, or the held-out training samples of a `--validation` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalSet {
    Test,
    Validation,
}

impl EvalSet {
    /// The set a run's evaluations use.
    pub fn of(args: &TrainArgs) -> Self {
        if args.validation > 0 {
            EvalSet::Validation
        } else {
            EvalSet::Test
        }
    }

    /// `test` or `validation`, as in "validation accuracy".
    pub fn name(self) -> &'static str {
        match self {
            EvalSet::Test => "test",
            EvalSet::Validation => "validation",
        }
    }
}

/// The summary line of a classifier's accuracy, as `train` and `evaluate` end with it.
pub fn accuracy_line(set: EvalSet, acc: f64) -> String {
    format!("{} accuracy: {:.2}%", set.name(), 100.0 * acc)
}

/// A run folder read back: its settings and its checkpoint, verified.
pub struct RunFolder {
    pub dir: PathBuf,
    pub args: TrainArgs,
    pub checkpoint: Checkpoint,
}

/// Reads the run in `dir`: a folder `descent train` made, with its config and a checkpoint that
/// loads (format, checksum, finite values). Each failure is one line naming the folder.
pub fn open_run(dir: &Path) -> Result<RunFolder> {
    let d = dir.display();
    crate::folder::require_dir(dir, "the folder of a `descent train` run")?;
    if crate::folder::is_compressed_output(dir) {
        bail!("{d}: the output of descent prune or quantize, not a training run; give the folder of a `descent train` run");
    }
    crate::train::run_id_of(dir)?;
    let cfg_path = dir.join(folder::run::CONFIG_JSON);
    if !cfg_path.exists() {
        if [folder::run::MODEL_INT8, folder::run::MODEL_F32].iter().any(|f| dir.join(f).exists()) {
            bail!(
                "{d}: a model file without its {}, which descent prune and quantize write beside it (deleted?), and no {} of a run",
                folder::run::COMPRESS_JSON,
                folder::run::CONFIG_JSON
            );
        }
        bail!("{d}: no {}: not a whole run folder of `descent train` (deleted?)", folder::run::CONFIG_JSON);
    }
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", cfg_path.display()))?;
    let args = settings_from_value(value, &cfg_path.display().to_string())?;
    let ck_path = dir.join(folder::run::CHECKPOINT);
    if !ck_path.exists() {
        return Err(crate::train::missing_checkpoint(dir, "the run stopped before the end of its first epoch"));
    }
    let checkpoint = Checkpoint::load(&ck_path)?;
    crate::train::check_checkpoint_of_folder(&checkpoint, dir, Some(&args))?;
    Ok(RunFolder { dir: dir.to_path_buf(), args, checkpoint })
}

/// Which of a checkpoint's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    Raw,
    Ema,
    Swa,
}

impl Weights {
    pub fn parse(s: &str) -> Result<Weights> {
        Ok(match s {
            "raw" => Weights::Raw,
            "ema" => Weights::Ema,
            "swa" => Weights::Swa,
            other => bail!("--weights {other}: accepted: raw, ema, swa"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Weights::Raw => "raw",
            Weights::Ema => "ema",
            Weights::Swa => "swa",
        }
    }
}

/// An image (or regression) run's model with the chosen weights, its evaluation set and its loss.
pub struct LoadedModel {
    pub model: Box<dyn Model>,
    pub eval_set: Dataset,
    pub loss: Loss,
}

impl RunFolder {
    /// The number of classes of a classifier run (MNIST's 10), `None` for regression and gpt.
    pub fn classes(&self) -> Option<usize> {
        match self.args.model.as_str() {
            "linear" | "gpt" => None,
            _ => Some(10),
        }
    }

    /// Refuses a copy of one of `others` (the same run at the same step has the same weights; a
    /// copy taken at another step of the run is another snapshot): `other` says what a distinct
    /// run would be ("another member", "another teacher").
    pub fn refuse_copy_of(&self, others: &[RunFolder], other: &str) -> Result<()> {
        let ck = &self.checkpoint;
        if let Some(o) = others
            .iter()
            .find(|o| !ck.run_id.is_empty() && o.checkpoint.run_id == ck.run_id && o.checkpoint.steps == ck.steps)
        {
            bail!(
                "{}: the same run as {} (run id {}) at the same step ({}): a copy, not {other}",
                self.dir.display(),
                o.dir.display(),
                ck.run_id,
                ck.steps
            );
        }
        Ok(())
    }

    /// The run's model rebuilt from its settings, holding the checkpoint's `weights`, with the
    /// data it was trained and evaluated on.
    pub fn load_model(&self, weights: Weights) -> Result<LoadedModel> {
        let a = &self.args;
        if a.model == "gpt" {
            bail!("{}: a gpt run; its validation loss comes from `descent evaluate`", self.dir.display());
        }
        let mut rng = Rng::new(a.seed);
        let (model, train_set, test_set, loss) =
            workload(&a.model, Arch::of(a), Init::parse(&a.init)?, a.dropout(), a.normalize, &a.data, &mut rng)?;
        crate::train::check_data_of_checkpoint(&self.checkpoint, a)?;
        let (_, eval_set) = hold_out(train_set, test_set, a.validation)?;
        self.apply(model.as_ref(), weights, loss.clone())?;
        Ok(LoadedModel { model, eval_set, loss })
    }

    /// Writes the checkpoint's `weights` into `model`: for `raw`, those the run evaluated
    /// (schedule-free's average, Lookahead's slow weights, where its optimizer keeps them apart).
    fn apply(&self, model: &dyn Model, weights: Weights, loss: Loss) -> Result<()> {
        let d = self.dir.display();
        let ck = &self.checkpoint;
        match weights {
            Weights::Raw => {
                let cfg = crate::train::config(&self.args, loss)?;
                ck.apply_evaluated_weights(model, &cfg)
                    .with_context(|| format!("{d}: the checkpoint does not fit the run"))?
            }
            w => {
                let Some(avg) = ck.average.as_ref().filter(|s| s.kind == w.name()) else {
                    if let (None, Some(why)) = (&ck.average, &ck.ended) {
                        bail!(
                            "--weights {}: the run in {d} ended by {why}, and the weights it keeps are that epoch's; \
                             the average of the last epoch is not kept (metrics.jsonl has its test figures by epoch); \
                             accepted here: raw",
                            w.name()
                        );
                    }
                    let has = match &ck.average {
                        Some(s) => format!("it keeps {} weights", s.kind),
                        None => "it keeps no averaged weights".into(),
                    };
                    bail!(
                        "--weights {}: the run in {d} was not trained with {} ({has}); accepted here: raw{}",
                        w.name(),
                        if w == Weights::Ema { "--ema" } else { "--swa-start" },
                        ck.average.as_ref().map(|s| format!(", {}", s.kind)).unwrap_or_default()
                    );
                };
                avg.apply(model).with_context(|| format!("{d}: --weights {}", w.name()))?;
            }
        }
        Ok(())
    }
}

/// `descent evaluate DIR` of a folder of `descent quantize` or `descent prune`: its model on its
/// run's test set.
fn run_compressed(a: &EvaluateArgs) -> Result<()> {
    if a.weights != "raw" {
        bail!(
            "--weights {}: {} holds one compressed model (descent prune / quantize); accepted here: raw",
            a.weights,
            a.dir.display()
        );
    }
    let loaded = descent_train::compress::load_compressed(&a.dir)
        .with_context(|| format!("{}: the compressed model does not load", a.dir.display()))?;
    let (test, loss) = if loaded.info.model == "linear" {
        // The linear model's test set is synthetic, drawn from its run's seed: rebuilt from the
        // run the folder was made from, as `descent evaluate` of that run builds it.
        let run = open_run(&loaded.info.source)
            .with_context(|| format!("{}: the run it was pruned from", a.dir.display()))?;
        crate::compress::check_source_run(&a.dir, &loaded.info, &crate::train::run_id_of(&loaded.info.source)?)?;
        let m = run.load_model(Weights::Raw)?;
        (m.eval_set, m.loss)
    } else {
        (crate::compress::test_set(&loaded.info)?, Loss::CrossEntropy)
    };
    println!(
        "evaluating {} ({} {}: {}) on the {} test samples",
        a.dir.display(),
        loaded.info.model,
        loaded.info.kind,
        loaded.info.method,
        test.len()
    );
    let (loss, acc) = evaluate(loaded.model.as_ref(), &test, &loss)?;
    println!("test loss: {loss:.5}");
    if let Some(acc) = acc {
        println!("{}", accuracy_line(EvalSet::Test, acc));
    }
    Ok(())
}

/// The precision a run trained in (its config's `precision`, f32 when unset): evaluation runs the
/// model's products in it too, so that it gives the run's own numbers.
pub fn autocast_of(args: &crate::train::TrainArgs) -> Result<descent_train::precision::Autocast> {
    let p = descent_train::precision::Precision::parse(args.precision.as_deref().unwrap_or("f32"))?;
    Ok(descent_train::precision::Autocast::enter(p))
}

/// `descent evaluate DIR`.
pub fn run(a: EvaluateArgs) -> Result<()> {
    let weights = Weights::parse(&a.weights)?;
    // A folder of descent quantize or a one-shot descent prune (a fine-tuned one is a run too).
    if folder::is_compressed_output(&a.dir) {
        return run_compressed(&a);
    }
    let run = open_run(&a.dir)?;
    let ck = &run.checkpoint;
    let args = &run.args;
    let _precision = autocast_of(args)?;
    let position = if args.model == "gpt" {
        // A gpt trains by steps on random windows: it has no epochs.
        format!("step {}", ck.steps)
    } else if ck.mid_epoch() {
        format!("step {} (inside epoch {})", ck.steps, ck.epoch + 1)
    } else {
        format!("epoch {}, step {}", ck.epoch, ck.steps)
    };
    if args.model == "gpt" {
        if weights != Weights::Raw {
            bail!("--weights {}: a gpt run keeps only its trained weights (raw)", weights.name());
        }
        let corpus = corpus_of(args)?;
        let model = gpt_of(args, &corpus, &mut Rng::new(args.seed))?;
        crate::train::check_text_checkpoint(ck, &model, &corpus)?;
        ck.apply_evaluated_weights(&model, &crate::train::config(args, Loss::CrossEntropy)?)
            .with_context(|| format!("{}: the checkpoint does not fit the run", run.dir.display()))?;
        let batch = args.batch_size.context("the run's config has no batch_size")?;
        let iters = args.eval_iters.context("the run's config has no eval_iters")?;
        // The run's own estimate at this step (its training split's batches drawn first, as
        // training drew them): the same number as its metrics row of that step.
        let block = model.config.block_size;
        let (_, val) = descent_train::lm::estimate_at(&model, &corpus, batch, block, iters, args.seed, ck.steps)?;
        println!("evaluating {} (gpt, {position}) on the last 10% of {}", run.dir.display(), corpus.source);
        println!("validation loss: {val:.4} nats/char after {} steps", ck.steps);
        return Ok(());
    }
    let m = run.load_model(weights)?;
    let what = if args.validation > 0 {
        format!("the {} held-out training samples (--validation)", m.eval_set.len())
    } else {
        format!("the {} test samples", m.eval_set.len())
    };
    println!("evaluating {} ({}, {position}, {} weights) on {what}", run.dir.display(), args.model, weights.name());
    let (loss, acc) = evaluate(m.model.as_ref(), &m.eval_set, &m.loss)?;
    let set = EvalSet::of(args);
    println!("{} loss: {loss:.5}", set.name());
    if let Some(acc) = acc {
        println!("{}", accuracy_line(set, acc));
    }
    Ok(())
}
