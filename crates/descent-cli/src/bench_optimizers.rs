//! `descent bench optimizers`: which optimizer, at which learning rate, for this model.
//!
//! The protocol of the public optimizer benchmarks (AlgoPerf, and the studies that tune every
//! optimizer separately before comparing them at the end of training), at CPU scale: every
//! optimizer of the list gets the same learning-rate search — a log grid of `--grid-points`
//! rates half a decade apart, centred on the rate it runs at without `--lr` (its library's
//! default) or on the `lr` its spec gives — on the validation split held out of the training
//! set, with the workload's default (constant) schedule; then its best rate runs over `--seeds`
//! seeds (the search's seed among them). The report: steps and seconds until the validation
//! accuracy first reaches `--target`, the final accuracy with its spread over seeds, the
//! optimizer's state memory and its step cost, the search itself, and the best curves.
//!
//! The folder holds `bench.json` (the settings, enough to resume), `runs.jsonl` (one line per
//! finished run: a killed benchmark resumes with `--resume DIR` and reruns only the run it was
//! in), the run folders under `runs/`, `table.md`, `table.csv`, `report.html` and the charts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use descent_train::train::{Control, EvalAt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::compare::{apply, parse_spec};
use crate::folder;
use crate::plot::{self, Chart, Series, SeriesStyle, YScale};
use crate::runs::read_records;
use crate::show::Bytes;
use crate::train::{self, RunOptions, TrainArgs};

/// The default list: the optimizers the public benchmarks compare, each as a `--run` spec. Those
/// whose library has no default learning rate (torch SGD's 1e-3 is a placeholder, optax requires
/// one) carry the usual centre of their search.
pub const DEFAULT_RUNS: &[&str] = &[
    "sgd:momentum=0.9,nesterov=true,lr=0.03,label=sgd_nesterov",
    "adamw:label=adamw",
    "optax.nadamw:label=nadamw",
    "optax.lion:lr=3e-4,label=lion",
    "adafactor:label=adafactor",
    "optax.contrib.muon:lr=0.02,label=muon",
    "po.soap:label=soap",
    "po.scalableshampoo:lr=3e-4,graft_type=3,preconditioning_compute_steps=100,label=shampoo",
    "optax.contrib.schedule_free_adamw:label=schedule_free_adamw",
    "optax.contrib.prodigy:label=prodigy",
    "sam:base=adamw,label=sam_adamw",
];

/// The flags of `descent bench optimizers`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptimizersArgs {
    /// An optimizer to compare: OPTIMIZER:key=value,… as `descent compare --run` takes it (`lr`
    /// centres its search, `label` names it, other keys are its arguments). Repeatable; default:
    /// SGD with Nesterov, AdamW, NAdamW, Lion, Adafactor, Muon, SOAP, Shampoo (pytorch_optimizer's
    /// ScalableShampoo with RMSprop grafting, inverse roots every 100 steps), Schedule-Free AdamW,
    /// Prodigy and SAM around AdamW.
    #[arg(long = "run", value_name = "SPEC")]
    pub runs: Vec<String>,
    /// Learning rates searched per optimizer: a log grid of this many, half a decade apart,
    /// centred on its default rate (5: two decades).
    #[arg(long, default_value_t = 5)]
    pub grid_points: usize,
    /// Seeds the best rate of each optimizer runs over (the search's seed is the first).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Validation accuracy (%) whose first reaching the table reports, in steps and seconds.
    #[arg(long, default_value_t = 97.0)]
    pub target: f64,
    /// Evaluations on the validation split per epoch, besides the epoch's end (the curves and
    /// the steps to the target are read at these).
    #[arg(long, default_value_t = 4)]
    pub evals_per_epoch: u64,
    #[command(flatten)]
    pub base: TrainArgs,
}

/// What a benchmark folder records of its settings (bench.json), enough to resume it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    runs: Vec<String>,
    grid_points: usize,
    seeds: u64,
    target: f64,
    evals_per_epoch: u64,
    base: TrainArgs,
}

/// Which part of the protocol a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// One rate of the grid, on the first seed.
    Search,
    /// The best rate on another seed.
    Seed,
}

