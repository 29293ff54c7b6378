//! Compatibility specs: build an optimizer or schedule from a library's own name and keyword
//! arguments (torch class + kwargs, optax function + kwargs, `chain` links, `param_groups`), so a
//! PyTorch or JAX recipe ports unchanged.
//!
//! Registry names are `<library>.<name>`: `torch.adamw`, `optax.contrib.muon`, `optax.chain`, ….
//! The registry is a table per library ([`TORCH`], [`OPTAX`], [`DESCENT`]; `po` has its own, in
//! [`crate::po`]): each name with its [`Builder`], which reads the keyword arguments into the
//! library's typed configuration ([`crate::torch`], [`crate::optax`]) and builds from it. The
//! accepted names ([`registry_names`], the error for an unknown one, `descent list`) come from
//! these tables. Adding an optimizer is adding a row: its name and a builder that reads the
//! library's keyword arguments (with the library's names and defaults) into its typed
//! configuration and calls the typed constructor.

use serde_json::{Map, Value};

use crate::chain::chain;
use crate::error::{Error, Result};
use crate::learning_rate::LearningRate;
use crate::optax::{self as ox, contrib as oxc, contrib::RateSource};
use crate::schedule::{self as sch, BoxSchedule, ReduceLrOnPlateau};
use crate::torch::{self, MuonLrAdjust, WeightDecay};

use crate::transform::Transform;
use crate::transforms::*;

/// Builds one registry entry: its keyword arguments, read through [`Kwargs`] (which refuses, after
/// the builder, any argument it never read), and the parameter shapes → the transformation.
pub type Builder = fn(&mut Kwargs, &[Vec<usize>]) -> Result<Box<dyn Transform>>;

/// A library's table: each name with its builder.
pub type Table = &'static [(&'static str, Builder)];

/// The torch optimizers descent reproduces (`torch.<name>`), built from torch's keyword arguments
/// through the typed configurations of [`crate::torch`].
pub const TORCH: Table = &[
    ("adadelta", torch_adadelta),
    ("adafactor", torch_adafactor),
    ("adagrad", torch_adagrad),
    ("adam", torch_adam),
    ("adamax", torch_adamax),
    ("adamw", torch_adamw),
    ("asgd", torch_asgd),
    ("muon", torch_muon),
    ("nadam", torch_nadam),
    ("radam", torch_radam),
    ("rmsprop", torch_rmsprop),
    ("rprop", torch_rprop),
    ("sgd", torch_sgd),
    ("sparseadam", torch_sparseadam),
];

/// The optax optimizers (through the typed configurations of [`crate::optax`]), combinators,
/// wrappers and transformations descent reproduces (`optax.<name>`, usable as `chain` links).
pub const OPTAX: Table = &[
    ("adabelief", optax_adabelief),
    ("adadelta", optax_adadelta),
    ("adafactor", optax_adafactor),
    ("adagrad", optax_adagrad),
    ("adam", optax_adam),
    ("adamax", optax_adamax),
    ("adamaxw", optax_adamaxw),
    ("adamw", optax_adamw),
    ("adan", optax_adan),
    ("amsgrad", optax_amsgrad),
    ("chain", optax_chain),
    ("fromage", optax_fromage),
    ("lamb", optax_lamb),
    ("lars", optax_lars),
    ("lion", optax_lion),
    ("lookahead", optax_lookahead),
    ("multisteps", optax_multisteps),
    ("nadam", optax_nadam),
    ("nadamw", optax_nadamw),
    ("novograd", optax_novograd),
    ("optimistic_adam", optax_optimistic_adam),
    ("optimistic_adam_v2", optax_optimistic_adam_v2),
    ("optimistic_gradient_descent", optax_optimistic_gradient_descent),
    ("radam", optax_radam),
    ("rmsprop", optax_rmsprop),
    ("rprop", optax_rprop),
    ("sgd", optax_sgd),
    ("sign_sgd", optax_sign_sgd),
    ("signum", optax_signum),
    ("sm3", optax_sm3),
    ("yogi", optax_yogi),
    ("contrib.acprop", optax_acprop),
    ("contrib.ademamix", optax_ademamix),
    ("contrib.adopt", optax_adopt),
    ("contrib.cocob", optax_cocob),
    ("contrib.dadapt_adamw", optax_dadapt_adamw),
    ("contrib.dog", optax_dog),
    ("contrib.dowg", optax_dowg),
    ("contrib.galore", optax_galore),
    ("contrib.madgrad", optax_madgrad),
    ("contrib.mechanize", optax_mechanize),
    ("contrib.muon", optax_muon),
    ("contrib.prodigy", optax_prodigy),
    ("contrib.schedule_free_adamw", optax_schedule_free_adamw),
    ("contrib.schedule_free_sgd", optax_schedule_free_sgd),
    ("contrib.simplified_ademamix", optax_simplified_ademamix),
    // transformations
    ("adaptive_grad_clip", optax_adaptive_grad_clip),
    ("add_decayed_weights", optax_add_decayed_weights),
    ("apply_every", optax_apply_every),
    ("centralize", optax_centralize),
    ("clip", optax_clip),
    ("clip_by_block_rms", optax_clip_by_block_rms),
    ("clip_by_global_norm", optax_clip_by_global_norm),
    ("contrib.normalize", optax_contrib_normalize),
    ("ema", optax_ema),
    ("identity", optax_identity),
    ("keep_params_nonnegative", optax_keep_params_nonnegative),
    ("normalize_by_update_norm", optax_normalize_by_update_norm),
    ("scale", optax_scale),
    ("scale_by_adam", optax_scale_by_adam),
    ("scale_by_belief", optax_scale_by_belief),
    ("scale_by_learning_rate", optax_scale_by_learning_rate),
    ("scale_by_lion", optax_scale_by_lion),
    ("scale_by_param_block_rms", optax_scale_by_param_block_rms),
    ("scale_by_rms", optax_scale_by_rms),
    ("scale_by_rprop", optax_scale_by_rprop),
    ("scale_by_rss", optax_scale_by_rss),
    ("scale_by_sign", optax_scale_by_sign),
    ("scale_by_sm3", optax_scale_by_sm3),
    ("scale_by_stddev", optax_scale_by_stddev),
    ("scale_by_trust_ratio", optax_scale_by_trust_ratio),
    ("scale_by_yogi", optax_scale_by_yogi),
    ("set_to_zero", optax_set_to_zero),
    ("trace", optax_trace),
    ("zero_nans", optax_zero_nans),
    // wrappers and per-parameter masks and labels
    ("apply_if_finite", optax_apply_if_finite),
    ("freeze", optax_freeze),
    ("inject_hyperparams", optax_inject_hyperparams),
    ("masked", optax_masked),
    ("multi_transform", optax_partition),
    ("partition", optax_partition),
    ("selective_transform", optax_selective_transform),
];

/// Other spellings optax accepts for an entry of [`OPTAX`] (its class name), built by that entry
/// but not listed.
const OPTAX_SPELLINGS: &[(&str, &str)] = &[("MultiSteps", "multisteps")];

/// descent's own optimizers (no library to match): 8-bit block-wise AdamW / Adam, with
/// torch-style arguments (as bitsandbytes' `AdamW8bit` takes them).
pub const DESCENT: Table = &[("adam8bit", descent_adam8bit), ("adamw8bit", descent_adamw8bit)];

/// The libraries of the registry, in the order [`registry_names`] lists them; `None`: `po`, whose
/// names and builders are [`crate::po`]'s.
const LIBRARIES: &[(&str, Option<Table>)] =
    &[("torch", Some(TORCH)), ("optax", Some(OPTAX)), ("po", None), ("descent", Some(DESCENT))];

/// The names of a library of the registry, `None` for an unknown library.
fn library_names(library: &str) -> Option<Vec<&'static str>> {
    let (_, table) = LIBRARIES.iter().find(|(l, _)| *l == library)?;
    Some(match table {
        Some(t) => t.iter().map(|(n, _)| *n).collect(),
        None => crate::po::po_optimizers(),
    })
}

/// The builder of `name` in `table`.
fn lookup(table: Table, name: &str) -> Option<Builder> {
    table.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Runs a builder on keyword arguments read under `context` (`library.name`), refusing those it
/// did not read.
#[allow(clippy::too_many_arguments)]
fn build_entry(
    context: String,
    hparams: &Value,
    shapes: &[Vec<usize>],
    kind: &'static str,
    name: &str,
    table: Table,
    builder: Option<Builder>,
    of: ArgumentsOf,
) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new(context, hparams)?;
    k.of = of;
    let build = builder.ok_or_else(|| unknown(kind, name, &table.iter().map(|(n, _)| *n).collect::<Vec<_>>()))?;
    let tx = build(&mut k, shapes)?;
    k.finish()?;
    Ok(tx)
}

fn build_torch(name: &str, hparams: &Value, shapes: &[Vec<usize>], of: ArgumentsOf) -> Result<Box<dyn Transform>> {
    let builder = lookup(TORCH, name);
    build_entry(format!("torch.{name}"), hparams, shapes, "torch optimizer", name, TORCH, builder, of)
}

fn build_optax(name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    // A link may be named as the top level is (`optax.scale_by_adam`, as the README lists them).
    let name = name.strip_prefix("optax.").unwrap_or(name);
    // A chain link or a wrapper's inner optimizer is stepped on gradients.
    if crate::closure::is_closure_optimizer("optax", name) {
        return Err(Error::NeedsClosure(format!("optax.{name}")));
    }
    let canonical = OPTAX_SPELLINGS.iter().find(|(s, _)| *s == name).map_or(name, |(_, n)| *n);
    let builder = lookup(OPTAX, canonical);
    let kind = "optax optimizer or transformation";
    build_entry(format!("optax.{name}"), hparams, shapes, kind, name, OPTAX, builder, ArgumentsOf::Constructor)
}

fn build_descent(name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let builder = lookup(DESCENT, name);
    build_entry(
        format!("descent.{name}"),
        hparams,
        shapes,
        "descent optimizer",
        name,
        DESCENT,
        builder,
        ArgumentsOf::Constructor,
    )
}

/// Builds an optimizer from `library` (`torch`, `optax`, `po` or `descent`), its `name` in that
/// library, its keyword arguments, optional torch `param_groups` (`[{"params": [indices],
/// "hparams": {overrides}}]`), and the parameter shapes (refused, before anything is built, when
/// one is too large to address: see [`crate::transform::check_shapes`]).
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
            None => build_torch(name, hparams, shapes, ArgumentsOf::Constructor),
            Some(groups) => {
                // torch checks the constructor's arguments, whatever the groups then override.
                build_torch(name, hparams, &[], ArgumentsOf::Constructor)?;
                build_groups(&format!("torch.{name}"), hparams, groups, |merged, idx| {
                    let group_shapes: Vec<Vec<usize>> = idx.iter().filter_map(|&i| shapes.get(i).cloned()).collect();
                    build_torch(name, &constructor_only(name, hparams, merged), &group_shapes, ArgumentsOf::Group)
                })
            }
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
        "descent" => build_descent(name, hparams, shapes),
        "po" => crate::po::build(name, hparams, param_groups, shapes),
        other => Err(unknown("library", other, &LIBRARIES.iter().map(|(l, _)| *l).collect::<Vec<_>>())),
    }
}

/// A group's arguments with those a torch optimizer reads from its constructor alone (not from
/// the group) put back to the constructor's: `Adagrad`'s `initial_accumulator_value` fills every
/// parameter's sum, whatever a group says.
fn constructor_only(name: &str, hparams: &Value, merged: &Value) -> Value {
    let keys: &[&str] = match name {
        "adagrad" => &["initial_accumulator_value"],
        _ => &[],
    };
    let mut merged = merged.clone();
    if let Some(m) = merged.as_object_mut() {
        for &key in keys {
            match hparams.get(key) {
                Some(v) => m.insert(key.to_string(), v.clone()),
                None => m.remove(key),
            };
        }
    }
    merged
}

