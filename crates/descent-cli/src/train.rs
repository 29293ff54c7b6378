//! `descent train`: a model on a bundled dataset with any descent optimizer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use descent_train::average::{Anneal, AverageConfig, AverageKind};
use descent_train::checkpoint::Checkpoint;

use crate::folder;
use crate::runs::{json_line, EpochRow, EvalRow, GradNormRow, StepRow};
use crate::show::Num;
use descent_train::augment::Affine;
use descent_train::data::{Dataset, MNIST_MEAN, MNIST_STD};
use descent_train::gpt::{Gpt, GptConfig};
use descent_train::lm::{train_text_with, TextConfig};
use descent_train::mnist;
use descent_train::model::{Init, LeNet5, LinearRegression, Mlp, Model};
use descent_train::parallel::{Communicator, Local};
use descent_train::precision::Precision;
use descent_train::resnet::{CnnConfig, PlainCnn, ResNet};
use descent_train::rng::Rng;
use descent_train::text::CharCorpus;
use descent_train::train::{
    train_with, Control, Distillation, EpochEnd, EpochMetrics, EvalAt, EvalMetrics, Hooks, Loss, LrSchedule,
    SpecSchedule, StepMetrics, Stop, TrainConfig,
};

/// The models `descent train` knows.
pub const MODELS: &[&str] = &["lenet", "mlp", "linear", "resnet", "plain", "gpt"];

/// The text a gpt trains on unless `--text` says otherwise.
pub const DEFAULT_TEXT: &str = "data/tinyshakespeare/input.txt";

/// The flags of `descent train`; also the `config.json` of a run folder and the keys of a
/// `--config` TOML file.
#[derive(clap::Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    /// Model: lenet (LeNet-5 on MNIST), mlp (MNIST), resnet (a residual CNN with batch norm on
    /// MNIST), plain (the same depth without batch norm or skips), linear (regression on
    /// y = 2x + noise) or gpt (nanoGPT's character-level transformer on --text; it trains for
    /// --steps iterations, default 2000, with nanoGPT's CPU recipe as its defaults).
    #[arg(long, default_value = "lenet")]
    pub model: String,
    /// Optimizer by name: adam, adamw, sgd, lion, … or a registry name (torch.sgd, optax.lamb);
    /// also those that evaluate the batch's loss themselves, as often as their step needs: lbfgs,
    /// sam ('{"base": "adamw", "rho": 0.05}' in --hparams), polyak_sgd, momo. Default adam; for
    /// gpt torch.adamw with nanoGPT's arguments (betas (0.9, 0.99), weight decay 0.1), which
    /// --hparams can override one by one.
    #[arg(long)]
    #[serde(default)]
    pub optimizer: Option<String>,
    /// Learning rate; the same setting as `lr` / `learning_rate` in --hparams. Default: the
    /// optimizer library's own (torch Adam and AdamW 1e-3, optax Prodigy 1.0, …); where the library
    /// has none (optax's adam, lion, …) and for torch SGD, the model's suggested rate (lenet 2e-3,
    /// mlp, resnet and gpt 1e-3, linear 0.1).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Other optimizer arguments as JSON, in the library's own names, e.g. '{"momentum": 0.9}'.
    #[arg(long, default_value = "{}")]
    #[arg(value_parser = parse_json)]
    pub hparams: serde_json::Value,
    /// Epochs in all (default 1; with --resume, the new total). Not for gpt, which counts steps.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps. For gpt the length of the run in iterations (one
    /// step on one batch of random windows; default 2000; with --resume, the new total).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Batch size (default: 128 for lenet, resnet and plain, 12 windows for gpt, 32 otherwise).
    /// With --accumulate K it is the micro-batch: a step takes K × --batch-size samples. Under
    /// mpirun it is the global batch of all ranks together, each rank computing its share.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Gradient accumulation: each optimizer step averages the gradients of K micro-batches of
    /// --batch-size samples (PyTorch's loss / K and backward per micro-batch, then one
    /// optimizer.step()), so the effective batch is K × --batch-size: `--accumulate 4
    /// --batch-size 32` trains as `--batch-size 128` (to float rounding) in a quarter of the
    /// activation memory. Clipping sees the accumulated gradient; --steps, schedules and the
    /// step rows count optimizer steps. Default 1.
    #[arg(long, value_name = "K")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<usize>,
    /// With `descent train --data-parallel N` or under `mpirun -n N` (N ≥ 2, a build with
    /// --features mpi; `descent train` and `descent bench train` only): shard the optimizer state
    /// (ZeRO stage 1). Each rank keeps the state of 1/N of the parameters, steps that range on
    /// its part of the reduce-scattered gradient, and the ranks all-gather the parameters: the
    /// losses of the unsharded run to float rounding, the optimizer's state memory per rank
    /// divided by N. With --data-parallel it is also the faster step: each replica steps its
    /// half instead of every replica stepping all of it (the GPT recipe 5–8% faster on 2 cores).
    /// Elementwise optimizers only (Adam, AdamW, SGD, Lion, RMSprop, Adagrad, …):
    /// those whose step reads whole tensors (LAMB, LARS, Adafactor, Muon, Shampoo, Prodigy, …),
    /// evaluates the objective (L-BFGS, SAM) or evaluates other weights (schedule-free,
    /// Lookahead) are refused rather than cut on tensor boundaries. --clip-norm uses the norm of
    /// the whole gradient. Checkpoints hold the whole state, as one process writes it: a run
    /// resumes on any number of ranks, with or without this flag (which, like --threads, is not
    /// part of the run's settings).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_optimizer: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight initialization: torch, xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal.
    #[arg(long, default_value = "torch")]
    pub init: String,
    /// resnet and plain: weighted layers, 4n+2 (6, 10, 14, …; default 6).
    #[arg(long)]
    #[serde(default)]
    pub depth: Option<usize>,
    /// resnet and plain: channels of the first stage, doubled at each later stage (default 16).
    /// lenet: every layer's width scaled by WIDTH/6 (default 6, LeNet-5's 6, 16, 120, 84; 3 gives
    /// a narrow 3, 8, 60, 42).
    #[arg(long)]
    #[serde(default)]
    pub width: Option<usize>,
    /// mlp: units of the hidden layer (default 128).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// Dropout probability: of the MLP's hidden layer (default 0.2), or of gpt's embeddings,
    /// attention weights and residual branches (default 0).
    #[arg(long)]
    #[serde(default)]
    pub dropout: Option<f32>,
    /// Standardize MNIST pixels with the training set's mean and std.
    #[arg(long)]
    pub normalize: bool,
    /// Augment the training images as torchvision's RandomAffine(degrees=R, translate=K/28):
    /// `translate=K,rotate=R` shifts each image by whole pixels uniform in [-K, K] on each axis
    /// and rotates it by an angle uniform in [-R, R] degrees about its centre, nearest-neighbour
    /// (add `,interp=bilinear` for bilinear), pixels from outside black. Drawn from the seed, the
    /// epoch and the sample's position: a resumed run augments as one never stopped.
    #[arg(long, value_name = "translate=K,rotate=R")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// Folder with the MNIST idx files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// gpt: the UTF-8 text file to train on (default data/tinyshakespeare/input.txt). Its
    /// distinct characters are the vocabulary; the first 90% trains, the last 10% validates.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<PathBuf>,
    /// gpt: transformer blocks (default 4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<usize>,
    /// gpt: attention heads per block; must divide --n-embd (default 4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head: Option<usize>,
    /// gpt: width of the embeddings and the residual stream (default 128).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<usize>,
    /// gpt: context length, the characters per training window and the rows of the position
    /// table (default 64).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// gpt: estimate the training and validation losses every this many steps (default 250),
    /// before the first and after the last; each estimate is a row of metrics.jsonl and a
    /// checkpoint.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_interval: Option<u64>,
    /// gpt: batches per split in each loss estimate (nanoGPT's eval_iters; default 200).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_iters: Option<usize>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data parallelism inside this process, as torch.nn.DataParallel replicates a module across
    /// devices: N replicas of the model in threads, each with --threads/N threads, each step's
    /// batch split across them and their gradients summed, exactly as `mpirun -n N` splits it
    /// (batch norm's statistics per replica, its running statistics rank 0's). Small models run
    /// faster so than with every op split across all the threads. Like --threads it is not part
    /// of the run's settings: a run resumes with any number of replicas (another number than
    /// its last is said in a warning: each step's sums, and with dropout its masks, change, so
    /// the resumed run is close to, not bit for bit, the uninterrupted one). `descent train` and
    /// `descent bench train` only.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<usize>,
    /// The arithmetic of the matrix products (linear layers, convolutions, attention) forward
    /// and backward: f32 (default) or bf16, bfloat16 operands summed in f32 as
    /// torch.autocast("cpu", dtype=torch.bfloat16) does, with f32 weights, gradients, optimizer
    /// state and loss. bf16 needs a CPU with AVX-512 BF16. A resumed run may change it.
    #[arg(long, value_name = "f32|bf16")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Clip gradients by their global L2 norm (gpt: 1.0 by default, 0 turns it off).
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Clip each gradient element to [-v, v].
    #[arg(long)]
    pub clip_value: Option<f64>,
    /// L1 penalty coefficient added to the loss.
    #[arg(long, default_value_t = 0.0)]
    pub l1: f64,
    /// L2 penalty coefficient (l2/2 · Σw²) added to the loss.
    #[arg(long, default_value_t = 0.0)]
    pub l2: f64,
    /// Early stopping: epochs without test-loss improvement before stopping (best weights restored).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Minimum test-loss decrease that counts as an improvement.
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,
    /// Stop once test accuracy reaches this percentage.
    #[arg(long)]
    pub target_accuracy: Option<f64>,
    /// Stop when the epoch's training loss changes by less than this.
    #[arg(long)]
    pub min_loss_change: Option<f64>,
    /// A parameter group: parameters whose name contains PATTERN get these optimizer arguments,
    /// e.g. --group 'bias={"weight_decay": 0}'. Repeatable; the first match wins. For gpt, groups
    /// given replace nanoGPT's default ones (no weight decay on `.bias` and `ln_` parameters).
    #[arg(long = "group", value_name = "PATTERN=JSON", value_parser = parse_group)]
    pub groups: Vec<(String, serde_json::Value)>,
    /// Learning-rate schedule: constant (the default), cosine, warmup_cosine, onecycle, linear,
    /// exponential, step, plateau (ReduceLROnPlateau on the test loss), or a library schedule by
    /// name (torch.OneCycleLR, optax.warmup_cosine_decay_schedule, …) with --schedule-args. For gpt
    /// the default is nanoGPT's: warmup_cosine with --warmup-steps 100, --min-lr lr/10 (1e-4) and
    /// --decay-steps equal to --steps.
    #[arg(long)]
    #[serde(default)]
    pub schedule: Option<String>,
    /// warmup_cosine as nanoGPT's get_lr: linear warm-up over this many steps (lr·(t+1)/(N+1) at
    /// step t) instead of the first 5% of the run (gpt: 100; others: 0 when --decay-steps or
    /// --min-lr is given).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// warmup_cosine as nanoGPT's get_lr: the cosine reaches --min-lr at this step and stays there
    /// (default: the run's last step; for gpt fixed at --steps when the run starts, so a resumed
    /// run with a larger --steps stays at --min-lr past it).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<u64>,
    /// warmup_cosine as nanoGPT's get_lr: the learning rate the cosine decays to (default 0; gpt:
    /// lr/10).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// Keyword arguments of a library schedule, as JSON in the library's own names.
    #[arg(long, default_value = "{}", value_parser = parse_json)]
    pub schedule_args: serde_json::Value,
    /// Step a library schedule every optimizer step or every epoch (torch's usual placement).
    #[arg(long, default_value = "step", value_parser = ["step", "epoch"])]
    pub schedule_interval: String,
    /// Hold out the last N training samples as the evaluation set (instead of the test set): the
    /// run's test_* metrics are then validation metrics, as a hyper-parameter search needs.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub validation: usize,
    /// Write each parameter's gradient norm at every step to grad_norms.jsonl (plot and compare
    /// draw them by depth: where gradients vanish).
    #[arg(long)]
    #[serde(default)]
    pub log_grad_norms: bool,
    /// Also write TensorBoard scalar event files (loss, learning rate, gradient norm per step; test
    /// loss and accuracy, samples/s per epoch) under RUN_DIR/tensorboard.
    #[arg(long)]
    #[serde(default)]
    pub tensorboard: bool,
    /// Gradual magnitude pruning (Zhu & Gupta 2017) to this sparsity (a fraction in [0, 1]) of each
    /// Linear and Conv weight, on the schedule of --prune-schedule; pruned weights stay zero.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_to: Option<f64>,
    /// The sparsity schedule of --prune-to: polynomial, s_t = s_f (1 − (t − t0)/(nΔt))³ ramped to
    /// s_f (the default, and the only one).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<String>,
    /// The optimizer step gradual pruning starts at, t0 (default 0).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_start: Option<u64>,
    /// The step the sparsity reaches --prune-to, t0 + nΔt (default: 3/4 of the run's steps, the
    /// rest fine-tunes at the final sparsity).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_end: Option<u64>,
    /// Steps between pruning steps, Δt (default 100).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_frequency: Option<u64>,
    /// Keep an exponential moving average of the weights with this decay, as torch's
    /// `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY))`: updated after every
    /// optimizer step (the first copies), evaluated after each epoch beside the trained weights
    /// (metrics.jsonl: ema_test_loss, ema_test_accuracy) and kept in the checkpoint
    /// (`descent evaluate --weights ema`).
    #[arg(long, value_name = "DECAY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// --ema with a warm-up of the decay, TensorFlow's ExponentialMovingAverage(num_updates): after
    /// n updates the decay is min(DECAY, (1 + n)/(10 + n)).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ema_warmup: bool,
    /// Stochastic weight averaging: an equal average of the weights at the end of each epoch from
    /// this one (counted from 1) on, torch's AveragedModel; from the end of this epoch the learning
    /// rate follows torch's SWALR towards --swa-lr. Models with batch norm get their running
    /// statistics recomputed for the averaged weights at the end (torch's update_bn).
    #[arg(long, value_name = "EPOCH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_start: Option<usize>,
    /// SWA: the learning rate SWALR anneals to (its swa_lr).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_lr: Option<f64>,
    /// SWA: epochs of SWALR's annealing (its anneal_epochs; default 10, 0 jumps at once).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_anneal_epochs: Option<usize>,
    /// SWA: SWALR's annealing curve, cos or linear (its anneal_strategy; default cos).
    #[arg(long, value_parser = ["cos", "linear"])]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_anneal: Option<String>,
    /// --ema or --swa-start: average batch norm's running statistics too (torch's
    /// use_buffers=True) instead of recomputing them for the averaged weights at the end.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub average_buffers: bool,
    /// Quantization-aware training (mlp, lenet), torch.ao.quantization's QAT: each Linear and
    /// Conv weight fake-quantized per output channel to int8 (symmetric, as `descent quantize`
    /// stores it) and each layer's input per tensor to u8 with the range of a moving-average
    /// min/max observer (averaging constant 0.01, moved in training only, kept in the
    /// checkpoint); gradients pass straight through where nothing was clamped. `descent quantize`
    /// of the run then uses the observers' ranges.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qat: bool,
    /// Run folder for config.json, metrics.jsonl/.csv (per epoch), steps.jsonl/.csv (per step) and
    /// checkpoint.safetensors (default: runs/MODEL-OPTIMIZER-seedSEED).
    #[arg(long)]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing run folder.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// Continue the run in this folder from its last checkpoint, with its config.
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// A TOML file with any of these settings (keys as the flags, with underscores); flags given on
    /// the command line override it (--hparams key by key, over the file's `[hparams]`; --group
    /// replaces the file's groups, with a warning).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The settings given on the command line (their ids), which `--resume` compares with the
    /// run's config.
    #[arg(skip)]
    #[serde(skip)]
    pub given: Vec<String>,
    /// Set by `descent distill`: the run is a student trained against these teachers.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSettings>,
}

/// A distillation run's teachers and loss (`descent distill`), kept in its config so that
/// `--resume` continues it with them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSettings {
    /// The teachers' run folders.
    pub teachers: Vec<PathBuf>,
    /// Weight of the teachers' term (α·T²·KL), the labels' cross-entropy taking 1 − α.
    pub alpha: f64,
    pub temperature: f64,
    /// Identities of the teachers' weights when the run began ([`weights_identity`]): a resume
    /// refuses a teacher whose weights have changed since (a folder trained further or
    /// replaced). Empty in the configs of runs from before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_weights: Vec<String>,
    /// The teachers' folders relative to the run's own, when the run began: a project folder
    /// moved or copied elsewhere with its runs still finds them (`teachers` are absolute). Empty
    /// in the configs of runs from before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers_from_run: Vec<PathBuf>,
}

impl DistillSettings {
    /// The teachers' folders as this run finds them: each where its config says, or, where that
    /// is gone, at its place relative to `run_dir` (the run's folder, or the folder of the run's
    /// config.toml given to --config) when that holds one; the second with a note saying so.
    /// Which teacher it is, is checked by its weights' identity.
    fn located(&self, run_dir: Option<&Path>) -> (Vec<PathBuf>, Vec<String>) {
        let mut notes = vec![];
        let dirs = self
            .teachers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let moved = run_dir.zip(self.teachers_from_run.get(i)).map(|(r, rel)| r.join(rel));
                match moved {
                    Some(m) if !t.exists() && m.exists() => {
                        notes.push(format!(
                            "the run's teacher {} is gone; using {}, where it was beside the run",
                            t.display(),
                            m.display()
                        ));
                        m
                    }
                    _ => t.clone(),
                }
            })
            .collect();
        (dirs, notes)
    }
}

/// `to` as a path relative to the folder `from`: both resolved as far as they exist (a new run's
/// folder does not yet: its parent is; [`crate::folder::resolved`]), the rest taken by name; `None`
/// where a path cannot be made absolute or the two are on different drives.
fn relative_to(from: &Path, to: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let names = |p: &Path| -> Option<Vec<std::ffi::OsString>> {
        let mut out = vec![];
        for c in crate::folder::resolved(p)?.components() {
            match c {
                Component::Normal(n) => out.push(n.to_os_string()),
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir | Component::RootDir => {}
                // A drive (Windows): kept as the first name, so that only paths on the same
                // drive share it.
                Component::Prefix(p) => out.push(p.as_os_str().to_os_string()),
            }
        }
        Some(out)
    };
    let (from, to) = (names(from)?, names(to)?);
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if cfg!(windows) && common == 0 {
        // Different drives: no relative path between them.
        return None;
    }
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    Some(rel)
}

/// An identity of a model's weights: FNV-1a over every variable's name and values, as 16 hex
/// digits (an identity, not a defence against tampering).
pub fn weights_identity(model: &dyn Model) -> Result<String> {
    let mut h = Fnv1a::default();
    for (name, v) in model.named_vars() {
        h.eat(name.as_bytes());
        for x in v.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            h.eat(&x.to_bits().to_le_bytes());
        }
    }
    Ok(h.hex())
}

/// FNV-1a, 64 bits: the hash of [`identity`] and [`weights_identity`].
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf29ce484222325)
    }
}

impl Fnv1a {
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    /// As 16 hex digits.
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The settings only gpt takes (left out of a run's config.json when not set).
pub const GPT_KEYS: &[&str] = &["text", "n_layer", "n_head", "n_embd", "block_size", "eval_interval", "eval_iters"];
/// The settings of gradual pruning (left out of config.json when not set).
pub const PRUNE_KEYS: &[&str] = &["prune_to", "prune_schedule", "prune_start", "prune_end", "prune_frequency"];
/// The settings of warmup_cosine in nanoGPT's form (left out of config.json when not set).
pub const SCHEDULE_KEYS: &[&str] = &["warmup_steps", "decay_steps", "min_lr"];
/// The settings of weight averaging (left out of config.json when not set).
pub const AVERAGE_KEYS: &[&str] =
    &["ema", "ema_warmup", "swa_start", "swa_lr", "swa_anneal_epochs", "swa_anneal", "average_buffers", "hidden"];

impl TrainArgs {
    /// The optimizer's name (the model's default when not given).
    pub fn optimizer(&self) -> &str {
        self.optimizer.as_deref().unwrap_or(if self.model == "gpt" { "torch.adamw" } else { "adam" })
    }

    /// The schedule's name (the model's default when not given).
    pub fn schedule(&self) -> &str {
        self.schedule.as_deref().unwrap_or(if self.model == "gpt" { "warmup_cosine" } else { "constant" })
    }

    /// The dropout probability (the model's default when not given).
    pub fn dropout(&self) -> f32 {
        self.dropout.unwrap_or(if self.model == "gpt" { 0.0 } else { 0.2 })
    }

    /// The settings of `descent train FLAGS…` (defaults for the rest).
    pub fn from_flags(flags: &[&str]) -> Result<TrainArgs> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: TrainArgs,
        }
        use clap::Parser;
        Ok(Wrap::try_parse_from(std::iter::once("train").chain(flags.iter().copied()))?.a)
    }

    /// Merges a `--config` file under the flags that were given on the command line.
    pub fn with_config(self, matches: &clap::ArgMatches) -> Result<TrainArgs> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let file = read_toml(&path)?;
        self.merge_table(file, &path, matches, &[])
    }

    /// These settings with the keys of `file` (read from `path`) under the flags given on the
    /// command line. `also` names the keys the caller already took out of the table (listed as
    /// accepted in the error for an unknown one). The run folder flags stay as they are.
    pub fn merge_table(
        self,
        file: toml::Table,
        path: &std::path::Path,
        matches: &clap::ArgMatches,
        also: &[&str],
    ) -> Result<TrainArgs> {
        let mut merged = serde_json::to_value(&self)?;
        let flags = merged.as_object_mut().expect("TrainArgs serializes to an object");
        let mut known: Vec<String> = flags.keys().cloned().collect();
        known.extend(
            GPT_KEYS
                .iter()
                .chain(SCHEDULE_KEYS)
                .chain(PRUNE_KEYS)
                .chain(AVERAGE_KEYS)
                // Flags serialized only when set (absent from `self` at their defaults).
                .chain(&["accumulate", "shard_optimizer", "data_parallel", "augment", "precision", "qat", "distill"])
                .filter(|k| !flags.contains_key(**k))
                .map(|k| k.to_string()),
        );
        // Every value of the file, those the command line overrides included, is read: a file
        // with a value of the wrong type is refused even when a flag hides it this time.
        let mut whole_file = flags.clone();
        for (k, v) in file {
            if !known.contains(&k) {
                let accepted: Vec<&str> = also.iter().copied().chain(known.iter().map(|s| s.as_str())).collect();
                bail!("{}: unknown setting `{k}`; accepted: {}", path.display(), accepted.join(", "));
            }
            let value = toml_json(&v, &format!("{}: `{k}`", path.display()))?;
            // `distill` is a setting without a flag (`descent distill` sets it): never from the
            // command line, and no argument id to ask clap about.
            let from_cli = matches.try_contains_id(&k).is_ok()
                && matches.value_source(&k) == Some(clap::parser::ValueSource::CommandLine);
            if !from_cli {
                flags.insert(k.clone(), value.clone());
            } else if let (Some(file_h), Some(cli_h)) =
                (value.as_object().filter(|_| k == "hparams"), flags.get("hparams").and_then(|h| h.as_object()))
            {
                // The optimizer's arguments merge key by key, the command line's over the file's.
                let mut h = file_h.clone();
                h.extend(cli_h.clone());
                flags.insert(k.clone(), serde_json::Value::Object(h));
            } else if k == "groups" {
                eprintln!("warning: --group replaces the parameter groups of {}", path.display());
            }
            whole_file.insert(k, value);
        }
        // One learning rate: the command line's, given as --lr or in --hparams, over the file's
        // in either place.
        let cli = |k: &str| matches.value_source(k) == Some(clap::parser::ValueSource::CommandLine);
        let cli_h_rate = |key: &str| cli("hparams") && self.hparams.as_object().is_some_and(|h| h.contains_key(key));
        if cli_h_rate("lr") || cli_h_rate("learning_rate") {
            if !cli("lr") {
                flags.insert("lr".into(), serde_json::to_value(self.lr)?);
            }
        } else if cli("lr") {
            if let Some(h) = flags.get_mut("hparams").and_then(|h| h.as_object_mut()) {
                h.remove("lr");
                h.remove("learning_rate");
            }
        }
        settings_from_value(serde_json::Value::Object(whole_file), &path.display().to_string())?;
        let mut out = settings_from_value(merged, &path.display().to_string())?;
        (out.out, out.force, out.resume, out.config, out.given) =
            (self.out, self.force, self.resume, self.config, self.given);
        Ok(out)
    }
}

