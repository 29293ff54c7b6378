//! Replay of reference cases: recorded trajectories of torch and optax optimizers and schedules (the
//! files under `shared/reference`), how to run them through descent, and the pass rule.
//!
//! Three kinds: gradient sequences ([`OptimCase`]: the gradients of each step are recorded),
//! problems ([`ProblemCase`]: the optimizer evaluates an objective where it chooses) and schedules
//! ([`ScheduleCase`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::closure::{build_closure_optimizer, ClosureOptimizer, Problem, Rosenbrock, SoftmaxRegression};
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::schedule::check_steps;
use crate::sparse::SparseRows;
use crate::spec::{build_optimizer, build_schedule, ScheduleSpec};
use crate::transform::shape_numel;

/// An optimizer case: parameters, gradients per step, expected parameters per step.
#[derive(Debug, Clone)]
pub struct OptimCase {
    /// The case's id (`library.optimizer.variant`).
    pub id: String,
    /// The library the case was recorded from (`torch`, `optax`, `po`).
    pub library: String,
    /// The optimizer's name in that library.
    pub optimizer: String,
    /// The optimizer's keyword arguments.
    pub hparams: Value,
    /// torch-style parameter groups, if any.
    pub param_groups: Option<Value>,
    /// Each parameter's shape.
    pub shapes: Vec<Vec<usize>>,
    /// Each parameter's initial values.
    pub init: Vec<Vec<f32>>,
    /// The gradients fed at each step, per parameter.
    pub grads: Vec<Vec<Vec<f32>>>,
    /// The parameters the library reported after each step.
    pub expected: Vec<Vec<Vec<f32>>>,
    /// `inject_hyperparams` cases: the learning rate set before each step.
    pub lr_per_step: Option<Vec<f64>>,
    /// How the gradients reach the optimizer when they are sparse.
    pub sparse_grads: Option<SparseGrads>,
    /// Relative tolerance of the pass rule.
    pub rel: f64,
    /// Absolute tolerance of the pass rule.
    pub abs: f64,
}

/// The layout of a case's sparse gradients (its `sparse_grads` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseGrads {
    /// `"rows"`: each gradient holds only the rows (slices along the first axis) that are not
    /// entirely zero.
    Rows,
}

/// A schedule case: the learning rate in force at each step.
#[derive(Debug, Clone)]
pub struct ScheduleCase {
    /// The case's id (`library.optimizer.variant`).
    pub id: String,
    /// The library the case was recorded from (`torch`, `optax`, `po`).
    pub library: String,
    /// The schedule's name in its library.
    pub schedule: String,
    /// The optimizer's learning rate a torch scheduler scales.
    pub base_lr: Option<f64>,
    /// The schedule's keyword arguments.
    pub kwargs: Value,
    /// The metric fed to `ReduceLROnPlateau` at each step.
    pub metrics: Option<Vec<f64>>,
    /// The learning rate the library gave at each step.
    pub expected_lr: Vec<f64>,
}

/// A problem case: the optimizer evaluates an objective (and its gradient) wherever its algorithm
/// chooses, from `init`; `expected[t]` are the parameters after step `t`.
#[derive(Debug, Clone)]
pub struct ProblemCase {
    /// The case's id (`library.optimizer.variant`).
    pub id: String,
    /// The library the case was recorded from (`torch`, `optax`, `po`).
    pub library: String,
    /// The optimizer's name in that library.
    pub optimizer: String,
    /// The optimizer's keyword arguments.
    pub hparams: Value,
    /// The objective (`problem`), whose parameter shapes are the case's.
    pub problem: Problem,
    /// Each parameter's shape.
    pub shapes: Vec<Vec<usize>>,
    /// Each parameter's initial values.
    pub init: Vec<Vec<f32>>,
    /// The parameters the library reported after each step.
    pub expected: Vec<Vec<Vec<f32>>>,
    /// The objective at `expected[t]`, computed in `f64` from the `f32` values.
    pub expected_loss: Option<Vec<f64>>,
    /// Relative tolerance of the pass rule.
    pub rel: f64,
    /// Absolute tolerance of the pass rule.
    pub abs: f64,
}

/// One reference file.
#[derive(Debug, Clone)]
pub enum Case {
    /// An optimizer fed recorded gradients.
    Optim(OptimCase),
    /// An optimizer that evaluates a defined objective.
    Problem(ProblemCase),
    /// A learning-rate schedule.
    Schedule(ScheduleCase),
}

impl Case {
    /// The case's id.
    pub fn id(&self) -> &str {
        match self {
            Case::Optim(c) => &c.id,
            Case::Problem(c) => &c.id,
            Case::Schedule(c) => &c.id,
        }
    }
}