/// Builds from a registry name such as `torch.adamw` or `optax.contrib.muon`.
pub fn build_named(registry_name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    match registry_name.split_once('.') {
        Some((lib, name)) if library_names(lib).is_some() => build_optimizer(lib, name, hparams, None, shapes),
        _ => Err(unknown("optimizer", registry_name, &registry_names().iter().map(|s| s.as_str()).collect::<Vec<_>>())),
    }
}

/// Every registry name, `library.name`, from the libraries' tables.
///
/// The optimizers stepped on gradients come first, then those that evaluate the objective
/// themselves ([`crate::closure::closure_optimizers`]; built with
/// [`crate::closure::build_closure_optimizer`], refused by [`build_optimizer`]).
pub fn registry_names() -> Vec<String> {
    LIBRARIES
        .iter()
        .flat_map(|(lib, _)| library_names(lib).unwrap_or_default().into_iter().map(move |n| format!("{lib}.{n}")))
        .chain(crate::closure::closure_optimizers())
        .collect()
}

/// Resolves a descent optimizer name to `(library, name)`: a registry name (`torch.adamw`,
/// `optax.contrib.muon`) as is; a bare name to the torch optimizer of that name if torch has one
/// (what a PyTorch user expects of `adam`), else the optax one (`lion`, `lamb`, `prodigy`, …), else
/// descent's own. Closure-driven optimizers (`torch.lbfgs`, `optax.contrib.sam`, …) resolve the
/// same way, except that bare `sam` is descent's two-pass SAM (`descent.sam`, around any base
/// optimizer, as PyTorch users know it); optax's is `optax.contrib.sam` by its full name.
pub fn resolve_optimizer(name: &str) -> Result<(&'static str, String)> {
    let has = |lib: &str, n: &str| {
        library_names(lib).is_some_and(|names| names.contains(&n)) || crate::closure::is_closure_optimizer(lib, n)
    };
    if let Some((lib, rest)) = name.split_once('.') {
        if let Some((lib, _)) = LIBRARIES.iter().find(|(l, _)| *l == lib && has(l, rest)) {
            return Ok((lib, rest.to_string()));
        }
    } else {
        let contrib = format!("contrib.{name}");
        // descent's closure optimizers (bare `sam`) come before optax contrib, its others after.
        let descent_closure = crate::closure::is_closure_optimizer("descent", name).then_some(("descent", name));
        let found = [("torch", name), ("optax", name)]
            .into_iter()
            .find(|(lib, n)| has(lib, n))
            .or(descent_closure)
            .or_else(|| [("optax", contrib.as_str()), ("descent", name)].into_iter().find(|(lib, n)| has(lib, n)));
        if let Some((lib, n)) = found {
            return Ok((lib, n.to_string()));
        }
    }
    Err(unknown_among_many(
        "optimizer",
        name,
        &registry_names(),
        ("registry names", "", ", e.g. adam, sgd, optax.lion, po.soap"),
    ))
}

/// The error for `name`, unknown among the many names `all`: the nearest of them, or how many
/// there are (`noun`, e.g. "registry names") and where `descent list` prints them (`listed_as`, e.g.
/// " as po.NAME") with `examples` where none is near.
pub(crate) fn unknown_among_many(
    kind: &'static str,
    name: &str,
    all: &[String],
    (noun, listed_as, examples): (&str, &str, &str),
) -> Error {
    let near = nearest(name, all, 6);
    let suggestion = if near.is_empty() {
        format!("{} {noun} are accepted (`descent list` prints them{listed_as}){examples}", all.len())
    } else {
        format!("did you mean {}? ({} names in all: `descent list` prints them{listed_as})", near.join(", "), all.len())
    };
    Error::UnknownAmongMany { kind, name: name.into(), suggestion }
}