/// One finished run (a line of runs.jsonl).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    label: String,
    phase: Phase,
    lr: f64,
    seed: u64,
    /// `complete`, or `failed: why` (a diverged run is a result, not an error).
    status: String,
    /// Validation accuracy (%) at the end.
    #[serde(default, with = "crate::runs::exact_float::option")]
    final_accuracy: Option<f64>,
    #[serde(default, with = "crate::runs::exact_float::option")]
    final_loss: Option<f64>,
    /// (step, validation accuracy %) at every evaluation.
    curve: Vec<(u64, f64)>,
    steps: u64,
    /// Training time (without evaluations), seconds.
    seconds: f64,
    /// The optimizer's state, bytes as stored.
    state_bytes: usize,
    /// [`train::command_settings_hash`] of the bench.json it ran under (empty in an older benchmark's lines).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    settings: String,
}

/// That the runs read back from runs.jsonl are this benchmark's: made under these settings, of
/// one of its optimizers, each once, with a status the benchmark writes.
fn check_done(done: &[Record], s: &Settings, entries: &[Entry]) -> Result<()> {
    let hash = train::command_settings_hash(s)?;
    for (i, r) in done.iter().enumerate() {
        let line = format!("{RUNS_JSONL}, line {}", i + 1);
        if !r.settings.is_empty() && r.settings != hash {
            bail!("{line}: made under other settings than {BENCH_JSON} holds (it was changed after runs were made); a resumed benchmark keeps its settings");
        }
        if !entries.iter().any(|e| e.label == r.label) {
            bail!("{line}: `{}` is not one of this benchmark's runs", r.label);
        }
        let same = |q: &Record| {
            q.label == r.label && q.phase == r.phase && q.lr.to_bits() == r.lr.to_bits() && q.seed == r.seed
        };
        if done[..i].iter().any(same) {
            bail!("{line}: the run of `{}` at lr {} and seed {} is there twice", r.label, r.lr, r.seed);
        }
        if !(r.status == "complete" || r.status.starts_with("failed")) {
            bail!("{line}: status `{}`; the benchmark writes complete or failed", r.status);
        }
        // What the table and the search read: an accuracy is a percentage, a loss, a time and
        // a rate are non-negative (a diverged run's are absent or not finite).
        let percent = |a: f64| !a.is_finite() || (0.0..=100.0).contains(&a);
        if let Some(a) = r.final_accuracy.filter(|a| !percent(*a)) {
            bail!("{line}: final_accuracy {a}: an accuracy is a percentage, 0 to 100");
        }
        if let Some((step, a)) = r.curve.iter().find(|(_, a)| !percent(*a)) {
            bail!("{line}: the curve's accuracy {a} at step {step}: an accuracy is a percentage, 0 to 100");
        }
        if let Some(l) = r.final_loss.filter(|l| *l < 0.0) {
            bail!("{line}: final_loss {l}: a cross-entropy is not negative");
        }
        if !(r.seconds.is_finite() && r.seconds >= 0.0 && r.lr.is_finite() && r.lr > 0.0) {
            bail!(
                "{line}: seconds {} and lr {}: a time is a non-negative number, a learning rate a positive one",
                r.seconds,
                r.lr
            );
        }
    }
    Ok(())
}

impl Record {
    /// The accuracy the search ranks by: a failed or diverged run ranks last.
    fn score(&self) -> f64 {
        self.final_accuracy.filter(|a| a.is_finite()).unwrap_or(f64::NEG_INFINITY)
    }
    fn steps_to(&self, target: f64) -> Option<u64> {
        self.curve.iter().find(|(_, a)| *a >= target).map(|c| c.0)
    }
    fn step_seconds(&self) -> f64 {
        self.seconds / self.steps.max(1) as f64
    }
}

/// One optimizer of the list.
struct Entry {
    label: String,
    spec: Map<String, Value>,
    /// The centre of its learning-rate grid.
    centre: f64,
}

const RUNS_JSONL: &str = "runs.jsonl";
const BENCH_JSON: &str = "bench.json";

