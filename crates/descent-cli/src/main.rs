//! The `descent` command-line tool.

mod bench;
mod bench_model;
mod bench_optimizers;
mod compare;
mod compress;
mod distill;
mod ensemble;
mod evaluate;
mod flags;
mod folder;
#[cfg(test)]
mod fuzz;
mod landscape;
mod lrfind;
mod plot;
mod runs;
mod sample;
mod search_space;
mod show;
mod sweep;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use descent_core::replay::{collect_case_files, parse_case, read_case_text, run_and_check, Case};
use serde_json::json;

/// Large buffers (optimizer state, parameters, gradients) on huge pages where Linux gives them on
/// request: 10–20% faster optimizer steps over tensors that stream from memory (see
/// `descent_core::alloc`).
#[global_allocator]
static ALLOC: descent_core::alloc::HugePages = descent_core::alloc::HugePages;

#[derive(Parser)]
#[command(
    name = "descent",
    version,
    about = "Deep-learning optimization toolkit: optimizers, schedules, training and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay recorded reference trajectories (torch / optax) through descent.
    ///
    /// With one CASE.json, prints {"id", "params"} (optimizer) or {"id", "lr"} (schedule) as JSON.
    /// With --check, applies the pass rule to every case under the given files and folders.
    Replay {
        /// Apply the pass rule and print one line per case and a summary.
        #[arg(long)]
        check: bool,
        /// Case files or folders of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the optimizers and schedules descent reproduces, by registry name.
    List,
    /// Train a model on the bundled data.
    ///
    /// With --resume DIR the run continues from its last checkpoint with the settings of its
    /// config.json: only --epochs and --steps (each to a larger total than what is done),
    /// --threads, --data-parallel, --precision and --shard-optimizer may be given with it; any
    /// other setting that differs from the run's is refused.
    #[command(allow_negative_numbers = true)]
    Train(Box<train::TrainArgs>),
    /// Evaluate a run folder's checkpoint on the run's test set (its validation samples if it was
    /// trained with --validation; for gpt the validation loss), with its trained or averaged weights; or the
    /// model of a folder of `descent quantize` (int8) or `descent prune` on its run's test set.
    ///
    /// e.g. descent evaluate runs/lenet-adam-seed0 --weights ema
    Evaluate(evaluate::EvaluateArgs),
    /// Evaluate several runs of one classifier together: each member's test accuracy, and the
    /// ensemble's by the mean of the members' class probabilities and by majority vote.
    ///
    /// e.g. descent ensemble runs/lenet-seed0 runs/lenet-seed1 runs/lenet-seed2
    Ensemble(ensemble::EnsembleArgs),
    /// Train a student against one or more teacher runs (knowledge distillation): loss
    /// α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(y, z_s), the teachers' logits
    /// computed on the fly; the student takes `descent train`'s flags and its run folder is a
    /// run like any (`descent evaluate`, `descent train --resume`).
    ///
    /// e.g. descent distill --teacher runs/lenet-seed0 --student lenet --width 3 --epochs 3
    #[command(allow_negative_numbers = true)]
    Distill(Box<distill::DistillArgs>),
    /// Text from a language-model run (`descent train --model gpt`): its checkpoint continues a
    /// prompt, one character at a time.
    ///
    /// e.g. descent sample runs/gpt --prompt "ROMEO:" --tokens 300 --temperature 0.8 --seed 0
    #[command(allow_negative_numbers = true)]
    Sample(Box<sample::SampleArgs>),
    /// Compare runs of one workload that differ in optimizer, learning rate, schedule,
    /// regularization or batch size: a table, charts (PNG and SVG) and an HTML report.
    ///
    /// e.g. descent compare --model mlp --epochs 2 --run sgd:lr=0.1 --run sgd:lr=0.05,momentum=0.9
    /// --run adam:lr=1e-3 --run adamw:lr=1e-3,schedule=cosine
    #[command(allow_negative_numbers = true)]
    Compare(Box<compare::CompareArgs>),
    /// Hyper-parameter search over any training option: grid, random or TPE proposals, optional
    /// ASHA stopping of poor trials; a table, the best config as TOML, and charts.
    ///
    /// e.g. descent sweep --model mlp --epochs 2 --param lr=loguniform:1e-4..1e-1
    /// --param weight_decay=loguniform:1e-5..1e-1 --param schedule=choice:constant|cosine
    /// --optimizer adamw --method tpe --pruner asha --trials 30
    #[command(allow_negative_numbers = true)]
    Sweep(Box<sweep::SweepArgs>),
    /// The learning-rate range test: the loss while the learning rate grows exponentially, its
    /// chart, and a suggested learning rate.
    #[command(allow_negative_numbers = true)]
    LrFind(Box<lrfind::LrFindArgs>),
    /// Optimizers on 2-D test functions (Rosenbrock, Beale, Himmelblau, an ill-conditioned
    /// quadratic, a saddle, Rastrigin): paths over contour maps, and a table.
    #[command(allow_negative_numbers = true)]
    Landscape(landscape::LandscapeArgs),
    /// Redraw the charts of finished runs (train, compare or sweep folders) from their metric
    /// files, overlaid.
    Plot {
        /// Run folders, or compare/sweep folders (their runs/ are drawn).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Folder for the charts.
        #[arg(long, default_value = "runs/plot")]
        out: PathBuf,
        /// Title prefix of the charts.
        #[arg(long, default_value = "runs")]
        title: String,
    },
    /// Prune a trained model's Linear and Conv weights with torch.nn.utils.prune's methods, then
    /// optionally fine-tune it with the masks (pruned weights stay zero); ln_structured also
    /// writes the smaller dense model without the pruned units (mlp, lenet).
    ///
    /// e.g. descent prune runs/lenet --method global_unstructured --amount 0.9 --out runs/lenet-p90
    /// --finetune-epochs 2
    #[command(allow_negative_numbers = true)]
    Prune(Box<compress::PruneArgs>),
    /// Post-training static int8 quantization of an mlp or lenet run: per-channel int8 weights,
    /// calibrated activation ranges (a `train --qat` run's observers by default), int8 kernels
    /// with i32 accumulation.
    ///
    /// e.g. descent quantize runs/lenet --out runs/lenet-int8 --calibration-batches 10
    Quantize(Box<compress::QuantizeArgs>),
    /// Test accuracy, parameters, nonzeros, file size and inference speed (batch 1 and 256) of
    /// run folders and folders of descent prune / descent quantize, side by side.
    CompressReport(Box<compress::ReportArgs>),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training throughput: forward + backward + optimizer step over fixed batches.
    Train {
        /// lenet, mlp, linear, resnet, plain or gpt (nanoGPT's character model on the bundled
        /// text: tokens/s).
        #[arg(long, default_value = "lenet")]
        model: String,
        /// Default: adam; for gpt nanoGPT's torch.adamw (betas (0.9, 0.99), weight decay 0.1 on
        /// matrices and embeddings). gpt clips at 1.0 with any optimizer, as `train` does.
        #[arg(long)]
        optimizer: Option<String>,
        /// The optimizer's other arguments as JSON, in its library's names (`descent train
        /// --hparams`), e.g. '{"momentum": 0.9}' for sgd, '{"links": [...]}' for optax.chain; for
        /// gpt without --optimizer they replace the recipe's. The learning rate is the recipe's.
        #[arg(long, value_parser = train::parse_json)]
        hparams: Option<serde_json::Value>,
        /// Augment the images as `descent train --augment` does (translate=K,rotate=R): its cost
        /// counts as batch assembly.
        #[arg(long, value_name = "translate=K,rotate=R")]
        augment: Option<String>,
        /// Batch size (default: the model's training default).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Timed batches.
        #[arg(long, default_value_t = 50)]
        batches: usize,
        /// Untimed batches first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Worker threads (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// The matrix products' precision, or several separated by commas (`f32,bf16`), timed
        /// alternately over --rounds rounds, each one's best round reported with its speed
        /// against the first.
        #[arg(long, default_value = "f32", value_name = "f32|bf16|f32,bf16")]
        precision: String,
        /// Rounds of the alternation when several precisions are timed (default 3; with one
        /// precision there is one round, and the flag is refused).
        #[arg(long)]
        rounds: Option<usize>,
        /// Replicas of the model in threads of this process, each with --threads/N threads, each
        /// batch split across them as `descent train --data-parallel N` splits it.
        #[arg(long, value_name = "N")]
        data_parallel: Option<usize>,
        /// Under `mpirun -n N` or with --data-parallel N: time the sharded optimizer of `descent train --shard-optimizer`
        /// (ZeRO stage 1: gradients reduce-scattered, each rank stepping its range, parameters
        /// all-gathered), refused as train refuses it (one process, optimizers that are not
        /// elementwise).
        #[arg(long)]
        shard_optimizer: bool,
    },
    /// Hyper-parameter search: TPE with ASHA stopping against random search with the same number
    /// of trials, and the default Adam 1e-3, over several seeds (AdamW on the MLP: learning rate,
    /// weight decay and schedule; validation accuracy on 5 000 held-out training samples).
    Sweep {
        /// Seeds (each a pair of sweeps and a default run).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Trials per sweep.
        #[arg(long, default_value_t = 30)]
        trials: usize,
        /// Epochs per trial.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// Folder for the sweeps: new, empty, or (with --force) an earlier `bench sweep`'s.
        #[arg(long, default_value = "runs/bench-sweep")]
        out: PathBuf,
        /// Replace the sweeps of an earlier `descent bench sweep` in --out (files of your own in
        /// them are refused, not deleted).
        #[arg(long)]
        force: bool,
    },
    /// Which optimizer at which learning rate for a model: each optimizer of a list gets the same
    /// learning-rate search on a validation split, its best rate runs over several seeds; a table
    /// of steps and seconds to a target accuracy, final accuracy with its spread, state memory and
    /// step cost, and the best curves. Resumable (`--resume DIR`).
    Optimizers(Box<bench_optimizers::BenchOptimizersArgs>),
    /// Optimizer steps on flat buffers against the memory roofline of their access pattern, or
    /// (`--model`) on a model's parameter set against AdamW.
    Step {
        /// An optimizer name (`adam`, `torch.adamw`, `optax.lion`, …) or `all`; with `--model`, a
        /// comma-separated list (`all`: torch.adamw, po.kron, po.soap, po.shampoo,
        /// optax.contrib.muon).
        #[arg(long, default_value = "all")]
        optimizer: String,
        /// Time the step on the parameter set (names and shapes) of this model with random
        /// gradients, each optimizer alternating with AdamW: gpt (nanoGPT's CPU recipe), lenet or
        /// mlp.
        #[arg(long)]
        model: Option<String>,
        /// Parameters in all (default 50 000 000; not with `--model`).
        #[arg(long)]
        params: Option<usize>,
        /// Split the parameters over this many tensors of realistic sizes (default 1; not with
        /// `--model`).
        #[arg(long)]
        tensors: Option<usize>,
        /// Worker threads (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed steps after one warm-up step (default 10; with `--model` 20, so that every
        /// optimizer's preconditioner updates fall among them: SOAP refreshes every 10 steps).
        #[arg(long)]
        steps: Option<usize>,
        /// Keyword arguments of a single optimizer, as JSON in the library's own names.
        #[arg(long, default_value = "{}")]
        hparams: String,
    },
}