/// The names of `candidates` closest to `name` (at most `k`, nearest first): compared without
/// case and without a library prefix (`torch.`, `optax.`, …) on either side, within an edit
/// distance of a third of the name's length (at least 2), or containing it.
pub fn nearest(name: &str, candidates: &[String], k: usize) -> Vec<String> {
    let bare = |n: &str| -> String {
        let n = n.to_lowercase();
        match n.split_once('.') {
            Some((lib, rest)) if LIBRARIES.iter().any(|(l, _)| *l == lib) => rest.to_string(),
            _ => n,
        }
    };
    let want = bare(name);
    let limit = (want.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = candidates
        .iter()
        .filter_map(|c| {
            let b = bare(c);
            let d = edit_distance(&want, &b);
            let contains = want.len() >= 3 && b.contains(&want);
            (d <= limit || contains).then_some((if contains { d.min(limit) } else { d }, c))
        })
        .collect();
    scored.sort_by_key(|(d, c)| (*d, c.len()));
    scored.into_iter().take(k).map(|(_, c)| c.clone()).collect()
}

/// Levenshtein distance (insertions, deletions, substitutions) between two strings' characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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

/// Whether the optimizer takes a learning-rate argument ([`lr_key`]) beside `hparams`: false for
/// the compositions that have none of their own (`optax.chain`, `optax.masked`, `optax.partition`,
/// `optax.apply_every`, `optax.multisteps`, …), which refuse it as an unknown keyword. Tried on
/// parameters of one element: one, and as many as each list in `hparams` holds, so that a
/// per-parameter mask or labels fit and the build gets as far as the keyword.
pub fn takes_learning_rate(library: &str, name: &str, hparams: &Value) -> bool {
    let mut counts = vec![1];
    list_lengths(hparams, &mut counts);
    counts.sort_unstable();
    counts.dedup();
    counts.into_iter().find_map(|n| rate_keyword_answer(library, name, hparams, &vec![vec![1]; n])).unwrap_or(true)
}

/// [`takes_learning_rate`] for parameters of these shapes.
pub fn takes_learning_rate_for(library: &str, name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> bool {
    rate_keyword_answer(library, name, hparams, shapes).unwrap_or(true)
}

/// The lengths of the lists anywhere in `v` (per-parameter masks and labels among them), into
/// `out`.
fn list_lengths(v: &Value, out: &mut Vec<usize>) {
    match v {
        Value::Array(a) => {
            if !a.is_empty() {
                out.push(a.len());
            }
            a.iter().for_each(|x| list_lengths(x, out));
        }
        Value::Object(m) => m.values().for_each(|x| list_lengths(x, out)),
        _ => {}
    }
}

/// Whether the build with a learning rate added to `hparams` takes it (it builds) or refuses it
/// as an unknown keyword; `None` when it fails for another reason before telling (a list that does
/// not fit these shapes, another argument).
fn rate_keyword_answer(library: &str, name: &str, hparams: &Value, shapes: &[Vec<usize>]) -> Option<bool> {
    let key = lr_key(library);
    let mut h = match hparams {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    h.insert(key.into(), Value::from(1e-3));
    match build_optimizer(library, name, &Value::Object(h), None, shapes) {
        Ok(_) => Some(true),
        Err(Error::Unknown { kind: "keyword argument", name, .. }) if name.starts_with(&format!("{key}`")) => {
            Some(false)
        }
        Err(_) => None,
    }
}

/// The learning rate an optimizer takes when its library's constructor is not given one: torch
/// `Adam` 1e-3, optax `contrib.prodigy` 1.0, …; `None` when the library requires it (optax's
/// `adam(learning_rate, …)`) or the optimizer has no learning rate (`optax.chain`).
///
/// optax's `adadelta` defaults to no rate at all (`None`: the rescaled gradient is added as it is,
/// a step up the gradient); training takes the unscaled descent step, 1.0, Zeiler's method.
pub fn library_default_lr(library: &str, name: &str) -> Option<f64> {
    if (library, name) == ("optax", "adadelta") {
        return Some(1.0);
    }
    let mut tx = build_optimizer(library, name, &Value::Object(Map::new()), None, &[vec![1]]).ok()?;
    let mut rates = vec![];
    tx.visit_learning_rates(&mut |r| rates.push(r.constant()));
    let first = (*rates.first()?)?;
    rates.iter().all(|r| *r == Some(first)).then_some(first)
}

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

/// Whose keyword arguments a builder reads: an optimizer's constructor's, or one torch parameter
/// group's (the constructor's overridden by the group's). torch checks some conditions on the
/// constructor's arguments alone: `SGD(nesterov=True)` needs momentum and no dampening there, and
/// a group that sets its momentum to 0 then runs plain SGD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgumentsOf {
    /// The optimizer's constructor's keyword arguments.
    Constructor,
    /// A parameter group's: the constructor's overridden by the group's own.
    Group,
}

/// Keyword arguments with typed accessors; remembers which were read so that unknown ones are
/// reported with the accepted list.
pub struct Kwargs<'a> {
    context: String,
    map: &'a Map<String, Value>,
    accepted: Vec<&'static str>,
    of: ArgumentsOf,
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
        Ok(Kwargs { context, map, accepted: vec![], of: ArgumentsOf::Constructor })
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

    /// A required argument the reference cases name `case` and the library `library` (optax's
    /// `MultiSteps(opt, every_k_schedule)` is `inner`, `every_k` in the cases): either name, not
    /// both; `(name given, value)`.
    pub(crate) fn either(&mut self, case: &'static str, library: &'static str) -> Result<(&'static str, &'a Value)> {
        match (self.get(case)?, self.get(library)?) {
            (Some(_), Some(_)) => Err(self.err(library, format!("the same argument as `{case}`: give one of them"))),
            (Some(v), None) => Ok((case, v)),
            (None, Some(v)) => Ok((library, v)),
            (None, None) => Err(self.err(library, format!("missing required argument (or `{case}`)"))),
        }
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
    /// A required number.
    pub fn req_f64(&mut self, key: &'static str) -> Result<f64> {
        match self.get(key)? {
            None => Err(self.err(key, "missing required argument")),
            Some(v) => self.number(key, v),
        }
    }
    /// A boolean, `default` when absent.
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
    /// A required non-negative integer.
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
                "bfloat16 first moments are implemented for adam, adamw, nadam, nadamw, amsgrad, optimistic_adam(_v2), scale_by_adam and contrib.muon only",
            )),
        }
    }
    /// A dtype argument where descent stores float32 only (`accumulator_dtype`, `state_dtype`,
    /// …): absent, null or float32; anything else is refused, not ignored.
    pub fn dtype_f32_only(&mut self, key: &'static str) -> Result<()> {
        match self.opt_str(key)? {
            None | Some("float32" | "f32" | "jnp.float32") => Ok(()),
            Some(other) => {
                Err(self.err(key, format!("`{other}` is not implemented: this state is kept in float32 only")))
            }
        }
    }
    /// A string, `default` when absent.
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
    /// An integer that may be negative (optax's `transition_begin`, a join boundary), with a
    /// default.
    pub fn i64(&mut self, key: &'static str, default: i64) -> Result<i64> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| self.err(key, format!("expected an integer, got {v}"))),
        }
    }
    /// A list of integers that may be negative.
    pub fn i64s(&mut self, key: &'static str) -> Result<Option<Vec<i64>>> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64().ok_or_else(|| self.err(key, format!("expected a list of integers, got {x}"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.err(key, format!("expected a list of integers, got {v}"))),
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
    /// A pair of numbers (`betas`), `default` when absent.
    pub fn pair(&mut self, key: &'static str, default: (f64, f64)) -> Result<(f64, f64)> {
        match self.f64s(key)? {
            None => Ok(default),
            Some(v) if v.len() == 2 => Ok((v[0], v[1])),
            Some(v) => Err(self.err(key, format!("expected 2 numbers, got {}", v.len()))),
        }
    }
    /// Whether the argument is given as null (Python's `None`); it counts as accepted.
    pub fn is_null(&mut self, key: &'static str) -> bool {
        self.accepted.push(key);
        matches!(self.map.get(key), Some(Value::Null))
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
    /// optax's `ScalarOrSchedule` for an argument other than the learning rate (a weight decay,
    /// AdEMAMix's `b3` and `alpha`): a finite number or `{"schedule": NAME, …kwargs}`, evaluated at
    /// the transformation's own step count. A list of per-step values is [`Kwargs::lr`]'s alone:
    /// optax would broadcast it against the parameters.
    pub fn scalar_or_schedule(&mut self, key: &'static str, default: f64) -> Result<LearningRate> {
        match self.get(key)? {
            Some(v @ Value::Array(_)) => {
                Err(self.err(key, format!("expected a number or a schedule object, got the list {v}")))
            }
            _ => self.lr(key, Some(default)),
        }
    }
    /// [`Kwargs::scalar_or_schedule`] for an argument the library declares optional (absent or
    /// null: `None`).
    pub fn opt_scalar_or_schedule(&mut self, key: &'static str) -> Result<Option<LearningRate>> {
        match self.get_optional(key) {
            None => Ok(None),
            Some(_) => self.scalar_or_schedule(key, 0.0).map(Some),
        }
    }
    /// A learning rate the library declares optional (`None`: absent or null, no rate).
    pub fn opt_lr(&mut self, key: &'static str) -> Result<Option<LearningRate>> {
        match self.get_optional(key) {
            None => Ok(None),
            Some(_) => self.lr(key, None).map(Some),
        }
    }
    /// Refuses, naming it as the library's, an argument of `library_features` (`(key, what it
    /// does)`) that was given and never read: the library takes it, descent does not implement it.
    pub fn refuse_unimplemented(&self, library_features: &[(&str, &str)]) -> Result<()> {
        for (key, what) in library_features {
            if self.map.contains_key(*key) && !self.accepted.iter().any(|a| a == key) {
                return Err(Error::Field {
                    context: format!("{}: `{key}`", self.context),
                    message: format!(
                        "the library's {what} is not implemented for this optimizer; refused rather than ignored"
                    ),
                });
            }
        }
        Ok(())
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

/// Builds one optimizer per parameter group (`[{"params": [indices], "hparams": {overrides}}]`,
/// torch's `param_groups`): `build` gets the constructor's keyword arguments overridden by the
/// group's, and the group's parameter indices; the parts form a [`Partition`]. A parameter no
/// group names is never stepped, as in torch.
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
            .ok_or_else(|| Error::Field {
                context: gctx.clone(),
                message: "missing `params` (a list of parameter indices)".into(),
            })?
            .as_array()
            .ok_or_else(|| Error::Field {
                context: format!("{gctx}.params"),
                message: format!("expected a list of parameter indices, got {}", g["params"]),
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
    Ok(boxed(Partition::torch_groups(parts)))
}

// ---------------------------------------------------------------------------------------------
// torch optimizers: the keyword arguments read into the typed configuration of `crate::torch`.

fn torch_sgd(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let lr = k.lr("lr", Some(1e-3))?;
    let config = torch::SgdConfig {
        lr,
        momentum: k.f64("momentum", 0.0)?,
        dampening: k.f64("dampening", 0.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        nesterov: k.bool("nesterov", false)?,
        maximize: k.bool("maximize", false)?,
    };
    let t = match k.of {
        ArgumentsOf::Constructor => torch::Sgd::new(config)?,
        ArgumentsOf::Group => torch::Sgd::for_group(config)?,
    };
    ignore_impl_flags(k, SGD_FLAGS)?;
    Ok(boxed(t))
}

fn torch_adam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    torch_adam_like(k, false)
}

fn torch_adamw(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    torch_adam_like(k, true)
}

/// torch `Adam` and `AdamW`: one class each, the same arguments with their own defaults.
fn torch_adam_like(k: &mut Kwargs, adamw: bool) -> Result<Box<dyn Transform>> {
    let lr = k.lr("lr", Some(1e-3))?;
    let betas = k.pair("betas", (0.9, 0.999))?;
    let eps = k.f64("eps", 1e-8)?;
    let wd = k.f64("weight_decay", if adamw { 1e-2 } else { 0.0 })?;
    // torch's AdamW has no such argument (a TypeError) and decouples, but its step is Adam's,
    // which reads the key from each group: a group may turn it off. Adam takes it everywhere.
    let decoupled = match (adamw, k.of) {
        (true, ArgumentsOf::Constructor) => true,
        (true, ArgumentsOf::Group) => k.bool("decoupled_weight_decay", true)?,
        (false, _) => k.bool("decoupled_weight_decay", false)?,
    };
    let t = torch::Adam::new(torch::AdamConfig {
        lr,
        betas,
        eps,
        weight_decay: wd,
        decay: if decoupled { WeightDecay::Decoupled } else { WeightDecay::L2 },
        amsgrad: k.bool("amsgrad", false)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, ADAM_FLAGS)?;
    Ok(boxed(t))
}

fn torch_sparseadam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::SparseAdam::new(torch::SparseAdamConfig {
        lr: k.lr("lr", Some(1e-3))?,
        betas: k.pair("betas", (0.9, 0.999))?,
        eps: k.f64("eps", 1e-8)?,
        maximize: k.bool("maximize", false)?,
    })?;
    Ok(boxed(t))
}

fn torch_adagrad(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Adagrad::new(torch::AdagradConfig {
        lr: k.lr("lr", Some(1e-2))?,
        lr_decay: k.f64("lr_decay", 0.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        initial_accumulator_value: k.f64("initial_accumulator_value", 0.0)?,
        eps: k.f64("eps", 1e-10)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, ADAGRAD_FLAGS)?;
    Ok(boxed(t))
}

fn torch_rmsprop(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Rmsprop::new(torch::RmspropConfig {
        lr: k.lr("lr", Some(1e-2))?,
        alpha: k.f64("alpha", 0.99)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        momentum: k.f64("momentum", 0.0)?,
        centered: k.bool("centered", false)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_adadelta(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Adadelta::new(torch::AdadeltaConfig {
        lr: k.lr("lr", Some(1.0))?,
        rho: k.f64("rho", 0.9)?,
        eps: k.f64("eps", 1e-6)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_adamax(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Adamax::new(torch::AdamaxConfig {
        lr: k.lr("lr", Some(2e-3))?,
        betas: k.pair("betas", (0.9, 0.999))?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_nadam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
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
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_radam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let lr = k.lr("lr", Some(1e-3))?;
    let betas = k.pair("betas", (0.9, 0.999))?;
    let eps = k.f64("eps", 1e-8)?;
    let wd = k.f64("weight_decay", 0.0)?;
    let dec = if k.bool("decoupled_weight_decay", false)? { WeightDecay::Decoupled } else { WeightDecay::L2 };
    let maximize = k.bool("maximize", false)?;
    let t = torch::Radam::new(torch::RadamConfig { lr, betas, eps, weight_decay: wd, decay: dec, maximize })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_rprop(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Rprop::new(torch::RpropConfig {
        lr: k.f64("lr", 1e-2)?,
        etas: k.pair("etas", (0.5, 1.2))?,
        step_sizes: k.pair("step_sizes", (1e-6, 50.0))?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_asgd(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let t = torch::Asgd::new(torch::AsgdConfig {
        lr: k.lr("lr", Some(1e-2))?,
        lambd: k.f64("lambd", 1e-4)?,
        alpha: k.f64("alpha", 0.75)?,
        t0: k.f64("t0", 1e6)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        maximize: k.bool("maximize", false)?,
    })?;
    ignore_impl_flags(k, UNFUSED_FLAGS)?;
    Ok(boxed(t))
}

fn torch_adafactor(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
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
    Ok(boxed(t))
}

fn torch_muon(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let lr = k.lr("lr", Some(1e-3))?;
    let coeffs = match k.f64s("ns_coefficients")? {
        None => [3.4445, -4.7750, 2.0315],
        Some(v) if v.len() == 3 => [v[0], v[1], v[2]],
        Some(_) => return Err(crate::error::invalid("Coefficients must be a tuple of exactly 3 values")),
    };
    let adjust = match k.opt_str("adjust_lr_fn")?.unwrap_or("original") {
        "original" => MuonLrAdjust::Original,
        "match_rms_adamw" => MuonLrAdjust::MatchRmsAdamw,
        "spectral_unclamped" => MuonLrAdjust::SpectralUnclamped,
        other => return Err(crate::error::invalid(format!("Adjust learning rate function {other} is not supported"))),
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
    Ok(boxed(t))
}

/// torch 2.15's implementation-selection flags of each optimizer, which do not change the numbers.
const SGD_FLAGS: &[&str] = &["foreach", "fused", "differentiable"];
const ADAM_FLAGS: &[&str] = &["foreach", "fused", "capturable", "differentiable"];
const ADAGRAD_FLAGS: &[&str] = &["foreach", "fused", "differentiable"];
/// Adadelta, Adamax, ASGD, NAdam, RAdam, RMSprop and Rprop: no fused kernel.
const UNFUSED_FLAGS: &[&str] = &["foreach", "capturable", "differentiable"];

/// Accepts the implementation-selection flags torch's constructor takes (`flags`, one of the lists
/// above); another is left unread, so refused as torch raises on it.
fn ignore_impl_flags(k: &mut Kwargs, flags: &[&'static str]) -> Result<()> {
    for &key in flags {
        // `foreach` and `fused` are `Optional[bool]` in torch; the other two plain booleans.
        if key == "foreach" || key == "fused" {
            let _ = k.opt_bool(key)?;
        } else {
            let _ = k.bool(key, false)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// descent's own optimizers, with torch-style arguments.

fn descent_adam8bit(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    descent_8bit(k, false)
}

fn descent_adamw8bit(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    descent_8bit(k, true)
}

/// Adam with its moments stored in 8-bit blocks; `adamw`: decoupled weight decay 1e-2 by default.
fn descent_8bit(k: &mut Kwargs, adamw: bool) -> Result<Box<dyn Transform>> {
    let lr = k.lr("lr", Some(1e-3))?;
    let (b1, b2) = k.pair("betas", (0.9, 0.999))?;
    let eps = k.f64("eps", 1e-8)?;
    let wd = k.f64("weight_decay", if adamw { 1e-2 } else { 0.0 })?;
    crate::torch::check_adam_like(&lr, (b1, b2), eps, wd)?;
    Ok(chain(vec![
        boxed(ScaleByAdam8bit::new(ScaleByAdam8bitConfig { b1, b2, eps })),
        boxed(AddDecayedWeights::new(wd)),
        boxed(ScaleByLearningRate::new(lr, true)),
    ]))
}

// ---------------------------------------------------------------------------------------------
// optax combinators and wrappers: optimizers given as `[name, kwargs]` inside the arguments.

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

/// The shapes of the parameters `keep` selects.
fn select(shapes: &[Vec<usize>], keep: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    (0..shapes.len()).filter(|&i| keep(i)).map(|i| shapes[i].clone()).collect()
}

/// The optax optimizer of argument `key` of a mask or partition, for the parameters of its group
/// (`member`): its per-parameter lists may be written for every parameter ([`for_group`]).
fn group_optax(
    k: &mut Kwargs,
    key: &'static str,
    shapes: &[Vec<usize>],
    member: &[bool],
) -> Result<Box<dyn Transform>> {
    let (n, kw) = inner_link(k, key)?;
    build_optax(&n, &for_group(&kw, member), &select(shapes, |i| member[i]))
}

/// The arguments that hold one entry per parameter (masks, labels, Muon's dimension numbers).
const PER_PARAMETER: &[&str] =
    &["mask", "weight_decay_mask", "trust_ratio_mask", "freeze_mask", "param_labels", "muon_weight_dimension_numbers"];

/// The arguments of a transformation inside a mask or partition, whose group holds the
/// parameters `member` says: a per-parameter list written for every parameter (as optax reads
/// it, its inner transformations seeing the whole tree with the others masked out) keeps the
/// group's entries, at any depth; one written for the group alone stays as it is.
fn for_group(v: &Value, member: &[bool]) -> Value {
    let n = member.len();
    let in_group = member.iter().filter(|&&m| m).count();
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(key, x)| {
                    let x = match x {
                        Value::Array(a) if PER_PARAMETER.contains(&key.as_str()) && a.len() == n && in_group != n => {
                            Value::Array(a.iter().zip(member).filter(|(_, &m)| m).map(|(e, _)| e.clone()).collect())
                        }
                        other => for_group(other, member),
                    };
                    (key.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| for_group(x, member)).collect()),
        other => other.clone(),
    }
}

/// An optax optimizer given as `[name, kwargs]` in argument `key`, built for `shapes`.
fn inner_optax(k: &mut Kwargs, key: &'static str, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let (n, kw) = inner_link(k, key)?;
    build_optax(&n, &kw, shapes)
}

/// The required `[name, kwargs]` of argument `key` (an inner optimizer).
fn inner_link(k: &mut Kwargs, key: &'static str) -> Result<(String, Value)> {
    let ctx = format!("{}: `{key}`", k.context);
    let v = k
        .present(key)?
        .ok_or_else(|| Error::Field { context: ctx.clone(), message: "missing required argument".into() })?;
    link(v, &ctx)
}

fn optax_chain(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let links = match k.value("links") {
        Some(Value::Array(a)) => a,
        None => {
            return Err(Error::Field {
                context: "optax.chain".into(),
                message: "missing `links` (a list of [name, kwargs])".into(),
            })
        }
        Some(other) => {
            return Err(Error::Field {
                context: "optax.chain: `links`".into(),
                message: format!("expected a list of [name, kwargs], got {other}"),
            })
        }
    };
    let mut txs = vec![];
    for (i, l) in links.iter().enumerate() {
        let (n, kw) = link(l, &format!("optax.chain: links[{i}]"))?;
        txs.push(build_optax(&n, &kw, shapes)?);
    }
    Ok(chain(txs))
}

fn optax_multisteps(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    // The accumulated gradient is float32, the parameters' dtype (optax's default).
    k.dtype_f32_only("accumulator_dtype")?;
    let (name, v) = k.either("every_k", "every_k_schedule")?;
    let every_k = k.count(name, v)?;
    let mean = k.bool("use_grad_mean", true)?;
    let skip = match k.value("should_skip_update_fn") {
        None => SkipUpdate::Never,
        Some(v) => {
            let ctx = "optax.multisteps: `should_skip_update_fn`";
            let (f, kw) = link(v, ctx)?;
            let mut fk = Kwargs::new(format!("optax.{f}"), &kw)?;
            let skip = match f.as_str() {
                "skip_not_finite" => SkipUpdate::NotFinite,
                "skip_large_updates" => SkipUpdate::LargeUpdates { max_squared_norm: fk.req_f64("max_squared_norm")? },
                other => {
                    return Err(unknown("should_skip_update_fn", other, &["skip_not_finite", "skip_large_updates"]))
                }
            };
            fk.finish()?;
            skip
        }
    };
    let (name, inner) = k.either("inner", "opt")?;
    refuse_per_step_rates(inner, &format!("optax.multisteps: `{name}`"), "updates it every k steps")?;
    let (n, kw) = link(inner, &format!("optax.multisteps: {name}"))?;
    Ok(boxed(MultiSteps::new(build_optax(&n, &kw, shapes)?, every_k, mean)?.skip_if(skip)))
}

fn optax_lookahead(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let sync = k.req_u64("sync_period")?;
    let alpha = k.req_f64("slow_step_size")?;
    let fast_state = if k.bool("reset_state", false)? { FastState::Reset } else { FastState::Keep };
    let (name, inner) = k.either("inner", "fast_optimizer")?;
    if fast_state == FastState::Reset {
        refuse_per_step_rates(
            inner,
            &format!("optax.lookahead: `{name}`"),
            "restarts its count at each sync (`reset_state`)",
        )?;
    }
    let (n, kw) = link(inner, &format!("optax.lookahead: {name}"))?;
    Ok(boxed(Lookahead::new(build_optax(&n, &kw, shapes)?, sync, alpha)?.fast_state(fast_state)))
}

/// A list of per-step rates (`inject_hyperparams`' form) inside a wrapper that does not update
/// its inner optimizer once a step: the list is read at the inner count, which would not be the
/// step's, so it is refused (a schedule object follows the inner count, as optax's does).
fn refuse_per_step_rates(inner: &Value, ctx: &str, why: &str) -> Result<()> {
    fn find(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, x)| (k == "learning_rate" && x.is_array()) || find(x)),
            Value::Array(a) => a.iter().any(find),
            _ => false,
        }
    }
    if find(inner) {
        return Err(Error::Field {
            context: ctx.to_string(),
            message: format!(
                "a list of per-step learning rates inside it is read at the inner optimizer's count, which this wrapper {why}: give a schedule object"
            ),
        });
    }
    Ok(())
}

fn optax_apply_if_finite(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let max_errors = k.req_u64("max_consecutive_errors")?;
    Ok(boxed(ApplyIfFinite::new(inner_optax(k, "inner", shapes)?, max_errors)))
}

/// The hyper-parameters injected into the state: the inner optimizer with its arguments; a rate
/// changed before each step is given as the inner `learning_rate`'s list of per-step values.
fn optax_inject_hyperparams(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    k.dtype_f32_only("hyperparam_dtype")?;
    let (n, kw) = inner_link(k, "inner")?;
    let name = n.strip_prefix("optax.").unwrap_or(&n);
    match INJECTED.iter().find(|(s, _)| *s == name) {
        Some(&(_, builder)) => build_entry(
            format!("optax.{name}"),
            &kw,
            shapes,
            "optax optimizer",
            name,
            OPTAX,
            Some(builder),
            ArgumentsOf::Constructor,
        ),
        None => build_optax(&n, &kw, shapes),
    }
}

/// The optimizers that read an injected learning rate otherwise than their own argument (for the
/// others `inject_hyperparams` is the optimizer itself, its rate a schedule of the step):
/// `rprop` reads it at `init` only (its step sizes start there), `sm3` takes a float of its own,
/// and the Schedule-Free aliases' averaging reads a schedule at a count from 1.
const INJECTED: Table = &[
    ("rprop", |k, s| optax_rprop_read(k, s, RateSource::Injected)),
    ("sm3", |k, s| optax_sm3_read(k, s, RateSource::Injected)),
    ("contrib.schedule_free_sgd", |k, s| optax_schedule_free_sgd_read(k, s, RateSource::Injected)),
    ("contrib.schedule_free_adamw", |k, s| optax_schedule_free_adamw_read(k, s, RateSource::Injected)),
];

// Per-parameter masks and labels, all through `Partition`.

fn optax_masked(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let mask = k.req_mask("mask", shapes.len())?;
    let inner = group_optax(k, "inner", shapes, &mask)?;
    Ok(Partition::masked(inner, &mask))
}

fn optax_freeze(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(Partition::masked(boxed(SetToZero), &k.req_mask("mask", shapes.len())?))
}

fn optax_selective_transform(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let frozen = k.req_mask("freeze_mask", shapes.len())?;
    let trained: Vec<bool> = frozen.iter().map(|f| !f).collect();
    let inner = group_optax(k, "optimizer", shapes, &trained)?;
    Ok(Partition::split(&frozen, boxed(SetToZero), inner))
}

/// optax `partition` and its older name `multi_transform`.
fn optax_partition(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let labels = k.labels("param_labels", shapes.len())?;
    let ctx = format!("{}: `transforms`", k.context);
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
        let member: Vec<bool> = labels.iter().map(|l| l == label).collect();
        let kw = for_group(&kw, &member);
        built.push((label.clone(), build_optax(&tn, &kw, &select(shapes, |i| member[i]))?));
    }
    Ok(boxed(Partition::labelled(built, &labels)?))
}

// ---------------------------------------------------------------------------------------------
// optax gradient transformations, usable as `chain` links.

fn optax_adaptive_grad_clip(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let (clipping, eps) = (k.req_f64("clipping")?, k.f64("eps", 1e-3)?);
    // `axis`: None (the default units by rank), an axis, or a list of them.
    let axis = match k.value("axis") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let one = |x: &Value| x.as_i64().filter(|&a| a.unsigned_abs() < 64).map(|a| a as isize);
            let axes = match v {
                Value::Array(xs) => xs.iter().map(one).collect::<Option<Vec<_>>>(),
                x => one(x).map(|a| vec![a]),
            };
            Some(axes.ok_or_else(|| k.err("axis", format!("expected null, an axis or a list of axes, got {v}")))?)
        }
    };
    Ok(boxed(AdaptiveGradClip::new(clipping, eps).with_axis(axis)))
}

fn optax_add_decayed_weights(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let wd = k.scalar_or_schedule("weight_decay", 0.0)?;
    Ok(ox::add_decayed_weights(wd, mask_of(k, "mask", shapes)?))
}

fn optax_apply_every(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ApplyEvery::new(k.u64("k", 1)?)?))
}

fn optax_centralize(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(Centralize::default()))
}

fn optax_clip(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(Clip::new(k.req_f64("max_delta")?)))
}

fn optax_clip_by_block_rms(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ClipByBlockRms::new(k.req_f64("threshold")?)))
}

fn optax_clip_by_global_norm(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ClipByGlobalNorm::new(k.req_f64("max_norm")?)))
}

fn optax_ema(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    k.dtype_f32_only("accumulator_dtype")?;
    Ok(boxed(Ema::new(k.req_f64("decay")?, k.bool("debias", true)?)))
}

fn optax_identity(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(chain(vec![]))
}

fn optax_keep_params_nonnegative(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(KeepParamsNonnegative))
}

/// SAM's adversarial helper: `g / ‖g‖`, the norm over all parameters.
fn optax_contrib_normalize(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(NormalizeByUpdateNorm::new(1.0, 0.0)))
}

fn optax_normalize_by_update_norm(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(NormalizeByUpdateNorm::new(k.f64("scale_factor", 1.0)?, k.f64("eps", 1e-6)?)))
}

fn optax_scale(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(Scale::new(k.req_f64("step_size")?)))
}

fn optax_scale_by_adam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(
        ScaleByAdam::new(ScaleByAdamConfig {
            b1: k.f64("b1", 0.9)?,
            b2: k.f64("b2", 0.999)?,
            eps: k.f64("eps", 1e-8)?,
            eps_root: k.f64("eps_root", 0.0)?,
            nesterov: k.bool("nesterov", false)?,
        })
        .mu_dtype(k.mu_dtype()?),
    ))
}

fn optax_scale_by_belief(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByBelief::new(ScaleByBeliefConfig {
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-16)?,
        eps_root: k.f64("eps_root", 1e-16)?,
        nesterov: k.bool("nesterov", false)?,
    })))
}