struct Fields<'a> {
    path: String,
    v: &'a Value,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::File { path: self.path.clone(), message: format!("field `{field}`: {msg}") }
    }
    fn get(&self, field: &str) -> Result<&'a Value> {
        self.v.get(field).ok_or_else(|| self.err(field, "missing"))
    }
    fn str(&self, field: &str) -> Result<String> {
        self.get(field)?.as_str().map(str::to_string).ok_or_else(|| self.err(field, "expected a string"))
    }
    /// The fields of the object in `field`, named `field.key` in errors.
    fn object(&self, field: &str) -> Result<Fields<'a>> {
        let v = self.get(field)?;
        if !v.is_object() {
            return Err(self.err(field, format!("expected an object, got {}", excerpt(v))));
        }
        Ok(Fields { path: self.path.clone(), v })
    }
    /// A positive integer that fits in memory.
    fn positive(&self, field: &str, name: &str) -> Result<usize> {
        let x = self.get(name).map_err(|_| self.err(field, "missing"))?;
        x.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x > 0)
            .ok_or_else(|| self.err(field, format!("{} is not a positive integer", excerpt(x))))
    }
    /// The tolerances of the pass rule, `tolerance.rel` and `tolerance.abs`.
    fn tolerances(&self) -> Result<(f64, f64)> {
        let tol = self.get("tolerance")?;
        if let Some(other) = tol.as_object().and_then(|t| t.keys().find(|k| *k != "rel" && *k != "abs")) {
            return Err(self.err(&format!("tolerance.{other}"), "is not a tolerance of the pass rule (`rel`, `abs`)"));
        }
        let tolerance = |key: &str| {
            let field = format!("tolerance.{key}");
            tol.get(key)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| self.err(&field, "missing or not a number"))
                .and_then(|x| if x >= 0.0 { Ok(x) } else { Err(self.err(&field, format!("{x} is negative"))) })
        };
        Ok((tolerance("rel")?, tolerance("abs")?))
    }
    /// A non-negative number; `None` when absent or null.
    fn opt_count(&self, field: &str) -> Result<Option<u64>> {
        match self.v.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("{} is not a non-negative integer", excerpt(x)))),
        }
    }
    /// A non-empty list.
    fn list(&self, field: &str) -> Result<&'a Vec<Value>> {
        let a = self.get(field)?.as_array().ok_or_else(|| self.err(field, "expected a list"))?;
        if a.is_empty() {
            return Err(self.err(field, "is empty"));
        }
        Ok(a)
    }
    fn f32s(&self, field: &str, v: &Value) -> Result<Vec<f32>> {
        v.as_array()
            .ok_or_else(|| self.err(field, "expected a list of numbers"))?
            .iter()
            .map(|x| {
                let f = x.as_f64().ok_or_else(|| self.err(field, format!("{} is not a number", excerpt(x))))?;
                // A finite number past f32's range would be read as ±inf (a case is in float32).
                match f as f32 {
                    v if v.is_infinite() => {
                        Err(self.err(field, format!("{x} is outside float32's range (±{:e})", f32::MAX)))
                    }
                    v => Ok(v),
                }
            })
            .collect()
    }
    fn f64s(&self, field: &str, v: &Value) -> Result<Vec<f64>> {
        v.as_array()
            .ok_or_else(|| self.err(field, "expected a list of numbers"))?
            .iter()
            .map(|x| x.as_f64().ok_or_else(|| self.err(field, format!("{} is not a number", excerpt(x)))))
            .collect()
    }
    /// `[[[f32] per parameter] per step]`, at least one step, each parameter checked against the
    /// element counts of the shapes.
    fn steps(&self, field: &str, shapes: &[Vec<usize>], sizes: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        let arr = self.get(field)?.as_array().ok_or_else(|| self.err(field, "expected a list of steps"))?;
        if arr.is_empty() {
            return Err(self.err(field, "has no steps"));
        }
        arr.iter()
            .enumerate()
            .map(|(t, step)| {
                let ps = step
                    .as_array()
                    .ok_or_else(|| self.err(&format!("{field}[{t}]"), "expected a list of parameters"))?;
                if ps.len() != shapes.len() {
                    return Err(self.err(
                        &format!("{field}[{t}]"),
                        format!("has {} tensors, the case has {} parameters", ps.len(), shapes.len()),
                    ));
                }
                ps.iter()
                    .zip(shapes.iter().zip(sizes))
                    .enumerate()
                    .map(|(i, (p, (s, &n)))| {
                        let f = format!("{field}[{t}][{i}]");
                        let v = self.f32s(&f, p)?;
                        if v.len() != n {
                            return Err(self.err(&f, format!("has {} values, shape {s:?} needs {n}", v.len())));
                        }
                        Ok(v)
                    })
                    .collect()
            })
            .collect()
    }
}