/// The optimizers of the list, each checked to make runs on a training set of `n_train` images
/// (the held-out ones included) at every rate of its grid.
fn entries(s: &Settings, n_train: usize) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = vec![];
    for spec in &s.runs {
        let mut m = parse_spec(spec)?;
        let optimizer = m["optimizer"].as_str().unwrap_or_default().to_string();
        let label = match m.remove("label") {
            Some(Value::String(l)) => l,
            Some(other) => other.to_string(),
            // The spec itself, made a folder name: `sgd:lr=0.05` is `sgd_lr_0.05`.
            None => spec
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '_' })
                .collect::<String>()
                .trim_matches('_')
                .to_string(),
        };
        if !label.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            bail!("--run `{spec}`: label `{label}`: use letters, digits, `_`, `-` and `.` only, starting with a letter or digit (it names a folder)");
        }
        if out.iter().any(|e| e.label == label) {
            bail!("--run `{spec}`: the label `{label}` is given twice; set label=… to tell them apart");
        }
        for key in ["seed", "epochs", "steps", "model", "batch_size"] {
            if m.contains_key(key) {
                bail!(
                    "--run `{spec}`: `{key}` is the benchmark's, shared by all optimizers; set it once with --{}",
                    key.replace('_', "-")
                );
            }
        }
        let centre = match m.remove("lr") {
            Some(v) => v.as_f64().filter(|l| l.is_finite() && *l > 0.0).with_context(|| {
                format!("--run `{spec}`: lr must be a positive number (the centre of the search), got {v}")
            })?,
            None => {
                let hparams: Map<String, Value> =
                    m.iter().filter(|(k, _)| k.as_str() != "optimizer").map(|(k, v)| (k.clone(), v.clone())).collect();
                train::default_lr(&s.base.model, &optimizer, &Value::Object(hparams))
            }
        };
        // The spec must make a run (an unknown optimizer or argument is refused before anything runs).
        let mut args = apply(&s.base, &m, &format!("--run `{spec}`"))?;
        descent_core::spec::resolve_optimizer(args.optimizer()).with_context(|| format!("--run `{spec}`"))?;
        // Its settings valid at its centre rate, before any run starts (a run failing on them
        // would only be a failed row of the table).
        args.lr = Some(centre);
        train::validate(&args).with_context(|| format!("--run `{spec}`"))?;
        train::validate_for_data(&args, n_train.saturating_sub(args.validation))
            .with_context(|| format!("--run `{spec}`"))?;
        // Every rate of the grid a number the optimizers take (their rates are f32).
        let rates = grid(centre, s.grid_points);
        if let Some(bad) = rates.iter().find(|&&lr| !(lr.is_finite() && (lr as f32).is_normal())) {
            bail!(
                "--grid-points {}: the grid around {}'s rate {centre:e} reaches {bad:e}, not a positive normal single-precision number; give fewer points or another centre (lr=…)",
                s.grid_points,
                label
            );
        }
        out.push(Entry { label, spec: m, centre });
    }
    Ok(out)
}

/// The grid of an entry: `centre·10^(k/2)` for k from −(n−1)/2 to (n−1)/2.
fn grid(centre: f64, n: usize) -> Vec<f64> {
    let half = (n as f64 - 1.0) / 2.0;
    (0..n).map(|k| centre * 10f64.powf((k as f64 - half) / 2.0)).collect()
}

fn settings(a: &BenchOptimizersArgs) -> Result<Settings> {
    crate::flags::at_least_one(&[
        ("--grid-points", a.grid_points as u64),
        ("--seeds", a.seeds),
        ("--evals-per-epoch", a.evals_per_epoch),
    ])?;
    if !(a.target > 0.0 && a.target <= 100.0) {
        bail!("--target {}: a validation accuracy in percent, in (0, 100]", a.target);
    }
    if !["mlp", "lenet", "resnet", "plain"].contains(&a.base.model.as_str()) {
        bail!(
            "--model {}: bench optimizers ranks by validation accuracy on MNIST: mlp, lenet, resnet or plain",
            a.base.model
        );
    }
    if let Some(path) = &a.base.config {
        bail!(
            "--config {}: bench optimizers takes its settings as flags only; give them on the command line",
            path.display()
        );
    }
    for (given, flag) in [
        (a.base.optimizer.is_some(), "--optimizer"),
        (a.base.lr.is_some(), "--lr"),
        (a.base.schedule.is_some(), "--schedule"),
    ] {
        if given {
            bail!("{flag}: each optimizer is a --run of the benchmark, with its own searched rate and its library's default schedule; {flag} is not taken here");
        }
    }
    train::one_process(&a.base)?;
    let mut base = a.base.clone();
    if base.validation == 0 {
        base.validation = 5_000;
    }
    base.epochs = Some(base.epochs.unwrap_or(1));
    (base.out, base.force, base.resume, base.config) = (None, true, None, None);
    let runs = if a.runs.is_empty() { DEFAULT_RUNS.iter().map(|s| s.to_string()).collect() } else { a.runs.clone() };
    Ok(Settings {
        runs,
        grid_points: a.grid_points,
        seeds: a.seeds,
        target: a.target,
        evals_per_epoch: a.evals_per_epoch,
        base,
    })
}

