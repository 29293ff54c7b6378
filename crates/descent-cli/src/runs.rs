//! Reading finished run folders back (per-step and per-epoch metrics, config) and drawing their
//! charts: what `descent compare` draws after its runs and `descent plot` redraws from folders.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evaluate::EvalSet;
use crate::folder::run;

use crate::plot::{self, Chart, Series, YScale};
use plotters::chart::SeriesLabelPosition;

/// One line of steps.jsonl (and a row of steps.csv): what `descent train` writes after each step
/// and `plot` / `compare` read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub epoch: usize,
    /// The batch's loss, as the model computed it (f32, written in its shortest form).
    #[serde(with = "exact_float::single")]
    pub loss: f32,
    /// NaN (`"NaN"` in JSON) where the optimizer has no single rate (`optax.chain`: its links').
    #[serde(with = "exact_float")]
    pub lr: f64,
    #[serde(with = "exact_float")]
    pub grad_norm: f64,
}

impl StepRow {
    pub const CSV_HEADER: &'static str = "step,epoch,loss,lr,grad_norm\n";

    pub fn csv(&self) -> String {
        format!("{},{},{},{},{}\n", self.step, self.epoch, self.loss, self.lr, self.grad_norm)
    }
}

/// One line of metrics.jsonl (and a row of metrics.csv): an epoch's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub steps: u64,
    #[serde(with = "exact_float")]
    pub train_loss: f64,
    #[serde(with = "exact_float")]
    pub test_loss: f64,
    /// `None` for regression.
    #[serde(default, with = "exact_float::option")]
    pub test_accuracy: Option<f64>,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// NaN (`"NaN"` in JSON) where the optimizer has no single rate, as in [`StepRow`].
    #[serde(with = "exact_float")]
    pub lr: f64,
    /// The averaged weights' test loss and accuracy (`descent train --ema`), once anything is
    /// averaged.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_float::option")]
    pub ema_test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_float::option")]
    pub ema_test_accuracy: Option<f64>,
    /// The same for `--swa-start` (after batch norm's statistics were recomputed at the run's end).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_float::option")]
    pub swa_test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_float::option")]
    pub swa_test_accuracy: Option<f64>,
}

impl EpochRow {
    /// Every field of the record, an empty cell where it has no value (the averaged weights'
    /// columns of a run without `--ema` or `--swa-start`).
    pub const CSV_HEADER: &'static str = "epoch,steps,train_loss,test_loss,test_accuracy,seconds,samples_per_s,lr,\
                                          ema_test_loss,ema_test_accuracy,swa_test_loss,swa_test_accuracy\n";

    pub fn csv(&self) -> String {
        let cell = |v: Option<f64>| v.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            self.epoch,
            self.steps,
            self.train_loss,
            self.test_loss,
            cell(self.test_accuracy),
            self.seconds,
            self.samples_per_s,
            self.lr,
            cell(self.ema_test_loss),
            cell(self.ema_test_accuracy),
            cell(self.swa_test_loss),
            cell(self.swa_test_accuracy)
        )
    }
}

/// One line of evals.jsonl: an evaluation inside an epoch (a sweep's rungs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub epoch: usize,
    pub step: u64,
    #[serde(with = "exact_float")]
    pub test_loss: f64,
    #[serde(default, with = "exact_float::option")]
    pub test_accuracy: Option<f64>,
}

/// One line of grad_norms.jsonl (`--log-grad-norms`): each parameter's gradient norm at a step, in
/// the model's order (input side first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradNormRow {
    pub step: u64,
    #[serde(with = "exact_float::named")]
    pub norms: Vec<(String, f64)>,
}