/// An error about a setting the `--config` file gave (`--threads 0: …`, its checks name the flag)
/// said as the file's: `c.toml: `threads` = 0: --threads 0: …`. Errors about a flag given on the
/// command line (`given`), or about a setting the file does not hold, stay as they are.
pub fn attribute_to_config(e: anyhow::Error, config: Option<&std::path::Path>, given: &[String]) -> anyhow::Error {
    let Some(path) = config else { return e };
    let msg = e.to_string();
    let Some(rest) = msg.strip_prefix("--") else { return e };
    let key: String =
        rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>().replace('-', "_");
    if key.is_empty() || given.contains(&key) {
        return e;
    }
    let Some(value) = read_toml(path).ok().and_then(|t| t.get(&key).cloned()) else { return e };
    e.context(format!("{}: `{key}` = {value}", path.display()))
}

/// Train settings from their JSON form; a value of the wrong type is an error naming its key
/// (`steps: invalid type: string "fifty", expected u64`), after `what` (the file or run).
pub fn settings_from_value(v: serde_json::Value, what: &str) -> Result<TrainArgs> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        anyhow::anyhow!("{what}: `{key}`: {}", e.into_inner())
    })
}

/// A TOML value as JSON. TOML has `nan` and `inf`, which JSON has not (serde_json would make them
/// `null`, read back as "not given"), and dates, which no setting is (serde would make them a
/// table): they are refused, naming `what`.
pub fn toml_json(v: &toml::Value, what: &str) -> Result<serde_json::Value> {
    fn check(v: &toml::Value, what: &str) -> Result<()> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => bail!("{what}: {f} is not a finite number"),
            toml::Value::Datetime(d) => bail!("{what}: {d} is a TOML date, which no setting takes"),
            toml::Value::Array(a) => a.iter().try_for_each(|x| check(x, what)),
            toml::Value::Table(t) => t.iter().try_for_each(|(k, x)| check(x, &format!("{what}.{k}"))),
            _ => Ok(()),
        }
    }
    check(v, what)?;
    serde_json::to_value(v).with_context(|| what.to_string())
}

/// A TOML file as a table, or an error naming the file.
pub fn read_toml(path: &std::path::Path) -> Result<toml::Table> {
    let bytes = descent_train::checkpoint::read_regular(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes).with_context(|| format!("reading {}: not UTF-8 text", path.display()))?;
    // A number that is not zero but below the smallest double reads as 0 (as on the command line).
    for (i, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("");
        if let Some(n) = number_literals(code).into_iter().find(|n| reads_as_zero(n)) {
            bail!("{}: `{n}` at line {}: {READS_AS_ZERO}", path.display(), i + 1);
        }
    }
    toml::from_str(&text).map_err(|e| {
        // One line: where, and what (the parser's own report spans several, its reason last).
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            format!(
                " at line {}, column {}",
                before.matches('\n').count() + 1,
                before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1
            )
        });
        anyhow::anyhow!("{}: malformed TOML{}: {}", path.display(), at.unwrap_or_default(), e.message().trim())
    })
}

/// The decimal literals in `text` (`1`, `-2.5`, `3e-7`) that are not part of a word (`x1e-9`).
pub(crate) fn number_literals(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            out.push(&text[start..i]);
        } else if b[i].is_ascii_alphanumeric() || b[i] == b'_' {
            // A word, with any exponent-like tail inside it (`x1e-900`).
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'.'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Why a literal [`reads_as_zero`] is refused, wherever it was given.
pub(crate) const READS_AS_ZERO: &str =
    "below the smallest positive number a double holds (about 4.9e-324), so it would read as 0; write 0, or a number from 1e-300 up";

/// Whether the literal `n` has a nonzero digit before its exponent yet parses as ±0.
pub(crate) fn reads_as_zero(n: &str) -> bool {
    let mantissa = n.split(['e', 'E']).next().unwrap_or("");
    mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c)) && n.parse::<f64>().is_ok_and(|x| x == 0.0)
}

fn parse_group(s: &str) -> Result<(String, serde_json::Value), String> {
    let (pat, json) = s.split_once('=').ok_or("expected PATTERN=JSON, e.g. bias={\"weight_decay\": 0}")?;
    let v = parse_json(json)?;
    if !v.is_object() {
        return Err(format!("the arguments of group `{pat}` must be a JSON object"));
    }
    Ok((pat.to_string(), v))
}

/// The command-line flag of a clap argument id: the id, dashed, except where the flag is named
/// apart from its field (`--run` fills `runs`, `--param` fills `params`, `--group` fills `groups`).
pub(crate) fn flag_of(id: &str) -> String {
    let name = match id {
        "runs" => "run",
        "params" => "param",
        "groups" => "group",
        other => other,
    };
    format!("--{}", name.replace('_', "-"))
}

/// A value a user typed after `key=` (a run's settings, a search choice): JSON when the text is
/// JSON (`0.1`, `true`, `{"lr": 0.1}`, refusing a key given twice as [`parse_json`] does), else
/// the text itself as a string (`adamw`, `cosine`).
pub(crate) fn parse_value(s: &str) -> Result<serde_json::Value, String> {
    let s = s.trim();
    if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() {
        parse_json(s)
    } else {
        Ok(serde_json::Value::from(s))
    }
}

/// JSON a user typed (`--hparams`, `--group`), as serde_json reads it except that a key given
/// twice in one object is refused: serde_json would keep the last and silently drop the other.
pub(crate) fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    let v = descent_core::json::parse_strict(s);
    v.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        // JSON's grammar allows any exponent, but a double holds none beyond about 1.8e308.
        _ if e.to_string().starts_with("number out of range") => {
            format!("a number beyond the largest a double holds (about 1.8e308), at column {}", e.column())
        }
        _ => format!("not JSON ({e})"),
    })
}

/// SWA's annealing defaults (torch's `SWALR`: 10 epochs, cosine).
const SWA_ANNEAL_EPOCHS: usize = 10;
const SWA_ANNEAL: &str = "cos";

/// The refusal of the commands that have no language-model workload.
const NO_GPT: &str = "the gpt model trains on text through `descent train` and `descent compare`; this command runs the image and regression models";

/// A gpt as its settings describe it (after [`resolve_defaults`]), for a corpus, initialized from
/// `rng` (nanoGPT's initialization).
pub fn gpt_of(a: &TrainArgs, corpus: &CharCorpus, rng: &mut Rng) -> Result<Gpt> {
    Ok(Gpt::new(gpt_config_of(a, corpus)?, rng, &Device::Cpu)?)
}

/// The shape [`gpt_of`] builds, for checks before any weight is allocated.
fn gpt_config_of(a: &TrainArgs, corpus: &CharCorpus) -> Result<GptConfig> {
    let get = |v: Option<usize>, flag: &str| v.with_context(|| format!("{flag} is not set"));
    let (n_layer, n_head, n_embd) =
        (get(a.n_layer, "--n-layer")?, get(a.n_head, "--n-head")?, get(a.n_embd, "--n-embd")?);
    Ok(GptConfig {
        dropout: a.dropout(),
        ..GptConfig::new(corpus.vocab_size(), get(a.block_size, "--block-size")?, n_layer, n_head, n_embd)
    })
}

/// The text of a gpt run (`--text`, the bundled tiny-shakespeare by default).
pub fn corpus_of(a: &TrainArgs) -> Result<CharCorpus> {
    let path = a.text.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_TEXT));
    CharCorpus::load(&path).map_err(|e| {
        let from = if path.exists() { String::new() } else { from_here(&path) };
        anyhow::anyhow!("{e}{from}")
    })
}

/// ` (relative to the working directory …)` for a relative path, else nothing: a run's config
/// keeps a path as given, and a relative one reads from where the command runs.
fn from_here(path: &std::path::Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!(" (relative to the working directory {})", cwd.display()),
        _ => String::new(),
    }
}

/// The model, its training and test sets and its loss.
type Workload = (Box<dyn Model>, Dataset, Dataset, Loss);

/// The CNNs' shape: `--depth` and `--width`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arch {
    pub depth: Option<usize>,
    pub width: Option<usize>,
    /// The MLP's hidden units.
    pub hidden: Option<usize>,
    /// Quantization-aware training (`--qat`): the model fake-quantized, with its observers.
    pub qat: bool,
}

impl Arch {
    pub fn of(a: &TrainArgs) -> Arch {
        Arch { depth: a.depth, width: a.width, hidden: a.hidden, qat: a.qat }
    }
}

/// What `--qat` handles.
const QAT_MODELS: &str = "accepted: mlp, lenet (the models descent quantize runs in int8)";

/// A model by name, initialized from `rng`.
pub fn model_of(model: &str, arch: Arch, init: Init, dropout: f32, rng: &mut Rng) -> Result<Box<dyn Model>> {
    let dev = Device::Cpu;
    let (depth, width) = (arch.depth.unwrap_or(6), arch.width.unwrap_or(16));
    if arch.qat {
        let (inner, dropout) = match model {
            "mlp" => (model_of(model, Arch { qat: false, ..arch }, init, dropout, rng)?, dropout),
            "lenet" => (model_of(model, Arch { qat: false, ..arch }, init, dropout, rng)?, 0.0),
            other => bail!("--qat: quantization-aware training of the {other} model; {QAT_MODELS}"),
        };
        return Ok(Box::new(descent_train::qat::QatModel::new(model, inner, dropout)?));
    }
    // The flag named is the one at fault (the other one's default is valid).
    let cnn_flag = |e: descent_train::Error| match &e {
        descent_train::Error::Param(m) if m.starts_with("width") => anyhow::anyhow!("--{m}"),
        descent_train::Error::Param(m) if m.starts_with("depth") => anyhow::anyhow!("--{m}"),
        _ => anyhow::anyhow!("--depth {depth} --width {width}: {e}"),
    };
    Ok(match model {
        "linear" => Box::new(LinearRegression::new(init, rng, &dev)?),
        "mlp" => Box::new(Mlp::with_hidden(arch.hidden.unwrap_or(MLP_HIDDEN), init, dropout, rng, &dev)?),
        "lenet" => Box::new(LeNet5::with_width(arch.width.unwrap_or(6), init, rng, &dev)?),
        "resnet" => Box::new(ResNet::new(depth, width, init, rng, &dev).map_err(cnn_flag)?),
        "plain" => Box::new(PlainCnn::new(depth, width, init, rng, &dev).map_err(cnn_flag)?),
        "gpt" => bail!(NO_GPT),
        other => bail!("unknown model `{other}`; accepted: {}", MODELS.join(", ")),
    })
}

/// MNIST's training and test sets from `data`, read once per process for each folder and
/// normalization: the replicas of `--data-parallel` (and the runs of a comparison) share one copy
/// (tensors share their storage) instead of each reading and holding its own (16 replicas of the
/// MLP held 4.3 GB).
fn mnist_datasets(data: &std::path::Path, normalize: bool) -> Result<(Dataset, Dataset)> {
    type Loaded = ((PathBuf, bool), (Dataset, Dataset));
    static LOADED: std::sync::Mutex<Vec<Loaded>> = std::sync::Mutex::new(Vec::new());
    let key = (data.to_path_buf(), normalize);
    // Held while loading: the other replicas wait for the first one's copy.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, sets)) = loaded.iter().find(|(k, _)| *k == key) {
        return Ok(sets.clone());
    }
    let m = mnist::load(data).with_context(|| format!("loading MNIST from {}{}", data.display(), from_here(data)))?;
    m.train.expect_size(28, 28)?;
    m.test.expect_size(28, 28)?;
    for (split, what) in [(&m.train, "training"), (&m.test, "test")] {
        if split.is_empty() {
            bail!("{}: no {what} images", split.images_file.display());
        }
    }
    let sets = (Dataset::mnist(&m.train, normalize)?, Dataset::mnist(&m.test, normalize)?);
    let mut digests = DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
    if !digests.iter().any(|(d, _)| d == data) {
        digests.push((data.to_path_buf(), m.digest()));
    }
    loaded.push((key, sets.clone()));
    Ok(sets)
}

/// Why a run folder has no checkpoint to read: a link to nothing, a first checkpoint whose writing
/// was cut short (its temporary copy left: the run was stopped, or the disk filled, after its
/// first epoch's metrics were recorded), a checkpoint gone although the metrics record finished
/// epochs (deleted or moved, or its writing failed), or else `never` (the run stopped before its
/// first one). A cut-short first checkpoint says how to train the run again from its start.
pub fn missing_checkpoint(dir: &std::path::Path, never: &str) -> anyhow::Error {
    let ck = dir.join(folder::run::CHECKPOINT);
    if let Ok(target) = std::fs::read_link(&ck) {
        return anyhow::anyhow!("{}: a link to {}, which does not exist", ck.display(), target.display());
    }
    let epochs = std::fs::read_to_string(dir.join(folder::run::METRICS_JSONL))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    if let Some(pid) = folder::in_use_by(dir) {
        let who = pid.map(|p| format!(" (process {p})")).unwrap_or_default();
        return anyhow::anyhow!(
            "{}: no {} yet: the run is still in progress{who}; its first checkpoint is written at the end of its first epoch",
            dir.display(),
            folder::run::CHECKPOINT
        );
    }
    // A run of a compare or sweep is trained again by its command; a run of its own by train.
    let again = match folder::Marker::read(dir).ok().flatten().and_then(|m| m.parent) {
        Some(parent) => folder::rerun_by_owner(dir, &parent),
        None => format!(
            "`descent train --config {} --out {} --force` trains it again from the start",
            dir.join(folder::run::CONFIG_TOML).display(),
            dir.display()
        ),
    };
    if let Some(tmp) = folder::leftover_of(dir, folder::Kind::Run, folder::run::CHECKPOINT) {
        return anyhow::anyhow!(
            "{}: no {}: the run stopped while writing its first one (the unfinished {} is left), so there is none to \
             read or resume; {again}",
            dir.display(),
            folder::run::CHECKPOINT,
            tmp.display()
        );
    }
    if epochs > 0 {
        return anyhow::anyhow!(
            "{}: no {}, although metrics.jsonl records {epochs} finished epoch(s) or estimate(s): the checkpoint was \
             deleted or moved, or writing it failed (a full disk)",
            dir.display(),
            folder::run::CHECKPOINT
        );
    }
    anyhow::anyhow!("{}: no {}: {never}", dir.display(), folder::run::CHECKPOINT)
}

/// Whether a run failed because a file could not be read or written (a full disk, a folder
/// made read-only, a missing data file), rather than by what training did (a diverged step, a
/// refused setting): an outcome of the machine, which a sweep or a benchmark must not record as
/// the trial's result, but stop on, naming the file, so that `--resume` runs the trial again.
pub fn is_storage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some()
            || matches!(c.downcast_ref::<descent_train::Error>(), Some(descent_train::Error::Data { .. }))
    })
}

/// The digests of the MNIST folders [`mnist_datasets`] read, by folder.
static DIGESTS: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// The digest ([`descent_train::mnist::Mnist::digest`]) of the MNIST folder `data`, once a
/// workload has read it (`None` before, and for the linear model's synthetic data).
pub fn mnist_digest(data: &std::path::Path) -> Option<String> {
    DIGESTS.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(d, _)| d == data).map(|(_, h)| h.clone())
}

/// That the data a run's `args` name is the data its checkpoint `ck` was trained on (where the
/// checkpoint records it), once the workload has read it: other images at the run's data path
/// would resume or score the run on another training or test set without a word.
pub fn check_data_of_checkpoint(ck: &Checkpoint, args: &TrainArgs) -> Result<()> {
    if args.model == "linear" || args.model == "gpt" {
        return Ok(());
    }
    match mnist_digest(&args.data) {
        Some(is) => {
            check_mnist_digest(&args.data, ck.data_digest.as_deref(), &is, "the run's checkpoint was trained on")
        }
        None => Ok(()),
    }
}

/// That the MNIST data read from `data` (digest `is`) is the data a record names (`was`, where
/// it names one), which `made` says what of.
pub(crate) fn check_mnist_digest(data: &std::path::Path, was: Option<&str>, is: &str, made: &str) -> Result<()> {
    match was {
        Some(was) if was != is => bail!(
            "{}: not the MNIST data {made} (digest {is}, the recorded {was}); give the data the run was trained on",
            data.display()
        ),
        _ => Ok(()),
    }
}

/// Builds a workload by name (`lenet`, `mlp`, `resnet`, `plain`, `linear`).
pub fn workload(
    model: &str,
    arch: Arch,
    init: Init,
    dropout: f32,
    normalize: bool,
    data: &std::path::Path,
    rng: &mut Rng,
) -> Result<Workload> {
    let dev = Device::Cpu;
    Ok(match model {
        "linear" => {
            let tr = Dataset::regression(REGRESSION_TRAIN, rng)?;
            let te = Dataset::regression(2_000, rng)?;
            (Box::new(LinearRegression::new(init, rng, &dev)?), tr, te, loss_of(model))
        }
        "mlp" | "lenet" | "resnet" | "plain" => {
            let (tr, te) = mnist_datasets(data, normalize)?;
            (model_of(model, arch, init, dropout, rng)?, tr, te, loss_of(model))
        }
        "gpt" => bail!(NO_GPT),
        other => bail!("unknown model `{other}`; accepted: {}", MODELS.join(", ")),
    })
}

/// Why `--shard-optimizer` is refused on one process (by `train` and `bench train` alike).
const SHARD_ONE_PROCESS: &str = "--shard-optimizer cuts the optimizer state across the replicas of --data-parallel N or the ranks of `mpirun -n N` (N ≥ 2, a build with --features mpi); this run is one process with one replica";

/// Why `--data-parallel` is refused by the commands that train each run in one replica
/// (`compare`, `sweep`, `lr-find`, `distill`, `bench optimizers`).
pub fn one_replica(n: usize) -> String {
    format!(
        "--data-parallel {n}: replicas in threads are started by `descent train` and `descent bench train` only; this command trains each run in one process"
    )
}

/// Refuses the settings of several replicas (`--data-parallel`, `--shard-optimizer`) for a
/// command that trains each run in one process.
pub fn one_process(a: &TrainArgs) -> Result<()> {
    if let Some(n) = a.data_parallel {
        bail!("{}", one_replica(n));
    }
    if a.shard_optimizer {
        bail!(
            "--shard-optimizer cuts the optimizer state across the replicas of `descent train --data-parallel N` or the ranks of `mpirun -n N`; this command trains each run in one process"
        );
    }
    Ok(())
}

/// Settings of `descent bench train`.
pub struct BenchArgs {
    pub model: String,
    pub optimizer: Option<String>,
    /// `--hparams`: the optimizer's other arguments (for gpt without `--optimizer`, merged over
    /// the recipe's).
    pub hparams: Option<serde_json::Value>,
    pub augment: Option<String>,
    pub batch_size: Option<usize>,
    pub batches: usize,
    pub warmup: usize,
    pub threads: usize,
    /// The precisions timed, alternately (`rounds` times each) when several.
    pub precisions: Vec<Precision>,
    /// `--rounds` as given (3 when several precisions are timed and it is not).
    pub rounds: Option<usize>,
    /// The ZeRO-1 step of `descent train --shard-optimizer` (replicas or mpirun ranks).
    pub shard_optimizer: bool,
}

impl BenchArgs {
    /// The rounds the alternation runs: `--rounds` (default 3) when several precisions are
    /// timed, else one.
    fn rounds_run(&self) -> usize {
        if self.precisions.len() > 1 {
            self.rounds.unwrap_or(3)
        } else {
            1
        }
    }
}

/// `--precision f32,bf16` of `descent bench train`: each one checked as `descent train` checks it.
pub fn precisions_of(list: &str) -> Result<Vec<Precision>> {
    if list.split(',').any(|s| s.trim().is_empty()) {
        bail!("--precision {list:?}: an empty entry; give f32, bf16 or both separated by a comma (f32,bf16)");
    }
    let ps: Vec<Precision> = list.split(',').map(|s| precision_of(Some(s.trim()))).collect::<Result<_>>()?;
    if ps.is_empty() {
        bail!("--precision: name at least one of f32, bf16");
    }
    if let Some((i, p)) = ps.iter().enumerate().find(|(i, p)| ps[..*i].contains(p)) {
        bail!("--precision {list}: {} named twice (entry {}); name each precision once", p.name(), i + 1);
    }
    Ok(ps)
}

/// Runs `time` for each precision of `a`, alternately over `a.rounds` rounds when there are
/// several (both see the same machine state), and keeps each one's fastest round.
fn alternate(
    a: &BenchArgs,
    cfg: &mut TrainConfig,
    mut time: impl FnMut(&TrainConfig) -> Result<descent_train::train::BenchTimes>,
) -> Result<Vec<(Precision, descent_train::train::BenchTimes)>> {
    let rounds = a.rounds_run();
    let mut best: Vec<Option<descent_train::train::BenchTimes>> = vec![None; a.precisions.len()];
    for _ in 0..rounds {
        for (i, &p) in a.precisions.iter().enumerate() {
            cfg.precision = p;
            let t = time(cfg)?;
            if best[i].as_ref().is_none_or(|b| t.samples_per_s > b.samples_per_s) {
                best[i] = Some(t);
            }
        }
    }
    Ok(a.precisions.iter().copied().zip(best.into_iter().map(|b| b.expect("one round at least"))).collect())
}