/// Restores the default action of SIGPIPE (Rust ignores it, which turns `descent … | head` into a
/// panic on the next print): a closed pipe ends the program quietly, like other command-line tools.
#[cfg(unix)]
fn default_sigpipe() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: resetting a signal to its default action at start-up, before any thread exists.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

/// Refuses a number on the command line that is not zero but reads as zero: below the smallest
/// positive double (about 4.9e-324), `1e-400` parses as 0, and `--lr 1e-400` would train at a
/// rate of 0 without a word. Checked: a flag's whole value (`--lr 1e-400`, `--lr=1e-400`), and
/// the numbers inside a value holding JSON or settings (`{"lr": 1e-400}`, `sgd:lr=1e-400`,
/// `lr=choice:1e-400|0.1`). Overflow needs no check here: it reads as infinity, which the flags
/// refuse by name.
fn refuse_underflowing_numbers(args: impl Iterator<Item = std::ffi::OsString>) -> Result<()> {
    let mut flag: Option<String> = None;
    for arg in args {
        let Some(arg) = arg.to_str() else {
            flag = None;
            continue;
        };
        // Named in the message as given: `--lr 1e-400`, `--lr=1e-400`.
        let (given, value) = match (arg.strip_prefix("--").and_then(|f| f.split_once('=')), flag.take()) {
            (Some((_, v)), _) => (arg.to_string(), v),
            (None, Some(f)) => (format!("{f} {arg}"), arg),
            (None, None) => (arg.to_string(), arg),
        };
        if arg.starts_with("--") && !arg.contains('=') {
            flag = Some(arg.to_string());
        }
        let numbers: Vec<&str> = if value.trim().parse::<f64>().is_ok() {
            vec![value.trim()]
        } else if value.contains(['{', '[', '=']) {
            train::number_literals(value)
        } else {
            vec![]
        };
        if let Some(n) = numbers.into_iter().find(|n| train::reads_as_zero(n)) {
            bail!("`{n}` in `{given}`: {}", train::READS_AS_ZERO);
        }
    }
    Ok(())
}