fn optax_scale_by_learning_rate(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let flip_sign = k.bool("flip_sign", true)?;
    // optax: a learning rate of None is the identity (the sign is not flipped either).
    match k.opt_lr("learning_rate")? {
        None => Ok(boxed(crate::transforms::Identity)),
        Some(lr) => Ok(boxed(ScaleByLearningRate::new(lr, flip_sign))),
    }
}

fn optax_scale_by_lion(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    k.mu_dtype_f32_only()?;
    let lion = ScaleByLion::new(k.f64("b1", 0.9)?, k.f64("b2", 0.99)?);
    let smooth_beta = k.f64("smooth_beta", 1.0)?;
    let mode = match k.str("mode", "hard")? {
        "hard" => crate::transforms::LionMode::Hard,
        "smooth" => crate::transforms::LionMode::Smooth { beta: smooth_beta as f32 },
        "refined" => crate::transforms::LionMode::Refined,
        other => {
            return Err(Error::Field {
                context: "optax.scale_by_lion: `mode`".into(),
                message: format!("Unknown lion mode: {other}; accepted: hard, smooth, refined"),
            })
        }
    };
    Ok(boxed(lion.with_mode(mode)))
}

fn optax_scale_by_param_block_rms(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByParamBlockRms::new(k.f64("min_scale", 1e-3)?)))
}