/// `descent bench optimizers`.
pub fn run(a: BenchOptimizersArgs, matches: &clap::ArgMatches) -> Result<()> {
    // The training set's length (every run trains on the same data and model) is read once.
    let (out, s, claimed, n_train) = match &a.base.resume {
        Some(dir) => {
            for id in matches.ids() {
                let id = id.as_str();
                if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
                    && !["resume", "threads"].contains(&id)
                    && !id.starts_with(|c: char| c.is_ascii_uppercase())
                {
                    bail!(
                        "{} cannot be combined with --resume: a resumed benchmark keeps the settings of its bench.json (only --threads may be given)",
                        crate::train::flag_of(id)
                    );
                }
            }
            let claimed = folder::claim_existing(dir, folder::Kind::Benchmark)?;
            let text = std::fs::read_to_string(dir.join(BENCH_JSON))
                .with_context(|| format!("{}: no {BENCH_JSON}, not a benchmark folder", dir.display()))?;
            let mut s: Settings =
                serde_json::from_str(&text).with_context(|| format!("{}: malformed {BENCH_JSON}", dir.display()))?;
            // The one setting a resume may change.
            if matches.value_source("threads") == Some(clap::parser::ValueSource::CommandLine) {
                s.base.threads = a.base.threads;
            }
            let n_train = train::training_set_len(&s.base.model, &s.base.data)?;
            (dir.clone(), s, claimed, n_train)
        }
        None => {
            if a.base.validation == 0
                && matches.value_source("validation") == Some(clap::parser::ValueSource::CommandLine)
            {
                // 0 is also the flag's default (5 000 held out): given, it would be replaced.
                bail!("--validation 0: the benchmark ranks optimizers by validation accuracy and needs a held-out split (default 5000)");
            }
            let s = settings(&a)?;
            // The data loads (and leaves samples to train on) before --force clears anything.
            let n_train = train::training_set_len(&s.base.model, &s.base.data)?;
            if s.base.validation >= n_train {
                bail!(
                    "--validation {} leaves no training samples (the training set has {n_train}){}",
                    s.base.validation,
                    if a.base.validation == 0 {
                        "; 5000 is the benchmark's default hold-out: give a smaller --validation"
                    } else {
                        ""
                    }
                );
            }
            entries(&s, n_train)?;
            let out = a.base.out.clone().unwrap_or_else(|| {
                (1..)
                    .map(|k| PathBuf::from("runs").join(if k == 1 { "bench".into() } else { format!("bench-{k}") }))
                    .find(|d| !d.exists())
                    .expect("some name is free")
            });
            let c = folder::claim_new(&out, folder::Kind::Benchmark, a.base.force, true, None)?;
            std::fs::create_dir_all(out.join("runs"))
                .with_context(|| format!("creating {}", out.join("runs").display()))?;
            folder::write_atomic(&out.join(BENCH_JSON), serde_json::to_string_pretty(&s)?.as_bytes())?;
            (out, s, c, n_train)
        }
    };
    let entries = entries(&s, n_train)?;
    // A line cut by a kill is dropped (its run goes again); the file is rewritten without it. A
    // damaged line before it is an error: the runs it holds are not thrown away.
    let mut warnings = vec![];
    let mut done: Vec<Record> = read_records(&out.join(RUNS_JSONL), &mut warnings)?;
    for w in &warnings {
        eprintln!("warning: {w}; its run goes again");
    }
    check_done(&done, &s, &entries).with_context(|| out.display().to_string())?;
    let text: String = done.iter().map(|r| serde_json::to_string(r).map(|l| l + "\n")).collect::<Result<_, _>>()?;
    folder::write_atomic(&out.join(RUNS_JSONL), text.as_bytes())?;
    let total = entries.len() * (s.grid_points + s.seeds as usize - 1);
    println!(
        "bench optimizers: {} optimizers on {} ({}, validation on {} held-out training images), {} rates each, then {} seeds at the best: {} runs into {}{}",
        entries.len(),
        s.base.model,
        match s.base.steps {
            Some(n) => format!("{n} steps"),
            None => format!("{} epoch(s)", s.base.epochs.unwrap_or(1)),
        },
        s.base.validation,
        s.grid_points,
        s.seeds,
        total,
        out.display(),
        if done.is_empty() { String::new() } else { format!(" ({} done before)", done.len()) }
    );
    let parent = claimed.marker.id.clone();
    let mut k = 0;
    for e in &entries {
        for lr in grid(e.centre, s.grid_points) {
            k += 1;
            run_one(&out, &s, e, Phase::Search, lr, s.base.seed, &parent, &mut done, (k, total), n_train)?;
        }
        let best =
            best_search(&done, &e.label).with_context(|| format!("{}: no finished search run", e.label))?.clone();
        if best.final_accuracy.is_none() {
            // Every rate failed: there is no best rate to run the other seeds at.
            k += s.seeds as usize - 1;
            println!("{}: every rate of the search failed; no seeds run at a best rate", e.label);
            continue;
        }
        for i in 1..s.seeds {
            k += 1;
            run_one(&out, &s, e, Phase::Seed, best.lr, s.base.seed + i, &parent, &mut done, (k, total), n_train)?;
        }
    }
    report(&out, &s, &entries, &done)?;
    // A table of failures only is no benchmark: the command fails with the first run's reason
    // (a script must not take it for a result), the table kept for the record.
    if let Some(first) = done.iter().map(|r| &r.status).find(|st| st.starts_with("failed")) {
        if done.iter().all(|r| r.status.starts_with("failed")) {
            bail!("every run failed; the first: {}", first.trim_start_matches("failed: "));
        }
    }
    Ok(())
}