/// With several precisions: each one's throughput against the first's, in `unit`s (`per_sample` of them a
/// sample: the tokens of a window).
fn print_speedups(
    results: &[(Precision, descent_train::train::BenchTimes)],
    rounds: usize,
    unit: &str,
    per_sample: f64,
) {
    if results.len() > 1 {
        let base = results[0].1.samples_per_s;
        let parts: Vec<String> = results
            .iter()
            .map(|(p, t)| {
                let rate = t.samples_per_s * per_sample;
                format!("{} {rate:.0} {unit}/s ({:.2}x)", p.name(), t.samples_per_s / base)
            })
            .collect();
        println!("alternating, best of {rounds} round(s) each: {}", parts.join(", "));
    }
}

/// `descent bench train`: samples/s of forward + backward + step and the share of each; under
/// mpirun each step's batch is split across the ranks and the time of the gradient all-reduce
/// is reported apart (rank 0 prints).
pub fn bench(a: BenchArgs, comm: &dyn Communicator) -> Result<()> {
    if a.shard_optimizer && comm.size() < 2 {
        bail!(SHARD_ONE_PROCESS);
    }
    if a.batches == 0 {
        bail!("--batches 0: time at least one batch");
    }
    if a.warmup.checked_add(a.batches).is_none() {
        bail!("--warmup {} with --batches {}: more batches in all than can be counted", a.warmup, a.batches);
    }
    match a.rounds {
        Some(0) => bail!("--rounds 0: at least one round"),
        Some(r) if a.precisions.len() < 2 => bail!(
            "--rounds {r}: rounds alternate several precisions (--precision f32,bf16); one precision is timed once"
        ),
        _ => {}
    }
    match a.batch_size {
        Some(0) => bail!("--batch-size 0: a batch needs at least one sample"),
        Some(b) if b < comm.size() => bail!(
            "--batch-size {b}: each of the {} {}s times its share of every batch, at least one sample",
            comm.size(),
            comm.unit()
        ),
        _ => {}
    }
    let hparams = a.hparams.clone().unwrap_or_else(|| serde_json::json!({}));
    match hparams.as_object() {
        None => bail!("--hparams {hparams}: a JSON object of the optimizer's arguments"),
        Some(m) => {
            if let Some(k) = ["lr", "learning_rate"].iter().find(|k| m.contains_key(**k)) {
                bail!("--hparams: `{k}` is the recipe's (bench train times a step at the model's default rate); leave it out");
            }
        }
    }
    if a.model == "gpt" {
        return bench_gpt(a, comm);
    }
    let optimizer = a.optimizer.clone().unwrap_or_else(|| "adam".into());
    let batch = a.batch_size.unwrap_or(defaults(&a.model).1);
    let copies = Copies::of(&optimizer, &hparams, comm.size(), a.shard_optimizer);
    check_model_memory(&a.model, Arch::default(), batch, copies, crate::bench::available_memory(), Sizing::Batch)?;
    let mut rng = Rng::new(0);
    let (model, train_set, _, loss) = workload(
        &a.model,
        Arch::default(),
        Init::TorchDefault,
        0.2,
        false,
        std::path::Path::new("data/mnist"),
        &mut rng,
    )?;
    if a.augment.is_some() && a.model == "linear" {
        bail!("--augment: the linear model trains on synthetic data, not images");
    }
    let lr = default_lr(&a.model, &optimizer, &hparams);
    check_step_fits(batch, 1, train_set.len(), &a.model, 0)?;
    let mut cfg = TrainConfig::new(&optimizer, own_lr(&optimizer, &hparams, lr), 1, batch, loss);
    cfg.hparams = hparams;
    cfg.augment = a.augment.as_deref().map(|s| Affine::parse(s, 0.0)).transpose()?;
    cfg.shard_optimizer = a.shard_optimizer;
    check_model_settings(model.as_ref(), &cfg)?;
    let results = alternate(&a, &mut cfg, |cfg| {
        Ok(descent_train::train::bench_with(model.as_ref(), &train_set, cfg, a.warmup, a.batches, comm)?)
    })?;
    if comm.rank() > 0 {
        return Ok(());
    }
    let ranks = ranks_label(comm, a.shard_optimizer);
    let params: usize = model.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    for (precision, t) in &results {
        println!(
            "{} ({params} parameters: {} bytes of f32 gradients summed per step under mpirun or --data-parallel) batch {} with {}{}, \
             {} products, {ranks}{} thread(s), {} batches after {} warm-up: {:.0} samples/s",
            a.model,
            4 * params,
            batch,
            optimizer,
            a.augment.as_deref().map(|s| format!(", augment {s}")).unwrap_or_default(),
            precision.name(),
            a.threads,
            a.batches,
            a.warmup,
            t.samples_per_s
        );
        print_shares(t, a.batches, comm.size() > 1);
        println!(
            "{}",
            serde_json::json!({"model": a.model, "batch_size": batch, "optimizer": optimizer, "augment": a.augment,
                "precision": precision.name(), "threads": a.threads, "ranks": comm.size(),
                "shard_optimizer": a.shard_optimizer, "parameters": params, "samples_per_s": t.samples_per_s,
                "batches": a.batches, "warmup": a.warmup, "data_s": t.data_s, "forward_s": t.forward_s,
                "backward_s": t.backward_s, "step_s": t.step_s, "comm_s": t.comm_s})
        );
    }
    print_speedups(&results, a.rounds_run(), "samples", 1.0);
    Ok(())
}

/// "N ranks × " (" sharded" when so) under mpirun, nothing on one process.
fn ranks_label(comm: &dyn Communicator, sharded: bool) -> String {
    match (comm.size(), sharded) {
        (1, _) => String::new(),
        (n, false) => format!("{n} {}s × ", comm.unit()),
        (n, true) => format!("{n} {}s (optimizer sharded) × ", comm.unit()),
    }
}

/// `descent bench train --model gpt`: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block
/// 64, batch 12 windows of the bundled text, torch.adamw 1e-3 with betas (0.9, 0.99) and weight
/// decay 0.1 on matrices and embeddings, clipping at 1.0), in tokens/s; under mpirun each batch
/// split across the ranks as `descent train --model gpt` splits it.
fn bench_gpt(a: BenchArgs, comm: &dyn Communicator) -> Result<()> {
    if a.augment.is_some() {
        bail!("--augment: gpt reads text, not images");
    }
    let corpus = CharCorpus::load(DEFAULT_TEXT)?;
    let block = 64;
    let mut rng = Rng::new(0);
    let model = Gpt::new(GptConfig::new(corpus.vocab_size(), block, 4, 4, 128), &mut rng, &Device::Cpu)?;
    let batch = a.batch_size.unwrap_or(defaults("gpt").1);
    let mut cfg =
        TrainConfig::new(a.optimizer.as_deref().unwrap_or("torch.adamw"), Some(1e-3), 1, batch, Loss::CrossEntropy);
    if a.optimizer.is_none() {
        cfg.hparams = serde_json::json!({"betas": [0.9, 0.99], "weight_decay": 0.1});
        cfg.groups = Gpt::no_decay_groups();
    }
    if let (Some(given), Some(h)) = (a.hparams.as_ref().and_then(|h| h.as_object()), cfg.hparams.as_object_mut()) {
        h.extend(given.clone());
    }
    cfg.lr = own_lr(&cfg.optimizer, &cfg.hparams, 1e-3);
    // As `train --model gpt` clips: at 1.0 for every optimizer that does not evaluate the loss itself.
    let closure = descent_core::spec::resolve_optimizer(&cfg.optimizer)
        .is_ok_and(|(lib, name)| descent_core::closure::is_closure_optimizer(lib, &name));
    if !closure {
        cfg.clip_norm = Some(1.0);
    }
    cfg.shard_optimizer = a.shard_optimizer;
    check_gpt_memory(&model.config, batch, crate::bench::available_memory(), Sizing::Batch)?;
    check_model_settings(&model, &cfg)?;
    let results = alternate(&a, &mut cfg, |cfg| {
        Ok(descent_train::lm::bench_with(&model, &corpus, cfg, &TextConfig::new(block), a.warmup, a.batches, comm)?)
    })?;
    if comm.rank() > 0 {
        return Ok(());
    }
    let ranks = ranks_label(comm, a.shard_optimizer);
    let params: usize = model.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    for (precision, t) in &results {
        let tokens = t.samples_per_s * block as f64;
        println!(
            "gpt 4x4x128 ({params} parameters: {} bytes of f32 gradients summed per step under mpirun or --data-parallel) block \
             {block} batch {batch} with {}, {} products, {ranks}{} thread(s), {} batches after {} warm-up: {:.0} tokens/s",
            4 * params,
            cfg.optimizer,
            precision.name(),
            a.threads,
            a.batches,
            a.warmup,
            tokens
        );
        print_shares(t, a.batches, comm.size() > 1);
        println!(
            "{}",
            serde_json::json!({"model": "gpt", "batch_size": batch, "block_size": block, "optimizer": cfg.optimizer,
                "precision": precision.name(), "threads": a.threads, "ranks": comm.size(),
                "shard_optimizer": a.shard_optimizer, "parameters": params, "tokens_per_s": tokens,
                "samples_per_s": t.samples_per_s, "batches": a.batches, "warmup": a.warmup, "data_s": t.data_s,
                "forward_s": t.forward_s, "backward_s": t.backward_s, "step_s": t.step_s, "comm_s": t.comm_s})
        );
    }
    print_speedups(&results, a.rounds_run(), "tokens", block as f64);
    Ok(())
}

/// The share of each phase of a benchmark (communication too, under mpirun), and the time per
/// batch.
fn print_shares(t: &descent_train::train::BenchTimes, batches: usize, parallel: bool) {
    let total = t.data_s + t.forward_s + t.backward_s + t.step_s + t.comm_s;
    let comm_part = if parallel {
        format!(
            "  communication {:.1}% ({:.3} ms per step)",
            100.0 * t.comm_s / total,
            1e3 * t.comm_s / batches.max(1) as f64
        )
    } else {
        String::new()
    };
    println!(
        "  batch assembly {:.1}%  forward {:.1}%  backward {:.1}%  optimizer step {:.1}%{comm_part}  ({:.2} ms per batch)",
        100.0 * t.data_s / total,
        100.0 * t.forward_s / total,
        100.0 * t.backward_s / total,
        100.0 * t.step_s / total,
        1e3 * total / batches as f64
    );
}

/// The learning rate a run takes when none is given: the optimizer library's own default, as
/// its constructor has it (torch `Adam` 1e-3, optax `contrib.prodigy` 1.0); the model's suggested
/// rate where the library requires one (optax `adam(learning_rate)`) and for torch SGD, whose
/// 1e-3 (since torch 2.2) is a placeholder rather than a recipe.
///
/// A closure-driven optimizer's rate comes from its arguments `hparams` where they set it (SAM's
/// base optimizer), else from its library (torch `LBFGS` 1.0).
pub fn default_lr(model: &str, optimizer: &str, hparams: &serde_json::Value) -> f64 {
    let suggested = defaults(model).0;
    match descent_core::spec::resolve_optimizer(optimizer) {
        Ok((lib, name)) if descent_core::closure::is_closure_optimizer(lib, &name) => {
            descent_core::closure::default_learning_rate(lib, &name, hparams).unwrap_or(suggested)
        }
        Ok((lib, name)) if !(lib == "torch" && name == "sgd") => {
            descent_core::spec::library_default_lr(lib, &name).unwrap_or(suggested)
        }
        _ => suggested,
    }
}

/// The rate a run passes to its optimizer: `lr`, or none for an optimizer without a learning rate
/// of its own (`optax.chain`, `po.lookahead`: its links' arguments hold their rates; the library
/// refuses a rate given to it).
pub fn own_lr(optimizer: &str, hparams: &serde_json::Value, lr: f64) -> Option<f64> {
    match descent_core::spec::resolve_optimizer(optimizer) {
        Ok((lib, name)) if !descent_core::spec::takes_learning_rate(lib, &name, hparams) => None,
        _ => Some(lr),
    }
}

/// The registry name of the run's optimizer when it evaluates the objective itself (L-BFGS, SAM,
/// Polyak SGD, MoMo).
pub fn closure_optimizer(a: &TrainArgs) -> Option<String> {
    let (lib, name) = descent_core::spec::resolve_optimizer(a.optimizer()).ok()?;
    descent_core::closure::is_closure_optimizer(lib, &name).then(|| format!("{lib}.{name}"))
}

/// Per-model defaults: (suggested learning rate, batch size), the recipes the README quotes.
pub fn defaults(model: &str) -> (f64, usize) {
    match model {
        "lenet" => (2e-3, 128),
        "resnet" | "plain" => (1e-3, 128),
        "linear" => (0.1, 32),
        "gpt" => (1e-3, 12),
        _ => (1e-3, 32),
    }
}

/// What the user sees: a progress bar per epoch (hidden when stderr is not a terminal or the run
/// is quiet), a summary line per epoch; and what stays: metrics per step and per epoch, TensorBoard
/// events when asked, and a checkpoint per epoch in the run folder.
struct CliHooks<'a> {
    run_dir: &'a RunDir,
    /// The folder's start, when it waits for the training loop's checks (a resume).
    start: Option<FolderStart>,
    /// False on the ranks other than 0 of a data-parallel run: nothing shown, nothing written.
    writer: bool,
    quiet: bool,
    on_eval: Option<OnEval<'a>>,
    bar: Option<indicatif::ProgressBar>,
    loss_sum: f64,
    seen: usize,
    steps: StepWriter,
    tensorboard: Option<descent_train::tensorboard::Scalars>,
    state_bytes: usize,
    /// The first error of a per-step write, raised at the epoch's end.
    error: Option<String>,
    /// Set for a language model: its "epochs" are the loss estimates every --eval-interval steps.
    text: Option<TextRun>,
    /// An image model's data ([`mnist_digest`]), for its checkpoints.
    data_digest: Option<String>,
    /// What the epoch lines name the evaluation's samples.
    eval_set: crate::evaluate::EvalSet,
}

/// What the hooks of a language-model run add: the model's shape and vocabulary for its
/// checkpoints, and the windows a step trains on (batch and block size) for its reports.
struct TextRun {
    model_config: String,
    vocab: String,
    text_digest: String,
    batch: usize,
    block: usize,
}

/// What a run writes into its folder before its first step: for a resume, the metric files cut
/// back to the checkpoint's rows first; then `config.json` (and `config.toml` where TOML can hold
/// the settings), the CSV headers and the TensorBoard writer.
struct FolderStart {
    /// `(epochs, steps)` of the checkpoint a resume goes on from.
    cut_back_to: Option<(usize, u64)>,
    config_json: String,
    config_toml: Option<String>,
    tensorboard: bool,
    quiet: bool,
}

impl FolderStart {
    fn apply(self, run_dir: &RunDir) -> Result<Option<descent_train::tensorboard::Scalars>> {
        if let Some((epochs, steps)) = self.cut_back_to {
            // What a killed command left half-written goes first.
            folder::remove_leftovers(&run_dir.dir, folder::Kind::Run)?;
            let (warnings, cut_row) = run_dir.truncate_after(epochs, steps)?;
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
            descent_train::tensorboard::Scalars::cut_back(&run_dir.dir.join(folder::run::TENSORBOARD), steps, cut_row)?;
            run_dir.cut_row.set(cut_row.then_some(epochs + 1));
        }
        folder::write_atomic(&run_dir.dir.join(folder::run::CONFIG_JSON), self.config_json.as_bytes())?;
        match &self.config_toml {
            Some(text) => folder::write_atomic(&run_dir.dir.join(folder::run::CONFIG_TOML), text.as_bytes())?,
            None if !self.quiet => eprintln!(
                "warning: {} not written: a setting is null, which TOML cannot hold ({} holds every setting)",
                folder::run::CONFIG_TOML,
                folder::run::CONFIG_JSON
            ),
            None => {}
        }
        run_dir.start_csvs()?;
        Ok(if self.tensorboard {
            Some(descent_train::tensorboard::Scalars::create(&run_dir.dir.join(folder::run::TENSORBOARD))?)
        } else {
            None
        })
    }
}

impl Hooks for &mut CliHooks<'_> {
    fn on_start(&mut self) -> descent_train::Result<()> {
        if let Some(start) = self.start.take() {
            self.tensorboard = start.apply(self.run_dir).map_err(|e| descent_train::Error::Data {
                path: self.run_dir.dir.display().to_string(),
                message: format!("{e:#}"),
            })?;
        }
        Ok(())
    }

    fn on_eval(&mut self, e: &EvalMetrics) -> descent_train::Result<Control> {
        if !self.writer {
            return Ok(Control::Continue);
        }
        let row = EvalRow { epoch: e.epoch, step: e.step, test_loss: e.test_loss, test_accuracy: e.test_accuracy };
        let path = self.run_dir.dir.join(folder::run::EVALS_JSONL);
        folder::append(&path, &json_line(&row), false)
            .map_err(|e| descent_train::Error::Data { path: path.display().to_string(), message: format!("{e:#}") })?;
        Ok(match &mut self.on_eval {
            Some(f) => f(e),
            None => Control::Continue,
        })
    }

    fn on_step(&mut self, s: &StepMetrics) -> Control {
        if !self.writer {
            return Control::Continue;
        }
        // The rate the step used, as the optimizer holds it (its base rate times the multiplier
        // when it holds none, e.g. torch Rprop).
        let lr = self.run_dir.lr(s.lr, s.lr_scale);
        self.steps.write(s, lr.unwrap_or(f64::NAN));
        if let Some(tb) = &mut self.tensorboard {
            let r = tb
                .scalar("train/loss", s.step, s.loss as f64)
                .and_then(|_| lr.map_or(Ok(()), |lr| tb.scalar("train/lr", s.step, lr)))
                .and_then(|_| tb.scalar("train/grad_norm", s.step, s.grad_norm));
            if let Err(e) = r {
                self.error.get_or_insert(format!("writing TensorBoard events: {e}"));
            }
        }
        if self.quiet {
            return Control::Continue;
        }
        if s.batch == 0 || self.bar.is_none() {
            let bar = indicatif::ProgressBar::new(s.batches as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(match self.text {
                // The steps up to the next loss estimate.
                Some(_) => format!("steps {}..{}", s.step, s.step - s.batch as u64 + s.batches as u64),
                None => format!("epoch {}", s.epoch),
            });
            self.bar = Some(bar);
            self.loss_sum = 0.0;
            self.seen = 0;
        }
        self.loss_sum += s.loss as f64 * s.samples as f64;
        self.seen += s.samples;
        if let Some(bar) = &self.bar {
            bar.set_position(s.batch as u64 + 1);
            if s.batch.is_multiple_of(20) || s.batch + 1 == s.batches {
                let rate = self.seen as f64 / bar.elapsed().as_secs_f64().max(1e-9);
                let lr = lr.map(|lr| format!("  lr {lr:.2e}")).unwrap_or_default();
                bar.set_message(format!("loss {:.4}{lr}  {rate:.0} samples/s", self.loss_sum / self.seen as f64));
            }
        }
        Control::Continue
    }

    fn on_epoch(&mut self, m: &EpochMetrics, end: &mut EpochEnd) -> descent_train::Result<()> {
        if !self.writer {
            return Ok(());
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let set = self.eval_set.name();
        let mut acc = m.test_accuracy.map(|a| format!("  {set} accuracy {:.2}%", 100.0 * a)).unwrap_or_default();
        if let Some(av) = &m.average {
            acc += &match av.test_accuracy {
                Some(x) => format!("  ({} {:.2}%)", av.label, 100.0 * x),
                None => format!("  ({} {set} loss {:.4})", av.label, av.test_loss),
            };
        }
        // A chain whose rate is a `scale` link holds none to report.
        let lr = self.run_dir.lr(m.lr, m.lr_scale).map(|lr| format!("  lr {lr:.3e}")).unwrap_or_default();
        // Said once the epoch is saved: a reader of the output that goes away (`| head`, which
        // ends the process) must not cost the epoch it was told about.
        let line = if let (Some(t), false) = (&self.text, self.quiet) {
            let speed = if m.seconds > 0.0 {
                // Windows per second: steps of `batch` windows of `block` tokens.
                let ms = 1e3 * t.batch as f64 / m.samples_per_s;
                format!("  {ms:.1} ms/step  {:.0} tokens/s", m.samples_per_s * t.block as f64)
            } else {
                String::new()
            };
            Some(format!("step {}: train loss {:.4}  val loss {:.4}{lr}{speed}", m.steps, m.train_loss, m.test_loss))
        } else if !self.quiet {
            Some(format!(
                "epoch {}: {} steps  train loss {:.4}  {set} loss {:.4}{}{lr}  {:.1}s  {:.0} samples/s",
                m.epoch, m.steps, m.train_loss, m.test_loss, acc, m.seconds, m.samples_per_s
            ))
        } else {
            None
        };
        let saved = self.save_epoch(m, end);
        if let Some(line) = line {
            println!("{line}");
        }
        saved
    }
}

impl CliHooks<'_> {
    /// An epoch's records and checkpoint, in the order a kill leaves consistent: its steps, its
    /// TensorBoard events, its metrics row, then the checkpoint.
    fn save_epoch(&mut self, m: &EpochMetrics, end: &mut EpochEnd) -> descent_train::Result<()> {
        self.state_bytes = self.state_bytes.max(end.state_bytes());
        let io = |e: String| descent_train::Error::Data { path: self.run_dir.dir.display().to_string(), message: e };
        if let Some(e) = self.error.take() {
            return Err(io(e));
        }
        self.steps.flush(&self.run_dir.dir).map_err(|e| io(format!("{e:#}")))?;
        if let Some(tb) = &mut self.tensorboard {
            let step = m.steps;
            let mut r = tb.scalar("epoch/train_loss", step, m.train_loss);
            r = r.and_then(|_| tb.scalar("epoch/test_loss", step, m.test_loss));
            if let Some(a) = m.test_accuracy {
                r = r.and_then(|_| tb.scalar("epoch/test_accuracy", step, a));
            }
            // A rate only where time was measured (gpt's evaluation at step 0 has none).
            if m.seconds > 0.0 {
                r = r.and_then(|_| tb.scalar("epoch/samples_per_s", step, m.samples_per_s));
            }
            r.and_then(|_| tb.flush()).map_err(|e| io(format!("writing TensorBoard events: {e}")))?;
        }
        self.run_dir.append(m).map_err(|e| io(format!("{e:#}")))?;
        let mut ck = end.checkpoint()?;
        ck.run_id = self.run_dir.id.clone();
        ck.config_hash = self.run_dir.config_hash.clone();
        if let Some(t) = &self.text {
            ck.model_config = Some(t.model_config.clone());
            ck.vocab = Some(t.vocab.clone());
            ck.text_digest = Some(t.text_digest.clone());
        }
        ck.data_digest = self.data_digest.clone();
        ck.save(&self.run_dir.checkpoint())
    }
}

/// steps.jsonl and steps.csv: one line per optimizer step, gathered in memory and appended at
/// each epoch's end (before its checkpoint) in one write per file, so that a kill leaves at most
/// one torn line at a file's end, which resume cuts.
#[derive(Default)]
struct StepWriter {
    jsonl: String,
    csv: String,
    grad_norms: String,
}

impl StepWriter {
    fn write(&mut self, s: &StepMetrics, lr: f64) {
        let row = StepRow { step: s.step, epoch: s.epoch, loss: s.loss, lr, grad_norm: s.grad_norm };
        self.jsonl += &json_line(&row);
        self.csv += &row.csv();
        if !s.param_grad_norms.is_empty() {
            self.grad_norms += &json_line(&GradNormRow { step: s.step, norms: s.param_grad_norms.clone() });
        }
    }

