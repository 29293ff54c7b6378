//! `descent sweep`: a hyper-parameter search over any training option with grid, random or TPE
//! proposals and optional ASHA-style stopping of poor trials, resumable from its folder.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use descent_train::train::{Control, Stop};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::compare::apply;
use crate::folder;
use crate::folder::run;
use crate::plot::{self, Chart, Series, SeriesStyle, YScale};
use crate::runs::{csv_field, read_records, EpochRow, EvalRow};
use crate::search_space::{self, Domain, Method, Param, Told};
use crate::train::{self, RunOptions, TrainArgs};

/// The flags of `descent sweep`.
#[derive(clap::Args, Debug, Clone)]
pub struct SweepArgs {
    /// A search dimension NAME=KIND:ARGS: uniform:LO..HI, loguniform:LO..HI, int:LO..HI,
    /// logint:LO..HI or choice:A|B|…; NAME is a train setting (lr, batch_size, schedule, l2, …) or
    /// an optimizer argument (weight_decay, momentum, …). Repeatable; also a `[space]` table in
    /// --config.
    #[arg(long = "param", value_name = "NAME=KIND:ARGS")]
    pub params: Vec<String>,
    /// How trials are proposed: grid, random or tpe.
    #[arg(long, default_value = "tpe")]
    pub method: String,
    /// Stop poor trials early: none, or asha (successive halving at rungs of steps).
    #[arg(long, default_value = "none")]
    pub pruner: String,
    /// Trials (default 20; a grid runs all its points).
    #[arg(long)]
    pub trials: Option<usize>,
    /// What to optimize: val_accuracy, val_loss, test_accuracy, test_loss, or steps_to:ACC (steps
    /// until the validation accuracy reaches ACC %, evaluated at 50 points of each trial and at
    /// its epochs' ends).
    #[arg(long, default_value = "val_accuracy")]
    pub objective: String,
    /// Stop starting trials once this many epochs have been spent in all.
    #[arg(long)]
    pub max_total_epochs: Option<f64>,
    /// ASHA: the reduction factor η (the best 1/η of the trials at a rung go on).
    #[arg(long, default_value_t = 3)]
    pub reduction_factor: usize,
    /// ASHA: the first rung, in steps (default: a trial's steps / η³); rungs at min·η^k.
    #[arg(long)]
    pub min_steps: Option<u64>,
    /// Grid: values per numeric dimension.
    #[arg(long, default_value_t = 3)]
    pub grid_points: usize,
    /// TPE: random trials before the estimators take over (default: 10, at most a third).
    #[arg(long)]
    pub startup: Option<usize>,
    /// Trials trained at once (their proposals then depend on which finish first).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    #[command(flatten)]
    pub base: TrainArgs,
}

/// What a sweep folder records of its settings (sweep.json), enough to resume it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    space: Vec<(String, String)>,
    method: String,
    pruner: String,
    trials: Option<usize>,
    objective: String,
    max_total_epochs: Option<f64>,
    reduction_factor: usize,
    min_steps: Option<u64>,
    grid_points: usize,
    startup: Option<usize>,
    base: TrainArgs,
}

/// What is optimized, as a loss (lower is better).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Objective {
    Accuracy,
    Loss,
    StepsTo(f64),
}

impl Objective {
    fn parse(s: &str) -> Result<(Objective, bool)> {
        Ok(match s {
            "val_accuracy" => (Objective::Accuracy, true),
            "val_loss" => (Objective::Loss, true),
            "test_accuracy" => (Objective::Accuracy, false),
            "test_loss" => (Objective::Loss, false),
            s if s.starts_with("steps_to:") => {
                let acc: f64 =
                    s["steps_to:".len()..].parse().with_context(|| format!("objective `{s}`: not steps_to:ACC"))?;
                if !(acc > 0.0 && acc <= 100.0) {
                    bail!("objective `{s}`: the accuracy is a percentage");
                }
                (Objective::StepsTo(acc), true)
            }
            other => bail!(
                "unknown objective `{other}`; accepted: val_accuracy, val_loss, test_accuracy, test_loss, steps_to:ACC"
            ),
        })
    }

    /// The loss at an evaluation (accuracy in [0, 1] or loss); steps-to-target prunes on accuracy.
    fn at_eval(self, loss: f64, acc: Option<f64>) -> f64 {
        match self {
            Objective::Loss => loss,
            Objective::Accuracy | Objective::StepsTo(_) => acc.map(|a| -a).unwrap_or(f64::NAN),
        }
    }

    /// How the objective reads for a person.
    fn shown(self, loss: f64) -> String {
        match self {
            Objective::StepsTo(_) if loss.is_infinite() => "not reached".into(),
            // A failed trial (its status says why), or a diverged evaluation.
            _ if !loss.is_finite() => "-".into(),
            Objective::Accuracy => format!("{:.2}%", -100.0 * loss),
            Objective::Loss => format!("{loss:.4}"),
            Objective::StepsTo(_) => format!("{loss} steps"),
        }
    }
}

/// One finished trial (a line of trials.jsonl).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trial {
    trial: usize,
    values: Map<String, Value>,
    /// complete, pruned or failed (with the reason).
    status: String,
    /// The objective as a loss (lower is better); infinite for a failed trial.
    #[serde(with = "loss_json")]
    loss: f64,
    steps: u64,
    epochs: f64,
    seconds: f64,
    /// (step, loss) at each evaluation: mid-epoch ones and epoch ends.
    #[serde(with = "loss_json::points")]
    curve: Vec<(u64, f64)>,
    /// (step, loss) at the rungs it reached.
    #[serde(with = "loss_json::points")]
    rungs: Vec<(u64, f64)>,
    /// [`train::command_settings_hash`] of the sweep.json it ran under (empty in an older sweep's lines).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    settings: String,
}

/// A trial's losses in trials.jsonl, which JSON numbers cannot all hold: a failed trial's is
/// infinite and a diverged evaluation's NaN. Those are written as the strings `"inf"`, `"-inf"`
/// and `"NaN"`; `null`, which earlier sweeps wrote for any of them, reads as +∞ (the worst loss,
/// as a failed trial's).
mod loss_json {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        to_value(*x).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_value(&Value::deserialize(d)?).map_err(D::Error::custom)
    }

    use crate::json_float as to_value;

    fn from_value(v: &Value) -> Result<f64, String> {
        crate::runs::exact_float::read(v, f64::INFINITY).map_err(|e| format!("loss {e}"))
    }

    /// `(step, loss)` pairs, each loss as above.
    pub mod points {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[(u64, f64)], s: S) -> Result<S::Ok, S::Error> {
            v.iter().map(|&(step, x)| (step, to_value(x))).collect::<Vec<_>>().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, f64)>, D::Error> {
            let raw = Vec::<(u64, Value)>::deserialize(d)?;
            raw.iter().map(|(step, x)| Ok((*step, from_value(x).map_err(D::Error::custom)?))).collect()
        }
    }
}

