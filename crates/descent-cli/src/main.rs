//! The `descent` command-line tool.

mod bench;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use descent_core::reference::{collect_case_files, load_case, run_and_check, Case};
use serde_json::json;

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
    Train {
        /// Model: lenet (LeNet-5 on MNIST), mlp (MNIST) or linear (regression on y = 2x + noise).
        #[arg(long, default_value = "lenet")]
        model: String,
        /// Optimizer by name: adam, adamw, sgd, lion, … or a registry name (torch.sgd, optax.lamb).
        #[arg(long, default_value = "adam")]
        optimizer: String,
        /// Learning rate (default: 2e-3 for lenet, 1e-3 for mlp, 0.1 for linear).
        #[arg(long)]
        lr: Option<f64>,
        /// Other optimizer arguments as JSON, in the library's own names, e.g. '{"momentum": 0.9}'.
        #[arg(long, default_value = "{}")]
        hparams: String,
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// Stop after this many optimizer steps.
        #[arg(long)]
        steps: Option<u64>,
        /// Batch size (default: 128 for lenet, 32 otherwise).
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Weight initialization: torch, xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal.
        #[arg(long, default_value = "torch")]
        init: String,
        /// Dropout probability of the MLP's hidden layer.
        #[arg(long, default_value_t = 0.2)]
        dropout: f32,
        /// Standardize MNIST pixels with the training set's mean and std.
        #[arg(long)]
        normalize: bool,
        /// Folder with the MNIST idx files.
        #[arg(long, default_value = "data/mnist")]
        data: PathBuf,
        /// Worker threads (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Clip gradients by their global L2 norm.
        #[arg(long)]
        clip_norm: Option<f64>,
        /// Clip each gradient element to [-v, v].
        #[arg(long)]
        clip_value: Option<f64>,
        /// L1 penalty coefficient added to the loss.
        #[arg(long, default_value_t = 0.0)]
        l1: f64,
        /// L2 penalty coefficient (l2/2 · Σw²) added to the loss.
        #[arg(long, default_value_t = 0.0)]
        l2: f64,
        /// Early stopping: epochs without test-loss improvement before stopping (best weights restored).
        #[arg(long)]
        patience: Option<usize>,
        /// Minimum test-loss decrease that counts as an improvement.
        #[arg(long, default_value_t = 0.0)]
        min_delta: f64,
        /// Stop once test accuracy reaches this percentage.
        #[arg(long)]
        target_accuracy: Option<f64>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Optimizer steps on flat buffers against the memory roofline of their access pattern.
    Step {
        /// An optimizer name (`adam`, `torch.adamw`, `optax.lion`, …) or `all`.
        #[arg(long, default_value = "all")]
        optimizer: String,
        /// Parameters in all.
        #[arg(long, default_value_t = 50_000_000)]
        params: usize,
        /// Split the parameters over this many tensors of realistic sizes.
        #[arg(long, default_value_t = 1)]
        tensors: usize,
        /// Worker threads (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Keyword arguments of a single optimizer, as JSON in the library's own names.
        #[arg(long, default_value = "{}")]
        hparams: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Replay { check: true, paths } => check(&paths),
        Command::Replay { check: false, paths } => replay(&paths),
        Command::List => {
            list();
            Ok(true)
        }
        Command::Train {
            model,
            optimizer,
            lr,
            hparams,
            epochs,
            steps,
            batch_size,
            seed,
            init,
            dropout,
            normalize,
            data,
            threads,
            clip_norm,
            clip_value,
            l1,
            l2,
            patience,
            min_delta,
            target_accuracy,
        } => set_threads(threads)
            .and_then(|_| {
                serde_json::from_str(&hparams).with_context(|| format!("--hparams is not a JSON object: {hparams}"))
            })
            .and_then(|hparams| {
                let (default_lr, default_batch) = train::defaults(&model);
                let lr = lr.or(Some(default_lr));
                let batch_size = batch_size.unwrap_or(default_batch);
                train::run(train::TrainArgs {
                    model,
                    optimizer,
                    lr,
                    hparams,
                    epochs,
                    steps,
                    batch_size,
                    seed,
                    init,
                    dropout,
                    normalize,
                    data,
                    clip_norm,
                    clip_value,
                    l1,
                    l2,
                    patience,
                    min_delta,
                    target_accuracy,
                })
            })
            .map(|_| true),
        Command::Bench { what: BenchCommand::Step { optimizer, params, tensors, threads, steps, hparams } } => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            serde_json::from_str(&hparams)
                .with_context(|| format!("--hparams is not a JSON object: {hparams}"))
                .and_then(|hparams| {
                    bench::run(&bench::StepBench { optimizer, hparams, params, tensors, threads, steps })
                })
                .map(|_| true)
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Sets the worker-thread count once, for rayon and for candle (which otherwise reads
/// `/proc/cpuinfo` on every matmul when `RAYON_NUM_THREADS` is unset).
fn set_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().ok();
    Ok(())
}

fn replay(paths: &[PathBuf]) -> Result<bool> {
    if paths.len() != 1 || paths[0].is_dir() {
        anyhow::bail!("replay without --check takes exactly one case file");
    }
    let case = load_case(&paths[0])?;
    let out = match &case {
        Case::Optim(c) => json!({"id": c.id, "params": c.run().with_context(|| c.id.clone())?}),
        Case::Schedule(c) => json!({"id": c.id, "lr": c.run().with_context(|| c.id.clone())?}),
    };
    println!("{out}");
    Ok(true)
}

fn check(paths: &[PathBuf]) -> Result<bool> {
    let files = collect_case_files(paths)?;
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let outcome = load_case(f).and_then(|c| run_and_check(&c).map(|r| (c.id().to_string(), r)));
        match outcome {
            Ok((id, r)) if r.passed => {
                passed += 1;
                println!("PASS {id}  (worst error {:.3} of tolerance, step {})", r.ratio, r.step);
            }
            Ok((id, r)) => {
                failed += 1;
                println!("FAIL {id}  (error {:.3}× tolerance at step {})", r.ratio, r.step);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}  ({e})", f.display());
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
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
