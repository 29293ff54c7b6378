//! Compatibility specs: build an optimizer or schedule from a library's own name and keyword
//! arguments (torch class + kwargs, optax function + kwargs, `chain` links, `param_groups`), so a
//! PyTorch or JAX recipe ports unchanged.
//!
//! Registry names are `<library>.<name>`: `torch.adamw`, `optax.contrib.muon`, `optax.chain`, ….

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::schedule::{self as sch, BoxSchedule, ReduceLrOnPlateau};
use crate::torch::{self, MuonLrAdjust, WeightDecay};
use crate::transform::{chain, LearningRate, Transform};
use crate::transforms::*;

/// The torch optimizers descent reproduces.
pub const TORCH_OPTIMIZERS: &[&str] = &[
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sparseadam",
];

/// The optax optimizers and transformations descent reproduces (usable as `chain` links).
pub const OPTAX_OPTIMIZERS: &[&str] = &[
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "chain",
    "fromage",
    "lamb",
    "lars",
    "lion",
    "lookahead",
    "multisteps",
    "nadam",
    "nadamw",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
    "contrib.acprop",
    "contrib.ademamix",
    "contrib.adopt",
    "contrib.cocob",
    "contrib.dadapt_adamw",
    "contrib.dog",
    "contrib.dowg",
    "contrib.madgrad",
    "contrib.mechanize",
    "contrib.muon",
    "contrib.prodigy",
    "contrib.schedule_free_adamw",
    "contrib.schedule_free_sgd",
    "contrib.simplified_ademamix",
    // transformations
    "adaptive_grad_clip",
    "add_decayed_weights",
    "apply_every",
    "centralize",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "contrib.normalize",
    "ema",
    "identity",
    "keep_params_nonnegative",
    "normalize_by_update_norm",
    "scale",
    "scale_by_adam",
    "scale_by_belief",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_param_block_rms",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_sign",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "set_to_zero",
    "trace",
    "zero_nans",
    // wrappers and per-parameter masks and labels
    "apply_if_finite",
    "freeze",
    "inject_hyperparams",
    "masked",
    "multi_transform",
    "partition",
    "selective_transform",
];

/// descent's own optimizers (no library to match): 8-bit block-wise AdamW / Adam.
pub const DESCENT_OPTIMIZERS: &[&str] = &["adam8bit", "adamw8bit"];

/// The torch lr_scheduler classes descent reproduces.
pub const TORCH_SCHEDULES: &[&str] = &[
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
    "StepLR",
];

/// The optax schedule functions descent reproduces.
pub const OPTAX_SCHEDULES: &[&str] = &[
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
];

/// Keyword arguments with typed accessors; remembers which were read so that unknown ones are
/// reported with the accepted list.
pub struct Kwargs<'a> {
    context: String,
    map: &'a Map<String, Value>,
    accepted: Vec<&'static str>,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Kwargs<'a> {
    /// Wraps a JSON object (`null` counts as no arguments).
    pub fn new(context: impl Into<String>, value: &'a Value) -> Result<Self> {
        let context = context.into();
        let map = match value {
            Value::Object(m) => m,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                return Err(Error::Field {
                    context,
                    message: format!("expected an object of keyword arguments, got {other}"),
                })
            }
        };
        Ok(Kwargs { context, map, accepted: vec![] })
    }

    /// The argument as given: `None` when absent. A `null` is an error naming the key: the
    /// library's signature takes no `None` for it, and a null must not stand for the default (a
    /// non-finite `f64` becomes `null` in a `serde_json::Value`).
    fn get(&mut self, key: &'static str) -> Result<Option<&'a Value>> {
        self.accepted.push(key);
        match self.map.get(key) {
            Some(Value::Null) => Err(self.err(key, "is null, which this argument does not accept")),
            v => Ok(v),
        }
    }

    /// An argument the library declares `Optional`: absent and `null` are both `None`.
    fn get_optional(&mut self, key: &'static str) -> Option<&'a Value> {
        self.accepted.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::Field { context: format!("{}: `{key}`", self.context), message: msg.to_string() }
    }

    /// A finite number.
    fn number(&self, key: &str, v: &Value) -> Result<f64> {
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            Some(x) => Err(self.err(key, format!("must be finite, got {x}"))),
            None => Err(self.err(key, format!("expected a number, got {v}"))),
        }
    }

    /// A non-negative integer (an integral float such as `5.0` too).
    fn count(&self, key: &str, v: &Value) -> Result<u64> {
        if let Some(x) = v.as_u64() {
            return Ok(x);
        }
        // 2^64: the first float past u64::MAX.
        v.as_f64()
            .filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x < 18_446_744_073_709_551_616.0)
            .map(|x| x as u64)
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}")))
    }

    /// A number the library declares `Optional[float]`: `None` when absent or null.
    pub fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        self.get_optional(key).map(|v| self.number(key, v)).transpose()
    }
    /// A number with a default (null is an error).
    pub fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        Ok(self.get(key)?.map(|v| self.number(key, v)).transpose()?.unwrap_or(default))
    }
    pub fn req_f64(&mut self, key: &'static str) -> Result<f64> {
        match self.get(key)? {
            None => Err(self.err(key, "missing required argument")),
            Some(v) => self.number(key, v),
        }
    }
    pub fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }
    /// A boolean the library declares `Optional[bool]`: `None` when absent or null.
    pub fn opt_bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        match self.get_optional(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }
    /// A count the library declares `Optional[int]`: `None` when absent or null.
    pub fn opt_u64(&mut self, key: &'static str) -> Result<Option<u64>> {
        self.get_optional(key).map(|v| self.count(key, v)).transpose()
    }
    /// A count with a default (null is an error).
    pub fn u64(&mut self, key: &'static str, default: u64) -> Result<u64> {
        Ok(self.get(key)?.map(|v| self.count(key, v)).transpose()?.unwrap_or(default))
    }
    pub fn req_u64(&mut self, key: &'static str) -> Result<u64> {
        match self.get(key)? {
            None => Err(self.err(key, "missing required argument")),
            Some(v) => self.count(key, v),
        }
    }
    /// optax's `mu_dtype`: `float32` (the default, also for `None`) or `bfloat16`.
    pub fn mu_dtype(&mut self) -> Result<MomentDtype> {
        match self.opt_str("mu_dtype")?.unwrap_or("float32") {
            "float32" | "f32" => Ok(MomentDtype::F32),
            "bfloat16" | "bf16" => Ok(MomentDtype::Bf16),
            other => Err(self.err("mu_dtype", format!("unknown dtype `{other}`; valid: float32, bfloat16"))),
        }
    }
    /// `mu_dtype` where only `float32` is implemented: anything else is refused, not ignored.
    pub fn mu_dtype_f32_only(&mut self) -> Result<()> {
        match self.mu_dtype()? {
            MomentDtype::F32 => Ok(()),
            MomentDtype::Bf16 => Err(self.err(
                "mu_dtype",
                "bfloat16 first moments are implemented for adam, adamw, nadam, nadamw and amsgrad only",
            )),
        }
    }
    pub fn str(&mut self, key: &'static str, default: &'a str) -> Result<&'a str> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }
    /// A string the library declares `Optional[str]`: `None` when absent or null.
    pub fn opt_str(&mut self, key: &'static str) -> Result<Option<&'a str>> {
        match self.get_optional(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }
    /// A list of finite numbers.
    pub fn f64s(&mut self, key: &'static str) -> Result<Option<Vec<f64>>> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Array(a)) => a.iter().map(|x| self.number(key, x)).collect::<Result<Vec<_>>>().map(Some),
            Some(v) => Err(self.err(key, format!("expected a list of numbers, got {v}"))),
        }
    }
    /// A list of non-negative integers (steps, milestones).
    pub fn u64s(&mut self, key: &'static str) -> Result<Option<Vec<u64>>> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Array(a)) => a.iter().map(|x| self.count(key, x)).collect::<Result<Vec<_>>>().map(Some),
            Some(v) => Err(self.err(key, format!("expected a list of non-negative integers, got {v}"))),
        }
    }
    pub fn pair(&mut self, key: &'static str, default: (f64, f64)) -> Result<(f64, f64)> {
        match self.f64s(key)? {
            None => Ok(default),
            Some(v) if v.len() == 2 => Ok((v[0], v[1])),
            Some(v) => Err(self.err(key, format!("expected 2 numbers, got {}", v.len()))),
        }
    }
    /// A raw value (nested specs, masks) of an argument that may be `None`: absent or null.
    pub fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        self.get_optional(key)
    }
    /// A raw value of an argument that may not be `None`: absent, or an error when null.
    pub fn present(&mut self, key: &'static str) -> Result<Option<&'a Value>> {
        self.get(key)
    }
    /// A per-parameter mask (optax `mask`, `weight_decay_mask`, `freeze_mask`): `None` when absent
    /// or null (no mask); a boolean for all parameters; or a list of one boolean per parameter, in
    /// parameter order. Anything else (a callable, which JSON cannot hold, or a tree of another
    /// shape) is an error naming the argument, never a mask ignored.
    pub fn mask(&mut self, key: &'static str, n: usize) -> Result<Option<Vec<bool>>> {
        match self.get_optional(key) {
            None => Ok(None),
            Some(v) => self.mask_value(key, v, n).map(Some),
        }
    }
    /// [`Kwargs::mask`] for an argument the library requires.
    pub fn req_mask(&mut self, key: &'static str, n: usize) -> Result<Vec<bool>> {
        match self.get(key)? {
            None => Err(self.err(key, "missing required argument")),
            Some(v) => self.mask_value(key, v, n),
        }
    }
    fn mask_value(&self, key: &str, v: &Value, n: usize) -> Result<Vec<bool>> {
        match v {
            Value::Bool(b) => Ok(vec![*b; n]),
            Value::Array(a) if a.len() == n => a
                .iter()
                .map(|x| x.as_bool().ok_or_else(|| self.err(key, format!("expected booleans, got {x}"))))
                .collect(),
            Value::Array(a) => {
                Err(self.err(key, format!("has {} entries for {n} parameters (one boolean per parameter)", a.len())))
            }
            other => Err(self.err(
                key,
                format!("expected a boolean or one boolean per parameter, got {other}; a callable mask cannot be given here"),
            )),
        }
    }
    /// Per-parameter labels (optax `param_labels`): one string for all parameters, or a list of
    /// one string per parameter. A callable is refused, naming the argument.
    pub fn labels(&mut self, key: &'static str, n: usize) -> Result<Vec<String>> {
        let v = self.get(key)?.ok_or_else(|| self.err(key, "missing required argument"))?;
        match v {
            Value::String(l) => Ok(vec![l.clone(); n]),
            Value::Array(a) if a.len() == n => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| self.err(key, format!("expected strings, got {x}")))
                })
                .collect(),
            Value::Array(a) => {
                Err(self.err(key, format!("has {} entries for {n} parameters (one label per parameter)", a.len())))
            }
            other => Err(self.err(
                key,
                format!("expected a label or one label per parameter, got {other}; a callable cannot be given here"),
            )),
        }
    }
    /// A learning rate: a finite number, `{"schedule": NAME, …kwargs}` naming an optax schedule, or
    /// a list of finite numbers, the rate of step 0, 1, … (the last one holding after). Absent: the default, or an error when there is none; null: an error.
    pub fn lr(&mut self, key: &'static str, default: Option<f64>) -> Result<LearningRate> {
        match self.get(key)? {
            None => default.map(LearningRate::Constant).ok_or_else(|| self.err(key, "missing required argument")),
            Some(v @ Value::Number(_)) => Ok(LearningRate::Constant(self.number(key, v)?)),
            // The rate set before each step (optax `inject_hyperparams` driven from outside).
            Some(Value::Array(a)) => {
                let values = a.iter().map(|x| self.number(key, x)).collect::<Result<Vec<_>>>()?;
                Ok(LearningRate::Schedule(sch::per_step(values).map_err(|e| self.err(key, e))?))
            }
            Some(Value::Object(o)) => {
                let name = o
                    .get("schedule")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| self.err(key, "a schedule object needs a `schedule` name"))?;
                let mut rest = o.clone();
                rest.remove("schedule");
                let ctx = format!("{}: `{key}`", self.context);
                match build_schedule("optax", name, &Value::Object(rest), None)? {
                    ScheduleSpec::Function(s) => Ok(LearningRate::Schedule(s)),
                    ScheduleSpec::Plateau(_) => Err(Error::Field {
                        context: ctx,
                        message: "ReduceLROnPlateau needs metrics; it cannot be a learning-rate function".into(),
                    }),
                }
            }
            Some(v) => Err(self.err(key, format!("expected a number or a schedule object, got {v}"))),
        }
    }
    /// Fails on any argument that was never read.
    pub fn finish(self) -> Result<()> {
        for k in self.map.keys() {
            if !self.accepted.iter().any(|a| a == k) {
                let mut acc = self.accepted.clone();
                acc.sort();
                acc.dedup();
                return Err(Error::Unknown {
                    kind: "keyword argument",
                    name: format!("{k}` of `{}", self.context),
                    accepted: acc.join(", "),
                });
            }
        }
        Ok(())
    }
}