/// The command line, with the training flags that `lr-find` and `bench optimizers` share with
/// `train` but refuse (each refusal says why) hidden from their help, and their own defaults
/// and models said there.
fn command() -> clap::Command {
    use clap::CommandFactory;
    fn hide(c: clap::Command, ids: &[&str]) -> clap::Command {
        ids.iter().fold(c, |c, id| c.mut_arg(*id, |a| a.hide(true)))
    }
    let one_process = ["data_parallel", "shard_optimizer", "config"];
    // Neither trains the gpt.
    let gpt = ["text", "n_layer", "n_head", "n_embd", "block_size", "eval_interval", "eval_iters"];
    Cli::command()
        .mut_subcommand("lr-find", |c| {
            let c = hide(hide(c, &one_process), &gpt);
            let unused: Vec<&str> = lrfind::UNUSED_TRAIN_FLAGS.iter().map(|(id, _)| *id).collect();
            // --lr and --schedule are refused too (lr-find sets the rate itself).
            hide(hide(c, &unused), &["lr", "schedule"])
                .mut_arg("model", |a| {
                    a.help("Model: lenet, mlp, resnet, plain or linear (gpt trains through `descent train`)")
                })
                .mut_arg("out", |a| a.help("Folder for lr_find.csv and the chart (default: runs/lr-find)"))
        })
        .mut_subcommand("distill", |c| {
            // Refused there, each with where to go instead.
            c.mut_arg("config", |a| a.hide(true)).mut_arg("resume", |a| a.hide(true))
        })
        .mut_subcommand("compare", |c| {
            c.mut_arg("resume", |a| a.hide(true))
                .mut_arg("out", |a| {
                    a.help("Folder of the comparison: its table, charts, report.html and runs/ (default: runs/compare, runs/compare-2, …)")
                })
                .mut_arg("force", |a| a.help("Replace an earlier comparison in --out (only the files and runs descent wrote)"))
        })
        .mut_subcommand("sweep", |c| {
            c.mut_arg("out", |a| a.help("Folder of the sweep: its trials, table and best.toml (default: runs/sweep, runs/sweep-2, …)"))
                .mut_arg("force", |a| a.help("Replace an earlier sweep in --out (only the files and trials descent wrote)"))
                .mut_arg("resume", |a| a.help("Continue the sweep in this folder: its finished trials kept, the rest run"))
                .mut_arg("model", |a| a.help("Model: lenet, mlp, resnet, plain or linear (gpt is compared with `descent compare`)"))
        })
        .mut_subcommand("bench", |b| {
            b.mut_subcommand("optimizers", |c| {
                hide(hide(c, &one_process), &gpt)
                    .mut_arg("optimizer", |a| a.hide(true))
                    .mut_arg("lr", |a| a.hide(true))
                    .mut_arg("schedule", |a| a.hide(true))
                    .mut_arg("model", |a| {
                        a.help("Model, ranked by validation accuracy on MNIST: mlp, lenet, resnet or plain")
                    })
                    .mut_arg("out", |a| a.help("Folder of the benchmark (default: runs/bench, runs/bench-2, …)"))
            })
        })
}