/// That the trials read back from trials.jsonl are this sweep's: each ran under these settings,
/// is numbered once within the sweep's trials, sets exactly the space's dimensions to values in
/// them, and has a status the sweep writes.
fn check_history(history: &[Trial], s: &Settings, p: &Plan) -> Result<()> {
    let hash = train::command_settings_hash(s)?;
    let mut seen = std::collections::HashSet::new();
    for t in history {
        // The records count from 0, the table and the folders from 1: both named.
        let line = format!("trials.jsonl, trial {} (\"trial\": {}, trials/{:03})", t.trial + 1, t.trial, t.trial + 1);
        if !t.settings.is_empty() && t.settings != hash {
            bail!("{line}: ran under other settings than sweep.json holds (it was changed after trials ran); a resumed sweep keeps its settings");
        }
        if t.trial >= p.trials || !seen.insert(t.trial) {
            bail!("{line}: not one of this sweep's {} trials (numbered twice or beyond them)", p.trials);
        }
        if t.values.len() != p.space.len() {
            bail!("{line}: sets {} values for the {} dimensions of the space", t.values.len(), p.space.len());
        }
        for d in &p.space {
            match t.values.get(&d.name) {
                Some(v) if d.contains(v) => {}
                Some(v) => bail!("{line}: `{}` = {v} is outside the search space", d.name),
                None => bail!("{line}: no value for `{}`", d.name),
            }
        }
        if !(t.status == "complete" || t.status == "pruned" || t.status.starts_with("failed")) {
            bail!("{line}: status `{}`; a sweep writes complete, pruned or failed", t.status);
        }
    }
    Ok(())
}

fn settings(a: &SweepArgs, matches: &clap::ArgMatches) -> Result<Settings> {
    let mut base = a.base.clone();
    let mut space: Vec<(String, String)> = vec![];
    let mut file_sweep = Map::new();
    // The training settings the config file gives (beside its sweep keys and space).
    let mut file_settings: Vec<String> = vec![];
    if let Some(path) = &a.base.config {
        let mut file = train::read_toml(path)?;
        if let Some(sp) = file.remove("space") {
            let sp = sp.as_table().with_context(|| format!("{}: `space` must be a table", path.display()))?;
            for (k, v) in sp {
                let def = v
                    .as_str()
                    .with_context(|| format!("{}: space `{k}` must be a string KIND:ARGS", path.display()))?;
                space.push((k.clone(), def.to_string()));
            }
        }
        let sweep_keys = [
            "method",
            "pruner",
            "trials",
            "objective",
            "max_total_epochs",
            "reduction_factor",
            "min_steps",
            "grid_points",
            "startup",
        ];
        for k in sweep_keys {
            if let Some(v) = file.remove(k) {
                file_sweep.insert(k.to_string(), train::toml_json(&v, &format!("{}: `{k}`", path.display()))?);
            }
        }
        let also: Vec<&str> = std::iter::once("space").chain(sweep_keys).collect();
        file_settings = file.keys().filter(|k| !also.contains(&k.as_str())).cloned().collect();
        base = base.merge_table(file, path, matches, &also)?;
        (base.resume, base.config) = (None, None);
    }
    // The best trial's settings go to best.toml, for `train --config`; TOML has no null.
    if let Some(key) = null_key(&base.hparams) {
        let given = if from_cli(matches, "hparams") { "--hparams" } else { "the config file's [hparams]" };
        bail!(
            "{given}: `{key}` is null, which best.toml (TOML) cannot hold: a sweep takes no null (leave it out where it stands for the library's default)"
        );
    }
    if base.model == "gpt" {
        bail!("sweep: the gpt model is not available here (its runs are measured in steps, not epochs); compare gpt runs with `descent compare --model gpt`");
    }
    let mut flags: Vec<&str> = vec![];
    for p in &a.params {
        let (name, def) = p
            .split_once('=')
            .with_context(|| format!("--param `{p}`: expected NAME=KIND:ARGS ({})", search_space::KINDS))?;
        let name = name.trim();
        if flags.contains(&name) {
            bail!("--param `{name}` given twice; give each search dimension once");
        }
        flags.push(name);
        // A --param replaces the config file's dimension of the same name.
        space.retain(|(n, _)| n != name);
        space.push((name.to_string(), def.trim().to_string()));
    }
    let from_cli = |k: &str| from_cli(matches, k);
    if let (Some(lr), true) = (base.lr, space.iter().any(|(n, _)| n == "lr")) {
        let given = if from_cli("lr") { format!("--lr {lr}") } else { format!("the config file's `lr` = {lr}") };
        bail!("{given}: the search dimension `lr` sets the learning rate of every trial; give one of them");
    }
    // A searched setting also given fixed would be overridden in every trial without a word.
    for (name, _) in &space {
        let fixed_key = |k: &str| base.hparams.get(k).is_some();
        let in_hparams = if name == "lr" { fixed_key("lr") || fixed_key("learning_rate") } else { fixed_key(name) };
        if in_hparams {
            let given = if from_cli("hparams") { "--hparams" } else { "the config file's [hparams]" };
            bail!("--param {name}: {given} also sets `{name}`; the search dimension sets it in every trial, give one of them");
        }
        let on_cli = crate::compare::is_train_flag(name) && from_cli(name);
        // A length setting given fixed sets the shared plan (rungs, budget) the trials' follow.
        if name != "lr" && !LENGTH_SETTINGS.contains(&name.as_str()) && (on_cli || file_settings.contains(name)) {
            bail!(
                "--param {name}: {} also sets it; the search dimension sets it in every trial, give one of them",
                if on_cli { crate::train::flag_of(name) } else { format!("the config file's `{name}`") }
            );
        }
    }
    let pick = |k: &str| file_sweep.get(k).filter(|_| !from_cli(k)).cloned();
    let (method, pruner, objective) = (a.method.clone(), a.pruner.clone(), a.objective.clone());
    // Options of a method or pruner the sweep does not use are refused, not ignored.
    let given = |k: &str| from_cli(k) || file_sweep.contains_key(k);
    let method_now = pick("method").and_then(|v| v.as_str().map(String::from)).unwrap_or(method.clone());
    let pruner_now = pick("pruner").and_then(|v| v.as_str().map(String::from)).unwrap_or(pruner.clone());
    let objective_now = pick("objective").and_then(|v| v.as_str().map(String::from)).unwrap_or(objective.clone());
    if base.validation == 0 && from_cli("validation") && Objective::parse(&objective_now).is_ok_and(|(_, val)| val) {
        // 0 is also the flag's default (a split of 5 000, or 2 000 for linear): given, it would
        // be replaced.
        bail!(
            "--validation 0: the objective {objective_now} is measured on a held-out split; give its size, or a test_* objective"
        );
    }
    for (key, needs, is) in [
        ("grid_points", "--method grid", method_now == "grid"),
        ("startup", "--method tpe", method_now == "tpe"),
        ("min_steps", "--pruner asha", pruner_now == "asha"),
        ("reduction_factor", "--pruner asha", pruner_now == "asha"),
    ] {
        if given(key) && !is {
            bail!("--{}: it takes effect only with {needs}", key.replace('_', "-"));
        }
    }
    // A length setting given fixed and searched places ASHA's rungs; without them no trial reads it.
    if pruner_now != "asha" {
        for (name, _) in space.iter().filter(|(n, _)| LENGTH_SETTINGS.contains(&n.as_str())) {
            let on_cli = crate::compare::is_train_flag(name) && from_cli(name);
            if on_cli || file_settings.contains(name) {
                bail!(
                    "--param {name}: {} also sets it, and no trial would read it (given fixed, it only places --pruner asha's rungs, which this sweep does not use); give one of them",
                    if on_cli { crate::train::flag_of(name) } else { format!("the config file's `{name}`") }
                );
            }
        }
    }
    let file = a.base.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let int = |k: &str| -> Result<Option<u64>> {
        match pick(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .with_context(|| format!("{file}: `{k}`: expected a non-negative integer, found {v}")),
        }
    };
    let text = |k: &str, given: &String| -> Result<String> {
        match pick(k) {
            None => Ok(given.clone()),
            Some(Value::String(v)) => Ok(v),
            Some(v) => bail!("{file}: `{k}`: expected a string, found {v}"),
        }
    };
    let max_total_epochs = match pick("max_total_epochs") {
        None => a.max_total_epochs,
        Some(v) => {
            Some(v.as_f64().with_context(|| format!("{file}: `max_total_epochs`: expected a number, found {v}"))?)
        }
    };
    Ok(Settings {
        space,
        method: text("method", &method)?,
        pruner: text("pruner", &pruner)?,
        trials: int("trials")?.map(|v| v as usize).or(a.trials),
        objective: text("objective", &objective)?,
        max_total_epochs,
        reduction_factor: int("reduction_factor")?.map(|v| v as usize).unwrap_or(a.reduction_factor),
        min_steps: int("min_steps")?.or(a.min_steps),
        grid_points: int("grid_points")?.map(|v| v as usize).unwrap_or(a.grid_points),
        startup: int("startup")?.map(|v| v as usize).or(a.startup),
        base,
    })
}