    fn flush(&mut self, dir: &std::path::Path) -> Result<()> {
        folder::append(&dir.join(folder::run::STEPS_JSONL), &std::mem::take(&mut self.jsonl), false)?;
        folder::append(&dir.join(folder::run::GRAD_NORMS_JSONL), &std::mem::take(&mut self.grad_norms), false)?;
        folder::append(&dir.join(folder::run::STEPS_CSV), &std::mem::take(&mut self.csv), false)
    }
}

/// The run folder's files.
struct RunDir {
    dir: PathBuf,
    base_lr: f64,
    /// The folder's id and the hash of its config, written into every checkpoint.
    id: String,
    config_hash: String,
    /// The epoch whose row a step limit cut, kept in metrics.jsonl when the run resumed until
    /// the resumed run writes that epoch's row in its place (a resume that fails before loses
    /// nothing).
    cut_row: std::cell::Cell<Option<usize>>,
}

impl RunDir {
    /// The learning rate to report: the one the optimizer holds (`reported`), else the run's
    /// base rate times the multiplier (torch Rprop holds none); `None` when neither is known (a
    /// chain whose rate is its `scale` link, with no --lr). The files write `None` as NaN.
    fn lr(&self, reported: Option<f64>, scale: f64) -> Option<f64> {
        reported.or_else(|| self.base_lr.is_finite().then_some(self.base_lr * scale))
    }

    fn checkpoint(&self) -> PathBuf {
        self.dir.join(folder::run::CHECKPOINT)
    }

    /// The CSV files with their header lines, if they are new.
    fn start_csvs(&self) -> Result<()> {
        for (name, header) in
            [(folder::run::STEPS_CSV, StepRow::CSV_HEADER), (folder::run::METRICS_CSV, EpochRow::CSV_HEADER)]
        {
            let p = self.dir.join(name);
            if std::fs::metadata(&p).map(|m| m.len() == 0).unwrap_or(true) {
                folder::append(&p, header, false)?;
            }
        }
        Ok(())
    }

    /// Appends one epoch to metrics.jsonl and metrics.csv, one write each; first, where this
    /// epoch's row from a step limit's cut was kept, that row goes (the files rewritten without
    /// it, atomically).
    fn append(&self, m: &EpochMetrics) -> Result<()> {
        if self.cut_row.get() == Some(m.epoch) {
            let (_, kept) = kept_records(&self.dir.join(folder::run::METRICS_JSONL), |r: &EpochRow| r.epoch < m.epoch)?;
            if let Some(text) = kept {
                let csv: String = std::iter::once(EpochRow::CSV_HEADER.to_string())
                    .chain(text.lines().filter_map(|l| serde_json::from_str::<EpochRow>(l).ok()).map(|r| r.csv()))
                    .collect();
                folder::write_atomic(&self.dir.join(folder::run::METRICS_CSV), csv.as_bytes())?;
                folder::write_atomic(&self.dir.join(folder::run::METRICS_JSONL), text.as_bytes())?;
            }
            self.cut_row.set(None);
        }
        let row = EpochRow {
            epoch: m.epoch,
            steps: m.steps,
            train_loss: m.train_loss,
            test_loss: m.test_loss,
            test_accuracy: m.test_accuracy,
            seconds: m.seconds,
            samples_per_s: m.samples_per_s,
            lr: self.lr(m.lr, m.lr_scale).unwrap_or(f64::NAN),
            ema_test_loss: m.average.as_ref().filter(|a| a.label == "ema").map(|a| a.test_loss),
            ema_test_accuracy: m.average.as_ref().filter(|a| a.label == "ema").and_then(|a| a.test_accuracy),
            swa_test_loss: m.average.as_ref().filter(|a| a.label == "swa").map(|a| a.test_loss),
            swa_test_accuracy: m.average.as_ref().filter(|a| a.label == "swa").and_then(|a| a.test_accuracy),
        };
        folder::append(&self.dir.join(folder::run::METRICS_JSONL), &json_line(&row), false)?;
        folder::append(&self.dir.join(folder::run::METRICS_CSV), &row.csv(), false)
    }

    /// Cuts every metric file back to the complete records the checkpoint covers: steps up to
    /// `steps` and the `epochs` completed (the row of an epoch cut by `--steps` goes: the resumed
    /// run writes it again, whole). Torn lines (a kill mid-write) go too. Returns warnings for
    /// what the files lost before this resume, where the resumed run's rows would otherwise
    /// follow a gap without a word: steps.jsonl or metrics.jsonl ending before the checkpoint
    /// (rows lost to an edit or a cut file), and whole lines of a log that no longer read as its
    /// records (dropped). The CSV mirrors are rebuilt from the logs' records kept.
    fn truncate_after(&self, epochs: usize, steps: u64) -> Result<(Vec<String>, bool)> {
        // A CSV row counts when it has its header's fields and its first one is in range.
        let csv = |header: &str, l: &str, keep: &dyn Fn(u64) -> bool| {
            l == header.trim_end()
                || (l.split(',').count() == header.split(',').count()
                    && l.split(',').next().and_then(|x| x.parse::<u64>().ok()).is_some_and(keep))
        };
        let d = &self.dir;
        let step_ok = |s: u64| s <= steps;
        let epoch_ok = |e: u64| e <= epochs as u64;
        // The row of the epoch a step limit cut at the checkpoint stays until the resumed run
        // writes that epoch's row ([`RunDir::append`]).
        let mut cut_row = false;
        // Everything is read and decided first, then written: the CSV mirrors, then the logs they
        // mirror, so that a write that fails (a full disk, a file made read-only) leaves the logs
        // as they were.
        let mut logs: Vec<(PathBuf, String)> = vec![];
        let mut log = |name: &str, (bad, kept): (usize, Option<String>)| {
            if let Some(kept) = kept {
                logs.push((d.join(name), kept));
            }
            (name.to_string(), bad)
        };
        // The last step steps.jsonl keeps, and the last epoch metrics.jsonl keeps; the rows kept,
        // for the CSV mirrors.
        let (mut last, mut last_epoch) = (0, 0u64);
        let (mut step_csv, mut epoch_csv) = (String::from(StepRow::CSV_HEADER), String::from(EpochRow::CSV_HEADER));
        let unreadable = [
            log(
                folder::run::STEPS_JSONL,
                kept_records(&d.join(folder::run::STEPS_JSONL), |r: &StepRow| {
                    let kept = step_ok(r.step);
                    if kept {
                        last = last.max(r.step);
                        step_csv.push_str(&r.csv());
                    }
                    kept
                })?,
            ),
            log(
                folder::run::GRAD_NORMS_JSONL,
                kept_records(&d.join(folder::run::GRAD_NORMS_JSONL), |r: &GradNormRow| step_ok(r.step))?,
            ),
            log(
                folder::run::EVALS_JSONL,
                kept_records(&d.join(folder::run::EVALS_JSONL), |r: &EvalRow| step_ok(r.step))?,
            ),
            log(
                folder::run::METRICS_JSONL,
                kept_records(&d.join(folder::run::METRICS_JSONL), |r: &EpochRow| {
                    let cut = r.epoch == epochs + 1 && r.steps == steps;
                    cut_row |= cut;
                    let kept = epoch_ok(r.epoch as u64) || cut;
                    if kept {
                        last_epoch = last_epoch.max(r.epoch as u64);
                        epoch_csv.push_str(&r.csv());
                    }
                    kept
                })?,
            ),
        ];
        let mut warnings: Vec<String> = unreadable
            .iter()
            .filter(|(_, bad)| *bad > 0)
            .map(|(name, bad)| {
                format!(
                    "{}: {bad} line(s) that do not read as its records (edited?) were dropped",
                    d.join(name).display()
                )
            })
            .collect();
        // Each CSV mirror rebuilt from its log's records kept, so that a cut or edited CSV cannot
        // disagree with the log silently (without its log, cut back as the log would be).
        let mut mirrors: Vec<(PathBuf, String)> = vec![];
        for (jsonl, name, rows, header, ok) in [
            (
                folder::run::STEPS_JSONL,
                folder::run::STEPS_CSV,
                &step_csv,
                StepRow::CSV_HEADER,
                &step_ok as &dyn Fn(u64) -> bool,
            ),
            (folder::run::METRICS_JSONL, folder::run::METRICS_CSV, &epoch_csv, EpochRow::CSV_HEADER, &epoch_ok),
        ] {
            let path = d.join(name);
            if d.join(jsonl).exists() {
                if std::fs::read_to_string(&path).ok().as_ref() != Some(rows) {
                    mirrors.push((path, rows.clone()));
                }
            } else if let Some(kept) = folder::kept_lines(&path, |l| csv(header, l, ok))? {
                mirrors.push((path, kept));
            }
        }
        for (path, text) in mirrors.iter().chain(&logs) {
            folder::write_atomic(path, text.as_bytes())?;
        }
        if last < steps {
            warnings.push(format!(
                "{} ends at step {last} and the checkpoint is at step {steps}: the rows of steps {}–{steps} are missing \
                 (the file was cut or edited); the resumed run's rows follow from step {}",
                d.join(folder::run::STEPS_JSONL).display(),
                last + 1,
                steps + 1
            ));
        }
        if last_epoch < epochs as u64 {
            warnings.push(format!(
                "{} ends at epoch {last_epoch} and the checkpoint is after epoch {epochs}: the rows of epochs {}–{epochs} \
                 are missing (the file was cut or edited); the resumed run's rows follow from epoch {}",
                d.join(folder::run::METRICS_JSONL).display(),
                last_epoch + 1,
                epochs + 1
            ));
        }
        Ok((warnings, cut_row))
    }
}

/// The complete lines of the JSON-lines file `path` that read as records `T` and that `keep`
/// keeps, as the file's new text (`None` where it stays as it is), and how many complete lines
/// did not read (a torn last line, without its newline, goes without being counted). Nothing is
/// written.
fn kept_records<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<(usize, Option<String>)> {
    let mut unreadable = 0;
    let kept = folder::kept_lines(path, |l| match serde_json::from_str::<T>(l) {
        Ok(r) => keep(&r),
        Err(_) => {
            unreadable += 1;
            false
        }
    })?;
    Ok((unreadable, kept))
}

/// Decides, after each mid-epoch evaluation, whether a run goes on (a sweep's pruner).
pub type OnEval<'a> = Box<dyn FnMut(&EvalMetrics) -> Control + Send + 'a>;

/// How a run reports while it trains.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// No progress bar and no per-epoch lines (runs of `descent compare` in parallel).
    pub quiet: bool,
    /// Evaluations within epochs (written to evals.jsonl and passed to `on_eval`).
    pub eval_at: Option<EvalAt>,
    pub on_eval: Option<OnEval<'a>>,
    /// The id of the compare or sweep folder this run belongs to (see `folder::Marker::parent`).
    pub parent: Option<String>,
    /// Weights to start from instead of the initialization, and pruning masks to keep (the
    /// fine-tuning of `descent prune`).
    pub start: Option<StartFrom>,
    /// The ranks of a data-parallel run (`mpirun`); one process when `None`. Rank 0 alone writes
    /// the run folder and reports.
    pub comm: Option<&'a dyn Communicator>,
}

/// Where a run starts: trained weights and buffers, and the masks that keep pruned weights zero.
pub struct StartFrom {
    pub weights: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub buffers: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub pruner: std::sync::Arc<descent_train::prune::Pruner>,
    /// The record of the pruned model the run fine-tunes, written into the folder as soon as it
    /// is claimed: a fine-tuning killed and resumed with `descent train --resume` is then known
    /// for what it is (its zeros kept as masks, its model files written at its end).
    pub info: Option<descent_train::compress::CompressInfo>,
}

/// What a finished run leaves for its caller.
pub struct RunOutcome {
    pub dir: PathBuf,
    pub args: TrainArgs,
    pub history: Vec<EpochMetrics>,
    pub stop: Stop,
    /// The largest optimizer state seen at an epoch's end, in bytes as stored.
    pub state_bytes: usize,
    /// The first value of each parameter at the end, by name (what a regression learned).
    pub first_values: Vec<(String, f32)>,
    /// Set when `--resume` found the run already at its end: why nothing was trained.
    pub nothing_to_do: Option<String>,
}

impl RunOutcome {
    /// The run's result: the epoch whose weights its folder holds, the best one where early
    /// stopping restored it, else the last.
    pub fn result(&self) -> Option<&EpochMetrics> {
        match self.stop {
            Stop::EarlyStopping { best_epoch } => self.history.iter().find(|e| e.epoch == best_epoch),
            _ => self.history.last(),
        }
    }
}

/// Whether this run is a prune's fine-tuning (it writes a compressed model's folder itself), which
/// may replace another compressed model's folder with `--force`.
fn replaces_compressed(opts: &RunOptions) -> bool {
    opts.start.as_ref().is_some_and(|s| s.info.is_some())
}

/// A pruned or quantized model's folder (compress.json without config.json) is marked a run but
/// holds none: no run `--force` may replace or `--resume` continue.
fn refuse_compressed_output(dir: &std::path::Path) -> Result<()> {
    if folder::is_compressed_output(dir) {
        bail!("{}: the output of descent prune or quantize, not a training run: choose another --out", dir.display());
    }
    Ok(())
}

pub fn run(a: TrainArgs, comm: &dyn Communicator) -> Result<()> {
    let out = execute(a, RunOptions { comm: Some(comm), ..Default::default() })?;
    if comm.rank() > 0 {
        return Ok(());
    }
    if let Some(why) = &out.nothing_to_do {
        println!("{why}");
        return Ok(());
    }
    let a = &out.args;
    match out.stop {
        Stop::EarlyStopping { best_epoch } => {
            println!(
                "early stopping: no improvement for {} epoch(s); restored epoch {best_epoch}",
                a.patience.unwrap_or(0)
            )
        }
        Stop::TargetAccuracy => println!("target accuracy reached"),
        Stop::Converged => {
            println!("converged: the training loss changed by less than {}", a.min_loss_change.unwrap_or(0.0))
        }
        Stop::Requested { step } => println!("stopped at step {step}"),
        Stop::Steps | Stop::Epochs => {}
    }
    let last = out.result();
    let set = crate::evaluate::EvalSet::of(a);
    println!("run folder: {}", out.dir.display());
    if let Some(last) = last {
        if let Some(av) = &last.average {
            let bn = if av.bn_batches > 0 {
                format!(", batch norm recomputed over {} batches", av.bn_batches)
            } else {
                String::new()
            };
            // Early stopping restores its best epoch's weights, without the average of the last.
            let kept = match out.stop {
                Stop::EarlyStopping { best_epoch } => {
                    format!("; the last epoch's, not kept: early stopping restored epoch {best_epoch}")
                }
                _ => String::new(),
            };
            match av.test_accuracy {
                Some(acc) => println!(
                    "{} {} ({} updates{bn}{kept})",
                    av.label,
                    crate::evaluate::accuracy_line(set, acc),
                    av.n_averaged
                ),
                None => println!(
                    "{} {} loss: {:.5} ({} updates{bn}{kept})",
                    av.label,
                    set.name(),
                    av.test_loss,
                    av.n_averaged
                ),
            }
        }
        match last.test_accuracy {
            Some(acc) => println!("{}", crate::evaluate::accuracy_line(set, acc)),
            None if a.model == "gpt" => println!(
                "validation loss: {:.4} nats/char (train {:.4}) after {} steps",
                last.test_loss, last.train_loss, last.steps
            ),
            None => {
                let w: Vec<String> = out.first_values.iter().map(|(n, v)| format!("{n} = {v:.4}")).collect();
                println!("{} loss: {:.5}  ({})", set.name(), last.test_loss, w.join(", "));
            }
        }
    }
    Ok(())
}

/// The most worker threads accepted (beyond it a typo, e.g. `--threads 100000`, would start a
/// thread per unit and stall the machine).
pub const MAX_THREADS: usize = 1024;

/// Checks every numeric setting: finite and in its range. Settings from a flag or a TOML file are
/// named by their flag.
pub fn check_numbers(a: &TrainArgs) -> Result<()> {
    fn finite(flag: &str, v: f64) -> Result<f64> {
        if !v.is_finite() {
            bail!("{flag} {v}: must be a finite number");
        }
        Ok(v)
    }
    if let Some(lr) = a.lr {
        if finite("--lr", lr)? < 0.0 {
            bail!("--lr {}: the learning rate must be at least 0", Num(lr));
        }
    }
    if a.epochs == Some(0) {
        bail!("--epochs 0: a run needs at least one epoch");
    }
    if a.steps == Some(0) {
        bail!("--steps 0: a run needs at least one step");
    }
    if a.batch_size == Some(0) {
        bail!("--batch-size 0: a batch needs at least one sample");
    }
    if a.seed > i64::MAX as u64 {
        // The run's config.toml (and a sweep's best.toml) must read back: TOML's integers are i64.
        bail!("--seed {}: at most {} (2^63 − 1)", a.seed, i64::MAX);
    }
    // The same for every other count (--steps, --epochs, --prune-frequency, …) and the integers of
    // --hparams and --schedule-args.
    if let Ok(serde_json::Value::Object(settings)) = serde_json::to_value(a) {
        let beyond = |v: &serde_json::Value| v.as_u64().is_some_and(|n| n > i64::MAX as u64);
        // The flags given first: a setting derived from one (gpt's --decay-steps from --steps) is
        // not the one to name.
        let mut settings: Vec<_> = settings.iter().collect();
        settings.sort_by_key(|(key, _)| !a.given.iter().any(|g| g == *key));
        for (key, v) in settings {
            let inner = v.as_object().into_iter().flatten().find(|(_, x)| beyond(x));
            if beyond(v) {
                bail!(
                    "--{} {v}: at most {} (2^63 − 1): the run's config.toml holds TOML integers",
                    key.replace('_', "-"),
                    i64::MAX
                );
            }
            if let Some((k, x)) = inner {
                bail!(
                    "--{} `{k}` = {x}: at most {} (2^63 − 1): the run's config.toml holds TOML integers",
                    key.replace('_', "-"),
                    i64::MAX
                );
            }
        }
    }
    if a.accumulate == Some(0) {
        bail!("--accumulate 0: a step needs at least one micro-batch");
    }
    // The step's samples, K × --batch-size, as a count (and a JSON number) holds them.
    let (k, b) = (a.accumulate.unwrap_or(1), a.batch_size.unwrap_or(defaults(&a.model).1));
    if b.checked_mul(k).is_none_or(|n| n as u64 > 1 << 53) {
        bail!("--accumulate {k} × --batch-size {b}: more samples per step than can be counted (at most 2^53)");
    }
    if let Some(t) = a.threads {
        if t == 0 || t > MAX_THREADS {
            bail!("--threads {t}: must be between 1 and {MAX_THREADS}");
        }
    }
    if !(0.0..1.0).contains(&a.dropout()) {
        bail!("--dropout {}: a probability in [0, 1)", a.dropout());
    }
    let gpt = a.model == "gpt";
    for (flag, v) in [("--clip-norm", a.clip_norm), ("--clip-value", a.clip_value)] {
        if let Some(v) = v {
            // gpt's clipping is on by default: 0 turns it off (nanoGPT's grad_clip = 0).
            let off = gpt && flag == "--clip-norm" && v == 0.0;
            if finite(flag, v)? <= 0.0 && !off {
                bail!(
                    "{flag} {v}: must be above 0{}",
                    if gpt && flag == "--clip-norm" { " (or 0 for none)" } else { "" }
                );
            }
            if v > 0.0 && !(v as f32).is_normal() {
                // Gradients are f32: a bound below f32's normal range clips (or scales) them to 0.
                bail!("{flag} {}: below the smallest normal f32 (1.2e-38), the gradients would clip to 0", Num(v));
            }
        }
    }
    for (flag, v) in [
        ("--l1", Some(a.l1)),
        ("--l2", Some(a.l2)),
        ("--min-delta", Some(a.min_delta)),
        ("--min-loss-change", a.min_loss_change),
    ] {
        if let Some(v) = v {
            if finite(flag, v)? < 0.0 {
                bail!("{flag} {v}: must be at least 0");
            }
        }
    }
    if let Some(t) = a.target_accuracy {
        if !(finite("--target-accuracy", t)? > 0.0 && t <= 100.0) {
            bail!("--target-accuracy {t}: a percentage in (0, 100]");
        }
    }
    if !a.hparams.is_object() {
        bail!("--hparams {}: must be a JSON object of the optimizer's arguments", a.hparams);
    }
    // The run's rate, and the rate of a Muon's Adam part (optax `adam_learning_rate`,
    // pytorch_optimizer `adamw_lr`), refused as --lr is.
    for key in ["lr", "learning_rate", "adam_learning_rate", "adamw_lr"] {
        if let Some(v) = a.hparams.get(key).and_then(|v| v.as_f64()) {
            if v < 0.0 {
                bail!("--hparams: `{key}` {v}: the learning rate must be at least 0");
            }
        }
    }
    // Settings that the model or schedule would not use are refused rather than ignored.
    // (Given on the command line, or another value than the default the other models record.)
    if !matches!(a.model.as_str(), "mlp" | "gpt") && (a.dropout() != 0.2 || a.given.iter().any(|g| g == "dropout")) {
        bail!("--dropout {}: the {} model has no dropout (only mlp and gpt have)", a.dropout(), a.model);
    }
    check_schedule_flags(a)?;
    check_closure_flags(a)?;
    check_prune_flags(a)?;
    check_average(a)?;
    check_qat(a)?;
    if gpt {
        check_gpt(a)?;
    } else {
        let v = serde_json::to_value(a)?;
        if let Some(k) = GPT_KEYS.iter().find(|k| !v[**k].is_null()) {
            bail!("{} {}: only the gpt model takes it", flag_of(k), json_text(&v[*k]));
        }
    }
    if a.model == "linear" {
        if a.augment.is_some() {
            bail!("--augment: the linear model trains on synthetic data, not images");
        }
        if a.normalize {
            bail!("--normalize: the linear model trains on synthetic data, not MNIST pixels");
        }
        if a.data != std::path::Path::new("data/mnist") {
            bail!("--data {}: the linear model trains on synthetic data", a.data.display());
        }
        if a.target_accuracy.is_some() {
            bail!("--target-accuracy: the linear model is a regression, without accuracy");
        }
    }
    if !matches!(a.model.as_str(), "resnet" | "plain") {
        if let Some(v) = a.depth {
            bail!("--depth {v}: only the resnet and plain models take it");
        }
    }
    if let Some(v) = a.width.filter(|_| !matches!(a.model.as_str(), "resnet" | "plain" | "lenet")) {
        bail!("--width {v}: only the resnet, plain and lenet models take it");
    }
    if a.width == Some(0) {
        bail!("--width 0: at least one channel");
    }
    match a.hidden {
        Some(h) if a.model != "mlp" => bail!("--hidden {h}: only the mlp model takes it"),
        Some(0) => bail!("--hidden 0: at least one hidden unit"),
        _ => {}
    }
    if let Some(d) = &a.distill {
        if !(0.0..=1.0).contains(&d.alpha) {
            bail!("--alpha {}: the teachers' weight must be in (0, 1]", d.alpha);
        }
        if !descent_train::train::temperature_in_range(d.temperature) {
            let (lo, hi) = descent_train::train::TEMPERATURE_RANGE;
            bail!(
                "--temperature {}: between {} and {} (T² scales the loss; above, the teachers' and the student's softened distributions differ by less than float64 resolves)",
                Num(d.temperature),
                Num(lo),
                Num(hi)
            );
        }
        if let Some(k) = a.accumulate.filter(|&k| k > 1) {
            bail!("--accumulate {k}: distillation trains one batch a step");
        }
        if let Some(n) = a.data_parallel.filter(|&n| n > 1) {
            bail!("--data-parallel {n}: distillation trains in one process");
        }
        if d.teachers.is_empty() {
            bail!("--teacher: give at least one teacher run folder");
        }
    }
    if a.patience.is_none() && a.min_delta != 0.0 {
        bail!("--min-delta {}: it is early stopping's threshold; give --patience too", a.min_delta);
    }
    if !matches!(a.schedule_interval.as_str(), "step" | "epoch") {
        // The flag's parser allows only these; a --config file's value comes here unchecked.
        bail!("--schedule-interval {}: accepted: step, epoch", a.schedule_interval);
    }
    if !a.schedule().contains('.') && a.schedule_interval != "step" {
        bail!(
            "--schedule-interval {}: only a library schedule (torch.StepLR, …) is stepped per epoch; `{}` sets its own pace",
            a.schedule_interval,
            a.schedule()
        );
    }
    if !a.schedule().contains('.') && a.schedule_args.as_object().is_none_or(|o| !o.is_empty()) {
        bail!(
            "--schedule-args {} is for a library schedule (torch.OneCycleLR, optax.cosine_decay_schedule, …); the built-in schedule `{}` takes none",
            a.schedule_args,
            a.schedule()
        );
    }
    Ok(())
}