fn boxed<T: Transform + 'static>(t: T) -> Box<dyn Transform> {
    Box::new(t)
}

fn unknown(kind: &'static str, name: &str, accepted: &[&str]) -> Error {
    Error::Unknown { kind, name: name.to_string(), accepted: accepted.join(", ") }
}

/// Builds an optimizer from `library` (`torch` or `optax`), its `name` in that library, its keyword
/// arguments, optional torch `param_groups` (`[{"params": [indices], "hparams": {overrides}}]`), and
/// the parameter shapes (refused, before anything is built, when one is too large to address:
/// see [`crate::transform::check_shapes`]).
pub fn build_optimizer(
    library: &str,
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Result<Box<dyn Transform>> {
    crate::transform::check_shapes(shapes)?;
    if crate::closure::is_closure_optimizer(library, name) {
        return Err(Error::NeedsClosure(format!("{library}.{name}")));
    }
    match library {
        "torch" => match param_groups {
            None => build_torch(name, hparams),
            Some(groups) => build_torch_groups(name, hparams, groups),
        },
        "optax" => {
            if param_groups.is_some() {
                return Err(Error::Field {
                    context: format!("optax.{name}"),
                    message: "param_groups are a torch notion; use optax partition instead".into(),
                });
            }
            build_optax(name, hparams, shapes)
        }
        "descent" => build_descent(name, hparams),
        "po" => crate::po::build(name, hparams, param_groups, shapes),
        other => Err(unknown("library", other, &["torch", "optax", "po", "descent"])),
    }
}

/// descent's own optimizers, with torch-style arguments (as bitsandbytes' `AdamW8bit` takes them).
fn build_descent(name: &str, hparams: &Value) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new(format!("descent.{name}"), hparams)?;
    let tx = match name {
        "adam8bit" | "adamw8bit" => {
            let lr = k.lr("lr", Some(1e-3))?;
            let (b1, b2) = k.pair("betas", (0.9, 0.999))?;
            let eps = k.f64("eps", 1e-8)?;
            let wd = k.f64("weight_decay", if name == "adamw8bit" { 1e-2 } else { 0.0 })?;
            crate::torch::check_adam_like(&lr, (b1, b2), eps, wd)?;
            chain(vec![
                boxed(ScaleByAdam8bit::new(b1, b2, eps)),
                boxed(AddDecayedWeights::new(wd)),
                boxed(ScaleByLearningRate::new(lr, true)),
            ])
        }
        other => return Err(unknown("descent optimizer", other, DESCENT_OPTIMIZERS)),
    };
    k.finish()?;
    Ok(tx)
}

/// Builds from a registry name such as `torch.adamw` or `optax.contrib.muon`.
pub fn build_named(registry_name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let (lib, name) = registry_name.split_once('.').ok_or_else(|| {
        unknown("optimizer", registry_name, &registry_names().iter().map(|s| s.as_str()).collect::<Vec<_>>())
    })?;
    if !["torch", "optax", "po", "descent"].contains(&lib) {
        return Err(unknown(
            "optimizer",
            registry_name,
            &registry_names().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ));
    }
    build_optimizer(lib, name, hparams, None, shapes)
}

/// Every registry name, `library.name`: the optimizers stepped on gradients, then those that
/// evaluate the objective themselves ([`crate::closure::closure_optimizers`]; built with
/// [`crate::closure::build_closure_optimizer`], refused by [`build_optimizer`]).
pub fn registry_names() -> Vec<String> {
    TORCH_OPTIMIZERS
        .iter()
        .map(|n| format!("torch.{n}"))
        .chain(OPTAX_OPTIMIZERS.iter().map(|n| format!("optax.{n}")))
        .chain(crate::po::po_optimizers().iter().map(|n| format!("po.{n}")))
        .chain(DESCENT_OPTIMIZERS.iter().map(|n| format!("descent.{n}")))
        .chain(crate::closure::closure_optimizers())
        .collect()
}

fn build_torch_groups(name: &str, hparams: &Value, groups: &Value) -> Result<Box<dyn Transform>> {
    build_groups(&format!("torch.{name}"), hparams, groups, |merged, _| build_torch(name, merged))
}

/// Builds one optimizer per parameter group (`[{"params": [indices], "hparams": {overrides}}]`,
/// torch's `param_groups`): `build` gets the constructor's keyword arguments overridden by the
/// group's, and the group's parameter indices; the parts form a [`Partition`].
pub fn build_groups(
    context: &str,
    hparams: &Value,
    groups: &Value,
    build: impl Fn(&Value, &[usize]) -> Result<Box<dyn Transform>>,
) -> Result<Box<dyn Transform>> {
    let name = context;
    let ctx = format!("{context}: param_groups");
    let arr = groups
        .as_array()
        .ok_or_else(|| Error::Field { context: ctx.clone(), message: "expected a list of groups".into() })?;
    let base = match hparams {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(Error::Field {
                context: name.to_string(),
                message: format!("expected an object of keyword arguments, got {other}"),
            })
        }
    };
    let mut parts = vec![];
    for (k, g) in arr.iter().enumerate() {
        let gctx = format!("{ctx}[{k}]");
        let idx: Vec<usize> = g
            .get("params")
            .and_then(|p| p.as_array())
            .ok_or_else(|| Error::Field {
                context: gctx.clone(),
                message: "missing `params` (a list of parameter indices)".into(),
            })?
            .iter()
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| Error::Field {
                    context: gctx.clone(),
                    message: format!("parameter index {v} is not a non-negative integer"),
                })
            })
            .collect::<Result<_>>()?;
        if let Some(other) = g.as_object().and_then(|o| o.keys().find(|k| *k != "params" && *k != "hparams")) {
            return Err(Error::Field {
                context: gctx.clone(),
                message: format!("unknown key `{other}`; a group is {{\"params\": [indices], \"hparams\": {{…}}}}"),
            });
        }
        let mut merged = base.clone();
        if let Some(o) = g.get("hparams") {
            let o = o
                .as_object()
                .ok_or_else(|| Error::Field { context: gctx.clone(), message: "`hparams` must be an object".into() })?;
            for (k, v) in o {
                merged.insert(k.clone(), v.clone());
            }
        }
        let part = build(&Value::Object(merged), &idx)?;
        parts.push((idx, part));
    }
    Ok(boxed(Partition::new(parts)))
}