/// A float of a metrics record as descent writes it: a number, or where JSON has none the string
/// `"NaN"`, `"inf"` or `"-inf"` (the README's exact numbers); read back from those, and from the
/// `null` earlier descent wrote for any of them (as NaN: a loss that overflowed is drawn as a gap,
/// not refused).
pub(crate) mod exact_float {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        crate::json_float(*x).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_value(&Value::deserialize(d)?).map_err(D::Error::custom)
    }

    fn from_value(v: &Value) -> Result<f64, String> {
        read(v, f64::NAN)
    }

    /// A float as [`crate::json_float`] writes it, `null` (what earlier descent wrote for any
    /// non-finite value) reading as `null_as`.
    pub(crate) fn read(v: &Value, null_as: f64) -> Result<f64, String> {
        let bad = || format!("{v}: a number, \"NaN\", \"inf\" or \"-inf\"");
        match v {
            Value::Null => Ok(null_as),
            Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
            Value::String(s) => descent_core::json::non_finite_value(s).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// The same for a float32 field (a batch's loss).
    pub mod single {
        use super::*;

        pub fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
            match serde_json::Number::from_f64(*x as f64) {
                // Written as the f32 it is (its shortest form), not as the f64 it widens to.
                Some(_) => x.serialize(s),
                None => crate::json_float(*x as f64).serialize(s),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
            from_value(&Value::deserialize(d)?).map(|x| x as f32).map_err(D::Error::custom)
        }
    }

    /// The same for `(name, value)` pairs (each parameter's gradient norm).
    pub mod named {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
            v.iter().map(|(n, x)| (n, crate::json_float(*x))).collect::<Vec<_>>().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
            Vec::<(String, Value)>::deserialize(d)?
                .into_iter()
                .map(|(n, v)| from_value(&v).map(|x| (n, x)).map_err(D::Error::custom))
                .collect()
        }
    }

    /// The same for an optional float: `None` is `null`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            x.map(crate::json_float).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Value::deserialize(d)? {
                Value::Null => Ok(None),
                v => from_value(&v).map(Some).map_err(D::Error::custom),
            }
        }
    }
}

/// A record as one JSON line.
pub fn json_line<T: Serialize>(record: &T) -> String {
    format!("{}\n", serde_json::to_string(record).expect("records serialize"))
}

/// A run folder's metrics as read back.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    pub dir: PathBuf,
    pub label: String,
    pub steps: Vec<StepRow>,
    pub epochs: Vec<EpochRow>,
    /// Per-parameter gradient norms, when the run logged them.
    pub grad_norms: Vec<GradNormRow>,
    /// Problems met while reading (a truncated last line), one line each.
    pub warnings: Vec<String>,
    /// Drawn faint (a run that failed or was stopped early).
    pub faint: bool,
    /// What its evaluations are, by its model: the chart they are drawn in.
    pub evaluation: Evaluation,
}

/// The evaluations of a run, by its model and the set it is evaluated on: a classifier's
/// accuracy by epoch, a language model's loss estimates every few steps (validation loss in nats
/// per character, by step), the regression's loss by epoch; on the test set, or on the samples a
/// `--validation` run holds out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    Accuracy(EvalSet),
    ValLoss,
    Loss(EvalSet),
}

impl Evaluation {
    /// Of a run's config.json.
    fn of_config(config: &Value) -> Evaluation {
        let set =
            if config["validation"].as_u64().is_some_and(|n| n > 0) { EvalSet::Validation } else { EvalSet::Test };
        match config["model"].as_str() {
            Some("gpt") => Evaluation::ValLoss,
            Some("linear") => Evaluation::Loss(set),
            _ => Evaluation::Accuracy(set),
        }
    }
}

/// The complete records of a JSON-lines file (none if it is missing). A last line without its
/// newline or that does not parse (a run killed mid-write) is dropped with a warning; a bad line
/// before the end is an error.
pub fn read_records<T: serde::de::DeserializeOwned>(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    // A record is appended whole with its newline, so a kill mid-write leaves a last line without
    // one: that is dropped with a warning. A line that has its newline and does not read is not a
    // cut write but a damaged file, wherever it is.
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(v) if line.ends_with('\n') => out.push(v),
            _ if !line.ends_with('\n') => {
                warnings.push(format!(
                    "{}: line {} is incomplete (the run was stopped mid-write); read the {} lines before it",
                    path.display(),
                    i + 1,
                    i
                ));
            }
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
            Ok(_) => unreachable!("a line with its newline either reads or fails above"),
        }
    }
    Ok(out)
}