/// The checked plan of a sweep.
struct Plan {
    space: Vec<Param>,
    method: Method,
    asha: bool,
    trials: usize,
    /// For a grid, every trial's values.
    grid: Vec<Map<String, Value>>,
    objective: Objective,
    validation: bool,
    /// The training samples before a validation split is held out.
    n_train: u64,
    /// The length of a trial at the shared settings; a trial whose values change its batch size,
    /// accumulation, epochs, steps or validation split has its own ([`Plan::length`]).
    base: Length,
    /// ASHA's rungs at the shared settings' length, in steps; a trial of another length has them
    /// at the same fractions of its own ([`Plan::rungs_of`]), so that rung `k` is the same share
    /// of training for every trial.
    rungs: Vec<u64>,
}

/// The settings that change how many optimizer steps a trial takes.
const LENGTH_SETTINGS: [&str; 6] = ["batch_size", "accumulate", "epochs", "steps", "validation", "model"];

/// The path of the first null in a JSON value (`foreach`, `eps[0]`, `inner[1].momentum`), if any.
fn null_key(v: &Value) -> Option<String> {
    fn path(v: &Value, at: String) -> Option<String> {
        match v {
            Value::Null => Some(at),
            Value::Object(m) => {
                m.iter().find_map(|(k, x)| path(x, if at.is_empty() { k.clone() } else { format!("{at}.{k}") }))
            }
            Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| path(x, format!("{at}[{i}]"))),
            _ => None,
        }
    }
    path(v, String::new())
}

/// Whether a flag was given on the command line.
fn from_cli(matches: &clap::ArgMatches, k: &str) -> bool {
    matches.value_source(k) == Some(clap::parser::ValueSource::CommandLine)
}

/// The evaluations along a trial from which `steps_to:ACC` is read: at `k/50` of its length
/// (`k` = 1 … 49), its end, and its epochs' ends.
const STEPS_TO_POINTS: u64 = 50;

/// How long a trial trains: optimizer steps per epoch and in all.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Length {
    per_epoch: u64,
    steps: u64,
}

impl Plan {
    /// The length of a trial of these settings: its epochs of `⌈samples / (batch × accumulate)⌉`
    /// optimizer steps, or its `--steps` where fewer.
    fn length(&self, args: &TrainArgs) -> Length {
        let batch = args.batch_size.unwrap_or(train::defaults(&args.model).1).max(1) as u64;
        let step = batch.saturating_mul(args.accumulate.unwrap_or(1).max(1) as u64);
        let per_epoch = self.n_train.saturating_sub(args.validation as u64).div_ceil(step).max(1);
        let steps = args.steps.unwrap_or(u64::MAX).min(per_epoch.saturating_mul(args.epochs.unwrap_or(1) as u64));
        Length { per_epoch, steps }
    }

    /// Trial `t`'s value at rung `k`, where it reached it: the value it recorded at its own step
    /// for that rung.
    fn rung_value(&self, s: &Settings, t: &Trial, k: usize) -> Option<f64> {
        let args = trial_args(s, self, &t.values, "trial").ok()?;
        let step = *self.rungs_of(self.length(&args)).get(k)?;
        t.rungs.iter().find(|r| r.0 == step).map(|r| r.1)
    }

    /// ASHA's rungs of a trial of length `len`, in steps: the shared rungs at the same fractions
    /// of its length (rounded up, at least step 1, before its end). Rung `k` of one trial is
    /// compared with rung `k` of the others; two rungs of a short trial may fall on one step.
    fn rungs_of(&self, len: Length) -> Vec<u64> {
        if len.steps == self.base.steps {
            return self.rungs.clone();
        }
        self.rungs
            .iter()
            .map(|&r| ((r as u128 * len.steps as u128).div_ceil(self.base.steps.max(1) as u128) as u64).max(1))
            .take_while(|&r| r < len.steps)
            .collect()
    }
}