/// Gradual pruning: a sparsity in [0, 1], the polynomial schedule, a start before the end; the
/// schedule flags only with --prune-to; not for gpt.
fn check_prune_flags(a: &TrainArgs) -> Result<()> {
    let Some(s) = a.prune_to else {
        let v = serde_json::to_value(a)?;
        if let Some(k) = PRUNE_KEYS.iter().find(|k| !v[**k].is_null()) {
            bail!("{} {}: it shapes gradual pruning; give --prune-to too", flag_of(k), json_text(&v[*k]));
        }
        return Ok(());
    };
    if !(0.0..=1.0).contains(&s) {
        bail!("--prune-to {s}: a sparsity (the fraction of weights pruned) in [0, 1]");
    }
    if a.model == "gpt" {
        bail!("--prune-to: gradual pruning handles the mlp, lenet, resnet, plain and linear models, not gpt");
    }
    if let Some(p) = a.prune_schedule.as_deref().filter(|p| *p != "polynomial") {
        bail!("--prune-schedule {p}: accepted: polynomial");
    }
    if a.prune_frequency == Some(0) {
        bail!("--prune-frequency 0: at least 1 step between pruning steps");
    }
    if let (Some(t0), Some(t1)) = (a.prune_start, a.prune_end) {
        if t1 < t0 {
            bail!("--prune-end {t1}: must not come before --prune-start {t0}");
        }
    }
    // A stopping rule could end the run before the pruning does: a model less sparse than asked.
    let stops = [
        (a.patience.is_some(), "--patience"),
        (a.target_accuracy.is_some(), "--target-accuracy"),
        (a.min_loss_change.is_some(), "--min-loss-change"),
    ];
    if let Some((_, flag)) = stops.iter().find(|(on, _)| *on) {
        bail!(
            "--prune-to {s} with {flag}: a run stopped before --prune-end would keep a model less sparse than asked \
             for; give one of them"
        );
    }
    Ok(())
}

/// `--qat`: the mlp and lenet models only, without a weight average (its weights would be
/// fake-quantized with observers that never saw them, and `descent quantize` takes the trained
/// weights).
fn check_qat(a: &TrainArgs) -> Result<()> {
    if !a.qat {
        return Ok(());
    }
    if !matches!(a.model.as_str(), "mlp" | "lenet") {
        bail!("--qat: quantization-aware training of the {} model; {QAT_MODELS}", a.model);
    }
    if a.ema.is_some() || a.swa_start.is_some() {
        bail!(
            "--qat with --ema / --swa-start: the averaged weights would be fake-quantized with observers that never saw them, and descent quantize takes the trained weights; give one of them"
        );
    }
    Ok(())
}

/// An optimizer that evaluates the objective itself steps on the gradients it asks for: clipping
/// them or splitting the parameters into groups is refused, naming the flag.
fn check_closure_flags(a: &TrainArgs) -> Result<()> {
    let Some(name) = closure_optimizer(a) else { return Ok(()) };
    let given = [
        ("--clip-norm", a.clip_norm.is_some_and(|c| c != 0.0), "its gradients are not clipped"),
        ("--clip-value", a.clip_value.is_some(), "its gradients are not clipped"),
        ("--group", !a.groups.is_empty(), "it takes one set of arguments for all parameters"),
        ("--accumulate", a.accumulate.is_some_and(|k| k > 1), "it evaluates its objective on one batch"),
        ("--data-parallel", a.data_parallel.is_some_and(|n| n > 1), "it evaluates its objective on one batch"),
    ];
    if let Some((flag, _, why)) = given.iter().find(|(_, on, _)| *on) {
        bail!("{flag}: `{name}` evaluates the objective itself (a closure-driven optimizer); {why}");
    }
    // Sophia's Hessian-vector product is a difference of two gradients; each forward pass would
    // draw its own dropout mask, and the difference would measure the masks, not the curvature.
    if name == "optax.contrib.sophia" && matches!(a.model.as_str(), "mlp" | "gpt") && a.dropout() > 0.0 {
        bail!(
            "--dropout {}: `{name}` takes Hessian-vector products as a difference of two gradients, which dropout would \
             draw with different masks; train it with --dropout 0",
            a.dropout()
        );
    }
    Ok(())
}

/// A setting's value as the user typed it (a string without its quotes).
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `--warmup-steps`, `--decay-steps` and `--min-lr` shape warmup_cosine only, and must fit the run.
fn check_schedule_flags(a: &TrainArgs) -> Result<()> {
    let given: Vec<&str> = SCHEDULE_KEYS
        .iter()
        .copied()
        .filter(|k| match *k {
            "warmup_steps" => a.warmup_steps.is_some(),
            "decay_steps" => a.decay_steps.is_some(),
            _ => a.min_lr.is_some(),
        })
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    if a.schedule() != "warmup_cosine" {
        bail!("{}: only --schedule warmup_cosine takes it, not `{}`", flag_of(given[0]), a.schedule());
    }
    if let Some(m) = a.min_lr {
        if !(m.is_finite() && m >= 0.0) {
            bail!("--min-lr {m}: must be a finite number at least 0");
        }
        if let Some(lr) = a.lr.filter(|&lr| m > lr) {
            bail!("--min-lr {}: the rate the schedule decays to must not exceed --lr {}", Num(m), Num(lr));
        }
        let lr = default_lr(&a.model, a.optimizer(), &a.hparams);
        if a.lr.is_none() && m > lr {
            bail!(
                "--min-lr {}: the rate the schedule decays to must not exceed the learning rate, here {}'s default {} (set --lr)",
                Num(m),
                a.optimizer(),
                Num(lr)
            );
        }
    }
    // A decay that ends within the warm-up is nanoGPT's too: the warm-up, then min_lr.
    Ok(())
}

/// The settings of a gpt run: the model's shape, the text, and nothing that only an epoch-based
/// image model uses.
/// The loss an image or regression model trains with: mean squared error for the linear
/// regression, cross-entropy for the classifiers.
fn loss_of(model: &str) -> Loss {
    if model == "linear" {
        Loss::Mse
    } else {
        Loss::CrossEntropy
    }
}

/// Refuses a step of more samples than the training set holds (a batch, or `accumulate` of them),
/// which the epoch's loader would cut to the training set without a word. `held_out`: the
/// samples `--validation` took from the training set, named where they are why it is small.
fn check_step_fits(batch: usize, accumulate: usize, samples: usize, model: &str, held_out: usize) -> Result<()> {
    let left = if held_out > 0 { format!(" (left by --validation {held_out})") } else { String::new() };
    if batch > samples {
        bail!(
            "--batch-size {batch}: more than the {samples} training samples of {model}{left}; a batch is at most the training set"
        );
    }
    match batch.checked_mul(accumulate) {
        Some(step) if step <= samples => Ok(()),
        step => bail!(
            "--batch-size {batch} with --accumulate {accumulate}: a step of {} samples, more than the {samples} training \
             samples of {model}{left}; a step is at most the training set",
            step.map_or("too many".to_string(), |s| s.to_string())
        ),
    }
}

/// Refuses, before any weight is allocated, a gpt and batch whose training step cannot be held:
/// a lower bound of its memory against `available` bytes, instead of an allocation failure's
/// abort or the kernel killing the process. The bound counts the weights twice (with their
/// gradients: embeddings, and per layer 12·C² + 13·C) and what a step keeps for its backward: per
/// token and layer about 21 floats a channel and a row of attention weights per head, and the
/// logits thrice (measured here: 52 KB a token for nanoGPT's recipe, this bound 48). Arithmetic
/// in `u128`, saturating: no shape wraps around to a small number.
fn check_gpt_memory(c: &GptConfig, batch: usize, available: Option<u64>, sizing: Sizing) -> Result<()> {
    let u = |x: usize| x as u128;
    let (e, layers, vocab, block) = (u(c.n_embd), u(c.n_layer), u(c.vocab_size), u(c.block_size));
    let per_layer = e.saturating_mul(e).saturating_mul(12).saturating_add(e.saturating_mul(13));
    let weights = vocab
        .saturating_add(block)
        .saturating_add(2)
        .saturating_mul(e)
        .saturating_add(layers.saturating_mul(per_layer));
    let weights = weights.saturating_mul(2 * 4);
    let per_token = layers
        .saturating_mul(e.saturating_mul(21).saturating_add(u(c.n_head).saturating_mul(block)))
        .saturating_add(vocab.saturating_mul(3))
        .saturating_mul(4);
    let activations = u(batch).saturating_mul(block).saturating_mul(per_token);
    let shape =
        format!("--n-layer {} --n-head {} --n-embd {} --block-size {}", c.n_layer, c.n_head, c.n_embd, c.block_size);
    let (flags, smaller) = sizing.flags(batch, &shape, "model");
    refuse_beyond_memory(&flags, "this gpt", (activations, weights, "weights and gradients"), available, smaller)
}

/// Which settings size a step for the memory checks' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sizing {
    /// `descent train`: the batch and the model's shape flags.
    BatchAndShape,
    /// `descent bench train`: the batch of the benchmark's fixed model.
    Batch,
}

impl Sizing {
    /// The flags a refusal names, and the smaller thing it suggests besides a smaller batch.
    fn flags<'a>(self, batch: usize, shape: &str, what: &'a str) -> (String, Option<&'a str>) {
        match self {
            Sizing::BatchAndShape => (format!("--batch-size {batch} {shape}"), Some(what)),
            Sizing::Batch => (format!("--batch-size {batch} (the benchmark's {shape})"), None),
        }
    }
}

/// The end of the memory checks: refuses a step that needs more than 2⁶⁴ bytes, or more than
/// the `available` memory, naming the `flags` that size it, what it holds (`activations`, and
/// the weights' part under its `label`) and a smaller `what` (model or network) as the remedy.
fn refuse_beyond_memory(
    flags: &str,
    subject: &str,
    (activations, weights, label): (u128, u128, &str),
    available: Option<u64>,
    smaller: Option<&str>,
) -> Result<()> {
    let need = weights.saturating_add(activations);
    if need > u64::MAX as u128 {
        bail!("{flags}: too many values for any memory ({} at least)", gigabytes(need));
    }
    match available {
        Some(have) if need > have as u128 => bail!(
            "{flags}: a step of {subject} keeps at least {} (activations {}, {label} {}), more than the {:.1} GB of \
             memory available; use a smaller batch{}",
            gigabytes(need),
            gigabytes(activations),
            gigabytes(weights),
            have as f64 / 1e9,
            match smaller {
                Some(what) => format!(" (with --accumulate for the same step) or a smaller {what}"),
                None => String::new(),
            }
        ),
        _ => Ok(()),
    }
}

/// `n` bytes in GB with one decimal, or "10^12 GB or more" past that.
fn gigabytes(n: u128) -> String {
    if n >= 1_000_000_000_000_000_000_000 {
        "10^12 GB or more".into()
    } else {
        format!("{:.1} GB", n as f64 / 1e9)
    }
}

/// What a step holds of its weights besides the activations: on each of `replicas` replicas the
/// weights, their gradients and `state_floats` floats of optimizer state a weight (its share when
/// the state is sharded).
#[derive(Clone, Copy, Debug)]
struct Copies {
    replicas: usize,
    state_floats: f64,
}

impl Copies {
    /// For `optimizer` with `hparams` on `replicas` replicas.
    fn of(optimizer: &str, hparams: &serde_json::Value, replicas: usize, sharded: bool) -> Copies {
        let state = state_floats_per_param(optimizer, hparams);
        let replicas = replicas.max(1);
        Copies { replicas, state_floats: if sharded { state / replicas as f64 } else { state } }
    }
}

/// Floats of state `optimizer` keeps a parameter, at least: built on a vector and on a square
/// matrix of 4096 values each, the smaller (a matrix optimizer's rule for either); 0 where it
/// cannot be built here (the run's own checks say why).
pub(crate) fn state_floats_per_param(optimizer: &str, hparams: &serde_json::Value) -> f64 {
    let probe = |shape: Vec<usize>| -> Option<f64> {
        let n: usize = shape.iter().product();
        let params = vec![vec![0.01f32; n]];
        let (mut opt, _, _) = crate::bench::bench_optimizer(optimizer, hparams, &[shape], &params).ok()?;
        Some(opt.stored_state_bytes() as f64 / 4.0 / n as f64)
    };
    match (probe(vec![4096]), probe(vec![64, 64])) {
        (Some(a), Some(b)) => a.min(b),
        _ => 0.0,
    }
}

/// Refuses, before the model is built, an image model and batch whose training step cannot be
/// held: a lower bound of its memory against `available` bytes, instead of an allocation
/// failure's abort or the kernel killing the process (`--batch-size 60000` on the residual
/// network, `--width` or `--hidden` in the hundreds of thousands). The bound counts the main
/// weights twice (with their gradients) and, per image, what a step keeps for its backward: each
/// convolution's output four times in the residual network (output, batch norm, their
/// gradients), twice in the plain one (output after the fused ReLU, its gradient), plus the
/// gradient of the largest output, which the backward holds while all of those are still kept;
/// and the pooled or hidden outputs once in LeNet and the MLP. Measured here at the default
/// shapes: 909–967 KB an image for resnet and 504–509 KB for plain, against bounds of 853 KB
/// and 452 KB.
fn check_model_memory(
    model: &str,
    arch: Arch,
    batch: usize,
    copies: Copies,
    available: Option<u64>,
    sizing: Sizing,
) -> Result<()> {
    // (weights, floats kept per image, the shape's flags as the message names them), in u128,
    // saturating: no shape wraps around to a small number.
    let u = |x: usize| x as u128;
    let (weights, per_image, shape): (u128, u128, String) = match model {
        "resnet" | "plain" => {
            let (depth, width) = (arch.depth.unwrap_or(6), arch.width.unwrap_or(16));
            // A shape the network cannot take is reported where the model is built.
            let Ok(c) = CnnConfig::mnist(depth, width) else { return Ok(()) };
            let copies = if model == "resnet" { 4 } else { 2 };
            (
                c.conv_weights(),
                c.conv_outputs(28, 28).saturating_mul(copies).saturating_add(c.largest_output(28, 28)),
                format!("--depth {depth} --width {width}"),
            )
        }
        "lenet" => {
            let w = u(arch.width.unwrap_or(6));
            // LeNet5::with_width's scaling of (6, 16, 120, 84), without its rounding.
            let (c1, c2, f1, f2) = (w, w.saturating_mul(16) / 6, w.saturating_mul(20), w.saturating_mul(14));
            let m = |a: u128, b: u128| a.saturating_mul(b);
            (
                [m(25, c1), m(m(25, c1), c2), m(m(16, c2), f1), m(f1, f2), m(10, f2)]
                    .into_iter()
                    .fold(0u128, u128::saturating_add),
                [m(144, c1), m(16, c2), f1, f2].into_iter().fold(0u128, u128::saturating_add),
                format!("--width {w}"),
            )
        }
        "mlp" => {
            let h = u(arch.hidden.unwrap_or(MLP_HIDDEN));
            (h.saturating_mul(794), h, format!("--hidden {h}"))
        }
        _ => return Ok(()),
    };
    // Each replica holds its own weights, gradients and optimizer state; the batch is split among
    // them. Bytes a weight, in 256ths.
    let per_weight = ((2.0 + copies.state_floats) * 4.0 * 256.0).round() as u128;
    let replicas = copies.replicas.max(1);
    let weights = weights.saturating_mul(per_weight).saturating_mul(u(replicas)) / 256;
    let activations = per_image.saturating_mul(4).saturating_mul(u(batch));
    let replicas = if replicas > 1 { format!(" on {replicas} replicas") } else { String::new() };
    let (flags, smaller) = sizing.flags(batch, &shape, "network");
    refuse_beyond_memory(
        &flags,
        &format!("this {model}{replicas}"),
        (activations, weights, "weights, gradients and optimizer state"),
        available,
        smaller,
    )
}