/// The library of a case: the first component of its `id` (`torch`, `optax`, `po`, `descent`).
/// A `source` that names another library (its first word: `torch`, `optax` or
/// `pytorch_optimizer`) contradicts it and is refused.
fn library_of(f: &Fields, id: &str) -> Result<String> {
    let library = id.split('.').next().unwrap_or("");
    match f.v.get("source") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let named = match s.split_whitespace().next() {
                Some("torch") => Some("torch"),
                Some("optax") => Some("optax"),
                Some("pytorch_optimizer") => Some("po"),
                _ => None,
            };
            if let Some(named) = named.filter(|&n| n != library) {
                return Err(
                    f.err("source", format!("names {named}'s {s:?}, but `id` {id:?} names library {library:?}"))
                );
            }
        }
        Some(other) => return Err(f.err("source", format!("expected a string, got {}", excerpt(other)))),
    }
    Ok(library.to_string())
}

/// A case's `hparams`: an object of keyword arguments (absent: none).
fn hparams_of(f: &Fields) -> Result<Value> {
    match f.v.get("hparams") {
        None => Ok(Value::Object(Default::default())),
        Some(h @ Value::Object(_)) => Ok(h.clone()),
        Some(other) => {
            Err(f.err("hparams", format!("expected an object of keyword arguments, got {}", excerpt(other))))
        }
    }
}

/// A JSON value for a message, cut to a few dozen characters (a case's lists run to millions).
fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((at, _)) => format!("{}… ({} characters)", &s[..at], s.len()),
        None => s,
    }
}