/// The best search run of an optimizer (highest final validation accuracy, the lower rate on a tie).
fn best_search<'a>(done: &'a [Record], label: &str) -> Option<&'a Record> {
    done.iter().filter(|r| r.label == label && r.phase == Phase::Search).fold(None, |best: Option<&Record>, r| {
        match best {
            Some(b) if b.score() >= r.score() => Some(b),
            _ => Some(r),
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    out: &Path,
    s: &Settings,
    e: &Entry,
    phase: Phase,
    lr: f64,
    seed: u64,
    parent: &str,
    done: &mut Vec<Record>,
    (k, total): (usize, usize),
    n_train: usize,
) -> Result<()> {
    let same = |r: &Record| r.label == e.label && r.phase == phase && r.lr.to_bits() == lr.to_bits() && r.seed == seed;
    if done.iter().any(same) {
        return Ok(());
    }
    let mut args = apply(&s.base, &e.spec, &e.label)?;
    let dir = out.join("runs").join(format!("{}-lr{lr:.3e}-seed{seed}", e.label));
    (args.lr, args.seed, args.out, args.force) = (Some(lr), seed, Some(dir), true);
    // Evaluations spread over an epoch (or over the run, when --steps cuts it shorter).
    let steps_per_epoch = descent_train::train::steps_per_epoch(
        n_train.saturating_sub(args.validation),
        args.batch_size.unwrap_or(train::defaults(&args.model).1),
        args.accumulate.unwrap_or(1),
    );
    let span = args.steps.map_or(steps_per_epoch, |t| t.min(steps_per_epoch));
    let every = (span / s.evals_per_epoch.max(1)).max(1);
    let curve = Mutex::new(Vec::<(u64, f64)>::new());
    let on_eval: train::OnEval = Box::new(|m| {
        if let Some(a) = m.test_accuracy {
            curve.lock().expect("curve lock").push((m.step, 100.0 * a));
        }
        Control::Continue
    });
    let opts = RunOptions {
        quiet: true,
        eval_at: Some(EvalAt::Every(every)),
        on_eval: Some(on_eval),
        parent: Some(parent.to_string()),
        ..Default::default()
    };
    let r = train::execute(args, opts);
    if let Err(err) = &r {
        if train::is_storage_error(err) {
            bail!(
                "{} at lr {lr:.3e}, seed {seed}: {err:#}; the run is not recorded: `descent bench optimizers --resume` runs it again",
                e.label
            );
        }
    }
    let mut curve = curve.into_inner().expect("curve lock");
    let record = match r {
        Ok(o) => {
            curve.extend(o.history.iter().filter_map(|m| m.test_accuracy.map(|a| (m.steps, 100.0 * a))));
            curve.sort_by_key(|c| c.0);
            curve.dedup_by_key(|c| c.0);
            let last = o.result();
            Record {
                label: e.label.clone(),
                phase,
                lr,
                seed,
                status: "complete".into(),
                final_accuracy: last.and_then(|m| m.test_accuracy).map(|a| 100.0 * a),
                final_loss: last.map(|m| m.test_loss),
                curve,
                steps: last.map(|m| m.steps).unwrap_or(0),
                // Every epoch's training time (evaluations not counted), for the step cost.
                seconds: o.history.iter().map(|m| m.seconds).sum(),
                state_bytes: o.state_bytes,
                settings: train::command_settings_hash(s)?,
            }
        }
        Err(err) => {
            let msg = format!("{err:#}");
            Record {
                label: e.label.clone(),
                phase,
                lr,
                seed,
                status: format!("failed: {}", msg.lines().last().unwrap_or(&msg)),
                final_accuracy: None,
                final_loss: None,
                steps: curve.last().map(|c| c.0).unwrap_or(0),
                curve,
                seconds: 0.0,
                state_bytes: 0,
                settings: train::command_settings_hash(s)?,
            }
        }
    };
    println!(
        "[{k}/{total}] {} lr {lr:.3e} seed {seed}: {}",
        e.label,
        match record.final_accuracy {
            Some(a) => format!("{a:.2}% validation accuracy, {:.1} ms/step", 1e3 * record.step_seconds()),
            None => record.status.clone(),
        }
    );
    folder::append(&out.join(RUNS_JSONL), &format!("{}\n", serde_json::to_string(&record)?), true)?;
    done.push(record);
    Ok(())
}

/// One optimizer's line of the table.
struct Row {
    label: String,
    best_lr: f64,
    /// Whether any run of the optimizer finished: without one there is no best rate, mean or
    /// step cost to report.
    succeeded: bool,
    /// Final validation accuracy (%) of each seed at the best rate.
    finals: Vec<f64>,
    /// Steps to the target of each seed that reached it.
    steps_to: Vec<u64>,
    /// Milliseconds a step, over the finished runs at the best rate (none: `None`).
    step_ms: Option<f64>,
    state_bytes: usize,
    /// (rate, final accuracy) of the search.
    search: Vec<(f64, Option<f64>)>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

fn median(v: &mut [u64]) -> Option<f64> {
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2] as f64),
        n => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

fn rows(s: &Settings, entries: &[Entry], done: &[Record]) -> Vec<Row> {
    entries
        .iter()
        .filter_map(|e| {
            let best = best_search(done, &e.label)?;
            let at_best: Vec<&Record> = done
                .iter()
                .filter(|r| {
                    r.label == e.label
                        && r.lr.to_bits() == best.lr.to_bits()
                        && (r.phase == Phase::Seed || std::ptr::eq(*r, best))
                })
                .collect();
            let mut search: Vec<(f64, Option<f64>)> = done
                .iter()
                .filter(|r| r.label == e.label && r.phase == Phase::Search)
                .map(|r| (r.lr, r.final_accuracy))
                .collect();
            search.sort_by(|a, b| a.0.total_cmp(&b.0));
            let complete: Vec<&&Record> = at_best.iter().filter(|r| r.final_accuracy.is_some()).collect();
            Some(Row {
                label: e.label.clone(),
                best_lr: best.lr,
                succeeded: done.iter().any(|r| r.label == e.label && r.final_accuracy.is_some()),
                finals: at_best.iter().map(|r| r.score()).collect(),
                steps_to: at_best.iter().filter_map(|r| r.steps_to(s.target)).collect(),
                step_ms: (!complete.is_empty())
                    .then(|| 1e3 * complete.iter().map(|r| r.step_seconds()).sum::<f64>() / complete.len() as f64),
                state_bytes: best.state_bytes,
                search,
            })
        })
        .collect()
}

fn report(out: &Path, s: &Settings, entries: &[Entry], done: &[Record]) -> Result<()> {
    let mut rows = rows(s, entries, done);
    rows.sort_by(|a, b| mean_std(&b.finals).0.total_cmp(&mean_std(&a.finals).0));
    let adamw_ms = rows.iter().find(|r| r.label == "adamw").and_then(|r| r.step_ms);
    let header = [
        "optimizer".to_string(),
        "best lr".into(),
        format!("val accuracy (mean ± sd, {} seeds)", s.seeds),
        format!("steps to {}% (median)", s.target),
        format!("seconds to {}%", s.target),
        "step ms".into(),
        "state".into(),
        "lr search (final val accuracy)".into(),
    ];
    let mut md = format!("| {} |\n|{}\n", header.join(" | "), " --- |".repeat(header.len()));
    let mut csv = "optimizer,best_lr,val_accuracy_mean,val_accuracy_sd,seeds,reached,steps_to_target,seconds_to_target,step_ms,state_bytes\n".to_string();
    for r in &rows {
        let (m, sd) = mean_std(&r.finals);
        let n = r.finals.len();
        let mut st = r.steps_to.clone();
        let med = median(&mut st);
        let reached = r.steps_to.len();
        let steps_cell = match med {
            Some(v) if reached == n => format!("{v:.0}"),
            Some(v) => format!("{v:.0} ({reached} of {n} seeds)"),
            None => "not reached".into(),
        };
        let secs = med.zip(r.step_ms).map(|(v, ms)| v * ms / 1e3);
        let step_cell = match (r.step_ms, adamw_ms) {
            (Some(ms), Some(a)) if a > 0.0 && r.label != "adamw" => format!("{ms:.1} ({:.2}× AdamW)", ms / a),
            (Some(ms), _) => format!("{ms:.1}"),
            (None, _) => "—".into(),
        };
        // Numbers only where some run finished (a mean of failures is no accuracy).
        let num = |x: f64| if x.is_finite() { x.to_string() } else { String::new() };
        let search = r
            .search
            .iter()
            .map(|(lr, a)| format!("{lr:.1e}: {}", a.map(|a| format!("{a:.2}%")).unwrap_or_else(|| "failed".into())))
            .collect::<Vec<_>>()
            .join(", ");
        let cells = [
            r.label.clone(),
            if r.succeeded { format!("{:.1e}", r.best_lr) } else { "—".into() },
            // One seed has no spread.
            match (m.is_finite(), n) {
                (false, _) => "failed".into(),
                (true, 1) => format!("{m:.2}% (1 seed)"),
                (true, _) => format!("{m:.2}% ± {sd:.2}"),
            },
            steps_cell,
            secs.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into()),
            step_cell,
            // A failed optimizer measured no state.
            if r.succeeded { Bytes(r.state_bytes).to_string() } else { "—".into() },
            search,
        ];
        md += &format!("| {} |\n", cells.join(" | "));
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.label,
            if r.succeeded { r.best_lr.to_string() } else { String::new() },
            num(m),
            if m.is_finite() && n > 1 { num(sd) } else { String::new() },
            n,
            reached,
            med.map(|v| v.to_string()).unwrap_or_default(),
            secs.map(|v| v.to_string()).unwrap_or_default(),
            r.step_ms.map(|v| v.to_string()).unwrap_or_default(),
            if r.succeeded { r.state_bytes.to_string() } else { String::new() }
        );
    }
    folder::write_atomic(&out.join("table.md"), md.as_bytes())?;
    folder::write_atomic(&out.join("table.csv"), csv.as_bytes())?;
    let files = draw(out, s, &rows, done)?;
    let mut h = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>descent bench optimizers: {}</title></head><body>\n<h1>Optimizers on {}</h1>\n<pre>{}</pre>\n",
        s.base.model,
        s.base.model,
        md.replace('&', "&amp;").replace('<', "&lt;")
    );
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        h += &format!("<img src=\"{name}\" alt=\"{name}\">\n");
    }
    h += "</body></html>\n";
    folder::write_atomic(&out.join("report.html"), h.as_bytes())?;
    println!("\n{md}");
    println!("table, charts and report.html in {}", out.display());
    Ok(())
}