fn check_gpt(a: &TrainArgs) -> Result<()> {
    let given = |v: Option<usize>| v.map_or(1, |v| v as u64);
    crate::flags::at_least_one(&[
        ("--n-layer", given(a.n_layer)),
        ("--n-head", given(a.n_head)),
        ("--n-embd", given(a.n_embd)),
        ("--block-size", given(a.block_size)),
    ])?;
    if let (Some(e), Some(h)) = (a.n_embd, a.n_head) {
        if !e.is_multiple_of(h) {
            bail!("--n-embd {e} is not divisible by --n-head {h}: each head takes n_embd / n_head channels");
        }
    }
    if a.eval_interval == Some(0) {
        bail!("--eval-interval 0: must be at least 1 step");
    }
    if a.eval_iters == Some(0) {
        bail!("--eval-iters 0: each estimate needs at least one batch");
    }
    let refused: [(bool, &str); 12] = [
        (a.epochs.is_some(), "--epochs: gpt trains for --steps iterations, not epochs"),
        (
            a.ema.is_some() || a.swa_start.is_some(),
            "--ema, --swa-start: weight averaging is for the image and regression models, not gpt",
        ),
        (a.normalize, "--normalize: gpt reads text, not MNIST pixels"),
        (a.augment.is_some(), "--augment: gpt reads text, not images"),
        (a.data != std::path::Path::new("data/mnist"), "--data: gpt reads --text, not MNIST"),
        (a.init != "torch", "--init: gpt uses nanoGPT's initialization (normal, std 0.02)"),
        (a.validation != 0, "--validation: gpt validates on the last 10% of --text"),
        (a.patience.is_some(), "--patience: early stopping works on epochs; gpt trains for --steps"),
        (a.target_accuracy.is_some(), "--target-accuracy: gpt is a language model, without accuracy"),
        (a.min_loss_change.is_some(), "--min-loss-change works on epochs; gpt trains for --steps"),
        (a.schedule_interval != "step", "--schedule-interval epoch: gpt has no epochs"),
        (
            matches!(a.schedule(), "exponential" | "step" | "plateau"),
            "--schedule: exponential, step and plateau are stepped per epoch; gpt has no epochs",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(bad, _)| *bad) {
        bail!("{why}");
    }
    Ok(())
}

/// Fills in the defaults that depend on the model, so that a run's config.json holds every
/// setting it ran with: for gpt nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64,
/// batch 12, 2000 steps, AdamW lr 1e-3 with betas (0.9, 0.99) and weight decay 0.1 on the
/// matrices and embeddings only, 100 warm-up steps then cosine to lr/10 at the last step,
/// clipping at 1.0, no dropout, losses estimated every 250 steps on 200 batches).
pub fn resolve_defaults(a: &mut TrainArgs) -> Result<()> {
    if a.model != "gpt" {
        a.optimizer.get_or_insert_with(|| "adam".into());
        a.schedule.get_or_insert_with(|| "constant".into());
        a.dropout.get_or_insert(0.2);
        return Ok(());
    }
    if a.optimizer.is_none() {
        a.optimizer = Some("torch.adamw".into());
        // nanoGPT's AdamW arguments, under those given.
        if let Some(h) = a.hparams.as_object_mut() {
            h.entry("betas").or_insert(serde_json::json!([0.9, 0.99]));
            h.entry("weight_decay").or_insert(serde_json::json!(0.1));
        }
    }
    // nanoGPT's grouping and clipping belong to its AdamW; an optimizer that evaluates the
    // objective itself takes neither.
    let closure = closure_optimizer(a).is_some();
    // nanoGPT's grouping: weight decay on the tensors of two or more dimensions only.
    if a.groups.is_empty() && a.hparams.get("weight_decay").is_some() && !closure {
        a.groups = Gpt::no_decay_groups();
    }
    let lr = *a.lr.get_or_insert(defaults("gpt").0);
    let steps = *a.steps.get_or_insert(2000);
    if a.schedule.get_or_insert_with(|| "warmup_cosine".into()) == "warmup_cosine" {
        a.warmup_steps.get_or_insert(100);
        a.min_lr.get_or_insert(lr / 10.0);
        // A fixed end, so that a run continued past it keeps the rates it has used.
        a.decay_steps.get_or_insert(steps);
    }
    if !closure {
        a.clip_norm.get_or_insert(1.0);
    }
    a.dropout.get_or_insert(0.0);
    a.batch_size.get_or_insert(defaults("gpt").1);
    a.text.get_or_insert_with(|| PathBuf::from(DEFAULT_TEXT));
    a.n_layer.get_or_insert(4);
    a.n_head.get_or_insert(4);
    a.n_embd.get_or_insert(128);
    a.block_size.get_or_insert(64);
    a.eval_interval.get_or_insert(250);
    a.eval_iters.get_or_insert(200);
    Ok(())
}

/// `--lr` and the optimizer's learning-rate argument in `--hparams` (`lr` for torch, `learning_rate`
/// for optax) are one setting: the one in `--hparams` moves to `lr`, and the two given with
/// different values is an error.
pub fn unify_lr(a: &mut TrainArgs) -> Result<()> {
    merge_lr(a)?;
    // SAM's base may carry its own rate: the run's rate is the same setting.
    if let (Some(lr), Some(base)) = (a.lr, sam_base_lr(a)) {
        if lr != base {
            bail!(
                "--lr {} and the learning rate {} in --hparams `base` are the same setting; give one",
                Num(lr),
                Num(base)
            );
        }
    }
    Ok(())
}

/// The learning rate given to the base optimizer of `descent.sam` in `--hparams`, if any.
fn sam_base_lr(a: &TrainArgs) -> Option<f64> {
    let (lib, name) = descent_core::spec::resolve_optimizer(a.optimizer()).ok()?;
    descent_core::closure::sam_base_lr(lib, &name, &a.hparams)
}

/// Why the run's learning rate is not a setting of its own, when it is not: an optax schedule
/// gives the rate itself, and an optimizer without a learning-rate argument (`optax.chain`) has
/// it in a link. An explicit `--lr` is then refused, and a rate filled in from defaults dropped.
pub fn rate_set_elsewhere(a: &TrainArgs) -> Option<String> {
    if let Some(sched) = a.schedule.as_deref().filter(|s| s.starts_with("optax.")) {
        return Some(format!(
            "the optax schedule `{sched}` gives the learning rate itself (its --schedule-args); give one of them"
        ));
    }
    // torch's cyclical schedules set the optimizer's rate themselves, from their own arguments
    // (OneCycleLR `max_lr / div_factor`, CyclicLR `base_lr`), as torch does.
    if let Some(sched) = a.schedule.as_deref().filter(|s| matches!(*s, "torch.OneCycleLR" | "torch.CyclicLR")) {
        return Some(format!(
            "`{sched}` sets the learning rate itself from its --schedule-args (max_lr or base_lr), as torch's does; give one of them"
        ));
    }
    let (lib, name) = descent_core::spec::resolve_optimizer(a.optimizer()).ok()?;
    (!descent_core::spec::takes_learning_rate(lib, &name, &a.hparams))
        .then(|| format!("`{lib}.{name}` takes no learning rate of its own; give it to a link of --hparams"))
}

/// [`unify_lr`] for the optimizer's own learning-rate argument.
fn merge_lr(a: &mut TrainArgs) -> Result<()> {
    let Ok((lib, _)) = descent_core::spec::resolve_optimizer(a.optimizer()) else { return Ok(()) };
    let key = descent_core::spec::lr_key(lib);
    let given = a.lr.or_else(|| a.hparams.get(key).and_then(|v| v.as_f64()));
    if let Some((lr, why)) = given.and_then(|lr| rate_set_elsewhere(a).map(|why| (lr, why))) {
        bail!("--lr {}: {why}", Num(lr));
    }
    let Some(h) = a.hparams.as_object_mut() else { return Ok(()) };
    let Some(v) = h.get(key) else { return Ok(()) };
    let Some(x) = v.as_f64() else {
        if v.is_null() {
            bail!(
                "--hparams `{key}` = null: training takes a learning rate (give --lr; a schedule with --schedule and --schedule-args); the library's `None` mode is for `descent replay`"
            );
        }
        bail!("--hparams `{key}` = {v}: give a learning-rate schedule with --schedule and --schedule-args");
    };
    match a.lr {
        Some(lr) if lr != x => {
            bail!("--lr {} and --hparams `{key}` = {} are the same setting; give one", Num(lr), Num(x))
        }
        _ => {
            a.lr = Some(x);
            h.remove(key);
        }
    }
    Ok(())
}

/// Validates the settings into a training config, without touching any run folder.
pub fn validate(a: &TrainArgs) -> Result<()> {
    one_process(a)?;
    let mut a = a.clone();
    unify_lr(&mut a)?;
    resolve_defaults(&mut a)?;
    let a = &a;
    check_numbers(a)?;
    let mut rng = Rng::new(a.seed);
    if a.model == "gpt" {
        let corpus = corpus_of(a)?;
        let cfg = config(a, Loss::CrossEntropy)?;
        let shape = gpt_config_of(a, &corpus)?;
        check_gpt_memory(&shape, cfg.batch_size, crate::bench::available_memory(), Sizing::BatchAndShape)?;
        let model = Gpt::new(shape, &mut rng, &Device::Cpu)?;
        let block = model.config.block_size;
        descent_train::lm::check(&corpus, &cfg, &TextConfig { block_size: block, ..TextConfig::new(block) })?;
        return check_model_settings(&model, &cfg);
    }
    let init = Init::parse(&a.init)?;
    let cfg = config(a, loss_of(&a.model))?;
    let copies = Copies::of(&cfg.optimizer, &cfg.hparams, a.data_parallel.unwrap_or(1), a.shard_optimizer);
    check_model_memory(
        &a.model,
        Arch::of(a),
        cfg.batch_size,
        copies,
        crate::bench::available_memory(),
        Sizing::BatchAndShape,
    )?;
    let model = model_of(&a.model, Arch::of(a), init, a.dropout(), &mut rng)?;
    check_model_settings(model.as_ref(), &cfg)
}

/// What [`validate`] cannot see without the data, for an image or regression run training on
/// `train_len` samples: a step that fits the training set and a schedule that acts within the run
/// (a GPT run's are checked against its corpus by [`validate`]).
/// Samples of the linear regression's training set.
pub const REGRESSION_TRAIN: usize = 10_000;

/// Samples of the training set a run of `model` on `data` reads, before a validation split is
/// held out (MNIST's are read from its file's header and data: a smaller set counts as it is).
pub fn training_set_len(model: &str, data: &std::path::Path) -> Result<usize> {
    Ok(match model {
        "linear" => REGRESSION_TRAIN,
        _ => mnist::load(data).with_context(|| format!("loading MNIST from {}", data.display()))?.train.len(),
    })
}

pub fn validate_for_data(a: &TrainArgs, train_len: usize) -> Result<()> {
    let mut a = a.clone();
    unify_lr(&mut a)?;
    resolve_defaults(&mut a)?;
    if a.model == "gpt" {
        return Ok(());
    }
    let cfg = config(&a, loss_of(&a.model))?;
    check_step_fits(cfg.batch_size, cfg.accumulate, train_len, &a.model, a.validation)?;
    check_run_length(&a, &cfg, train_len)?;
    check_schedule_length(&cfg, train_len)
}

/// The steps a run of `cfg` takes on a training set of `train_len` samples (a step takes
/// `accumulate` micro-batches).
fn run_steps(cfg: &TrainConfig, train_len: usize) -> u64 {
    let per_epoch = cfg.steps_per_epoch(train_len);
    cfg.max_steps.unwrap_or(u64::MAX).min(per_epoch.saturating_mul(cfg.epochs as u64))
}

/// Gradual pruning's first and last steps, the flags' or their defaults (from step 0 to 3/4 of
/// the run), within the run's `total` steps.
fn prune_span(a: &TrainArgs, target: f64, total: u64) -> Result<(u64, u64)> {
    let start = a.prune_start.unwrap_or(0);
    if a.prune_end.is_none() && start > total {
        bail!(
            "--prune-start {start}: after the run's last step ({total}), so nothing would be pruned; start the pruning by step {total}"
        );
    }
    let end = a.prune_end.unwrap_or((total * 3 / 4).max(start));
    if end > total {
        bail!(
            "--prune-end {end}: after the run's last step ({total}), so the sparsity would never reach --prune-to {}; \
             end the pruning by step {total}",
            Num(target)
        );
    }
    Ok((start, end))
}

/// The settings that must fall within the run's steps: gradual pruning's span, and SWA's first
/// epoch (the average takes the weights at the end of each epoch from --swa-start on).
fn check_run_length(a: &TrainArgs, cfg: &TrainConfig, train_len: usize) -> Result<()> {
    if let Some(target) = a.prune_to {
        prune_span(a, target, run_steps(cfg, train_len))?;
    }
    if let (Some(start), Some(steps)) = (a.swa_start, a.steps) {
        let per_epoch = cfg.steps_per_epoch(train_len);
        if steps < start as u64 * per_epoch {
            bail!(
                "--swa-start {start}: --steps {steps} ends the run before the end of epoch {start} (step {}); nothing would be averaged",
                start as u64 * per_epoch
            );
        }
    }
    Ok(())
}

/// What needs the model: the optimizer builds over its parameters (which refuses a `--group`
/// that selects no parameter, naming it) and a schedule can set its rates.
fn check_model_settings(model: &dyn Model, cfg: &TrainConfig) -> Result<()> {
    // Sharding needs the ranks: here the optimizer is checked whole, and whether it can be cut.
    let whole = TrainConfig { shard_optimizer: false, ..cfg.clone() };
    let opt = descent_train::train::optimizer_for(model, &whole)?;
    if cfg.shard_optimizer {
        drop(opt);
        descent_train::optim::shard::check_shardable(
            &model.named_vars(),
            &descent_train::train::optimizer_config(cfg),
        )?;
    }
    Ok(())
}

/// A library schedule defined for a limited number of steps (torch `OneCycleLR`'s `total_steps`)
/// must cover the run, as torch refuses to step it further.
fn check_schedule_length(cfg: &TrainConfig, train_len: usize) -> Result<()> {
    let per_epoch = cfg.steps_per_epoch(train_len);
    // What acts between epochs needs a second epoch (a patience of P, P + 1): a run that ends
    // within its first would accept it and never act on it.
    let all_epochs = per_epoch.saturating_mul(cfg.epochs as u64);
    let total = cfg.max_steps.unwrap_or(u64::MAX).min(all_epochs);
    let epochs = total.div_ceil(per_epoch.max(1));
    let run = || match cfg.max_steps.filter(|&m| m < all_epochs) {
        Some(m) => format!("the run ends at step {m}, epoch {epochs} (an epoch is {per_epoch} steps)"),
        None => format!("the run has {epochs} epoch(s)"),
    };
    let per_epoch_schedule = match &cfg.schedule {
        LrSchedule::Exponential { .. } => Some(("exponential", 1)),
        LrSchedule::Step { every, .. } => Some(("step", *every as u64)),
        LrSchedule::Plateau { patience, .. } => Some(("plateau", patience + 1)),
        LrSchedule::Spec(s) if s.per_epoch => Some((s.name.as_str(), 1)),
        _ => None,
    };
    if let Some((name, first)) = per_epoch_schedule {
        if epochs <= first {
            bail!(
                "--schedule {name}: it changes the learning rate between epochs (after epoch {first} at the earliest), and {}: it would never act; give more epochs{}",
                run(),
                if name.contains('.') { " or --schedule-interval step" } else { "" }
            );
        }
    }
    if let Some(th) = cfg.min_loss_change.filter(|_| epochs <= 1) {
        bail!(
            "--min-loss-change {}: it compares each epoch's training loss with the epoch's before, and {}: it would never stop the run",
            Num(th),
            run()
        );
    }
    if let Some(p) = cfg.patience.filter(|&p| epochs <= p.max(1) as u64) {
        bail!("--patience {p}: early stopping waits {p} epoch(s) without improvement, and {}: it would never stop the run", run());
    }
    let LrSchedule::Spec(s) = &cfg.schedule else { return Ok(()) };
    s.check_run(if s.per_epoch { cfg.epochs as u64 } else { total }).map_err(|e| anyhow::anyhow!("--{e}"))
}

/// That the checkpoint `ck` of the run folder `dir` (whose marker holds `run_id` and whose
/// config.json holds `cfg`) was written by that run with those settings, as `--resume` requires
/// before it continues the run.
pub fn check_checkpoint_of_run(ck: &Checkpoint, dir: &std::path::Path, run_id: &str, cfg: &TrainArgs) -> Result<()> {
    check_checkpoint_id(ck, dir, run_id)?;
    if !config_hash_matches(&ck.config_hash, cfg)? {
        bail!(
            "{}: config.json was changed after the checkpoint was written; a run resumes only with the settings it ran with",
            dir.display()
        );
    }
    Ok(())
}

/// A run's config.toml is descent's copy of its config.json, for reading and for `--config`; a
/// resume writes it again. An edit there is neither what the run continues with nor kept: refused,
/// naming the first setting that differs, before anything is written.
fn check_config_toml_unedited(dir: &std::path::Path, cfg: &TrainArgs) -> Result<()> {
    let path = dir.join(folder::run::CONFIG_TOML);
    // Absent where a setting is null (TOML has none), or removed: nothing to lose.
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let kept = serde_json::to_value(cfg)?;
    let edited = match toml::from_str::<TrainArgs>(&text).map(|t| serde_json::to_value(&t)) {
        Ok(Ok(v)) if v == kept => return Ok(()),
        Ok(Ok(v)) => match (v.as_object(), kept.as_object()) {
            (Some(v), Some(k)) => {
                let key = k.keys().chain(v.keys()).find(|key| v.get(*key) != k.get(*key));
                key.map_or_else(|| "a setting".to_string(), |key| format!("`{key}`"))
            }
            _ => "a setting".into(),
        },
        _ => "it no longer reads as a run's settings".into(),
    };
    bail!(
        "{}: edited after the run wrote it ({edited}); --resume continues with the settings of config.json and would \
         write over the edit: undo it, or train the edited settings as a new run (`descent train --config {} --out …`)",
        path.display(),
        path.display()
    )
}

fn check_checkpoint_id(ck: &Checkpoint, dir: &std::path::Path, run_id: &str) -> Result<()> {
    if ck.run_id != run_id {
        bail!(
            "{}: the checkpoint belongs to another run (id {}), not to this folder's run (id {}); refusing to mix them",
            dir.join(folder::run::CHECKPOINT).display(),
            if ck.run_id.is_empty() { "none" } else { &ck.run_id },
            run_id
        );
    }
    Ok(())
}

/// For the commands that only read a run (`evaluate`, `sample`, `prune`, `quantize`, …): that its
/// checkpoint was written by the run of the folder's marker, not copied from another run, and,
/// given the folder's settings `cfg` (config.json, which these commands rebuild the model and
/// its data from), that they are the settings the checkpoint was written with, as `--resume`
/// requires. A folder of an older descent (no marker, or a checkpoint without a run id or a
/// settings hash) is read as it is.
pub fn check_checkpoint_of_folder(ck: &Checkpoint, dir: &std::path::Path, cfg: Option<&TrainArgs>) -> Result<()> {
    if let Some(m) = folder::Marker::read(dir)? {
        if m.kind == folder::Kind::Run && !ck.run_id.is_empty() {
            check_checkpoint_id(ck, dir, &m.id)?;
        }
    }
    if let Some(cfg) = cfg.filter(|_| !ck.config_hash.is_empty()) {
        if !config_hash_matches(&ck.config_hash, cfg)? {
            bail!(
                "{}: config.json was changed after the checkpoint was written: the run's model and data are rebuilt from \
                 it, so only the settings the run was trained with are read",
                dir.display()
            );
        }
    }
    Ok(())
}

/// A run folder's marker id, or an error naming the folder.
pub fn run_id_of(dir: &std::path::Path) -> Result<String> {
    match folder::Marker::read(dir)? {
        Some(m) if m.kind == folder::Kind::Run => Ok(m.id),
        Some(m) => {
            bail!("{}: a {} folder, not a run; give the folder of a `descent train` run", dir.display(), m.kind.name())
        }
        None => bail!(
            "{}: not a run folder (no {}); give the folder of a `descent train` run",
            dir.display(),
            folder::MARKER
        ),
    }
}

/// Whether the run's schedule is laid over its whole length (`epochs`, `steps`), so that another
/// length changes the rates of steps already taken (warmup_cosine with --decay-steps ends at a
/// fixed step, whatever the run's length).
fn schedule_spans_run(a: &TrainArgs) -> bool {
    match a.schedule() {
        "warmup_cosine" => a.decay_steps.is_none(),
        s => matches!(s, "cosine" | "onecycle" | "linear"),
    }
}

/// The settings that make a run what it is: everything but how far it goes (`epochs`, `steps`:
/// a resume may extend the run, unless its schedule spans the run's length), how many threads
/// compute it and the precision of its products (the weights are f32 either way). Their hash goes
/// into every checkpoint, so that a config.json edited after the run started is noticed.
///
/// A hash with the length is marked `len-` (an earlier descent left the length out of every
/// run's: its checkpoints are compared without it, [`config_hash_matches`]).
fn config_hash(a: &TrainArgs) -> Result<String> {
    let with_length = schedule_spans_run(a);
    let hash = settings_hash(a, with_length)?;
    Ok(if with_length { format!("{LENGTH_HASH}{hash}") } else { hash })
}

/// The mark of a settings hash that includes the run's length.
const LENGTH_HASH: &str = "len-";

/// The identity of the settings that make the run, with or without its length.
fn settings_hash(a: &TrainArgs, with_length: bool) -> Result<String> {
    let mut v = serde_json::to_value(a)?;
    let obj = v.as_object_mut().expect("TrainArgs serializes to an object");
    let length: &[&str] = if with_length { &[] } else { &["epochs", "steps"] };
    for k in ["threads", "data_parallel", "precision", "shard_optimizer"].iter().chain(length) {
        obj.remove(*k);
    }
    Ok(identity(&v))
}

/// Whether a checkpoint's settings hash is that of `a`: [`config_hash`], or, for a checkpoint an
/// earlier descent wrote (no `len-` mark), the hash without the length it used for every run.
fn config_hash_matches(checkpoint_hash: &str, a: &TrainArgs) -> Result<bool> {
    Ok(checkpoint_hash == config_hash(a)?
        || (!checkpoint_hash.starts_with(LENGTH_HASH) && checkpoint_hash == settings_hash(a, false)?))
}

/// An identity of settings: FNV-1a over their canonical JSON (keys sorted), as 16 hex digits;
/// an identity, not a defence against tampering.
fn identity(v: &serde_json::Value) -> String {
    let mut h = Fnv1a::default();
    h.eat(v.to_string().as_bytes());
    h.hex()
}

/// The identity of a sweep's or benchmark's settings (their `base` train settings and their own),
/// kept in each line of results: threads are left out, which a resume may change.
pub fn command_settings_hash(s: &impl serde::Serialize) -> Result<String> {
    let mut v = serde_json::to_value(s)?;
    if let Some(base) = v.get_mut("base").and_then(|b| b.as_object_mut()) {
        base.remove("threads");
    }
    Ok(identity(&v))
}

/// The MLP's hidden width when `--hidden` is not given (the model of the earlier MNIST recipes).
const MLP_HIDDEN: usize = 128;

/// A value of a run's settings as a message shows it: an f32 setting (`dropout`) in its own
/// shortest form, not as the f64 it was widened to (`0.30000001192092896`).
fn shown_setting(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && (x as f32) as f64 == x => (x as f32).to_string(),
            _ => n.to_string(),
        },
        v => v.to_string(),
    }
}

/// A resumed run's settings: its config with `--epochs`, `--steps` (to a larger total),
/// `--threads` and `--precision` from the command line, and `--data` / `--text` where the data
/// moved (its digest, recorded in the checkpoint, is checked once read); any other flag that
/// contradicts the config is refused.
/// `Ok(Err(why))` when the run has nothing left to do.
fn resume_settings(
    cli: &TrainArgs,
    dir: &std::path::Path,
    mut cfg: TrainArgs,
    ck: &Checkpoint,
    marker: &folder::Marker,
    under_mpi: bool,
    warnings: &mut Vec<String>,
) -> Result<std::result::Result<TrainArgs, String>> {
    let (cli_v, cfg_v) = (serde_json::to_value(cli)?, serde_json::to_value(&cfg)?);
    // `--hparams` as a run with the default optimizer records it: over the model's defaults (gpt's
    // AdamW arguments under those given).
    let with_defaults = {
        let mut r = TrainArgs { model: cfg.model.clone(), optimizer: None, ..cli.clone() };
        resolve_defaults(&mut r).ok().map(|_| r.hparams)
    };
    let d = dir.display();
    for id in &cli.given {
        match id.as_str() {
            "resume" | "threads" | "data_parallel" | "epochs" | "steps" | "precision" | "shard_optimizer" => {}
            "config" => {
                bail!("--config cannot be combined with --resume: a resumed run keeps the settings of its config.json")
            }
            "force" => bail!(
                "--force cannot be combined with --resume: --resume continues the run in {d}, --force replaces a run"
            ),
            "out" => {
                if cli.out.as_deref() != Some(dir) {
                    bail!("--out contradicts --resume {d}: a resumed run stays in its folder");
                }
            }
            key => {
                let (given, kept) = (&cli_v[key], &cfg_v[key]);
                // The same folder or file by another path (relative, absolute, through a link).
                let same_path = matches!(key, "data" | "text")
                    && matches!((given.as_str(), kept.as_str()), (Some(g), Some(k))
                        if std::fs::canonicalize(g).ok().is_some_and(|g| std::fs::canonicalize(k).ok() == Some(g)));
                // A setting the config left at its default (null), given as that default.
                let default_of_null = kept.is_null()
                    && match key {
                        "accumulate" => given.as_u64() == Some(1),
                        "batch_size" => given.as_u64() == Some(defaults(&cfg.model).1 as u64),
                        "lr" => given.as_f64() == Some(default_lr(&cfg.model, cfg.optimizer(), &cfg.hparams)),
                        "hidden" => given.as_u64() == Some(MLP_HIDDEN as u64),
                        // SWA's annealing defaults (torch's SWALR), for a run that averages.
                        "swa_anneal_epochs" => {
                            cfg.swa_start.is_some() && given.as_u64() == Some(SWA_ANNEAL_EPOCHS as u64)
                        }
                        "swa_anneal" => cfg.swa_start.is_some() && given.as_str() == Some(SWA_ANNEAL),
                        _ => false,
                    };
                // The optimizer by another of its names (`torch.adam` for `adam`).
                let same_optimizer = key == "optimizer"
                    && matches!((given.as_str(), kept.as_str()), (Some(g), Some(k))
                        if descent_core::spec::resolve_optimizer(g).ok().is_some_and(|g| descent_core::spec::resolve_optimizer(k).ok() == Some(g)));
                // The data or text moved: another path, taken where the checkpoint records the
                // content's digest (checked against what is read there before training).
                let moved = match key {
                    "data" => ck.data_digest.is_some(),
                    "text" => ck.text_digest.is_some(),
                    _ => false,
                };
                if given != kept && moved && !same_path {
                    match key {
                        "data" => cfg.data = cli.data.clone(),
                        _ => cfg.text = cli.text.clone(),
                    }
                    continue;
                }
                // Arguments a run with the default optimizer takes over its defaults.
                let same_hparams = key == "hparams" && cli.optimizer.is_none() && with_defaults.as_ref() == Some(kept);
                if given != kept && !same_path && !default_of_null && !same_optimizer && !same_hparams {
                    // A switch is given by its name alone.
                    let as_typed = if given.as_bool() == Some(true) {
                        flag_of(key)
                    } else {
                        format!("{} {}", flag_of(key), shown_setting(given))
                    };
                    bail!(
                        "{as_typed} contradicts the run's config ({key} = {}); a resumed run keeps its settings: only --epochs, --steps (to a larger total), --threads, --data-parallel, --precision and --shard-optimizer may be given",
                        shown_setting(kept),
                    );
                }
            }
        }
    }
    // `ck.epoch` counts completed epochs (a checkpoint inside an epoch continues that one).
    let given = |k: &str| cli.given.iter().any(|g| g == k);
    if cfg.model == "gpt" && given("epochs") {
        bail!("--epochs: gpt trains for --steps iterations, not epochs; continue the run with a larger --steps");
    }
    let extends = (given("epochs") && cli.epochs != cfg.epochs) || (given("steps") && cli.steps != cfg.steps);
    // The run's own totals, given again, extend nothing.
    if let Some(e) = cli.epochs.filter(|&e| given("epochs") && Some(e) != cfg.epochs) {
        if e <= ck.epoch {
            bail!("--epochs {e} is not more than the {} epoch(s) the run in {d} has done", ck.epoch);
        }
        cfg.epochs = Some(e);
    }
    if let Some(s) = cli.steps.filter(|&s| given("steps") && Some(s) != cfg.steps) {
        if s <= ck.steps {
            bail!("--steps {s} is not more than the {} steps the run in {d} has taken", ck.steps);
        }
        cfg.steps = Some(s);
    }
    // (A shorter total is refused above, as one the run has passed.)
    if extends && schedule_spans_run(&cfg) {
        bail!(
            "--schedule {} spans the run's whole length: a run of another length would change the learning rates it has already used; start a new run instead",
            cfg.schedule()
        );
    }
    cfg.threads = cli.threads;
    // Replicas and a sharded state are the computation, not the settings. Other replicas change
    // each step's sums (and, with dropout, each replica's masks); sharding alone changes only the
    // order in which clipping's global norm is summed. Either is said (after every check, by the
    // caller) where it applies, as the resume is then not the uninterrupted run bit for bit.
    // (Under mpirun the ranks of the run's earlier sessions are not on record: nothing is said.)
    let replicas = |n: Option<usize>| n.unwrap_or(1);
    let how = |n: Option<usize>, sharded: bool| {
        format!("{} replica(s){}", replicas(n), if sharded { " with a sharded optimizer" } else { "" })
    };
    let (before, after) = (how(cfg.data_parallel, cfg.shard_optimizer), how(cli.data_parallel, cli.shard_optimizer));
    let clipped = cfg.clip_norm.is_some_and(|c| c > 0.0);
    let change = if under_mpi {
        None
    } else if replicas(cfg.data_parallel) != replicas(cli.data_parallel) {
        Some("each step's gradient sums (and, with dropout, its masks) change")
    } else if cfg.shard_optimizer != cli.shard_optimizer && clipped {
        Some("the gradient norm that --clip-norm compares is summed in another order")
    } else {
        None
    };
    if let Some(change) = change {
        warnings.push(format!(
            "the run in {d} last trained on {before}, this resume on {after}: {change}, so it continues close to, \
             not bit for bit on, the path of an uninterrupted run"
        ));
    }
    cfg.data_parallel = cli.data_parallel;
    // The weights are f32 whatever the products' precision: a run may continue in another.
    if given("precision") {
        cfg.precision = cli.precision.clone();
    }
    cfg.shard_optimizer = cli.shard_optimizer;
    if let Some(why) = &marker.ended {
        return Ok(Err(format!("nothing to do: the run in {d} already ended ({why})")));
    }
    if let Some(s) = cfg.steps.filter(|&s| ck.steps >= s) {
        return Ok(Err(format!(
            "nothing to do: the run in {d} already reached its {s} steps; pass a larger --steps to continue it"
        )));
    }
    let epochs = cfg.epochs.unwrap_or(1);
    // A gpt run counts steps only (its checkpoint's "epochs" are its loss estimates).
    if cfg.model != "gpt" && !ck.mid_epoch() && ck.epoch >= epochs {
        if given("steps") && !given("epochs") {
            // A larger --steps alone cannot continue a run its epochs ended: refused, not a no-op.
            bail!(
                "--steps {}: the run in {d} ended with its {epochs} epoch(s) at step {}; give a larger --epochs too",
                cfg.steps.unwrap_or(0),
                ck.steps
            );
        }
        return Ok(Err(format!(
            "nothing to do: the run in {d} already finished its {epochs} epoch(s); pass a larger --epochs to continue it"
        )));
    }
    Ok(Ok(cfg))
}