/// Reads a run folder (config.json, steps.jsonl, metrics.jsonl).
pub fn read_run(dir: &Path) -> Result<RunMetrics> {
    let cfg_path = dir.join(run::CONFIG_JSON);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: no {}, not a descent run folder", dir.display(), run::CONFIG_JSON))?,
    )
    .with_context(|| format!("{}: malformed", cfg_path.display()))?;
    let mut warnings = vec![];
    // Every run writes these two (grad_norms.jsonl only with --log-grad-norms): one missing
    // leaves its charts empty, which the reader is told.
    for name in [run::STEPS_JSONL, run::METRICS_JSONL] {
        if !dir.join(name).exists() {
            warnings.push(if name == run::METRICS_JSONL && dir.join(run::STEPS_JSONL).exists() {
                format!(
                    "{}: no {name}: it stopped before its first epoch's end (a trial ASHA pruned, or a run stopped \
                     early): its training curves are drawn, no evaluation",
                    dir.display()
                )
            } else {
                format!("{}: no {name}; nothing of it to draw", dir.display())
            });
        }
    }
    let steps = read_records(&dir.join(run::STEPS_JSONL), &mut warnings)?;
    let epochs = read_records(&dir.join(run::METRICS_JSONL), &mut warnings)?;
    let grad_norms = read_records(&dir.join(run::GRAD_NORMS_JSONL), &mut warnings)?;
    Ok(RunMetrics {
        dir: dir.to_path_buf(),
        label: label(&config),
        steps,
        epochs,
        grad_norms,
        warnings,
        faint: false,
        evaluation: Evaluation::of_config(&config),
    })
}

/// A field of a CSV table as RFC 4180 writes it: quoted when it holds a comma, a quote or a line
/// break, with quotes doubled inside (every table.csv the tool writes goes through this).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A short name for a run from its config: the optimizer, learning rate, optimizer arguments and
/// whatever else departs from the defaults (schedule, batch size, penalties, clipping).
/// The settings [`label`] names beside the optimizer and its arguments.
pub const LABELLED_SETTINGS: &[&str] = &["lr", "schedule", "l1", "l2", "batch_size", "clip_norm", "clip_value"];

pub fn label(c: &Value) -> String {
    let mut parts = vec![c["optimizer"].as_str().unwrap_or("?").to_string()];
    let fmt = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(lr) = c.get("lr").filter(|v| !v.is_null()) {
        parts.push(format!("lr={}", fmt(lr)));
    }
    if let Some(h) = c["hparams"].as_object() {
        parts.extend(h.iter().map(|(k, v)| format!("{k}={}", fmt(v))));
    }
    if c["schedule"].as_str().is_some_and(|s| s != "constant") {
        parts.push(format!("schedule={}", fmt(&c["schedule"])));
    }
    for (key, default) in [("l1", 0.0), ("l2", 0.0)] {
        if c[key].as_f64().is_some_and(|v| v != default) {
            parts.push(format!("{key}={}", fmt(&c[key])));
        }
    }
    for key in ["batch_size", "clip_norm", "clip_value"] {
        if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
            if key != "batch_size" || Some(v) != default_batch(c).as_ref() {
                parts.push(format!("{key}={}", fmt(v)));
            }
        }
    }
    parts.join(" ")
}

fn default_batch(c: &Value) -> Option<Value> {
    let model = c["model"].as_str()?;
    Some(Value::from(crate::train::defaults(model).1))
}