fn plan(s: &Settings) -> Result<Plan> {
    if s.space.is_empty() {
        bail!(
            "an empty search space: give --param NAME=KIND:ARGS ({}) or a [space] table in --config",
            search_space::KINDS
        );
    }
    let space: Vec<Param> = s.space.iter().map(|(n, d)| Param::parse_domain(n, d)).collect::<Result<_>>()?;
    let (objective, validation) = Objective::parse(&s.objective)?;
    // Every trial reads the data the sweep counts its epochs and objective on: a `model`
    // dimension stays among the MNIST classifiers (or is the linear model alone).
    if let Some(p) = space.iter().find(|p| p.name == "model") {
        let models: Vec<String> = match &p.domain {
            crate::search_space::Domain::Choice(v) => v.iter().map(|m| m.as_str().unwrap_or("").to_string()).collect(),
            _ => bail!("--param model: a choice of models (choice:mlp|lenet)"),
        };
        let image = |m: &str| matches!(m, "mlp" | "lenet" | "resnet" | "plain");
        let all_image = image(&s.base.model) && models.iter().all(|m| image(m));
        let all_linear = s.base.model == "linear" && models.iter().all(|m| m == "linear");
        if !(all_image || all_linear) {
            bail!(
                "--param model: {} with --model {}: a sweep's trials train on one dataset; choose among mlp, lenet, resnet and plain",
                models.join(", "),
                s.base.model
            );
        }
    }
    if s.base.model == "linear" && objective != Objective::Loss {
        bail!(
            "objective `{}` needs accuracy, which the linear regression has not: use val_loss or test_loss",
            s.objective
        );
    }
    if s.grid_points == 0 || s.grid_points > MAX_GRID {
        bail!("--grid-points {}: between 1 and {MAX_GRID}", s.grid_points);
    }
    let grid = if s.method == "grid" {
        let size = space.iter().try_fold(1usize, |n, p| n.checked_mul(p.grid(s.grid_points).len()));
        match size {
            Some(n) if n <= MAX_GRID => search_space::grid(&space, s.grid_points),
            _ => bail!("the grid has more than {MAX_GRID} points: fewer --grid-points or dimensions"),
        }
    } else {
        vec![]
    };
    let method = match s.method.as_str() {
        "grid" => Method::Grid,
        "random" => Method::Random,
        "tpe" => Method::Tpe { startup: 0 },
        other => bail!("unknown method `{other}`; accepted: grid, random, tpe"),
    };
    let trials = match (method, s.trials) {
        (_, Some(0)) => bail!("--trials 0: a sweep needs at least one trial"),
        (Method::Grid, None) => grid.len(),
        (Method::Grid, Some(n)) if n < grid.len() => {
            bail!("the grid has {} points, more than --trials {n} (fewer --grid-points, or more trials)", grid.len())
        }
        (Method::Grid, Some(n)) if n > grid.len() => {
            bail!("the grid has {} points, fewer than --trials {n} (a grid runs each point once: more --grid-points, or drop --trials)", grid.len())
        }
        (Method::Grid, Some(n)) => n,
        (_, None) => 20,
        (_, Some(n)) => n,
    };
    let method = match method {
        Method::Tpe { .. } => Method::Tpe { startup: s.startup.unwrap_or(10.min(trials / 3).max(1)) },
        m => m,
    };
    let asha = match s.pruner.as_str() {
        "none" => false,
        "asha" => true,
        other => bail!("unknown pruner `{other}`; accepted: none, asha"),
    };
    if s.reduction_factor < 2 {
        bail!("--reduction-factor must be at least 2, got {}", s.reduction_factor);
    }
    if s.min_steps == Some(0) {
        bail!("--min-steps 0: the first rung needs at least one step");
    }
    if let (Method::Tpe { .. }, Some(st)) = (method, s.startup) {
        if st == 0 || st > trials {
            bail!("--startup {st}: between 1 and the {trials} trials");
        }
    }
    if let Some(b) = s.max_total_epochs {
        if !(b > 0.0 && b.is_finite()) {
            bail!("--max-total-epochs {b}: must be a positive number");
        }
    }
    train::one_process(&s.base)?;
    // Every trial's settings must be valid: each dimension's extremes, over the others at their
    // first grid value (a dimension may supply what the shared settings lack: `--param
    // swa_lr=…` with `--swa-start`).
    if space.is_empty() {
        train::validate(&s.base)?;
    }
    let first: Map<String, Value> = space.iter().map(|p| (p.name.clone(), p.grid(2)[0].clone())).collect();
    // Each extreme's settings, kept for the checks against the training set below.
    let mut extremes = vec![];
    for p in &space {
        for v in p.grid(2) {
            let mut m = first.clone();
            m.insert(p.name.clone(), v.clone());
            let args = apply(&s.base, &m, &format!("search dimension `{}` = {v}", p.name))?;
            // The other dimensions' values too: the fault may be theirs (`epochs` = 1 with a
            // --patience), which this extreme only came upon.
            let others: Vec<String> =
                m.iter().filter(|(k, _)| **k != p.name).map(|(k, v)| format!("`{k}` = {v}")).collect();
            let what = if others.is_empty() {
                format!("search dimension `{}` = {v}", p.name)
            } else {
                format!("search dimension `{}` = {v} (with {})", p.name, others.join(", "))
            };
            if let Err(e) = train::validate(&args) {
                // Named by the dimensions' values, unless the shared settings alone fail the same
                // way (`--epochs 0`).
                let shared = train::validate(&s.base).err().map(|b| format!("{b:#}"));
                return Err(if shared == Some(format!("{e:#}")) { e } else { e.context(what) });
            }
            extremes.push((what, args.clone()));
        }
    }
    // Epochs are counted on the training set the trials really read (a smaller --data set too).
    let n_train = train::training_set_len(&s.base.model, &s.base.data)? as u64;
    // As trial_args holds out: the --validation given, else the default hold-out.
    let val = match (validation, s.base.validation) {
        (false, 0) => 0,
        (false, n) => bail!(
            "--validation {n}: the objective {} is measured on the test set, and its trials train on every training sample; \
             a validation split serves the val_* objectives",
            s.objective
        ),
        (true, 0) if s.base.model == "linear" => 2_000,
        (true, 0) => 5_000,
        (true, n) => n,
    };
    if val as u64 >= n_train {
        if s.base.validation == 0 {
            bail!(
                "the sweep holds out {val} training samples for validation by default, which leaves none of the {n_train} to train on; give a smaller --validation"
            );
        }
        bail!("--validation {val} leaves no training samples (the training set has {n_train})");
    }
    // A batch larger than the training set, or a schedule that would never act in a trial, fails
    // that trial at its start: refused here, before the first one.
    if space.is_empty() {
        train::validate_for_data(&s.base, (n_train - val as u64) as usize)?;
    }
    for (what, args) in &extremes {
        train::validate_for_data(args, (n_train - val as u64) as usize).with_context(|| what.clone())?;
    }
    let mut base_args = s.base.clone();
    base_args.validation = val;
    let mut p = Plan {
        space,
        method,
        asha,
        trials,
        grid,
        objective,
        validation,
        n_train,
        base: Length { per_epoch: 1, steps: 1 },
        rungs: vec![],
    };
    p.base = p.length(&base_args);
    // A length dimension whose every value gives the trials one length (--steps ending each
    // within the epochs searched) would run the same trial again and again.
    for dim in p.space.iter().filter(|d| d.name == "epochs" || d.name == "steps") {
        let lengths = dim
            .grid(2)
            .iter()
            .map(|v| {
                let m: Map<String, Value> = [(dim.name.clone(), v.clone())].into_iter().collect();
                Ok(p.length(&apply(&base_args, &m, &format!("search dimension `{}` = {v}", dim.name))?).steps)
            })
            .collect::<Result<Vec<u64>>>()?;
        if lengths.len() > 1 && lengths.windows(2).all(|w| w[0] == w[1]) {
            let other = if dim.name == "epochs" { "--steps" } else { "--epochs" };
            bail!(
                "--param {}: every trial takes {} steps whatever its value ({other} ends it first; an epoch is {} \
                 steps): the dimension changes nothing; give a larger {other}",
                dim.name,
                lengths[0],
                p.base.per_epoch
            );
        }
    }
    let steps_per_trial = p.base.steps;
    let eta = s.reduction_factor as u64;
    let min = s.min_steps.unwrap_or((steps_per_trial / eta.pow(3)).max(1));
    let rungs = if asha { search_space::rungs(min, s.reduction_factor, steps_per_trial) } else { vec![] };
    if asha && rungs.is_empty() {
        bail!(
            "--pruner asha: no rung before a trial's end ({steps_per_trial} steps) with --min-steps {min} and η {}; \
             give a smaller --min-steps or longer trials",
            s.reduction_factor
        );
    }
    p.rungs = rungs;
    Ok(p)
}

/// The most points a grid may have (and values per dimension).
const MAX_GRID: usize = 100_000;

/// The sweep's state shared by its workers.
struct State {
    history: Vec<Trial>,
    next: usize,
    epochs_spent: f64,
}

