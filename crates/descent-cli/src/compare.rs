//! `descent compare`: several runs of one workload (same model, data, seed, batch order and
//! length) that differ in optimizer, learning rate, schedule, regularization or batch size; a
//! table, charts and an HTML report of them side by side.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::evaluate::EvalSet;
use crate::folder;
use crate::runs::{self, RunMetrics};
use crate::show::Bytes;
use crate::train::{self, RunOptions, TrainArgs};

/// The flags of `descent compare`: the shared workload (every `descent train` flag) and the runs.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// A run: OPTIMIZER:key=value,… where keys are train settings (lr, batch_size, schedule,
    /// schedule_interval, l1, l2, clip_norm, clip_value, dropout, init, seed, steps, epochs,
    /// target_accuracy, model, depth, width, hidden, swa_lr, warmup_steps, decay_steps, min_lr and gpt's n_layer,
    /// n_head, n_embd, block_size, eval_interval, eval_iters) or the optimizer's own arguments (momentum, weight_decay, betas=[0.9,0.99],
    /// …); `label=NAME` names the run in the table, charts and its folder (default: the spec).
    /// Repeatable; also `[[run]]` tables in --config.
    #[arg(long = "run", value_name = "SPEC")]
    pub runs: Vec<String>,
    /// Test accuracy (%) whose first epoch the table reports, in steps and seconds (the runs do
    /// not stop there).
    #[arg(long, default_value_t = 95.0)]
    pub target: f64,
    /// Runs trained at once (default: 1 per 2 cores beyond the first two, at least 1; each run's
    /// threads are shared).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub base: TrainArgs,
}

/// Keys of a run spec that set a training option; any other key is an optimizer argument.
const TRAIN_KEYS: &[&str] = &[
    "lr",
    "batch_size",
    "schedule",
    "schedule_args",
    "schedule_interval",
    "l1",
    "l2",
    "clip_norm",
    "clip_value",
    "dropout",
    "init",
    "seed",
    "steps",
    "epochs",
    "target_accuracy",
    "min_loss_change",
    "patience",
    "min_delta",
    "normalize",
    "model",
    "depth",
    "width",
    "hidden",
    "swa_lr",
    "warmup_steps",
    "decay_steps",
    "min_lr",
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "eval_interval",
    "eval_iters",
];

/// One configured run: its label and its full settings.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub label: String,
    pub args: TrainArgs,
}