fn build_torch(name: &str, hparams: &Value) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new(format!("torch.{name}"), hparams)?;
    let maximize_default = false;
    let tx: Box<dyn Transform> = match name {
        "sgd" => {
            let lr = k.lr("lr", Some(1e-3))?;
            let t = torch::Sgd::new(torch::SgdConfig {
                lr,
                momentum: k.f64("momentum", 0.0)?,
                dampening: k.f64("dampening", 0.0)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                nesterov: k.bool("nesterov", false)?,
                maximize: k.bool("maximize", maximize_default)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "adam" | "adamw" => {
            let lr = k.lr("lr", Some(1e-3))?;
            let betas = k.pair("betas", (0.9, 0.999))?;
            let eps = k.f64("eps", 1e-8)?;
            let wd = k.f64("weight_decay", if name == "adamw" { 1e-2 } else { 0.0 })?;
            let decoupled = k.bool("decoupled_weight_decay", name == "adamw")?;
            let t = torch::Adam::new(torch::AdamConfig {
                lr,
                betas,
                eps,
                weight_decay: wd,
                decay: if decoupled { WeightDecay::Decoupled } else { WeightDecay::L2 },
                amsgrad: k.bool("amsgrad", false)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "sparseadam" => {
            let t = torch::SparseAdam::new(torch::SparseAdamConfig {
                lr: k.lr("lr", Some(1e-3))?,
                betas: k.pair("betas", (0.9, 0.999))?,
                eps: k.f64("eps", 1e-8)?,
                maximize: k.bool("maximize", false)?,
            })?;
            boxed(t)
        }
        "adagrad" => {
            let t = torch::Adagrad::new(torch::AdagradConfig {
                lr: k.lr("lr", Some(1e-2))?,
                lr_decay: k.f64("lr_decay", 0.0)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                initial_accumulator_value: k.f64("initial_accumulator_value", 0.0)?,
                eps: k.f64("eps", 1e-10)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "rmsprop" => {
            let t = torch::Rmsprop::new(torch::RmspropConfig {
                lr: k.lr("lr", Some(1e-2))?,
                alpha: k.f64("alpha", 0.99)?,
                eps: k.f64("eps", 1e-8)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                momentum: k.f64("momentum", 0.0)?,
                centered: k.bool("centered", false)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "adadelta" => {
            let t = torch::Adadelta::new(torch::AdadeltaConfig {
                lr: k.lr("lr", Some(1.0))?,
                rho: k.f64("rho", 0.9)?,
                eps: k.f64("eps", 1e-6)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "adamax" => {
            let t = torch::Adamax::new(torch::AdamaxConfig {
                lr: k.lr("lr", Some(2e-3))?,
                betas: k.pair("betas", (0.9, 0.999))?,
                eps: k.f64("eps", 1e-8)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "nadam" => {
            let lr = k.lr("lr", Some(2e-3))?;
            let betas = k.pair("betas", (0.9, 0.999))?;
            let eps = k.f64("eps", 1e-8)?;
            let wd = k.f64("weight_decay", 0.0)?;
            let md = k.f64("momentum_decay", 4e-3)?;
            let dec = if k.bool("decoupled_weight_decay", false)? { WeightDecay::Decoupled } else { WeightDecay::L2 };
            let maximize = k.bool("maximize", false)?;
            let t = torch::Nadam::new(torch::NadamConfig {
                lr,
                betas,
                eps,
                weight_decay: wd,
                momentum_decay: md,
                decay: dec,
                maximize,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "radam" => {
            let lr = k.lr("lr", Some(1e-3))?;
            let betas = k.pair("betas", (0.9, 0.999))?;
            let eps = k.f64("eps", 1e-8)?;
            let wd = k.f64("weight_decay", 0.0)?;
            let dec = if k.bool("decoupled_weight_decay", false)? { WeightDecay::Decoupled } else { WeightDecay::L2 };
            let maximize = k.bool("maximize", false)?;
            let t = torch::Radam::new(torch::RadamConfig { lr, betas, eps, weight_decay: wd, decay: dec, maximize })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "rprop" => {
            let t = torch::Rprop::new(torch::RpropConfig {
                lr: k.f64("lr", 1e-2)?,
                etas: k.pair("etas", (0.5, 1.2))?,
                step_sizes: k.pair("step_sizes", (1e-6, 50.0))?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "asgd" => {
            let t = torch::Asgd::new(torch::AsgdConfig {
                lr: k.lr("lr", Some(1e-2))?,
                lambd: k.f64("lambd", 1e-4)?,
                alpha: k.f64("alpha", 0.75)?,
                t0: k.f64("t0", 1e6)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                maximize: k.bool("maximize", false)?,
            })?;
            ignore_impl_flags(&mut k)?;
            boxed(t)
        }
        "adafactor" => {
            let lr = k.lr("lr", Some(1e-2))?;
            let b2d = k.f64("beta2_decay", -0.8)?;
            // `eps: tuple[Optional[float], float]`: eps1 may be None, eps2 may not.
            let finite = |x: &Value| x.as_f64().filter(|x| x.is_finite());
            let eps = match k.present("eps")? {
                None => (None, 1e-3),
                Some(Value::Array(a))
                    if a.len() == 2 && (a[0].is_null() || finite(&a[0]).is_some()) && finite(&a[1]).is_some() =>
                {
                    (finite(&a[0]), finite(&a[1]).unwrap_or(1e-3))
                }
                Some(v) => {
                    return Err(Error::Field {
                        context: "torch.adafactor: `eps`".into(),
                        message: format!("expected [eps1 or null, eps2], got {v}"),
                    })
                }
            };
            let t = torch::Adafactor::new(torch::AdafactorConfig {
                lr,
                beta2_decay: b2d,
                eps,
                d: k.f64("d", 1.0)?,
                weight_decay: k.f64("weight_decay", 0.0)?,
                maximize: k.bool("maximize", false)?,
            })?;
            let _ = k.opt_bool("foreach")?;
            boxed(t)
        }
        "muon" => {
            let lr = k.lr("lr", Some(1e-3))?;
            let coeffs = match k.f64s("ns_coefficients")? {
                None => [3.4445, -4.7750, 2.0315],
                Some(v) if v.len() == 3 => [v[0], v[1], v[2]],
                Some(_) => return Err(crate::error::invalid("Coefficients must be a tuple of exactly 3 values")),
            };
            let adjust = match k.opt_str("adjust_lr_fn")?.unwrap_or("original") {
                "original" => MuonLrAdjust::Original,
                "match_rms_adamw" => MuonLrAdjust::MatchRmsAdamw,
                other => {
                    return Err(crate::error::invalid(format!(
                        "Adjust learning rate function {other} is not supported"
                    )))
                }
            };
            let t = torch::Muon::new(torch::MuonConfig {
                lr,
                weight_decay: k.f64("weight_decay", 0.1)?,
                momentum: k.f64("momentum", 0.95)?,
                nesterov: k.bool("nesterov", true)?,
                coeffs,
                eps: k.f64("eps", 1e-7)?,
                ns_steps: k.u64("ns_steps", 5)? as usize,
                adjust,
            })?;
            let _ = k.bool("use_addmm", false)?;
            boxed(t)
        }
        other => return Err(unknown("torch optimizer", other, TORCH_OPTIMIZERS)),
    };
    k.finish()?;
    Ok(tx)
}

/// Accepts torch's implementation-selection flags, which do not change the numbers.
fn ignore_impl_flags(k: &mut Kwargs) -> Result<()> {
    // `foreach` and `fused` are `Optional[bool]` in torch; the other two plain booleans.
    for key in ["foreach", "fused"] {
        let _ = k.opt_bool(key)?;
    }
    for key in ["capturable", "differentiable"] {
        let _ = k.bool(key, false)?;
    }
    Ok(())
}

/// A list spec `[name, kwargs]`.
pub(crate) fn link(v: &Value, ctx: &str) -> Result<(String, Value)> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0].is_string() => {
            Ok((a[0].as_str().unwrap_or_default().to_string(), a[1].clone()))
        }
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            Ok((a[0].as_str().unwrap_or_default().to_string(), Value::Null))
        }
        Value::String(s) => Ok((s.clone(), Value::Null)),
        other => {
            Err(Error::Field { context: ctx.to_string(), message: format!("expected [name, {{kwargs}}], got {other}") })
        }
    }
}

/// `add_decayed_weights(weight_decay, mask)`, the mask read from argument `key` (one entry per
/// parameter of `n`).
fn masked_decay(k: &mut Kwargs, wd: f64, key: &'static str, n: usize) -> Result<Box<dyn Transform>> {
    with_mask(boxed(AddDecayedWeights::new(wd)), k.mask(key, n)?)
}

/// optax `masked(tx, mask)`: `tx` itself when there is no mask.
fn with_mask(tx: Box<dyn Transform>, mask: Option<Vec<bool>>) -> Result<Box<dyn Transform>> {
    Ok(match mask {
        Some(m) => Partition::masked(tx, &m),
        None => tx,
    })
}

/// The shapes of the parameters `keep` selects.
fn select(shapes: &[Vec<usize>], keep: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    (0..shapes.len()).filter(|&i| keep(i)).map(|i| shapes[i].clone()).collect()
}

/// An optax optimizer given as `[name, kwargs]` in argument `key`, built for `shapes`.
fn inner_optax(k: &mut Kwargs, key: &'static str, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let ctx = format!("{}: `{key}`", k.context);
    let v = k
        .present(key)?
        .ok_or_else(|| Error::Field { context: ctx.clone(), message: "missing required argument".into() })?;
    let (n, kw) = link(v, &ctx)?;
    build_optax(&n, &kw, shapes)
}

fn adam_chain(k: &mut Kwargs, nesterov_default: bool, wd_default: Option<f64>, n: usize) -> Result<Box<dyn Transform>> {
    let lr = k.lr("learning_rate", None)?;
    let (b1, b2, eps, eps_root) =
        (k.f64("b1", 0.9)?, k.f64("b2", 0.999)?, k.f64("eps", 1e-8)?, k.f64("eps_root", 0.0)?);
    let mu_dtype = k.mu_dtype()?;
    let nesterov = k.bool("nesterov", nesterov_default)?;
    let mut links = vec![boxed(ScaleByAdam::new(b1, b2, eps, eps_root, nesterov).mu_dtype(mu_dtype))];
    if let Some(d) = wd_default {
        let wd = k.f64("weight_decay", d)?;
        links.push(masked_decay(k, wd, "mask", n)?);
    }
    links.push(boxed(ScaleByLearningRate::new(lr, true)));
    Ok(chain(links))
}

fn build_optax(name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    // A chain link or a wrapper's inner optimizer is stepped on gradients.
    if crate::closure::is_closure_optimizer("optax", name) {
        return Err(Error::NeedsClosure(format!("optax.{name}")));
    }
    let mut k = Kwargs::new(format!("optax.{name}"), hparams)?;
    let n = shapes.len();
    let lr_link = |lr: LearningRate| boxed(ScaleByLearningRate::new(lr, true));
    let tx: Box<dyn Transform> = match name {
        "chain" => {
            let links = k.value("links").and_then(|v| v.as_array()).ok_or_else(|| Error::Field {
                context: "optax.chain".into(),
                message: "missing `links` (a list of [name, kwargs])".into(),
            })?;
            let mut txs = vec![];
            for (i, l) in links.iter().enumerate() {
                let (n, kw) = link(l, &format!("optax.chain: links[{i}]"))?;
                txs.push(build_optax(&n, &kw, shapes)?);
            }
            chain(txs)
        }
        "multisteps" | "MultiSteps" => {
            let every_k = k.req_u64("every_k")?;
            let mean = k.bool("use_grad_mean", true)?;
            let skip = match k.value("should_skip_update_fn") {
                None => SkipUpdate::Never,
                Some(v) => {
                    let ctx = "optax.multisteps: `should_skip_update_fn`";
                    let (f, kw) = link(v, ctx)?;
                    let mut fk = Kwargs::new(format!("optax.{f}"), &kw)?;
                    let skip = match f.as_str() {
                        "skip_not_finite" => SkipUpdate::NotFinite,
                        "skip_large_updates" => {
                            SkipUpdate::LargeUpdates { max_squared_norm: fk.req_f64("max_squared_norm")? }
                        }
                        other => {
                            return Err(unknown(
                                "should_skip_update_fn",
                                other,
                                &["skip_not_finite", "skip_large_updates"],
                            ))
                        }
                    };
                    fk.finish()?;
                    skip
                }
            };
            let (n, kw) = link(k.value("inner").unwrap_or(&Value::Null), "optax.multisteps: inner")?;
            boxed(MultiSteps::new(build_optax(&n, &kw, shapes)?, every_k, mean)?.skip_if(skip))
        }
        "lookahead" => {
            let sync = k.req_u64("sync_period")?;
            let alpha = k.req_f64("slow_step_size")?;
            let (n, kw) = link(k.value("inner").unwrap_or(&Value::Null), "optax.lookahead: inner")?;
            boxed(Lookahead::new(build_optax(&n, &kw, shapes)?, sync, alpha)?)
        }
        "sgd" => {
            let lr = k.lr("learning_rate", None)?;
            let momentum = k.opt_f64("momentum")?;
            let nesterov = k.bool("nesterov", false)?;
            let _ = k.value("accumulator_dtype");
            match momentum {
                Some(m) => chain(vec![boxed(Trace::new(m, nesterov)), lr_link(lr)]),
                None => chain(vec![lr_link(lr)]),
            }
        }
        "adam" => adam_chain(&mut k, false, None, n)?,
        "nadam" => adam_chain(&mut k, true, None, n)?,
        "adamw" => adam_chain(&mut k, false, Some(1e-4), n)?,
        "nadamw" => adam_chain(&mut k, true, Some(1e-4), n)?,
        "amsgrad" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByAdam::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 0.0)?,
                false,
            )
            .amsgrad()
            .bias_correction(k.bool("bias_correction_mu", true)?, k.bool("bias_correction_nu", true)?);
            let t = t.mu_dtype(k.mu_dtype()?);
            chain(vec![boxed(t), lr_link(lr)])
        }
        "adamax" | "adamaxw" => {
            let lr = k.lr("learning_rate", None)?;
            let mut links =
                vec![boxed(ScaleByAdamax::new(k.f64("b1", 0.9)?, k.f64("b2", 0.999)?, k.f64("eps", 1e-8)?))];
            if name == "adamaxw" {
                let wd = k.f64("weight_decay", 1e-4)?;
                links.push(masked_decay(&mut k, wd, "mask", n)?);
            }
            links.push(lr_link(lr));
            chain(links)
        }
        "adagrad" => {
            let lr = k.lr("learning_rate", None)?;
            chain(vec![
                boxed(ScaleByRss::new(k.f64("initial_accumulator_value", 0.1)?, k.f64("eps", 1e-7)?)),
                lr_link(lr),
            ])
        }
        "adadelta" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let (rho, eps, wd) = (k.f64("rho", 0.9)?, k.f64("eps", 1e-6)?, k.f64("weight_decay", 0.0)?);
            let decay = masked_decay(&mut k, wd, "weight_decay_mask", n)?;
            chain(vec![decay, boxed(ScaleByAdadelta::new(rho, eps)), lr_link(lr)])
        }
        "rmsprop" => {
            let lr = k.lr("learning_rate", None)?;
            let (decay, eps, init, in_sqrt) =
                (k.f64("decay", 0.9)?, k.f64("eps", 1e-8)?, k.f64("initial_scale", 0.0)?, k.bool("eps_in_sqrt", true)?);
            let (centered, momentum, nesterov, bc) = (
                k.bool("centered", false)?,
                k.opt_f64("momentum")?,
                k.bool("nesterov", false)?,
                k.bool("bias_correction", false)?,
            );
            let mut links = vec![
                if centered {
                    boxed(ScaleByStddev::new(decay, eps, init, in_sqrt, bc))
                } else {
                    boxed(ScaleByRms::new(decay, eps, init, in_sqrt, bc))
                },
                lr_link(lr),
            ];
            if let Some(m) = momentum {
                links.push(boxed(Trace::new(m, nesterov)));
            }
            chain(links)
        }
        "radam" => {
            let lr = k.lr("learning_rate", None)?;
            let mut t = ScaleByRadam::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 0.0)?,
                k.f64("threshold", 5.0)?,
            );
            if k.bool("nesterov", false)? {
                t = t.nesterov();
            }
            chain(vec![boxed(t), lr_link(lr)])
        }
        "rprop" => {
            let lr = k.req_f64("learning_rate")?;
            let t = ScaleByRprop::new(
                lr,
                k.f64("eta_minus", 0.5)?,
                k.f64("eta_plus", 1.2)?,
                k.f64("min_step_size", 1e-6)?,
                k.f64("max_step_size", 50.0)?,
            );
            chain(vec![boxed(t), boxed(Scale::new(-1.0))])
        }
        "lion" => {
            let lr = k.lr("learning_rate", None)?;
            let (b1, b2) = (k.f64("b1", 0.9)?, k.f64("b2", 0.99)?);
            k.mu_dtype_f32_only()?;
            let wd = k.f64("weight_decay", 1e-3)?;
            chain(vec![boxed(ScaleByLion::new(b1, b2)), masked_decay(&mut k, wd, "mask", n)?, lr_link(lr)])
        }
        "lamb" => {
            let lr = k.lr("learning_rate", None)?;
            let (b1, b2, eps, eps_root, wd) = (
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-6)?,
                k.f64("eps_root", 0.0)?,
                k.f64("weight_decay", 0.0)?,
            );
            chain(vec![
                boxed(ScaleByAdam::new(b1, b2, eps, eps_root, false)),
                masked_decay(&mut k, wd, "mask", n)?,
                boxed(ScaleByTrustRatio::new(0.0, 1.0, 0.0)),
                lr_link(lr),
            ])
        }
        "lars" => {
            let lr = k.lr("learning_rate", None)?;
            let (wd, tc, eps, m, nesterov) = (
                k.f64("weight_decay", 0.0)?,
                k.f64("trust_coefficient", 0.001)?,
                k.f64("eps", 0.0)?,
                k.f64("momentum", 0.9)?,
                k.bool("nesterov", false)?,
            );
            chain(vec![
                masked_decay(&mut k, wd, "weight_decay_mask", n)?,
                with_mask(boxed(ScaleByTrustRatio::new(0.0, tc, eps)), k.mask("trust_ratio_mask", n)?)?,
                lr_link(lr),
                boxed(Trace::new(m, nesterov)),
            ])
        }
        "yogi" => {
            let lr = k.lr("learning_rate", None)?;
            chain(vec![
                boxed(ScaleByYogi::new(k.f64("b1", 0.9)?, k.f64("b2", 0.999)?, k.f64("eps", 1e-3)?, 0.0, 1e-6)),
                lr_link(lr),
            ])
        }
        "adabelief" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByBelief::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-16)?,
                k.f64("eps_root", 1e-16)?,
                k.bool("nesterov", false)?,
            );
            let mut links = vec![boxed(t)];
            let mask = k.mask("weight_decay_mask", n)?;
            if let Some(wd) = k.opt_f64("weight_decay")? {
                links.push(with_mask(boxed(AddDecayedWeights::new(wd)), mask)?);
            }
            links.push(lr_link(lr));
            chain(links)
        }
        "novograd" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByNovograd::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.25)?,
                k.f64("eps", 1e-6)?,
                k.f64("eps_root", 0.0)?,
                k.f64("weight_decay", 0.0)?,
            );
            chain(vec![boxed(t), lr_link(lr)])
        }
        "adan" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByAdan::new(
                k.f64("b1", 0.98)?,
                k.f64("b2", 0.92)?,
                k.f64("b3", 0.99)?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 1e-8)?,
            );
            let wd = k.f64("weight_decay", 0.0)?;
            chain(vec![boxed(t), masked_decay(&mut k, wd, "mask", n)?, lr_link(lr)])
        }
        "sm3" => {
            let lr = k.req_f64("learning_rate")?;
            // optax: scale(-learning_rate), as a rate that can be set (inject_hyperparams).
            chain(vec![boxed(ScaleBySm3::new(k.f64("momentum", 0.9)?, 1.0, 1e-8)), lr_link(LearningRate::Constant(lr))])
        }
        "fromage" => {
            let lr = k.req_f64("learning_rate")?;
            let min_norm = k.f64("min_norm", 1e-6)?;
            let mult = 1.0 / (1.0 + lr * lr).sqrt();
            // The rate enters the decay factor too, fixed here: a plain scale, which
            // set_learning_rate does not see (it would change the step but not the decay).
            chain(vec![
                boxed(ScaleByTrustRatio::new(min_norm, 1.0, 0.0)),
                boxed(Scale::new(-(lr * mult))),
                boxed(AddDecayedWeights::new(mult - 1.0)),
            ])
        }
        "sign_sgd" => {
            let lr = k.lr("learning_rate", None)?;
            chain(vec![boxed(ScaleBySign), lr_link(lr)])
        }
        "signum" => {
            let lr = k.lr("learning_rate", None)?;
            let beta = k.f64("beta", 0.9)?;
            let _ = k.value("accumulator_dtype");
            chain(vec![boxed(Ema::new(beta, false)), boxed(ScaleBySign), lr_link(lr)])
        }
        "optimistic_gradient_descent" => {
            let lr = k.lr("learning_rate", None)?;
            chain(vec![boxed(ScaleByOptimisticGradient::new(k.f64("alpha", 1.0)?, k.f64("beta", 1.0)?)), lr_link(lr)])
        }
        "optimistic_adam" | "optimistic_adam_v2" => {
            let v2 = name.ends_with("v2");
            let lr = k.lr("learning_rate", None)?;
            let (alpha, beta, lr) = if v2 {
                (k.f64("alpha", 1.0)?, k.f64("beta", 1.0)?, lr)
            } else {
                let Some(rate) = lr.constant() else {
                    return Err(k.err(
                        "learning_rate",
                        "this version of `optimistic_adam` does not support learning rate schedules but \
                         `optimistic_adam_v2` does",
                    ));
                };
                // The learning rate and the optimism weight the optimistic gradient; the last
                // link only flips the sign.
                (rate, k.opt_f64("optimism")?.unwrap_or(rate), LearningRate::Constant(1.0))
            };
            let (b1, b2, eps, eps_root) =
                (k.f64("b1", 0.9)?, k.f64("b2", 0.999)?, k.f64("eps", 1e-8)?, k.f64("eps_root", 0.0)?);
            let mu_dtype = k.mu_dtype()?;
            let nesterov = k.bool("nesterov", true)?;
            chain(vec![
                boxed(ScaleByAdam::new(b1, b2, eps, eps_root, nesterov).mu_dtype(mu_dtype)),
                boxed(ScaleByOptimisticGradient::new(alpha, beta)),
                lr_link(lr),
            ])
        }
        "adafactor" => {
            let lr = match k.value("learning_rate") {
                None => None,
                Some(_) => Some(k.lr("learning_rate", None)?),
            };
            let min_dim = k.u64("min_dim_size_to_factor", 128)? as usize;
            let (decay_rate, offset) = (k.f64("decay_rate", 0.8)?, k.u64("decay_offset", 0)?);
            let scale_param = k.bool("multiply_by_parameter_scale", true)?;
            let clip = match k.value("clipping_threshold") {
                None if k.map.contains_key("clipping_threshold") => None,
                _ => Some(k.f64("clipping_threshold", 1.0)?),
            };
            let momentum = k.opt_f64("momentum")?;
            let _ = k.value("dtype_momentum");
            let wdr = k.opt_f64("weight_decay_rate")?;
            let (eps, factored) = (k.f64("eps", 1e-30)?, k.bool("factored", true)?);
            // Without `weight_decay_rate` optax adds no decay, so the mask has nothing to select.
            let wd_mask = k.mask("weight_decay_mask", n)?;
            let rms = ScaleByFactoredRms::new(factored, decay_rate, offset, min_dim, eps);
            let clip = clip.map(ClipByBlockRms::new);
            let lr = lr.map(|lr| ScaleByLearningRate::new(lr, false));
            let param_scale = scale_param.then(|| ScaleByParamBlockRms::new(1e-3));
            if momentum.is_none() && wdr.is_none() {
                // The default recipe, as one transformation with a fused step.
                boxed(Adafactor::new(rms, clip, lr, param_scale))
            } else {
                let mut links = vec![boxed(rms)];
                links.extend(clip.map(boxed));
                links.extend(lr.map(boxed));
                links.extend(param_scale.map(boxed));
                links.extend(momentum.map(|m| boxed(Ema::new(m, false))));
                if let Some(w) = wdr {
                    links.push(with_mask(boxed(AddDecayedWeights::new(w)), wd_mask)?);
                }
                links.push(boxed(Scale::new(-1.0)));
                chain(links)
            }
        }
        "contrib.acprop" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByAcprop::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-16)?,
                k.f64("eps_root", 1e-16)?,
            );
            let wd = k.f64("weight_decay", 0.0)?;
            chain(vec![boxed(t), masked_decay(&mut k, wd, "mask", n)?, lr_link(lr)])
        }
        "contrib.simplified_ademamix" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleBySimplifiedAdemamix::new(
                k.f64("b1", 0.99)?,
                k.f64("b2", 0.95)?,
                k.lr("alpha", Some(0.0))?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 0.0)?,
            );
            let wd = k.f64("weight_decay", 0.0)?;
            chain(vec![boxed(t), masked_decay(&mut k, wd, "mask", n)?, lr_link(lr)])
        }
        "contrib.dowg" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let init = k.opt_f64("init_estim_sq_dist")?;
            let eps = k.f64("eps", 1e-4)?;
            let mask = k.mask("mask", n)?;
            let mut links = vec![];
            if let Some(wd) = k.opt_f64("weight_decay")? {
                links.push(with_mask(boxed(AddDecayedWeights::new(wd)), mask)?);
            }
            links.push(boxed(ScaleByDowg::new(init, eps)));
            links.push(lr_link(lr));
            chain(links)
        }
        "contrib.mechanize" => {
            let base = inner_optax(&mut k, "base_optimizer", shapes)?;
            let num_betas = k.u64("num_betas", 6)?;
            // βᵢ = 1 − 10⁻ⁱ rounds to 1 in float32 from i = 8 on: more scales add nothing.
            if !(1..=64).contains(&num_betas) {
                return Err(k.err("num_betas", format!("must be between 1 and 64, got {num_betas}")));
            }
            let num_betas = num_betas as usize;
            boxed(Mechanize::new(
                base,
                k.f64("weight_decay", 1e-2)?,
                k.f64("eps", 1e-8)?,
                k.f64("s_init", 1e-6)?,
                num_betas,
            ))
        }
        "contrib.ademamix" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByAdemamix::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("b3", 0.9999)?,
                k.f64("alpha", 5.0)?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 0.0)?,
            );
            k.mu_dtype_f32_only()?;
            let wd = k.f64("weight_decay", 0.0)?;
            chain(vec![boxed(t), masked_decay(&mut k, wd, "mask", n)?, lr_link(lr)])
        }
        "contrib.adopt" => {
            let lr = k.lr("learning_rate", None)?;
            let t = ScaleByAdopt::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.9999)?,
                k.f64("eps", 1e-6)?,
                k.bool("nesterov", false)?,
                k.bool("use_clipping", true)?,
            );
            k.mu_dtype_f32_only()?;
            chain(vec![boxed(t), lr_link(lr)])
        }
        "contrib.cocob" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let (alpha, eps, wd) = (k.f64("alpha", 100.0)?, k.f64("eps", 1e-8)?, k.f64("weight_decay", 0.0)?);
            chain(vec![
                masked_decay(&mut k, wd, "mask", n)?,
                boxed(ScaleByLearningRate::new(lr, false)),
                boxed(ScaleByCocob::new(alpha, eps)),
            ])
        }
        "contrib.dadapt_adamw" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let (b1, b2) = k.pair("betas", (0.9, 0.999))?;
            boxed(DadaptAdamw::new(
                lr,
                b1,
                b2,
                k.f64("eps", 1e-8)?,
                k.f64("estim_lr0", 1e-6)?,
                k.f64("weight_decay", 0.0)?,
            ))
        }
        "contrib.prodigy" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let (b1, b2) = k.pair("betas", (0.9, 0.999))?;
            let b3 = k.opt_f64("beta3")?;
            let t = Prodigy::new(
                lr,
                b1,
                b2,
                b3,
                k.f64("eps", 1e-8)?,
                k.f64("estim_lr0", 1e-6)?,
                k.f64("estim_lr_coef", 1.0)?,
                k.f64("weight_decay", 0.0)?,
                k.bool("safeguard_warmup", false)?,
            );
            // The decay is inside prodigy's own update, not a link a partition could select.
            if k.mask("weight_decay_mask", n)?.is_some_and(|m| m.iter().any(|on| !on)) {
                return Err(k.err(
                    "weight_decay_mask",
                    "a mask that excludes parameters is not implemented for contrib.prodigy",
                ));
            }
            boxed(t)
        }
        "contrib.dog" => {
            let lr = k.lr("learning_rate", Some(1.0))?;
            let init = match k.present("init_step")? {
                None => DogInit::Heuristic(1e-6),
                Some(Value::Array(a)) if a.len() == 2 => {
                    let v = a[1].as_f64().filter(|v| v.is_finite()).ok_or_else(|| Error::Field {
                        context: "optax.contrib.dog: `init_step`".into(),
                        message: format!("expected [kind, finite value], got {}", a[1]),
                    })?;
                    match a[0].as_str() {
                        Some("heuristic") => DogInit::Heuristic(v),
                        Some("distance") => DogInit::Distance(v),
                        Some("learning_rate") => DogInit::LearningRate(v),
                        other => {
                            return Err(unknown(
                                "init_step kind",
                                &format!("{other:?}"),
                                &["heuristic", "distance", "learning_rate"],
                            ))
                        }
                    }
                }
                Some(v) => {
                    return Err(Error::Field {
                        context: "optax.contrib.dog: `init_step`".into(),
                        message: format!("expected [kind, value], got {v}"),
                    })
                }
            };
            let eps = k.f64("eps", 1e-8)?;
            let mut links = vec![];
            let mask = k.mask("mask", n)?;
            if let Some(wd) = k.opt_f64("weight_decay")? {
                links.push(with_mask(boxed(AddDecayedWeights::new(wd)), mask)?);
            }
            links.push(boxed(ScaleByDog::new(init, eps)));
            links.push(lr_link(lr));
            chain(links)
        }
        "contrib.madgrad" => {
            let lr = k.lr("learning_rate", None)?;
            let (m, wd, eps) = (k.f64("momentum", 0.9)?, k.f64("weight_decay", 0.0)?, k.f64("eps", 1e-6)?);
            chain(vec![boxed(AddDecayedWeights::new(wd)), boxed(ScaleByMadgrad::new(lr, m, eps))])
        }
        "contrib.schedule_free_sgd" | "contrib.schedule_free_adamw" => {
            let adamw = name.ends_with("adamw");
            let lr0 = k.f64("learning_rate", if adamw { 0.0025 } else { 1.0 })?;
            let warmup = k.opt_u64("warmup_steps")?;
            let b1 = k.f64("b1", 0.9)?;
            let power = k.f64("weight_lr_power", 2.0)?;
            let _ = k.value("state_dtype");
            let lr = || match warmup {
                Some(w) => LearningRate::Schedule(sch::warmup_constant(0.0, lr0, w)),
                None => LearningRate::Constant(lr0),
            };
            let base = if adamw {
                let (b2, eps, wd) = (k.f64("b2", 0.999)?, k.f64("eps", 1e-8)?, k.f64("weight_decay", 0.0)?);
                chain(vec![
                    boxed(ScaleByRms::new(b2, eps, 0.0, false, true)),
                    boxed(AddDecayedWeights::new(wd)),
                    lr_link(lr()),
                ])
            } else {
                let mut links = vec![];
                if let Some(wd) = k.opt_f64("weight_decay")? {
                    links.push(boxed(AddDecayedWeights::new(wd)));
                }
                links.push(lr_link(lr()));
                chain(links)
            };
            boxed(ScheduleFree::new(base, lr(), b1, power))
        }
        "contrib.muon" => {
            let lr = k.req_f64("learning_rate")?;
            let coeffs = match k.f64s("ns_coeffs")? {
                None => [3.4445, -4.7750, 2.0315],
                Some(v) if v.len() == 3 => [v[0], v[1], v[2]],
                Some(_) => return Err(crate::error::invalid("ns_coeffs must have shape (3,)")),
            };
            let steps = k.u64("ns_steps", 5)? as usize;
            let (beta, eps, wd, nesterov) =
                (k.f64("beta", 0.95)?, k.f64("eps", 1e-8)?, k.f64("weight_decay", 0.0)?, k.bool("nesterov", true)?);
            let (ab1, ab2, aeps_root, awd) = (
                k.f64("adam_b1", 0.9)?,
                k.f64("adam_b2", 0.999)?,
                k.f64("adam_eps_root", 0.0)?,
                k.f64("adam_weight_decay", 0.0)?,
            );
            let alr = k.opt_f64("adam_learning_rate")?.unwrap_or(lr);
            let muon_idx: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].len() == 2).collect();
            let adam_idx: Vec<usize> = (0..shapes.len()).filter(|&i| shapes[i].len() != 2).collect();
            let muon = chain(vec![
                boxed(ScaleByMuon::new(coeffs, steps, beta, eps, nesterov)),
                boxed(ScaleByShape::default()),
                boxed(AddDecayedWeights::new(wd)),
                lr_link(LearningRate::Constant(lr)),
            ]);
            let adam = chain(vec![
                boxed(ScaleByAdam::new(ab1, ab2, eps, aeps_root, nesterov)),
                boxed(AddDecayedWeights::new(awd)),
                lr_link(LearningRate::Constant(alr)),
            ]);
            let mut groups = vec![(muon_idx, muon)];
            if !adam_idx.is_empty() {
                groups.push((adam_idx, adam));
            }
            boxed(Partition::new(groups))
        }
        // transformations
        "adaptive_grad_clip" => boxed(AdaptiveGradClip::new(k.req_f64("clipping")?, k.f64("eps", 1e-3)?)),
        "add_decayed_weights" => {
            let wd = k.f64("weight_decay", 0.0)?;
            masked_decay(&mut k, wd, "mask", n)?
        }
        "apply_every" => boxed(ApplyEvery::new(k.u64("k", 1)?)?),
        "keep_params_nonnegative" => boxed(KeepParamsNonnegative),
        // SAM's adversarial helper: `g / ‖g‖`, the norm over all parameters.
        "contrib.normalize" => boxed(NormalizeByUpdateNorm::new(1.0, 0.0)),
        "normalize_by_update_norm" => {
            boxed(NormalizeByUpdateNorm::new(k.f64("scale_factor", 1.0)?, k.f64("eps", 1e-6)?))
        }
        "set_to_zero" => boxed(SetToZero),
        "zero_nans" => boxed(ZeroNans),
        // Per-parameter masks and labels, all through `Partition`.
        "masked" => {
            let mask = k.req_mask("mask", n)?;
            let inner = inner_optax(&mut k, "inner", &select(shapes, |i| mask[i]))?;
            Partition::masked(inner, &mask)
        }
        "freeze" => Partition::masked(boxed(SetToZero), &k.req_mask("mask", n)?),
        "selective_transform" => {
            let frozen = k.req_mask("freeze_mask", n)?;
            let inner = inner_optax(&mut k, "optimizer", &select(shapes, |i| !frozen[i]))?;
            Partition::split(&frozen, boxed(SetToZero), inner)
        }
        "partition" | "multi_transform" => {
            let labels = k.labels("param_labels", n)?;
            let ctx = format!("optax.{name}: `transforms`");
            let txs = match k.present("transforms")? {
                Some(Value::Object(o)) => o,
                Some(other) => {
                    return Err(Error::Field {
                        context: ctx,
                        message: format!("expected an object {{label: [name, kwargs]}}, got {other}"),
                    })
                }
                None => return Err(Error::Field { context: ctx, message: "missing required argument".into() }),
            };
            let mut built = vec![];
            for (label, spec) in txs {
                let (tn, kw) = link(spec, &format!("{ctx}[{label}]"))?;
                built.push((label.clone(), build_optax(&tn, &kw, &select(shapes, |i| labels[i] == *label))?));
            }
            boxed(Partition::labelled(built, &labels)?)
        }
        "apply_if_finite" => {
            let max_errors = k.req_u64("max_consecutive_errors")?;
            boxed(ApplyIfFinite::new(inner_optax(&mut k, "inner", shapes)?, max_errors))
        }
        // The hyper-parameters injected into the state: the inner optimizer with its arguments;
        // a rate changed before each step is given as the inner `learning_rate`'s list of
        // per-step values.
        "inject_hyperparams" => {
            let _ = k.opt_str("hyperparam_dtype")?;
            inner_optax(&mut k, "inner", shapes)?
        }
        "centralize" => boxed(Centralize::default()),
        "clip" => boxed(Clip::new(k.req_f64("max_delta")?)),
        "clip_by_block_rms" => boxed(ClipByBlockRms::new(k.req_f64("threshold")?)),
        "clip_by_global_norm" => boxed(ClipByGlobalNorm::new(k.req_f64("max_norm")?)),
        "ema" => boxed(Ema::new(k.req_f64("decay")?, k.bool("debias", true)?)),
        "identity" => chain(vec![]),
        "scale" => boxed(Scale::new(k.req_f64("step_size")?)),
        "scale_by_adam" => boxed(
            ScaleByAdam::new(
                k.f64("b1", 0.9)?,
                k.f64("b2", 0.999)?,
                k.f64("eps", 1e-8)?,
                k.f64("eps_root", 0.0)?,
                k.bool("nesterov", false)?,
            )
            .mu_dtype(k.mu_dtype()?),
        ),
        "scale_by_belief" => boxed(ScaleByBelief::new(
            k.f64("b1", 0.9)?,
            k.f64("b2", 0.999)?,
            k.f64("eps", 1e-16)?,
            k.f64("eps_root", 1e-16)?,
            k.bool("nesterov", false)?,
        )),
        "scale_by_learning_rate" => {
            let lr = k.lr("learning_rate", None)?;
            boxed(ScaleByLearningRate::new(lr, k.bool("flip_sign", true)?))
        }
        "scale_by_lion" => boxed(ScaleByLion::new(k.f64("b1", 0.9)?, k.f64("b2", 0.99)?)),
        "scale_by_param_block_rms" => boxed(ScaleByParamBlockRms::new(k.f64("min_scale", 1e-3)?)),
        "scale_by_rms" => boxed(ScaleByRms::new(
            k.f64("decay", 0.9)?,
            k.f64("eps", 1e-8)?,
            k.f64("initial_scale", 0.0)?,
            k.bool("eps_in_sqrt", true)?,
            k.bool("bias_correction", false)?,
        )),
        "scale_by_rss" => boxed(ScaleByRss::new(k.f64("initial_accumulator_value", 0.1)?, k.f64("eps", 1e-7)?)),
        "scale_by_sign" => boxed(ScaleBySign),
        "scale_by_rprop" => boxed(ScaleByRprop::new(
            k.req_f64("learning_rate")?,
            k.f64("eta_minus", 0.5)?,
            k.f64("eta_plus", 1.2)?,
            k.f64("min_step_size", 1e-6)?,
            k.f64("max_step_size", 50.0)?,
        )),
        "scale_by_stddev" => boxed(ScaleByStddev::new(
            k.f64("decay", 0.9)?,
            k.f64("eps", 1e-8)?,
            k.f64("initial_scale", 0.0)?,
            k.bool("eps_in_sqrt", true)?,
            k.bool("bias_correction", false)?,
        )),
        "scale_by_trust_ratio" => {
            boxed(ScaleByTrustRatio::new(k.f64("min_norm", 0.0)?, k.f64("trust_coefficient", 1.0)?, k.f64("eps", 0.0)?))
        }
        "scale_by_yogi" => boxed(ScaleByYogi::new(
            k.f64("b1", 0.9)?,
            k.f64("b2", 0.999)?,
            k.f64("eps", 1e-3)?,
            k.f64("eps_root", 0.0)?,
            k.f64("initial_accumulator_value", 1e-6)?,
        )),
        "trace" => boxed(Trace::new(k.req_f64("decay")?, k.bool("nesterov", false)?)),
        other => return Err(unknown("optax optimizer or transformation", other, OPTAX_OPTIMIZERS)),
    };
    k.finish()?;
    Ok(tx)
}

