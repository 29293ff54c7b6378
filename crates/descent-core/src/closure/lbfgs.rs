//! L-BFGS: torch `LBFGS` (with and without `strong_wolfe`) and optax `lbfgs` with its zoom line search.
//!
//! Both keep a limited history of parameter and gradient differences and multiply the gradient by
//! the inverse-Hessian approximation it defines (the two-loop recursion, Nocedal & Wright 2006,
//! Algorithm 7.4); they differ in what one step is, in the initial scaling and in the line search:
//!
//! - [`TorchLbfgs`]: one `step(closure)` runs up to `max_iter` iterations and `max_eval`
//!   evaluations, with a fixed step `lr` or torch's strong-Wolfe search (a port of minFunc's).
//! - [`OptaxLbfgs`]: one step is one iteration, `scale_by_lbfgs` then the learning rate then
//!   `scale_by_zoom_linesearch` (Nocedal & Wright Algorithms 3.5–3.6 with Hager & Zhang's
//!   approximate Wolfe test) or `scale_by_backtracking_linesearch` (Armijo), reusing the value and
//!   gradient the search found at the accepted point.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::spec::Kwargs;

use super::{ClosureOptimizer, Objective};

mod optax_lbfgs;
mod torch_lbfgs;

pub use optax_lbfgs::{
    BacktrackingLinesearchConfig, OptaxLbfgs, OptaxLbfgsConfig, OptaxLinesearch, ZoomLinesearchConfig,
};
pub use torch_lbfgs::{TorchLbfgs, TorchLbfgsConfig};

/// The registry names of this family (`library.name`).
pub const NAMES: &[&str] = &["optax.lbfgs", "torch.lbfgs"];