fn main() -> ExitCode {
    descent_core::alloc::keep_freed_memory();
    #[cfg(unix)]
    default_sigpipe();
    // `println!` panics when standard output cannot be written (a full disk, `> /dev/full`):
    // that is a one-line error and a failed exit, not a crash with a backtrace.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied());
        if let Some(reason) = msg.and_then(|m| m.strip_prefix("failed printing to stdout: ")) {
            eprintln!("error: writing to standard output: {reason}");
            std::process::exit(2);
        }
        default_hook(info)
    }));
    if let Err(e) = refuse_underflowing_numbers(std::env::args_os().skip(1)) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Parsed through `ArgMatches` so that `--config` can tell which flags were given.
    use clap::{CommandFactory, FromArgMatches};
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let r = match cli.command {
        Command::Replay { check: true, paths } => check(&paths),
        Command::Replay { check: false, paths } => replay(&paths),
        Command::List => {
            list();
            Ok(true)
        }
        Command::Train(args) => {
            let sub = matches.subcommand_matches("train").expect("train subcommand");
            let mut args = *args;
            args.given = sub
                .ids()
                .filter(|id| sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
                .filter(|id| !id.as_str().starts_with(|c: char| c.is_ascii_uppercase()))
                .map(|id| id.to_string())
                .collect();
            // --data-parallel from the flags or the --config file.
            let (config, given) = (args.config.clone(), args.given.clone());
            let a = args.with_config(sub);
            match a.as_ref().ok().and_then(|a| a.data_parallel) {
                Some(replicas) => a.and_then(|a| on_replicas(replicas, a.threads, |comm| train::run(a.clone(), comm))),
                None => with_ranks(|comm| a.and_then(|a| set_threads(a.threads).and_then(|_| train::run(a, comm)))),
            }
            .map_err(|e| train::attribute_to_config(e, config.as_deref(), &given))
            .map(|_| true)
        }
        Command::Evaluate(args) => set_threads(args.threads).and_then(|_| evaluate::run(args)).map(|_| true),
        Command::Ensemble(args) => set_threads(args.threads).and_then(|_| ensemble::run(args)).map(|_| true),
        Command::Distill(args) => {
            let sub = matches.subcommand_matches("distill").expect("distill subcommand");
            distill::settings(*args, sub)
                .and_then(|a| set_threads(a.threads).and_then(|_| train::run(a, &descent_train::parallel::Local)))
                .map(|_| true)
        }
        Command::Sample(args) => set_threads(args.threads).and_then(|_| sample::run(*args)).map(|_| true),
        Command::Compare(args) => {
            let sub = matches.subcommand_matches("compare").expect("compare subcommand");
            set_threads_apart(args.base.threads).and_then(|_| compare::run(*args, sub)).map(|_| true)
        }
        Command::Sweep(args) => {
            let sub = matches.subcommand_matches("sweep").expect("sweep subcommand");
            set_threads_apart(args.base.threads).and_then(|_| sweep::run(*args, sub)).map(|_| true)
        }
        Command::LrFind(args) => set_threads(args.base.threads).and_then(|_| lrfind::run(*args)).map(|_| true),
        Command::Prune(args) => set_threads(args.threads).and_then(|_| compress::prune_cmd(*args)).map(|_| true),
        Command::Quantize(args) => set_threads(args.threads).and_then(|_| compress::quantize_cmd(*args)).map(|_| true),
        Command::CompressReport(args) => {
            set_threads(args.threads).and_then(|_| compress::report_cmd(*args)).map(|_| true)
        }
        Command::Landscape(args) => landscape::run(args).map(|_| true),
        Command::Plot { dirs, out, title } => plot_runs(&dirs, &out, &title).map(|_| true),
        Command::Bench {
            what:
                BenchCommand::Train {
                    model,
                    optimizer,
                    hparams,
                    augment,
                    batch_size,
                    batches,
                    warmup,
                    threads,
                    precision,
                    rounds,
                    shard_optimizer,
                    data_parallel,
                },
        } => {
            let args = |threads: usize| -> Result<train::BenchArgs> {
                Ok(train::BenchArgs {
                    model: model.clone(),
                    optimizer: optimizer.clone(),
                    hparams: hparams.clone(),
                    augment: augment.clone(),
                    batch_size,
                    batches,
                    warmup,
                    threads,
                    precisions: train::precisions_of(&precision)?,
                    rounds,
                    shard_optimizer,
                })
            };
            match data_parallel {
                Some(replicas) => on_replicas(replicas, threads, |comm| {
                    let per_replica = rayon::current_num_threads();
                    train::bench(args(per_replica)?, comm)
                }),
                None => with_ranks(|comm| set_threads(threads).and_then(|n| train::bench(args(n)?, comm))),
            }
            .map(|_| true)
        }
        Command::Bench { what: BenchCommand::Sweep { seeds, trials, epochs, out, force } } => {
            let parse = |args: Vec<String>| -> Result<(sweep::SweepArgs, clap::ArgMatches)> {
                let m = Cli::command().try_get_matches_from(args)?;
                let sub = m.subcommand_matches("sweep").context("a sweep command line")?.clone();
                match Cli::from_arg_matches(&m)?.command {
                    Command::Sweep(a) => Ok((*a, sub)),
                    _ => anyhow::bail!("not a sweep"),
                }
            };
            set_threads_apart(None).and_then(|_| sweep::bench(seeds, trials, epochs, &out, force, parse)).map(|_| true)
        }
        Command::Bench { what: BenchCommand::Optimizers(args) } => {
            let sub = matches
                .subcommand_matches("bench")
                .and_then(|b| b.subcommand_matches("optimizers"))
                .expect("bench optimizers subcommand");
            set_threads(args.base.threads).and_then(|_| bench_optimizers::run(*args, sub)).map(|_| true)
        }
        Command::Bench { what: BenchCommand::Step { optimizer, model, params, tensors, threads, steps, hparams } } => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            checked_threads(threads)
                .and_then(|_| train::parse_json(&hparams).map_err(|e| anyhow::anyhow!("--hparams {hparams}: {e}")))
                .and_then(|hparams| match model {
                    Some(model) => {
                        if params.is_some() || tensors.is_some() {
                            anyhow::bail!(
                                "--params and --tensors describe a flat buffer; --model takes the model's own tensors"
                            );
                        }
                        let optimizers: Vec<String> = optimizer.split(',').map(|s| s.trim().to_string()).collect();
                        if optimizers.iter().any(|o| o.is_empty()) {
                            anyhow::bail!("--optimizer {optimizer:?}: an empty name in the list; name each optimizer, separated by commas");
                        }
                        if let Some(o) = optimizers.iter().enumerate().find(|(i, o)| optimizers[..*i].contains(o)) {
                            anyhow::bail!("--optimizer {optimizer}: {} named twice; name each optimizer once", o.1);
                        }
                        if optimizers.len() > 1 && hparams.as_object().is_some_and(|m| !m.is_empty()) {
                            anyhow::bail!(
                                "--hparams: the keyword arguments of a single optimizer, not of the {} in --optimizer {optimizer}",
                                optimizers.len()
                            );
                        }
                        let steps = steps.unwrap_or(20);
                        bench_model::run(&bench_model::ModelBench { model, optimizers, hparams, threads, steps })
                    }
                    None => {
                        let (params, tensors, steps) =
                            (params.unwrap_or(50_000_000), tensors.unwrap_or(1), steps.unwrap_or(10));
                        bench::run(&bench::StepBench { optimizer, hparams, params, tensors, threads, steps })
                    }
                })
                .map(|_| true)
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", user_message(&e));
            ExitCode::from(2)
        }
    }
}