/// The precision of `--precision` (f32 when absent); bf16 is refused on a CPU without AVX-512
/// BF16, where the library's scalar kernel (same results) would run many times slower than f32.
pub fn precision_of(s: Option<&str>) -> Result<Precision> {
    let p = match s {
        None => Precision::F32,
        Some(s) => Precision::parse(s).map_err(|_| anyhow::anyhow!("--precision {s}: accepted: f32, bf16"))?,
    };
    if !p.is_fast() {
        bail!(
            "--precision bf16 needs a CPU with AVX-512 BF16 (vdpbf16ps), which this one lacks: its emulation would be far slower than f32"
        );
    }
    Ok(p)
}

/// The training config of a run's settings (defaults filled in).
pub fn config(a: &TrainArgs, loss: Loss) -> Result<TrainConfig> {
    let default_batch = defaults(&a.model).1;
    let lr = a.lr.unwrap_or_else(|| default_lr(&a.model, a.optimizer(), &a.hparams));
    Ok(TrainConfig {
        hparams: a.hparams.clone(),
        max_steps: a.steps,
        seed: a.seed,
        // 0 is gpt's "no clipping".
        clip_norm: a.clip_norm.filter(|&c| c > 0.0),
        clip_value: a.clip_value,
        l1: a.l1,
        l2: a.l2,
        patience: a.patience,
        min_delta: a.min_delta,
        target_accuracy: a.target_accuracy.map(|t| t / 100.0),
        schedule: if a.schedule().contains('.') {
            LrSchedule::Spec(SpecSchedule::build(a.schedule(), &a.schedule_args, lr, a.schedule_interval == "epoch")?)
        } else if a.warmup_steps.is_some() || a.decay_steps.is_some() || a.min_lr.is_some() {
            // nanoGPT's get_lr (check_numbers allows these flags with warmup_cosine only).
            LrSchedule::WarmupCosineTo {
                warmup: a.warmup_steps.unwrap_or(0),
                decay: a.decay_steps,
                min_scale: if lr > 0.0 { a.min_lr.unwrap_or(0.0) / lr } else { 0.0 },
            }
        } else {
            LrSchedule::parse(a.schedule())?
        },
        groups: a.groups.clone(),
        min_loss_change: a.min_loss_change,
        log_grad_norms: a.log_grad_norms,
        average: average_config(a)?,
        augment: a
            .augment
            .as_deref()
            .map(|spec| {
                // A black pixel's stored value.
                let fill = if a.normalize { -MNIST_MEAN / MNIST_STD } else { 0.0 };
                Affine::parse(spec, fill)
            })
            .transpose()?,
        accumulate: a.accumulate.unwrap_or(1),
        precision: precision_of(a.precision.as_deref())?,
        shard_optimizer: a.shard_optimizer,
        ..TrainConfig::new(
            a.optimizer(),
            own_lr(a.optimizer(), &a.hparams, lr),
            a.epochs.unwrap_or(1),
            a.batch_size.unwrap_or(default_batch),
            loss,
        )
    })
}

/// A distillation's teachers, each with its trained weights: classifiers of the student's number
/// of classes that read the same inputs (the same --normalize). `given`: the teachers came from
/// `--teacher` flags (a new distillation), not from a run's config (a resume, `--config`), and are
/// named as such.
fn teachers_of(a: &TrainArgs, dirs: &[PathBuf], given: bool) -> Result<Vec<Box<dyn Model>>> {
    if matches!(a.model.as_str(), "linear" | "gpt") {
        bail!("--student {}: distillation trains a classifier; accepted: lenet, mlp, resnet, plain", a.model);
    }
    let what = if given { "--teacher" } else { "the run's teacher (its config's distill.teachers)" };
    let mut out = vec![];
    let mut opened: Vec<crate::evaluate::RunFolder> = vec![];
    for dir in dirs {
        let t = crate::evaluate::open_run(dir).with_context(|| format!("{what} {}", dir.display()))?;
        t.refuse_copy_of(&opened, "another teacher").with_context(|| what.to_string())?;
        match t.classes() {
            None => bail!(
                "{what} {}: a {} run is not a classifier; a teacher is a lenet, mlp, resnet or plain run",
                dir.display(),
                t.args.model
            ),
            Some(c) if c != 10 => {
                bail!("{what} {}: {c} classes, the student has 10", dir.display())
            }
            Some(_) => {}
        }
        if t.args.normalize != a.normalize {
            bail!(
                "{what} {}: trained {} --normalize, the student {}; teacher and student read the same inputs",
                dir.display(),
                if t.args.normalize { "with" } else { "without" },
                if a.normalize { "with it" } else { "without it" }
            );
        }
        if a.validation > t.args.validation && a.data == t.args.data {
            // The held-out samples are the training set's last: the teacher trained on some.
            eprintln!(
                "warning: {what} {} trained on {} of the student's {} held-out samples (--validation): its validation \
                 accuracy is not measured on samples the teachers never saw",
                dir.display(),
                a.validation - t.args.validation,
                a.validation
            );
        }
        out.push(t.load_model(crate::evaluate::Weights::Raw)?.model);
        opened.push(t);
    }
    Ok(out)
}

/// The weight averaging of a run's settings (`--ema`, `--swa-start`), if any.
pub fn average_config(a: &TrainArgs) -> Result<Option<AverageConfig>> {
    let kind = match (a.ema, a.swa_start) {
        (Some(decay), None) => AverageKind::Ema { decay, warmup: a.ema_warmup },
        (None, Some(start)) => AverageKind::Swa {
            start,
            swa_lr: a.swa_lr.context("--swa-start needs --swa-lr, the learning rate SWALR anneals to")?,
            anneal_epochs: a.swa_anneal_epochs.unwrap_or(SWA_ANNEAL_EPOCHS),
            anneal: Anneal::parse(a.swa_anneal.as_deref().unwrap_or(SWA_ANNEAL))?,
        },
        (Some(_), Some(_)) => bail!("--ema and --swa-start: one weight average per run; give one"),
        (None, None) => return Ok(None),
    };
    Ok(Some(AverageConfig { kind, use_buffers: a.average_buffers }))
}

/// Checks the weight-averaging flags: each with what it needs, values in range.
fn check_average(a: &TrainArgs) -> Result<()> {
    if let Some(d) = a.ema {
        if !(0.0..=1.0).contains(&d) {
            bail!("--ema {d}: the decay must be a number in [0, 1] (e.g. 0.999)");
        }
    }
    if a.ema_warmup && a.ema.is_none() {
        bail!("--ema-warmup: give --ema DECAY too");
    }
    if a.ema.is_some() && a.swa_start.is_some() {
        bail!("--ema and --swa-start: one weight average per run; give one");
    }
    match a.swa_start {
        None => {
            let given = [
                ("--swa-lr", a.swa_lr.is_some()),
                ("--swa-anneal-epochs", a.swa_anneal_epochs.is_some()),
                ("--swa-anneal", a.swa_anneal.is_some()),
            ];
            if let Some((f, _)) = given.iter().find(|(_, on)| *on) {
                bail!("{f}: only with --swa-start EPOCH (stochastic weight averaging)");
            }
        }
        Some(0) => bail!("--swa-start 0: epochs count from 1"),
        Some(s) => {
            let Some(lr) = a.swa_lr else {
                bail!("--swa-start {s} needs --swa-lr, the learning rate SWALR anneals to")
            };
            if !(lr.is_finite() && lr >= 0.0) {
                bail!("--swa-lr {lr}: must be a finite number at least 0");
            }
            let epochs = a.epochs.unwrap_or(1);
            if s > epochs {
                bail!("--swa-start {s}: after the run's last epoch (--epochs {epochs}); nothing would be averaged");
            }
        }
    }
    if a.average_buffers && a.ema.is_none() && a.swa_start.is_none() {
        bail!("--average-buffers: only with --ema or --swa-start");
    }
    if a.average_buffers && a.model != "resnet" && !a.qat {
        // Buffers are batch norm's running statistics and QAT's observers; the other models hold
        // none.
        bail!(
            "--average-buffers: the {} model has no buffers to average (batch norm's running statistics, --qat's observers)",
            a.model
        );
    }
    Ok(())
}

/// With `n > 0`, the last `n` training samples become the evaluation set.
pub(crate) fn hold_out(train: Dataset, test: Dataset, n: usize) -> Result<(Dataset, Dataset)> {
    if n == 0 {
        return Ok((train, test));
    }
    let len = train.len();
    if n >= len {
        bail!("--validation {n} leaves no training samples (the training set has {len})");
    }
    let (tr, va) = (train.range(0, len - n)?, train.range(len - n, n)?);
    Ok((Dataset { x: tr.0, y: tr.1 }, Dataset { x: va.0, y: va.1 }))
}

/// What a run trains: an image (or regression) model for epochs, or a language model for steps.
enum Job {
    Images {
        model: Box<dyn Model>,
        train_set: Dataset,
        test_set: Dataset,
        cfg: TrainConfig,
        /// A distillation's teachers (`descent distill`).
        teachers: Vec<Box<dyn Model>>,
    },
    Text {
        model: Box<Gpt>,
        corpus: CharCorpus,
        cfg: TrainConfig,
        text: TextConfig,
    },
}

/// A language model's checkpoint holds the model's shape and the vocabulary it was trained with:
/// a run resumes only on the same ones (the text file may have changed since).
pub(crate) fn check_text_checkpoint(ck: &Checkpoint, model: &Gpt, corpus: &CharCorpus) -> Result<()> {
    let vocab: String = corpus.vocab.iter().collect();
    if ck.vocab.as_deref() != Some(vocab.as_str()) {
        bail!(
            "{}: its characters are not the vocabulary the run's checkpoint was trained with; give the text the run was trained on",
            corpus.source
        );
    }
    if ck.text_digest.as_ref().is_some_and(|d| *d != corpus.digest()) {
        bail!(
            "{}: not the text the run's checkpoint was trained on (the same characters, other content); give the text the run was trained on",
            corpus.source
        );
    }
    let want = model.config.to_json().to_string();
    if ck.model_config.as_deref() != Some(want.as_str()) {
        bail!(
            "the checkpoint's model ({}) is not the run's ({want})",
            ck.model_config.as_deref().unwrap_or("none recorded")
        );
    }
    Ok(())
}

/// Rank 0's settings, checkpoint file (when resuming) and reason to do nothing (a resumed run
/// already at its end) on every rank of a data-parallel run; the other ranks' arguments are
/// ignored.
fn share_settings(
    comm: &dyn Communicator,
    a: &TrainArgs,
    checkpoint: Option<Vec<u8>>,
    nothing: Option<&str>,
) -> Result<(TrainArgs, Option<Checkpoint>, Option<String>)> {
    if comm.size() == 1 {
        let ck = checkpoint.map(|b| Checkpoint::from_bytes(std::path::Path::new("checkpoint"), &b)).transpose()?;
        return Ok((a.clone(), ck, nothing.map(str::to_string)));
    }
    let mut head = serde_json::to_vec(&serde_json::json!({"args": a, "nothing": nothing}))?;
    comm.broadcast_bytes(&mut head, 0)?;
    let head: serde_json::Value = serde_json::from_slice(&head).context("rank 0's settings")?;
    let args = settings_from_value(head["args"].clone(), "rank 0's settings")?;
    let nothing = head["nothing"].as_str().map(str::to_string);
    let mut bytes = checkpoint.unwrap_or_default();
    comm.broadcast_bytes(&mut bytes, 0)?;
    let ck = if bytes.is_empty() {
        None
    } else {
        Some(Checkpoint::from_bytes(std::path::Path::new("rank 0's checkpoint"), &bytes)?)
    };
    Ok((args, ck, nothing))
}