/// Parses a reference case from JSON text; `path` names it in errors. Everything a replay relies
/// on is checked here, before any optimizer is built or buffer allocated: every shape against the
/// values given (with checked arithmetic), every step's tensors against the shapes, the recorded
/// step count against the data, the tolerances. A malformed case is an error naming its field.
pub fn parse_case(path: &str, text: &str) -> Result<Case> {
    let v: Value = crate::json::parse_strict(text).map_err(|e| {
        // Writers that emit NaN or Infinity write what JSON cannot hold.
        let hint = if ["NaN", "Infinity"].iter().any(|w| text.contains(w)) {
            " (JSON has no NaN or Infinity: a case holds finite numbers)"
        } else {
            ""
        };
        Error::File { path: path.into(), message: format!("malformed JSON: {e}{hint}") }
    })?;
    if !v.is_object() {
        return Err(Error::File { path: path.into(), message: "expected a JSON object".into() });
    }
    let f = Fields { path: path.into(), v: &v };
    let id = f.str("id")?;
    // The id is printed in every report line: no control or bidirectional-override characters
    // that would forge or garble one.
    if let Some(c) = id
        .chars()
        .find(|&c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c))
    {
        return Err(f.err("id", format!("contains the character {:?}: an id is printed in reports", c)));
    }
    let library = library_of(&f, &id)?;
    // Replays run in float32, the precision every recorded case states (or leaves unsaid).
    match v.get("dtype") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if d == "float32" => {}
        Some(other) => return Err(f.err("dtype", format!("{other}: replays run in \"float32\" only"))),
    }
    let steps = f.opt_count("steps")?;
    if v.get("expected_lr").is_some() || v.get("schedule").is_some() {
        // A case is one kind or the other: an optimizer's fields here would be ignored.
        if let Some(k) = OPTIMIZER_FIELDS.iter().find(|k| v.get(**k).is_some()) {
            let why = if *k == "tolerance" {
                "belongs to an optimizer case: a schedule case's pass rule is fixed (|ours − expected| ≤ 1e-6·max(1, |expected|))"
            } else {
                "belongs to an optimizer case, and this one is a schedule case (it has `expected_lr` or `schedule`): a case file holds one kind"
            };
            return Err(f.err(k, why));
        }
        let expected_lr = f.f64s("expected_lr", f.get("expected_lr")?)?;
        if expected_lr.is_empty() {
            return Err(f.err("expected_lr", "is empty"));
        }
        let n = expected_lr.len();
        if let Some(s) = steps.filter(|&s| s != n as u64) {
            return Err(f.err("steps", format!("is {s} but `expected_lr` has {n} learning rates")));
        }
        let metrics = match v.get("metrics") {
            None | Some(Value::Null) => None,
            Some(m) => Some(f.f64s("metrics", m)?),
        };
        // One metric per step; the last one (after the last step) is never read.
        if let Some(m) = metrics.as_ref().filter(|m| m.len() != n && m.len() + 1 != n) {
            return Err(f.err("metrics", format!("has {} values for {n} steps", m.len())));
        }
        let base_lr = match v.get("base_lr") {
            None | Some(Value::Null) => None,
            // optax schedules hold their rates in their arguments; a base rate would be ignored.
            Some(_) if library == "optax" => {
                return Err(f.err("base_lr", "an optax schedule takes its rates from `kwargs`, not a base rate"))
            }
            Some(b) => match b.as_f64() {
                // torch's optimizers refuse a negative rate ("Invalid learning rate").
                Some(x) if x < 0.0 => return Err(f.err("base_lr", format!("{x} is negative (torch refuses it)"))),
                Some(x) => Some(x),
                None => return Err(f.err("base_lr", "expected a number")),
            },
        };
        let kwargs = v.get("kwargs").cloned().unwrap_or(Value::Null);
        if !(kwargs.is_object() || kwargs.is_null()) {
            return Err(f.err("kwargs", "expected an object of keyword arguments"));
        }
        return Ok(Case::Schedule(ScheduleCase {
            id,
            library,
            schedule: f.str("schedule")?,
            base_lr,
            kwargs,
            metrics,
            expected_lr,
        }));
    }
    if let Some(k) = SCHEDULE_FIELDS.iter().find(|k| v.get(**k).is_some()) {
        return Err(f.err(
            k,
            "belongs to a schedule case, and this one is an optimizer case (it has no `schedule`): a case file holds one kind",
        ));
    }
    let params = f.list("params")?;
    let mut shapes = vec![];
    let mut sizes = vec![];
    let mut init = vec![];
    for (i, p) in params.iter().enumerate() {
        if let Some(other) = p.as_object().and_then(|p| p.keys().find(|k| *k != "shape" && *k != "init")) {
            return Err(f.err(
                &format!("params[{i}].{other}"),
                "is not a field of a parameter (`shape`, `init`; replays run in float32)",
            ));
        }
        let field = format!("params[{i}].shape");
        let shape: Vec<usize> = p
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| f.err(&field, "missing or not a list"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| f.err(&field, format!("{d} is not a dimension")))
            })
            .collect::<Result<_>>()?;
        let n = shape_numel(&shape).map_err(|e| match e {
            Error::Shape(m) => f.err(&field, m),
            other => f.err(&field, other),
        })?;
        let field = format!("params[{i}].init");
        let vals = f.f32s(&field, p.get("init").ok_or_else(|| f.err(&field, "missing"))?)?;
        if vals.len() != n {
            return Err(f.err(&field, format!("has {} values, shape {shape:?} needs {n}", vals.len())));
        }
        shapes.push(shape);
        sizes.push(n);
        init.push(vals);
    }
    if v.get("problem").is_some_and(|p| !p.is_null()) {
        return parse_problem_case(&f, id, library, steps, shapes, sizes, init).map(Case::Problem);
    }
    if f.v.get("expected_loss").is_some() {
        return Err(f.err(
            "expected_loss",
            "belongs to a problem case (one with a `problem` objective); this case replays recorded gradients",
        ));
    }
    let mut grads = f.steps("grads", &shapes, &sizes)?;
    // `[step, parameter, element]` triples: JSON holds a placeholder where the gradient is NaN.
    if let Some(nan) = v.get("nan_grads").filter(|n| !n.is_null()) {
        let nan = nan.as_array().ok_or_else(|| f.err("nan_grads", "expected a list of [step, parameter, element]"))?;
        for (k, e) in nan.iter().enumerate() {
            let field = format!("nan_grads[{k}]");
            let ix: Vec<usize> = e
                .as_array()
                .filter(|a| a.len() == 3)
                .and_then(|a| a.iter().map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok())).collect())
                .ok_or_else(|| f.err(&field, format!("expected [step, parameter, element], got {e}")))?;
            let slot = grads
                .get_mut(ix[0])
                .and_then(|s| s.get_mut(ix[1]))
                .and_then(|p| p.get_mut(ix[2]))
                .ok_or_else(|| f.err(&field, format!("{e} is outside the gradients")))?;
            *slot = f32::NAN;
        }
    }
    if let Some(s) = steps.filter(|&s| s != grads.len() as u64) {
        return Err(f.err("steps", format!("is {s} but `grads` has {} steps", grads.len())));
    }
    let expected = f.steps("expected", &shapes, &sizes)?;
    if grads.len() != expected.len() {
        return Err(f.err("expected", format!("has {} steps but `grads` has {}", expected.len(), grads.len())));
    }
    let (rel, abs) = f.tolerances()?;
    let lr_per_step = match v.get("lr_per_step") {
        None | Some(Value::Null) => None,
        Some(l) => {
            let l = f.f64s("lr_per_step", l)?;
            if l.len() != grads.len() {
                return Err(f.err("lr_per_step", format!("has {} rates for {} steps", l.len(), grads.len())));
            }
            if let Some(x) = l.iter().find(|x| !x.is_finite()) {
                return Err(f.err("lr_per_step", format!("{x} is not finite")));
            }
            Some(l)
        }
    };
    let sparse_grads = match v.get("sparse_grads") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "rows" => Some(SparseGrads::Rows),
        Some(other) => return Err(f.err("sparse_grads", format!("{other} is not a known layout (\"rows\")"))),
    };
    Ok(Case::Optim(OptimCase {
        id,
        library,
        optimizer: f.str("optimizer")?,
        hparams: hparams_of(&f)?,
        param_groups: v.get("param_groups").filter(|g| !g.is_null()).cloned(),
        shapes,
        init,
        grads,
        expected,
        lr_per_step,
        sparse_grads,
        rel,
        abs,
    }))
}