/// Splits `a=1,b=[1,2],c=x` at the commas outside brackets and braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, vec![]);
    for (i, ch) in s.char_indices() {
        match ch {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// A run spec `OPTIMIZER:key=value,…` as an object of settings.
pub fn parse_spec(spec: &str) -> Result<Map<String, Value>> {
    let (opt, rest) = spec.split_once(':').unwrap_or((spec, ""));
    if opt.trim().is_empty() {
        bail!("run `{spec}`: no optimizer; write OPTIMIZER:key=value,…, e.g. sgd:lr=0.1,momentum=0.9");
    }
    let mut m = Map::new();
    m.insert("optimizer".into(), Value::from(opt.trim()));
    for part in split_top(rest) {
        let (k, v) = part.split_once('=').with_context(|| format!("run `{spec}`: `{part}` is not key=value"))?;
        let k = k.trim().replace('-', "_");
        // A label is text as written (`label=1e-3` stays "1e-3"; a quoted one is read as a JSON
        // string); every other value is read as a number, a boolean, JSON or text.
        let v = if k == "label" && !v.trim_start().starts_with('"') {
            Value::from(v.trim())
        } else {
            crate::train::parse_value(v).map_err(|e| anyhow::anyhow!("run `{spec}`: `{k}`: {e}"))?
        };
        if m.insert(k.clone(), v).is_some() {
            bail!("run `{spec}`: `{k}` is given twice");
        }
    }
    Ok(m)
}

/// The settings of a run: the shared ones with the run's keys over them. Optimizer arguments go
/// into `hparams` (over the shared `--hparams`).
pub fn apply(base: &TrainArgs, run: &Map<String, Value>, what: &str) -> Result<TrainArgs> {
    let mut v = serde_json::to_value(base)?;
    let obj = v.as_object_mut().expect("TrainArgs serializes to an object");
    let mut hparams = obj["hparams"].as_object().cloned().unwrap_or_default();
    // The optimizer the run trains with: its own, or the shared one.
    let optimizer = run.get("optimizer").and_then(|o| o.as_str()).unwrap_or(base.optimizer()).to_string();
    // An argument in the run's own `hparams` and as one of its keys: neither silently wins.
    if let Some(h) = run.get("hparams").and_then(|h| h.as_object()) {
        if let Some(k) = h.keys().find(|k| run.contains_key(*k)) {
            bail!("{what}: `{k}` is given both as a key and inside the run's `hparams`; give it once");
        }
    }
    for (k, val) in run {
        match k.as_str() {
            "optimizer" => {
                obj.insert(k.clone(), val.clone());
            }
            "label" => {}
            "hparams" => {
                let h = val
                    .as_object()
                    .with_context(|| format!("{what}: `hparams` must be a table of optimizer arguments"))?;
                hparams.extend(h.clone());
            }
            key if TRAIN_KEYS.contains(&key) => {
                obj.insert(k.clone(), val.clone());
            }
            "data_parallel" | "shard_optimizer" => bail!(
                "{what}: `{k}` is for `descent train` and `descent bench train`; the runs here train each in one process"
            ),
            "data" | "text" | "threads" | "out" | "force" | "tensorboard" => {
                bail!("{what}: `{k}` is shared by every run of the command; set it once, with --{}", k.replace('_', "-"))
            }
            key if is_train_flag(key) && !optimizer_takes(&optimizer, key, val) => bail!(
                "{what}: `{k}` is a training setting every run of the command shares; set it once, with {} \
                 (a run varies its optimizer's arguments and: {})",
                crate::train::flag_of(k),
                TRAIN_KEYS.join(", ")
            ),
            _ => {
                // Neither the optimizer's argument nor a run's training key, but near one of those:
                // a misspelt training key (`n_heads`), which the optimizer would call unknown.
                let keys: Vec<String> = TRAIN_KEYS.iter().map(|k| k.to_string()).collect();
                if let Some(near) = descent_core::spec::nearest(k, &keys, 1).first() {
                    if !optimizer_takes(&optimizer, k, val) {
                        bail!("{what}: `{k}` is not an argument of `{optimizer}` nor a run's training key; did you mean `{near}`?");
                    }
                }
                hparams.insert(k.clone(), val.clone());
            }
        }
    }
    obj.insert("hparams".into(), Value::Object(hparams));
    let mut args = train::settings_from_value(v, what)?;
    (args.out, args.force, args.resume, args.config) = (None, true, None, None);
    Ok(args)
}

/// Whether `key` is one of `descent train`'s own settings (`hidden`, `accumulate`, …).
pub(crate) fn is_train_flag(key: &str) -> bool {
    use clap::Args;
    TrainArgs::augment_args(clap::Command::new("train")).get_arguments().any(|a| a.get_id().as_str() == key)
}

/// Whether the run's optimizer takes an argument named `key` (a training setting's name that
/// an optimizer might share): not when its library names the key as unknown; a run whose
/// optimizer cannot be built here says its own error later.
fn optimizer_takes(optimizer: &str, key: &str, val: &Value) -> bool {
    let Ok((lib, name)) = descent_core::spec::resolve_optimizer(optimizer) else {
        return true;
    };
    let mut h = Map::new();
    h.insert(key.to_string(), val.clone());
    !matches!(
        descent_core::spec::build_optimizer(lib, &name, &Value::Object(h), None, &[vec![1]]),
        Err(descent_core::Error::Unknown { kind: "keyword argument", name, .. }) if name.starts_with(&format!("{key}`"))
    )
}

/// The runs of a comparison from `--run` flags and `[[run]]` tables of the config file, and the
/// shared settings from the file's top level (under the command-line flags).
pub fn plan(a: &mut CompareArgs, matches: &clap::ArgMatches) -> Result<Vec<RunSpec>> {
    let mut base = a.base.clone();
    let mut tables: Vec<Map<String, Value>> = vec![];
    // Each run names its optimizer (a --run spec's first word, a [[run]] table's `optimizer`),
    // so a shared one would be taken by none of them.
    let shared_optimizer = "--optimizer: each run names its own optimizer (--run OPTIMIZER:key=value,…, a [[run]] \
                            table's `optimizer`), so a shared one would be used by none; drop it";
    if matches.value_source("optimizer") == Some(clap::parser::ValueSource::CommandLine) {
        bail!("{shared_optimizer}");
    }
    // A target given (on the command line or in the file), not the default's.
    let mut target_given = matches.value_source("target") == Some(clap::parser::ValueSource::CommandLine);
    if let Some(path) = &a.base.config {
        let mut file = train::read_toml(path)?;
        if file.contains_key("optimizer") {
            bail!(
                "{}: `optimizer` at the top level: {}",
                path.display(),
                shared_optimizer.trim_start_matches("--optimizer: ")
            );
        }
        if let Some(runs) = file.remove("run") {
            let runs = runs.as_array().with_context(|| format!("{}: `run` must be [[run]] tables", path.display()))?;
            for (i, r) in runs.iter().enumerate() {
                let t = train::toml_json(r, &format!("{}: run {}", path.display(), i + 1))?;
                let t = t.as_object().with_context(|| format!("{}: run {} is not a table", path.display(), i + 1))?;
                if !t.contains_key("optimizer") {
                    bail!("{}: run {} has no `optimizer`", path.display(), i + 1);
                }
                tables.push(t.clone());
            }
        }
        // The comparison's own settings from the file, under the command line's.
        let from_cli = |k: &str| matches.value_source(k) == Some(clap::parser::ValueSource::CommandLine);
        if let Some(v) = file.remove("target").filter(|_| !from_cli("target")) {
            target_given = true;
            a.target = v
                .as_float()
                .or(v.as_integer().map(|i| i as f64))
                .with_context(|| format!("{}: `target`: expected a number, found {v}", path.display()))?;
        }
        if let Some(v) = file.remove("jobs").filter(|_| !from_cli("jobs")) {
            let n = v
                .as_integer()
                .filter(|&n| n >= 0)
                .with_context(|| format!("{}: `jobs`: expected a non-negative integer, found {v}", path.display()))?;
            a.jobs = Some(n as usize);
        }
        base = base.merge_table(file, path, matches, &["run", "target", "jobs"])?;
        (base.resume, base.config) = (None, None);
    }
    if a.base.resume.is_some() {
        bail!("compare does not resume runs; run the comparison again (each run is seeded)");
    }
    if !(a.target > 0.0 && a.target <= 100.0) {
        bail!("--target {}: a test accuracy in percent, in (0, 100]", a.target);
    }
    if a.jobs == Some(0) {
        bail!("--jobs 0: at least one run at a time");
    }
    train::one_process(&base)?;
    let mut specs = vec![];
    for (i, s) in a.runs.iter().enumerate() {
        let m = parse_spec(s)?;
        // `label=NAME` names the run, as a [[run]] table's `label` does; otherwise its spec.
        let label = label_of(m.get("label"), &format!("run `{s}`"))?.unwrap_or_else(|| s.clone());
        specs.push(RunSpec { label, args: apply(&base, &m, &format!("run {} (`{s}`)", i + 1))? });
    }
    for (i, t) in tables.iter().enumerate() {
        let what = format!("[[run]] {}", i + 1);
        let args = apply(&base, t, &what)?;
        let label = match label_of(t.get("label"), &what)? {
            Some(l) => l,
            None => table_label(t, &args),
        };
        specs.push(RunSpec { label, args });
    }
    if specs.is_empty() {
        bail!("no runs to compare: give --run OPTIMIZER:key=value,… (once per run) or [[run]] tables in --config");
    }
    let mut seen = std::collections::HashSet::new();
    for s in &specs {
        if !seen.insert(s.label.clone()) {
            bail!("two runs are both `{}`; give them different settings or labels", s.label);
        }
    }
    // One workload (`validation`, the evaluation set, is shared by `apply`): numbers that compare.
    let first = &specs[0];
    for (i, s) in specs.iter().enumerate().skip(1) {
        if data_kind(&s.args.model) != data_kind(&first.args.model) {
            bail!(
                "run {} (`{}`) trains {} on {}, run 1 (`{}`) {} on {}: their losses do not compare; compare runs of \
                 one workload",
                i + 1,
                s.label,
                s.args.model,
                data_kind(&s.args.model),
                first.label,
                first.args.model,
                data_kind(&first.args.model)
            );
        }
    }
    // Every run valid before any trains: an unknown optimizer or argument names its run.
    // The training set's length (read once per model and data folder) settles what acts between
    // epochs: a --patience or a per-epoch schedule that could never act is refused here, not by
    // the run once the others have trained.
    let mut lengths: Vec<((String, PathBuf), usize)> = vec![];
    for (i, s) in specs.iter().enumerate() {
        let what = || format!("run {} (`{}`)", i + 1, s.label);
        train::validate(&s.args).with_context(what)?;
        if target_given && s.args.model == "linear" {
            bail!("--target {}: {}: the linear model is a regression, without accuracy", a.target, what());
        }
        if s.args.model == "gpt" {
            if target_given {
                bail!("--target {}: {}: gpt is a language model, without accuracy", a.target, what());
            }
            continue;
        }
        let key = (s.args.model.clone(), s.args.data.clone());
        let n = match lengths.iter().find(|(k, _)| *k == key) {
            Some(&(_, n)) => n,
            None => {
                let n = train::training_set_len(&s.args.model, &s.args.data).with_context(what)?;
                lengths.push((key, n));
                n
            }
        };
        train::validate_for_data(&s.args, n.saturating_sub(s.args.validation)).with_context(what)?;
    }
    Ok(specs)
}

/// The data a model trains on, as a comparison's runs must share it.
fn data_kind(model: &str) -> &'static str {
    match model {
        "gpt" => "text",
        "linear" => "y = 2x + noise",
        _ => "MNIST",
    }
}

/// The set the runs of a comparison are evaluated on (one, [`plan`] checks): gpt's loss estimates
/// are on its held-out tenth of the text.
fn evaluated_on(args: &TrainArgs) -> EvalSet {
    if args.model == "gpt" {
        EvalSet::Validation
    } else {
        EvalSet::of(args)
    }
}

/// The label of a `[[run]]` table without one: the optimizer and its arguments as
/// [`runs::label`] writes them, then each other training setting the table sets (`seed=4`,
/// `model=lenet`), so that runs differing only there are told apart.
fn table_label(t: &Map<String, Value>, args: &TrainArgs) -> String {
    let mut label = runs::label(&serde_json::to_value(args).expect("TrainArgs serializes"));
    for (k, v) in
        t.iter().filter(|(k, _)| TRAIN_KEYS.contains(&k.as_str()) && !runs::LABELLED_SETTINGS.contains(&k.as_str()))
    {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        label.push_str(&format!(" {k}={v}"));
    }
    label
}

/// A run's `label`, as given: a name (trimmed) or a number; not blank, and without control
/// characters (a newline would break the Markdown table and the legend). `None` when not given.
fn label_of(v: Option<&Value>, what: &str) -> Result<Option<String>> {
    let label = match v {
        None => return Ok(None),
        Some(Value::String(l)) => l.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => bail!("{what}: `label`: expected a name, got {other}"),
    };
    if label.is_empty() || label.chars().any(char::is_control) {
        bail!("{what}: `label` {label:?}: a name, not blank and without control characters (newlines, tabs)");
    }
    Ok(Some(label))
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Status {
    Finished,
    /// Early stopping ended the run and restored its best epoch's weights: the run's result is
    /// that epoch's.
    EarlyStopped {
        best_epoch: usize,
    },
    /// The run stopped with an error (a NaN or infinite loss, for one): its message.
    Failed(String),
}

impl Status {
    /// As the table says it: a failure by its message's last line where `brief`, else whole.
    fn text(&self, brief: bool) -> String {
        match self {
            Status::Finished => "finished".into(),
            Status::EarlyStopped { best_epoch } => format!("early stopping: epoch {best_epoch} restored"),
            Status::Failed(e) if brief => format!("failed: {}", e.lines().last().unwrap_or(e)),
            Status::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub dir: PathBuf,
    pub status: Status,
    pub train_loss: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub steps_to_target: Option<u64>,
    pub seconds_to_target: Option<f64>,
    pub samples_per_s: Option<f64>,
    pub state_bytes: Option<usize>,
}

/// A folder name for run `i` from its label.
fn folder_name(i: usize, label: &str) -> String {
    let clean: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || "=.-_".contains(c) { c } else { '_' }).take(60).collect();
    format!("{:02}-{clean}", i + 1)
}

pub fn run(a: CompareArgs, matches: &clap::ArgMatches) -> Result<()> {
    let mut a = a;
    let specs = plan(&mut a, matches)?;
    let out = a.base.out.clone().unwrap_or_else(|| {
        (1..)
            .map(|k| PathBuf::from("runs").join(if k == 1 { "compare".into() } else { format!("compare-{k}") }))
            .find(|d| !d.exists())
            .expect("some name is free")
    });
    if out.to_str().is_none() {
        // compare.json and the report name every run's folder by its path.
        bail!("--out {}: not a UTF-8 path, which compare.json and report.html cannot name", out.display());
    }
    // Each run's folder is checked before the compare folder is claimed (with --force, cleared):
    // a folder there that descent did not write as a run of this compare would fail its run only
    // after the earlier results were deleted.
    let dirs: Vec<PathBuf> =
        specs.iter().enumerate().map(|(i, s)| out.join("runs").join(folder_name(i, &s.label))).collect();
    folder::check_new(&out, folder::Kind::Compare, a.base.force, false, None)?;
    let old_id = folder::Marker::read(&out).ok().flatten().filter(|m| m.kind == folder::Kind::Compare).map(|m| m.id);
    for (spec, dir) in specs.iter().zip(&dirs) {
        folder::refuse_link_in(dir)
            .and_then(|_| folder::check_new(dir, folder::Kind::Run, a.base.force, false, old_id.as_deref()))
            .with_context(|| format!("run `{}`", spec.label))?;
    }
    let claimed = folder::claim_new(&out, folder::Kind::Compare, a.base.force, false, None)?;
    let parent = Some(claimed.marker.id.clone());
    std::fs::create_dir_all(out.join("runs")).with_context(|| format!("creating {}", out.join("runs").display()))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let jobs = a.jobs.unwrap_or((cores.saturating_sub(2) / 2).max(1)).clamp(1, specs.len());
    // The runs' models: one, or several when runs set their own.
    let mut models: Vec<&str> = vec![];
    for s in &specs {
        if !models.contains(&s.args.model.as_str()) {
            models.push(&s.args.model);
        }
    }
    let models = models.join(" and ");
    println!("comparing {} runs of {models} into {} ({} at a time)", specs.len(), out.display(), jobs);
    let results: Vec<std::sync::Mutex<Option<Result<train::RunOutcome>>>> =
        specs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let quiet = jobs > 1;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(spec) = specs.get(i) else { break };
                if !quiet {
                    println!("\n[{}/{}] {}", i + 1, specs.len(), spec.label);
                }
                let mut args = spec.args.clone();
                (args.out, args.force, args.tensorboard) = (Some(dirs[i].clone()), true, a.base.tensorboard);
                let r = train::execute(args, RunOptions { quiet, parent: parent.clone(), ..Default::default() });
                // A failed run is said as it fails, whether its progress was shown or not.
                match &r {
                    Ok(o) if quiet => println!("done: {} ({} epochs)", spec.label, o.history.len()),
                    Err(e) => eprintln!("failed: {}: {e:#}", spec.label),
                    Ok(_) => {}
                }
                *results[i].lock().expect("result lock") = Some(r);
            });
        }
    });
    let mut rows = vec![];
    let mut metrics: Vec<RunMetrics> = vec![];
    for ((spec, dir), r) in specs.iter().zip(&dirs).zip(results) {
        let r = r.into_inner().expect("result lock").expect("every run ran");
        let (status, state_bytes) = match &r {
            Ok(o) => match o.stop {
                descent_train::train::Stop::EarlyStopping { best_epoch } => {
                    (Status::EarlyStopped { best_epoch }, Some(o.state_bytes))
                }
                _ => (Status::Finished, Some(o.state_bytes)),
            },
            Err(e) => (Status::Failed(format!("{e:#}")), None),
        };
        let mut m = match runs::read_run(dir) {
            Ok(m) => m,
            Err(e) => {
                // Failed before writing anything readable (its message is in the table).
                if !matches!(status, Status::Failed(_)) {
                    return Err(e);
                }
                rows.push(row(spec, dir, status, None, state_bytes, a.target));
                continue;
            }
        };
        m.faint = matches!(status, Status::Failed(_));
        m.label = if m.faint { format!("{} (failed)", spec.label) } else { spec.label.clone() };
        rows.push(row(spec, dir, status, Some(&m), state_bytes, a.target));
        metrics.push(m);
    }
    let set = evaluated_on(&specs[0].args);
    write_table(&rows, &out, a.target, set)?;
    let title = format!("{models} on {}", data_kind(&specs[0].args.model));
    let files = runs::draw(&metrics, &out, &title)?;
    write_report(&rows, &files, &out, &title, a.target, set)?;
    println!("\n{}", std::fs::read_to_string(out.join("table.md"))?);
    println!("table, charts and report.html in {}", out.display());
    let failed: Vec<&str> = rows
        .iter()
        .filter_map(|r| match &r.status {
            Status::Failed(e) => Some(e.as_str()),
            Status::Finished | Status::EarlyStopped { .. } => None,
        })
        .collect();
    if failed.len() == rows.len() {
        // Nothing was compared: the command fails, with the first run's reason.
        bail!("every run failed; the first: {}", failed[0]);
    }
    if !failed.is_empty() {
        println!("{} of {} runs failed (their errors are in the table)", failed.len(), rows.len());
    }
    Ok(())
}