fn optax_scale_by_rms(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByRms::new(ScaleByRmsConfig {
        decay: k.f64("decay", 0.9)?,
        eps: k.f64("eps", 1e-8)?,
        initial_scale: k.f64("initial_scale", 0.0)?,
        eps_in_sqrt: k.bool("eps_in_sqrt", true)?,
        bias_correction: k.bool("bias_correction", false)?,
    })))
}

fn optax_scale_by_rprop(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByRprop::new(
        k.req_f64("learning_rate")?,
        ScaleByRpropConfig {
            eta_minus: k.f64("eta_minus", 0.5)?,
            eta_plus: k.f64("eta_plus", 1.2)?,
            min_step_size: k.f64("min_step_size", 1e-6)?,
            max_step_size: k.f64("max_step_size", 50.0)?,
        },
    )))
}

fn optax_scale_by_rss(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByRss::new(k.f64("initial_accumulator_value", 0.1)?, k.f64("eps", 1e-7)?)))
}

fn optax_scale_by_sign(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleBySign))
}

fn optax_scale_by_sm3(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleBySm3::new(ScaleBySm3Config {
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 1.0)?,
        eps: k.f64("eps", 1e-8)?,
    })))
}

fn optax_scale_by_stddev(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByStddev::new(ScaleByStddevConfig {
        decay: k.f64("decay", 0.9)?,
        eps: k.f64("eps", 1e-8)?,
        initial_scale: k.f64("initial_scale", 0.0)?,
        eps_in_sqrt: k.bool("eps_in_sqrt", true)?,
        bias_correction: k.bool("bias_correction", false)?,
    })))
}

fn optax_scale_by_trust_ratio(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByTrustRatio::new(ScaleByTrustRatioConfig {
        min_norm: k.f64("min_norm", 0.0)?,
        trust_coefficient: k.f64("trust_coefficient", 1.0)?,
        eps: k.f64("eps", 0.0)?,
    })))
}

fn optax_scale_by_yogi(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ScaleByYogi::new(ScaleByYogiConfig {
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-3)?,
        eps_root: k.f64("eps_root", 0.0)?,
        initial_accumulator_value: k.f64("initial_accumulator_value", 1e-6)?,
    })))
}

fn optax_set_to_zero(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(SetToZero))
}

fn optax_trace(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    k.dtype_f32_only("accumulator_dtype")?;
    Ok(boxed(Trace::new(k.req_f64("decay")?, k.bool("nesterov", false)?)))
}

fn optax_zero_nans(_: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(boxed(ZeroNans))
}

// ---------------------------------------------------------------------------------------------
// optax aliases: the keyword arguments read into the typed configuration of `crate::optax`, with
// optax's names and defaults, then the typed constructor.

/// The per-parameter mask in argument `key`, one entry per parameter of `shapes`.
fn mask_of(k: &mut Kwargs, key: &'static str, shapes: &[Vec<usize>]) -> Result<Option<Vec<bool>>> {
    k.mask(key, shapes.len())
}

fn optax_sgd(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let c = ox::Sgd {
        learning_rate: k.lr("learning_rate", None)?,
        momentum: k.opt_f64("momentum")?,
        nesterov: k.bool("nesterov", false)?,
    };
    k.dtype_f32_only("accumulator_dtype")?;
    Ok(ox::sgd(c))
}

fn optax_adam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adam(ox::Adam {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", false)?,
    }))
}

fn optax_nadam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::nadam(ox::Nadam {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", true)?,
    }))
}

fn optax_adamw(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adamw(ox::AdamW {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", false)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 1e-4)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_nadamw(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::nadamw(ox::NadamW {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", true)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 1e-4)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_amsgrad(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::amsgrad(ox::Amsgrad {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        bias_correction_mu: k.bool("bias_correction_mu", true)?,
        bias_correction_nu: k.bool("bias_correction_nu", true)?,
        mu_dtype: k.mu_dtype()?,
    }))
}

fn optax_adamax(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adamax(ox::Adamax {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
    }))
}

fn optax_adamaxw(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adamaxw(ox::AdamaxW {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 1e-4)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_adagrad(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adagrad(ox::Adagrad {
        learning_rate: k.lr("learning_rate", None)?,
        initial_accumulator_value: k.f64("initial_accumulator_value", 0.1)?,
        eps: k.f64("eps", 1e-7)?,
    }))
}

fn optax_adadelta(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adadelta(ox::Adadelta {
        // optax's default is None: no learning-rate scaling at all.
        learning_rate: k.opt_lr("learning_rate")?,
        rho: k.f64("rho", 0.9)?,
        eps: k.f64("eps", 1e-6)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        weight_decay_mask: mask_of(k, "weight_decay_mask", shapes)?,
    }))
}

fn optax_rmsprop(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::rmsprop(ox::Rmsprop {
        learning_rate: k.lr("learning_rate", None)?,
        decay: k.f64("decay", 0.9)?,
        eps: k.f64("eps", 1e-8)?,
        initial_scale: k.f64("initial_scale", 0.0)?,
        eps_in_sqrt: k.bool("eps_in_sqrt", true)?,
        centered: k.bool("centered", false)?,
        momentum: k.opt_f64("momentum")?,
        nesterov: k.bool("nesterov", false)?,
        bias_correction: k.bool("bias_correction", false)?,
    }))
}

fn optax_radam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let learning_rate = k.lr("learning_rate", None)?;
    let b2 = k.f64("b2", 0.999)?;
    if b2 == 1.0 {
        // `ro_inf = 2/(1 − b2) − 1`, in Python floats at construction.
        return Err(k.err("b2", "1 divides by zero in the SMA length 2/(1 − b2) − 1 (optax raises ZeroDivisionError)"));
    }
    Ok(ox::radam(ox::Radam {
        learning_rate,
        b1: k.f64("b1", 0.9)?,
        b2,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        threshold: k.f64("threshold", 5.0)?,
        nesterov: k.bool("nesterov", false)?,
    }))
}

fn optax_rprop(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    optax_rprop_read(k, shapes, RateSource::Argument)
}

/// optax `rprop`, whose rate is only the initial step size: injected, its value at step 0 (as
/// optax's `inject_hyperparams` calls `init` with it; later values never reach the step).
fn optax_rprop_read(k: &mut Kwargs, _: &[Vec<usize>], source: RateSource) -> Result<Box<dyn Transform>> {
    let learning_rate = match source {
        RateSource::Argument => k.req_f64("learning_rate")?,
        RateSource::Injected => k.lr("learning_rate", None)?.at(0),
    };
    Ok(ox::rprop(ox::Rprop {
        learning_rate,
        eta_minus: k.f64("eta_minus", 0.5)?,
        eta_plus: k.f64("eta_plus", 1.2)?,
        min_step_size: k.f64("min_step_size", 1e-6)?,
        max_step_size: k.f64("max_step_size", 50.0)?,
    }))
}

fn optax_lion(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let (learning_rate, b1, b2) = (k.lr("learning_rate", None)?, k.f64("b1", 0.9)?, k.f64("b2", 0.99)?);
    k.mu_dtype_f32_only()?;
    let weight_decay = k.scalar_or_schedule("weight_decay", 1e-3)?;
    Ok(ox::lion(ox::Lion { learning_rate, b1, b2, weight_decay, mask: mask_of(k, "mask", shapes)? }))
}

fn optax_lamb(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::lamb(ox::Lamb {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-6)?,
        eps_root: k.f64("eps_root", 0.0)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_lars(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::lars(ox::Lars {
        learning_rate: k.lr("learning_rate", None)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        trust_coefficient: k.f64("trust_coefficient", 0.001)?,
        eps: k.f64("eps", 0.0)?,
        momentum: k.f64("momentum", 0.9)?,
        nesterov: k.bool("nesterov", false)?,
        weight_decay_mask: mask_of(k, "weight_decay_mask", shapes)?,
        trust_ratio_mask: mask_of(k, "trust_ratio_mask", shapes)?,
    }))
}

fn optax_yogi(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::yogi(ox::Yogi {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-3)?,
    }))
}

fn optax_adabelief(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adabelief(ox::Adabelief {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-16)?,
        eps_root: k.f64("eps_root", 1e-16)?,
        nesterov: k.bool("nesterov", false)?,
        weight_decay_mask: mask_of(k, "weight_decay_mask", shapes)?,
        weight_decay: k.opt_f64("weight_decay")?,
    }))
}

fn optax_novograd(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::novograd(ox::Novograd {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.25)?,
        eps: k.f64("eps", 1e-6)?,
        eps_root: k.f64("eps_root", 0.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
    }))
}

fn optax_adan(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::adan(ox::Adan {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.98)?,
        b2: k.f64("b2", 0.92)?,
        b3: k.f64("b3", 0.99)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 1e-8)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_sm3(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    optax_sm3_read(k, shapes, RateSource::Argument)
}

/// optax `sm3`, whose `-learning_rate` takes a float (a schedule fails in optax) or an injected rate.
fn optax_sm3_read(k: &mut Kwargs, _: &[Vec<usize>], source: RateSource) -> Result<Box<dyn Transform>> {
    let learning_rate = match source {
        RateSource::Argument => k.req_f64("learning_rate")?.into(),
        RateSource::Injected => k.lr("learning_rate", None)?,
    };
    Ok(ox::sm3(ox::Sm3 { learning_rate, momentum: k.f64("momentum", 0.9)? }))
}

fn optax_fromage(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::fromage(ox::Fromage { learning_rate: k.lr("learning_rate", None)?, min_norm: k.f64("min_norm", 1e-6)? }))
}

fn optax_sign_sgd(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::sign_sgd(ox::SignSgd { learning_rate: k.lr("learning_rate", None)? }))
}

fn optax_signum(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let c = ox::Signum { learning_rate: k.lr("learning_rate", None)?, beta: k.f64("beta", 0.9)? };
    k.dtype_f32_only("accumulator_dtype")?;
    Ok(ox::signum(c))
}

/// A Newton–Schulz iteration count: below 100, the bound torch's Muon sets (optax and
/// pytorch_optimizer set none; a count of 10⁹ would run for hours on every step).
pub(crate) fn ns_steps(n: u64) -> Result<usize> {
    if n >= 100 {
        return Err(crate::error::invalid(format!(
            "ns_steps {n}: at most 99 Newton–Schulz iterations (torch.optim.Muon's bound; 5 is the default)"
        )));
    }
    Ok(n as usize)
}

fn optax_optimistic_gradient_descent(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::optimistic_gradient_descent(ox::OptimisticGradientDescent {
        learning_rate: k.lr("learning_rate", None)?,
        alpha: k.f64("alpha", 1.0)?,
        beta: k.f64("beta", 1.0)?,
    }))
}

fn optax_optimistic_adam(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let Some(learning_rate) = k.lr("learning_rate", None)?.constant() else {
        return Err(k.err(
            "learning_rate",
            "this version of `optimistic_adam` does not support learning rate schedules but \
             `optimistic_adam_v2` does",
        ));
    };
    Ok(ox::optimistic_adam(ox::OptimisticAdam {
        learning_rate,
        optimism: k.opt_f64("optimism")?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", true)?,
    }))
}

fn optax_optimistic_adam_v2(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(ox::optimistic_adam_v2(ox::OptimisticAdamV2 {
        learning_rate: k.lr("learning_rate", None)?,
        alpha: k.f64("alpha", 1.0)?,
        beta: k.f64("beta", 1.0)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", true)?,
    }))
}