/// The rest of a problem case, after its parameters: the objective (`problem`), which must take
/// parameters of the case's shapes, the expected trajectory and losses, the tolerances. The
/// fields of gradient-sequence cases are refused: an optimizer that evaluates the objective is
/// handed no gradients.
fn parse_problem_case(
    f: &Fields,
    id: String,
    library: String,
    steps: Option<u64>,
    shapes: Vec<Vec<usize>>,
    sizes: Vec<usize>,
    init: Vec<Vec<f32>>,
) -> Result<ProblemCase> {
    for field in ["grads", "nan_grads", "sparse_grads", "lr_per_step", "param_groups"] {
        if f.v.get(field).is_some_and(|x| !x.is_null()) {
            return Err(f.err(field, "a problem case evaluates its objective; it takes no recorded gradients"));
        }
    }
    let problem = parse_problem(f)?;
    if problem.shapes() != shapes {
        return Err(f.err(
            "params",
            format!(
                "the {} problem takes parameters of shapes {:?}, the case has {shapes:?}",
                problem.kind(),
                problem.shapes()
            ),
        ));
    }
    let expected = f.steps("expected", &shapes, &sizes)?;
    if let Some(s) = steps.filter(|&s| s != expected.len() as u64) {
        return Err(f.err("steps", format!("is {s} but `expected` has {} steps", expected.len())));
    }
    let expected_loss = match f.v.get("expected_loss") {
        None | Some(Value::Null) => None,
        Some(l) => {
            let l = f.f64s("expected_loss", l)?;
            if l.len() != expected.len() {
                return Err(f.err("expected_loss", format!("has {} values for {} steps", l.len(), expected.len())));
            }
            Some(l)
        }
    };
    let (rel, abs) = f.tolerances()?;
    Ok(ProblemCase {
        id,
        library,
        optimizer: f.str("optimizer")?,
        hparams: hparams_of(f)?,
        problem,
        shapes,
        init,
        expected,
        expected_loss,
        rel,
        abs,
    })
}

/// The objective of a problem case (its `problem` field), every member checked and named.
fn parse_problem(f: &Fields) -> Result<Problem> {
    let p = f.object("problem")?;
    let kind = p.get("kind").map_err(|_| f.err("problem.kind", "missing"))?;
    let kind = kind.as_str().ok_or_else(|| f.err("problem.kind", format!("expected a string, got {kind}")))?;
    let keys: &[&str] = match kind {
        "softmax_regression" => &["kind", "n", "d", "k", "x", "y", "l2"],
        "rosenbrock" => &["kind", "m"],
        other => {
            return Err(
                f.err("problem.kind", format!("`{other}` is not a known problem (softmax_regression, rosenbrock)"))
            )
        }
    };
    if let Some(k) = p.v.as_object().and_then(|o| o.keys().find(|k| !keys.contains(&k.as_str()))) {
        return Err(f.err(&format!("problem.{k}"), format!("unknown; a {kind} problem has {}", keys.join(", "))));
    }
    let problem = match kind {
        "softmax_regression" => {
            let n = p.positive("problem.n", "n")?;
            let d = p.positive("problem.d", "d")?;
            let k = p.positive("problem.k", "k")?;
            crate::transform::shape_numel(&[d, k]).map_err(|e| f.err("problem.k", e))?;
            let x = f.f32s("problem.x", p.get("x").map_err(|_| f.err("problem.x", "missing"))?)?;
            match n.checked_mul(d) {
                Some(nd) if nd == x.len() => {}
                _ => return Err(f.err("problem.x", format!("has {} values, n·d = {n}·{d} are needed", x.len()))),
            }
            if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
                return Err(f.err("problem.x", format!("{bad} is not a finite f32")));
            }
            let y = p.get("y").map_err(|_| f.err("problem.y", "missing"))?;
            let y: Vec<usize> = y
                .as_array()
                .ok_or_else(|| f.err("problem.y", "expected a list of labels"))?
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    c.as_u64()
                        .and_then(|c| usize::try_from(c).ok())
                        .filter(|&c| c < k)
                        .ok_or_else(|| f.err(&format!("problem.y[{i}]"), format!("{c} is not a label in [0, {k})")))
                })
                .collect::<Result<_>>()?;
            if y.len() != n {
                return Err(f.err("problem.y", format!("has {} labels for n = {n} samples", y.len())));
            }
            let l2 = p.get("l2").map_err(|_| f.err("problem.l2", "missing"))?;
            let l2 = l2
                .as_f64()
                .filter(|l| *l >= 0.0)
                .ok_or_else(|| f.err("problem.l2", format!("{l2} is not a non-negative number")))?;
            Problem::SoftmaxRegression(SoftmaxRegression::new(n, d, k, x, y, l2).map_err(|e| f.err("problem", e))?)
        }
        _ => Problem::Rosenbrock(Rosenbrock::new(p.positive("problem.m", "m")?).map_err(|e| f.err("problem", e))?),
    };
    Ok(problem)
}