/// curves: each optimizer's best rate, mean validation accuracy over seeds by step;
/// lr_search: the final validation accuracy of each searched rate.
fn draw(out: &Path, s: &Settings, rows: &[Row], done: &[Record]) -> Result<Vec<PathBuf>> {
    let mut curves = vec![];
    let mut search = vec![];
    for r in rows {
        let runs: Vec<&Record> = done
            .iter()
            .filter(|d| d.label == r.label && d.lr.to_bits() == r.best_lr.to_bits() && d.final_accuracy.is_some())
            .collect();
        if let Some(first) = runs.first() {
            let points: Vec<(f64, f64)> = first
                .curve
                .iter()
                .filter_map(|&(step, _)| {
                    let at: Vec<f64> =
                        runs.iter().filter_map(|d| d.curve.iter().find(|c| c.0 == step).map(|c| c.1)).collect();
                    (at.len() == runs.len()).then(|| (step as f64, mean_std(&at).0))
                })
                .collect();
            curves.push(Series::line(r.label.clone(), points));
        }
        let pts: Vec<(f64, f64)> = r.search.iter().filter_map(|&(lr, a)| a.map(|a| (lr, a))).collect();
        search.push(Series { style: SeriesStyle::LineMarkers, ..Series::line(r.label.clone(), pts) });
    }
    let chart = |title: String, log_x: bool, x: &str, series: Vec<Series>| Chart {
        title,
        log_x,
        integer_x: false,
        x_label: x.into(),
        y_label: "validation accuracy (%)".into(),
        y_scale: YScale::Linear,
        series,
        legend: plotters::chart::SeriesLabelPosition::LowerRight,
        fit_faint: false,
    };
    let mut files = vec![];
    files.extend(plot::line_chart(
        &chart(
            format!("{}: best rate of each optimizer, mean of {} seeds", s.base.model, s.seeds),
            false,
            "step",
            curves,
        ),
        &out.join("curves"),
    )?);
    files.extend(plot::line_chart(
        &chart(format!("{}: learning-rate search (seed {})", s.base.model, s.base.seed), true, "learning rate", search),
        &out.join("lr_search"),
    )?);
    Ok(files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "svg")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_half_decades_around_the_centre() {
        let g = grid(1e-3, 3);
        assert_eq!(g.len(), 3);
        assert!((g[0] - 1e-3 / 10f64.sqrt()).abs() < 1e-15);
        assert_eq!(g[1], 1e-3);
        assert!((g[2] - 1e-3 * 10f64.sqrt()).abs() < 1e-15);
        assert_eq!(grid(0.5, 1), vec![0.5]);
        let g4 = grid(1.0, 4);
        assert!((g4[0] * g4[3] - 1.0).abs() < 1e-12, "symmetric in log space: {g4:?}");
    }

    #[test]
    fn best_search_prefers_accuracy_and_ranks_failures_last() {
        let rec = |lr: f64, acc: Option<f64>| Record {
            label: "a".into(),
            phase: Phase::Search,
            lr,
            seed: 0,
            status: "complete".into(),
            final_accuracy: acc,
            final_loss: None,
            curve: vec![(10, 50.0), (20, 90.0)],
            steps: 20,
            seconds: 1.0,
            state_bytes: 0,
            settings: String::new(),
        };
        let done = vec![rec(1e-4, Some(90.0)), rec(1e-3, Some(95.0)), rec(1e-2, None), rec(1e-1, Some(f64::NAN))];
        assert_eq!(best_search(&done, "a").unwrap().lr, 1e-3);
        assert_eq!(done[1].steps_to(90.0), Some(20));
        assert_eq!(done[1].steps_to(95.0), None);
        assert!(best_search(&done, "b").is_none());
        // The records write what JSON cannot hold as descent does ("NaN"), and read it back.
        let line = serde_json::to_string(&done[3]).unwrap();
        assert!(line.contains(r#""final_accuracy":"NaN""#), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert!(back.final_accuracy.is_some_and(f64::is_nan));
    }
}