fn optax_adafactor(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let learning_rate = k.opt_lr("learning_rate")?;
    let min_dim_size_to_factor = k.u64("min_dim_size_to_factor", 128)? as usize;
    let (decay_rate, decay_offset) = (k.f64("decay_rate", 0.8)?, k.u64("decay_offset", 0)?);
    let multiply_by_parameter_scale = k.bool("multiply_by_parameter_scale", true)?;
    // `Optional[float] = 1.0`: absent is 1.0, null is no clipping.
    let clipping_threshold = match k.value("clipping_threshold") {
        None if k.map.contains_key("clipping_threshold") => None,
        _ => Some(k.f64("clipping_threshold", 1.0)?),
    };
    let momentum = k.opt_f64("momentum")?;
    k.dtype_f32_only("dtype_momentum")?;
    let weight_decay_rate = k.opt_scalar_or_schedule("weight_decay_rate")?;
    let (eps, factored) = (k.f64("eps", 1e-30)?, k.bool("factored", true)?);
    // Without `weight_decay_rate` optax adds no decay, so the mask has nothing to select.
    let weight_decay_mask = mask_of(k, "weight_decay_mask", shapes)?;
    Ok(ox::adafactor(ox::Adafactor {
        learning_rate,
        min_dim_size_to_factor,
        decay_rate,
        decay_offset,
        multiply_by_parameter_scale,
        clipping_threshold,
        momentum,
        weight_decay_rate,
        eps,
        factored,
        weight_decay_mask,
    }))
}

fn optax_acprop(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::acprop(oxc::Acprop {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-16)?,
        eps_root: k.f64("eps_root", 1e-16)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_simplified_ademamix(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::simplified_ademamix(oxc::SimplifiedAdemamix {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.99)?,
        b2: k.f64("b2", 0.95)?,
        alpha: k.lr("alpha", Some(0.0))?,
        eps: k.f64("eps", 1e-8)?,
        eps_root: k.f64("eps_root", 0.0)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_dowg(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::dowg(oxc::Dowg {
        learning_rate: k.lr("learning_rate", Some(1.0))?,
        init_estim_sq_dist: k.opt_f64("init_estim_sq_dist")?,
        eps: k.f64("eps", 1e-4)?,
        mask: mask_of(k, "mask", shapes)?,
        weight_decay: k.opt_scalar_or_schedule("weight_decay")?,
    }))
}

fn optax_mechanize(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let base_optimizer = inner_optax(k, "base_optimizer", shapes)?;
    let num_betas = k.u64("num_betas", 6)?;
    oxc::mechanize(oxc::Mechanize {
        base_optimizer,
        num_betas: usize::try_from(num_betas).unwrap_or(usize::MAX),
        weight_decay: k.f64("weight_decay", 1e-2)?,
        eps: k.f64("eps", 1e-8)?,
        s_init: k.f64("s_init", 1e-6)?,
    })
}

fn optax_ademamix(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let learning_rate = k.lr("learning_rate", None)?;
    let (b1, b2, b3) = (k.f64("b1", 0.9)?, k.f64("b2", 0.999)?, k.scalar_or_schedule("b3", 0.9999)?);
    let (alpha, eps, eps_root) = (k.scalar_or_schedule("alpha", 5.0)?, k.f64("eps", 1e-8)?, k.f64("eps_root", 0.0)?);
    k.mu_dtype_f32_only()?;
    let weight_decay = k.scalar_or_schedule("weight_decay", 0.0)?;
    let mask = mask_of(k, "mask", shapes)?;
    Ok(oxc::ademamix(oxc::Ademamix { learning_rate, b1, b2, b3, alpha, eps, eps_root, weight_decay, mask }))
}

fn optax_adopt(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let c = oxc::Adopt {
        learning_rate: k.lr("learning_rate", None)?,
        b1: k.f64("b1", 0.9)?,
        b2: k.f64("b2", 0.9999)?,
        eps: k.f64("eps", 1e-6)?,
        nesterov: k.bool("nesterov", false)?,
        use_clipping: k.bool("use_clipping", true)?,
    };
    k.mu_dtype_f32_only()?;
    Ok(oxc::adopt(c))
}

fn optax_cocob(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::cocob(oxc::Cocob {
        learning_rate: k.lr("learning_rate", Some(1.0))?,
        alpha: k.f64("alpha", 100.0)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        mask: mask_of(k, "mask", shapes)?,
    }))
}

fn optax_dadapt_adamw(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::dadapt_adamw(oxc::DadaptAdamW {
        learning_rate: k.lr("learning_rate", Some(1.0))?,
        betas: k.pair("betas", (0.9, 0.999))?,
        eps: k.f64("eps", 1e-8)?,
        estim_lr0: k.f64("estim_lr0", 1e-6)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
    }))
}

fn optax_prodigy(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let c = oxc::Prodigy {
        learning_rate: k.lr("learning_rate", Some(1.0))?,
        betas: k.pair("betas", (0.9, 0.999))?,
        beta3: k.opt_f64("beta3")?,
        eps: k.f64("eps", 1e-8)?,
        estim_lr0: k.f64("estim_lr0", 1e-6)?,
        estim_lr_coef: k.f64("estim_lr_coef", 1.0)?,
        weight_decay: k.f64("weight_decay", 0.0)?,
        safeguard_warmup: k.bool("safeguard_warmup", false)?,
    };
    // The decay is inside prodigy's own update, not a link a partition could select.
    if mask_of(k, "weight_decay_mask", shapes)?.is_some_and(|m| m.iter().any(|on| !on)) {
        return Err(
            k.err("weight_decay_mask", "a mask that excludes parameters is not implemented for contrib.prodigy")
        );
    }
    Ok(oxc::prodigy(c))
}

fn optax_dog(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let learning_rate = k.lr("learning_rate", Some(1.0))?;
    let init_step = match k.present("init_step")? {
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
    Ok(oxc::dog(oxc::Dog {
        learning_rate,
        init_step,
        eps: k.f64("eps", 1e-8)?,
        mask: mask_of(k, "mask", shapes)?,
        weight_decay: k.opt_scalar_or_schedule("weight_decay")?,
    }))
}

fn optax_madgrad(k: &mut Kwargs, _: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    Ok(oxc::madgrad(oxc::Madgrad {
        learning_rate: k.lr("learning_rate", None)?,
        momentum: k.f64("momentum", 0.9)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        eps: k.f64("eps", 1e-6)?,
    }))
}

/// The learning rate and warm-up of a Schedule-Free alias: optax's alias takes a schedule
/// (`warmup_constant_schedule` fails on one as its peak) and `inject_hyperparams` a rate per step.
fn schedule_free_lr_args(k: &mut Kwargs, default: f64, source: RateSource) -> Result<(LearningRate, Option<u64>)> {
    if let (RateSource::Argument, Some(v @ Value::Array(_))) = (source, k.get("learning_rate")?) {
        return Err(k.err(
            "learning_rate",
            format!(
                "expected a number or a schedule object, got the list {v} (per-step rates are inject_hyperparams')"
            ),
        ));
    }
    let (lr, warmup) = (k.lr("learning_rate", Some(default))?, k.opt_u64("warmup_steps")?);
    if source == RateSource::Argument && warmup.is_some() && lr.constant().is_none() {
        return Err(k.err(
            "learning_rate",
            "a schedule with `warmup_steps` (optax's warm-up takes a float peak; inject_hyperparams takes both)",
        ));
    }
    Ok((lr, warmup))
}

fn optax_schedule_free_sgd(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    optax_schedule_free_sgd_read(k, shapes, RateSource::Argument)
}

fn optax_schedule_free_sgd_read(k: &mut Kwargs, _: &[Vec<usize>], source: RateSource) -> Result<Box<dyn Transform>> {
    let (learning_rate, warmup_steps) = schedule_free_lr_args(k, 1.0, source)?;
    let c = oxc::ScheduleFreeSgd {
        learning_rate,
        rate_source: source,
        warmup_steps,
        b1: k.f64("b1", 0.9)?,
        weight_lr_power: k.f64("weight_lr_power", 2.0)?,
        weight_decay: k.opt_scalar_or_schedule("weight_decay")?,
    };
    k.dtype_f32_only("state_dtype")?;
    Ok(oxc::schedule_free_sgd(c))
}

fn optax_schedule_free_adamw(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    optax_schedule_free_adamw_read(k, shapes, RateSource::Argument)
}

fn optax_schedule_free_adamw_read(k: &mut Kwargs, _: &[Vec<usize>], source: RateSource) -> Result<Box<dyn Transform>> {
    let (learning_rate, warmup_steps) = schedule_free_lr_args(k, 0.0025, source)?;
    let c = oxc::ScheduleFreeAdamW {
        learning_rate,
        rate_source: source,
        warmup_steps,
        b1: k.f64("b1", 0.9)?,
        weight_lr_power: k.f64("weight_lr_power", 2.0)?,
        b2: k.f64("b2", 0.999)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
    };
    k.dtype_f32_only("state_dtype")?;
    Ok(oxc::schedule_free_adamw(c))
}

/// optax `contrib.galore` (Zhao et al. 2024): the base optimizer on low-rank projections of the
/// 2-D gradients, then decoupled weight decay and the learning rate.
fn optax_galore(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let lr = k.lr("learning_rate", None)?;
    let galore = crate::po::matrix::galore::optax_scale_by_galore(k, shapes)?;
    let wd = k.scalar_or_schedule("weight_decay", 0.0)?;
    let decay = match mask_of(k, "mask", shapes)? {
        Some(m) => Partition::masked(boxed(AddDecayedWeights::new(wd)), &m),
        None => boxed(AddDecayedWeights::new(wd)),
    };
    Ok(chain(vec![galore, decay, boxed(ScaleByLearningRate::new(lr, true))]))
}

fn optax_muon(k: &mut Kwargs, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    use crate::transforms::{MuonDims, NsCoeffs, NsPreconditioning};
    let learning_rate = k.lr("learning_rate", None)?;
    let ns_coeffs = match k.value("ns_coeffs") {
        None => NsCoeffs::default(),
        Some(Value::String(name)) => NsCoeffs::preset(name)
            .ok_or_else(|| k.err("ns_coeffs", format!("unknown preset `{name}`; valid: standard, dion")))?,
        Some(v) => ns_coeff_rows(v).ok_or_else(|| {
            k.err("ns_coeffs", format!("expected 3 numbers, a list of rows of 3 numbers, or a preset name; got {v}"))
        })?,
    };
    let name = k.opt_str("preconditioning")?.unwrap_or("frobenius");
    let preconditioning = NsPreconditioning::from_name(name).ok_or_else(|| {
        k.err("preconditioning", format!("unknown preconditioning `{name}`; valid: frobenius, spectral, aol, schatten"))
    })?;
    let dims = match k.value("muon_weight_dimension_numbers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.len() == shapes.len() => Some(
            list.iter()
                .map(|d| muon_dims(d).map_err(|e| k.err("muon_weight_dimension_numbers", e)))
                .collect::<Result<Vec<Option<MuonDims>>>>()?,
        ),
        Some(Value::Array(list)) => {
            return Err(k.err(
                "muon_weight_dimension_numbers",
                format!(
                    "has {} entries for {} parameters (one per parameter: null or dimension numbers)",
                    list.len(),
                    shapes.len()
                ),
            ))
        }
        Some(v) => {
            return Err(k.err(
                "muon_weight_dimension_numbers",
                format!(
                    "expected one entry per parameter (null or {{\"reduction_axis\": …, \"output_axis\": …}}), got {v}"
                ),
            ))
        }
    };
    Ok(oxc::muon(oxc::Muon {
        learning_rate,
        ns_coeffs,
        ns_steps: ns_steps(k.u64("ns_steps", 5)?)?,
        beta: k.f64("beta", 0.95)?,
        eps: k.f64("eps", 1e-8)?,
        weight_decay: k.scalar_or_schedule("weight_decay", 0.0)?,
        weight_decay_mask: mask_of(k, "weight_decay_mask", shapes)?,
        mu_dtype: k.mu_dtype()?,
        nesterov: k.bool("nesterov", true)?,
        adaptive: k.bool("adaptive", false)?,
        preconditioning,
        adam_b1: k.f64("adam_b1", 0.9)?,
        adam_b2: k.f64("adam_b2", 0.999)?,
        adam_eps_root: k.f64("adam_eps_root", 0.0)?,
        adam_weight_decay: k.scalar_or_schedule("adam_weight_decay", 0.0)?,
        adam_learning_rate: k.opt_lr("adam_learning_rate")?,
        muon_weight_dimension_numbers: dims,
        consistent_rms: k.opt_f64("consistent_rms")?,
    }))
}

/// optax's `ns_coeffs` as JSON: three numbers (every iteration) or rows of three (one per
/// iteration).
fn ns_coeff_rows(v: &Value) -> Option<crate::transforms::NsCoeffs> {
    use crate::transforms::NsCoeffs;
    let triple = |v: &Value| -> Option<[f64; 3]> {
        match v.as_array()?.as_slice() {
            [a, b, c] => Some([a.as_f64()?, b.as_f64()?, c.as_f64()?]),
            _ => None,
        }
    };
    let rows = v.as_array()?;
    if rows.iter().all(Value::is_number) {
        return triple(v).map(NsCoeffs::Fixed);
    }
    let rows: Option<Vec<[f64; 3]>> = rows.iter().map(triple).collect();
    rows.filter(|r| !r.is_empty()).map(NsCoeffs::PerStep)
}

/// One parameter's entry of `muon_weight_dimension_numbers`: `null` (Adam updates it) or
/// `{"reduction_axis": axis or axes, "output_axis": axis or axes}` (optax's defaults 0 and 1).
fn muon_dims(v: &Value) -> std::result::Result<Option<crate::transforms::MuonDims>, String> {
    let axes = |key: &str, default: isize| -> std::result::Result<Vec<isize>, String> {
        let bad = |x: &Value| format!("`{key}`: expected an axis or a list of axes, got {x}");
        match v.get(key) {
            None => Ok(vec![default]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_i64().map(|i| i as isize).ok_or_else(|| bad(x))).collect(),
            Some(x) => x.as_i64().map(|i| vec![i as isize]).ok_or_else(|| bad(x)),
        }
    };
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => {
            if let Some(key) = o.keys().find(|k| *k != "reduction_axis" && *k != "output_axis") {
                return Err(format!("unknown field `{key}` of dimension numbers; valid: reduction_axis, output_axis"));
            }
            Ok(Some(crate::transforms::MuonDims {
                reduction: axes("reduction_axis", 0)?,
                output: axes("output_axis", 1)?,
            }))
        }
        other => Err(format!("expected null or {{\"reduction_axis\": …, \"output_axis\": …}}, got {other}")),
    }
}