/// The number of processes `mpirun` (Open MPI, MPICH or a PMIx launcher) started this one among,
/// from their environment; `None` when not started by one.
fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The processes started on this machine by `mpirun`, when it says so.
fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Runs `f` on the ranks of this run: MPI's when started by `mpirun` (feature `mpi`), else this
/// process alone. Under MPI an error on any rank is printed with its rank and ends every rank
/// (MPI_Abort), so that none waits for it in a collective.
fn with_ranks(f: impl FnOnce(&dyn descent_train::parallel::Communicator) -> Result<()>) -> Result<()> {
    #[cfg(feature = "mpi")]
    if launched_ranks().is_some() {
        use descent_train::parallel::Communicator;
        let comm = descent_train::parallel::MpiComm::init().context("initializing MPI")?;
        if comm.size() > 1 {
            comm.abort_on_panic();
        }
        let r = f(&comm);
        if let (Err(e), true) = (&r, comm.size() > 1) {
            eprintln!("error: rank {} of {}: {}", comm.rank(), comm.size(), user_message(e));
            comm.abort(2);
        }
        return r;
    }
    if let Some(n) = launched_ranks().filter(|&n| n > 1) {
        anyhow::bail!(
            "started by mpirun as one of {n} processes, but this descent was built without MPI: build it with \
             `cargo build --release --features mpi` (each process would otherwise train alone into the same folder)"
        );
    }
    f(&descent_train::parallel::Local)
}