pub fn run(a: SweepArgs, matches: &clap::ArgMatches) -> Result<()> {
    if a.jobs == 0 {
        bail!("--jobs 0: at least one trial at a time");
    }
    let (out, s, resumed, claimed) = match &a.base.resume {
        Some(dir) => {
            // A resumed sweep keeps the settings of its sweep.json.
            for id in matches.ids() {
                let id = id.as_str();
                // (Upper-case ids are clap's groups of the flattened structs, not flags.)
                if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
                    && !["resume", "threads", "jobs"].contains(&id)
                    && !id.starts_with(|c: char| c.is_ascii_uppercase())
                {
                    bail!(
                        "{} cannot be combined with --resume: a resumed sweep keeps the settings of its sweep.json (only --threads and --jobs may be given)",
                        crate::train::flag_of(id)
                    );
                }
            }
            let claimed = folder::claim_existing(dir, folder::Kind::Sweep)?;
            // The marker says it is a sweep: one stopped before it recorded its settings.
            if !dir.join("sweep.json").exists() {
                bail!(
                    "{}: a sweep stopped before it recorded its settings (no sweep.json), so there is nothing to resume: start it again with --out {} --force",
                    dir.display(),
                    dir.display()
                );
            }
            let text = std::fs::read_to_string(dir.join("sweep.json"))
                .with_context(|| format!("reading {}", dir.join("sweep.json").display()))?;
            let mut s: Settings =
                serde_json::from_str(&text).with_context(|| format!("{}: malformed sweep.json", dir.display()))?;
            // The one setting a resume may change (with --jobs, which is not a setting).
            if matches.value_source("threads") == Some(clap::parser::ValueSource::CommandLine) {
                s.base.threads = a.base.threads;
            }
            (dir.clone(), s, true, Some(claimed))
        }
        None => {
            let s = settings(&a, matches)?;
            let out = a.base.out.clone().unwrap_or_else(|| {
                (1..)
                    .map(|k| PathBuf::from("runs").join(if k == 1 { "sweep".into() } else { format!("sweep-{k}") }))
                    .find(|d| !d.exists())
                    .expect("some name is free")
            });
            (out, s, false, None)
        }
    };
    let p = plan(&s)?;
    // Each trial's folder is checked before the sweep folder is claimed (with --force, cleared):
    // one that descent did not write as a trial of this sweep would fail its trial only after the
    // earlier results were deleted (as a compare checks its runs' folders).
    let old_id = match &claimed {
        Some(c) => Some(c.marker.id.clone()),
        None => {
            folder::check_new(&out, folder::Kind::Sweep, a.base.force, true, None)?;
            folder::Marker::read(&out).ok().flatten().filter(|m| m.kind == folder::Kind::Sweep).map(|m| m.id)
        }
    };
    for i in 0..p.trials {
        let dir = trial_dir(&out, i);
        if dir.symlink_metadata().is_ok() {
            folder::refuse_link_in(&dir)
                .and_then(|_| folder::check_new(&dir, folder::Kind::Run, true, false, old_id.as_deref()))
                .with_context(|| format!("trial {}", i + 1))?;
        }
    }
    let claimed = match claimed {
        Some(c) => c,
        None => {
            let c = folder::claim_new(&out, folder::Kind::Sweep, a.base.force, true, None)?;
            std::fs::create_dir_all(out.join("trials"))
                .with_context(|| format!("creating {}", out.join("trials").display()))?;
            folder::write_atomic(&out.join("sweep.json"), serde_json::to_string_pretty(&s)?.as_bytes())?;
            c
        }
    };
    let history = read_trials(&out)?;
    check_history(&history, &s, &p).with_context(|| out.display().to_string())?;
    if resumed {
        // Drop a line cut by a kill before appending after it; trial folders without a line run again.
        let mut text = String::new();
        for t in &history {
            text += &format!("{}\n", serde_json::to_string(t)?);
        }
        folder::write_atomic(&out.join("trials.jsonl"), text.as_bytes())?;
    }
    let spent: f64 = history.iter().map(|t| t.epochs).sum();
    if resumed {
        println!("resuming {}: {} of {} trials finished", out.display(), history.len(), p.trials);
        // A finished trial's result stays in trials.jsonl; its folder (curves, checkpoint) is
        // what `plot` draws.
        let gone: Vec<String> = history
            .iter()
            .filter(|t| !trial_dir(&out, t.trial).is_dir())
            .map(|t| format!("{:03}", t.trial + 1))
            .collect();
        if !gone.is_empty() {
            eprintln!(
                "warning: the folders of finished trials {} are missing from {}: their results are kept, their curves are not drawn",
                gone.join(", "),
                out.join("trials").display()
            );
        }
    }
    // A dimension that sets how long a trial trains: its trials' lengths (and rungs) are their own.
    let varies = p.space.iter().find(|d| LENGTH_SETTINGS.contains(&d.name.as_str()));
    println!(
        "sweep of {} over {} with {}{}: {} trials of up to {} steps{}, objective {}",
        s.base.model,
        s.space.iter().map(|(n, d)| format!("{n}={d}")).collect::<Vec<_>>().join(" "),
        s.method,
        if p.asha {
            format!(" and ASHA (η {}, rungs at steps {:?})", s.reduction_factor, p.rungs)
        } else {
            String::new()
        },
        p.trials,
        p.base.steps,
        match varies {
            Some(d) if p.asha => format!(
                " at the shared settings (`{}` sets each trial's own length, and its rungs at the same fractions of it)",
                d.name
            ),
            Some(d) => format!(" at the shared settings (`{}` sets each trial's own length)", d.name),
            None => String::new(),
        },
        s.objective
    );
    let state = Mutex::new(State { history, next: 0, epochs_spent: spent });
    let seed = s.base.seed;
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..a.jobs.max(1).min(p.trials.max(1)))
            .map(|_| scope.spawn(|| worker(&out, &s, &p, seed, &state, &claimed.marker.id)))
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a sweep worker panicked"))??;
        }
        Ok(())
    })?;
    let history = state.into_inner().expect("state lock").history;
    report(&out, &s, &p, &history)
}

/// Takes trials until none is left: proposes, trains, records.
fn worker(out: &Path, s: &Settings, p: &Plan, seed: u64, state: &Mutex<State>, sweep_id: &str) -> Result<()> {
    loop {
        let (i, values) = {
            let mut st = state.lock().expect("state lock");
            let done: std::collections::HashSet<usize> = st.history.iter().map(|t| t.trial).collect();
            while st.next < p.trials && done.contains(&st.next) {
                st.next += 1;
            }
            if st.next >= p.trials {
                return Ok(());
            }
            if s.max_total_epochs.is_some_and(|b| st.epochs_spent >= b) {
                println!("epoch budget spent ({:.2} epochs): no more trials", st.epochs_spent);
                st.next = p.trials;
                return Ok(());
            }
            let i = st.next;
            st.next += 1;
            let values = match p.method {
                Method::Grid => p.grid[i].clone(),
                m => {
                    let told: Vec<Told> =
                        st.history.iter().map(|t| Told { values: t.values.clone(), loss: t.loss }).collect();
                    search_space::propose(&p.space, m, i, seed, &told)?
                }
            };
            (i, values)
        };
        let t = run_trial(out, s, p, i, values, state, sweep_id)?;
        let mut st = state.lock().expect("state lock");
        st.epochs_spent += t.epochs;
        append_trial(out, &t)?;
        println!(
            "trial {}/{}: {} → {} ({}, {:.2} epochs, {:.1}s)",
            i + 1,
            p.trials,
            show_values(&t.values),
            p.objective.shown(t.loss),
            t.status,
            t.epochs,
            t.seconds
        );
        st.history.push(t);
    }
}