/// A schedule built from a spec: a function of the step, or the metric-driven plateau scheduler.
pub enum ScheduleSpec {
    Function(BoxSchedule),
    Plateau(ReduceLrOnPlateau),
}

fn anneal(s: &str) -> Result<sch::Anneal> {
    match s {
        "cos" => Ok(sch::Anneal::Cos),
        "linear" => Ok(sch::Anneal::Linear),
        other => Err(unknown("anneal_strategy", other, &["cos", "linear"])),
    }
}

/// Builds a schedule from `library`, its name there, its keyword arguments and (torch) the
/// optimizer's initial learning rate.
pub fn build_schedule(library: &str, name: &str, kwargs: &Value, base_lr: Option<f64>) -> Result<ScheduleSpec> {
    let mut k = Kwargs::new(format!("{library}.{name}"), kwargs)?;
    let need_base = || {
        base_lr.ok_or_else(|| Error::Field {
            context: format!("{library}.{name}"),
            message: "torch schedulers need the optimizer's `base_lr`".into(),
        })
    };
    let s = match (library, name) {
        ("torch", "StepLR") => sch::step_lr(need_base()?, k.req_u64("step_size")?, k.f64("gamma", 0.1)?)?,
        ("torch", "MultiStepLR") => {
            let ms = k.u64s("milestones")?.unwrap_or_default();
            sch::multistep_lr(need_base()?, ms, k.f64("gamma", 0.1)?)
        }
        ("torch", "ExponentialLR") => sch::exponential_lr(need_base()?, k.req_f64("gamma")?),
        ("torch", "CosineAnnealingLR") => {
            sch::cosine_annealing_lr(need_base()?, k.req_u64("T_max")?, k.f64("eta_min", 0.0)?)?
        }
        ("torch", "CosineAnnealingWarmRestarts") => sch::cosine_annealing_warm_restarts(
            need_base()?,
            k.req_u64("T_0")?,
            k.u64("T_mult", 1)?,
            k.f64("eta_min", 0.0)?,
        )?,
        ("torch", "LinearLR") => sch::linear_lr(
            need_base()?,
            k.f64("start_factor", 1.0 / 3.0)?,
            k.f64("end_factor", 1.0)?,
            k.u64("total_iters", 5)?,
        )?,
        ("torch", "ConstantLR") => {
            sch::constant_lr(need_base()?, k.f64("factor", 1.0 / 3.0)?, k.u64("total_iters", 5)?)?
        }
        ("torch", "PolynomialLR") => sch::polynomial_lr(need_base()?, k.u64("total_iters", 5)?, k.f64("power", 1.0)?),
        ("torch", "OneCycleLR") => {
            let max_lr = k.req_f64("max_lr")?;
            let total = match k.opt_u64("total_steps")? {
                Some(t) => t,
                None => {
                    let (epochs, per_epoch) = (k.req_u64("epochs")?, k.req_u64("steps_per_epoch")?);
                    epochs.checked_mul(per_epoch).ok_or_else(|| Error::Field {
                        context: "torch.OneCycleLR: `epochs`".into(),
                        message: format!("{epochs} epochs of {per_epoch} steps overflow a step count"),
                    })?
                }
            };
            let pct = k.f64("pct_start", 0.3)?;
            let a = anneal(k.str("anneal_strategy", "cos")?)?;
            let (div, fdiv, three) =
                (k.f64("div_factor", 25.0)?, k.f64("final_div_factor", 1e4)?, k.bool("three_phase", false)?);
            let _ = k.bool("cycle_momentum", true)?;
            let _ = k.f64("base_momentum", 0.85)?;
            let _ = k.f64("max_momentum", 0.95)?;
            sch::onecycle_lr(max_lr, total, pct, a, div, fdiv, three)?
        }
        ("torch", "CyclicLR") => {
            let (b, m) = (k.req_f64("base_lr")?, k.req_f64("max_lr")?);
            let up = k.u64("step_size_up", 2000)?;
            let down = k.opt_u64("step_size_down")?;
            let gamma = k.f64("gamma", 1.0)?;
            let mode = match k.str("mode", "triangular")? {
                "triangular" => sch::CyclicMode::Triangular,
                "triangular2" => sch::CyclicMode::Triangular2,
                "exp_range" => sch::CyclicMode::ExpRange { gamma },
                other => return Err(unknown("CyclicLR mode", other, &["triangular", "triangular2", "exp_range"])),
            };
            let _ = k.bool("cycle_momentum", true)?;
            let _ = k.f64("base_momentum", 0.8)?;
            let _ = k.f64("max_momentum", 0.9)?;
            sch::cyclic_lr(b, m, up, down, mode)?
        }
        ("torch", "ReduceLROnPlateau") => {
            let mode = match k.str("mode", "min")? {
                "min" => sch::PlateauMode::Min,
                "max" => sch::PlateauMode::Max,
                other => return Err(unknown("ReduceLROnPlateau mode", other, &["min", "max"])),
            };
            let (factor, patience, threshold) =
                (k.f64("factor", 0.1)?, k.u64("patience", 10)?, k.f64("threshold", 1e-4)?);
            let tm = match k.str("threshold_mode", "rel")? {
                "rel" => sch::ThresholdMode::Rel,
                "abs" => sch::ThresholdMode::Abs,
                other => return Err(unknown("threshold_mode", other, &["rel", "abs"])),
            };
            let (cooldown, min_lr, eps) = (k.u64("cooldown", 0)?, k.f64("min_lr", 0.0)?, k.f64("eps", 1e-8)?);
            k.finish()?;
            return Ok(ScheduleSpec::Plateau(ReduceLrOnPlateau::new(
                need_base()?,
                mode,
                factor,
                patience,
                threshold,
                tm,
                cooldown,
                min_lr,
                eps,
            )?));
        }
        ("torch", "SequentialLR") => {
            let parts = sub_schedules(&mut k, "schedulers", library, base_lr)?;
            let ms: Vec<u64> = k.u64s("milestones")?.unwrap_or_default();
            if ms.len() + 1 != parts.len() {
                return Err(Error::Field {
                    context: "torch.SequentialLR: `milestones`".into(),
                    message: format!(
                        "{} schedulers need {} milestones, got {}",
                        parts.len(),
                        parts.len().saturating_sub(1),
                        ms.len()
                    ),
                });
            }
            sch::join(parts, ms)
        }
        ("torch", "ChainedScheduler") => {
            let parts = sub_schedules(&mut k, "schedulers", library, base_lr)?;
            sch::chained(need_base()?, parts)
        }
        ("torch", other) => return Err(unknown("torch scheduler", other, TORCH_SCHEDULES)),
        ("optax", "join_schedules") => {
            let parts = sub_schedules(&mut k, "schedules", library, base_lr)?;
            let bs: Vec<u64> = k.u64s("boundaries")?.unwrap_or_default();
            if bs.len() + 1 != parts.len() {
                return Err(Error::Field {
                    context: "optax.join_schedules: `boundaries`".into(),
                    message: format!(
                        "{} schedules need {} boundaries, got {}",
                        parts.len(),
                        parts.len().saturating_sub(1),
                        bs.len()
                    ),
                });
            }
            sch::join(parts, bs)
        }
        ("optax", n) => {
            let n = n.strip_suffix("_schedule").unwrap_or(n);
            match n {
                "constant" => sch::constant(k.req_f64("value")?),
                "polynomial" => sch::polynomial(
                    k.req_f64("init_value")?,
                    k.req_f64("end_value")?,
                    k.req_f64("power")?,
                    k.req_u64("transition_steps")?,
                    k.u64("transition_begin", 0)?,
                ),
                "linear" => sch::linear(
                    k.req_f64("init_value")?,
                    k.req_f64("end_value")?,
                    k.req_u64("transition_steps")?,
                    k.u64("transition_begin", 0)?,
                ),
                "piecewise_constant" => {
                    let init = k.req_f64("init_value")?;
                    let bs = boundaries(k.value("boundaries_and_scales"), &format!("optax.{name}"))?;
                    sch::piecewise_constant(init, bs)?
                }
                "exponential_decay" => sch::exponential_decay(
                    k.req_f64("init_value")?,
                    k.req_u64("transition_steps")?,
                    k.req_f64("decay_rate")?,
                    k.u64("transition_begin", 0)?,
                    k.bool("staircase", false)?,
                    k.opt_f64("end_value")?,
                ),
                "cosine_decay" => sch::cosine_decay(
                    k.req_f64("init_value")?,
                    k.req_u64("decay_steps")?,
                    k.f64("alpha", 0.0)?,
                    k.f64("exponent", 1.0)?,
                ),
                "warmup_constant" => {
                    sch::warmup_constant(k.req_f64("init_value")?, k.req_f64("peak_value")?, k.req_u64("warmup_steps")?)
                }
                "warmup_cosine_decay" => sch::warmup_cosine_decay(
                    k.req_f64("init_value")?,
                    k.req_f64("peak_value")?,
                    k.req_u64("warmup_steps")?,
                    k.req_u64("decay_steps")?,
                    k.f64("end_value", 0.0)?,
                    k.f64("exponent", 1.0)?,
                ),
                "warmup_exponential_decay" => sch::warmup_exponential_decay(
                    k.req_f64("init_value")?,
                    k.req_f64("peak_value")?,
                    k.req_u64("warmup_steps")?,
                    k.req_u64("transition_steps")?,
                    k.req_f64("decay_rate")?,
                    k.u64("transition_begin", 0)?,
                    k.bool("staircase", false)?,
                    k.opt_f64("end_value")?,
                ),
                "linear_onecycle" => sch::linear_onecycle(
                    k.req_u64("transition_steps")?,
                    k.req_f64("peak_value")?,
                    k.f64("pct_start", 0.3)?,
                    k.f64("pct_final", 0.85)?,
                    k.f64("div_factor", 25.0)?,
                    k.f64("final_div_factor", 1e4)?,
                ),
                "cosine_onecycle" => sch::cosine_onecycle(
                    k.req_u64("transition_steps")?,
                    k.req_f64("peak_value")?,
                    k.f64("pct_start", 0.3)?,
                    k.f64("div_factor", 25.0)?,
                    k.f64("final_div_factor", 1e4)?,
                ),
                _ => return Err(unknown("optax schedule", name, OPTAX_SCHEDULES)),
            }
        }
        (other, _) => return Err(unknown("library", other, &["torch", "optax"])),
    };
    k.finish()?;
    Ok(ScheduleSpec::Function(s))
}