/// Runs `f` on `replicas` replicas in threads of this process (`--data-parallel`), the
/// `threads` (default: the machine's cores) divided evenly among them, each replica's thread
/// one of its own pool's. Returns the error of the replica that failed first in rank order (the
/// others only saw it stop).
fn on_replicas(
    replicas: usize,
    threads: Option<usize>,
    f: impl Fn(&dyn descent_train::parallel::Communicator) -> Result<()> + Sync,
) -> Result<()> {
    if let Some(n) = launched_ranks().filter(|&n| n > 1) {
        anyhow::bail!(
            "--data-parallel {replicas}: replicas in threads of one process, but this is one of {n} processes started by mpirun, whose ranks are the replicas already; give one or the other"
        );
    }
    if replicas == 0 {
        anyhow::bail!("--data-parallel 0: at least one replica");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let total = checked_threads(threads.unwrap_or(cores))?;
    if replicas > total || !total.is_multiple_of(replicas) {
        anyhow::bail!(
            "--data-parallel {replicas}: the {total} threads (--threads, default the machine's cores) must divide evenly among the replicas, at least one each"
        );
    }
    let each = total / replicas;
    set_thread_env(each);
    let results = descent_train::parallel::on_threads(replicas, each, f);
    let stopped = |e: &anyhow::Error| format!("{e:#}").contains(descent_train::parallel::STOPPED);
    let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(|r| r.err()).collect();
    match errors.iter().position(|e| !stopped(e)) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

/// An error as the user reads it: its chain of causes on one line, without the backtrace that
/// some libraries (candle) put into their messages when `RUST_BACKTRACE` is set; backtraces are
/// for bugs, not for a wrong flag or file.
fn user_message(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let lines: Vec<&str> = full
        .lines()
        .take_while(|l| !l.trim_start().starts_with("stack backtrace:"))
        .filter(|l| !l.trim().is_empty())
        .take_while(|l| !l.trim_start().starts_with("0: "))
        .collect();
    match lines.len() {
        0 => full,
        1 | 2 => lines.join("\n"),
        _ => format!("{}\n{}", lines[0], lines[1]),
    }
}

/// Sets the worker-thread count once, for rayon and for candle (which otherwise reads
/// `/proc/cpuinfo` on every matmul when `RAYON_NUM_THREADS` is unset). candle's own elementwise
/// pool stays at one thread (unless `CANDLE_NUM_THREADS` says otherwise): what is left of candle's
/// elementwise work in a training step is small, and its idle workers spin for a while after every
/// op, taking a core from the convolution and GEMM threads that follow (LeNet-5 at batch 128: about
/// 15% faster with one).
///
/// The calling (main) thread is one of the pool's threads: the training loop runs on it, so each
/// parallel op splits its work there and the other workers steal from it, rather than the main
/// thread queueing every op into the pool, waking a worker and sleeping until it is done (the
/// wake-ups of a GPT step's many small ops cost more than the ops). Commands whose main thread
/// only waits for threads of their own use [`set_threads_apart`].
///
/// Under mpirun the default is the machine's cores divided among the ranks started on it.
fn set_threads(threads: Option<usize>) -> Result<usize> {
    set_threads_in(threads, true)
}

/// [`set_threads`] with the main thread outside the pool: for `compare` and `sweep`, whose main
/// thread waits for trial threads that each send their work into the pool (a main thread in the
/// pool would leave it one worker short while it waits).
fn set_threads_apart(threads: Option<usize>) -> Result<usize> {
    set_threads_in(threads, false)
}

fn set_threads_in(threads: Option<usize>, main_in_pool: bool) -> Result<usize> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let n = checked_threads(threads.unwrap_or_else(|| (cores / local_ranks().unwrap_or(1).max(1)).max(1)))?;
    set_thread_env(n);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n);
    let pool = if main_in_pool { pool.use_current_thread() } else { pool };
    pool.build_global().ok();
    Ok(n)
}