fn show_values(v: &Map<String, Value>) -> String {
    v.iter()
        .map(|(k, v)| match v {
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                format!("{k}={}", plot::tick(n.as_f64().unwrap()))
            }
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The settings of trial `values` on top of the shared ones.
fn trial_args(s: &Settings, p: &Plan, values: &Map<String, Value>, what: &str) -> Result<TrainArgs> {
    let mut args = apply(&s.base, values, what)?;
    if p.validation && args.validation == 0 {
        args.validation = if args.model == "linear" { 2_000 } else { 5_000 };
    }
    if !p.validation {
        args.validation = 0;
    }
    Ok(args)
}

fn run_trial(
    out: &Path,
    s: &Settings,
    p: &Plan,
    i: usize,
    values: Map<String, Value>,
    state: &Mutex<State>,
    sweep_id: &str,
) -> Result<Trial> {
    let dir = trial_dir(out, i);
    let settings = train::command_settings_hash(s)?;
    let mut args = trial_args(s, p, &values, &format!("trial {}", i + 1))?;
    (args.out, args.force, args.tensorboard) = (Some(dir.clone()), true, s.base.tensorboard);
    let len = p.length(&args);
    let rungs = p.rungs_of(len);
    let rungs_reached = Mutex::new(Vec::<(u64, f64)>::new());
    let on_eval: train::OnEval = Box::new(|e| {
        let v = p.objective.at_eval(e.test_loss, e.test_accuracy);
        // A step is judged once, at the first rung it is (two rungs of a short trial may fall on
        // one step), against the other trials' values at that rung, each at its own step for it.
        let Some(k) = rungs.iter().position(|&r| r == e.step) else { return Control::Continue };
        rungs_reached.lock().expect("rungs lock").push((e.step, v));
        let st = state.lock().expect("state lock");
        let others: Vec<f64> = st.history.iter().filter_map(|t| p.rung_value(s, t, k)).collect();
        let go_on = search_space::promotable(v, &others, s.reduction_factor);
        if go_on {
            Control::Continue
        } else {
            Control::Stop
        }
    });
    // steps_to:ACC is read from evaluations along the trial: its epochs' ends alone would tie
    // every trial that reaches the target within the first epoch.
    let mut eval_steps = rungs.clone();
    if let Objective::StepsTo(_) = p.objective {
        // 49 points inside the trial, at k/50 of its length, and its end (evaluated anyway).
        eval_steps.extend((1..STEPS_TO_POINTS).map(|k| k * len.steps / STEPS_TO_POINTS).filter(|&s| s > 0));
        eval_steps.sort_unstable();
        eval_steps.dedup();
    }
    let t0 = std::time::Instant::now();
    let opts = RunOptions {
        quiet: true,
        eval_at: (!eval_steps.is_empty()).then_some(descent_train::train::EvalAt::Steps(eval_steps)),
        on_eval: p.asha.then_some(on_eval),
        start: None,
        parent: Some(sweep_id.to_string()),
        comm: None,
    };
    let r = train::execute(args, opts);
    if let Err(e) = &r {
        if train::is_storage_error(e) {
            bail!("trial {}: {e:#}; the trial is not recorded: `descent sweep --resume` runs it again", i + 1);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let rungs = rungs_reached.into_inner().expect("rungs lock");
    // A folder another command made there since the sweep started (checked at its start) is not
    // this trial's: its curve is not read, and the trial is not recorded as one that failed.
    let own = folder::Marker::read(&dir).ok().flatten().is_some_and(|m| m.parent.as_deref() == Some(sweep_id));
    if r.is_err() && !own && dir.join(folder::MARKER).exists() {
        bail!(
            "trial {}: {} holds a run that is not this sweep's; move it away, then `descent sweep --resume {}` runs the trial",
            i + 1,
            dir.display(),
            out.display()
        );
    }
    let curve = if own { read_curve(&dir, p.objective) } else { vec![] };
    let per_epoch = len.per_epoch as f64;
    Ok(match r {
        Ok(o) => {
            let steps = match o.stop {
                Stop::Requested { step } => step,
                _ => o.history.last().map(|e| e.steps).unwrap_or(0),
            };
            let pruned = matches!(o.stop, Stop::Requested { .. });
            let loss = match p.objective {
                Objective::StepsTo(acc) => {
                    let hit = curve.iter().find(|(_, v)| -v * 100.0 >= acc).map(|&(s, _)| s as f64);
                    hit.unwrap_or(f64::INFINITY)
                }
                _ if pruned => rungs.last().map(|r| r.1).unwrap_or(f64::INFINITY),
                obj => o.result().map(|e| obj.at_eval(e.test_loss, e.test_accuracy)).unwrap_or(f64::INFINITY),
            };
            let status = if pruned { "pruned" } else { "complete" };
            Trial {
                trial: i,
                values,
                status: status.into(),
                loss,
                steps,
                epochs: steps as f64 / per_epoch,
                seconds,
                curve,
                rungs,
                settings,
            }
        }
        Err(e) => {
            let steps = curve.last().map(|c| c.0).unwrap_or(0);
            let msg = format!("{e:#}");
            Trial {
                trial: i,
                values,
                status: format!("failed: {}", msg.lines().last().unwrap_or(&msg)),
                loss: f64::INFINITY,
                steps,
                epochs: steps as f64 / per_epoch,
                seconds,
                curve,
                rungs,
                settings,
            }
        }
    })
}

/// The objective at every evaluation of a trial folder: evals.jsonl (mid-epoch) and
/// metrics.jsonl (epoch ends), by step.
fn read_curve(dir: &Path, obj: Objective) -> Vec<(u64, f64)> {
    let mut out = vec![];
    let mut warnings = vec![];
    let evals: Vec<EvalRow> = read_records(&dir.join(run::EVALS_JSONL), &mut warnings).unwrap_or_default();
    let epochs: Vec<EpochRow> = read_records(&dir.join(run::METRICS_JSONL), &mut warnings).unwrap_or_default();
    out.extend(evals.iter().map(|e| (e.step, obj.at_eval(e.test_loss, e.test_accuracy))));
    out.extend(epochs.iter().map(|e| (e.steps, obj.at_eval(e.test_loss, e.test_accuracy))));
    out.sort_by_key(|c| c.0);
    out
}

fn read_trials(out: &Path) -> Result<Vec<Trial>> {
    // A line cut by a kill is dropped with a warning: that trial runs again.
    let mut warnings = vec![];
    let trials = read_records(&out.join("trials.jsonl"), &mut warnings)?;
    for w in warnings {
        eprintln!("warning: {w}; its trial runs again");
    }
    Ok(trials)
}

/// Appends a finished trial to trials.jsonl (one write of one line, then flushed to disk).
fn append_trial(out: &Path, t: &Trial) -> Result<()> {
    folder::append(&out.join("trials.jsonl"), &format!("{}\n", serde_json::to_string(t)?), true)
}

/// The table (best first), best.toml, and the charts.
fn report(out: &Path, s: &Settings, p: &Plan, history: &[Trial]) -> Result<()> {
    let mut sorted: Vec<&Trial> = history.iter().collect();
    sorted.sort_by(|a, b| a.loss.total_cmp(&b.loss).then(a.trial.cmp(&b.trial)));
    let names: Vec<&str> = p.space.iter().map(|q| q.name.as_str()).collect();
    let mut md = format!(
        "| trial | {} | {} | status | epochs trained | seconds |\n|{}\n",
        names.join(" | "),
        s.objective,
        " --- |".repeat(names.len() + 5)
    );
    let mut csv = format!("trial,{},objective,loss,status,epochs_trained,seconds\n", names.join(","));
    for t in &sorted {
        let cell = |n: &str| {
            t.values.get(n).map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Number(x) if x.as_f64().is_some_and(|f| f.fract() != 0.0) => plot::tick(x.as_f64().unwrap()),
                other => other.to_string(),
            })
        };
        let cells: Vec<String> = names.iter().map(|n| cell(n).unwrap_or_default()).collect();
        md += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.1} |\n",
            t.trial + 1,
            cells.join(" | "),
            p.objective.shown(t.loss),
            t.status,
            t.epochs,
            t.seconds
        );
        // Exact values: strings as they are, numbers and lists as JSON.
        let raw: Vec<String> = names
            .iter()
            .map(|n| match t.values.get(*n) {
                Some(Value::String(s)) => csv_field(s),
                Some(v) => csv_field(&v.to_string()),
                None => String::new(),
            })
            .collect();
        csv += &format!(
            "{},{},{},{},{},{},{}\n",
            t.trial + 1,
            raw.join(","),
            csv_field(&p.objective.shown(t.loss)),
            t.loss,
            csv_field(&t.status),
            t.epochs,
            t.seconds
        );
    }
    folder::write_atomic(&out.join("table.md"), md.as_bytes())?;
    folder::write_atomic(&out.join("table.csv"), csv.as_bytes())?;
    let full: f64 = history
        .iter()
        .map(|t| Ok(p.length(&trial_args(s, p, &t.values, &format!("trial {}", t.trial + 1))?).steps as f64))
        .sum::<Result<f64>>()?;
    let spent: f64 = history.iter().map(|t| t.steps as f64).sum();
    let best = sorted.first().filter(|t| t.loss.is_finite());
    // Where the best trial's settings are: best.toml, or where a setting is null (which TOML
    // cannot hold) the trial's own config.json.
    let mut best_settings = out.join("best.toml");
    if let Some(b) = best {
        let args = trial_args(s, p, &b.values, "best trial")?;
        match toml::to_string(&args) {
            Ok(settings) => {
                let text = format!(
                    "# The best trial of the sweep in {} (trial {}, {} {}).\n# descent train --config best.toml trains it again.\n{settings}",
                    out.display(),
                    b.trial + 1,
                    s.objective,
                    p.objective.shown(b.loss),
                );
                folder::write_atomic(&best_settings, text.as_bytes())?;
            }
            Err(_) => {
                best_settings = trial_dir(out, b.trial).join(folder::run::CONFIG_JSON);
                eprintln!(
                    "warning: best.toml not written: a setting is null, which TOML cannot hold ({} holds them)",
                    best_settings.display()
                );
            }
        }
    }
    draw(out, s, p, history)?;
    println!("\n{md}");
    if p.asha {
        println!(
            "steps spent: {spent:.0} of {full:.0} for every trial to the end ({:.0}%)",
            100.0 * spent / full.max(1.0)
        );
    }
    match best {
        Some(b) => println!(
            "best: trial {} ({}) with {} {}; its settings in {}",
            b.trial + 1,
            show_values(&b.values),
            s.objective,
            p.objective.shown(b.loss),
            best_settings.display()
        ),
        None => {
            // As compare and bench optimizers do: a search without one result is an error (the
            // table above says how each trial failed).
            if let Some(first) = history.iter().min_by_key(|t| t.trial) {
                if history.iter().all(|t| t.status.starts_with("failed")) {
                    bail!("every trial failed; the first: {}", first.status.trim_start_matches("failed: "));
                }
            }
            if history.iter().any(|t| t.status == "complete") {
                // Complete trials without a value: a steps_to objective none reached, or losses
                // that are not finite.
                let why = if s.objective.starts_with("steps_to") { " (none reached its target)" } else { "" };
                println!("no best trial: no complete trial has a value of {}{why}", s.objective)
            } else {
                println!("no trial finished")
            }
        }
    }
    Ok(())
}