fn row(
    spec: &RunSpec,
    dir: &Path,
    status: Status,
    m: Option<&RunMetrics>,
    state_bytes: Option<usize>,
    target: f64,
) -> Row {
    // The run's result: its last epoch, or the best one that early stopping restored.
    let last = m.and_then(|m| match status {
        Status::EarlyStopped { best_epoch } => m.epochs.iter().find(|e| e.epoch == best_epoch),
        _ => m.epochs.last(),
    });
    let hit = m.and_then(|m| {
        let mut secs = 0.0;
        m.epochs.iter().find_map(|e| {
            secs += e.seconds;
            e.test_accuracy.filter(|a| 100.0 * a >= target).map(|_| (e.steps, secs))
        })
    });
    // Samples per second over the whole run: samples seen over training seconds.
    let seconds: f64 = m.map(|m| m.epochs.iter().map(|e| e.seconds).sum()).unwrap_or(0.0);
    let seen: f64 = m.map(|m| m.epochs.iter().map(|e| e.samples_per_s * e.seconds).sum()).unwrap_or(0.0);
    Row {
        label: spec.label.clone(),
        dir: dir.to_path_buf(),
        status,
        train_loss: last.map(|e| e.train_loss),
        test_loss: last.map(|e| e.test_loss),
        test_accuracy: last.and_then(|e| e.test_accuracy),
        steps_to_target: hit.map(|h| h.0),
        seconds_to_target: hit.map(|h| h.1),
        samples_per_s: (seconds > 0.0).then(|| seen / seconds),
        state_bytes,
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

/// The table's cells, one `Vec` per run, and its header.
fn cells(rows: &[Row], target: f64, set: EvalSet) -> (Vec<String>, Vec<Vec<String>>) {
    let header = vec![
        "run".to_string(),
        "train loss".into(),
        format!("{} loss", set.name()),
        format!("{} accuracy", set.name()),
        format!("steps to {target}%"),
        format!("seconds to {target}%"),
        "samples/s".into(),
        "optimizer state".into(),
        "status".into(),
    ];
    let body = rows
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                opt(r.train_loss, |v| format!("{v:.4}")),
                opt(r.test_loss, |v| format!("{v:.4}")),
                opt(r.test_accuracy, |v| format!("{:.2}%", 100.0 * v)),
                opt(r.steps_to_target, |v| v.to_string()),
                opt(r.seconds_to_target, |v| format!("{v:.1}")),
                opt(r.samples_per_s, |v| format!("{v:.0}")),
                opt(r.state_bytes, |b| Bytes(b).to_string()),
                r.status.text(true),
            ]
        })
        .collect();
    (header, body)
}