/// A schedule built from a spec: a function of the step, or the metric-driven plateau scheduler.
pub enum ScheduleSpec {
    /// A function of the step.
    Function(BoxSchedule),
    /// torch `ReduceLROnPlateau`, driven by a metric.
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
    // Every torch scheduler but ReduceLROnPlateau and ChainedScheduler takes `last_epoch`: the
    // default (-1, a new scheduler) changes nothing; resuming a scheduler at another `last_epoch`
    // is not reproduced. (torch 2.15's schedulers take no `verbose`.)
    if library == "torch" && !matches!(name, "ReduceLROnPlateau" | "ChainedScheduler") {
        if let Some(v) = k.value("last_epoch") {
            if v.as_i64() != Some(-1) {
                return Err(Error::Field {
                    context: format!("{library}.{name}: `last_epoch`"),
                    message: format!("{v}: descent starts a schedule at its step 0 (torch's -1, the default)"),
                });
            }
        }
    }
    let s = match (library, name) {
        ("torch", "StepLR") => sch::step_lr(need_base()?, k.req_u64("step_size")?, k.f64("gamma", 0.1)?)?,
        ("torch", "MultiStepLR") => {
            // A negative milestone is never reached (torch counts the epochs from 0).
            let ms =
                k.i64s("milestones")?.unwrap_or_default().into_iter().filter_map(|m| u64::try_from(m).ok()).collect();
            sch::multistep_lr(need_base()?, ms, k.f64("gamma", 0.1)?)
        }
        ("torch", "ExponentialLR") => sch::exponential_lr(need_base()?, k.req_f64("gamma")?),
        ("torch", "CosineAnnealingLR") => {
            sch::cosine_annealing_lr(need_base()?, k.req_u64("T_max")?, k.f64("eta_min", 0.0)?)?
        }
        ("torch", "CosineAnnealingWarmRestarts") => sch::cosine_annealing_warm_restarts(
            need_base()?,
            sch::CosineAnnealingWarmRestarts {
                t_0: k.req_u64("T_0")?,
                t_mult: k.u64("T_mult", 1)?,
                eta_min: k.f64("eta_min", 0.0)?,
            },
        )?,
        ("torch", "LinearLR") => sch::linear_lr(
            need_base()?,
            sch::LinearLr {
                start_factor: k.f64("start_factor", 1.0 / 3.0)?,
                end_factor: k.f64("end_factor", 1.0)?,
                total_iters: k.u64("total_iters", 5)?,
            },
        )?,
        ("torch", "ConstantLR") => {
            let (factor, total_iters) = (k.f64("factor", 1.0 / 3.0)?, k.u64("total_iters", 5)?);
            if factor == 0.0 && total_iters > 0 {
                return Err(k.err("factor", "0: torch divides by it when the schedule reaches total_iters"));
            }
            sch::constant_lr(need_base()?, factor, total_iters)?
        }
        ("torch", "PolynomialLR") => {
            let (total_iters, power) = (k.u64("total_iters", 5)?, k.f64("power", 1.0)?);
            if power < 0.0 {
                return Err(k.err(
                    "power",
                    format!("{power}: torch raises at total_iters (0 to a negative power); a power of 0 or more"),
                ));
            }
            sch::polynomial_lr(need_base()?, total_iters, power)
        }
        ("torch", "OneCycleLR") => {
            let max_lr = one_group_f64(&mut k, "max_lr", None)?;
            let total = match k.opt_u64("total_steps")? {
                Some(t) => {
                    // With total_steps torch reads neither of these.
                    let _ = (k.value("epochs"), k.value("steps_per_epoch"));
                    t
                }
                None => {
                    let (epochs, per_epoch) = (k.req_u64("epochs")?, k.req_u64("steps_per_epoch")?);
                    epochs.checked_mul(per_epoch).ok_or_else(|| Error::Field {
                        context: "torch.OneCycleLR: `epochs`".into(),
                        message: format!("{epochs} epochs of {per_epoch} steps overflow a step count"),
                    })?
                }
            };
            // torch checks `isinstance(pct_start, float)`: an integer (0 or 1) is refused there.
            if k.value("pct_start").is_some_and(|v| v.is_i64() || v.is_u64()) {
                return Err(k.err("pct_start", "must be a float (torch refuses an integer such as 1; write 1.0)"));
            }
            let pct = k.f64("pct_start", 0.3)?;
            let a = anneal(k.str("anneal_strategy", "cos")?)?;
            let (div, fdiv, three) =
                (k.f64("div_factor", 25.0)?, k.f64("final_div_factor", 1e4)?, k.bool("three_phase", false)?);
            for (key, x) in [("div_factor", div), ("final_div_factor", fdiv)] {
                if x == 0.0 {
                    return Err(k.err(key, "must not be 0 (torch divides by it)"));
                }
            }
            let _ = k.bool("cycle_momentum", true)?;
            let _ = k.f64("base_momentum", 0.85)?;
            let _ = k.f64("max_momentum", 0.95)?;
            sch::onecycle_lr(sch::OneCycleLr {
                max_lr,
                total_steps: total,
                pct_start: pct,
                anneal_strategy: a,
                div_factor: div,
                final_div_factor: fdiv,
                three_phase: three,
            })?
        }
        ("torch", "CyclicLR") => {
            let (b, m) = (one_group_f64(&mut k, "base_lr", None)?, one_group_f64(&mut k, "max_lr", None)?);
            let up = k.u64("step_size_up", 2000)?;
            if up == 0 {
                return Err(k.err("step_size_up", "must be positive (torch divides by the rising fraction)"));
            }
            let down = k.opt_u64("step_size_down")?;
            let gamma = k.f64("gamma", 1.0)?;
            let mode = match k.str("mode", "triangular")? {
                "triangular" => sch::CyclicMode::Triangular,
                "triangular2" => sch::CyclicMode::Triangular2,
                "exp_range" => sch::CyclicMode::ExpRange { gamma },
                other => return Err(unknown("CyclicLR mode", other, &["triangular", "triangular2", "exp_range"])),
            };
            // Read by torch only with a `scale_fn`, which JSON cannot give.
            match k.str("scale_mode", "cycle")? {
                "cycle" | "iterations" => {}
                other => return Err(unknown("CyclicLR scale_mode", other, &["cycle", "iterations"])),
            }
            let _ = k.bool("cycle_momentum", true)?;
            let _ = k.f64("base_momentum", 0.8)?;
            let _ = k.f64("max_momentum", 0.9)?;
            sch::cyclic_lr(sch::CyclicLr { base_lr: b, max_lr: m, step_size_up: up, step_size_down: down, mode })?
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
            let (cooldown, min_lr, eps) =
                (k.u64("cooldown", 0)?, one_group_f64(&mut k, "min_lr", Some(0.0))?, k.f64("eps", 1e-8)?);
            k.finish()?;
            let config = sch::ReduceLrOnPlateauConfig {
                mode,
                factor,
                patience,
                threshold,
                threshold_mode: tm,
                cooldown,
                min_lr,
                eps,
            };
            return Ok(ScheduleSpec::Plateau(ReduceLrOnPlateau::new(need_base()?, config)?));
        }
        ("torch", "SequentialLR") => {
            let (parts, _) = sub_schedules(&mut k, "schedulers", library, base_lr)?;
            let ms: Vec<u64> = k.u64s("milestones")?.unwrap_or_default();
            // torch picks the scheduler by bisecting the list as given and restarts one only at
            // its own milestone: out of order, some never restart.
            if ms.windows(2).any(|w| w[0] > w[1]) {
                return Err(
                    k.err("milestones", format!("{ms:?}: in ascending order (torch bisects the list as given)"))
                );
            }
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
            let (parts, base) = sub_schedules(&mut k, "schedulers", library, base_lr)?;
            need_base()?;
            sch::chained(base.expect("checked above"), parts)
        }
        ("torch", other) => return Err(unknown("torch scheduler", other, TORCH_SCHEDULES)),
        ("optax", "join_schedules") => {
            let (parts, _) = sub_schedules(&mut k, "schedules", library, base_lr)?;
            // optax zips the later schedules with the boundaries: what one list has beyond the
            // other is never read, and a negative boundary starts its schedule that many steps in.
            let bs: Vec<i64> = k.i64s("boundaries")?.unwrap_or_default();
            sch::join_signed(parts, bs)
        }
        ("optax", n) => {
            let n = n.strip_suffix("_schedule").unwrap_or(n);
            match n {
                "constant" => sch::constant(k.req_f64("value")?),
                "polynomial" => sch::polynomial(sch::Polynomial {
                    init_value: k.req_f64("init_value")?,
                    end_value: k.req_f64("end_value")?,
                    power: k.req_f64("power")?,
                    transition_steps: optax_steps_or_constant(&mut k)?,
                    transition_begin: optax_begin(&mut k)?,
                }),
                "linear" => sch::linear(sch::Linear {
                    init_value: k.req_f64("init_value")?,
                    end_value: k.req_f64("end_value")?,
                    transition_steps: optax_steps_or_constant(&mut k)?,
                    transition_begin: optax_begin(&mut k)?,
                }),
                "piecewise_constant" => {
                    let init = k.req_f64("init_value")?;
                    let bs = boundaries(k.value("boundaries_and_scales"), &format!("optax.{name}"))?;
                    sch::piecewise_constant(init, bs)?
                }
                "exponential_decay" => sch::exponential_decay(sch::ExponentialDecay {
                    init_value: k.req_f64("init_value")?,
                    transition_steps: optax_steps_or_constant(&mut k)?,
                    decay_rate: k.req_f64("decay_rate")?,
                    transition_begin: optax_begin(&mut k)?,
                    staircase: k.bool("staircase", false)?,
                    end_value: k.opt_f64("end_value")?,
                }),
                "cosine_decay" => sch::cosine_decay(sch::CosineDecay {
                    init_value: k.req_f64("init_value")?,
                    decay_steps: positive_steps(&mut k, "decay_steps")?,
                    alpha: k.f64("alpha", 0.0)?,
                    exponent: k.f64("exponent", 1.0)?,
                })?,
                "warmup_constant" => {
                    sch::warmup_constant(k.req_f64("init_value")?, k.req_f64("peak_value")?, k.req_u64("warmup_steps")?)
                }
                "warmup_cosine_decay" => {
                    let (init_value, peak_value) = (k.req_f64("init_value")?, k.req_f64("peak_value")?);
                    let (warmup_steps, decay_steps) = (k.req_u64("warmup_steps")?, k.req_u64("decay_steps")?);
                    if decay_steps <= warmup_steps {
                        return Err(k.err(
                            "decay_steps",
                            format!(
                                "{decay_steps} must exceed warmup_steps {warmup_steps}: optax decays over \
                                 decay_steps − warmup_steps steps, which must be positive"
                            ),
                        ));
                    }
                    sch::warmup_cosine_decay(sch::WarmupCosineDecay {
                        init_value,
                        peak_value,
                        warmup_steps,
                        decay_steps,
                        end_value: k.f64("end_value", 0.0)?,
                        exponent: k.f64("exponent", 1.0)?,
                    })?
                }
                "warmup_exponential_decay" => sch::warmup_exponential_decay(sch::WarmupExponentialDecay {
                    init_value: k.req_f64("init_value")?,
                    peak_value: k.req_f64("peak_value")?,
                    warmup_steps: k.req_u64("warmup_steps")?,
                    transition_steps: optax_steps_or_constant(&mut k)?,
                    decay_rate: k.req_f64("decay_rate")?,
                    transition_begin: optax_begin(&mut k)?,
                    staircase: k.bool("staircase", false)?,
                    end_value: k.opt_f64("end_value")?,
                }),
                "linear_onecycle" => sch::linear_onecycle(sch::LinearOnecycle {
                    transition_steps: positive_steps(&mut k, "transition_steps")?,
                    peak_value: k.req_f64("peak_value")?,
                    pct_start: fraction(&mut k, "pct_start", 0.3)?,
                    pct_final: fraction(&mut k, "pct_final", 0.85)?,
                    div_factor: divisor(&mut k, "div_factor", 25.0)?,
                    final_div_factor: divisor(&mut k, "final_div_factor", 1e4)?,
                })?,
                "cosine_onecycle" => sch::cosine_onecycle(sch::CosineOnecycle {
                    transition_steps: positive_steps(&mut k, "transition_steps")?,
                    peak_value: k.req_f64("peak_value")?,
                    pct_start: fraction(&mut k, "pct_start", 0.3)?,
                    div_factor: divisor(&mut k, "div_factor", 25.0)?,
                    final_div_factor: divisor(&mut k, "final_div_factor", 1e4)?,
                })?,
                _ => return Err(unknown("optax schedule", name, OPTAX_SCHEDULES)),
            }
        }
        (other, _) => return Err(unknown("library", other, &["torch", "optax"])),
    };
    k.finish()?;
    Ok(ScheduleSpec::Function(s))
}