/// The `[[name, kwargs], …]` list of a combining schedule.
fn sub_schedules(k: &mut Kwargs, key: &'static str, library: &str, base_lr: Option<f64>) -> Result<Vec<BoxSchedule>> {
    let ctx = format!("{}: `{key}`", k.context);
    let list = k
        .value(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::Field { context: ctx.clone(), message: "missing list of [name, kwargs]".into() })?;
    if list.is_empty() {
        return Err(Error::Field { context: ctx, message: "needs at least one schedule".into() });
    }
    list.iter()
        .enumerate()
        .map(|(i, l)| {
            let (name, kw) = link(l, &format!("{ctx}[{i}]"))?;
            match build_schedule(library, &name, &kw, base_lr)? {
                ScheduleSpec::Function(s) => Ok(s),
                ScheduleSpec::Plateau(_) => Err(Error::Field {
                    context: format!("{ctx}[{i}]"),
                    message: "ReduceLROnPlateau cannot be combined".into(),
                }),
            }
        })
        .collect()
}

fn boundaries(v: Option<&Value>, ctx: &str) -> Result<Vec<(u64, f64)>> {
    let err = |m: String| Error::Field { context: format!("{ctx}: `boundaries_and_scales`"), message: m };
    match v {
        None => Ok(vec![]),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(b, s)| {
                let b: u64 = b.trim().parse().map_err(|_| err(format!("boundary `{b}` is not a step number")))?;
                let s = s
                    .as_f64()
                    .filter(|s| s.is_finite())
                    .ok_or_else(|| err(format!("scale {s} is not a finite number")))?;
                Ok((b, s))
            })
            .collect(),
        Some(other) => Err(err(format!("expected an object {{step: scale}}, got {other}"))),
    }
}