/// table.md (Markdown), table.csv (exact numbers) and compare.json.
fn write_table(rows: &[Row], out: &Path, target: f64, set: EvalSet) -> Result<()> {
    let (header, body) = cells(rows, target, set);
    let mut md = format!("| {} |\n|{}\n", header.join(" | "), " --- |".repeat(header.len()));
    for r in &body {
        md += &format!("| {} |\n", r.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
    }
    folder::write_atomic(&out.join("table.md"), md.as_bytes())?;
    let q = crate::runs::csv_field;
    let mut csv = "run,train_loss,test_loss,test_accuracy,steps_to_target,seconds_to_target,samples_per_s,state_bytes,status,dir\n".to_string();
    for r in rows {
        let f = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let status = r.status.text(false);
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            q(&r.label),
            f(r.train_loss),
            f(r.test_loss),
            f(r.test_accuracy),
            r.steps_to_target.map(|v| v.to_string()).unwrap_or_default(),
            f(r.seconds_to_target),
            f(r.samples_per_s),
            r.state_bytes.map(|v| v.to_string()).unwrap_or_default(),
            q(&status),
            q(&r.dir.display().to_string())
        );
    }
    folder::write_atomic(&out.join("table.csv"), csv.as_bytes())?;
    let json: Vec<Value> = rows
        .iter()
        .map(|r| {
            // What JSON numbers cannot hold as descent writes it ("inf", "NaN"); null is no value.
            let f = |x: Option<f64>| x.map(crate::json_float);
            serde_json::json!({
                "label": r.label, "dir": r.dir.display().to_string(), "train_loss": f(r.train_loss),
                "test_loss": f(r.test_loss), "test_accuracy": f(r.test_accuracy), "steps_to_target": r.steps_to_target,
                "seconds_to_target": f(r.seconds_to_target), "samples_per_s": f(r.samples_per_s),
                "state_bytes": r.state_bytes,
                "status": r.status.text(false),
            })
        })
        .collect();
    folder::write_atomic(
        &out.join("compare.json"),
        serde_json::to_string_pretty(&serde_json::json!({"target": target, "evaluated_on": set.name(), "runs": json}))?
            .as_bytes(),
    )?;
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// report.html: the table and the charts (SVG) in one page.
fn write_report(rows: &[Row], files: &[PathBuf], out: &Path, title: &str, target: f64, set: EvalSet) -> Result<()> {
    let (header, body) = cells(rows, target, set);
    let mut h = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>descent compare: {t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child,th:first-child{{text-align:left}} \
         img{{max-width:100%;width:900px;display:block;margin:1.5em 0}}</style></head><body>\n<h1>{t}</h1>\n<table>\n<tr>",
        t = html_escape(title)
    );
    for c in &header {
        h += &format!("<th>{}</th>", html_escape(c));
    }
    h += "</tr>\n";
    for r in &body {
        h += "<tr>";
        for c in r {
            h += &format!("<td>{}</td>", html_escape(c));
        }
        h += "</tr>\n";
    }
    h += "</table>\n";
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "svg")) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        h += &format!("<img src=\"{}\" alt=\"{}\">\n", html_escape(name), html_escape(name));
    }
    h += "<p>Run folders: <code>runs/</code> (config, metrics per step and per epoch, checkpoint).</p>\n</body></html>\n";
    folder::write_atomic(&out.join("report.html"), h.as_bytes())?;
    Ok(())
}