/// The fields of optimizer and problem cases, refused in a schedule case.
const OPTIMIZER_FIELDS: &[&str] = &[
    "optimizer",
    "hparams",
    "params",
    "grads",
    "expected",
    "tolerance",
    "param_groups",
    "nan_grads",
    "sparse_grads",
    "lr_per_step",
    "enums",
    "problem",
    "expected_loss",
];

/// The fields of schedule cases (besides `schedule` and `expected_lr`, which make one), refused in
/// an optimizer or problem case.
const SCHEDULE_FIELDS: &[&str] = &["base_lr", "kwargs", "metrics"];

/// The top-level fields of the reference cases a replay reads (optimizer, problem and schedule
/// cases), and those that only document one.
pub const CASE_FIELDS: &[&str] = &[
    "id",
    "source",
    "dtype",
    "steps",
    "tolerance",
    "optimizer",
    "hparams",
    "enums",
    "param_groups",
    "params",
    "grads",
    "nan_grads",
    "sparse_grads",
    "lr_per_step",
    "expected",
    "problem",
    "expected_loss",
    "schedule",
    "base_lr",
    "kwargs",
    "metrics",
    "expected_lr",
    "note",
    "notes",
    "comment",
    "description",
];

/// The top-level fields of a case's JSON text that no replay reads ([`CASE_FIELDS`]): a
/// misspelt one (`hparms`) would otherwise leave its value unread without a word.
pub fn unknown_fields(text: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m.keys().filter(|k| !CASE_FIELDS.contains(&k.as_str())).cloned().collect(),
        _ => vec![],
    }
}

/// Reads and parses one case file.
pub fn load_case(path: &Path) -> Result<Case> {
    parse_case(&path.display().to_string(), &read_case_text(path)?)
}

/// The text of a case file: a regular file of at most [`MAX_CASE_BYTES`].
pub fn read_case_text(path: &Path) -> Result<String> {
    let err = |message: String| Error::File { path: path.display().to_string(), message };
    // A regular file of bounded size: not a pipe that never ends, nor a device such as
    // /dev/zero behind a link.
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_CASE_BYTES {
        return Err(err(format!("{} bytes: a case file holds at most {MAX_CASE_BYTES}", meta.len())));
    }
    let mut text = String::new();
    use std::io::Read;
    std::fs::File::open(path)
        .map_err(|e| err(e.to_string()))?
        .take(MAX_CASE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_CASE_BYTES {
        return Err(err(format!("more than {MAX_CASE_BYTES} bytes: a case file holds at most that")));
    }
    // A byte-order mark some editors write is not part of the JSON.
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        text = rest.to_string();
    }
    Ok(text)
}

/// The largest case file read (1 GiB; the recorded ones are a few megabytes).
pub const MAX_CASE_BYTES: u64 = 1 << 30;

/// Every `*.json` file under the given files and folders (recursively), sorted, each once: a
/// folder reached twice (a symbolic link to an enclosing folder, a folder given twice) is read
/// once, and so is a file.
pub fn collect_case_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut seen_dirs = std::collections::HashSet::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let real = std::fs::canonicalize(&d)
                    .map_err(|e| Error::File { path: d.display().to_string(), message: e.to_string() })?;
                if !seen_dirs.insert(real) {
                    continue;
                }
                let rd = std::fs::read_dir(&d)
                    .map_err(|e| Error::File { path: d.display().to_string(), message: e.to_string() })?;
                for e in rd {
                    let e = e.map_err(|e| Error::File { path: d.display().to_string(), message: e.to_string() })?;
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|x| x == "json") {
                        out.push(path);
                    }
                }
            }
        } else if p.symlink_metadata().is_ok() {
            // A link that leads nowhere readable (a loop, a dangling target) is read and fails
            // with the system's reason.
            out.push(p.clone());
        } else {
            return Err(Error::File { path: p.display().to_string(), message: "no such file or folder".into() });
        }
    }
    out.sort();
    let mut seen_files = std::collections::HashSet::new();
    out.retain(|f| seen_files.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(out)
}