/// The run folders under `dir`: itself if it is a run folder, else those in its `runs/` (a
/// compare folder) or `trials/` (a sweep folder), in name order.
pub fn expand(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::folder::require_dir(dir, "a run, compare or sweep folder")?;
    if dir.join(run::CONFIG_JSON).exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let Some(sub) = ["runs", "trials"].iter().map(|s| dir.join(s)).find(|d| d.is_dir()) else {
        bail!("{}: neither a run folder (config.json) nor a compare (runs/) or sweep (trials/) folder", dir.display());
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&sub)
        .with_context(|| format!("reading {}", sub.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(run::CONFIG_JSON).exists())
        .collect();
    found.sort();
    if found.is_empty() {
        bail!("{}: no run folders", sub.display());
    }
    Ok(found)
}

/// The label and whether it failed of each run of the compare folder `dir` (by its folder's name
/// in `runs/`), as its `compare.json` records them; nothing for another folder. A `compare.json`
/// that does not read, or a run it records without its label, folder or status, is said in a
/// warning and those runs keep the labels of their settings.
pub fn compare_labels(dir: &Path) -> std::collections::HashMap<String, (String, bool)> {
    let path = dir.join("compare.json");
    let mut out = std::collections::HashMap::new();
    if !(path.is_file() && dir.join("runs").is_dir()) {
        return out;
    }
    let v: Value = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("warning: {}: {e}; its runs are labelled by their settings", path.display());
            return out;
        }
    };
    for r in v["runs"].as_array().into_iter().flatten() {
        match (r["label"].as_str(), r["dir"].as_str(), r["status"].as_str()) {
            (Some(label), Some(dir), Some(status)) => {
                if let Some(name) = Path::new(dir).file_name() {
                    out.insert(name.to_string_lossy().into_owned(), (label.to_string(), status.starts_with("failed")));
                }
            }
            _ => eprintln!(
                "warning: {}: a run without its label, folder or status ({r}); it is labelled by its settings",
                path.display()
            ),
        }
    }
    out
}

/// The stems of the charts [`draw`] writes (each as PNG and SVG): the files of a compare or plot
/// folder that `--force` replaces.
pub const CHART_STEMS: &[&str] = &[
    "loss",
    "grad_norm",
    "lr",
    "grad_norm_by_layer",
    "accuracy",
    "val_accuracy",
    "val_loss",
    "test_loss",
    "val_loss_by_epoch",
];

/// The charts of a set of runs into `out`: training loss and gradient norm per step (smoothed,
/// raw faint beneath), learning rate per step, test accuracy (or test loss, for regression) per
/// epoch. Returns the files written.
pub fn draw(runs: &[RunMetrics], out: &Path, title: &str) -> Result<Vec<PathBuf>> {
    let mut files = vec![];
    let per_step = |f: fn(&StepRow) -> f64, smoothed: bool| -> Vec<Series> {
        runs.iter()
            .map(|r| {
                let raw: Vec<(f64, f64)> = r.steps.iter().map(|s| (s.step as f64, f(s))).collect();
                let weight = if smoothed { smoothing_weight(raw.len()) } else { 0.0 };
                let mut s = Series::line(&r.label, plot::smooth(&raw, weight));
                if smoothed && weight > 0.0 {
                    s.raw = raw;
                }
                s.faint = r.faint;
                s
            })
            .collect()
    };
    let charts = [
        (
            "loss",
            format!("{title}: training loss"),
            "loss (smoothed; raw faint)",
            per_step(|s| s.loss as f64, true),
            YScale::Auto,
        ),
        (
            "grad_norm",
            format!("{title}: gradient norm"),
            "global L2 norm of the gradient",
            per_step(|s| s.grad_norm, true),
            YScale::Auto,
        ),
        ("lr", format!("{title}: learning rate"), "learning rate", per_step(|s| s.lr, false), YScale::Auto),
    ];
    for (name, t, y, series, scale) in charts {
        let chart = Chart {
            title: t,
            log_x: false,
            integer_x: false,
            x_label: "optimizer step".into(),
            y_label: y.into(),
            y_scale: scale,
            series,
            legend: SeriesLabelPosition::UpperRight,
            fit_faint: false,
        };
        debug_assert!(CHART_STEMS.contains(&name), "{name} is not among CHART_STEMS");
        files.extend(plot::line_chart(&chart, &out.join(name))?);
    }
    if runs.iter().any(|r| !r.grad_norms.is_empty()) {
        files.extend(plot::line_chart(&grad_norms_by_layer(runs, title), &out.join("grad_norm_by_layer"))?);
    }
    // The evaluation charts, one per kind of run among those drawn (by model and evaluation set),
    // each with its own runs: a run with no evaluation yet (failed or stopped in its first epoch)
    // keeps its place.
    use Evaluation as Kind;
    let (test, validation) = (EvalSet::Test, EvalSet::Validation);
    let kind = |r: &RunMetrics| r.evaluation;
    for k in [Kind::Accuracy(test), Kind::Accuracy(validation), Kind::ValLoss, Kind::Loss(test), Kind::Loss(validation)]
    {
        let of_kind: Vec<&RunMetrics> = runs.iter().filter(|r| kind(r) == k).collect();
        if of_kind.is_empty() {
            continue;
        }
        let series = of_kind
            .iter()
            .map(|r| {
                let pts = r
                    .epochs
                    .iter()
                    .map(|e| match k {
                        Kind::Accuracy(_) => (e.epoch as f64, 100.0 * e.test_accuracy.unwrap_or(f64::NAN)),
                        Kind::ValLoss => (e.steps as f64, e.test_loss),
                        Kind::Loss(_) => (e.epoch as f64, e.test_loss),
                    })
                    .collect();
                Series { style: plot::SeriesStyle::LineMarkers, faint: r.faint, ..Series::line(&r.label, pts) }
            })
            .collect();
        let (name, t, y) = match k {
            Kind::Accuracy(EvalSet::Test) => {
                ("accuracy", format!("{title}: test accuracy"), "test accuracy (%)".into())
            }
            Kind::Accuracy(EvalSet::Validation) => {
                ("val_accuracy", format!("{title}: validation accuracy"), "validation accuracy (%)".into())
            }
            Kind::ValLoss => ("val_loss", format!("{title}: validation loss"), "validation loss (nats/char)".into()),
            Kind::Loss(EvalSet::Test) => ("test_loss", format!("{title}: test loss"), "test loss".to_string()),
            Kind::Loss(EvalSet::Validation) => {
                ("val_loss_by_epoch", format!("{title}: validation loss"), "validation loss".into())
            }
        };
        let (legend, y_scale) = match k {
            Kind::Accuracy(_) => (SeriesLabelPosition::LowerRight, YScale::Linear),
            _ => (SeriesLabelPosition::UpperRight, YScale::Auto),
        };
        let chart = Chart {
            title: t,
            log_x: false,
            integer_x: true,
            x_label: if k == Kind::ValLoss { "optimizer step".into() } else { "epoch".into() },
            y_label: y,
            y_scale,
            series,
            legend,
            fit_faint: false,
        };
        debug_assert!(CHART_STEMS.contains(&name), "{name} is not among CHART_STEMS");
        files.extend(plot::line_chart(&chart, &out.join(name))?);
    }
    Ok(files)
}

