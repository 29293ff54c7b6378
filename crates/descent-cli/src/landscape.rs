//! `descent landscape`: optimizers on two-dimensional test functions, each path drawn over the
//! function's contour map, with a table of where they ended and how fast they got there.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use descent_core::landscape::{descend, steps_to_tolerance, TestFunction};
use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer};
use descent_core::Optimizer;
use descent_train::train::LrSchedule;
use serde_json::{Map, Value};

use crate::compare::parse_spec;
use crate::plot::{self, ContourMap};

/// The flags of `descent landscape`.
#[derive(clap::Args, Debug, Clone)]
pub struct LandscapeArgs {
    /// Test function: rosenbrock, beale, himmelblau, ill_conditioned, saddle, rastrigin
    /// (repeatable; default all).
    #[arg(long = "function", value_name = "NAME")]
    pub functions: Vec<String>,
    /// An optimizer: OPTIMIZER:key=value,… with lr, schedule (constant, cosine, warmup_cosine,
    /// onecycle, linear) and the optimizer's own arguments. Repeatable; default: SGD, momentum,
    /// Nesterov, Adagrad, RMSprop and Adam, with learning rates suited to each function.
    #[arg(long = "run", value_name = "SPEC")]
    pub runs: Vec<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// A path has converged once the function is within this of its minimum.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Folder for the pictures and the table (default: runs/landscape).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing folder.
    #[arg(long)]
    pub force: bool,
}

/// The default optimizers of a function: (SGD, momentum and Nesterov lr, Adagrad lr, RMSprop lr,
/// The most steps a path may take (each is kept in memory and drawn).
const MAX_STEPS: usize = 10_000_000;

/// Adam lr), steps that show each one's character in a few hundred steps.
fn default_runs(f: TestFunction) -> Vec<String> {
    let (sgd, adagrad, rmsprop, adam) = match f {
        TestFunction::Rosenbrock => (1e-3, 0.5, 0.01, 0.05),
        TestFunction::Beale => (1e-3, 0.3, 0.01, 0.05),
        TestFunction::Himmelblau => (5e-3, 0.5, 0.02, 0.1),
        TestFunction::IllConditioned => (0.03, 0.5, 0.02, 0.1),
        TestFunction::Saddle => (0.01, 0.1, 0.01, 0.02),
        TestFunction::Rastrigin => (2e-3, 0.5, 0.02, 0.1),
    };
    vec![
        format!("sgd:lr={sgd}"),
        format!("sgd:lr={sgd},momentum=0.9"),
        format!("sgd:lr={sgd},momentum=0.9,nesterov=true"),
        format!("adagrad:lr={adagrad}"),
        format!("rmsprop:lr={rmsprop}"),
        format!("adam:lr={adam}"),
    ]
}

/// An optimizer over one `[2]` parameter from a run spec, and the schedule that drives it.
fn build(spec: &Map<String, Value>, start: (f64, f64), what: &str) -> Result<(Optimizer, LrSchedule, Vec<f64>)> {
    let name = spec["optimizer"].as_str().unwrap_or_default();
    let (lib, name) = resolve_optimizer(name).with_context(|| what.to_string())?;
    if descent_core::closure::is_closure_optimizer(lib, &name) {
        bail!(
            "{what}: `{lib}.{name}` evaluates the objective itself (a closure-driven optimizer); a landscape path steps \
             on the surface's gradients alone"
        );
    }
    let mut h = Map::new();
    let mut schedule = LrSchedule::Constant;
    for (k, v) in spec {
        match k.as_str() {
            "optimizer" => {}
            "lr" => {
                let key = lr_key(lib);
                if key != "lr" && spec.contains_key(key) {
                    bail!("{what}: `lr` and `{key}` are the same setting; give one");
                }
                h.insert(key.to_string(), v.clone());
            }
            "schedule" => {
                let s = v.as_str().with_context(|| format!("{what}: `schedule` is a name"))?;
                // The schedules a path of steps takes (those stepped per epoch have no epochs here).
                const ACCEPTED: &str = "constant, cosine, warmup_cosine, onecycle or linear";
                schedule = LrSchedule::parse(s)
                    .map_err(|_| anyhow::anyhow!("{what}: unknown schedule `{s}`; accepted: {ACCEPTED}"))?;
                if matches!(
                    schedule,
                    LrSchedule::Plateau { .. } | LrSchedule::Exponential { .. } | LrSchedule::Step { .. }
                ) {
                    bail!("{what}: `{s}` is stepped per epoch; a landscape path has none (use {ACCEPTED})");
                }
            }
            _ => {
                h.insert(k.clone(), v.clone());
            }
        }
    }
    let shapes = vec![vec![2]];
    let tx = build_optimizer(lib, &name, &Value::Object(h), None, &shapes).with_context(|| what.to_string())?;
    let mut opt = Optimizer::new(tx, shapes, &[&[start.0 as f32, start.1 as f32]]).with_context(|| what.to_string())?;
    // A schedule sets the optimizer's learning rates between steps, as `train` does (not a scale
    // on its update: Prodigy's or schedule-free's state follows the rate); refused as `train`
    // refuses it where there is no constant rate to set.
    let base: Vec<f64> = opt.learning_rates().into_iter().collect::<Option<Vec<_>>>().unwrap_or_default();
    if schedule != LrSchedule::Constant && base.is_empty() {
        bail!(
            "{what}: `{lib}.{name}` has no constant learning rate a schedule can set (torch Rprop has none; a \
             schedule given as its rate already sets it)"
        );
    }
    Ok((opt, schedule, base))
}