impl OptimCase {
    /// The hyper-parameters the optimizer is built from. With `lr_per_step` (an
    /// `inject_hyperparams` case) the inner optimizer's `learning_rate` becomes that list: the
    /// rate set before each step.
    pub fn build_hparams(&self) -> Result<Value> {
        let Some(lrs) = &self.lr_per_step else { return Ok(self.hparams.clone()) };
        let err = |m: &str| Error::Field { context: format!("{}: `lr_per_step`", self.id), message: m.into() };
        if self.optimizer != "inject_hyperparams" {
            return Err(err("only an inject_hyperparams case sets the learning rate per step"));
        }
        let mut h = self.hparams.clone();
        let kwargs = h
            .get_mut("inner")
            .and_then(|i| i.as_array_mut())
            .filter(|a| a.len() == 2)
            .and_then(|a| a[1].as_object_mut())
            .ok_or_else(|| err("the case's `inner` must be [name, {kwargs}]"))?;
        let key = crate::spec::lr_key(&self.library);
        // The inner kwargs hold the rate of step 0 (the format says so); another value would be
        // overridden without a word. Compared in float32, the precision the rates are recorded in.
        if let Some(given) = kwargs.get(key).filter(|v| !v.is_null()) {
            let agrees = given.as_f64().zip(lrs.first()).is_some_and(|(a, &b)| a as f32 == b as f32);
            if !agrees {
                return Err(err(&format!(
                    "the inner optimizer's `{key}` {given} disagrees with lr_per_step[0] {} (the case's rate of step 0)",
                    lrs.first().copied().unwrap_or(f64::NAN)
                )));
            }
        }
        kwargs.insert(key.into(), Value::from(lrs.clone()));
        Ok(h)
    }

    /// Builds the case's optimizer for its parameters.
    pub fn optimizer(&self) -> Result<Optimizer> {
        let hparams = self.build_hparams()?;
        let tx = build_optimizer(&self.library, &self.optimizer, &hparams, self.param_groups.as_ref(), &self.shapes)?;
        let views: Vec<&[f32]> = self.init.iter().map(|v| v.as_slice()).collect();
        Optimizer::new(tx, self.shapes.clone(), &views)
    }

    /// Runs the recorded gradients through descent: the reported parameters after each step.
    pub fn run(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut opt = self.optimizer()?;
        let mut params = self.init.clone();
        let mut out = Vec::with_capacity(self.grads.len());
        for g in &self.grads {
            match self.sparse_grads {
                None => opt.step_vecs(&mut params, g)?,
                Some(SparseGrads::Rows) => {
                    let views: Vec<&[f32]> = g.iter().map(|v| v.as_slice()).collect();
                    let rows = SparseRows::nonzero_rows(&self.shapes, &views)?;
                    opt.step_sparse_vecs(&mut params, g, &rows)?
                }
            };
            // What a case records after each step (the reference README): optax `lookahead` its slow
            // weights, every other case — schedule-free's included — the parameters stepped.
            let recorded =
                if self.library == "optax" && self.optimizer == "lookahead" { opt.eval_params(&params)? } else { None };
            out.push(recorded.unwrap_or_else(|| params.clone()));
        }
        Ok(out)
    }

    /// Applies the pass rule to a trajectory: per step, `max|d_ours − d_ref| ≤ rel·max|d_ref| + abs`
    /// on displacements from `init`. Returns the worst ratio of error to allowance and its step.
    pub fn check(&self, ours: &[Vec<Vec<f32>>]) -> Check {
        check_trajectory(&self.init, &self.expected, ours, self.rel, self.abs)
    }
}

/// The pass rule of a parameter trajectory: per step, `max|d_ours − d_ref| ≤ rel·max|d_ref| + abs`
/// on displacements from `init`; the worst ratio of error to allowance and its step.
fn check_trajectory(
    init: &[Vec<f32>],
    expected: &[Vec<Vec<f32>>],
    ours: &[Vec<Vec<f32>>],
    rel: f64,
    abs: f64,
) -> Check {
    let mut worst = Check { passed: ours.len() == expected.len(), ratio: 0.0, step: 0 };
    for (t, (o, e)) in ours.iter().zip(expected).enumerate() {
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for ((o, e), i) in o.iter().zip(e).zip(init) {
            for ((&o, &e), &i) in o.iter().zip(e).zip(i) {
                let d_ref = e as f64 - i as f64;
                let d_ours = o as f64 - i as f64;
                let diff = (d_ours - d_ref).abs();
                err = if diff.is_nan() { f64::INFINITY } else { err.max(diff) };
                scale = scale.max(d_ref.abs());
            }
        }
        worst.record(t, err, rel * scale + abs);
    }
    worst
}

/// How closely the objective recomputed in `f64` at a recorded point must give the recorded loss:
/// both are the same formula in `f64` on the same `f32` values, so they differ by the rounding of
/// a summation order only.
pub const LOSS_REL: f64 = 1e-9;
/// The absolute part of that allowance (a loss near 0 at the minimum).
pub const LOSS_ABS: f64 = 1e-12;