/// Each weight matrix's gradient norm by depth (its index among the weights, input side first),
/// averaged over the last tenth of each run's steps: where gradients vanish.
fn grad_norms_by_layer(runs: &[RunMetrics], title: &str) -> Chart {
    // Weights of layers, not of normalizations (whose scale tells another story).
    let is_layer = |n: &str| n.ends_with("weight") && !n.contains("bn") && !n.contains("norm") && !n.contains("ln");
    let series = runs
        .iter()
        .filter(|r| !r.grad_norms.is_empty())
        .map(|r| {
            let n = r.grad_norms.len();
            let tail = &r.grad_norms[n - (n / 10).max(1)..];
            let names: Vec<&str> = tail[0].norms.iter().map(|(k, _)| k.as_str()).filter(|k| is_layer(k)).collect();
            let pts = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let vals: Vec<f64> = tail
                        .iter()
                        .filter_map(|row| row.norms.iter().find(|(k, _)| k == name).map(|(_, v)| *v))
                        .collect();
                    (i as f64 + 1.0, vals.iter().sum::<f64>() / vals.len().max(1) as f64)
                })
                .collect();
            Series { style: plot::SeriesStyle::LineMarkers, faint: r.faint, ..Series::line(&r.label, pts) }
        })
        .collect();
    Chart {
        title: format!("{title}: gradient norm by depth"),
        log_x: false,
        integer_x: true,
        x_label: "weight layer (input side first)".into(),
        y_label: "gradient L2 norm (mean of the last 10% of steps)".into(),
        y_scale: YScale::Auto,
        series,
        legend: SeriesLabelPosition::UpperRight,
        fit_faint: false,
    }
}

/// TensorBoard-like smoothing that keeps about the last 2% of a run's steps in its memory.
fn smoothing_weight(n: usize) -> f64 {
    if n < 20 {
        0.0
    } else {
        (1.0 - 1.0 / (0.02 * n as f64).max(2.0)).min(0.99)
    }
}