/// Resolves a descent optimizer name to `(library, name)`: a registry name (`torch.adamw`,
/// `optax.contrib.muon`) as is; a bare name to the torch optimizer of that name if torch has one
/// (what a PyTorch user expects of `adam`), else the optax one (`lion`, `lamb`, `prodigy`, …).
/// Closure-driven optimizers (`torch.lbfgs`, `optax.contrib.sam`, …) resolve the same way, except
/// that bare `sam` is descent's two-pass SAM (`descent.sam`).
pub fn resolve_optimizer(name: &str) -> Result<(&'static str, String)> {
    let all = || registry_names().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let closure = crate::closure::is_closure_optimizer;
    if let Some((lib, rest)) = name.split_once('.') {
        let known = match lib {
            "torch" => (TORCH_OPTIMIZERS.contains(&rest) || closure("torch", rest)).then_some("torch"),
            "optax" => (OPTAX_OPTIMIZERS.contains(&rest) || closure("optax", rest)).then_some("optax"),
            "descent" => (DESCENT_OPTIMIZERS.contains(&rest) || closure("descent", rest)).then_some("descent"),
            "po" => (crate::po::po_optimizers().contains(&rest) || closure("po", rest)).then_some("po"),
            _ => None,
        };
        if let Some(lib) = known {
            return Ok((lib, rest.to_string()));
        }
        return Err(Error::Unknown { kind: "optimizer", name: name.into(), accepted: all() });
    }
    if TORCH_OPTIMIZERS.contains(&name) || closure("torch", name) {
        return Ok(("torch", name.to_string()));
    }
    if OPTAX_OPTIMIZERS.contains(&name) || closure("optax", name) {
        return Ok(("optax", name.to_string()));
    }
    // descent's own closure optimizers before optax contrib: bare `sam` is the two-pass SAM
    // PyTorch users know, around any base optimizer (`optax.contrib.sam` by its full name).
    if closure("descent", name) {
        return Ok(("descent", name.to_string()));
    }
    let contrib = format!("contrib.{name}");
    if OPTAX_OPTIMIZERS.contains(&contrib.as_str()) || closure("optax", &contrib) {
        return Ok(("optax", contrib));
    }
    if DESCENT_OPTIMIZERS.contains(&name) {
        return Ok(("descent", name.to_string()));
    }
    Err(Error::Unknown { kind: "optimizer", name: name.into(), accepted: all() })
}

/// The learning-rate keyword of a library (`lr` for torch, pytorch_optimizer and descent,
/// `learning_rate` for optax).
pub fn lr_key(library: &str) -> &'static str {
    if library == "torch" || library == "po" || library == "descent" {
        "lr"
    } else {
        "learning_rate"
    }
}

/// The learning rate an optimizer takes when its library's constructor is not given one: torch
/// `Adam` 1e-3, optax `contrib.prodigy` 1.0, …; `None` when the library requires it (optax's
/// `adam(learning_rate, …)`) or the optimizer has no learning rate (`optax.chain`).
pub fn library_default_lr(library: &str, name: &str) -> Option<f64> {
    let mut tx = build_optimizer(library, name, &Value::Object(Map::new()), None, &[vec![1]]).ok()?;
    let mut rates = vec![];
    tx.visit_learning_rates(&mut |r| rates.push(r.constant()));
    let first = (*rates.first()?)?;
    rates.iter().all(|r| *r == Some(first)).then_some(first)
}