/// One path's outcome.
struct PathRow {
    function: &'static str,
    label: String,
    end: (f64, f64),
    value: f64,
    steps_to_tol: Option<usize>,
    diverged: bool,
}

pub fn run(a: LandscapeArgs) -> Result<()> {
    let functions: Vec<TestFunction> = if a.functions.is_empty() {
        TestFunction::ALL.to_vec()
    } else {
        a.functions.iter().map(|f| TestFunction::parse(f)).collect::<descent_core::Result<_>>()?
    };
    for (i, f) in functions.iter().enumerate() {
        if functions[..i].contains(f) {
            bail!("--function {}: given twice", a.functions[i]);
        }
    }
    for (i, r) in a.runs.iter().enumerate() {
        if a.runs[..i].iter().any(|q| q.trim() == r.trim()) {
            bail!("--run `{r}`: given twice (each run once)");
        }
    }
    if a.steps == 0 || a.steps > MAX_STEPS {
        bail!("--steps {}: must be between 1 and {MAX_STEPS}", a.steps);
    }
    if !(a.tol > 0.0 && a.tol.is_finite()) {
        bail!("--tol {}: must be a positive number", a.tol);
    }
    // Every spec valid before anything is written.
    let mut plans = vec![];
    for &f in &functions {
        let specs = if a.runs.is_empty() { default_runs(f) } else { a.runs.clone() };
        let mut runs = vec![];
        for (i, s) in specs.iter().enumerate() {
            let m = parse_spec(s)?;
            build(&m, f.start(), &format!("run {} (`{s}`)", i + 1))?;
            runs.push((s.clone(), m));
        }
        plans.push((f, runs));
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/landscape"));
    let _claimed = crate::folder::claim_new(&out, crate::folder::Kind::Landscape, a.force, false, None)?;
    let mut rows = vec![];
    for (f, runs) in plans {
        let mut paths = vec![];
        for (label, m) in &runs {
            let (mut opt, schedule, base) = build(m, f.start(), label)?;
            let path = descend(&mut opt, f, f.start(), a.steps, |opt, t| {
                if schedule == LrSchedule::Constant {
                    return Ok(());
                }
                let m = schedule.multiplier(t, a.steps as u64, 1);
                opt.set_learning_rates(&base.iter().map(|r| r * m).collect::<Vec<_>>())
            })
            .with_context(|| label.clone())?;
            let end = *path.last().expect("the start at least");
            let diverged = !end.0.is_finite() || !end.1.is_finite();
            rows.push(PathRow {
                function: f.name(),
                label: label.clone(),
                end,
                value: f.value(end.0, end.1),
                steps_to_tol: steps_to_tolerance(f, &path, a.tol),
                diverged,
            });
            paths.push((label.clone(), path));
        }
        let (x0, x1, y0, y1) = f.domain();
        let map = ContourMap {
            title: format!("{}: {} ({} steps)", f.name(), f.formula(), a.steps),
            f: &|x, y| f.value(x, y),
            x: x0..x1,
            y: y0..y1,
            paths,
            marks: f.minima(),
        };
        plot::contour_map(&map, &out.join(f.name()))?;
    }
    write_table(&rows, &out, a.tol)?;
    println!("{}", std::fs::read_to_string(out.join("table.md"))?);
    println!("pictures (PNG and SVG) and table in {}", out.display());
    Ok(())
}

fn write_table(rows: &[PathRow], out: &std::path::Path, tol: f64) -> Result<()> {
    let mut md = format!(
        "| function | optimizer | end (x, y) | f(end) | steps to f − min ≤ {tol} |\n| --- | --- | --- | --- | --- |\n"
    );
    let mut csv = "function,optimizer,x,y,value,steps_to_tol,diverged\n".to_string();
    for r in rows {
        let steps = match (r.diverged, r.steps_to_tol) {
            (true, _) => "diverged".to_string(),
            (false, Some(s)) => s.to_string(),
            (false, None) => "—".to_string(),
        };
        md += &format!(
            "| {} | {} | ({}, {}) | {} | {steps} |\n",
            r.function,
            r.label,
            plot::tick(r.end.0),
            plot::tick(r.end.1),
            plot::tick(r.value)
        );
        csv += &format!(
            "{},{},{},{},{},{},{}\n",
            crate::runs::csv_field(r.function),
            crate::runs::csv_field(&r.label),
            r.end.0,
            r.end.1,
            r.value,
            r.steps_to_tol.map(|s| s.to_string()).unwrap_or_default(),
            r.diverged
        );
    }
    crate::folder::write_atomic(&out.join("table.md"), md.as_bytes())?;
    crate::folder::write_atomic(&out.join("table.csv"), csv.as_bytes())?;
    Ok(())
}