/// The run folder of trial `i` (counted from 0; its folder and its row count from 1).
fn trial_dir(out: &Path, i: usize) -> PathBuf {
    out.join("trials").join(format!("{:03}", i + 1))
}

/// The objective's value for a chart (accuracy in %).
fn natural(obj: Objective, loss: f64) -> f64 {
    match obj {
        Objective::Accuracy => -100.0 * loss,
        _ => loss,
    }
}

fn draw(out: &Path, s: &Settings, p: &Plan, history: &[Trial]) -> Result<()> {
    let obj_label = match p.objective {
        Objective::Accuracy => format!("{} (%)", s.objective),
        _ => s.objective.clone(),
    };
    let finished: Vec<&Trial> = history.iter().filter(|t| t.loss.is_finite()).collect();
    let mut by_trial: Vec<&Trial> = finished.clone();
    by_trial.sort_by_key(|t| t.trial);
    let point = |t: &Trial| (t.trial as f64 + 1.0, natural(p.objective, t.loss));
    let mut best_so_far = vec![];
    let mut best = f64::INFINITY;
    for t in &by_trial {
        best = best.min(t.loss);
        best_so_far.push((t.trial as f64 + 1.0, natural(p.objective, best)));
    }
    let markers = |label: &str, pts: Vec<(f64, f64)>, faint: bool| Series {
        style: SeriesStyle::Markers,
        faint,
        ..Series::line(label, pts)
    };
    let legend = if p.objective == Objective::Accuracy {
        plotters::chart::SeriesLabelPosition::LowerRight
    } else {
        plotters::chart::SeriesLabelPosition::UpperRight
    };
    let chart = Chart {
        title: format!("sweep of {}: {} per trial", s.base.model, s.objective),
        log_x: false,
        integer_x: true,
        x_label: "trial".into(),
        y_label: obj_label.clone(),
        y_scale: YScale::Auto,
        series: vec![
            markers("complete", by_trial.iter().filter(|t| t.status == "complete").map(|t| point(t)).collect(), false),
            markers("pruned", by_trial.iter().filter(|t| t.status == "pruned").map(|t| point(t)).collect(), false),
            Series::line("best so far", best_so_far),
        ],
        legend: legend.clone(),
        fit_faint: true,
    };
    plot::line_chart(&chart, &out.join("objective"))?;
    for q in &p.space {
        let log_x = matches!(q.domain, Domain::LogUniform { .. } | Domain::LogInt { .. });
        let choice = match &q.domain {
            Domain::Choice(v) => Some(v.clone()),
            _ => None,
        };
        let x_of = |v: &Value| match &choice {
            Some(vals) => vals.iter().position(|c| c == v).map(|i| i as f64),
            None => v.as_f64(),
        };
        let pts = |status: &str| -> Vec<(f64, f64)> {
            finished
                .iter()
                .filter(|t| t.status == status)
                .filter_map(|t| Some((x_of(t.values.get(&q.name)?)?, natural(p.objective, t.loss))))
                .collect()
        };
        let x_label = match &choice {
            Some(vals) => format!(
                "{} ({})",
                q.name,
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| format!("{i} = {}", v.as_str().map(String::from).unwrap_or(v.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => q.name.clone(),
        };
        let chart = Chart {
            title: format!("{} against {}", s.objective, q.name),
            log_x,
            integer_x: choice.is_some(),
            x_label,
            y_label: obj_label.clone(),
            y_scale: YScale::Auto,
            series: vec![
                markers("complete", pts("complete"), false),
                markers("pruned (at its last rung)", pts("pruned"), true),
            ],
            legend: legend.clone(),
            fit_faint: true,
        };
        plot::line_chart(&chart, &out.join(format!("param_{}", q.name)))?;
    }
    // Learning curves: the ten best complete trials in colour, the stopped ones faint and grey.
    let mut complete: Vec<&Trial> = finished.iter().copied().filter(|t| t.status == "complete").collect();
    complete.sort_by(|a, b| a.loss.total_cmp(&b.loss));
    let shown = |v: f64| if p.objective == Objective::Loss { v } else { -100.0 * v };
    let curve = |t: &Trial| t.curve.iter().map(|&(st, v)| (st as f64, shown(v))).collect::<Vec<_>>();
    let mut series: Vec<Series> = history
        .iter()
        .filter(|t| t.status != "complete")
        .map(|t| Series {
            faint: true,
            style: SeriesStyle::LineMarkers,
            colour: Some(plotters::style::RGBColor(150, 150, 150)),
            ..Series::line("", curve(t))
        })
        .collect();
    if let Some(first) = series.first_mut() {
        first.label = "stopped".into();
    }
    series.extend(
        complete
            .iter()
            .take(10)
            .map(|t| Series::line(format!("trial {}: {}", t.trial + 1, show_values(&t.values)), curve(t))),
    );
    let metric = match p.objective {
        Objective::Loss => "evaluation loss",
        _ => "evaluation accuracy (%)",
    };
    let chart = Chart {
        title: format!("sweep of {}: learning curves of the best trials", s.base.model),
        // ASHA's rungs are geometric: a log axis spaces them evenly.
        log_x: p.asha,
        integer_x: false,
        x_label: if p.asha { "optimizer step (log scale)".into() } else { "optimizer step".into() },
        y_label: metric.into(),
        y_scale: YScale::Auto,
        series,
        legend,
        fit_faint: true,
    };
    plot::line_chart(&chart, &out.join("curves"))?;
    Ok(())
}

/// One seed of `descent bench sweep`: best validation accuracies (%), the share of steps TPE+ASHA
/// spent, seconds.
struct BenchRow {
    seed: u64,
    tpe: f64,
    tpe_frac: f64,
    tpe_s: f64,
    random: f64,
    random_s: f64,
    /// TPE+ASHA given the random search's epochs rather than its number of trials.
    tpe_budget: f64,
    default: f64,
}

/// `descent bench sweep`: for each seed, TPE proposals with ASHA stopping against random search
/// (no stopping) with the same number of trials, and the default Adam 1e-3 run alone; the best
/// validation accuracy of each and the steps each sweep spent.
pub fn bench(
    seeds: u64,
    trials: usize,
    epochs: usize,
    out: &Path,
    force: bool,
    parse: impl Fn(Vec<String>) -> Result<(SweepArgs, clap::ArgMatches)>,
) -> Result<()> {
    crate::flags::at_least_one(&[("--seeds", seeds), ("--trials", trials as u64), ("--epochs", epochs as u64)])?;
    // The folder is this command's (new, empty, or an earlier bench sweep's with --force): its
    // sweeps and runs then replace only themselves.
    let _claimed = folder::claim_new(out, folder::Kind::SweepBenchmark, force, false, None)?;
    let space = [
        "lr=loguniform:1e-4..1e-1",
        "weight_decay=loguniform:1e-5..1e-1",
        "schedule=choice:constant|cosine|warmup_cosine",
    ];
    let mut rows = vec![];
    for seed in 0..seeds {
        let best = |method: &str, pruner: &str, budget: Option<usize>| -> Result<(f64, f64, f64)> {
            let tag = if budget.is_some() { "-budget" } else { "" };
            let dir = out.join(format!("seed{seed}-{method}-{pruner}{tag}"));
            let mut args: Vec<String> = ["descent", "sweep", "--model", "mlp", "--optimizer", "adamw", "--force"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            for p in space {
                args.extend(["--param".into(), p.into()]);
            }
            // With an epoch budget: as many trials as fit in it (up to five times as many).
            let n = if budget.is_some() { 5 * trials } else { trials };
            if let Some(b) = budget {
                args.extend(["--max-total-epochs".into(), b.to_string()]);
            }
            args.extend([
                "--method".into(),
                method.into(),
                "--pruner".into(),
                pruner.into(),
                "--trials".into(),
                n.to_string(),
                "--epochs".into(),
                epochs.to_string(),
                "--seed".into(),
                seed.to_string(),
                "--out".into(),
                dir.display().to_string(),
            ]);
            let (a, m) = parse(args)?;
            let t0 = std::time::Instant::now();
            run(a, &m)?;
            let secs = t0.elapsed().as_secs_f64();
            let h = read_trials(&dir)?;
            let best = h.iter().map(|t| t.loss).fold(f64::INFINITY, f64::min);
            let full = (h.len() as u64 * h.iter().map(|t| t.steps).max().unwrap_or(1)) as f64;
            let spent: f64 = h.iter().map(|t| t.steps as f64).sum();
            Ok((-100.0 * best, spent / full.max(1.0), secs))
        };
        // The two timed sweeps take turns going first, so that neither always pays the
        // process's warm-up (the first data read, the threads' start).
        let ((tpe, tpe_frac, tpe_s), (random, _, random_s)) = if seed % 2 == 0 {
            let t = best("tpe", "asha", None)?;
            (t, best("random", "none", None)?)
        } else {
            let r = best("random", "none", None)?;
            (best("tpe", "asha", None)?, r)
        };
        let (tpe_budget, _, _) = best("tpe", "asha", Some(trials * epochs))?;
        // The default recipe alone, on the same validation split.
        let dir = out.join(format!("seed{seed}-default-adam"));
        let mut targs = TrainArgs::from_flags(&[
            "--model",
            "mlp",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--validation",
            "5000",
            "--force",
        ])?;
        (targs.epochs, targs.seed, targs.out) = (Some(epochs), seed, Some(dir));
        let o = train::execute(targs, RunOptions { quiet: true, ..Default::default() })?;
        let default = 100.0 * o.result().and_then(|e| e.test_accuracy).unwrap_or(f64::NAN);
        rows.push(BenchRow { seed, tpe, tpe_frac, tpe_s, random, random_s, tpe_budget, default });
    }
    println!("\nTPE + ASHA against random search, {trials} trials of AdamW on the MLP ({epochs} epochs each), and Adam 1e-3:");
    println!(
        "| seed | TPE+ASHA best val acc | steps spent | seconds | random best val acc | seconds | TPE+ASHA with random's epochs | Adam 1e-3 val acc |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.2}% | {:.0}% | {:.0} | {:.2}% | {:.0} | {:.2}% | {:.2}% |",
            r.seed,
            r.tpe,
            100.0 * r.tpe_frac,
            r.tpe_s,
            r.random,
            r.random_s,
            r.tpe_budget,
            r.default
        );
    }
    let mean = |f: fn(&BenchRow) -> f64| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
    println!(
        "| mean | {:.2}% | {:.0}% | {:.0} | {:.2}% | {:.0} | {:.2}% | {:.2}% |",
        mean(|r| r.tpe),
        100.0 * mean(|r| r.tpe_frac),
        mean(|r| r.tpe_s),
        mean(|r| r.random),
        mean(|r| r.random_s),
        mean(|r| r.tpe_budget),
        mean(|r| r.default)
    );
    for r in &rows {
        println!(
            "{}",
            serde_json::json!({"seed": r.seed, "tpe_asha_best": r.tpe, "tpe_asha_steps_fraction": r.tpe_frac,
                "tpe_asha_seconds": r.tpe_s, "random_best": r.random, "random_seconds": r.random_s,
                "tpe_asha_same_epochs_best": r.tpe_budget,
                "default_adam": r.default, "trials": trials, "epochs": epochs})
        );
    }
    Ok(())
}