/// Builds `library.name` if it belongs to this family (`None` otherwise).
pub fn build(
    library: &str,
    name: &str,
    hparams: &Value,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn ClosureOptimizer>>> {
    match (library, name) {
        ("torch", "lbfgs") => Some(build_torch(hparams, shapes)),
        ("optax", "lbfgs") => Some(build_optax(hparams, shapes)),
        _ => None,
    }
}

fn build_torch(hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn ClosureOptimizer>> {
    let mut k = Kwargs::new("torch.lbfgs", hparams)?;
    let d = TorchLbfgsConfig::default();
    let lr = k.lr("lr", Some(1.0))?;
    let max_iter = k.u64("max_iter", d.max_iter)?;
    let max_eval = k.opt_u64("max_eval")?;
    let tolerance_grad = k.f64("tolerance_grad", d.tolerance_grad)?;
    let tolerance_change = k.f64("tolerance_change", d.tolerance_change)?;
    let history_size = k.u64("history_size", d.history_size as u64)?;
    let history_size = usize::try_from(history_size)
        .map_err(|_| Error::Invalid(format!("history_size {history_size} does not fit this machine")))?;
    let strong_wolfe = match k.opt_str("line_search_fn")? {
        None => false,
        Some("strong_wolfe") => true,
        Some(other) => {
            return Err(Error::Unknown {
                kind: "line_search_fn",
                name: format!("{other}` of `torch.lbfgs"),
                accepted: "strong_wolfe, None (null)".into(),
            })
        }
    };
    let maximize = k.bool("maximize", false)?;
    k.finish()?;
    if strong_wolfe && lr.constant() == Some(0.0) {
        return Err(Error::Invalid(
            "torch.lbfgs: `lr` 0 with line_search_fn \"strong_wolfe\": torch's line search divides by zero \
             (its cubic interpolation between two equal points)"
                .into(),
        ));
    }
    let cfg = TorchLbfgsConfig {
        lr,
        max_iter,
        max_eval,
        tolerance_grad,
        tolerance_change,
        history_size,
        strong_wolfe,
        maximize,
    };
    Ok(Box::new(TorchLbfgs::new(cfg, shapes)?))
}

fn build_optax(hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn ClosureOptimizer>> {
    let mut k = Kwargs::new("optax.lbfgs", hparams)?;
    let d = OptaxLbfgsConfig::default();
    // `None` is `scale(-1.0)`, the same numbers as a constant rate of 1 (kept live so that a
    // rate set later scales the direction as optax's `scale_by_learning_rate` would).
    let learning_rate = k.opt_lr("learning_rate")?.unwrap_or(LearningRate::Constant(1.0));
    let memory_size = k.u64("memory_size", d.memory_size as u64)?;
    let memory_size = usize::try_from(memory_size)
        .map_err(|_| Error::Invalid(format!("memory_size {memory_size} does not fit this machine")))?;
    let scale_init_precond = k.bool("scale_init_precond", d.scale_init_precond)?;
    // Absent: the default zoom search; `null` (optax's `None`): no line search.
    let linesearch = match (hparams.get("linesearch").is_some(), k.value("linesearch")) {
        (false, _) => d.linesearch,
        (true, None) => None,
        (true, Some(v)) => Some(linesearch_from_spec(v)?),
    };
    k.finish()?;
    let cfg = OptaxLbfgsConfig { learning_rate, memory_size, scale_init_precond, linesearch };
    Ok(Box::new(OptaxLbfgs::new(cfg, shapes)?))
}

/// `[name, {kwargs}]` (or the bare name) of `scale_by_zoom_linesearch` or
/// `scale_by_backtracking_linesearch`, with optax's own defaults (the zoom's differ from those
/// `lbfgs` passes: `initial_guess_strategy` is `"keep"` there).
fn linesearch_from_spec(v: &Value) -> Result<OptaxLinesearch> {
    let ctx = "optax.lbfgs: `linesearch`";
    let (name, kw) = match v {
        Value::String(s) => (s.as_str(), &Value::Null),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => (a[0].as_str().unwrap_or_default(), &Value::Null),
        Value::Array(a) if a.len() == 2 && a[0].is_string() => (a[0].as_str().unwrap_or_default(), &a[1]),
        other => {
            return Err(Error::Field {
                context: ctx.into(),
                message: format!("expected [name, {{kwargs}}] or null, got {other}"),
            })
        }
    };
    match name {
        "scale_by_zoom_linesearch" => zoom_from_kwargs(kw).map(OptaxLinesearch::Zoom),
        "scale_by_backtracking_linesearch" => backtracking_from_kwargs(kw).map(OptaxLinesearch::Backtracking),
        _ => Err(Error::Unknown {
            kind: "line search",
            name: format!("{name}` of `optax.lbfgs"),
            accepted: "scale_by_zoom_linesearch, scale_by_backtracking_linesearch, None (null)".into(),
        }),
    }
}

/// `verbose=True` prints diagnostics on a failed search, which descent does not write.
fn refuse_verbose(k: &mut Kwargs, context: &str) -> Result<()> {
    if k.bool("verbose", false)? {
        return Err(Error::Field {
            context: format!("{context}: `verbose`"),
            message: "the diagnostics printed on failure are not implemented; pass false".into(),
        });
    }
    Ok(())
}

/// `scale_by_backtracking_linesearch`'s keyword arguments (`max_backtracking_steps` required, as
/// in optax). `store_grad` is taken either way: it changes what is computed, not the numbers.
fn backtracking_from_kwargs(kw: &Value) -> Result<BacktrackingLinesearchConfig> {
    let ctx = "optax.scale_by_backtracking_linesearch";
    let mut k = Kwargs::new(ctx, kw)?;
    let d = BacktrackingLinesearchConfig::new(k.req_u64("max_backtracking_steps")?);
    let cfg = BacktrackingLinesearchConfig {
        slope_rtol: k.f64("slope_rtol", d.slope_rtol)?,
        decrease_factor: k.f64("decrease_factor", d.decrease_factor)?,
        increase_factor: k.f64("increase_factor", d.increase_factor)?,
        max_learning_rate: k.f64("max_learning_rate", d.max_learning_rate)?,
        atol: k.f64("atol", d.atol)?,
        rtol: k.f64("rtol", d.rtol)?,
        ..d
    };
    k.bool("store_grad", false)?;
    refuse_verbose(&mut k, ctx)?;
    k.finish()?;
    Ok(cfg)
}

/// `scale_by_zoom_linesearch`'s keyword arguments.
fn zoom_from_kwargs(kw: &Value) -> Result<ZoomLinesearchConfig> {
    let mut k = Kwargs::new("optax.scale_by_zoom_linesearch", kw)?;
    let d = ZoomLinesearchConfig::default();
    let max_linesearch_steps = k.req_u64("max_linesearch_steps")?;
    let max_learning_rate = k.opt_f64("max_learning_rate")?;
    let tol = k.f64("tol", d.tol)?;
    let increase_factor = k.f64("increase_factor", d.increase_factor)?;
    let slope_rtol = k.f64("slope_rtol", d.slope_rtol)?;
    let curv_rtol = k.f64("curv_rtol", d.curv_rtol)?;
    // Absent: the default; `null`: the Armijo criterion alone.
    let approx_dec_rtol = match kw.get("approx_dec_rtol") {
        None => {
            k.opt_f64("approx_dec_rtol")?;
            d.approx_dec_rtol
        }
        Some(_) => k.opt_f64("approx_dec_rtol")?,
    };
    let stepsize_precision = k.f64("stepsize_precision", d.stepsize_precision)?;
    let keep = match k.str("initial_guess_strategy", "keep")? {
        "one" => false,
        "keep" => true,
        other => {
            return Err(Error::Unknown {
                kind: "initial_guess_strategy",
                name: format!("{other}` of `optax.scale_by_zoom_linesearch"),
                accepted: "one, keep".into(),
            })
        }
    };
    refuse_verbose(&mut k, "optax.scale_by_zoom_linesearch")?;
    k.finish()?;
    let cfg = ZoomLinesearchConfig {
        max_linesearch_steps,
        max_learning_rate,
        tol,
        increase_factor,
        slope_rtol,
        curv_rtol,
        approx_dec_rtol,
        stepsize_precision,
        keep_previous_stepsize: keep,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A learning rate must not be negative (torch's `Invalid learning rate`); a schedule is checked
/// where it is evaluated.
fn check_lr(lr: &LearningRate, name: &str) -> Result<()> {
    if let Some(x) = lr.constant() {
        if x.is_nan() || x < 0.0 {
            return Err(Error::Invalid(format!("Invalid learning rate: {name} = {x}")));
        }
    }
    Ok(())
}

/// The rate in force at step `count`, refused when a schedule gives a negative or NaN one.
fn lr_at(lr: &LearningRate, count: u64, name: &str) -> Result<f64> {
    let x = lr.at(count);
    if x.is_nan() || x < 0.0 {
        return Err(Error::Invalid(format!("Invalid learning rate at step {count}: {name} = {x}")));
    }
    Ok(x)
}

/// The parameters seen as one flat vector (torch's `_gather_flat_grad` order: parameter after
/// parameter, each row-major), and scratch buffers to evaluate the objective at a flat point.
struct Flat {
    sizes: Vec<usize>,
    n: usize,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

impl Flat {
    fn new(shapes: &[Vec<usize>], context: &str) -> Result<Self> {
        if shapes.is_empty() {
            return Err(Error::Invalid(format!("{context}: optimizer got an empty parameter list")));
        }
        let sizes = crate::transform::check_shapes(shapes)?;
        let n = sizes
            .iter()
            .try_fold(0usize, |a, &s| a.checked_add(s))
            .filter(|&n| n <= crate::transform::MAX_NUMEL)
            .ok_or_else(|| Error::Shape(format!("{context}: the parameters hold too many elements together")))?;
        Ok(Flat { sizes, n, params: vec![], grads: vec![] })
    }

    /// Checks `params` against the shapes and copies them into `x`.
    fn gather(&self, params: &[Vec<f32>], x: &mut Vec<f32>) -> Result<()> {
        if params.len() != self.sizes.len() {
            return Err(Error::Shape(format!("expected {} parameter tensors, got {}", self.sizes.len(), params.len())));
        }
        for (i, (p, &s)) in params.iter().zip(&self.sizes).enumerate() {
            if p.len() != s {
                return Err(Error::Shape(format!("parameter {i} has {} elements, expected {s}", p.len())));
            }
        }
        x.clear();
        for p in params {
            x.extend_from_slice(p);
        }
        Ok(())
    }

    /// Writes the flat `x` back into `params`.
    fn scatter(&self, x: &[f32], params: &mut [Vec<f32>]) {
        let mut off = 0;
        for (p, &s) in params.iter_mut().zip(&self.sizes) {
            p.copy_from_slice(&x[off..off + s]);
            off += s;
        }
    }

    fn ensure_scratch(&mut self) {
        if self.params.len() != self.sizes.len() {
            self.params = self.sizes.iter().map(|&s| vec![0.0; s]).collect();
            self.grads = self.sizes.iter().map(|&s| vec![0.0; s]).collect();
        }
    }

    /// `L(x)`, with `∇L(x)` written into the flat `grad`.
    fn eval(&mut self, obj: &mut dyn Objective, x: &[f32], grad: &mut Vec<f32>) -> Result<f32> {
        self.ensure_scratch();
        let mut off = 0;
        for p in self.params.iter_mut() {
            let s = p.len();
            p.copy_from_slice(&x[off..off + s]);
            off += s;
        }
        self.finish_eval(obj, grad)
    }

    /// `L(x + t·d)` (the point computed in f32, as `p.add_(d, alpha=t)` / `params + t * d`), with
    /// its gradient written into `grad`.
    fn eval_along(
        &mut self,
        obj: &mut dyn Objective,
        x: &[f32],
        t: f32,
        d: &[f32],
        grad: &mut Vec<f32>,
    ) -> Result<f32> {
        self.ensure_scratch();
        let mut off = 0;
        for p in self.params.iter_mut() {
            let s = p.len();
            for ((pj, &xj), &dj) in p.iter_mut().zip(&x[off..off + s]).zip(&d[off..off + s]) {
                *pj = xj + t * dj;
            }
            off += s;
        }
        self.finish_eval(obj, grad)
    }

    fn finish_eval(&mut self, obj: &mut dyn Objective, grad: &mut Vec<f32>) -> Result<f32> {
        for g in self.grads.iter_mut() {
            g.iter_mut().for_each(|v| *v = 0.0);
        }
        let loss = obj.value_and_grad(&self.params, &mut self.grads)?;
        for (i, (g, &s)) in self.grads.iter().zip(&self.sizes).enumerate() {
            if g.len() != s {
                return Err(Error::Shape(format!(
                    "the objective's gradient {i} has {} elements, expected {s}",
                    g.len()
                )));
            }
        }
        grad.clear();
        for g in &self.grads {
            grad.extend_from_slice(g);
        }
        Ok(loss)
    }
}

/// `Σ aᵢbᵢ` as an f32 result (accumulated in f64, so the order of the sum does not matter).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32
}

/// `max |aᵢ|`, NaN if any entry is NaN (as torch's `abs().max()`).
fn max_abs(a: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &x in a {
        if x.is_nan() {
            return f32::NAN;
        }
        m = m.max(x.abs());
    }
    m
}

/// Refuses a history of `slots` pairs of `n`-value vectors (with two scalars a slot) larger than
/// half the machine's memory: the buffers are allocated whole on the first step, and with the
/// system's overcommit an allocation far past the memory succeeds and then takes it all
/// (`history_size` 10⁹ of two parameters: 16 GB). `name` is the setting.
fn check_history_memory(name: &str, slots: usize, n: usize) -> Result<()> {
    let bytes = (slots as u128) * (2 * n as u128 + 2) * 4;
    if let Some(total) = physical_memory().filter(|&t| bytes > t as u128 / 2) {
        return Err(Error::Invalid(format!(
            "{name} {slots}: the L-BFGS history of {n} parameters would take {:.1} GB, more than half of this \
             machine's {:.1} GB of memory",
            bytes as f64 / 1e9,
            total as f64 / 1e9
        )));
    }
    Ok(())
}

/// The machine's physical memory in bytes, where the system says.
fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: `sysconf` only reads system constants.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return Some(pages as u64 * size as u64);
        }
    }
    None
}

/// A zeroed `f32` buffer of `len` elements, an error rather than an abort when memory is short.
fn alloc(len: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::Invalid(format!("cannot allocate the {what} ({len} values)")))?;
    v.resize(len, 0.0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    /// A history larger than the machine's memory is refused by its setting's name before
    /// anything is allocated; a usual one is not.
    #[test]
    fn a_history_past_the_machines_memory_is_refused() {
        if super::physical_memory().is_none() {
            return;
        }
        let e = super::check_history_memory("history_size", usize::MAX / 64, 1000).unwrap_err().to_string();
        assert!(e.contains("history_size") && e.contains("GB"), "{e}");
        assert!(super::check_history_memory("history_size", 100, 1_000_000).is_ok());
    }
}