impl ProblemCase {
    /// Builds the case's optimizer for its parameters.
    pub fn optimizer(&self) -> Result<Box<dyn ClosureOptimizer>> {
        build_closure_optimizer(&self.library, &self.optimizer, &self.hparams, &self.shapes)
    }

    /// Runs the optimizer on the case's objective: the parameters after each step.
    pub fn run(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut opt = self.optimizer()?;
        let mut objective = self.problem.clone();
        let mut params = self.init.clone();
        let mut out = Vec::with_capacity(self.expected.len());
        for _ in 0..self.expected.len() {
            opt.step(&mut params, &mut objective)?;
            out.push(params.clone());
        }
        Ok(out)
    }

    /// The recorded losses against the objective: `expected_loss[t]` must be the objective at
    /// `expected[t]` (computed in `f64`, within [`LOSS_REL`]·|loss| + [`LOSS_ABS`]). A mismatch
    /// means the problem's data or its definition differ from the recording's, and is an error
    /// naming the step.
    pub fn check_expected_loss(&self) -> Result<()> {
        let Some(losses) = &self.expected_loss else { return Ok(()) };
        for (t, (&want, params)) in losses.iter().zip(&self.expected).enumerate() {
            let got = self.problem.loss_f64(params)?;
            // NaN is never within.
            let within = (got - want).abs() <= LOSS_REL * want.abs() + LOSS_ABS;
            if !within {
                return Err(Error::Field {
                    context: format!("{}: `expected_loss[{t}]`", self.id),
                    message: format!(
                        "is {want} but the {} objective at `expected[{t}]` is {got}: the problem's data or definition \
                         differ from the recording's",
                        self.problem.kind()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The pass rule of [`OptimCase::check`] on the parameters after each step.
    pub fn check(&self, ours: &[Vec<Vec<f32>>]) -> Check {
        check_trajectory(&self.init, &self.expected, ours, self.rel, self.abs)
    }
}

impl ScheduleCase {
    /// The learning rate descent gives at steps `0..n`.
    /// A schedule that supports fewer steps (torch `OneCycleLR` past `total_steps`) is an error.
    pub fn run(&self) -> Result<Vec<f64>> {
        let n = self.expected_lr.len();
        match build_schedule(&self.library, &self.schedule, &self.kwargs, self.base_lr)? {
            ScheduleSpec::Function(s) => {
                if self.metrics.is_some() {
                    // Read by nothing: a case that gives them expects them to matter.
                    return Err(Error::Field {
                        context: self.id.clone(),
                        message: format!("`metrics`: only ReduceLROnPlateau reads them, not {}", self.schedule),
                    });
                }
                check_steps(&s, n as u64)?;
                Ok((0..n as u64).map(|t| s.value(t)).collect())
            }
            ScheduleSpec::Plateau(mut p) => {
                let metrics = self.metrics.as_ref().ok_or_else(|| Error::Field {
                    context: self.id.clone(),
                    message: "ReduceLROnPlateau needs `metrics`".into(),
                })?;
                let mut out = vec![p.lr];
                for m in metrics.iter().take(n.saturating_sub(1)) {
                    out.push(p.step(*m));
                }
                Ok(out)
            }
        }
    }

    /// The schedule pass rule: `|ours − expected| ≤ 1e-6 · max(1, |expected|)` at every step.
    pub fn check(&self, ours: &[f64]) -> Check {
        let mut worst = Check { passed: ours.len() == self.expected_lr.len(), ratio: 0.0, step: 0 };
        for (t, (o, e)) in ours.iter().zip(&self.expected_lr).enumerate() {
            worst.record(t, (o - e).abs(), 1e-6 * e.abs().max(1.0));
        }
        worst
    }
}

/// The outcome of the pass rule: passed, and the worst error as a fraction of its allowance.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Whether every step is within tolerance.
    pub passed: bool,
    /// The worst error as a fraction of the allowance.
    pub ratio: f64,
    /// The step where it occurred.
    pub step: usize,
}

impl Check {
    /// Takes step `t`'s error against its allowance: it passes when within it (an exact match
    /// passes a zero allowance too); NaN fails.
    fn record(&mut self, t: usize, err: f64, allowance: f64) {
        let ratio = if err == 0.0 { 0.0 } else { err / allowance };
        // Within the allowance, or failed (NaN compares as neither).
        let within = err <= allowance;
        if !within {
            self.passed = false;
        }
        if ratio.is_nan() || ratio > self.ratio {
            self.ratio = ratio;
            self.step = t;
        }
    }
}

/// Replays a case and checks it.
pub fn run_and_check(case: &Case) -> Result<Check> {
    match case {
        Case::Optim(c) => Ok(c.check(&c.run()?)),
        Case::Problem(c) => {
            c.check_expected_loss()?;
            Ok(c.check(&c.run()?))
        }
        Case::Schedule(c) => Ok(c.check(&c.run()?)),
    }
}