/// `--threads n` if it is a thread count descent accepts.
fn checked_threads(n: usize) -> Result<usize> {
    if n == 0 || n > train::MAX_THREADS {
        anyhow::bail!("--threads {n}: must be between 1 and {}", train::MAX_THREADS);
    }
    Ok(n)
}

/// The thread count of each pool, for rayon and candle (see [`set_threads`]): candle reads
/// `RAYON_NUM_THREADS` for its matrix products; its own elementwise pool stays at one thread
/// unless `CANDLE_NUM_THREADS` says otherwise.
fn set_thread_env(per_pool: usize) {
    std::env::set_var("RAYON_NUM_THREADS", per_pool.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// `descent plot`: the charts of every run under `dirs`, overlaid, into `out`.
fn plot_runs(dirs: &[PathBuf], out: &std::path::Path, title: &str) -> Result<()> {
    let mut all = vec![];
    for d in dirs {
        // A compare folder's runs keep the labels and the failures its own charts show.
        let shown = runs::compare_labels(d);
        for run in runs::expand(d)? {
            let mut m = runs::read_run(&run)?;
            for w in &m.warnings {
                eprintln!("warning: {w}");
            }
            if let Some((label, failed)) = run.file_name().and_then(|n| shown.get(&*n.to_string_lossy())) {
                m.faint = *failed;
                m.label = if *failed { format!("{label} (failed)") } else { label.clone() };
            }
            all.push(m);
        }
    }
    // Each run once (a folder given twice, or a run also inside a compare folder given).
    folder::distinct("run folder", &all.iter().map(|m| m.dir.clone()).collect::<Vec<_>>())?;
    if all.iter().all(|m| m.steps.is_empty() && m.epochs.is_empty()) {
        anyhow::bail!("nothing to draw: no run given has a row in its metric files");
    }
    // Runs with the same settings (made at different times) are told apart by their folder.
    let labels: Vec<String> = all.iter().map(|m| m.label.clone()).collect();
    for m in all.iter_mut() {
        if labels.iter().filter(|l| **l == m.label).count() > 1 {
            m.label = format!("{} ({})", m.label, m.dir.display());
        }
    }
    // Charts are redrawn over the plot folder's own (no --force needed), never into a folder of
    // other files.
    let _claimed = folder::claim_new(out, folder::Kind::Plot, true, false, None)?;
    let files = runs::draw(&all, out, title)?;
    // A run without a row (said in a warning above) is read but not drawn.
    let drawn = all.iter().filter(|m| !(m.steps.is_empty() && m.epochs.is_empty())).count();
    let empty = all.len() - drawn;
    let skipped = if empty > 0 { format!(" ({empty} without a row to draw)") } else { String::new() };
    println!("{drawn} runs drawn into {}{skipped}:", out.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// A float as descent writes one in JSON: a number, or the string `"NaN"`, `"inf"` or `"-inf"`
/// where JSON has none (the README's exact numbers).
pub(crate) fn json_float(x: f64) -> serde_json::Value {
    match descent_core::json::non_finite_name(x) {
        Some(name) => serde_json::Value::from(name),
        None => serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number),
    }
}

/// A replayed trajectory `[step][param][element]` with its floats as [`json_float`] writes them.
fn trajectory_json(t: &[Vec<Vec<f32>>]) -> serde_json::Value {
    t.iter()
        .map(|step| {
            step.iter()
                .map(|p| p.iter().map(|&x| json_float(x as f64)).collect::<serde_json::Value>())
                .collect::<serde_json::Value>()
        })
        .collect()
}

fn replay(paths: &[PathBuf]) -> Result<bool> {
    if paths.len() != 1 || paths[0].is_dir() {
        anyhow::bail!("replay without --check takes exactly one case file");
    }
    let text = read_case_text(&paths[0])?;
    warn_unknown_fields(&paths[0], &text);
    let case = parse_case(&paths[0].display().to_string(), &text)?;
    // The errors name the case's id; the file is named in front.
    let file = || paths[0].display().to_string();
    let out = match &case {
        Case::Optim(c) => json!({"id": c.id, "params": trajectory_json(&c.run().with_context(file)?)}),
        Case::Problem(c) => json!({"id": c.id, "params": trajectory_json(&c.run().with_context(file)?)}),
        Case::Schedule(c) => {
            let lrs: Vec<_> = c.run().with_context(file)?.into_iter().map(json_float).collect();
            json!({"id": c.id, "lr": lrs})
        }
    };
    println!("{out}");
    Ok(true)
}

/// A warning for each top-level field of the case file `path` (its `text`) that no replay reads
/// (a misspelt `hparams` leaves the case on the optimizer's defaults).
fn warn_unknown_fields(path: &Path, text: &str) {
    for k in descent_core::replay::unknown_fields(text) {
        eprintln!("warning: {}: field `{k}` is not one a replay reads; ignored", path.display());
    }
}

fn check(paths: &[PathBuf]) -> Result<bool> {
    let files = collect_case_files(paths)?;
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!("{}: no case files (*.json) to check", shown.join(", "));
    }
    let (mut passed, mut failed) = (0, 0);
    // A case is named by its id; where its file is named otherwise, or another file holds the
    // same id (a copy, or another recording of one case), the line names the file too.
    let mut ids: std::collections::HashMap<String, &PathBuf> = std::collections::HashMap::new();
    for f in &files {
        // The file read once: its unknown fields warned about, then the case parsed and run.
        let outcome = read_case_text(f)
            .and_then(|text| {
                warn_unknown_fields(f, &text);
                parse_case(&f.display().to_string(), &text)
            })
            .and_then(|c| run_and_check(&c).map(|r| (c.id().to_string(), r)))
            .map(|(id, r)| {
                let label = match ids.get(&id) {
                    Some(first) => format!("{id} [{}; the id of {} too]", f.display(), first.display()),
                    None if f.file_stem().is_some_and(|s| *s == *id) => id.clone(),
                    None => format!("{id} [{}]", f.display()),
                };
                ids.entry(id).or_insert(f);
                (label, r)
            });
        match outcome {
            Ok((id, r)) if r.passed => {
                passed += 1;
                println!("PASS {id}  (worst error {} of tolerance, step {})", ratio(r.ratio), r.step);
            }
            Ok((id, r)) => {
                failed += 1;
                println!("FAIL {id}  (error {}× tolerance at step {})", ratio(r.ratio), r.step);
            }
            Err(e) => {
                failed += 1;
                // File errors name the file already.
                let (name, msg) = (f.display().to_string(), e.to_string());
                println!("FAIL {name}  ({})", msg.strip_prefix(&format!("{name}: ")).unwrap_or(&msg));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// An error as a multiple of its tolerance: three decimals, or three significant digits with an
/// exponent far from 1 (a rate of 1e300 against a tolerance of 1e-6).
fn ratio(r: f64) -> String {
    if r == 0.0 || !r.is_finite() || (1e-3..1e4).contains(&r) {
        format!("{r:.3}")
    } else {
        format!("{r:.3e}")
    }
}

fn list() {
    println!("optimizers:");
    for n in descent_core::spec::registry_names() {
        println!("  {n}");
    }
    println!("schedules:");
    for n in descent_core::spec::TORCH_SCHEDULES {
        println!("  torch.{n}");
    }
    for n in descent_core::spec::OPTAX_SCHEDULES {
        println!("  optax.{n}");
    }
}

#[cfg(test)]
mod number_tests {
    use super::refuse_underflowing_numbers;
    use crate::train::number_literals;

    #[test]
    fn literals_inside_json_and_specs_are_found_but_not_inside_words() {
        assert_eq!(number_literals(r#"{"lr": 1e-400, "betas": [0.9, 2.5E+3]}"#), ["1e-400", "0.9", "2.5E+3"]);
        assert_eq!(number_literals("sgd:lr=3e-7,x1e-900=2"), ["3e-7", "2"]);
    }

    #[test]
    fn only_nonzero_numbers_that_read_as_zero_are_refused() {
        let check = |args: &[&str]| refuse_underflowing_numbers(args.iter().map(|a| a.into()));
        for ok in [&["--lr", "0"][..], &["--lr", "0.0e-999"], &["--lr", "1e-320"], &["--out", "runs/1e-999"]] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["--lr", "1e-400"][..],
            &["--lr=-2e-500"],
            &["--hparams", r#"{"eps": 1e-999}"#],
            &["--run", "sgd:lr=9e-999"],
        ] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.contains("read as 0") && e.contains(bad[bad.len() - 1]), "{bad:?}: {e}");
        }
    }
}