/// Trains one run into its folder (new, or resumed from its checkpoint).
pub fn execute(a: TrainArgs, opts: RunOptions) -> Result<RunOutcome> {
    // The settings: the flags, or the run folder's config when resuming. Nothing is written
    // before every setting, the data and the optimizer have been checked.
    enum Folder {
        New(PathBuf),
        Resume(folder::Claimed, Box<Checkpoint>),
        /// A rank other than 0 of a data-parallel run: rank 0's settings and checkpoint, no folder.
        Follower(Option<Box<Checkpoint>>),
    }
    let comm: &dyn Communicator = opts.comm.unwrap_or(&Local);
    let cli = a;
    // Said once every check has passed, so that a refused resume prints its error alone.
    let mut resume_warnings = vec![];
    let (mut a, mut target) = if comm.rank() > 0 {
        (cli.clone(), Folder::Follower(None))
    } else {
        match &cli.resume {
            Some(dir) => {
                if let Ok(info) = descent_train::compress::CompressInfo::read(dir) {
                    if info.kind == "int8" {
                        bail!(
                            "--resume {}: the folder holds an int8-quantized model (descent quantize), which cannot be trained; fine-tune the f32 run {} instead",
                            dir.display(),
                            info.source.display()
                        );
                    }
                }
                if folder::is_compressed_output(dir) {
                    bail!(
                        "--resume {}: a pruned model made without fine-tuning, so no run to continue; fine-tune it with descent prune --finetune-epochs N",
                        dir.display()
                    );
                }
                let claimed = folder::claim_existing(dir, folder::Kind::Run)?;
                if let Some(parent) = claimed.marker.parent.as_deref().filter(|p| opts.parent.as_deref() != Some(*p)) {
                    // A compare stopped before its table, or a sweep's or benchmark's trial: trained
                    // again by its command.
                    let unrecorded = match folder::owner(dir, parent) {
                        Some((d, folder::Kind::Compare)) => !d.join("compare.json").exists(),
                        Some((_, folder::Kind::Sweep | folder::Kind::Benchmark)) => true,
                        _ => false,
                    };
                    if unrecorded {
                        bail!(
                            "--resume {}: {}; to train its settings further, start a run of your own: `descent train \
                             --config {}`",
                            dir.display(),
                            folder::rerun_by_owner(dir, parent),
                            dir.join(folder::run::CONFIG_TOML).display()
                        );
                    }
                    bail!(
                        "--resume {}: a run of {} (id {parent}), which recorded its result: trained further here it would \
                         disagree with that record; start a run of your own from its settings with \
                         `descent train --config {}`",
                        dir.display(),
                        folder::owner_of(dir, parent),
                        dir.join(folder::run::CONFIG_TOML).display()
                    );
                }
                let cfg_path = dir.join(folder::run::CONFIG_JSON);
                if !cfg_path.exists() {
                    bail!(
                        "--resume {}: no {}, so nothing to resume (a run's settings are written before its first \
                         step; a --force stopped while clearing the folder leaves it without them): train it anew \
                         with --out {} --force",
                        dir.display(),
                        folder::run::CONFIG_JSON,
                        dir.display()
                    );
                }
                let text =
                    std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
                let cfg: TrainArgs =
                    serde_json::from_str(&text).with_context(|| format!("{}: malformed", cfg_path.display()))?;
                let ck_path = dir.join(folder::run::CHECKPOINT);
                if !ck_path.exists() {
                    return Err(missing_checkpoint(
                        dir,
                        &format!(
                            "the run stopped before the end of its first epoch; start it again with --out {} --force",
                            dir.display()
                        ),
                    ));
                }
                let ck = Checkpoint::load(&ck_path)?;
                check_checkpoint_of_run(&ck, dir, &claimed.marker.id, &cfg)?;
                check_config_toml_unedited(dir, &cfg)?;
                let under_mpi = comm.size() > 1 && cli.data_parallel.is_none();
                match resume_settings(&cli, dir, cfg, &ck, &claimed.marker, under_mpi, &mut resume_warnings)? {
                    Ok(cfg) => (cfg, Folder::Resume(claimed, Box::new(ck))),
                    Err(why) => {
                        share_settings(comm, &cli, None, Some(&why))?;
                        return Ok(RunOutcome {
                            dir: dir.clone(),
                            args: cli,
                            history: vec![],
                            stop: Stop::Epochs,
                            state_bytes: 0,
                            first_values: vec![],
                            nothing_to_do: Some(why),
                        });
                    }
                }
            }
            None => {
                let mut cli = cli.clone();
                unify_lr(&mut cli)?;
                resolve_defaults(&mut cli)?;
                check_numbers(&cli)?;
                // Without --out, the first free runs/MODEL-OPTIMIZER-seedSEED[-k].
                let dir = match &cli.out {
                    Some(d) => d.clone(),
                    None => {
                        let base = format!("{}-{}-seed{}", cli.model, cli.optimizer().replace('/', "_"), cli.seed);
                        (1..)
                            .map(|k| {
                                PathBuf::from("runs").join(if k == 1 { base.clone() } else { format!("{base}-{k}") })
                            })
                            .find(|d| !d.exists())
                            .expect("some name is free")
                    }
                };
                // A prune's fine-tuning with --force replaces an earlier prune or quantize folder,
                // as the prune without fine-tuning does.
                if !(replaces_compressed(&opts) && cli.force) {
                    refuse_compressed_output(&dir)?;
                }
                folder::check_new(&dir, folder::Kind::Run, cli.force, true, opts.parent.as_deref())?;
                (cli, Folder::New(dir))
            }
        }
    };
    if comm.size() > 1 {
        // Every rank runs rank 0's settings, from rank 0's checkpoint when resuming.
        let ck = match &target {
            Folder::Resume(c, _) => Some(std::fs::read(c.dir.join(folder::run::CHECKPOINT))?),
            _ => None,
        };
        let (settings, ck, nothing) = share_settings(comm, &a, ck, None)?;
        if let Some(why) = nothing {
            return Ok(RunOutcome {
                dir: PathBuf::new(),
                args: settings,
                history: vec![],
                stop: Stop::Epochs,
                state_bytes: 0,
                first_values: vec![],
                nothing_to_do: Some(why),
            });
        }
        if comm.rank() > 0 {
            (a, target) = (settings, Folder::Follower(ck.map(Box::new)));
        }
    }
    if a.shard_optimizer && comm.size() < 2 {
        bail!(SHARD_ONE_PROCESS);
    }
    if let Some(n) = a.data_parallel.filter(|&n| n != comm.size()) {
        bail!("{}", one_replica(n));
    }
    let default_batch = defaults(&a.model).1;
    // The run's rate, recorded as it ran: none where the optimizer's links or an optax schedule
    // set it (a filled-in default would be a rate the run never used, and its config.toml would
    // be refused when replayed).
    if rate_set_elsewhere(&a).is_none() {
        a.lr = a.lr.or_else(|| Some(default_lr(&a.model, a.optimizer(), &a.hparams)));
    }
    a.batch_size = a.batch_size.or(Some(default_batch));
    if a.model != "gpt" {
        a.epochs = a.epochs.or(Some(1));
    }
    a.given = vec![];
    let (batch_size, epochs) = (a.batch_size.unwrap_or(default_batch), a.epochs.unwrap_or(1));
    let mut rng = Rng::new(a.seed);
    let job = if a.model == "gpt" {
        if a.distill.is_some() {
            bail!("--student gpt: distillation trains a classifier; accepted: lenet, mlp, resnet, plain");
        }
        let corpus = corpus_of(&a)?;
        let cfg = config(&a, Loss::CrossEntropy)?;
        let shape = gpt_config_of(&a, &corpus)?;
        check_gpt_memory(&shape, cfg.batch_size, crate::bench::available_memory(), Sizing::BatchAndShape)?;
        let model = Gpt::new(shape, &mut rng, &Device::Cpu)?;
        check_model_settings(&model, &cfg)?;
        let text = TextConfig {
            block_size: model.config.block_size,
            eval_interval: a.eval_interval.context("--eval-interval is not set")?,
            eval_iters: a.eval_iters.context("--eval-iters is not set")?,
        };
        descent_train::lm::check(&corpus, &cfg, &text)?;
        if opts.eval_at.is_some() {
            bail!("--model gpt: evaluations at given steps (a sweep's) are not available; gpt estimates its losses every --eval-interval steps");
        }
        Job::Text { model: Box::new(model), corpus, cfg, text }
    } else {
        let init = Init::parse(&a.init)?;
        let mut cfg = config(&a, loss_of(&a.model))?;
        let copies = Copies::of(&cfg.optimizer, &cfg.hparams, a.data_parallel.unwrap_or(1), a.shard_optimizer);
        check_model_memory(
            &a.model,
            Arch::of(&a),
            cfg.batch_size,
            copies,
            crate::bench::available_memory(),
            Sizing::BatchAndShape,
        )?;
        let (model, train_set, test_set, _) =
            workload(&a.model, Arch::of(&a), init, a.dropout(), a.normalize, &a.data, &mut rng)?;
        let (train_set, test_set) = hold_out(train_set, test_set, a.validation)?;
        check_step_fits(cfg.batch_size, cfg.accumulate, train_set.len(), &a.model, a.validation)?;
        if let (Some(aug), &[_, _, h, w]) = (&cfg.augment, train_set.x.dims()) {
            aug.check_image(h, w)?;
        }
        check_run_length(&a, &cfg, train_set.len())?;
        if let Some(at) = opts.eval_at.clone() {
            cfg.eval_at = at;
        }
        if let Some(s) = &opts.start {
            descent_train::compress::set_values(model.as_ref(), &s.weights, &s.buffers)?;
            cfg.pruner = Some(s.pruner.clone());
        } else if let Some(target) = a.prune_to {
            let (start, end) = prune_span(&a, target, run_steps(&cfg, train_set.len()))?;
            (a.prune_start, a.prune_end) = (Some(start), Some(end));
            let frequency = *a.prune_frequency.get_or_insert(100);
            a.prune_schedule.get_or_insert_with(|| "polynomial".into());
            let g = descent_train::prune::GradualPruning { initial: 0.0, target, start, end, frequency };
            let targets = descent_train::prune::prunable(model.as_ref()).into_iter().map(|(n, _)| n).collect();
            cfg.pruner = Some(std::sync::Arc::new(descent_train::prune::Pruner::gradual(g, targets)));
        } else if let Folder::Resume(..) = &target {
            if let Some(d) = cli.resume.as_deref().filter(|d| d.join(folder::run::COMPRESS_JSON).exists()) {
                // Its model files follow the fine-tuning (below): they and compress.json must be
                // whole and agree before the run goes on. A prune whose fine-tuning was stopped
                // before its end has none yet: its record alone is read, and this run writes them.
                if d.join(folder::run::MODEL_F32).exists() {
                    descent_train::compress::load_compressed(d)?;
                } else {
                    descent_train::compress::CompressInfo::read(d)?;
                }
                // A pruned run fine-tuned further: its zeros are its masks.
                cfg.pruner = Some(std::sync::Arc::new(descent_train::prune::Pruner::fixed(vec![])));
            }
        }
        check_model_settings(model.as_ref(), &cfg)?;
        check_schedule_length(&cfg, train_set.len())?;
        // Where the teachers are: as the config says, or beside the run's folder (or its
        // config.toml's) where the project moved.
        let beside = match &target {
            Folder::Resume(c, _) => Some(c.dir.clone()),
            _ => a.config.as_ref().and_then(|c| c.parent()).map(Path::to_path_buf),
        };
        let (dirs, notes) = a.distill.as_ref().map(|d| d.located(beside.as_deref())).unwrap_or_default();
        resume_warnings.extend(notes);
        let teachers = match &a.distill {
            Some(_) => teachers_of(&a, &dirs, a.config.is_none() && matches!(target, Folder::New(_)))?,
            None => vec![],
        };
        if let Some(d) = &mut a.distill {
            let now = teachers.iter().map(|t| weights_identity(t.as_ref())).collect::<Result<Vec<_>>>()?;
            // The teachers must have the weights the config recorded: every one on a resume; on
            // a new run from a config, one found beside it rather than where it says.
            let resuming = !matches!(target, Folder::New(_));
            for (i, (found, is)) in dirs.iter().zip(&now).enumerate() {
                let checked = resuming || d.teachers.get(i).is_some_and(|t| t != found);
                if let (true, Some(was)) = (checked, d.teacher_weights.get(i)) {
                    if was != is {
                        bail!(
                            "the run's teacher {}: its weights are not those the run was distilled from (trained further or replaced since); {}",
                            found.display(),
                            if resuming {
                                "a resume needs the same teachers"
                            } else {
                                "give the teacher with descent distill --teacher"
                            }
                        );
                    }
                }
            }
            if let Folder::New(dir) = &target {
                d.teacher_weights = now;
                // A new run records where it found them (a resume keeps its config as written).
                d.teachers = dirs.iter().map(|t| std::fs::canonicalize(t).unwrap_or_else(|_| t.clone())).collect();
                d.teachers_from_run =
                    d.teachers.iter().map(|t| relative_to(dir, t)).collect::<Option<_>>().unwrap_or_default();
            }
        }
        Job::Images { model, train_set, test_set, cfg, teachers }
    };
    match (&job, &target) {
        (Job::Text { model, corpus, .. }, Folder::Resume(_, ck)) => check_text_checkpoint(ck, model, corpus)?,
        (Job::Images { .. }, Folder::Resume(_, ck)) => check_data_of_checkpoint(ck, &a)?,
        _ => {}
    }
    // TOML has no null: settings holding one (AdaFactor's `betas: [null, 0.999]`) leave the run
    // without config.toml, said below; config.json holds every setting.
    let config_toml = toml::to_string(&a).ok();
    // Everything is valid: now the run folder (rank 0's alone).
    let hash = config_hash(&a)?;
    let (claimed, resume) = match target {
        Folder::New(dir) => {
            if !(replaces_compressed(&opts) && cli.force) {
                refuse_compressed_output(&dir)?;
            }
            let claimed = folder::claim_new(&dir, folder::Kind::Run, cli.force, true, opts.parent.as_deref())?;
            if let Some(info) = opts.start.as_ref().and_then(|s| s.info.as_ref()) {
                folder::write_atomic(
                    &dir.join(folder::run::COMPRESS_JSON),
                    serde_json::to_string_pretty(info)?.as_bytes(),
                )?;
            }
            (Some(claimed), None)
        }
        Folder::Resume(c, ck) => (Some(c), Some(*ck)),
        Folder::Follower(ck) => (None, ck.map(|c| *c)),
    };
    let writer = claimed.is_some();
    let run_dir = RunDir {
        dir: claimed.as_ref().map(|c| c.dir.clone()).unwrap_or_default(),
        base_lr: a.lr.unwrap_or(f64::NAN),
        id: claimed.as_ref().map(|c| c.marker.id.clone()).unwrap_or_default(),
        config_hash: hash,
        cut_row: std::cell::Cell::new(None),
    };
    let start = FolderStart {
        cut_back_to: resume.as_ref().map(|ck| (ck.epoch, ck.steps)),
        config_json: serde_json::to_string_pretty(&a)?,
        config_toml,
        tensorboard: a.tensorboard,
        quiet: opts.quiet,
    };
    // A new run's folder starts now; a resumed one's when the training loop has applied the
    // checkpoint (`Hooks::on_start`), so that a resume refused there leaves the folder as it was.
    let mut deferred = None;
    let mut tensorboard = None;
    if writer {
        for warning in &resume_warnings {
            eprintln!("warning: {warning}");
        }
        if resume.is_some() {
            deferred = Some(start);
        } else {
            tensorboard = start.apply(&run_dir)?;
        }
    }
    let quiet = opts.quiet || !writer;
    let say = |m: String| {
        if !quiet {
            println!("{m}")
        }
    };
    let lr = match (a.lr, rate_set_elsewhere(&a)) {
        (Some(l), _) => format!("lr {}", Num(l)),
        (None, Some(_)) if a.schedule().starts_with("optax.") => format!("learning rate from {}", a.schedule()),
        (None, Some(_)) => "learning rate in its --hparams".into(),
        (None, None) => "lr default".into(),
    };
    match &job {
        Job::Text { model, corpus, text, .. } => say(format!(
            "training gpt ({} parameters: {} layers, {} heads, {} wide, block {}) on {} ({} training and {} validation characters, {} in the vocabulary) with {} ({lr}, schedule {}), batch {batch_size}, {} steps",
            model.num_params(),
            model.config.n_layer,
            model.config.n_head,
            model.config.n_embd,
            text.block_size,
            corpus.source,
            corpus.train.len(),
            corpus.val.len(),
            corpus.vocab_size(),
            a.optimizer(),
            a.schedule(),
            a.steps.unwrap_or(0),
        )),
        Job::Images { train_set, .. } => say(format!(
            "training {} on {} samples with {} ({lr}, schedule {}), batch {}, {} epoch(s){}",
            a.model,
            train_set.len(),
            a.optimizer(),
            a.schedule(),
            batch_size,
            epochs,
            a.precision.as_deref().filter(|p| *p != "f32").map(|p| format!(", {p} products")).unwrap_or_default()
        )),
    }
    // An optimizer named on the command line takes its library's defaults, not nanoGPT's recipe
    // (which is what no --optimizer gives): said, since the header names the same optimizer.
    if a.model == "gpt" && a.groups.is_empty() && closure_optimizer(&a).is_none() {
        say(format!(
            "{} with its library's defaults for what --hparams does not set and no parameter groups (nanoGPT's recipe, \
             the default without --optimizer, has betas (0.9, 0.99) and weight decay 0.1 on matrices and embeddings only)",
            a.optimizer()
        ));
    }
    if a.model == "gpt" && !a.groups.is_empty() && a.groups != Gpt::no_decay_groups() {
        let pats: Vec<String> = a.groups.iter().map(|(p, v)| format!("`{p}` {v}")).collect();
        say(format!(
            "parameter groups: {} (in place of nanoGPT's default ones, which exempt `.bias` and `ln_` parameters from weight decay)",
            pats.join(", ")
        ));
    }
    if a.qat {
        say(format!(
            "quantization-aware training: weights fake-quantized per output channel (int8, symmetric), layer inputs per tensor (u8) with moving-average min/max observers (averaging constant {})",
            descent_train::qat::AVERAGING_CONSTANT
        ));
    }
    if let Some(k) = a.accumulate.filter(|&k| k > 1) {
        say(format!("accumulating {k} micro-batches of {batch_size} per step: {} samples per step", k * batch_size));
    }
    if comm.size() > 1 {
        say(format!(
            "data-parallel on {} {}s: each step's batch split across them, gradients all-reduced",
            comm.size(),
            comm.unit()
        ));
        if a.shard_optimizer {
            say(format!(
                "optimizer sharded (ZeRO stage 1): each {} keeps the state of 1/{} of the parameters; gradients reduce-scattered, parameters all-gathered",
                comm.unit(),
                comm.size()
            ));
        }
    }
    if let Some(ck) = &resume {
        match &job {
            Job::Text { .. } => say(format!("resuming {} after step {}", run_dir.dir.display(), ck.steps)),
            Job::Images { .. } => say(format!(
                "resuming {} after step {} ({} epoch(s) complete)",
                run_dir.dir.display(),
                ck.steps,
                ck.epoch
            )),
        }
    }
    let mut hooks = CliHooks {
        run_dir: &run_dir,
        start: deferred,
        writer,
        quiet,
        on_eval: opts.on_eval,
        bar: None,
        loss_sum: 0.0,
        seen: 0,
        steps: StepWriter::default(),
        tensorboard,
        state_bytes: 0,
        error: None,
        text: match &job {
            Job::Text { model, corpus, text, .. } => Some(TextRun {
                model_config: model.config.to_json().to_string(),
                vocab: corpus.vocab.iter().collect(),
                text_digest: corpus.digest(),
                batch: batch_size,
                block: text.block_size,
            }),
            Job::Images { .. } => None,
        },
        data_digest: match &job {
            Job::Images { .. } => mnist_digest(&a.data).filter(|_| a.model != "linear"),
            Job::Text { .. } => None,
        },
        eval_set: crate::evaluate::EvalSet::of(&a),
    };
    let trained = match &job {
        Job::Text { model, corpus, cfg, text } => {
            train_text_with(model.as_ref(), corpus, cfg, text, resume.as_ref(), &mut hooks, comm)
        }
        Job::Images { model, train_set, test_set, cfg, teachers } => {
            let distill = a.distill.as_ref().map(|d| Distillation {
                teachers: teachers.as_slice(),
                alpha: d.alpha,
                temperature: d.temperature,
            });
            train_with(model.as_ref(), train_set, test_set, cfg, resume.as_ref(), distill.as_ref(), &mut hooks, comm)
        }
    };
    let (history, stop) = match trained {
        // A run stopped between epoch ends (ASHA's pruning, a requested stop) keeps the steps
        // it took since the last one on record, as a failed run does below.
        Ok(done) if writer => {
            hooks.steps.flush(&run_dir.dir)?;
            done
        }
        Ok(done) => done,
        Err(e) => {
            // The steps since the last epoch's end stay on record (a diverging run's losses are
            // what its user looks at); a resume cuts them back to its checkpoint's.
            if writer {
                if let Err(w) = hooks.steps.flush(&run_dir.dir) {
                    eprintln!("warning: the steps before the error were not saved: {w:#}");
                }
            }
            return Err(e.into());
        }
    };
    let ended = match stop {
        Stop::EarlyStopping { best_epoch } => Some(format!("early stopping, best epoch {best_epoch}")),
        Stop::TargetAccuracy => Some("target accuracy reached".to_string()),
        Stop::Converged => Some("converged".to_string()),
        Stop::Requested { step } => Some(format!("stopped at step {step}")),
        Stop::Steps | Stop::Epochs => None,
    };
    if let (Stop::EarlyStopping { best_epoch }, true) = (stop, writer) {
        // The folder's checkpoint is the last epoch's; the run's result is its best epoch's
        // weights, which it restored: the checkpoint becomes those (and cannot be resumed), before
        // the marker says the run ended.
        let path = run_dir.checkpoint();
        let last = history.last().map_or(best_epoch, |m| m.epoch);
        let why = format!("early stopping after epoch {last}: the best epoch, {best_epoch}, restored");
        if let Some(ck) = Checkpoint::load(&path)?.restore_best(why) {
            ck.save(&path)?;
        }
    }
    if let (Some(_), Some(claimed)) = (&ended, &claimed) {
        let mut marker = claimed.marker.clone();
        marker.ended = ended;
        marker.write(&run_dir.dir)?;
    }
    let state_bytes = hooks.state_bytes;
    if writer && !quiet && comm.size() > 1 {
        let ranks =
            if a.shard_optimizer { format!(" ({} 0's 1/{} share)", comm.unit(), comm.size()) } else { String::new() };
        println!("optimizer state: {state_bytes} bytes{ranks}");
    }
    let model: &dyn Model = match &job {
        Job::Text { model, .. } => model.as_ref(),
        Job::Images { model, .. } => model.as_ref(),
    };
    let first_values = model
        .named_vars()
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().flatten_all()?.get(0)?.to_scalar::<f32>()?)))
        .collect::<Result<_>>()?;
    // A pruned model's folder (descent prune) fine-tuned further: its model files, which
    // evaluate, quantize and compress-report read, follow the weights now trained, as prune wrote
    // them from the end of its own fine-tuning.
    if writer && matches!(job, Job::Images { .. }) && run_dir.dir.join(folder::run::COMPRESS_JSON).exists() {
        use descent_train::compress::{save_model, shrink, CompressInfo};
        let info = CompressInfo::read(&run_dir.dir)?;
        save_model(&run_dir.dir.join(folder::run::MODEL_F32), &info, model)?;
        if run_dir.dir.join(folder::run::COMPACT).exists() || info.makes_compact() {
            save_model(&run_dir.dir.join(folder::run::COMPACT), &info, shrink(&a.model, model)?.as_ref())?;
        }
    }
    Ok(RunOutcome { dir: run_dir.dir.clone(), args: a, history, stop, state_bytes, first_values, nothing_to_do: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One process, no optimizer state: the weights and their gradients.
    const ONE: Copies = Copies { replicas: 1, state_floats: 0.0 };

    /// A teacher's place relative to a student's folder, neither of which need exist.
    #[test]
    fn relative_paths_between_run_folders() {
        let rel = |a: &str, b: &str| relative_to(Path::new(a), Path::new(b)).unwrap();
        assert_eq!(rel("/p/runs/s", "/p/runs/t"), PathBuf::from("../t"));
        assert_eq!(rel("/p/runs/s", "/p/teachers/a/t"), PathBuf::from("../../teachers/a/t"));
        assert_eq!(rel("/p/runs/./x/../s", "/p/runs/t"), PathBuf::from("../t"));
        assert_eq!(rel("/nonexistent-a/s", "/nonexistent-b/t"), PathBuf::from("../../nonexistent-b/t"));
        assert_eq!(rel("/p/s", "/p/s/t"), PathBuf::from("t"));
    }

    /// What stops a sweep or a benchmark (a file that cannot be written or read) against what is
    /// a trial's result (a diverged step, a refused setting).
    #[test]
    fn storage_errors_are_told_from_training_failures() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(is_storage_error(&anyhow::Error::new(full).context("writing run/steps.jsonl")));
        let ck = descent_train::Error::Data { path: "run/checkpoint.safetensors".into(), message: "No space".into() };
        assert!(is_storage_error(&anyhow::Error::new(ck).context("trial 3")));
        let diverged = descent_train::Error::Param("the step diverged; training stopped".into());
        assert!(!is_storage_error(&anyhow::Error::new(diverged)));
        assert!(!is_storage_error(&anyhow::anyhow!("--lr 0: must be positive")));
    }

    #[test]
    fn a_gpt_batch_beyond_memory_is_refused() {
        let c = GptConfig::new(65, 64, 4, 4, 128);
        assert!(check_model_memory("resnet", Arch::default(), 128, ONE, Some(24 << 30), Sizing::BatchAndShape).is_ok());
        assert!(
            check_model_memory("linear", Arch::default(), 60_000, ONE, Some(1 << 20), Sizing::BatchAndShape).is_ok()
        );
        // 853 KB an image at depth 6, width 16: 60 000 images need 51 GB, 20 000 of plain's
        // (452 KB) 9 GB.
        let e = check_model_memory("resnet", Arch::default(), 60_000, ONE, Some(20 << 30), Sizing::BatchAndShape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--batch-size 60000") && e.contains("51.2 GB"), "{e}");
        assert!(check_model_memory("plain", Arch::default(), 20_000, ONE, Some(9_100_000_000), Sizing::BatchAndShape)
            .is_ok());
        assert!(check_model_memory("plain", Arch::default(), 20_000, ONE, Some(8_900_000_000), Sizing::BatchAndShape)
            .is_err());
        // The whole training set in one plain batch (about 30 GB measured) on a 24 GB machine:
        // the two copies alone (24.1 GB) let it through to be killed.
        let e = check_model_memory("plain", Arch::default(), 60_000, ONE, Some(24_400_000_000), Sizing::BatchAndShape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--batch-size 60000") && e.contains("27.1 GB"), "{e}");
        let wide = Arch { depth: Some(18), width: Some(256), ..Arch::default() };
        let e =
            check_model_memory("plain", wide, 1024, ONE, Some(8 << 30), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--depth 18 --width 256"), "{e}");
        assert!(check_model_memory("plain", Arch::default(), usize::MAX, ONE, Some(u64::MAX), Sizing::BatchAndShape)
            .is_err());
        let e = check_model_memory("plain", Arch::default(), usize::MAX, ONE, None, Sizing::BatchAndShape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--batch-size") && e.contains("too many"), "{e}");
        let wide = Arch { width: Some(100_000), ..Arch::default() };
        let e =
            check_model_memory("lenet", wide, 64, ONE, Some(24 << 30), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--width 100000") && e.contains("this lenet"), "{e}");
        assert!(
            check_model_memory("lenet", Arch::default(), 60_000, ONE, Some(24 << 30), Sizing::BatchAndShape).is_ok()
        );
        let wide = Arch { hidden: Some(100_000_000), ..Arch::default() };
        let e =
            check_model_memory("mlp", wide, 32, ONE, Some(24 << 30), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--hidden 100000000"), "{e}");
        assert!(check_model_memory("mlp", Arch::default(), 60_000, ONE, Some(1 << 30), Sizing::BatchAndShape).is_ok());
        // The optimizer's state counts: Adam keeps two floats a weight, SGD none, 8-bit Adam two
        // bytes and its block scales; sharded, each replica keeps its share.
        let state = |o: &str| Copies::of(o, &serde_json::json!({}), 1, false).state_floats;
        assert_eq!((state("adam"), state("sgd")), (2.0, 0.0));
        assert!((0.5..0.6).contains(&state("descent.adamw8bit")), "{}", state("descent.adamw8bit"));
        assert_eq!(Copies::of("adam", &serde_json::json!({}), 4, true).state_floats, 0.5);
        // An mlp of 1.6 G weights with Adam: 25.4 GB of weights, gradients and state (12.7 GB
        // without the state, which let it through to be killed).
        let wide = Arch { hidden: Some(2_000_000), ..Arch::default() };
        let adam = Copies::of("adam", &serde_json::json!({}), 1, false);
        let e = check_model_memory("mlp", wide, 32, adam, Some(24_400_000_000), Sizing::BatchAndShape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optimizer state 25.4 GB"), "{e}");
        assert!(check_model_memory("mlp", wide, 32, ONE, Some(24_400_000_000), Sizing::BatchAndShape).is_ok());
        assert!(check_gpt_memory(&c, 12, Some(24 << 30), Sizing::BatchAndShape).is_ok());
        assert!(check_gpt_memory(&c, 12, None, Sizing::BatchAndShape).is_ok());
        let e = check_gpt_memory(&c, 100_000, Some(24 << 30), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--batch-size 100000") && e.contains("activations"), "{e}");
        // The benchmark's model is fixed: its refusal names the batch alone, with no smaller model.
        let e = check_gpt_memory(&c, 100_000, Some(24 << 30), Sizing::Batch).unwrap_err().to_string();
        assert!(e.contains("--batch-size 100000 (the benchmark's --n-layer") && !e.contains("smaller model"), "{e}");
        // A model too large on its own is refused before any weight exists, whatever the batch.
        let huge = GptConfig::new(65, 64, 1_000_000_000, 4, 128);
        let e = check_gpt_memory(&huge, 1, Some(24 << 30), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--n-layer 1000000000") && e.contains("weights and gradients 1586176.0 GB"), "{e}");
        let absurd = GptConfig::new(65, usize::MAX, usize::MAX, 1, usize::MAX);
        let e = check_gpt_memory(&absurd, usize::MAX, Some(u64::MAX), Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("10^12 GB or more"), "{e}");
        let e = check_gpt_memory(&c, usize::MAX, None, Sizing::BatchAndShape).unwrap_err().to_string();
        assert!(e.contains("--batch-size") && e.contains("too many"), "{e}");
    }
}