/// A fraction of a one-cycle schedule's steps: negative ones are refused (optax would place the
/// boundary before step 0, a schedule nobody means).
fn fraction(k: &mut Kwargs, key: &'static str, default: f64) -> Result<f64> {
    let x = k.f64(key, default)?;
    if x < 0.0 {
        return Err(k.err(key, format!("{x}: a fraction of the cycle, 0 or more")));
    }
    Ok(x)
}

/// optax's `transition_begin`: a negative one is 0 (optax logs that and starts at 0).
fn optax_begin(k: &mut Kwargs) -> Result<u64> {
    Ok(k.i64("transition_begin", 0)?.max(0) as u64)
}

/// optax's `transition_steps` of the decaying schedules: 0 or negative makes the schedule the
/// constant `init_value` (as optax, which logs it), here 0 steps.
fn optax_steps_or_constant(k: &mut Kwargs) -> Result<u64> {
    match k.get("transition_steps")? {
        None => Err(k.err("transition_steps", "missing required argument")),
        Some(v) => v
            .as_i64()
            .map(|n| n.max(0) as u64)
            .or_else(|| v.as_u64())
            .ok_or_else(|| k.err("transition_steps", format!("expected an integer, got {v}"))),
    }
}

/// A step count optax requires positive (`cosine_decay_schedule`'s `decay_steps`, the one-cycle
/// schedules' `transition_steps`: optax raises on 0).
fn positive_steps(k: &mut Kwargs, key: &'static str) -> Result<u64> {
    match k.req_u64(key)? {
        0 => Err(k.err(key, "must be positive (optax raises on 0)")),
        n => Ok(n),
    }
}

/// A factor optax divides by (the one-cycle schedules' `div_factor`, `final_div_factor`): 0
/// fails there with a division by zero.
fn divisor(k: &mut Kwargs, key: &'static str, default: f64) -> Result<f64> {
    let x = k.f64(key, default)?;
    if x == 0.0 {
        return Err(k.err(key, "must not be 0 (the schedule divides by it)"));
    }
    Ok(x)
}

/// The `[[name, kwargs], …]` list of a combining schedule.
/// The parts of a composition, and the base rate the torch schedulers among them start from: the
/// optimizer's, unless the first is a `CyclicLR`, which sets the optimizer's rate to its own
/// `base_lr` when it is made (the `initial_lr` every scheduler made after it records).
#[allow(clippy::type_complexity)]
fn sub_schedules(
    k: &mut Kwargs,
    key: &'static str,
    library: &str,
    base_lr: Option<f64>,
) -> Result<(Vec<BoxSchedule>, Option<f64>)> {
    let ctx = format!("{}: `{key}`", k.context);
    let list = k
        .value(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::Field { context: ctx.clone(), message: "missing list of [name, kwargs]".into() })?;
    if list.is_empty() {
        return Err(Error::Field { context: ctx, message: "needs at least one schedule".into() });
    }
    let mut base_lr = base_lr;
    let parts = list
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (name, kw) = link(l, &format!("{ctx}[{i}]"))?;
            // Compositions torch steps otherwise than by their parts: a SequentialLR inside any
            // composition and a ChainedScheduler inside a SequentialLR (torch resets the rate at
            // each milestone from what the nested scheduler does not hold, or raises), and a
            // CyclicLR after the first scheduler of a chain (its first rate comes from the
            // initial_lr the scheduler before it recorded, its later ones from its base_lr).
            let parent = k.context.rsplit('.').next().unwrap_or_default().to_string();
            let nested = match (parent.as_str(), name.as_str()) {
                (_, "SequentialLR") => Some("a SequentialLR inside another composition"),
                ("SequentialLR", "ChainedScheduler") => Some("a ChainedScheduler inside a SequentialLR"),
                ("ChainedScheduler", "CyclicLR") if i > 0 => Some("a CyclicLR after the first scheduler of a chain"),
                // At its milestone torch evaluates LinearLR's closed form, dividing by 0.
                ("SequentialLR", "LinearLR") if i > 0 && kw.get("total_iters").and_then(Value::as_u64) == Some(0) => {
                    Some("a LinearLR with total_iters 0 after a milestone (torch divides by zero there)")
                }
                ("SequentialLR", "PolynomialLR")
                    if i > 0 && kw.get("total_iters").and_then(Value::as_u64) == Some(0) =>
                {
                    Some("a PolynomialLR with total_iters 0 after a milestone (torch divides by zero there)")
                }
                // At its milestone torch evaluates ConstantLR's closed form (1 at its step 0 when
                // total_iters is 0), and keeps it: not the factor it holds alone.
                ("SequentialLR", "ConstantLR") if i > 0 && kw.get("total_iters").and_then(Value::as_u64) == Some(0) => {
                    Some("a ConstantLR with total_iters 0 after a milestone (torch restarts it at the base rate)")
                }
                ("ChainedScheduler", "ChainedScheduler") => {
                    Some("a ChainedScheduler inside a ChainedScheduler (give its schedulers in the outer one)")
                }
                _ => None,
            };
            if let (true, Some(what)) = (library == "torch", nested) {
                return Err(Error::Field {
                    context: format!("{ctx}[{i}]"),
                    message: format!(
                        "{what}: torch steps it otherwise than its parts' schedules, which descent does not \
                         reproduce; write the schedule without the nesting"
                    ),
                });
            }
            if library == "torch" && name == "OneCycleLR" {
                return Err(Error::Field {
                    context: format!("{ctx}[{i}]"),
                    message: "OneCycleLR in a composition: torch's OneCycleLR sets the optimizer's initial_lr to \
                              max_lr/div_factor when it is made, which moves the schedulers around it (SequentialLR \
                              restarts from it); descent reproduces OneCycleLR alone"
                        .into(),
                });
            }
            let built = match build_schedule(library, &name, &kw, base_lr)? {
                ScheduleSpec::Function(s) => Ok(s),
                ScheduleSpec::Plateau(_) => Err(Error::Field {
                    context: format!("{ctx}[{i}]"),
                    message: "ReduceLROnPlateau cannot be combined".into(),
                }),
            };
            if library == "torch" && i == 0 && name == "CyclicLR" {
                let mut kw = Kwargs::new(format!("{ctx}[0]"), &kw)?;
                base_lr = Some(one_group_f64(&mut kw, "base_lr", None)?);
            }
            built
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((parts, base_lr))
}

/// A torch scheduler argument given per parameter group (`max_lr`, `base_lr`, `min_lr`): a
/// number, or a list of one (descent's schedules drive one rate; more are refused).
fn one_group_f64(k: &mut Kwargs, key: &'static str, default: Option<f64>) -> Result<f64> {
    match k.present(key)? {
        Some(Value::Array(a)) if a.len() == 1 => k.number(key, &a[0]),
        Some(Value::Array(a)) => Err(k.err(
            key,
            format!("{} values: one per parameter group, and descent's schedules drive one learning rate", a.len()),
        )),
        Some(_) | None => match default {
            Some(d) => k.f64(key, d),
            None => k.req_f64(key),
        },
    }
}

fn boundaries(v: Option<&Value>, ctx: &str) -> Result<Vec<(u64, f64)>> {
    let err = |m: String| Error::Field { context: format!("{ctx}: `boundaries_and_scales`"), message: m };
    match v {
        None => Ok(vec![]),
        Some(Value::Object(o)) => {
            let bs: Vec<(i64, f64)> = o
                .iter()
                .map(|(b, s)| {
                    let b: i64 = b.trim().parse().map_err(|_| err(format!("boundary `{b}` is not a step number")))?;
                    let s = s
                        .as_f64()
                        .filter(|s| s.is_finite())
                        .ok_or_else(|| err(format!("scale {s} is not a finite number")))?;
                    Ok((b, s))
                })
                .collect::<Result<_>>()?;
            // Python's dict holds one scale per step: keys such as "30" and "030" are one step given twice.
            let mut steps: Vec<i64> = bs.iter().map(|b| b.0).collect();
            steps.sort_unstable();
            if let Some(w) = steps.windows(2).find(|w| w[0] == w[1]) {
                return Err(err(format!("step {} given more than once", w[0])));
            }
            // A negative boundary is behind every step: its scale applies from step 0, as in optax.
            Ok(bs.into_iter().map(|(b, s)| (b.max(0) as u64, s)).collect())
        }
        Some(other) => Err(err(format!("expected an object {{step: scale}}, got {other}"))),
    }
}
